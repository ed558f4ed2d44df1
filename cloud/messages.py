"""Typed wire messages (docs/protocol.md parts A-D). Pure: no I/O.

Every Struct is the *business* part of a flat signed object; the system
fields (``app_id``, ``method``, ``timestamp``, ``sign`` ...) are added and
checked by ``cloud.envelope``. Field names are the wire names. ``decode``
turns a parsed JSON object into a Struct and raises only ``ContractError``,
naming the bad field.
"""

from __future__ import annotations

import enum
import re
from decimal import Decimal
from typing import Annotated, Any, TypeVar

import msgspec

from cloud import wirejson
from cloud.errors import ContractError
from cloud.money import check_amount, currency

T = TypeVar("T", bound=msgspec.Struct)

MAX_CLOCK_SKEW_MS = 15 * 60 * 1000  # "rejects one more than 15 minutes off its clock"
# Part C: the largest push a terminal takes. A genuine one is a few KB (its
# free-text fields are bounded); the terminal announces this as its MQTT 5
# Maximum Packet Size and refuses bigger payloads unread under 3.1.1.
MAX_PUSH_BYTES = 64 * 1024

# Bounds on every free-text and id field (part A; the terminal's part C
# fields follow): a POS sends what its users type, and everything
# downstream - the gateway, the push, the terminal's journal and screen -
# needs a bound. A field over its bound is refused with a ContractError
# naming it (the POS module before sending, the gateway on receipt).
MAX_DESCRIPTION = 128  # one line on the checkout screen, and then some
MAX_ATTACH = 512  # opaque to everyone but the POS
MAX_ID = 64  # trans_no, message_id, request_no
MAX_NAME = 32  # merchant_no, store_no, terminal_sn, app names
MAX_URL = 512

Description = Annotated[str, msgspec.Meta(max_length=MAX_DESCRIPTION)]
Attach = Annotated[str, msgspec.Meta(max_length=MAX_ATTACH)]
Id = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_ID)]
Name = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_NAME)]
Url = Annotated[str, msgspec.Meta(max_length=MAX_URL)]
TERMINAL_APP = "SADAD POS"  # our answer to message_receiving_application


class Method(enum.StrEnum):
    PAY_ORDER = "wisehub.cloud.pay.order"
    PAY_CLOSE = "wisehub.cloud.pay.close"
    ORDER_QUERY = "order.query"
    BANKCARD_CREATE = "cashier.pay.bankcard.trans.create"
    WALLET_CREATE = "cashier.pay.wallet.trans.create"
    TRANS_DETAIL = "cashier.trans.detail"
    TRANS_REVERSE = "cashier.trans.reverse"
    TRANS_CANCEL = "cashier.trans.cancel"
    # Sandbox-only extension (sandbox/README.md): the live gateway does not offer it.
    TERMINAL_STATUS = "sandbox.terminal.status"


class TransStatus(enum.IntEnum):
    """``trans_status`` (docs/protocol.md part A). 1, 2 and 3 are final."""

    PREORDER = 9
    PROCESSING = 0
    CLOSED = 1
    COMPLETED = 2
    CANCELLED = 3

    @property
    def is_final(self) -> bool:
        return self in (TransStatus.CLOSED, TransStatus.COMPLETED, TransStatus.CANCELLED)


class TransType(enum.IntEnum):
    SALE = 1
    VOID = 2
    REFUND = 3
    PREAUTH = 4
    PREAUTH_CANCEL = 5
    PREAUTH_COMPLETION = 6
    SALE_CASHBACK = 11


SUPPORTED_TRANS_TYPES = (TransType.SALE, TransType.VOID, TransType.REFUND)


class PayScenario(enum.StrEnum):
    SWIPE_CARD = "SWIPE_CARD"
    BSCANQR_PAY = "BSCANQR_PAY"


class QueueMode(enum.StrEnum):
    FIFO = "FIFO"
    FILO = "FILO"


class OnlineStatus(enum.StrEnum):
    ONLINE = "ONLINE"
    OFFLINE = "OFFLINE"


class PushTopic(enum.StrEnum):
    PAY_ORDER = "ecrhub.pay.order"
    PAY_CLOSE = "ecrhub.pay.close"


class EventKind(enum.StrEnum):
    RECEIVED = "received"
    DISPLAYED = "displayed"
    BUSY = "busy"
    REJECTED = "rejected"
    PAID = "paid"
    FAILED = "failed"
    CANCELLED = "cancelled"
    CLOSED = "closed"


class CardEntryMode(enum.StrEnum):
    CONTACTLESS = "CONTACTLESS"
    MAGSTRIPE = "MAGSTRIPE"


