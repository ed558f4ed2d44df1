"""The top line: store and terminal, then the TMS, gateway and reader states."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import Horizontal
from textual.content import Content
from textual.widgets import Static

from ui.view import CheckoutView


class StatusBar(Horizontal):
    """``show(view)`` updates it; healthy states are green, others red."""

    # One line at any width: the links are summed up to fit (view.status_items)
    # and what still does not fit ends in an ellipsis instead of wrapping.
    DEFAULT_CSS = """
    StatusBar { height: 1; }
    StatusBar #status-title { width: auto; max-width: 50%; text-style: bold;
                              text-wrap: nowrap; text-overflow: ellipsis; }
    StatusBar #status-links { width: 1fr; text-align: right; margin-left: 2;
                              text-wrap: nowrap; text-overflow: ellipsis; }
    """

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        # Kept, not queried on each event (ui.screens.checkout says why).
        self._title = Static(id="status-title")
        self._links = Static(id="status-links")
        self._view: CheckoutView | None = None

    def compose(self) -> ComposeResult:
        yield self._title
        yield self._links

    def on_resize(self) -> None:
        if self._view is not None:
            self.show(self._view)

    def show(self, view: CheckoutView) -> None:
        self._view = view
        title = view.title_line()
        self._title.update(Content(title))
        # Before the first layout the width is 0: draw all, on_resize redraws.
        width = self.content_size.width
        room = width - len(title) - 2 if width else 1_000
        parts: list[Content] = []
        for label, state, healthy in view.status_items(room):
            style = "$text-success" if healthy else "$text-error"
            parts.append(Content.assemble(f"{label} ", (state, f"bold {style}")))
        if not view.agent_up:
            parts.append(Content.styled("agent offline", "bold $text-error"))
        self._links.update(Content("  ").join(parts))
