"""SerialTransport over real ptys (PtyPeer) and pyserial URL transports."""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from drivers.base import ReaderOffline
from drivers.sim.pty import PtyPeer
from drivers.transport import SerialTransport


def _is_link(path: str) -> bool:
    return os.path.islink(path)


@pytest.fixture
async def peer(tmp_path: Path) -> AsyncIterator[PtyPeer]:
    p = PtyPeer(str(tmp_path / "ttyTEST"))
    await p.start()
    yield p
    await p.close()


async def test_round_trip_over_pty(peer: PtyPeer) -> None:
    t = SerialTransport(peer.link, 115200)
    await t.open()
    try:
        assert t.is_open
        assert t.uses_fd
        await t.write(b"\x00\xff\r\n abc")
        assert await peer.read(timeout=1) == b"\x00\xff\r\n abc"  # raw: no CR/LF mapping
        await peer.write(b"\r\nxyz\x03")
        assert await t.read(timeout=1) == b"\r\nxyz\x03"
        assert peer.bytes_in == 8
        assert peer.bytes_out == 6
    finally:
        await t.close()
    assert not t.is_open


async def test_read_timeout_returns_empty(peer: PtyPeer) -> None:
    t = SerialTransport(peer.link)
    await t.open()
    try:
        start = time.monotonic()
        assert await t.read(timeout=0.1) == b""
        assert 0.08 <= time.monotonic() - start < 1.0
        assert await t.read(timeout=0) == b""
    finally:
        await t.close()


async def test_open_missing_port_is_offline(tmp_path: Path) -> None:
    t = SerialTransport(str(tmp_path / "nothing"))
    with pytest.raises(ReaderOffline, match="cannot open") as info:
        await t.open()
    assert isinstance(info.value.__cause__, Exception)
    assert not t.is_open
    await t.close()  # never raises, even when not open


async def test_bad_url_is_offline() -> None:
    with pytest.raises(ReaderOffline):
        await SerialTransport("nosuchscheme://x").open()


async def test_exclusive_open(peer: PtyPeer) -> None:
    first = SerialTransport(peer.link)
    await first.open()
    try:
        with pytest.raises(ReaderOffline):
            await SerialTransport(peer.link).open()
    finally:
        await first.close()


async def test_unplug_wakes_pending_read_and_reopen_fails(peer: PtyPeer) -> None:
    t = SerialTransport(peer.link)
    await t.open()
    try:
        pending = asyncio.create_task(t.read())
        await asyncio.sleep(0.05)
        peer.unplug()
        with pytest.raises(ReaderOffline, match="hung up"):
            await asyncio.wait_for(pending, 2)
        with pytest.raises(ReaderOffline):
            await t.write(b"x")
    finally:
        await t.close()
    assert not _is_link(peer.link)
    with pytest.raises(ReaderOffline):
        await SerialTransport(peer.link).open()
    peer.replug()
    again = SerialTransport(peer.link)
    await again.open()
    try:
        await peer.write(b"back")
        assert await again.read(timeout=1) == b"back"
    finally:
        await again.close()


async def test_close_fails_pending_read(peer: PtyPeer) -> None:
    t = SerialTransport(peer.link)
    await t.open()
    pending = asyncio.create_task(t.read())
    await asyncio.sleep(0.02)
    await t.close()
    with pytest.raises(ReaderOffline, match="closed"):
        await pending
    with pytest.raises(ReaderOffline, match="not open"):
        await t.read(timeout=0.01)


async def test_reset_input_drops_buffered_bytes(peer: PtyPeer) -> None:
    t = SerialTransport(peer.link)
    await t.open()
    try:
        await peer.write(b"stale swipe")
        await asyncio.sleep(0.05)
        t.reset_input()
        assert await t.read(timeout=0.05) == b""
        await peer.write(b"fresh")
        assert await t.read(timeout=1) == b"fresh"
    finally:
        await t.close()


async def test_reset_input_after_unplug_is_offline(peer: PtyPeer) -> None:
    t = SerialTransport(peer.link)
    await t.open()
    try:
        peer.unplug()
        with pytest.raises(ReaderOffline, match="flush failed"):
            t.reset_input()
    finally:
        await t.close()


async def test_chunked_paced_delivery_arrives_in_pieces(tmp_path: Path) -> None:
    async with PtyPeer(str(tmp_path / "p"), chunk=3, pace_baud=9600) as peer:
        t = SerialTransport(peer.link, 9600)
        await t.open()
        try:
            start = time.monotonic()
            await peer.write(b"0123456789")
            elapsed = time.monotonic() - start
            assert elapsed >= 10 * 10 / 9600  # wire time of 10 bytes at 9600 baud
            got = b""
            pieces = 0
            while len(got) < 10:
                piece = await t.read(timeout=1)
                assert piece
                got += piece
                pieces += 1
            assert got == b"0123456789"
        finally:
            await t.close()


async def test_garbage_is_sent_before_each_write(tmp_path: Path) -> None:
    async with PtyPeer(str(tmp_path / "p"), garbage_bytes=b"\xaa\x55") as peer:
        t = SerialTransport(peer.link)
        await t.open()
        try:
            await peer.write(b"A")
            await peer.write(b"B")
            got = b""
            while len(got) < 6:
                got += await t.read(timeout=1)
            assert got == b"\xaa\x55A\xaa\x55B"
            assert peer.bytes_out == 6
        finally:
            await t.close()


async def test_stale_link_replaced_but_file_refused(tmp_path: Path) -> None:
    link = tmp_path / "dev"
    link.symlink_to("/nonexistent/pts/99")
    async with PtyPeer(str(link)) as peer:
        assert os.readlink(link) == peer.slave_path
    assert not link.exists()
    regular = tmp_path / "regular"
    regular.write_text("keep me")
    with pytest.raises(FileExistsError):
        await PtyPeer(str(regular)).start()
    assert regular.read_text() == "keep me"


async def test_peer_write_while_unplugged_is_dropped(peer: PtyPeer) -> None:
    peer.unplug()
    await peer.write(b"lost")
    assert peer.bytes_dropped == 4
    assert await peer.read(timeout=0.05) == b""


async def test_loop_url_uses_executor_mode() -> None:
    t = SerialTransport("loop://", 9600)
    await t.open()
    try:
        assert not t.uses_fd
        await t.write(b"ping")
        got = b""
        while len(got) < 4:
            got += await t.read(timeout=1)
        assert got == b"ping"
        assert await t.read(timeout=0.1) == b""
    finally:
        await t.close()


async def test_executor_read_cancelled_keeps_bytes() -> None:
    t = SerialTransport("loop://")
    await t.open()
    try:
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(t.read(), 0.01)
        await t.write(b"kept")
        got = b""
        while len(got) < 4:
            got += await t.read(timeout=1)
        assert got == b"kept"
    finally:
        await t.close()


async def test_socket_url_peer_close_is_offline() -> None:
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    port = server.getsockname()[1]
    t = SerialTransport(f"socket://127.0.0.1:{port}")
    try:
        await t.open()
        conn, _ = await asyncio.to_thread(server.accept)
        with conn:
            conn.sendall(b"line\r")
            got = b""
            while len(got) < 5:
                got += await t.read(timeout=1)
            assert got == b"line\r"
            await t.write(b"cmd")
            assert await asyncio.to_thread(conn.recv, 10) == b"cmd"
        with pytest.raises(ReaderOffline):  # noqa: PT012 - drain until the close is seen
            for _ in range(100):
                await t.read(timeout=0.05)
    finally:
        await t.close()
        server.close()
