"""The sandbox's Open API and TMS pushes (docs/protocol.md parts A and C) against a
real Mosquitto and the real sandbox process, with cloud.envelope as the POS."""

from __future__ import annotations

import json
import time
import tomllib
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path

import pytest

from cloud import envelope, sealing, wirejson
from cloud.messages import (
    MAX_DESCRIPTION,
    CashierResult,
    CloseOrderResult,
    EventKind,
    Method,
    OrderInfo,
    PayOrderResult,
    PushClose,
    PushOrder,
    PushTopic,
    TerminalInfo,
    TransStatus,
    terminal_state,
)
from cloud.signing import generate_key_pem, load_private_key, load_public_key
from tests.integration.conftest import SandboxHandle, TerminalSubscriber, order_fields
from tests.waiting import until


@pytest.fixture
def sandbox(module_sandbox: SandboxHandle) -> SandboxHandle:
    """One sandbox for this module: each test uses its own terminal SN."""
    return module_sandbox


def pay(sandbox: SandboxHandle, sn: str, trans_no: str, amount: Decimal) -> CashierResult:
    biz = {
        "trans_no": trans_no,
        "terminal_sn": sn,
        "order_amount": amount,
        "price_currency": "QAR",
        "request_no": "R-" + trans_no,
        **sandbox.card_fields("4761739001010010"),
    }
    return sandbox.open_ok(sandbox.cashier_call(sn, Method.BANKCARD_CREATE, biz), CashierResult)


def query(sandbox: SandboxHandle, merchant_order_no: str) -> OrderInfo:
    resp = sandbox.pos_call(
        Method.ORDER_QUERY, {"merchant_no": "M0001", "merchant_order_no": merchant_order_no}
    )
    return sandbox.open_ok(resp, OrderInfo)


def test_create_pushes_a_signed_order_with_message_expiry(
    sandbox: SandboxHandle, terminal_subscriber: Callable[[str], TerminalSubscriber]
) -> None:
    sandbox.provision("T100")
    sub = terminal_subscriber("T100")
    fields = order_fields(
        "T100",
        order_amount=Decimal("12.50"),
        tip_amount=Decimal("1.00"),
        expires=120,
        pay_scenario="SWIPE_CARD",
        confirm_on_terminal=True,
        order_queue_mode="FILO",
        attach="table 7",
    )
    before = envelope.now_ms()
    result = sandbox.open_ok(sandbox.pos_call(Method.PAY_ORDER, fields), PayOrderResult)
    assert result.trans_amount == Decimal("13.50")
    assert result.terminal_online_status == "OFFLINE"

    (msg,) = sub.wait_for(1)
    assert msg.topic == "sadad/v1/terminals/T100/orders"
    assert msg.qos == 1
    assert 110 <= msg.properties["MessageExpiryInterval"] <= 120
    push, biz = envelope.open_push(msg.payload, sandbox.gateway_public_key, "T100")
    assert push.topic is PushTopic.PAY_ORDER
    assert push.message_id == result.message_id
    assert isinstance(biz, PushOrder)
    assert biz.trans_no == result.trans_no
    assert biz.merchant_order_no == fields["merchant_order_no"]
    assert biz.order_amount == Decimal("12.50")
    assert biz.tip_amount == Decimal("1.00")
    assert biz.price_currency == "QAR"
    assert biz.trans_type == 1
    assert biz.pay_scenario == "SWIPE_CARD"
    assert biz.confirm_on_terminal is True
    assert biz.order_queue_mode == "FILO"
    assert biz.description == "2 x coffee"
    assert before + 120_000 <= biz.expires_at <= envelope.now_ms() + 120_000
    # the amount keeps its scale on the wire
    assert '"order_amount":12.50' in json.loads(msg.payload)["biz_data"]

    info = query(sandbox, fields["merchant_order_no"])
    assert info.trans_status is TransStatus.PREORDER
    assert info.attach == "table 7"


