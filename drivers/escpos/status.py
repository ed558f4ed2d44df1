"""ESC/POS real-time status (``DLE EOT n``): requests, replies, and what they mean.

Contract (pure: no I/O):

* ``request(n) -> bytes``: ``DLE EOT n`` (0x10 0x04 n) for ``n`` in
  ``REQUESTS`` = 1 (printer status), 2 (offline cause), 4 (roll paper
  sensor). ValueError for another ``n``.
* A reply is one byte whose fixed bits are bit 0 = 0, bit 1 = 1, bit 4 = 1,
  bit 7 = 0 (``is_reply``); a byte without them is not a status reply (a
  stray byte on the line, line noise) and ``parse`` raises
  ``NotAStatusReply`` (a ValueError) for it.
* ``parse(n, byte) -> StatusFacts``: the facts that one reply tells, the
  rest left ``None``. n=1: bit 3 offline. n=2: bit 2 cover open, bit 3 paper
  being fed by the feed button, bit 5 printing stopped at paper end, bit 6
  an error occurred. n=4: bits 2-3 roll paper near end, bits 5-6 roll paper
  end (Epson sets both bits of a pair; either one counts here).
* ``combine(*facts) -> PrinterStatus``: the replies to 1, 2 and 4 merged
  (paper out when either the offline cause or the paper sensor says so).
  ValueError when a fact is missing.
* ``reply_byte(n, status) -> int``: the byte a printer in ``status`` sends
  for request ``n`` (the simulator's side); ``combine`` of the three
  parsed replies gives ``status`` back.
* ``PrinterStatus.state`` is one word, by priority cover_open > paper_out >
  offline > ready: an open cover also stops the paper sensor from being
  trusted, and a printer out of paper or with its cover open is offline
  too, so the most specific cause is the one to show.

Reference: Epson ESC/POS Command Reference, "DLE EOT: Transmit real-time
status" (reference_en/escpos/dle_eot.html). Printers answer it even while
offline or busy, which is why it is the status the driver asks for.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, fields
from typing import Literal

__all__ = [
    "REQUESTS",
    "NotAStatusReply",
    "PrinterStatus",
    "StatusFacts",
    "StatusType",
    "combine",
    "is_reply",
    "parse",
    "reply_byte",
    "request",
]

DLE_EOT = b"\x10\x04"


class StatusType(enum.IntEnum):
    """``DLE EOT n``: the statuses this driver asks for."""

    PRINTER = 1  # "Transmit printer status"
    OFFLINE_CAUSE = 2  # "Transmit offline cause status"
    ROLL_PAPER = 4  # "Transmit roll paper sensor status"


REQUESTS = tuple(StatusType)

FIXED_MASK = 0b1001_0011  # bits 0, 1, 4, 7
FIXED_BITS = 0b0001_0010  # bit 1 and bit 4 set, bits 0 and 7 clear

OFFLINE = 0x08  # n=1 bit 3
COVER_OPEN = 0x04  # n=2 bit 2
FEED_BUTTON = 0x08  # n=2 bit 3
PAPER_END_STOP = 0x20  # n=2 bit 5
ERROR = 0x40  # n=2 bit 6
NEAR_END = 0x0C  # n=4 bits 2-3
PAPER_END = 0x60  # n=4 bits 5-6

State = Literal["ready", "paper_out", "cover_open", "offline"]


class NotAStatusReply(ValueError):
    """A byte that lacks the fixed bits of a DLE EOT reply."""


@dataclass(frozen=True)
class PrinterStatus:
    online: bool
    cover_open: bool
    paper_out: bool
    paper_near_end: bool

    @property
    def state(self) -> State:
        if self.cover_open:
            return "cover_open"
        if self.paper_out:
            return "paper_out"
        if not self.online:
            return "offline"
        return "ready"

    def describe(self) -> str:
        """One line for a screen or a log: "ready", "paper out", "offline, paper near end"."""
        text = self.state.replace("_", " ")
        if self.paper_near_end and self.state in ("ready", "offline"):
            text += ", paper near end"
        return text


@dataclass(frozen=True, slots=True)
class StatusFacts:
    """What one reply tells; ``None`` for what it does not."""

    online: bool | None = None
    cover_open: bool | None = None
    paper_out: bool | None = None
    paper_near_end: bool | None = None


def _kind(n: int) -> StatusType:
    try:
        return StatusType(n)
    except ValueError:
        raise ValueError(f"DLE EOT {n} is not a status this driver reads; use 1, 2 or 4") from None


def request(n: int) -> bytes:
    """``DLE EOT n``. Raises ValueError for ``n`` not in ``REQUESTS``."""
    return DLE_EOT + bytes([_kind(n)])


def is_reply(byte: int) -> bool:
    """True when ``byte`` has the fixed bits of a DLE EOT reply."""
    return 0 <= byte <= 0xFF and byte & FIXED_MASK == FIXED_BITS


def parse(n: int, byte: int) -> StatusFacts:
    """The facts in the reply ``byte`` to ``DLE EOT n``.

    Raises NotAStatusReply for a byte without the fixed bits, ValueError for ``n``."""
    kind = _kind(n)
    if not is_reply(byte):
        raise NotAStatusReply(f"0x{byte:02x} is not a DLE EOT reply")
    if kind is StatusType.PRINTER:
        return StatusFacts(online=not byte & OFFLINE)
    if kind is StatusType.OFFLINE_CAUSE:
        return StatusFacts(
            cover_open=bool(byte & COVER_OPEN), paper_out=bool(byte & PAPER_END_STOP)
        )
    return StatusFacts(paper_near_end=bool(byte & NEAR_END), paper_out=bool(byte & PAPER_END))


def combine(*facts: StatusFacts) -> PrinterStatus:
    """Merge the facts of several replies (a fact true in any of them is true).

    Raises ValueError when no reply told one of the four facts."""
    merged: dict[str, bool] = {}
    for name in (f.name for f in fields(StatusFacts)):
        told = [value for fact in facts if (value := getattr(fact, name)) is not None]
        if not told:
            raise ValueError(f"no status reply tells {name.replace('_', ' ')}")
        # online is the one fact that must hold in every reply that tells it
        merged[name] = all(told) if name == "online" else any(told)
    return PrinterStatus(**merged)


def reply_byte(n: int, status: PrinterStatus) -> int:
    """The reply a printer in ``status`` sends to ``DLE EOT n``. ValueError for ``n``."""
    kind = _kind(n)
    byte = FIXED_BITS
    if kind is StatusType.PRINTER:
        return byte | (0 if status.online else OFFLINE)
    if kind is StatusType.OFFLINE_CAUSE:
        byte |= COVER_OPEN if status.cover_open else 0
        return byte | (PAPER_END_STOP if status.paper_out else 0)
    byte |= NEAR_END if status.paper_near_end else 0
    return byte | (PAPER_END if status.paper_out else 0)
