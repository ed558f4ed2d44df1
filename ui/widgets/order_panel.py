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
        # Kept, not queried on each event (ui.screens.checkout says why).
        self._line = Static(id="order-line")
        self._description = Static(id="order-description")
        self._amount = Amount(ascii_only=ascii_only, id="amount")
        self._prompt = Prompt(clock, id="prompt")
        self._card = Static(id="card")
        self._message = Static(id="message")
        self._methods = Static(id="methods")
        self._countdown = Countdown(clock, id="countdown")
        self._confirm = Button("Confirm  Enter", id="confirm", variant="success")
        self._cancel = Button("Cancel  Esc", id="cancel", variant="error")
        for button in (self._confirm, self._cancel):
            button.can_focus = False

    def compose(self) -> ComposeResult:
        yield self._line
        yield self._description
        yield self._amount
        yield self._prompt
        yield self._card
        yield self._message
        yield self._methods
        yield self._countdown
        with Horizontal(id="order-actions"):
            yield self._confirm
            yield self._cancel

    def show(self, view: CheckoutView) -> None:
        order = view.order
        self._line.update(Content(view.order_line()))
        self._description.update(Content(view.description()))
        self._amount.show(order.amount if order else "", order.currency if order else "")
        self._prompt.show(view.prompt(), busy=view.in_progress())
        self._card.update(Content(view.card_line()))
        message = view.message()
        self._message.update(Content(message))
        self._message.display = bool(message)
        waiting = not view.in_progress()
        self._methods.update(Content(methods_text(order.methods) if order else ""))
        self._methods.display = waiting and not view.can_confirm
        self._countdown.deadline = order.expires_at if order and view.can_cancel else 0
        self._confirm.display = view.can_confirm
        self._cancel.display = view.can_cancel

    def on_button_pressed(self, event: Button.Pressed) -> None:
        event.stop()
        if event.button.id in ("confirm", "cancel"):
            self.post_message(CashierIntent(event.button.id))
