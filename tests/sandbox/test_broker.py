"""MosquittoBroker: a clear error without mosquitto, and a restart that keeps
persistent sessions (a QoS 1 message queued for an offline client survives).
Secure mode: the password hashes Mosquitto takes, the files and their modes,
users added from another process while it runs (the reload), and the NATS
users and permissions as written into each node's config.

What a secure broker refuses is tested on the real brokers in
tests/integration/test_broker_acl.py."""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from sandbox import broker_mosquitto as broker_mod
from sandbox.broker import TMS_USER, BrokerError, Credentials, connack_code, new_password
from sandbox.broker_mosquitto import (
    MOSQUITTO_ACL,
    MosquittoBroker,
    mosquitto_password_line,
    mosquitto_password_ok,
)
from sandbox.broker_nats import NATS_MQTT_DELIVERY, NatsCluster, nats_subject, nats_user


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


# ---------------------------------------------------------------- secure Mosquitto


def test_password_lines_are_mosquitto_passwds() -> None:
    """PBKDF2-SHA512, 101 iterations, 12-byte salt, base64: a line written by
    Debian's ``mosquitto_passwd -b`` checks with our function, and ours has
    its shape (the broker accepting ours is tested below)."""
    salt = bytes(range(12))
    line = mosquitto_password_line("T0001", "s3cret", salt=salt)
    user, hashed = line.split(":", 1)
    assert user == "T0001"
    assert hashed.startswith("$7$101$AAECAwQFBgcICQoL$")
    assert len(hashed.split("$")[4]) == 88  # 64 bytes in base64
    assert mosquitto_password_ok(line, "s3cret")
    assert not mosquitto_password_ok(line, "s3cret!")
    assert mosquitto_password_line("T0001", "s3cret") != line  # a random salt each time


def test_mosquitto_passwd_lines_check(tmp_path: Path) -> None:
    tool = shutil.which("mosquitto_passwd")
    if tool is None:
        pytest.skip("mosquitto_passwd not installed")
    path = tmp_path / "pw"
    subprocess.run([tool, "-c", "-b", str(path), "T0001", "s3cret"], check=True)
    assert mosquitto_password_ok(path.read_text(), "s3cret")


def test_secure_mosquitto_files_logins_and_users_added_while_it_runs(tmp_path: Path) -> None:
    b = MosquittoBroker(tmp_path / "mq", secure=True)
    b.start()
    try:
        conf = b.config_path.read_text()
        assert "allow_anonymous false" in conf
        assert f"password_file {b.password_path}" in conf
        assert f"acl_file {b.acl_path}" in conf
        assert b.acl_path.read_text() == MOSQUITTO_ACL
        for path in (b.password_path, b.acl_path, b.tms_password_path):
            assert path.stat().st_mode & 0o777 == 0o600, path
        tms = b.tms_credentials
        assert tms.username == TMS_USER
        assert b.tms_credentials == tms  # made once
        assert connack_code(b.host, b.port, "anon") == 5  # not authorized
        assert connack_code(b.host, b.port, "tms", tms) == 0
        assert connack_code(b.host, b.port, "tms", Credentials(TMS_USER, "x")) == 5

        # `sadad-sandbox provision` is another process: it finds the broker
        # by its pid file, sends SIGHUP and waits until the login works.
        password = new_password()
        other = MosquittoBroker(tmp_path / "mq", secure=True)
        other.add_user("T0001", password)
        assert connack_code(b.host, b.port, "t1", Credentials("T0001", password)) == 0
        other.add_user("T0001", password)  # again: no change, no harm
        newer = new_password()
        b.add_user("T0001", newer)
        assert connack_code(b.host, b.port, "t1", Credentials("T0001", newer)) == 0
        assert connack_code(b.host, b.port, "t1", Credentials("T0001", password)) == 5
        users = [line.split(":")[0] for line in b.password_path.read_text().splitlines()]
        assert users == ["T0001", TMS_USER]

        for bad in (TMS_USER, "a/b", "T+1", "T#", "", "x" * 65, "t.1"):
            with pytest.raises(BrokerError):
                b.add_user(bad, "pw")
    finally:
        b.stop()
    assert not b.pid_path.exists()
    # Stopped: a user added now is read at the next start.
    late = new_password()
    b.add_user("T0002", late)
    b.start()
    try:
        assert connack_code(b.host, b.port, "t2", Credentials("T0002", late)) == 0
    finally:
        b.stop()


def test_a_stale_pid_file_gets_no_signal(tmp_path: Path) -> None:
    """A pid file left by a broker that died names some other process now:
    only a mosquitto started on this config is signalled."""
    b = MosquittoBroker(tmp_path / "mq", secure=True)
    b.tms_credentials  # noqa: B018  # the files, as a start makes them
    sleeper = subprocess.Popen(["sleep", "30"])
    try:
        b.pid_path.write_text(f"{sleeper.pid}\n")
        b.add_user("T0003", new_password())  # not running: no SIGHUP, no wait
        assert sleeper.poll() is None
    finally:
        sleeper.kill()
        sleeper.wait()


def test_an_anonymous_broker_has_no_users(tmp_path: Path) -> None:
    b = MosquittoBroker(tmp_path / "mq")
    with pytest.raises(BrokerError):
        b.add_user("T0001", "pw")
    with pytest.raises(BrokerError):
        b.tms_credentials  # noqa: B018


