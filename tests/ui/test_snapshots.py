"""SVG snapshots of each screen at 80x24 (the Linux console) and 120x40.

Each app runs with its simulated peer (the real BridgeServer and a scripted
agent) started on mount, a frozen clock, and relative paths (so no temporary
path reaches the screen). Update the baselines with
``pytest tests/ui/test_snapshots.py --snapshot-update`` and look at them
(``tests/ui/__snapshots__/``); docs/screens/ holds copies of three of them.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC
from pathlib import Path
from typing import Any

import msgspec
import pytest
from textual import events, on
from textual.pilot import Pilot
from textual.widgets import Input, TextArea

from agent import bridge_protocol as bp
from agent.bridge_client import BridgeClient
from cloud.messages import Screen
from tests.ui.conftest import (
    HISTORY,
    ORDER,
    PIN,
    ScriptedAgent,
    screen_text,
    until,
    write_config,
)
from ui.app import CheckoutApp

CARD = bp.CardInfo(masked_pan="476173******0010", brand="VISA", entry_mode="contactless")

SCENES: dict[str, list[Any]] = {
    "idle": [],
    "confirm": [bp.ScreenEvent(screen=Screen.WAITING_FOR_CONFIRM, order=ORDER)],
    "order": [
        bp.ScreenEvent(
            screen=Screen.WAITING_FOR_CARD,
            order=ORDER,
            progress="Tap, swipe or scan",
            message="Card removed too soon - tap again",
        ),
        bp.QueueEvent(waiting=1),
    ],
    "authorizing": [
        bp.ScreenEvent(
            screen=Screen.AUTHORIZING, order=ORDER, progress="Authorizing...", card=CARD
        ),
    ],
    "approved": [
        bp.ScreenEvent(
            screen=Screen.RESULT,
            order=ORDER,
            result=bp.ResultInfo(
                outcome="approved", auth_code="A1B2C3", masked_pan="476173******0010"
            ),
        ),
    ],
    "declined": [
        bp.ScreenEvent(
            screen=Screen.RESULT,
            order=ORDER,
            result=bp.ResultInfo(outcome="declined", reason="Insufficient funds"),
        ),
    ],
}
READY = {
    "idle": "Ready for the next order",
    "confirm": "Enter/F1 Confirm",
    "order": "1 more order waiting",
    "authorizing": "Authorizing...",
    "approved": "APPROVED",
    "declined": "DECLINED",
}
SIZES = [(80, 24), (120, 40)]


class PeerApp(CheckoutApp):
    """The checkout with its scripted agent, started before the app connects."""

    def __init__(self, *, run_agent: bool = True, **kwargs: Any) -> None:
        client = BridgeClient("agent.sock", backoff_initial=0.02, backoff_max=0.1)
        super().__init__("agent.sock", client, clock=lambda: ORDER.expires_at - 95_000, **kwargs)
        self.run_agent = run_agent
        self.agent: ScriptedAgent | None = None

    @on(events.Mount)
    async def start_agent(self) -> None:  # runs before CheckoutApp.on_mount connects
        if self.run_agent:
            self.agent = ScriptedAgent(Path("agent.sock"))
            await self.agent.start()

    @on(events.Unmount)
    async def stop_agent(self) -> None:
        if self.agent is not None:
            await self.agent.server.close()


def _scene(name: str) -> Callable[[Pilot[None]], Any]:
    async def run_before(pilot: Pilot[None]) -> None:
        app = pilot.app
        assert isinstance(app, PeerApp)
        assert app.agent is not None
        await until(pilot, lambda: "Ready for the next order" in screen_text(app))
        for event in SCENES[name]:
            app.agent.publish(event)
        await until(pilot, lambda: READY[name] in screen_text(app))

    return run_before


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    write_config(tmp_path)


def _id(size: tuple[int, int]) -> str:
    return f"{size[0]}x{size[1]}"


@pytest.mark.parametrize("size", SIZES, ids=_id)
@pytest.mark.parametrize("scene", list(SCENES))
def test_checkout(snap_compare: Any, scene: str, size: tuple[int, int]) -> None:
    assert snap_compare(PeerApp(), terminal_size=size, run_before=_scene(scene))


@pytest.mark.parametrize("size", SIZES, ids=_id)
def test_setup(snap_compare: Any, size: tuple[int, int]) -> None:
    async def run_before(pilot: Pilot[None]) -> None:
        app = pilot.app
        await until(pilot, lambda: "Ready for the next order" in screen_text(app))  # type: ignore[arg-type]
        await pilot.press("f2")
        await until(pilot, lambda: "technician PIN" in screen_text(app))  # type: ignore[arg-type]
        app.screen.query_one("#pin", Input).value = PIN
        await pilot.press("enter")
        await until(pilot, lambda: "Broker URL" in screen_text(app))  # type: ignore[arg-type]
        for widget in app.screen.query("Input, TextArea"):
            assert isinstance(widget, Input | TextArea)
            widget.cursor_blink = False

    assert snap_compare(PeerApp(), terminal_size=size, run_before=run_before)


@pytest.mark.parametrize("size", SIZES, ids=_id)
def test_history(snap_compare: Any, size: tuple[int, int]) -> None:
    """F5: the last transactions (approved, declined, cancelled, a wallet, a
    refund, an expired one without a receipt, a long order number, yesterday's)."""

    async def run_before(pilot: Pilot[None]) -> None:
        app = pilot.app
        assert isinstance(app, PeerApp)
        assert app.agent is not None
        app.tz = UTC  # the times, whatever the machine's zone
        app.agent.replies["history"] = msgspec.to_builtins(HISTORY)
        app.agent.publish(bp.PrinterEvent(state="paper_out", pending=1))
        await until(pilot, lambda: "F5 History" in screen_text(app))
        await pilot.press("f5")
        await until(pilot, lambda: "Reference" in screen_text(app))

    assert snap_compare(PeerApp(), terminal_size=size, run_before=run_before)


def test_agent_lost(snap_compare: Any) -> None:
    async def run_before(pilot: Pilot[None]) -> None:
        await until(pilot, lambda: "reconnecting" in screen_text(pilot.app))  # type: ignore[arg-type]

    assert snap_compare(PeerApp(run_agent=False), run_before=run_before)


def test_ascii_console(snap_compare: Any) -> None:
    assert snap_compare(PeerApp(ascii_borders=True), run_before=_scene("order"))


@pytest.mark.parametrize("scene", ["idle", "order", "approved", "history"])
def test_docs_screens_are_the_snapshots(scene: str) -> None:
    """docs/screens/ shows the current screens: copy them again after --snapshot-update."""
    root = Path(__file__).parents[2]
    snapshot = Path(__file__).parent / "__snapshots__" / "test_snapshots"
    test = "test_history" if scene == "history" else f"test_checkout[{scene}"
    baseline = snapshot / f"{test}{'[' if scene == 'history' else '-'}80x24].svg"
    doc = root / "docs" / "screens" / f"{scene}.svg"
    assert doc.read_text() == baseline.read_text(), f"cp '{baseline}' {doc}"
