"""Shared device layer for readers that push messages unasked (swipe readers, scanners).

Contract (on top of ``drivers.base.Reader``):

* ``open()`` opens the ``SerialTransport``, drops bytes sent before it was
  opened, runs ``probe()`` and starts one pump task that reads the port for as
  long as it is open, armed or not. A message that arrives while the reader
  is disarmed is read and discarded (logged by size only): a swipe or scan
  between payments is never used for the next one. Arming in the middle of a
  message discards that message too (``LineFramer.discard_current``; noise
  shortly before arming counts as one, so the next message goes with it), and
  ``on_message`` still runs for it: the device finished a read (a Honeywell
  trigger must be renewed, or the scanner stays off until ``retrigger``).
* ``next_presentation()`` returns the next message decoded by the subclass's
  ``decode()`` (which raises ``CardDataError`` / ``CardNotSupported``; the
  reader stays armed). When the port fails (unplugged, EIO), the pump stops
  and ``next_presentation()`` raises ``ReaderOffline``, as does every later
  call until the reader is closed and reopened.
* Message end: CR / LF / ETX (``LineFramer``); with option
  ``terminator=none`` a message ends after ``idle`` seconds of silence
  (default 0.1 s). With a terminator, an unfinished message is dropped after
  ``stale`` seconds of silence (default 2 s), so noise cannot glue itself to
  the next message.
* ``probe()`` may talk to the device: the pump is paused (its task cancelled;
  no byte is lost, the fd keeps them) while the subclass's ``probe_device()``
  runs, then restarted.
* Logs never hold message contents (card data): sizes and masked values only.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from abc import abstractmethod

from drivers.base import (
    ArmContext,
    Presentation,
    Reader,
    ReaderError,
    ReaderInfo,
    ReaderOffline,
)
from drivers.framing import LineFramer
from drivers.transport import SerialTransport

__all__ = ["StreamReader", "parse_escapes"]

log = logging.getLogger(__name__)


def parse_escapes(value: str) -> bytes:
    r"""Option text to bytes: ``\r``, ``\n``, ``\t``, ``\\``, ``\xHH``; else latin-1.

    Raises ValueError on a malformed escape or a character above U+00FF."""
    out = bytearray()
    i = 0
    while i < len(value):
        char = value[i]
        if char != "\\":
            code = ord(char)
            if code > 0xFF:
                raise ValueError("only latin-1 characters are allowed")
            out.append(code)
            i += 1
            continue
        nxt = value[i + 1 : i + 2]
        simple = {"r": 0x0D, "n": 0x0A, "t": 0x09, "\\": 0x5C}
        if nxt in simple:
            out.append(simple[nxt])
            i += 2
        elif nxt == "x" and len(value) >= i + 4:
            try:
                out.append(int(value[i + 2 : i + 4], 16))
            except ValueError:
                raise ValueError(f"bad escape \\x{value[i + 2 : i + 4]}") from None
            i += 4
        else:
            raise ValueError("bad escape: use \\r \\n \\t \\\\ or \\xHH")
    return bytes(out)


class StreamReader(Reader):
    """A reader whose device sends messages on its own; subclasses decode them."""

    default_baud = 9600
    max_message = 512

    def __init__(self, name: str, port: str, options: dict[str, str] | None = None) -> None:
        super().__init__(name, port, options)
        try:
            self.baudrate = int(self.options.get("baud", self.default_baud))
            prefix = parse_escapes(self.options.get("prefix", ""))
            suffix = parse_escapes(self.options.get("suffix", ""))
            self.idle = float(self.options.get("idle", "0.1"))
            self.stale = float(self.options.get("stale", "2.0"))
        except ValueError as exc:
            raise ValueError(f"reader {name}: bad option ({exc})") from None
        terminator = self.options.get("terminator", "auto")
        if terminator not in ("auto", "none"):
            raise ValueError(f"reader {name}: terminator must be auto or none")
        self.idle_terminated = terminator == "none"
        self.framer = LineFramer(prefix=prefix, suffix=suffix, max_len=self.max_message)
        self._transport: SerialTransport | None = None
        self._pump: asyncio.Task[None] | None = None
        self._queue: asyncio.Queue[bytes | ReaderError] = asyncio.Queue()
        self._armed = False
        self._failure: ReaderError | None = None
        self._info: ReaderInfo | None = None
        self.discarded = 0  # messages read while disarmed (for tests and the check)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, port={self.port!r})"

    @property
    def armed(self) -> bool:
        return self._armed

    @property
    def transport(self) -> SerialTransport:
        if self._transport is None or not self._transport.is_open:
            raise ReaderOffline(f"{self.name}: not open")
        return self._transport

    # -- subclass hooks -------------------------------------------------------------

    @abstractmethod
    def decode(self, message: bytes) -> Presentation:
        """One framed message to a presentation. Raises CardDataError, CardNotSupported."""

    @abstractmethod
    async def probe_device(self) -> ReaderInfo:
        """Handshake (pump paused). Raises ReaderFault, ReaderTimeout, ReaderOffline."""

    async def on_arm(self) -> None:
        """Enable the device (a serial command) if the model has one."""

    async def on_disarm(self) -> None:
        """Disable the device if the model has one."""

    async def on_message(self) -> None:
        """Called by the pump after each message received while armed (one
        dropped whole by the framer included)."""

    # -- life cycle -----------------------------------------------------------------

    async def open(self) -> ReaderInfo:
        """Open the port, probe, start the pump. Raises ReaderOffline, ReaderFault."""
        if self._transport is not None and self._transport.is_open and self._failure is None:
            assert self._info is not None
            return self._info
        await self.close()
        transport = SerialTransport(self.port, self.baudrate)
        await transport.open()
        self._transport = transport
        self.framer.reset()
        try:
            transport.reset_input()
            info = await self.probe()
        except BaseException:
            await self.close()
            raise
        log.info("reader %s open on %s: %s", self.name, self.port, info.model)
        return info

    async def probe(self) -> ReaderInfo:
        """Pause the pump, run the device handshake, restart the pump.

        Raises ReaderOffline (port failed), ReaderFault / ReaderTimeout (device)."""
        if self._failure is not None:
            raise ReaderOffline(f"{self.name}: port failed; reopen")
        self.transport  # noqa: B018 - raises ReaderOffline when not open
        await self._stop_pump()
        try:
            info = await self.probe_device()
        finally:
            if self._transport is not None and self._transport.is_open:
                self._start_pump()
        self._info = info
        return info

    async def arm(self, ctx: ArmContext) -> None:
        """Start accepting messages. Raises ReaderOffline."""
        if self._failure is not None:
            raise ReaderOffline(f"{self.name}: port failed; reopen")
        self.transport  # noqa: B018 - raises ReaderOffline when not open
        self._drain()
        self.framer.discard_current()
        self._armed = True
        await self.on_arm()

    async def disarm(self) -> None:
        """Stop accepting messages; later ones are discarded. Raises ReaderOffline
        only when the disable command cannot be sent."""
        if not self._armed:
            return
        self._armed = False
        self._drain()
        if self._failure is None and self._transport is not None and self._transport.is_open:
            await self.on_disarm()

    async def next_presentation(self) -> Presentation:
        """The next card or code while armed. Raises ReaderOffline, CardDataError,
        CardNotSupported; RuntimeError when not armed (a caller bug)."""
        if not self._armed:
            raise RuntimeError(f"reader {self.name} is not armed")
        while True:
            if self._failure is not None:
                raise ReaderOffline(str(self._failure)) from self._failure
            item = await self._queue.get()
            if isinstance(item, ReaderError):
                continue  # the failure is recorded; raised at the top of the loop
            if not self._armed:
                continue
            return self.decode(item)

    async def close(self) -> None:
        """Stop the pump and release the port. Never raises."""
        self._armed = False
        await self._stop_pump()
        transport, self._transport = self._transport, None
        if transport is not None:
            await transport.close()
        self._failure = None
        self._info = None
        self._drain()
        self.framer.reset()

    # -- pump -------------------------------------------------------------------------

    def _drain(self) -> None:
        while not self._queue.empty():
            self._queue.get_nowait()

    def _start_pump(self) -> None:
        if self._pump is None or self._pump.done():
            self._pump = asyncio.create_task(self._run_pump(), name=f"reader-{self.name}-pump")

    async def _stop_pump(self) -> None:
        pump, self._pump = self._pump, None
        if pump is not None and not pump.done():
            pump.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await pump

    async def _run_pump(self) -> None:
        transport = self._transport
        if transport is None:
            return
        try:
            while True:
                wait: float | None = None
                if self.framer.pending:
                    wait = self.idle if self.idle_terminated else self.stale
                data = await transport.read(timeout=wait)
                if not data:
                    if self.idle_terminated:
                        message = self.framer.flush()
                        if message is not None:
                            await self._deliver(message)
                    else:
                        log.info(
                            "reader %s: dropped %d bytes of an unfinished message",
                            self.name,
                            self.framer.pending,
                        )
                        self.framer.reset()
                    continue
                skipped = self.framer.skipped
                for message in self.framer.feed(data):
                    await self._deliver(message)
                if self.framer.skipped != skipped and self._armed:
                    await self.on_message()
        except ReaderOffline as exc:
            log.warning("reader %s offline: %s", self.name, exc)
            self._failure = exc
            self._queue.put_nowait(exc)

    async def _deliver(self, message: bytes) -> None:
        if not self._armed:
            self.discarded += 1
            log.info("reader %s: discarded a %d-byte message (not armed)", self.name, len(message))
            return
        self._queue.put_nowait(message)
        await self.on_message()
