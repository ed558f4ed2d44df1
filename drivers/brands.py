"""Card brand from the PAN's issuer identification number, and the Luhn check.

Contract: pure functions over a digit string; nothing here logs or keeps a PAN.

* ``luhn_valid(pan)``: ISO/IEC 7812-1 Annex B check digit (mod 10).
* ``brand_for_pan(pan)``: the ``pay_method_id`` style brand name (docs/protocol.md
  part A: ``Visa``, ``MasterCard``, ``Amex``, ``UnionPay``, ...) from the
  published IIN ranges below, first match wins; ``"Unknown"`` when none
  matches (the agent decides whether an unknown brand may be sent).

IIN ranges (card scheme published ranges, as collected in ISO/IEC 7812
registries and scheme acquirer guides):

=========== ==============================================
Visa        4
MasterCard  51-55, 2221-2720
Amex        34, 37
UnionPay    62, 81
JCB         3528-3589
Discover    6011, 644-649, 65
Diners      300-305, 36, 38-39
=========== ==============================================
"""

from __future__ import annotations

__all__ = ["UNKNOWN_BRAND", "brand_for_pan", "luhn_valid"]

UNKNOWN_BRAND = "Unknown"

# (brand, prefix length, low, high), checked in order.
_IIN_RANGES: tuple[tuple[str, int, int, int], ...] = (
    ("Amex", 2, 34, 34),
    ("Amex", 2, 37, 37),
    ("JCB", 4, 3528, 3589),
    ("Diners", 3, 300, 305),
    ("Diners", 2, 36, 36),
    ("Diners", 2, 38, 39),
    ("Visa", 1, 4, 4),
    ("MasterCard", 2, 51, 55),
    ("MasterCard", 4, 2221, 2720),
    ("Discover", 4, 6011, 6011),
    ("Discover", 3, 644, 649),
    ("Discover", 2, 65, 65),
    ("UnionPay", 2, 62, 62),
    ("UnionPay", 2, 81, 81),
)


def luhn_valid(pan: str) -> bool:
    """True when ``pan`` is all ASCII digits and its Luhn (mod 10) check passes."""
    if not pan or not (pan.isascii() and pan.isdigit()):
        return False
    total = 0
    for index, char in enumerate(reversed(pan)):
        digit = ord(char) - 48
        if index % 2 == 1:
            digit *= 2
            if digit > 9:
                digit -= 9
        total += digit
    return total % 10 == 0


def brand_for_pan(pan: str) -> str:
    """Brand name for a PAN by IIN range; ``"Unknown"`` when no range matches."""
    for brand, length, low, high in _IIN_RANGES:
        head = pan[:length]
        if len(head) == length and head.isdigit() and low <= int(head) <= high:
            return brand
    return UNKNOWN_BRAND
