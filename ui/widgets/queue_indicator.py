"""How many orders wait behind the one on screen (hidden when none)."""

from __future__ import annotations

from textual.content import Content
from textual.widgets import Static

from ui.view import CheckoutView


class QueueIndicator(Static):
    DEFAULT_CSS = """
    QueueIndicator {
        height: 1; width: 1fr; text-align: right; color: $text-accent; text-style: bold;
    }
    """

    def show(self, view: CheckoutView) -> None:
        line = view.queue_line()
        self.update(Content(line))
        self.display = bool(line)
