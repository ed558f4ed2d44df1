"""A man in the middle between the terminals and the gateway (part D).

A real proxy process (``tests.integration.mitm_proxy``) sits between two real
agents and the real sandbox, holding no key: it replays a terminal's earlier
genuine "completed" answer for a new sale that never reached the gateway,
swaps answers between the two terminals, and holds an answer past the
terminal's timeout; a sandbox fault (``stale-answers``) stamps answers as one
held past the 15-minute window would arrive (a test cannot wait 15 minutes;
to the terminal the two are the same bytes). Whatever it does, no order is journaled or
shown APPROVED that the gateway does not have as paid, and each ends in one
final state that the POS, the journal, the checkout and the gateway's books
agree on (``Terminal.settled``)."""

from __future__ import annotations

import json
import os
import selectors
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import tomlkit

from tests.integration.agent_rig import Order, Terminal
from tests.integration.conftest import REPO, SandboxHandle, stop_process

pytestmark = pytest.mark.timeout(150)


@pytest.fixture
def proxy(sandbox: SandboxHandle) -> Iterator[str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.integration.mitm_proxy", "--upstream", sandbox.http_url],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
    )
    assert proc.stdout is not None
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        assert sel.select(timeout=20), "the proxy did not start"
    url = str(json.loads(proc.stdout.readline())["url"])
    try:
        yield url
    finally:
        stop_process(proc)


def _terminal(sandbox: SandboxHandle, tmp_path: Path, name: str, gateway: str) -> Terminal:
    """A terminal whose agent reaches the gateway only through ``gateway``."""
    term = Terminal(sandbox, f"MITM{name}{os.getpid() % 1000}", tmp_path / name, readers=("nfc",))
    doc = tomlkit.parse(term.config.read_text())
    table = doc["gateway"]
    assert isinstance(table, tomlkit.items.Table)
    table["url"] = gateway
    term.config.write_text(tomlkit.dumps(doc))
    term.start_agent()
    return term


def _trick(proxy: str, term: Terminal, trick: str, **extra: float) -> None:
    httpx.post(
        f"{proxy}/_mitm", json={"terminal": term.sn, "trick": trick, **extra}
    ).raise_for_status()


def _sale(term: Terminal) -> Order:
    order = term.push("12.30")
    term.screens.wait_screen("WAITING_FOR_CARD", order.trans_no)
    term.present("nfc", "present visa", order)
    return order


def _fault(term: Terminal, *args: str) -> None:
    """``sadad-sandbox fault --terminal SN *args``, as a POS developer runs it."""
    cmd = [sys.executable, "-m", "sandbox.cli", "fault", "--data", str(term.sandbox.data_dir)]
    done = subprocess.run([*cmd, "--terminal", term.sn, *args], cwd=REPO, capture_output=True)
    assert done.returncode == 0, done.stderr.decode()


def _played(proxy: str) -> list[list[str]]:
    return list(httpx.get(f"{proxy}/_mitm").json()["log"])


def test_replayed_swapped_and_held_answers_never_make_an_unpaid_sale_approved(
    sandbox: SandboxHandle, proxy: str, tmp_path: Path
) -> None:
    a = _terminal(sandbox, tmp_path, "A", proxy)
    b = _terminal(sandbox, tmp_path, "B", proxy)
    try:
        # Honest sales on both: the proxy keeps their genuine answers.
        first_a, first_b = _sale(a), _sale(b)
        assert a.settled(first_a).phase == b.settled(first_b).phase == "APPROVED"
        a.wait_idle()
        b.wait_idle()

        # Replay: A's next create never reaches the gateway; the proxy answers
        # it with A's earlier "completed". The gateway still has it as 9.
        _trick(proxy, a, "replay")
        replayed = _sale(a)
        done = a.settled(replayed)
        assert done.phase == "CANCELLED", done  # found unpaid by detail, then reversed
        assert done.charges == []
        assert a.screens.results(replayed.trans_no) == ["cancelled"]
        assert a.events(event="paid", trans_no=replayed.trans_no) == []
        a.wait_idle()

        # Swap: B's create is paid at the gateway, but B is answered with A's
        # answer; then A's next create gets B's. Each learns the truth by detail.
        _trick(proxy, b, "swap")
        swapped_b = _sale(b)
        assert b.settled(swapped_b).phase == "APPROVED"
        _trick(proxy, a, "swap")
        swapped_a = _sale(a)
        assert a.settled(swapped_a).phase == "APPROVED"
        a.wait_idle()

        # Held past the terminal's timeout (2 s): paid at the gateway, unknown
        # at the terminal until detail says so.
        _trick(proxy, a, "hold", seconds=a.gateway_timeout + 1.5)
        held = _sale(a)
        assert a.settled(held).phase == "APPROVED"

        # Held past the 15-minute window: while the fault lasts, A's answers
        # arrive stamped 16 minutes ago, as one held that long would. None is
        # an answer; once fresh ones come, detail learns the sale was paid.
        a.wait_idle()
        _fault(a, "stale-answers", "--seconds", "1.5")
        stale = _sale(a)
        assert a.settled(stale).phase == "APPROVED"
        assert "min off this clock" in a.log_text()
        assert len(a.charges(stale.trans_no)) == 1

        played = [what for _sn, _method, what in _played(proxy)]
        assert played == [
            "replayed an earlier answer of this terminal",
            "answered with another terminal's answer",
            "answered with another terminal's answer",
            "held the answer 3.5 s",
        ]
        for term in (a, b):
            assert "answer not for this request" in term.log_text()
            term.assert_all_settled()
    finally:
        a.close()
        b.close()


def test_plain_http_to_another_host_is_refused_unless_allowed_and_then_warned(
    sandbox: SandboxHandle, tmp_path: Path
) -> None:
    term = Terminal(sandbox, f"MITMH{os.getpid() % 1000}", tmp_path / "h", readers=("nfc",))
    try:
        doc = tomlkit.parse(term.config.read_text())
        table = doc["gateway"]
        assert isinstance(table, tomlkit.items.Table)
        table["url"] = "http://192.0.2.10:8080"  # TEST-NET-1: off this machine
        term.config.write_text(tomlkit.dumps(doc))
        check = subprocess.run(
            [sys.executable, "-m", "agent.cli", "config", "check", "--config", str(term.config)],
            cwd=REPO,
            capture_output=True,
            text=True,
        )
        assert check.returncode == 78
        assert "plain http:// is allowed only to a loopback host" in check.stderr + check.stdout
        table["allow_plain_http"] = True
        term.config.write_text(tomlkit.dumps(doc))
        started = time.monotonic()
        term.start_agent(watch=False)
        assert time.monotonic() - started < 30
        assert "is plain http:// off this machine (allow_plain_http = true)" in term.log_text()
    finally:
        term.close()
