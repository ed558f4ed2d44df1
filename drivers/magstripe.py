"""Magnetic stripe tracks and serial swipe-reader output, sans I/O.

Contract: bytes in, frozen dataclasses out; no asyncio, no serial, no logging.
Every error is ``drivers.base.CardDataError`` with a text that holds no card
data; ``repr``/``str`` of every value here shows a masked PAN at most
(PCI DSS 3.3/3.4, DESIGN.md "Card data").

Tracks (ISO/IEC 7813 financial cards; ISO/IEC 7811-2 encoding):

* Track 1, 6-bit alphanumeric, characters 0x20-0x5F, at most 79 characters:
  ``%`` SS, format code ``B``, PAN (<=19 digits), ``^``, name (<=26), ``^``,
  expiry YYMM, service code (3 digits), discretionary data, ``?`` ES, then the
  LRC character.
* Track 2, 5-bit numeric (4 data bits + odd parity), characters 0x30-0x3F, at
  most 40 characters: ``;`` SS, PAN, ``=``, YYMM, service code, discretionary
  digits, ``?`` ES, then the LRC character.
* LRC (ISO/IEC 7811-2): the XOR of the data-bit values of every character
  from SS to ES inclusive (track 1 value = code - 0x20, 6 bits; track 2 value
  = code - 0x30, 4 bits), sent as a character of the same set. The parity bits
  are not visible on a serial link (the reader checks them), so only the LRC is
  verified here, and only when the reader sends it (most do not: MagTek "The
  LRC character is not transmitted"). An LRC candidate is the one character
  right after ES that belongs to the track's character set and is followed by
  the end of the message, a control character or a start sentinel; a start
  sentinel is taken as the LRC only when it equals the expected LRC and is
  itself followed by another start sentinel or the end (so ``?;`` normally
  starts track 2).
* Service code: first digit 2 or 6 means "chip card" (``CardRead.chip_card``).
* The PAN must pass the Luhn check (ISO/IEC 7812-1) and be 12-19 digits.

Serial reader output (terminal-side.md section 3.1):

* ID TECH style: ``[prefix] %T1? ;T2? [;T3?] [suffix] <CR>`` (terminator
  configurable CR, LF, CR/LF), optionally framed ``<STX> ... <ETX>``.
* MagTek style: ``[STX] %T1? ;T2? [+T3?] <CR> [ETX]``, a track that did not
  read is sent as ``%E?`` / ``;E?`` / ``+E?``.

``drivers.framing.LineFramer`` turns the byte stream into messages (STX
starts a message and drops any partial one; CR, LF and ETX end it; a
configured prefix/suffix is removed). ``parse_swipe`` finds the tracks in
one message; ``card_from_swipe`` makes the ``CardRead``; a swipe without one valid track raises
``CardDataError("swipe not read - swipe again")``. A track that fails its
checks is reported in ``Swipe.problems`` (texts without card data) and the
other track is used; tracks 1 and 2 that disagree on PAN or expiry reject
the swipe.
"""

from __future__ import annotations

from dataclasses import dataclass

from drivers.base import CardDataError, CardRead, EntryMode, mask_pan
from drivers.brands import brand_for_pan, luhn_valid

__all__ = [
    "NOT_READ",
    "SWIPE_AGAIN",
    "Swipe",
    "Track1",
    "Track2",
    "card_from_swipe",
    "decode_swipe",
    "parse_swipe",
    "parse_track1",
    "parse_track2",
    "track1_lrc",
    "track2_lrc",
]

TRACK1_MAX = 79
TRACK2_MAX = 40
SWIPE_AGAIN = "swipe not read - swipe again"
NOT_READ = "not read"

_START = "%;+"
_PAN_MIN, _PAN_MAX = 12, 19


def track1_lrc(segment: str) -> str:
    """LRC character for a track 1 segment ``%...?`` (6-bit values, offset 0x20)."""
    lrc = 0
    for char in segment:
        lrc ^= (ord(char) - 0x20) & 0x3F
    return chr(0x20 + lrc)


def track2_lrc(segment: str) -> str:
    """LRC character for a track 2 segment ``;...?`` (4-bit values, offset 0x30)."""
    lrc = 0
    for char in segment:
        lrc ^= (ord(char) - 0x30) & 0x0F
    return chr(0x30 + lrc)


