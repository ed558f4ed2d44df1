"""MosquittoBroker: a clear error without mosquitto, and a restart that keeps
persistent sessions (a QoS 1 message queued for an offline client survives)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from sandbox import broker as broker_mod
from sandbox.broker import BrokerError, MosquittoBroker


def test_missing_mosquitto_says_how_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("shutil.which", lambda name: None)
    monkeypatch.setattr(broker_mod, "_CANDIDATES", ())
    with pytest.raises(BrokerError, match="install it with: apt-get install mosquitto"):
        MosquittoBroker(tmp_path).start()


def _client(b: MosquittoBroker, client_id: str, received: list[bytes] | None = None) -> mqtt.Client:
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
    ready = threading.Event()
    c.on_connect = lambda *a: ready.set()
    if received is not None:
        c.on_message = lambda cl, u, msg: received.append(bytes(msg.payload))
    props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
    props.SessionExpiryInterval = 3600
    c.connect(b.host, b.port, clean_start=False, properties=props)
    c.loop_start()
    assert ready.wait(5)
    return c


def _stop(c: mqtt.Client) -> None:
    c.disconnect()
    c.loop_stop()


def test_restart_keeps_port_and_persistent_sessions(tmp_path: Path) -> None:
    b = MosquittoBroker(tmp_path / "mq")
    b.start()
    try:
        port = b.port
        assert b.url == f"mqtt://127.0.0.1:{port}"
        conf = b.config_path.read_text()
        assert f"listener {port} 127.0.0.1" in conf
        assert f"persistence_location {b.data_dir}/" in conf

        sub = _client(b, "persistent-sub")
        done = threading.Event()
        sub.on_subscribe = lambda *a: done.set()
        sub.subscribe("t/queued", qos=1)
        assert done.wait(5)
        _stop(sub)  # offline; its session stays

        pub = _client(b, "pub")
        pub.publish("t/queued", b"while-offline", qos=1).wait_for_publish(5)
        _stop(pub)

        b.restart()
        assert b.port == port
        received: list[bytes] = []
        sub = _client(b, "persistent-sub", received)
        try:
            for _ in range(250):
                if received:
                    break
                time.sleep(0.02)
        finally:
            _stop(sub)
        assert received == [b"while-offline"]
    finally:
        b.stop()
    assert not b.running
    b.stop()  # idempotent
