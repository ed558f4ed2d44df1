"""The agent is not reachable: say so, and that we keep trying."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import Vertical
from textual.content import Content
from textual.widgets import Static

from ui.view import CheckoutView


class AgentLostPanel(Vertical):
    """``show(view)``: "connecting" before the first hello, "not running" after."""

    def compose(self) -> ComposeResult:
        yield Static(id="lost-title")
        yield Static(id="lost-reason")
        yield Static(id="lost-note")

    def show(self, view: CheckoutView) -> None:
        if view.phase == "connecting":
            title, note = "Connecting to the payment agent...", ""
        else:
            title = "Agent not running - reconnecting"
            note = "Payments in progress are settled when the agent is back."
        self.query_one("#lost-title", Static).update(Content(title))
        self.query_one("#lost-reason", Static).update(Content(view.lost_reason))
        self.query_one("#lost-note", Static).update(Content(note))