def test_repeated_create_returns_first_answer_and_different_fields_fail(
    sandbox: SandboxHandle, terminal_subscriber: Callable[[str], TerminalSubscriber]
) -> None:
    sandbox.provision("T101")
    sub = terminal_subscriber("T101")
    fields = order_fields("T101", order_amount=Decimal("20.00"))
    first = sandbox.pos_call(Method.PAY_ORDER, fields)
    again = sandbox.pos_call(Method.PAY_ORDER, fields | {"order_amount": Decimal("20")})
    a = sandbox.open_ok(first, PayOrderResult)
    b = sandbox.open_ok(again, PayOrderResult)
    assert (a.trans_no, a.message_id) == (b.trans_no, b.message_id)
    assert sandbox.answer(first)["data"] == sandbox.answer(again)["data"]

    other = sandbox.answer(sandbox.pos_call(Method.PAY_ORDER, fields | {"order_amount": 21}))
    assert other["code"] == "40901"
    assert fields["merchant_order_no"] in other["msg"]

    sub.wait_for(1)
    time.sleep(0.3)  # a second push would have arrived by now
    assert len(sub.messages) == 1  # a repeat is not pushed again
    rows = sandbox.query(
        "SELECT COUNT(*) AS n FROM orders WHERE merchant_order_no = ?", fields["merchant_order_no"]
    )
    assert rows[0]["n"] == 1


def test_close_in_status_9_pushes_close_and_fails_after_payment(
    sandbox: SandboxHandle, terminal_subscriber: Callable[[str], TerminalSubscriber]
) -> None:
    sandbox.provision("T102")
    sub = terminal_subscriber("T102")
    fields = order_fields("T102")
    created = sandbox.open_ok(sandbox.pos_call(Method.PAY_ORDER, fields), PayOrderResult)
    close = {
        "merchant_no": "M0001",
        "terminal_sn": "T102",
        "merchant_order_no": fields["merchant_order_no"],
        "description": "customer left",
    }
    first = sandbox.pos_call(Method.PAY_CLOSE, close)
    closed = sandbox.open_ok(first, CloseOrderResult)
    assert closed.trans_no == created.trans_no
    again = sandbox.pos_call(Method.PAY_CLOSE, close)
    assert sandbox.answer(again)["data"] == sandbox.answer(first)["data"]

    _, close_msg = sub.wait_for(2)
    push, biz = envelope.open_push(close_msg.payload, sandbox.gateway_public_key, "T102")
    assert push.topic is PushTopic.PAY_CLOSE
    assert push.message_id == closed.message_id
    assert isinstance(biz, PushClose)
    assert biz.trans_no == created.trans_no
    assert biz.description == "customer left"

    info = query(sandbox, fields["merchant_order_no"])
    assert info.trans_status is TransStatus.CLOSED
    assert info.trans_error_code == "CLOSED"
    assert info.trans_end_time

    # a paid order cannot be closed: void or refund instead
    paid = order_fields("T102")
    order = sandbox.open_ok(sandbox.pos_call(Method.PAY_ORDER, paid), PayOrderResult)
    assert pay(sandbox, "T102", order.trans_no, paid["order_amount"]).trans_status == 2
    refused = sandbox.answer(
        sandbox.pos_call(Method.PAY_CLOSE, close | {"merchant_order_no": paid["merchant_order_no"]})
    )
    assert refused["code"] == "40902"
    assert "void" in refused["msg"]
    assert "refund" in refused["msg"]
    assert query(sandbox, paid["merchant_order_no"]).trans_status is TransStatus.COMPLETED


