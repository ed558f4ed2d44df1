"""Reader specs and the reader factory."""

from __future__ import annotations

import random

import pytest

from drivers.base import Reader
from drivers.magstripe_reader import MagstripeReader
from drivers.registry import (
    KINDS,
    ManagedReader,
    ReaderSpec,
    ReaderSpecError,
    create_reader,
    parse_spec,
)
from drivers.scanner_reader import ScannerReader


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("pn532:/dev/ttyUSB0", ReaderSpec("pn532", "/dev/ttyUSB0", {})),
        (
            "magstripe:/dev/ttyACM0;baud=9600",
            ReaderSpec("magstripe", "/dev/ttyACM0", {"baud": "9600"}),
        ),
        (
            "scanner:socket://127.0.0.1:7000;model=generic",
            ReaderSpec("scanner", "socket://127.0.0.1:7000", {"model": "generic"}),
        ),
        (
            " Scanner:loop://; model=honeywell ; aim=1;",
            ReaderSpec("scanner", "loop://", {"model": "honeywell", "aim": "1"}),
        ),
        (
            r"magstripe:/dev/ttyS0;prefix=\x02;suffix=\r\n;terminator=none",
            ReaderSpec(
                "magstripe",
                "/dev/ttyS0",
                {"prefix": r"\x02", "suffix": r"\r\n", "terminator": "none"},
            ),
        ),
        ("pn532:rfc2217://10.0.0.5:4000;poll_interval=0.1", None),
    ],
)
def test_parse_good_specs(spec: str, expected: ReaderSpec | None) -> None:
    parsed = parse_spec(spec)
    if expected is not None:
        assert parsed == expected
    assert parsed.kind in KINDS
    assert parse_spec(str(parsed)) == parsed


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("/dev/ttyUSB0", "no KIND: prefix.*pn532, magstripe, scanner"),
        ("nfc:/dev/ttyUSB0", "kind 'nfc' is unknown; use one of pn532, magstripe, scanner"),
        ("magstripe:", "port is empty"),
        ("magstripe:ttyUSB0", "absolute device path"),
        ("scanner:spy:///dev/ttyUSB0", "spy:// logs all traffic"),
        ("scanner:http://x", "scheme 'http' is not allowed; use loop://, socket://, rfc2217://"),
        ("magstripe:/dev/ttyS0;baud", "not key=value"),
        ("magstripe:/dev/ttyS0;baud=9601", "not a standard rate"),
        ("magstripe:/dev/ttyS0;baud=9600;baud=2400", "given twice"),
        ("magstripe:/dev/ttyS0;model=generic", "'model' is not known for magstripe; allowed: baud"),
        ("scanner:/dev/ttyS0;model=zebra", "model='zebra' is not allowed; use one of generic"),
        ("scanner:/dev/ttyS0;aim=yes", "aim='yes'"),
        ("scanner:/dev/ttyS0;retrigger=-1", "seconds between"),
        (r"scanner:/dev/ttyS0;prefix=\q", "prefix: bad escape"),
        ("scanner:/dev/ttyS0;2fast=1", "not key=value"),
    ],
)
def test_parse_bad_specs(spec: str, message: str) -> None:
    with pytest.raises(ReaderSpecError, match=message) as info:
        parse_spec(spec)
    assert isinstance(info.value, ValueError)


def test_create_reader_kinds() -> None:
    mag = create_reader("swipe", r"magstripe:/dev/ttyS0;prefix=\x02AB;baud=19200")
    assert isinstance(mag, MagstripeReader)
    assert mag.name == "swipe"
    assert mag.baudrate == 19200
    assert mag.framer.prefix == b"\x02AB"
    scan = create_reader("qr", "scanner:loop://;model=cipherlab;aim=1")
    assert isinstance(scan, ScannerReader)
    assert scan.model.enable == b"E"
    assert scan.aim


def test_create_pn532_is_lazy_and_maps_to_nfc_reader() -> None:
    nfc_reader = pytest.importorskip("drivers.nfc_reader")
    reader = create_reader("tap", "pn532:/dev/ttyUSB0;baud=115200")
    assert isinstance(reader, nfc_reader.Pn532Reader)
    assert isinstance(reader, Reader)
    assert reader.kind == "pn532"


def test_create_reader_bad_spec() -> None:
    with pytest.raises(ReaderSpecError):
        create_reader("x", "magstripe:relative/path")


def test_backoff_is_capped_exponential_with_jitter() -> None:
    reader = create_reader("swipe", "magstripe:/dev/null")
    managed = ManagedReader(
        reader, backoff_initial=0.5, backoff_max=8.0, jitter=0.2, rng=random.Random(7)
    )
    for attempt, base in enumerate([0.5, 1, 2, 4, 8, 8, 8]):
        delay = managed.backoff_delay(attempt)
        assert base * 0.8 <= delay <= base * 1.2
    delays = {round(managed.backoff_delay(3), 6) for _ in range(20)}
    assert len(delays) > 1  # jittered
    assert managed.backoff_delay(10_000) <= 8.0 * 1.2
