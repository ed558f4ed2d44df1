"""Receipts through the real agent, on a simulated ESC/POS printer on a pty
(``sadad-reader-sim printer``): what a sale prints, and a printer fault
that never touches the money path (issue 18's "must show").

The printer simulator decodes what it receives and appends each cut receipt
to a text file; while out of paper it drops what it is sent, so a receipt in
that file is one the printer really printed.
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent import bridge_protocol as bp
from cloud.messages import terminal_state
from tests.integration.agent_rig import SECRETS, Terminal, scan_for_card_data
from tests.integration.conftest import REPO, SandboxHandle
from tests.waiting import until

pytestmark = pytest.mark.timeout(120)

MASKED = "476173******0010"  # the simulated Visa (drivers.sim.cards)
PAN_LIKE = re.compile(rb"(?<!\d)\d{13,19}(?!\d)")  # a PAN's length; trans_no has 20


@pytest.fixture
def term(sandbox: SandboxHandle, tmp_path: Path) -> Iterator[Terminal]:
    import uuid

    t = Terminal(
        sandbox,
        "RC" + uuid.uuid4().hex[:8].upper(),
        tmp_path / "term",
        readers=("nfc",),
        printer=True,
    )
    try:
        t.start_agent()
        yield t
    finally:
        t.close()


def printer_state(term: Terminal) -> str | None:
    """The printer field of the terminal's retained status, as the gateway has it."""
    info = term.pos.terminal_status(term.sn)
    status = terminal_state(info.terminal_state)
    return None if status is None else status.printer


def nothing_waiting(term: Terminal) -> bool:
    """The checkout's last printer event: ready, no job waiting."""
    printer = term.screens.printer
    return printer is not None and printer.state == "ready" and printer.pending == 0


def test_a_sale_prints_its_receipt(term: Terminal) -> None:
    order = term.push("12.30")
    term.screens.wait_screen("WAITING_FOR_CARD", order.trans_no)
    term.present("nfc", "present visa", order)
    settled = term.settled(order)
    assert settled.phase == "APPROVED"
    until(lambda: len(term.receipts()) == 1, timeout=30, what="the receipt")
    receipt = term.receipts()[0]
    row = term.journal_row(order.trans_no)
    assert row is not None
    assert row["auth_code"]
    for needed in ("12.30", "APPROVED", MASKED, str(row["auth_code"]), order.trans_no, term.sn):
        assert needed in receipt, f"{needed!r} not on the receipt:\n{receipt}"
    assert "CUSTOMER COPY" in receipt
    assert "A000000003 1010" in receipt  # the AID as RID + PIX (chip-contactless)
    # Not a digit run that could be a card number anywhere in what was printed.
    printed = term.receipts_path.read_bytes()
    assert not PAN_LIKE.search(printed)
    assert scan_for_card_data(term.receipts_path, term.workdir / "printer.log") == []
    assert all(secret.encode() not in printed for secret in SECRETS)
    until(lambda: printer_state(term) == "ready", timeout=30, what="printer ready in the status")
    # The slip is out before its job is marked printed (the worker asks the
    # printer's status after it first); a reprint before that is refused.
    until(lambda: nothing_waiting(term), timeout=30, what="the job marked printed")

    # Reprint from the command line: the same receipt again, marked.
    cli = [sys.executable, "-m", "agent.cli", "receipt", order.trans_no, "--config"]
    done = subprocess.run([*cli, str(term.config)], cwd=REPO, capture_output=True, timeout=30)
    assert done.returncode == 0, done.stderr.decode()
    until(lambda: len(term.receipts()) == 2, timeout=30, what="the reprint")
    assert "REPRINT" in term.receipts()[1]
    assert order.trans_no in term.receipts()[1]
    # And its text, from the journal, without the printer.
    done = subprocess.run(
        [*cli, str(term.config), "--text"], cwd=REPO, capture_output=True, timeout=30
    )
    assert done.returncode == 0
    assert MASKED in done.stdout.decode()


def test_paper_out_during_a_sale_the_sale_is_paid_and_prints_after(term: Terminal) -> None:
    assert term.printer_sim is not None
    term.printer_sim.send("paper-out")
    until(lambda: printer_state(term) == "paper_out", timeout=30, what="paper out in the status")
    order = term.push("9.40")
    term.screens.wait_screen("WAITING_FOR_CARD", order.trans_no)
    term.present("nfc", "present visa", order)
    assert term.settled(order).phase == "APPROVED"  # the money path never waits for paper
    until(
        lambda: term.journal_count("SELECT COUNT(*) FROM print_jobs WHERE printed_at IS NULL") == 1
    )
    reply = term.screens.request("history", limit=5)
    assert reply.ok
    assert reply.data["entries"][0]["trans_no"] == order.trans_no
    assert term.receipts() == []

    term.printer_sim.send("paper-in")
    until(lambda: len(term.receipts()) == 1, timeout=30, what="the receipt after paper in")
    assert "9.40" in term.receipts()[0]
    assert "APPROVED" in term.receipts()[0]
    until(lambda: printer_state(term) == "ready", timeout=30)
    assert term.journal_count("SELECT COUNT(*) FROM print_jobs WHERE printed_at IS NULL") == 0
    until(lambda: term.screens.printer == bp.PrinterEvent(state="ready", pending=0, seq=_seq(term)))


def _seq(term: Terminal) -> int:
    return term.screens.printer.seq if term.screens.printer else -1