def test_terminal_online_status_and_offline_rejection(sandbox: SandboxHandle) -> None:
    sandbox.provision("T103")
    strict = order_fields("T103", reject_trade_when_terminal_offline=True)
    refused = sandbox.answer(sandbox.pos_call(Method.PAY_ORDER, strict))
    assert refused["code"] == "40903"
    assert "offline" in refused["msg"]
    unknown = sandbox.answer(sandbox.pos_call(Method.PAY_ORDER, order_fields("NOPE")))
    assert unknown["code"] == "40401"

    sandbox.set_terminal_status("T103", "online")

    def accepted() -> PayOrderResult | None:
        resp = sandbox.pos_call(
            Method.PAY_ORDER, order_fields("T103", reject_trade_when_terminal_offline=True)
        )
        return (
            sandbox.open_ok(resp, PayOrderResult) if sandbox.answer(resp)["code"] == "0" else None
        )

    result = until(accepted)
    assert result.terminal_online_status == "ONLINE"
    # Sandbox extensions: the retained status beside the create, the query and
    # in sandbox.terminal.status.
    created_state = terminal_state(result.terminal_state)
    assert created_state is not None
    assert (created_state.status, created_state.keepalive) == ("online", 30)
    info = sandbox.open_ok(
        sandbox.pos_call(Method.ORDER_QUERY, {"merchant_no": "M0001", "trans_no": result.trans_no}),
        OrderInfo,
    )
    assert info.terminal_online_status == "ONLINE"
    assert terminal_state(info.terminal_state) == created_state

    def terminal(sn: str) -> TerminalInfo:
        resp = sandbox.pos_call(Method.TERMINAL_STATUS, {"merchant_no": "M0001", "terminal_sn": sn})
        return sandbox.open_ok(resp, TerminalInfo)

    online = terminal("T103")
    assert online.terminal_online_status == "ONLINE"
    assert online.status_time
    assert terminal_state(online.terminal_state) == created_state
    missing = sandbox.pos_call(
        Method.TERMINAL_STATUS, {"merchant_no": "M0001", "terminal_sn": "NOPE"}
    )
    assert sandbox.answer(missing)["code"] == "40401"

    sandbox.set_terminal_status("T103", "offline")
    until(lambda: sandbox.answer(sandbox.pos_call(Method.PAY_ORDER, strict))["code"] == "40903")
    assert terminal("T103").terminal_online_status == "OFFLINE"


def test_void_and_refund_need_a_paid_original(
    sandbox: SandboxHandle, terminal_subscriber: Callable[[str], TerminalSubscriber]
) -> None:
    sandbox.provision("T104")
    sub = terminal_subscriber("T104")
    sale = order_fields("T104", order_amount=Decimal("10.00"))
    sale_result = sandbox.open_ok(sandbox.pos_call(Method.PAY_ORDER, sale), PayOrderResult)

    unpaid_void = order_fields(
        "T104",
        trans_type=2,
        order_amount=Decimal("10.00"),
        orig_merchant_order_no=sale["merchant_order_no"],
    )
    assert sandbox.answer(sandbox.pos_call(Method.PAY_ORDER, unpaid_void))["code"] == "40904"

    pay(sandbox, "T104", sale_result.trans_no, Decimal("10.00"))

    refund = order_fields(
        "T104",
        trans_type=3,
        order_amount=Decimal("4.00"),
        orig_merchant_order_no=sale["merchant_order_no"],
    )
    refund_result = sandbox.open_ok(sandbox.pos_call(Method.PAY_ORDER, refund), PayOrderResult)
    too_much = order_fields(
        "T104",
        trans_type=3,
        order_amount=Decimal("6.01"),
        orig_merchant_order_no=sale["merchant_order_no"],
    )
    assert sandbox.answer(sandbox.pos_call(Method.PAY_ORDER, too_much))["code"] == "40905"

    _, refund_msg = sub.wait_for(2)
    _, biz = envelope.open_push(refund_msg.payload, sandbox.gateway_public_key, "T104")
    assert isinstance(biz, PushOrder)
    assert biz.trans_type == 3
    assert biz.orig_trans_no == sale_result.trans_no

    assert pay(sandbox, "T104", refund_result.trans_no, Decimal("4.00")).trans_status == 2
    assert query(sandbox, sale["merchant_order_no"]).trans_status is TransStatus.COMPLETED

    void = order_fields(
        "T104",
        trans_type=2,
        order_amount=Decimal("10.00"),
        orig_merchant_order_no=sale["merchant_order_no"],
    )
    void_result = sandbox.open_ok(sandbox.pos_call(Method.PAY_ORDER, void), PayOrderResult)
    assert pay(sandbox, "T104", void_result.trans_no, Decimal("10.00")).trans_status == 2
    original = query(sandbox, sale["merchant_order_no"])
    assert original.trans_status is TransStatus.CANCELLED
    assert original.trans_error_code == "VOIDED"
    trans = (sale_result.trans_no, refund_result.trans_no, void_result.trans_no)
    rows = sandbox.query(
        "SELECT trans_no, kind FROM charges WHERE trans_no IN (?, ?, ?) ORDER BY id", *trans
    )
    assert [(r["trans_no"], r["kind"]) for r in rows] == list(
        zip(trans, ["sale", "refund", "void"], strict=True)
    )


