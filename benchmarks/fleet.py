"""Fleet: N terminal sessions on Mosquitto and on a three-node NATS cluster.

What it measures, per broker and number of sessions N, with the brokers'
per-terminal security on (``sandbox.broker``, ``secure=True``: a user per
terminal limited to its own topics, the TMS's user, no anonymous clients),
as docs/operations.md "The figures" asks:

* connect: N sessions made as the agent makes them (below), a bounded
  number at a time; how long they took, and how many failed;
* pushes from the TMS (this process) to the terminals, round robin, two
  ways: ``paced`` (``--rate`` pushes/s, open loop: the latency of a push
  while the fleet is otherwise idle) and ``saturated`` (``--window`` pushes
  in flight, a new one as soon as one's ``received`` event is back: the
  most pushes per second the whole set-up carries). Three spans per push:
  ``receipt`` (the TMS's publish to the push's arrival in the terminal's
  process), ``acked`` (to the terminal's PUBACK, after verifying and storing
  it: what "push -> acknowledged" means; the broker's PUBACK to the TMS is
  not it) and ``received`` (to the terminal's ``received`` event reaching
  the TMS: the round trip the TMS itself can see);
* the floor, in the same run and the same phases: one bare subscriber
  (one more session in a terminal process) that acknowledges at once and
  echoes an event-sized message, with no verification, storage or signature.

What a simulated terminal does (part C of docs/protocol.md, as
``agent.mqtt_link`` does it): client id and user = its SN, its own
password; a persistent session (MQTT 5 on Mosquitto: clean start off,
session expiry 24 h, Maximum Packet Size 65 KiB; 3.1.1 on NATS, which
speaks nothing else: clean session off); keepalive 30 s; its will is the
retained ``offline`` status; on connect it subscribes to its orders topic
at QoS 1 and publishes its retained ``online`` status. A push is verified
(``envelope.open_push``: the gateway's signature, its SN, its clock), then
stored - a record appended to the process's store file and fsync'ed
(``--store none``: not stored; the fsync is the terminal's own disk, which
N simulated terminals here share) - and only then acknowledged (PUBACK);
then it publishes the signed ``received`` and ``paid`` events and one
retained status (the agent publishes several per sale, coalesced, as its
screen changes; one stands for them here), each waiting for its PUBACK.
The fsyncs are group commits: one fsync covers every push stored while the
previous one ran, as ``agent.durability`` lets one FULL commit cover
deferred ones; without it N terminals would queue on one disk.

Not on the clock, and why: the RSA-2048 signatures. The TMS signs every
push (``envelope.build_push``, the gateway's key) and the terminal processes
sign every event (``envelope.build_event``; one terminal key shared by all
simulated terminals, which changes nothing for the broker) before the
clock starts, for the message ids the schedule will use: each costs ~0.5
ms of CPU, which the gateway and each real terminal spend on machines of
their own; made during the run on this 2-core machine they would cap it at
the simulator's signing rate, not the broker's. The terminal's check of
the push's signature (~0.06 ms) is on the clock. The TMS does not verify
the events (the sandbox's does).

Processes: the broker(s); ``--workers`` terminal processes (default 2, the
cores), each with its share of the sessions on one asyncio loop over raw
sockets (a small MQTT 3.1.1/5 codec below: a paho client per session would
cost more CPU and memory than the broker per message); this process as the
TMS. All share the two cores: the figures are this machine's, the broker's
share of CPU is printed beside them. Times are ``perf_counter()``
(``CLOCK_MONOTONIC``, one clock for every process).

Without ``--sessions`` a full run measures 1,000 sessions, then doubles N
(a fresh broker each time) until connecting fails, a push is lost, the
paced p99 ``acked`` passes 1 s, or ``--max-sessions``; what stopped it is
printed. ``--quick``: 200 sessions, short phases, no ramp (under a minute
for both brokers). The last line of the output is one JSON object.

Usage: ``python benchmarks/fleet.py [--quick] [--sessions N[,N...]]
[--broker mosquitto|nats|both] [--workers K] [--rate R] [--window W]
[--store fsync|none]``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import math
import os
import resource
import socket
import struct
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import msgspec

from benchmarks.stamps import Packet, PacketReader, decode_remaining_length, encode_remaining_length
from cloud import envelope
from cloud.errors import ContractError
from cloud.messages import (
    MAX_PUSH_BYTES,
    EventKind,
    PushOrder,
    PushTopic,
    QueueMode,
    Screen,
    TerminalStatus,
    TransType,
)
from cloud.signing import generate_key_pem
from cloud.topics import events_topic, every_terminal, orders_topic, status_topic

REPO = Path(__file__).resolve().parents[1]
KEEPALIVE = 30  # the agent's default
SESSION_EXPIRY = 24 * 3600
MAX_PACKET = MAX_PUSH_BYTES + 1024  # as agent.mqtt_link announces
PUSH_EXPIRY_S = 300
# Unacknowledged QoS 1 publishes per connection: at most this, and at most
# the broker's MQTT 5 Receive Maximum (Mosquitto's is its max_inflight_messages,
# 20). NATS stores each QoS 1 publish in JetStream (three replicas) before its
# PUBACK: with 16 in flight the TMS, not the broker, capped a saturated run.
PUBLISH_WINDOW = 256
CONNECT_TIMEOUT = 60.0
GIVE_UP_AFTER = 10  # failed connects in a terminal process before it stops trying
PHASE_TIMEOUT = 120.0
EXPLODED_S = 1.0  # a paced p99 "acked" past this ends the ramp
FLOOR_SN = "FLOOR0001"

CONNECT, CONNACK, PUBLISH, PUBACK, SUBSCRIBE, SUBACK, PINGREQ, PINGRESP = 1, 2, 3, 4, 8, 9, 12, 13
PINGREQ_PACKET = b"\xc0\x00"
DISCONNECT_PACKET = b"\xe0\x00"


# ---------------------------------------------------------------- MQTT 3.1.1 and 5, the parts used


def _packet(first: int, body: bytes) -> bytes:
    return bytes([first]) + encode_remaining_length(len(body)) + body


def _str(data: str | bytes) -> bytes:
    raw = data.encode() if isinstance(data, str) else data
    return struct.pack("!H", len(raw)) + raw


def _props(*pairs: tuple[int, bytes]) -> bytes:
    """An MQTT 5 property list: its length, then each identifier and value."""
    body = b"".join(bytes([ident]) + value for ident, value in pairs)
    return encode_remaining_length(len(body)) + body


def connect_packet(
    client_id: str,
    *,
    v5: bool,
    username: str,
    password: str,
    persistent: bool,
    will: tuple[str, bytes] | None = None,
) -> bytes:
    """CONNECT (spec 3.1 / v5 3.1) with a user, keepalive ``KEEPALIVE``, and a
    retained QoS 1 will; persistent: clean start/session off (v5: session
    expiry 24 h); v5 also announces ``MAX_PACKET``."""
    flags = 0x80 | 0x40 | (0 if persistent else 0x02)
    if will is not None:
        flags |= 0x04 | 0x08 | 0x20  # will, QoS 1, retained
    header = _str("MQTT") + bytes([5 if v5 else 4, flags]) + struct.pack("!H", KEEPALIVE)
    if v5:
        expiry = SESSION_EXPIRY if persistent else 0
        header += _props((0x11, struct.pack("!I", expiry)), (0x27, struct.pack("!I", MAX_PACKET)))
    payload = _str(client_id)
    if will is not None:
        payload += (b"\x00" if v5 else b"") + _str(will[0]) + _str(will[1])
    return _packet(0x10, header + payload + _str(username) + _str(password))


def subscribe_packet(packet_id: int, topic: str, *, v5: bool) -> bytes:
    props = b"\x00" if v5 else b""
    return _packet(0x82, struct.pack("!H", packet_id) + props + _str(topic) + b"\x01")


def publish_packet(
    topic: str,
    payload: bytes,
    packet_id: int,
    *,
    v5: bool,
    retain: bool = False,
    expiry_s: int | None = None,
) -> bytes:
    """QoS 1 PUBLISH; v5 with the Message Expiry Interval when given."""
    header = _str(topic) + struct.pack("!H", packet_id)
    if v5:
        header += _props((0x02, struct.pack("!I", expiry_s))) if expiry_s else b"\x00"
    return _packet(0x32 | (0x01 if retain else 0), header + payload)


def puback_packet(packet_id: int) -> bytes:
    return b"\x40\x02" + struct.pack("!H", packet_id)  # v5 too: no reason code = success


@dataclass(frozen=True, slots=True)
class Publish:
    topic: str
    packet_id: int | None
    payload: bytes


def parse_publish(packet: Packet, *, v5: bool) -> Publish:
    (size,) = struct.unpack_from("!H", packet.body)
    topic = packet.body[2 : 2 + size].decode()
    at = 2 + size
    packet_id = None
    if (packet.flags >> 1) & 0x03:
        (packet_id,) = struct.unpack_from("!H", packet.body, at)
        at += 2
    if v5:
        parsed = decode_remaining_length(packet.body, at)
        if parsed is None:
            raise ValueError("PUBLISH properties cut short")
        length, at = parsed
        at += length
    return Publish(topic, packet_id, packet.body[at:])


# MQTT 5 property sizes (v5 2.2.2.2): fixed-size ones by identifier; "s" a
# length-prefixed string or binary, "p" a string pair, "v" a variable integer.
_PROPERTY_SIZES: dict[int, int | str] = {
    0x01: 1, 0x02: 4, 0x03: "s", 0x08: "s", 0x09: "s", 0x0B: "v", 0x11: 4, 0x12: "s",
    0x13: 2, 0x15: "s", 0x16: "s", 0x17: 1, 0x18: 4, 0x19: 1, 0x1A: "s", 0x1C: "s",
    0x1F: "s", 0x21: 2, 0x22: 2, 0x23: 2, 0x24: 1, 0x25: 1, 0x26: "p", 0x27: 4,
    0x28: 1, 0x29: 1, 0x2A: 1,
}  # fmt: skip


def receive_maximum(connack: Packet) -> int:
    """An MQTT 5 CONNACK's Receive Maximum (property 0x21; 65535 when absent)."""
    parsed = decode_remaining_length(connack.body, 2)
    if parsed is None:
        return 65535
    length, at = parsed
    end = at + length
    while at < end:
        ident = connack.body[at]
        at += 1
        size = _PROPERTY_SIZES.get(ident)
        if ident == 0x21:
            return int(struct.unpack_from("!H", connack.body, at)[0])
        if isinstance(size, int):
            at += size
        elif size == "v":
            skip = decode_remaining_length(connack.body, at)
            at = end if skip is None else skip[1]
        elif size in ("s", "p"):
            for _ in range(2 if size == "p" else 1):
                at += 2 + struct.unpack_from("!H", connack.body, at)[0]
        else:
            break  # unknown: stop reading
    return 65535


