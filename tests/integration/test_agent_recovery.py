"""The agent killed mid-sale, and the gateway slow, hanging or gone during
authorization: end to end with real processes.

The sandbox here runs at time scale 1 so that the acquirer's delays hold the
agent at a step: ``.92`` approves after 3 s (longer than the agent's 2 s HTTP
timeout), ``.91`` answers after 30 s (longer than the timeout plus the 5 s
``resolve_deadline``). It listens on a fixed port so that a stopped and
restarted gateway is found again at the same address.

Whatever happens, each test proves that every order ends final, that the
gateway charged at most once (``charges`` table) and that ``order.query``
says what the terminal's journal says (``Terminal.settled``)."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from cloud.messages import TransStatus
from sandbox.broker_mosquitto import MosquittoBroker
from tests.integration.agent_rig import Terminal, running_terminal
from tests.integration.conftest import SandboxHandle, running_sandbox
from tests.waiting import until

pytestmark = pytest.mark.timeout(120)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture(scope="module")
def gateway(
    tmp_path_factory: pytest.TempPathFactory, module_broker: MosquittoBroker
) -> Iterator[SandboxHandle]:
    root = tmp_path_factory.mktemp("recovery")
    args = ["--time-scale", "1", "--hang-seconds", "30", "--port", str(_free_port())]
    with running_sandbox(root / "sandbox", module_broker, args) as handle:
        yield handle


@pytest.fixture
def term(gateway: SandboxHandle, tmp_path: Path) -> Iterator[Terminal]:
    if gateway.process.poll() is not None:  # a failed test left it stopped
        gateway.restart()
    with running_terminal(gateway, "R", tmp_path / "term", readers=("nfc", "msr")) as t:
        yield t


def _authorizing(term: Terminal, trans_no: str) -> None:
    """The payment request is on its way (journaled first, then sent)."""
    term.screens.wait_screen("AUTHORIZING", trans_no)
    until(lambda: term.journal_phase(trans_no) == "AUTHORIZING")
    until(lambda: term.gateway_status_of(trans_no) == 0, timeout=10)


# ---------------------------------------------------------------- SIGKILL before a payment


def test_sigkill_after_push_journaled(term: Terminal) -> None:
    """Killed with the order journaled and on screen (waiting for the cashier's
    confirmation, before any card): after the restart it is offered again,
    confirmed and paid once."""
    order = term.push("11.00", confirm_on_terminal=True)
    term.screens.wait_screen("WAITING_FOR_CONFIRM", order.trans_no)
    # Drawn before it is journaled (an idle terminal draws a new order first).
    until(lambda: term.journal_phase(order.trans_no) == "OFFERED")
    term.kill_agent()

    term.start_agent()
    term.screens.wait_screen("WAITING_FOR_CONFIRM", order.trans_no)
    assert term.screens.request("confirm", trans_no=order.trans_no).ok
    term.screens.wait_screen("WAITING_FOR_CARD", order.trans_no)
    term.present("nfc", "present visa", order)
    done = term.settled(order)
    assert (done.phase, done.info.trans_status) == ("APPROVED", TransStatus.COMPLETED)
    assert len(done.charges) == 1
    term.wait_outcome(order, "approved")
    term.assert_all_settled()


def test_sigkill_with_the_order_drawn_before_it_is_journaled(term: Terminal) -> None:
    """Killed with a new order drawn but not yet journaled (an idle terminal
    draws first): the push was never acknowledged, so the broker delivers it
    again to the restarted agent, which shows it, journals it and is paid
    once."""
    term.kill_agent()
    term.start_agent(crash_at="order_drawn")
    order = term.push("11.20")
    assert term.wait_agent_died() == -9
    assert "crash point order_drawn: SIGKILL" in term.log_text()
    assert term.journal_phase(order.trans_no) is None  # drawn, never journaled

    term.start_agent()  # a new bridge client: its screens are the new agent's
    term.screens.wait_screen("WAITING_FOR_CARD", order.trans_no)  # delivered again
    term.present("nfc", "present visa", order)
    done = term.settled(order)
    assert (done.phase, done.info.trans_status) == ("APPROVED", TransStatus.COMPLETED)
    assert len(done.charges) == 1
    term.wait_outcome(order, "approved")
    until(lambda: term.events(message_id=order.message_id, event="paid"))
    kinds = [e["event"] for e in term.events(message_id=order.message_id)]
    assert kinds == ["received", "displayed", "paid"]  # nothing from the killed agent
    term.assert_all_settled()


def test_sigkill_while_waiting_for_card(term: Terminal) -> None:
    """Killed while the checkout waits for the card: shown again after the
    restart, paid once; the readers were re-armed for it."""
    order = term.push("11.50")
    term.screens.wait_screen("WAITING_FOR_CARD", order.trans_no)
    until(lambda: term.journal_phase(order.trans_no) == "AWAITING_PAYMENT")
    term.kill_agent()
    assert "resuming" not in term.log_text()

    term.start_agent()
    term.screens.wait_screen("WAITING_FOR_CARD", order.trans_no)
    assert f"resuming {order.trans_no}: order shown again" in term.log_text()
    term.present("msr", "present visa", order)
    done = term.settled(order)
    assert (done.phase, done.info.trans_status) == ("APPROVED", TransStatus.COMPLETED)
    term.wait_outcome(order, "approved")
    term.assert_all_settled()


# ---------------------------------------------------------------- SIGKILL with a payment out


@pytest.mark.parametrize(
    ("amount", "phase"),
    [("12.92", "APPROVED"), ("12.91", "CANCELLED")],
    ids=["slow-approval-learned-by-detail", "hang-undone-by-reverse"],
)
def test_sigkill_with_payment_in_flight(term: Terminal, amount: str, phase: str) -> None:
    """Killed after the payment was sent and before its answer. The restarted
    agent resolves it from the journal before it takes anything else: a slow
    approval (.92) is learned by ``cashier.trans.detail``; an acquirer hang
    (.91) outlasts the resolve deadline and is reversed. Never sent again."""
    order = term.push(amount)
    term.screens.wait_screen("WAITING_FOR_CARD", order.trans_no)
    term.present("nfc", "present visa", order)
    _authorizing(term, order.trans_no)
    term.kill_agent()

    term.start_agent()
    assert f"resuming {order.trans_no}: payment outcome not journaled" in term.log_text()
    done = term.settled(order, timeout=40)
    assert done.phase == phase
    creates = term.sandbox.query(
        "SELECT request_no FROM cashier_requests WHERE trans_no=? AND method LIKE '%create'",
        order.trans_no,
    )
    assert len(creates) == 1  # the payment went out once, under one request_no
    if phase == "APPROVED":
        assert done.info.trans_status is TransStatus.COMPLETED
        assert len(done.charges) == 1
    else:
        assert done.info.trans_status is TransStatus.CANCELLED
        assert done.info.trans_error_code == "REVERSED"
        assert [c["reversed"] for c in done.charges] in ([], [1])
    term.assert_all_settled()


@pytest.mark.parametrize(
    ("step", "phase"),
    [("payment_journaled", "CANCELLED"), ("answered", "APPROVED")],
    ids=["before-send", "after-answer"],
)
def test_crash_point(term: Terminal, step: str, phase: str) -> None:
    """SIGKILL (the agent's own failpoint) after the attempt is journaled but
    before it is sent, and after the gateway answered but before the answer
    is journaled: the restart settles both from the journal, by detail (paid)
    or by reverse (never arrived), never paying again."""
    term.kill_agent()
    term.start_agent(crash_at=step)
    order = term.push("13.00")
    term.screens.wait_screen("WAITING_FOR_CARD", order.trans_no)
    term.present("nfc", "present visa", order)
    assert term.wait_agent_died() == -9
    assert f"crash point {step}: SIGKILL" in term.log_text()
    assert term.journal_phase(order.trans_no) == "AUTHORIZING"

    term.start_agent()
    done = term.settled(order, timeout=40)
    assert done.phase == phase
    if phase == "APPROVED":  # the gateway charged: the restart learns it by detail
        assert done.info.trans_status is TransStatus.COMPLETED
        assert len(done.charges) == 1
    else:  # never sent: detail finds nothing to settle, the reverse closes it
        assert done.info.trans_status is TransStatus.CANCELLED
        assert done.charges == []
    assert "refused by the gateway" not in term.log_text()
    term.assert_all_settled()


def test_close_acknowledged_then_lost_in_a_crash_is_applied(term: Terminal) -> None:
    """The POS closes an order on screen; the agent journals the close and is
    killed before applying it. The broker delivers the close again, which is
    known by then: the restart applies the journaled close all the same."""
    term.kill_agent()
    term.start_agent(crash_at="close_journaled")
    order = term.push("13.10")
    term.screens.wait_screen("WAITING_FOR_CARD", order.trans_no)
    term.pos.close_order(order.merchant_order_no)
    assert term.wait_agent_died() == -9
    assert "crash point close_journaled: SIGKILL" in term.log_text()
    assert term.journal_phase(order.trans_no) != "CLOSED"

    term.start_agent()
    done = term.settled(order, timeout=40)
    assert done.phase == "CLOSED"
    assert done.info.trans_status is TransStatus.CLOSED
    term.assert_all_settled()


@pytest.mark.parametrize(
    ("step", "phase"),
    [
        ("awaiting_payment", "CANCELLED"),
        ("payment_journaled", "CANCELLED"),
        ("answered", "APPROVED"),
    ],
)
def test_fail_point(term: Terminal, step: str, phase: str) -> None:
    """An exception (the agent's own fail point) in a state callback: the order
    ends as recovery would settle it - at the gateway too - and the next order
    is paid, without a restart."""
    term.kill_agent()
    term.start_agent(fail_at=step)
    order = term.push("13.20")
    if step != "awaiting_payment":
        term.screens.wait_screen("WAITING_FOR_CARD", order.trans_no)
        term.present("nfc", "present visa", order)
    done = term.settled(order, timeout=40)
    assert done.phase == phase
    assert f"fail point {step}: raising" in term.log_text()
    term.wait_idle(timeout=30)
    after = term.push("13.30")
    term.screens.wait_screen("WAITING_FOR_CARD", after.trans_no)
    term.present("nfc", "present visa", after)
    assert term.settled(after).phase == "APPROVED"
    assert term.agent is not None
    assert term.agent.poll() is None
    term.assert_all_settled()


# ---------------------------------------------------------------- SIGTERM mid-payment


def test_sigterm_with_payment_in_flight(term: Terminal) -> None:
    """A clean stop (SIGTERM, as ``systemctl stop``) while the payment is with
    the gateway: the agent exits at once with 0, leaving the attempt in the
    journal, and the next start learns the slow approval by detail."""
    order = term.push("17.92")
    term.screens.wait_screen("WAITING_FOR_CARD", order.trans_no)
    term.present("nfc", "present visa", order)
    _authorizing(term, order.trans_no)
    began = time.monotonic()
    assert term.stop_agent() == 0
    assert time.monotonic() - began < 10  # not held by the payment in flight
    assert term.journal_phase(order.trans_no) == "AUTHORIZING"

    term.start_agent()
    done = term.settled(order, timeout=40)
    assert (done.phase, done.info.trans_status) == ("APPROVED", TransStatus.COMPLETED)
    assert len(done.charges) == 1
    term.assert_all_settled()


def test_sigterm_while_resolving_at_start(term: Terminal) -> None:
    """Restarted with an unresolved attempt while the gateway is down, the
    agent keeps trying to settle it before it takes new orders; a SIGTERM then
    still stops it at once (exit 0). Once the gateway is back, the next start
    settles the payment (never sent: reversed, nothing charged)."""
    gw = term.sandbox
    term.kill_agent()
    term.start_agent(crash_at="payment_journaled")
    order = term.push("18.00")
    term.screens.wait_screen("WAITING_FOR_CARD", order.trans_no)
    term.present("nfc", "present visa", order)
    assert term.wait_agent_died() == -9
    gw.stop()
    try:
        term.start_agent(ready=False)
        until(lambda: f"detail {order.trans_no}: " in term.log_text(), timeout=20)
        began = time.monotonic()
        assert term.stop_agent() == 0
        assert time.monotonic() - began < 10
        assert f"agent {term.sn} ready" not in term.log_text().split("crash point")[-1]
    finally:
        gw.restart()
    term.start_agent()
    done = term.settled(order, timeout=40)
    assert (done.phase, done.info.trans_status) == ("CANCELLED", TransStatus.CANCELLED)
    assert done.charges == []
    term.assert_all_settled()


# ---------------------------------------------------------------- the gateway during authorization


@pytest.mark.parametrize(
    ("amount", "phase", "outcome"),
    [
        ("14.92", "APPROVED", "approved"),  # answer after the HTTP timeout: found by detail
        ("14.91", "CANCELLED", "cancelled"),  # no answer within the deadline: reversed
        ("14.52", "APPROVED", "approved"),  # charged, then HTTP 500: found by detail
        ("14.93", "CANCELLED", "cancelled"),  # HTTP 503, nothing happened: reversed
    ],
    ids=["slow", "hang", "charged-then-500", "503"],
)
def test_gateway_outcome_unknown(term: Terminal, amount: str, phase: str, outcome: str) -> None:
    """The payment's answer does not come (timeout) or is an error: the agent
    settles the outcome by detail or reverse; the POS, the journal and the
    checkout agree; at most one charge, kept only if paid."""
    order = term.push(amount)
    term.screens.wait_screen("WAITING_FOR_CARD", order.trans_no)
    term.present("nfc", "present visa", order)
    done = term.settled(order, timeout=40)
    assert done.phase == phase
    term.wait_outcome(order, outcome)
    assert f"payment {order.trans_no} outcome unknown" in term.log_text()
    if phase == "CANCELLED":
        (result,) = [s.result for s in term.screens.screens if s.result is not None]
        assert result is not None
        assert result.reason == "Payment cancelled - no charge"
    term.assert_all_settled()


def test_gateway_down_during_authorization(term: Terminal) -> None:
    """The gateway is stopped when the card is read (connection refused): the
    outcome is unknown to the agent, which keeps asking and then reverses,
    retrying until the gateway is back. Nothing was charged; the POS sees 3."""
    gw = term.sandbox
    order = term.push("15.00")
    term.screens.wait_screen("WAITING_FOR_CARD", order.trans_no)
    gw.stop()
    try:
        term.present("nfc", "present visa", order)
        until(lambda: f"payment {order.trans_no} outcome unknown" in term.log_text())
        until(lambda: f"reverse {order.trans_no}" in term.log_text(), timeout=15)
        assert term.journal_phase(order.trans_no) == "RESOLVING"
    finally:
        gw.restart()
    done = term.settled(order, timeout=60)
    assert (done.phase, done.info.trans_status) == ("CANCELLED", TransStatus.CANCELLED)
    assert done.charges == []
    term.wait_outcome(order, "cancelled")
    term.assert_all_settled()


def test_gateway_restarted_mid_payment(term: Terminal) -> None:
    """The gateway dies while the acquirer holds the payment (.91) and comes
    back: it settles the interrupted attempt (nothing charged, order back to
    9); the agent learns nothing final by detail and reverses: status 3."""
    gw = term.sandbox
    order = term.push("16.91")
    term.screens.wait_screen("WAITING_FOR_CARD", order.trans_no)
    term.present("nfc", "present visa", order)
    _authorizing(term, order.trans_no)
    gw.restart()
    done = term.settled(order, timeout=60)
    assert (done.phase, done.info.trans_status) == ("CANCELLED", TransStatus.CANCELLED)
    assert done.charges == []
    term.assert_all_settled()
