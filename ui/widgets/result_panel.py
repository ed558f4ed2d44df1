"""The outcome: approved with auth code and card, declined with the reason, ..."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import Vertical
from textual.content import Content
from textual.widgets import Static

from ui.view import CheckoutView
from ui.widgets.amount import Amount

OUTCOME_CLASSES = ("-approved", "-declined", "-cancelled", "-closed", "-expired", "-error")


class ResultPanel(Vertical):
    """``show(view)`` fills it; the outcome is also a CSS class (``-approved``...)."""

    def __init__(self, *, ascii_only: bool = False, id: str | None = None) -> None:
        super().__init__(id=id)
        self.ascii_only = ascii_only

    def compose(self) -> ComposeResult:
        yield Static(id="result-title")
        yield Amount(ascii_only=self.ascii_only, id="result-amount")
        yield Static(id="result-order")
        yield Static(id="result-details")
        yield Static(id="result-message")

    def show(self, view: CheckoutView) -> None:
        result = view.result()
        outcome = f"-{result.outcome}" if result else ""
        for cls in OUTCOME_CLASSES:
            self.set_class(cls == outcome, cls)
        self.query_one("#result-title", Static).update(Content(view.result_title()))
        order = view.order
        self.query_one(Amount).show(order.amount if order else "", order.currency if order else "")
        self.query_one("#result-order", Static).update(Content(view.order_line()))
        self.query_one("#result-details", Static).update(Content("\n".join(view.result_lines())))
        message = view.message()
        msg = self.query_one("#result-message", Static)
        msg.update(Content(message))
        msg.display = bool(message)
