"""The technician PIN prompt that guards the setup screen."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.content import Content
from textual.message import Message
from textual.widgets import Button, Input, Label, Static


class PinPrompt(Vertical):
    """Posts ``PinPrompt.Submitted`` on Enter or Unlock; ``locked(reason)``
    disables it for good, ``wrong(text)`` shows an error and clears it."""

    class Submitted(Message):
        def __init__(self, pin: str) -> None:
            super().__init__()
            self.pin = pin

    def compose(self) -> ComposeResult:
        yield Static("Setup is for field technicians. Enter the technician PIN.", id="pin-intro")
        with Horizontal(id="pin-row"):
            yield Label("PIN", id="pin-label")
            yield Input(
                password=True,
                restrict=r"[0-9]*",
                max_length=12,
                id="pin",
                compact=True,
                placeholder="4-12 digits",
            )
            yield Button("Unlock", id="unlock", compact=True, variant="primary")
        yield Static(id="pin-error")

    def focus_pin(self) -> None:
        self.query_one("#pin", Input).focus()

    def locked(self, reason: str) -> None:
        """No PIN can open setup now (none configured, config unreadable)."""
        self.query_one("#pin", Input).disabled = True
        self.query_one("#unlock", Button).disabled = True
        self.query_one("#pin-error", Static).update(Content(reason))

    def wrong(self, text: str) -> None:
        pin = self.query_one("#pin", Input)
        pin.value = ""
        self.query_one("#pin-error", Static).update(Content(text))

    def clear_error(self) -> None:
        self.query_one("#pin-error", Static).update("")

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        self.post_message(self.Submitted(event.value))

    def on_button_pressed(self, event: Button.Pressed) -> None:
        event.stop()
        self.post_message(self.Submitted(self.query_one("#pin", Input).value))
