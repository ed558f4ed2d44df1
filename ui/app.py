"""``sadad-ui``: the checkout and setup screens, a thin client of the agent.

A worker iterates ``BridgeClient.events()`` and posts each event as a typed
message (``ui.messages``); the app folds it into a ``CheckoutView`` and the
checkout screen shows it. Keys come back as ``CashierIntent`` / ``OpenSetup``
messages and leave as intents through the client, each in a worker; a
failed or refused reply shows a notification. The app can crash or restart
at any time: the agent owns the payment, and its hello on reconnect
restores the screen.

``--ascii`` (or ``SADAD_UI_ASCII=1``) draws borders, scrollbars and radio
buttons with ASCII for console fonts without box drawing; ``--ansi-colors``
(the default when ``TERM=linux``) uses the terminal's 16 colours.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import time
from collections.abc import Callable, Sequence
from datetime import tzinfo
from pathlib import Path
from typing import ClassVar

from textual import on, work
from textual.app import App
from textual.binding import Binding, BindingType
from textual.scrollbar import ScrollBar, ScrollBarRender

from agent import bridge_protocol as bp
from agent.bridge_client import BridgeClient
from agent.bridge_replies import ActionReply, reply_data
from agent.paths import SOCKET
from ui.heap import can_release, release_free_heap
from ui.messages import (
    AgentMessage,
    CashierIntent,
    OpenHistory,
    OpenSetup,
    Reprint,
    to_message,
)
from ui.render_caches import forget_sale_text
from ui.screens.checkout import CheckoutScreen
from ui.screens.history import HistoryScreen, reprint_and_tell
from ui.screens.setup import SetupScreen
from ui.view import CheckoutView

__all__ = ["DEFAULT_SOCKET", "CheckoutApp", "build_app", "main"]

log = logging.getLogger(__name__)

DEFAULT_SOCKET = str(SOCKET)
INTENT_TIMEOUT = 10.0


class AsciiScrollBarRender(ScrollBarRender):
    """Scrollbars from spaces and colour only (no eighth-block glyphs)."""

    VERTICAL_BARS: ClassVar[list[str]] = [" "] * 8
    HORIZONTAL_BARS: ClassVar[list[str]] = [" "] * 8


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


class CheckoutApp(App[None], inherit_bindings=False):
    """The checkout. ``client`` and ``clock`` (ms) can be injected for tests.

    It cannot be quit from its keyboard (the unit runs it on the terminal's
    screen for the cashier) unless ``allow_quit`` (the demo: Ctrl+Q)."""

    CSS_PATH = str(Path(__file__).with_name("app.tcss"))  # absolute: subclasses live elsewhere
    TITLE = "Sadad checkout"
    ENABLE_COMMAND_PALETTE = False
    # Ctrl+Q quits only where allowed (the demo); on a terminal it does nothing.
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("ctrl+q", "quit", "Quit", show=False, priority=True),
    ]

    def __init__(
        self,
        socket_path: str = DEFAULT_SOCKET,
        client: BridgeClient | None = None,
        *,
        clock: Callable[[], int] | None = None,
        ascii_borders: bool = False,
        ansi_colors: bool = False,
        hint: str = "",
        allow_quit: bool = False,
    ) -> None:
        super().__init__()
        self.client = client or BridgeClient(socket_path)
        self.allow_quit = allow_quit
        self.view = CheckoutView()
        self.clock = clock or _now_ms
        self.ascii_borders = ascii_borders
        self.ansi_colors = ansi_colors
        self.hint = hint
        self.setup_open = False
        self.tz: tzinfo | None = None  # the history's times: local (tests pin it)
        self._scrollbar_renderer = ScrollBar.renderer
        self._checkout: CheckoutScreen | None = None

    @property
    def checkout(self) -> CheckoutScreen:
        """The checkout screen (the default screen, under setup)."""
        if self._checkout is None:
            self._checkout = CheckoutScreen(
                self.view, self.clock, ascii_only=self.ascii_borders, hint=self.hint
            )
        return self._checkout

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "quit":
            return self.allow_quit
        return True

    def get_default_screen(self) -> CheckoutScreen:
        return self.checkout

    def on_mount(self) -> None:
        if self.ansi_colors:
            self.theme = "ansi-dark"
        if self.ascii_borders:
            ScrollBar.renderer = AsciiScrollBarRender
        if not can_release():
            log.info("no malloc_trim in this C library: free heap pages stay with the checkout")
        self.listen()

    async def on_unmount(self) -> None:
        ScrollBar.renderer = self._scrollbar_renderer
        if self.setup_open and self.client.connected:
            with contextlib.suppress(bp.BridgeError):
                await self.client.request("leave_setup", timeout=1.0)
        await self.client.close()

    # ------------------------------------------------------------ events in

    @work(exclusive=True, group="bridge")
    async def listen(self) -> None:
        await self.client.connect()
        async for event in self.client.events():
            message = to_message(event)
            if message is not None:
                self.post_message(message)

    @on(AgentMessage)
    def apply_agent_event(self, message: AgentMessage) -> None:
        was_busy = self.view.busy
        self.view.apply(message.event)
        self.checkout.show(self.view)
        if was_busy and not self.view.busy:
            forget_sale_text()  # the sale's text is never drawn again (ui.render_caches)
            # and the pages its drawing freed go back, once idle is drawn (ui.heap)
            self.call_after_refresh(release_free_heap)
        if self.view.busy and isinstance(self.screen, HistoryScreen):
            # An order came in: the history only reads, so it gives way at once
            # rather than hide the order from the cashier (setup asks instead).
            self.pop_screen()
        order = self.view.order
        if self.setup_open and self.view.busy and not was_busy and order is not None:
            self.notify(
                f"Order {order.merchant_order_no} is waiting: press Esc to close setup",
                severity="warning",
                timeout=30,
            )

    # ------------------------------------------------------------ intents out

    def on_cashier_intent(self, message: CashierIntent) -> None:
        order = self.view.order
        if order is not None:
            self.send_intent(message.intent, order.trans_no)

    @work(group="intents")
    async def send_intent(self, name: str, trans_no: str) -> None:
        if not self.client.connected:
            self.notify(f"Cannot {name}: the agent is not running", severity="error")
            return
        try:
            reply = await self.client.request(name, timeout=INTENT_TIMEOUT, trans_no=trans_no)
        except bp.BridgeError as exc:
            self.notify(f"{name.capitalize()} failed: {exc}", severity="error")
            return
        if not reply.ok:
            self.notify(f"{name.capitalize()} failed: {reply.error}", severity="error")
            return
        answer = reply_data(reply, ActionReply)
        if not answer.accepted:
            reason = answer.reason or "refused"
            self.notify(f"{name.capitalize()} refused: {reason}", severity="warning")

    # ------------------------------------------------------------ receipts, history

    def on_reprint(self, message: Reprint) -> None:
        self.reprint(message.trans_no)

    @work(group="intents")
    async def reprint(self, trans_no: str | None) -> None:
        await reprint_and_tell(self, self.client, trans_no)

    def on_open_history(self, _message: OpenHistory) -> None:
        if self.view.busy or not isinstance(self.screen, CheckoutScreen):
            return
        screen = HistoryScreen(self.client, self.clock, self.tz, ascii_only=self.ascii_borders)
        self.push_screen(screen)

    # ------------------------------------------------------------ setup

    def on_open_setup(self, _message: OpenSetup) -> None:
        if self.setup_open:
            return
        if self.view.busy:
            self.notify("Finish or cancel the order first", severity="warning")
            return
        self.setup_open = True
        screen = SetupScreen(self.client, self.clock, ascii_only=self.ascii_borders)
        self.push_screen(screen, callback=self._setup_closed)
        self.setup_intent("enter_setup")

    def _setup_closed(self, _result: None) -> None:
        self.setup_open = False
        self.setup_intent("leave_setup")

    @work(group="setup-intents")
    async def setup_intent(self, name: str) -> None:
        if not self.client.connected:
            return
        try:
            await self.client.request(name, timeout=INTENT_TIMEOUT)
        except bp.BridgeError as exc:
            log.warning("%s: %s", name, exc)


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() not in ("", "0", "false", "no")


def build_app(argv: Sequence[str] | None = None) -> CheckoutApp:
    """The app ``sadad-ui`` runs, from its command line."""
    parser = argparse.ArgumentParser(prog="sadad-ui", description="Sadad checkout screen")
    parser.add_argument("--socket", default=DEFAULT_SOCKET, help="the agent's UI socket")
    parser.add_argument(
        "--allow-quit", action="store_true", help="Ctrl+Q quits (the demo; never on a terminal)"
    )
    parser.add_argument(
        "--ascii",
        action="store_true",
        default=_env_flag("SADAD_UI_ASCII"),
        help="ASCII borders for console fonts without box drawing (env SADAD_UI_ASCII=1)",
    )
    parser.add_argument(
        "--ansi-colors",
        action=argparse.BooleanOptionalAction,
        default=os.environ.get("TERM") == "linux",
        help="use the terminal's 16 colours (default on the Linux console)",
    )
    parser.add_argument("--hint", default="", help="a line to show while idle (the demo's)")
    args = parser.parse_args(argv)
    return CheckoutApp(
        args.socket,
        ascii_borders=args.ascii,
        allow_quit=args.allow_quit,
        ansi_colors=args.ansi_colors,
        hint=args.hint,
    )


def main(argv: Sequence[str] | None = None) -> int:
    build_app(argv).run()
    return 0
