"""Simulated peers for one-layer engine tests: a cashier-API gateway that
speaks the real signed envelope behind an in-memory ``HttpTransport``,
readers that present what a test hands them, and an MQTT-less event sink."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import msgspec

from agent.gateway import GatewayClient, GatewayIdentity
from agent.http11 import HttpConnectError, HttpResponse, HttpTimeout
from cloud import envelope, sealing, wirejson
from cloud import messages as m
from cloud.signing import generate_key_pem
from drivers.base import ArmContext, Presentation, ReaderState

GW_PRIVATE, GW_PUBLIC = generate_key_pem()
TERM_PRIVATE, TERM_PUBLIC = generate_key_pem()
SN = "T0001"


@dataclass
class SimGateway:
    """The cashier API of part D, in memory. ``charges`` counts real approvals."""

    charges: list[str] = field(default_factory=list)
    status: dict[str, m.TransStatus] = field(default_factory=dict)
    answers: dict[str, m.CashierResult] = field(default_factory=dict)
    calls: list[str] = field(default_factory=list)
    # Switches a test flips: raise instead of answering, once per entry.
    fail_next: list[str] = field(default_factory=list)  # "timeout" | "500" | "garbage" | "hang"
    charge_then_fail: bool = False
    decline_code: str | None = None
    decline_message: str = "declined"
    down: bool = False
    seen_pans: list[str] = field(default_factory=list)
    amounts: list[str] = field(default_factory=list)
    # A man in the middle: the next answers are bound to this instead of their
    # question (e.g. ``{"request_no": "other"}``, or a stale ``timestamp``),
    # as a replayed, swapped or delayed answer would be. One entry per answer.
    rebind_next: list[dict[str, str]] = field(default_factory=list)
    # A man in the middle that answers by itself: the request never reaches
    # the gateway and gets this (e.g. an earlier genuine answer from ``sent``).
    intercept_next: list[HttpResponse] = field(default_factory=list)
    sent: list[tuple[str, HttpResponse]] = field(default_factory=list)  # (method, answer)
    _asked: dict[str, Any] = field(default_factory=dict)

    def client(self) -> GatewayClient:
        ident = GatewayIdentity(
            url="http://gw.test",
            app_id=SN,
            terminal_sn=SN,
            private_key=TERM_PRIVATE,
            gateway_public_key=GW_PUBLIC,
        )
        return GatewayClient(ident, timeout=2.0, transport=SimHttp(self._handle))

    def _answer(
        self, data: m.CashierResult | None, code: str = "0", msg: str = "ok"
    ) -> HttpResponse:
        """The signed answer to the request being handled, bound to it (part D)."""
        binding = {
            "trans_no": str(self._asked["trans_no"]),
            "terminal_sn": str(self._asked["terminal_sn"]),
            "request_no": self._asked.get("request_no"),
            "timestamp": envelope.timestamp(),
        }
        if self.rebind_next:
            binding.update(self.rebind_next.pop(0))
        bound: msgspec.Struct
        if data is None:
            bound = m.AnswerBinding(**binding)
        else:
            bound = msgspec.structs.replace(data, **binding)
        answer = HttpResponse(
            200,
            {},
            envelope.encode(envelope.build_response(bound, GW_PRIVATE, code=code, msg=msg)),
        )
        self.sent.append((str(self._asked["method"]), answer))
        return answer

    async def _handle(self, body: bytes) -> HttpResponse:
        method, _app, fields = envelope.open_request(body, lambda _a: TERM_PUBLIC)
        self._asked = fields
        if self.intercept_next:
            return self.intercept_next.pop(0)
        self.calls.append(method)
        if self.down:
            raise HttpConnectError("down")
        trans_no = str(fields["trans_no"])
        if method in (m.Method.BANKCARD_CREATE, m.Method.WALLET_CREATE):
            request_no = str(fields["request_no"])
            self.amounts.append(str(fields["order_amount"]))
            if "card_cipher" in fields:
                card = json.loads(sealing.open(fields["card_cipher"], GW_PRIVATE))
                self.seen_pans.append(card["pan"])
            if request_no in self.answers:
                return self._answer(self.answers[request_no])
            fail = self.fail_next.pop(0) if self.fail_next else None
            if fail == "timeout" and not self.charge_then_fail:
                raise HttpTimeout("simulated")
            if fail == "hang":  # never answers, never times out: the engine's deadline must
                await asyncio.Event().wait()
            if self.decline_code:
                result = m.CashierResult(
                    trans_no=trans_no,
                    trans_status=m.TransStatus.CLOSED,
                    trans_error_code=self.decline_code,
                    trans_error_msg=self.decline_message,
                )
            else:
                self.charges.append(trans_no)
                result = m.CashierResult(
                    trans_no=trans_no,
                    trans_status=m.TransStatus.COMPLETED,
                    auth_code="123456",
                    ref_no="000000000001",
                    pay_method_id="Visa",
                )
            self.answers[request_no] = result
            self.status[trans_no] = result.trans_status
            if fail == "timeout":
                raise HttpTimeout("simulated after charging")
            if fail == "500":
                return HttpResponse(500, {}, b"oops")
            if fail == "garbage":
                return HttpResponse(200, {}, b'{"code":"0","data":"{}"}')
            return self._answer(result)
        if method == m.Method.TRANS_DETAIL:
            if self.fail_next and self.fail_next[0] == "detail-timeout":
                self.fail_next.pop(0)
                raise HttpTimeout("simulated")
            if trans_no not in self.status:
                return self._answer(
                    m.CashierResult(trans_no=trans_no, trans_status=m.TransStatus.PREORDER)
                )
            return self._answer(
                m.CashierResult(trans_no=trans_no, trans_status=self.status[trans_no])
            )
        if method == m.Method.TRANS_REVERSE:
            if trans_no in self.charges:
                self.charges.remove(trans_no)
            self.status[trans_no] = m.TransStatus.CANCELLED
            return self._answer(
                m.CashierResult(trans_no=trans_no, trans_status=m.TransStatus.CANCELLED)
            )
        if method == m.Method.TRANS_CANCEL:
            if self.status.get(trans_no, m.TransStatus.PREORDER).is_final:
                return self._answer(None, code="40009", msg="order is final")
            self.status[trans_no] = m.TransStatus.CANCELLED
            return self._answer(
                m.CashierResult(trans_no=trans_no, trans_status=m.TransStatus.CANCELLED)
            )
        return self._answer(None, code="40004", msg="unknown method")


class SimHttp:
    """An ``HttpTransport`` that hands each request body to a simulated peer."""

    def __init__(self, handle: Callable[[bytes], Awaitable[HttpResponse]]) -> None:
        self._handle = handle

    async def request(
        self,
        method: str,
        path: str,
        *,
        body: bytes = b"",
        headers: Mapping[str, str] | None = None,
    ) -> HttpResponse:
        assert (method, path) == ("POST", envelope.CASHIER_PATH)
        return await self._handle(body)

    async def aclose(self) -> None:
        pass


class SimReader:
    """A reader whose presentations are handed to it by the test."""

    def __init__(self, name: str, kind: str) -> None:
        self.name = name
        self.kind = kind
        self.armed: ArmContext | None = None
        self.arm_count = 0
        self._next: asyncio.Queue[Presentation | Exception] = asyncio.Queue()

    @property
    def state(self) -> ReaderState:
        return ReaderState.READY

    async def arm(self, ctx: ArmContext) -> None:
        self.armed = ctx
        self.arm_count += 1

    async def next_presentation(self) -> Presentation:
        item = await self._next.get()
        if isinstance(item, Exception):
            raise item
        return item

    async def disarm(self) -> None:
        self.armed = None

    def present(self, item: Presentation | Exception) -> None:
        self._next.put_nowait(item)


def push_order(
    trans_no: str,
    amount: str = "12.50",
    *,
    message_id: str | None = None,
    expires_in_ms: int = 60_000,
    sn: str = SN,
    **over: Any,
) -> bytes:
    biz = m.PushOrder(
        trans_no=trans_no,
        merchant_no="M0001",
        terminal_sn=sn,
        merchant_order_no="ORD-" + trans_no,
        price_currency=over.pop("currency", "QAR"),
        order_amount=Decimal(amount),
        trans_type=over.pop("trans_type", m.TransType.SALE),
        expires_at=envelope.now_ms() + expires_in_ms,
        **over,
    )
    push = envelope.build_push(
        m.PushTopic.PAY_ORDER,
        biz,
        app_id="gw",
        private_key=GW_PRIVATE,
        message_id=message_id or "msg-" + trans_no,
    )
    return msgspec.json.encode(push)


def push_close(trans_no: str, message_id: str | None = None) -> bytes:
    biz = m.PushClose(
        trans_no=trans_no, merchant_no="M0001", terminal_sn=SN, merchant_order_no="ORD-" + trans_no
    )
    push = envelope.build_push(
        m.PushTopic.PAY_CLOSE,
        biz,
        app_id="gw",
        private_key=GW_PRIVATE,
        message_id=message_id or "close-" + trans_no,
    )
    return msgspec.json.encode(push)


class EventSink:
    """Collects published terminal events (verified with the terminal key)."""

    def __init__(self) -> None:
        self.events: list[m.TerminalEvent] = []
        self.up = True
        self.changed = asyncio.Event()

    async def publish(self, payload: bytes) -> None:
        from agent.mqtt.errors import LinkDown

        if not self.up:
            raise LinkDown("down")
        self.events.append(envelope.open_event(payload, TERM_PUBLIC))
        self.changed.set()

    def kinds(self, trans_no: str | None = None) -> list[str]:
        return [e.event.value for e in self.events if trans_no is None or e.trans_no == trans_no]

    def hops(self, trans_no: str, kind: str) -> dict[str, int]:
        for e in self.events:
            if e.trans_no == trans_no and e.event.value == kind and e.hops:
                hops = wirejson.loads(e.hops)
                assert isinstance(hops, dict)
                return hops
        return {}
