"""The cashier's history and reprint on the checkout, against the scripted
agent: F5 opens the last transactions (only when no order is on screen),
the highlighted one's details follow the cursor, F3 reprints it when it has
a receipt, and the printer's state shows on the status bar."""

from __future__ import annotations

from datetime import UTC, timedelta, timezone

import msgspec
import pytest
from rich.cells import cell_len

from agent import bridge_protocol as bp
from cloud.messages import Screen
from tests.ui.conftest import (
    HISTORY,
    NOW,
    ORDER,
    ScriptedAgent,
    history_entry,
    make_app,
    screen_text,
    until,
)
from ui.app import CheckoutApp
from ui.screens.checkout import CheckoutScreen
from ui.screens.history import HistoryScreen, card_text, clip, detail_lines, time_text


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


async def test_an_order_closes_the_history(agent: ScriptedAgent) -> None:
    app = _app(agent)
    async with app.run_test(size=(80, 24)) as pilot:
        await until(pilot, lambda: "F5 History" in screen_text(app))
        await pilot.press("f5")
        await until(pilot, lambda: "Reference" in screen_text(app))
        agent.show(Screen.WAITING_FOR_CARD, order=ORDER)  # the cashier must see it
        await until(pilot, lambda: "Tap, swipe or scan" in screen_text(app))
        assert isinstance(app.screen, CheckoutScreen)


async def test_a_malformed_history_is_an_error_not_a_crash(agent: ScriptedAgent) -> None:
    app = _app(agent)
    agent.replies["history"] = {"entries": [{"trans_no": 5}]}
    async with app.run_test(size=(80, 24)) as pilot:
        await until(pilot, lambda: "F5 History" in screen_text(app))
        await pilot.press("f5")
        await until(pilot, lambda: "History not available" in screen_text(app))
        assert "F3 Reprint" not in screen_text(app)  # nothing selected to reprint


# ---------------------------------------------------------------- texts, no terminal


@pytest.mark.parametrize(
    ("text", "width", "shown"),
    [
        ("A-1001", 10, "A-1001"),
        ("X" * 200, 10, "XXXXXXXXX~"),
        ("a\tb\x00c\x1b[31m\r\nd\u202ee", 40, "a b c [31m d e"),  # controls, bidi override
        ("طلب رقم ٤٥", 40, "طلب رقم ٤٥"),
        ("微信支付 WeChat", 8, "微信支~"),  # two cells each
        ("😀" * 30, 9, "😀😀😀😀~"),
        ("card 4761731234560010 ok", 40, "card 476173******0010 ok"),
    ],
)
def test_clip_fits_its_cells(text: str, width: int, shown: str) -> None:
    assert clip(text, width) == shown
    assert cell_len(clip(text, width)) <= width


def test_clip_keeps_a_trans_no_whole() -> None:
    assert clip("20270115085800000002", 30, mask=False) == "20270115085800000002"
    assert clip("4761731234560010", 30, mask=False) == "476173******0010"  # a PAN's length
    assert clip("20270115085800000002", 30) == "202701**********0002"


def test_times_in_the_given_zone() -> None:
    doha = timezone(timedelta(hours=3))
    assert time_text(NOW - 60_000, NOW, UTC) == "07:59"
    assert time_text(NOW - 60_000, NOW, doha) == "10:59"
    assert time_text(NOW - 9 * 3_600_000, NOW, UTC) == "01-14 23:00"  # yesterday in UTC
    assert time_text(NOW - 9 * 3_600_000, NOW, doha) == "02:00"  # today in Doha


def test_details_of_an_odd_entry_fit() -> None:
    entry = history_entry(
        1,
        merchant_order_no="طلب " * 60,
        brand="微信支付",
        masked_pan="",
        entry_mode="WALLET",
        reason="rejected\x07\x1b by the wallet " + "!" * 100,
        reference="微" * 100,
    )
    lines = detail_lines(entry, 60)
    assert all(cell_len(line) <= 60 and "\n" not in line for line in lines)
    assert lines[0] == f"Trans no   {entry.trans_no}"
    assert "Card       微信支付" in lines
    assert "Entry      Wallet" in lines
    assert card_text(entry) == "微信支付"
    assert card_text(history_entry(2, masked_pan="", brand="")) == "-"
