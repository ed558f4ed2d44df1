"""MqttLink against a real Mosquitto (docs/protocol.md part C): delivery, manual
acknowledgement, persistent session, will, reconnects, TLS, protocol fallback,
and the setup screen's probe. The "other side" is a plain paho client."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import gc
import json
import queue
import random
import socket
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import msgspec
import paho.mqtt.client as mqtt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from paho.mqtt.enums import CallbackAPIVersion

from agent.backoff import Backoff
from agent.config import MqttConfig
from agent.mqtt.errors import LinkDown
from agent.mqtt.link import ConnectionState, MqttLink
from agent.mqtt.probe import probe_connection
from agent.mqtt.session import MAX_PACKET_BYTES
from cloud.messages import MAX_PUSH_BYTES, Screen, TerminalStatus
from sandbox.broker import free_port
from sandbox.broker_mosquitto import MosquittoBroker, find_mosquitto

REPO = Path(__file__).resolve().parents[2]
SN = "T0001"
ORDERS = f"sadad/v1/terminals/{SN}/orders"
EVENTS = f"sadad/v1/terminals/{SN}/events"
STATUS = f"sadad/v1/terminals/{SN}/status"
FAST = 0.05  # backoff base in tests


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[MosquittoBroker]:
    # Same as tests/integration/conftest.py's fixture, which tests/agent cannot see.
    b = MosquittoBroker(tmp_path / "broker")
    b.start()
    try:
        yield b
    finally:
        b.stop()


async def wait_until(cond: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)


class Peer:
    """A second MQTT client on paho's own thread (the TMS / an observer)."""

    def __init__(self, host: str, port: int, *topics: str, client_id: str = "peer") -> None:
        self.received: queue.Queue[mqtt.MQTTMessage] = queue.Queue()
        acked: set[int] = set()
        connected = threading.Event()
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
        client.on_connect = lambda _c, _u, _f, _rc, _p: connected.set()
        client.on_subscribe = lambda _c, _u, mid, _rc, _p: acked.add(mid)
        client.on_message = lambda _c, _u, msg: self.received.put(msg)
        client.connect(host, port, keepalive=10)
        client.loop_start()
        self._client = client
        assert connected.wait(5)
        if topics:
            _rc, mid = client.subscribe([(t, 1) for t in topics])
            deadline = time.monotonic() + 5
            while mid not in acked:
                assert time.monotonic() < deadline, "no SUBACK"
                time.sleep(0.005)

    async def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> None:
        info = self._client.publish(topic, payload, qos=1, retain=retain)
        await asyncio.to_thread(info.wait_for_publish, 5)
        assert info.is_published()

    async def next(self, timeout: float = 10.0) -> mqtt.MQTTMessage:
        return await asyncio.to_thread(self.received.get, True, timeout)

    async def next_on(self, topic: str, timeout: float = 10.0) -> mqtt.MQTTMessage:
        deadline = time.monotonic() + timeout
        while True:
            msg = await self.next(max(0.01, deadline - time.monotonic()))
            if msg.topic == topic:
                return msg

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()


@contextlib.contextmanager
def peer(host: str, port: int, *topics: str, client_id: str = "peer") -> Iterator[Peer]:
    p = Peer(host, port, *topics, client_id=client_id)
    try:
        yield p
    finally:
        p.close()


def status_of(msg: mqtt.MQTTMessage) -> TerminalStatus:
    return msgspec.json.decode(msg.payload, type=TerminalStatus)


class Terminal:
    """An MqttLink plus what it handed to on_push and reported through on_state."""

    def __init__(
        self,
        url: str,
        *,
        on_push: Callable[[bytes], object] | None = None,
        screen: Screen = Screen.IDLE,
        backoff: Backoff | None = None,
        **cfg: object,
    ) -> None:
        self.pushes: list[bytes] = []
        self.states: list[tuple[ConnectionState, str]] = []
        self.screen = screen
        self._hook = on_push
        self.link = MqttLink(
            MqttConfig(url=url, keepalive=5, **cfg),  # type: ignore[arg-type]
            SN,
            on_push=self._on_push,
            status=self._status,
            on_state=lambda s, r: self.states.append((s, r)),
            backoff=backoff or Backoff(FAST, 0.5, random.Random(1)),
        )

    async def _on_push(self, payload: bytes) -> None:
        self.pushes.append(payload)
        if self._hook is not None:
            result = self._hook(payload)
            if asyncio.iscoroutine(result):
                await result

    def _status(self) -> TerminalStatus:
        return TerminalStatus(
            status="online", timestamp="0", screen=self.screen, readers={"nfc": "ready"}, queue=1
        )

    def saw(self, *sequence: ConnectionState) -> bool:
        """True when the states contain ``sequence`` in order (not necessarily adjacent)."""
        it = iter(s for s, _ in self.states)
        return all(any(s is want for s in it) for want in sequence)