def _in_track1_set(char: str) -> bool:
    return 0x20 <= ord(char) <= 0x5F


def _in_track2_set(char: str) -> bool:
    return 0x30 <= ord(char) <= 0x3F


@dataclass(frozen=True, slots=True, repr=False)
class Track1:
    """A valid ISO/IEC 7813 track 1 (format B). Clear data: keep in memory only."""

    pan: str
    name: str
    expiry: str
    service_code: str
    discretionary: str

    def __repr__(self) -> str:
        return f"Track1(pan={mask_pan(self.pan)})"

    __str__ = __repr__


@dataclass(frozen=True, slots=True, repr=False)
class Track2:
    """A valid ISO/IEC 7813 track 2. Clear data: keep in memory only."""

    pan: str
    expiry: str
    service_code: str
    discretionary: str

    @property
    def equivalent(self) -> str:
        """Track 2 without sentinels: ``PAN=YYMMSSSdiscretionary``."""
        return f"{self.pan}={self.expiry}{self.service_code}{self.discretionary}"

    def __repr__(self) -> str:
        return f"Track2(pan={mask_pan(self.pan)})"

    __str__ = __repr__


@dataclass(frozen=True, slots=True, repr=False)
class Swipe:
    """The tracks found in one reader message. ``problems`` is safe to log."""

    track1: Track1 | None
    track2: Track2 | None
    problems: tuple[str, ...] = ()

    def __repr__(self) -> str:
        return f"Swipe(track1={self.track1!r}, track2={self.track2!r}, problems={self.problems})"

    __str__ = __repr__


def _check_pan(pan: str, track: int) -> None:
    if not (_PAN_MIN <= len(pan) <= _PAN_MAX and pan.isascii() and pan.isdigit()):
        raise CardDataError(f"track {track}: PAN malformed")
    if not luhn_valid(pan):
        raise CardDataError(f"track {track}: PAN check digit (Luhn) fails")


def _split_expiry_service(rest: str, track: int) -> tuple[str, str, str]:
    head = rest[:7]
    if len(head) < 7 or not (head.isascii() and head.isdigit()):
        raise CardDataError(f"track {track}: expiry or service code malformed")
    if not 1 <= int(head[2:4]) <= 12:
        raise CardDataError(f"track {track}: expiry month out of range")
    return head[:4], head[4:7], rest[7:]


def parse_track1(segment: str) -> Track1:
    """Parse ``%B...?`` (sentinels included, LRC excluded). Raises CardDataError."""
    if len(segment) < 2 or segment[0] != "%" or segment[-1] != "?":
        raise CardDataError("track 1: sentinels missing")
    if len(segment) > TRACK1_MAX:
        raise CardDataError("track 1: too long")
    data = segment[1:-1]
    if not all(_in_track1_set(c) and c not in "%?" for c in data):
        raise CardDataError("track 1: invalid character")
    if data[:1] != "B":
        raise CardDataError("track 1: format code is not B")
    parts = data[1:].split("^", 2)
    if len(parts) != 3:
        raise CardDataError("track 1: field separator missing")
    pan, name, rest = parts
    _check_pan(pan, 1)
    if len(name) > 26:
        raise CardDataError("track 1: name too long")
    expiry, service, discretionary = _split_expiry_service(rest, 1)
    return Track1(pan, name.strip(), expiry, service, discretionary)


def parse_track2(segment: str) -> Track2:
    """Parse ``;PAN=...?`` (sentinels included, LRC excluded). Raises CardDataError."""
    if len(segment) < 2 or segment[0] != ";" or segment[-1] != "?":
        raise CardDataError("track 2: sentinels missing")
    if len(segment) > TRACK2_MAX:
        raise CardDataError("track 2: too long")
    data = segment[1:-1]
    if not all(_in_track2_set(c) and c not in ";?" for c in data):
        raise CardDataError("track 2: invalid character")
    pan, sep, rest = data.partition("=")
    if not sep:
        raise CardDataError("track 2: field separator missing")
    _check_pan(pan, 2)
    expiry, service, discretionary = _split_expiry_service(rest, 2)
    if discretionary and not discretionary.isdigit():
        raise CardDataError("track 2: discretionary data not numeric")
    return Track2(pan, expiry, service, discretionary)


