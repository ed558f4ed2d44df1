"""The cashier API the terminals call (docs/protocol.md part D).

Requests are signed by the terminal (``app_id`` = its SN) and must name the
calling terminal in ``terminal_sn``; only the order's own terminal may act on
it.

``cashier.pay.bankcard.trans.create`` / ``cashier.pay.wallet.trans.create``:
``card_cipher`` / ``auth_code_cipher`` are opened with ``cloud.sealing.open``
and the gateway private key; the clear card data and wallet code stay in
memory for the call (masked PAN only in the database and logs). The wallet
cipher may hold the bare code, a JSON string, or ``{"auth_code": ...}``.

``request_no`` is the idempotency key, per terminal: the first answer is
stored and replayed for every repeat with the same fields (a repeat with
other fields fails with 40910); a repeat that arrives while the first is
still with the acquirer waits for it. Nothing is ever charged twice.
A create is refused (and the refusal is the stored answer) for an order of
another terminal, a final order, an order another attempt is paying, after
``expires_at``, or for an amount or currency other than the order's.

Status moves 9 -> 0 while the simulated acquirer (``sandbox.acquirer``)
works, then 2 (paid, one ``charges`` row) or 1 (declined). ``.93`` answers
HTTP 503 and changes nothing; ``.52`` charges, stores the paid answer and
answers HTTP 500.

``cashier.trans.reverse``: 9 or 0 -> 3 (an attempt still with the acquirer
then has its charge undone at once: the row is written with ``reversed``
set), 2 -> 3 with the charges flagged reversed, 1 and 3 stay. Idempotent.
``cashier.trans.cancel``: 9 -> 3; 3 stays; 0 fails 40911 (reverse instead);
1 and 2 fail 40907. ``cashier.trans.detail``: the order as the gateway knows
it. Every answer's ``data`` is ``messages.CashierResult``.

A void that completes moves its original order to 3; a refund leaves it 2.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from cloud import envelope, sealing, wirejson
from cloud.errors import ContractError
from cloud.messages import (
    AnswerBinding,
    BankcardCreate,
    Method,
    TransCancel,
    TransDetail,
    TransReverse,
    TransStatus,
    TransType,
    WalletCreate,
    decode,
)
from sandbox import acquirer
from sandbox.acquirer import Instrument, Outcome
from sandbox.codes import ApiError, Code
from sandbox.gateway import Gateway, Reply, cashier_result
from sandbox.store import Order, Terminal

log = logging.getLogger(__name__)

Handler = Callable[[Gateway, Terminal, dict[str, Any]], Awaitable[Reply]]
Create = BankcardCreate | WalletCreate

_KIND = {TransType.SALE: "sale", TransType.VOID: "void", TransType.REFUND: "refund"}


def _own(terminal: Terminal, terminal_sn: str) -> None:
    if terminal_sn != terminal.sn:
        raise ApiError(
            Code.WRONG_TERMINAL,
            f"terminal_sn {terminal_sn} is not the calling terminal {terminal.sn}",
        )


def _order_for(gw: Gateway, terminal: Terminal, trans_no: str) -> Order:
    order = gw.store.order(trans_no)
    if order is None:
        raise ApiError(Code.ORDER_NOT_FOUND, f"order not found: trans_no {trans_no}")
    if order.terminal_sn != terminal.sn:
        raise ApiError(
            Code.WRONG_TERMINAL,
            f"order {trans_no} belongs to terminal {order.terminal_sn}, not {terminal.sn}",
        )
    return order


def _fingerprint(method: str, req: Create) -> str:
    # The ciphers are left out: a retry may seal the same card again with a fresh key.
    amount = format(req.order_amount.normalize(), "f")
    return wirejson.dumps([method, req.trans_no, amount, req.price_currency])


# ---------------------------------------------------------------- instruments


def open_card(req: BankcardCreate, gateway_private_key: str) -> Instrument:
    """The card in ``card_cipher``. Raises ContractError (never with card data in it)."""
    try:
        raw = sealing.open(req.card_cipher, gateway_private_key)
    except ContractError as exc:
        raise ContractError(str(exc), "$.card_cipher") from None
    try:
        card = json.loads(raw)
    except ValueError:
        card = None
    if not isinstance(card, dict):
        raise ContractError("card data must be a JSON object", "$.card_cipher")
    pan = card.get("pan")
    if not isinstance(pan, str) or not pan:
        track2 = card.get("track2")
        pan = acquirer.pan_from_track2(track2) if isinstance(track2, str) else None
    if not pan or not pan.isdigit() or not 12 <= len(pan) <= 19:
        raise ContractError("card data holds no valid PAN (pan or track2)", "$.card_cipher")
    shown_first = req.masked_pan[: len(req.masked_pan) - len(req.masked_pan.lstrip("0123456789"))]
    shown_last = req.masked_pan[len(req.masked_pan.rstrip("0123456789")) :]
    if (
        len(req.masked_pan) != len(pan)
        or not pan.startswith(shown_first)
        or not pan.endswith(shown_last)
    ):
        raise ContractError("masked_pan does not match the card", "$.masked_pan")
    method = acquirer.card_method(pan, req.card_brand)
    return Instrument("card", method, acquirer.mask_pan(pan), pan=pan)


def open_wallet(req: WalletCreate, gateway_private_key: str) -> Instrument:
    """The wallet code in ``auth_code_cipher``. Raises ContractError."""
    try:
        raw = sealing.open(req.auth_code_cipher, gateway_private_key)
    except ContractError as exc:
        raise ContractError(str(exc), "$.auth_code_cipher") from None
    text = raw.decode("utf-8", "replace").strip()
    try:
        parsed = json.loads(text)
    except ValueError:
        parsed = text
    if isinstance(parsed, dict):
        parsed = parsed.get("auth_code") or parsed.get("code")
    if isinstance(parsed, int) and not isinstance(parsed, bool):
        parsed = str(parsed)
    if not isinstance(parsed, str) or not parsed:
        raise ContractError("wallet payment code is empty", "$.auth_code_cipher")
    return Instrument("wallet", acquirer.wallet_method(parsed), wallet_code=parsed)


# ---------------------------------------------------------------- creates


async def bankcard_create(gw: Gateway, terminal: Terminal, fields: dict[str, Any]) -> Reply:
    return await _create(gw, terminal, Method.BANKCARD_CREATE, decode(fields, BankcardCreate))


async def wallet_create(gw: Gateway, terminal: Terminal, fields: dict[str, Any]) -> Reply:
    return await _create(gw, terminal, Method.WALLET_CREATE, decode(fields, WalletCreate))


async def _create(gw: Gateway, terminal: Terminal, method: str, req: Create) -> Reply:
    _own(terminal, req.terminal_sn)
    key = (terminal.sn, req.request_no)
    fp = _fingerprint(method, req)
    existing = gw.store.claim_request(terminal.sn, req.request_no, req.trans_no, method, fp)
    if existing is not None:
        if existing.fingerprint != fp:
            raise ApiError(
                Code.REQUEST_NO_REUSED,
                f"request_no {req.request_no} was already used for {existing.method} of "
                f"{existing.trans_no} with other fields",
            )
        if existing.state == "pending":
            fut = gw.inflight.get(key)
            if fut is not None:
                log.info("request_no %s repeated while in flight: waiting for it", req.request_no)
                first = await asyncio.shield(fut)
                done = gw.store.request(terminal.sn, req.request_no)
                if done is None or done.answer is None:
                    return first
                existing = done
            else:  # pragma: no cover - recover_pending settles these at startup
                raise ApiError(Code.GATEWAY_RESTARTED, "the first attempt was interrupted")
        log.info("request_no %s repeated: replaying its first answer", req.request_no)
        assert existing.answer is not None
        return Reply(existing.http_status or 200, existing.answer.encode())

    fut = asyncio.get_running_loop().create_future()
    gw.inflight[key] = fut
    gw.spawn(_attempt(gw, terminal, method, req, fut), name=f"pay-{req.request_no}")
    return await asyncio.shield(fut)


async def _attempt(
    gw: Gateway, terminal: Terminal, method: str, req: Create, fut: asyncio.Future[Reply]
) -> None:
    """One payment attempt, independent of the HTTP request that started it
    (a client that hangs up does not stop the acquirer)."""
    key = (terminal.sn, req.request_no)
    try:
        reply = await _pay(gw, terminal, method, req)
    except ApiError as exc:
        reply = gw.fail(exc.code, exc.msg, exc.http_status, _bound(gw, req))
        gw.store.finish_request(terminal.sn, req.request_no, reply.body.decode(), reply.http_status)
    except ContractError as exc:
        reply = gw.fail(Code.INVALID_PARAMETER, f"invalid parameter: {exc}", 200, _bound(gw, req))
        gw.store.finish_request(terminal.sn, req.request_no, reply.body.decode(), reply.http_status)
    except asyncio.CancelledError:
        reply = gw.fail(Code.GATEWAY_RESTARTED, "the sandbox is stopping", 503)
        raise
    except Exception:
        log.exception("payment attempt %s failed", req.request_no)
        reply = gw.fail(Code.INTERNAL, "internal error (see the sandbox log)", 500)
        _settle_broken_attempt(gw, terminal, req, reply)
    finally:
        gw.inflight.pop(key, None)
        if not fut.done():
            fut.set_result(reply)


async def _pay(gw: Gateway, terminal: Terminal, method: str, req: Create) -> Reply:
    order = _order_for(gw, terminal, req.trans_no)
    expired = order.trans_status is TransStatus.PREORDER and envelope.now_ms() >= order.expires_at
    if expired or (order.is_final and order.trans_error_code == "EXPIRED"):
        raise ApiError(Code.ORDER_EXPIRED, f"order {order.trans_no} expired; it cannot be paid")
    if order.is_final:
        log.warning(
            "!!! terminal %s tried to pay order %s, which is final with status %d; refused",
            terminal.sn,
            order.trans_no,
            order.trans_status,
        )
        raise ApiError(
            Code.ORDER_FINAL,
            f"order {order.trans_no} is already final (trans_status {int(order.trans_status)})",
        )
    if order.trans_status is TransStatus.PROCESSING:
        raise ApiError(
            Code.PAYMENT_IN_PROGRESS,
            f"order {order.trans_no} is being paid by request_no {order.request_no}",
        )
    if req.order_amount != order.order_amount or req.price_currency != order.price_currency:
        raise ApiError(
            Code.AMOUNT_MISMATCH,
            f"amount {req.order_amount} {req.price_currency} is not the order's "
            f"{order.order_amount} {order.price_currency}",
        )
    if req.orig_trans_no and req.orig_trans_no != order.orig_trans_no:
        raise ApiError(
            Code.INVALID_PARAMETER,
            f"invalid parameter: orig_trans_no is not the order's ({order.orig_trans_no}) "
            "(field $.orig_trans_no)",
        )
    key = gw.keys.gateway_private
    instrument = open_card(req, key) if isinstance(req, BankcardCreate) else open_wallet(req, key)
    decision = acquirer.decide(
        order.order_amount, instrument, hang_seconds=gw.settings.hang_seconds
    )
    log.info(
        "pay %s %s %s with %r: acquirer will %s",
        order.trans_no,
        order.trans_amount,
        order.price_currency,
        instrument,
        decision.outcome.value,
    )
    if decision.outcome is Outcome.UNAVAILABLE:
        gw.store.release_request(terminal.sn, req.request_no)
        return Reply(503, b"acquirer unavailable (sandbox amount .93)", "text/plain")

    gw.move(
        order.trans_no,
        TransStatus.PROCESSING,
        why=f"{method} {req.request_no}",
        request_no=req.request_no,
    )
    if decision.delay_s:
        await asyncio.sleep(decision.delay_s * gw.settings.time_scale)

    with gw.store.transaction():
        current = gw.store.order(order.trans_no)
        assert current is not None
        still_ours = (
            current.trans_status is TransStatus.PROCESSING and current.request_no == req.request_no
        )
        if decision.outcome is Outcome.DECLINE:
            if still_ours:
                gw.move(
                    order.trans_no,
                    TransStatus.CLOSED,
                    why=f"declined {decision.code}",
                    trans_error_code=decision.code,
                    trans_error_msg=decision.message,
                )
        else:
            _charge(gw, current, req.request_no, instrument, undo=not still_ours)
        final = gw.store.order(order.trans_no)
        assert final is not None
        reply = gw.ok(cashier_result(final, _bound(gw, req)))
        gw.store.finish_request(terminal.sn, req.request_no, reply.body.decode(), 200)
    if decision.outcome is Outcome.CHARGE_THEN_ERROR:
        return Reply(500, b"internal server error (sandbox amount .52: charged)", "text/plain")
    return reply


def _charge(
    gw: Gateway, order: Order, request_no: str, instrument: Instrument, *, undo: bool
) -> None:
    approval = acquirer.approve()
    gw.store.add_charge(
        trans_no=order.trans_no,
        request_no=request_no,
        kind=_KIND.get(order.trans_type, "sale"),
        amount=order.trans_amount,
        price_currency=order.price_currency,
        auth_code=approval.auth_code,
        ref_no=approval.ref_no,
        pay_method_id=instrument.pay_method_id,
        masked_pan=instrument.masked_pan,
        reversed_=undo,
    )
    if undo:
        log.info(
            "attempt %s for %s was approved after the order became %d: charge reversed at once",
            request_no,
            order.trans_no,
            order.trans_status,
        )
        return
    gw.move(
        order.trans_no,
        TransStatus.COMPLETED,
        why=f"approved {approval.auth_code}",
        paid_amount=order.trans_amount,
        pay_method_id=instrument.pay_method_id,
        pay_channel_trans_no=approval.pay_channel_trans_no,
        ref_no=approval.ref_no,
        auth_code=approval.auth_code,
        masked_pan=instrument.masked_pan,
    )


# ---------------------------------------------------------------- detail, reverse, cancel


async def detail(gw: Gateway, terminal: Terminal, fields: dict[str, Any]) -> Reply:
    req = decode(fields, TransDetail)
    _own(terminal, req.terminal_sn)
    order = _order_for(gw, terminal, req.trans_no)
    return gw.ok(cashier_result(order, _bound(gw, req)))


async def reverse(gw: Gateway, terminal: Terminal, fields: dict[str, Any]) -> Reply:
    req = decode(fields, TransReverse)
    _own(terminal, req.terminal_sn)
    order = _order_for(gw, terminal, req.trans_no)
    why = req.reason or "reversed by the terminal"
    if order.trans_status in (TransStatus.PREORDER, TransStatus.PROCESSING, TransStatus.COMPLETED):
        with gw.store.transaction():
            undone = gw.store.reverse_charges(order.trans_no)
            order, _ = gw.move(
                order.trans_no,
                TransStatus.CANCELLED,
                why=f"reverse {req.request_no}: {why}",
                trans_error_code="REVERSED",
                trans_error_msg=why,
            )
        log.info(
            "reversed %s (request_no %s, %d charge(s) undone)",
            order.trans_no,
            req.request_no,
            undone,
        )
    return gw.ok(cashier_result(order, _bound(gw, req)))


async def cancel(gw: Gateway, terminal: Terminal, fields: dict[str, Any]) -> Reply:
    req = decode(fields, TransCancel)
    _own(terminal, req.terminal_sn)
    order = _order_for(gw, terminal, req.trans_no)
    if order.trans_status is TransStatus.PREORDER:
        order, _ = gw.move(
            order.trans_no,
            TransStatus.CANCELLED,
            why="cancelled on the terminal",
            trans_error_code="CANCELLED",
            trans_error_msg=req.reason or "cancelled on the terminal",
        )
    elif order.trans_status is TransStatus.PROCESSING:
        raise ApiError(
            Code.PAYMENT_IN_PROGRESS,
            f"order {order.trans_no} is being authorized (request_no {order.request_no}): "
            "wait for the answer or reverse it",
        )
    elif order.trans_status is not TransStatus.CANCELLED:
        log.warning(
            "!!! terminal %s asked to cancel order %s, which is final with status %d; refused",
            terminal.sn,
            order.trans_no,
            order.trans_status,
        )
        raise ApiError(
            Code.ORDER_FINAL,
            f"order {order.trans_no} is already final (trans_status {int(order.trans_status)}); "
            "reverse it to undo a payment",
        )
    return gw.ok(cashier_result(order, _bound(gw, req)))


def _settle_broken_attempt(gw: Gateway, terminal: Terminal, req: Create, reply: Reply) -> None:
    try:
        order = gw.store.order(req.trans_no)
        if (
            order is not None
            and order.trans_status is TransStatus.PROCESSING
            and order.request_no == req.request_no
        ):
            gw.move(
                order.trans_no, TransStatus.PREORDER, why="payment attempt failed in the sandbox"
            )
        gw.store.finish_request(terminal.sn, req.request_no, reply.body.decode(), reply.http_status)
    except Exception:
        log.exception("could not settle attempt %s", req.request_no)


def recover_pending(gw: Gateway) -> None:
    """Settle create attempts that were with the acquirer when the sandbox stopped:
    nothing was charged (a charge and its status move are one transaction), so
    the order goes back to 9 and the attempt's answer is a 50001 failure."""
    for pending in gw.store.pending_requests():
        binding = gw.bind(pending.terminal_sn, pending.trans_no, pending.request_no)
        order = gw.store.order(pending.trans_no)
        if (
            order is not None
            and order.trans_status is TransStatus.PROCESSING
            and order.request_no == pending.request_no
        ):
            gw.move(order.trans_no, TransStatus.PREORDER, why="sandbox restarted mid-payment")
            reply = gw.fail(
                Code.GATEWAY_RESTARTED,
                "the sandbox restarted before the acquirer answered; nothing was charged",
                binding=binding,
            )
        elif order is not None:
            reply = gw.ok(cashier_result(order, binding))
        else:
            reply = gw.fail(
                Code.ORDER_NOT_FOUND,
                f"order not found: trans_no {pending.trans_no}",
                binding=binding,
            )
        gw.store.finish_request(
            pending.terminal_sn, pending.request_no, reply.body.decode(), reply.http_status
        )
        log.warning("settled interrupted attempt %s of %s", pending.request_no, pending.trans_no)