@contextlib.asynccontextmanager
async def terminal(url: str, **kwargs: object) -> AsyncIterator[Terminal]:
    term = Terminal(url, **kwargs)  # type: ignore[arg-type]
    await term.link.start()
    try:
        yield term
    finally:
        await term.link.stop()


# ---------------------------------------------------------------- backoff


def test_backoff_is_capped_jittered_and_growing() -> None:
    b = Backoff(1.0, 60.0, random.Random(42))
    delays = [b.next() for _ in range(10)]
    ceilings = [1, 2, 4, 8, 16, 32, 60, 60, 60, 60]
    for delay, ceiling in zip(delays, ceilings, strict=True):
        assert ceiling / 2 <= delay <= ceiling
    same_seed = random.Random(42)
    assert delays == pytest.approx([same_seed.uniform(c / 2, c) for c in ceilings])
    assert len({round(d, 6) for d in delays[6:]}) == 4  # jittered even at the cap
    assert delays[5] > delays[0] * 8  # the window grows
    b.reset()
    assert 0.5 <= b.next() <= 1.0
    with pytest.raises(ValueError, match="positive"):
        Backoff(0, 1)


# ---------------------------------------------------------------- delivery


async def test_push_is_delivered_once_and_acknowledged_after_on_push(
    broker: MosquittoBroker,
) -> None:
    entered = asyncio.Event()

    async def slow_journal(_payload: bytes) -> None:
        entered.set()
        await asyncio.sleep(0.3)  # the journal's fsync

    with peer(broker.host, broker.port) as tms:
        term = Terminal(broker.url, on_push=slow_journal)
        await term.link.start()
        assert term.link.state is ConnectionState.CONNECTED
        await tms.publish(ORDERS, b'{"message_id": "m1"}')
        await asyncio.wait_for(entered.wait(), 10)
        # stop() while the push is being journaled: it waits, then acknowledges.
        await term.link.stop()
        assert term.pushes == [b'{"message_id": "m1"}']
        assert term.states[-1] == (ConnectionState.DISCONNECTED, "stopped")

        # The next life of the terminal: the acknowledged push does not come back.
        async with terminal(broker.url) as again:
            await tms.publish(ORDERS, b"marker")
            await wait_until(lambda: bool(again.pushes))
            assert again.pushes == [b"marker"]


KILLED_TERMINAL = """
import asyncio, sys
from agent.config import MqttConfig
from agent.mqtt.link import MqttLink
from cloud.messages import TerminalStatus

async def main() -> None:
    async def on_push(payload: bytes) -> None:
        print("PUSH", payload.decode(), flush=True)
        await asyncio.Event().wait()  # the journal write never completes

    link = MqttLink(
        MqttConfig(url=sys.argv[1], keepalive=5), sys.argv[2], on_push=on_push,
        status=lambda: TerminalStatus(status="online", timestamp="0"),
    )
    await link.start()
    print("STATE", link.state, flush=True)
    await asyncio.Event().wait()

asyncio.run(main())
"""


async def test_killed_before_on_push_returns_no_ack_redelivered_and_will_offline(
    broker: MosquittoBroker,
) -> None:
    with (
        peer(broker.host, broker.port, STATUS, client_id="watcher") as watcher,
        peer(broker.host, broker.port) as tms,
    ):
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            KILLED_TERMINAL,
            broker.url,
            SN,
            cwd=REPO,
            stdout=asyncio.subprocess.PIPE,
        )
        try:
            assert proc.stdout is not None
            line = await asyncio.wait_for(proc.stdout.readline(), 20)
            assert line.decode().strip() == "STATE connected"
            assert status_of(await watcher.next_on(STATUS)).status == "online"
            await tms.publish(ORDERS, b"push-1")
            line = await asyncio.wait_for(proc.stdout.readline(), 10)
            assert line.decode().strip() == "PUSH push-1"
        finally:
            if proc.returncode is None:
                proc.kill()  # SIGKILL: no DISCONNECT, no PUBACK
            await proc.communicate()

        # The broker saw the socket die without DISCONNECT: it publishes the will.
        will = await watcher.next_on(STATUS)
        assert status_of(will).status == "offline"
        assert will.retain is False  # live delivery; the broker keeps it retained:
        with peer(broker.host, broker.port, STATUS, client_id="late") as late:
            retained = await late.next_on(STATUS)
            assert retained.retain
            assert status_of(retained).status == "offline"

        # on_push never returned, so no PUBACK was sent: the push comes again.
        async with terminal(broker.url) as again:
            await wait_until(lambda: bool(again.pushes))
            assert again.pushes == [b"push-1"]
            assert status_of(await watcher.next_on(STATUS)).status == "online"


