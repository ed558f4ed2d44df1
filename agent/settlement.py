"""Settling a payment with the gateway: what became of it, as an ``Outcome``
(DESIGN.md "Transaction engine"; docs/protocol.md part D).

The money rules live here:

* ``pay`` sends the attempt once (its ``request_no`` journaled by the
  engine before) as a task of its own, so that neither a hung network nor
  the cashier's cancel can hold the terminal: after ``authorize_deadline``,
  or at ``cancel_payment()``, the outcome is ``Unknown``. A network failure,
  a refused, unbound or nonsensical answer is ``Unknown`` too. The payment
  is never sent again.
* ``resolve`` settles an unknown outcome: ``cashier.trans.detail`` with
  backoff (``agent.backoff``) until ``resolve_deadline``, and then
  ``reverse``. A create the gateway refused, or an attempt the cashier
  cancelled, goes to the reversal at once.
* ``reverse`` sends ``cashier.trans.reverse`` until acknowledged. A refused
  reversal (nothing to reverse: never arrived, or already final) asks
  ``detail`` for the truth: final is adopted; still pending
  (``PREORDER``, never completed) is closed at the gateway (a ``gw:cancel``
  in the outbox) and ends ``Reversed``.

Only a final status from the gateway, bound to this attempt
(``cloud.answers``), becomes ``Approved`` or ``Declined``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass

from agent.backoff import Backoff
from agent.clock import Clock
from agent.faults import crash_point, fail_point
from agent.gateway import GatewayClient, OrderRef
from agent.journal import Journal, Phase, TxRow
from cloud import messages as m
from cloud.errors import CloudRejected, CloudUnavailable, SadadError
from drivers.base import CardRead, Presentation

_AID_HEX = re.compile(r"(?:[0-9A-F]{2}){5,16}")


def _aid_hex(aid: str | None) -> str | None:
    """The AID as the journal keeps it for the receipt: 5-16 bytes in hex
    (EMV Book 1 §12.2.1: a 5-byte RID and a PIX of up to 11), else nothing."""
    if aid is None or not _AID_HEX.fullmatch(aid.upper()):
        return None
    return aid.upper()


log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Approved:
    result: m.CashierResult


@dataclass(frozen=True, slots=True)
class Declined:
    result: m.CashierResult


@dataclass(frozen=True, slots=True)
class Reversed:
    """Cancelled at the gateway: no charge. ``reason`` is for the cashier."""

    reason: str


@dataclass(frozen=True, slots=True)
class Unknown:
    """Nothing that counts came back. ``refused``: the gateway refused the
    create (resolve without waiting for it to change its mind)."""

    refused: bool = False


Outcome = Approved | Declined | Reversed | Unknown


class Settlement:
    """One terminal's payments with the gateway. Use from one event loop.

    ``gateway_ok`` is what the last call said of the gateway (None: no call
    yet); ``beat`` is called on each retry, for the watchdog."""

    def __init__(
        self,
        gateway: GatewayClient,
        journal: Journal,
        clock: Clock,
        *,
        authorize_deadline: float,
        resolve_deadline: float,
        backoff: Callable[[], Backoff],
        beat: Callable[[], None],
    ) -> None:
        self._gateway = gateway
        self._journal = journal
        self._clock = clock
        self._authorize_deadline = authorize_deadline
        self._resolve_deadline = resolve_deadline
        self._backoff = backoff
        self._beat = beat
        self._payment: asyncio.Future[m.CashierResult] | None = None
        self.gateway_ok: bool | None = None

    def journal_attempt(self, tx: TxRow, presentation: Presentation, sn: str) -> str:
        """Journal a new attempt to pay ``tx`` (and the masked card), before
        anything is sent: its ``request_no``, unique per attempt and reused
        by every detail and reversal for it."""
        request_no = f"{sn}-{tx.trans_no}-{len(self._journal.attempts(tx.trans_no)) + 1}"
        if isinstance(presentation, CardRead):
            kind = "card"
            card = {
                "masked_pan": presentation.masked_pan,
                "card_brand": presentation.brand,
                "entry_mode": presentation.entry_mode.value,
                "aid": _aid_hex(presentation.aid),
                "app_label": presentation.app_label,
            }
        else:
            kind, card = "wallet", {"card_brand": presentation.wallet.value, "entry_mode": "WALLET"}
        self._journal.set_phase(tx.trans_no, Phase.AUTHORIZING, **card)
        self._journal.new_attempt(tx.trans_no, request_no, kind)
        return request_no

    def cancel_payment(self) -> None:
        """Stop waiting for the payment in flight, if any: ``pay`` returns
        ``Unknown`` at once (and the engine reverses it)."""
        if self._payment is not None:
            self._payment.cancel()

    async def pay(
        self,
        tx: TxRow,
        request_no: str,
        presentation: Presentation,
        *,
        cancelled: Callable[[], bool],
    ) -> Outcome:
        """Send the attempt ``request_no`` once and adopt its answer."""
        ref = OrderRef.of(tx)
        self._hop(tx, "sent")
        if isinstance(presentation, CardRead):
            call = self._gateway.pay_card(ref, request_no, presentation)
        else:
            call = self._gateway.pay_wallet(ref, request_no, presentation)
        payment = asyncio.ensure_future(call)
        self._payment = payment
        try:
            await asyncio.wait({payment}, timeout=self._authorize_deadline)
        finally:
            self._payment = None
            if not payment.done():
                payment.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await payment
        if payment.cancelled() or not payment.done():
            why = "cancelled on the terminal" if cancelled() else "no answer in time"
            log.warning("payment %s outcome unknown: %s", tx.trans_no, why)
            return Unknown()
        try:
            result = payment.result()
        except CloudUnavailable as exc:
            self.gateway_ok = False
            log.warning("payment %s outcome unknown: %s", tx.trans_no, exc)
            return Unknown()
        except CloudRejected as exc:
            self.gateway_ok = True
            log.warning("payment %s refused by the gateway: %s", tx.trans_no, exc)
            return Unknown(refused=True)
        self.gateway_ok = True
        self._hop(tx, "answered")
        crash_point("answered")
        fail_point("answered")
        return self._adopt(request_no, result, from_create=True)

    async def resolve(
        self,
        tx: TxRow,
        request_no: str,
        *,
        refused: bool,
        cancelled: Callable[[], bool],
        reversing: Callable[[], None],
    ) -> Outcome:
        """Learn the outcome of ``request_no`` by detail, else reverse it
        (``reversing`` is called when the reversal starts, for the screen)."""
        if cancelled():  # the cashier cancelled: undo it, whatever became of it
            return await self.reverse(tx, request_no, reversing)
        deadline = time.monotonic() + self._resolve_deadline
        backoff = self._backoff()
        while True:
            self._beat()
            try:
                detail = await self._gateway.detail(tx.trans_no, request_no)
                self.gateway_ok = True
                if detail.trans_status.is_final:
                    self._hop(tx, "answered")
                    return self._adopt(request_no, detail, from_create=False)
            except CloudUnavailable as exc:
                self.gateway_ok = False
                log.warning("detail %s: %s", tx.trans_no, exc)
            except CloudRejected as exc:
                log.warning("detail %s refused: %s", tx.trans_no, exc)
            left = deadline - time.monotonic()
            if refused or cancelled() or left <= 0:
                break
            # Never sleep past the deadline: the last detail is asked at it.
            await asyncio.sleep(min(backoff.next(), left))
        return await self.reverse(tx, request_no, reversing)

    async def reverse(self, tx: TxRow, request_no: str, reversing: Callable[[], None]) -> Outcome:
        """Reverse ``request_no`` until the gateway acknowledges it."""
        self._journal.reverse_requested(request_no)
        reversing()
        backoff = self._backoff()
        while True:
            self._beat()
            try:
                result = await self._gateway.reverse(
                    tx.trans_no, request_no, "outcome unknown (timeout reversal)"
                )
                self._journal.reverse_acked(request_no)
                self.gateway_ok = True
                log.warning("payment %s reversed", tx.trans_no)
                return self._adopt(request_no, result, from_create=False, reversed_=True)
            except CloudRejected as exc:
                log.warning("reverse %s refused: %s", tx.trans_no, exc)
                settled = await self._after_refused_reversal(tx, request_no)
                if settled is not None:
                    return settled
            except CloudUnavailable as exc:
                self.gateway_ok = False
                log.warning("reverse %s: %s (will retry)", tx.trans_no, exc)
            await asyncio.sleep(backoff.next())

    async def _after_refused_reversal(self, tx: TxRow, request_no: str) -> Outcome | None:
        """Nothing to reverse (never arrived, or already final): the truth by
        detail, or None to try the reversal again."""
        try:
            detail = await self._gateway.detail(tx.trans_no, request_no)
        except (CloudUnavailable, CloudRejected):
            return None
        if detail.trans_status.is_final:
            self._journal.reverse_acked(request_no)
            return self._adopt(request_no, detail, from_create=False, reversed_=True)
        if detail.trans_status is m.TransStatus.PREORDER:
            self._journal.reverse_acked(request_no)
            self._journal.enqueue_event(
                "gw:cancel", tx.message_id, tx.trans_no, "payment not completed"
            )
            return Reversed("Payment not completed - no charge")
        return None

    def _adopt(
        self,
        request_no: str,
        result: m.CashierResult,
        *,
        from_create: bool,
        reversed_: bool = False,
    ) -> Outcome:
        """The outcome the gateway reported, journaled on the attempt."""
        status = result.trans_status
        if status.is_final:
            self._journal.attempt_answered(request_no, int(status))
        if status is m.TransStatus.COMPLETED:
            return Approved(result)
        if status is m.TransStatus.CLOSED:
            return Declined(result)
        if status is m.TransStatus.CANCELLED:
            return Reversed("Payment cancelled - no charge" if reversed_ else "Payment cancelled")
        if from_create:  # 0 or 9 from a create: not settled yet, find out by detail
            return Unknown()
        raise SadadError(f"cannot adopt non-final status {status}")

    def _hop(self, tx: TxRow, name: str) -> None:
        self._journal.hop(tx.trans_no, name, self._clock.ms())
