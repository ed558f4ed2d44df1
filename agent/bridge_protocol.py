"""The UI bridge protocol: typed messages and a sans-I/O JSON-lines codec.

Contract (DESIGN.md "Processes": the agent's Unix socket, state events out,
cashier intents in; screen names from docs/protocol.md part C). This module does
no I/O and imports neither asyncio nor anything else from ``agent/``: the UI
(``agent/bridge_client.py``) and the CLI import it directly.

Framing
    One UTF-8 JSON object per line, terminated by ``\\n`` (a trailing ``\\r``
    and blank lines are tolerated). A line is at most ``MAX_LINE`` (64 KiB)
    bytes, newline excluded. A bad or over-long line is an error for that
    line (and that peer) only: the decoder skips to the next ``\\n`` and the
    next good line decodes.

Events, agent -> UI. Each has ``"type"`` and ``"seq"``, which the server
stamps from one counter, so every connection sees it strictly increase:

* ``hello`` - sent first on every connection::

      {"type": "hello", "seq": n, "version": 1,
       "terminal": {"sn": str, "store_name": str},
       "snapshot": {"screen": <screen event> | null,
                    "connection": <connection event> | null,
                    "readers": <readers event> | null,
                    "queue": <queue event> | null,
                    "printer": <printer event> | null}}

  so a UI that restarts mid-payment shows the right screen at once.
* ``screen``::

      {"type": "screen", "seq": n,
       "screen": "IDLE" | "WAITING_FOR_CONFIRM" | "WAITING_FOR_CARD" |
                 "READING" | "AUTHORIZING" | "RESULT" | "SETUP",
       "order": null | {"trans_no", "merchant_order_no",
                        "amount": "12.50" (string, the currency's decimals),
                        "currency", "description",
                        "trans_type": "sale" | "void" | "refund",
                        "methods": ["card", "wallet"],
                        "expires_at": ms, "confirm_required": bool},
       "progress": null | str,         (human text: "Reading card...")
       "card": null | {"masked_pan", "brand", "entry_mode"},
       "result": null | {"outcome": "approved" | "declined" | "cancelled" |
                                    "closed" | "expired" | "error",
                         "auth_code", "reason", "masked_pan"},
       "message": null | str}
* ``connection``: ``{"type": "connection", "seq": n, "mqtt": "connected" |
  "connecting" | "disconnected", "mqtt_reason": str, "gateway": "ok" |
  "unreachable" | "unknown", "gateway_reason": str}``
* ``readers``: ``{"type": "readers", "seq": n, "readers": {name: "ready" |
  "offline" | "fault"}}``
* ``queue``: ``{"type": "queue", "seq": n, "waiting": n}``
* ``printer``: ``{"type": "printer", "seq": n, "state": "none" | "ready" |
  "paper_out" | "cover_open" | "offline", "pending": n}`` (receipts queued)
* ``reply``: ``{"type": "reply", "seq": n, "id": str, "ok": bool, "data":
  {...}, "error": str | null}`` - the answer to one intent, sent to the
  client that asked only; ``data`` is the intent's reply struct
  (``agent.bridge_replies``). A line the agent could not decode is answered with
  ``ok: false, error: "bad line: ..."`` and the ``id`` found in it, if any
  (else ``""``).

Intents, UI -> agent: ``{"intent": name, "id": str, ...args}`` where name is
``confirm`` / ``cancel`` (optional ``trans_no``: the order the cashier sees),
``reload``, ``test_connection``, ``test_reader`` (optional ``reader``: one
reader name, else all), ``status``, ``enter_setup``, ``leave_setup``,
``history`` (optional ``limit``, 1..50: the last transactions, newest
first), ``reprint`` (optional ``trans_no``, else the last receipt).
Unknown extra fields are ignored (forward compatibility); an unknown intent
or event name is a bad line.

Card data: the message types hold masked PANs only (first 6 / last 4 at
most, checked when a message is built or decoded). Never put a full PAN,
track data or a wallet code in a free-text field.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Generic, Literal, TypeVar

import msgspec

from cloud.messages import Screen

__all__ = [
    "MAX_LINE",
    "PROTOCOL_VERSION",
    "AgentUnavailable",
    "BridgeError",
    "BridgeProtocolError",
    "CancelIntent",
    "CardInfo",
    "CheckConnectionIntent",
    "CheckReaderIntent",
    "ConfirmIntent",
    "ConnectionEvent",
    "ConnectionLost",
    "EnterSetupIntent",
    "Event",
    "HelloEvent",
    "Intent",
    "LeaveSetupIntent",
    "LineDecoder",
    "OrderInfo",
    "QueueEvent",
    "ReadSetupIntent",
    "ReadersEvent",
    "ReloadIntent",
    "Reply",
    "RequestTimeout",
    "ResultInfo",
    "SaveSetupIntent",
    "Screen",
    "ScreenEvent",
    "Snapshot",
    "StateEvent",
    "StatusIntent",
    "TerminalInfo",
    "UnlockSetupIntent",
    "encode_line",
    "intent_from_args",
]

PROTOCOL_VERSION = 1
MAX_LINE = 64 * 1024  # bytes per line, the terminating newline excluded
HISTORY_MAX = 50  # transactions a ``history`` reply holds at most (~15 KiB)

# First 6 / last 4 at most, with at least three mask characters between.
_MASKED_PAN = re.compile(r"\d{0,6}[*xX•]{3,}\d{0,4}")
_AMOUNT = re.compile(r"\d{1,15}(\.\d{1,4})?")


# ---------------------------------------------------------------- errors


class BridgeError(Exception):
    """Base of every error the bridge raises."""


class BridgeProtocolError(BridgeError):
    """A line broke the protocol: bad JSON, unknown type, bad field, too long.

    Raised by ``encode_line`` for a message of ours (our fault) and reported
    by ``LineDecoder.feed`` for a line from the peer (its fault).
    ``msg_id`` is the ``id`` found in the bad line, when there was one, so
    the reply can name the intent that failed.
    """

    def __init__(self, message: str, *, msg_id: str | None = None) -> None:
        super().__init__(message)
        self.msg_id = msg_id


class AgentUnavailable(BridgeError):
    """The agent cannot be reached: socket missing, refused or not permitted."""


class ConnectionLost(BridgeError):
    """The connection dropped while a request waited for its reply.

    The intent may or may not have been acted on.
    """


class RequestTimeout(BridgeError, TimeoutError):
    """No reply arrived in time."""


# ---------------------------------------------------------------- parts


def check_masked(field: str, value: str | None) -> None:
    """Raise ValueError unless ``value`` is None or a masked PAN."""
    if value is not None and not _MASKED_PAN.fullmatch(value):
        # msgspec turns this into a ValidationError when decoding.
        raise ValueError(f"{field} must be a masked PAN (first 6 / last 4 at most)")


class TerminalInfo(msgspec.Struct, frozen=True, kw_only=True):
    sn: str
    store_name: str = ""


# How an order may be paid: a card (tapped or swiped) or a wallet code.
Method = Literal["card", "wallet"]


class OrderInfo(msgspec.Struct, frozen=True, kw_only=True):
    """The order on screen. ``amount`` carries the currency's decimals."""

    trans_no: str
    merchant_order_no: str
    amount: str
    currency: str
    description: str = ""
    trans_type: Literal["sale", "void", "refund"] = "sale"
    methods: tuple[Method, ...] = ("card", "wallet")
    expires_at: int = 0
    confirm_required: bool = False

    def __post_init__(self) -> None:
        if not _AMOUNT.fullmatch(self.amount):
            raise ValueError(f"amount must be a decimal string like 12.50, not {self.amount!r}")


