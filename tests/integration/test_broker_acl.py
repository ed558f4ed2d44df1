"""Per-terminal broker security (docs/operations.md "Credentials and ACLs"), on
a secure Mosquitto (MQTT 5) and a secure three-node NATS cluster (MQTT 3.1.1).

Two terminals, ``TA`` and ``TB``, each with its own user, and the TMS's user
(``sandbox.broker``). One terminal can neither subscribe to nor publish on
another terminal's topics, nor publish on its own orders topic, nor take
another's queued pushes by connecting under its SN; an anonymous client (or
a wrong password) cannot connect at all; the TMS can do what it must. Then
a real sale through the sandbox with its own secure broker and the real
agent, and the agent's connection probe passing with its credentials.

What the brokers do with a refused operation, measured here (Mosquitto
2.0.11, nats-server 2.9.10) and asserted so that a new version that behaves
otherwise is noticed:

- CONNECT without a user, or with a wrong password: CONNACK "Not authorized"
  (MQTT 5 0x87 on Mosquitto, 3.1.1 return code 5 on NATS);
- SUBSCRIBE to another terminal's orders (or ``+``/``#``): Mosquitto grants
  it in the SUBACK (its acl_file does not check subscriptions) and then
  never delivers a message the ACL does not let the client read; NATS
  answers 0x80 in the SUBACK. Nobody's connection is closed;
- PUBLISH outside the ACL: Mosquitto's MQTT 5 PUBACK carries 0x87 (Not
  authorized); NATS (3.1.1) sends a plain PUBACK. Both drop the message: no
  subscriber gets it and a retained one is not stored;
- a will on another terminal's status topic: accepted at CONNECT, never
  published.

"Never arrives" is shown with a sentinel: after the refused publish was
acknowledged, an authorised client publishes a message that takes the same
way to the same subscriber; once that arrives, the refused one would have
arrived before it (one broker routes in order; on NATS both go through the
same JetStream consumer).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import struct
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from agent.config import MqttConfig
from agent.mqtt.probe import probe_connection
from cloud.topics import events_topic, every_terminal, orders_topic, status_topic
from sandbox import tms as tms_module
from sandbox.broker import TMS_USER, Credentials, new_password
from sandbox.broker_mosquitto import MosquittoBroker
from sandbox.broker_nats import NatsCluster
from tests.integration.agent_rig import Terminal, running_terminal
from tests.integration.conftest import TIME_SCALE, SandboxHandle, running_sandbox
from tests.waiting import until

pytestmark = pytest.mark.timeout(120)

WAIT = 30.0  # NATS creates a JetStream consumer per QoS 1 subscription: allow it time
NOT_AUTHORIZED = 0x87  # MQTT 5 reason code
SUBACK_FAILURE = 0x80  # MQTT 3.1.1 SUBACK return code (paho: "Unspecified error")


# ---------------------------------------------------------------- the brokers


@dataclass
class Fleet:
    broker: MosquittoBroker | NatsCluster
    passwords: dict[str, str]
    tms: Credentials

    @property
    def v5(self) -> bool:
        return isinstance(self.broker, MosquittoBroker)  # NATS speaks 3.1.1 only

    def creds(self, user: str) -> Credentials:
        return self.tms if user == TMS_USER else Credentials(user, self.passwords[user])


@pytest.fixture(scope="module", params=["mosquitto", "nats"])
def fleet(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Fleet]:
    root = tmp_path_factory.mktemp(f"acl-{request.param}")
    broker: MosquittoBroker | NatsCluster = (
        MosquittoBroker(root / "mosquitto", secure=True)
        if request.param == "mosquitto"
        else NatsCluster(root / "nats", nodes=3, secure=True)
    )
    broker.start()
    try:
        passwords = {sn: new_password() for sn in ("TA", "TB")}
        for sn, password in passwords.items():
            broker.add_user(sn, password)
        yield Fleet(broker, passwords, broker.tms_credentials)
    finally:
        broker.stop()


# ---------------------------------------------------------------- an MQTT client that records


class Client:
    """A paho client (MQTT 5 on Mosquitto, 3.1.1 on NATS) recording its
    CONNACK, SUBACKs, PUBACKs and messages, with waits on each."""

    def __init__(
        self,
        fleet: Fleet,
        user: str | None,
        *,
        client_id: str | None = None,
        password: str | None = None,
        persistent: bool = False,
        will: str | None = None,
    ) -> None:
        self.v5 = fleet.v5
        self.client_id = client_id or f"acl-{user or 'anon'}-{uuid.uuid4().hex[:8]}"
        protocol = mqtt.MQTTv5 if self.v5 else mqtt.MQTTv311
        self.paho = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            protocol=protocol,
            clean_session=None if self.v5 else not persistent,
        )
        if user is not None:
            self.paho.username_pw_set(user, password or fleet.creds(user).password)
        if will is not None:
            self.paho.will_set(will, f"will of {self.client_id}".encode(), qos=1, retain=True)
        self.cond = threading.Condition()
        self.connack: ReasonCode | None = None
        self.session_present = False
        self.subacks: dict[int, list[ReasonCode]] = {}
        self.pubacks: dict[int, ReasonCode] = {}
        self.messages: list[tuple[str, bytes, bool]] = []
        self.paho.on_connect = self._on_connect
        self.paho.on_subscribe = self._on_subscribe
        self.paho.on_publish = self._on_publish
        self.paho.on_message = self._on_message
        kwargs: dict[str, Any] = {}
        if self.v5:
            props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            props.SessionExpiryInterval = 3600 if persistent else 0
            kwargs = {"clean_start": not persistent, "properties": props}
        self.paho.connect(fleet.broker.host, fleet.broker.port, 30, **kwargs)
        self.paho.loop_start()
        with self.cond:
            self.cond.wait_for(lambda: self.connack is not None, WAIT)
        assert self.connack is not None, "no CONNACK"

    def _on_connect(self, c: Any, u: Any, flags: Any, rc: ReasonCode, p: Any) -> None:
        with self.cond:
            self.connack, self.session_present = rc, bool(flags.session_present)
            self.cond.notify_all()

    def _on_subscribe(self, c: Any, u: Any, mid: int, rcs: list[ReasonCode], p: Any) -> None:
        with self.cond:
            self.subacks[mid] = rcs
            self.cond.notify_all()

    def _on_publish(self, c: Any, u: Any, mid: int, rc: ReasonCode, p: Any) -> None:
        with self.cond:
            self.pubacks[mid] = rc
            self.cond.notify_all()

    def _on_message(self, c: Any, u: Any, msg: mqtt.MQTTMessage) -> None:
        with self.cond:
            self.messages.append((msg.topic, bytes(msg.payload), bool(msg.retain)))
            self.cond.notify_all()

    @property
    def accepted(self) -> bool:
        return self.connack is not None and not self.connack.is_failure

    def subscribe(self, topic: str) -> int:
        """The SUBACK's code for ``topic`` (QoS 1)."""
        _rc, mid = self.paho.subscribe(topic, qos=1)
        assert mid is not None, "not connected"
        with self.cond:
            assert self.cond.wait_for(lambda: mid in self.subacks, WAIT), f"no SUBACK for {topic}"
            return int(self.subacks[mid][0].value)

    def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> int:
        """The PUBACK's reason code (0 under 3.1.1, which has none)."""
        info = self.paho.publish(topic, payload, qos=1, retain=retain)
        with self.cond:
            assert self.cond.wait_for(lambda: info.mid in self.pubacks, WAIT), "no PUBACK"
            return int(self.pubacks[info.mid].value)

    def wait_for(self, payload: bytes) -> list[bytes]:
        """Every payload received until ``payload`` (included)."""
        with self.cond:
            ok = self.cond.wait_for(lambda: payload in self.payloads(), WAIT)
            assert ok, f"{payload!r} never came; got {self.payloads()}"
            got = self.payloads()
            return got[: got.index(payload) + 1]

    def payloads(self) -> list[bytes]:
        return [m[1] for m in self.messages]

    def kill(self) -> None:
        """Close the socket without DISCONNECT: the broker publishes the will."""
        sock = self.paho.socket()
        self.paho.loop_stop()
        if isinstance(sock, socket.socket):
            # SO_LINGER 0: the close sends a reset, as a crash or a cut cable would.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            sock.close()

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.paho.disconnect()
        self.paho.loop_stop()