async def test_on_push_raising_is_not_acked_and_is_redelivered(broker: MosquittoBroker) -> None:
    calls = 0

    def journal_fails_once(_payload: bytes) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise OSError("disk full")

    with peer(broker.host, broker.port) as tms:
        async with terminal(broker.url, on_push=journal_fails_once) as term:
            await tms.publish(ORDERS, b"p1")
            await wait_until(
                lambda: term.saw(
                    ConnectionState.CONNECTED,
                    ConnectionState.DISCONNECTED,
                    ConnectionState.CONNECTED,
                )
            )
            assert term.pushes == [b"p1", b"p1"]
            assert any("push handler failed (OSError)" in r for _, r in term.states)
        # The second delivery was acknowledged: nothing comes back next time.
        async with terminal(broker.url) as again:
            await tms.publish(ORDERS, b"marker")
            await wait_until(lambda: bool(again.pushes))
            assert again.pushes == [b"marker"]


async def test_broker_drops_a_push_over_the_announced_packet_size(
    broker: MosquittoBroker,
) -> None:
    """Under MQTT 5 the link announces a Maximum Packet Size
    (``agent.mqtt.session.MAX_PACKET_BYTES``): Mosquitto 2.0 discards a bigger QoS 1
    message for this client (the publisher still gets its PUBACK; the broker
    logs "Dropping too large outgoing PUBLISH"), never delivers it, and does
    not keep it for a redelivery - the next push arrives, and a reconnect
    brings nothing back. The same for one queued while the terminal was
    offline: dropped when it returns, the pushes behind it delivered."""
    big = b"x" * (MAX_PUSH_BYTES + 2048)
    assert len(big) > MAX_PACKET_BYTES
    fits = b"y" * MAX_PUSH_BYTES  # the largest push the terminal takes gets through
    with peer(broker.host, broker.port) as tms:
        async with terminal(broker.url) as term:
            assert term.link.protocol == "5"
            await tms.publish(ORDERS, big)
            await tms.publish(ORDERS, fits)
            await tms.publish(ORDERS, b"next")
            await wait_until(lambda: len(term.pushes) == 2)
            assert term.pushes == [fits, b"next"]
        await tms.publish(ORDERS, big)  # the terminal is offline: queued
        await tms.publish(ORDERS, b"queued")
        async with terminal(broker.url) as again:
            await wait_until(lambda: bool(again.pushes))
            await tms.publish(ORDERS, b"marker")
            await wait_until(lambda: len(again.pushes) == 2)
            assert again.pushes == [b"queued", b"marker"]
        async with terminal(broker.url) as third:
            await tms.publish(ORDERS, b"last")
            await wait_until(lambda: bool(third.pushes))
            assert third.pushes == [b"last"]
    assert broker.log_path.read_text().count("Dropping too large outgoing PUBLISH for T0001") == 2


async def test_push_sent_while_offline_is_delivered_on_return(broker: MosquittoBroker) -> None:
    async with terminal(broker.url) as term:
        assert term.link.state is ConnectionState.CONNECTED
    with peer(broker.host, broker.port) as tms:
        await tms.publish(ORDERS, b"queued-1")
        await tms.publish(ORDERS, b"queued-2")
    async with terminal(broker.url) as term:
        await wait_until(lambda: len(term.pushes) == 2)
        assert term.pushes == [b"queued-1", b"queued-2"]