def test_terminal_events_make_the_timeline_and_forged_ones_are_dropped(
    sandbox: SandboxHandle,
) -> None:
    sandbox.provision("T105")
    fields = order_fields("T105")
    created = sandbox.open_ok(sandbox.pos_call(Method.PAY_ORDER, fields), PayOrderResult)
    forger, _ = generate_key_pem()
    sandbox.terminal_event(
        "T105", EventKind.PAID, message_id=created.message_id, trans_no=created.trans_no, key=forger
    )
    sandbox.terminal_event(
        "T105",
        EventKind.RECEIVED,
        message_id=created.message_id,
        trans_no=created.trans_no,
        hops={"tms": 1, "received": 2},
    )
    sandbox.terminal_event(
        "T105",
        EventKind.DISPLAYED,
        message_id=created.message_id,
        hops={"tms": 1, "received": 2, "displayed": 3},
    )

    def timeline() -> list[dict[str, object]]:
        text = query(sandbox, fields["merchant_order_no"]).terminal_timeline
        items = wirejson.loads(text) if text else []
        return items if len(items) >= 2 else []

    items = until(timeline)
    assert [i["event"] for i in items] == ["received", "displayed"]
    assert items[1]["hops"] == {"tms": 1, "received": 2, "displayed": 3}
    assert "bad signature" in sandbox.stderr_text()


def test_provision_writes_agent_toml_pointing_at_existing_keys(sandbox: SandboxHandle) -> None:
    path = sandbox.provision(
        "T106",
        readers={"nfc": "pn532:/tmp/pn532", "qr": "scanner:/tmp/q"},
        store_name="Corner Shop",
    )
    cfg = tomllib.loads(path.read_text())
    assert cfg["terminal"] == {
        "sn": "T106",
        "app_id": "T106",
        "store_name": "Corner Shop",
        "private_key_file": str(sandbox.data_dir / "terminals/T106/terminal_private.pem"),
    }
    assert cfg["mqtt"] == {
        "url": sandbox.mqtt_url,
        "keepalive": 30,
        "username": "T106",  # the broker knows a terminal by its SN (issue 16)
        "password_file": str(sandbox.data_dir / "terminals/T106/mqtt.password"),
    }
    assert cfg["gateway"]["url"] == sandbox.http_url
    assert cfg["readers"] == {"nfc": "pn532:/tmp/pn532", "qr": "scanner:/tmp/q"}
    assert cfg["journal"]["path"].startswith(str(sandbox.data_dir))
    assert cfg["ui"]["socket"].endswith("agent.sock")
    private = load_private_key(Path(cfg["terminal"]["private_key_file"]).read_text())
    gateway = Path(cfg["gateway"]["public_key_file"]).read_text()
    assert gateway == sandbox.gateway_public_key
    load_public_key(gateway)
    (row,) = sandbox.query("SELECT public_key_pem FROM terminals WHERE sn = 'T106'")
    assert (
        load_public_key(row["public_key_pem"]).public_numbers()
        == private.public_key().public_numbers()
    )
    assert "#" in path.read_text()  # commented

    pos = tomllib.loads(sandbox.pos_config.read_text())
    assert pos["gateway_url"] == sandbox.http_url
    assert pos["app_id"] == "pos-sandbox"
    assert pos["merchant_no"] == "M0001"
    assert (sandbox.pos_config.parent / pos["private_key_file"]).exists()
    assert (sandbox.pos_config.parent / pos["gateway_public_key_file"]).exists()

    # the running sandbox knows the new terminal at once
    result = sandbox.open_ok(
        sandbox.pos_call(Method.PAY_ORDER, order_fields("T106")), PayOrderResult
    )
    assert result.trans_no
    # and its cipher can be opened with the gateway key only
    sealed = sealing.seal({"pan": "1"}, gateway)
    assert sealing.open(sealed, (sandbox.data_dir / "keys/gateway_private.pem").read_text())


def test_long_fields_are_refused_with_the_field_named(sandbox: SandboxHandle) -> None:
    """The gateway refuses an order whose free text is over its bound, naming
    the field, before anything is created or pushed."""
    fields = order_fields("T0001", description="d" * (MAX_DESCRIPTION + 1))
    refused = sandbox.answer(sandbox.pos_call(Method.PAY_ORDER, fields))
    assert refused["code"] != "0"
    assert "$.description" in refused["msg"]
    assert (
        sandbox.query("SELECT * FROM orders WHERE merchant_order_no=?", fields["merchant_order_no"])
        == []
    )
