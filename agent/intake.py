"""Taking a push off the orders topic: verified, journaled, or rejected
(docs/protocol.md part C, "Push", "Rejected pushes"), in two steps so that an
idle terminal can draw a new order between them.

``open(payload)`` accepts whatever arrived on the topic, from anyone, and
writes nothing but rejections:

* anything that is not a genuine push for this terminal (too large, not
  JSON, unsigned, another terminal's, expired...) goes to
  ``agent.rejections`` and ``open`` returns None: it is acknowledged, so no
  bytes can stop the terminal;
* a redelivery of a journaled ``message_id`` does nothing but make sure its
  first delivery is durable (None);
* anything else is ``Opened``; its ``new_order`` is the order's record when
  its ``trans_no`` was never journaled - the one thing that may be drawn
  before it is journaled (a replayed order is never drawn again).

``journal(opened)`` then journals it:

* a close (``ClosePushed``: the engine applies it);
* an order with its ``received`` event (and ``busy`` with its place in the
  queue when the terminal is busy), in one deferred commit
  (``agent.durability``): ``NewOrder``, which the engine queues and makes
  durable before the PUBACK; an order whose ``trans_no`` was journaled
  under another ``message_id`` is kept as a duplicate push (None).

Both raise JournalError only, for a genuine push that could not be journaled
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


@dataclass(frozen=True, slots=True)
class Opened:
    """A genuine push for this terminal, not delivered before; not journaled yet."""

    push: m.Push
    biz: m.PushOrder | m.PushClose
    received: int  # the clock's ms when it arrived
    size: int  # bytes
    # The order's record, checked and cut for the screen; None for a close
    # and for an order whose trans_no is journaled already.
    new_order: OrderRecord | None


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

    async def open(self, payload: bytes) -> Opened | None:
        """See the module docstring."""
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
            if self._journal.seen_push(push.message_id):
                log.info("push %s delivered again: already handled", push.message_id)
                await self._durability.sync()  # its first delivery's sync may have failed
                return None
            new_order = None
            if isinstance(biz, m.PushOrder) and not self._journal.has_order(biz.trans_no):
                new_order = _order_record(biz)
            return Opened(push, biz, received, len(payload), new_order)
        except JournalError:
            raise
        except Exception as exc:
            await self._internal_error(push, len(payload), exc)
            return None

    async def journal(
        self, opened: Opened, *, busy: bool, waiting: int, drawn_at: int | None = None
    ) -> NewOrder | ClosePushed | None:
        """See the module docstring. ``busy``: an order is on the terminal or
        waits; ``waiting``: how many wait; ``drawn_at``: when an idle
        terminal drew the new order (the clock's ms), a hop of its timeline."""
        try:
            return self._journal_push(opened, busy=busy, waiting=waiting, drawn_at=drawn_at)
        except JournalError:
            raise
        except Exception as exc:
            await self._internal_error(opened.push, opened.size, exc)
            return None

    async def _internal_error(self, push: m.Push, size: int, exc: Exception) -> None:
        log.exception("push %s could not be taken; rejected", push.message_id)
        why = f"internal error ({type(exc).__name__})"
        self._rejections.reject(
            size, envelope.PushRejected("internal_error", why, push.message_id, topic=push.topic)
        )
        await self._durability.sync()  # whatever of it was committed

    def _journal_push(
        self, opened: Opened, *, busy: bool, waiting: int, drawn_at: int | None
    ) -> NewOrder | ClosePushed | None:
        push, biz = opened.push, opened.biz
        if isinstance(biz, m.PushClose):
            if not self._journal.record_close_push(push.message_id, biz.trans_no):
                return None
            crash_point("close_journaled")
            return ClosePushed(biz.trans_no, push.message_id)
        # One commit, written now and made durable by the engine (the money
        # rule needs it on disk before the PUBACK, not before the screen).
        with self._journal.batch(deferred_sync=True):
            record = opened.new_order or _order_record(biz)
            if not self._journal.record_order(push.message_id, record):
                log.info("order %s pushed again under a new message: ignored", biz.trans_no)
                return None
            self._journal.enqueue_event("received", push.message_id, biz.trans_no)
            if busy:  # the TMS learns where the order waits (cloud.timeline.busy_reason)
                filo = biz.order_queue_mode is m.QueueMode.FILO
                position = 1 if filo else waiting + 1
                self._journal.enqueue_event(
                    "busy", push.message_id, biz.trans_no, busy_reason(position)
                )
        self._journal.hop(biz.trans_no, "push_received", opened.received)
        if drawn_at is not None:
            self._journal.hop(biz.trans_no, "shown", drawn_at)
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
