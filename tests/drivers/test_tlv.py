"""BER-TLV (EMV Book 3 Annex B) and DOL filling (Book 3 §5.4)."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

import pytest

from drivers.base import ArmContext, CardDataError
from drivers.emv import tlv
from drivers.emv.dol import (
    DolEntry,
    TerminalProfile,
    amount_minor,
    bcd,
    fill_dol,
    parse_dol,
    terminal_data,
)
from drivers.emv.tlv import Tlv


def h(text: str) -> bytes:
    return bytes.fromhex(text.replace(" ", ""))


# A PPSE answer with two applications (the case pyemv loses one of).
PPSE = h(
    "6F 31 84 0E 325041592E5359532E4444463031"
    " A5 1F BF0C 1C"
    " 61 0C 4F 07 A0000000031010 87 01 02"
    " 61 0C 4F 07 A0000000041010 87 01 01"
)


def test_decode_nested_with_duplicates() -> None:
    nodes = tlv.decode(PPSE)
    assert [n.tag for n in nodes] == [0x6F]
    apps = tlv.find_all(nodes, 0x61)
    assert len(apps) == 2
    aids = [tlv.find(app.children, 0x4F) for app in apps]
    assert [a.value.hex().upper() for a in aids if a] == ["A0000000031010", "A0000000041010"]
    assert tlv.find(nodes, 0xBF0C) is not None
    assert tlv.find(nodes, 0x9F38) is None
    assert tlv.primitives(nodes)[0x87] == b"\x02"  # first occurrence wins


def test_multibyte_tags() -> None:
    nodes = tlv.decode(h("9F26 08 1122334455667788 DF9A03 01 AA 5F24 03 281231"))
    assert [n.tag for n in nodes] == [0x9F26, 0xDF9A03, 0x5F24]
    assert not nodes[0].constructed
    assert tlv.is_constructed(0xBF0C)
    assert tlv.is_constructed(0x77)
    assert not tlv.is_constructed(0x9F38)


@pytest.mark.parametrize(
    ("length_field", "size"), [("7F", 127), ("8180", 128), ("820100", 256), ("83000102", 258)]
)
def test_long_length_forms(length_field: str, size: int) -> None:
    data = h("90" + length_field) + bytes(size)
    (node,) = tlv.decode(data)
    assert len(node.value) == size
    if size >= 128:
        # encode uses the shortest form
        assert tlv.encode(0x90, bytes(size))[1] == 0x80 | ((size.bit_length() + 7) // 8)


def test_padding_between_objects_is_skipped() -> None:
    data = h("00 00 5A 08 4761739001010010 FF FF 00 70 06 00 5F34 01 01 FF 00")
    nodes = tlv.decode(data)
    assert [n.tag for n in nodes] == [0x5A, 0x70]
    assert [c.tag for c in nodes[1].children] == [0x5F34]


def test_empty_value_and_empty_input() -> None:
    assert tlv.decode(b"") == []
    (node,) = tlv.decode(h("8300"))
    assert node.value == b""


def test_encode_roundtrip() -> None:
    nodes = tlv.decode(PPSE)
    assert tlv.encode_tlv(nodes[0]) == PPSE
    built = tlv.encode(0x77, [Tlv(0x82, h("2000")), Tlv(0x9F36, h("0001"))])
    assert built == h("77 09 82 02 2000 9F36 02 0001")
    assert tlv.encode_tag(0xDF9A03) == h("DF9A03")
    with pytest.raises(ValueError, match="length too large"):
        tlv.encode_length(1 << 32)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ("5A 08 4761", "runs past the end"),
        ("9F", "tag truncated"),
        ("9F 81 81 81 81 01 00", "tag longer"),
        ("5A", "length of 5A PAN missing"),
        ("5A 80", "bad length form 0x80"),
        ("5A 85 0000000001 00", "bad length form 0x85"),
        ("5A 82 01", "truncated"),
        ("70 04 5A 08 4761", "runs past the end"),
    ],
)
def test_bad_input_raises_card_data_error(data: str, message: str) -> None:
    with pytest.raises(CardDataError, match=message) as info:
        tlv.decode(h(data))
    assert "4761" not in str(info.value)


def test_nesting_is_bounded() -> None:
    data = b""
    for _ in range(40):
        data = tlv.encode(0x70, data)
    with pytest.raises(CardDataError, match="nested deeper"):
        tlv.decode(data)


def test_repr_never_shows_values() -> None:
    (node,) = tlv.decode(h("57 11 4761739001010010D28122011234567890"))
    assert repr(node) == str(node) == "Tlv(57 Track 2 Equivalent Data, len=17)"


# --- DOL ----------------------------------------------------------------------------------


VISA_PDOL = h("9F66 04 9F02 06 9F03 06 9F1A 02 95 05 5F2A 02 9A 03 9C 01 9F37 04")


def test_parse_dol() -> None:
    entries = parse_dol(VISA_PDOL)
    assert entries[0] == DolEntry(0x9F66, 4)
    assert [e.tag for e in entries][-1] == 0x9F37
    assert sum(e.length for e in entries) == 33
    assert parse_dol(b"") == []
    with pytest.raises(CardDataError, match="length of 9F37"):
        parse_dol(h("9F37"))
    with pytest.raises(CardDataError, match="bad tag"):
        parse_dol(h("9F"))


@pytest.mark.parametrize(
    ("tag", "value", "length", "expected"),
    [
        (0x9F02, "000000001234", 4, "00001234"),  # n: truncated on the left
        (0x9F02, "000000001234", 8, "0000000000001234"),  # n: zeros on the left
        (0x9F4E, "414243", 2, "4142"),  # ans: truncated on the right
        (0x9F4E, "414243", 5, "4142430000"),  # ans: zeros on the right
        (0x9F37, "11223344", 2, "1122"),  # b: right truncation
        (0x9F33, "400800", 4, "40080000"),  # b: zeros on the right
        (0x5A, "4761739001", 7, "4761739001FFFF"),  # cn: F padding on the right
    ],
)
def test_fill_dol_sizing_rules(tag: int, value: str, length: int, expected: str) -> None:
    assert fill_dol([DolEntry(tag, length)], {tag: h(value)}) == h(expected)


def test_fill_dol_unknown_and_constructed_tags_are_zero() -> None:
    entries = [DolEntry(0x9F45, 2), DolEntry(0xBF0C, 3), DolEntry(0x9F37, 4)]
    values = {0xBF0C: h("010203"), 0x9F37: h("CAFEBABE")}
    assert fill_dol(entries, values) == h("0000 000000 CAFEBABE")


CTX = ArmContext(amount=Decimal("12.34"), currency_numeric=634, currency_exponent=2)


def test_terminal_data_values() -> None:
    when = datetime(2025, 3, 7, 14, 5, 9)
    data = terminal_data(CTX, now=when, unpredictable=h("01020304"))
    assert data[0x9F02] == h("000000001234")
    assert data[0x9F03] == h("000000000000")
    assert data[0x5F2A] == h("0634")
    assert data[0x9F1A] == h("0634")
    assert data[0x9A] == h("250307")
    assert data[0x9F21] == h("140509")
    assert data[0x9C] == h("00")
    assert data[0x9F37] == h("01020304")
    assert data[0x95] == bytes(5)
    assert data[0x9F66] == h("22804000")
    assert data[0x9F66][0] & 0x20  # qVSDC
    assert data[0x9F66][1] & 0x80  # online cryptogram required
    assert data[0x9F35] == h("21")
    assert data[0x9F4E] == b"SADAD TERMINAL"
    refund = ArmContext(Decimal("5"), 840, 2, trans_type=0x20, country_numeric=840)
    data = terminal_data(refund, profile=TerminalProfile(merchant_name="SHOP"))
    assert data[0x9C] == h("20")
    assert data[0x9F02] == h("000000000500")
    assert data[0x9F1A] == h("0840")
    assert data[0x9F4E] == b"SHOP"
    assert len(data[0x9F37]) == 4
    assert terminal_data(CTX)[0x9F37] != terminal_data(CTX)[0x9F37]


def test_amount_is_exact_decimal() -> None:
    assert amount_minor(Decimal("1.234"), 3) == 1234  # KWD-style three decimals
    assert amount_minor(Decimal("100"), 0) == 100
    assert amount_minor(Decimal("0.10"), 2) == 10
    with pytest.raises(ValueError, match="whole minor units"):
        amount_minor(Decimal("0.005"), 2)
    with pytest.raises(ValueError, match="non-negative"):
        amount_minor(Decimal("-1"), 2)
    with pytest.raises(ValueError, match="does not fit n12"):
        terminal_data(ArmContext(Decimal("10000000000"), 634, 2))
    assert bcd(7, 2) == h("07")
