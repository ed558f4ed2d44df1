"""The fleet benchmark (benchmarks/fleet*.py): its MQTT codec (fleet_mqtt)
against bytes built here from the specs (3.1.1 and 5), its figures, and one
tiny run on a real secure Mosquitto with a real terminal process (the
sessions, the store, the stamps)."""

from __future__ import annotations

import asyncio
import struct
from pathlib import Path

from benchmarks import fleet, fleet_run
from benchmarks.fleet_mqtt import (
    CONNACK,
    CONNECT,
    KEEPALIVE,
    MAX_PACKET,
    PUBACK,
    PUBLISH,
    SESSION_EXPIRY,
    SUBACK,
    Publish,
    ack_code,
    connect_packet,
    parse_publish,
    puback_packet,
    publish_packet,
    receive_maximum,
)
from benchmarks.fleet_run import percentile, spans
from benchmarks.fleet_tms import schedule
from benchmarks.stamps import Packet, PacketReader


def _one(data: bytes) -> Packet:
    (packet,) = PacketReader().feed(data)
    return packet


def test_connect_311_persistent_with_a_user_and_a_will() -> None:
    p = _one(
        connect_packet(
            "T1", v5=False, username="T1", password="pw", persistent=True, will=("t/s", b"off")
        )
    )
    assert p.kind == CONNECT
    body = p.body
    assert body[:6] == b"\x00\x04MQTT"
    assert body[6] == 4  # protocol level 3.1.1
    # user, password, will retain, will QoS 1, will; clean session off
    assert body[7] == 0x80 | 0x40 | 0x20 | 0x08 | 0x04
    assert struct.unpack_from("!H", body, 8)[0] == KEEPALIVE
    assert body[10:] == b"\x00\x02T1" + b"\x00\x03t/s" + b"\x00\x03off" + b"\x00\x02T1\x00\x02pw"


def test_connect_5_announces_session_expiry_and_packet_size() -> None:
    p = _one(connect_packet("T1", v5=True, username="T1", password="pw", persistent=True))
    body = p.body
    assert body[6] == 5
    assert body[7] == 0x80 | 0x40  # clean start off
    props = body[10 : 10 + 1 + body[10]]
    assert props == (
        b"\x0a"
        + b"\x11"
        + struct.pack("!I", SESSION_EXPIRY)
        + b"\x27"
        + struct.pack("!I", MAX_PACKET)
    )
    clean = _one(connect_packet("T1", v5=True, username="u", password="p", persistent=False))
    assert clean.body[7] & 0x02


def test_publish_and_its_parse_both_versions() -> None:
    for v5 in (False, True):
        raw = publish_packet("a/b", b"payload", 7, v5=v5, retain=True, expiry_s=300 if v5 else None)
        p = _one(raw)
        assert p.kind == PUBLISH
        assert p.flags == 0x02 | 0x01  # QoS 1, retained
        if v5:
            assert b"\x05\x02" + struct.pack("!I", 300) in p.body  # Message Expiry Interval
        assert parse_publish(p, v5=v5) == Publish("a/b", 7, b"payload")


def test_acks_and_the_receive_maximum() -> None:
    assert puback_packet(258) == b"\x40\x02\x01\x02"
    suback5 = Packet(SUBACK, 0, b"\x00\x09" + b"\x03\x1f\x00\x00" + b"\x87")
    assert ack_code(suback5, v5=True) == (9, 0x87)
    assert ack_code(Packet(SUBACK, 0, b"\x00\x09\x80"), v5=False) == (9, 0x80)
    assert ack_code(Packet(PUBACK, 0, b"\x00\x05"), v5=True) == (5, 0)
    assert ack_code(Packet(PUBACK, 0, b"\x00\x05\x87\x00"), v5=True) == (5, 0x87)
    # CONNACK: flags, reason, properties: retain available, an assigned client
    # id (a string), a user property (a pair), then Receive Maximum 20.
    props = b"\x25\x01" + b"\x12\x00\x02id" + b"\x26\x00\x01k\x00\x01v" + b"\x21\x00\x14"
    connack = Packet(CONNACK, 0, b"\x00\x00" + bytes([len(props)]) + props)
    assert receive_maximum(connack) == 20
    assert receive_maximum(Packet(CONNACK, 0, b"\x00\x00\x00")) == 65535


def test_figures() -> None:
    assert percentile([], 99) == 0.0
    assert percentile([3.0, 1.0, 2.0], 50) == 2.0
    assert percentile([float(i) for i in range(1, 101)], 99) == 99.0
    assert schedule(["A", "B"], 3) == [("A", "A-0"), ("B", "B-0"), ("A", "A-1")]
    assert schedule(["A", "B"], 2, start=3) == [("B", "B-1"), ("A", "A-2")]
    out = spans(["m1", "m2"], {"m1": 1.0, "m2": 2.0}, {"m1": (1.001, 1.003)}, {"m2": 2.01})
    assert out["receipt"] == {"p50": 1.0, "p99": 1.0}
    assert out["acked"] == {"p50": 3.0, "p99": 3.0}
    assert out["received"] == {"p50": 10.0, "p99": 10.0}
    ok = {"sessions": 10, "connect": {"failed": 0}, "phases": {}}
    assert fleet.stop_reason(ok) is None
    failed = {"sessions": 10, "connect": {"failed": 2, "errors": ["F1: refused"]}}
    assert "2 of 10 sessions failed" in str(fleet.stop_reason(failed))
    slow = {
        "sessions": 10,
        "connect": {"failed": 0},
        "phases": {"terminals paced": {"lost": 0, "acked": {"p99": 1500.0}}},
    }
    assert "1500 ms" in str(fleet.stop_reason(slow))


def test_a_tiny_run_on_a_secure_mosquitto(tmp_path: Path) -> None:
    """Five terminals, one terminal process: every push verified, stored
    (fsync) and acknowledged, its received event back at the TMS, the floor's
    too; the figures are there (their values are not asserted: noisy)."""
    plan = fleet_run.Plan(
        sessions=5, paced=5, saturated=10, rate=100, window=4, workers=1, store="fsync"
    )
    result = asyncio.run(fleet_run.run("mosquitto", plan, tmp_path))
    assert result["connect"]["connected"] == 6  # and the floor's subscriber
    assert result["connect"]["failed"] == 0
    for name, phase in result["phases"].items():
        assert phase["lost"] == 0, name
        assert phase["acked"]["p50"] >= phase["receipt"]["p50"] > 0, name
    assert result["terminals"]["stored"] == 15
    assert result["terminals"]["rejected"] == 0
    assert result["terminals"]["fsyncs"] >= 1
    assert fleet.stop_reason(result) is None
