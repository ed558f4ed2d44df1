"""A burst of status changes becomes one update, ``STATUS_HOLD`` after its first.

Two statuses follow the terminal's state: the retained MQTT status
(``agent.mqtt.status``) and systemd's ``STATUS=`` line. Both change in
bursts: the change that wakes the checkout (a push) is followed within a
millisecond or two by the order on screen. Sending each change at once would
set the broker and its subscribers (or PID 1) to work while the screen is
still being drawn, and send twice. So the first change of a burst arms a
timer, the changes made during the hold are absorbed, and when it fires the
owner sends whatever is latest then. Whether that differs from what was sent
last is the owner's test (only it knows what "the same" means).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

__all__ = ["STATUS_HOLD", "Coalescer"]

# s a status change waits before it is sent: the push and the order on
# screen that follows it within a millisecond or two are one update.
STATUS_HOLD = 0.01


class Coalescer:
    """Calls ``flush`` once, ``hold`` seconds after the first ``poke()`` of a burst.

    Used on the asyncio loop only: ``poke()`` needs a running loop, and
    ``flush`` runs on it (it should not raise: the loop's exception handler
    would get it).
    """

    def __init__(self, flush: Callable[[], object], hold: float = STATUS_HOLD) -> None:
        self._flush = flush
        self._hold = hold
        self._timer: asyncio.TimerHandle | None = None

    def poke(self) -> None:
        """Something changed: flush at the end of the hold (armed now unless it is)."""
        if self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self._hold, self._due)

    def flush_now(self) -> None:
        """Flush at once; a hold in progress ends here."""
        self.cancel()
        self._flush()

    def cancel(self) -> None:
        """Drop the flush on its way, if any."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _due(self) -> None:
        self._timer = None
        self._flush()
