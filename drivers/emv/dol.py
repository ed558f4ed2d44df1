"""Data Object Lists (PDOL, CDOL1): parse, and fill with terminal data (sans-I/O).

Contract:

* ``parse_dol(data)`` returns the ``DolEntry`` (tag, length) pairs of a DOL.
  Raises ``CardDataError`` on a truncated or malformed list.
* ``fill_dol(entries, values)`` concatenates each entry's value, sized by the
  EMV rules below. Never raises for unknown tags (they are zero-filled).
* ``terminal_data(ctx, ...)`` builds the terminal-sourced values (amount,
  currency, date, unpredictable number, TTQ, ...) for one transaction. The
  amount comes from ``ArmContext.amount`` as a ``Decimal`` scaled by
  ``10 ** currency_exponent`` (never a float); raises ``ValueError`` when it is
  negative, has more decimals than the currency, or exceeds n12.

Sizing rules (EMV 4.4 Book 3 §5.4 "Rules for Using a Data Object List";
terminal-side.md §2.1):

* a tag the terminal does not know, or a constructed tag: as many ``00``
  bytes as the entry asks;
* value longer than asked: format n keeps the rightmost bytes (truncates on
  the left), every other format keeps the leftmost bytes;
* value shorter than asked: format n is padded with leading ``00``, format cn
  with trailing ``FF``, every other format with trailing ``00``.
"""

from __future__ import annotations

import enum
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from drivers.base import ArmContext, CardDataError
from drivers.emv.tlv import is_constructed, tag_name

__all__ = [
    "DEFAULT_PROFILE",
    "TAG_FORMATS",
    "DolEntry",
    "Fmt",
    "TerminalProfile",
    "amount_minor",
    "bcd",
    "fill_dol",
    "parse_dol",
    "terminal_data",
]


class Fmt(enum.Enum):
    """EMV data element formats (Book 3 §4.3)."""

    n = "n"  # numeric BCD, right-justified
    cn = "cn"  # compressed numeric, left-justified, padded with F
    b = "b"  # binary
    an = "an"
    ans = "ans"


TAG_FORMATS: dict[int, Fmt] = {
    # Book 3 Annex A1 "Data Elements Dictionary"
    0x5A: Fmt.cn,
    0x5F24: Fmt.n,
    0x5F25: Fmt.n,
    0x5F28: Fmt.n,
    0x5F2A: Fmt.n,
    0x5F34: Fmt.n,
    0x5F36: Fmt.n,
    0x8A: Fmt.an,
    0x95: Fmt.b,
    0x9A: Fmt.n,
    0x9C: Fmt.n,
    0x9F01: Fmt.n,
    0x9F02: Fmt.n,
    0x9F03: Fmt.n,
    0x9F09: Fmt.b,
    0x9F15: Fmt.n,
    0x9F16: Fmt.ans,
    0x9F1A: Fmt.n,
    0x9F1C: Fmt.an,
    0x9F1E: Fmt.an,
    0x9F21: Fmt.n,
    0x9F33: Fmt.b,
    0x9F34: Fmt.b,
    0x9F35: Fmt.n,
    0x9F37: Fmt.b,
    0x9F39: Fmt.n,
    0x9F40: Fmt.b,
    0x9F41: Fmt.n,
    0x9F45: Fmt.b,
    0x9F4C: Fmt.b,
    0x9F4E: Fmt.ans,
    0x9F66: Fmt.b,
    0x9F7C: Fmt.b,
}


@dataclass(frozen=True, slots=True)
class DolEntry:
    tag: int
    length: int

    def __repr__(self) -> str:
        return f"DolEntry({tag_name(self.tag)}, {self.length})"


def parse_dol(data: bytes) -> list[DolEntry]:
    """Tag + one-byte length pairs (Book 3 §5.4). Raises CardDataError."""
    entries: list[DolEntry] = []
    pos = 0
    while pos < len(data):
        start = pos
        tag = data[pos]
        pos += 1
        if tag & 0x1F == 0x1F:
            while True:
                if pos >= len(data) or pos - start >= 4:
                    raise CardDataError(f"DOL: bad tag at offset {start}")
                tag = (tag << 8) | data[pos]
                pos += 1
                if not data[pos - 1] & 0x80:
                    break
        if pos >= len(data):
            raise CardDataError(f"DOL: length of {tag_name(tag)} missing")
        entries.append(DolEntry(tag, data[pos]))
        pos += 1
    return entries


def _sized(tag: int, value: bytes, length: int) -> bytes:
    fmt = TAG_FORMATS.get(tag, Fmt.b)
    if len(value) > length:
        return value[len(value) - length :] if fmt is Fmt.n else value[:length]
    pad = length - len(value)
    if fmt is Fmt.n:
        return b"\x00" * pad + value
    if fmt is Fmt.cn:
        return value + b"\xff" * pad
    return value + b"\x00" * pad


