"""JSON as the gateway reads it: numbers keep their exact text.

docs/protocol.md "Common envelope": the signature covers a number exactly as
its JSON text on the wire (``12.50`` stays ``12.50``), so incoming numbers are
parsed into ``WireNumber`` (a Decimal that remembers its text) and outgoing
Decimals are written in plain positional notation. Binary floats are refused
both ways: money never passes through them.

``loads`` is the parser of everything received from the network, whoever
sent it (anyone who can publish on a terminal's orders topic, for one), so it
is strict and bounded, and raises ``ContractError`` and nothing else:

* the bytes must be UTF-8 (no other encoding is sniffed, no byte order mark);
* no duplicate keys: a signer and a reader must see the same value (a JSON
  reader that keeps the last of two would verify one and act on the other);
* no lone surrogates (a ``\\ud800`` escape on its own) in keys or strings: they cannot be
  written back as UTF-8, which the signature is computed over;
* no ``NaN``/``Infinity``; integers of at most ``MAX_INT_DIGITS`` digits,
  other numbers of at most ``MAX_NUMBER_CHARS`` characters whose exponent
  stays within ``MAX_EXPONENT`` (Decimal would take a million digits, or
  ``1e999999999``, and make every later comparison or format costly);
* nesting at most ``MAX_DEPTH`` arrays/objects deep (our messages use 2),
  checked on the text before it is parsed, so that neither the parser nor
  anything downstream that walks the value (``dumps``, the signature's
  canonical string, ``cloud.messages``) recurses anywhere near Python's
  recursion limit.
"""

from __future__ import annotations

import json
import re
from decimal import Decimal, InvalidOperation
from typing import Any

from cloud.errors import ContractError

MAX_DEPTH = 32
MAX_INT_DIGITS = 40
MAX_NUMBER_CHARS = 64
MAX_EXPONENT = 100


class WireNumber(Decimal):
    """A JSON number as received; ``text`` is its exact wire spelling."""

    text: str

    def __new__(cls, text: str) -> WireNumber:
        obj = super().__new__(cls, text)
        obj.text = text
        return obj


def _parse_float(text: str) -> WireNumber:
    if len(text) > MAX_NUMBER_CHARS:
        raise ContractError(f"number of {len(text)} characters is out of range")
    try:
        number = WireNumber(text)
    except InvalidOperation:  # an exponent beyond what Decimal holds
        raise ContractError(f"number {text[:20]!r} is out of range") from None
    if not number.is_finite() or abs(number.adjusted()) > MAX_EXPONENT:
        raise ContractError(f"number {text[:20]!r} is out of range")
    return number


def _parse_int(text: str) -> int | WireNumber:
    # Plain integers stay ints (their text is their str); anything with a
    # leading zero or sign quirk keeps its spelling.
    if len(text.lstrip("-")) > MAX_INT_DIGITS:
        raise ContractError(f"integer of {len(text)} digits is out of range")
    value = int(text)
    return value if str(value) == text else WireNumber(text)


def _refuse_constant(name: str) -> Any:
    raise ContractError(f"{name} is not a number the contract carries")


def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise ContractError(f"duplicate key {_shown(key)}")
            seen.add(key)
    return out


def _shown(text: str) -> str:
    return repr("".join(c if c.isprintable() and c.isascii() else "?" for c in text[:32]))


# A JSON string (possessive: linear, never backtracking), a bracket, or a
# quote that opens a string never closed (the text is invalid from there).
_TOKEN = re.compile(r'"(?:[^"\\]|\\.)*+"|[\[\]{}]|"', re.DOTALL)


def _check_depth(text: str) -> None:
    """Refuse nesting deeper than MAX_DEPTH before the (recursive) parser sees it.

    Brackets inside strings do not count. Linear in the text; most texts have
    too few brackets to need the scan."""
    if text.count("[") + text.count("{") <= MAX_DEPTH:
        return
    depth = 0
    for match in _TOKEN.finditer(text):
        lexeme = match.group()
        if lexeme in ("[", "{"):
            depth += 1
            if depth > MAX_DEPTH:
                raise ContractError(f"nested more than {MAX_DEPTH} levels deep")
        elif lexeme in ("]", "}"):
            depth -= 1
        elif len(lexeme) == 1:  # a quote never closed: the parser refuses the text there
            return


def _check_strings(value: Any) -> None:
    """Every key and string of a parsed value encodable as UTF-8, without recursion."""
    stack: list[Any] = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            _check_text(item)
        elif isinstance(item, dict):
            for key, child in item.items():
                _check_text(key)
                stack.append(child)
        elif isinstance(item, list):
            stack.extend(item)


def _check_text(text: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ContractError(f"string holds a lone surrogate at {exc.start}") from None


def loads(body: bytes | bytearray | str) -> Any:
    """Parse JSON received from outside (see the module docstring): numbers as
    ``int`` or ``WireNumber``. Raises ContractError, and only that."""
    if isinstance(body, bytes | bytearray):
        try:
            text = bytes(body).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ContractError(f"body is not UTF-8 (byte {exc.start})") from None
    elif isinstance(body, str):
        text = body
    else:
        raise ContractError(f"body is {type(body).__name__}, not JSON text")
    if text.startswith("\ufeff"):
        raise ContractError("body starts with a byte order mark")
    _check_depth(text)
    try:
        value = json.loads(
            text,
            parse_float=_parse_float,
            parse_int=_parse_int,
            parse_constant=_refuse_constant,
            object_pairs_hook=_object,
        )
    except ContractError:
        raise
    except RecursionError:  # not reached after _check_depth; kept as the backstop
        raise ContractError(f"nested more than {MAX_DEPTH} levels deep") from None
    except (ValueError, InvalidOperation) as exc:
        raise ContractError(f"body is not valid JSON: {str(exc)[:120]}") from None
    _check_strings(value)
    return value


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

    Raises TypeError for floats and other values the contract does not carry,
    and for nesting deeper than ``MAX_DEPTH`` (so writing a value never
    recurses out of the stack, whoever built it).
    """
    return _dumps(value, 0)


def _dumps(value: Any, depth: int) -> str:
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
    if isinstance(value, dict | list | tuple) and depth >= MAX_DEPTH:
        raise TypeError(f"cannot write a value nested more than {MAX_DEPTH} levels deep")
    if isinstance(value, dict):
        return (
            "{"
            + ",".join(f"{_dumps(str(k), depth)}:{_dumps(v, depth + 1)}" for k, v in value.items())
            + "}"
        )
    if isinstance(value, list | tuple):
        return "[" + ",".join(_dumps(v, depth + 1) for v in value) + "]"
    raise TypeError(f"cannot write {type(value).__name__} on the wire")