def _bound(gw: Gateway, req: Create | TransDetail | TransReverse | TransCancel) -> AnswerBinding:
    return gw.bind(req.terminal_sn, req.trans_no, req.request_no)


def binding_of(gw: Gateway, terminal: Terminal, fields: dict[str, Any]) -> AnswerBinding:
    """What a refusal of the request ``fields`` names: the request as sent (its
    fields may be what is wrong with it, so they are read without a decode)."""

    def text(name: str) -> str | None:
        value = fields.get(name)
        return value if isinstance(value, str) and value else None

    return gw.bind(text("terminal_sn") or terminal.sn, text("trans_no"), text("request_no"))


async def dispatch(gw: Gateway, terminal: Terminal, method: str, fields: dict[str, Any]) -> Reply:
    """Run the handler of ``method`` for a verified request of ``terminal``; a
    refusal is a signed failure answer bound to the request (part D)."""
    handler = HANDLERS.get(method)
    try:
        if handler is None:
            raise ApiError(
                Code.UNKNOWN_METHOD,
                f"unknown method {method!r} on /api/cashier/entry (offered: {', '.join(HANDLERS)})",
            )
        return await handler(gw, terminal, fields)
    except ApiError as exc:
        return gw.fail(exc.code, exc.msg, exc.http_status, binding_of(gw, terminal, fields))
    except ContractError as exc:
        binding = binding_of(gw, terminal, fields)
        return gw.fail(Code.INVALID_PARAMETER, f"invalid parameter: {exc}", 200, binding)


HANDLERS: dict[str, Handler] = {
    Method.BANKCARD_CREATE: bankcard_create,
    Method.WALLET_CREATE: wallet_create,
    Method.TRANS_DETAIL: detail,
    Method.TRANS_REVERSE: reverse,
    Method.TRANS_CANCEL: cancel,
}