def ack_code(packet: Packet, *, v5: bool) -> tuple[int, int]:
    """(packet id, first reason/return code) of a PUBACK or SUBACK."""
    (packet_id,) = struct.unpack_from("!H", packet.body)
    rest = packet.body[2:]
    if packet.kind == SUBACK and v5:
        parsed = decode_remaining_length(packet.body, 2)
        if parsed is None:
            raise ValueError("SUBACK properties cut short")
        length, at = parsed
        rest = packet.body[at + length :]
    return packet_id, rest[0] if rest else 0


# ---------------------------------------------------------------- one connection


class MqttError(ConnectionError):
    """Refused or lost: the CONNACK, SUBACK or PUBACK said no, or the socket closed."""


class Conn(asyncio.Protocol):
    """One MQTT connection on the loop: sends what it is given, answers
    PINGREQs' replies away, hands PUBLISHes to ``on_publish`` and resolves
    the futures waiting for CONNACK, SUBACKs and PUBACKs."""

    def __init__(self, *, v5: bool, on_publish: Callable[[Conn, Publish], None]) -> None:
        loop = asyncio.get_running_loop()
        self.v5 = v5
        self.on_publish = on_publish
        self.reader = PacketReader()
        self.transport: asyncio.Transport | None = None
        self.connack: asyncio.Future[int] = loop.create_future()
        self.closed: asyncio.Future[None] = loop.create_future()
        self.waiting: dict[int, asyncio.Future[int]] = {}
        self.window = asyncio.Semaphore(PUBLISH_WINDOW)
        self.last_sent = time.monotonic()
        self._next_id = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None:  # small packets back to back: no Nagle (as the agent)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        for packet in self.reader.feed(data):
            if packet.kind == PUBLISH:
                self.on_publish(self, parse_publish(packet, v5=self.v5))
            elif packet.kind in (PUBACK, SUBACK):
                packet_id, code = ack_code(packet, v5=self.v5)
                fut = self.waiting.pop(packet_id, None)
                if fut is not None and not fut.done():
                    fut.set_result(code)
            elif packet.kind == CONNACK and not self.connack.done():
                if self.v5:
                    self.window = asyncio.Semaphore(min(PUBLISH_WINDOW, receive_maximum(packet)))
                self.connack.set_result(packet.body[1])

    def connection_lost(self, exc: Exception | None) -> None:
        lost = MqttError(f"connection lost: {exc or 'closed by the broker'}")
        for fut in [self.connack, *self.waiting.values()]:
            if not fut.done():
                fut.set_exception(lost)
        self.waiting.clear()
        if not self.closed.done():
            self.closed.set_result(None)

    def send(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)
            self.last_sent = time.monotonic()

    def packet_id(self) -> int:
        while True:
            self._next_id = self._next_id % 65535 + 1
            if self._next_id not in self.waiting:
                return self._next_id

    async def request(self, build: Callable[[int], bytes]) -> int:
        """Send a SUBSCRIBE or QoS 1 PUBLISH; its SUBACK/PUBACK code."""
        packet_id = self.packet_id()
        fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self.waiting[packet_id] = fut
        self.send(build(packet_id))
        return await fut

    async def subscribe(self, topic: str) -> int:
        """SUBSCRIBE at QoS 1; the SUBACK's code (1: granted QoS 1)."""
        return await self.request(lambda pid: subscribe_packet(pid, topic, v5=self.v5))

    async def publish(
        self, topic: str, payload: bytes, *, retain: bool = False, expiry_s: int | None = None
    ) -> int:
        """QoS 1, within ``PUBLISH_WINDOW`` unacknowledged; the PUBACK's code."""
        async with self.window:
            return await self.request(
                lambda pid: publish_packet(
                    topic, payload, pid, v5=self.v5, retain=retain, expiry_s=expiry_s
                )
            )

    def close(self) -> None:
        self.send(DISCONNECT_PACKET)
        if self.transport is not None:
            self.transport.close()