class Screen(enum.StrEnum):
    IDLE = "IDLE"
    WAITING_FOR_CONFIRM = "WAITING_FOR_CONFIRM"
    WAITING_FOR_CARD = "WAITING_FOR_CARD"
    READING = "READING"
    AUTHORIZING = "AUTHORIZING"
    RESULT = "RESULT"
    SETUP = "SETUP"


_ORDER_NO = re.compile(r"[A-Za-z0-9_\-|*@]{1,32}")
# A masked PAN of 12-19 digits: at most the first 6 and last 4 shown
# (``cloud.redact.mask_pan`` shows fewer of a short one).
_MASKED_PAN = re.compile(r"(?=.{12,19}$)\d{0,6}\*{3,13}\d{0,4}")


def _bad(field: str, why: str) -> ValueError:
    # msgspec wraps ValueError from __post_init__ into ValidationError; the
    # field path is carried in the text and recovered by ``decode``.
    return ValueError(f"{why} - at `$.{field}`")


def _check_amount(field: str, amount: Decimal | None, cur: str, *, allow_zero: bool) -> None:
    if amount is None:
        return
    try:
        check_amount(amount, cur, field, allow_zero=allow_zero)
    except ContractError as exc:
        raise _bad(field, str(exc).split(" (field")[0]) from None


def _check_currency(cur: str) -> None:
    try:
        currency(cur)
    except ContractError as exc:
        raise _bad("price_currency", str(exc)) from None


def _check_order_no(field: str, value: str | None) -> None:
    if value is not None and not _ORDER_NO.fullmatch(value):
        raise _bad(field, "must be 1-32 of letters, digits and _-|*@")


class Wire(msgspec.Struct, kw_only=True):
    """Base of every business Struct; unknown fields are ignored (forward compatible)."""


# ---------------------------------------------------------------- part A


class PayOrder(Wire):
    """``wisehub.cloud.pay.order`` request."""

    merchant_no: Name
    terminal_sn: Name
    merchant_order_no: str
    price_currency: str
    order_amount: Decimal
    store_no: Name | None = None
    message_receiving_application: Name = TERMINAL_APP
    trans_type: TransType = TransType.SALE
    orig_merchant_order_no: str | None = None
    pay_scenario: PayScenario | None = None
    tip_amount: Decimal | None = None
    description: Description | None = None
    attach: Attach | None = None
    notify_url: Url | None = None
    expires: int = 300
    order_queue_mode: QueueMode = QueueMode.FIFO
    reject_trade_when_terminal_offline: bool = False
    confirm_on_terminal: bool = False

    def __post_init__(self) -> None:
        _check_order_no("merchant_order_no", self.merchant_order_no)
        _check_order_no("orig_merchant_order_no", self.orig_merchant_order_no)
        _check_currency(self.price_currency)
        _check_amount("order_amount", self.order_amount, self.price_currency, allow_zero=False)
        _check_amount("tip_amount", self.tip_amount, self.price_currency, allow_zero=True)
        if not 1 <= self.expires <= 86_400:
            raise _bad("expires", "must be 1..86400 seconds")
        if self.trans_type not in SUPPORTED_TRANS_TYPES:
            raise _bad("trans_type", "this release supports 1 (sale), 2 (void), 3 (refund)")
        if self.trans_type != TransType.SALE and not self.orig_merchant_order_no:
            raise _bad("orig_merchant_order_no", "required for a void or refund")
        if not self.terminal_sn:
            raise _bad("terminal_sn", "must not be empty")

    @property
    def trans_amount(self) -> Decimal:
        return self.order_amount + (self.tip_amount or Decimal(0))


class PayOrderResult(Wire):
    message_id: str
    trans_no: str
    terminal_online_status: OnlineStatus
    trans_amount: Decimal
    # Sandbox-only extension: the terminal's retained status as JSON text.
    terminal_state: str | None = None


class CloseOrder(Wire):
    """``wisehub.cloud.pay.close`` request."""

    merchant_no: Name
    terminal_sn: Name
    merchant_order_no: str
    description: Description | None = None

    def __post_init__(self) -> None:
        _check_order_no("merchant_order_no", self.merchant_order_no)


class CloseOrderResult(Wire):
    message_id: str
    trans_no: str


class OrderQuery(Wire):
    """``order.query`` request: by ``merchant_order_no`` or ``trans_no``."""

    merchant_no: Name
    merchant_order_no: str | None = None
    trans_no: Id | None = None

    def __post_init__(self) -> None:
        _check_order_no("merchant_order_no", self.merchant_order_no)
        if not self.merchant_order_no and not self.trans_no:
            raise _bad("merchant_order_no", "merchant_order_no or trans_no is required")


