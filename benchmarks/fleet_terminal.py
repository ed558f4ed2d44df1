"""A terminal process of the fleet benchmark: many simulated terminals on one loop.

``benchmarks/fleet.py`` starts ``--workers`` of these (``python -m
benchmarks.fleet --worker``), each with its share of the sessions on one
asyncio loop over ``benchmarks.fleet_mqtt``. ``worker_main`` reads its
config as one JSON line on stdin, signs its events, connects its sessions
(a bounded number at a time), prints one JSON line when they are connected,
then, after ``stop`` on stdin, one more with the stamps of every push (its
arrival, and its PUBACK) and what the process cost.

What a simulated terminal does (part C of docs/protocol.md, as
``agent.mqtt.link`` does it): client id and user = its SN, its own
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

The floor's session, in the first terminal process, is a bare subscriber:
it acknowledges a push at once and echoes an event-sized message, with no
verification, storage or signature.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import resource
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec

from benchmarks.fleet_mqtt import (
    KEEPALIVE,
    Conn,
    MqttError,
    Publish,
    keep_alive,
    open_conn,
    puback_packet,
)
from cloud import envelope
from cloud.errors import ContractError
from cloud.messages import EventKind, Screen, TerminalStatus
from cloud.topics import events_topic, orders_topic, status_topic

GIVE_UP_AFTER = 10  # failed connects in a terminal process before it stops trying
FLOOR_SN = "FLOOR0001"


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
