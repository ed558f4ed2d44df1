"""The top line: store and terminal, then the TMS, gateway and reader states."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import Horizontal
from textual.content import Content
from textual.widgets import Static

from ui.view import CheckoutView


class StatusBar(Horizontal):
    """``show(view)`` updates it; healthy states are green, others red."""

    DEFAULT_CSS = """
    StatusBar { height: auto; }
    StatusBar #status-title { width: auto; text-style: bold; }
    StatusBar #status-links { width: 1fr; text-align: right; }
    """

    def compose(self) -> ComposeResult:
        yield Static(id="status-title")
        yield Static(id="status-links")

    def show(self, view: CheckoutView) -> None:
        self.query_one("#status-title", Static).update(Content(view.title_line()))
        parts: list[Content] = []
        for label, state, healthy in view.connection_items():
            style = "$text-success" if healthy else "$text-error"
            parts.append(Content.assemble(f"{label} ", (state, f"bold {style}")))
        if not view.agent_up:
            parts.append(Content.styled("agent offline", "bold $text-error"))
        self.query_one("#status-links", Static).update(Content("  ").join(parts))