@pytest.fixture
def clients(fleet: Fleet) -> Iterator[Callable[..., Client]]:
    made: list[Client] = []

    def make(user: str | None, **kw: Any) -> Client:
        client = Client(fleet, user, **kw)
        made.append(client)
        return client

    try:
        yield make
    finally:
        for client in made:
            client.close()


def token(name: str) -> bytes:
    return f"{name}-{uuid.uuid4().hex[:8]}".encode()


def tms_listening(clients: Callable[..., Client]) -> Client:
    tms = clients(TMS_USER)
    assert tms.accepted
    for topic in (every_terminal("events"), every_terminal("status")):
        assert tms.subscribe(topic) == 1  # granted QoS 1
    return tms


# ---------------------------------------------------------------- logging in


def test_anonymous_and_wrong_passwords_cannot_connect(
    fleet: Fleet, clients: Callable[..., Client]
) -> None:
    anonymous = clients(None)
    wrong = clients("TA", password="not-" + fleet.passwords["TA"])
    unknown = clients("T-NOBODY", password=new_password())
    # MQTT 5: 0x87 Not authorized (Mosquitto answers a wrong password so too,
    # not 0x86); 3.1.1: return code 5, which paho reports as the same reason.
    for client in (anonymous, wrong, unknown):
        assert client.connack is not None
        assert client.connack.is_failure
        assert client.connack.getName() == "Not authorized"
    assert clients("TA").accepted


