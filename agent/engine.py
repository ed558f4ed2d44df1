"""The transaction engine: from a journaled push to a final, reported outcome.

It is the model of the state table in ``agent.states`` (its typed triggers,
its ``on_enter_*`` callbacks) and holds the order of things for money
(DESIGN.md "Transaction engine", docs/protocol.md parts C and D). The work is
done by parts that each receive what they need and never call back into the
engine:

* ``agent.intake`` and ``agent.durability``: a push is journaled and
  ``handle_push`` returns (the MQTT link then sends the PUBACK) only once it
  is on disk; an idle terminal draws a verified new order before it journals
  it. Redeliveries are recognised by ``message_id`` and ``trans_no`` and are
  never drawn.
* ``agent.rejections``: anything that is not a genuine push for this
  terminal is rejected, reported (rate-limited) and acknowledged.
* ``agent.arming``: the readers that can pay the order, armed while it waits.
* ``agent.settlement``: the payment attempt, journaled before it is sent,
  and its ``Outcome``; an unknown one resolved by detail, then reversal,
  never by paying again.
* ``agent.outbox``: every report (terminal events, gateway cancels), journaled
  in the same commit as what it reports and delivered until delivered.
* ``agent.waiting``: the orders not on screen; ``agent.finals``: how one
  ended (and its receipts, ``agent.print_queue``).

The hops of each payment's timeline (``cloud.timeline.HOPS``) are journaled
where they happen. One transaction at a time; others wait in a queue, FIFO or
FILO as each order asks, and the TMS is told ``busy``. All inputs
(presentations, cashier intents, close pushes) pass through one inbox
(``agent.inbox``) consumed by one worker task, so triggers never race; the
state machine's own timers fire ``expire`` and ``done``. On start, every
non-final transaction is resolved (an attempt without an answer), expired, or
queued again, before new pushes are taken.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

from agent import bridge_protocol as bp
from agent.arming import ReaderArming, ReaderPort
from agent.backoff import Backoff
from agent.bridge_replies import ActionReply
from agent.checkout_screen import CheckoutScreen, ScreenSink, card_info, look, result_info
from agent.clock import Clock, wall_ms
from agent.durability import Durability
from agent.engine_settings import EngineSettings
from agent.faults import crash_point, fail_point, raise_if_cancelling
from agent.finals import record_final
from agent.gateway import GatewayClient, decline_reason
from agent.inbox import CashierAction, ClosePushed, InboxEvent, OfferNext, Presented
from agent.intake import NewOrder, PushIntake
from agent.journal import Journal, Phase, ShownOrder, TxRow
from agent.outbox import EventPublisher, Outbox
from agent.progress import Progress
from agent.reject_reports import RejectReports
from agent.rejections import PushRejections
from agent.settlement import Approved, Declined, Outcome, Reversed, Settlement, Unknown
from agent.states import State, Triggers, build_machine
from agent.waiting import WaitingOrders
from cloud import messages as m
from cloud import money
from drivers.base import CardRead, Presentation

log = logging.getLogger(__name__)

__all__ = ["Engine", "EngineSettings", "EventPublisher", "ReaderPort"]

# How long an idle terminal's push waits for the worker's OFFERED commit
# (whose fsync covers the push) before it fsyncs the push itself.
OFFER_COMMIT_WAIT = 0.05


@dataclass(slots=True)
class _Current:
    tx: TxRow
    card: bp.CardInfo | None = None
    refused: bool = False  # the gateway refused the create: resolve without waiting
    reverse_now: bool = False  # cancelled by the cashier once a payment may have left


class Engine(Triggers):
    """The model of the state machine. Use from one asyncio loop."""

    state: State  # set by transitions

    def __init__(
        self,
        settings: EngineSettings,
        journal: Journal,
        gateway: GatewayClient,
        readers: Sequence[ReaderPort] = (),
        *,
        on_screen: ScreenSink | None = None,
        on_status: Callable[[], None] | None = None,
        rng: random.Random | None = None,
        reject_reports: RejectReports | None = None,
    ) -> None:
        self.settings = settings
        self.journal = journal
        self._rng = rng or random.Random()
        self.clock = Clock()
        self.current: _Current | None = None
        self._on_status = on_status or (lambda: None)
        self.progress = Progress()
        self.screen = CheckoutScreen(
            on_screen, self._on_status, waiting=lambda: len(self.queue), beat=self.progress.beat
        )
        self._inbox: asyncio.Queue[InboxEvent] = asyncio.Queue()
        self._idle = asyncio.Event()
        self._idle.set()
        self._tasks: list[asyncio.Task[None]] = []
        self._recovering = False
        self.durability = Durability(journal)
        self.outbox = Outbox(
            journal,
            gateway,
            self.durability,
            sn=settings.sn,
            private_key=settings.private_key,
            clock=self.clock,
            backoff=self._backoff(),
        )
        self.rejections = PushRejections(journal, self.outbox.wake, reject_reports)
        self.waiting = WaitingOrders(journal, self.outbox.wake)
        self.intake = PushIntake(
            journal,
            self.durability,
            self.rejections,
            self.clock,
            sn=settings.sn,
            gateway_public_key=settings.gateway_public_key,
        )
        self.arming = ReaderArming(
            readers,
            presented=lambda p: self._inbox.put_nowait(Presented(p)),
            message=self.screen.message,
            status_changed=self._on_status,
            backoff=self._backoff,
        )
        self.reconfigure(settings, gateway)
        build_machine(self, settings.result_seconds)

    def reconfigure(self, settings: EngineSettings, gateway: GatewayClient) -> None:
        """Take new settings and a new gateway client (at start, and on a
        reload while idle: no payment in flight). ``result_seconds`` is built
        into the state table at start."""
        self.settings = settings
        self.gateway = gateway
        self.outbox.retarget(gateway, sn=settings.sn, private_key=settings.private_key)
        self.intake.retarget(settings.sn, settings.gateway_public_key)
        self.settlement = Settlement(
            gateway,
            self.journal,
            self.clock,
            authorize_deadline=settings.authorize_deadline,
            resolve_deadline=settings.resolve_deadline,
            backoff=self._backoff,
            beat=self.progress.beat,
        )

    @property
    def queue(self) -> deque[str]:
        """The orders waiting, the next to offer first."""
        return self.waiting.queue

    # ================================================================ life cycle

    async def recover(self) -> None:
        """Resolve, expire or re-queue every non-final transaction (run before the link)."""
        self._recovering = True
        try:
            for tx in self.journal.open_transactions():
                await self._settle(tx, reoffer=True)
        finally:
            self._recovering = False
        for trans_no, message_id in self.journal.pending_closes():
            await self._close(trans_no)  # acknowledged before a crash, not applied
            self.journal.close_applied(message_id)

    async def _settle(self, tx: TxRow, *, reoffer: bool, reason: str = "") -> None:
        """End a non-final transaction that is not on screen, as a restart does:
        an attempt that may have left is resolved (detail, then reverse); an
        expired order expires; otherwise it is offered again (``reoffer``, at
        a start) or ends cancelled with ``reason`` and is closed at the
        gateway (after a fault: an order that broke the terminal once must
        not be offered again)."""
        if self.journal.attempts(tx.trans_no):
            # A payment was (maybe) sent: the gateway knows the outcome.
            log.warning("resuming %s: payment outcome not journaled, resolving", tx.trans_no)
            self.current = _Current(tx)
            self._idle.clear()
            await self.resume()
            raise_if_cancelling()
            await self._idle.wait()
        elif tx.expires_at <= wall_ms():
            self.waiting.finish(tx, Phase.EXPIRED, "failed", reason="expired")
        elif reoffer:
            log.info("resuming %s: order shown again", tx.trans_no)
            self._enqueue(tx.trans_no, tx.queue_mode)
        else:
            self.waiting.cancel(tx, reason)
            self.screen.send()

    def start(self) -> None:
        """Start the worker and the outbox (after ``recover``)."""
        self._tasks = [
            asyncio.create_task(self._worker(), name="engine-worker"),
            asyncio.create_task(self.outbox.run(), name="engine-outbox"),
        ]
        self._inbox.put_nowait(OfferNext())

    async def stop(self) -> None:
        self.rejections.stop()  # a held count is not lost with the process
        await self.arming.disarm()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []

    async def wait_idle(self) -> None:
        """Return once no transaction is on the terminal."""
        while self.current is not None:
            await self._idle.wait()
            await asyncio.sleep(0)

    def tasks_alive(self) -> bool:
        """The worker and the outbox are running (for the watchdog)."""
        return bool(self._tasks) and not any(t.done() for t in self._tasks)

    def stalled(self, now: float | None = None) -> bool:
        """The watchdog must stop (``agent.progress``)."""
        return self.progress.stalled(self.settings.stall_after, now)

    def seconds_left(self) -> float:
        """Time until the current order's ``expires_at`` (used by the state deadline)."""
        if self.current is None:
            return 0.001
        return max(0.001, (self.current.tx.expires_at - wall_ms()) / 1000)

    # ================================================================ inputs

    async def handle_push(self, payload: bytes) -> None:
        """Take one push (``agent.intake``). Returns once it is durable: the
        MQTT link then sends the PUBACK. Raises JournalError only, for a
        genuine push that could not be made durable (it is not acknowledged,
        and the broker delivers it again)."""
        busy = self.current is not None or bool(self.queue)
        opened = await self.intake.open(payload)
        if opened is None:
            return
        # Idle: a new order is drawn before it is journaled. The screen is no
        # outside effect (no reader is armed and no event leaves before the
        # push is durable; a crash before the PUBACK gets it delivered again),
        # and the journal's write, which may block in the kernel, then runs
        # beside the UI's drawing (docs/perf-log.md).
        drawn = None if busy else opened.new_order
        drawn_at = taken = None
        try:
            if drawn is not None:
                drawn_at = await self._draw(drawn)
                crash_point("order_drawn")
            waiting = len(self.queue)
            taken = await self.intake.journal(opened, busy=busy, waiting=waiting, drawn_at=drawn_at)
        finally:
            if drawn is not None and not isinstance(taken, NewOrder):
                log.warning("order %s not journaled: taken off the screen", drawn.trans_no)
                self.screen.idle()
        if isinstance(taken, ClosePushed):
            self._inbox.put_nowait(taken)
        if not isinstance(taken, NewOrder):
            return
        order = taken.order
        # The worker offers it next and commits OFFERED, whose fsync makes
        # an idle terminal's push durable (agent.durability).
        self._enqueue(order.trans_no, order.order_queue_mode.value, show=busy)
        self._inbox.put_nowait(OfferNext())
        await self.durability.durable(wait_for_commit=0.0 if busy else OFFER_COMMIT_WAIT)
        self.journal.hop(order.trans_no, "acknowledged", self.clock.ms())
        if busy:  # else the worker shows it first and wakes the outbox then
            self.outbox.wake()
        log.info(
            "order %s journaled: %s%s",
            order.trans_no,
            money.fmt(order.trans_amount, order.price_currency),
            " (queued, terminal busy)" if busy else "",
        )

    async def handle_intent(self, name: str) -> ActionReply:
        """A cashier intent from the UI bridge: confirm or cancel the current order."""
        if name not in ("confirm", "cancel"):
            raise ValueError(f"unknown intent {name}")
        if self.current is None:
            return ActionReply(accepted=False, reason="no order on screen")
        if name == "cancel" and self.state in (State.AUTHORIZING, State.RESOLVING):
            # The worker is inside that state: act here. A payment that may have
            # left is reversed, never left to complete.
            self.current.reverse_now = True
            self.settlement.cancel_payment()
            log.warning(
                "cashier cancelled %s during authorization: reversing", self.current.tx.trans_no
            )
            return ActionReply(accepted=True)
        action: Literal["confirm", "cancel"] = "confirm" if name == "confirm" else "cancel"
        self._inbox.put_nowait(CashierAction(action, self.current.tx.trans_no))
        return ActionReply(accepted=True)

    def _enqueue(self, trans_no: str, mode: str, *, show: bool = True) -> None:
        self.waiting.add(trans_no, mode)
        if show:
            self.screen.send()  # and the status

    # ================================================================ the worker

    async def _worker(self) -> None:
        while True:
            event = await self._inbox.get()
            self.progress.step_started()
            try:
                await self._handle(event)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.exception("engine: %s failed", type(event).__name__)
                await self._after_fault(exc)
            finally:
                self.progress.step_ended()
            raise_if_cancelling()

    async def _handle(self, event: InboxEvent) -> None:
        cur = self.current
        match event:
            case OfferNext():
                if self.state is State.IDLE and cur is None and self.queue:
                    await self._offer_next()
            case Presented(presentation):
                if cur is not None and self.state is State.AWAITING_PAYMENT:
                    await self.present(presentation=presentation)
            case CashierAction(action, trans_no):
                if cur is not None and cur.tx.trans_no == trans_no:
                    trigger = self.confirm if action == "confirm" else self.cancel
                    await trigger(cause="cashier")
            case ClosePushed(trans_no, message_id):
                await self._close(trans_no)
                self.journal.close_applied(message_id)

    async def _after_fault(self, exc: Exception) -> None:
        """An exception escaped while an order was on the terminal (a state
        callback, the screen, sealing, a journal refusal): end that order the
        way recovery after a crash would, report it, and go on with the next.
        If even that fails, the engine counts as stalled: the watchdog stops
        and systemd restarts the agent, whose recovery settles it."""
        cur = self.current
        if cur is None:
            return
        trans_no = cur.tx.trans_no
        reason = f"terminal fault ({type(exc).__name__})"
        try:
            await self.arming.disarm()
            if self.state is State.IDLE:  # failed before the order's first transition
                self.current = None
                self._idle.set()
            else:
                await self.fault()
                raise_if_cancelling()
            tx = self.journal.get(trans_no)
            if tx is not None and not tx.final:
                log.error("order %s interrupted by a %s: settling it", trans_no, reason)
                await self._settle(tx, reoffer=False, reason=reason)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("engine: %s could not be settled after a fault", trans_no)
            self.progress.stuck = True
        finally:
            self.outbox.wake()  # whatever the interrupted step journaled goes out

    async def _draw(self, order: ShownOrder) -> int | None:
        """Draw OFFERED's screen, unless drawn already (None), and yield:
        Linux wakes the UI on this core, where it would wait behind the work
        that follows (the journal's write, the OFFERED trigger) while the
        other core idles (docs/perf-log.md)."""
        if not self.screen.offered(order, self.arming.methods(order)):
            return None
        drawn_at = self.clock.ms()
        await asyncio.sleep(0)  # the bridge writes it
        os.sched_yield()
        return drawn_at

    async def _offer_next(self) -> None:
        tx = self.waiting.next_due()
        if tx is None:
            self._on_status()
            return
        self.current = _Current(tx)
        self._idle.clear()
        await self._draw(tx)  # unless drawn when pushed
        self._hop("shown")
        await self.offer()

    async def _close(self, trans_no: str) -> None:
        if self.current is not None and self.current.tx.trans_no == trans_no:
            if self.state in (State.OFFERED, State.AWAITING_PAYMENT, State.READING):
                await self.close(cause="cloud")
            else:
                log.warning("close for %s ignored: payment already %s", trans_no, self.state.value)
            return
        if not self.waiting.close(trans_no):
            log.warning("close for unknown order %s", trans_no)
            return
        self.screen.send()

    # ================================================================ state callbacks

    async def on_enter_IDLE(self) -> None:
        self.current = None
        self.screen.idle()
        self._idle.set()
        self._inbox.put_nowait(OfferNext())

    async def on_enter_OFFERED(self) -> None:
        cur = self._cur()
        # The order was journaled when pushed and is on screen already
        # (``_offer_next``); now the phase and the event, in one commit
        # (FULL: its fsync makes the push durable too, agent.durability).
        with self.journal.batch():
            self.journal.set_phase(cur.tx.trans_no, Phase.OFFERED)
            self.journal.enqueue_event("displayed", cur.tx.message_id, cur.tx.trans_no)
        self.outbox.wake()
        fail_point("offered")
        if not cur.tx.confirm:
            await self.begin()

    async def on_enter_AWAITING_PAYMENT(self, *, message: str | None = None, **_: object) -> None:
        tx = self._cur().tx
        self.journal.set_phase(tx.trans_no, Phase.AWAITING_PAYMENT)
        fail_point("awaiting_payment")
        self._view(State.AWAITING_PAYMENT, tx, progress=self.arming.prompt(tx), message=message)
        await self.arming.arm(tx)

    async def on_exit_AWAITING_PAYMENT(self, **_: object) -> None:
        await self.arming.disarm()

    async def on_enter_READING(self, *, presentation: Presentation) -> None:
        cur = self._cur()
        self._hop("card_presented")
        fail_point("reading")
        problem = self.arming.problem(cur.tx, presentation)
        if problem:
            await self.retry_read(message=problem)
            return
        cur.card = card_info(presentation)
        read = "Card read" if isinstance(presentation, CardRead) else "Code scanned"
        self._view(State.READING, cur.tx, progress=read, card=cur.card)
        self._hop("card_read")
        await self.authorize(presentation=presentation)

    async def on_enter_AUTHORIZING(self, *, presentation: Presentation) -> None:
        cur = self._cur()
        tx = cur.tx
        request_no = self.settlement.journal_attempt(tx, presentation, self.settings.sn)
        self._hop("payment_journaled")
        crash_point("payment_journaled")
        fail_point("payment_journaled")
        self._view(State.AUTHORIZING, tx, progress="Authorizing...", card=cur.card)
        outcome = await self.settlement.pay(
            tx, request_no, presentation, cancelled=lambda: cur.reverse_now
        )
        if isinstance(outcome, Unknown):
            cur.refused = outcome.refused
        await self._conclude(outcome)

    async def on_enter_RESOLVING(self) -> None:
        cur = self._cur()
        tx = cur.tx
        attempts = self.journal.attempts(tx.trans_no)
        if not attempts:  # nothing was ever sent: close it at the gateway too
            self.journal.enqueue_event("gw:cancel", tx.message_id, tx.trans_no, "payment not sent")
            await self.reversed(reason="payment not sent")
            return
        self.journal.set_phase(tx.trans_no, Phase.RESOLVING)
        fail_point("resolving")
        self._view(State.RESOLVING, tx, progress="Checking the payment result...", card=cur.card)
        outcome = await self.settlement.resolve(
            tx,
            attempts[-1].request_no,
            refused=cur.refused,
            cancelled=lambda: cur.reverse_now,
            reversing=lambda: self.screen.progress("Cancelling the payment..."),
        )
        await self._conclude(outcome)

    async def _conclude(self, outcome: Outcome) -> None:
        """Fire the trigger for what settlement found."""
        match outcome:
            case Approved(result):
                await self.approve(result=result)
            case Declined(result):
                await self.decline(result=result)
            case Reversed(reason):
                await self.reversed(reason=reason)
            case Unknown():
                await self.unknown()

    async def on_enter_APPROVED(self, *, result: m.CashierResult) -> None:
        await self._final(
            Phase.APPROVED,
            "paid",
            reason=None,
            fields={
                "auth_code": result.auth_code,
                "ref_no": result.ref_no,
                "pay_method_id": result.pay_method_id,
            },
        )

    async def on_enter_DECLINED(self, *, result: m.CashierResult) -> None:
        reason = decline_reason(result.trans_error_code, result.trans_error_msg)
        await self._final(
            Phase.DECLINED, "failed", reason=reason, fields={"error_code": result.trans_error_code}
        )

    async def on_enter_CANCELLED(self, *, cause: str = "", reason: str | None = None) -> None:
        cur = self._cur()
        if cause == "cashier":
            reason = "Cancelled on the terminal"
            self.journal.enqueue_event("gw:cancel", cur.tx.message_id, cur.tx.trans_no, "cashier")
        await self._final(Phase.CANCELLED, "cancelled", reason=reason)

    async def on_enter_CLOSED(self, **_: object) -> None:
        await self._final(Phase.CLOSED, "closed", reason="Closed by the POS")

    async def on_enter_EXPIRED(self) -> None:
        # No cashier.trans.cancel: the gateway closes an order that passed its
        # expires_at itself (status 1, EXPIRED); a cancel would race it and
        # could leave the POS with 3 where the terminal shows "expired".
        await self._final(Phase.EXPIRED, "failed", reason="expired")

    async def _final(
        self,
        phase: Phase,
        event: str,
        *,
        reason: str | None,
        fields: dict[str, str | None] | None = None,
    ) -> None:
        cur = self._cur()
        copies = self.settings.receipts  # queued with it (the printer sees the new screen)
        final = record_final(
            self.journal, cur.tx, phase, event, reason=reason, fields=fields, receipts=copies
        )
        fail_point("final")
        result = result_info(final.phase, final.reason, cur.card, final.auth_code)
        self._view(self.state, cur.tx, card=cur.card, result=result)
        self._hop("result_shown")
        if final.new:
            self.outbox.wake()
        why = f" ({final.reason})" if final.reason else ""
        log.info("order %s final: %s%s", cur.tx.trans_no, result.outcome, why)
        if self._recovering:  # nobody is looking: no need to keep the result on screen
            await self.done()

    # ================================================================ helpers

    def _cur(self) -> _Current:
        if self.current is None:
            raise RuntimeError("no current transaction")
        return self.current

    def _hop(self, name: str) -> None:
        if self.current is not None:
            self.journal.hop(self.current.tx.trans_no, name, self.clock.ms())

    def _backoff(self) -> Backoff:
        return Backoff(self.settings.retry_base, self.settings.retry_cap, self._rng)

    def _view(
        self,
        state: State,
        tx: TxRow,
        *,
        progress: str | None = None,
        card: bp.CardInfo | None = None,
        result: bp.ResultInfo | None = None,
        message: str | None = None,
    ) -> None:
        methods = self.arming.methods(tx)
        self.screen.show(look(state, tx, methods, progress, card, result, message))
