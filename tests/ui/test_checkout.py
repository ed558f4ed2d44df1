"""The checkout screen driven by Pilot against a real BridgeServer with a scripted agent."""

from __future__ import annotations

from pathlib import Path

from agent import bridge_protocol as bp
from cloud.messages import Screen
from tests.ui.conftest import ORDER, ScriptedAgent, make_app, screen_text, until
from ui.app import CheckoutApp
from ui.screens.checkout import CheckoutScreen
from ui.widgets.amount import Amount

CARD = bp.CardInfo(masked_pan="476173******0010", brand="VISA", entry_mode="contactless")


def _shows(app: CheckoutApp, *texts: str) -> bool:
    shown = screen_text(app)
    return all(t in shown for t in texts)


async def test_idle_shows_store_terminal_and_links(agent: ScriptedAgent) -> None:
    agent.publish(bp.ReadersEvent(readers={"nfc": "ready", "qr": "offline"}))
    app = make_app(agent.path)
    async with app.run_test(size=(80, 24)) as pilot:
        await until(pilot, lambda: _shows(app, "Reader qr", "F2 Setup"))
        text = screen_text(app)
        assert "Demo Coffee  [T0001]" in text
        assert "terminal T0001" in text
        assert "TMS (MQTT)  connected" in text
        assert "Gateway     ok" in text
        assert "Reader nfc  ready" in text
        assert "Reader qr   offline" in text
        assert "Confirm" not in text  # no order: Enter does nothing
        await pilot.press("enter", "escape")
        await pilot.pause(0.05)
        assert agent.intents == []


async def test_three_readers_fit_80_columns(agent: ScriptedAgent) -> None:
    """Issue 15: with the demo's three readers the status bar wrapped at 80
    columns and the idle panel read "Reader scannerready"."""
    agent.publish(bp.ReadersEvent(readers={"nfc": "ready", "msr": "ready", "scanner": "ready"}))
    app = make_app(agent.path)
    async with app.run_test(size=(80, 24)) as pilot:
        await until(pilot, lambda: _shows(app, "Reader scanner", "Readers 3 ready"))
        lines = screen_text(app).splitlines()
        assert lines[0].strip().startswith("Demo Coffee  [T0001]")
        assert lines[0].strip().endswith("TMS connected  Gateway ok  Readers 3 ready")
        assert "ready" not in lines[1]  # no second status line
        text = "\n".join(lines)
        assert "Reader scanner  ready" in text
        assert "Reader nfc      ready" in text
        assert "TMS (MQTT)      connected" in text

        # A reader down is still named in the status bar.
        down: dict[str, bp.ReaderState] = {"nfc": "ready", "msr": "ready", "scanner": "offline"}
        agent.publish(bp.ReadersEvent(readers=down))
        await until(pilot, lambda: _shows(app, "Readers 2/3  scanner offline"))
        assert screen_text(app).splitlines()[0].strip().startswith("Demo Coffee  [T0001]")

        # Wider, everything is named.
        await pilot.resize_terminal(120, 24)
        await until(pilot, lambda: _shows(app, "nfc ready  msr ready  scanner offline"))


async def test_idle_says_why_a_link_is_down(agent: ScriptedAgent) -> None:
    agent.publish(
        bp.ConnectionEvent(
            mqtt="disconnected",
            mqtt_reason="connection refused",
            gateway="unreachable",
            gateway_reason="timed out",
        )
    )
    app = make_app(agent.path)
    async with app.run_test(size=(80, 24)) as pilot:
        await until(pilot, lambda: _shows(app, "TMS (MQTT)      disconnected  connection refused"))
        assert _shows(app, "Gateway         unreachable  timed out", "TMS disconnected")


