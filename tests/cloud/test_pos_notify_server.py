"""The stdlib notification receiver on a real socket: 200 ``success`` for a
verified notification (new or repeated), 400 for a bad one (docs/protocol.md B)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx
import pytest

from cloud.messages import TransStatus
from cloud.notify_server import NotifyServer, notification_handler
from tests.cloud.pos_peer import OTHER_PRIVATE, FakeClock, GatewayPeer


@pytest.fixture
def peer() -> GatewayPeer:
    return GatewayPeer()


async def test_receiver_accepts_verifies_and_wakes(peer: GatewayPeer) -> None:
    async with (
        peer.client(clock=FakeClock(autojump=False)) as client,
        NotifyServer(notification_handler(client.accept_notification)) as server,
        httpx.AsyncClient() as http,
    ):
        assert server.url.startswith("http://127.0.0.1:")
        assert server.url.endswith("/notify")
        client.order_store.remember(peer.expected("A-1"))
        waiting = asyncio.create_task(client.wait_for_final("A-1", 60))
        body = peer.notification(peer.info("A-1", TransStatus.COMPLETED))
        answer = await http.post(server.url, content=body)
        assert (answer.status_code, answer.text) == (200, "success")
        info = await asyncio.wait_for(waiting, 2)
        assert info.trans_status == TransStatus.COMPLETED
        again = await http.post(server.url, content=body)
        assert (again.status_code, again.text) == (200, "success")
        forged = peer.notification(peer.info("A-2", TransStatus.COMPLETED), key=OTHER_PRIVATE)
        bad = await http.post(server.url, content=forged)
        assert bad.status_code == 400
        assert "sign does not match" in bad.text
        assert client.known_order("A-2") is None


async def test_receiver_refuses_what_is_not_a_notification_post() -> None:
    def handler(body: bytes) -> tuple[int, str]:
        return 200, f"got {len(body)}"

    async with NotifyServer(handler) as server, httpx.AsyncClient() as http:
        assert (await http.get(server.url)).status_code == 405
        assert (await http.post(server.url, content=b"x" * (2 << 20))).status_code == 413
        assert (await http.post(server.url + "/any/path", content=b"abc")).text == "got 3"

        async def chunks() -> AsyncIterator[bytes]:
            yield b"abc"

        assert (await http.post(server.url, content=chunks())).status_code == 411
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(b"garbage\r\n\r\n")
        await writer.drain()
        assert (await reader.read()).startswith(b"HTTP/1.1 400 Bad Request\r\n")
        writer.close()
        await writer.wait_closed()


async def test_handler_crash_is_500() -> None:
    def handler(body: bytes) -> tuple[int, str]:
        raise RuntimeError("boom")

    async with NotifyServer(handler) as server, httpx.AsyncClient() as http:
        answer = await http.post(server.url, content=b"{}")
    assert answer.status_code == 500


async def test_port_unknown_before_start() -> None:
    server = NotifyServer(lambda body: (200, "success"))
    with pytest.raises(RuntimeError):
        _ = server.port
    await server.close()  # harmless
