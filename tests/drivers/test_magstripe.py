"""Track parsing tables and the magstripe driver against the simulated reader on a real pty."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path

import pytest

from drivers.base import ArmContext, CardDataError, CardRead, EntryMode, ReaderOffline
from drivers.brands import brand_for_pan, luhn_valid
from drivers.framing import LineFramer
from drivers.magstripe import (
    SWIPE_AGAIN,
    decode_swipe,
    parse_swipe,
    parse_track1,
    parse_track2,
    track1_lrc,
    track2_lrc,
)
from drivers.magstripe_reader import MagstripeReader
from drivers.sim.magstripe import SIM_SWIPES, MagstripeSim, swipe_bytes
from drivers.sim.pty import PtyPeer
from tests.waiting import async_until

CTX = ArmContext(Decimal("12.50"), 634, 2)
PAN = "4761739001010119"
T1 = f"%B{PAN}^TEST/CARD VISA^2812101123456789?"
T2 = f";{PAN}=2812101987654321?"


def frame(data: bytes) -> list[bytes]:
    return LineFramer().feed(data)


# -- LRC ----------------------------------------------------------------------------


def test_track2_lrc_by_hand() -> None:
    # ";1=?": values B,1,D,F -> B^1=A, A^D=7, 7^F=8 -> '8'
    assert track2_lrc(";1=?") == "8"
    # LRC of a segment plus its LRC character is zero in every bit column
    seg = T2
    assert track2_lrc(seg + track2_lrc(seg)) == "0"


def test_track1_lrc_by_hand() -> None:
    # "%B?": values 05,22,1F -> 05^22=27, 27^1F=38 -> chr(0x20+0x38) = 'X'
    assert track1_lrc("%B?") == "X"
    assert track1_lrc(T1 + track1_lrc(T1)) == " "


# -- single tracks ------------------------------------------------------------------


def test_parse_track1_fields() -> None:
    t1 = parse_track1(T1)
    assert t1.pan == PAN
    assert t1.name == "TEST/CARD VISA"
    assert t1.expiry == "2812"
    assert t1.service_code == "101"
    assert t1.discretionary == "123456789"
    assert PAN not in repr(t1)
    assert "476173******0119" in repr(t1)


def test_parse_track2_fields() -> None:
    t2 = parse_track2(T2)
    assert (t2.pan, t2.expiry, t2.service_code, t2.discretionary) == (
        PAN,
        "2812",
        "101",
        "987654321",
    )
    assert t2.equivalent == f"{PAN}=2812101987654321"
    assert PAN not in str(t2)


@pytest.mark.parametrize(
    ("segment", "message"),
    [
        (f"%A{PAN}^NAME^2812101?", "format code"),
        (f"%B{PAN}NAME2812101?", "separator"),
        (f"%B{PAN[:-1]}8^NAME^2812101?", "Luhn"),
        ("%B12345^NAME^2812101?", "PAN malformed"),
        (f"%B{PAN}^NAME^2813101?", "month"),
        (f"%B{PAN}^NAME^28121?", "expiry or service"),
        (f"%B{PAN}^{'X' * 27}^2812101?", "name too long"),
        (f"%B{PAN}^name^2812101?", "invalid character"),
        (f"%B{PAN}^NAME^2812101{'0' * 60}?", "too long"),
        (f"B{PAN}^NAME^2812101?", "sentinels"),
    ],
)
def test_parse_track1_rejects(segment: str, message: str) -> None:
    with pytest.raises(CardDataError, match=message) as info:
        parse_track1(segment)
    assert PAN not in str(info.value)


@pytest.mark.parametrize(
    ("segment", "message"),
    [
        (f";{PAN}2812101?", "separator"),
        (f";{PAN[:-1]}8=2812101?", "Luhn"),
        (f";{PAN}=2800101?", "month"),
        (f";{PAN}=28121?", "expiry or service"),
        (f";{PAN}=2812101{'1' * 20}?", "too long"),
        (f";{PAN}=2812101:1?", "not numeric"),
        (f";{PAN}A=2812101?", "invalid character"),
        (f"{PAN}=2812101?", "sentinels"),
    ],
)
def test_parse_track2_rejects(segment: str, message: str) -> None:
    with pytest.raises(CardDataError, match=message) as info:
        parse_track2(segment)
    assert PAN not in str(info.value)


# -- whole swipes: formats, LRC, failed tracks --------------------------------------


@pytest.mark.parametrize(
    "wire",
    [
        (T1 + T2 + "\r").encode(),  # ID TECH, CR
        (T1 + T2 + "\r\n").encode(),  # ID TECH, CR LF
        (T1 + T2 + "\n").encode(),  # ID TECH, LF
        b"\x02" + (T1 + T2).encode() + b"\x03",  # ID TECH with STX/ETX
        b"\x02" + (T1 + T2).encode() + b"\r\x03",  # MagTek
        b"\x02\x1b" + (T1 + T2).encode() + b"\r\x03",  # MagTek with ESC
        (T1 + track1_lrc(T1) + T2 + track2_lrc(T2) + "\r").encode(),  # with LRCs
        (T1 + T2 + ";E?\r").encode(),  # track 3 not read
        b"\xff\x00" + (T1 + T2 + "\r").encode(),  # line noise before the SS
    ],
    ids=["cr", "crlf", "lf", "stx-etx", "magtek", "magtek-esc", "lrc", "t3-failed", "noise"],
)
def test_swipe_formats_decode_to_the_same_card(wire: bytes) -> None:
    messages = frame(wire)
    assert len(messages) == 1
    card = decode_swipe(messages[0])
    assert card.entry_mode is EntryMode.MAGSTRIPE
    assert card.pan == PAN
    assert card.expiry == "2812"
    assert card.brand == "Visa"
    assert card.service_code == "101"
    assert card.track2 == f"{PAN}=2812101987654321"
    assert card.cardholder_name == "TEST/CARD VISA"
    assert not card.chip_card


def test_lrc_that_is_a_start_sentinel() -> None:
    # find a track 2 whose LRC is ';' and check both readings of '?;'
    for disc in range(1000):
        seg = f";{PAN}=2812101{disc:03d}?"
        if track2_lrc(seg) == ";":
            break
    else:  # pragma: no cover
        pytest.fail("no segment with LRC ';'")
    # LRC ';' sent, then track 1: the ';' must not swallow track 1 as a "track 3"
    swipe = parse_swipe((seg + ";" + T1).encode())
    assert swipe.track2 is not None
    assert swipe.track1 is not None
    assert swipe.problems == ()
    # no LRC: ';' followed by data starts the next track (track 3 here), no LRC error
    swipe = parse_swipe((seg + ";0123?").encode())
    assert swipe.track2 is not None
    assert swipe.problems == ()


def test_bad_lrc_on_track2_falls_back_to_track1() -> None:
    wrong = chr(ord(track2_lrc(T2)) ^ 1)
    swipe = parse_swipe((T1 + T2 + wrong).encode())
    assert swipe.track2 is None
    assert swipe.track1 is not None
    assert "track 2: LRC mismatch" in swipe.problems
    card = decode_swipe((T1 + T2 + wrong).encode())
    assert card.track2 is None  # no track 2 for the authorization
    assert card.pan == PAN


def test_bad_lrc_on_both_tracks_is_swipe_again() -> None:
    bad1 = chr(ord(track1_lrc(T1)) ^ 1)
    bad2 = chr(ord(track2_lrc(T2)) ^ 1)
    with pytest.raises(CardDataError, match=SWIPE_AGAIN):
        decode_swipe((T1 + bad1 + T2 + bad2).encode())


@pytest.mark.parametrize(
    "message",
    [b"%E?;E?", b"%E?;E?+E?", b";E?", b"%?;?", b"", b"garbage only", b"%B4761"],
    ids=["magtek-both", "magtek-three", "t2-only-failed", "empty-tracks", "empty", "junk", "cut"],
)
def test_no_readable_track(message: bytes) -> None:
    with pytest.raises(CardDataError) as info:
        decode_swipe(message)
    assert str(info.value) == SWIPE_AGAIN


def test_failed_track1_marker_uses_track2() -> None:
    swipe = parse_swipe(("%E?" + T2).encode())
    assert swipe.problems == ("track 1: not read",)
    card = decode_swipe(("%E?" + T2).encode())
    assert card.pan == PAN
    assert card.cardholder_name is None


def test_tracks_that_disagree_are_rejected() -> None:
    other = ";4000000000000002=2812101?"
    with pytest.raises(CardDataError, match="disagree"):
        decode_swipe((T1 + other).encode())


def test_chip_service_code() -> None:
    card = decode_swipe(swipe_bytes("chip").strip())
    assert card.service_code == "201"
    assert card.chip_card


@pytest.mark.parametrize(
    ("pan", "brand"),
    [
        ("4761739001010119", "Visa"),
        ("5413330089020011", "MasterCard"),
        ("2221000000000009", "MasterCard"),
        ("2720990000000007", "MasterCard"),
        ("374245000000124", "Amex"),
        ("341111111111111", "Amex"),
        ("6250940000000001", "UnionPay"),
        ("3530111333300000", "JCB"),
        ("6011000990139424", "Discover"),
        ("36227206271667", "Diners"),
        ("9999999999999995", "Unknown"),
        ("2220990000000000", "Unknown"),
    ],
)
def test_brand_by_iin(pan: str, brand: str) -> None:
    assert brand_for_pan(pan) == brand


def test_luhn() -> None:
    assert luhn_valid("4761739001010119")
    assert not luhn_valid("4761739001010118")
    assert not luhn_valid("")
    assert not luhn_valid("47617390010101a9")
    assert not luhn_valid("٤٧")  # non-ASCII digits are not digits here


@pytest.mark.parametrize("name", sorted(SIM_SWIPES))
def test_every_simulated_swipe_parses_as_documented(name: str) -> None:
    for fmt in ("idtech", "magtek"):
        (message,) = frame(swipe_bytes(name, fmt))
        if name in ("bad",):
            with pytest.raises(CardDataError, match=SWIPE_AGAIN):
                decode_swipe(message)
            continue
        card = decode_swipe(message)
        assert card.chip_card is (name == "chip")
        assert (card.track2 is None) is (name in ("track1only", "badlrc"))


def test_card_read_repr_is_masked() -> None:
    card = decode_swipe((T1 + T2).encode())
    assert isinstance(card, CardRead)
    assert PAN not in repr(card)
    assert "2812101" not in repr(card)


# -- framer -------------------------------------------------------------------------


def test_framer_prefix_suffix_and_partial_input() -> None:
    framer = LineFramer(prefix=b"PRE", suffix=b"END")
    assert framer.feed(b"PRE%B1") == []
    assert framer.pending == 6
    assert framer.feed(b"23?END\r\nPRE\r") == [b"%B123?"]


def test_framer_stx_resynchronises_and_overflow_is_dropped() -> None:
    framer = LineFramer(max_len=8)
    assert framer.feed(b"noise\x02abc\x03") == [b"abc"]
    assert framer.feed(b"0123456789abcdef\rok\r") == [b"ok"]
    assert framer.overflows == 1


def test_framer_discard_current_drops_the_rest() -> None:
    framer = LineFramer()
    framer.feed(b"%B4761")
    framer.discard_current()
    assert framer.feed(b"739001^X^2812?\r") == []
    assert framer.feed(b"next\r") == [b"next"]


# -- the driver over a real pty -----------------------------------------------------


@pytest.fixture
async def peer(tmp_path: Path) -> AsyncIterator[PtyPeer]:
    async with PtyPeer(str(tmp_path / "ttyMAG")) as p:
        yield p


@pytest.fixture
async def reader(peer: PtyPeer) -> AsyncIterator[MagstripeReader]:
    r = MagstripeReader("swipe", peer.link, {"baud": "9600"})
    info = await r.open()
    assert info.kind == "magstripe"
    yield r
    await r.close()


async def test_swipe_while_armed_is_returned(peer: PtyPeer, reader: MagstripeReader) -> None:
    sim = MagstripeSim(peer, card="mastercard", fmt="magtek")
    await reader.arm(CTX)
    await sim.present()
    card = await asyncio.wait_for(reader.next_presentation(), 2)
    assert isinstance(card, CardRead)
    assert card.brand == "MasterCard"
    assert card.track2 is not None


async def test_swipe_while_disarmed_is_discarded(peer: PtyPeer, reader: MagstripeReader) -> None:
    sim = MagstripeSim(peer, card="visa")
    await sim.present()
    await async_until(lambda: reader.discarded == 1)
    await reader.arm(CTX)
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(reader.next_presentation(), 0.2)
    await sim.present("amex")
    card = await asyncio.wait_for(reader.next_presentation(), 2)
    assert isinstance(card, CardRead)
    assert card.brand == "Amex"
    await reader.disarm()
    await sim.present("visa")
    await async_until(lambda: reader.discarded == 2)


async def test_bad_swipe_then_good_swipe(peer: PtyPeer, reader: MagstripeReader) -> None:
    sim = MagstripeSim(peer)
    await reader.arm(CTX)
    await sim.present("bad")
    with pytest.raises(CardDataError, match="swipe again"):
        await asyncio.wait_for(reader.next_presentation(), 2)
    assert reader.armed
    await sim.present("chip")
    card = await asyncio.wait_for(reader.next_presentation(), 2)
    assert isinstance(card, CardRead)
    assert card.chip_card


async def test_chunked_paced_garbage_delivery(tmp_path: Path) -> None:
    async with PtyPeer(
        str(tmp_path / "slow"), chunk=5, pace_baud=38400, garbage_bytes=b"\xff\x00\x80"
    ) as peer:
        reader = MagstripeReader("swipe", peer.link)
        await reader.open()
        try:
            await reader.arm(CTX)
            sim = MagstripeSim(peer, fmt="idtech", lrc=True)
            for name in ("visa", "unionpay"):
                await sim.present(name)
                card = await asyncio.wait_for(reader.next_presentation(), 3)
                assert isinstance(card, CardRead)
                assert card.brand == ("Visa" if name == "visa" else "UnionPay")
        finally:
            await reader.close()


async def test_arming_mid_swipe_discards_that_swipe(peer: PtyPeer, reader: MagstripeReader) -> None:
    data = swipe_bytes("visa")
    await peer.write(data[:20])
    await async_until(lambda: reader.framer.pending > 0)
    await reader.arm(CTX)
    await peer.write(data[20:])
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(reader.next_presentation(), 0.2)
    await peer.write(swipe_bytes("amex"))
    card = await asyncio.wait_for(reader.next_presentation(), 2)
    assert isinstance(card, CardRead)
    assert card.brand == "Amex"


async def test_stale_partial_message_is_dropped(peer: PtyPeer) -> None:
    reader = MagstripeReader("swipe", peer.link, {"stale": "0.1"})
    await reader.open()
    try:
        await reader.arm(CTX)
        await peer.write(b"%B47617390")  # a half swipe, then silence
        await asyncio.sleep(0.3)
        await peer.write(swipe_bytes("visa"))
        card = await asyncio.wait_for(reader.next_presentation(), 2)
        assert isinstance(card, CardRead)
    finally:
        await reader.close()


async def test_no_terminator_mode_ends_on_idle(peer: PtyPeer) -> None:
    reader = MagstripeReader("swipe", peer.link, {"terminator": "none", "idle": "0.05"})
    await reader.open()
    try:
        await reader.arm(CTX)
        await peer.write((T1 + T2).encode())
        card = await asyncio.wait_for(reader.next_presentation(), 2)
        assert isinstance(card, CardRead)
        assert card.pan == PAN
    finally:
        await reader.close()


async def test_unplug_makes_next_presentation_offline(
    peer: PtyPeer, reader: MagstripeReader
) -> None:
    await reader.arm(CTX)
    waiting = asyncio.create_task(reader.next_presentation())
    await asyncio.sleep(0.02)
    peer.unplug()
    with pytest.raises(ReaderOffline):
        await asyncio.wait_for(waiting, 2)
    with pytest.raises(ReaderOffline):
        await reader.probe()
    with pytest.raises(ReaderOffline):
        await reader.arm(CTX)


async def test_open_missing_port_is_offline(tmp_path: Path) -> None:
    reader = MagstripeReader("swipe", str(tmp_path / "none"))
    with pytest.raises(ReaderOffline):
        await reader.open()
    await reader.close()


async def test_next_presentation_requires_arm(reader: MagstripeReader) -> None:
    with pytest.raises(RuntimeError, match="not armed"):
        await reader.next_presentation()


async def test_logs_hold_no_card_data(
    peer: PtyPeer, reader: MagstripeReader, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    sim = MagstripeSim(peer)
    await sim.present("visa")  # disarmed: discarded
    await async_until(lambda: reader.discarded == 1)
    await reader.arm(CTX)
    await sim.present("badlrc")
    await asyncio.wait_for(reader.next_presentation(), 2)
    await sim.present("bad")
    with pytest.raises(CardDataError):
        await asyncio.wait_for(reader.next_presentation(), 2)
    text = caplog.text
    assert "476173******0119" in text
    assert "4761739001010119" not in text
    assert "2812101" not in text
    assert "TEST/CARD" not in text
