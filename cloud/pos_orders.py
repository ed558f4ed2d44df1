"""What a POS client knows of each order it has seen: the per-order state
that makes notifications and polling agree (docs/protocol.md part B).

Every ``OrderInfo`` seen (bound query answers, verified and bound
notifications) goes through ``OrderBook.observe``: the first final status
(1, 2, 3) is kept for good - a later non-final or different final status
never replaces it (a different final one is logged as an error) - except a
paid order voided or reversed afterwards (2 then 3, ``REVERSAL``); a
non-final status only moves forward (9 -> 0: a late 9 is ignored), by the
rule in ``cloud.status_rules`` that every layer applies. A final status
wakes whoever waits for that order (``final_event``). The book is bounded
(the oldest orders are forgotten first), as is the set of notifications
already taken (``first_time``).
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

from cloud.errors import ContractError, TerminalBusy, WaitTimeout
from cloud.messages import OnlineStatus, OrderInfo
from cloud.status_rules import REVERSAL, TRANS_STATUS, Verdict
from cloud.timeline import parse_timeline, why_pending

log = logging.getLogger("cloud.pos")

MAX_TRACKED = 10_000  # orders and notification keys remembered (oldest dropped first)

UpdateHook = Callable[[OrderInfo], None]


@dataclass(slots=True)
class OrderState:
    last: OrderInfo | None = None
    final: OrderInfo | None = None
    terminal_sn: str | None = None
    trans_no: str | None = None
    final_event: asyncio.Event = field(default_factory=asyncio.Event)
    hooks: list[UpdateHook] = field(default_factory=list)


class OrderBook:
    """Use from one event loop."""

    def __init__(self) -> None:
        self._orders: OrderedDict[str, OrderState] = OrderedDict()
        self._seen: OrderedDict[tuple[str, int], None] = OrderedDict()

    def get(self, merchant_order_no: str) -> OrderState | None:
        return self._orders.get(merchant_order_no)

    def state(self, merchant_order_no: str) -> OrderState:
        state = self._orders.get(merchant_order_no)
        if state is None:
            state = self._orders[merchant_order_no] = OrderState()
            while len(self._orders) > MAX_TRACKED:
                self._orders.popitem(last=False)
        else:
            self._orders.move_to_end(merchant_order_no)
        return state

    def observe(self, info: OrderInfo, source: str) -> None:
        """Record what we saw of an order (``cloud.status_rules``): the first
        final status sticks (but a paid order may be voided or reversed
        afterwards: ``REVERSAL``), non-final ones only move forward."""
        state = self.state(info.merchant_order_no)
        state.terminal_sn = state.terminal_sn or info.terminal_sn
        state.trans_no = state.trans_no or info.trans_no
        held = state.final or state.last
        verdict = TRANS_STATUS.judge(None if held is None else held.trans_status, info.trans_status)
        if held is not None and (held.trans_status, info.trans_status) == REVERSAL:
            log.warning(
                "order %s (trans_no %s) was paid, now CANCELLED (voided or reversed), from %s",
                info.merchant_order_no,
                info.trans_no,
                source,
            )
            verdict, state.final = Verdict.MOVE, None
        if held is not None and verdict is Verdict.CONFLICT:
            log.error(
                "CONFLICT: order %s (trans_no %s) is final %s, but %s now says %s; "
                "keeping %s - check it with the gateway",
                info.merchant_order_no,
                info.trans_no,
                held.trans_status.name,
                source,
                info.trans_status.name,
                held.trans_status.name,
            )
            return
        if held is not None and (verdict is Verdict.STALE or state.final is not None):
            log.debug(
                "order %s: ignoring %s %s, keeping %s",
                info.merchant_order_no,
                source,
                info.trans_status.name,
                held.trans_status.name,
            )
            return
        state.last = info  # a move, or a non-final repeat with fresher details
        if info.trans_status.is_final:
            state.final = info
            state.final_event.set()
            log.info(
                "order %s final: %s (from %s)",
                info.merchant_order_no,
                info.trans_status.name,
                source,
            )
        for hook in list(state.hooks):
            try:
                hook(info)
            except Exception:
                log.exception("order update hook failed")

    def known(self, merchant_order_no: str) -> OrderInfo | None:
        """The state held for an order: its first final status
        if it has one, else the latest status seen, else None."""
        state = self._orders.get(merchant_order_no)
        if state is None:
            return None
        return state.final or state.last

    def first_time(self, trans_no: str, status: int) -> bool:
        """Whether this ``trans_no`` + status is new (a notification repeats)."""
        key = (trans_no, status)
        if key in self._seen:
            self._seen.move_to_end(key)
            return False
        self._seen[key] = None
        while len(self._seen) > MAX_TRACKED:
            self._seen.popitem(last=False)
        return True


def queue_position(info: OrderInfo | None) -> int | None:
    """The order's place in a busy terminal's queue, if it still waits there."""
    if info is None or info.trans_status.is_final:
        return None
    try:
        return parse_timeline(info.terminal_timeline).queue_position()
    except ContractError:
        return None


def wait_timeout(merchant_order_no: str, waited_s: float, last: OrderInfo | None) -> WaitTimeout:
    if last is None:
        return WaitTimeout(merchant_order_no, waited_s, None)
    why = why_pending(last)
    position = queue_position(last)
    if position is not None and last.terminal_online_status is not OnlineStatus.OFFLINE:
        return TerminalBusy(merchant_order_no, waited_s, last, why, position)
    return WaitTimeout(merchant_order_no, waited_s, last, why)
