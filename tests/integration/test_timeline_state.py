"""Issue 8, points 1-3, end to end with real processes (Mosquitto, the sandbox,
simulated readers, the agent, and ``sadad-agent`` / ``sadad-pos`` run as
commands):

1. the timeline of a real sale, printed by ``sadad-agent journal --show`` and
   ``sadad-pos query``: every hop present, in order, at times that only grow;
2. the retained status as a TMS subscriber sees it through a sale, a queued
   order and an unplugged reader, the will after SIGKILL, and
   ``sadad-pos terminal SN``;
3. fail fast: an offline terminal refuses a ``reject_trade_when_terminal_offline``
   create at once (``TerminalOffline``), and a busy terminal's queue is
   reported (``busy`` event, queue position, ``TerminalBusy``), never a
   silent PENDING.
"""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from cloud.errors import TerminalBusy, TerminalOffline
from cloud.messages import (
    OnlineStatus,
    OrderInfo,
    Screen,
    TerminalStatus,
    TransStatus,
    terminal_state,
)
from cloud.timeline import HOPS, parse_timeline
from tests.integration.agent_rig import Terminal, running_terminal
from tests.integration.conftest import REPO, SandboxHandle
from tests.integration.status_watcher import StatusWatcher
from tests.waiting import until

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def term(module_sandbox: SandboxHandle, tmp_path: Path) -> Iterator[Terminal]:
    with running_terminal(module_sandbox, "L", tmp_path / "term") as t:
        yield t


def _run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", *argv], cwd=REPO, capture_output=True, text=True, timeout=60
    )


def _pos(term: Terminal, *args: str) -> subprocess.CompletedProcess[str]:
    """``sadad-pos`` as a process, with the sandbox's pos.toml."""
    return _run("cloud.cli", "--config", str(term.sandbox.pos_config), *args)


def _agent(term: Terminal, *args: str) -> subprocess.CompletedProcess[str]:
    """``sadad-agent`` as a process, with the terminal's agent.toml."""
    return _run("agent.cli", *args, "--config", str(term.config))


def _hops(lines: list[str]) -> list[tuple[str, int]]:
    """(hop, ms since the first hop) from ``  name   N ms  +G ms`` lines."""
    rows = []
    for line in lines:
        name, since, unit, *gap = line.split()
        assert unit == "ms"
        assert gap == [] or (gap[0].startswith("+") and gap[1] == "ms"), line
        rows.append((name, int(since)))
    return rows


def _in_order(seen: list[Screen | None], *wanted: Screen) -> bool:
    it = iter(seen)
    return all(any(s is w for s in it) for w in wanted)


def test_timeline_of_a_real_sale(term: Terminal) -> None:
    """A tapped sale: ``journal --show`` prints every hop in the order a sale
    reaches them at times that never go back; ``sadad-pos query`` prints the
    same hops (they travel with the terminal's events to the sandbox), and
    ``--json`` gives them as rows."""
    order = term.push("14.00")
    term.screens.wait_screen("WAITING_FOR_CARD", order.trans_no)
    term.present("nfc", "present visa", order)
    assert term.settled(order).phase == "APPROVED"
    until(lambda: term.events(message_id=order.message_id, event="paid"))

    shown = _agent(term, "journal", "--show", order.trans_no)
    assert shown.returncode == 0, shown.stderr
    header, *lines = shown.stdout.splitlines()
    assert header.split()[:5] == [
        order.trans_no,
        order.merchant_order_no,
        "14.00",
        "QAR",
        "APPROVED",
    ]
    journal = _hops(lines)
    assert [name for name, _ in journal] == list(HOPS)
    times = [at for _, at in journal]
    assert times[0] == 0
    assert times == sorted(times)
    assert times[-1] > 0

    query = _pos(term, "query", "--order-no", order.merchant_order_no)
    assert query.returncode == 0, query.stderr
    text = query.stdout.splitlines()
    assert text[0] == "COMPLETED (paid)"
    start = text.index("terminal timeline (sandbox; ms since the terminal received the push):")
    (events,) = [line for line in text if line.startswith("terminal events: ")]
    assert events == "terminal events: received, displayed, paid"
    assert _hops(text[start + 1 : text.index(events)]) == journal  # the journal's own hops

    as_json = _pos(term, "--json", "query", "--order-no", order.merchant_order_no)
    assert as_json.returncode == 0, as_json.stderr
    data = json.loads(as_json.stdout)["order"]
    assert [(r["name"], r["since_ms"]) for r in data["terminal_hops"]] == journal
    assert [e["event"] for e in data["terminal_timeline"]] == ["received", "displayed", "paid"]
    assert data["terminal_timeline"][-1]["hops"]["event_published"] > 0
    assert data["terminal_online_status"] == "ONLINE"
    assert "waiting" not in data
    term.assert_all_settled()


