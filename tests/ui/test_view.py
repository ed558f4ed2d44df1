"""The checkout's display rules, without a terminal: view, big font, PIN guard."""

from __future__ import annotations

import msgspec
import pytest

from agent import bridge_protocol as bp
from agent.bridge_client import AgentLost
from cloud.messages import Screen
from tests.ui.conftest import NOW, ORDER
from ui import bigfont
from ui.app import build_app
from ui.messages import AgentDown, AgentHello, QueueChanged, ScreenChanged, to_message
from ui.view import CheckoutView, countdown_text, format_amount, mask_digits, methods_text


def _hello(screen: bp.ScreenEvent | None = None) -> bp.HelloEvent:
    return bp.HelloEvent(
        terminal=bp.TerminalInfo(sn="T0001", store_name="Demo Coffee"),
        snapshot=bp.Snapshot(
            screen=screen,
            connection=bp.ConnectionEvent(mqtt="connecting", gateway="unreachable"),
            readers=bp.ReadersEvent(readers={"nfc": "fault"}),
            queue=bp.QueueEvent(waiting=1),
        ),
    )


def test_phases_follow_the_agent() -> None:
    v = CheckoutView()

    def phase() -> str:
        return v.phase

    assert phase() == "connecting"
    v.apply(AgentLost(reason="agent socket not found"))
    assert phase() == "lost"
    v.apply(_hello())
    assert (phase(), v.store, v.sn, v.queue) == ("idle", "Demo Coffee", "T0001", 1)
    assert v.connection_items() == [
        ("TMS", "connecting...", False),
        ("Gateway", "unreachable", False),
        ("nfc", "fault", False),
    ]
    v.apply(bp.ScreenEvent(screen=Screen.WAITING_FOR_CONFIRM, order=ORDER))
    assert (phase(), v.can_confirm, v.can_cancel, v.busy) == ("order", True, True, True)
    v.apply(bp.ScreenEvent(screen=Screen.AUTHORIZING, order=ORDER))
    assert (v.can_confirm, v.can_cancel, v.in_progress()) == (False, False, True)
    v.apply(
        bp.ScreenEvent(screen=Screen.RESULT, order=ORDER, result=bp.ResultInfo(outcome="expired"))
    )
    assert (phase(), v.result_title(), v.busy) == ("result", "EXPIRED", False)
    v.apply(AgentLost(reason="gone"))
    assert (phase(), v.queue_line(), v.connection_items()) == ("lost", "", [])
    v.apply(_hello(bp.ScreenEvent(screen=Screen.READING, order=ORDER)))
    assert phase() == "order"  # a restarted UI shows the payment in flight at once


def test_order_texts() -> None:
    v = CheckoutView()
    v.apply(
        bp.ScreenEvent(
            screen=Screen.READING,
            order=ORDER,
            progress="Reading card...",
            card=bp.CardInfo(masked_pan="476173******0010", brand="VISA", entry_mode="tap"),
            message="Card removed too soon - tap again",
        )
    )
    assert v.order_line() == "Sale  -  Order A-1001"
    assert v.prompt() == "Reading card..."
    assert v.card_line() == "VISA 476173******0010 (tap)"
    assert v.message() == "Card removed too soon - tap again"
    v.apply(bp.ScreenEvent(screen=Screen.WAITING_FOR_CARD, order=ORDER))
    assert v.prompt() == "Tap, swipe or scan"


@pytest.mark.parametrize(
    ("result", "lines"),
    [
        (
            bp.ResultInfo(outcome="approved", auth_code="123456", masked_pan="476173******0010"),
            ["Auth code 123456", "Card 476173******0010"],
        ),
        (
            bp.ResultInfo(outcome="declined", reason="Insufficient funds"),
            ["Insufficient funds", "Please try another card"],
        ),
        (
            bp.ResultInfo(outcome="declined", reason="Declined - try another card"),
            ["Declined - try another card"],
        ),
        (bp.ResultInfo(outcome="closed", reason="closed by the POS"), ["closed by the POS"]),
    ],
)
def test_result_lines(result: bp.ResultInfo, lines: list[str]) -> None:
    v = CheckoutView()
    v.apply(bp.ScreenEvent(screen=Screen.RESULT, order=ORDER, result=result))
    assert v.result_lines() == lines


def test_amount_countdown_methods_mask() -> None:
    assert format_amount("1234567.50") == "1,234,567.50"
    assert format_amount("12") == "12"
    assert countdown_text(NOW + 95_000, NOW) == "Expires in 1:35"
    assert countdown_text(NOW + 500, NOW) == "Expires in 0:01"
    assert countdown_text(NOW, NOW) == "Expired"
    assert countdown_text(0, NOW) == ""
    assert methods_text(("card",)) == "Accepted   Card: tap or swipe"
    assert mask_digits("card 4761 7300 0000 0010 read") == "card 476173******0010 read"
    assert mask_digits("order 12345678901") == "order 12345678901"


