"""The checkout screen: idle, order, progress, result, agent lost.

It only shows a ``CheckoutView`` (``show(view)``, called by the app on every
agent event) and turns keys into messages for the app: ``CashierIntent``
(Enter/F1 confirm, Esc/F4 cancel), ``OpenSetup`` (F2), ``Reprint`` (F3, the
last receipt; with a printer) and ``OpenHistory`` (F5; not while an order is
on screen: a cashier must not leave a live payment). The last line shows
only the keys that work now (``KeyHints``).

The screen and its panels keep their widgets as attributes and never
``query_one`` on an event: Textual caches each query per node under the
node's "children changed" count, which every ``display`` toggle bumps (the
panel switch, the message line, the touch buttons), so each event would
leave stale entries behind, up to 1,024 per node (~1 MB for the checkout
over its first ~250 sales, measured with tracemalloc; Textual 8.2.8).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar

from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Container
from textual.screen import Screen
from textual.widgets import ContentSwitcher

from ui.messages import CashierIntent, OpenHistory, OpenSetup, Reprint
from ui.view import CheckoutView, Phase
from ui.widgets.agent_lost import AgentLostPanel
from ui.widgets.idle_panel import IdlePanel
from ui.widgets.key_hints import KeyHints, working_keys
from ui.widgets.order_panel import OrderPanel
from ui.widgets.queue_indicator import QueueIndicator
from ui.widgets.result_panel import ResultPanel
from ui.widgets.status_bar import StatusBar

PANELS: dict[Phase, str] = {
    "connecting": "lost",
    "lost": "lost",
    "idle": "idle",
    "order": "order",
    "result": "result",
}


class CheckoutScreen(Screen[None]):
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("enter,f1", "confirm", "Confirm", key_display="Enter/F1"),
        Binding("escape,f4", "cancel", "Cancel", key_display="Esc/F4"),
        Binding("f2", "setup", "Setup", key_display="F2"),
        Binding("f3", "reprint", "Reprint", key_display="F3"),
        Binding("f5", "history", "History", key_display="F5"),
    ]

    def __init__(
        self,
        view: CheckoutView,
        clock: Callable[[], int],
        *,
        ascii_only: bool = False,
        hint: str = "",
    ) -> None:
        super().__init__(id="checkout", classes="ascii" if ascii_only else "")
        self.view = view
        self.clock = clock
        self.ascii_only = ascii_only
        self.hint = hint
        self._ready = False
        self._status = StatusBar(id="status")
        self._body = Container(id="body")
        self._switcher = ContentSwitcher(id="panels", initial="lost")
        self._lost = AgentLostPanel(id="lost")
        self._idle = IdlePanel(id="idle")
        self._order = OrderPanel(clock, ascii_only=ascii_only, id="order")
        self._result = ResultPanel(ascii_only=ascii_only, id="result")
        self._queue = QueueIndicator(id="queue")
        self._keys = KeyHints(id="keys")

    def compose(self) -> ComposeResult:
        yield self._status
        with self._body, self._switcher:
            yield self._lost
            yield self._idle
            yield self._order
            yield self._result
        yield self._queue
        yield self._keys

    def on_mount(self) -> None:
        self._ready = True
        self.show(self.view)

    def show(self, view: CheckoutView) -> None:
        """Show ``view`` (the app calls this after each agent event)."""
        self.view = view
        if not self._ready:
            return  # on_mount shows it
        self._status.show(view)
        panel = PANELS[view.phase]
        if panel == "lost":
            self._lost.show(view)
        elif panel == "idle":
            self._idle.show(view, self.hint)
        elif panel == "order":
            self._order.show(view)
        else:
            self._result.show(view)
        self._switcher.current = panel
        self._body.set_classes(f"-{panel}")
        self._queue.show(view)
        self._keys.show(working_keys(self))

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "confirm":
            return self.view.can_confirm
        if action == "cancel":
            return self.view.can_cancel
        if action == "setup":
            return not self.view.busy
        if action == "reprint":
            return self.view.has_printer and not self.view.busy
        if action == "history":
            return self.view.agent_up and not self.view.busy
        return True

    def action_confirm(self) -> None:
        self.post_message(CashierIntent("confirm"))

    def action_cancel(self) -> None:
        self.post_message(CashierIntent("cancel"))

    def action_setup(self) -> None:
        self.post_message(OpenSetup())

    def action_reprint(self) -> None:
        self.post_message(Reprint())

    def action_history(self) -> None:
        self.post_message(OpenHistory())
