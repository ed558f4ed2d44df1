"""BridgeClient and query_status against a real BridgeServer on a Unix socket."""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from agent.bridge import BridgeServer
from agent.bridge_client import AgentLost, BridgeClient, ClientEvent, query_status
from agent.bridge_protocol import (
    AgentUnavailable,
    BridgeError,
    BridgeProtocolError,
    CancelIntent,
    ConnectionLost,
    HelloEvent,
    Intent,
    QueueEvent,
    RequestTimeout,
    Screen,
    ScreenEvent,
    StatusIntent,
    TerminalInfo,
)
from agent.bridge_replies import StatusReply
from tests.waiting import async_until


class SimAgent:
    """The agent's side: a server whose intents are answered here."""

    def __init__(self, path: str, sn: str = "SN-1") -> None:
        self.sn = sn
        self.intents: list[Intent] = []
        self.hang = asyncio.Event()
        self.server = BridgeServer(path, hello=self.hello, on_intent=self.on_intent)

    def hello(self) -> HelloEvent:
        return HelloEvent(terminal=TerminalInfo(sn=self.sn), snapshot=self.server.snapshot())

    async def on_intent(self, intent: Intent) -> dict[str, Any]:
        self.intents.append(intent)
        if isinstance(intent, CancelIntent) and intent.trans_no == "hang":
            await asyncio.Event().wait()  # never answers
        if isinstance(intent, CancelIntent) and intent.trans_no == "refuse":
            raise ValueError("nothing to cancel")
        if isinstance(intent, StatusIntent) and self.sn == "refuser":
            raise PermissionError("status is disabled")
        return {"sn": self.sn, "intent": type(intent).__name__}


@pytest.fixture
def sock_path(tmp_path: Path) -> str:
    return str(tmp_path / "b.sock")


@pytest.fixture
async def agent(sock_path: str) -> AsyncIterator[SimAgent]:
    sim = SimAgent(sock_path)
    await sim.server.start()
    yield sim
    await sim.server.close()


@pytest.fixture
async def client(sock_path: str) -> AsyncIterator[BridgeClient]:
    c = BridgeClient(sock_path, backoff_initial=0.05, backoff_max=0.2)
    yield c
    await c.close()


async def take(it: AsyncIterator[ClientEvent], timeout: float = 5.0) -> ClientEvent:
    async with asyncio.timeout(timeout):
        return await anext(it)


async def test_hello_then_events_then_request(agent: SimAgent, client: BridgeClient) -> None:
    agent.server.publish(ScreenEvent(screen=Screen.WAITING_FOR_CARD))
    await client.connect(wait=5)
    assert client.connected
    events = client.events()
    hello = await take(events)
    assert isinstance(hello, HelloEvent)
    assert hello.snapshot.screen is not None
    assert hello.snapshot.screen.screen == Screen.WAITING_FOR_CARD
    ev = agent.server.publish(QueueEvent(waiting=2))
    assert await take(events) == ev
    reply = await client.request("cancel", trans_no="T1")
    assert reply.ok
    assert reply.data == {"sn": "SN-1", "intent": "CancelIntent"}
    assert agent.intents == [CancelIntent(id=reply.id, trans_no="T1")]
    assert client.state is not None
    assert client.state.snapshot.queue == ev
    await events.aclose()


async def test_refused_intent_is_a_reply_not_an_exception(
    agent: SimAgent, client: BridgeClient
) -> None:
    await client.connect(wait=5)
    reply = await client.request("cancel", trans_no="refuse")
    assert not reply.ok
    assert reply.error == "nothing to cancel"
    assert (await client.request("status")).ok


async def test_bad_intent_is_refused_locally(agent: SimAgent, client: BridgeClient) -> None:
    await client.connect(wait=5)
    with pytest.raises(BridgeProtocolError):
        await client.request("pay_twice")
    with pytest.raises(BridgeProtocolError):
        await client.request("test_reader", reader=3)
    assert agent.intents == []


async def test_request_times_out(agent: SimAgent, client: BridgeClient) -> None:
    await client.connect(wait=5)
    with pytest.raises(RequestTimeout):
        await client.request("cancel", timeout=0.2, trans_no="hang")
    assert (await client.request("status")).ok  # the connection is still good


async def test_request_without_agent_is_unavailable(client: BridgeClient) -> None:
    await client.connect()
    with pytest.raises(AgentUnavailable, match="not found"):
        await client.request("status", timeout=0.3)
    with pytest.raises(AgentUnavailable):
        await client.connect(wait=0.2)


async def test_request_before_connect_is_an_error(client: BridgeClient) -> None:
    with pytest.raises(BridgeError, match="connect"):
        await client.request("status")


async def test_pending_request_fails_when_the_agent_goes(
    agent: SimAgent, client: BridgeClient
) -> None:
    await client.connect(wait=5)
    pending = asyncio.create_task(client.request("cancel", trans_no="hang"))
    await async_until(lambda: len(agent.intents) == 1)
    await agent.server.close()
    with pytest.raises(ConnectionLost):
        await pending