def test_big_font() -> None:
    rows = bigfont.render("10.50", ascii_only=True)
    assert rows == [
        "     _     _   _ ",
        "  | | |   |_  | |",
        "  | |_| o  _| |_|",
    ]
    box = bigfont.render("1,0")
    assert box is not None
    assert len({len(r) for r in box}) == 1
    assert bigfont.render("12A") is None


def test_messages_are_typed() -> None:
    assert isinstance(to_message(_hello()), AgentHello)
    assert isinstance(to_message(bp.ScreenEvent(screen=Screen.IDLE)), ScreenChanged)
    assert isinstance(to_message(bp.QueueEvent(waiting=2)), QueueChanged)
    assert isinstance(to_message(AgentLost(reason="x")), AgentDown)
    assert to_message(bp.Reply(id="1", ok=True)) is None


def test_command_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SADAD_UI_ASCII", "1")
    monkeypatch.setenv("TERM", "linux")
    app = build_app(["--socket", "/tmp/a.sock", "--allow-quit"])
    assert app.client.path == "/tmp/a.sock"
    assert app.allow_quit
    assert app.ascii_borders
    assert app.ansi_colors
    monkeypatch.setenv("SADAD_UI_ASCII", "0")
    monkeypatch.setenv("TERM", "xterm-256color")
    app = build_app(["--hint", "hello"])
    assert not app.allow_quit
    assert not app.ascii_borders
    assert not app.ansi_colors
    assert app.hint == "hello"


def test_status_items_sum_up_readers_that_do_not_fit() -> None:
    v = CheckoutView()
    v.apply(_hello())
    v.readers = {"nfc": "ready", "msr": "ready", "scanner": "offline"}
    full = v.connection_items()
    assert v.status_items(200) == full
    assert v.status_items(40) == [
        *full[:2],
        ("Readers", "2/3", False),
        ("scanner", "offline", False),
    ]
    v.readers = {"nfc": "ready", "msr": "ready", "scanner": "ready"}
    assert v.status_items(40)[2:] == [("Readers", "3 ready", True)]
    v.readers = {"nfc": "ready"}
    assert v.status_items(10) == v.connection_items()  # one reader: nothing to sum up


def test_the_printer_from_hello_and_events() -> None:
    v = CheckoutView()
    v.apply(_hello())
    assert (v.printer_item(), v.has_printer) == (None, False)  # the agent did not say
    v.apply(bp.PrinterEvent(seq=10, state="none"))
    assert (v.printer_item(), v.has_printer) == (None, False)  # none configured
    v.apply(bp.PrinterEvent(seq=11, state="paper_out", pending=2))
    assert v.printer_item() == ("Printer", "paper out (2 waiting)", False)
    assert v.connection_items()[-1] == v.printer_item()
    v.apply(bp.PrinterEvent(seq=12, state="ready", pending=1))  # printing: no count
    assert (v.printer_item(), v.has_printer) == (("Printer", "ready", True), True)
    v.apply(bp.PrinterEvent(seq=12, state="offline"))  # late: dropped
    assert v.printer_item() == ("Printer", "ready", True)
    v.apply(AgentLost(reason="gone"))
    assert (v.printer_item(), v.has_printer) == (None, False)  # no reprint key then
    hello = _hello()
    snapshot = msgspec.structs.replace(hello.snapshot, printer=bp.PrinterEvent(state="cover_open"))
    v.apply(msgspec.structs.replace(hello, snapshot=snapshot))
    assert v.printer_item() == ("Printer", "cover open", False)


def test_a_printer_fault_always_fits_the_status_bar() -> None:
    v = CheckoutView()
    v.apply(_hello())
    v.apply(bp.ConnectionEvent(seq=10, mqtt="connected", gateway="ok"))
    v.readers = {"nfc": "ready", "msr": "ready", "scanner": "ready"}
    v.printer = bp.PrinterEvent(state="ready")
    full = v.connection_items()
    assert v.status_items(200) == full
    # Short of room: the readers summed up, a ready printer left out.
    assert v.status_items(45)[2:] == [("Readers", "3 ready", True)]
    # A fault stays; the readers' summary gives way when they are all ready.
    v.printer = bp.PrinterEvent(state="offline", pending=3)
    assert v.status_items(45)[2:] == [("Printer", "offline", False)]
    v.readers["scanner"] = "offline"
    assert v.status_items(45)[2:] == [
        ("Readers", "2/3", False),
        ("scanner", "offline", False),
        ("Printer", "offline", False),
    ]
