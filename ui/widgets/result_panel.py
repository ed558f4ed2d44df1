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
        # Kept, not queried on each event (ui.screens.checkout says why).
        self._title = Static(id="result-title")
        self._amount = Amount(ascii_only=ascii_only, id="result-amount")
        self._order = Static(id="result-order")
        self._details = Static(id="result-details")
        self._message = Static(id="result-message")

    def compose(self) -> ComposeResult:
        yield self._title
        yield self._amount
        yield self._order
        yield self._details
        yield self._message

    def show(self, view: CheckoutView) -> None:
        result = view.result()
        outcome = f"-{result.outcome}" if result else ""
        for cls in OUTCOME_CLASSES:
            self.set_class(cls == outcome, cls)
        self._title.update(Content(view.result_title()))
        order = view.order
        self._amount.show(order.amount if order else "", order.currency if order else "")
        self._order.update(Content(view.order_line()))
        self._details.update(Content("\n".join(view.result_lines())))
        message = view.message()
        self._message.update(Content(message))
        self._message.display = bool(message)
