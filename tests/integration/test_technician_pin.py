"""The technician PIN's lockout against the real agent process: wrong PINs over
the bridge, then the UI's connection and the agent itself killed (SIGKILL)
and started again - the lockout holds, grows, and a correct PIN after it
unlocks; every attempt is in the agent's journal with its time; no PIN, nor
its hash, in any log."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import tomlkit

from agent.bridge_client import BridgeClient
from agent.technician import hash_pin
from tests.integration.agent_rig import Terminal
from tests.integration.conftest import SandboxHandle

pytestmark = pytest.mark.timeout(120)

PIN = "864200"


@pytest.fixture
def term(module_sandbox: SandboxHandle, tmp_path: Path) -> Iterator[Terminal]:
    t = Terminal(
        module_sandbox, "PIN" + tmp_path.name[-6:].upper(), tmp_path / "t", readers=("nfc",)
    )
    try:
        hashed = hash_pin(PIN)
        (t.config.parent / "technician.pin").write_text(hashed + "\n")
        doc = tomlkit.parse(t.config.read_text())
        table = doc["terminal"]
        assert isinstance(table, tomlkit.items.Table)
        table["technician_pin_file"] = "technician.pin"
        t.config.write_text(tomlkit.dumps(doc))
        t.start_agent(watch=False)
        yield t
    finally:
        t.close()


def unlock(term: Terminal, pin: str) -> dict[str, Any]:
    """One UI connection: send the PIN, hang up."""

    async def ask() -> dict[str, Any]:
        client = BridgeClient(str(term.socket))
        await client.connect()
        try:
            return dict((await client.request("unlock_setup", timeout=10, pin=pin)).data)
        finally:
            await client.close()

    return asyncio.run(ask())


def test_the_lockout_survives_the_ui_and_the_agent(term: Terminal) -> None:
    answers = [unlock(term, "111111") for _ in range(5)]  # five UI connections
    assert [a.get("attempts_left") for a in answers[:4]] == [4, 3, 2, 1]
    assert (answers[4]["reason"], answers[4]["locked_for"]) == ("locked", 60)

    term.kill_agent()  # SIGKILL: the lockout is not in its memory
    term.start_agent(watch=False)
    refused = unlock(term, PIN)
    assert refused["reason"] == "locked"
    assert 0 < refused["locked_for"] <= 60

    # The minute passes (the test moves the journal's clock for it, with the
    # agent stopped), then five more wrong PINs lock it for twice as long.
    term.stop_agent()
    with sqlite3.connect(term.journal_path) as db:
        db.execute("UPDATE technician SET locked_until_ms = 0")
    term.start_agent(watch=False)
    answers = [unlock(term, "222222") for _ in range(5)]
    assert answers[4]["locked_for"] == 120

    term.stop_agent()
    with sqlite3.connect(term.journal_path) as db:
        db.execute("UPDATE technician SET locked_until_ms = 0")
        log = db.execute("SELECT at_ms, action, outcome FROM setup_log ORDER BY id").fetchall()
    term.start_agent(watch=False)
    assert unlock(term, PIN)["ok"] is True

    assert len([row for row in log if row[1] == "unlock"]) == 11
    assert all(row[0] > 1_700_000_000_000 for row in log)  # each with its time
    hashed = (term.config.parent / "technician.pin").read_text().strip()
    for text in (term.log_text(), repr(log)):
        assert PIN not in text
        assert hashed not in text