async def test_sale_confirm_read_authorize_approve_then_idle(agent: ScriptedAgent) -> None:
    app = make_app(agent.path)
    async with app.run_test(size=(80, 24)) as pilot:
        await until(pilot, lambda: _shows(app, "Ready for the next order"))
        agent.show(Screen.WAITING_FOR_CONFIRM, order=ORDER)
        await until(pilot, lambda: _shows(app, "Order A-1001", "Enter/F1 Confirm"))
        amount = app.screen.query_one("#amount", Amount)
        assert (amount.amount, amount.currency) == ("1234.50", "QAR")
        text = screen_text(app)
        assert "QAR" in text
        assert "2 coffees, 1 croissant" in text
        assert "press Enter to confirm" in text
        assert "Expires in 1:35" in text
        assert "Enter/F1 Confirm" in text
        assert "Esc/F4 Cancel" in text
        assert "F2 Setup" not in text  # no setup during a payment

        await pilot.press("enter")
        await until(pilot, lambda: agent.intents, "the agent's intents")
        assert isinstance(agent.intents[0], bp.ConfirmIntent)
        assert agent.intents[0].trans_no == ORDER.trans_no

        agent.show(Screen.WAITING_FOR_CARD, order=ORDER, progress="Tap, swipe or scan")
        await until(pilot, lambda: _shows(app, "Tap, swipe or scan", "Wallet: scan the QR code"))
        await until(pilot, lambda: "Enter/F1 Confirm" not in screen_text(app))

        agent.show(Screen.READING, order=ORDER, progress="Reading card...", card=CARD)
        await until(pilot, lambda: _shows(app, "] Reading card...", "VISA 476173******0010"))

        agent.show(Screen.AUTHORIZING, order=ORDER, progress="Authorizing...", card=CARD)
        await until(pilot, lambda: _shows(app, "] Authorizing..."))
        await until(pilot, lambda: "Esc/F4 Cancel" not in screen_text(app))  # too late
        assert "Expires in" not in screen_text(app)

        agent.show(
            Screen.RESULT,
            order=ORDER,
            result=bp.ResultInfo(
                outcome="approved", auth_code="A1B2C3", masked_pan="476173******0010"
            ),
        )
        await until(pilot, lambda: _shows(app, "APPROVED"))
        assert _shows(app, "Auth code A1B2C3", "Card 476173******0010", "Order A-1001")

        agent.show(Screen.IDLE)
        await until(pilot, lambda: _shows(app, "Ready for the next order"))
        assert [type(i) for i in agent.intents] == [bp.ConfirmIntent]


async def test_cancel_by_escape_or_f4(agent: ScriptedAgent) -> None:
    app = make_app(agent.path)
    async with app.run_test(size=(80, 24)) as pilot:
        agent.show(Screen.WAITING_FOR_CARD, order=ORDER, progress="Tap, swipe or scan")
        await until(pilot, lambda: _shows(app, "Tap, swipe or scan"))
        await pilot.press("escape")
        await until(pilot, lambda: agent.intents, "the agent's intents")
        await pilot.press("f4")
        await until(pilot, lambda: len(agent.intents) == 2, "the agent's intents")
        assert all(isinstance(i, bp.CancelIntent) for i in agent.intents)
        assert {i.trans_no for i in agent.intents} == {ORDER.trans_no}  # type: ignore[union-attr]
        await pilot.press("enter")  # not waiting for a confirm: nothing sent
        agent.show(
            Screen.RESULT,
            order=ORDER,
            result=bp.ResultInfo(outcome="cancelled", reason="Cancelled by the cashier"),
        )
        await until(pilot, lambda: _shows(app, "CANCELLED", "Cancelled by the cashier"))
        assert len(agent.intents) == 2


async def test_touch_buttons_send_the_same_intents(agent: ScriptedAgent) -> None:
    app = make_app(agent.path)
    async with app.run_test(size=(120, 40)) as pilot:
        agent.show(Screen.WAITING_FOR_CONFIRM, order=ORDER)
        await until(pilot, lambda: _shows(app, "Confirm  Enter"))
        await pilot.click("#confirm")
        await pilot.click("#cancel")
        await until(pilot, lambda: len(agent.intents) == 2, "the agent's intents")
        assert agent.names() == ["confirm", "cancel"]
        assert app.focused is None  # the buttons never steal Enter