async def open_conn(
    host: str,
    port: int,
    client_id: str,
    username: str,
    password: str,
    *,
    v5: bool,
    on_publish: Callable[[Conn, Publish], None],
    will: tuple[str, bytes] | None = None,
) -> Conn:
    """A connected, accepted, persistent session. Raises MqttError, OSError."""
    loop = asyncio.get_running_loop()
    _, conn = await loop.create_connection(lambda: Conn(v5=v5, on_publish=on_publish), host, port)
    conn.send(
        connect_packet(
            client_id, v5=v5, username=username, password=password, persistent=True, will=will
        )
    )
    code = await asyncio.wait_for(conn.connack, CONNECT_TIMEOUT)
    if code != 0:
        conn.close()
        raise MqttError(f"CONNACK refused {client_id}: code {code:#x}")
    return conn


PING_TICK = 0.1  # seconds


async def keep_alive(conns: Callable[[], Sequence[Conn]]) -> None:
    """A PINGREQ on every connection once per 0.8 keepalive (the broker drops
    one silent for 1.5), spread evenly over that period as the pings of N
    terminals that started at different times are: all at once, 16,000
    sessions' pings stalled the broker and the floor's p99 for ~20 ms."""
    slices = round(KEEPALIVE * 0.8 / PING_TICK)
    tick = 0
    while True:
        await asyncio.sleep(PING_TICK)
        for conn in conns()[tick % slices :: slices]:
            conn.send(PINGREQ_PACKET)
        tick += 1


# ---------------------------------------------------------------- the terminal processes


def status_payload(screen: Screen, online: bool = True) -> bytes:
    status = TerminalStatus(
        status="online" if online else "offline",
        timestamp=envelope.timestamp(),
        keepalive=KEEPALIVE,
        screen=screen if online else None,
        readers={"nfc": "ready"} if online else {},
    )
    return msgspec.json.encode(status)


def event_payload(kind: EventKind, sn: str, message_id: str, key: str) -> bytes:
    event = envelope.build_event(
        kind, terminal_sn=sn, message_id=message_id, private_key=key, trans_no=message_id
    )
    return envelope.encode(msgspec.to_builtins(event))


class Store:
    """Push records appended to one file, group-committed: ``put`` returns once
    an fsync that began after the record was written is done."""

    def __init__(self, path: Path | None) -> None:
        self.fd = None if path is None else os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        self.pending: list[tuple[bytes, asyncio.Future[None]]] = []
        self.flusher: asyncio.Task[None] | None = None
        self.fsyncs = 0
        self.records = 0

    async def put(self, record: bytes) -> None:
        if self.fd is None:
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.pending.append((record, fut))
        if self.flusher is None or self.flusher.done():
            self.flusher = asyncio.create_task(self._flush())
        await fut

    async def _flush(self) -> None:
        while self.pending:
            batch, self.pending = self.pending, []
            await asyncio.to_thread(self._write, b"".join(r for r, _ in batch))
            self.fsyncs += 1
            self.records += len(batch)
            for _, fut in batch:
                if not fut.done():
                    fut.set_result(None)

    def _write(self, data: bytes) -> None:
        assert self.fd is not None
        os.write(self.fd, data)
        os.fsync(self.fd)