def test_live_state_seen_by_the_tms_and_the_will_after_sigkill(term: Terminal) -> None:
    """A real subscriber sees the retained status follow the terminal: IDLE,
    WAITING_FOR_CARD, a queued order (queue 1), an unplugged and replugged
    reader, the queued order closed (queue 0), RESULT, IDLE - each change
    published once (no two equal statuses in a row). ``sadad-pos terminal`` shows it. After
    SIGKILL the broker publishes the will: offline, which the sandbox reports,
    and a create with ``reject_trade_when_terminal_offline`` fails at once
    with ``TerminalOffline``."""
    sandbox = term.sandbox
    watcher = StatusWatcher(sandbox.mqtt_host, sandbox.mqtt_port, term.sn)
    try:
        ready = {"nfc": "ready", "msr": "ready", "scan": "ready"}
        watcher.wait_for(lambda s: s.screen is Screen.IDLE and s.readers == ready)
        live = watcher.mark()

        first = term.push("15.00")
        term.screens.wait_screen("WAITING_FOR_CARD", first.trans_no)
        watcher.wait_for(lambda s: s.screen is Screen.WAITING_FOR_CARD, after=live)
        second = term.push("16.00")
        waiting = watcher.wait_for(
            lambda s: s.queue == 1 and s.screen is Screen.WAITING_FOR_CARD, after=live
        )
        assert (waiting.status, waiting.readers, waiting.keepalive) == ("online", ready, 30)

        def gateway_knows() -> bool:  # the sandbox reads the same retained topic
            info = term.pos.terminal_status(term.sn)
            state = terminal_state(info.terminal_state)
            online = info.terminal_online_status is OnlineStatus.ONLINE
            return online and state is not None and _same(state, waiting)

        until(gateway_knows, timeout=10)
        shown = _pos(term, "terminal", term.sn)
        assert shown.returncode == 0, shown.stderr
        lines = shown.stdout.splitlines()
        assert lines[0].startswith(f"{term.sn} ONLINE (status received ")
        assert lines[1:] == [
            "  screen     WAITING_FOR_CARD",
            "  readers    nfc ready, msr ready, scan ready",
            "  queue      1 waiting",
            "  keepalive  30 s (a silent loss shows as offline within 45 s)",
        ]

        term.sims["msr"].send("unplug")
        watcher.wait_for(lambda s: s.readers.get("msr") != "ready", after=live)
        term.sims["msr"].send("replug")
        watcher.wait_for(lambda s: s.readers == ready and s.queue == 1, after=watcher.mark())

        term.pos.close_order(second.merchant_order_no)  # the queued order leaves the queue
        watcher.wait_for(lambda s: s.queue == 0 and s.screen is Screen.WAITING_FOR_CARD, after=live)
        term.present("nfc", "present visa", first)
        assert term.settled(first).phase == "APPROVED"
        term.wait_idle()
        watcher.wait_for(lambda s: s.screen is Screen.IDLE, after=live)
        screens = [s.screen for s in watcher.since(live)]
        assert _in_order(screens, Screen.WAITING_FOR_CARD, Screen.RESULT, Screen.IDLE), screens
        published = [s for s in watcher.seen[live:] if not s.retained]
        assert all(s.status.status == "online" for s in published)
        repeats = [a for a, b in itertools.pairwise(published) if _same(a.status, b.status)]
        assert repeats == [], "a status was published twice in a row"

        gone = watcher.mark()
        term.kill_agent()
        will = watcher.wait_for(lambda s: s.status == "offline", after=gone)
        assert will.keepalive == 30

        def offline() -> bool:
            state = term.pos.terminal_status(term.sn)
            return state.terminal_online_status is OnlineStatus.OFFLINE

        until(offline, timeout=10)
        shown = _pos(term, "terminal", term.sn)
        assert shown.returncode == 1
        assert shown.stdout.splitlines()[0].startswith(f"{term.sn} OFFLINE (status received ")

        with pytest.raises(TerminalOffline) as refused:
            term.push("17.00", reject_trade_when_terminal_offline=True)
        assert refused.value.code == "40903"
    finally:
        watcher.close()
    term.assert_all_settled()


