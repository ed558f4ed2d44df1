"""What the agent answers each intent: the typed ``data`` of a ``reply``
(``agent.bridge_protocol``).

On the wire ``data`` stays a JSON object; both ends speak these structs:
the agent returns one from its intent handler (``BridgeServer`` encodes it),
a client reads one with ``reply_data(reply, Type)``. Every field has a
default, so the empty ``data`` of a refused intent (``ok: false`` with an
``error``) still reads, as a failure. Unknown extra fields are ignored
(forward compatibility).
"""

from __future__ import annotations

from typing import TypeVar

import msgspec

from agent.bridge_protocol import BridgeProtocolError, Reply, check_masked


class _Data(msgspec.Struct, frozen=True, kw_only=True):
    pass


class Refused(_Data, frozen=True, kw_only=True):
    """Any intent the agent will not act on now (setup locked): reads as a
    failure with its ``reason`` in every reply type that has ``ok``."""

    ok: bool = False
    reason: str = ""


class ActionReply(_Data, frozen=True, kw_only=True):
    """``confirm``, ``cancel``: whether the agent took it, else why not."""

    accepted: bool = False
    reason: str = ""


class SetupModeReply(_Data, frozen=True, kw_only=True):
    """``enter_setup``, ``leave_setup``: whether the terminal is in setup now."""

    setup: bool = False


class UnlockReply(_Data, frozen=True, kw_only=True):
    """``unlock_setup``. ``reason``: ``wrong``, ``locked`` (for ``locked_for``
    seconds) or a sentence; ``attempts_left`` before a lockout."""

    ok: bool = False
    reason: str = ""
    locked_for: int = 0
    attempts_left: int | None = None


class EcrHubFields(_Data, frozen=True, kw_only=True):
    """The setup screen's settings, as the config holds them."""

    broker_url: str = ""
    terminal_sn: str = ""
    ca_file: str = ""
    cert_file: str = ""
    key_file: str = ""
    gateway_url: str = ""
    readers: tuple[tuple[str, str], ...] = ()


class ReadSetupReply(_Data, frozen=True, kw_only=True):
    """``read_setup``: the settings, or why they could not be read."""

    ok: bool = False
    reason: str = ""
    settings: EcrHubFields | None = None


class SaveSetupReply(_Data, frozen=True, kw_only=True):
    """``save_setup``: written (``ok``), then reloaded or not (``reason``);
    ``warnings``: TLS files named but missing."""

    ok: bool = False
    reason: str = ""
    reloaded: bool = False
    warnings: tuple[str, ...] = ()


class ReloadReply(_Data, frozen=True, kw_only=True):
    ok: bool = False
    reason: str = ""


class ConnectionCheckReply(_Data, frozen=True, kw_only=True):
    """``test_connection`` (the intent; ``agent.mqtt.probe.probe_connection``):
    the broker, then the gateway. ``stage`` is where it failed (dns, tcp,
    tls, auth, subscribe, gateway) or ``done``."""

    ok: bool = False
    stage: str = ""
    reason: str = ""
    gateway: str = ""


class ReaderCheckReply(_Data, frozen=True, kw_only=True):
    """``test_reader``: what was presented (masked), or why nothing was."""

    ok: bool = False
    reader: str = ""
    reason: str = ""
    presented: str = ""


class CurrentOrder(_Data, frozen=True, kw_only=True):
    trans_no: str
    merchant_order_no: str
    amount: str  # "12.50 QAR"
    state: str


class StatusReply(_Data, frozen=True, kw_only=True):
    """``status`` (``sadad-agent status``)."""

    sn: str = ""
    mqtt: str = ""
    mqtt_reason: str = ""
    gateway: str = ""
    screen: str = ""
    readers: dict[str, str] = msgspec.field(default_factory=dict)
    current: CurrentOrder | None = None
    queue: tuple[str, ...] = ()
    printer: str = "none"  # bridge_protocol.PrinterState
    printer_pending: int = 0  # receipts waiting for it


class HistoryEntry(_Data, frozen=True, kw_only=True):
    """One transaction as the cashier's history shows it. ``at_ms``: when it
    last changed; ``amount``: the total with its currency ("12.50 QAR");
    ``status``: the journal's phase (APPROVED, DECLINED, ...); the card
    masked (first 6 / last 4 at most) or a wallet's brand only."""

    trans_no: str = ""
    merchant_order_no: str = ""
    at_ms: int = 0
    amount: str = ""
    trans_type: str = "sale"
    status: str = ""
    masked_pan: str = ""
    brand: str = ""
    entry_mode: str = ""
    auth_code: str = ""
    reference: str = ""
    reason: str = ""
    receipt: bool = False  # a receipt can be printed for it (final, card or code read)

    def __post_init__(self) -> None:
        check_masked("masked_pan", self.masked_pan or None)


class HistoryReply(_Data, frozen=True, kw_only=True):
    """``history``: newest first."""

    entries: tuple[HistoryEntry, ...] = ()


class ReprintReply(_Data, frozen=True, kw_only=True):
    """``reprint``: queued for the printer (``trans_no``), else why not."""

    ok: bool = False
    reason: str = ""
    trans_no: str = ""


ReplyData = (
    Refused
    | ActionReply
    | SetupModeReply
    | UnlockReply
    | ReadSetupReply
    | SaveSetupReply
    | ReloadReply
    | ConnectionCheckReply
    | ReaderCheckReply
    | StatusReply
    | HistoryReply
    | ReprintReply
)

D = TypeVar("D", bound=_Data)


def reply_data(reply: Reply, kind: type[D]) -> D:
    """``reply.data`` read as ``kind``. Raises ``BridgeProtocolError`` when it
    does not fit (a field of the wrong type)."""
    try:
        return msgspec.convert(reply.data, kind)
    except msgspec.ValidationError as exc:
        raise BridgeProtocolError(f"bad {kind.__name__} in reply {reply.id}: {exc}") from exc


def to_data(data: ReplyData) -> dict[str, object]:
    """The JSON object a reply carries."""
    out = msgspec.to_builtins(data)
    assert isinstance(out, dict)
    return out
