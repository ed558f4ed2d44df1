"""Typed messages and the envelope: validation names the bad field, amounts
follow the currency's minor units, pushes are checked as part C says."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import msgspec
import pytest

from cloud import envelope, wirejson
from cloud import messages as m
from cloud.errors import CloudRejected, ContractError, SignatureError
from cloud.signing import generate_key_pem

GW_PRIVATE, GW_PUBLIC = generate_key_pem()
NOW = 1_800_000_000_000


def order(**over: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "merchant_no": "M0001",
        "terminal_sn": "T0001",
        "merchant_order_no": "A-1",
        "price_currency": "QAR",
        "order_amount": Decimal("12.50"),
    }
    base.update(over)
    return base


@pytest.mark.parametrize(
    ("over", "field"),
    [
        ({"order_amount": Decimal("12.505")}, "$.order_amount"),
        ({"order_amount": Decimal("0")}, "$.order_amount"),
        ({"order_amount": Decimal("-1")}, "$.order_amount"),
        ({"order_amount": "abc"}, "$.order_amount"),
        ({"price_currency": "XXX"}, "$.price_currency"),
        ({"merchant_order_no": "has space"}, "$.merchant_order_no"),
        ({"merchant_order_no": "x" * 33}, "$.merchant_order_no"),
        ({"trans_type": 7}, "$.trans_type"),
        ({"trans_type": 4}, "$.trans_type"),
        ({"trans_type": 2}, "$.orig_merchant_order_no"),
        ({"pay_scenario": "NFC"}, "$.pay_scenario"),
        ({"expires": 0}, "$.expires"),
        ({"merchant_no": 5}, "$.merchant_no"),
        ({"confirm_on_terminal": "yes"}, "$.confirm_on_terminal"),
        ({"tip_amount": Decimal("0.001")}, "$.tip_amount"),
        # Every free-text and id field is bounded (docs/protocol.md part A).
        ({"description": "d" * (m.MAX_DESCRIPTION + 1)}, "$.description"),
        ({"attach": "a" * (m.MAX_ATTACH + 1)}, "$.attach"),
        ({"store_no": "s" * (m.MAX_NAME + 1)}, "$.store_no"),
        ({"merchant_no": "m" * (m.MAX_NAME + 1)}, "$.merchant_no"),
        ({"terminal_sn": ""}, "$.terminal_sn"),
        ({"notify_url": "http://x/" + "u" * m.MAX_URL}, "$.notify_url"),
    ],
)
def test_pay_order_rejects_and_names_field(over: dict[str, Any], field: str) -> None:
    with pytest.raises(ContractError) as info:
        m.decode(order(**over), m.PayOrder)
    assert info.value.field == field


def test_missing_field_named() -> None:
    body = order()
    del body["terminal_sn"]
    with pytest.raises(ContractError) as info:
        m.decode(body, m.PayOrder)
    assert "terminal_sn" in str(info.value)


@pytest.mark.parametrize(
    ("cur", "amount", "ok"),
    [
        ("QAR", "12.50", True),
        ("QAR", "12.505", False),
        ("KWD", "1.505", True),
        ("KWD", "1.5055", False),
        ("JPY", "100", True),
        ("JPY", "100.5", False),
    ],
)
def test_amount_exponent_by_currency(cur: str, amount: str, ok: bool) -> None:
    body = order(price_currency=cur, order_amount=wirejson.loads(amount))
    if ok:
        assert m.decode(body, m.PayOrder).order_amount == Decimal(amount)
    else:
        with pytest.raises(ContractError):
            m.decode(body, m.PayOrder)


def test_enums_and_defaults() -> None:
    msg = m.decode(order(trans_type=3, orig_merchant_order_no="A-0"), m.PayOrder)
    assert msg.trans_type is m.TransType.REFUND
    assert msg.order_queue_mode is m.QueueMode.FIFO
    assert msg.expires == 300
    assert m.TransStatus(2).is_final
    assert not m.TransStatus(9).is_final


def test_request_round_trip_keeps_decimal_text() -> None:
    private, public = generate_key_pem()
    req = envelope.build_request(
        m.Method.PAY_ORDER, m.decode(order(), m.PayOrder), app_id="pos", private_key=private
    )
    body = envelope.encode(req)
    assert b'"order_amount":12.50' in body
    method, app_id, fields = envelope.open_request(body, lambda _app: public)
    assert (method, app_id) == ("wisehub.cloud.pay.order", "pos")
    assert m.decode(fields, m.PayOrder).order_amount == Decimal("12.50")


def test_request_unknown_app_and_stale_clock() -> None:
    private, public = generate_key_pem()
    req = envelope.build_request(
        m.Method.ORDER_QUERY,
        m.OrderQuery(merchant_no="M", trans_no="1"),
        app_id="pos",
        private_key=private,
        ts_ms=NOW,
    )
    body = envelope.encode(req)
    with pytest.raises(ContractError, match="unknown app_id"):
        envelope.open_request(body, lambda _app: None)
    with pytest.raises(ContractError, match="15 minutes"):
        envelope.open_request(body, lambda _app: public, now=NOW + 16 * 60_000)
    envelope.open_request(body, lambda _app: public, now=NOW + 14 * 60_000)


def test_response_success_failure_and_forgery() -> None:
    data = m.CloseOrderResult(message_id="x", trans_no="T1")
    ok = envelope.encode(envelope.build_response(data, GW_PRIVATE))
    assert envelope.open_response(ok, GW_PUBLIC, m.CloseOrderResult) == data
    fail = envelope.encode(envelope.build_response(None, GW_PRIVATE, code="40004", msg="no"))
    with pytest.raises(CloudRejected) as info:
        envelope.open_response(fail, GW_PUBLIC, m.CloseOrderResult)
    assert info.value.code == "40004"
    forged = ok.replace(b'T1\\"', b'T2\\"')
    assert forged != ok
    with pytest.raises(SignatureError):
        envelope.open_response(forged, GW_PUBLIC, m.CloseOrderResult)


def _push(**over: Any) -> bytes:
    biz = m.PushOrder(
        trans_no="TR1",
        merchant_no="M0001",
        terminal_sn=over.pop("terminal_sn", "T0001"),
        merchant_order_no="A-1",
        price_currency="QAR",
        order_amount=Decimal("12.50"),
        trans_type=m.TransType.SALE,
        expires_at=over.pop("expires_at", NOW + 300_000),
    )
    push = envelope.build_push(
        m.PushTopic.PAY_ORDER,
        biz,
        app_id="gw",
        private_key=over.pop("key", GW_PRIVATE),
        ts_ms=over.pop("ts", NOW),
    )
    return msgspec.json.encode(push)


def test_push_accepted() -> None:
    push, biz = envelope.open_push(_push(), GW_PUBLIC, "T0001", now=NOW + 1000)
    assert isinstance(biz, m.PushOrder)
    assert biz.order_amount == Decimal("12.50")
    assert push.topic is m.PushTopic.PAY_ORDER


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (lambda: _push(key=generate_key_pem()[0]), "bad_signature"),
        (lambda: _push().replace(b"12.50", b"1.50"), "bad_signature"),
        (lambda: _push(terminal_sn="T0002"), "wrong_terminal"),
        (lambda: _push(ts=NOW - 20 * 60_000), "clock"),
        (lambda: _push(expires_at=NOW - 1), "expired"),
        (lambda: b"garbage", "malformed"),
        (lambda: b"[1,2]", "malformed"),
    ],
)
def test_push_rejections(payload: Any, reason: str) -> None:
    with pytest.raises(envelope.PushRejected) as info:
        envelope.open_push(payload(), GW_PUBLIC, "T0001", now=NOW)
    assert info.value.reason == reason


def test_event_round_trip() -> None:
    private, public = generate_key_pem()
    event = envelope.build_event(
        m.EventKind.PAID,
        terminal_sn="T0001",
        message_id="mid",
        trans_no="TR1",
        private_key=private,
        hops={"push_received": 1, "journaled": 2},
    )
    opened = envelope.open_event(msgspec.json.encode(event), public)
    assert opened.event is m.EventKind.PAID
    assert wirejson.loads(opened.hops or "") == {"push_received": 1, "journaled": 2}


def test_notification_verify() -> None:
    info = m.OrderInfo(
        trans_no="TR1",
        trans_type=m.TransType.SALE,
        trans_status=m.TransStatus.COMPLETED,
        merchant_order_no="A-1",
        price_currency="QAR",
        order_amount=Decimal("12.50"),
        trans_amount=Decimal("12.50"),
        terminal_sn="T0001",
        masked_pan="476173******0010",
    )
    body = envelope.build_notification(info, GW_PRIVATE, notify_id="n1", notify_time="x")
    note = envelope.verify_notification(envelope.encode(body), GW_PUBLIC)
    assert note.trans_status is m.TransStatus.COMPLETED
    body["trans_status"] = 1
    with pytest.raises(SignatureError):
        envelope.verify_notification(envelope.encode(body), GW_PUBLIC)


def test_masked_pan_must_be_masked() -> None:
    with pytest.raises(ContractError) as info:
        m.decode(
            {
                "trans_no": "1",
                "trans_status": 2,
                "masked_pan": "4761739001010010",
            },
            m.CashierResult,
        )
    assert info.value.field == "$.masked_pan"
    assert "4761739001010010" not in str(info.value)


def test_fields_at_their_bound_are_taken() -> None:
    body = order(
        description="ا" * m.MAX_DESCRIPTION,  # characters, not bytes
        attach="a" * m.MAX_ATTACH,
        store_no="s" * m.MAX_NAME,
    )
    assert m.decode(body, m.PayOrder).description == "ا" * m.MAX_DESCRIPTION
