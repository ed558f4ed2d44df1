"""Where the time of a payment went, and why an order still waits. Pure: no I/O.

The terminal journals a timestamp for each hop of a payment (``HOPS``, in the
order a sale reaches them) and sends the hops reached so far with every
terminal event (docs/protocol.md part C, ``hops``: hop name -> ms). The times
come from the terminal's monotonic clock offset to its wall clock at start,
so within one run of the agent they only increase, whatever NTP does.

The sandbox keeps those events and answers them beside ``order.query`` in
the extension field ``terminal_timeline`` (JSON text: a list of
``{event, message_id, timestamp, received_ms, reason?, hops?}`` in arrival
order). It is sandbox-only: the live gateway does not send it, and every
function here copes with its absence.

This module parses that field (``parse_timeline``), merges the hops of all
events (``Timeline.hops``), prints them as ``sadad-agent journal --show``
and ``sadad-pos query`` do (``hop_lines``), and explains an order that is
still waiting (``why_pending``): a busy terminal with the order's place in
its queue, an offline terminal, or the order on screen.

A ``busy`` event's ``reason`` is ``queue position N`` (``busy_reason``):
N counts the orders waiting behind the one on screen, 1 being the next.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from cloud import wirejson
from cloud.errors import ContractError
from cloud.messages import EventKind, OnlineStatus, OrderInfo, TransStatus, terminal_state

# The hops of a payment, in the order a sale reaches them.
HOPS = (
    "push_received",
    "shown",  # an idle terminal draws a new order before it journals it
    "journaled",
    "acknowledged",
    "card_presented",
    "card_read",
    "payment_journaled",
    "sent",
    "answered",
    "result_shown",
    "event_published",
)

_RANK = {name: i for i, name in enumerate(HOPS)}
_POSITION = re.compile(r"queue position (\d+)")
# After one of these the order is no longer waiting in the terminal's queue.
_LEFT_QUEUE = frozenset(
    {
        EventKind.DISPLAYED,
        EventKind.REJECTED,
        EventKind.PAID,
        EventKind.FAILED,
        EventKind.CANCELLED,
        EventKind.CLOSED,
    }
)


def busy_reason(position: int) -> str:
    """The ``reason`` of a ``busy`` event for an order at ``position`` (1 = next)."""
    return f"queue position {position}"


def queue_position(reason: str | None) -> int | None:
    """The position a ``busy`` event's ``reason`` names, or None."""
    match = _POSITION.search(reason or "")
    return int(match.group(1)) if match else None


@dataclass(frozen=True, slots=True)
class TimelineEvent:
    """One terminal event as the gateway received it."""

    event: str
    message_id: str
    timestamp: str
    received_ms: int
    reason: str | None = None
    hops: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class HopRow:
    """One line of a printed timeline: ms since the first hop, and since the previous one."""

    name: str
    at_ms: int
    since_ms: int
    gap_ms: int | None


@dataclass(frozen=True, slots=True)
class Timeline:
    """The terminal events of one order, in arrival order."""

    events: tuple[TimelineEvent, ...] = ()

    def hops(self) -> dict[str, int]:
        """Every hop any event carried (the earliest time when they differ),
        in time order (hops at the same ms in the order of ``HOPS``)."""
        merged: dict[str, int] = {}
        for event in self.events:
            for name, at in event.hops.items():
                merged[name] = min(at, merged.get(name, at))
        return dict(sorted(merged.items(), key=_hop_key))

    def queue_position(self) -> int | None:
        """The order's place in the terminal's queue when the terminal said
        ``busy``, as long as no later event shows it left the queue."""
        position = None
        for event in self.events:
            if event.event == EventKind.BUSY:
                position = queue_position(event.reason) or position or 1
            elif event.event in _LEFT_QUEUE:
                position = None
        return position

    def saw(self, kind: EventKind) -> bool:
        return any(e.event == kind for e in self.events)


def _hop_key(item: tuple[str, int]) -> tuple[int, int]:
    return item[1], _RANK.get(item[0], len(HOPS))


def parse_timeline(text: str | None) -> Timeline:
    """``terminal_timeline`` as a Timeline (empty for None). Raises ContractError."""
    if not text:
        return Timeline()
    items = wirejson.loads(text)
    if not isinstance(items, list):
        raise ContractError("terminal_timeline must be a JSON list", "$.terminal_timeline")
    return Timeline(tuple(_event(item, i) for i, item in enumerate(items)))


def _event(item: Any, index: int) -> TimelineEvent:
    where = f"$.terminal_timeline[{index}]"
    if not isinstance(item, dict):
        raise ContractError("each timeline entry must be an object", where)
    hops = item.get("hops") or {}
    if not isinstance(hops, dict) or not all(_is_int(v) for v in hops.values()):
        raise ContractError("hops must map hop names to ms", f"{where}.hops")
    try:
        return TimelineEvent(
            event=str(item["event"]),
            message_id=str(item.get("message_id", "")),
            timestamp=str(item.get("timestamp", "")),
            received_ms=int(item.get("received_ms", 0)),
            reason=None if item.get("reason") is None else str(item["reason"]),
            hops={str(k): int(v) for k, v in hops.items()},
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ContractError(f"bad timeline entry: {exc}", where) from None


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def hop_rows(hops: Mapping[str, int]) -> list[HopRow]:
    """The hops in time order with ms since the first hop and since the previous one."""
    rows: list[HopRow] = []
    first = prev = None
    for name, at in sorted(hops.items(), key=_hop_key):
        first = at if first is None else first
        rows.append(HopRow(name, at, at - first, None if prev is None else at - prev))
        prev = at
    return rows


def hop_lines(hops: Mapping[str, int]) -> list[str]:
    """``  name   N ms  +G ms`` per hop, as ``journal --show`` and ``sadad-pos query`` print."""
    return [
        f"  {r.name:<20} {r.since_ms:>8} ms" + ("" if r.gap_ms is None else f"  +{r.gap_ms} ms")
        for r in hop_rows(hops)
    ]


def why_pending(info: OrderInfo) -> str | None:
    """Why an order in status 9 still waits, in words, from the sandbox's
    extension fields; None when the order is not waiting or nothing is known."""
    if info.trans_status is not TransStatus.PREORDER:
        return None
    try:
        timeline = parse_timeline(info.terminal_timeline)
        state = terminal_state(info.terminal_state)
    except ContractError:
        return None
    position = timeline.queue_position()
    if info.terminal_online_status is OnlineStatus.OFFLINE:
        queued = "" if position is None else f" (the order was at position {position} of its queue)"
        return f"terminal offline: it gets the order when it reconnects{queued}"
    if position is not None:
        waiting = "" if state is None else f"; {state.queue} waiting now"
        return f"terminal busy: the order waits in its queue at position {position}{waiting}"
    if timeline.saw(EventKind.DISPLAYED):
        return "on the terminal's screen, waiting for the customer"
    if timeline.saw(EventKind.RECEIVED):
        return "received by the terminal"
    return None