async def test_agent_restart_reconnects_with_a_new_hello(
    sock_path: str, client: BridgeClient
) -> None:
    first = SimAgent(sock_path, sn="first")
    await first.server.start()
    await client.connect(wait=5)
    events = client.events()
    hello = await take(events)
    assert isinstance(hello, HelloEvent)
    assert hello.terminal.sn == "first"

    await first.server.close()
    lost = await take(events)
    assert isinstance(lost, AgentLost)
    assert not client.connected

    second = SimAgent(sock_path, sn="second")
    second.server.publish(ScreenEvent(screen=Screen.AUTHORIZING, progress="Authorizing..."))
    await second.server.start()
    try:
        hello2 = await take(events)
        assert isinstance(hello2, HelloEvent)
        assert hello2.terminal.sn == "second"
        assert hello2.snapshot.screen is not None
        assert hello2.snapshot.screen.screen == Screen.AUTHORIZING
        assert client.connected
        assert (await client.request("status")).data["sn"] == "second"
    finally:
        await events.aclose()
        await second.server.close()


async def test_client_started_before_the_agent(sock_path: str, client: BridgeClient) -> None:
    await client.connect()
    events = client.events()
    lost = await take(events)
    assert isinstance(lost, AgentLost)
    assert "not found" in lost.reason
    sim = SimAgent(sock_path)
    await sim.server.start()
    try:
        assert isinstance(await take(events), HelloEvent)  # one AgentLost, not one per retry
    finally:
        await events.aclose()
        await sim.server.close()


async def test_late_subscriber_starts_with_current_state(
    agent: SimAgent, client: BridgeClient
) -> None:
    await client.connect(wait=5)
    last = agent.server.publish(ScreenEvent(screen=Screen.RESULT, message="Approved"))
    await async_until(lambda: client.state is not None and client.state.seq == last.seq)
    events = client.events()
    first = await take(events)
    assert isinstance(first, HelloEvent)
    assert first.snapshot.screen == last
    await events.aclose()


async def test_lagging_subscriber_gets_the_state_instead_of_a_backlog(
    agent: SimAgent, sock_path: str
) -> None:
    client = BridgeClient(sock_path, max_buffered=4)
    try:
        await client.connect(wait=5)
        events = client.events()
        sent = [agent.server.publish(QueueEvent(waiting=n)) for n in range(50)]
        await async_until(lambda: client.state is not None and client.state.seq == sent[-1].seq)
        got: list[ClientEvent] = []
        while len(got) < 4 and not (got and got[-1] == client.state):
            got.append(await take(events))
        assert got[-1] == client.state
        assert isinstance(got[-1], HelloEvent)
        assert got[-1].snapshot.queue == sent[-1]
        await events.aclose()
    finally:
        await client.close()


async def test_close_ends_events(agent: SimAgent, client: BridgeClient) -> None:
    await client.connect(wait=5)
    events = client.events()
    await take(events)
    await client.close()
    with pytest.raises(StopAsyncIteration):
        await take(events)


# ---------------------------------------------------------------- query_status


async def test_query_status(agent: SimAgent, sock_path: str) -> None:
    status = await query_status(sock_path, timeout=5)
    assert status == StatusReply(sn="SN-1")
    assert [type(i) for i in agent.intents] == [StatusIntent]


async def test_query_status_missing_socket(sock_path: str) -> None:
    with pytest.raises(AgentUnavailable, match=r"not found \(is sadad-agent running\?\)"):
        await query_status(sock_path, timeout=1)


async def test_a_socket_under_a_long_directory_is_reached(tmp_path: Path) -> None:
    """A sockaddr_un holds 107 bytes: a socket deeper than that is bound and
    reached through its directory's descriptor (agent.unix_path)."""
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    deep.mkdir(parents=True)
    path = str(deep / "agent.sock")
    assert len(path) > 107
    sim = SimAgent(path)
    await sim.server.start()
    try:
        assert await query_status(path, timeout=5) == StatusReply(sn="SN-1")
    finally:
        await sim.server.close()


async def test_query_status_stale_socket(sock_path: str) -> None:
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(sock_path)
    stale.close()
    with pytest.raises(AgentUnavailable, match="not running"):
        await query_status(sock_path, timeout=1)


def test_query_status_permission_denied(sock_path: str) -> None:
    # A listening socket nobody else may open. Root ignores file modes, so
    # the check runs in a forked child that drops to an unprivileged uid.
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(sock_path)
    listener.listen(1)
    os.chmod(sock_path, 0o000)
    try:
        pid = os.fork()
        if pid == 0:  # child: never returns into pytest
            code = 3
            try:
                if os.geteuid() == 0:
                    os.setgid(65534)
                    os.setuid(65534)
                asyncio.run(query_status(sock_path, timeout=1))
            except AgentUnavailable as exc:
                code = 0 if "permission denied" in str(exc) else 1
            except BaseException:
                code = 2
            os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
    finally:
        listener.close()


async def test_query_status_refused(sock_path: str) -> None:
    sim = SimAgent(sock_path, sn="refuser")
    await sim.server.start()
    try:
        with pytest.raises(BridgeError, match="status is disabled"):
            await query_status(sock_path, timeout=5)
    finally:
        await sim.server.close()


async def test_query_status_times_out_on_a_silent_peer(sock_path: str) -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # never says hello
        writer.close()

    server = await asyncio.start_unix_server(silent, sock_path)
    try:
        with pytest.raises(RequestTimeout):
            await query_status(sock_path, timeout=0.3)
    finally:
        server.close()
        await server.wait_closed()
