"""``drivers.escpos.spec``: ``escpos:PORT[;baud=N][;width=N]``."""

from __future__ import annotations

import pytest

from drivers.escpos.spec import PrinterSpec, PrinterSpecError, parse_printer_spec
from drivers.registry import ReaderSpecError, check_baud, check_port, parse_options

GOOD = [
    ("escpos:/dev/ttyUSB1", PrinterSpec("/dev/ttyUSB1", 19200, 42)),
    ("escpos:/dev/ttyUSB1;baud=9600;width=32", PrinterSpec("/dev/ttyUSB1", 9600, 32)),
    ("escpos:/dev/ttyUSB1;width=48", PrinterSpec("/dev/ttyUSB1", 19200, 48)),
    ("  ESCPOS:/dev/ttyS0 ; BAUD=115200 ; ", PrinterSpec("/dev/ttyS0", 115200, 42)),
    ("escpos:socket://10.0.0.5:9100", PrinterSpec("socket://10.0.0.5:9100")),
    ("escpos:loop://;width=24", PrinterSpec("loop://", width=24)),
    ("escpos:/dev/x;width=64", PrinterSpec("/dev/x", width=64)),
]


@pytest.mark.parametrize(("text", "spec"), GOOD)
def test_parse(text: str, spec: PrinterSpec) -> None:
    assert parse_printer_spec(text) == spec


@pytest.mark.parametrize("spec", [spec for _, spec in GOOD])
def test_str_round_trips(spec: PrinterSpec) -> None:
    assert parse_printer_spec(str(spec)) == spec


def test_str_writes_every_option() -> None:
    assert str(PrinterSpec("/dev/ttyUSB1")) == "escpos:/dev/ttyUSB1;baud=19200;width=42"


BAD = [
    ("/dev/ttyUSB1", "must start with escpos:"),
    ("pn532:/dev/ttyUSB1", "must start with escpos:"),
    ("escpos:", "port is empty"),
    ("escpos:ttyUSB1", "absolute device path"),
    ("escpos:spy:///dev/ttyUSB1", "spy://"),
    ("escpos:http://printer/", "scheme 'http' is not allowed"),
    ("escpos:/dev/x;baud=12345", "not a standard rate"),
    ("escpos:/dev/x;baud=fast", "not a standard rate"),
    ("escpos:/dev/x;width=80", "24..64"),
    ("escpos:/dev/x;width=23", "24..64"),
    ("escpos:/dev/x;width=-1", "24..64"),
    ("escpos:/dev/x;speed=9600", "allowed: baud, width"),
    ("escpos:/dev/x;baud=9600;baud=9600", "given twice"),
    ("escpos:/dev/x;baud", "not key=value"),
]


@pytest.mark.parametrize(("text", "message"), BAD)
def test_errors_say_what_is_allowed(text: str, message: str) -> None:
    with pytest.raises(PrinterSpecError, match=message) as info:
        parse_printer_spec(text)
    assert isinstance(info.value, ValueError)
    assert not isinstance(info.value, ReaderSpecError)


def test_registry_checks_are_shared() -> None:
    assert parse_options([" Baud = 9600 ", "", "width=32"]) == {"baud": "9600", "width": "32"}
    with pytest.raises(ReaderSpecError, match="given twice"):
        parse_options(["width=32", "WIDTH=40"])
    with pytest.raises(ReaderSpecError):
        check_port("relative")
    with pytest.raises(ReaderSpecError):
        check_baud("1234")