async def test_broker_restart_reconnects_and_keeps_working(broker: MosquittoBroker) -> None:
    async with terminal(broker.url) as term:
        assert term.link.state is ConnectionState.CONNECTED
        await asyncio.to_thread(broker.restart)
        await wait_until(
            lambda: term.saw(
                ConnectionState.CONNECTED, ConnectionState.DISCONNECTED, ConnectionState.CONNECTED
            )
        )
        assert await term.link.wait_connected(5)
        with peer(broker.host, broker.port, STATUS, client_id="after") as tms:
            retained = await tms.next_on(STATUS)
            assert retained.retain
            assert status_of(retained).status == "online"
            await tms.publish(ORDERS, b"after-restart")
            await wait_until(lambda: bool(term.pushes))
            assert term.pushes == [b"after-restart"]


async def test_broker_down_at_start_then_up(tmp_path: Path) -> None:
    port = free_port()
    late = MosquittoBroker(tmp_path / "late", port=port)
    try:
        async with terminal(f"mqtt://127.0.0.1:{port}") as term:
            assert term.link.state is ConnectionState.FAILED
            assert term.link.reason.startswith(f"tcp: 127.0.0.1:{port} refused the connection")
            with pytest.raises(LinkDown, match="failed"):
                await term.link.publish_event(b"{}")
            await term.link.publish_status()  # not connected: a no-op, never raises
            await asyncio.to_thread(late.start)
            assert await term.link.wait_connected(10)
    finally:
        late.stop()


# ---------------------------------------------------------------- publishing


async def test_events_and_retained_status(broker: MosquittoBroker) -> None:
    with peer(broker.host, broker.port, EVENTS, STATUS, client_id="tms") as tms:
        async with terminal(broker.url) as term:
            online = status_of(await tms.next_on(STATUS))
            assert (online.status, online.screen, online.readers, online.queue) == (
                "online",
                Screen.IDLE,
                {"nfc": "ready"},
                1,
            )
            assert online.keepalive == 5
            assert len(online.timestamp) == 13

            await term.link.publish_event(b'{"event": "received"}')
            event = await tms.next_on(EVENTS)
            assert (event.payload, event.qos, event.retain) == (b'{"event": "received"}', 1, False)

            term.screen = Screen.READING
            await term.link.publish_status()
            assert status_of(await tms.next_on(STATUS)).screen is Screen.READING
            with peer(broker.host, broker.port, STATUS, client_id="late") as late:
                retained = await late.next_on(STATUS)
                assert retained.retain
                assert status_of(retained).screen is Screen.READING

        offline = await tms.next_on(STATUS)  # stop() says goodbye itself
        assert status_of(offline).status == "offline"
        with peer(broker.host, broker.port, STATUS, client_id="later") as late:
            retained = await late.next_on(STATUS)
            assert retained.retain
            assert json.loads(retained.payload)["status"] == "offline"


async def test_small_packets_are_not_held_by_nagle(broker: MosquittoBroker) -> None:
    """A PUBACK then an event, written back to back, must not wait for the
    broker's delayed ACK (~40 ms each time before TCP_NODELAY was set)."""
    async with terminal(broker.url) as term:
        assert await term.link.wait_connected(10)
        session = term.link._session
        assert session is not None
        assert session._sock is not None
        nodelay = session._sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
        assert nodelay != 0


async def test_status_published_on_change_only_and_bursts_coalesced(
    broker: MosquittoBroker,
) -> None:
    """An unchanged status is not published again; a burst of changes made
    within the hold (as the engine makes them: push, then the order on
    screen) is one publish of the latest; changes made while a publish is in
    flight are one more after its PUBACK: never a flood."""
    with peer(broker.host, broker.port, STATUS, client_id="tms") as tms:
        async with terminal(broker.url) as term:
            assert status_of(await tms.next_on(STATUS)).screen is Screen.IDLE
            term.link.status_changed()  # nothing changed
            for screen in [Screen.READING, Screen.AUTHORIZING, Screen.RESULT] * 10:
                term.screen = screen
                term.link.status_changed()
            # The hold ends by itself: the latest, once.
            assert status_of(await tms.next_on(STATUS)).screen is Screen.RESULT
            await term.link.publish_status()  # unchanged: nothing sent
            term.screen = Screen.READING
            flush = asyncio.create_task(term.link.publish_status())  # at once, no hold
            await asyncio.sleep(0)  # READING is sent; its PUBACK cannot be in yet
            for screen in [Screen.AUTHORIZING, Screen.RESULT, Screen.WAITING_FOR_CARD]:
                term.screen = screen
                term.link.status_changed()
            await flush  # returns once nothing is in flight
            term.screen = Screen.IDLE  # a marker: nothing else was sent in between
            await term.link.publish_status()
            seen = [status_of(await tms.next_on(STATUS)).screen for _ in range(3)]
            assert seen == [Screen.READING, Screen.WAITING_FOR_CARD, Screen.IDLE]


