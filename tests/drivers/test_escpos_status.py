"""``drivers.escpos.status``: DLE EOT requests and reply bytes, both directions."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from drivers.escpos.status import (
    REQUESTS,
    NotAStatusReply,
    PrinterStatus,
    StatusFacts,
    combine,
    is_reply,
    parse,
    reply_byte,
    request,
)


@pytest.mark.parametrize(
    ("n", "wire"),
    [
        (1, "10 04 01"),  # DLE EOT 1: printer status
        (2, "10 04 02"),  # DLE EOT 2: offline cause
        (4, "10 04 04"),  # DLE EOT 4: roll paper sensor
    ],
)
def test_request(n: int, wire: str) -> None:
    assert request(n) == bytes.fromhex(wire)


@pytest.mark.parametrize("n", [0, 3, 5, 255])
def test_request_refuses_other_statuses(n: int) -> None:
    with pytest.raises(ValueError, match="1, 2 or 4"):
        request(n)


# (n, reply byte, facts); 0x12 is the fixed bits alone (bit 1, bit 4)
PARSE = [
    (1, 0x12, StatusFacts(online=True)),
    (1, 0x16, StatusFacts(online=True)),  # bit 2: drawer kick-out connector, not ours
    (1, 0x1A, StatusFacts(online=False)),  # bit 3: offline
    (1, 0x52, StatusFacts(online=True)),  # bit 6: feed button pushed
    (2, 0x12, StatusFacts(cover_open=False, paper_out=False)),
    (2, 0x16, StatusFacts(cover_open=True, paper_out=False)),  # bit 2: cover open
    (2, 0x1A, StatusFacts(cover_open=False, paper_out=False)),  # bit 3: feed button
    (2, 0x32, StatusFacts(cover_open=False, paper_out=True)),  # bit 5: stopped at paper end
    (2, 0x72, StatusFacts(cover_open=False, paper_out=True)),  # + bit 6: error
    (4, 0x12, StatusFacts(paper_near_end=False, paper_out=False)),
    (4, 0x1E, StatusFacts(paper_near_end=True, paper_out=False)),  # bits 2-3: near end
    (4, 0x16, StatusFacts(paper_near_end=True, paper_out=False)),  # one bit of the pair
    (4, 0x72, StatusFacts(paper_near_end=False, paper_out=True)),  # bits 5-6: paper end
    (4, 0x7E, StatusFacts(paper_near_end=True, paper_out=True)),
]


@pytest.mark.parametrize(("n", "byte", "facts"), PARSE, ids=[f"{n}-{b:02x}" for n, b, _ in PARSE])
def test_parse(n: int, byte: int, facts: StatusFacts) -> None:
    assert parse(n, byte) == facts


BAD = [
    0x00,  # no fixed bits at all
    0xFF,  # bits 0 and 7 set
    0x02,  # bit 4 missing
    0x10,  # bit 1 missing
    0x13,  # bit 0 set
    0x92,  # bit 7 set
    0x0A,  # a line feed echoed back
]


@pytest.mark.parametrize("byte", BAD, ids=[f"{b:02x}" for b in BAD])
@pytest.mark.parametrize("n", REQUESTS)
def test_bytes_without_the_fixed_bits_are_not_replies(n: int, byte: int) -> None:
    assert not is_reply(byte)
    with pytest.raises(NotAStatusReply):
        parse(n, byte)


def test_parse_refuses_other_statuses() -> None:
    with pytest.raises(ValueError, match="1, 2 or 4"):
        parse(3, 0x12)


def test_combine_merges_the_three_replies() -> None:
    status = combine(parse(1, 0x1A), parse(2, 0x12), parse(4, 0x7E))
    assert status == PrinterStatus(
        online=False, cover_open=False, paper_out=True, paper_near_end=True
    )


def test_combine_needs_every_fact() -> None:
    with pytest.raises(ValueError, match="paper near end"):
        combine(parse(1, 0x12), parse(2, 0x12))


STATES = [
    # online, cover open, paper out, near end -> state, describe()
    ((True, False, False, False), "ready", "ready"),
    ((True, False, False, True), "ready", "ready, paper near end"),
    ((False, False, False, False), "offline", "offline"),
    ((False, False, False, True), "offline", "offline, paper near end"),
    ((False, False, True, True), "paper_out", "paper out"),
    ((False, True, False, False), "cover_open", "cover open"),
    ((False, True, True, False), "cover_open", "cover open"),  # cover first
    ((True, False, True, False), "paper_out", "paper out"),
]


@pytest.mark.parametrize(("flags", "state", "text"), STATES)
def test_state_priority_and_description(
    flags: tuple[bool, bool, bool, bool], state: str, text: str
) -> None:
    status = PrinterStatus(*flags)
    assert status.state == state
    assert status.describe() == text


_STATUSES = st.builds(PrinterStatus, st.booleans(), st.booleans(), st.booleans(), st.booleans())


@given(_STATUSES)
def test_reply_bytes_round_trip(status: PrinterStatus) -> None:
    replies = [reply_byte(n, status) for n in REQUESTS]
    assert all(is_reply(byte) for byte in replies)
    assert combine(*(parse(n, byte) for n, byte in zip(REQUESTS, replies, strict=True))) == status


@given(st.sampled_from(REQUESTS), st.integers(0, 255))
def test_parse_accepts_exactly_the_reply_bytes(n: int, byte: int) -> None:
    if byte & 0b1001_0011 == 0b0001_0010:
        parse(n, byte)
    else:
        with pytest.raises(NotAStatusReply):
            parse(n, byte)


_REPLY_BYTES = [byte for byte in range(256) if is_reply(byte)]  # 16 of them


@given(st.sampled_from(REQUESTS), st.sampled_from(_REPLY_BYTES))
def test_a_parsed_reply_is_sent_back_the_same_where_it_has_meaning(n: int, byte: int) -> None:
    """reply_byte(parse(b)) keeps every bit the status reads (others: fixed bits only)."""
    facts = parse(n, byte)
    full = PrinterStatus(
        online=True if facts.online is None else facts.online,
        cover_open=bool(facts.cover_open),
        paper_out=bool(facts.paper_out),
        paper_near_end=bool(facts.paper_near_end),
    )
    assert parse(n, reply_byte(n, full)) == facts
