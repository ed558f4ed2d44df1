"""Capped exponential backoff with "equal jitter" for reconnect loops.

Contract: ``Backoff(base, cap, rng).next()`` returns the delay in seconds
before retry number ``n`` (``n`` counts calls since the last ``reset()``):

    ceiling(n) = min(cap, base * 2**n)
    delay(n)   = uniform(ceiling(n) / 2, ceiling(n))

so the window doubles until it reaches ``cap`` (never exceeded) and every
delay is at least half the window. Pure: no clock, no asyncio; the caller
sleeps.

Why equal jitter: a fleet of terminals that lose the same broker at the same
moment must not reconnect in lock-step (paho's built-in reconnect doubles a
fixed delay with no jitter), and the half-window floor keeps one terminal from
hammering a broker that refuses it with near-zero "full jitter" delays
(AWS Architecture Blog, "Exponential Backoff And Jitter", 2015).
"""

from __future__ import annotations

import random


class Backoff:
    """See the module docstring. Raises ValueError for a base or cap that is not positive."""

    def __init__(
        self, base: float = 1.0, cap: float = 60.0, rng: random.Random | None = None
    ) -> None:
        if base <= 0 or cap <= 0:
            raise ValueError("backoff base and cap must be positive")
        self.base = base
        self.cap = max(cap, base)
        self._rng = rng or random.Random()
        self.attempt = 0

    def ceiling(self, attempt: int) -> float:
        """The window for retry number ``attempt`` (0-based)."""
        # 2**attempt overflows float only past ~1024; stop doubling once capped.
        if attempt >= 64:
            return self.cap
        return min(self.cap, self.base * 2.0**attempt)

    def next(self) -> float:
        """The delay before the next retry; advances the attempt counter."""
        high = self.ceiling(self.attempt)
        self.attempt += 1
        return self._rng.uniform(high / 2, high)

    def reset(self) -> None:
        """Start again from ``base`` (after a connection that proved stable)."""
        self.attempt = 0
