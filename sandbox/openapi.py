"""The Open API methods the POS server calls (docs/protocol.md part A).

Each handler takes the verified request fields of the calling POS app's
merchant and returns a signed ``Reply``, or raises ``ApiError`` (answered as
a signed failure) / ``ContractError`` (answered as 40001 invalid parameter).

- ``wisehub.cloud.pay.order``: validates (``messages.PayOrder``), refuses an
  unknown terminal, an offline one when ``reject_trade_when_terminal_offline``,
  a void/refund whose ``orig_merchant_order_no`` is not a paid sale of the
  merchant or whose amount exceeds what is left of it; stores the order in
  status 9 with ``expires_at`` = now + ``expires`` s and pushes it to the
  terminal. Idempotent: the same ``merchant_order_no`` with the same business
  fields returns the first answer (same ``trans_no`` and ``message_id``),
  with different fields fails with 40901.
- ``wisehub.cloud.pay.close``: only in status 9 -> status 1 with
  ``trans_error_code`` ``CLOSED`` and a close push; repeating it returns the
  first answer; in any other status fails with 40902 (void or refund instead).
- ``order.query``: by ``merchant_order_no`` or ``trans_no`` (only the
  calling merchant's orders); the result is ``messages.OrderInfo`` naming the
  order's ``merchant_no`` and ``app_id`` (its merchant's POS app, the one that
  created it), which a POS server binds the answer to its order by (part B),
  plus the sandbox-only ``terminal_timeline`` (JSON
  text of the terminal's events for the order, with their ``hops``),
  ``terminal_online_status`` and ``terminal_state`` (the terminal's last
  retained status as JSON text: screen, readers, queue, keepalive).
- ``sandbox.terminal.status`` (sandbox-only): ``merchant_no``,
  ``terminal_sn`` -> ``messages.TerminalInfo`` (online status, last retained
  status and when it was received).

The create's answer carries ``terminal_state`` too.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from decimal import Decimal
from typing import Any
from urllib.parse import urlsplit

import msgspec

from cloud import envelope, wirejson
from cloud.errors import ContractError
from cloud.messages import (
    TERMINAL_APP,
    CloseOrder,
    CloseOrderResult,
    Method,
    OnlineStatus,
    OrderQuery,
    PayOrder,
    PayOrderResult,
    TerminalInfo,
    TerminalQuery,
    TransStatus,
    TransType,
    decode,
    to_fields,
)
from sandbox.codes import ApiError, Code
from sandbox.gateway import Gateway, Reply
from sandbox.store import Merchant, Order, timeline_text, wire_time

Handler = Callable[[Gateway, Merchant, dict[str, Any]], Awaitable[Reply]]


def fingerprint(req: PayOrder) -> str:
    """The business fields of a create, as compared for idempotency
    (``12.5`` and ``12.50`` are the same amount; defaults are filled in)."""
    fields = {
        k: (format(v.normalize(), "f") if isinstance(v, Decimal) else v)
        for k, v in to_fields(req).items()
    }
    return wirejson.dumps(dict(sorted(fields.items())))


def _order_of(
    gw: Gateway, merchant: Merchant, *, merchant_order_no: str | None, trans_no: str | None
) -> Order:
    order = None
    if trans_no:
        order = gw.store.order(trans_no)
        if order is not None and order.merchant_no != merchant.merchant_no:
            order = None
    elif merchant_order_no:
        order = gw.store.order_by_merchant_order_no(merchant.merchant_no, merchant_order_no)
    if order is None:
        what = f"trans_no {trans_no}" if trans_no else f"merchant_order_no {merchant_order_no}"
        raise ApiError(Code.ORDER_NOT_FOUND, f"order not found: {what}")
    return order


def _terminal_state(gw: Gateway, sn: str) -> tuple[OnlineStatus, str | None, str | None]:
    """(``terminal_online_status``, ``terminal_state``, when it was received) from
    the terminal's retained status; offline and None when it never published."""
    row = gw.store.terminal_status(sn)
    if row is None:
        return OnlineStatus.OFFLINE, None, None
    _status, payload, received_ms = row
    online = OnlineStatus.ONLINE if gw.faults.online(sn) else OnlineStatus.OFFLINE
    return online, payload or None, wire_time(received_ms)


def _check_merchant(merchant: Merchant, merchant_no: str) -> None:
    if merchant_no != merchant.merchant_no:
        raise ApiError(
            Code.WRONG_MERCHANT,
            f"merchant_no {merchant_no} does not belong to app_id {merchant.app_id}",
        )