# ---------------------------------------------------------------- subscribing


def test_a_terminal_cannot_read_another_terminals_orders(
    fleet: Fleet, clients: Callable[..., Client]
) -> None:
    tms = clients(TMS_USER)
    victim = clients("TB")
    assert victim.subscribe(orders_topic("TB")) == 1
    thief = clients("TA")
    assert thief.subscribe(orders_topic("TA")) == 1  # its own: granted
    # Another's, any terminal's, everything: Mosquitto grants the SUBACK (and
    # filters every delivery by the ACL), NATS refuses it.
    expected = 1 if fleet.v5 else SUBACK_FAILURE
    for topic in (orders_topic("TB"), every_terminal("orders"), "#"):
        assert thief.subscribe(topic) == expected, topic
    assert thief.paho.is_connected()

    push = token("push-for-TB")
    assert tms.publish(orders_topic("TB"), push) == 0
    assert victim.wait_for(push) == [push]
    sentinel = token("sentinel-for-TA")
    assert tms.publish(orders_topic("TA"), sentinel) == 0
    assert thief.wait_for(sentinel) == [sentinel]  # and not TB's push before it


def test_the_queued_pushes_of_another_terminal_cannot_be_taken_by_its_client_id(
    fleet: Fleet, clients: Callable[..., Client]
) -> None:
    """Client ids are not bound to users in either broker: TA can connect with
    client id ``TB`` (its own password) and take over TB's session. It still
    gets none of TB's pushes. What happens to the one queued meanwhile differs:
    NATS keeps it for TB; Mosquitto 2.0.11 drops it (it removes the queued
    messages the new user may not read, ``connection_check_acl``), so a
    terminal with valid credentials can make another lose the pushes waiting
    in its session, and kick it off, on Mosquitto: its acl_file cannot tie a
    client id to a user (the dynamic-security plugin can)."""
    tms = clients(TMS_USER)
    victim = clients("TB", client_id="TB", persistent=True)
    assert victim.subscribe(orders_topic("TB")) == 1
    victim.close()  # offline, its session kept
    queued = token("queued-for-TB")
    assert tms.publish(orders_topic("TB"), queued) == 0

    thief = clients("TA", client_id="TB", persistent=True)
    assert thief.accepted
    assert thief.session_present  # it did get TB's session
    assert thief.subscribe(orders_topic("TA")) == 1
    sentinel = token("sentinel-for-TA")
    assert tms.publish(orders_topic("TA"), sentinel) == 0
    assert thief.wait_for(sentinel) == [sentinel]  # TB's queued push never came
    thief.close()

    back = clients("TB", client_id="TB", persistent=True)
    after = token("after-for-TB")
    assert tms.publish(orders_topic("TB"), after) == 0
    if fleet.v5:  # Mosquitto: lost
        assert back.wait_for(after) == [after]
    else:  # NATS: kept for TB
        assert back.wait_for(after) == [queued, after]


