"""What the engine's worker is asked to do, one at a time (so triggers never
race): typed events, handled by one ``match`` in ``Engine._handle``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from drivers.base import Presentation


@dataclass(frozen=True, slots=True)
class OfferNext:
    """Offer the next queued order if the terminal is free."""


@dataclass(frozen=True, slots=True)
class Presented:
    """A reader read a card or code (clear data: never logged)."""

    presentation: Presentation


@dataclass(frozen=True, slots=True)
class CashierAction:
    """The cashier confirmed or cancelled the order ``trans_no`` on screen."""

    action: Literal["confirm", "cancel"]
    trans_no: str


@dataclass(frozen=True, slots=True)
class ClosePushed:
    """The POS closed ``trans_no`` (a journaled close push, ``message_id``)."""

    trans_no: str
    message_id: str


InboxEvent = OfferNext | Presented | CashierAction | ClosePushed
