"""The technician PIN check, with a lockout after repeated wrong PINs. Pure.

The app keeps one ``PinGuard`` for its lifetime, so closing and reopening the
setup screen does not reset the count. Time comes from the caller (ms).
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from typing import Literal

MAX_ATTEMPTS = 5
LOCKOUT_MS = 60_000

Verdict = Literal["ok", "wrong", "locked"]


@dataclass
class PinGuard:
    max_attempts: int = MAX_ATTEMPTS
    lockout_ms: int = LOCKOUT_MS
    failures: int = 0
    locked_until: int = 0

    def seconds_locked(self, now_ms: int) -> int:
        """Seconds left of a lockout (0: not locked)."""
        return max(0, -(-(self.locked_until - now_ms) // 1000))

    def check(self, pin: str, expected: str, now_ms: int) -> Verdict:
        """Compare in constant time; ``max_attempts`` wrong PINs in a row
        lock every attempt out for ``lockout_ms``."""
        if self.seconds_locked(now_ms):
            return "locked"
        if pin and hmac.compare_digest(pin.encode(), expected.encode()):
            self.failures = 0
            return "ok"
        self.failures += 1
        if self.failures >= self.max_attempts:
            self.failures = 0
            self.locked_until = now_ms + self.lockout_ms
        return "wrong"
