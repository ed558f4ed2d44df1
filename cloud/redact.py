"""Text from outside, made safe to keep: printable, short, no card numbers.

Whatever a terminal writes to its journal, a log line, an MQTT event or the
screen may have come from someone else: a hostile push's claimed
``message_id``, a gateway's decline message, a POS's description. Two rules
(docs/protocol.md, "Card data" in DESIGN.md):

* ``mask_digit_runs``: every run of 13 or more digits (a PAN's shape: ISO/IEC
  7812 numbers are 12-19 digits; 12 is the one length a date-time stamp
  also has, so it is left) is masked like a PAN, keeping at most its first
  6 and last 4 digits - never refused, so that a message is always kept;
* ``printable``: ASCII printable characters only (anything else becomes
  ``?``, so no control sequence reaches a terminal or a log viewer), cut
  to ``limit`` characters with ``...``.

Pure.
"""

from __future__ import annotations

import re

_DIGIT_RUN = re.compile(r"\d{13,}")
MIN_HIDDEN = 6


def mask_pan(pan: str) -> str:
    """A PAN (or any digit string) masked: at most the first 6 and last 4
    digits shown, and always at least ``MIN_HIDDEN`` hidden, so a short PAN
    shows fewer (12 digits: first 2, last 4)."""
    shown = max(0, len(pan) - MIN_HIDDEN)
    last = min(4, shown)
    first = min(6, shown - last)
    return pan[:first] + "*" * (len(pan) - first - last) + (pan[len(pan) - last :] if last else "")


def mask_digit_runs(text: str) -> str:
    """``text`` with every run of 13 or more digits masked (``mask_pan``)."""
    return _DIGIT_RUN.sub(lambda m: mask_pan(m.group(0)), text)


def printable(text: str, limit: int = 64) -> str:
    """``text`` as printable ASCII, at most ``limit`` characters."""
    clean = "".join(c if c.isascii() and c.isprintable() else "?" for c in text[: limit + 1])
    return clean if len(clean) <= limit else clean[: max(0, limit - 3)] + "..."


def safe(text: str, limit: int = 64) -> str:
    """Both: what may be journaled, logged or reported of a text from outside."""
    return printable(mask_digit_runs(text[: limit * 4]), limit)