def _same(a: TerminalStatus, b: TerminalStatus) -> bool:
    """Equal but for the timestamp."""
    return (a.status, a.screen, a.readers, a.queue) == (b.status, b.screen, b.readers, b.queue)


def test_busy_terminal_reports_the_queue_never_a_silent_pending(term: Terminal) -> None:
    """Orders pushed while one is on screen wait in the terminal's queue; the
    terminal answers ``busy`` with each one's position, which the sandbox keeps
    and ``sadad-pos query`` and the POS module report: a waiting reason, a
    warning, and ``TerminalBusy`` (with the position) when a wait runs out."""
    on_screen = term.push("18.00")
    term.screens.wait_screen("WAITING_FOR_CARD", on_screen.trans_no)
    second = term.push("19.00")
    third = term.push("20.00")
    for order, position in ((second, "1"), (third, "2")):
        until(lambda: term.events(message_id=order.message_id, event="busy"))  # noqa: B023
        (busy,) = term.events(message_id=order.message_id, event="busy")
        assert busy["reason"] == f"queue position {position}"

    def queued() -> OrderInfo | None:  # the status (queue 2) may trail the busy event
        info = term.pos.query_order(third.merchant_order_no)
        state = terminal_state(info.terminal_state)
        return info if state is not None and state.queue == 2 else None

    info = until(queued, timeout=10)
    assert info.trans_status is TransStatus.PREORDER
    assert parse_timeline(info.terminal_timeline).queue_position() == 2

    query = _pos(term, "query", "--order-no", third.merchant_order_no)
    assert query.returncode == 0, query.stderr
    assert (
        "  waiting    terminal busy: the order waits in its queue at position 2; 2 waiting now"
        in query.stdout.splitlines()
    )
    assert "terminal events: received, busy (queue position 2)" in query.stdout.splitlines()

    with pytest.raises(TerminalBusy) as waited:
        term.pos.wait_for_final(second.merchant_order_no, deadline_s=1.5)
    assert waited.value.position == 1
    assert "terminal busy" in str(waited.value)

    pushed = _pos(
        term,
        "--json",
        "push",
        "--terminal",
        term.sn,
        "--amount",
        "21.00",
        "--wait",
        "--timeout",
        "1.5",
    )
    assert pushed.returncode == 3, pushed.stderr
    result = json.loads(pushed.stdout)
    assert result["error"]["kind"] == "terminal_busy"
    assert result["order"]["waiting"].startswith(
        "terminal busy: the order waits in its queue at position 3"
    )
    assert term.pos.query_order(result["merchant_order_no"]).trans_status is TransStatus.PREORDER

    # Close the queued orders (the terminal drops them), pay the one on screen.
    for order_no in (
        second.merchant_order_no,
        third.merchant_order_no,
        result["merchant_order_no"],
    ):
        term.pos.close_order(order_no)
    until(lambda: term.journal_count("SELECT COUNT(*) FROM transactions WHERE phase='CLOSED'") == 3)
    term.present("nfc", "present visa", on_screen)
    assert term.settled(on_screen).phase == "APPROVED"
    term.assert_all_settled()
