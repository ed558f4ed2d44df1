"""Async byte transport over a serial port: the bottom layer of every driver.

Contract:

* ``SerialTransport(port, baudrate)`` where ``port`` is a tty path
  (``/dev/ttyUSB0``, a pty link) or any URL ``serial.serial_for_url`` accepts
  (``loop://``, ``socket://host:port``, ``rfc2217://...``). 8N1, no flow control.
* ``open()`` opens the port (a tty is opened with ``exclusive=True``: a POSIX
  ``flock``, so two agents cannot share a reader). ``read()`` returns whatever
  bytes are available (at least one) or ``b""`` when ``timeout`` elapses;
  ``write()`` returns once every byte was handed to the kernel / port.
* Every failure of the port -- cannot open, unplugged (EOF/EIO/HUP on the fd),
  stalled writes, closed under a pending read -- is raised as
  ``drivers.base.ReaderOffline`` with the pyserial / OS exception chained
  (``from exc``). Nothing else escapes. ``close()`` never raises.
* Error texts name the port and the errno only, never the bytes moved
  (they may be card data; PCI DSS 3.3, DESIGN.md "Card data").

I/O strategy: for a POSIX serial port (ttys and ptys) the port's file
descriptor is driven directly from the event loop (``loop.add_reader`` /
``add_writer`` on a non-blocking fd: no thread, no polling). Other pyserial
URL transports have no usable fd, so their opens (a network connect) and
blocking calls run in the default executor, reads in short slices
(``_THREAD_SLICE``); a read cancelled by its caller does not lose bytes: the
in-flight slice is kept and its bytes are returned by the next ``read()``.

Linux quirks handled here: a hung-up tty (USB adapter unplugged, pty master
closed) reads as EOF (``b""`` from a readable fd), writes fail with EIO and
``tcflush`` raises ``termios.error`` (not an OSError subclass);
epoll reports the hang-up as readable, so a pending read wakes at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import os
import termios
from collections.abc import Callable
from typing import Any

import serial
import serial.serialposix

from drivers.base import ReaderOffline

__all__ = ["SerialTransport"]

_THREAD_SLICE = 0.05
"""Seconds one blocking read slice may take in the executor (URL transports)."""


def _describe(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.errno is not None:
        name = errno.errorcode.get(exc.errno, str(exc.errno))
        return f"{name}: {os.strerror(exc.errno)}"
    return type(exc).__name__


async def _open_in_thread(opener: Callable[[], Any]) -> Any:
    """Run a blocking open in the executor; if cancelled, close what it opened."""
    fut = asyncio.get_running_loop().run_in_executor(None, opener)
    try:
        return await asyncio.shield(fut)
    except asyncio.CancelledError:

        def close_late(done: asyncio.Future[Any]) -> None:
            if not done.cancelled() and done.exception() is None:
                with contextlib.suppress(Exception):
                    done.result().close()

        fut.add_done_callback(close_late)
        raise


class SerialTransport:
    """One serial port, opened 8N1 at ``baudrate``. Not thread-safe; one reader task."""

    def __init__(self, port: str, baudrate: int = 115200, *, write_timeout: float = 5.0) -> None:
        self.port = port
        self.baudrate = baudrate
        self.write_timeout = write_timeout
        self._serial: Any = None
        self._fd: int | None = None
        self._waiters: set[asyncio.Future[None]] = set()
        # URL transports (executor mode)
        self._pending: asyncio.Future[bytes] | None = None
        self._rx = bytearray()

    def __repr__(self) -> str:
        state = "open" if self.is_open else "closed"
        return f"SerialTransport(port={self.port!r}, baudrate={self.baudrate}, {state})"

    @property
    def is_open(self) -> bool:
        return self._serial is not None

    @property
    def uses_fd(self) -> bool:
        """True when I/O runs on the port's fd in the event loop (ttys, ptys)."""
        return self._fd is not None

    async def open(self) -> None:
        """Open the port. Raises ReaderOffline (missing, busy, permission, bad URL)."""
        if self._serial is not None:
            return
        kwargs: dict[str, Any] = {"baudrate": self.baudrate, "timeout": 0}
        is_url = "://" in self.port
        if not is_url:
            kwargs["exclusive"] = True
        opener = functools.partial(serial.serial_for_url, self.port, **kwargs)
        try:
            if is_url:
                # a socket:// or rfc2217:// open connects over the network: not on the loop
                ser = await _open_in_thread(opener)
            else:
                ser = opener()  # a tty open is non-blocking (O_NONBLOCK)
        except (serial.SerialException, OSError, ValueError) as exc:
            raise ReaderOffline(f"{self.port}: cannot open ({_describe(exc)})") from exc
        self._serial = ser
        if isinstance(ser, serial.serialposix.Serial) and ser.fd is not None:
            fd: int = ser.fd
            try:
                # pyserial sets VMIN=0 for timeout=0, which makes an empty
                # non-blocking read return b"" (indistinguishable from a
                # hang-up). VMIN=1: empty -> EAGAIN, hung up -> b"".
                attrs = termios.tcgetattr(fd)
                attrs[6][termios.VMIN] = 1
                attrs[6][termios.VTIME] = 0
                termios.tcsetattr(fd, termios.TCSANOW, attrs)
                os.set_blocking(fd, False)
            except (termios.error, OSError) as exc:
                self._serial = None
                with contextlib.suppress(Exception):
                    ser.close()
                raise ReaderOffline(f"{self.port}: cannot configure ({_describe(exc)})") from exc
            self._fd = fd

    def _require_open(self) -> Any:
        if self._serial is None:
            raise ReaderOffline(f"{self.port}: port is not open")
        return self._serial

    # -- fd mode ---------------------------------------------------------------

    async def _wait_fd(self, fd: int, writable: bool, limit: float | None) -> bool:
        """Wait until ``fd`` is ready; False on timeout. ReaderOffline if closed meanwhile."""
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
            if limit is None:
                await fut
                return True
            try:
                async with asyncio.timeout(limit):
                    await fut
            except TimeoutError:
                return False
            return True
        finally:
            self._waiters.discard(fut)
            if self._fd == fd:
                remove(fd)

    def _fd_or_raise(self) -> int:
        self._require_open()
        if self._fd is None:  # pragma: no cover - only reached if closed mid-call
            raise ReaderOffline(f"{self.port}: port is not open")
        return self._fd

    async def _read_fd(self, max_bytes: int, limit: float | None) -> bytes:
        loop = asyncio.get_running_loop()
        deadline = None if limit is None else loop.time() + limit
        while True:
            fd = self._fd_or_raise()
            try:
                data = os.read(fd, max_bytes)
            except BlockingIOError:
                pass
            except OSError as exc:
                raise ReaderOffline(f"{self.port}: read failed ({_describe(exc)})") from exc
            else:
                if not data:
                    raise ReaderOffline(f"{self.port}: port hung up (unplugged?)")
                return data
            remaining = None if deadline is None else deadline - loop.time()
            if remaining is not None and remaining <= 0:
                return b""
            if not await self._wait_fd(fd, False, remaining):
                return b""

    async def _write_fd(self, data: bytes) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.write_timeout
        view = memoryview(data)
        while view:
            fd = self._fd_or_raise()
            try:
                sent = os.write(fd, view)
            except BlockingIOError:
                sent = 0
            except OSError as exc:
                raise ReaderOffline(f"{self.port}: write failed ({_describe(exc)})") from exc
            view = view[sent:]
            if not view:
                return
            remaining = deadline - loop.time()
            if remaining <= 0 or not await self._wait_fd(fd, True, remaining):
                raise ReaderOffline(f"{self.port}: write stalled for {self.write_timeout:g} s")

    # -- executor mode (URL transports) ----------------------------------------

    def _blocking_read(self, ser: Any, max_bytes: int) -> bytes:
        try:
            ser.timeout = _THREAD_SLICE
            first: bytes = ser.read(1)
            if not first:
                return b""
            waiting = min(int(ser.in_waiting), max_bytes - 1)
            rest: bytes = ser.read(waiting) if waiting > 0 else b""
            return first + rest
        except (serial.SerialException, OSError, ValueError, TypeError, AttributeError) as exc:
            raise ReaderOffline(f"{self.port}: read failed ({_describe(exc)})") from exc

    async def _read_thread(self, max_bytes: int, limit: float | None) -> bytes:
        loop = asyncio.get_running_loop()
        deadline = None if limit is None else loop.time() + limit
        while True:
            if self._rx:
                data = bytes(self._rx[:max_bytes])
                del self._rx[:max_bytes]
                return data
            ser = self._require_open()
            if self._pending is None:
                self._pending = loop.run_in_executor(None, self._blocking_read, ser, max_bytes)
            remaining = None if deadline is None else max(0.0, deadline - loop.time())
            done, _ = await asyncio.wait({self._pending}, timeout=remaining)
            if not done:
                return b""
            fut, self._pending = self._pending, None
            self._rx += fut.result()

    async def _write_thread(self, data: bytes) -> None:
        ser = self._require_open()

        def blocking_write() -> None:
            try:
                ser.write_timeout = self.write_timeout
                ser.write(data)
            except serial.SerialTimeoutException as exc:
                raise ReaderOffline(
                    f"{self.port}: write stalled for {self.write_timeout:g} s"
                ) from exc
            except (serial.SerialException, OSError, ValueError, TypeError) as exc:
                raise ReaderOffline(f"{self.port}: write failed ({_describe(exc)})") from exc

        await asyncio.get_running_loop().run_in_executor(None, blocking_write)

    # -- public I/O --------------------------------------------------------------

    async def read(
        self,
        max_bytes: int = 4096,
        timeout: float | None = None,
    ) -> bytes:
        """Return 1..max_bytes bytes, or b"" once ``timeout`` seconds pass (None: wait).

        Raises ReaderOffline when the port is closed, unplugged or fails."""
        if max_bytes < 1:
            raise ValueError("max_bytes must be >= 1")
        self._require_open()
        if self._fd is not None:
            return await self._read_fd(max_bytes, timeout)
        return await self._read_thread(max_bytes, timeout)

    async def write(self, data: bytes) -> None:
        """Write all of ``data``. Raises ReaderOffline (unplugged, closed, stalled)."""
        if not data:
            return
        self._require_open()
        if self._fd is not None:
            await self._write_fd(data)
        else:
            await self._write_thread(data)

    def reset_input(self) -> None:
        """Drop every byte received and not yet read. Raises ReaderOffline."""
        ser = self._require_open()
        self._rx.clear()
        try:
            ser.reset_input_buffer()
        except (serial.SerialException, OSError, ValueError, termios.error) as exc:
            # tcflush on a hung-up tty raises termios.error (EIO), not OSError
            raise ReaderOffline(f"{self.port}: flush failed ({_describe(exc)})") from exc

    async def close(self) -> None:
        """Close the port; a pending read/write fails with ReaderOffline. Never raises."""
        ser, self._serial = self._serial, None
        fd, self._fd = self._fd, None
        if ser is None:
            return
        if fd is not None:
            loop = asyncio.get_running_loop()
            loop.remove_reader(fd)
            loop.remove_writer(fd)
        for fut in list(self._waiters):
            if not fut.done():
                fut.set_exception(ReaderOffline(f"{self.port}: port closed"))
        self._waiters.clear()
        with contextlib.suppress(Exception):  # close never raises (contract)
            ser.close()
        pending, self._pending = self._pending, None
        if pending is not None:
            with contextlib.suppress(Exception):  # the slice ends within _THREAD_SLICE
                await pending
        self._rx.clear()
