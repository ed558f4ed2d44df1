"""Amounts: Decimal in major units, checked against ISO 4217 minor units.

docs/protocol.md "Common envelope": reject more fraction digits than the currency
has (QAR 2, KWD 3, JPY 0); never binary floating point.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from cloud.errors import ContractError


@dataclass(frozen=True, slots=True)
class Currency:
    code: str
    numeric: int
    exponent: int


# ISO 4217 (alpha, numeric, minor units) for the region and the usual card currencies.
CURRENCIES: dict[str, Currency] = {
    c.code: c
    for c in (
        Currency("QAR", 634, 2),
        Currency("SAR", 682, 2),
        Currency("AED", 784, 2),
        Currency("KWD", 414, 3),
        Currency("BHD", 48, 3),
        Currency("OMR", 512, 3),
        Currency("JOD", 400, 3),
        Currency("EGP", 818, 2),
        Currency("USD", 840, 2),
        Currency("EUR", 978, 2),
        Currency("GBP", 826, 2),
        Currency("CNY", 156, 2),
        Currency("HKD", 344, 2),
        Currency("INR", 356, 2),
        Currency("JPY", 392, 0),
    )
}


def currency(code: str) -> Currency:
    """Raises ContractError for a code that is not supported."""
    try:
        return CURRENCIES[code]
    except KeyError:
        allowed = ", ".join(sorted(CURRENCIES))
        raise ContractError(f"unsupported currency {code!r} (allowed: {allowed})") from None


def check_amount(
    amount: Decimal, currency_code: str, field: str = "order_amount", *, allow_zero: bool = False
) -> Decimal:
    """Validate an amount for its currency. Raises ContractError naming ``field``."""
    cur = currency(currency_code)
    if not isinstance(amount, Decimal) or not amount.is_finite():
        raise ContractError("amount must be a finite decimal number", f"$.{field}")
    if amount < 0 or (amount == 0 and not allow_zero):
        raise ContractError("amount must be greater than zero", f"$.{field}")
    exponent = amount.as_tuple().exponent
    assert isinstance(exponent, int)
    if -exponent > cur.exponent:
        raise ContractError(
            f"{cur.code} has {cur.exponent} decimal places; {amount} has more", f"$.{field}"
        )
    if amount >= Decimal("1e12"):
        raise ContractError("amount is too large", f"$.{field}")
    return amount


def fmt(amount: Decimal, currency_code: str) -> str:
    """``12.50 QAR``, with the currency's own number of decimals."""
    cur = currency(currency_code)
    return f"{amount.quantize(Decimal(1).scaleb(-cur.exponent)):,f} {cur.code}"
