"""The receipt layout: what a receipt says, that every line fits, and that no
byte sent to the printer is ever a card number - read back with the
simulated printer's decoder, as the receipt would come out of the printer."""

from __future__ import annotations

import dataclasses
import re
import unicodedata
from datetime import UTC
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.receipt_layout import Copy, ReceiptFacts, receipt_blocks, receipt_bytes, receipt_text
from drivers.escpos.encoder import Line, display_width
from drivers.sim.escpos_decoder import EscPosDecoder, Receipt

SALE = ReceiptFacts(
    store_name="Demo Coffee",
    sn="DEMO0001",
    at_ms=1_796_000_000_000,  # 2026-11-30 00:53:20 UTC
    trans_no="20261205131018352164",
    merchant_order_no="POS-20261205-0042",
    trans_type=1,
    phase="APPROVED",
    reason=None,
    entry_mode="CONTACTLESS",
    brand="Visa",
    masked_pan="476173******0010",
    aid="A0000000031010",
    app_label="VISA CREDIT",
    auth_code="635072",
    reference="RRN000123",
    amount=Decimal("12.50"),
    tip=Decimal("1.5"),
    currency="QAR",
)

PRINTED_AT_42 = """\
Demo Coffee
Terminal DEMO0001
2026-11-30 00:53:20
------------------------------------------
SALE
Trans no              20261205131018352164
Order                    POS-20261205-0042
Entry                          Contactless
Card                 Visa 476173******0010
AID                        A000000003 1010
App                            VISA CREDIT
Auth code                           635072
Reference                        RRN000123
------------------------------------------
Amount                           12.50 QAR
Tip                               1.50 QAR
TOTAL                            14.00 QAR

APPROVED

CUSTOMER COPY"""

# A run of 13-19 digits bounded by non-digits, in raw bytes: a PAN's shape.
PAN_LIKE = re.compile(rb"(?<!\d)\d{13,19}(?!\d)")
FULL_PAN = "4761739001010010"


def printed(facts: ReceiptFacts, width: int = 42, copy: Copy = "customer") -> str:
    """The receipt as the printer would print it (decoded from the wire bytes)."""
    events = EscPosDecoder().feed(receipt_bytes(facts, width=width, copy=copy, tz=UTC))
    receipts = [e for e in events if isinstance(e, Receipt)]
    assert len(receipts) == 1
    return receipts[0].text


def test_an_approved_sale_on_the_wire() -> None:
    assert printed(SALE) == PRINTED_AT_42


@pytest.mark.parametrize("width", [24, 32, 42, 48, 64])
def test_every_line_fits(width: int) -> None:
    for block in receipt_blocks(SALE, width=width, tz=UTC):
        assert isinstance(block, Line)
        room = width // 2 if block.double else width
        assert display_width(block.text) <= room, (width, block.text)
    text = printed(SALE, width)
    for needed in ("12.50 QAR", "14.00 QAR", "APPROVED", "476173******0010", "635072", "DEMO0001"):
        assert needed in text, (width, needed)


def test_declined_with_its_reason_and_no_auth_code() -> None:
    facts = dataclasses.replace(SALE, phase="DECLINED", reason="Insufficient funds", auth_code=None)
    text = printed(facts)
    assert "DECLINED" in text
    assert "Insufficient funds" in text
    assert "Auth code" not in text


def test_cancelled_refund_and_merchant_copy() -> None:
    facts = dataclasses.replace(SALE, trans_type=3, phase="CANCELLED", reason="cancelled", tip=None)
    text = printed(facts, copy="merchant")
    assert text.splitlines()[4] == "REFUND"
    assert "CANCELLED" in text
    assert "MERCHANT COPY" in text
    assert "Tip" not in text
    assert "TOTAL                            12.50 QAR" in text


