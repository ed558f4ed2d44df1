"""The amount, large, with its currency."""

from __future__ import annotations

from textual.content import Content
from textual.reactive import reactive
from textual.widget import Widget

from ui import bigfont
from ui.view import format_amount


class Amount(Widget):
    """Three rows of big digits with the currency on the last; plain text
    when the terminal is too narrow for them."""

    DEFAULT_CSS = """
    Amount { height: 3; width: 1fr; content-align: center middle; text-style: bold; }
    """

    amount: reactive[str] = reactive("")
    currency: reactive[str] = reactive("")

    def __init__(self, *, ascii_only: bool = False, id: str | None = None) -> None:
        super().__init__(id=id)
        self.ascii_only = ascii_only

    def show(self, amount: str, currency: str) -> None:
        self.amount, self.currency = amount, currency

    def render(self) -> Content:
        if not self.amount:
            return Content("")
        text = format_amount(self.amount)
        rows = bigfont.render(text, ascii_only=self.ascii_only)
        tail = f"  {self.currency}"
        if rows is None or len(rows[0]) + len(tail) > self.size.width:
            return Content(f"{text} {self.currency}")
        pad = " " * len(tail)
        return Content("\n".join((rows[0] + pad, rows[1] + pad, rows[2] + tail)))