class CardInfo(msgspec.Struct, frozen=True, kw_only=True):
    """The card being read: masked PAN only."""

    masked_pan: str | None = None
    brand: str | None = None
    entry_mode: str | None = None

    def __post_init__(self) -> None:
        check_masked("masked_pan", self.masked_pan)


Outcome = Literal["approved", "declined", "cancelled", "closed", "expired", "error"]


class ResultInfo(msgspec.Struct, frozen=True, kw_only=True):
    outcome: Outcome
    auth_code: str | None = None
    reason: str | None = None
    masked_pan: str | None = None

    def __post_init__(self) -> None:
        check_masked("masked_pan", self.masked_pan)


# ---------------------------------------------------------------- events


class _EventBase(msgspec.Struct, frozen=True, kw_only=True, tag_field="type"):
    seq: int = 0


class ScreenEvent(_EventBase, frozen=True, kw_only=True, tag="screen"):
    screen: Screen
    order: OrderInfo | None = None
    progress: str | None = None
    card: CardInfo | None = None
    result: ResultInfo | None = None
    message: str | None = None


class ConnectionEvent(_EventBase, frozen=True, kw_only=True, tag="connection"):
    mqtt: Literal["connected", "connecting", "disconnected"]
    mqtt_reason: str = ""
    gateway: Literal["ok", "unreachable", "unknown"] = "unknown"
    gateway_reason: str = ""


ReaderState = Literal["ready", "offline", "fault"]


class ReadersEvent(_EventBase, frozen=True, kw_only=True, tag="readers"):
    readers: dict[str, ReaderState]