class OrderInfo(Wire):
    """``order.query`` result; also the body of a result notification (part B)."""

    trans_no: str
    trans_type: TransType
    trans_status: TransStatus
    merchant_order_no: str
    price_currency: str
    order_amount: Decimal
    trans_amount: Decimal
    terminal_sn: str
    # Part B: whose order this is. The gateway signs every merchant's
    # notifications with one key, so a receiver binds a result to its own
    # merchant and app by these (``cloud.pos``), never by the signature alone.
    merchant_no: str | None = None
    app_id: str | None = None
    tip_amount: Decimal | None = None
    attach: str | None = None
    store_no: str | None = None
    pay_scenario: PayScenario | None = None
    paid_amount: Decimal | None = None
    pay_method_id: str | None = None
    pay_channel_trans_no: str | None = None
    ref_no: str | None = None
    auth_code: str | None = None
    masked_pan: str | None = None
    trans_end_time: str | None = None
    trans_error_code: str | None = None
    trans_error_msg: str | None = None
    # Sandbox-only extensions (sandbox/README.md "Sandbox extensions"): the
    # terminal's events with their hops, its online status and retained status.
    terminal_timeline: str | None = None
    terminal_online_status: OnlineStatus | None = None
    terminal_state: str | None = None

    def __post_init__(self) -> None:
        if self.masked_pan is not None and not _MASKED_PAN.fullmatch(self.masked_pan):
            raise _bad("masked_pan", "must be at most the first 6 / last 4 digits with * between")


class Notification(OrderInfo):
    """Result notification (part B): the query fields plus these, signed."""

    notify_id: str = ""
    notify_time: str = ""


# ---------------------------------------------------------------- part C


class PushOrder(Wire):
    """``biz_data`` of an ``ecrhub.pay.order`` push. Ids are bounded; the
    ``description`` is not (the terminal shows what fits of any text the
    gateway relays: ``cloud.redact.display``), but the push as a whole is
    (``MAX_PUSH_BYTES``)."""

    trans_no: Id
    merchant_no: Name
    terminal_sn: Name
    merchant_order_no: str
    price_currency: str
    order_amount: Decimal
    trans_type: TransType
    expires_at: int
    store_no: Name | None = None
    tip_amount: Decimal | None = None
    orig_trans_no: Id | None = None
    pay_scenario: PayScenario | None = None
    description: str | None = None
    confirm_on_terminal: bool = False
    order_queue_mode: QueueMode = QueueMode.FIFO

    def __post_init__(self) -> None:
        _check_order_no("merchant_order_no", self.merchant_order_no)
        _check_currency(self.price_currency)
        _check_amount("order_amount", self.order_amount, self.price_currency, allow_zero=False)
        _check_amount("tip_amount", self.tip_amount, self.price_currency, allow_zero=True)
        if self.trans_type not in SUPPORTED_TRANS_TYPES:
            raise _bad("trans_type", "this release supports 1, 2, 3")
        if self.trans_type != TransType.SALE and not self.orig_trans_no:
            raise _bad("orig_trans_no", "required for a void or refund")

    @property
    def trans_amount(self) -> Decimal:
        return self.order_amount + (self.tip_amount or Decimal(0))


class PushClose(Wire):
    """``biz_data`` of an ``ecrhub.pay.close`` push."""

    trans_no: Id
    merchant_no: Name
    terminal_sn: Name
    merchant_order_no: str
    description: str | None = None


class Push(Wire):
    """The push message itself (signed by the gateway key)."""

    topic: PushTopic
    message_id: Id
    app_id: Name
    timestamp: str
    version: str
    biz_data: str
    sign_type: str = "RSA2"
    sign: str = ""


class TerminalEvent(Wire):
    """Terminal -> TMS event (signed by the terminal key)."""

    event: EventKind
    message_id: str
    terminal_sn: str
    timestamp: str
    trans_no: str | None = None
    reason: str | None = None
    hops: str | None = None
    sign_type: str = "RSA2"
    sign: str = ""


class TerminalStatus(Wire):
    """Retained status topic payload (unsigned; the will carries ``offline``)."""

    status: str
    timestamp: str
    keepalive: int = 60
    screen: Screen | None = None
    readers: dict[str, str] = msgspec.field(default_factory=dict)
    queue: int = 0
    # The receipt printer: ready, paper_out, cover_open, offline; absent when
    # the terminal has none (agent.print_worker).
    printer: str | None = None

    def __post_init__(self) -> None:
        if self.status not in ("online", "offline"):
            raise _bad("status", "must be online or offline")


def terminal_state(text: str | None) -> TerminalStatus | None:
    """A ``terminal_state`` extension field (JSON text of the retained status)
    as a TerminalStatus; None when absent. Raises ContractError."""
    if not text:
        return None
    return decode(wirejson.loads(text), TerminalStatus)


