"""Fail fast and say why (issue 8, point 3) in the POS module, against the
simulated gateway peer: an offline terminal's refusal is ``TerminalOffline``,
a busy terminal's queue is a warning and ``TerminalBusy`` with the position,
a timeout says why the order waits, and ``terminal_status`` reads the
sandbox's live terminal state."""

from __future__ import annotations

import logging
import random
from decimal import Decimal
from typing import Any

import pytest

from cloud import wirejson
from cloud.errors import CloudRejected, TerminalBusy, TerminalOffline, WaitTimeout
from cloud.messages import Method, OnlineStatus, Screen, TransStatus, terminal_state
from cloud.pos import AsyncPosClient, PosClient
from cloud.timeline import busy_reason
from tests.cloud.pos_peer import FakeClock, GatewayPeer, make_config

ORDER: dict[str, Any] = {
    "terminal_sn": "T0001",
    "merchant_order_no": "A-1",
    "order_amount": Decimal("12.50"),
}
STATE = wirejson.dumps(
    {
        "status": "online",
        "timestamp": "1700000000000",
        "keepalive": 30,
        "screen": "AUTHORIZING",
        "readers": {"nfc": "ready"},
        "queue": 2,
    }
)


def _client(peer: GatewayPeer) -> AsyncPosClient:
    return peer.client(clock=FakeClock(), rng=random.Random(7))


def _events(*items: tuple[str, str | None]) -> str:
    return wirejson.dumps(
        [
            {"event": e, "message_id": "M", "timestamp": "1", "received_ms": 1, "reason": r}
            for e, r in items
        ]
    )


async def test_offline_terminal_is_refused_at_once() -> None:
    peer = GatewayPeer(online=OnlineStatus.OFFLINE)
    async with _client(peer) as client:
        with pytest.raises(TerminalOffline) as refused:
            await client.push_order(**ORDER, reject_trade_when_terminal_offline=True)
        assert isinstance(refused.value, CloudRejected)  # what callers already catch
        assert refused.value.code == "40903"
        created = await client.push_order(**ORDER)  # without the flag it waits for it
    assert created.terminal_online_status is OnlineStatus.OFFLINE
    assert len(peer.calls_of(Method.PAY_ORDER)) == 2  # never retried


async def test_busy_terminal_is_reported_then_a_timeout_is_terminal_busy(
    caplog: pytest.LogCaptureFixture,
) -> None:
    peer = GatewayPeer()
    queued = peer.info(
        terminal_timeline=_events(("received", None), ("busy", busy_reason(2))),
        terminal_online_status=OnlineStatus.ONLINE,
        terminal_state=STATE,
    )
    peer.query_script = [queued] * 20
    seen: list[TransStatus] = []
    async with _client(peer) as client:
        with caplog.at_level(logging.WARNING, "cloud.pos"), pytest.raises(TerminalBusy) as waited:
            await client.wait_for_final("A-1", 10, on_update=lambda i: seen.append(i.trans_status))
    error = waited.value
    assert isinstance(error, WaitTimeout)
    assert error.position == 2
    assert error.why == "terminal busy: the order waits in its queue at position 2; 2 waiting now"
    assert str(error) == (
        "order A-1 not final after 10 s (last status PREORDER; terminal busy: the order waits "
        "in its queue at position 2; 2 waiting now)"
    )
    warnings = [r.getMessage() for r in caplog.records if "busy" in r.getMessage()]
    assert warnings == [  # once, not at every poll
        "order A-1 waits in the queue of terminal T0001 at position 2: the terminal is busy "
        "with another order"
    ]
    assert set(seen) == {TransStatus.PREORDER}  # on_update heard every poll


async def test_timeout_says_why_when_not_busy() -> None:
    peer = GatewayPeer()
    shown = peer.info(
        terminal_timeline=_events(
            ("received", None), ("busy", busy_reason(1)), ("displayed", None)
        ),
        terminal_online_status=OnlineStatus.ONLINE,
    )
    peer.query_script = [shown] * 20
    async with _client(peer) as client:
        with pytest.raises(WaitTimeout) as waited:
            await client.wait_for_final("A-1", 10)
    assert not isinstance(waited.value, TerminalBusy)  # it left the queue
    assert waited.value.why == "on the terminal's screen, waiting for the customer"

    offline = peer.info(
        terminal_timeline=_events(("busy", busy_reason(1))),
        terminal_online_status=OnlineStatus.OFFLINE,
    )
    peer.query_script = [offline] * 20
    async with _client(peer) as client:
        with pytest.raises(WaitTimeout) as waited:
            await client.wait_for_final("A-1", 10)
    assert not isinstance(waited.value, TerminalBusy)  # offline says more than busy
    assert (waited.value.why or "").startswith("terminal offline")


async def test_terminal_status() -> None:
    peer = GatewayPeer(terminal_state=STATE)
    async with _client(peer) as client:
        info = await client.terminal_status("T0001")
    assert (info.terminal_sn, info.terminal_online_status) == ("T0001", OnlineStatus.ONLINE)
    state = terminal_state(info.terminal_state)
    assert state is not None
    assert (state.screen, state.readers, state.queue, state.keepalive) == (
        Screen.AUTHORIZING,
        {"nfc": "ready"},
        2,
        30,
    )
    sent = peer.calls_of(Method.TERMINAL_STATUS)[0].fields
    assert (sent["merchant_no"], sent["terminal_sn"]) == ("M0001", "T0001")


def test_sync_client_terminal_status() -> None:
    peer = GatewayPeer(online=OnlineStatus.OFFLINE)
    with PosClient(make_config(), transport=peer.transport()) as client:
        info = client.terminal_status("T0001")
    assert info.terminal_online_status is OnlineStatus.OFFLINE
    assert info.terminal_state is None