# ---------------------------------------------------------------- secure NATS (configs only)


def test_mqtt_topics_as_nats_subjects() -> None:
    assert nats_subject("sadad/v1/terminals/T1/orders") == "sadad.v1.terminals.T1.orders"
    assert nats_subject("sadad/v1/terminals/+/events") == "sadad.v1.terminals.*.events"
    assert nats_subject("sadad/#") == "sadad.>"
    for odd in ("/a", "a/", "a//b", "a.b/c"):
        with pytest.raises(ValueError, match="plain MQTT topic"):
            nats_subject(odd)


def test_nats_users_may_use_their_own_subjects_only() -> None:
    assert nats_user("T1", "pw") == {
        "user": "T1",
        "password": "pw",
        "permissions": {
            "publish": {"allow": ["sadad.v1.terminals.T1.events", "sadad.v1.terminals.T1.status"]},
            "subscribe": {"allow": ["sadad.v1.terminals.T1.orders", NATS_MQTT_DELIVERY]},
        },
        "allowed_connection_types": ["MQTT"],
    }
    tms = nats_user(TMS_USER, "pw")
    assert tms["permissions"] == {
        "publish": {"allow": ["sadad.v1.terminals.*.orders"]},
        "subscribe": {
            "allow": ["sadad.v1.terminals.*.events", "sadad.v1.terminals.*.status", "$MQTT.sub.>"]
        },
    }


def test_secure_nats_configs_carry_every_user(tmp_path: Path) -> None:
    cluster = NatsCluster(tmp_path / "nats", nodes=3, secure=True)
    tms = cluster.tms_credentials
    assert cluster.tms_password_path.stat().st_mode & 0o777 == 0o600
    users = {TMS_USER: tms.password, "T1": "pw1"}
    text = cluster._config(cluster.nodes[1], users)
    block = text[text.index("authorization { users: ") + len("authorization { users: ") :]
    entries = json.loads(block.rsplit("}", 1)[0])
    assert [e["user"] for e in entries] == ["T1", TMS_USER]
    assert entries[1] == nats_user(TMS_USER, tms.password)
    assert "authorization" not in NatsCluster(tmp_path / "open", nodes=1)._config(
        cluster.nodes[0], None
    )


class _Running:
    """Stands for a node's process that runs (``poll()`` is None)."""

    def poll(self) -> None:
        return None


def _stream(
    name: str, leader: str | None, current: dict[str, bool], consumers: int = 1
) -> dict[str, Any]:
    return {
        "name": name,
        "cluster": {
            "leader": leader,
            "replicas": [{"name": n, "current": c} for n, c in current.items()],
        },
        "consumer_detail": [{"cluster": {"leader": leader}} for _ in range(consumers)],
    }


def _replicated_with(tmp_path: Path, views: dict[str, list[dict[str, Any]]], node: int = 1) -> bool:
    """``NatsCluster._replicated`` for node ``node`` given each node's /jsz streams."""
    cluster = NatsCluster(tmp_path, nodes=3)
    for n in cluster.nodes:
        n.proc = _Running()  # type: ignore[assignment]
    pages: dict[str, dict[str, Any]] = {
        n.name: {"account_details": [{"stream_detail": views[n.name]}]} for n in cluster.nodes
    }
    cluster._monitor = lambda node, page: pages[node.name]  # type: ignore[method-assign]
    return cluster._replicated(cluster.nodes[node])


def test_a_node_counts_as_replicated_when_each_stream_leader_says_it_is_current(
    tmp_path: Path,
) -> None:
    """The rule behind start_node and the rolling restart (unit: the /jsz
    pages as nats-server 2.9.10 gave them in the suite). Only a stream's
    leader knows whether a follower is current; a node's own view of its
    peers is ignored; any stream or consumer without a leader means not yet."""
    fine = {
        "n0": [_stream("$MQTT_msgs", "n0", {"n1": True, "n2": True})],
        "n1": [_stream("$MQTT_msgs", "n0", {"n0": False, "n2": False})],  # a follower's view
        "n2": [_stream("$MQTT_msgs", "n0", {"n0": True, "n1": False})],  # another follower's
    }
    assert _replicated_with(tmp_path / "a", fine)
    lagging = dict(fine, n0=[_stream("$MQTT_msgs", "n0", {"n1": False, "n2": True})])
    assert not _replicated_with(tmp_path / "b", lagging)
    # Seen after two kills: n1 routed, yet no stream leader in its view.
    cut_off = dict(fine, n1=[_stream("$MQTT_msgs", None, {"n0": True, "n2": True})])
    assert not _replicated_with(tmp_path / "c", cut_off)
    leaderless_consumer = dict(fine)
    leaderless_consumer["n2"] = [
        {**fine["n2"][0], "consumer_detail": [{"cluster": {"leader": None}}]}
    ]
    assert not _replicated_with(tmp_path / "d", leaderless_consumer)
    # The node leads the stream itself: nothing more to ask.
    leads = {n: [_stream("$MQTT_msgs", "n1", {"n0": True, "n2": True})] for n in fine}
    assert _replicated_with(tmp_path / "e", leads)
