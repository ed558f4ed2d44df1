"""Whether the engine's worker is making progress, for the watchdog
(``sd_notify`` WATCHDOG=1, systemd.service(5) ``WatchdogSec=``).

A step of the worker (one inbox event) may legitimately take long - a
reversal is retried until the gateway acknowledges it - but never long
without a sign of life: each retry and each screen change ``beat``s. A step
that goes ``stall_after`` seconds without one, or an order that could not be
settled after a fault (``stuck``), means the agent must stop pinging the
watchdog: systemd restarts it, and its recovery settles the order.
"""

from __future__ import annotations

import time


class Progress:
    def __init__(self) -> None:
        self._busy_since: float | None = None  # the worker's current step began
        self._last_beat = 0.0
        self.stuck = False

    def step_started(self) -> None:
        self._busy_since = time.monotonic()

    def step_ended(self) -> None:
        self._busy_since = None

    def beat(self) -> None:
        """A long step is still moving."""
        self._last_beat = time.monotonic()

    def stalled(self, stall_after: float, now: float | None = None) -> bool:
        if self.stuck:
            return True
        busy = self._busy_since
        if busy is None:
            return False
        now = time.monotonic() if now is None else now
        return now - max(busy, self._last_beat) > stall_after