def fill_dol(entries: Sequence[DolEntry], values: Mapping[int, bytes]) -> bytes:
    """The DOL-related data: each entry's value sized by Book 3 §5.4."""
    out = bytearray()
    for entry in entries:
        value = values.get(entry.tag)
        if value is None or is_constructed(entry.tag):
            out += b"\x00" * entry.length
        else:
            out += _sized(entry.tag, value, entry.length)
    return bytes(out)


# --- terminal data ------------------------------------------------------------------


def bcd(number: int, digits: int) -> bytes:
    """``number`` as ``digits`` BCD digits (``digits`` even). Raises ValueError on overflow."""
    text = f"{number:0{digits}d}"
    if number < 0 or len(text) != digits or digits % 2:
        raise ValueError(f"{number} does not fit n{digits}")
    return bytes.fromhex(text)


def amount_minor(amount: Decimal, exponent: int) -> int:
    """``amount`` in minor units. Raises ValueError if negative or not a whole minor unit."""
    scaled = amount.scaleb(exponent)
    if scaled < 0 or scaled != scaled.to_integral_value():
        raise ValueError("amount must be non-negative in whole minor units of its currency")
    return int(scaled)


@dataclass(frozen=True, slots=True)
class TerminalProfile:
    """Fixed terminal parameters sent to the card.

    * ``terminal_type`` 9F35 ``0x21``: merchant-controlled, attended, online
      only (Book 4 Annex A1) - this terminal sends every read online.
    * ``capabilities`` 9F33 ``40 08 00``: byte 1 magnetic stripe; byte 2
      No CVM required (no PIN pad, no signature capture); byte 3 no offline
      data authentication (Book 4 Annex A2).
    * ``additional_capabilities`` 9F40 ``60 00 80 30 01``: goods and
      services; numeric keys; display for attendant and cardholder; code
      table 1 (Book 4 Annex A3).
    * ``ttq`` 9F66 ``22 80 40 00``: byte 1 qVSDC supported (0x20) and
      signature supported (0x02), no MSD, no contact chip, not offline-only,
      no online PIN; byte 2 online cryptogram required (0x80) - this terminal
      authorises everything online; byte 3 consumer device CVM supported
      (0x40), so phones can verify the holder themselves (EMV Contactless
      Book C-3 Annex A.2 / Visa VCPS "Terminal Transaction Qualifiers";
      emv.cool 2020-12-24, terminal-side.md §2.1). The ``36 00 00 00`` seen in
      examples also claims contact chip and online PIN, which this terminal
      does not have.
    """

    terminal_type: int = 0x21
    capabilities: bytes = bytes.fromhex("400800")
    additional_capabilities: bytes = bytes.fromhex("6000803001")
    ttq: bytes = bytes.fromhex("22804000")
    merchant_name: str = "SADAD TERMINAL"
    app_version: bytes = bytes.fromhex("0002")  # 9F09 Terminal Application Version Number


DEFAULT_PROFILE = TerminalProfile()


def terminal_data(
    ctx: ArmContext,
    *,
    now: datetime | None = None,
    unpredictable: bytes | None = None,
    profile: TerminalProfile = DEFAULT_PROFILE,
) -> dict[int, bytes]:
    """Terminal-sourced values for PDOL/CDOL1, keyed by tag, at their natural sizes.

    ``unpredictable`` defaults to 4 bytes of ``os.urandom`` (9F37). Raises ValueError
    for an amount that is not representable as n12 in minor units, or a transaction
    type, currency or country code outside its field.
    """
    if not 0 <= ctx.trans_type <= 0x99:
        raise ValueError("transaction type must be a BCD byte")
    when = now or datetime.now().astimezone()
    minor = amount_minor(ctx.amount, ctx.currency_exponent)
    un = unpredictable if unpredictable is not None else os.urandom(4)
    return {
        0x9F02: bcd(minor, 12),
        0x9F03: bcd(0, 12),
        0x5F2A: bcd(ctx.currency_numeric, 4),
        0x5F36: bcd(ctx.currency_exponent, 2),
        0x9F1A: bcd(ctx.country_numeric, 4),
        0x9A: bytes.fromhex(when.strftime("%y%m%d")),
        0x9F21: bytes.fromhex(when.strftime("%H%M%S")),
        0x9C: bytes((ctx.trans_type,)),  # n2, ArmContext holds it BCD-coded (0x20 = refund)
        0x9F37: un,
        0x95: bytes(5),
        0x9F66: profile.ttq,
        0x9F35: bytes((profile.terminal_type,)),  # n2, BCD-coded
        0x9F33: profile.capabilities,
        0x9F40: profile.additional_capabilities,
        0x9F34: bytes.fromhex("1F0002"),  # CVM Results: No CVM required, successful (Book 4 A4)
        0x9F09: profile.app_version,
        0x9F4E: profile.merchant_name.encode("ascii", "replace"),
    }