# ---------------------------------------------------------------- probe_connection


async def test_probe_ok_tcp_dns(broker: MosquittoBroker) -> None:
    cfg = MqttConfig(url=broker.url)
    ok, stage, reason = await probe_connection(cfg, SN, 10)
    assert (ok, stage) == (True, "ok"), reason
    assert f"as {SN}-probe (MQTT 5)" in reason

    closed = MqttConfig(url=f"mqtt://127.0.0.1:{free_port()}")
    ok, stage, reason = await probe_connection(closed, SN, 10)
    assert (ok, stage) == (False, "tcp")
    assert "refused the connection" in reason

    unknown = MqttConfig(url="mqtt://no-such-broker.invalid:1883")
    ok, stage, reason = await probe_connection(unknown, SN, 10)
    assert (ok, stage) == (False, "dns")
    assert reason.startswith("cannot resolve no-such-broker.invalid")


async def test_probe_does_not_take_the_terminal_session(broker: MosquittoBroker) -> None:
    async with terminal(broker.url) as term:
        ok, _stage, reason = await probe_connection(MqttConfig(url=broker.url), SN, 10)
        assert ok, reason
        await asyncio.sleep(0.2)
        assert term.link.state is ConnectionState.CONNECTED
        assert [s for s, _ in term.states] == [
            ConnectionState.CONNECTING,
            ConnectionState.CONNECTED,
        ]


# ---------------------------------------------------------------- MQTT 3.1.1 fallback


class RefuseV5Proxy:
    """Stands in for a 3.1.1-only broker: a CONNECT with protocol level 5 gets
    the 3.1.1 CONNACK "unacceptable protocol version" (0x20 0x02 0x00 0x01);
    anything else is piped to the real broker."""

    def __init__(self, upstream: MosquittoBroker) -> None:
        self.upstream = upstream
        self.refused = 0
        self.server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"mqtt://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def __aenter__(self) -> RefuseV5Proxy:
        self.server = await asyncio.start_server(self._client, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *_exc: object) -> None:
        assert self.server is not None
        self.server.close()
        for w in list(self._writers):
            w.close()
        await self.server.wait_closed()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            head = await reader.readexactly(2)
            length, shift, byte = head[1] & 0x7F, 7, head[1]
            while byte & 0x80:
                byte = (await reader.readexactly(1))[0]
                head += bytes([byte])
                length |= (byte & 0x7F) << shift
                shift += 7
            body = await reader.readexactly(length)
            if body[6] == 5:  # 00 04 'MQTT' then the protocol level
                self.refused += 1
                writer.write(b"\x20\x02\x00\x01")
                await writer.drain()
                return
            up_reader, up_writer = await asyncio.open_connection(
                self.upstream.host, self.upstream.port
            )
            self._writers.add(up_writer)
            up_writer.write(head + body)
            await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def _pipe(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        try:
            while data := await src.read(65536):
                dst.write(data)
                await dst.drain()
        except ConnectionError:
            pass
        finally:
            dst.close()


async def test_falls_back_to_311_when_the_broker_refuses_5(broker: MosquittoBroker) -> None:
    async with RefuseV5Proxy(broker) as proxy:
        ok, stage, reason = await probe_connection(MqttConfig(url=proxy.url), SN, 10)
        assert (ok, stage) == (True, "ok")
        assert "(MQTT 3.1.1)" in reason

        async with terminal(proxy.url) as term:
            assert term.link.state is ConnectionState.CONNECTED
            assert term.link.protocol == "3.1.1"
            assert "(MQTT 3.1.1)" in term.link.reason
        assert proxy.refused == 2  # once for the probe, once for the link
        # clean_session=False: a push queued while offline still arrives.
        with peer(broker.host, broker.port) as tms:
            await tms.publish(ORDERS, b"queued-for-311")
        async with terminal(proxy.url, protocol="3.1.1") as term:
            await wait_until(lambda: bool(term.pushes))
            assert term.pushes == [b"queued-for-311"]
        assert proxy.refused == 2  # protocol = "3.1.1" never tries 5


# ---------------------------------------------------------------- TLS


def _cert(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: tuple[str, ec.EllipticCurvePrivateKey] | None,
    *,
    ca: bool = False,
    ip: str | None = None,
) -> x509.Certificate:
    import ipaddress

    now = dt.datetime.now(dt.UTC)
    issuer_name, issuer_key = issuer if issuer else (subject, key)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer_name)]))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if ip:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(ip))]),
            critical=False,
        )
    if ca:
        builder = builder.add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
    return builder.sign(issuer_key, hashes.SHA256())


