"""States never regress, end to end (issue 8, point 4): late terminal events,
payment attempts, cancels and closes reaching the real sandbox process after
an order became final change nothing, are logged as conflicts, and send no
second notification; the POS module keeps the same final status."""

from __future__ import annotations

import uuid
from decimal import Decimal

import pytest

from cloud import wirejson
from cloud.config import load_config
from cloud.messages import (
    CashierResult,
    EventKind,
    Method,
    OrderInfo,
    PayOrderResult,
    TransStatus,
)
from cloud.pos import PosClient
from tests.integration.conftest import NotifyReceiver, SandboxHandle, order_fields
from tests.waiting import until

SN = "T4801"


@pytest.fixture
def sandbox(module_sandbox: SandboxHandle) -> SandboxHandle:
    module_sandbox.provision(SN)
    return module_sandbox


def _create(sandbox: SandboxHandle, notify_url: str) -> tuple[str, PayOrderResult]:
    order_no = "LATE-" + uuid.uuid4().hex[:10]
    fields = order_fields(
        SN, merchant_order_no=order_no, order_amount=Decimal("12.30"), notify_url=notify_url
    )
    return order_no, sandbox.open_ok(sandbox.pos_call(Method.PAY_ORDER, fields), PayOrderResult)


def _pay(sandbox: SandboxHandle, trans_no: str, request_no: str) -> dict[str, object]:
    biz = {
        "trans_no": trans_no,
        "terminal_sn": SN,
        "order_amount": Decimal("12.30"),
        "price_currency": "QAR",
        "request_no": request_no,
        **sandbox.card_fields("4761739001010010"),
    }
    return sandbox.answer(sandbox.cashier_call(SN, Method.BANKCARD_CREATE, biz))


def _event_seen(sandbox: SandboxHandle, trans_no: str, event: EventKind) -> bool:
    rows = sandbox.query("SELECT event FROM events WHERE trans_no = ?", trans_no)
    return any(r["event"] == str(event) for r in rows)


def _notified(sandbox: SandboxHandle, trans_no: str) -> list[int]:
    rows = sandbox.query(
        "SELECT trans_status FROM notifications WHERE trans_no = ? ORDER BY id", trans_no
    )
    return [int(r["trans_status"]) for r in rows]


def _logged(sandbox: SandboxHandle, text: str) -> None:
    """The sandbox logs it (the event's row is written just before the log line)."""
    until(lambda: text in sandbox.stderr_text(), timeout=10)


def test_late_paid_event_and_payment_after_close_change_nothing(
    sandbox: SandboxHandle, notify_receiver: NotifyReceiver
) -> None:
    order_no, created = _create(sandbox, notify_receiver.url)
    trans_no = created.trans_no
    close = {"merchant_no": "M0001", "terminal_sn": SN, "merchant_order_no": order_no}
    assert sandbox.answer(sandbox.pos_call(Method.PAY_CLOSE, close))["code"] == "0"
    (delivery,) = notify_receiver.wait_for(1)
    assert delivery.fields()["trans_status"] == int(TransStatus.CLOSED)

    with PosClient(load_config(sandbox.pos_config)) as pos:
        assert pos.wait_for_final(order_no, 10).trans_status is TransStatus.CLOSED
        # Late: the terminal says it was paid, tries to pay it, then reverses it.
        sandbox.terminal_event(SN, EventKind.PAID, message_id=created.message_id, trans_no=trans_no)
        assert _pay(sandbox, trans_no, f"{SN}-{trans_no}-1")["code"] == "40907"
        reverse = {"trans_no": trans_no, "terminal_sn": SN, "request_no": f"{SN}-{trans_no}-1"}
        reversed_ = sandbox.open_ok(
            sandbox.cashier_call(SN, Method.TRANS_REVERSE, reverse), CashierResult
        )
        assert reversed_.trans_status is TransStatus.CLOSED
        until(lambda: _event_seen(sandbox, trans_no, EventKind.PAID), timeout=10)

        info = pos.query_order(order_no)
        assert info.trans_status is TransStatus.CLOSED
        known = pos.known_order(order_no)
        assert known is not None
        assert known.trans_status is TransStatus.CLOSED
    assert _notified(sandbox, trans_no) == [int(TransStatus.CLOSED)]
    assert len(notify_receiver.deliveries) == 1
    _logged(
        sandbox,
        f"CONFLICT: terminal {SN} reports 'paid' for order {trans_no}, which is final "
        "with status 1 (CLOSED)",
    )
    _logged(sandbox, f"terminal {SN} tried to pay order {trans_no}, which is final")


def test_late_failure_reports_after_payment_change_nothing(
    sandbox: SandboxHandle, notify_receiver: NotifyReceiver
) -> None:
    order_no, created = _create(sandbox, notify_receiver.url)
    trans_no = created.trans_no
    paid = _pay(sandbox, trans_no, f"{SN}-{trans_no}-1")
    assert paid["code"] == "0"
    assert wirejson.loads(str(paid["data"]))["trans_status"] == int(TransStatus.COMPLETED)
    notify_receiver.wait_for(1)

    # Late: a terminal event that it failed, a cancel, a close by the POS.
    sandbox.terminal_event(SN, EventKind.FAILED, message_id=created.message_id, trans_no=trans_no)
    cancel = {"trans_no": trans_no, "terminal_sn": SN, "reason": "late cancel"}
    assert sandbox.answer(sandbox.cashier_call(SN, Method.TRANS_CANCEL, cancel))["code"] == "40907"
    close = {"merchant_no": "M0001", "terminal_sn": SN, "merchant_order_no": order_no}
    assert sandbox.answer(sandbox.pos_call(Method.PAY_CLOSE, close))["code"] == "40902"
    until(lambda: _event_seen(sandbox, trans_no, EventKind.FAILED), timeout=10)

    query = {"merchant_no": "M0001", "merchant_order_no": order_no}
    info = sandbox.open_ok(sandbox.pos_call(Method.ORDER_QUERY, query), OrderInfo)
    assert info.trans_status is TransStatus.COMPLETED
    assert _notified(sandbox, trans_no) == [int(TransStatus.COMPLETED)]
    assert len(notify_receiver.deliveries) == 1
    _logged(
        sandbox,
        f"CONFLICT: terminal {SN} reports 'failed' for order {trans_no}, which is final "
        "with status 2 (COMPLETED)",
    )
