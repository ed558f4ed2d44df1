"""``cloud.timeline``: parsing the sandbox's ``terminal_timeline``, merging and
printing hops, the busy event's queue position and why a waiting order waits."""

from __future__ import annotations

from typing import Any

import pytest

from cloud import wirejson
from cloud.errors import ContractError
from cloud.messages import OnlineStatus, TransStatus
from cloud.timeline import (
    HOPS,
    busy_reason,
    hop_lines,
    hop_rows,
    parse_timeline,
    queue_position,
    why_pending,
)
from tests.cloud.pos_peer import GatewayPeer


def _event(event: str, hops: dict[str, int] | None = None, **extra: Any) -> dict[str, Any]:
    item: dict[str, Any] = {
        "event": event,
        "message_id": "M1",
        "timestamp": "1700000000000",
        "received_ms": 1700000000100,
        **extra,
    }
    if hops is not None:
        item["hops"] = hops
    return item


SALE = [
    _event("received", {"push_received": 1000, "shown": 1002, "journaled": 1004}),
    _event("displayed", {"push_received": 1000, "shown": 1002, "journaled": 1004}),
    _event("paid", {name: 1000 + 10 * i for i, name in enumerate(HOPS)}),
]


def test_hops_merged_in_time_order() -> None:
    timeline = parse_timeline(wirejson.dumps(SALE))
    assert [e.event for e in timeline.events] == ["received", "displayed", "paid"]
    hops = timeline.hops()
    assert list(hops) == list(HOPS)
    assert hops["journaled"] == 1004  # the earliest report of a hop wins
    assert timeline.queue_position() is None


def test_hops_at_the_same_ms_keep_the_sale_order() -> None:
    timeline = parse_timeline(
        wirejson.dumps([_event("paid", {"sent": 5, "payment_journaled": 5, "card_read": 5})])
    )
    assert list(timeline.hops()) == ["card_read", "payment_journaled", "sent"]


def test_rows_and_lines() -> None:
    rows = hop_rows({"push_received": 100, "journaled": 105, "acknowledged": 107})
    assert [(r.name, r.since_ms, r.gap_ms) for r in rows] == [
        ("push_received", 0, None),
        ("journaled", 5, 5),
        ("acknowledged", 7, 2),
    ]
    assert hop_lines({"push_received": 100, "journaled": 105}) == [
        "  push_received               0 ms",
        "  journaled                   5 ms  +5 ms",
    ]
    assert hop_lines({}) == []


def test_busy_position_until_the_order_is_shown() -> None:
    assert busy_reason(3) == "queue position 3"
    assert queue_position(busy_reason(3)) == 3
    assert queue_position(None) is None
    queued = [_event("received"), _event("busy", reason=busy_reason(2))]
    assert parse_timeline(wirejson.dumps(queued)).queue_position() == 2
    shown = [*queued, _event("displayed")]
    assert parse_timeline(wirejson.dumps(shown)).queue_position() is None
    unspecific = [_event("busy")]  # a terminal that does not say where: next at best
    assert parse_timeline(wirejson.dumps(unspecific)).queue_position() == 1


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ('{"event": "paid"}', "$.terminal_timeline"),
        ("[1]", "$.terminal_timeline[0]"),
        ('[{"message_id": "M"}]', "$.terminal_timeline[0]"),
        ('[{"event": "paid", "hops": {"sent": "soon"}}]', "$.terminal_timeline[0].hops"),
        ('[{"event": "paid", "hops": {"sent": true}}]', "$.terminal_timeline[0].hops"),
    ],
)
def test_malformed_timeline(text: str, field: str) -> None:
    with pytest.raises(ContractError) as error:
        parse_timeline(text)
    assert error.value.field == field


def test_absent_timeline_is_empty() -> None:
    assert parse_timeline(None).events == ()
    assert parse_timeline(None).hops() == {}


def _state(queue: int) -> str:
    return wirejson.dumps(
        {"status": "online", "timestamp": "1", "keepalive": 30, "screen": "RESULT", "queue": queue}
    )


@pytest.mark.parametrize(
    ("events", "online", "queue", "why"),
    [
        ([], None, None, None),  # the live gateway: nothing known
        ([_event("received")], "ONLINE", None, "received by the terminal"),
        (
            [_event("received"), _event("displayed")],
            "ONLINE",
            0,
            "on the terminal's screen, waiting for the customer",
        ),
        (
            [_event("received"), _event("busy", reason="queue position 2")],
            "ONLINE",
            3,
            "terminal busy: the order waits in its queue at position 2; 3 waiting now",
        ),
        ([], "OFFLINE", None, "terminal offline: it gets the order when it reconnects"),
        (
            [_event("busy", reason="queue position 1")],
            "OFFLINE",
            None,
            "terminal offline: it gets the order when it reconnects "
            "(the order was at position 1 of its queue)",
        ),
    ],
)
def test_why_pending(
    events: list[dict[str, Any]], online: str | None, queue: int | None, why: str | None
) -> None:
    info = GatewayPeer().info(
        terminal_timeline=wirejson.dumps(events) if events else None,
        terminal_online_status=online,
        terminal_state=None if queue is None else _state(queue),
    )
    assert why_pending(info) == why


def test_why_pending_only_for_waiting_orders() -> None:
    peer = GatewayPeer()
    busy = wirejson.dumps([_event("busy", reason="queue position 1")])
    paid = peer.info(status=TransStatus.COMPLETED, terminal_timeline=busy)
    assert why_pending(paid) is None
    garbled = peer.info(terminal_timeline="[1]", terminal_online_status=OnlineStatus.ONLINE)
    assert why_pending(garbled) is None  # a malformed extension explains nothing