def _write(path: Path, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey | None) -> None:
    path.with_suffix(".crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    if key is not None:
        path.with_suffix(".key").write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )


@pytest.fixture
def tls_broker(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """Mosquitto on TLS that requires a client certificate from our CA."""
    import getpass
    import os
    import socket

    d = tmp_path / "tls"
    d.mkdir()
    ca_key, srv_key, cli_key, rogue_key = (ec.generate_private_key(ec.SECP256R1()) for _ in "1234")
    ca = _cert("Sadad Test CA", ca_key, None, ca=True)
    _write(d / "ca", ca, None)
    _write(
        d / "server", _cert("broker", srv_key, ("Sadad Test CA", ca_key), ip="127.0.0.1"), srv_key
    )
    _write(d / "client", _cert(SN, cli_key, ("Sadad Test CA", ca_key)), cli_key)
    _write(d / "rogue-ca", _cert("Rogue CA", rogue_key, None, ca=True), None)
    port = free_port()
    conf = d / "mosquitto.conf"
    lines = [
        f"listener {port} 127.0.0.1",
        f"cafile {d / 'ca.crt'}",
        f"certfile {d / 'server.crt'}",
        f"keyfile {d / 'server.key'}",
        "require_certificate true",
        "use_identity_as_username true",
        "allow_anonymous false",
        "log_dest stderr",
    ]
    if os.getuid() == 0:
        lines.append(f"user {getpass.getuser()}")
    conf.write_text("\n".join(lines) + "\n")
    with (d / "mosquitto.log").open("wb") as log:
        proc = subprocess.Popen([find_mosquitto(), "-c", str(conf)], stdout=log, stderr=log)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                    break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError((d / "mosquitto.log").read_text()) from None
                time.sleep(0.02)
        yield f"mqtts://127.0.0.1:{port}", d
    finally:
        proc.terminate()
        proc.wait(5)


async def test_tls_with_client_certificate(tls_broker: tuple[str, Path]) -> None:
    url, d = tls_broker
    tls = {"ca_file": d / "ca.crt", "cert_file": d / "client.crt", "key_file": d / "client.key"}
    ok, stage, reason = await probe_connection(MqttConfig(url=url, **tls), SN, 10)  # type: ignore[arg-type]
    assert (ok, stage) == (True, "ok"), reason

    async with terminal(url, **tls) as term:
        assert term.link.state is ConnectionState.CONNECTED, term.link.reason
        await term.link.publish_event(b"{}")

    rogue = {**tls, "ca_file": d / "rogue-ca.crt"}
    ok, stage, reason = await probe_connection(MqttConfig(url=url, **rogue), SN, 10)  # type: ignore[arg-type]
    assert (ok, stage) == (False, "tls")
    assert "certificate verify failed" in reason
    # The link fails at the same stage and leaks no socket (filterwarnings=error).
    async with terminal(url, **rogue) as term:
        assert term.link.state is ConnectionState.FAILED
        assert term.link.reason.startswith("tls: TLS handshake with 127.0.0.1")
    gc.collect()  # a socket paho dropped unclosed would warn here, and fail the test


async def test_a_node_that_is_down_is_left_for_the_next(broker: MosquittoBroker) -> None:
    """``fallback_urls``: the first node refuses; the link goes on to the next
    at once, not after a backoff, and says which node it is on."""
    dead = f"mqtt://127.0.0.1:{free_port()}"
    backoff = Backoff(30.0, 60.0, random.Random(1))  # a backoff would show
    async with terminal(dead, fallback_urls=(broker.url,), backoff=backoff) as term:
        assert term.link.state is ConnectionState.CONNECTED
        assert f"connected to {broker.url}" in term.link.reason
        assert term.saw(ConnectionState.CONNECTING, ConnectionState.CONNECTED)
