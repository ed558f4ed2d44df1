"""JSON as the gateway reads it: numbers keep their exact text.

PROTOCOL.md "Common envelope": the signature covers a number exactly as its
JSON text on the wire (``12.50`` stays ``12.50``), so incoming numbers are
parsed into ``WireNumber`` (a Decimal that remembers its text) and outgoing
Decimals are written in plain positional notation. Binary floats are refused
both ways: money never passes through them.
"""

from __future__ import annotations

import json
from decimal import Decimal, InvalidOperation
from typing import Any

from cloud.errors import ContractError


class WireNumber(Decimal):
    """A JSON number as received; ``text`` is its exact wire spelling."""

    text: str

    def __new__(cls, text: str) -> WireNumber:
        obj = super().__new__(cls, text)
        obj.text = text
        return obj


def _parse_int(text: str) -> int | WireNumber:
    # Plain integers stay ints (their text is their str); anything with a
    # leading zero or sign quirk keeps its spelling.
    value = int(text)
    return value if str(value) == text else WireNumber(text)


def loads(body: bytes | str) -> Any:
    """Parse JSON, numbers as ``int`` or ``WireNumber``.

    Raises ContractError on text that is not JSON.
    """
    try:
        return json.loads(body, parse_float=WireNumber, parse_int=_parse_int)
    except (ValueError, InvalidOperation, RecursionError) as exc:
        raise ContractError(f"body is not valid JSON: {exc}") from None


def number_text(value: Decimal | int) -> str:
    """A number's wire text: a received number's own spelling, else positional."""
    if isinstance(value, WireNumber):
        return value.text
    if isinstance(value, bool):
        raise TypeError("bool is not a number")
    if isinstance(value, int):
        return str(value)
    if not value.is_finite():
        raise ContractError(f"{value} is not a finite number")
    return format(value, "f")


def dumps(value: Any) -> str:
    """Compact JSON (no spaces, unicode as is, keys in given order).

    Raises TypeError for floats and other values the contract does not carry.
    """
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, int | Decimal):
        return number_text(value)
    if isinstance(value, dict):
        return "{" + ",".join(f"{dumps(str(k))}:{dumps(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list | tuple):
        return "[" + ",".join(dumps(v) for v in value) + "]"
    raise TypeError(f"cannot write {type(value).__name__} on the wire")