@dataclass
class Worker:
    """One terminal process: its sessions, the pre-signed events, the stamps."""

    cfg: dict[str, Any]
    store: Store
    events: dict[str, tuple[bytes, bytes]] = field(default_factory=dict)
    conns: list[Conn] = field(default_factory=list)
    stamps: dict[str, tuple[float, float]] = field(default_factory=dict)
    locks: dict[str, asyncio.Lock] = field(default_factory=dict)
    rejected: int = 0
    tasks: set[asyncio.Task[None]] = field(default_factory=set)

    @property
    def v5(self) -> bool:
        return bool(self.cfg["v5"])

    async def connect(self, sn: str, password: str, port: int, *, bare: bool) -> float:
        """One session as the agent makes it; the seconds it took. Raises MqttError, OSError."""
        started = time.perf_counter()
        on_publish = self._bare if bare else self._terminal
        conn = await open_conn(
            self.cfg["host"],
            port,
            sn,
            sn,
            password,
            v5=self.v5,
            on_publish=on_publish,
            will=(status_topic(sn), status_payload(Screen.IDLE, online=False)),
        )
        self.conns.append(conn)
        self.locks[sn] = asyncio.Lock()
        sub = orders_topic(sn)
        code = await conn.subscribe(sub)
        if code != 1:
            raise MqttError(f"SUBACK {code:#x} for {sub}")
        code = await conn.publish(status_topic(sn), status_payload(Screen.IDLE), retain=True)
        if code >= 0x80:
            raise MqttError(f"PUBACK {code:#x} for the status of {sn}")
        return time.perf_counter() - started

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def _terminal(self, conn: Conn, msg: Publish) -> None:
        self._spawn(self._take(conn, msg, time.perf_counter()))

    async def _take(self, conn: Conn, msg: Publish, at: float) -> None:
        sn = msg.topic.split("/")[-2]
        async with self.locks[sn]:  # one push at a time, PUBACKs in arrival order
            try:
                push, _order = envelope.open_push(msg.payload, self.cfg["gateway_public"], sn)
            except ContractError:
                self.rejected += 1
                if msg.packet_id is not None:
                    conn.send(puback_packet(msg.packet_id))
                return
            await self.store.put(push.message_id.encode() + b"\n")
            if msg.packet_id is not None:
                conn.send(puback_packet(msg.packet_id))
            self.stamps[push.message_id] = (at, time.perf_counter())
            received, paid = self.events[push.message_id]
            with contextlib.suppress(MqttError):
                await conn.publish(events_topic(sn), received)
                await conn.publish(events_topic(sn), paid)
                await conn.publish(status_topic(sn), status_payload(Screen.IDLE), retain=True)

    def _bare(self, conn: Conn, msg: Publish) -> None:
        """The floor: PUBACK at once, echo the message id in an event-sized message."""
        at = time.perf_counter()
        if msg.packet_id is not None:
            conn.send(puback_packet(msg.packet_id))
        message_id = msg.payload[:32].split(b" ", 1)[0].decode()
        self.stamps[message_id] = (at, at)
        echo = json.dumps({"event": "received", "message_id": message_id}).encode()
        echo += b" " * max(0, self.cfg["event_bytes"] - len(echo))
        self._spawn(self._echo(conn, events_topic(FLOOR_SN), echo))

    async def _echo(self, conn: Conn, topic: str, payload: bytes) -> None:
        with contextlib.suppress(MqttError):
            await conn.publish(topic, payload)


