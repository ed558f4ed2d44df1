"""The TMS checks its SUBACK: a topic the broker does not grant is subscribed
again until it is (one layer: paho's client replaced by a recorder; the same
against a real NATS node that refuses it: tests/integration/test_tms_subscribe.py)."""

from __future__ import annotations

import logging
import threading
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.reasoncodes import ReasonCode

from sandbox import tms as tms_module
from sandbox.tms import TOPICS, Tms
from tests.waiting import until

GRANTED = ReasonCode(PacketTypes.SUBACK, identifier=1)
REFUSED = ReasonCode(PacketTypes.SUBACK, identifier=0x80)


class RecordingClient:
    """What the TMS asks of paho's client when it subscribes."""

    def __init__(self) -> None:
        self.subscribes: list[tuple[int, list[str]]] = []
        self._lock = threading.Lock()

    def subscribe(self, topics: list[tuple[str, int]]) -> tuple[int, int]:
        with self._lock:
            mid = len(self.subscribes) + 1
            self.subscribes.append((mid, [t for t, _qos in topics]))
        return 0, mid


def tms_with(client: RecordingClient) -> Tms:
    tms = Tms("mqtt://127.0.0.1:1", on_status=lambda *_: None, on_event=lambda *_: None)
    tms._client = client  # type: ignore[assignment]
    return tms


def suback(tms: Tms, client: Any, mid: int, codes: list[ReasonCode]) -> None:
    tms._handle_subscribe(client, None, mid, codes, None)


def test_a_refused_topic_is_subscribed_again_until_granted(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(tms_module, "SUBSCRIBE_RETRY_FIRST_S", 0.01)
    client = RecordingClient()
    tms = tms_with(client)
    tms._subscribe(client, TOPICS)  # type: ignore[arg-type]
    assert client.subscribes == [(1, list(TOPICS))]

    with caplog.at_level(logging.INFO, logger="sandbox.tms"):
        suback(tms, client, 1, [GRANTED, REFUSED])  # status granted, events not
        assert not tms.subscribed.is_set()
        until(lambda: len(client.subscribes) == 2)
        assert client.subscribes[1] == (2, [TOPICS[1]])  # only the refused one
        suback(tms, client, 2, [REFUSED])  # again
        until(lambda: len(client.subscribes) == 3)
        suback(tms, client, 3, [GRANTED])
    assert tms.subscribed.is_set()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2
    assert all(TOPICS[1] in w and TOPICS[0] not in w for w in warnings)
    assert "subscribing again in 0.01 s" in warnings[0]
    assert "subscribing again in 0.02 s" in warnings[1]  # doubling
    assert any("after 2 refusals" in r.getMessage() for r in caplog.records)


def test_a_short_suback_grants_only_what_it_lists(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tms_module, "SUBSCRIBE_RETRY_FIRST_S", 0.01)
    client = RecordingClient()
    tms = tms_with(client)
    tms._subscribe(client, TOPICS)  # type: ignore[arg-type]
    suback(tms, client, 1, [GRANTED])
    until(lambda: len(client.subscribes) == 2)
    assert client.subscribes[1] == (2, [TOPICS[1]])


def test_a_retry_after_stop_or_a_reconnect_sends_nothing() -> None:
    """The retry timer's call: nothing once the TMS stops, nothing on a
    client replaced since (its CONNACK subscribes to everything anyway)."""
    client, replaced = RecordingClient(), RecordingClient()
    tms = tms_with(client)
    tms._subscribe(replaced, TOPICS)  # type: ignore[arg-type]
    tms._stopping = True
    tms._subscribe(client, TOPICS)  # type: ignore[arg-type]
    assert client.subscribes == []
    assert replaced.subscribes == []


def test_a_suback_lost_with_its_connection_does_not_hold_back_subscribed() -> None:
    """A SUBSCRIBE sent on a connection that then dropped gets no SUBACK;
    the next CONNACK subscribes again and its SUBACK alone decides."""
    client = RecordingClient()
    tms = tms_with(client)
    tms._subscribe(client, TOPICS)  # type: ignore[arg-type]  # lost with its connection
    accepted = ReasonCode(PacketTypes.CONNACK, identifier=0)
    flags = mqtt.ConnectFlags(session_present=True)
    tms._handle_connect(client, None, flags, accepted, None)  # type: ignore[arg-type]
    assert client.subscribes[-1] == (2, list(TOPICS))
    suback(tms, client, 2, [GRANTED, GRANTED])
    assert tms.subscribed.is_set()