@dataclass(frozen=True, slots=True, repr=False)
class _Segment:
    track: int  # 1, 2 or 3
    text: str  # SS..ES
    lrc: str | None
    complete: bool

    def __repr__(self) -> str:
        return f"_Segment(track={self.track}, complete={self.complete})"


def _segments(text: str) -> list[_Segment]:
    """Find ``SS ... ES [LRC]`` segments; characters outside them are skipped."""
    found: list[_Segment] = []
    seen_track2 = False
    i, n = 0, len(text)
    while i < n:
        char = text[i]
        if char not in _START:
            i += 1
            continue
        if char == "%":
            track = 1
        elif char == "+" or seen_track2:
            track = 3
        else:
            track = 2
            seen_track2 = True
        end = text.find("?", i + 1)
        if end < 0:
            found.append(_Segment(track, text[i:], None, complete=False))
            break
        segment = text[i : end + 1]
        i = end + 1
        lrc: str | None = None
        if i < n and track in (1, 2):
            candidate = text[i]
            in_set = _in_track1_set if track == 1 else _in_track2_set
            after = text[i + 1] if i + 1 < n else ""
            boundary = after == "" or after in _START or ord(after) < 0x20
            if in_set(candidate) and boundary:
                if candidate not in _START:
                    lrc = candidate
                else:
                    expected = track1_lrc(segment) if track == 1 else track2_lrc(segment)
                    if candidate == expected and (after == "" or after in _START):
                        lrc = candidate
            if lrc is not None:
                i += 1
        found.append(_Segment(track, segment, lrc, complete=True))
    return found


def parse_swipe(message: bytes) -> Swipe:
    """Find and validate tracks 1 and 2 in one reader message (framing already removed).

    Never raises for bad track content: problems are listed in ``Swipe.problems``.
    Track 3 is recognised (so its sentinel cannot be mistaken) and ignored."""
    text = message.decode("latin-1")
    track1: Track1 | None = None
    track2: Track2 | None = None
    problems: list[str] = []
    for seg in _segments(text):
        if seg.track == 3:
            continue
        already = track1 if seg.track == 1 else track2
        if already is not None:
            problems.append(f"track {seg.track}: repeated, ignored")
            continue
        if not seg.complete:
            problems.append(f"track {seg.track}: end sentinel missing")
            continue
        if seg.text[1:-1] in ("", "E"):
            problems.append(f"track {seg.track}: {NOT_READ}")
            continue
        try:
            if seg.track == 1:
                parsed1 = parse_track1(seg.text)
                if seg.lrc is not None and seg.lrc != track1_lrc(seg.text):
                    raise CardDataError("track 1: LRC mismatch")
                track1 = parsed1
            else:
                parsed2 = parse_track2(seg.text)
                if seg.lrc is not None and seg.lrc != track2_lrc(seg.text):
                    raise CardDataError("track 2: LRC mismatch")
                track2 = parsed2
        except CardDataError as exc:
            problems.append(str(exc))
    if track1 is None and track2 is None and not problems:
        problems.append("no track found")
    return Swipe(track1, track2, tuple(problems))


def card_from_swipe(swipe: Swipe) -> CardRead:
    """The ``CardRead`` for a swipe (track 2 preferred). Raises CardDataError when no
    track is valid (``SWIPE_AGAIN``) or tracks 1 and 2 disagree."""
    t1, t2 = swipe.track1, swipe.track2
    if t2 is not None:
        if t1 is not None and (t1.pan != t2.pan or t1.expiry != t2.expiry):
            raise CardDataError("tracks 1 and 2 disagree - swipe again")
        pan, expiry, service = t2.pan, t2.expiry, t2.service_code
    elif t1 is not None:
        pan, expiry, service = t1.pan, t1.expiry, t1.service_code
    else:
        raise CardDataError(SWIPE_AGAIN)
    return CardRead(
        entry_mode=EntryMode.MAGSTRIPE,
        pan=pan,
        expiry=expiry,
        brand=brand_for_pan(pan),
        track2=t2.equivalent if t2 is not None else None,
        service_code=service,
        cardholder_name=(t1.name or None) if t1 is not None else None,
    )


def decode_swipe(message: bytes) -> CardRead:
    """``card_from_swipe(parse_swipe(message))``. Raises CardDataError."""
    return card_from_swipe(parse_swipe(message))
