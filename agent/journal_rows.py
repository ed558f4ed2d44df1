"""What the journal stores and gives back: typed records, and the check
that keeps card data out (never a full PAN, track, EMV data or wallet code:
``check_clean``)."""

from __future__ import annotations

import re
import sqlite3
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from agent.phases import Phase
from cloud import redact


@dataclass(frozen=True, slots=True)
class OrderRecord:
    """A new order, as a verified push gives it (``Journal.record_order``).
    ``description`` is the POS's free text as it may be shown."""

    trans_no: str
    merchant_no: str
    merchant_order_no: str
    trans_type: int
    orig_trans_no: str | None
    currency: str
    amount: Decimal
    tip_amount: Decimal | None
    description: str | None
    pay_scenario: str | None
    confirm: bool
    expires_at: int
    queue_mode: str

    def columns(self) -> dict[str, Any]:
        """Its values as the ``transactions`` table keeps them."""
        return {
            "trans_no": self.trans_no,
            "merchant_no": self.merchant_no,
            "merchant_order_no": self.merchant_order_no,
            "trans_type": self.trans_type,
            "orig_trans_no": self.orig_trans_no,
            "currency": self.currency,
            "amount": str(self.amount),
            "tip_amount": None if self.tip_amount is None else str(self.tip_amount),
            "description": self.description,
            "pay_scenario": self.pay_scenario,
            "confirm": int(self.confirm),
            "expires_at": self.expires_at,
            "queue_mode": self.queue_mode,
        }

    @property
    def trans_amount(self) -> Decimal:
        return self.amount + (self.tip_amount or Decimal(0))


# 13-19 digit runs pass the PAN shape; the journal refuses them outright.
_PAN_LIKE = re.compile(r"(?<!\d)\d{13,19}(?!\d)")


class JournalError(Exception):
    """The journal cannot be opened or written: the agent must not go on."""


@dataclass(frozen=True, slots=True)
class TxRow:
    trans_no: str
    message_id: str
    merchant_no: str
    merchant_order_no: str
    trans_type: int
    orig_trans_no: str | None
    currency: str
    amount: Decimal
    tip_amount: Decimal | None
    description: str | None
    pay_scenario: str | None
    confirm: bool
    expires_at: int
    queue_mode: str
    seq: int
    phase: Phase
    final: bool
    reason: str | None
    masked_pan: str | None
    card_brand: str | None
    entry_mode: str | None
    auth_code: str | None
    ref_no: str | None
    pay_method_id: str | None
    error_code: str | None
    created_at: int
    updated_at: int
    aid: str | None = None  # chip-contactless: the application paid with (hex)
    app_label: str | None = None

    @property
    def trans_amount(self) -> Decimal:
        return self.amount + (self.tip_amount or Decimal(0))


# An order as the screen and the readers see it: journaled, or verified and
# drawn before it is journaled (an idle terminal's push, agent.intake).
ShownOrder = TxRow | OrderRecord


@dataclass(frozen=True, slots=True)
class AttemptRow:
    request_no: str
    trans_no: str
    kind: str
    created_at: int
    answered_at: int | None
    answer_status: int | None
    reverse_requested_at: int | None
    reverse_acked_at: int | None


@dataclass(frozen=True, slots=True)
class OutboxRow:
    id: int
    trans_no: str | None
    kind: str
    reason: str | None
    message_id: str


def check_clean(values: dict[str, Any]) -> dict[str, Any]:
    """``values`` fit to keep. A ``reason`` is text from outside (a gateway's
    decline message), an ``app_label`` is read from the card: their
    card-number-like digit runs are masked, so they are always kept. The
    fields our own card handling fills must already be masked: one that
    looks like a PAN is a bug, refused (JournalError). Order fields from
    the POS may legitimately be long digit strings (order numbers, gateway
    ids) and are not looked at."""
    out = dict(values)
    for key in ("reason", "app_label"):  # the label comes from the card: any bytes
        text = out.get(key)
        if isinstance(text, str):
            out[key] = redact.mask_digit_runs(text)
    for key in CARD_FIELDS & out.keys():
        value = out[key]
        if isinstance(value, str) and _PAN_LIKE.search(value):
            raise JournalError(f"refusing to journal {key}: it looks like card data")
    return out


CARD_FIELDS = frozenset({"masked_pan", "card_brand", "entry_mode", "auth_code"})


def tx_row(row: sqlite3.Row) -> TxRow:
    data = dict(row)
    data["amount"] = Decimal(data["amount"])
    data["tip_amount"] = Decimal(data["tip_amount"]) if data["tip_amount"] else None
    data["confirm"] = bool(data["confirm"])
    data["final"] = bool(data["final"])
    data["phase"] = Phase(data["phase"])
    return TxRow(**data)
