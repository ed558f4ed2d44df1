"""A simulated gateway peer for one-layer tests of the POS module and CLI.

It speaks the real envelope (``cloud.envelope``): it verifies each request
with the POS public key and answers signed with the gateway key, keeps
orders (a repeat create with the same fields gets the first answer, with
other fields a failure; close only in status 9; a create asking
``reject_trade_when_terminal_offline`` fails with 40903 while ``online`` is
OFFLINE), answers the sandbox's ``sandbox.terminal.status`` from ``online``
and ``terminal_state``, and can be told to
misbehave: drop the connection before or after processing, answer 5xx,
answer unsigned, badly signed or non-JSON. Served with
``httpx.MockTransport``. ``FakeClock`` replaces the wall clock.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import msgspec

from cloud import envelope, wirejson
from cloud.config import PosConfig
from cloud.messages import (
    CloseOrder,
    CloseOrderResult,
    Method,
    OnlineStatus,
    OrderInfo,
    OrderQuery,
    PayOrder,
    PayOrderResult,
    TerminalInfo,
    TerminalQuery,
    TransStatus,
    decode,
    to_fields,
)
from cloud.order_store import ExpectedOrder
from cloud.pos import AsyncPosClient
from cloud.signing import generate_key_pem

GW_PRIVATE, GW_PUBLIC = generate_key_pem()
POS_PRIVATE, POS_PUBLIC = generate_key_pem()
OTHER_PRIVATE, OTHER_PUBLIC = generate_key_pem()
APP_ID = "pos-test"
MERCHANT = "M0001"
GATEWAY_URL = "http://gateway.test"

# Faults, consumed one per matching request:
#   connect  - connection refused before the gateway saw the request
#   lose     - processed, then the answer is lost (read timeout)
#   500/502  - HTTP error status
#   unsigned - answer without sign; badsign - signed with another key;
#   blanksign - sign ""; html - a 200 that is not JSON
FAULTS = ("connect", "lose", "500", "502", "unsigned", "badsign", "blanksign", "html")


def make_config(**over: Any) -> PosConfig:
    values: dict[str, Any] = {
        "gateway_url": GATEWAY_URL,
        "app_id": APP_ID,
        "merchant_no": MERCHANT,
        "private_key": POS_PRIVATE,
        "gateway_public_key": GW_PUBLIC,
    }
    values.update(over)
    return PosConfig(**values)


def write_config(directory: Path, **over: str) -> Path:
    """A pos.toml with key files beside it, as the sandbox writes it."""
    keys = directory / "keys"
    keys.mkdir(parents=True, exist_ok=True)
    (keys / "pos_private.pem").write_text(POS_PRIVATE)
    (keys / "gateway_public.pem").write_text(GW_PUBLIC)
    values = {
        "gateway_url": GATEWAY_URL,
        "app_id": APP_ID,
        "merchant_no": MERCHANT,
        "private_key_file": "keys/pos_private.pem",
        "gateway_public_key_file": "keys/gateway_public.pem",
        "default_currency": "QAR",
    }
    values.update(over)
    text = "".join(f'{k} = "{v}"\n' for k, v in values.items())
    path = directory / "pos.toml"
    path.write_text(text)
    return path


_STATUS_FIELDS: dict[TransStatus, dict[str, Any]] = {
    TransStatus.COMPLETED: {
        "auth_code": "123456",
        "masked_pan": "411111******1111",
        "pay_method_id": "Visa",
    },
    TransStatus.CLOSED: {"trans_error_code": "05", "trans_error_msg": "Do not honour"},
}


@dataclass
class Call:
    method: str
    fields: dict[str, Any]
    body: bytes


@dataclass
class _Order:
    request: dict[str, Any]
    result: PayOrderResult
    info: OrderInfo


@dataclass
class GatewayPeer:
    calls: list[Call] = field(default_factory=list)
    orders: dict[str, _Order] = field(default_factory=dict)
    faults: list[tuple[str | None, str]] = field(default_factory=list)
    query_script: list[OrderInfo | tuple[str, str]] = field(default_factory=list)
    online: OnlineStatus = OnlineStatus.ONLINE
    terminal_state: str | None = None  # the sandbox extension, as JSON text
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    _signed: dict[bytes, dict[str, Any]] = field(default_factory=dict)

    # ------------------------------------------------------------ control

    def fail_next(self, kind: str, method: Method | None = None, times: int = 1) -> None:
        assert kind in FAULTS, kind
        self.faults.extend([(None if method is None else str(method), kind)] * times)

    def calls_of(self, method: Method) -> list[Call]:
        return [c for c in self.calls if c.method == str(method)]

    def set_status(self, merchant_order_no: str, status: TransStatus, **extra: Any) -> OrderInfo:
        """Move an order to ``status`` (with the usual result fields of that status)."""
        order = self.orders[merchant_order_no]
        values = {**_STATUS_FIELDS.get(status, {}), **extra}
        order.info = msgspec.structs.replace(order.info, trans_status=status, **values)
        return order.info

    def info(
        self,
        merchant_order_no: str = "A-1",
        status: TransStatus = TransStatus.PREORDER,
        **extra: Any,
    ) -> OrderInfo:
        """An OrderInfo for an order (whether or not it was created here)."""
        known = self.orders.get(merchant_order_no)
        values: dict[str, Any] = {
            "trans_no": known.result.trans_no if known else f"TN-{merchant_order_no}",
            "trans_type": 1,
            "trans_status": int(status),
            "merchant_order_no": merchant_order_no,
            "price_currency": "QAR",
            "order_amount": Decimal("12.50"),
            "trans_amount": Decimal("12.50"),
            "terminal_sn": "T0001",
            "merchant_no": MERCHANT,
            "app_id": APP_ID,
        }
        values.update(_STATUS_FIELDS.get(status, {}))
        values.update(extra)
        return decode(values, OrderInfo)

    def expected(self, merchant_order_no: str = "A-1") -> ExpectedOrder:
        """What a POS that created ``merchant_order_no`` (as ``info`` makes it) expects."""
        info = self.info(merchant_order_no)
        return ExpectedOrder(
            info.merchant_order_no, info.trans_no, info.order_amount, info.price_currency
        )

    def notification(
        self, info: OrderInfo, *, notify_id: str | None = None, key: str = GW_PRIVATE
    ) -> bytes:
        fields = envelope.build_notification(
            info,
            key,
            notify_id=notify_id or f"N{next(self._ids)}",
            notify_time="2030-01-01 12:00:00",
        )
        return envelope.encode(fields)

    # ------------------------------------------------------------ serving

    def _answer(
        self,
        data: msgspec.Struct | None,
        *,
        code: str = "0",
        msg: str = "success",
        fault: str | None = None,
    ) -> httpx.Response:
        payload = b"" if data is None else msgspec.json.encode(to_fields(data))
        cache_key = code.encode() + b"|" + msg.encode() + b"|" + payload
        obj = self._signed.get(cache_key)
        if obj is None:
            obj = envelope.build_response(data, GW_PRIVATE, code=code, msg=msg)
            self._signed[cache_key] = obj
        obj = dict(obj)
        if fault == "unsigned":
            del obj["sign"]
        elif fault == "blanksign":
            obj["sign"] = ""
        elif fault == "badsign":
            obj["sign"] = envelope.build_response(
                data, OTHER_PRIVATE, code=code, msg=msg, psn=obj["psn"]
            )["sign"]
        return httpx.Response(
            200, content=envelope.encode(obj), headers={"Content-Type": "application/json"}
        )

    def _take_fault(self, method: str) -> str | None:
        for i, (target, kind) in enumerate(self.faults):
            if target is None or target == method:
                del self.faults[i]
                return kind
        return None

    def handler(self, request: httpx.Request) -> httpx.Response:
        body = request.content
        method, _app, fields = envelope.open_request(
            body, lambda app: POS_PUBLIC if app == APP_ID else None
        )
        self.calls.append(Call(method, fields, body))
        fault = self._take_fault(method)
        if fault == "connect":
            raise httpx.ConnectError("connection refused", request=request)
        if fault in ("500", "502"):
            return httpx.Response(int(fault), content=b"<html>bad gateway</html>")
        if fault == "html":
            return httpx.Response(200, content=b"<html>login</html>")
        response = self._dispatch(method, fields, fault)
        if fault == "lose":
            raise httpx.ReadTimeout("answer lost", request=request)
        return response

    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self.handler)

    def client(self, **options: Any) -> AsyncPosClient:
        config = options.pop("config", None) or make_config()
        return AsyncPosClient(config, transport=self.transport(), **options)

    def _dispatch(self, method: str, fields: dict[str, Any], fault: str | None) -> httpx.Response:
        if method == Method.PAY_ORDER:
            return self._create(decode(fields, PayOrder), fault)
        if method == Method.ORDER_QUERY:
            return self._query(decode(fields, OrderQuery), fault)
        if method == Method.PAY_CLOSE:
            return self._close(decode(fields, CloseOrder), fault)
        if method == Method.TERMINAL_STATUS:
            query = decode(fields, TerminalQuery)
            info = TerminalInfo(
                terminal_sn=query.terminal_sn,
                terminal_online_status=self.online,
                terminal_state=self.terminal_state,
                status_time=None if self.terminal_state is None else "2030-01-01 12:00:00",
            )
            return self._answer(info, fault=fault)
        return self._answer(None, code="METHOD_NOT_SUPPORTED", msg=method, fault=fault)

    def _create(self, order: PayOrder, fault: str | None) -> httpx.Response:
        request = to_fields(order)
        known = self.orders.get(order.merchant_order_no)
        if known is not None:
            if known.request != request:
                return self._answer(
                    None,
                    code="ORDER_DUPLICATE",
                    msg="merchant_order_no used with other fields",
                    fault=fault,
                )
            return self._answer(known.result, fault=fault)
        if order.reject_trade_when_terminal_offline and self.online is OnlineStatus.OFFLINE:
            return self._answer(None, code="40903", msg="terminal offline", fault=fault)
        trans_no = f"TN{next(self._ids):06d}"
        result = PayOrderResult(
            message_id=f"MSG{trans_no}",
            trans_no=trans_no,
            terminal_online_status=self.online,
            trans_amount=order.trans_amount,
        )
        info = self.info(
            order.merchant_order_no,
            trans_no=trans_no,
            trans_type=int(order.trans_type),
            price_currency=order.price_currency,
            order_amount=order.order_amount,
            tip_amount=order.tip_amount,
            trans_amount=order.trans_amount,
            terminal_sn=order.terminal_sn,
        )
        self.orders[order.merchant_order_no] = _Order(request, result, info)
        return self._answer(result, fault=fault)

    def _query(self, query: OrderQuery, fault: str | None) -> httpx.Response:
        if self.query_script:
            scripted = self.query_script.pop(0)
            if isinstance(scripted, tuple):
                return self._answer(None, code=scripted[0], msg=scripted[1], fault=fault)
            return self._answer(scripted, fault=fault)
        for order in self.orders.values():
            if query.merchant_order_no in (None, order.info.merchant_order_no) and (
                query.trans_no in (None, order.info.trans_no)
            ):
                return self._answer(order.info, fault=fault)
        return self._answer(None, code="ORDER_NOT_EXIST", msg="no such order", fault=fault)

    def _close(self, close: CloseOrder, fault: str | None) -> httpx.Response:
        order = self.orders.get(close.merchant_order_no)
        if order is None:
            return self._answer(None, code="ORDER_NOT_EXIST", msg="no such order", fault=fault)
        if order.info.trans_status != TransStatus.PREORDER:
            return self._answer(
                None, code="ORDER_STATUS_ERROR", msg="order is no longer waiting", fault=fault
            )
        self.set_status(
            close.merchant_order_no,
            TransStatus.CLOSED,
            trans_error_code="CLOSED",
            trans_error_msg=close.description,
        )
        return self._answer(
            CloseOrderResult(
                message_id=f"CLOSE{order.result.trans_no}", trans_no=order.result.trans_no
            ),
            fault=fault,
        )


def body_fields(call: Call) -> dict[str, Any]:
    parsed = wirejson.loads(call.body)
    assert isinstance(parsed, dict)
    return parsed


class FakeClock:
    """A clock for ``AsyncPosClient``: nothing sleeps for real.

    ``autojump``: every sleep advances the time at once (and yields once).
    Otherwise sleeps wait until ``advance`` moves the time past them.
    """

    def __init__(self, *, autojump: bool = True) -> None:
        self.now = 0.0
        self.autojump = autojump
        self.sleeps: list[float] = []
        self._waiters: list[tuple[float, asyncio.Future[None]]] = []
        self.on_sleep: Callable[[float], None] | None = None

    def monotonic(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        if self.on_sleep is not None:
            self.on_sleep(seconds)
        if self.autojump:
            self.now += seconds
            await asyncio.sleep(0)
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append((self.now + seconds, future))
        await future

    def advance(self, seconds: float) -> None:
        self.now += seconds
        for entry in list(self._waiters):
            due, future = entry
            if due <= self.now:
                self._waiters.remove(entry)
                if not future.done():
                    future.set_result(None)

    @property
    def sleeping(self) -> int:
        return sum(1 for _, f in self._waiters if not f.done())