# ---------------------------------------------------------------- publishing


def test_a_terminal_cannot_publish_for_another_or_push_to_itself(
    fleet: Fleet, clients: Callable[..., Client]
) -> None:
    tms = tms_listening(clients)
    victim = clients("TB")
    thief = clients("TA")
    assert thief.subscribe(orders_topic("TA")) == 1
    refused = NOT_AUTHORIZED if fleet.v5 else 0  # NATS: a plain PUBACK, message dropped

    forged_event = token("forged-event")
    assert thief.publish(events_topic("TB"), forged_event) == refused
    real_event = token("TB-event")
    assert victim.publish(events_topic("TB"), real_event) == 0
    assert tms.wait_for(real_event) == [real_event]

    # A retained status for TB that is not TB's: not stored either. TB's own
    # first, so that a new subscriber must get exactly one retained message.
    real_status = token("TB-status")
    assert victim.publish(status_topic("TB"), real_status, retain=True) == 0
    forged_status = token("forged-status")
    assert thief.publish(status_topic("TB"), forged_status, retain=True) == refused
    late = clients(TMS_USER)
    assert late.subscribe(status_topic("TB")) == 1
    assert late.wait_for(real_status) == [real_status]
    assert forged_status not in tms.payloads()

    # Its own orders topic: only the TMS pushes.
    self_push = token("self-push")
    assert thief.publish(orders_topic("TA"), self_push) == refused
    sentinel = token("real-push")
    assert tms.publish(orders_topic("TA"), sentinel) == 0
    assert thief.wait_for(sentinel) == [sentinel]

    # What a terminal may do: its own events and retained status.
    own_event, own_status = token("TA-event"), token("TA-status")
    assert thief.publish(events_topic("TA"), own_event) == 0
    assert thief.publish(status_topic("TA"), own_status, retain=True) == 0
    tms.wait_for(own_event)  # (no order across topics: on NATS each has its own consumer)
    tms.wait_for(own_status)


def test_a_will_on_another_terminals_status_is_never_published(
    fleet: Fleet, clients: Callable[..., Client]
) -> None:
    tms = clients(TMS_USER)
    assert tms.subscribe(status_topic("TB")) == 1
    assert tms.subscribe(status_topic("TA")) == 1
    forger = clients("TA", will=status_topic("TB"))
    honest = clients("TA", will=status_topic("TA"))
    assert forger.accepted  # accepted at CONNECT
    assert honest.accepted
    forger.kill()
    honest.kill()
    tms.wait_for(f"will of {honest.client_id}".encode())  # the kill -> will path works
    sentinel = token("TB-status")
    assert clients("TB").publish(status_topic("TB"), sentinel, retain=True) == 0
    assert f"will of {forger.client_id}".encode() not in tms.wait_for(sentinel)


