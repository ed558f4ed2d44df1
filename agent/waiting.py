"""The orders that are not on screen: waiting in the queue, or found open at
a start (docs/protocol.md part C ``order_queue_mode``, "Busy terminal").

One order is on the terminal at a time; the others wait here, FIFO or FILO
as each order asks. An order that waited past its ``expires_at`` is expired
when its turn comes (the gateway expires it too, so no cancel is sent); a
close for a waiting order closes it here unless a payment may have left for
it (then only the gateway's answer settles it). Each end is journaled with
its event in one commit, and the outbox woken.
"""

from __future__ import annotations

import contextlib
from collections import deque
from collections.abc import Callable

from agent.clock import wall_ms
from agent.finals import record_final
from agent.journal import Journal, Phase, TxRow
from cloud import messages as m


class WaitingOrders:
    """Use from the journal's event loop. ``queue`` holds ``trans_no``s, the
    next to offer first."""

    def __init__(self, journal: Journal, wake_outbox: Callable[[], None]) -> None:
        self._journal = journal
        self._wake_outbox = wake_outbox
        self.queue: deque[str] = deque()

    def add(self, trans_no: str, mode: str) -> None:
        if mode == m.QueueMode.FILO.value:
            self.queue.appendleft(trans_no)
        else:
            self.queue.append(trans_no)

    def next_due(self) -> TxRow | None:
        """The next order to offer, taken off the queue; the ones that ended
        or expired meanwhile are passed over (an expired one ends here)."""
        while self.queue:
            tx = self._journal.get(self.queue.popleft())
            if tx is None or tx.final:
                continue
            if tx.expires_at <= wall_ms():
                self.finish(tx, Phase.EXPIRED, "failed", reason="expired")
                continue
            return tx
        return None

    def close(self, trans_no: str) -> bool:
        """The POS closed a waiting order; False if the journal does not know it."""
        tx = self._journal.get(trans_no)
        if tx is None:
            return False
        with contextlib.suppress(ValueError):
            self.queue.remove(trans_no)
        if not tx.final and not self._journal.attempts(trans_no):
            self.finish(tx, Phase.CLOSED, "closed", reason="closed by the POS")
        return True

    def finish(self, tx: TxRow, phase: Phase, event: str, reason: str) -> None:
        """End ``tx`` off screen with ``phase``, reported by ``event``."""
        if record_final(self._journal, tx, phase, event, reason=reason).new:
            self._wake_outbox()

    def cancel(self, tx: TxRow, reason: str) -> None:
        """End ``tx`` cancelled and close it at the gateway too (after a
        fault: an order that broke the terminal once is not offered again)."""
        with self._journal.batch():
            if self._journal.finish(tx.trans_no, Phase.CANCELLED, reason=reason):
                self._journal.enqueue_event("cancelled", tx.message_id, tx.trans_no, reason)
                self._journal.enqueue_event("gw:cancel", tx.message_id, tx.trans_no, reason)
        self._wake_outbox()