def raise_fd_limit() -> int:
    """Lift this process's descriptor limit as far as it may go (root: up to
    ``fs.nr_open``): a terminal process stands for many machines, so its own
    limit must not be the one found. The broker keeps the machine's."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    with contextlib.suppress(OSError, ValueError):
        ceiling = int(Path("/proc/sys/fs/nr_open").read_text())
        resource.setrlimit(resource.RLIMIT_NOFILE, (ceiling, ceiling))
        return ceiling
    with contextlib.suppress(OSError, ValueError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        return hard
    return soft


async def worker_main() -> None:
    """A terminal process: config on stdin's first line, one JSON line out when
    connected, stats on another after ``stop`` on stdin."""
    loop = asyncio.get_running_loop()
    raise_fd_limit()
    cfg = json.loads(sys.stdin.readline())
    store_path = cfg["store"]
    w = Worker(cfg, Store(Path(store_path) if store_path else None))
    started = time.perf_counter()
    key = cfg["terminal_key"]
    for sn, ids in cfg["message_ids"].items():
        for message_id in ids:
            w.events[message_id] = (
                event_payload(EventKind.RECEIVED, sn, message_id, key),
                event_payload(EventKind.PAID, sn, message_id, key),
            )
    presign_s = time.perf_counter() - started

    gate = asyncio.Semaphore(cfg["concurrency"])
    took: list[float] = []
    errors: list[str] = []

    async def one(sn: str, password: str, port: int, bare: bool) -> None:
        async with gate:
            if len(errors) >= GIVE_UP_AFTER:
                return  # the limit is found; the rest would only wait out timeouts
            try:
                took.append(await w.connect(sn, password, port, bare=bare))
            except (OSError, MqttError, TimeoutError) as exc:
                errors.append(f"{sn}: {type(exc).__name__}: {exc}")

    started = time.perf_counter()
    jobs = [one(sn, pw, port, False) for sn, pw, port in cfg["sessions"]]
    if cfg["floor"]:
        sn, password, port = cfg["floor"]
        jobs.append(one(sn, password, port, True))
    await asyncio.gather(*jobs)
    pinger = asyncio.create_task(keep_alive(lambda: w.conns))
    report = {
        "connected": len(took),
        "failed": len(errors),
        "errors": errors[:3],
        "connect_s": round(time.perf_counter() - started, 3),
        "connect_each_s": took,
        "presign_s": round(presign_s, 3),
        "events_signed": 2 * len(w.events),
    }
    print(json.dumps(report), flush=True)
    await loop.run_in_executor(None, sys.stdin.readline)  # "stop" (or EOF)
    lost = sum(1 for c in w.conns if c.closed.done())
    for conn in w.conns:
        conn.close()
    pinger.cancel()
    usage = resource.getrusage(resource.RUSAGE_SELF)
    stats = {
        "stamps": w.stamps,
        "rejected": w.rejected,
        "lost_connections": lost,
        "fsyncs": w.store.fsyncs,
        "stored": w.store.records,
        "cpu_s": round(usage.ru_utime + usage.ru_stime, 3),
        "maxrss_mb": round(usage.ru_maxrss / 1024, 1),
    }
    print(json.dumps(stats), flush=True)


# ---------------------------------------------------------------- the TMS and its stopwatch


class Tms:
    """The TMS's session (its own user; every terminal's events and status),
    the push schedule's send times and the ``received`` events' arrivals."""

    def __init__(self) -> None:
        self.conn: Conn | None = None
        self.sent: dict[str, float] = {}
        self.done: dict[str, float] = {}
        self.on_done: dict[str, Callable[[], None]] = {}
        self.awaited: set[str] = set()  # the phase's pushes whose ``received`` is still out
        self.all_done = asyncio.Event()
        self.statuses = 0

    async def connect(self, host: str, port: int, login: tuple[str, str], *, v5: bool) -> None:
        self.conn = await open_conn(
            host, port, "sadad-tms-bench", *login, v5=v5, on_publish=self._message
        )
        for topic in (every_terminal("events"), every_terminal("status")):
            code = await self.conn.subscribe(topic)
            if code != 1:
                raise MqttError(f"the TMS's SUBACK for {topic}: {code:#x}")

    def _message(self, conn: Conn, msg: Publish) -> None:
        at = time.perf_counter()
        if msg.packet_id is not None:
            conn.send(puback_packet(msg.packet_id))
        if msg.topic.endswith("/status"):
            self.statuses += 1
            return
        try:
            event = json.loads(msg.payload)
        except ValueError:
            return
        message_id = event.get("message_id")
        fresh = message_id in self.sent and message_id not in self.done
        if event.get("event") == "received" and fresh:
            self.done[message_id] = at
            callback = self.on_done.pop(message_id, None)
            if callback is not None:
                callback()
            self.awaited.discard(message_id)
            if not self.awaited:
                self.all_done.set()

    async def push(self, topic: str, message_id: str, payload: bytes) -> None:
        assert self.conn is not None
        conn = self.conn
        async with conn.window:  # the send time is when it leaves, not when it queued
            self.sent[message_id] = time.perf_counter()
            fut = conn.request(
                lambda pid: publish_packet(topic, payload, pid, v5=conn.v5, expiry_s=PUSH_EXPIRY_S)
            )
            await fut

    async def paced(self, items: Sequence[tuple[str, str, bytes]], rate: float) -> dict[str, Any]:
        """Open loop at ``rate`` pushes/s; then wait for every ``received``."""
        self.expect([i[1] for i in items])
        start = time.perf_counter()
        sends = []
        for i, item in enumerate(items):
            delay = start + i / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            sends.append(asyncio.create_task(self.push(*item)))
        await asyncio.gather(*sends, return_exceptions=True)
        return await self._settle([i[1] for i in items], start)

    async def saturated(
        self, items: Sequence[tuple[str, str, bytes]], window: int
    ) -> dict[str, Any]:
        """``window`` pushes in flight: the next goes when one's ``received`` is back."""
        slots = asyncio.Semaphore(window)
        self.expect([i[1] for i in items])
        start = time.perf_counter()
        sends = []
        for topic, message_id, payload in items:
            try:
                await asyncio.wait_for(slots.acquire(), PHASE_TIMEOUT)
            except TimeoutError:
                break  # pushes lost: the rest would wait forever
            self.on_done[message_id] = slots.release
            sends.append(asyncio.create_task(self.push(topic, message_id, payload)))
        await asyncio.gather(*sends, return_exceptions=True)
        return await self._settle([i[1] for i in items], start)

    def expect(self, ids: Sequence[str]) -> None:
        """Track the ``received`` events of a phase's pushes (before they go)."""
        self.awaited = {i for i in ids if i not in self.done}
        self.all_done.clear()
        if not self.awaited:
            self.all_done.set()

    async def _settle(self, ids: list[str], start: float) -> dict[str, Any]:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.all_done.wait(), PHASE_TIMEOUT)
        finished = [self.done[i] for i in ids if i in self.done]
        elapsed = (max(finished) if finished else time.perf_counter()) - start
        return {
            "pushes": len(ids),
            "lost": len(ids) - len(finished),
            "per_s": round(len(finished) / elapsed, 1) if elapsed > 0 else 0.0,
        }


# ---------------------------------------------------------------- figures


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile ``q`` (0-100); 0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[max(1, math.ceil(q / 100 * len(ordered))) - 1]


def spans(
    ids: Sequence[str],
    sent: dict[str, float],
    stamps: dict[str, tuple[float, float]],
    done: dict[str, float],
) -> dict[str, dict[str, float]]:
    """p50/p99 in ms of receipt, acked and received, over the pushes that have them."""

    def summary(seconds: list[float]) -> dict[str, float]:
        ms = [s * 1000 for s in seconds]
        return {"p50": round(percentile(ms, 50), 2), "p99": round(percentile(ms, 99), 2)}

    have = [i for i in ids if i in sent and i in stamps]
    return {
        "receipt": summary([stamps[i][0] - sent[i] for i in have]),
        "acked": summary([stamps[i][1] - sent[i] for i in have]),
        "received": summary([done[i] - sent[i] for i in ids if i in sent and i in done]),
    }


