"""The agent end to end with real processes: Mosquitto, the sandbox, readers
simulated on pseudo-terminals, the agent, a bridge client and the POS client.

Every test ends with each order final at the POS and in the terminal's
journal, and the sandbox's charges table proves nothing was charged twice."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest

from cloud import envelope
from cloud.messages import PushOrder, PushTopic, TransStatus, TransType
from cloud.signing import generate_key_pem
from tests.integration.agent_rig import Terminal, scan_for_card_data, wait_agent_idle
from tests.integration.conftest import (
    REPO,
    NotifyReceiver,
    SandboxHandle,
    running_sandbox,
    wait_until,
)

pytestmark = pytest.mark.timeout(90)


@pytest.fixture
def term(sandbox: SandboxHandle, tmp_path: Path) -> Iterator[Terminal]:
    t = Terminal(sandbox, "AGT0001", tmp_path / "term")
    t.start_agent()
    yield t
    t.close()


def _wait_screen(term: Terminal, name: str) -> None:
    wait_until(
        lambda: (
            term.watcher is not None
            and any(s.screen.value == name for s in term.watcher.screens[-3:])
        ),
        timeout=15,
    )


def _present_until_final(term: Terminal, sim: str, command: str, order_no: str) -> None:
    """Swipe or scan until the order settles: the screen can show the order a
    moment before the reader is armed, and a swipe while disarmed is dropped
    on purpose (it must never pay the next order)."""

    def settled() -> bool:
        if term.pos.query_order(order_no).trans_status.is_final:
            return True
        term.sims[sim].send(command)
        return False

    term.sims[sim].send(command)
    wait_until(settled, timeout=30, interval=1.0)


@pytest.mark.parametrize(
    ("sim", "command", "method"),
    [
        ("nfc", "present visa", "Visa"),
        ("msr", "present visa", "Visa"),
        ("scan", "present wechat", "WeChatPay"),
    ],
    ids=["contactless", "magstripe", "wallet"],
)
def test_sale_each_method(
    term: Terminal, notify_receiver: NotifyReceiver, sim: str, command: str, method: str
) -> None:
    scenario = "BSCANQR_PAY" if sim == "scan" else "SWIPE_CARD"
    readers_of_other_kind = {"nfc": "msr", "msr": "nfc"}
    order_no = term.push(pay_scenario=scenario, notify_url=notify_receiver.url)
    _wait_screen(term, "WAITING_FOR_CARD")
    _present_until_final(term, sim, command, order_no)
    info = term.final(order_no)
    assert info.trans_status is TransStatus.COMPLETED
    assert info.pay_method_id == method
    assert term.pos.query_order(order_no).trans_status is TransStatus.COMPLETED
    (delivery,) = notify_receiver.wait_for(1, timeout=10)
    assert delivery.fields()["trans_status"] == 2
    assert "approved" in (term.watcher.outcomes() if term.watcher else [])
    assert term.journal_phase(info.trans_no) == "APPROVED"
    assert len(term.charges(info.trans_no)) == 1
    del readers_of_other_kind


def test_decline_cancel_close(term: Terminal) -> None:
    # Decline: the acquirer refuses amounts ending in .51.
    declined = term.push("20.51")
    _wait_screen(term, "WAITING_FOR_CARD")
    term.sims["nfc"].send("present visa")
    info = term.final(declined)
    assert info.trans_status is TransStatus.CLOSED
    assert info.trans_error_code == "51"
    assert term.journal_phase(info.trans_no) == "DECLINED"
    assert term.watcher is not None
    wait_until(lambda: term.watcher is not None and "declined" in term.watcher.outcomes())
    wait_agent_idle(term)

    # Cashier cancel through the bridge.
    cancelled = term.push("5.00")
    _wait_screen(term, "WAITING_FOR_CARD")
    assert term.watcher.request("cancel").ok
    info = term.final(cancelled)
    assert info.trans_status is TransStatus.CANCELLED
    assert term.journal_phase(info.trans_no) == "CANCELLED"
    wait_agent_idle(term)

    # Cloud close while the terminal waits for the card.
    closed = term.push("6.00")
    _wait_screen(term, "WAITING_FOR_CARD")
    term.pos.close_order(closed, terminal_sn=term.sn)
    info = term.final(closed)
    assert info.trans_status is TransStatus.CLOSED
    wait_until(lambda: term.journal_phase(info.trans_no) == "CLOSED", timeout=10)
    assert term.charges(info.trans_no) == []


def test_expiry(term: Terminal) -> None:
    order_no = term.push("4.00", expires=2)
    _wait_screen(term, "WAITING_FOR_CARD")
    info = term.final(order_no, timeout=20)
    assert info.trans_status.is_final
    assert info.trans_status is not TransStatus.COMPLETED
    wait_until(lambda: term.journal_phase(info.trans_no) == "EXPIRED", timeout=10)


def test_void_and_refund(term: Terminal) -> None:
    sale = term.push("40.00")
    _wait_screen(term, "WAITING_FOR_CARD")
    term.sims["nfc"].send("present visa")
    assert term.final(sale).trans_status is TransStatus.COMPLETED
    wait_agent_idle(term)
    refund = term.push("10.00", trans_type=TransType.REFUND, orig_merchant_order_no=sale)
    _wait_screen(term, "WAITING_FOR_CARD")
    term.sims["nfc"].send("present visa")
    assert term.final(refund).trans_status is TransStatus.COMPLETED
    assert term.pos.query_order(sale).trans_status is TransStatus.COMPLETED  # refund keeps it
    wait_agent_idle(term)
    void = term.push("40.00", trans_type=TransType.VOID, orig_merchant_order_no=sale)
    _wait_screen(term, "WAITING_FOR_CARD")
    term.sims["nfc"].send("present visa")
    assert term.final(void).trans_status is TransStatus.COMPLETED
    assert term.final(sale).trans_status is TransStatus.COMPLETED  # first final status kept
    assert term.pos.query_order(sale).trans_status is TransStatus.CANCELLED  # voided


def test_push_while_offline_is_paid_after_restart(term: Terminal) -> None:
    term.stop_agent()
    if term.watcher is not None:
        term.watcher.close()
        term.watcher = None
    order_no = term.push("8.00")
    term.start_agent()
    _wait_screen(term, "WAITING_FOR_CARD")
    term.sims["nfc"].send("present visa")
    assert term.final(order_no).trans_status is TransStatus.COMPLETED


def test_duplicate_and_bad_pushes(term: Terminal, sandbox: SandboxHandle) -> None:
    topic = f"sadad/v1/terminals/{term.sn}/orders"
    order_no = term.push("9.00")
    _wait_screen(term, "WAITING_FOR_CARD")
    info = term.pos.query_order(order_no)
    # The very push the TMS sent, delivered again, and the same order under a new id.
    biz = PushOrder(
        trans_no=info.trans_no,
        merchant_no="M0001",
        terminal_sn=term.sn,
        merchant_order_no=order_no,
        price_currency="QAR",
        order_amount=info.order_amount,
        trans_type=TransType.SALE,
        expires_at=envelope.now_ms() + 60_000,
    )
    gw_key = sandbox.data_dir / "keys" / "gateway_private.pem"
    again = envelope.build_push(
        PushTopic.PAY_ORDER, biz, app_id="gw", private_key=gw_key.read_text()
    )
    sandbox.publish(topic, msgspec.json.encode(again))
    sandbox.publish(topic, msgspec.json.encode(again))
    term.sims["nfc"].send("present visa")
    assert term.final(order_no).trans_status is TransStatus.COMPLETED
    wait_agent_idle(term)
    # Forged, expired and wrong-terminal pushes: rejected, reported, never shown.
    forged = envelope.build_push(
        PushTopic.PAY_ORDER,
        msgspec.structs.replace(biz, trans_no="FORGED1"),
        app_id="gw",
        private_key=generate_key_pem()[0],
    )
    expired = envelope.build_push(
        PushTopic.PAY_ORDER,
        msgspec.structs.replace(biz, trans_no="EXPIRED1", expires_at=envelope.now_ms() - 1),
        app_id="gw",
        private_key=gw_key.read_text(),
    )
    other = envelope.build_push(
        PushTopic.PAY_ORDER,
        msgspec.structs.replace(biz, trans_no="OTHER1", terminal_sn="SOMEONE"),
        app_id="gw",
        private_key=gw_key.read_text(),
    )
    seen = len(term.watcher.screens) if term.watcher else 0
    for push in (forged, expired, other, again):
        sandbox.publish(topic, msgspec.json.encode(push))
    wait_until(lambda: term.log_path.read_text().count("rejected (") >= 3, timeout=10)
    log = term.log_path.read_text()
    assert "(bad_signature)" in log
    assert "(expired)" in log
    assert "(wrong_terminal)" in log
    assert term.watcher is not None
    assert all(s.screen.value == "IDLE" for s in term.watcher.screens[seen:])
    assert len(term.charges(info.trans_no)) == 1


@pytest.mark.parametrize("step", ["journaled", "waiting_for_card"])
def test_sigkill_before_payment_then_paid(term: Terminal, step: str) -> None:
    order_no = term.push("11.00", confirm_on_terminal=step == "journaled")
    _wait_screen(term, "WAITING_FOR_CONFIRM" if step == "journaled" else "WAITING_FOR_CARD")
    term.kill_agent()
    term.start_agent()
    if step == "journaled":
        _wait_screen(term, "WAITING_FOR_CONFIRM")
        assert term.watcher is not None
        assert term.watcher.request("confirm").ok
    _wait_screen(term, "WAITING_FOR_CARD")
    term.sims["nfc"].send("present visa")
    info = term.final(order_no)
    assert info.trans_status is TransStatus.COMPLETED
    assert len(term.charges(info.trans_no)) == 1
    assert term.journal_phase(info.trans_no) == "APPROVED"


@pytest.mark.parametrize("step", ["payment_journaled", "answered"])
def test_killed_between_journal_and_gateway(term: Terminal, step: str) -> None:
    """SIGKILL after the attempt is journaled but before it is sent, and after
    the gateway answered but before the answer is journaled: the restarted
    agent settles both from the journal, never paying again."""
    term.kill_agent()
    term.start_agent(crash_at=step)
    order_no = term.push("13.00")
    _wait_screen(term, "WAITING_FOR_CARD")
    term.sims["nfc"].send("present visa")
    assert term.agent is not None
    term.agent.wait(timeout=20)  # it killed itself at the step
    assert term.agent.returncode == -9
    term.kill_agent()
    term.start_agent()
    info = term.final(order_no, timeout=40)
    phase = term.journal_phase(info.trans_no)
    if step == "answered":  # the gateway charged: the restart learns it by detail
        assert info.trans_status is TransStatus.COMPLETED
        assert phase == "APPROVED"
        assert len(term.charges(info.trans_no)) == 1
    else:  # never sent: detail finds nothing, the reverse settles it, no charge
        assert info.trans_status is TransStatus.CANCELLED
        assert phase == "CANCELLED"
        assert term.charges(info.trans_no) == []
    assert "refused by the gateway" not in term.log_path.read_text()


def test_sigkill_while_payment_in_flight_and_gateway_hangs(broker: object, tmp_path: Path) -> None:
    """A .91 payment hangs at the acquirer; the agent is killed mid-flight and
    restarted: it settles by detail and reverse; charged at most once, and
    the POS and the journal agree."""
    from sandbox.broker import MosquittoBroker

    assert isinstance(broker, MosquittoBroker)
    with running_sandbox(tmp_path / "sb", broker, ["--hang-seconds", "800"]) as sb:
        term = Terminal(sb, "AGT0002", tmp_path / "term")
        try:
            term.start_agent()
            order_no = term.push("15.91")
            _wait_screen(term, "WAITING_FOR_CARD")
            term.sims["nfc"].send("present visa")
            _wait_screen(term, "AUTHORIZING")
            term.kill_agent()
            term.start_agent()
            info = term.final(order_no, timeout=40)
            assert info.trans_status.is_final
            wait_until(lambda: term.journal_phase(info.trans_no) in ("APPROVED", "CANCELLED"))
            phase = term.journal_phase(info.trans_no)
            expected = {"APPROVED": TransStatus.COMPLETED, "CANCELLED": TransStatus.CANCELLED}
            wait_until(
                lambda: term.pos.query_order(order_no).trans_status is expected[phase or ""],
                timeout=15,
            )
            assert len(term.charges(info.trans_no)) <= 1
            creates = term.log_path.read_text().count("refused by the gateway")
            assert creates == 0
        finally:
            term.close()


def test_gateway_down_during_authorization(broker: object, tmp_path: Path) -> None:
    from sandbox.broker import MosquittoBroker

    assert isinstance(broker, MosquittoBroker)
    with socket.socket() as probe:  # a fixed port, so the restarted gateway is found again
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    args = ["--hang-seconds", "800", "--port", str(port)]
    with running_sandbox(tmp_path / "sb", broker, args) as sb:
        term = Terminal(sb, "AGT0003", tmp_path / "term")
        try:
            term.start_agent()
            order_no = term.push("16.91")
            _wait_screen(term, "WAITING_FOR_CARD")
            term.sims["nfc"].send("present visa")
            _wait_screen(term, "AUTHORIZING")
            sb.restart()  # the gateway goes away mid-payment and comes back
            info = term.final(order_no, timeout=40)
            assert info.trans_status.is_final
            wait_until(
                lambda: term.journal_phase(info.trans_no) in ("APPROVED", "CANCELLED"),
                timeout=30,
            )
            assert len(term.charges(info.trans_no)) <= 1
        finally:
            term.close()


def test_no_card_data_in_logs_or_journal(term: Terminal) -> None:
    for sim, command, scenario in (
        ("nfc", "present visa", "SWIPE_CARD"),
        ("msr", "present visa", "SWIPE_CARD"),
        ("scan", "present wechat", "BSCANQR_PAY"),
    ):
        order_no = term.push(pay_scenario=scenario)
        _wait_screen(term, "WAITING_FOR_CARD")
        _present_until_final(term, sim, command, order_no)
        assert term.final(order_no).trans_status is TransStatus.COMPLETED
        wait_agent_idle(term)
    term.stop_agent()
    journal = term.journal_path
    found = scan_for_card_data(
        term.log_path, journal, journal.with_name("journal.db-wal"), term.sandbox.stderr_path
    )
    assert found == []


def _agent_cli(term: Terminal, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agent.cli", *args, "--config", str(term.config)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_operator_commands(term: Terminal) -> None:
    """status, journal, journal --show (the timeline) and doctor on a live agent."""
    order_no = term.push("21.00")
    _wait_screen(term, "WAITING_FOR_CARD")
    status = _agent_cli(term, "status", "--json")
    assert status.returncode == 0, status.stderr
    data = json.loads(status.stdout)
    assert data["mqtt"] == "connected"
    assert data["readers"] == {"nfc": "ready", "msr": "ready", "scan": "ready"}
    assert data["current"]["amount"] == "21.00 QAR"
    term.sims["nfc"].send("present visa")
    info = term.final(order_no)
    wait_until(lambda: term.journal_phase(info.trans_no) == "APPROVED")

    listing = _agent_cli(term, "journal")
    assert info.trans_no in listing.stdout
    assert "476173******0010" in listing.stdout
    wait_until(
        lambda: "event_published" in _agent_cli(term, "journal", "--show", info.trans_no).stdout
    )
    show = _agent_cli(term, "journal", "--show", info.trans_no).stdout.splitlines()[1:]
    hops = {line.split()[0]: int(line.split()[1]) for line in show}
    assert list(hops) == [
        "push_received",
        "journaled",
        "acknowledged",
        "shown",
        "card_presented",
        "card_read",
        "payment_journaled",
        "sent",
        "answered",
        "result_shown",
        "event_published",
    ]
    assert list(hops.values()) == sorted(hops.values())

    doctor = _agent_cli(term, "doctor")
    assert doctor.returncode == 0, doctor.stdout + doctor.stderr
    for check in ("config", "keys", "clock", "broker", "gateway", "reader"):
        assert any(line.startswith("OK") and check in line for line in doctor.stdout.splitlines())

    term.stop_agent()
    gone = _agent_cli(term, "status")
    assert gone.returncode == 1
    assert "sadad-agent" in gone.stderr
