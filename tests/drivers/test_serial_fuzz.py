"""Property tests over the swipe/scanner parsers, the line framer and reader specs.

Only the drivers' own errors may escape (``ReaderError`` subclasses; ``ReaderSpecError``
for specs), error texts never echo card data, and well-formed input round-trips.
The default run uses a few hundred examples; ``-m slow`` runs 100,000 each.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from drivers.base import CardDataError, CardNotSupported
from drivers.brands import luhn_valid
from drivers.framing import LineFramer
from drivers.magstripe import decode_swipe, parse_swipe, track1_lrc, track2_lrc
from drivers.registry import ReaderSpecError, parse_spec
from drivers.scanner import classify_wallet, decode_scan, parse_menu_reply

FAST = settings(max_examples=200, deadline=None)
SLOW = settings(
    max_examples=100_000,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)

# bytes built from tokens that matter to the parsers, plus raw noise
_TOKENS = [
    b"%", b";", b"+", b"?", b"^", b"=", b"B", b"E", b"\r", b"\n", b"\x02", b"\x03", b"\x1b",
    b"4761739001010119", b"5413330089020011", b"2812101", b"2813", b"TEST/CARD", b"0000", b" ",
]  # fmt: skip
swipe_bytes_st = st.lists(
    st.one_of(st.sampled_from(_TOKENS), st.binary(max_size=4)), max_size=40
).map(b"".join)


def _luhn_fix(body: str) -> str:
    for digit in "0123456789":
        if luhn_valid(body + digit):
            return body + digit
    raise AssertionError("unreachable")


pans = st.text("0123456789", min_size=11, max_size=18).map(_luhn_fix)
names = st.text("ABCDEFGHIJKLMNOPQRSTUVWXYZ /.", min_size=0, max_size=26)
expiries = st.tuples(st.integers(0, 99), st.integers(1, 12)).map(lambda t: f"{t[0]:02d}{t[1]:02d}")
services = st.text("0123456789", min_size=3, max_size=3)


@st.composite
def good_swipes(draw: st.DrawFn) -> tuple[bytes, str, str, str]:
    pan, expiry, service = draw(pans), draw(expiries), draw(services)
    room2 = 40 - len(f";{pan}={expiry}{service}?")
    disc2 = draw(st.text("0123456789", max_size=max(0, room2)))
    name = draw(names)
    room1 = 79 - len(f"%B{pan}^{name}^{expiry}{service}?")
    disc1 = draw(st.text("0123456789ABC ", max_size=max(0, room1)))
    t1 = f"%B{pan}^{name}^{expiry}{service}{disc1}?"
    t2 = f";{pan}={expiry}{service}{disc2}?"
    if draw(st.booleans()):
        t1 += track1_lrc(t1)
        t2 += track2_lrc(t2)
    return (t1 + t2).encode(), pan, expiry, service


def _no_echo(exc: BaseException, secret: str) -> None:
    if len(secret) >= 8:
        assert secret not in str(exc)
        assert secret not in repr(exc)


# -- properties ---------------------------------------------------------------------


def prop_swipe_only_reader_errors(data: bytes) -> None:
    try:
        card = decode_swipe(data)
    except CardDataError as exc:  # any other error fails the property
        digits = "".join(c for c in data.decode("latin-1") if c.isdigit())
        if len(digits) >= 12:
            _no_echo(exc, digits[:12])
    else:
        assert luhn_valid(card.pan)
        assert card.pan not in repr(card)
    parse_swipe(data)  # never raises


def prop_good_swipe_round_trips(swipe: tuple[bytes, str, str, str]) -> None:
    data, pan, expiry, service = swipe
    card = decode_swipe(data)
    assert (card.pan, card.expiry, card.service_code) == (pan, expiry, service)
    assert card.track2 is not None
    assert card.track2.startswith(f"{pan}={expiry}{service}")


def prop_framer_chunking_invariant(data: bytes, cuts: list[int]) -> None:
    whole = LineFramer(prefix=b"P", suffix=b"S", max_len=64).feed(data)
    framer = LineFramer(prefix=b"P", suffix=b"S", max_len=64)
    pieces: list[bytes] = []
    start = 0
    for cut in sorted(c % (len(data) + 1) for c in cuts):
        pieces += framer.feed(data[start:cut])
        start = max(start, cut)
    pieces += framer.feed(data[start:])
    assert pieces == whole
    for message in whole:
        assert message
        assert not set(message) & {0x02, 0x03, 0x0A, 0x0D}
        assert len(message) <= 64


def prop_scan_only_reader_errors(data: bytes, aim: bool) -> None:
    try:
        code = decode_scan(data, aim=aim)
    except (CardDataError, CardNotSupported) as exc:
        text = data.decode("latin-1").strip()
        if len(text) >= 8:
            _no_echo(exc, text)
    else:
        assert code.code.isdigit()
        assert code.code not in repr(code)


def prop_wallet_digits(code: str) -> None:
    try:
        wallet = classify_wallet(code)
    except CardNotSupported as exc:
        _no_echo(exc, code)
        assert not (17 <= len(code) <= 32)
    else:
        assert 16 <= len(code) <= 32
        assert wallet is not None


def prop_menu_reply_never_raises(data: bytes) -> None:
    reply = parse_menu_reply(data, b"TRGMOD")
    if reply is not None:
        assert 0 < reply.consumed <= len(data)


def prop_spec_only_spec_errors(text: str) -> None:
    try:
        spec = parse_spec(text)
    except ReaderSpecError:
        return
    assert parse_spec(str(spec)) == spec


spec_text = st.one_of(
    st.text(max_size=80),
    st.builds(
        lambda kind, port, opts: f"{kind}:{port}" + "".join(f";{o}" for o in opts),
        st.sampled_from(["pn532", "magstripe", "scanner", "x", ""]),
        st.sampled_from(["/dev/ttyUSB0", "loop://", "socket://h:1", "spy://x", "rel", ""]),
        st.lists(
            st.sampled_from(
                ["baud=9600", "baud=7", "model=honeywell", "aim=1", "aim=2", r"prefix=\x0", "x"]
            ),
            max_size=4,
        ),
    ),
)

_CASES: list[tuple[str, Callable[..., None], dict[str, Any]]] = [
    ("swipe_only_reader_errors", prop_swipe_only_reader_errors, {"data": swipe_bytes_st}),
    ("good_swipe_round_trips", prop_good_swipe_round_trips, {"swipe": good_swipes()}),
    (
        "framer_chunking_invariant",
        prop_framer_chunking_invariant,
        {"data": swipe_bytes_st, "cuts": st.lists(st.integers(0, 400), max_size=8)},
    ),
    (
        "scan_only_reader_errors",
        prop_scan_only_reader_errors,
        {
            "data": st.one_of(
                st.binary(max_size=80),
                st.text("0123456789]QC\r ", max_size=40).map(str.encode),
            ),
            "aim": st.booleans(),
        },
    ),
    (
        "wallet_digits",
        prop_wallet_digits,
        {"code": st.text("0123456789", max_size=40)},
    ),
    (
        "menu_reply_never_raises",
        prop_menu_reply_never_raises,
        {
            "data": st.lists(
                st.sampled_from(
                    [b"TRGMOD", b"trgmod", b"0", b"\x05", b"\x06", b"\x15", b".", b"x"]
                ),
                max_size=30,
            ).map(b"".join)
        },
    ),
    ("spec_only_spec_errors", prop_spec_only_spec_errors, {"text": spec_text}),
]


_PARAMS = [case[1:] for case in _CASES]
_IDS = [case[0] for case in _CASES]


def _run(prop: Callable[..., None], strategies: dict[str, Any], config: settings) -> None:
    config(given(**strategies)(prop))()


@pytest.mark.parametrize(
    ("prop", "strategies"), [c[1:] for c in _CASES], ids=[c[0] for c in _CASES]
)
def test_fuzz(prop: Callable[..., None], strategies: dict[str, Any]) -> None:
    _run(prop, strategies, FAST)


@pytest.mark.slow
@pytest.mark.timeout(3600)  # 100,000 examples take minutes per property
@pytest.mark.parametrize(
    ("prop", "strategies"), [c[1:] for c in _CASES], ids=[c[0] for c in _CASES]
)
def test_fuzz_slow(prop: Callable[..., None], strategies: dict[str, Any]) -> None:
    _run(prop, strategies, SLOW)
