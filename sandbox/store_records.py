"""The sandbox store's parties and orders as typed rows.

``Merchant`` and ``Terminal`` are the parties the gateway knows (their
public keys verify what they sign); ``Order`` is one row of ``orders``
(docs/protocol.md part A) with the conversions to and from SQLite
(amounts as their decimal text, so ``12.50`` stays ``12.50``; enums as
their codes) and ``to_info``, the ``order.query`` result it answers with.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass, fields
from decimal import Decimal
from typing import Any

from cloud import wirejson
from cloud.messages import OrderInfo, PayScenario, TransStatus, TransType
from cloud.status_rules import FINAL_STATUSES

S = TransStatus


def _dec(text: str | None) -> Decimal | None:
    return None if text is None else Decimal(text)


def decimal_text(value: Decimal | None) -> str | None:
    """``value`` as the decimal text it is stored as (None stays None)."""
    return None if value is None else wirejson.number_text(value)


@dataclass(frozen=True, slots=True)
class Merchant:
    merchant_no: str
    app_id: str
    public_key_pem: str
    name: str


@dataclass(frozen=True, slots=True)
class Terminal:
    sn: str
    app_id: str
    merchant_no: str
    public_key_pem: str
    store_name: str
    created_ms: int


@dataclass(frozen=True, slots=True)
class Order:
    trans_no: str
    merchant_no: str
    merchant_order_no: str
    terminal_sn: str
    store_no: str | None
    trans_type: TransType
    orig_trans_no: str | None
    trans_status: TransStatus
    price_currency: str
    order_amount: Decimal
    tip_amount: Decimal | None
    trans_amount: Decimal
    attach: str | None
    pay_scenario: PayScenario | None
    description: str | None
    notify_url: str | None
    expires_at: int
    order_queue_mode: str
    confirm_on_terminal: bool
    fingerprint: str
    message_id: str
    create_answer: str
    close_answer: str | None
    created_ms: int
    updated_ms: int
    request_no: str | None = None
    paid_amount: Decimal | None = None
    pay_method_id: str | None = None
    pay_channel_trans_no: str | None = None
    ref_no: str | None = None
    auth_code: str | None = None
    masked_pan: str | None = None
    trans_end_time: str | None = None
    trans_error_code: str | None = None
    trans_error_msg: str | None = None

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> Order:
        d: dict[str, Any] = dict(row)
        for key in ("order_amount", "tip_amount", "trans_amount", "paid_amount"):
            d[key] = _dec(d[key])
        d["trans_type"] = TransType(d["trans_type"])
        d["trans_status"] = TransStatus(d["trans_status"])
        d["pay_scenario"] = PayScenario(d["pay_scenario"]) if d["pay_scenario"] else None
        d["confirm_on_terminal"] = bool(d["confirm_on_terminal"])
        return cls(**d)

    def to_row(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        for key in ("order_amount", "tip_amount", "trans_amount", "paid_amount"):
            d[key] = decimal_text(d[key])
        d["trans_type"] = int(self.trans_type)
        d["trans_status"] = int(self.trans_status)
        d["pay_scenario"] = str(self.pay_scenario) if self.pay_scenario else None
        d["confirm_on_terminal"] = int(self.confirm_on_terminal)
        return d

    @property
    def is_final(self) -> bool:
        return self.trans_status in FINAL_STATUSES

    def to_info(self, timeline: str | None = None, *, app_id: str | None = None) -> OrderInfo:
        """The ``order.query`` result (part A); payment fields only when paid,
        error fields only when failed or cancelled. It names the merchant and
        the POS app (``app_id``) whose order it is (part B): the receiver binds
        it to its own order by them."""
        paid = self.trans_status is S.COMPLETED
        failed = self.trans_status in (S.CLOSED, S.CANCELLED)
        return OrderInfo(
            trans_no=self.trans_no,
            trans_type=self.trans_type,
            trans_status=self.trans_status,
            merchant_order_no=self.merchant_order_no,
            price_currency=self.price_currency,
            order_amount=self.order_amount,
            trans_amount=self.trans_amount,
            terminal_sn=self.terminal_sn,
            merchant_no=self.merchant_no,
            app_id=app_id,
            tip_amount=self.tip_amount,
            attach=self.attach,
            store_no=self.store_no,
            pay_scenario=self.pay_scenario,
            paid_amount=self.paid_amount if paid else None,
            pay_method_id=self.pay_method_id if paid else None,
            pay_channel_trans_no=self.pay_channel_trans_no if paid else None,
            ref_no=self.ref_no if paid else None,
            auth_code=self.auth_code if paid else None,
            masked_pan=self.masked_pan if paid else None,
            trans_end_time=self.trans_end_time if self.is_final else None,
            trans_error_code=self.trans_error_code if failed else None,
            trans_error_msg=self.trans_error_msg if failed else None,
            terminal_timeline=timeline,
        )