async def test_queue_indicator_and_prominent_message(agent: ScriptedAgent) -> None:
    app = make_app(agent.path)
    async with app.run_test(size=(80, 24)) as pilot:
        agent.show(
            Screen.WAITING_FOR_CARD, order=ORDER, message="Card removed too soon - tap again"
        )
        agent.publish(bp.QueueEvent(waiting=2))
        await until(pilot, lambda: _shows(app, "2 more orders waiting"))
        assert "Card removed too soon - tap again" in screen_text(app)
        agent.publish(bp.QueueEvent(waiting=1))
        await until(pilot, lambda: _shows(app, "1 more order waiting"))
        agent.publish(bp.QueueEvent(waiting=0))
        await until(pilot, lambda: "waiting" not in screen_text(app))


async def test_declined_shows_the_reason_and_another_card(agent: ScriptedAgent) -> None:
    app = make_app(agent.path)
    async with app.run_test(size=(80, 24)) as pilot:
        agent.show(
            Screen.RESULT,
            order=ORDER,
            result=bp.ResultInfo(outcome="declined", reason="Insufficient funds"),
        )
        await until(pilot, lambda: _shows(app, "DECLINED"))
        assert _shows(app, "Insufficient funds", "Please try another card")


async def test_refused_and_failed_intents_show_a_notification(agent: ScriptedAgent) -> None:
    agent.replies["confirm"] = {"accepted": False, "reason": "that order is no longer on screen"}
    agent.replies["cancel"] = RuntimeError("engine busy")
    app = make_app(agent.path)
    async with app.run_test(size=(120, 40), notifications=True) as pilot:
        agent.show(Screen.WAITING_FOR_CONFIRM, order=ORDER)
        await until(pilot, lambda: _shows(app, "Order A-1001"))
        await pilot.press("enter")
        await until(pilot, lambda: _shows(app, "Confirm refused: that order is no longer"))
        await pilot.press("escape")
        await until(pilot, lambda: _shows(app, "Cancel failed: engine busy"))


async def test_agent_lost_shows_reconnecting_and_recovers(tmp_path: Path) -> None:
    path = tmp_path / "agent.sock"
    app = make_app(path)
    async with app.run_test(size=(80, 24)) as pilot:
        await until(pilot, lambda: _shows(app, "Agent not running - reconnecting"))
        assert "not found" in screen_text(app)  # why, from the client
        await pilot.press("enter", "escape")  # no crash, nothing to send

        first = ScriptedAgent(path)
        await first.start()
        first.show(Screen.READING, order=ORDER, progress="Reading card...")
        await until(pilot, lambda: _shows(app, "Reading card..."))
        await first.server.close()
        await until(pilot, lambda: _shows(app, "Agent not running - reconnecting", "offline"))

        second = ScriptedAgent(path)
        await second.start()
        try:
            await until(pilot, lambda: _shows(app, "Ready for the next order"))
        finally:
            await second.server.close()


async def test_no_setup_during_a_payment(agent: ScriptedAgent) -> None:
    app = make_app(agent.path)
    async with app.run_test(size=(80, 24)) as pilot:
        agent.show(Screen.WAITING_FOR_CARD, order=ORDER)
        await until(pilot, lambda: _shows(app, "Order A-1001"))
        await pilot.press("f2")
        await pilot.pause(0.05)
        assert isinstance(app.screen, CheckoutScreen)
        assert "enter_setup" not in agent.names()


async def test_ascii_mode_draws_with_ascii_only(agent: ScriptedAgent) -> None:
    app = make_app(agent.path, ascii_borders=True)
    async with app.run_test(size=(80, 24)) as pilot:
        agent.show(Screen.WAITING_FOR_CONFIRM, order=ORDER)
        await until(pilot, lambda: _shows(app, "Order A-1001"))
        text = screen_text(app)
        assert "+-----" in text
        assert "|_  | |" in text  # the big digits
        assert all(ord(c) < 128 for c in text), {c for c in text if ord(c) >= 128}


async def test_idle_hint(agent: ScriptedAgent) -> None:
    app = make_app(agent.path, hint="Push more: sadad-pos push --amount 9.99")
    async with app.run_test(size=(80, 24)) as pilot:
        await until(pilot, lambda: _shows(app, "Push more: sadad-pos"))
        agent.show(Screen.WAITING_FOR_CARD, order=ORDER)
        await until(pilot, lambda: "Push more" not in screen_text(app))
