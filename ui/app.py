"""``sadad-ui``: the checkout screen, a thin client of the agent's UI bridge.

Events from ``ui.bridge_client.BridgeClient`` are folded into a
``CheckoutView`` and shown; the cashier's keys go back as intents (Enter
confirm, Esc cancel). The app can crash or restart at any time: the agent
owns the payment, and the hello on reconnect restores the screen.
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable, Sequence
from typing import ClassVar

from textual import work
from textual.app import App, ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical
from textual.message import Message
from textual.widgets import Footer, Static

from agent import bridge_protocol as bp
from ui.bridge_client import AgentLost, BridgeClient
from ui.view import CheckoutView

DEFAULT_SOCKET = "/run/sadad-agent/agent.sock"


class AgentEvent(Message):
    """One event from the agent (or an AgentLost notice)."""

    def __init__(self, event: bp.Event | AgentLost) -> None:
        super().__init__()
        self.event = event


class CheckoutApp(App[None]):
    CSS_PATH = "app.tcss"
    TITLE = "Sadad checkout"
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("enter,f1", "confirm", "Confirm"),
        Binding("escape,f4", "cancel", "Cancel"),
        Binding("ctrl+q", "quit", "Quit", show=False),
    ]

    def __init__(
        self,
        socket_path: str = DEFAULT_SOCKET,
        *,
        client: BridgeClient | None = None,
        clock: Callable[[], int] | None = None,
        ascii_borders: bool = False,
        hint: str = "",
    ) -> None:
        super().__init__()
        self.client = client or BridgeClient(socket_path)
        self.view = CheckoutView()
        self.clock = clock or (lambda: time.time_ns() // 1_000_000)
        self.ascii_borders = ascii_borders
        self.hint = hint

    def compose(self) -> ComposeResult:
        with Vertical(id="main"):
            yield Static("", id="status")
            yield Static("", id="amount")
            yield Static("", id="order")
            yield Static("", id="prompt")
            yield Static("", id="message")
            yield Static("", id="countdown")
            yield Static("", id="queue")
        yield Footer()

    def on_mount(self) -> None:
        if self.ascii_borders:
            self.query_one("#main").styles.border = ("ascii", "white")
        self.refresh_view()
        self.listen()
        self.set_interval(1.0, self.refresh_view)

    @work(exclusive=True, group="bridge")
    async def listen(self) -> None:
        await self.client.connect()
        async for event in self.client.events():
            self.post_message(AgentEvent(event))

    def on_agent_event(self, message: AgentEvent) -> None:
        self.view.apply(message.event)
        self.refresh_view()

    def refresh_view(self) -> None:
        v = self.view
        self.query_one("#status", Static).update(v.status_line())
        self.query_one("#amount", Static).update(v.amount())
        self.query_one("#order", Static).update(v.order_line())
        prompt = self.query_one("#prompt", Static)
        prompt.update(v.prompt())
        outcome = v.screen.result.outcome if v.screen and v.screen.result else ""
        prompt.set_classes(f"outcome-{outcome}" if outcome else "")
        idle = v.screen_name == "IDLE"
        self.query_one("#message", Static).update(v.message() or (self.hint if idle else ""))
        self.query_one("#countdown", Static).update(v.countdown(self.clock()))
        self.query_one("#queue", Static).update(v.queue_line())

    async def action_confirm(self) -> None:
        self.send_intent("confirm")

    async def action_cancel(self) -> None:
        self.send_intent("cancel")

    @work(group="intents")
    async def send_intent(self, name: str) -> None:
        order = self.view.screen.order if self.view.screen else None
        if order is None:
            return
        try:
            reply = await self.client.request(name, trans_no=order.trans_no, timeout=10.0)
        except bp.BridgeError as exc:
            self.notify(f"{name} failed: {exc}", severity="error")
            return
        if not reply.ok or not reply.data.get("accepted", True):
            reason = reply.error or reply.data.get("reason", "refused")
            self.notify(f"{name}: {reason}", severity="warning")

    async def on_unmount(self) -> None:
        await self.client.close()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="sadad-ui", description="Sadad checkout screen")
    parser.add_argument("--socket", default=DEFAULT_SOCKET, help="the agent's UI socket")
    parser.add_argument("--config", default=None, help="agent config (for setup; not used yet)")
    parser.add_argument(
        "--ascii", action="store_true", default=bool(os.environ.get("SADAD_UI_ASCII"))
    )
    parser.add_argument("--hint", default="", help="a line to show while idle (the demo's)")
    args = parser.parse_args(argv)
    CheckoutApp(args.socket, ascii_borders=args.ascii, hint=args.hint).run()
    return 0
