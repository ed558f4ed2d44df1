"""Sales and the ways an order ends, end to end with real processes: Mosquitto,
the sandbox, reader simulators on pseudo-terminals, ``sadad-agent run``, a
bridge client watching the checkout, and the POS client.

Each test ends with every order it pushed final at the POS (``order.query``),
in the terminal's journal and on the checkout, all three agreeing, and the
gateway's charges table showing at most one charge per order
(``Terminal.assert_all_settled``)."""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import pytest

from agent.bridge_replies import ActionReply, reply_data
from cloud.messages import TransStatus, TransType
from tests.integration.agent_rig import Terminal, running_terminal
from tests.integration.conftest import NotifyReceiver, SandboxHandle
from tests.waiting import until

pytestmark = pytest.mark.timeout(90)


@pytest.fixture
def term(module_sandbox: SandboxHandle, tmp_path: Path) -> Iterator[Terminal]:
    with running_terminal(module_sandbox, "S", tmp_path / "term") as t:
        yield t


@pytest.mark.parametrize(
    ("sim", "command", "scenario", "method", "masked_pan"),
    [
        ("nfc", "present visa", "SWIPE_CARD", "Visa", "476173******0010"),
        ("msr", "present visa", "SWIPE_CARD", "Visa", "476173******0119"),
        ("scan", "present wechat", "BSCANQR_PAY", "WeChatPay", None),
    ],
    ids=["contactless", "magstripe", "wallet"],
)
def test_sale(
    term: Terminal,
    notify_receiver: NotifyReceiver,
    sim: str,
    command: str,
    scenario: str,
    method: str,
    masked_pan: str | None,
) -> None:
    """A sale by tap, swipe and wallet code: paid (2) at the POS through the
    notification and ``order.query``, approved on the checkout."""
    order = term.push("12.30", pay_scenario=scenario, notify_url=notify_receiver.url)
    shown = term.screens.wait_screen("WAITING_FOR_CARD", order.trans_no)
    assert shown.order is not None
    assert shown.order.amount == "12.30"
    assert shown.order.methods == (("wallet",) if sim == "scan" else ("card",))
    term.present(sim, command, order)

    done = term.settled(order)
    assert done.phase == "APPROVED"
    assert done.info.trans_status is TransStatus.COMPLETED
    assert done.info.pay_method_id == method
    assert done.info.paid_amount == Decimal("12.30")
    assert done.info.masked_pan == masked_pan
    assert done.charges[0]["kind"] == "sale"

    (delivery,) = notify_receiver.wait_for(1, timeout=10)
    note = term.pos.verify_notification(delivery.body)  # signed by the gateway
    assert note.trans_no == order.trans_no
    assert note.trans_status is TransStatus.COMPLETED
    assert note.pay_method_id == method

    term.wait_outcome(order, "approved")
    (result,) = [s for s in term.screens.screens if s.result is not None]
    assert result.screen.value == "RESULT"
    assert result.result is not None
    assert result.result.auth_code == done.info.auth_code
    assert result.result.masked_pan == masked_pan
    # Only a masked PAN is ever shown; a wallet code is not shown, even masked.
    assert {s.card.masked_pan for s in term.screens.screens if s.card} == {masked_pan}
    row = term.journal_row(order.trans_no)
    assert row is not None
    assert row["auth_code"] == done.info.auth_code
    assert row["pay_method_id"] == method
    term.assert_all_settled()


def test_decline(term: Terminal, notify_receiver: NotifyReceiver) -> None:
    """The acquirer refuses amounts ending in .51: closed (1) with code 51 at
    the POS, declined on the checkout with a reason a cashier can say."""
    order = term.push("20.51", notify_url=notify_receiver.url)
    term.screens.wait_screen("WAITING_FOR_CARD", order.trans_no)
    term.present("nfc", "present visa", order)
    done = term.settled(order)
    assert done.phase == "DECLINED"
    assert done.info.trans_status is TransStatus.CLOSED
    assert done.info.trans_error_code == "51"
    assert done.charges == []
    term.wait_outcome(order, "declined")
    (result,) = [s.result for s in term.screens.screens if s.result is not None]
    assert result is not None
    assert result.reason is not None
    assert "insufficient funds" in result.reason.lower()
    (delivery,) = notify_receiver.wait_for(1, timeout=10)
    assert delivery.fields()["trans_status"] == 1
    row = term.journal_row(order.trans_no)
    assert row is not None
    assert row["error_code"] == "51"
    term.assert_all_settled()