class TerminalQuery(Wire):
    """``sandbox.terminal.status`` request (sandbox-only)."""

    merchant_no: str
    terminal_sn: str


class TerminalInfo(Wire):
    """``sandbox.terminal.status`` answer (sandbox-only): what the gateway knows of
    a terminal from its retained status topic. ``terminal_state`` is the last
    status as JSON text (None if it never published one); ``status_time`` is
    when the gateway received it (UTC ``YYYY-MM-DD HH:mm:ss``)."""

    terminal_sn: str
    terminal_online_status: OnlineStatus
    terminal_state: str | None = None
    status_time: str | None = None


# ---------------------------------------------------------------- part D


class BankcardCreate(Wire):
    trans_no: str
    terminal_sn: str
    order_amount: Decimal
    price_currency: str
    request_no: str
    card_cipher: str
    masked_pan: str
    card_brand: str
    entry_mode: CardEntryMode
    trans_type: TransType = TransType.SALE
    orig_trans_no: str | None = None

    def __post_init__(self) -> None:
        _check_currency(self.price_currency)
        _check_amount("order_amount", self.order_amount, self.price_currency, allow_zero=False)
        if not _MASKED_PAN.fullmatch(self.masked_pan):
            raise _bad("masked_pan", "must be at most the first 6 / last 4 digits with * between")


class WalletCreate(Wire):
    trans_no: str
    terminal_sn: str
    order_amount: Decimal
    price_currency: str
    request_no: str
    auth_code_cipher: str
    trans_type: TransType = TransType.SALE
    orig_trans_no: str | None = None

    def __post_init__(self) -> None:
        _check_currency(self.price_currency)
        _check_amount("order_amount", self.order_amount, self.price_currency, allow_zero=False)


class TransDetail(Wire):
    trans_no: str
    terminal_sn: str
    request_no: str | None = None


class TransReverse(Wire):
    trans_no: str
    terminal_sn: str
    request_no: str
    reason: str | None = None


class TransCancel(Wire):
    trans_no: str
    terminal_sn: str
    reason: str | None = None
    # Named by the answer, like every cashier call's (part D): the terminal
    # makes one per cancel, ``{sn}-{trans_no}-cancel``.
    request_no: str | None = None


class AnswerBinding(Wire):
    """What every cashier answer's ``data`` names so that it counts only for
    the question it answers (part D): the request (``request_no``: a
    create's idempotency key, or the attempt a detail, reverse or cancel is
    about), the order, the terminal, and when the gateway answered. Failure
    answers carry these too. ``cloud.answers.check_binding`` judges them."""

    trans_no: str | None = None
    terminal_sn: str | None = None
    request_no: str | None = None
    timestamp: str | None = None


class CashierResult(Wire):
    """Answer ``data`` of every cashier method."""

    trans_no: str
    trans_status: TransStatus
    auth_code: str | None = None
    ref_no: str | None = None
    pay_method_id: str | None = None
    masked_pan: str | None = None
    trans_error_code: str | None = None
    trans_error_msg: str | None = None
    # The binding (``AnswerBinding``): an answer missing any of these, or
    # naming another request, order or terminal, or stale, is no answer.
    request_no: str | None = None
    terminal_sn: str | None = None
    timestamp: str | None = None

    def __post_init__(self) -> None:
        if self.masked_pan is not None and not _MASKED_PAN.fullmatch(self.masked_pan):
            raise _bad("masked_pan", "must be at most the first 6 / last 4 digits with * between")


# ---------------------------------------------------------------- decoding

_PATH = re.compile(r"`(\$[^`]*)`")


def _plain(value: Any) -> Any:
    # msgspec wants exact Decimals; WireNumber only matters for signatures.
    if isinstance(value, Decimal):
        return Decimal(value)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def decode(obj: Any, type_: type[T]) -> T:
    """Validate a parsed JSON object into ``type_``. Raises ContractError naming the field."""
    if not isinstance(obj, dict):
        raise ContractError(f"expected a JSON object for {type_.__name__}")
    try:
        return msgspec.convert(_plain(obj), type_, strict=True)
    except msgspec.ValidationError as exc:
        text = str(exc)
        match = _PATH.search(text)
        message = text.split(" - at ")[0]
        raise ContractError(
            f"invalid {type_.__name__}: {message}", match.group(1) if match else None
        ) from None
    except RecursionError:
        raise ContractError(f"invalid {type_.__name__}: nested too deeply") from None


def to_fields(msg: msgspec.Struct) -> dict[str, Any]:
    """A Struct as a flat dict of wire values (Decimals kept; None dropped)."""
    out = msgspec.to_builtins(msg, builtin_types=(Decimal,))
    assert isinstance(out, dict)
    return {k: v for k, v in out.items() if v is not None}
