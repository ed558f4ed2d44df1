"""The transaction engine: from a journaled push to a final, reported outcome.

It is the model of the state table in ``agent.states`` and holds every rule
about money (DESIGN.md "Transaction engine", docs/protocol.md parts C and D):

* A push is verified and journaled, and ``handle_push`` returns (after which
  the MQTT link sends the PUBACK) only once it is on disk. Its commit is not
  fsynced at once: an idle terminal draws the order first and the OFFERED
  commit's fsync covers the push; otherwise (busy, or the worker slow) the
  push is fsynced in a worker thread (``Journal.sync``). No event leaves the
  outbox before that. Redeliveries are recognised by ``message_id`` and
  ``trans_no`` and do nothing.
* One transaction at a time; others wait in a queue, FIFO or FILO as each
  order asks, and the TMS is told ``busy``.
* A payment attempt's ``request_no`` is journaled before the first send. A
  timeout, network failure, refused or nonsensical answer makes the outcome
  unknown: RESOLVING asks ``cashier.trans.detail`` until ``resolve_deadline``
  and then sends ``cashier.trans.reverse``, retried until acknowledged. The
  payment is never sent again.
* Final outcomes are journaled, shown, then reported through the outbox
  (terminal events, and ``cashier.trans.cancel`` for cashier cancels),
  which is retried until delivered and survives restarts.
* On start, every non-final transaction is resolved (an attempt without an
  answer), expired, or queued again, before new pushes are taken.

All inputs (presentations, cashier intents, close pushes) pass through one
inbox consumed by one worker task, so triggers never race; the state
machine's own timers fire ``expire`` and ``done``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import signal
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Protocol

from agent.gateway import GatewayClient, OrderRef, decline_reason
from agent.journal import Journal, JournalError, Phase, TxRow
from agent.mqtt_link import LinkDown, LinkError
from agent.reject_reports import RejectReports, Report
from agent.states import RESULT_SECONDS, State, build_machine
from cloud import envelope, money, redact
from cloud import messages as m
from cloud.errors import CloudRejected, CloudUnavailable, SadadError
from cloud.signing import PrivateKeyLike, PublicKeyLike
from cloud.timeline import busy_reason
from drivers.base import (
    ArmContext,
    CardGone,
    CardNotSupported,
    CardRead,
    EntryMode,
    Presentation,
    ReaderError,
    ReaderOffline,
    ReaderState,
    WalletCode,
)

log = logging.getLogger(__name__)

# The hop names of the per-payment timeline are cloud.timeline.HOPS.

# How long an idle terminal's push waits for the worker's OFFERED commit
# (whose fsync covers the push) before it fsyncs the push itself.
OFFER_COMMIT_WAIT = 0.05


class ReaderPort(Protocol):
    """What the engine needs of a reader (``drivers.registry.ManagedReader``)."""

    @property
    def name(self) -> str: ...

    @property
    def kind(self) -> str: ...

    @property
    def state(self) -> ReaderState: ...

    async def arm(self, ctx: ArmContext) -> None: ...

    async def next_presentation(self) -> Presentation: ...

    async def disarm(self) -> None: ...


EventPublisher = Callable[[bytes], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class EngineSettings:
    sn: str
    private_key: PrivateKeyLike
    gateway_public_key: PublicKeyLike
    resolve_deadline: float = 60.0
    result_seconds: float = RESULT_SECONDS
    retry_base: float = 1.0
    retry_cap: float = 30.0
    # The longest a payment call may take, whatever happens under it (the HTTP
    # client has its own timeout and may re-send once): then the outcome is
    # unknown and RESOLVING settles it.
    authorize_deadline: float = 40.0
    # How long one step of the worker may go without progress before the
    # watchdog stops: longer than any legitimate wait between two signs of
    # life (a reversal retry: retry_cap + an HTTP timeout).
    stall_after: float = 120.0


@dataclass(slots=True)
class ScreenView:
    """Everything the checkout shows; only masked card data."""

    screen: m.Screen
    order: dict[str, Any] | None = None
    progress: str | None = None
    card: dict[str, str] | None = None
    result: dict[str, Any] | None = None
    message: str | None = None
    queue: int = 0


@dataclass(slots=True)
class _Current:
    tx: TxRow
    card: dict[str, str] | None = None
    resolving_rejected: bool = False
    reverse_now: bool = False  # cancelled by the cashier once a payment may have left
    extra: dict[str, Any] = field(default_factory=dict)


# What the result screen calls each final phase.
_OUTCOMES = {
    Phase.APPROVED: "approved",
    Phase.DECLINED: "declined",
    Phase.CANCELLED: "cancelled",
    Phase.CLOSED: "closed",
    Phase.EXPIRED: "expired",
}


def _wall_ms() -> int:
    return time.time_ns() // 1_000_000


class Clock:
    """Wall time for the wire, derived from the monotonic clock so hops only increase."""

    def __init__(self) -> None:
        self._wall0 = time.time_ns() // 1_000_000
        self._mono0 = time.monotonic_ns() // 1_000_000

    def ms(self) -> int:
        return self._wall0 + (time.monotonic_ns() // 1_000_000 - self._mono0)


class Engine:
    """The model of the state machine. Use from one asyncio loop."""

    state: State  # set by transitions

    def __init__(
        self,
        settings: EngineSettings,
        journal: Journal,
        gateway: GatewayClient,
        readers: Sequence[ReaderPort] = (),
        *,
        on_screen: Callable[[ScreenView], None] | None = None,
        on_status: Callable[[], None] | None = None,
        rng: random.Random | None = None,
        reject_reports: RejectReports | None = None,
    ) -> None:
        self.settings = settings
        self.journal = journal
        self.gateway = gateway
        self.readers = list(readers)
        self._on_screen = on_screen or (lambda _view: None)
        self._on_status = on_status or (lambda: None)
        self._publish: EventPublisher | None = None
        self._rng = rng or random.Random()
        self.clock = Clock()
        self.queue: deque[str] = deque()
        self.current: _Current | None = None
        self.view = ScreenView(screen=m.Screen.IDLE)
        self._inbox: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        self._outbox_wake = asyncio.Event()
        # Set by an idle terminal's push until the OFFERED commit (FULL) has
        # made it durable too; see handle_push.
        self._offer_committed: asyncio.Future[None] | None = None
        self._idle = asyncio.Event()
        self._idle.set()
        self._reader_tasks: list[asyncio.Task[None]] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._recovering = False
        self._reports = reject_reports or RejectReports()
        self._busy_since: float | None = None  # the worker's current step began
        self._payment: asyncio.Future[m.CashierResult] | None = None  # a create in flight
        self._last_beat = 0.0
        self._stuck = False
        self._report_timer: asyncio.TimerHandle | None = None
        self._rejected_seq = 0
        self.gateway_ok: bool | None = None
        build_machine(self, settings.result_seconds)

    # ================================================================ life cycle

    def set_event_publisher(self, publish: EventPublisher | None) -> None:
        self._publish = publish
        self._outbox_wake.set()

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
            await self.trigger("resume")  # type: ignore[attr-defined]
            _raise_if_cancelling()
            await self._idle.wait()
        elif tx.expires_at <= _wall_ms():
            self._finish_offline(tx, Phase.EXPIRED, "failed", reason="expired")
        elif reoffer:
            log.info("resuming %s: order shown again", tx.trans_no)
            self._enqueue(tx.trans_no, tx.queue_mode)
        else:
            with self.journal.batch():
                if self.journal.finish(tx.trans_no, Phase.CANCELLED, reason=reason):
                    self.journal.enqueue_event("cancelled", tx.message_id, tx.trans_no, reason)
                    self.journal.enqueue_event("gw:cancel", tx.message_id, tx.trans_no, reason)
            self._outbox_wake.set()
            self._show()

    def start(self) -> None:
        """Start the worker and the outbox drainer (after ``recover``)."""
        self._tasks = [
            asyncio.create_task(self._worker(), name="engine-worker"),
            asyncio.create_task(self._drain_outbox(), name="engine-outbox"),
        ]
        self._inbox.put_nowait(("next", None))

    async def stop(self) -> None:
        if self._report_timer is not None:
            self._report_timer.cancel()
        self._flush_reports(stopping=True)  # a held count is not lost with the process
        await self._stop_readers()
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
        """The worker and the outbox drainer are running (for the watchdog)."""
        return bool(self._tasks) and not any(t.done() for t in self._tasks)

    def seconds_left(self) -> float:
        """Time until the current order's ``expires_at`` (used by the state deadline)."""
        if self.current is None:
            return 0.001
        return max(0.001, (self.current.tx.expires_at - _wall_ms()) / 1000)

    # ================================================================ inputs

    async def handle_push(self, payload: bytes) -> None:
        """Verify and journal one push. Returns once it is durable (then PUBACK).

        ``payload`` is whatever arrived on the orders topic, from anyone
        (docs/protocol.md part C): anything that is not a genuine push for
        this terminal is rejected, reported (rate-limited) and acknowledged,
        so that no bytes can stop the terminal. Raises JournalError only, for
        a genuine push that could not be made durable (it is then not
        acknowledged, and the broker delivers it again)."""
        received = self.clock.ms()
        if len(payload) > m.MAX_PUSH_BYTES:  # a 3.1.1 broker cannot be told the limit
            why = f"{len(payload)} bytes, over the {m.MAX_PUSH_BYTES} a push may have"
            self._reject(len(payload), envelope.PushRejected("too_large", why))
            return
        try:
            push, biz = envelope.open_push(
                payload, self.settings.gateway_public_key, self.settings.sn
            )
        except envelope.PushRejected as exc:
            self._reject(len(payload), exc)
            return
        try:
            await self._take_push(push, biz, received)
        except JournalError:
            raise
        except Exception as exc:
            # A bug on a genuine push: not acknowledging it would have the broker
            # deliver it first, forever, and no order after it would be taken.
            # Rejected under its own (signed) message_id, so the TMS can tell
            # which order; whatever of it was committed is made durable first.
            log.exception("push %s could not be taken; rejected", push.message_id)
            why = f"internal error ({type(exc).__name__})"
            self._reject(
                len(payload),
                envelope.PushRejected("internal_error", why, push.message_id, topic=push.topic),
            )
            await self._sync_journal()

    async def _take_push(self, push: m.Push, biz: m.PushOrder | m.PushClose, received: int) -> None:
        if self.journal.seen_push(push.message_id):
            log.info("push %s delivered again: already handled", push.message_id)
            await self._sync_journal()  # its first delivery's sync may have failed
            return
        if isinstance(biz, m.PushClose):
            if self.journal.record_close_push(push.message_id, biz.trans_no):
                _crash_point("close_journaled")
                self._inbox.put_nowait(("close", (biz.trans_no, push.message_id)))
            return
        fields = {
            "trans_no": biz.trans_no,
            "merchant_no": biz.merchant_no,
            "merchant_order_no": biz.merchant_order_no,
            "trans_type": int(biz.trans_type),
            "orig_trans_no": biz.orig_trans_no,
            "currency": biz.price_currency,
            "amount": biz.order_amount,
            "tip_amount": biz.tip_amount,
            # Free text from the POS: kept as it may be shown (a screen line
            # is never longer; control and bidi-control characters dropped).
            "description": redact.display(biz.description, m.MAX_DESCRIPTION)
            if biz.description
            else None,
            "pay_scenario": biz.pay_scenario.value if biz.pay_scenario else None,
            "confirm": int(biz.confirm_on_terminal),
            "expires_at": biz.expires_at,
            "queue_mode": biz.order_queue_mode.value,
        }
        busy = self.current is not None or bool(self.queue)
        # One commit, written now and fsynced below (the money rule needs it
        # on disk before the PUBACK, not before the screen).
        with self.journal.batch(deferred_sync=True):
            if not self.journal.record_order(push.message_id, fields):
                log.info("order %s pushed again under a new message: ignored", biz.trans_no)
                return
            self.journal.enqueue_event("received", push.message_id, biz.trans_no)
            if busy:  # the TMS learns where the order waits (cloud.timeline.busy_reason)
                mode = biz.order_queue_mode.value
                position = 1 if mode == m.QueueMode.FILO.value else len(self.queue) + 1
                self.journal.enqueue_event(
                    "busy", push.message_id, biz.trans_no, busy_reason(position)
                )
        self.journal.hop(biz.trans_no, "push_received", received)
        self.journal.hop(biz.trans_no, "journaled", self.clock.ms())
        # Idle: the worker offers it next and that draws the screen (an idle
        # screen with "1 waiting" first would only delay it).
        self._enqueue(biz.trans_no, biz.order_queue_mode.value, show=busy)
        self._inbox.put_nowait(("next", None))
        if not busy:
            # The worker draws the order, then commits OFFERED with an fsync
            # that covers this push too. An fsync of our own meanwhile (a
            # thread) would compete with the worker for the interpreter: the
            # order reached the screen ~0.9 ms later at p50 in push_to_screen.
            await self._wait_offer_committed()
        # The link sends the PUBACK when this returns: only once it is durable.
        await self._sync_journal()
        self.journal.hop(biz.trans_no, "acknowledged", self.clock.ms())
        if busy:  # else the worker shows it first and wakes the outbox then
            self._outbox_wake.set()
        log.info(
            "order %s journaled: %s%s",
            biz.trans_no,
            money.fmt(biz.trans_amount, biz.price_currency),
            " (queued, terminal busy)" if busy else "",
        )

    async def _wait_offer_committed(self) -> None:
        self._offer_committed = asyncio.get_running_loop().create_future()
        try:
            await asyncio.wait_for(self._offer_committed, OFFER_COMMIT_WAIT)
        except TimeoutError:
            pass  # the worker is slow: _sync_journal does it
        finally:
            self._offer_committed = None

    async def _sync_journal(self) -> None:
        """Deferred commits made durable (``Journal.sync``) in a worker thread,
        so the loop goes on meanwhile. Raises JournalError."""
        if self.journal.unsynced:
            await asyncio.to_thread(self.journal.sync)

    def _reject(self, size: int, exc: envelope.PushRejected) -> None:
        """Journal and report a rejected push; never raises (the push is
        acknowledged whatever happens here)."""
        try:
            if exc.message_id is not None:
                self._reject_genuine(exc)
            else:
                self._reject_unverified(size, exc)
        except Exception:
            log.exception("push rejection (%s) not journaled; acknowledged anyway", exc.reason)

    def _reject_genuine(self, exc: envelope.PushRejected) -> None:
        """A push the gateway signed, refused for what it says (another
        terminal's, stale, expired): its message_id is genuine, so it goes
        with the pushes, where a redelivery is recognised, and the TMS hears
        of each one under that id (there are only as many as the gateway
        signed: no rate limit is needed, and the order's fate depends on
        it). Record and event in one commit."""
        assert exc.message_id is not None
        message_id = redact.safe(exc.message_id, 64)
        with self.journal.batch():
            if not self.journal.record_rejected_push(
                message_id, redact.safe(exc.topic or "unknown"), exc.reason
            ):
                return  # delivered again: reported the first time
            self.journal.enqueue_event("rejected", message_id, None, exc.reason)
        log.warning("push %s rejected (%s): %s", message_id, exc.reason, redact.safe(str(exc), 160))
        self._outbox_wake.set()

    def _reject_unverified(self, size: int, exc: envelope.PushRejected) -> None:
        """Anything else: not a push anyone signed. Nothing of it is trusted,
        its claimed message_id included (a forgery must not claim the id of a
        genuine push to come), and only a bounded, rate-limited record of it
        is kept: one journal row, event and log line per report, none for a
        rejection counted for a later report."""
        report = self._reports.offer(exc.reason, time.monotonic())
        if report is None:
            self._schedule_report_flush()
            return
        claimed = redact.safe(exc.claimed_id, 64) if exc.claimed_id is not None else None
        detail = redact.safe(str(exc), 160)
        log.warning(
            "push rejected (%s, %d bytes%s): %s",
            report.text,
            size,
            f", claiming message_id {claimed}" if claimed is not None else "",
            detail,
        )
        self._record_report(report, detail, size, claimed)

    def _record_report(self, report: Report, detail: str, size: int, claimed: str | None) -> None:
        self._rejected_seq += 1
        self.journal.record_rejection(
            reason=report.reason,
            detail=detail,
            size=size,
            suppressed=report.suppressed,
            claimed_id=claimed,
            event_id=f"rejected-{_wall_ms()}-{self._rejected_seq}",
            event_reason=report.text,
        )
        self._outbox_wake.set()

    def _schedule_report_flush(self) -> None:
        if self._report_timer is not None:
            return
        due = self._reports.due(time.monotonic())
        if due is None:
            return
        self._report_timer = asyncio.get_running_loop().call_later(due + 0.01, self._flush_reports)

    def _flush_reports(self, *, stopping: bool = False) -> None:
        """The rejections counted while reports were held, reported as one
        (``stopping``: now, token or not; it leaves with the next start)."""
        self._report_timer = None
        now = time.monotonic()
        report = self._reports.drain() if stopping else self._reports.flush(now)
        if report is None:
            if not stopping:
                self._schedule_report_flush()
            return
        count = report.suppressed + 1
        log.warning("%d more pushes rejected (the last: %s)", count, report.reason)
        try:
            self._record_report(report, f"{count} rejected since the last report", 0, None)
        except Exception:
            log.exception("push rejection report not journaled")

    async def handle_intent(self, name: str) -> dict[str, Any]:
        """A cashier intent from the UI bridge: confirm or cancel the current order."""
        if name not in ("confirm", "cancel"):
            raise ValueError(f"unknown intent {name}")
        if self.current is None:
            return {"accepted": False, "reason": "no order on screen"}
        if name == "cancel" and self.state in (State.AUTHORIZING, State.RESOLVING):
            # The worker is inside that state: act here. A payment that may have
            # left is reversed, never left to complete.
            self.current.reverse_now = True
            if self._payment is not None:
                self._payment.cancel()
            log.warning(
                "cashier cancelled %s during authorization: reversing", self.current.tx.trans_no
            )
            return {"accepted": True}
        self._inbox.put_nowait((name, self.current.tx.trans_no))
        return {"accepted": True}

    def _enqueue(self, trans_no: str, mode: str, *, show: bool = True) -> None:
        if mode == m.QueueMode.FILO.value:
            self.queue.appendleft(trans_no)
        else:
            self.queue.append(trans_no)
        if show:
            self._show()  # and the status

    # ================================================================ the worker

    async def _worker(self) -> None:
        while True:
            kind, arg = await self._inbox.get()
            self._busy_since = time.monotonic()
            try:
                await self._handle(kind, arg)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.exception("engine: %s failed", kind)
                await self._after_fault(exc)
            finally:
                self._busy_since = None
            _raise_if_cancelling()

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
            await self._stop_readers()
            if self.state is State.IDLE:  # failed before the order's first transition
                self.current = None
                self._idle.set()
            else:
                await self.trigger("fault")  # type: ignore[attr-defined]
                _raise_if_cancelling()
            tx = self.journal.get(trans_no)
            if tx is not None and not tx.final:
                log.error("order %s interrupted by a %s: settling it", trans_no, reason)
                await self._settle(tx, reoffer=False, reason=reason)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("engine: %s could not be settled after a fault", trans_no)
            self._stuck = True
        finally:
            self._outbox_wake.set()  # whatever the interrupted step journaled goes out

    def _beat(self) -> None:
        """A long step is still moving (for ``stalled``)."""
        self._last_beat = time.monotonic()

    def stalled(self, now: float | None = None) -> bool:
        """The worker has been in one step for ``stall_after`` s without a
        sign of progress, or could not settle an order after a fault: the
        watchdog must stop (a restart and its recovery settle it)."""
        if self._stuck:
            return True
        busy = self._busy_since
        if busy is None:
            return False
        now = time.monotonic() if now is None else now
        return now - max(busy, self._last_beat) > self.settings.stall_after

    async def _handle(self, kind: str, arg: Any) -> None:
        cur = self.current
        if kind == "next":
            if self.state is State.IDLE and self.current is None and self.queue:
                await self._offer_next()
        elif kind == "presentation":
            if cur is not None and self.state is State.AWAITING_PAYMENT:
                await self.trigger("present", presentation=arg)  # type: ignore[attr-defined]
        elif kind in ("confirm", "cancel"):
            if cur is not None and cur.tx.trans_no == arg:
                await self.trigger(kind, cause="cashier")  # type: ignore[attr-defined]
        elif kind == "close":
            trans_no, message_id = arg
            await self._close(trans_no)
            self.journal.close_applied(message_id)

    async def _offer_next(self) -> None:
        while self.queue:
            trans_no = self.queue.popleft()
            tx = self.journal.get(trans_no)
            if tx is None or tx.final:
                continue
            if tx.expires_at <= _wall_ms():
                self._finish_offline(tx, Phase.EXPIRED, "failed", reason="expired")
                continue
            self.current = _Current(tx)
            self._idle.clear()
            # The order on screen first: OFFERED's screen needs nothing but
            # the order, and the trigger takes several turns of the loop.
            self.view = ScreenView(
                screen=State.OFFERED.screen(tx.confirm),
                order=self._order_view(tx),
                progress="Confirm the amount" if tx.confirm else None,
            )
            self._show()
            self._hop("shown")
            await asyncio.sleep(0)  # the bridge writes it before the trigger runs
            await self.trigger("offer")  # type: ignore[attr-defined]
            return
        self._on_status()

    async def _close(self, trans_no: str) -> None:
        if self.current is not None and self.current.tx.trans_no == trans_no:
            if self.state in (State.OFFERED, State.AWAITING_PAYMENT, State.READING):
                await self.trigger("close", cause="cloud")  # type: ignore[attr-defined]
            else:
                log.warning("close for %s ignored: payment already %s", trans_no, self.state.value)
            return
        tx = self.journal.get(trans_no)
        if tx is None:
            log.warning("close for unknown order %s", trans_no)
            return
        with contextlib.suppress(ValueError):
            self.queue.remove(trans_no)
        if not tx.final and not self.journal.attempts(trans_no):
            self._finish_offline(tx, Phase.CLOSED, "closed", reason="closed by the POS")
        self._show()

    def _finish_offline(self, tx: TxRow, phase: Phase, event: str, reason: str) -> None:
        """Finish a transaction that is not on screen (queued or recovered)."""
        if self.journal.finish(tx.trans_no, phase, reason=reason):
            self.journal.enqueue_event(event, tx.message_id, tx.trans_no, reason)
            self._outbox_wake.set()

    # ================================================================ state callbacks

    async def on_enter_IDLE(self, *_: Any, **__: Any) -> None:
        self.current = None
        self.view = ScreenView(screen=m.Screen.IDLE, queue=len(self.queue))
        self._show()
        self._idle.set()
        self._inbox.put_nowait(("next", None))

    async def on_enter_OFFERED(self, *_: Any, **__: Any) -> None:
        cur = self._cur()
        # The order was journaled when pushed and is on screen already
        # (``_offer_next``); now the phase and the event, in one commit.
        with self.journal.batch():
            self.journal.set_phase(cur.tx.trans_no, Phase.OFFERED)
            self.journal.enqueue_event("displayed", cur.tx.message_id, cur.tx.trans_no)
        waiter = self._offer_committed
        if waiter is not None and not waiter.done():
            waiter.set_result(None)  # that fsync made the push durable: its PUBACK may go
        self._outbox_wake.set()
        _fail_point("offered")
        if not cur.tx.confirm:
            await self.trigger("begin")  # type: ignore[attr-defined]

    async def on_enter_AWAITING_PAYMENT(
        self, *_: Any, message: str | None = None, **__: Any
    ) -> None:
        cur = self._cur()
        self.journal.set_phase(cur.tx.trans_no, Phase.AWAITING_PAYMENT)
        _fail_point("awaiting_payment")
        self.view = ScreenView(
            screen=m.Screen.WAITING_FOR_CARD,
            order=self._order_view(cur.tx),
            progress=self._prompt(cur.tx),
            message=message,
        )
        self._show()
        await self._start_readers(cur.tx)

    async def on_exit_AWAITING_PAYMENT(self, *_: Any, **__: Any) -> None:
        await self._stop_readers()

    async def on_enter_READING(self, *_: Any, presentation: Presentation, **__: Any) -> None:
        cur = self._cur()
        self._hop("card_presented")
        _fail_point("reading")
        problem = self._check_presentation(cur.tx, presentation)
        if problem:
            await self.trigger("retry_read", message=problem)  # type: ignore[attr-defined]
            return
        if isinstance(presentation, CardRead):
            cur.card = {
                "masked_pan": presentation.masked_pan,
                "brand": presentation.brand,
                "entry_mode": presentation.entry_mode.value,
            }
        else:
            cur.card = {
                "masked_pan": presentation.masked,
                "brand": presentation.wallet.value,
                "entry_mode": EntryMode.WALLET.value,
            }
        self.view = ScreenView(
            screen=m.Screen.READING,
            order=self._order_view(cur.tx),
            progress="Card read" if isinstance(presentation, CardRead) else "Code scanned",
            card=cur.card,
        )
        self._show()
        self._hop("card_read")
        await self.trigger("authorize", presentation=presentation)  # type: ignore[attr-defined]

    async def on_enter_AUTHORIZING(self, *_: Any, presentation: Presentation, **__: Any) -> None:
        cur = self._cur()
        tx = cur.tx
        attempt_no = len(self.journal.attempts(tx.trans_no)) + 1
        request_no = f"{self.settings.sn}-{tx.trans_no}-{attempt_no}"
        card_fields: dict[str, Any] = {}
        if isinstance(presentation, CardRead):
            card_fields = {
                "masked_pan": presentation.masked_pan,
                "card_brand": presentation.brand,
                "entry_mode": presentation.entry_mode.value,
            }
        else:
            card_fields = {"card_brand": presentation.wallet.value, "entry_mode": "WALLET"}
        kind = "wallet" if isinstance(presentation, WalletCode) else "card"
        self.journal.set_phase(tx.trans_no, Phase.AUTHORIZING, **card_fields)
        self.journal.new_attempt(tx.trans_no, request_no, kind)
        self._hop("payment_journaled")
        _crash_point("payment_journaled")
        _fail_point("payment_journaled")
        self.view = ScreenView(
            screen=m.Screen.AUTHORIZING,
            order=self._order_view(tx),
            progress="Authorizing...",
            card=cur.card,
        )
        self._show()
        ref = OrderRef.of(tx)
        self._hop("sent")
        # The call is a task of its own, so that neither a hung network nor the
        # cashier's cancel can hold the terminal here: either makes the outcome
        # unknown, which RESOLVING settles (a cancel by reversing at once).
        if isinstance(presentation, CardRead):
            call = self.gateway.pay_card(ref, request_no, presentation)
        else:
            call = self.gateway.pay_wallet(ref, request_no, presentation)
        del presentation  # clear card data leaves our hands with the call
        payment = asyncio.ensure_future(call)
        self._payment = payment
        try:
            await asyncio.wait({payment}, timeout=self.settings.authorize_deadline)
        finally:
            self._payment = None
            if not payment.done():
                payment.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await payment
        if payment.cancelled() or not payment.done():
            why = "cancelled on the terminal" if cur.reverse_now else "no answer in time"
            log.warning("payment %s outcome unknown: %s", tx.trans_no, why)
            await self.trigger("unknown")  # type: ignore[attr-defined]
            return
        try:
            result = payment.result()
        except CloudUnavailable as exc:
            self.gateway_ok = False
            log.warning("payment %s outcome unknown: %s", tx.trans_no, exc)
            await self.trigger("unknown")  # type: ignore[attr-defined]
            return
        except CloudRejected as exc:
            self.gateway_ok = True
            log.warning("payment %s refused by the gateway: %s", tx.trans_no, exc)
            cur.resolving_rejected = True
            await self.trigger("unknown")  # type: ignore[attr-defined]
            return
        self.gateway_ok = True
        self._hop("answered")
        _crash_point("answered")
        _fail_point("answered")
        await self._adopt(request_no, result, from_create=True)

    async def on_enter_RESOLVING(self, *_: Any, **__: Any) -> None:
        cur = self._cur()
        tx = cur.tx
        attempts = self.journal.attempts(tx.trans_no)
        if not attempts:  # nothing was ever sent: close it at the gateway too
            self.journal.enqueue_event("gw:cancel", tx.message_id, tx.trans_no, "payment not sent")
            await self.trigger("reversed", reason="payment not sent")  # type: ignore[attr-defined]
            return
        request_no = attempts[-1].request_no
        self.journal.set_phase(tx.trans_no, Phase.RESOLVING)
        _fail_point("resolving")
        self.view = ScreenView(
            screen=m.Screen.AUTHORIZING,
            order=self._order_view(tx),
            progress="Checking the payment result...",
            card=cur.card,
        )
        self._show()
        if cur.reverse_now:  # the cashier cancelled: undo it, whatever became of it
            await self._reverse(request_no)
            return
        deadline = time.monotonic() + self.settings.resolve_deadline
        delay = self.settings.retry_base
        while True:
            self._beat()
            try:
                detail = await self.gateway.detail(tx.trans_no, request_no)
                self.gateway_ok = True
                if detail.trans_status.is_final:
                    self._hop("answered")
                    await self._adopt(request_no, detail, from_create=False)
                    return
            except CloudUnavailable as exc:
                self.gateway_ok = False
                log.warning("detail %s: %s", tx.trans_no, exc)
            except CloudRejected as exc:
                log.warning("detail %s refused: %s", tx.trans_no, exc)
            left = deadline - time.monotonic()
            if cur.resolving_rejected or cur.reverse_now or left <= 0:
                break
            # Never sleep past the deadline: the last detail is asked at it.
            await asyncio.sleep(min(self._jitter(delay), left))
            delay = min(delay * 2, self.settings.retry_cap)
        await self._reverse(request_no)

    async def _reverse(self, request_no: str) -> None:
        cur = self._cur()
        tx = cur.tx
        self.journal.reverse_requested(request_no)
        self.view.progress = "Cancelling the payment..."
        self._show()
        delay = self.settings.retry_base
        while True:
            self._beat()
            try:
                result = await self.gateway.reverse(
                    tx.trans_no, request_no, "outcome unknown (timeout reversal)"
                )
                self.journal.reverse_acked(request_no)
                self.gateway_ok = True
                log.warning("payment %s reversed", tx.trans_no)
                await self._adopt(request_no, result, from_create=False, reversed_=True)
                return
            except CloudRejected as exc:
                # Nothing to reverse (never arrived, or already final): learn the truth.
                log.warning("reverse %s refused: %s", tx.trans_no, exc)
                try:
                    detail = await self.gateway.detail(tx.trans_no, request_no)
                except (CloudUnavailable, CloudRejected):
                    pass
                else:
                    if detail.trans_status.is_final:
                        self.journal.reverse_acked(request_no)
                        await self._adopt(request_no, detail, from_create=False, reversed_=True)
                        return
                    if detail.trans_status is m.TransStatus.PREORDER:
                        self.journal.reverse_acked(request_no)
                        self.journal.enqueue_event(
                            "gw:cancel", tx.message_id, tx.trans_no, "payment not completed"
                        )
                        await self.trigger(  # type: ignore[attr-defined]
                            "reversed", reason="Payment not completed - no charge"
                        )
                        return
            except CloudUnavailable as exc:
                self.gateway_ok = False
                log.warning("reverse %s: %s (will retry)", tx.trans_no, exc)
            await asyncio.sleep(self._jitter(delay))
            delay = min(delay * 2, self.settings.retry_cap)

    async def _adopt(
        self,
        request_no: str,
        result: m.CashierResult,
        *,
        from_create: bool,
        reversed_: bool = False,
    ) -> None:
        """Move to the final state the gateway reported."""
        status = result.trans_status
        if status.is_final:
            self.journal.attempt_answered(request_no, int(status))
        if status is m.TransStatus.COMPLETED:
            await self.trigger("approve", result=result)  # type: ignore[attr-defined]
        elif status is m.TransStatus.CLOSED:
            await self.trigger("decline", result=result)  # type: ignore[attr-defined]
        elif status is m.TransStatus.CANCELLED:
            reason = "Payment cancelled - no charge" if reversed_ else "Payment cancelled"
            await self.trigger("reversed", reason=reason)  # type: ignore[attr-defined]
        elif from_create:
            # 0 or 9 from a create: not settled yet, find out by detail.
            await self.trigger("unknown")  # type: ignore[attr-defined]
        else:
            raise SadadError(f"cannot adopt non-final status {status}")

    async def on_enter_APPROVED(self, *_: Any, result: m.CashierResult, **__: Any) -> None:
        await self._final(
            Phase.APPROVED,
            "paid",
            outcome="approved",
            reason=None,
            fields={
                "auth_code": result.auth_code,
                "ref_no": result.ref_no,
                "pay_method_id": result.pay_method_id,
            },
            extra={"auth_code": result.auth_code},
        )

    async def on_enter_DECLINED(self, *_: Any, result: m.CashierResult, **__: Any) -> None:
        reason = decline_reason(result.trans_error_code, result.trans_error_msg)
        await self._final(
            Phase.DECLINED,
            "failed",
            outcome="declined",
            reason=reason,
            fields={"error_code": result.trans_error_code},
        )

    async def on_enter_CANCELLED(
        self, *_: Any, cause: str | None = None, reason: str | None = None, **__: Any
    ) -> None:
        cur = self._cur()
        if cause == "cashier":
            reason = "Cancelled on the terminal"
            self.journal.enqueue_event("gw:cancel", cur.tx.message_id, cur.tx.trans_no, "cashier")
        await self._final(Phase.CANCELLED, "cancelled", outcome="cancelled", reason=reason)

    async def on_enter_CLOSED(self, *_: Any, **__: Any) -> None:
        await self._final(Phase.CLOSED, "closed", outcome="closed", reason="Closed by the POS")

    async def on_enter_EXPIRED(self, *_: Any, **__: Any) -> None:
        # No cashier.trans.cancel: the gateway closes an order that passed its
        # expires_at itself (status 1, EXPIRED); a cancel would race it and
        # could leave the POS with 3 where the terminal shows "expired".
        await self._final(Phase.EXPIRED, "failed", outcome="expired", reason="expired")

    async def _final(
        self,
        phase: Phase,
        event: str,
        *,
        outcome: str,
        reason: str | None,
        fields: dict[str, Any] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        cur = self._cur()
        tx = cur.tx
        # The final phase and the event that reports it: one commit, so a
        # crash between them cannot lose the report.
        with self.journal.batch():
            finished = self.journal.finish(tx.trans_no, phase, reason=reason, **(fields or {}))
            if finished:
                self.journal.enqueue_event(event, tx.message_id, tx.trans_no, reason)
        _fail_point("final")
        stored = None if finished else self.journal.get(tx.trans_no)
        if stored is not None and stored.phase is not phase:
            # States never regress: the screen shows the journaled outcome, whose
            # event went out when it became final; the refused one goes nowhere.
            log.error(
                "CONFLICT: %s is final %s; showing that, not %s", tx.trans_no, stored.phase, phase
            )
            outcome, reason = _OUTCOMES[stored.phase], stored.reason
            approved = stored.phase is Phase.APPROVED
            extra = {"auth_code": stored.auth_code} if approved else None
        self.view = ScreenView(
            screen=m.Screen.RESULT,
            order=self._order_view(tx),
            card=cur.card,
            result={
                "outcome": outcome,
                "reason": reason,
                "masked_pan": (cur.card or {}).get("masked_pan"),
                **(extra or {}),
            },
            queue=len(self.queue),
        )
        self._show()
        self._hop("result_shown")
        if finished:
            self._outbox_wake.set()
        log.info("order %s final: %s%s", tx.trans_no, outcome, f" ({reason})" if reason else "")
        if self._recovering:  # nobody is looking: no need to keep the result on screen
            await self.trigger("done")  # type: ignore[attr-defined]

    # ================================================================ readers

    async def _start_readers(self, tx: TxRow) -> None:
        await self._stop_readers()
        cur_ = money.currency(tx.currency)
        ctx = ArmContext(
            amount=tx.trans_amount,
            currency_numeric=cur_.numeric,
            currency_exponent=cur_.exponent,
            trans_type=0x20 if tx.trans_type == m.TransType.REFUND else 0x00,
        )
        for reader in self._readers_for(tx):
            self._reader_tasks.append(
                asyncio.create_task(self._read_loop(reader, ctx), name=f"read-{reader.name}")
            )

    async def _stop_readers(self) -> None:
        tasks, self._reader_tasks = self._reader_tasks, []
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def _readers_for(self, tx: TxRow) -> list[ReaderPort]:
        if tx.pay_scenario == m.PayScenario.SWIPE_CARD.value:
            return [r for r in self.readers if r.kind != "scanner"]
        if tx.pay_scenario == m.PayScenario.BSCANQR_PAY.value:
            return [r for r in self.readers if r.kind == "scanner"]
        return list(self.readers)

    async def _read_loop(self, reader: ReaderPort, ctx: ArmContext) -> None:
        delay = self.settings.retry_base
        armed = False
        try:
            while True:
                try:
                    if not armed:
                        await reader.arm(ctx)
                        armed = True
                        delay = self.settings.retry_base
                    presentation = await reader.next_presentation()
                except CardGone:
                    self._message("Card removed too soon - tap again")
                    continue
                except CardNotSupported as exc:
                    self._message(f"{exc} - try another card or method")
                    continue
                except ReaderOffline as exc:
                    log.warning("reader %s offline: %s", reader.name, exc)
                    armed = False
                    self._on_status()
                    await asyncio.sleep(self._jitter(delay))
                    delay = min(delay * 2, self.settings.retry_cap)
                    continue
                except ReaderError as exc:
                    self._message(f"Card could not be read - try again ({exc})")
                    continue
                self._inbox.put_nowait(("presentation", presentation))
                return
        finally:
            if armed:
                with contextlib.suppress(ReaderError):
                    await reader.disarm()

    def _check_presentation(self, tx: TxRow, p: Presentation) -> str | None:
        """Why this card or code cannot pay this order, for the cashier; None if it can."""
        if isinstance(p, CardRead) and p.entry_mode is EntryMode.MAGSTRIPE and p.chip_card:
            has_tap = any(r.kind == "pn532" for r in self.readers)
            if has_tap:
                return "This card has a chip - please tap it instead of swiping"
        if isinstance(p, WalletCode) and tx.pay_scenario == m.PayScenario.SWIPE_CARD.value:
            return "This order takes cards only"
        if isinstance(p, CardRead) and tx.pay_scenario == m.PayScenario.BSCANQR_PAY.value:
            return "This order takes wallet codes only"
        return None

    # ================================================================ outbox

    def wake_outbox(self) -> None:
        """Retry the outbox now (the MQTT link just came up): without this a
        queued event would wait out the drainer's backoff."""
        self._outbox_wake.set()

    async def _drain_outbox(self) -> None:
        delay = self.settings.retry_base
        while True:
            self._outbox_wake.clear()
            progress = True
            # Two channels, each kept in order: MQTT events and gateway cancels.
            # One that is down must not hold the other (a cancel waiting behind
            # events while the broker is away would let the order expire).
            blocked: set[str] = set()
            try:  # nothing leaves before the rows it reports are on disk
                await self._sync_journal()
            except JournalError:
                log.exception("outbox: journal not durable; events wait")
                await asyncio.sleep(self._jitter(delay))
                delay = min(delay * 2, self.settings.retry_cap)
                continue
            for row in self.journal.pending_events():
                channel = "gateway" if row.kind.startswith("gw:") else "mqtt"
                if channel in blocked:
                    continue
                try:
                    await self._deliver(row.kind, row.message_id, row.trans_no, row.reason)
                except (LinkError, CloudUnavailable, OSError) as exc:
                    log.info("outbox: %s for %s waits (%s)", row.kind, row.trans_no, exc)
                    progress = False
                    blocked.add(channel)
                    continue
                except Exception:
                    log.exception("outbox: %s for %s failed", row.kind, row.trans_no)
                    progress = False
                    blocked.add(channel)
                    continue
                self.journal.event_sent(row.id)
            if progress:
                delay = self.settings.retry_base
                await self._outbox_wake.wait()
            else:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._outbox_wake.wait(), self._jitter(delay))
                delay = min(delay * 2, self.settings.retry_cap)

    async def _deliver(
        self, kind: str, message_id: str, trans_no: str | None, reason: str | None
    ) -> None:
        if kind == "gw:cancel":
            assert trans_no is not None
            try:
                await self.gateway.cancel(trans_no, reason or "cancelled")
            except CloudRejected as exc:  # already final there: nothing left to do
                log.info("cancel %s: gateway says %s", trans_no, exc)
            return
        if self._publish is None:
            raise LinkDown("no MQTT link")
        hops = self.journal.hops(trans_no) if trans_no else {}
        if kind in ("paid", "failed", "cancelled", "closed") and trans_no:
            hops["event_published"] = self.clock.ms()
        event = envelope.build_event(
            m.EventKind(kind),
            terminal_sn=self.settings.sn,
            message_id=message_id,
            private_key=self.settings.private_key,
            trans_no=trans_no,
            reason=reason,
            hops=hops or None,
        )
        await self._publish(envelope.encode(_struct_fields(event)))
        if "event_published" in hops and trans_no:
            self.journal.hop(trans_no, "event_published", hops["event_published"])

    # ================================================================ helpers

    def _cur(self) -> _Current:
        if self.current is None:
            raise SadadError("no current transaction")
        return self.current

    def _hop(self, name: str) -> None:
        if self.current is not None:
            self.journal.hop(self.current.tx.trans_no, name, self.clock.ms())

    def _jitter(self, delay: float) -> float:
        return delay * (0.5 + self._rng.random())

    def _show(self) -> None:
        """Tell the screen and the status. Never raises: what the checkout
        shows must not decide what happens to the money (a screen that cannot
        be drawn is logged; the order goes on)."""
        self.view.queue = len(self.queue)
        self._beat()
        try:
            self._on_screen(self.view)
        except Exception:
            log.exception("screen %s could not be shown", self.view.screen)
        try:
            self._on_status()
        except Exception:
            log.exception("status could not be published")

    def _message(self, text: str) -> None:
        self.view.message = text
        self._show()

    def _prompt(self, tx: TxRow) -> str:
        kinds = {r.kind for r in self._readers_for(tx)}
        ways = [
            w
            for k, w in (("pn532", "tap"), ("magstripe", "swipe"), ("scanner", "scan"))
            if k in kinds
        ]
        if not ways:
            return "No reader available for this order"
        text = ", ".join(ways[:-1]) + (" or " if len(ways) > 1 else "") + ways[-1]
        return text[0].upper() + text[1:]

    def _order_view(self, tx: TxRow) -> dict[str, Any]:
        methods = sorted(
            {"wallet" if r.kind == "scanner" else "card" for r in self._readers_for(tx)}
        )
        return {
            "trans_no": tx.trans_no,
            "merchant_order_no": tx.merchant_order_no,
            "amount": _amount_text(tx.trans_amount, tx.currency),
            "currency": tx.currency,
            "description": tx.description,
            "trans_type": {1: "sale", 2: "void", 3: "refund"}.get(tx.trans_type, "sale"),
            "methods": methods,
            "expires_at": tx.expires_at,
            "confirm_required": tx.confirm,
        }

    def screen_name(self) -> m.Screen:
        return self.view.screen