class QueueEvent(_EventBase, frozen=True, kw_only=True, tag="queue"):
    waiting: int


PrinterState = Literal["none", "ready", "paper_out", "cover_open", "offline"]
"""``none``: no printer configured; the others as its DLE EOT status says."""


class PrinterEvent(_EventBase, frozen=True, kw_only=True, tag="printer"):
    state: PrinterState
    pending: int = 0  # receipts waiting in the print queue


class Snapshot(msgspec.Struct, frozen=True, kw_only=True):
    """The last state event of each kind (None: not published yet)."""

    screen: ScreenEvent | None = None
    connection: ConnectionEvent | None = None
    readers: ReadersEvent | None = None
    queue: QueueEvent | None = None
    printer: PrinterEvent | None = None


class HelloEvent(_EventBase, frozen=True, kw_only=True, tag="hello"):
    terminal: TerminalInfo
    snapshot: Snapshot = Snapshot()
    version: int = PROTOCOL_VERSION


class Reply(_EventBase, frozen=True, kw_only=True, tag="reply"):
    id: str
    ok: bool
    data: dict[str, Any] = msgspec.field(default_factory=dict)
    error: str | None = None


StateEvent = ScreenEvent | ConnectionEvent | ReadersEvent | QueueEvent | PrinterEvent
"""The events ``BridgeServer.publish`` fans out (and the snapshot holds)."""

Event = (
    HelloEvent | ScreenEvent | ConnectionEvent | ReadersEvent | QueueEvent | PrinterEvent | Reply
)


# ---------------------------------------------------------------- intents


class _IntentBase(msgspec.Struct, frozen=True, kw_only=True, tag_field="intent"):
    id: str


class ConfirmIntent(_IntentBase, frozen=True, kw_only=True, tag="confirm"):
    trans_no: str | None = None


class CancelIntent(_IntentBase, frozen=True, kw_only=True, tag="cancel"):
    trans_no: str | None = None


class ReloadIntent(_IntentBase, frozen=True, kw_only=True, tag="reload"):
    pass


class CheckConnectionIntent(_IntentBase, frozen=True, kw_only=True, tag="test_connection"):
    pass


class CheckReaderIntent(_IntentBase, frozen=True, kw_only=True, tag="test_reader"):
    reader: str | None = None


class StatusIntent(_IntentBase, frozen=True, kw_only=True, tag="status"):
    pass


class EnterSetupIntent(_IntentBase, frozen=True, kw_only=True, tag="enter_setup"):
    pass


class LeaveSetupIntent(_IntentBase, frozen=True, kw_only=True, tag="leave_setup"):
    pass


class UnlockSetupIntent(_IntentBase, frozen=True, kw_only=True, tag="unlock_setup"):
    """The technician's PIN, checked by the agent (``agent.technician``); the
    connection that sent a correct one may read and save the setup until it
    leaves setup, closes or idles out."""

    pin: Annotated[str, msgspec.Meta(max_length=64)]

    def __repr__(self) -> str:  # never the PIN, in a log or a traceback
        return f"UnlockSetupIntent(id={self.id!r}, pin=<{len(self.pin)} chars>)"


class ReadSetupIntent(_IntentBase, frozen=True, kw_only=True, tag="read_setup"):
    """The ECR Hub settings as the config holds them (unlocked connections only)."""


class SaveSetupIntent(_IntentBase, frozen=True, kw_only=True, tag="save_setup"):
    """New ECR Hub settings: the agent checks them, writes its config (comments
    kept, atomically) and reloads (unlocked connections only)."""

    broker_url: str = ""
    terminal_sn: str = ""
    ca_file: str = ""
    cert_file: str = ""
    key_file: str = ""
    gateway_url: str = ""
    readers: tuple[tuple[str, str], ...] = ()


class HistoryIntent(_IntentBase, frozen=True, kw_only=True, tag="history"):
    """The last ``limit`` transactions, newest first (the cashier's history)."""

    limit: Annotated[int, msgspec.Meta(ge=1, le=HISTORY_MAX)] = HISTORY_MAX


class ReprintIntent(_IntentBase, frozen=True, kw_only=True, tag="reprint"):
    """Print the customer copy of ``trans_no`` again (None: the last receipt)."""

    trans_no: str | None = None


Intent = (
    ConfirmIntent
    | CancelIntent
    | ReloadIntent
    | CheckConnectionIntent
    | CheckReaderIntent
    | StatusIntent
    | EnterSetupIntent
    | LeaveSetupIntent
    | UnlockSetupIntent
    | ReadSetupIntent
    | SaveSetupIntent
    | HistoryIntent
    | ReprintIntent
)

