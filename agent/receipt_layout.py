"""Receipts laid out for the printer, sans I/O: what a transaction says, as
lines for the ESC/POS encoder (``drivers.escpos.encoder``).

Contract:

* ``receipt_blocks(facts, width=, copy=, tz=)`` -> encoder blocks, for a
  printer of ``width`` columns at normal size (a double-size line holds
  ``width // 2``); ``receipt_bytes`` encodes them (cut included);
  ``receipt_text`` is the same receipt as plain lines (``sadad-agent
  receipt --text``). Every line fits: label and value on one line when they
  fit, else the value on its own line, right-aligned and cut with "..".
* What a receipt holds (issue 18): the store name, terminal SN, date and
  time (``at_ms`` in ``tz``, default local), SALE / VOID / REFUND,
  ``trans_no``, the POS's order number, the entry mode, brand and masked
  card, for chip-contactless the AID (printed as RID and PIX, "A000000003
  1010": EMV Book 1 §12.2.1, 5-byte RID then the PIX) and the application
  label, auth code, reference, amount, tip, total and currency (the
  currency's own decimals, ``cloud.money``; Decimal only), the result in
  large letters, the reason when it did not go through, and whose copy.
* Card data: ``masked_pan`` must be masked (``bridge_protocol.check_masked``)
  or this raises ValueError - a receipt is never the place a full PAN
  leaks. Every other text comes from outside (the POS, the gateway, the
  card) and is cleaned first: control characters become spaces; format
  characters (bidi controls among them: "Trojan Source", CVE-2021-42574)
  and combining marks are dropped - a mark between two digits would
  otherwise print as '?' and split a card number a person still reads -
  and any card-number-like digits, in any script (Arabic-Indic,
  full-width: a regex digit is any Unicode decimal digit) - a run of 13 to
  19 (ISO/IEC 7812 lengths), or 4-4-4-4(-3) and 4-6-5 groups split by spaces or dashes -
  masked to first 6 / last 4, so a POS that puts a card number in its
  order number cannot make the terminal print it. Longer runs are no PAN
  and stay whole: the gateway's 20-digit ``trans_no`` is what a cashier
  looks a sale up by.
* Arabic prints (the encoder shapes it and selects PC864); widths are
  measured after shaping (``encoder.display_width``).
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from datetime import datetime, tzinfo
from decimal import Decimal
from typing import Literal

from agent.bridge_protocol import check_masked
from cloud import money, redact
from cloud.errors import ContractError
from drivers.escpos.encoder import Align, Block, Line, display_width, encode

Copy = Literal["customer", "merchant"]

_TYPES = {1: "SALE", 2: "VOID", 3: "REFUND"}
_ENTRY = {"CONTACTLESS": "Contactless", "SWIPE": "Swipe", "WALLET": "Wallet code"}
_RESULTS = {"APPROVED": "APPROVED", "DECLINED": "DECLINED", "CANCELLED": "CANCELLED"}
# A card number as it is written: 13-19 digits in one run, or in the groups
# cards print it in (4-4-4-4 with up to 3 more, Amex 4-6-5), split by a
# space or a dash. Bounded by non-digits: a longer run is no PAN.
_CARD_LIKE = re.compile(
    r"(?<!\d)(?:\d{13,19}|\d{4}([ -])\d{4}\1\d{4}\1\d{1,7}|\d{4}([ -])\d{6}\2\d{5})(?!\d)"
)
_RID_DIGITS = 10  # the RID: 5 bytes, 10 hex digits


@dataclass(frozen=True, slots=True)
class ReceiptFacts:
    """What one receipt says, from the journal and the terminal's config."""

    store_name: str
    sn: str
    at_ms: int  # when the transaction became final (epoch ms)
    trans_no: str
    merchant_order_no: str
    trans_type: int  # cloud.messages.TransType: 1 sale, 2 void, 3 refund
    phase: str  # the final journal phase
    reason: str | None
    entry_mode: str | None
    brand: str | None
    masked_pan: str | None
    aid: str | None  # hex (agent.settlement keeps only 5-16 bytes of it)
    app_label: str | None
    auth_code: str | None
    reference: str | None
    amount: Decimal
    tip: Decimal | None
    currency: str


def _clean(text: str | None) -> str:
    """Text from outside, safe to print: see the module contract."""
    if not text:
        return ""
    kept: list[str] = []
    for c in unicodedata.normalize("NFKC", text[:512]):  # full-width digits: ASCII
        if c.isspace() or unicodedata.category(c) == "Cc":
            kept.append(" ")
        elif c.isprintable() and unicodedata.category(c)[0] != "M":
            kept.append(c)
    shown = " ".join("".join(kept).split())
    return _CARD_LIKE.sub(lambda m: redact.mask_pan(re.sub(r"\D", "", m.group(0))), shown)


