"""The agent is not reachable: say so, and that we keep trying."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import Vertical
from textual.content import Content
from textual.widgets import Static

from ui.view import CheckoutView


class AgentLostPanel(Vertical):
    """``show(view)``: "connecting" before the first hello, "not running" after."""

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        # Kept, not queried on each event (ui.screens.checkout says why).
        self._title = Static(id="lost-title")
        self._reason = Static(id="lost-reason")
        self._note = Static(id="lost-note")

    def compose(self) -> ComposeResult:
        yield self._title
        yield self._reason
        yield self._note

    def show(self, view: CheckoutView) -> None:
        if view.phase == "connecting":
            title, note = "Connecting to the payment agent...", ""
        else:
            title = "Agent not running - reconnecting"
            note = "Payments in progress are settled when the agent is back."
        self._title.update(Content(title))
        self._reason.update(Content(view.lost_reason))
        self._note.update(Content(note))
