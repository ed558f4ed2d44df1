"""The checkout screen: idle, order, progress, result, agent lost.

It only shows a ``CheckoutView`` (``show(view)``, called by the app on every
agent event) and turns keys into messages for the app: ``CashierIntent``
(Enter/F1 confirm, Esc/F4 cancel) and ``OpenSetup`` (F2). The last line shows
only the keys that work now (``KeyHints``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar

from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Container
from textual.screen import Screen
from textual.widgets import ContentSwitcher

from ui.messages import CashierIntent, OpenSetup
from ui.view import CheckoutView
from ui.widgets.agent_lost import AgentLostPanel
from ui.widgets.idle_panel import IdlePanel
from ui.widgets.key_hints import KeyHints
from ui.widgets.order_panel import OrderPanel
from ui.widgets.queue_indicator import QueueIndicator
from ui.widgets.result_panel import ResultPanel
from ui.widgets.status_bar import StatusBar

PANELS = {
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

    def compose(self) -> ComposeResult:
        yield StatusBar(id="status")
        with Container(id="body"), ContentSwitcher(id="panels", initial="lost"):
            yield AgentLostPanel(id="lost")
            yield IdlePanel(id="idle")
            yield OrderPanel(self.clock, ascii_only=self.ascii_only, id="order")
            yield ResultPanel(ascii_only=self.ascii_only, id="result")
        yield QueueIndicator(id="queue")
        yield KeyHints(id="keys")

    def on_mount(self) -> None:
        self._ready = True
        self.show(self.view)

    def show(self, view: CheckoutView) -> None:
        """Show ``view`` (the app calls this after each agent event)."""
        self.view = view
        if not self._ready:
            return  # on_mount shows it
        self.query_one(StatusBar).show(view)
        panel = PANELS[view.phase]
        if panel == "lost":
            self.query_one(AgentLostPanel).show(view)
        elif panel == "idle":
            self.query_one(IdlePanel).show(view, self.hint)
        elif panel == "order":
            self.query_one(OrderPanel).show(view)
        else:
            self.query_one(ResultPanel).show(view)
        self.query_one(ContentSwitcher).current = panel
        self.query_one("#body").set_classes(f"-{panel}")
        self.query_one(QueueIndicator).show(view)
        self.query_one(KeyHints).show(
            tuple(
                (b.key_display or b.key, b.description)
                for b in self.BINDINGS
                if isinstance(b, Binding) and self.check_action(b.action, ())
            )
        )

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "confirm":
            return self.view.can_confirm
        if action == "cancel":
            return self.view.can_cancel
        if action == "setup":
            return not self.view.busy
        return True

    def action_confirm(self) -> None:
        self.post_message(CashierIntent("confirm"))

    def action_cancel(self) -> None:
        self.post_message(CashierIntent("cancel"))

    def action_setup(self) -> None:
        self.post_message(OpenSetup())
