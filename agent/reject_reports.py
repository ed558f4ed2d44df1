"""How often the terminal reports rejected pushes: a token bucket. Pure.

Anyone who can publish on a terminal's orders topic can send it garbage as
fast as the broker forwards it. Each piece is acknowledged and rejected
(docs/protocol.md part C), but a ``rejected`` event - and a journal row - per
piece would turn a flood into a flood of events to the TMS and of writes to
the terminal's flash. So reports are rate-limited: a burst of ``burst``,
then one per ``interval`` seconds; a rejection that finds no token is
counted, and the next report carries the count ("+41 more rejected since
the last report"). When rejections stop while some are still uncounted,
``due`` says when the next token comes, so the caller can ``flush`` then:
nothing rejected goes unreported for long; at a stop, ``drain`` reports what
is still counted, token or not, so no count is lost with the process.

The clock (seconds, monotonic) is passed in.
"""

from __future__ import annotations

from dataclasses import dataclass

BURST = 3
INTERVAL = 2.0


@dataclass(frozen=True, slots=True)
class Report:
    """One ``rejected`` event to send: the rejection it is for (``reason``),
    and how many others were dropped unreported before it (``suppressed``)."""

    reason: str
    suppressed: int

    @property
    def text(self) -> str:
        """The event's ``reason``: ``bad_signature (+41 more rejected since the last report)``."""
        if not self.suppressed:
            return self.reason
        return f"{self.reason} (+{self.suppressed} more rejected since the last report)"


class RejectReports:
    """The token bucket and the count of rejections it held back."""

    def __init__(self, burst: int = BURST, interval: float = INTERVAL) -> None:
        self.burst = burst
        self.interval = interval
        self._tokens = float(burst)
        self._at: float | None = None
        self._suppressed = 0
        self._last_reason = ""

    @property
    def suppressed(self) -> int:
        """Rejections counted but not reported yet."""
        return self._suppressed

    def _refill(self, now: float) -> None:
        if self._at is not None:
            self._tokens = min(self.burst, self._tokens + (now - self._at) / self.interval)
        self._at = now

    def offer(self, reason: str, now: float) -> Report | None:
        """A push was rejected for ``reason``: the report to send now, or None
        (counted for a later report)."""
        self._refill(now)
        if self._tokens >= 1:
            self._tokens -= 1
            report = Report(reason, self._suppressed)
            self._suppressed = 0
            return report
        self._suppressed += 1
        self._last_reason = reason
        return None

    def due(self, now: float) -> float | None:
        """Seconds until ``flush`` can report what is counted; None if nothing is."""
        if not self._suppressed:
            return None
        self._refill(now)
        return max(0.0, (1 - self._tokens) * self.interval)

    def flush(self, now: float) -> Report | None:
        """The report of what is counted, if a token is back; else None."""
        if not self._suppressed:
            return None
        self._refill(now)
        if self._tokens < 1:
            return None
        self._tokens -= 1
        return self.drain()

    def drain(self) -> Report | None:
        """The report of what is counted, now, whether a token is back or not
        (the caller is stopping); None if nothing is."""
        if not self._suppressed:
            return None
        # The last of them stands for itself; the rest are counted.
        report = Report(self._last_reason, self._suppressed - 1)
        self._suppressed = 0
        return report