def _raise_if_cancelling() -> None:
    """Honour a cancellation that ``transitions`` swallowed.

    ``AsyncMachine.process_context`` catches the CancelledError raised inside a
    trigger's callbacks and returns False, so a task cancelled mid-transition
    (``stop()`` while a payment is with the gateway, or during a reversal)
    would carry on as if nothing happened and ``stop()`` would wait for it
    forever. Call this after each outermost trigger returns."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


_FAILED_AT: set[str] = set()


class Failpoint(RuntimeError):
    """Raised where ``SADAD_AGENT_FAIL_AT`` says (tests only)."""


def _fail_point(step: str) -> None:
    """Raise here, once per process, when ``SADAD_AGENT_FAIL_AT`` names this
    step: the fault tests prove that an exception in any state callback ends
    the order as recovery would, and the terminal takes the next one."""
    if os.environ.get("SADAD_AGENT_FAIL_AT") == step and step not in _FAILED_AT:
        _FAILED_AT.add(step)
        log.warning("fail point %s: raising", step)
        raise Failpoint(f"fail point {step}")


def _crash_point(step: str) -> None:
    """Die here, as a power cut would, when ``SADAD_AGENT_CRASH_AT`` names this
    step. Only the crash tests set it: they prove a restart settles the
    payment from the journal (a failpoint, as in FoundationDB's simulator)."""
    if os.environ.get("SADAD_AGENT_CRASH_AT") == step:
        log.warning("crash point %s: SIGKILL", step)
        os.kill(os.getpid(), signal.SIGKILL)


def _amount_text(amount: Decimal, currency: str) -> str:
    exp = money.currency(currency).exponent
    return f"{amount.quantize(Decimal(1).scaleb(-exp)):f}"


def _struct_fields(event: m.TerminalEvent) -> dict[str, Any]:
    return m.to_fields(event)
