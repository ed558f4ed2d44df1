"""The POS module and ``sadad-pos`` against the real sandbox process.

A simulated terminal pays through the cashier API (docs/protocol.md part D) with
a sealed test card; the POS side learns the result by notification (part
B) or, when notifications fail, by polling ``order.query`` (part A).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import uuid
from decimal import Decimal

import pytest

from cloud import cli
from cloud.config import load_config
from cloud.errors import CloudRejected, NotOurOrder
from cloud.messages import CashierResult, Method, OrderInfo, TransStatus
from cloud.order_store import ExpectedOrder
from cloud.pos import PosClient
from tests.integration.conftest import REPO, NotifyReceiver, SandboxHandle
from tests.waiting import until

SN = "T0001"
APPROVING_PAN = "4761739001010010"


def order_no() -> str:
    return "IT-" + uuid.uuid4().hex[:12]


def find_order(sandbox: SandboxHandle, merchant_order_no: str) -> OrderInfo:
    """The order as the gateway has it, once it exists."""

    def look() -> OrderInfo | None:
        resp = sandbox.pos_call(
            Method.ORDER_QUERY, {"merchant_no": "M0001", "merchant_order_no": merchant_order_no}
        )
        if b'"code":"0"' not in resp.content:
            return None
        return sandbox.open_ok(resp, OrderInfo)

    found = until(look, timeout=20, interval=0.05)
    assert isinstance(found, OrderInfo)
    return found


def pay(sandbox: SandboxHandle, info: OrderInfo, pan: str = APPROVING_PAN) -> CashierResult:
    """Pay ``info`` as its terminal would, with a sealed card."""
    resp = sandbox.cashier_call(
        info.terminal_sn,
        Method.BANKCARD_CREATE,
        {
            "trans_no": info.trans_no,
            "terminal_sn": info.terminal_sn,
            "order_amount": info.order_amount,
            "price_currency": info.price_currency,
            "request_no": uuid.uuid4().hex,
            **sandbox.card_fields(pan),
        },
    )
    return sandbox.open_ok(resp, CashierResult)


def test_cli_push_wait_returns_on_notification(sandbox: SandboxHandle) -> None:
    sandbox.provision(SN)
    number = order_no()
    env = {**os.environ, "PYTHONPATH": str(REPO), "SADAD_POS_CONFIG": str(sandbox.pos_config)}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "cloud.cli",
            "push",
            "--terminal",
            SN,
            "--amount",
            "12.00",
            "--order-no",
            number,
            "--wait",
            "--timeout",
            "40",
            "--json",
        ],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        info = find_order(sandbox, number)
        assert info.trans_status == TransStatus.PREORDER
        # Pay between the client's polls (~2.6 s and ~5.2 s after the push), so
        # only the notification can end the wait within the next second.
        time.sleep(3.0)
        paid = pay(sandbox, info)
        assert paid.trans_status == TransStatus.COMPLETED
        paid_at = time.monotonic()
        out, err = proc.communicate(timeout=30)
        exited_after = time.monotonic() - paid_at
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err.decode()
    result = json.loads(out)  # exactly one JSON object
    assert result["ok"] is True
    assert result["trans_no"] == info.trans_no
    order = result["order"]
    assert order["trans_status_name"] == "COMPLETED"
    assert order["trans_amount"] == "12.00"
    assert order["masked_pan"] == "476173******0010"
    assert order["auth_code"] == paid.auth_code
    assert exited_after < 1.0, f"took {exited_after:.2f} s: looks like a poll, not a notification"
    rows = sandbox.query(
        "SELECT state, notify_url FROM notifications WHERE trans_no = ?", info.trans_no
    )
    assert [r["state"] for r in rows] == ["delivered"]
    assert rows[0]["notify_url"].startswith("http://127.0.0.1:")


def test_wait_for_final_polls_when_notifications_fail(
    sandbox: SandboxHandle, notify_receiver: NotifyReceiver
) -> None:
    sandbox.provision(SN)
    notify_receiver.fail_first = 1000  # every delivery fails
    number = order_no()
    with PosClient(load_config(sandbox.pos_config)) as pos:
        created = pos.push_order(
            terminal_sn=SN,
            merchant_order_no=number,
            order_amount=Decimal("7.51"),  # .51: declined, insufficient funds
            notify_url=notify_receiver.url,
        )
        info = find_order(sandbox, number)
        payer = threading.Timer(1.5, pay, args=(sandbox, info))
        payer.start()
        try:
            final = pos.wait_for_final(number, 30)
        finally:
            payer.join()
    assert final.trans_no == created.trans_no
    assert final.trans_status == TransStatus.CLOSED
    assert final.trans_error_code == "51"
    assert notify_receiver.wait_for(1)[0].answered_ok is False  # it was tried, and failed


def test_close_and_close_after_payment(
    sandbox: SandboxHandle, config_args: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    sandbox.provision(SN)
    waiting, paid = order_no(), order_no()
    with PosClient(load_config(sandbox.pos_config)) as pos:
        pos.push_order(terminal_sn=SN, merchant_order_no=waiting, order_amount=Decimal("5"))
        pos.push_order(terminal_sn=SN, merchant_order_no=paid, order_amount=Decimal("6"))
        pay(sandbox, find_order(sandbox, paid))
        assert pos.wait_for_final(paid, 20).trans_status == TransStatus.COMPLETED

    code = cli.main(
        [
            *config_args,
            "--json",
            "close",
            "--order-no",
            waiting,
            "--terminal",
            SN,
            "--description",
            "customer left",
        ]
    )
    result = json.loads(capsys.readouterr().out)
    assert code == 0, result
    info = find_order(sandbox, waiting)
    assert result["trans_no"] == info.trans_no
    assert info.trans_status == TransStatus.CLOSED
    assert info.trans_error_code == "CLOSED"

    code = cli.main([*config_args, "--json", "query", "--order-no", waiting])
    assert code == 1
    assert json.loads(capsys.readouterr().out)["order"]["trans_status_name"] == "CLOSED"

    code = cli.main([*config_args, "--json", "close", "--order-no", paid])  # terminal looked up
    error = json.loads(capsys.readouterr().out)["error"]
    assert code == 4
    assert error["kind"] == "rejected"
    assert error["code"] == "40902"


def test_repeated_create_returns_first_answer(sandbox: SandboxHandle) -> None:
    sandbox.provision(SN)
    number = order_no()
    fields = {
        "terminal_sn": SN,
        "merchant_order_no": number,
        "order_amount": Decimal("12.50"),
        "description": "2 x coffee",
    }
    with PosClient(load_config(sandbox.pos_config)) as pos:
        first = pos.push_order(**fields)
        again = pos.push_order(**{**fields, "order_amount": Decimal("12.5")})  # same amount
        assert (again.trans_no, again.message_id) == (first.trans_no, first.message_id)
        with pytest.raises(CloudRejected) as info:
            pos.push_order(**{**fields, "order_amount": Decimal("13.00")})
    assert info.value.code == "40901"
    assert len(sandbox.query("SELECT 1 FROM orders WHERE merchant_order_no = ?", number)) == 1


@pytest.fixture
def config_args(sandbox: SandboxHandle) -> list[str]:
    return ["--config", str(sandbox.pos_config)]


def test_results_name_the_merchant_and_app_and_bind_across_instances(
    sandbox: SandboxHandle, notify_receiver: NotifyReceiver
) -> None:
    """Part B against the real gateway: query answers and notifications name
    the merchant and the POS app; an instance that did not create the order
    takes the notification through the shared order store (the sandbox's
    pos.toml names one), and refuses the same notification for another order."""
    sandbox.provision(SN)
    number = order_no()
    config = load_config(sandbox.pos_config)
    assert config.order_store is not None
    with PosClient(config) as creator, PosClient(config) as webhook:
        created = creator.push_order(
            terminal_sn=SN,
            merchant_order_no=number,
            order_amount=Decimal("9.00"),
            notify_url=notify_receiver.url,
        )
        info = creator.query_order(number)
        assert (info.merchant_no, info.app_id) == (config.merchant_no, config.app_id)
        pay(sandbox, find_order(sandbox, number))
        (delivery,) = notify_receiver.wait_for(1, timeout=20)
        wire = json.loads(delivery.body)  # on the wire, not only once decoded
        assert (wire["merchant_no"], wire["app_id"]) == (config.merchant_no, config.app_id)
        note, new = webhook.accept_notification(delivery.body)
        assert new
        assert (note.merchant_no, note.app_id, note.trans_no) == (
            config.merchant_no,
            config.app_id,
            created.trans_no,
        )
        assert webhook.wait_for_final(number, 5).trans_status is TransStatus.COMPLETED
        # The creator, which got no notification, settles it from bound query answers.
        polled = creator.wait_for_final(number, 20)
        assert (polled.trans_status, polled.trans_no) == (TransStatus.COMPLETED, created.trans_no)
        assert (polled.merchant_no, polled.app_id) == (config.merchant_no, config.app_id)
        other = ExpectedOrder(number, created.trans_no, Decimal("900.00"), "QAR")
        with pytest.raises(NotOurOrder, match="order_amount"):
            webhook.accept_notification(delivery.body, other)
