"""The checkout screen against a real BridgeServer with a scripted agent."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from textual.widgets import Static

from agent import bridge_protocol as bp
from agent.bridge import BridgeServer
from cloud.messages import Screen
from ui.app import CheckoutApp
from ui.view import CheckoutView

NOW = 1_800_000_000_000
ORDER = bp.OrderInfo(
    trans_no="TR1",
    merchant_order_no="A-1001",
    amount="12.50",
    currency="QAR",
    description="2 coffees",
    expires_at=NOW + 95_000,
    confirm_required=True,
)


class ScriptedAgent:
    def __init__(self, path: Path) -> None:
        self.intents: list[bp.Intent] = []
        self.server = BridgeServer(str(path), hello=self.hello, on_intent=self.on_intent)

    def hello(self) -> bp.HelloEvent:
        return bp.HelloEvent(
            terminal=bp.TerminalInfo(sn="T0001", store_name="Demo Coffee"),
            snapshot=self.server.snapshot(),
        )

    async def on_intent(self, intent: bp.Intent) -> dict[str, Any]:
        self.intents.append(intent)
        return {"accepted": True}


@pytest.fixture
async def agent(tmp_path: Path) -> AsyncIterator[ScriptedAgent]:
    a = ScriptedAgent(tmp_path / "agent.sock")
    await a.server.start()
    a.server.publish(bp.ConnectionEvent(mqtt="connected", gateway="ok"))
    a.server.publish(bp.ReadersEvent(readers={"nfc": "ready"}))
    yield a
    await a.server.close()


def _text(app: CheckoutApp, widget: str) -> str:
    return str(app.query_one(f"#{widget}", Static).render())


async def _until(pilot: Any, cond: Any) -> None:
    for _ in range(200):
        if cond():
            return
        await pilot.pause(0.02)
    raise AssertionError("screen did not change")


async def test_order_confirm_result_idle(agent: ScriptedAgent) -> None:
    app = CheckoutApp(agent.server.path, clock=lambda: NOW)
    async with app.run_test(size=(80, 24)) as pilot:
        await _until(pilot, lambda: "Demo Coffee" in _text(app, "status"))
        assert "TMS connected" in _text(app, "status")
        agent.server.publish(bp.ScreenEvent(screen=Screen.WAITING_FOR_CONFIRM, order=ORDER))
        await _until(pilot, lambda: _text(app, "amount") == "12.50 QAR")
        assert "A-1001" in _text(app, "order")
        assert "expires in 1:35" in _text(app, "countdown")
        await pilot.press("enter")
        await _until(pilot, lambda: bool(agent.intents))
        assert isinstance(agent.intents[0], bp.ConfirmIntent)
        assert agent.intents[0].trans_no == "TR1"
        agent.server.publish(
            bp.ScreenEvent(
                screen=Screen.RESULT,
                order=ORDER,
                result=bp.ResultInfo(
                    outcome="approved", auth_code="123456", masked_pan="476173******0010"
                ),
            )
        )
        await _until(pilot, lambda: "APPROVED" in _text(app, "prompt"))
        assert "476173******0010" in _text(app, "prompt")
        assert "auth 123456" in _text(app, "prompt")
        agent.server.publish(bp.ScreenEvent(screen=Screen.IDLE))
        await _until(pilot, lambda: _text(app, "amount") == "")


async def test_cancel_decline_queue(agent: ScriptedAgent) -> None:
    app = CheckoutApp(agent.server.path, clock=lambda: NOW)
    async with app.run_test(size=(120, 40)) as pilot:
        agent.server.publish(bp.ScreenEvent(screen=Screen.WAITING_FOR_CARD, order=ORDER))
        agent.server.publish(bp.QueueEvent(waiting=2))
        await _until(pilot, lambda: "2 more order" in _text(app, "queue"))
        await pilot.press("escape")
        await _until(pilot, lambda: bool(agent.intents))
        assert isinstance(agent.intents[0], bp.CancelIntent)
        agent.server.publish(
            bp.ScreenEvent(
                screen=Screen.RESULT,
                order=ORDER,
                result=bp.ResultInfo(
                    outcome="declined", reason="Insufficient funds - try another card"
                ),
            )
        )
        await _until(pilot, lambda: "DECLINED" in _text(app, "prompt"))
        assert "try another card" in _text(app, "prompt")


async def test_agent_lost_then_back(tmp_path: Path) -> None:
    a = ScriptedAgent(tmp_path / "agent.sock")
    app = CheckoutApp(str(tmp_path / "agent.sock"), clock=lambda: NOW)
    async with app.run_test(size=(80, 24)) as pilot:
        await _until(pilot, lambda: "Agent not running" in _text(app, "status"))
        await a.server.start()
        try:
            await _until(pilot, lambda: "Demo Coffee" in _text(app, "status"))
        finally:
            await a.server.close()


def test_view_rules() -> None:
    v = CheckoutView()
    v.apply(
        bp.ScreenEvent(screen=Screen.WAITING_FOR_CARD, order=ORDER, progress="Tap, swipe or scan")
    )
    assert v.amount() == "12.50 QAR"
    assert v.countdown(NOW + 94_500) == "expires in 0:00"
    assert v.countdown(NOW) == "expires in 1:35"
    assert v.prompt() == "Tap, swipe or scan"


async def test_idle_hint_hidden_during_an_order(agent: ScriptedAgent) -> None:
    app = CheckoutApp(agent.server.path, clock=lambda: NOW, hint="Push more: sadad-pos ...")
    async with app.run_test(size=(80, 24)) as pilot:
        await _until(pilot, lambda: "Push more" in _text(app, "message"))
        agent.server.publish(bp.ScreenEvent(screen=Screen.WAITING_FOR_CARD, order=ORDER))
        await _until(pilot, lambda: _text(app, "message") == "")