INTENT_NAMES: tuple[str, ...] = (
    "confirm",
    "cancel",
    "reload",
    "test_connection",
    "test_reader",
    "status",
    "enter_setup",
    "leave_setup",
    "unlock_setup",
    "read_setup",
    "save_setup",
    "history",
    "reprint",
)


def intent_from_args(name: str, intent_id: str, **args: Any) -> Intent:
    """Build the intent ``name`` with id ``intent_id`` and its arguments.

    Raises ``BridgeProtocolError`` for an unknown name or a bad argument.
    """
    try:
        intent: Intent = msgspec.convert({**args, "intent": name, "id": intent_id}, Intent)
    except msgspec.ValidationError as exc:
        raise BridgeProtocolError(f"bad intent {name!r}: {exc}") from exc
    return intent


# ---------------------------------------------------------------- codec

_encoder = msgspec.json.Encoder()


def encode_line(msg: Event | Intent) -> bytes:
    """Encode one message as a JSON line (``\\n`` terminated).

    Raises ``BridgeProtocolError`` if it would exceed ``MAX_LINE`` or holds a
    value JSON cannot carry (e.g. in ``Reply.data``).
    """
    try:
        body = _encoder.encode(msg)
    except (TypeError, ValueError, OverflowError) as exc:
        raise BridgeProtocolError(f"cannot encode {type(msg).__name__}: {exc}") from exc
    if len(body) > MAX_LINE:
        raise BridgeProtocolError(
            f"{type(msg).__name__} is {len(body)} bytes, over the {MAX_LINE}-byte line limit"
        )
    return body + b"\n"


M = TypeVar("M")


def _find_id(line: bytes) -> str | None:
    """The ``id`` of a line that parsed as JSON but not as a message."""
    try:
        obj = msgspec.json.decode(line)
    except (msgspec.DecodeError, ValueError):
        return None
    if isinstance(obj, dict):
        value = obj.get("id")
        if isinstance(value, str):
            return value
    return None


class LineDecoder(Generic[M]):
    """Sans-I/O JSON-lines decoder: bytes in, messages (and errors) out.

    ``LineDecoder.for_events()`` decodes what the agent sends,
    ``LineDecoder.for_intents()`` what the UI sends. ``feed`` never raises
    for bad input: each bad line is reported in place, as a
    ``BridgeProtocolError`` in the returned list, and decoding goes on with
    the next line. An over-long line is reported as soon as it passes
    ``max_line`` bytes (its bytes are not kept), then skipped up to its
    newline.
    """

    def __init__(self, message_type: Any, *, max_line: int = MAX_LINE) -> None:
        self._decoder: msgspec.json.Decoder[Any] = msgspec.json.Decoder(message_type)
        self._max_line = max_line
        self._buf = bytearray()
        self._scanned = 0  # bytes of _buf known to hold no newline
        self._discarding = False  # inside an over-long line, until its newline

    @staticmethod
    def for_events(*, max_line: int = MAX_LINE) -> LineDecoder[Event]:
        return LineDecoder(Event, max_line=max_line)

    @staticmethod
    def for_intents(*, max_line: int = MAX_LINE) -> LineDecoder[Intent]:
        return LineDecoder(Intent, max_line=max_line)

    @property
    def buffered(self) -> int:
        """Bytes held for a line not yet complete."""
        return len(self._buf)

    def feed(self, data: bytes) -> list[M | BridgeProtocolError]:
        """Take bytes; return the messages and errors of the lines they end."""
        out: list[M | BridgeProtocolError] = []
        self._buf += data
        while True:
            nl = self._buf.find(b"\n", self._scanned)
            if nl < 0:
                self._scanned = len(self._buf)
                if self._discarding:
                    self._buf.clear()
                    self._scanned = 0
                elif len(self._buf) > self._max_line:
                    out.append(self._too_long())
                    self._buf.clear()
                    self._scanned = 0
                    self._discarding = True
                return out
            line = bytes(self._buf[:nl])
            del self._buf[: nl + 1]
            self._scanned = 0
            if self._discarding:
                self._discarding = False
                continue
            if len(line) > self._max_line:
                out.append(self._too_long())
                continue
            if not line.strip():
                continue
            out.append(self._decode(line))

    def _too_long(self) -> BridgeProtocolError:
        return BridgeProtocolError(f"line longer than {self._max_line} bytes")

    def _decode(self, line: bytes) -> M | BridgeProtocolError:
        try:
            msg: M = self._decoder.decode(line)
        except msgspec.ValidationError as exc:
            return BridgeProtocolError(str(exc), msg_id=_find_id(line))
        except (msgspec.DecodeError, ValueError) as exc:  # ValueError: bad UTF-8
            return BridgeProtocolError(f"not JSON: {exc}")
        return msg
