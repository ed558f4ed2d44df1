"""The order on screen: amount, order number, prompt, card, message, countdown, keys."""

from __future__ import annotations

from collections.abc import Callable

from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.content import Content
from textual.widgets import Button, Static

from ui.messages import CashierIntent
from ui.view import CheckoutView, methods_text
from ui.widgets.amount import Amount
from ui.widgets.countdown import Countdown
from ui.widgets.prompt import Prompt


class OrderPanel(Vertical):
    """Shown from WAITING_FOR_CONFIRM to AUTHORIZING. ``show(view)`` updates it.

    The buttons are for touch panels; they never take focus, so Enter and
    Esc always mean confirm and cancel.
    """

    def __init__(
        self, clock: Callable[[], int], *, ascii_only: bool = False, id: str | None = None
    ) -> None:
        super().__init__(id=id)
        self.clock = clock
        self.ascii_only = ascii_only

    def compose(self) -> ComposeResult:
        yield Static(id="order-line")
        yield Static(id="order-description")
        yield Amount(ascii_only=self.ascii_only, id="amount")
        yield Prompt(self.clock, id="prompt")
        yield Static(id="card")
        yield Static(id="message")
        yield Static(id="methods")
        yield Countdown(self.clock, id="countdown")
        with Horizontal(id="order-actions"):
            confirm = Button("Confirm  Enter", id="confirm", variant="success")
            cancel = Button("Cancel  Esc", id="cancel", variant="error")
            for button in (confirm, cancel):
                button.can_focus = False
                yield button

    def show(self, view: CheckoutView) -> None:
        order = view.order
        self.query_one("#order-line", Static).update(Content(view.order_line()))
        self.query_one("#order-description", Static).update(Content(view.description()))
        self.query_one(Amount).show(order.amount if order else "", order.currency if order else "")
        self.query_one(Prompt).show(view.prompt(), busy=view.in_progress())
        self.query_one("#card", Static).update(Content(view.card_line()))
        message = view.message()
        msg = self.query_one("#message", Static)
        msg.update(Content(message))
        msg.display = bool(message)
        waiting = not view.in_progress()
        methods = self.query_one("#methods", Static)
        methods.update(Content(methods_text(order.methods) if order else ""))
        methods.display = waiting and not view.can_confirm
        countdown = self.query_one(Countdown)
        countdown.deadline = order.expires_at if order and view.can_cancel else 0
        self.query_one("#confirm", Button).display = view.can_confirm
        self.query_one("#cancel", Button).display = view.can_cancel

    def on_button_pressed(self, event: Button.Pressed) -> None:
        event.stop()
        if event.button.id in ("confirm", "cancel"):
            self.post_message(CashierIntent(event.button.id))
