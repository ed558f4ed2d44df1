"""The simulated acquirer behind the sandbox cashier API (docs/protocol.md part D).

Pure rules: ``decide`` takes the amount and the payment instrument and says
what the acquirer does; the cashier module applies delays (times the
``--time-scale``), records charges and answers. Nothing here does I/O.

Test cards (any expiry, any track data; the brand comes from the PAN):

| PAN                | brand      | behaviour                                   |
|--------------------|------------|---------------------------------------------|
| 4761739001010010   | Visa       | approves (amount rules below still apply)   |
| 5413330089010434   | MasterCard | approves (amount rules below still apply)   |
| 4000000000000002   | Visa       | always declines 05 "do not honour"          |
| any other PAN      | by prefix  | approves (4 Visa, 51-55/2221-2720 MasterCard,|
|                    |            | 34/37 Amex, 62 UnionPay)                    |

Test wallet payment codes (``auth_code_cipher`` holds the code):

| code                                   | pay_method_id | behaviour                   |
|----------------------------------------|---------------|-----------------------------|
| 25..30 then 14-22 digits (e.g. 284763251234567890) | Alipay | approves              |
| 10..15 then 16 digits (e.g. 134567890123456789)    | WeChatPay | approves           |
| anything else                          | -             | declines 14 "invalid payment code" |

Magic amounts (on the ``order_amount``: the two digits after the decimal point;
they apply to cards and wallets, sales, voids and refunds):

| amount ends in | outcome                                                                 |
|----------------|-------------------------------------------------------------------------|
| .93            | HTTP 503 before anything happens: nothing charged, order stays 9        |
| .51            | declined 51 "insufficient funds" (status 1)                             |
| .05            | declined 05 "do not honour" (status 1)                                  |
| .54            | declined 54 "expired card" (status 1)                                   |
| .91            | acquirer timeout: the answer comes after ``--hang-seconds`` (default 40 s, |
|                | scaled), then approved; the terminal's HTTP timeout fires first and it  |
|                | must settle with detail / reverse (a reverse in the meantime wins)      |
| .92            | slow approval: answered approved after 3 s (scaled)                     |
| .52            | charged and paid, but the HTTP answer is a 500 (outcome unknown to the  |
|                | caller; detail shows paid; a repeat of the request_no gets the paid answer) |
| anything else  | approved: auth_code 6 digits, ref_no 12 digits                          |

Precedence: .93 first (the gateway is down before it sees the card), then the
always-declining card and invalid wallet codes, then the other amounts.
"""

from __future__ import annotations

import enum
import re
import secrets
from dataclasses import dataclass
from decimal import Decimal

from cloud import redact

DECLINING_PAN = "4000000000000002"
APPROVING_PANS = ("4761739001010010", "5413330089010434")
SLOW_APPROVAL_S = 3.0
DEFAULT_HANG_S = 40.0

_ALIPAY = re.compile(r"(2[5-9]|30)\d{14,22}")
_WECHAT = re.compile(r"1[0-5]\d{16}")

_BRAND_NAMES = {
    "VISA": "Visa",
    "MASTERCARD": "MasterCard",
    "MASTER": "MasterCard",
    "MC": "MasterCard",
    "AMEX": "Amex",
    "AMERICANEXPRESS": "Amex",
    "UNIONPAY": "UnionPay",
    "CUP": "UnionPay",
    "MYDEBIT": "MyDebit",
}


class Outcome(enum.Enum):
    APPROVE = "approve"
    DECLINE = "decline"
    UNAVAILABLE = "unavailable"  # HTTP 503, nothing charged
    CHARGE_THEN_ERROR = "charge_then_error"  # charged, answered HTTP 500


@dataclass(frozen=True, slots=True)
class Instrument:
    """What the customer paid with; the clear PAN / code live only here, in memory."""

    kind: str  # "card" or "wallet"
    pay_method_id: str | None
    masked_pan: str | None = None
    pan: str | None = None
    wallet_code: str | None = None

    def __repr__(self) -> str:  # never print the clear PAN or code
        return f"Instrument({self.kind}, {self.pay_method_id}, {self.masked_pan})"


