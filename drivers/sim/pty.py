"""The device end of a simulated serial reader: a pty pair with a stable link path.

Contract:

* ``PtyPeer(link)`` opens a pseudo-terminal pair on ``start()`` (raw mode: no
  echo, no line editing, no CR/LF mapping) and symlinks the slave device
  (``/dev/pts/N``) at ``link``; a driver opens ``link`` as it would open
  ``/dev/ttyUSB0``. A stale symlink at ``link`` is replaced; any other file
  there is refused (``FileExistsError``) so a typo cannot clobber a real device.
* ``read()`` returns bytes the driver wrote (``b""`` on timeout); ``write()``
  delivers bytes to the driver, shaped like a real wire when asked:
  ``pace_baud`` waits ``len * 10 / baud`` seconds (8N1 = 10 bit times per
  byte) before each piece arrives; ``chunk`` splits every write into pieces of
  that many bytes with a short pause between them, so the driver sees partial
  frames; ``garbage_bytes`` are written before each write, to prove the driver
  resynchronises.
* ``unplug()`` closes the pty pair and removes the link: an open driver sees
  a hang-up (EOF on read, EIO on write) and reopening the link fails with
  ENOENT, as with a USB adapter pulled out. ``replug()`` makes a new pair and
  re-creates the link. While unplugged, ``write()`` drops its data (counted in
  ``bytes_dropped``) and ``read()`` waits for the replug (or its timeout).
* ``bytes_in`` / ``bytes_out`` count bytes read from / delivered to the driver
  (garbage included).

The peer keeps its own slave fd open, so the master never reports EIO when the
driver closes and reopens the port (Linux returns EIO on a master read when no
slave fd is open).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import tty
from collections.abc import Callable

__all__ = ["PtyPeer"]

_CHUNK_PAUSE = 0.002
"""Seconds between two pieces of a chunked write."""


class PtyPeer:
    """One simulated serial device. Use from a single event loop."""

    def __init__(
        self,
        link: str,
        *,
        pace_baud: int | None = None,
        chunk: int | None = None,
        garbage_bytes: bytes | None = None,
    ) -> None:
        if pace_baud is not None and pace_baud <= 0:
            raise ValueError("pace_baud must be positive")
        if chunk is not None and chunk <= 0:
            raise ValueError("chunk must be positive")
        self.link = link
        self.pace_baud = pace_baud
        self.chunk = chunk
        self.garbage_bytes = garbage_bytes
        self.bytes_in = 0
        self.bytes_out = 0
        self.bytes_dropped = 0
        self._master: int | None = None
        self._slave: int | None = None
        self._slave_path: str | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._plugged = asyncio.Event()
        self._waiters: set[asyncio.Future[None]] = set()
        self._closed = False

    def __repr__(self) -> str:
        return f"PtyPeer(link={self.link!r}, slave={self._slave_path!r}, plugged={self.plugged})"

    @property
    def plugged(self) -> bool:
        return self._master is not None

    @property
    def closed(self) -> bool:
        """True after ``close()``."""
        return self._closed

    @property
    def slave_path(self) -> str | None:
        """The ``/dev/pts/N`` the link points at while plugged."""
        return self._slave_path

    def reset_counters(self) -> None:
        self.bytes_in = self.bytes_out = self.bytes_dropped = 0

    async def start(self) -> None:
        """Create the pty pair and the link. Raises OSError, FileExistsError."""
        self._loop = asyncio.get_running_loop()
        self._closed = False
        if self._master is None:
            self._plug()

    async def __aenter__(self) -> PtyPeer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- plug / unplug -------------------------------------------------------------

    def _plug(self) -> None:
        master, slave = os.openpty()
        try:
            tty.setraw(slave)
            os.set_blocking(master, False)
            path = os.ttyname(slave)
            self._make_link(path)
        except BaseException:
            os.close(master)
            os.close(slave)
            raise
        self._master, self._slave, self._slave_path = master, slave, path
        self._plugged.set()

    def _make_link(self, target: str) -> None:
        if os.path.lexists(self.link) and not os.path.islink(self.link):
            raise FileExistsError(f"{self.link} exists and is not a symlink; not replacing it")
        tmp = f"{self.link}.{os.getpid()}.tmp"
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        os.symlink(target, tmp)
        os.replace(tmp, self.link)

    def _remove_link(self) -> None:
        if (
            self._slave_path is not None
            and os.path.islink(self.link)
            and os.readlink(self.link) == self._slave_path
        ):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.link)

    def unplug(self) -> None:
        """Pull the cable: close the pty pair and remove the link. Idempotent."""
        master, slave = self._master, self._slave
        if master is None:
            return
        self._plugged.clear()
        if self._loop is not None and not self._loop.is_closed():
            self._loop.remove_reader(master)
            self._loop.remove_writer(master)
        for fut in list(self._waiters):
            if not fut.done():
                fut.set_result(None)
        self._waiters.clear()
        self._remove_link()
        self._master = self._slave = None
        self._slave_path = None
        os.close(master)
        if slave is not None:
            os.close(slave)

    def replug(self) -> None:
        """Plug a cable back in: new pty pair, link re-created. No-op while plugged."""
        if self._closed:
            raise RuntimeError("peer is closed")
        if self._master is None:
            self._plug()

    async def close(self) -> None:
        """Unplug for good. Never raises."""
        self._closed = True
        with contextlib.suppress(OSError):
            self.unplug()
        self._plugged.set()  # wake readers waiting for a replug; they return b""

    # -- I/O -------------------------------------------------------------------------

    async def _wait_fd(self, fd: int, writable: bool, limit: float | None) -> bool:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()

        def ready() -> None:
            if not fut.done():
                fut.set_result(None)

        add: Callable[..., None] = loop.add_writer if writable else loop.add_reader
        remove: Callable[[int], bool] = loop.remove_writer if writable else loop.remove_reader
        add(fd, ready)
        self._waiters.add(fut)
        try:
            async with asyncio.timeout(limit):
                await fut
        except TimeoutError:
            return False
        finally:
            self._waiters.discard(fut)
            if self._master == fd:
                remove(fd)
        return True

    async def read(self, timeout: float | None = None) -> bytes:
        """Bytes the driver sent (up to 4096), or b"" after ``timeout`` / on close."""
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while not self._closed:
            remaining = None if deadline is None else deadline - loop.time()
            if remaining is not None and remaining <= 0:
                return b""
            fd = self._master
            if fd is None:
                try:
                    async with asyncio.timeout(remaining):
                        await self._plugged.wait()
                except TimeoutError:
                    return b""
                continue
            try:
                data = os.read(fd, 4096)
            except BlockingIOError:
                await self._wait_fd(fd, False, remaining)
                continue
            except OSError:
                # EIO: no slave fd open (cannot happen while we hold one) or unplugged
                await asyncio.sleep(0.01)
                continue
            self.bytes_in += len(data)
            return data
        return b""

    async def _write_raw(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            fd = self._master
            if fd is None:
                self.bytes_dropped += len(view)
                return
            try:
                sent = os.write(fd, view)
            except BlockingIOError:
                await self._wait_fd(fd, True, None)
                continue
            except OSError:
                self.bytes_dropped += len(view)
                return
            self.bytes_out += sent
            view = view[sent:]

    async def _deliver(self, data: bytes) -> None:
        if self.pace_baud is not None:
            await asyncio.sleep(len(data) * 10 / self.pace_baud)
        await self._write_raw(data)

    async def write(self, data: bytes) -> None:
        """Deliver ``data`` to the driver (paced, chunked, garbage first as configured).

        Dropped silently while unplugged, as a device's output is lost without a cable."""
        if self._master is None:
            self.bytes_dropped += len(data)
            return
        if self.garbage_bytes:
            await self._deliver(self.garbage_bytes)
        if self.chunk is None:
            await self._deliver(data)
            return
        for start in range(0, len(data), self.chunk):
            if start:
                await asyncio.sleep(_CHUNK_PAUSE)
            await self._deliver(data[start : start + self.chunk])
