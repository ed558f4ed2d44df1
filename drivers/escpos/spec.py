"""Printer specs: ``escpos:PORT[;baud=N][;width=N]`` to a ``PrinterSpec``.

Contract:

* PORT is checked as a reader's port is (``drivers.registry.check_port``): an
  absolute device path or a URL with an allowed scheme (``spy://`` is refused:
  it would log every receipt). ``baud`` is one of the standard rates
  (``registry.BAUD_RATES``, default 19200, the usual factory setting of
  serial receipt printers); ``width`` is the columns of a normal-size line,
  24..64 (32 on 58 mm paper, 42 or 48 on 80 mm, by font; default 42).
* Keys are case-insensitive, each given at most once; any problem raises
  ``PrinterSpecError`` (a ValueError) saying what is allowed. Specs hold no
  card data, so errors quote them.
* ``str(spec)`` writes every option, and ``parse_printer_spec(str(spec)) ==
  spec``.
"""

from __future__ import annotations

from dataclasses import dataclass

from drivers.registry import ReaderSpecError, check_baud, check_port, parse_options

__all__ = [
    "DEFAULT_BAUD",
    "DEFAULT_WIDTH",
    "KIND",
    "MAX_WIDTH",
    "MIN_WIDTH",
    "PrinterSpec",
    "PrinterSpecError",
    "parse_printer_spec",
]

KIND = "escpos"
DEFAULT_BAUD = 19200
DEFAULT_WIDTH = 42
MIN_WIDTH, MAX_WIDTH = 24, 64


class PrinterSpecError(ValueError):
    """A printer spec string that cannot be used; the text says what is allowed."""


@dataclass(frozen=True, slots=True)
class PrinterSpec:
    port: str
    baud: int = DEFAULT_BAUD
    width: int = DEFAULT_WIDTH

    def __str__(self) -> str:
        return f"{KIND}:{self.port};baud={self.baud};width={self.width}"


def _width(value: str) -> int:
    if not value.isdigit() or not MIN_WIDTH <= int(value) <= MAX_WIDTH:
        raise PrinterSpecError(
            f"width={value!r} must be a column count {MIN_WIDTH}..{MAX_WIDTH} "
            "(32 for 58 mm paper, 42 or 48 for 80 mm)"
        )
    return int(value)


def _baud(value: str) -> int:
    try:
        check_baud(value)
    except ReaderSpecError as exc:
        raise PrinterSpecError(str(exc)) from None
    return int(value)


_OPTIONS = {"baud": _baud, "width": _width}


def parse_printer_spec(spec: str) -> PrinterSpec:
    """``escpos:PORT[;baud=N][;width=N]`` to a ``PrinterSpec``. Raises PrinterSpecError."""
    spec = spec.strip()
    kind, sep, rest = spec.partition(":")
    if not sep or kind.strip().lower() != KIND:
        raise PrinterSpecError(
            f"printer spec {spec!r} must start with {KIND}:; expected "
            f"{KIND}:PORT[;baud=N][;width=N]"
        )
    port, *pairs = rest.split(";")
    port = port.strip()
    try:
        check_port(port)
        options = parse_options(pairs)
    except ReaderSpecError as exc:
        raise PrinterSpecError(str(exc)) from None
    values: dict[str, int] = {}
    for key, value in options.items():
        parse = _OPTIONS.get(key)
        if parse is None:
            raise PrinterSpecError(f"option {key!r} is not known; allowed: baud, width")
        values[key] = parse(value)
    return PrinterSpec(port, **values)
