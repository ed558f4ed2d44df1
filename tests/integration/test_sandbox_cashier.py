"""The sandbox's cashier API (docs/protocol.md part D) and its simulated acquirer,
against the real sandbox process, with cloud.envelope + httpx as the terminal."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import httpx
import pytest

from cloud import envelope, wirejson
from cloud.messages import CashierResult, Method, OrderInfo, PayOrderResult, TransStatus
from sandbox.broker_mosquitto import MosquittoBroker
from tests.integration.conftest import SandboxHandle, order_fields, running_sandbox
from tests.waiting import until

SN = "T200"


def new_order(sandbox: SandboxHandle, amount: str, **over: Any) -> PayOrderResult:
    fields = order_fields(SN, order_amount=Decimal(amount), **over)
    return sandbox.open_ok(sandbox.pos_call(Method.PAY_ORDER, fields), PayOrderResult)


def card_create(
    sandbox: SandboxHandle,
    trans_no: str,
    amount: str,
    pan: str = "4761739001010010",
    *,
    request_no: str | None = None,
    sn: str = SN,
    timeout: float = 10.0,
) -> httpx.Response:
    biz = {
        "trans_no": trans_no,
        "terminal_sn": sn,
        "order_amount": Decimal(amount),
        "price_currency": "QAR",
        "request_no": request_no or uuid.uuid4().hex,
        **sandbox.card_fields(pan),
    }
    return sandbox.cashier_call(sn, Method.BANKCARD_CREATE, biz, timeout=timeout)


def call(sandbox: SandboxHandle, method: Method, trans_no: str, **extra: Any) -> CashierResult:
    biz = {"trans_no": trans_no, "terminal_sn": SN, **extra}
    return sandbox.open_ok(sandbox.cashier_call(SN, method, biz), CashierResult)


def charges(sandbox: SandboxHandle, trans_no: str) -> list[dict[str, Any]]:
    rows = sandbox.query("SELECT * FROM charges WHERE trans_no = ? ORDER BY id", trans_no)
    return [dict(r) for r in rows]


def status_of(sandbox: SandboxHandle, trans_no: str) -> OrderInfo:
    resp = sandbox.pos_call(Method.ORDER_QUERY, {"merchant_no": "M0001", "trans_no": trans_no})
    return sandbox.open_ok(resp, OrderInfo)


HANG_SECONDS = 150  # a .91 create answers after 1.5 s: room for detail/reverse on a busy CI


@pytest.fixture(scope="module")
def cashier(
    tmp_path_factory: pytest.TempPathFactory, module_broker: MosquittoBroker
) -> Iterator[SandboxHandle]:
    """One sandbox for this module, with terminal T200 provisioned."""
    root = tmp_path_factory.mktemp("cashier")
    args = ["--hang-seconds", str(HANG_SECONDS)]
    with running_sandbox(root / "sandbox", module_broker, args) as sb:
        sb.provision(SN)
        yield sb


def test_test_cards_and_magic_amounts(cashier: SandboxHandle) -> None:
    sb = cashier
    cases = [
        # amount, pan, status, error code, pay_method_id
        ("10.00", "4761739001010010", 2, None, "Visa"),
        ("10.00", "5413330089010434", 2, None, "MasterCard"),
        ("10.00", "4000000000000002", 1, "05", None),
        ("10.51", "4761739001010010", 1, "51", None),
        ("10.05", "5413330089010434", 1, "05", None),
        ("10.54", "4761739001010010", 1, "54", None),
        ("10.92", "4761739001010010", 2, None, "Visa"),
    ]
    for amount, pan, status, code, method in cases:
        order = new_order(sb, amount)
        result = sb.open_ok(card_create(sb, order.trans_no, amount, pan), CashierResult)
        assert (result.trans_status, result.trans_error_code) == (status, code), (amount, pan)
        info = status_of(sb, order.trans_no)
        assert info.trans_status == status
        if status == 2:
            assert result.pay_method_id == method
            assert result.auth_code is not None
            assert len(result.auth_code) == 6
            assert result.ref_no is not None
            assert len(result.ref_no) == 12
            assert info.masked_pan == pan[:6] + "******" + pan[-4:]
            assert info.paid_amount == Decimal(amount)
            assert info.ref_no == result.ref_no
            assert len(charges(sb, order.trans_no)) == 1
        else:
            assert info.trans_error_code == code
            assert info.trans_error_msg
            assert charges(sb, order.trans_no) == []
    # never the full PAN at rest
    dump = "\n".join(str(tuple(r)) for r in sb.query("SELECT * FROM charges"))
    dump += "\n".join(str(tuple(r)) for r in sb.query("SELECT * FROM orders"))
    dump += "\n".join(str(tuple(r)) for r in sb.query("SELECT * FROM cashier_requests"))
    for pan in ("4761739001010010", "5413330089010434", "4000000000000002"):
        assert pan not in dump
        assert pan not in sb.stderr_text()


def test_wallet_codes(cashier: SandboxHandle) -> None:
    sb = cashier
    for code, status, method in (
        ("284763251234567890", 2, "Alipay"),
        ("134567890123456789", 2, "WeChatPay"),
        ("NOT-A-WALLET-CODE", 1, None),
    ):
        order = new_order(sb, "8.00")
        biz = {
            "trans_no": order.trans_no,
            "terminal_sn": SN,
            "order_amount": Decimal("8.00"),
            "price_currency": "QAR",
            "request_no": uuid.uuid4().hex,
            "auth_code_cipher": sb.seal({"auth_code": code}),
        }
        result = sb.open_ok(sb.cashier_call(SN, Method.WALLET_CREATE, biz), CashierResult)
        assert result.trans_status == status
        assert result.pay_method_id == method
        assert code not in sb.stderr_text()


def test_repeated_request_no_never_charges_twice(cashier: SandboxHandle) -> None:
    sb = cashier
    order = new_order(sb, "15.00")
    first = card_create(sb, order.trans_no, "15.00", request_no="REQ-1")
    again = card_create(sb, order.trans_no, "15.00", request_no="REQ-1")
    assert sb.answer(first)["data"] == sb.answer(again)["data"]
    assert sb.open_ok(again, CashierResult).trans_status == 2
    assert len(charges(sb, order.trans_no)) == 1
    # same request_no, other fields: refused, still one charge
    other = sb.answer(card_create(sb, order.trans_no, "16.00", request_no="REQ-1"))
    assert other["code"] == "40910"
    # a new attempt on a paid order is refused: final
    late = sb.answer(card_create(sb, order.trans_no, "15.00", request_no="REQ-2"))
    assert late["code"] == "40907"
    assert len(charges(sb, order.trans_no)) == 1

    # repeats that arrive while the first is still with the acquirer (.91 hangs
    # HANG_SECONDS x 0.01) wait for it and get the same answer
    slow = new_order(sb, "15.91")
    answers: list[httpx.Response] = []

    def send() -> None:
        answers.append(card_create(sb, slow.trans_no, "15.91", request_no="REQ-3"))

    threads = [threading.Thread(target=send) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    assert len(answers) == 3
    assert len({sb.answer(a)["data"] for a in answers}) == 1
    assert sb.open_ok(answers[0], CashierResult).trans_status == 2
    assert len(charges(sb, slow.trans_no)) == 1


def test_timeout_then_detail_then_reverse_wins(cashier: SandboxHandle) -> None:
    sb = cashier
    order = new_order(sb, "20.91")
    with pytest.raises(httpx.TimeoutException):
        card_create(sb, order.trans_no, "20.91", request_no="REQ-T", timeout=0.1)
    assert call(sb, Method.TRANS_DETAIL, order.trans_no, request_no="REQ-T").trans_status == 0
    reversed_ = call(sb, Method.TRANS_REVERSE, order.trans_no, request_no="REQ-T")
    assert reversed_.trans_status == 3
    # the acquirer approves after the hang: the charge is undone at once
    rows = until(lambda: charges(sb, order.trans_no), "the late charge")
    assert len(rows) == 1
    assert rows[0]["reversed"] == 1
    info = status_of(sb, order.trans_no)
    assert info.trans_status is TransStatus.CANCELLED
    assert info.trans_error_code == "REVERSED"
    # the late answer of the create says 3 too, and a repeat gets the same
    replay = sb.open_ok(card_create(sb, order.trans_no, "20.91", request_no="REQ-T"), CashierResult)
    assert replay.trans_status == 3


def test_charged_then_500_then_reverse(cashier: SandboxHandle) -> None:
    sb = cashier
    order = new_order(sb, "30.52")
    resp = card_create(sb, order.trans_no, "30.52", request_no="REQ-52")
    assert resp.status_code == 500
    assert call(sb, Method.TRANS_DETAIL, order.trans_no).trans_status == 2
    assert [c["reversed"] for c in charges(sb, order.trans_no)] == [0]
    assert call(sb, Method.TRANS_REVERSE, order.trans_no, request_no="REQ-52").trans_status == 3
    assert call(sb, Method.TRANS_REVERSE, order.trans_no, request_no="REQ-52").trans_status == 3
    assert [c["reversed"] for c in charges(sb, order.trans_no)] == [1]
    assert status_of(sb, order.trans_no).trans_status is TransStatus.CANCELLED
    # statuses never regress: a second create or a cancel does not touch it
    assert sb.answer(card_create(sb, order.trans_no, "30.52"))["code"] == "40907"
    assert status_of(sb, order.trans_no).trans_status is TransStatus.CANCELLED


def test_unavailable_charges_nothing_and_order_stays_payable(cashier: SandboxHandle) -> None:
    sb = cashier
    order = new_order(sb, "40.93")
    resp = card_create(sb, order.trans_no, "40.93", request_no="REQ-93")
    assert resp.status_code == 503
    assert charges(sb, order.trans_no) == []
    assert status_of(sb, order.trans_no).trans_status is TransStatus.PREORDER
    # the terminal gives up on it: cancel closes it as 3
    assert call(sb, Method.TRANS_CANCEL, order.trans_no).trans_status == 3
    assert call(sb, Method.TRANS_CANCEL, order.trans_no).trans_status == 3


def test_refusals_and_no_regression(cashier: SandboxHandle) -> None:
    sb = cashier
    sb.provision("T201")
    order = new_order(sb, "9.00")
    # another terminal cannot pay it
    other = sb.answer(card_create(sb, order.trans_no, "9.00", sn="T201"))
    assert other["code"] == "40909"
    # terminal_sn must be the caller
    biz = {"trans_no": order.trans_no, "terminal_sn": "T201"}
    assert sb.answer(sb.cashier_call(SN, Method.TRANS_DETAIL, biz))["code"] == "40909"
    # amount must be the order's
    assert sb.answer(card_create(sb, order.trans_no, "9.01"))["code"] == "40908"
    # card data must match the clear masked PAN
    mismatch = {
        "trans_no": order.trans_no,
        "terminal_sn": SN,
        "order_amount": Decimal("9.00"),
        "price_currency": "QAR",
        "request_no": uuid.uuid4().hex,
        **sb.card_fields("4761739001010010"),
        "masked_pan": "541333******0434",
    }
    bad = sb.answer(sb.cashier_call(SN, Method.BANKCARD_CREATE, mismatch))
    assert bad["code"] == "40001"
    assert "$.masked_pan" in bad["msg"]
    garbled = mismatch | {"card_cipher": "{}", "masked_pan": "476173******0010"}
    assert sb.answer(sb.cashier_call(SN, Method.BANKCARD_CREATE, garbled))["code"] == "40001"
    assert charges(sb, order.trans_no) == []
    # paid, then a cancel cannot undo it (loud warning, status kept)
    assert sb.open_ok(card_create(sb, order.trans_no, "9.00"), CashierResult).trans_status == 2
    refused = sb.answer(
        sb.cashier_call(SN, Method.TRANS_CANCEL, {"trans_no": order.trans_no, "terminal_sn": SN})
    )
    assert refused["code"] == "40907"
    assert status_of(sb, order.trans_no).trans_status is TransStatus.COMPLETED
    assert "!!!" in sb.stderr_text()
    # expired orders cannot be paid (the sweeper closes them as EXPIRED)
    short = new_order(sb, "9.00", expires=1)
    until(lambda: status_of(sb, short.trans_no).trans_status is TransStatus.CLOSED)
    info = status_of(sb, short.trans_no)
    assert info.trans_status is TransStatus.CLOSED
    assert info.trans_error_code == "EXPIRED"
    assert sb.answer(card_create(sb, short.trans_no, "9.00"))["code"] == "40906"


def test_every_answer_names_its_question(cashier: SandboxHandle) -> None:
    """Part D: answers and refusals alike name the request, order and terminal
    they answer, stamped now, so a terminal can tell them from a replay."""
    sb = cashier
    order = new_order(sb, "3.00")
    request_no = uuid.uuid4().hex
    paid = sb.open_ok(card_create(sb, order.trans_no, "3.00", request_no=request_no), CashierResult)
    detail = call(sb, Method.TRANS_DETAIL, order.trans_no, request_no=request_no)
    cancel_refused = sb.answer(
        sb.cashier_call(
            SN,
            Method.TRANS_CANCEL,
            {"trans_no": order.trans_no, "terminal_sn": SN, "request_no": "c-1"},
        )
    )
    unknown = sb.answer(
        sb.cashier_call(SN, Method.TRANS_DETAIL, {"trans_no": "NOPE", "terminal_sn": SN})
    )
    now = envelope.now_ms()
    for result, request in ((paid, request_no), (detail, request_no)):
        assert (result.trans_no, result.terminal_sn, result.request_no) == (
            order.trans_no,
            SN,
            request,
        )
        assert result.timestamp is not None
        assert abs(now - int(result.timestamp)) < 60_000
    assert cancel_refused["code"] != "0"
    bound = wirejson.loads(cancel_refused["data"])
    assert (bound["trans_no"], bound["terminal_sn"], bound["request_no"]) == (
        order.trans_no,
        SN,
        "c-1",
    )
    assert unknown["code"] != "0"
    bound = wirejson.loads(unknown["data"])
    assert (bound["trans_no"], bound["terminal_sn"], bound.get("request_no")) == ("NOPE", SN, None)
    assert abs(now - int(bound["timestamp"])) < 60_000
