"""BridgeServer on a real Unix socket, with raw peers and the real client."""

from __future__ import annotations

import asyncio
import contextlib
import grp
import os
import socket
import stat
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from agent.bridge import MAX_PENDING_INTENTS, BridgeServer
from agent.bridge_client import BridgeClient
from agent.bridge_protocol import (
    BridgeError,
    CheckConnectionIntent,
    ConfirmIntent,
    ConnectionEvent,
    Event,
    HelloEvent,
    Intent,
    LineDecoder,
    QueueEvent,
    ReadersEvent,
    Reply,
    Screen,
    ScreenEvent,
    StateEvent,
    StatusIntent,
    TerminalInfo,
    encode_line,
)
from tests.waiting import async_until

TERMINAL = TerminalInfo(sn="PP35271234567", store_name="Corner Café")


class SimAgent:
    """The agent's side of the bridge: records intents, answers some of them."""

    def __init__(self) -> None:
        self.intents: list[Intent] = []
        self.server: BridgeServer | None = None
        self.release = asyncio.Event()

    def hello(self) -> HelloEvent:
        assert self.server is not None
        return HelloEvent(terminal=TERMINAL, snapshot=self.server.snapshot())

    async def on_intent(self, intent: Intent) -> dict[str, Any]:
        self.intents.append(intent)
        if isinstance(intent, CheckConnectionIntent):
            raise RuntimeError("broker unreachable: connection refused")
        if isinstance(intent, ConfirmIntent) and intent.trans_no == "slow":
            await self.release.wait()
        return {"intent": type(intent).__name__, "id": intent.id}


