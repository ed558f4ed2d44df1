"""Taking a push off the orders topic: verified, journaled, or rejected
(docs/protocol.md part C, "Push", "Rejected pushes").

``take(payload)`` accepts whatever arrived on the topic, from anyone:

* anything that is not a genuine push for this terminal (too large, not
  JSON, unsigned, another terminal's, expired...) goes to
  ``agent.rejections`` and ``take`` returns None: it is acknowledged, so no
  bytes can stop the terminal;
* a redelivery (a ``message_id`` or ``trans_no`` already journaled) does
  nothing but make sure its first delivery is durable;
* a close is journaled (``ClosePushed``: the engine applies it);
* an order is journaled with its ``received`` event (and ``busy`` with its
  place in the queue when the terminal is busy), in one deferred commit
  (``agent.durability``): ``NewOrder``, which the engine queues and makes
  durable before the PUBACK.

Raises JournalError only, for a genuine push that could not be journaled
(it is not acknowledged, and the broker delivers it again). Any other
failure on a genuine push is a bug: the push is rejected under its own,
signed message_id (the broker would otherwise deliver it first, forever, and
no order after it would be taken).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from agent.clock import Clock
from agent.durability import Durability
from agent.faults import crash_point
from agent.inbox import ClosePushed
from agent.journal import Journal, JournalError, OrderRecord
from agent.rejections import PushRejections
from cloud import envelope, redact
from cloud import messages as m
from cloud.signing import PublicKeyLike
from cloud.timeline import busy_reason

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class NewOrder:
    """An order journaled (not yet durable): queue it."""

    order: m.PushOrder


class PushIntake:
    """Use from the journal's event loop."""

    def __init__(
        self,
        journal: Journal,
        durability: Durability,
        rejections: PushRejections,
        clock: Clock,
        *,
        sn: str,
        gateway_public_key: PublicKeyLike,
    ) -> None:
        self._journal = journal
        self._durability = durability
        self._rejections = rejections
        self._clock = clock
        self.retarget(sn, gateway_public_key)

    def retarget(self, sn: str, gateway_public_key: PublicKeyLike) -> None:
        """This terminal's serial and the key its pushes are signed with (a reload)."""
        self._sn = sn
        self._gateway_key = gateway_public_key

    async def take(
        self, payload: bytes, *, busy: bool, waiting: int
    ) -> NewOrder | ClosePushed | None:
        """See the module docstring. ``busy``: an order is on the terminal or
        waits; ``waiting``: how many wait."""
        received = self._clock.ms()
        if len(payload) > m.MAX_PUSH_BYTES:  # a 3.1.1 broker cannot be told the limit
            why = f"{len(payload)} bytes, over the {m.MAX_PUSH_BYTES} a push may have"
            self._rejections.reject(len(payload), envelope.PushRejected("too_large", why))
            return None
        try:
            push, biz = envelope.open_push(payload, self._gateway_key, self._sn)
        except envelope.PushRejected as exc:
            self._rejections.reject(len(payload), exc)
            return None
        try:
            return await self._journal_push(push, biz, received, busy=busy, waiting=waiting)
        except JournalError:
            raise
        except Exception as exc:
            log.exception("push %s could not be taken; rejected", push.message_id)
            why = f"internal error ({type(exc).__name__})"
            self._rejections.reject(
                len(payload),
                envelope.PushRejected("internal_error", why, push.message_id, topic=push.topic),
            )
            await self._durability.sync()  # whatever of it was committed
            return None

    async def _journal_push(
        self,
        push: m.Push,
        biz: m.PushOrder | m.PushClose,
        received: int,
        *,
        busy: bool,
        waiting: int,
    ) -> NewOrder | ClosePushed | None:
        if self._journal.seen_push(push.message_id):
            log.info("push %s delivered again: already handled", push.message_id)
            await self._durability.sync()  # its first delivery's sync may have failed
            return None
        if isinstance(biz, m.PushClose):
            if not self._journal.record_close_push(push.message_id, biz.trans_no):
                return None
            crash_point("close_journaled")
            return ClosePushed(biz.trans_no, push.message_id)
        # One commit, written now and made durable by the engine (the money
        # rule needs it on disk before the PUBACK, not before the screen).
        with self._journal.batch(deferred_sync=True):
            if not self._journal.record_order(push.message_id, _order_record(biz)):
                log.info("order %s pushed again under a new message: ignored", biz.trans_no)
                return None
            self._journal.enqueue_event("received", push.message_id, biz.trans_no)
            if busy:  # the TMS learns where the order waits (cloud.timeline.busy_reason)
                filo = biz.order_queue_mode is m.QueueMode.FILO
                position = 1 if filo else waiting + 1
                self._journal.enqueue_event(
                    "busy", push.message_id, biz.trans_no, busy_reason(position)
                )
        self._journal.hop(biz.trans_no, "push_received", received)
        self._journal.hop(biz.trans_no, "journaled", self._clock.ms())
        return NewOrder(biz)


def _order_record(biz: m.PushOrder) -> OrderRecord:
    """The journal's new-order record for a push."""
    return OrderRecord(
        trans_no=biz.trans_no,
        merchant_no=biz.merchant_no,
        merchant_order_no=biz.merchant_order_no,
        trans_type=int(biz.trans_type),
        orig_trans_no=biz.orig_trans_no,
        currency=biz.price_currency,
        amount=biz.order_amount,
        tip_amount=biz.tip_amount,
        # Free text from the POS: kept as it may be shown (a screen line
        # is never longer; control and bidi-control characters dropped).
        description=redact.display(biz.description, m.MAX_DESCRIPTION) if biz.description else None,
        pay_scenario=biz.pay_scenario.value if biz.pay_scenario else None,
        confirm=biz.confirm_on_terminal,
        expires_at=biz.expires_at,
        queue_mode=biz.order_queue_mode.value,
    )
