"""The running sandbox: SadadSystem's state and services in one object.

``Gateway`` ties the store, the gateway key, the TMS link (part C) and the
notifier (part B) together for the HTTP handlers in ``sandbox.openapi``
(part A) and ``sandbox.cashier`` (part D):

- ``ok`` / ``fail`` build signed answers (``envelope.build_response``);
- ``move`` changes an order's status through ``Store.move`` (never
  regressing), wakes the notifier when the status is final, and, when a void
  completes, moves the original order to 3;
- ``push_order`` / ``push_close`` publish signed pushes
  (``envelope.build_push``) with the MQTT 5 message expiry;
- ``on_status`` / ``on_event`` take the terminals' retained status and their
  signed events (verified with the terminal's key via ``envelope.open_event``);
- background work: the notifier, a sweeper that closes status-9 orders past
  ``expires_at`` (status 1, ``trans_error_code`` ``EXPIRED``), and startup
  recovery of cashier requests that were in flight when the sandbox stopped;
- ``faults``: the switchboard of forced failures (``sandbox.faults``), whose
  hooks the creates, pushes, events and final moves pass through.

Every method runs on the event loop's thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any

import msgspec

from cloud import envelope, wirejson
from cloud.errors import ContractError, SignatureError
from cloud.messages import (
    AnswerBinding,
    CashierResult,
    EventKind,
    PushClose,
    PushOrder,
    PushTopic,
    QueueMode,
    TerminalStatus,
    TransStatus,
    TransType,
    decode,
)
from cloud.topics import orders_topic
from sandbox.codes import Code
from sandbox.faults import DEFAULT_LATE_S, Faults
from sandbox.keys import Layout, SandboxKeys
from sandbox.notifier import Notifier
from sandbox.store import Order, Store
from sandbox.tms import Tms

log = logging.getLogger(__name__)

SWEEP_INTERVAL_S = 0.5
CLOSE_PUSH_MIN_EXPIRY_S = 60


@dataclass(frozen=True, slots=True)
class Reply:
    """What an HTTP handler answers."""

    http_status: int
    body: bytes
    media_type: str = "application/json"


@dataclass(slots=True)
class Settings:
    layout: Layout
    mqtt_url: str | None
    time_scale: float = 1.0
    hang_seconds: float = 40.0
    http_url: str = ""
    tms_client_id: str | None = None
    # The TMS's broker login (a secure broker: sandbox.broker.TMS_USER); None: anonymous.
    mqtt_username: str | None = None
    mqtt_password: str | None = field(default=None, repr=False)
    late_seconds: float = DEFAULT_LATE_S  # the late-create fault's delay


def cashier_result(order: Order, binding: AnswerBinding) -> CashierResult:
    """Answer ``data`` of the cashier methods for ``order`` as it is now, naming
    the question it answers (part D: ``binding``, from ``Gateway.bind``)."""
    paid = order.trans_status is TransStatus.COMPLETED
    failed = order.trans_status in (TransStatus.CLOSED, TransStatus.CANCELLED)
    return CashierResult(
        trans_no=order.trans_no,
        trans_status=order.trans_status,
        auth_code=order.auth_code if paid else None,
        ref_no=order.ref_no if paid else None,
        pay_method_id=order.pay_method_id if paid else None,
        masked_pan=order.masked_pan if paid else None,
        trans_error_code=order.trans_error_code if failed else None,
        trans_error_msg=order.trans_error_msg if failed else None,
        request_no=binding.request_no,
        terminal_sn=binding.terminal_sn,
        timestamp=binding.timestamp,
    )


class Gateway:
    """See the module docstring."""

    def __init__(self, settings: Settings, keys: SandboxKeys, store: Store) -> None:
        self.settings = settings
        self.keys = keys
        self.store = store
        self.notifier = Notifier(store, keys.gateway_private, time_scale=settings.time_scale)
        self.tms: Tms | None = None
        if settings.mqtt_url:
            self.tms = Tms(
                settings.mqtt_url,
                client_id=settings.tms_client_id,
                username=settings.mqtt_username,
                password=settings.mqtt_password,
                on_status=self.on_status,
                on_event=self.on_event,
            )
        # cashier create attempts being processed: (terminal_sn, request_no) -> first reply
        self.inflight: dict[tuple[str, str], asyncio.Future[Reply]] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self.faults = Faults(self, late_seconds=settings.late_seconds)

    # ---------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        from sandbox.cashier import recover_pending  # here: cashier imports this module

        recover_pending(self)
        if self.tms is not None:
            self.tms.start(asyncio.get_running_loop())
        self.spawn(self.notifier.run(), name="notifier")
        self.spawn(self._sweep(), name="expiry-sweeper")
        self.spawn(self.faults.run(), name="faults")

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self.tms is not None:
            await asyncio.to_thread(self.tms.stop)
        self.faults.close()

    def spawn(
        self, coro: Coroutine[Any, Any, Any], *, name: str | None = None
    ) -> asyncio.Task[Any]:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # ---------------------------------------------------------------- answers

    def ok(self, data: msgspec.Struct | dict[str, Any]) -> Reply:
        body = envelope.build_response(data, self.keys.gateway_private)
        return Reply(200, envelope.encode(body))

    def fail(
        self, code: Code, msg: str, http_status: int = 200, binding: AnswerBinding | None = None
    ) -> Reply:
        """A signed failure answer; a cashier refusal names what it refuses (``binding``)."""
        body = envelope.build_response(binding, self.keys.gateway_private, code=str(code), msg=msg)
        return Reply(http_status, envelope.encode(body))

    def bind(self, terminal_sn: str, trans_no: str | None, request_no: str | None) -> AnswerBinding:
        """What a cashier answer to this question names (part D), stamped now
        (or as long ago as the ``stale-answers`` fault says)."""
        lag = self.faults.answer_lag_ms(terminal_sn)
        return AnswerBinding(
            trans_no=trans_no,
            terminal_sn=terminal_sn,
            request_no=request_no,
            timestamp=envelope.timestamp(envelope.now_ms() - lag),
        )

    # ---------------------------------------------------------------- orders

    def new_trans_no(self) -> str:
        while True:
            trans_no = (
                time.strftime("%Y%m%d%H%M%S", time.gmtime()) + f"{secrets.randbelow(10**6):06d}"
            )
            if self.store.order(trans_no) is None:
                return trans_no

    def move(
        self, trans_no: str, to: TransStatus, *, why: str, **changes: Any
    ) -> tuple[Order, bool]:
        """``Store.move`` plus what follows a final status (see the module docstring)."""
        order, moved = self.store.move(trans_no, to, why=why, **changes)
        if moved and order.is_final:
            if (
                order.trans_type is TransType.VOID
                and to is TransStatus.COMPLETED
                and order.orig_trans_no
            ):
                self.store.move(
                    order.orig_trans_no,
                    TransStatus.CANCELLED,
                    why=f"voided by {trans_no}",
                    trans_error_code="VOIDED",
                    trans_error_msg=f"voided by {trans_no}",
                )
            self.notifier.wake()
            self.faults.on_final(order)
        return order, moved

    def push_order(self, order: Order) -> None:
        push = envelope.build_push(
            PushTopic.PAY_ORDER,
            PushOrder(
                trans_no=order.trans_no,
                merchant_no=order.merchant_no,
                terminal_sn=order.terminal_sn,
                merchant_order_no=order.merchant_order_no,
                price_currency=order.price_currency,
                order_amount=order.order_amount,
                trans_type=order.trans_type,
                expires_at=order.expires_at,
                store_no=order.store_no,
                tip_amount=order.tip_amount,
                orig_trans_no=order.orig_trans_no,
                pay_scenario=order.pay_scenario,
                description=order.description,
                confirm_on_terminal=order.confirm_on_terminal,
                order_queue_mode=QueueMode(order.order_queue_mode),
            ),
            app_id=self._push_app_id(order),
            private_key=self.keys.gateway_private,
            message_id=order.message_id,
        )
        expiry = max(1, -(-(order.expires_at - envelope.now_ms()) // 1000))
        self._publish(order, push, expiry)

    def push_close(self, order: Order, message_id: str, description: str | None) -> None:
        push = envelope.build_push(
            PushTopic.PAY_CLOSE,
            PushClose(
                trans_no=order.trans_no,
                merchant_no=order.merchant_no,
                terminal_sn=order.terminal_sn,
                merchant_order_no=order.merchant_order_no,
                description=description,
            ),
            app_id=self._push_app_id(order),
            private_key=self.keys.gateway_private,
            message_id=message_id,
        )
        remaining = -(-(order.expires_at - envelope.now_ms()) // 1000)
        self._publish(order, push, max(CLOSE_PUSH_MIN_EXPIRY_S, remaining))

    def _push_app_id(self, order: Order) -> str:
        row = self.store.merchant_app_id(order.merchant_no)
        return row or order.merchant_no

    def _publish(self, order: Order, push: msgspec.Struct, expiry_s: int) -> None:
        fields = msgspec.to_builtins(push)
        payload = wirejson.dumps(fields)
        self.store.add_push(
            message_id=str(fields["message_id"]),
            trans_no=order.trans_no,
            terminal_sn=order.terminal_sn,
            topic=str(fields["topic"]),
            payload=payload,
            expiry_s=expiry_s,
        )
        if self.tms is None:
            log.warning("no broker configured: push %s not sent", fields["message_id"])
            return
        if self.faults.hold(order.terminal_sn, payload, expiry_s):
            return
        self.tms.publish(orders_topic(order.terminal_sn), payload.encode(), expiry_s=expiry_s)
        log.info(
            "pushed %s %s for %s to %s (expiry %d s)",
            fields["topic"],
            fields["message_id"],
            order.trans_no,
            order.terminal_sn,
            expiry_s,
        )
        self.faults.pushed(order, str(fields["topic"]), str(fields["message_id"]), payload)

    # ---------------------------------------------------------------- terminal side of MQTT

    def on_status(self, sn: str, payload: bytes) -> None:
        now = envelope.now_ms()
        if not payload:
            self.store.set_terminal_status(sn, "offline", "", now)
            return
        try:
            status = decode(wirejson.loads(payload), TerminalStatus)
        except ContractError as exc:
            log.warning("terminal %s published a malformed status: %s", sn, exc)
            return
        self.store.set_terminal_status(sn, status.status, payload.decode("utf-8", "replace"), now)
        printer = f", printer {status.printer}" if status.printer else ""
        log.info("terminal %s is %s (screen %s%s)", sn, status.status, status.screen, printer)

    def on_event(self, sn: str, payload: bytes) -> None:
        terminal = self.store.terminal(sn)
        if terminal is None:
            log.warning("event from unknown terminal %s dropped", sn)
            return
        try:
            event = envelope.open_event(payload, terminal.public_key_pem)
        except SignatureError as exc:
            log.warning("event from %s with a bad signature dropped: %s", sn, exc)
            return
        except ContractError as exc:
            log.warning("malformed event from %s dropped: %s", sn, exc)
            return
        if event.terminal_sn != sn:
            log.warning("event on %s's topic names terminal %s; dropped", sn, event.terminal_sn)
            return
        if self.faults.drops(event):
            return
        trans_no = event.trans_no or self.store.trans_no_for_message(event.message_id)
        fresh = self.store.add_event(
            trans_no=trans_no,
            terminal_sn=sn,
            event=str(event.event),
            message_id=event.message_id,
            reason=event.reason,
            hops=event.hops,
            timestamp=event.timestamp,
            received_ms=envelope.now_ms(),
        )
        if not fresh:
            return
        log.info("terminal %s: %s %s %s", sn, event.event, trans_no or "-", event.reason or "")
        order = self.store.order(trans_no) if trans_no else None
        if order is not None and order.is_final and _contradicts(event.event, order.trans_status):
            log.warning(
                "!!! CONFLICT: terminal %s reports %r for order %s, which is final with "
                "status %d (%s); the status is kept (money moves only through the cashier API)",
                sn,
                str(event.event),
                order.trans_no,
                order.trans_status,
                order.trans_status.name,
            )

    # ---------------------------------------------------------------- background

    async def _sweep(self) -> None:
        while True:
            for trans_no in self.store.expired_preorders(envelope.now_ms()):
                self.move(
                    trans_no,
                    TransStatus.CLOSED,
                    why="expires_at passed",
                    trans_error_code="EXPIRED",
                    trans_error_msg="not paid before expires_at",
                )
            await asyncio.sleep(SWEEP_INTERVAL_S)


def _contradicts(event: EventKind, status: TransStatus) -> bool:
    if event is EventKind.PAID:
        return status is not TransStatus.COMPLETED
    if event in (EventKind.FAILED, EventKind.CANCELLED, EventKind.CLOSED):
        return status is TransStatus.COMPLETED
    return False