# ---------------------------------------------------------------- one run: a broker, N sessions


@dataclass(frozen=True)
class Plan:
    sessions: int
    paced: int  # pushes in the paced phase (and as many for the floor)
    saturated: int  # pushes in the saturated phase (and as many for the floor)
    rate: float
    window: int
    workers: int
    store: str
    concurrency: int = 64  # sessions connecting at a time, per worker
    nodelay: bool = True  # Mosquitto's set_tcp_nodelay (NATS, in Go, has no Nagle by default)
    autosave: int = 1  # Mosquitto's autosave_interval, as the sandbox runs it


def schedule(sns: Sequence[str], count: int, start: int = 0) -> list[tuple[str, str]]:
    """(sn, message id) for pushes ``start`` .. ``start + count - 1`` of the
    round robin: push i goes to ``sns[i % N]`` as its ``i // N``-th."""
    out = []
    for i in range(start, start + count):
        sn = sns[i % len(sns)]
        out.append((sn, f"{sn}-{i // len(sns)}"))
    return out


def build_push(sn: str, message_id: str, key: str) -> bytes:
    order = PushOrder(
        trans_no=message_id.replace("-", "")[:32],
        merchant_no="M0001",
        terminal_sn=sn,
        merchant_order_no=f"O{message_id}"[:32].replace("-", "_"),
        price_currency="QAR",
        order_amount=Decimal("12.50"),
        trans_type=TransType.SALE,
        expires_at=envelope.now_ms() + PUSH_EXPIRY_S * 1000,
        description="2 x coffee",
        order_queue_mode=QueueMode.FIFO,
    )
    push = envelope.build_push(
        PushTopic.PAY_ORDER, order, app_id="pos-sandbox", private_key=key, message_id=message_id
    )
    return envelope.encode(msgspec.to_builtins(push))


def _proc_cpu(pid: int) -> float:
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _proc_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


