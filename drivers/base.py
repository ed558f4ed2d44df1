"""The one interface the agent sees: an async Reader and what it reads.

Contract (shared by every driver in this package and by the agent):

* A reader is built from a config string ``KIND:PORT[;key=value...]``
  (``pn532:/dev/ttyUSB0``, ``magstripe:/dev/ttyACM0;baud=9600``,
  ``scanner:socket://127.0.0.1:7000``); PORT is anything
  ``serial.serial_for_url`` accepts. See ``drivers.registry``.
* Life cycle: ``open()`` (opens the port and runs ``probe()``), ``arm(ctx)``,
  ``next_presentation()`` (awaits one card or code), ``disarm()``,
  ``close()``. ``open`` and ``next_presentation`` raise only ``ReaderError``
  subclasses; ``CardGone`` means "tap again", not a fault.
* A ``Presentation`` holds clear card data in memory only. Its ``repr`` and
  ``str`` show first 6 / last 4 of a PAN at most and never track data, EMV
  data or a wallet code (PCI DSS 3.3/3.4; DESIGN.md "Card data").

This module is pure: no serial, no asyncio imports beyond typing.
"""

from __future__ import annotations

import enum
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal


class ReaderError(Exception):
    """Base of every error a driver raises; its text never holds card data."""


class ReaderOffline(ReaderError):
    """The port is gone or cannot be opened (unplugged, permissions): retry later."""


class ReaderFault(ReaderError):
    """The device answered, but not as its protocol says (bad frame, error status)."""


class ReaderTimeout(ReaderFault):
    """The device did not answer within its deadline."""


class CardGone(ReaderError):
    """The card left the field before the read finished: ask for another tap."""


class CardNotSupported(ReaderError):
    """The card or code was read but cannot be used (no supported application,
    not a wallet code, a chip card swiped where a tap is required, ...)."""


class CardDataError(ReaderError):
    """The card answered with data that does not parse (Luhn, TLV, track format)."""


class EntryMode(enum.StrEnum):
    CONTACTLESS = "CONTACTLESS"
    MAGSTRIPE = "MAGSTRIPE"
    WALLET = "WALLET"


class ReaderState(enum.StrEnum):
    """As reported on the status topic (docs/protocol.md part C ``readers``)."""

    READY = "ready"
    OFFLINE = "offline"
    FAULT = "fault"


def mask_pan(pan: str) -> str:
    """At most the first 6 and last 4 digits, the rest as ``*`` (PCI DSS
    3.4.1), and always at least 6 hidden, so a short PAN (ISO/IEC 7812 allows
    12-19 digits) shows fewer: 12 digits keep their first 2 and last 4.
    The same rule as ``cloud.redact.mask_pan`` (drivers import nothing of
    cloud; tests/cloud/test_redact.py holds the two together)."""
    shown = max(0, len(pan) - 6)
    last = min(4, shown)
    first = min(6, shown - last)
    return pan[:first] + "*" * (len(pan) - first - last) + (pan[len(pan) - last :] if last else "")


@dataclass(frozen=True, slots=True)
class ArmContext:
    """What a reader needs to know about the payment it reads for
    (the EMV PDOL asks for amount, currency, transaction type and date)."""

    amount: Decimal
    currency_numeric: int  # ISO 4217 numeric, e.g. 634 for QAR
    currency_exponent: int  # minor units, e.g. 2 for QAR
    trans_type: int = 0x00  # EMV 9C: 0x00 purchase, 0x20 refund
    country_numeric: int = 634  # EMV 9F1A terminal country code


@dataclass(frozen=True, slots=True, repr=False)
class CardRead:
    """A card read by tap or swipe. Clear data: keep in memory only."""

    entry_mode: EntryMode
    pan: str
    expiry: str  # YYMM
    brand: str  # pay_method_id style: Visa, MasterCard, Amex, UnionPay, ...
    pan_seq: str | None = None
    track2: str | None = None  # track 2 (equivalent) as digits with '=' separator
    service_code: str | None = None
    emv_tlv: bytes = b""  # TLV for the online message (contactless only)
    cardholder_name: str | None = None
    # The application paid with (chip-contactless only), for the receipt: its
    # AID in hex (EMV Book 1 §12.2.1: RID + PIX, 5-16 bytes) and its label
    # (tag 50, 1-16 characters). Public identifiers of the card's scheme
    # application, not cardholder data.
    aid: str | None = None
    app_label: str | None = None

    @property
    def masked_pan(self) -> str:
        return mask_pan(self.pan)

    @property
    def chip_card(self) -> bool:
        """A swiped card whose service code says it has a chip (first digit 2 or 6):
        the terminal should ask for a tap instead (ISO/IEC 7813, EMV fallback rules)."""
        return self.service_code is not None and self.service_code[:1] in ("2", "6")

    def __repr__(self) -> str:
        return (
            f"CardRead(entry_mode={self.entry_mode.value}, masked_pan={self.masked_pan}, "
            f"brand={self.brand})"
        )

    __str__ = __repr__


class WalletKind(enum.StrEnum):
    WECHAT_PAY = "WeChatPay"
    ALIPAY = "Alipay"
    ALIPAY_PLUS = "AlipayPlus"


@dataclass(frozen=True, slots=True, repr=False)
class WalletCode:
    """A customer's wallet payment code, scanned by the merchant. Clear data."""

    code: str
    wallet: WalletKind

    @property
    def masked(self) -> str:
        return self.code[:4] + "*" * max(0, len(self.code) - 8) + self.code[-4:]

    def __repr__(self) -> str:
        return f"WalletCode(wallet={self.wallet.value}, code={self.masked})"

    __str__ = __repr__


Presentation = CardRead | WalletCode

StateListener = Callable[[str, ReaderState, str], None]
"""Called with (reader name, new state, human reason) on every state change."""


@dataclass(slots=True)
class ReaderInfo:
    """What ``probe()`` learned, for ``sadad-agent readers`` and the status topic."""

    kind: str
    model: str
    details: dict[str, str] = field(default_factory=dict)


class Reader(ABC):
    """Async reader. One instance per configured device; not thread-safe."""

    kind: str = ""

    def __init__(self, name: str, port: str, options: dict[str, str] | None = None) -> None:
        self.name = name
        self.port = port
        self.options = dict(options or {})

    @abstractmethod
    async def open(self) -> ReaderInfo:
        """Open the port and probe the device. Raises ReaderOffline, ReaderFault."""

    @abstractmethod
    async def probe(self) -> ReaderInfo:
        """Handshake with an open device. Raises ReaderFault, ReaderTimeout."""

    @abstractmethod
    async def arm(self, ctx: ArmContext) -> None:
        """Start accepting presentations for one payment."""

    @abstractmethod
    async def next_presentation(self) -> Presentation:
        """Wait for the next card or code while armed. Raises ReaderError subclasses;
        ``CardGone`` and ``CardNotSupported`` leave the reader armed and usable."""

    @abstractmethod
    async def disarm(self) -> None:
        """Stop accepting presentations (scanner disabled, RF polling stopped)."""

    @abstractmethod
    async def close(self) -> None:
        """Release the port. Never raises."""
