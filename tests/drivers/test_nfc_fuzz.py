"""Fuzzing the NFC half: arbitrary bytes into the PN532 frame decoder, the simulated chip,
BER-TLV, DOLs and the EMV read. Only the drivers' own errors may escape.

The default run is short; ``pytest -m slow`` runs 100,000 examples per codec (20,000
whole reads of a mutated card)."""

from __future__ import annotations

import asyncio
import contextlib
from datetime import datetime
from decimal import Decimal

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from drivers.base import ArmContext, CardDataError, ReaderError
from drivers.emv import tlv
from drivers.emv.dol import fill_dol, parse_dol
from drivers.emv.read import read_card
from drivers.pn532.frames import (
    Ack,
    BadFrame,
    ErrorFrame,
    Frame,
    FrameDecoder,
    Nack,
    encode_device,
    encode_host,
)
from drivers.sim.cards import MastercardCard, VisaCard
from drivers.sim.pn532 import Cancel, Send, SimPn532

QUICK = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SLOW = settings(max_examples=100_000, deadline=None, suppress_health_check=list(HealthCheck))

chunks = st.lists(st.binary(max_size=80), max_size=12)
no_ff = st.binary(max_size=20).map(lambda b: b.replace(b"\xff", b"\x7f"))  # cannot form 00 FF


def check_decoder(parts: list[bytes]) -> None:
    dec = FrameDecoder()
    for part in parts:
        for event in dec.feed(part):
            assert isinstance(event, Ack | Nack | ErrorFrame | Frame | BadFrame)
    assert dec.pending <= len(b"".join(parts))


def check_tlv(data: bytes) -> None:
    try:
        nodes = tlv.decode(data)
    except CardDataError:
        return
    again = tlv.decode(b"".join(tlv.encode_tlv(n) for n in nodes))
    assert [(n.tag, n.value) for n in again] == [(n.tag, n.value) for n in nodes]


def check_dol(data: bytes) -> None:
    try:
        entries = parse_dol(data)
    except CardDataError:
        return
    filled = fill_dol(entries, {0x9F02: b"\x00\x00\x00\x00\x12\x34", 0x5A: b"\x47\x61"})
    assert len(filled) == sum(e.length for e in entries)


@QUICK
@given(chunks)
def test_decoder_takes_any_bytes(parts: list[bytes]) -> None:
    check_decoder(parts)


@QUICK
@given(st.binary(min_size=1, max_size=264), no_ff, no_ff, st.data())
def test_frame_survives_garbage_and_any_split(
    payload: bytes, before: bytes, after: bytes, data: st.DataObject
) -> None:
    stream = before + encode_device(payload) + after + encode_host(b"\x02")
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=6)))
    dec = FrameDecoder()
    events = []
    for start, end in zip([0, *cuts], [*cuts, len(stream)], strict=True):
        events += dec.feed(stream[start:end])
    frames = [e for e in events if isinstance(e, Frame)]
    assert frames[:1] == [Frame(0xD5, payload, extended=len(payload) > 254)]
    assert frames[-1] == Frame(0xD4, b"\x02")


@QUICK
@given(st.binary(max_size=300))
def test_tlv_decode_only_card_data_error(data: bytes) -> None:
    check_tlv(data)


@QUICK
@given(st.binary(max_size=60))
def test_dol_parse_only_card_data_error(data: bytes) -> None:
    check_dol(data)


host_traffic = st.lists(
    st.one_of(
        st.binary(max_size=40),
        st.binary(min_size=1, max_size=40).map(encode_host),
        st.sampled_from([b"\x4a\x01\x00", b"\x40\x01", b"\x40\x41", b"\x52\x00", b"\x14\x01"]).map(
            encode_host
        ),
        st.tuples(st.sampled_from([b"\x40\x01", b"\x40\x41"]), st.binary(max_size=30)).map(
            lambda t: encode_host(t[0] + t[1])
        ),
    ),
    max_size=15,
)


@QUICK
@given(host_traffic, st.booleans())
def test_sim_chip_takes_any_host_bytes(writes: list[bytes], visa: bool) -> None:
    sim = SimPn532(VisaCard() if visa else MastercardCard(), awake=True, max_data_in=20)
    for data in writes:
        for out in sim.feed(data):
            assert isinstance(out, Send | Cancel)


CTX = ArmContext(Decimal("1.00"), 634, 2)


@QUICK
@given(st.lists(st.binary(max_size=60), max_size=12))
def test_emv_read_on_a_random_card(answers: list[bytes]) -> None:
    script = iter(answers)

    async def exchange(apdu: bytes) -> bytes:
        return next(script, b"\x6a\x82")

    async def run() -> None:
        with contextlib.suppress(ReaderError):
            await read_card(exchange, CTX, now=datetime(2025, 1, 1), unpredictable=bytes(4))

    asyncio.run(run())


mutations = st.lists(
    st.tuples(st.integers(0, 9), st.integers(0, 300), st.integers(0, 255)), min_size=1, max_size=4
)


def check_mutated_read(visa: bool, changes: list[tuple[int, int, int]]) -> None:
    """A real card whose answers get a few bytes changed: deeper paths than random bytes."""
    card = VisaCard() if visa else MastercardCard()
    count = [0]

    async def exchange(apdu: bytes) -> bytes:
        answer = bytearray(card.respond(apdu))
        for index, pos, value in changes:
            if index == count[0] and answer:
                answer[pos % len(answer)] = value
        count[0] += 1
        return bytes(answer)

    async def run() -> None:
        try:
            result = await read_card(exchange, CTX, now=datetime(2025, 1, 1), unpredictable=b"1234")
        except ReaderError:
            return
        assert result.pan.isdigit()
        tlv.decode(result.emv_tlv)

    asyncio.run(run())


@QUICK
@given(st.booleans(), mutations)
def test_emv_read_on_a_mutated_card(visa: bool, changes: list[tuple[int, int, int]]) -> None:
    check_mutated_read(visa, changes)


@pytest.mark.slow
@settings(SLOW, max_examples=20_000)  # a whole read per example: 20k stays within the timeout
@given(st.booleans(), mutations)
def test_emv_read_mutated_slow(visa: bool, changes: list[tuple[int, int, int]]) -> None:
    check_mutated_read(visa, changes)


@pytest.mark.slow
@SLOW
@given(chunks)
def test_decoder_slow(parts: list[bytes]) -> None:
    check_decoder(parts)


@pytest.mark.slow
@SLOW
@given(st.binary(max_size=300))
def test_tlv_slow(data: bytes) -> None:
    check_tlv(data)


@pytest.mark.slow
@SLOW
@given(st.binary(max_size=60))
def test_dol_slow(data: bytes) -> None:
    check_dol(data)