async def run(kind: str, plan: Plan, tmp: Path) -> dict[str, Any]:
    """One broker, N sessions: connect, the four phases, what it cost."""
    from sandbox.broker import MosquittoBroker, NatsCluster, new_password

    n = plan.sessions
    sns = [f"F{i:06d}" for i in range(n)]
    passwords = {sn: new_password() for sn in [*sns, FLOOR_SN]}
    broker: MosquittoBroker | NatsCluster = (
        MosquittoBroker(
            tmp / "mosquitto",
            secure=True,
            tcp_nodelay=plan.nodelay,
            autosave_interval=plan.autosave,
        )
        if kind == "mosquitto"
        else NatsCluster(tmp / "nats", nodes=3, secure=True)
    )
    broker.add_users(passwords)  # before start: no reload
    t = time.perf_counter()
    broker.start()
    broker_start_s = time.perf_counter() - t
    v5 = kind == "mosquitto"
    ports = (
        [broker.port]
        if isinstance(broker, MosquittoBroker)
        else [node.mqtt_port for node in broker.nodes]
    )
    broker_pids = broker.pids
    gateway_key, gateway_public = generate_key_pem()
    terminal_key, _ = generate_key_pem()
    paced = schedule(sns, plan.paced)
    saturated = schedule(sns, plan.saturated, start=plan.paced)
    t = time.perf_counter()
    pushes = {mid: build_push(sn, mid, gateway_key) for sn, mid in [*paced, *saturated]}
    push_sign_s = time.perf_counter() - t
    floor_ids = [f"{FLOOR_SN}-{i}" for i in range(plan.paced + plan.saturated)]
    push_bytes = max(len(p) for p in pushes.values())
    event_bytes = len(event_payload(EventKind.RECEIVED, sns[0], paced[0][1], terminal_key))
    floor_pushes = {mid: mid.encode() + b" " * (push_bytes - len(mid)) for mid in floor_ids}

    workers: list[asyncio.subprocess.Process] = []
    tms = Tms()
    result: dict[str, Any] = {
        "broker": kind,
        "sessions": n,
        "broker_start_s": round(broker_start_s, 2),
    }
    try:
        for k in range(plan.workers):
            mine = [sn for i, sn in enumerate(sns) if i % plan.workers == k]
            ids: dict[str, list[str]] = {sn: [] for sn in mine}
            for sn, mid in [*paced, *saturated]:
                if sn in ids:
                    ids[sn].append(mid)
            cfg = {
                "host": broker.host,
                "v5": v5,
                "sessions": [[sn, passwords[sn], ports[sns.index(sn) % len(ports)]] for sn in mine],
                "floor": [FLOOR_SN, passwords[FLOOR_SN], ports[1 % len(ports)]] if k == 0 else None,
                "message_ids": ids,
                "terminal_key": terminal_key,
                "gateway_public": gateway_public,
                "store": str(tmp / f"store-{k}.log") if plan.store == "fsync" else None,
                "event_bytes": event_bytes,
                "concurrency": plan.concurrency,
            }
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "benchmarks.fleet",
                "--worker",
                cwd=REPO,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                limit=1 << 26,
            )
            assert proc.stdin is not None
            proc.stdin.write(json.dumps(cfg).encode() + b"\n")
            await proc.stdin.drain()
            workers.append(proc)
        tms_login = broker.tms_credentials
        await tms.connect(broker.host, ports[0], (tms_login.username, tms_login.password), v5=v5)
        keeper = asyncio.create_task(keep_alive(lambda: [tms.conn] if tms.conn else []))
        reports = [await _line(p, CONNECT_TIMEOUT + 30 + n / 20) for p in workers]
        each = [s for r in reports for s in r["connect_each_s"]]
        result["connect"] = {
            "connected": sum(r["connected"] for r in reports),
            "failed": sum(r["failed"] for r in reports),
            "errors": [e for r in reports for e in r["errors"]][:3],
            "wall_s": max(r["connect_s"] for r in reports),
            "each_p50_ms": round(percentile(each, 50) * 1000, 1),
            "each_p99_ms": round(percentile(each, 99) * 1000, 1),
        }
        result["presign"] = {
            "pushes": len(pushes),
            "push_sign_s": round(push_sign_s, 2),
            "events": sum(r["events_signed"] for r in reports),
            "event_sign_s": max(r["presign_s"] for r in reports),
        }
        result["broker_rss_after_connect_mb"] = round(sum(map(_proc_rss_mb, broker_pids)), 1)
        if result["connect"]["failed"]:
            result["broker_says"] = complaints(broker)
            return result

        def items(pairs: list[tuple[str, str]]) -> list[tuple[str, str, bytes]]:
            return [(orders_topic(sn), mid, pushes[mid]) for sn, mid in pairs]

        floor_topic = orders_topic(FLOOR_SN)
        floor_paced = [(floor_topic, m, floor_pushes[m]) for m in floor_ids[: plan.paced]]
        floor_sat = [(floor_topic, m, floor_pushes[m]) for m in floor_ids[plan.paced :]]
        phases: dict[str, dict[str, Any]] = {}
        phases["terminals paced"] = await tms.paced(items(paced), plan.rate)
        phases["floor paced"] = await tms.paced(floor_paced, plan.rate)
        phases["floor saturated"] = await tms.saturated(floor_sat, plan.window)
        cpu_before = {p: _proc_cpu(p) for p in [*broker_pids, *(w.pid for w in workers)]}
        own_before = time.process_time()
        t = time.perf_counter()
        phases["terminals saturated"] = await tms.saturated(items(saturated), plan.window)
        wall = time.perf_counter() - t
        cpu = {p: _proc_cpu(p) - c for p, c in cpu_before.items()}
        result["saturated_cpu_pct"] = {
            "broker": round(100 * sum(cpu[p] for p in broker_pids) / wall, 1),
            "terminals": round(100 * sum(cpu[w.pid] for w in workers) / wall, 1),
            "tms": round(100 * (time.process_time() - own_before) / wall, 1),
        }
        result["broker_rss_end_mb"] = round(sum(map(_proc_rss_mb, broker_pids)), 1)
        keeper.cancel()
        stats = []
        for proc in workers:
            assert proc.stdin is not None
            proc.stdin.write(b"stop\n")
            await proc.stdin.drain()
            stats.append(await _line(proc, 60))
        stamps: dict[str, tuple[float, float]] = {}
        for s in stats:
            stamps.update({k: (v[0], v[1]) for k, v in s["stamps"].items()})
        ids_of = {
            "floor paced": [i[1] for i in floor_paced],
            "terminals paced": [mid for _, mid in paced],
            "floor saturated": [i[1] for i in floor_sat],
            "terminals saturated": [mid for _, mid in saturated],
        }
        for name, phase in phases.items():
            phase.update(spans(ids_of[name], tms.sent, stamps, tms.done))
        result["phases"] = phases
        result["terminals"] = {
            "rejected": sum(s["rejected"] for s in stats),
            "lost_connections": sum(s["lost_connections"] for s in stats),
            "fsyncs": sum(s["fsyncs"] for s in stats),
            "stored": sum(s["stored"] for s in stats),
            "cpu_s": round(sum(s["cpu_s"] for s in stats), 2),
            "maxrss_mb": max(s["maxrss_mb"] for s in stats),
        }
        result["push_bytes"], result["event_bytes"] = push_bytes, event_bytes
        return result
    finally:
        if tms.conn is not None:
            tms.conn.close()
        for proc in workers:
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
        broker.stop()


def complaints(broker: Any) -> list[str]:
    """The broker's last warnings and errors (why connects failed), one of each."""
    logs = [broker.log_path] if hasattr(broker, "log_path") else []
    logs += [broker.data_dir / f"{node.name}.log" for node in getattr(broker, "nodes", [])]
    seen: dict[str, None] = {}
    for log in logs:
        with contextlib.suppress(OSError):
            for line in log.read_text("utf-8", errors="replace").splitlines()[-2000:]:
                if any(w in line for w in ("ulimit", "Warning", "[ERR]", "[WRN]", "Error")):
                    seen[line.split(": ", 1)[-1][:200]] = None
    return list(seen)[-3:]


async def _line(proc: asyncio.subprocess.Process, timeout: float) -> dict[str, Any]:
    assert proc.stdout is not None
    line = await asyncio.wait_for(proc.stdout.readline(), timeout)
    if not line:
        raise RuntimeError(f"terminal process {proc.pid} ended (exit {await proc.wait()})")
    out = json.loads(line)
    assert isinstance(out, dict)
    return out


# ---------------------------------------------------------------- the report


def stop_reason(result: dict[str, Any]) -> str | None:
    """Why a ramp ends at this run, or None to go on."""
    c = result.get("connect", {})
    if c.get("failed"):
        return (
            f"{c['failed']} of {result['sessions']} sessions failed to connect: {c['errors'][:1]}"
        )
    phases = result.get("phases", {})
    lost = sum(p["lost"] for p in phases.values())
    if lost:
        return f"{lost} pushes lost (no received event within {PHASE_TIMEOUT:g} s)"
    p99 = phases.get("terminals paced", {}).get("acked", {}).get("p99", 0.0)
    if p99 > EXPLODED_S * 1000:
        return f"paced p99 acked {p99:.0f} ms > {EXPLODED_S * 1000:.0f} ms"
    return None