def test_a_wallet_payment_shows_its_brand_only() -> None:
    facts = dataclasses.replace(
        SALE, entry_mode="WALLET", brand="WeChatPay", masked_pan=None, aid=None, app_label=None
    )
    text = printed(facts)
    assert "Paid with" in text
    assert "WeChatPay" in text
    assert "Wallet code" in text
    assert "AID" not in text


def test_currency_decimals_come_from_the_currency() -> None:
    facts = dataclasses.replace(SALE, currency="KWD", amount=Decimal("1.5"), tip=None)
    assert "1.500 KWD" in printed(facts)


def test_an_arabic_store_name_prints_and_is_cut_to_fit() -> None:
    name = "مقهى الدوحة للقهوة المختصة والحلويات"
    text = printed(dataclasses.replace(SALE, store_name=name), 32)
    first = text.splitlines()[0]
    assert first.startswith("مقهى الدوحة")
    assert first.endswith("..")
    assert display_width(first) <= 16
    # The encoder put it on PC864 (Epson page 37): ESC t 37 on the wire.
    assert b"\x1bt\x25" in receipt_bytes(dataclasses.replace(SALE, store_name=name), width=32)


def test_long_and_odd_fields_do_not_break_lines() -> None:
    facts = dataclasses.replace(
        SALE,
        merchant_order_no="X" * 200,
        reference="ref\x1b[2J\u202eevil\x00",
        reason="line one\nline two",
        phase="DECLINED",
    )
    lines = printed(facts).splitlines()
    assert max(display_width(line) for line in lines) <= 42
    assert any(line.endswith("..") for line in lines)
    assert "ref [2Jevil" in "\n".join(lines)  # ESC and NUL: spaces; U+202E: gone
    assert "line one line two" in lines


@pytest.mark.parametrize(
    "hidden",
    [
        FULL_PAN,
        "4761 7390 0101 0010",
        "4761-7390-0101-0010",
        "3782 822463 10005",  # Amex grouping
        "4761739001010010123",  # 19 digits
        "4\u03017\u03016\u030117390010100\u030110",  # combining marks between digits
        "".join(chr(0x0660 + int(d)) for d in FULL_PAN),  # Arabic-Indic digits
        "".join(chr(0xFF10 + int(d)) for d in FULL_PAN),  # full-width digits
    ],
)
def test_a_card_number_in_any_text_is_never_printed(hidden: str) -> None:
    facts = dataclasses.replace(
        SALE,
        store_name=f"Shop {hidden}",
        merchant_order_no=f"POS-{hidden}",
        reason=f"card {hidden} declined",
        reference=hidden,
        app_label=hidden,
        phase="DECLINED",
    )
    wire = receipt_bytes(facts, width=42)
    digits = unicodedata.normalize("NFKC", re.sub(r"\D", "", hidden))
    assert not PAN_LIKE.search(wire)
    text = printed(facts)
    assert digits not in re.sub(r"[\s-]", "", text)  # nor as a person reads it
    assert hidden not in text
    assert digits[-4:] in text  # masked, not dropped: first 6 / last 4


def test_a_full_pan_as_the_masked_card_is_refused() -> None:
    with pytest.raises(ValueError, match="masked"):
        receipt_bytes(dataclasses.replace(SALE, masked_pan=FULL_PAN), width=42)


def test_text_preview_matches_the_print() -> None:
    text = receipt_text(SALE, width=42, tz=UTC)
    assert [line.strip() for line in text.splitlines()] == [
        line.strip() for line in PRINTED_AT_42.splitlines()
    ]


@settings(max_examples=150, deadline=None)
@given(
    order=st.text(max_size=80),
    reason=st.text(max_size=80),
    reference=st.text(alphabet="0123456789 -", max_size=40),
)
def test_no_printed_byte_is_ever_pan_shaped(order: str, reason: str, reference: str) -> None:
    facts = dataclasses.replace(
        SALE, merchant_order_no=order, reason=reason, reference=reference, phase="DECLINED"
    )
    wire = receipt_bytes(facts, width=32)
    assert not PAN_LIKE.search(wire)