class RawPeer:
    """A UI speaking the protocol by hand over a real socket."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.decoder = LineDecoder.for_events()
        self.inbox: list[Any] = []

    @classmethod
    async def open(cls, path: str) -> RawPeer:
        reader, writer = await asyncio.open_unix_connection(path)
        return cls(reader, writer)

    async def next(self, timeout: float = 5.0) -> Event:
        async with asyncio.timeout(timeout):
            while not self.inbox:
                data = await self.reader.read(65536)
                if not data:
                    raise EOFError
                self.inbox += self.decoder.feed(data)
        item = self.inbox.pop(0)
        assert not isinstance(item, Exception), item
        return item  # type: ignore[no-any-return]

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def reply(self, timeout: float = 5.0) -> Reply:
        while True:
            ev = await self.next(timeout)
            if isinstance(ev, Reply):
                return ev

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(OSError):
            await self.writer.wait_closed()


@pytest.fixture
def sock_path(tmp_path: Path) -> str:
    return str(tmp_path / "b.sock")


@pytest.fixture
async def agent(sock_path: str) -> AsyncIterator[SimAgent]:
    sim = SimAgent()
    sim.server = BridgeServer(sock_path, hello=sim.hello, on_intent=sim.on_intent)
    await sim.server.start()
    yield sim
    sim.release.set()
    await sim.server.close()


def srv(agent: SimAgent) -> BridgeServer:
    assert agent.server is not None
    return agent.server


# ---------------------------------------------------------------- lifecycle


async def test_socket_is_bound_0660_and_removed_on_close(sock_path: str) -> None:
    sim = SimAgent()
    server = BridgeServer(sock_path, hello=sim.hello, on_intent=sim.on_intent)
    sim.server = server
    old = os.umask(0)
    try:
        await server.start()
    finally:
        os.umask(old)
    st = os.stat(sock_path)
    assert stat.S_ISSOCK(st.st_mode)
    assert stat.S_IMODE(st.st_mode) == 0o660
    await server.close()
    with pytest.raises(FileNotFoundError):
        os.stat(sock_path)


async def test_socket_given_to_the_checkouts_group(sock_path: str) -> None:
    """The checkout runs as a user of its own: the socket is given its group
    (one the agent is in), and a group that does not exist is an error."""
    sim = SimAgent()
    group = grp.getgrgid(os.getgroups()[-1] if os.getgroups() else os.getgid()).gr_name
    server = BridgeServer(sock_path, hello=sim.hello, on_intent=sim.on_intent, group=group)
    sim.server = server
    await server.start()
    try:
        assert os.stat(sock_path).st_gid == grp.getgrnam(group).gr_gid
    finally:
        await server.close()
    nobody = BridgeServer(sock_path, hello=sim.hello, on_intent=sim.on_intent, group="no-such-grp")
    with pytest.raises(BridgeError, match="no group 'no-such-grp'"):
        await nobody.start()


async def test_stale_socket_is_replaced(sock_path: str) -> None:
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(sock_path)
    stale.close()  # the file stays, nobody listens: a crashed agent's leftover
    sim = SimAgent()
    sim.server = BridgeServer(sock_path, hello=sim.hello, on_intent=sim.on_intent)
    await sim.server.start()
    try:
        peer = await RawPeer.open(sock_path)
        assert isinstance(await peer.next(), HelloEvent)
        await peer.close()
    finally:
        await sim.server.close()


async def test_live_socket_is_not_stolen(agent: SimAgent, sock_path: str) -> None:
    other = SimAgent()
    second = BridgeServer(sock_path, hello=other.hello, on_intent=other.on_intent)
    with pytest.raises(BridgeError, match="another process is listening"):
        await second.start()
    peer = await RawPeer.open(sock_path)  # the first agent still serves
    assert isinstance(await peer.next(), HelloEvent)
    await peer.close()


@pytest.fixture
def regular_file(sock_path: str) -> Path:
    path = Path(sock_path)
    path.write_text("keep me")
    return path


async def test_path_that_is_not_a_socket_is_left_alone(regular_file: Path) -> None:
    sock_path = str(regular_file)
    sim = SimAgent()
    server = BridgeServer(sock_path, hello=sim.hello, on_intent=sim.on_intent)
    with pytest.raises(BridgeError, match="not a socket"):
        await server.start()
    assert os.stat(sock_path).st_size == len("keep me")


async def test_publish_with_no_client_only_records_state(agent: SimAgent) -> None:
    server = srv(agent)
    assert server.clients == 0
    ev = server.publish(QueueEvent(waiting=3))
    assert ev.seq >= 1
    assert server.snapshot().queue == ev


# ---------------------------------------------------------------- events


async def test_hello_comes_first_with_the_current_state(agent: SimAgent, sock_path: str) -> None:
    server = srv(agent)
    screen = server.publish(ScreenEvent(screen=Screen.WAITING_FOR_CARD, progress="Tap card"))
    conn = server.publish(ConnectionEvent(mqtt="connected", gateway="ok"))
    readers = server.publish(ReadersEvent(readers={"nfc": "ready"}))
    queue = server.publish(QueueEvent(waiting=1))
    peer = await RawPeer.open(sock_path)
    hello = await peer.next()
    assert isinstance(hello, HelloEvent)
    assert hello.terminal == TERMINAL
    assert hello.version == 1
    assert hello.snapshot.screen == screen
    assert hello.snapshot.connection == conn
    assert hello.snapshot.readers == readers
    assert hello.snapshot.queue == queue
    assert hello.seq > queue.seq
    await async_until(lambda: server.clients == 1)
    later = server.publish(QueueEvent(waiting=0))
    assert await peer.next() == later
    await peer.close()


async def test_events_reach_two_clients_in_order(agent: SimAgent, sock_path: str) -> None:
    server = srv(agent)
    a, b = await RawPeer.open(sock_path), await RawPeer.open(sock_path)
    hellos = [await a.next(), await b.next()]
    assert all(isinstance(h, HelloEvent) for h in hellos)
    sent: list[StateEvent] = [server.publish(QueueEvent(waiting=n)) for n in range(50)]
    sent.append(server.publish(ScreenEvent(screen=Screen.IDLE)))
    for peer, hello in zip((a, b), hellos, strict=True):
        got = [await peer.next() for _ in sent]
        assert got == sent
        seqs = [hello.seq] + [e.seq for e in got]
        assert seqs == sorted(set(seqs))
        await peer.close()


async def test_events_published_together_go_in_one_write(agent: SimAgent, sock_path: str) -> None:
    """A screen and its queue event, published in one turn of the loop, cost
    the client one wake-up (one write, one system call), not two."""
    server = srv(agent)
    peer = await RawPeer.open(sock_path)
    await peer.next()  # hello
    (client,) = server._clients
    writes: list[bytes] = []
    write = client.writer.write

    def counted(data: bytes | bytearray | memoryview) -> None:
        writes.append(bytes(data))
        write(data)

    client.writer.write = counted  # type: ignore[method-assign]
    sent = [server.publish(ScreenEvent(screen=Screen.IDLE)), server.publish(QueueEvent(waiting=1))]
    assert [await peer.next() for _ in sent] == sent
    assert len(writes) == 1
    assert writes[0].count(b"\n") == 2
    await peer.close()


async def test_closed_client_is_forgotten(agent: SimAgent, sock_path: str) -> None:
    server = srv(agent)
    peer = await RawPeer.open(sock_path)
    await peer.next()
    await async_until(lambda: server.clients == 1)
    peer.writer.transport.abort()
    await async_until(lambda: server.clients == 0)
    server.publish(QueueEvent(waiting=1))  # no one to send to: fine


async def test_hello_that_fails_closes_only_that_connection(sock_path: str) -> None:
    sim = SimAgent()
    calls = 0

    def hello() -> HelloEvent:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("config not loaded")
        return sim.hello()

    sim.server = BridgeServer(sock_path, hello=hello, on_intent=sim.on_intent)
    await sim.server.start()
    try:
        first = await RawPeer.open(sock_path)
        with pytest.raises((EOFError, ConnectionError)):
            await first.next()
        second = await RawPeer.open(sock_path)
        assert isinstance(await second.next(), HelloEvent)
        await first.close()
        await second.close()
    finally:
        await sim.server.close()


# ---------------------------------------------------------------- intents


async def test_intent_gets_its_reply(agent: SimAgent, sock_path: str) -> None:
    peer = await RawPeer.open(sock_path)
    await peer.next()
    await peer.send(encode_line(StatusIntent(id="s-1")))
    reply = await peer.reply()
    assert reply == Reply(
        seq=reply.seq, id="s-1", ok=True, data={"intent": "StatusIntent", "id": "s-1"}
    )
    assert agent.intents == [StatusIntent(id="s-1")]
    await peer.close()


async def test_failing_intent_is_ok_false_and_the_server_keeps_serving(
    agent: SimAgent, sock_path: str
) -> None:
    peer = await RawPeer.open(sock_path)
    await peer.next()
    await peer.send(encode_line(CheckConnectionIntent(id="t-1")))
    reply = await peer.reply()
    assert reply.id == "t-1"
    assert not reply.ok
    assert reply.error == "broker unreachable: connection refused"
    await peer.send(encode_line(StatusIntent(id="s-2")))
    assert (await peer.reply()).ok
    await peer.close()


@pytest.mark.parametrize(
    ("line", "reply_id"),
    [
        (b"this is not json\n", ""),
        (b'{"intent": "pay_twice", "id": "p-1"}\n', "p-1"),
        (b'{"intent": "status", "id": "' + b"x" * 70_000 + b'"}\n', ""),
    ],
    ids=["garbage", "unknown-intent", "over-long"],
)
async def test_bad_line_gets_an_error_reply_and_the_connection_stays(
    agent: SimAgent, sock_path: str, line: bytes, reply_id: str
) -> None:
    peer = await RawPeer.open(sock_path)
    await peer.next()
    await peer.send(line)
    reply = await peer.reply()
    assert reply.id == reply_id
    assert not reply.ok
    assert reply.error is not None
    assert reply.error.startswith("bad line: ")
    await peer.send(encode_line(StatusIntent(id="after")))
    after = await peer.reply()
    assert (after.id, after.ok) == ("after", True)
    assert agent.intents == [StatusIntent(id="after")]
    await peer.close()


async def test_slow_intent_does_not_hold_up_the_next(agent: SimAgent, sock_path: str) -> None:
    peer = await RawPeer.open(sock_path)
    await peer.next()
    await peer.send(encode_line(ConfirmIntent(id="c-slow", trans_no="slow")))
    await peer.send(encode_line(StatusIntent(id="s-fast")))
    first = await peer.reply()
    assert first.id == "s-fast"
    agent.release.set()
    second = await peer.reply()
    assert second.id == "c-slow"
    await peer.close()


async def test_too_many_pending_intents_are_refused(agent: SimAgent, sock_path: str) -> None:
    peer = await RawPeer.open(sock_path)
    await peer.next()
    burst = b"".join(encode_line(ConfirmIntent(id=f"c{n}", trans_no="slow")) for n in range(40))
    await peer.send(burst)
    busy = [await peer.reply() for _ in range(40 - MAX_PENDING_INTENTS)]
    assert all(not r.ok and r.error is not None and r.error.startswith("busy") for r in busy)
    agent.release.set()
    done = [await peer.reply() for _ in range(MAX_PENDING_INTENTS)]
    assert all(r.ok for r in done)
    await peer.close()


# ---------------------------------------------------------------- back-pressure


async def test_client_that_never_reads_is_dropped_and_publish_never_blocks(
    agent: SimAgent, sock_path: str
) -> None:
    server = srv(agent)
    stuck = await RawPeer.open(sock_path)  # connects, then never reads
    healthy = BridgeClient(sock_path)
    received: list[Event] = []

    async def consume() -> None:
        async for ev in healthy.events():
            if isinstance(ev, (HelloEvent, ScreenEvent)):
                received.append(ev)

    await healthy.connect(wait=5)
    consumer = asyncio.create_task(consume())
    await async_until(lambda: server.clients == 2 and len(received) == 1)

    filler = "x" * 4000
    published: list[ScreenEvent] = []
    slowest = 0.0
    for n in range(5000):
        t0 = time.monotonic()
        ev = server.publish(ScreenEvent(screen=Screen.READING, message=f"{n} {filler}"))
        slowest = max(slowest, time.monotonic() - t0)
        published.append(ev)
        await asyncio.sleep(0)
        if server.clients == 1:
            break
    assert server.clients == 1, "the stuck client was never dropped"
    assert slowest < 1.0
    assert len(published) > 256  # its socket buffer and queue filled first

    published.append(server.publish(ScreenEvent(screen=Screen.IDLE)))
    await async_until(lambda: len(received) == 1 + len(published))
    assert received[1:] == published  # the healthy client missed nothing
    seqs = [e.seq for e in received]
    assert seqs == sorted(set(seqs))
    assert healthy.connected

    consumer.cancel()
    await healthy.close()
    await stuck.close()


async def test_close_drops_clients(agent: SimAgent, sock_path: str) -> None:
    peer = await RawPeer.open(sock_path)
    await peer.next()
    await srv(agent).close()
    with pytest.raises((EOFError, ConnectionError)):
        await peer.next()
    assert srv(agent).clients == 0
    await peer.close()