def print_table(results: list[dict[str, Any]], plan: Plan) -> None:
    print(
        f"Fleet: secure brokers, {plan.workers} terminal processes, store {plan.store}; paced "
        f"{plan.rate:g} pushes/s, saturated {plan.window} in flight; Mosquitto set_tcp_nodelay "
        f"{'true' if plan.nodelay else 'false'}, autosave_interval {plan.autosave}; ms p50/p99"
    )
    head = f"{'broker':<10}{'sessions':>9}  {'phase':<20}{'pushes/s':>9}"
    print(f"{head}  {'receipt':>15}  {'acked':>15}  {'received':>15}  lost")
    for r in results:
        c = r.get("connect", {})
        print(
            f"{r['broker']:<10}{r['sessions']:>9}  connect: {c.get('connected', 0)} in "
            f"{c.get('wall_s', 0):.1f} s (each p99 {c.get('each_p99_ms', 0):.0f} ms), "
            f"{c.get('failed', 0)} failed; broker RSS "
            f"{r.get('broker_rss_after_connect_mb', 0):.0f} MB"
        )
        for name, p in r.get("phases", {}).items():
            cols = "  ".join(
                f"{p[s]['p50']:>7.2f}/{p[s]['p99']:<7.2f}" for s in ("receipt", "acked", "received")
            )
            print(f"{'':<19}  {name:<20}{p['per_s']:>9.0f}  {cols}  {p['lost']}")
        if "saturated_cpu_pct" in r:
            cpu = r["saturated_cpu_pct"]
            print(
                f"{'':<19}  CPU while saturated: broker {cpu['broker']:.0f}%, terminals "
                f"{cpu['terminals']:.0f}%, TMS {cpu['tms']:.0f}% (of one core; 2 cores)"
            )
        if r.get("stopped"):
            print(f"{'':<19}  ramp ends: {r['stopped']}")
        for line in r.get("broker_says", []):
            print(f"{'':<19}  broker log: {line}")


async def main_async(args: argparse.Namespace) -> None:
    from benchmarks.latency_rig import machine

    quick = args.quick
    plan_base = Plan(
        sessions=200 if quick else 1000,
        paced=150 if quick else 500,
        saturated=1000 if quick else 4000,
        rate=args.rate or 50,
        window=args.window or (50 if quick else 100),
        workers=args.workers,
        store=args.store,
        nodelay=not args.mosquitto_nagle,
        autosave=args.mosquitto_autosave,
    )
    counts = args.sessions or [plan_base.sessions]
    ramp = not quick and args.sessions is None
    kinds = ["mosquitto", "nats"] if args.broker == "both" else [args.broker]
    results: list[dict[str, Any]] = []
    held: dict[str, dict[str, Any]] = {}
    for kind in kinds:
        todo = list(counts)
        good, bad, tries = 0, 0, 0
        while todo:
            tries += 1
            n = todo.pop(0)
            plan = dataclasses.replace(plan_base, sessions=n)
            with tempfile.TemporaryDirectory(prefix=f"fleet-{kind}-", dir=args.tmp) as tmp:
                try:
                    r = await run(kind, plan, Path(tmp))
                except Exception as exc:  # a run that breaks ends the ramp, not the report
                    r = {"broker": kind, "sessions": n, "error": f"{type(exc).__name__}: {exc}"}
            reason = r.get("error") or stop_reason(r)
            r["stopped"] = reason
            results.append(r)
            print_table([r], plan)
            sys.stdout.flush()
            if reason is None:
                good = max(good, n)
                held[kind] = {"sessions": good, "limit": None}
            else:
                bad = n if not bad else min(bad, n)
                connected = r.get("connect", {}).get("connected", 0)
                held.setdefault(kind, {"sessions": good})["limit"] = f"at {n}: {reason}"
                held[kind]["connected_at_failure"] = connected
            if not ramp:
                continue
            if not bad and n * 2 <= args.max_sessions:
                todo.append(n * 2)
            elif not bad:
                held[kind]["limit"] = f"--max-sessions {args.max_sessions}"
            elif bad - good > max(1000, good // 4) and tries < 10:
                todo.append((good + bad) // 2 // 500 * 500)  # narrow it down
    print()
    print_table(results, plan_base)
    out = {
        "benchmark": "fleet",
        "quick": args.quick,
        "plan": {k: v for k, v in dataclasses.asdict(plan_base).items() if k != "sessions"},
        "runs": results,
        "max_sessions": held,
        "ulimit_nofile": resource.getrlimit(resource.RLIMIT_NOFILE)[0],
        "machine": machine(),
    }
    for r in results:  # keep the JSON line about figures, not samples
        r.pop("connect_each_s", None)
    print(json.dumps(out, sort_keys=True))


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="200 sessions, short phases (< 1 min)")
    parser.add_argument(
        "--sessions",
        type=lambda s: [int(x) for x in s.split(",")],
        help="session counts to run, e.g. 1000 or 1000,2000 (default: 1000, then doubling)",
    )
    parser.add_argument("--broker", choices=["mosquitto", "nats", "both"], default="both")
    parser.add_argument("--workers", type=int, default=2, help="terminal processes (default 2)")
    parser.add_argument("--rate", type=float, help="paced pushes per second (default 50)")
    parser.add_argument("--window", type=int, help="saturated: pushes in flight (default 100)")
    parser.add_argument("--store", choices=["fsync", "none"], default="fsync")
    parser.add_argument("--max-sessions", type=int, default=64000, help="where a ramp stops")
    parser.add_argument(
        "--mosquitto-nagle",
        action="store_true",
        help="leave Mosquitto's set_tcp_nodelay at its default (false)",
    )
    parser.add_argument(
        "--mosquitto-autosave",
        type=int,
        default=1,
        metavar="S",
        help="Mosquitto's autosave_interval (default 1, the sandbox's; Mosquitto's own is 1800)",
    )
    parser.add_argument("--tmp", help="scratch directory (default: the system's, on disk)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        asyncio.run(worker_main())
        return
    asyncio.run(main_async(args))


if __name__ == "__main__":
    main()
