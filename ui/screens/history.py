"""The cashier's history: the last transactions, their details, reprint.

"Did my payment go through?" - F5 on the idle checkout opens this screen.
It asks the agent (``history`` intent: the journal's last 50, newest first,
masked card at most) once when it opens, and shows them in a table - time,
amount, status, card - with the highlighted one's details below. F3 (or
``r``) asks for that one's receipt again (``reprint``) when it has one; Esc
goes back; an order arriving closes it (``CheckoutApp.apply_agent_event``).
Nothing here is trusted more than the checkout: every text is cut to fit
(in cells) and long digit runs are masked again (``ui.view.mask_digits``).

Times are shown in ``tz`` (the app's; local by default) against ``now``
(the app's clock), so the snapshot tests pin both.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import datetime, tzinfo
from typing import ClassVar

from rich.cells import cell_len
from textual import on, work
from textual.app import App, ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical
from textual.content import Content
from textual.screen import Screen
from textual.widgets import DataTable, Static

from agent import bridge_protocol as bp
from agent.bridge_client import BridgeClient
from agent.bridge_replies import HistoryEntry, HistoryReply, ReprintReply, reply_data
from ui.view import mask_digits
from ui.widgets.key_hints import KeyHints, working_keys

HISTORY_TIMEOUT = 10.0
STATUS_TEXT = {
    "APPROVED": "Approved",
    "DECLINED": "Declined",
    "CANCELLED": "Cancelled",
    "CLOSED": "Closed by POS",
    "EXPIRED": "Expired",
}


# A run of a card number's length (13-19 digits, ISO/IEC 7812) on its own.
_PAN_LENGTH = re.compile(r"(?<!\d)\d{13,19}(?!\d)")


def clip(text: str, width: int, *, mask: bool = True) -> str:
    """One line of at most ``width`` cells: controls dropped, long digit runs
    masked (``ui.view.mask_digits``; with ``mask=False`` only those of a
    card number's length: a 20-digit ``trans_no`` stays whole). Cells, not
    characters: a wallet's brand in CJK or an emoji takes two each, and a
    line one cell too wide wraps and pushes the details off the screen."""
    flat = " ".join("".join(c if c.isprintable() else " " for c in text).split())
    flat = mask_digits(flat) if mask else _PAN_LENGTH.sub(lambda m: mask_digits(m.group(0)), flat)
    if cell_len(flat) <= width:
        return flat
    kept, used = [], 0
    for char in flat:
        used += cell_len(char)
        if used > width - 1:  # room for the "~" that says it was cut
            break
        kept.append(char)
    return "".join(kept) + "~"


def time_text(at_ms: int, now_ms: int, tz: tzinfo | None) -> str:
    """``14:05`` today, ``12-03 14:05`` another day (in ``tz``)."""
    when = datetime.fromtimestamp(at_ms / 1000, tz)
    today = datetime.fromtimestamp(now_ms / 1000, tz).date()
    return when.strftime("%H:%M" if when.date() == today else "%m-%d %H:%M")


def card_text(entry: HistoryEntry) -> str:
    return entry.masked_pan or entry.brand or "-"


def status_text(entry: HistoryEntry) -> str:
    """ "Approved"; a refund or void says so ("Refund approved"): in the list, at a glance."""
    status = STATUS_TEXT.get(entry.status, "In progress")
    return (
        status
        if entry.trans_type == "sale"
        else f"{entry.trans_type.capitalize()} {status.lower()}"
    )


def detail_lines(entry: HistoryEntry, width: int) -> list[str]:
    """The highlighted transaction, one field per line."""
    rows = [
        ("Trans no", entry.trans_no),
        ("Order", entry.merchant_order_no),
        ("Type", entry.trans_type.capitalize()),
        ("Amount", entry.amount),
        ("Status", status_text(entry) + (f": {entry.reason}" if entry.reason else "")),
        ("Card", " ".join(x for x in (entry.brand, entry.masked_pan) if x) or "-"),
        ("Entry", entry.entry_mode.replace("_", " ").capitalize() or "-"),
        ("Auth code", entry.auth_code or "-"),
        ("Reference", entry.reference or "-"),
    ]
    lines = [f"{'Trans no':<10} {clip(entry.trans_no, width - 11, mask=False)}"]
    return lines + [f"{label:<10} {clip(value, width - 11)}" for label, value in rows[1:]]


class HistoryScreen(Screen[None]):
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "close", "Back", key_display="Esc"),
        Binding("f3,r", "reprint", "Reprint", key_display="F3"),
    ]

    DEFAULT_CSS = """
    HistoryScreen #history-title { dock: top; height: 1; padding: 0 1;
                                   background: $panel; text-style: bold; }
    HistoryScreen #history-table { height: 1fr; }
    HistoryScreen #history-details { height: auto; max-height: 10; padding: 0 1;
                                     border-top: solid $primary; text-wrap: nowrap;
                                     text-overflow: ellipsis; }
    HistoryScreen.ascii #history-details { border-top: ascii $primary; }
    HistoryScreen #history-note { height: auto; padding: 0 1; color: $text-muted; }
    """

    def __init__(
        self,
        client: BridgeClient,
        clock: Callable[[], int],
        tz: tzinfo | None = None,
        *,
        ascii_only: bool = False,
    ) -> None:
        super().__init__(id="history", classes="ascii" if ascii_only else "")
        self.client = client
        self.clock = clock
        self.tz = tz
        self.entries: tuple[HistoryEntry, ...] = ()
        self._title = Static("History: the last transactions", id="history-title")
        self._table: DataTable[str] = DataTable(
            id="history-table", cursor_type="row", zebra_stripes=True
        )
        self._details = Static(id="history-details")
        self._note = Static("Loading...", id="history-note")
        self._keys = KeyHints(id="history-keys")

    def compose(self) -> ComposeResult:
        yield self._title
        with Vertical():
            yield self._table
            yield self._details
            yield self._note
        yield self._keys

    def on_mount(self) -> None:
        self._table.add_columns("Time", "Amount", "Status", "Card")
        self._show_keys()
        self.load()

    def on_resize(self) -> None:
        self._show_details()

    # ------------------------------------------------------------ loading

    @work(exclusive=True, group="history")
    async def load(self) -> None:
        if not self.client.connected:
            self._say("The agent is not running: no history to show.")
            return
        try:
            reply = await self.client.request(
                "history", timeout=HISTORY_TIMEOUT, limit=bp.HISTORY_MAX
            )
        except bp.BridgeError as exc:
            self._say(f"History not available: {exc}")
            return
        if not reply.ok:
            self._say(f"History not available: {reply.error}")
            return
        try:
            self.show_entries(reply_data(reply, HistoryReply).entries)
        except bp.BridgeProtocolError as exc:
            self._say(f"History not available: {exc}")

    def show_entries(self, entries: tuple[HistoryEntry, ...]) -> None:
        self.entries = entries
        self._table.clear()
        now = self.clock()
        for entry in entries:
            self._table.add_row(
                time_text(entry.at_ms, now, self.tz),
                clip(entry.amount, 18),
                status_text(entry),
                clip(card_text(entry), 20),
                key=entry.trans_no,
            )
        if not entries:
            self._say("No transactions yet.")
            return
        self._note.update("")
        self._table.focus()
        self._show_details()

    def _say(self, text: str) -> None:
        self._note.update(Content(text))
        self._details.update("")
        self._show_keys()

    # ------------------------------------------------------------ selection

    @property
    def selected(self) -> HistoryEntry | None:
        row = self._table.cursor_row
        return self.entries[row] if self.entries and 0 <= row < len(self.entries) else None

    @on(DataTable.RowHighlighted)
    def _highlighted(self, _event: DataTable.RowHighlighted) -> None:
        self._show_details()

    def _show_details(self) -> None:
        entry = self.selected
        if entry is None:
            return
        width = max(self.size.width - 2, 20)
        self._details.update(Content("\n".join(detail_lines(entry, width))))
        self._show_keys()

    def _show_keys(self) -> None:
        self._keys.show(working_keys(self))

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "reprint":
            entry = self.selected
            return entry is not None and entry.receipt
        return True

    # ------------------------------------------------------------ keys

    def action_close(self) -> None:
        self.dismiss(None)

    def action_reprint(self) -> None:
        entry = self.selected
        if entry is not None and entry.receipt:
            self.reprint(entry.trans_no)

    @work(group="reprint")
    async def reprint(self, trans_no: str) -> None:
        await reprint_and_tell(self.app, self.client, trans_no)


async def reprint_and_tell(app: App[None], client: BridgeClient, trans_no: str | None) -> None:
    """Ask the agent for a receipt again and say how it went (a notification)."""
    if not client.connected:
        app.notify("Cannot reprint: the agent is not running", severity="error")
        return
    args = {"trans_no": trans_no} if trans_no else {}
    try:
        reply = await client.request("reprint", timeout=HISTORY_TIMEOUT, **args)
        answer = reply_data(reply, ReprintReply) if reply.ok else None
    except bp.BridgeError as exc:
        app.notify(f"Reprint failed: {exc}", severity="error")
        return
    if answer is None:
        app.notify(f"Reprint failed: {reply.error}", severity="error")
    elif answer.ok:
        app.notify(f"Reprinting {clip(answer.trans_no, 24, mask=False)}")
    else:
        app.notify(f"No reprint: {clip(answer.reason, 60)}", severity="warning")