def test_the_tms_publishes_orders_and_reads_events_and_status_only(
    fleet: Fleet, clients: Callable[..., Client]
) -> None:
    tms = tms_listening(clients)
    terminals = {sn: clients(sn) for sn in ("TA", "TB")}
    for sn, term in terminals.items():
        assert term.subscribe(orders_topic(sn)) == 1
        push = token(f"push-{sn}")
        assert tms.publish(orders_topic(sn), push) == 0
        assert term.wait_for(push)[-1] == push
        event, status = token(f"event-{sn}"), token(f"status-{sn}")
        assert term.publish(events_topic(sn), event) == 0
        assert term.publish(status_topic(sn), status, retain=True) == 0
        tms.wait_for(event)
        tms.wait_for(status)
    # It cannot speak for a terminal, nor read the pushes.
    refused = NOT_AUTHORIZED if fleet.v5 else 0
    forged = token("tms-event")
    assert tms.publish(events_topic("TA"), forged) == refused
    assert tms.subscribe(every_terminal("orders")) == (1 if fleet.v5 else SUBACK_FAILURE)
    sentinel = token("TA-event")
    assert terminals["TA"].publish(events_topic("TA"), sentinel) == 0
    assert forged not in tms.wait_for(sentinel)


@pytest.mark.parametrize("fleet", ["nats"], indirect=True)  # Mosquitto grants every SUBSCRIBE
def test_the_sandbox_tms_says_when_a_subscription_is_not_granted_and_tries_again(
    fleet: Fleet, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """NATS answers a SUBSCRIBE it cannot serve with 0x80: outside the user's
    permissions (here: the TMS logged in as terminal TA), or when it could
    not make the JetStream consumer in time (seen in the suite: the TMS then
    heard no terminal's events). The sandbox's TMS says so and subscribes
    again instead of listening to nothing."""
    monkeypatch.setattr(tms_module, "SUBSCRIBE_RETRY_FIRST_S", 0.05)
    login = fleet.creds("TA")
    tms = tms_module.Tms(
        fleet.broker.url,
        username=login.username,
        password=login.password,
        on_status=lambda *_: None,
        on_event=lambda *_: None,
    )

    def refusals() -> list[str]:
        return [r.getMessage() for r in caplog.records if "did not grant the TMS" in r.getMessage()]

    loop = asyncio.new_event_loop()
    with caplog.at_level(logging.WARNING, logger="sandbox.tms"):
        tms.start(loop)
        try:
            until(lambda: len(refusals()) >= 2)  # refused, and refused again
            assert tms.connected.is_set()
            assert not tms.subscribed.is_set()
        finally:
            tms.stop()
            loop.close()
    first = refusals()[0]
    assert every_terminal("status") in first
    assert every_terminal("events") in first
    assert "subscribing again" in first


def test_adding_a_user_keeps_everyone_connected(
    fleet: Fleet, clients: Callable[..., Client]
) -> None:
    """A new terminal means a reload (SIGHUP): the others stay connected."""
    tms = tms_listening(clients)
    term = clients("TA")
    assert term.subscribe(orders_topic("TA")) == 1
    sn = "TN" + uuid.uuid4().hex[:6].upper()
    password = new_password()
    fleet.broker.add_user(sn, password)  # returns once the broker accepts it
    newcomer = clients(sn, password=password)
    assert newcomer.accepted
    assert tms.paho.is_connected()
    assert term.paho.is_connected()
    push = token("after-reload")
    assert tms.publish(orders_topic("TA"), push) == 0
    assert term.wait_for(push) == [push]
    status = token("newcomer-status")
    assert newcomer.publish(status_topic(sn), status, retain=True) == 0
    tms.wait_for(status)


def test_the_agents_connection_probe_passes_with_its_credentials(
    fleet: Fleet, tmp_path: Path
) -> None:
    """The setup screen's "test connection" (client id ``SN-probe``, user SN)
    gets through login and its subscription; a wrong password stops at
    ``auth``. On NATS it falls back to 3.1.1 by itself."""
    good, bad = tmp_path / "good", tmp_path / "bad"
    good.write_text(fleet.passwords["TA"] + "\n")
    bad.write_text("wrong\n")

    async def probe(password_file: Path) -> tuple[bool, str, str]:
        cfg = MqttConfig(url=fleet.broker.url, username="TA", password_file=password_file)
        return await probe_connection(cfg, "TA", WAIT)

    ok, stage, reason = asyncio.run(probe(good))
    assert (ok, stage) == (True, "ok"), reason
    ok, stage, reason = asyncio.run(probe(bad))
    assert (ok, stage) == (False, "auth"), reason


# ---------------------------------------------------------------- a sale, security on


def test_a_sale_through_the_sandboxs_own_secure_broker(tmp_path: Path) -> None:
    """``serve`` without ``--mqtt`` starts its Mosquitto secure; ``provision``
    (run by the rig as ``sadad-sandbox provision``, another process) gives the
    terminal its user, and the running broker reloads; the agent logs in with
    it; the order is pushed, paid and reported as with an open broker."""
    handle = SandboxHandle.start(
        tmp_path / "sandbox", ["--port", "0", "--time-scale", str(TIME_SCALE)], None
    )
    try:
        conf = (handle.data_dir / "mosquitto" / "mosquitto.conf").read_text()
        assert "allow_anonymous false" in conf
        with running_terminal(handle, "SEC", tmp_path / "term", readers=("nfc",)) as term:
            mqtt_cfg = term.config.read_text()
            assert f'username = "{term.sn}"' in mqtt_cfg
            password_file = term.config.parent / "mqtt.password"
            assert password_file.stat().st_mode & 0o777 == 0o600
            order = term.push("12.30")
            term.screens.wait_screen("WAITING_FOR_CARD", order.trans_no)
            term.present("nfc", "present visa", order)
            assert term.settled(order).phase == "APPROVED"
            term.assert_all_settled()
        log = (handle.data_dir / "mosquitto" / "mosquitto.log").read_text()
        assert f"u'{term.sn}'" in log  # the agent logged in as its SN
        assert f"u'{TMS_USER}'" in log
    finally:
        handle.close()
        code = handle.stop()
        print(f"--- sandbox stderr (exit {code}) ---\n{handle.stderr_text()}")


def test_a_sale_through_an_outside_secure_broker(fleet: Fleet, tmp_path: Path) -> None:
    """``serve --mqtt URL --mqtt-username sadad-tms --mqtt-password-file F``: the
    TMS logs in to a broker the sandbox does not run (on the cluster, the
    terminal on another node than the TMS); the terminal's user is added to
    that broker by whoever runs it - here the test, between ``provision`` and
    the agent's start."""
    login = [
        *("--mqtt-username", TMS_USER),
        *("--mqtt-password-file", str(fleet.broker.tms_password_path)),
    ]
    nodes: tuple[str, ...] = (fleet.broker.url,)
    if isinstance(fleet.broker, NatsCluster):
        nodes = (*fleet.broker.urls[1:], fleet.broker.urls[0])
    with running_sandbox(tmp_path / "sandbox", fleet.broker, login) as handle:
        sn = "OUT" + uuid.uuid4().hex[:8].upper()
        term = Terminal(handle, sn, tmp_path / "term", readers=("nfc",), mqtt_urls=nodes)
        try:
            password = (term.config.parent / "mqtt.password").read_text().strip()
            fleet.broker.add_user(sn, password)
            term.start_agent()
            order = term.push("12.30")
            term.screens.wait_screen("WAITING_FOR_CARD", order.trans_no, timeout=WAIT)
            term.present("nfc", "present visa", order)
            assert term.settled(order, timeout=WAIT).phase == "APPROVED"
            term.assert_all_settled()
        finally:
            term.close()
