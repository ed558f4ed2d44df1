"""Recording how an order ended: the final phase, the event that reports
it and its receipts (``agent.print_queue``), in one commit, so a crash
between them cannot lose the report or the slip (DESIGN.md "Journal":
states never regress)."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from agent import print_queue
from agent.journal import Journal, Phase, TxRow
from agent.print_queue import Copy

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Final:
    """How ``tx`` ended, as the journal holds it; ``new``: by this call (its
    event is in the outbox, and ``receipts`` copies in the print queue)."""

    phase: Phase
    reason: str | None
    auth_code: str | None
    new: bool
    receipts: int = 0


def record_final(
    journal: Journal,
    tx: TxRow,
    phase: Phase,
    event: str,
    *,
    reason: str | None,
    fields: dict[str, str | None] | None = None,
    receipts: tuple[Copy, ...] = (),
) -> Final:
    """End ``tx`` with ``phase``, reported by ``event``, and queue the
    ``receipts`` copies if the result gets a receipt. An order already final
    stays as it is: the answer is then the journaled outcome, whose event
    and receipts were queued when it became final (the refused one goes
    nowhere)."""
    queued = 0
    with journal.batch():
        new = journal.finish(tx.trans_no, phase, reason=reason, **(fields or {}))
        if new:
            journal.enqueue_event(event, tx.message_id, tx.trans_no, reason)
            queued = print_queue.enqueue_receipts(journal, tx.trans_no, receipts)
    auth_code = (fields or {}).get("auth_code")
    if new:
        return Final(phase, reason, auth_code, new=True, receipts=queued)
    stored = journal.get(tx.trans_no)
    if stored is None or stored.phase is phase:
        return Final(phase, reason, auth_code, new=False)
    log.error("CONFLICT: %s is final %s; showing that, not %s", tx.trans_no, stored.phase, phase)
    approved = stored.phase is Phase.APPROVED
    return Final(stored.phase, stored.reason, stored.auth_code if approved else None, new=False)