def test_cashier_cancel(term: Terminal) -> None:
    """Cancel on the checkout (bridge intent): cancelled (3) at the POS."""
    order = term.push("5.00")
    term.screens.wait_screen("WAITING_FOR_CARD", order.trans_no)
    reply = term.screens.request("cancel", trans_no=order.trans_no)
    assert reply.ok
    assert reply_data(reply, ActionReply).accepted
    done = term.settled(order)
    assert done.phase == "CANCELLED"
    assert done.info.trans_status is TransStatus.CANCELLED
    assert done.charges == []
    term.wait_outcome(order, "cancelled")
    until(lambda: term.events(message_id=order.message_id, event="cancelled"))
    term.assert_all_settled()


def test_cloud_close_while_waiting(term: Terminal) -> None:
    """The POS closes the order while the checkout waits for the card: closed
    (1) at the POS, "closed" on the checkout, no charge."""
    order = term.push("6.00")
    term.screens.wait_screen("WAITING_FOR_CARD", order.trans_no)
    term.pos.close_order(order.merchant_order_no, "customer left", terminal_sn=term.sn)
    term.wait_outcome(order, "closed")
    done = term.settled(order)
    assert done.phase == "CLOSED"
    assert done.info.trans_status is TransStatus.CLOSED
    assert done.info.trans_error_code == "CLOSED"
    assert done.charges == []
    term.assert_all_settled()


def test_expiry(term: Terminal) -> None:
    """An order nobody pays before ``expires``: expired on the checkout, a final
    (closed, EXPIRED) status at the POS, no charge."""
    order = term.push("4.00", expires=2)
    term.screens.wait_screen("WAITING_FOR_CARD", order.trans_no)
    term.wait_outcome(order, "expired", timeout=10)
    done = term.settled(order)
    assert done.phase == "EXPIRED"
    assert done.info.trans_status is TransStatus.CLOSED
    assert done.info.trans_error_code == "EXPIRED"
    assert done.charges == []
    term.assert_all_settled()


def test_refund_and_void(term: Terminal) -> None:
    """A refund (3) leaves the sale paid; a void (2) moves it to cancelled (3).
    Each is paid on the terminal with a card and charged once."""
    sale = term.push("40.00")
    term.screens.wait_screen("WAITING_FOR_CARD", sale.trans_no)
    term.present("nfc", "present visa", sale)
    assert term.settled(sale).info.trans_status is TransStatus.COMPLETED
    term.wait_outcome(sale, "approved")

    refund = term.push(
        "10.00", trans_type=TransType.REFUND, orig_merchant_order_no=sale.merchant_order_no
    )
    shown = term.screens.wait_screen("WAITING_FOR_CARD", refund.trans_no, timeout=20)
    assert shown.order is not None
    assert shown.order.trans_type == "refund"
    term.present("nfc", "present visa", refund)
    done = term.settled(refund)
    assert done.info.trans_status is TransStatus.COMPLETED
    assert done.info.trans_type is TransType.REFUND
    assert done.charges[0]["kind"] == "refund"
    term.wait_outcome(refund, "approved")
    assert term.pos.query_order(sale.merchant_order_no).trans_status is TransStatus.COMPLETED

    void = term.push(
        "40.00", trans_type=TransType.VOID, orig_merchant_order_no=sale.merchant_order_no
    )
    shown = term.screens.wait_screen("WAITING_FOR_CARD", void.trans_no, timeout=20)
    assert shown.order is not None
    assert shown.order.trans_type == "void"
    term.present("nfc", "present visa", void)
    done = term.settled(void)
    assert done.info.trans_status is TransStatus.COMPLETED
    assert done.info.trans_type is TransType.VOID
    assert done.charges[0]["kind"] == "void"
    term.wait_outcome(void, "approved")
    voided = term.pos.query_order(sale.merchant_order_no)
    assert voided.trans_status is TransStatus.CANCELLED
    assert voided.trans_error_code == "VOIDED"
    (sale_charge,) = term.charges(sale.trans_no)  # the sale's own charge is not touched
    assert sale_charge["kind"] == "sale"
    # The sale was approved on the terminal and stays so in its journal; the
    # void is a transaction of its own.
    assert term.journal_phase(sale.trans_no) == "APPROVED"
    row = term.journal_row(void.trans_no)
    assert row is not None
    assert row["orig_trans_no"] == sale.trans_no
    assert row["trans_type"] == int(TransType.VOID)
    term.orders.remove(sale)  # voided: its POS status is 3 while the journal says APPROVED
    term.assert_all_settled()
