"""What the customer should do now, with a spinner while the agent works."""

from __future__ import annotations

from collections.abc import Callable

from textual.content import Content
from textual.timer import Timer
from textual.widgets import Static

from ui.view import spinner_frame


class Prompt(Static):
    """``show(text, busy)``: busy adds an ASCII spinner driven by ``clock`` (ms)."""

    DEFAULT_CSS = """
    Prompt { height: auto; width: 1fr; text-align: center; text-style: bold; }
    """

    def __init__(self, clock: Callable[[], int], *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.clock = clock
        self.text = ""
        self.busy = False
        self._timer: Timer | None = None

    def on_mount(self) -> None:
        self._timer = self.set_interval(0.125, self._draw, pause=True)

    def show(self, text: str, *, busy: bool = False) -> None:
        self.text, self.busy = text, busy
        if self._timer is not None:
            if busy:
                self._timer.resume()
            else:
                self._timer.pause()
        self._draw()

    def _draw(self) -> None:
        if self.busy and self.text:
            self.update(Content(f"[{spinner_frame(self.clock())}] {self.text}"))
        else:
            self.update(Content(self.text))