async def pay_order(gw: Gateway, merchant: Merchant, fields: dict[str, Any]) -> Reply:
    req = decode(fields, PayOrder)
    _check_merchant(merchant, req.merchant_no)
    if req.message_receiving_application != TERMINAL_APP:
        raise ApiError(
            Code.INVALID_PARAMETER,
            f"invalid parameter: no terminal application {req.message_receiving_application!r}; "
            f"the sandbox terminals answer to {TERMINAL_APP!r} "
            "(field $.message_receiving_application)",
        )
    if req.notify_url is not None:
        url = urlsplit(req.notify_url)
        if url.scheme not in ("http", "https") or not url.hostname:
            raise ContractError("must be an http:// or https:// URL", "$.notify_url")
    terminal = gw.store.terminal(req.terminal_sn)
    if terminal is None or terminal.merchant_no != merchant.merchant_no:
        raise ApiError(
            Code.UNKNOWN_TERMINAL,
            f"unknown terminal_sn {req.terminal_sn} for merchant {merchant.merchant_no} "
            "(provision it with: sadad-sandbox provision --terminal SN)",
        )
    fp = fingerprint(req)
    existing = gw.store.order_by_merchant_order_no(merchant.merchant_no, req.merchant_order_no)
    if existing is not None:
        if existing.fingerprint != fp:
            raise ApiError(
                Code.ORDER_NO_REUSED,
                f"merchant_order_no {req.merchant_order_no} was already used for trans_no "
                f"{existing.trans_no} with different fields",
            )
        return Reply(200, existing.create_answer.encode())

    online = gw.faults.online(req.terminal_sn)  # a sandbox fault may say offline
    if req.reject_trade_when_terminal_offline and not online:
        raise ApiError(
            Code.TERMINAL_OFFLINE,
            f"terminal {req.terminal_sn} is offline and reject_trade_when_terminal_offline is set",
        )
    orig_trans_no = None
    if req.trans_type in (TransType.VOID, TransType.REFUND):
        orig_trans_no = _check_original(gw, merchant, req)

    now = envelope.now_ms()
    trans_no = gw.new_trans_no()
    message_id = uuid.uuid4().hex
    result = PayOrderResult(
        message_id=message_id,
        trans_no=trans_no,
        terminal_online_status=OnlineStatus.ONLINE if online else OnlineStatus.OFFLINE,
        trans_amount=req.trans_amount,
        terminal_state=_terminal_state(gw, req.terminal_sn)[1],
    )
    reply = gw.ok(result)
    order = Order(
        trans_no=trans_no,
        merchant_no=req.merchant_no,
        merchant_order_no=req.merchant_order_no,
        terminal_sn=req.terminal_sn,
        store_no=req.store_no,
        trans_type=req.trans_type,
        orig_trans_no=orig_trans_no,
        trans_status=TransStatus.PREORDER,
        price_currency=req.price_currency,
        order_amount=req.order_amount,
        tip_amount=req.tip_amount,
        trans_amount=req.trans_amount,
        attach=req.attach,
        pay_scenario=req.pay_scenario,
        description=req.description,
        notify_url=req.notify_url,
        expires_at=now + req.expires * 1000,
        order_queue_mode=str(req.order_queue_mode),
        confirm_on_terminal=req.confirm_on_terminal,
        fingerprint=fp,
        message_id=message_id,
        create_answer=reply.body.decode(),
        close_answer=None,
        created_ms=now,
        updated_ms=now,
    )
    gw.store.insert_order(order)
    await gw.faults.occupy(merchant, order)  # sandbox faults (sandbox.faults)
    gw.push_order(order)
    return await gw.faults.answer(order, reply)


