"""Backoff schedule and clock for polling and safe retries. Pure, no I/O.

docs/protocol.md part B: a notification may never come, so the POS server polls
``order.query`` until the status is final. ``Backoff`` gives the waits: the
first after ``first`` seconds, each next one ``factor`` times longer up to
``cap``, every one multiplied by a uniform jitter in ``1 ± jitter`` so that
many POS servers do not poll in step. The RNG is passed in; tests seed it.

``Clock`` is what the POS client waits with; tests inject a fake one so no
real multi-second sleep happens.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

_MAX_EXPONENT = 64  # factor ** attempt beyond this is past any cap


@dataclass(frozen=True, slots=True)
class Backoff:
    """Jittered exponential waits: ``first`` x ``factor`` ** n, at most ``cap``.

    Raises ValueError on construction for values that make no schedule.
    """

    first: float = 1.0
    factor: float = 1.6
    cap: float = 5.0
    jitter: float = 0.1

    def __post_init__(self) -> None:
        if not 0 < self.first <= self.cap:
            raise ValueError("need 0 < first <= cap")
        if self.factor < 1:
            raise ValueError("factor must be >= 1")
        if not 0 <= self.jitter < 1:
            raise ValueError("jitter must be in [0, 1)")

    def base(self, attempt: int) -> float:
        """The un-jittered wait before poll number ``attempt`` (0-based)."""
        if attempt < 0:
            raise ValueError("attempt must be >= 0")
        return min(self.cap, self.first * self.factor ** min(attempt, _MAX_EXPONENT))

    def delay(self, attempt: int, rng: random.Random) -> float:
        """``base(attempt)`` times a factor drawn uniformly from ``1 ± jitter``."""
        base = self.base(attempt)
        if not self.jitter:
            return base
        return base * (1.0 + rng.uniform(-self.jitter, self.jitter))

    def delays(self, rng: random.Random) -> Iterator[float]:
        """The endless schedule ``delay(0), delay(1), ...``."""
        attempt = 0
        while True:
            yield self.delay(attempt, rng)
            attempt += 1


POLL = Backoff()  # order.query while waiting: ~1 s, 1.6, 2.6, 4.1, then ~5 s
RETRY = Backoff(first=0.5, factor=2.0, cap=4.0)  # a failed safe call, retried a few times


class Clock(Protocol):
    """Monotonic time and an awaitable sleep."""

    def monotonic(self) -> float: ...

    async def sleep(self, seconds: float) -> None: ...


class SystemClock:
    """The real clock: ``time.monotonic`` and ``asyncio.sleep``."""

    def monotonic(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)
