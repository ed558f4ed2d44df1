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

``display`` is the third, for free text a person reads: any script kept,
nothing that can break a line, move the cursor or reorder the text.

Pure.
"""

from __future__ import annotations

import re
import unicodedata

_DIGIT_RUN = re.compile(r"\d{13,}")
_DIGITS_AHEAD = re.compile(r"\d+")
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


# Bidirectional controls (embeddings, overrides, isolates, marks): text
# from outside could reorder what a cashier reads ("Trojan Source",
# CVE-2021-42574). Right-to-left text itself (Arabic) is kept.
_BIDI_CONTROLS = frozenset(
    "\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"
)


def display(text: str, limit: int) -> str:
    """Free text from outside (an order description, a decline message) as it
    may be journaled and shown: any script, emoji and combining marks kept;
    control and bidi-control characters dropped; whitespace runs made one
    space; card-number-like digit runs masked; at most ``limit`` characters,
    ending in an ellipsis when cut."""
    head = text[: limit * 8]
    tail = _DIGITS_AHEAD.match(text, len(head))  # never cut a card number in two
    out: list[str] = []
    space = False
    for c in head + (tail.group(0) if tail else ""):
        if c.isspace():
            space = bool(out)
            continue
        if c in _BIDI_CONTROLS or not (c.isprintable() or unicodedata.category(c) == "Mn"):
            continue
        if space:
            out.append(" ")
            space = False
        out.append(c)
    clean = mask_digit_runs("".join(out))
    return clean if len(clean) <= limit else clean[: limit - 1].rstrip() + "\u2026"


def safe(text: str, limit: int = 64) -> str:
    """Both: what may be journaled, logged or reported of a text from outside."""
    return printable(mask_digit_runs(text[: limit * 4]), limit)
