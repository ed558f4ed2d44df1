"""The simulated acquirer's rules (sandbox/acquirer.py docstring table)."""

from __future__ import annotations

from decimal import Decimal

import pytest

from sandbox import acquirer
from sandbox.acquirer import Instrument, Outcome

VISA = Instrument("card", "Visa", "476173******0010", pan="4761739001010010")
MC = Instrument("card", "MasterCard", "541333******0434", pan="5413330089010434")
DECLINER = Instrument("card", "Visa", "400000******0002", pan="4000000000000002")
ALIPAY = Instrument("wallet", "Alipay", wallet_code="284763251234567890")
BAD_WALLET = Instrument("wallet", None, wallet_code="hello")


@pytest.mark.parametrize(
    ("amount", "instrument", "outcome", "code", "delay"),
    [
        ("10.00", VISA, Outcome.APPROVE, None, 0.0),
        ("10.00", MC, Outcome.APPROVE, None, 0.0),
        ("10.00", ALIPAY, Outcome.APPROVE, None, 0.0),
        ("10.00", DECLINER, Outcome.DECLINE, "05", 0.0),
        ("10.00", BAD_WALLET, Outcome.DECLINE, "14", 0.0),
        ("10.51", VISA, Outcome.DECLINE, "51", 0.0),
        ("7.05", MC, Outcome.DECLINE, "05", 0.0),
        ("10.54", ALIPAY, Outcome.DECLINE, "54", 0.0),
        ("10.91", VISA, Outcome.APPROVE, None, 40.0),
        ("10.92", VISA, Outcome.APPROVE, None, 3.0),
        ("10.93", VISA, Outcome.UNAVAILABLE, "503", 0.0),
        ("10.93", DECLINER, Outcome.UNAVAILABLE, "503", 0.0),  # down before it sees the card
        ("10.51", DECLINER, Outcome.DECLINE, "05", 0.0),  # the card wins over the amount
        ("10.52", VISA, Outcome.CHARGE_THEN_ERROR, None, 0.0),
        ("10.5", VISA, Outcome.APPROVE, None, 0.0),  # 10.5 is 10.50: an ordinary amount
        ("10.510", VISA, Outcome.DECLINE, "51", 0.0),  # KWD-style scale
        ("10.515", VISA, Outcome.APPROVE, None, 0.0),  # finer than cents: no rule
        ("1051", VISA, Outcome.APPROVE, None, 0.0),  # JPY: no decimals, no rule
    ],
)
def test_decide(
    amount: str, instrument: Instrument, outcome: Outcome, code: str | None, delay: float
) -> None:
    d = acquirer.decide(Decimal(amount), instrument)
    assert (d.outcome, d.code, d.delay_s) == (outcome, code, delay)
    if d.outcome is Outcome.DECLINE:
        assert d.message


def test_hang_seconds_is_configurable() -> None:
    assert acquirer.decide(Decimal("1.91"), VISA, hang_seconds=5).delay_s == 5


def test_approval_shapes() -> None:
    a = acquirer.approve()
    assert len(a.auth_code) == 6
    assert a.auth_code.isdigit()
    assert len(a.ref_no) == 12
    assert a.ref_no.isdigit()
    assert a.pay_channel_trans_no.startswith("ACQ")


@pytest.mark.parametrize(
    ("pan", "hint", "method"),
    [
        ("4761739001010010", None, "Visa"),
        ("5413330089010434", None, "MasterCard"),
        ("2221000000000009", None, "MasterCard"),
        ("371449635398431", None, "Amex"),
        ("6212345678901232", None, "UnionPay"),
        ("6011000000000004", "mydebit", "MyDebit"),
        ("6011000000000004", "Discover", "Discover"),
        (None, "VISA", "Visa"),
        (None, None, None),
    ],
)
def test_card_method(pan: str | None, hint: str | None, method: str | None) -> None:
    assert acquirer.card_method(pan, hint) == method


@pytest.mark.parametrize(
    ("code", "method"),
    [
        ("284763251234567890", "Alipay"),
        ("2512345678901234", "Alipay"),
        ("301234567890123456789012", "Alipay"),
        ("134567890123456789", "WeChatPay"),
        ("154567890123456789", "WeChatPay"),
        ("164567890123456789", None),
        ("28476325123", None),
        ("abc", None),
    ],
)
def test_wallet_method(code: str, method: str | None) -> None:
    assert acquirer.wallet_method(code) == method


def test_pan_helpers_and_repr_never_show_the_pan() -> None:
    assert acquirer.mask_pan("4761739001010010") == "476173******0010"
    assert acquirer.mask_pan("6212345678901234567") == "621234*********4567"
    assert acquirer.pan_from_track2(";4761739001010010=28122011758928889?") == "4761739001010010"
    assert acquirer.pan_from_track2("5413330089010434D2812201") == "5413330089010434"
    assert acquirer.pan_from_track2("garbage") is None
    assert "4761739001010010" not in repr(VISA)
    assert "284763251234567890" not in repr(ALIPAY)