@dataclass(frozen=True, slots=True)
class Decision:
    outcome: Outcome
    delay_s: float = 0.0  # unscaled seconds before the acquirer answers
    code: str | None = None
    message: str | None = None


@dataclass(frozen=True, slots=True)
class Approval:
    auth_code: str
    ref_no: str
    pay_channel_trans_no: str


def cents(amount: Decimal) -> int | None:
    """The two digits after the decimal point, or None when the amount has more
    precision than hundredths (e.g. 1.505 KWD matches no rule)."""
    scaled = amount * 100
    if scaled != scaled.to_integral_value():
        return None
    return int(scaled) % 100


def decide(
    amount: Decimal, instrument: Instrument, *, hang_seconds: float = DEFAULT_HANG_S
) -> Decision:
    """The acquirer's answer for ``amount`` paid with ``instrument`` (table above)."""
    tail = cents(amount)
    if tail == 93:
        return Decision(Outcome.UNAVAILABLE, code="503", message="acquirer unavailable")
    if instrument.kind == "card" and instrument.pan == DECLINING_PAN:
        return Decision(Outcome.DECLINE, code="05", message="do not honour")
    if instrument.kind == "wallet" and instrument.pay_method_id is None:
        return Decision(Outcome.DECLINE, code="14", message="invalid payment code")
    if tail == 51:
        return Decision(Outcome.DECLINE, code="51", message="insufficient funds")
    if tail == 5:
        return Decision(Outcome.DECLINE, code="05", message="do not honour")
    if tail == 54:
        return Decision(Outcome.DECLINE, code="54", message="expired card")
    if tail == 91:
        return Decision(Outcome.APPROVE, delay_s=hang_seconds)
    if tail == 92:
        return Decision(Outcome.APPROVE, delay_s=SLOW_APPROVAL_S)
    if tail == 52:
        return Decision(Outcome.CHARGE_THEN_ERROR)
    return Decision(Outcome.APPROVE)


def approve() -> Approval:
    """A fresh approval: 6-digit auth code, 12-digit reference number."""
    return Approval(
        auth_code=f"{secrets.randbelow(10**6):06d}",
        ref_no=f"{secrets.randbelow(10**12):012d}",
        pay_channel_trans_no=f"ACQ{secrets.randbelow(10**16):016d}",
    )


def card_method(pan: str | None, brand_hint: str | None) -> str | None:
    """``pay_method_id`` of a card: from the PAN prefix, else the clear brand field."""
    if pan:
        if pan.startswith("4"):
            return "Visa"
        two, four = int(pan[:2] or 0), int(pan[:4] or 0)
        if 51 <= two <= 55 or 2221 <= four <= 2720:
            return "MasterCard"
        if two in (34, 37):
            return "Amex"
        if two == 62:
            return "UnionPay"
    if brand_hint:
        key = re.sub(r"[^A-Z]", "", brand_hint.upper())
        return _BRAND_NAMES.get(key, brand_hint)
    return None


def wallet_method(code: str) -> str | None:
    """``pay_method_id`` of a wallet payment code, None when it is not a valid code."""
    if _ALIPAY.fullmatch(code):
        return "Alipay"
    if _WECHAT.fullmatch(code):
        return "WeChatPay"
    return None


def pan_from_track2(track2: str) -> str | None:
    """The PAN of a track 2 (equivalent): digits before the ``=`` / ``D`` separator."""
    match = re.match(r";?(\d{12,19})[=Dd]", track2)
    return match.group(1) if match else None


def mask_pan(pan: str) -> str:
    """At most the first 6 and last 4 digits (PCI DSS 3.4.1): ``cloud.redact.mask_pan``."""
    return redact.mask_pan(pan)