def _fit(text: str, width: int) -> str:
    """``text`` cut to ``width`` printed columns, ending in ".." when cut."""
    if display_width(text) <= width:
        return text
    cut = text[: width * 2]
    while cut and display_width(cut + "..") > width:
        cut = cut[:-1]
    return cut.rstrip() + ".." if width >= 2 else cut


def _pair(label: str, value: str, width: int, *, bold: bool = False) -> list[Line]:
    """``label`` left and ``value`` right on one line, or on two when they do not fit."""
    room = width - display_width(label) - 1
    if display_width(value) <= room:
        gap = " " * (room - display_width(value) + 1)
        return [Line(f"{label}{gap}{value}", bold=bold)]
    return [Line(label, bold=bold), Line(_fit(value, width), bold=bold, align=Align.RIGHT)]


def _money(amount: Decimal, currency: str) -> str:
    try:
        exponent = money.currency(currency).exponent
    except ContractError:
        exponent = 2
    return f"{amount.quantize(Decimal(1).scaleb(-exponent)):f} {_clean(currency)}"


def aid_text(aid: str) -> str:
    """An AID as RID and PIX: "A0000000031010" -> "A000000003 1010"."""
    return f"{aid[:_RID_DIGITS]} {aid[_RID_DIGITS:]}".rstrip()


def receipt_blocks(
    facts: ReceiptFacts, *, width: int, copy: Copy = "customer", tz: tzinfo | None = None
) -> list[Block]:
    """The receipt as encoder blocks (see the module contract). Raises
    ValueError for a ``masked_pan`` that is not masked."""
    check_masked("masked_pan", facts.masked_pan)
    half = width // 2
    rule = Line("-" * width)
    when = datetime.fromtimestamp(facts.at_ms / 1000, tz or datetime.now().astimezone().tzinfo)
    lines: list[Line] = []
    store = _clean(facts.store_name)
    if store:
        lines.append(Line(_fit(store, half), bold=True, double=True, align=Align.CENTER))
    lines += [
        Line(_fit(f"Terminal {_clean(facts.sn)}", width), align=Align.CENTER),
        Line(when.strftime("%Y-%m-%d %H:%M:%S"), align=Align.CENTER),
        rule,
        Line(_TYPES.get(facts.trans_type, "SALE"), bold=True),
    ]
    lines += _pair("Trans no", _clean(facts.trans_no), width)
    lines += _pair("Order", _clean(facts.merchant_order_no), width)
    if facts.entry_mode:
        entry = _ENTRY.get(facts.entry_mode, _clean(facts.entry_mode).title())
        lines += _pair("Entry", entry, width)
    brand = _clean(facts.brand)
    if facts.masked_pan:
        lines += _pair("Card", f"{brand} {facts.masked_pan}".strip(), width)
    elif brand:
        lines += _pair("Paid with", brand, width)
    if facts.aid and re.fullmatch(r"[0-9A-Fa-f]{10,32}", facts.aid):
        lines += _pair("AID", aid_text(facts.aid.upper()), width)
    if facts.app_label:
        lines += _pair("App", _clean(facts.app_label), width)
    if facts.auth_code:
        lines += _pair("Auth code", _clean(facts.auth_code), width)
    if facts.reference:
        lines += _pair("Reference", _clean(facts.reference), width)
    lines.append(rule)
    if facts.tip:
        lines += _pair("Amount", _money(facts.amount, facts.currency), width)
        lines += _pair("Tip", _money(facts.tip, facts.currency), width)
    total = facts.amount + (facts.tip or Decimal(0))
    lines += _pair("TOTAL", _money(total, facts.currency), width, bold=True)
    lines.append(Line())
    result = _RESULTS.get(facts.phase, _clean(facts.phase))
    lines.append(Line(_fit(result, half), bold=True, double=True, align=Align.CENTER))
    reason = _clean(facts.reason)
    if reason and facts.phase != "APPROVED":
        lines.append(Line(_fit(reason, width), align=Align.CENTER))
    lines += [Line(), Line(f"{copy.upper()} COPY", align=Align.CENTER)]
    return list(lines)


def receipt_bytes(
    facts: ReceiptFacts, *, width: int, copy: Copy = "customer", tz: tzinfo | None = None
) -> bytes:
    """The ESC/POS bytes of the receipt, cut at its end."""
    return encode(receipt_blocks(facts, width=width, copy=copy, tz=tz))


def receipt_text(
    facts: ReceiptFacts, *, width: int, copy: Copy = "customer", tz: tzinfo | None = None
) -> str:
    """The receipt as plain lines (alignment applied; sizes and bold not shown)."""
    out = []
    for block in receipt_blocks(facts, width=width, copy=copy, tz=tz):
        if not isinstance(block, Line):
            continue
        room = width // 2 if block.double else width
        pad = room - display_width(block.text)
        if block.align is Align.CENTER:
            out.append(" " * (pad // 2) + block.text)
        elif block.align is Align.RIGHT:
            out.append(" " * pad + block.text)
        else:
            out.append(block.text)
    return "\n".join(out)
