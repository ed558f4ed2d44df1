"""What the checkout is told: the screen, as the bridge protocol's structs
(``agent.bridge_protocol``), built from the order (``ShownOrder``) and the
reader's presentation, in the look the state table gives each state
(``State.screen``). Only masked card data, checked by those structs."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from decimal import Decimal
from typing import Literal

import msgspec

from agent import bridge_protocol as bp
from agent.bridge_protocol import Method
from agent.journal import Phase, ShownOrder
from agent.states import State
from cloud import money
from cloud.messages import Screen
from drivers.base import CardRead, Presentation

log = logging.getLogger(__name__)

_TRANS_TYPES: dict[int, Literal["sale", "void", "refund"]] = {1: "sale", 2: "void", 3: "refund"}


def trans_type_name(trans_type: int) -> Literal["sale", "void", "refund"]:
    return _TRANS_TYPES.get(trans_type, "sale")


def order_info(tx: ShownOrder, methods: Sequence[Method]) -> bp.OrderInfo:
    return bp.OrderInfo(
        trans_no=tx.trans_no,
        merchant_order_no=tx.merchant_order_no,
        amount=amount_text(tx.trans_amount, tx.currency),
        currency=tx.currency,
        description=tx.description or "",
        trans_type=trans_type_name(tx.trans_type),
        methods=tuple(methods),
        expires_at=tx.expires_at,
        confirm_required=bool(tx.confirm),
    )


def card_info(p: Presentation) -> bp.CardInfo:
    """The card or code presented. A wallet code's mask is not a PAN mask
    (an 18-digit code masked 4 + 10 + 4 would pass for one): brand only."""
    if not isinstance(p, CardRead):
        return bp.CardInfo(brand=p.wallet.value, entry_mode="WALLET")
    try:
        return bp.CardInfo(masked_pan=p.masked_pan, brand=p.brand, entry_mode=p.entry_mode.value)
    except ValueError:  # not a masked PAN: show the brand only
        return bp.CardInfo(brand=p.brand, entry_mode=p.entry_mode.value)


# What the result screen calls each final phase.
_OUTCOMES: dict[Phase, bp.Outcome] = {
    Phase.APPROVED: "approved",
    Phase.DECLINED: "declined",
    Phase.CANCELLED: "cancelled",
    Phase.CLOSED: "closed",
    Phase.EXPIRED: "expired",
}


def result_info(
    phase: Phase,
    reason: str | None,
    card: bp.CardInfo | None,
    auth_code: str | None = None,
) -> bp.ResultInfo:
    """The result of a final ``phase``."""
    return bp.ResultInfo(
        outcome=_OUTCOMES[phase],
        auth_code=auth_code,
        reason=reason,
        masked_pan=card.masked_pan if card is not None else None,
    )


def amount_text(amount: Decimal, currency: str) -> str:
    """``12.50``: the amount with its currency's decimals (ISO 4217)."""
    exp = money.currency(currency).exponent
    return f"{amount.quantize(Decimal(1).scaleb(-exp)):f}"


def look(
    state: State,
    tx: ShownOrder,
    methods: Sequence[Method],
    progress: str | None = None,
    card: bp.CardInfo | None = None,
    result: bp.ResultInfo | None = None,
    message: str | None = None,
) -> bp.ScreenEvent:
    """``tx`` as the state table says ``state`` looks."""
    return bp.ScreenEvent(
        screen=state.screen(bool(tx.confirm)),
        order=order_info(tx, methods),
        progress=progress,
        card=card,
        result=result,
        message=message,
    )


IDLE = bp.ScreenEvent(screen=Screen.IDLE)

# The checkout and the status, told of each change: the screen and how many wait.
ScreenSink = Callable[[bp.ScreenEvent, int], None]


class CheckoutScreen:
    """The screen the checkout shows now (``view``); each change is sent
    (``send``) with how many orders wait. ``send`` never raises: what the
    checkout shows must not decide what happens to the money (a screen that
    cannot be drawn is logged; the order goes on)."""

    def __init__(
        self,
        sink: ScreenSink | None,
        status: Callable[[], None] | None,
        *,
        waiting: Callable[[], int],
        beat: Callable[[], None],
    ) -> None:
        self._sink: ScreenSink = sink or (lambda _view, _waiting: None)
        self._status = status or (lambda: None)
        self._waiting = waiting
        self._beat = beat
        self.view = IDLE

    def idle(self) -> None:
        self.view = IDLE
        self.send()

    def show(self, view: bp.ScreenEvent) -> None:
        """``view`` (``look``: an order as a state looks)."""
        self.view = view
        self.send()

    def offered(self, tx: ShownOrder, methods: Sequence[Method]) -> bool:
        """``tx`` as OFFERED looks; False, and nothing sent, if shown so already."""
        view = look(State.OFFERED, tx, methods, "Confirm the amount" if tx.confirm else None)
        if view == self.view:
            return False
        self.show(view)
        return True

    def progress(self, text: str) -> None:
        self.view = msgspec.structs.replace(self.view, progress=text)
        self.send()

    def message(self, text: str) -> None:
        self.view = msgspec.structs.replace(self.view, message=text)
        self.send()

    def send(self) -> None:
        """Tell the checkout and the status (never raises); a sign of life."""
        self._beat()
        try:
            self._sink(self.view, self._waiting())
        except Exception:
            log.exception("screen %s could not be shown", self.view.screen)
        try:
            self._status()
        except Exception:
            log.exception("status could not be published")
