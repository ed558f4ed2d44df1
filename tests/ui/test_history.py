"""The cashier's history and reprint on the checkout, against the scripted
agent: F5 opens the last transactions (only when no order is on screen),
the highlighted one's details follow the cursor, F3 reprints it when it has
a receipt, and the printer's state shows on the status bar."""

from __future__ import annotations

from datetime import UTC

import msgspec

from agent import bridge_protocol as bp
from cloud.messages import Screen
from tests.ui.conftest import HISTORY, ORDER, ScriptedAgent, make_app, screen_text, until
from ui.app import CheckoutApp
from ui.screens.checkout import CheckoutScreen
from ui.screens.history import HistoryScreen


def _queued(intent: bp.Intent) -> dict[str, object]:
    assert isinstance(intent, bp.ReprintIntent)
    return {"ok": True, "trans_no": intent.trans_no or ""}


def _app(agent: ScriptedAgent) -> CheckoutApp:
    agent.replies["history"] = msgspec.to_builtins(HISTORY)
    app = make_app(agent.path)
    app.tz = UTC
    return app


async def test_history_lists_details_and_reprints_the_selected(agent: ScriptedAgent) -> None:
    agent.publish(bp.PrinterEvent(state="ready"))
    agent.replies["reprint"] = _queued
    app = _app(agent)
    async with app.run_test(size=(80, 24), notifications=True) as pilot:
        await until(pilot, lambda: "F5 History" in screen_text(app))
        await pilot.press("f5")
        await until(pilot, lambda: "07:58" in screen_text(app))
        text = screen_text(app)
        assert "1,234.50 QAR" in text
        assert "476173******0010" in text
        assert "Trans no   20270115085800000002" in text  # the first one's, whole
        assert "01-14 06:00" in text  # yesterday's shows its date
        await pilot.press("down")
        await until(pilot, lambda: "Declined: Insufficient funds" in screen_text(app))
        await pilot.press("f3")
        await until(pilot, lambda: "reprint" in agent.names())
        reprint = agent.intents[-1]
        assert isinstance(reprint, bp.ReprintIntent)
        assert reprint.trans_no == HISTORY.entries[1].trans_no
        await until(pilot, lambda: "Reprinting" in screen_text(app))
        await pilot.press("escape")
        await until(pilot, lambda: isinstance(app.screen, CheckoutScreen))


async def test_no_reprint_for_a_transaction_without_a_receipt(agent: ScriptedAgent) -> None:
    agent.publish(bp.PrinterEvent(state="ready"))
    app = _app(agent)
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.pause()
        await until(pilot, lambda: "F5 History" in screen_text(app))
        await pilot.press("f5")
        await until(pilot, lambda: "Expired" in screen_text(app))
        for _ in range(5):  # the expired one, sixth: nothing was read, no receipt
            await pilot.press("down")
        await until(pilot, lambda: "Status     Expired" in screen_text(app))
        assert "F3 Reprint" not in screen_text(app)
        await pilot.press("f3")
        await pilot.pause()
        assert "reprint" not in agent.names()


async def test_a_refused_reprint_says_why(agent: ScriptedAgent) -> None:
    agent.publish(bp.PrinterEvent(state="paper_out", pending=1))
    agent.replies["reprint"] = {
        "ok": False,
        "reason": "its receipt is already waiting for the printer",
    }
    app = _app(agent)
    async with app.run_test(size=(120, 40), notifications=True) as pilot:
        await until(pilot, lambda: "F3 Reprint" in screen_text(app))
        await pilot.press("f3")
        await until(pilot, lambda: "already waiting" in screen_text(app))
        reprint = agent.intents[-1]
        assert isinstance(reprint, bp.ReprintIntent)
        assert reprint.trans_no is None  # the last receipt


async def test_history_is_not_offered_while_an_order_is_on_screen(agent: ScriptedAgent) -> None:
    app = _app(agent)
    async with app.run_test(size=(80, 24)) as pilot:
        await until(pilot, lambda: "F5 History" in screen_text(app))
        assert "F3 Reprint" not in screen_text(app)  # no printer: no reprint key
        agent.show(Screen.WAITING_FOR_CARD, order=ORDER)
        await until(pilot, lambda: "Tap, swipe or scan" in screen_text(app))
        assert "F5 History" not in screen_text(app)
        await pilot.press("f5")
        await pilot.pause()
        assert not isinstance(app.screen, HistoryScreen)
        assert "history" not in agent.names()


async def test_empty_history_and_an_agent_error(agent: ScriptedAgent) -> None:
    app = _app(agent)
    agent.replies["history"] = {"entries": []}
    async with app.run_test(size=(80, 24)) as pilot:
        await until(pilot, lambda: "F5 History" in screen_text(app))
        await pilot.press("f5")
        await until(pilot, lambda: "No transactions yet." in screen_text(app))
        await pilot.press("escape")
        agent.replies["history"] = RuntimeError("journal locked")
        await until(pilot, lambda: isinstance(app.screen, CheckoutScreen))
        await pilot.press("f5")
        await until(pilot, lambda: "History not available" in screen_text(app))


async def test_the_printer_on_the_status_bar(agent: ScriptedAgent) -> None:
    app = _app(agent)
    async with app.run_test(size=(120, 40)) as pilot:
        await until(pilot, lambda: "Ready for the next order" in screen_text(app))
        assert "Printer" not in screen_text(app)  # none configured
        agent.publish(bp.PrinterEvent(state="paper_out", pending=2))
        await until(pilot, lambda: "Printer paper out (2 waiting)" in screen_text(app))
        agent.publish(bp.PrinterEvent(state="ready"))
        await until(pilot, lambda: "Printer ready" in screen_text(app))
    # At 80 columns with three readers: a ready printer gives way, a fault shows.
    app = _app(agent)
    async with app.run_test(size=(80, 24)) as pilot:
        await until(pilot, lambda: "Readers 3 ready" in screen_text(app))
        assert "Printer" not in screen_text(app).splitlines()[0]
        agent.publish(bp.PrinterEvent(state="cover_open"))
        await until(pilot, lambda: "Printer cover open" in screen_text(app).splitlines()[0])
