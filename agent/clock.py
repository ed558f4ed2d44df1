"""Time as the engine writes it: wall milliseconds for the wire and the
journal's hops, that never go backwards within one run."""

from __future__ import annotations

import time


def wall_ms() -> int:
    """The wall clock in ms (order deadlines, ``expires_at``, are wall time)."""
    return time.time_ns() // 1_000_000


class Clock:
    """Wall time for the wire, derived from the monotonic clock so hops only
    increase (a clock step mid-sale must not give a negative hop)."""

    def __init__(self) -> None:
        self._wall0 = time.time_ns() // 1_000_000
        self._mono0 = time.monotonic_ns() // 1_000_000

    def ms(self) -> int:
        return self._wall0 + (time.monotonic_ns() // 1_000_000 - self._mono0)
