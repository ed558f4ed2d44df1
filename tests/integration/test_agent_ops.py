"""What an operator sees of a running agent (``sadad-agent status``,
``journal``, ``journal --show``), and what must never be written anywhere:
no full PAN, track data or wallet code in the agent's log or journal files."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from cloud.messages import TransStatus
from cloud.timeline import HOPS
from tests.integration.agent_rig import Terminal, running_terminal, scan_for_card_data
from tests.integration.conftest import REPO, SandboxHandle
from tests.waiting import until

pytestmark = pytest.mark.timeout(90)


@pytest.fixture
def term(module_sandbox: SandboxHandle, tmp_path: Path) -> Iterator[Terminal]:
    with running_terminal(module_sandbox, "O", tmp_path / "term") as t:
        yield t


def _agent_cli(term: Terminal, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agent.cli", *args, "--config", str(term.config)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def _timeline(term: Terminal, trans_no: str) -> tuple[str, list[tuple[str, int]]]:
    """``journal --show``: its header line and (hop, ms since the first hop)."""
    shown = _agent_cli(term, "journal", "--show", trans_no)
    assert shown.returncode == 0, shown.stderr
    header, *lines = shown.stdout.splitlines()
    hops = []
    for line in lines:
        name, at, unit, *_gap = line.split()
        assert unit == "ms"
        hops.append((name, int(at)))
    return header, hops


def test_status_and_journal_show_on_a_live_agent(term: Terminal) -> None:
    """``status`` (JSON and text) shows the transaction on screen; after it is
    paid, ``journal`` lists it masked and ``journal --show`` gives its
    timeline with every hop present, in the order a sale reaches them, at
    increasing times."""
    order = term.push("21.00")
    term.screens.wait_screen("WAITING_FOR_CARD", order.trans_no)
    status = _agent_cli(term, "status", "--json")
    assert status.returncode == 0, status.stderr
    data = json.loads(status.stdout)
    assert data["sn"] == term.sn
    assert data["mqtt"] == "connected"
    assert data["screen"] == "WAITING_FOR_CARD"
    assert data["readers"] == {"nfc": "ready", "msr": "ready", "scan": "ready"}
    assert data["current"] == {
        "trans_no": order.trans_no,
        "merchant_order_no": order.merchant_order_no,
        "amount": "21.00 QAR",
        "state": "AWAITING_PAYMENT",
    }
    assert data["queue"] == []
    text = _agent_cli(term, "status").stdout
    assert f"current    {order.trans_no} 21.00 QAR (AWAITING_PAYMENT)" in text.splitlines()

    term.present("nfc", "present visa", order)
    done = term.settled(order)
    assert done.info.trans_status is TransStatus.COMPLETED
    until(lambda: term.events(message_id=order.message_id, event="paid"))

    listing = _agent_cli(term, "journal").stdout.splitlines()
    (line,) = [x for x in listing if x.startswith(order.trans_no)]
    assert line.split()[1:6] == [
        order.merchant_order_no,
        "21.00",
        "QAR",
        "APPROVED",
        "476173******0010",
    ]

    header, hops = _timeline(term, order.trans_no)
    assert header.split()[:5] == [
        order.trans_no,
        order.merchant_order_no,
        "21.00",
        "QAR",
        "APPROVED",
    ]
    assert [name for name, _ in hops] == list(HOPS)  # every hop, in the order of a sale
    times = [at for _, at in hops]
    assert times[0] == 0
    assert times == sorted(times)
    assert times[-1] < 10_000  # the whole sale took seconds, not a clock jump

    # The hops the gateway got with the final event are the journal's.
    (paid,) = term.events(message_id=order.message_id, event="paid")
    sent = json.loads(paid["hops"])
    assert set(sent) == set(HOPS)
    assert [sent[name] - sent["push_received"] for name in HOPS] == times

    term.stop_agent()
    gone = _agent_cli(term, "status")
    assert gone.returncode == 1
    assert gone.stderr.startswith("sadad-agent: ")
    term.assert_all_settled()


@pytest.mark.timeout(120)
def test_no_card_data_in_log_or_journal(term: Terminal) -> None:
    """A swiped chip card (refused: tap it) then tapped, a MasterCard tap
    (declined) and a wallet code: the agent's log (stderr) and
    every journal file hold no full PAN, no track data and no wallet code,
    while the agent runs (WAL) and after it stopped."""
    journal = term.journal_path
    files = [term.log_path, journal, journal.with_name("journal.db-wal")]

    # A swiped chip card is refused (tap it instead), then tapped.
    order = term.push("30.00")
    term.screens.wait_screen("WAITING_FOR_CARD", order.trans_no)
    refused = term.present_until("msr", "present chip", lambda s: s.message is not None)
    assert refused.screen.value == "WAITING_FOR_CARD"
    assert refused.message == "This card has a chip - please tap it instead of swiping"
    assert refused.card is None
    term.present("nfc", "present visa", order)
    assert term.settled(order).phase == "APPROVED"
    assert scan_for_card_data(*files) == []

    for sim, command, amount, phase in (
        ("nfc", "present mastercard", "32.51", "DECLINED"),
        ("scan", "present wechat", "33.00", "APPROVED"),
    ):
        order = term.push(amount)
        term.screens.wait_screen("WAITING_FOR_CARD", order.trans_no, timeout=20)
        term.present(sim, command, order)
        assert term.settled(order).phase == phase
        assert scan_for_card_data(*files) == []

    assert scan_for_card_data(journal.with_name("journal.db-shm")) == []
    term.stop_agent()
    assert scan_for_card_data(*files) == []
    log = term.log_text()
    assert "476173******0010" in log  # masked PANs are logged: the scan looks at the right file
    assert "541333******0434" in log
    term.assert_all_settled()
