"""Time left before the order expires, ticking once a second."""

from __future__ import annotations

from collections.abc import Callable

from textual.content import Content
from textual.reactive import reactive
from textual.timer import Timer
from textual.widgets import Static

from ui.view import countdown_text

URGENT_MS = 15_000


class Countdown(Static):
    """``deadline`` is the order's ``expires_at`` (ms since the epoch; 0 hides it).

    The time comes from ``clock`` (ms), so tests can freeze it. It ticks only
    while there is a deadline, and redraws only when the text changes (an idle
    checkout does no work for it).
    """

    DEFAULT_CSS = """
    Countdown { height: 1; width: 1fr; text-align: center; color: $text-muted; }
    Countdown.-urgent { color: $text-warning; text-style: bold; }
    """

    deadline: reactive[int] = reactive(0)

    def __init__(self, clock: Callable[[], int], *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.clock = clock
        self._shown: str | None = None
        self._timer: Timer | None = None

    def on_mount(self) -> None:
        self._timer = self.set_interval(1.0, self.tick, pause=not self.deadline)
        self.tick()

    def watch_deadline(self) -> None:
        if self._timer is not None:
            if self.deadline:
                self._timer.resume()
            else:
                self._timer.pause()
        self.tick()

    def tick(self) -> None:
        now = self.clock()
        text = countdown_text(self.deadline, now)
        if text != self._shown:
            self._shown = text
            self.update(Content(text))
        self.set_class(bool(self.deadline) and self.deadline - now <= URGENT_MS, "-urgent")
