"""Textual messages for what the agent sends: one typed message per event kind.

The app's bridge worker turns each item of ``BridgeClient.events()`` into
one of these with ``to_message`` and posts it to the app; handlers match
``AgentMessage`` (every kind) or one kind.
"""

from __future__ import annotations

from textual.message import Message

from agent import bridge_protocol as bp
from agent.bridge_client import AgentLost


class AgentMessage(Message):
    """Base: one event from the agent, or a client-side AgentLost notice."""

    def __init__(self, event: bp.Event | AgentLost) -> None:
        super().__init__()
        self.event = event


class AgentHello(AgentMessage):
    """The agent greeted us: terminal and a snapshot of its state."""


class ScreenChanged(AgentMessage):
    """The checkout screen the agent wants shown."""


class ConnectionChanged(AgentMessage):
    """TMS (MQTT) and gateway connection states."""


class ReadersChanged(AgentMessage):
    """Reader states."""


class QueueChanged(AgentMessage):
    """How many orders wait behind the current one."""


class PrinterChanged(AgentMessage):
    """The receipt printer's state and how many receipts wait for it."""


class AgentDown(AgentMessage):
    """The agent cannot be reached now; the client keeps reconnecting."""


_KINDS: dict[type, type[AgentMessage]] = {
    bp.HelloEvent: AgentHello,
    bp.ScreenEvent: ScreenChanged,
    bp.ConnectionEvent: ConnectionChanged,
    bp.ReadersEvent: ReadersChanged,
    bp.QueueEvent: QueueChanged,
    bp.PrinterEvent: PrinterChanged,
    AgentLost: AgentDown,
}


def to_message(event: bp.Event | AgentLost) -> AgentMessage | None:
    """The message for ``event`` (None for a reply, which requests consume)."""
    kind = _KINDS.get(type(event))
    return kind(event) if kind is not None else None


# ---------------------------------------------------------------- UI -> app


class CashierIntent(Message):
    """The cashier asked to ``confirm`` or ``cancel`` the order on screen."""

    def __init__(self, intent: str) -> None:
        super().__init__()
        self.intent = intent


class OpenSetup(Message):
    """The technician asked for the setup screen."""


class OpenHistory(Message):
    """The cashier asked for the last transactions."""


class Reprint(Message):
    """The cashier asked for a receipt again: ``trans_no``'s, or the last one (None)."""

    def __init__(self, trans_no: str | None = None) -> None:
        super().__init__()
        self.trans_no = trans_no