def _check_original(gw: Gateway, merchant: Merchant, req: PayOrder) -> str:
    assert req.orig_merchant_order_no
    orig = gw.store.order_by_merchant_order_no(merchant.merchant_no, req.orig_merchant_order_no)
    kind = "void" if req.trans_type is TransType.VOID else "refund"
    if orig is None:
        raise ApiError(
            Code.ORIGINAL_NOT_ELIGIBLE,
            f"orig_merchant_order_no {req.orig_merchant_order_no} is not an order of "
            f"merchant {merchant.merchant_no}",
        )
    if orig.trans_type is not TransType.SALE or orig.trans_status is not TransStatus.COMPLETED:
        raise ApiError(
            Code.ORIGINAL_NOT_ELIGIBLE,
            f"cannot {kind} {req.orig_merchant_order_no}: only a paid sale (trans_type 1, "
            f"trans_status 2) can be; it is trans_type {int(orig.trans_type)}, "
            f"trans_status {int(orig.trans_status)}",
        )
    if req.price_currency != orig.price_currency:
        raise ApiError(
            Code.INVALID_PARAMETER,
            f"invalid parameter: the {kind} must be in {orig.price_currency}, the original's "
            "currency (field $.price_currency)",
        )
    already = gw.store.related_total(orig.trans_no, req.trans_type)
    if already + req.trans_amount > orig.trans_amount:
        raise ApiError(
            Code.AMOUNT_EXCEEDS_ORIGINAL,
            f"{kind} amount {req.trans_amount} exceeds what is left of the original "
            f"{orig.trans_amount} {orig.price_currency} (already {kind}ed or pending: {already})",
        )
    return orig.trans_no


async def pay_close(gw: Gateway, merchant: Merchant, fields: dict[str, Any]) -> Reply:
    req = decode(fields, CloseOrder)
    _check_merchant(merchant, req.merchant_no)
    order = _order_of(gw, merchant, merchant_order_no=req.merchant_order_no, trans_no=None)
    if order.terminal_sn != req.terminal_sn:
        raise ApiError(
            Code.WRONG_TERMINAL,
            f"order {req.merchant_order_no} was pushed to terminal {order.terminal_sn}, "
            f"not {req.terminal_sn}",
        )
    if order.close_answer is not None:
        return Reply(200, order.close_answer.encode())
    if order.trans_status is not TransStatus.PREORDER:
        advice = {
            TransStatus.PROCESSING: "a payment is in progress on the terminal; wait for its "
            "result, then void (trans_type 2) or refund (trans_type 3) it",
            TransStatus.COMPLETED: "it is paid: void (trans_type 2) or refund (trans_type 3) it "
            "instead",
        }.get(order.trans_status, "it is already final")
        raise ApiError(
            Code.CLOSE_NOT_ALLOWED,
            f"close is allowed only in trans_status 9; order {order.merchant_order_no} is in "
            f"{int(order.trans_status)}: {advice}",
        )
    message_id = uuid.uuid4().hex
    reply = gw.ok(CloseOrderResult(message_id=message_id, trans_no=order.trans_no))
    with gw.store.transaction():
        order, _ = gw.move(
            order.trans_no,
            TransStatus.CLOSED,
            why="closed by the POS",
            trans_error_code="CLOSED",
            trans_error_msg=req.description or "closed by the merchant",
        )
        gw.store.update_order(order.trans_no, close_answer=reply.body.decode())
    gw.push_close(order, message_id, req.description)
    return reply


async def order_query(gw: Gateway, merchant: Merchant, fields: dict[str, Any]) -> Reply:
    req = decode(fields, OrderQuery)
    _check_merchant(merchant, req.merchant_no)
    order = _order_of(gw, merchant, merchant_order_no=req.merchant_order_no, trans_no=req.trans_no)
    online, state, _ = _terminal_state(gw, order.terminal_sn)
    info = msgspec.structs.replace(
        order.to_info(timeline_text(gw.store, order.trans_no), app_id=merchant.app_id),
        terminal_online_status=online,
        terminal_state=state,
    )
    return gw.ok(info)


async def terminal_status(gw: Gateway, merchant: Merchant, fields: dict[str, Any]) -> Reply:
    req = decode(fields, TerminalQuery)
    _check_merchant(merchant, req.merchant_no)
    terminal = gw.store.terminal(req.terminal_sn)
    if terminal is None or terminal.merchant_no != merchant.merchant_no:
        raise ApiError(
            Code.UNKNOWN_TERMINAL,
            f"unknown terminal_sn {req.terminal_sn} for merchant {merchant.merchant_no}",
        )
    online, state, received = _terminal_state(gw, req.terminal_sn)
    return gw.ok(
        TerminalInfo(
            terminal_sn=req.terminal_sn,
            terminal_online_status=online,
            terminal_state=state,
            status_time=received,
        )
    )


HANDLERS: dict[str, Handler] = {
    Method.PAY_ORDER: pay_order,
    Method.PAY_CLOSE: pay_close,
    Method.ORDER_QUERY: order_query,
    Method.TERMINAL_STATUS: terminal_status,
}
