"""PN532 device: the async command path over a byte transport.

Contract:

* ``Pn532Device(transport)`` drives one PN532 over anything that satisfies
  ``Transport`` (``drivers.transport.SerialTransport``, the in-memory
  ``drivers.sim.pn532.SimTransport``). ``init()`` wakes the chip, configures
  it and returns its ``FirmwareVersion``.
* ``command(payload)`` is the one request/response path: flush input, send
  the frame, wait for the ACK (``ack_timeout``, longer for the first command
  after open), wait for the response (``timeout``), return its payload
  (PD0 = response code). On a timeout it writes an ACK to abort the pending
  command and raises ``ReaderTimeout``; a response with a bad data checksum
  is asked again once with a NACK; the application error frame raises
  ``ReaderFault``; transport failures raise ``ReaderOffline``. Commands are
  serialised by a lock; cancelling one aborts it on the chip.
* Logging (DEBUG) names the command and the frame length only, never the
  payload (APDUs carry card data; terminal-side.md §4.2).

Hardware quirks handled here (terminal-side.md §1.2):

* The PN532 boots in LowVBat mode and ignores the host until it sees
  ``55 55`` plus a run of ``00`` and then SAMConfiguration (libnfc
  ``pn532_uart_wakeup``, AN10609_3); the first ACK after opening a USB-serial
  adapter can take ~1 s (nfcpy ``pn532.init`` waits 1.5 s).
* The power-on MaxRetries make InListPassiveTarget wait forever for a card;
  ``init`` sets finite passive-activation retries (RFConfiguration item 5)
  so polling answers ``NbTg = 0`` instead.
* libnfc and nfcpy flush the UART input before every command to discard
  junk; so does ``command``.
* SetParameters fAutomaticRATS (libnfc sets 0x14) makes the PN532 activate
  ISO-DEP itself, so InDataExchange carries raw C-APDUs; APDUs longer than
  one DataOut are chained with the MI bit, and answers with MI set are
  fetched with empty InDataExchange commands (UM0701-02 §7.3.8).
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from typing import Protocol

from drivers.base import ReaderFault, ReaderTimeout
from drivers.pn532 import commands as cmds
from drivers.pn532.commands import Command, FirmwareVersion, ParamFlag, Target
from drivers.pn532.frames import (
    ACK_FRAME,
    NACK_FRAME,
    Ack,
    BadFrame,
    BadReason,
    ErrorFrame,
    Event,
    Frame,
    FrameDecoder,
    Tfi,
    encode_host,
)

__all__ = ["WAKEUP", "Pn532Device", "Transport"]

log = logging.getLogger(__name__)

WAKEUP = b"\x55\x55" + b"\x00" * 14
"""HSU wake-up preamble (libnfc ``pn532_wakeup_preamble``)."""

MAX_RESPONSE = 65538
"""Bound on an MI-chained answer: the longest R-APDU (extended length, ISO/IEC 7816-4 §5.1)."""


class Transport(Protocol):
    """What the device needs from a byte pipe (``drivers.transport.SerialTransport``)."""

    async def write(self, data: bytes) -> None: ...

    async def read(self, max_bytes: int = 4096, timeout: float | None = None) -> bytes: ...

    def reset_input(self) -> None: ...


class Pn532Device:
    """One PN532 on a transport that is already open."""

    def __init__(
        self,
        transport: Transport,
        *,
        ack_timeout: float = 0.1,
        first_ack_timeout: float = 1.5,
        max_data_out: int = cmds.MAX_DATA_OUT,
    ) -> None:
        if not 1 <= max_data_out <= cmds.MAX_DATA_OUT:
            raise ValueError(f"max_data_out must be 1..{cmds.MAX_DATA_OUT}")
        self._transport = transport
        self._decoder = FrameDecoder()
        self._backlog: deque[Event] = deque()
        self._lock = asyncio.Lock()
        self._ack_timeout = ack_timeout
        self._first_ack_timeout = first_ack_timeout
        self._max_data_out = max_data_out
        self._first = True
        self.firmware: FirmwareVersion | None = None
        self.bytes_out = 0
        self.bytes_in = 0
        self.nacks_sent = 0
        self.stale_frames = 0

    @property
    def bad_frames(self) -> int:
        """Frames dropped for a bad checksum or header since the device was made."""
        return self._decoder.bad_frames

    @property
    def skipped_bytes(self) -> int:
        """Garbage bytes skipped between frames since the device was made."""
        return self._decoder.skipped_bytes

    # --- transport helpers ---------------------------------------------------

    async def _write(self, data: bytes) -> None:
        self.bytes_out += len(data)
        await self._transport.write(data)

    def _flush(self) -> None:
        self._transport.reset_input()
        self._decoder.reset()
        self._backlog.clear()

    async def _next_event(self, deadline: float) -> Event | None:
        """The next decoded event, or ``None`` once the deadline passed. Raises ReaderOffline."""
        loop = asyncio.get_running_loop()
        while not self._backlog:
            remaining = deadline - loop.time()
            if remaining <= 0:
                return None
            chunk = await self._transport.read(4096, timeout=remaining)
            self.bytes_in += len(chunk)
            self._backlog.extend(self._decoder.feed(chunk))
        return self._backlog.popleft()

    async def _abort(self) -> None:
        """ACK from the host cancels the command the PN532 is processing (§6.2.1.3)."""
        try:
            await self._write(ACK_FRAME)
        except Exception as exc:  # the abort is best effort; the caller's error wins
            log.debug("PN532 abort not sent: %s", type(exc).__name__)

    # --- the command path ---------------------------------------------------------

    async def command(self, payload: bytes, *, timeout: float = 1.0) -> bytes:
        """Send ``payload`` (PD0 = command code), return the response payload.

        Raises ValueError (empty payload), ReaderTimeout (no ACK / no response; the
        command is aborted), ReaderFault (error frame, twice-corrupted response),
        ReaderOffline.
        """
        if not payload:
            raise ValueError("empty PN532 command")
        code = payload[0]
        name = Command(code).name if code in Command._value2member_map_ else f"0x{code:02X}"
        frame = encode_host(payload)
        loop = asyncio.get_running_loop()
        async with self._lock:
            self._flush()
            log.debug("PN532 -> %s (%d bytes)", name, len(frame))
            await self._write(frame)
            ack_wait = self._first_ack_timeout if self._first else self._ack_timeout
            try:
                early = await self._wait_ack(code, name, loop.time() + ack_wait)
                self._first = False
                if early is None:
                    response = await self._wait_response(code, name, loop.time() + timeout)
                else:
                    response = early
            except asyncio.CancelledError:
                await self._abort()
                raise
            log.debug("PN532 <- %s answer (%d bytes)", name, len(response))
            return response

    async def _wait_ack(self, code: int, name: str, deadline: float) -> bytes | None:
        """Wait for the ACK; returns a response that came instead (the ACK was lost)."""
        while (event := await self._next_event(deadline)) is not None:
            if isinstance(event, Ack):
                return None
            if isinstance(event, ErrorFrame):
                raise ReaderFault(f"PN532 {name}: error frame (syntax error)")
            if self._is_response(event, code):
                assert isinstance(event, Frame)
                return event.data
        await self._abort()
        raise ReaderTimeout(f"PN532 {name}: no ACK")

    def _is_response(self, event: Event, code: int) -> bool:
        if not isinstance(event, Frame) or event.tfi != Tfi.Pn532ToHost:
            return False
        if event.code == (code + 1) & 0xFF:
            return True
        self.stale_frames += 1
        log.debug("PN532 stale frame ignored (%r)", event)
        return False

    async def _wait_response(self, code: int, name: str, deadline: float) -> bytes:
        nacked = False
        while (event := await self._next_event(deadline)) is not None:
            if self._is_response(event, code):
                assert isinstance(event, Frame)
                return event.data
            if isinstance(event, ErrorFrame):
                raise ReaderFault(f"PN532 {name}: error frame (syntax error)")
            if isinstance(event, BadFrame) and event.reason is BadReason.DATA_CHECKSUM:
                if nacked:
                    await self._abort()
                    raise ReaderFault(f"PN532 {name}: corrupted response, twice")
                nacked = True
                self.nacks_sent += 1
                log.debug("PN532 %s: bad checksum, NACK", name)
                await self._write(NACK_FRAME)
        await self._abort()
        raise ReaderTimeout(f"PN532 {name}: no response")

    async def _wake_up(self) -> None:
        async with self._lock:  # between frames, never inside another command's exchange
            self._first = True
            await self._write(WAKEUP)

    # --- commands -------------------------------------------------------------------

    async def init(self) -> FirmwareVersion:
        """Wake up and configure the chip; returns its firmware version.

        Order as libnfc/nfcpy: wake-up preamble, SAMConfiguration normal mode
        (tried twice), GetFirmwareVersion, RFConfiguration MaxRetries
        ``FF 01 01``, SetParameters fAutomaticATR_RES | fAutomaticRATS.

        Raises ReaderTimeout, ReaderFault, ReaderOffline.
        """
        await self._wake_up()
        try:
            answer = await self.command(cmds.sam_configuration())
        except ReaderTimeout:
            # Missed the wake-up, or was busy with a command of an earlier session
            # (the timeout path has just aborted it with an ACK): once more.
            log.debug("PN532 did not answer SAMConfiguration; waking it again")
            await self._wake_up()
            answer = await self.command(cmds.sam_configuration())
        cmds.parse_no_data(Command.SAMConfiguration, answer)
        self.firmware = cmds.parse_firmware_version(await self.command(cmds.get_firmware_version()))
        cmds.parse_no_data(
            Command.RFConfiguration, await self.command(cmds.rf_configuration_max_retries())
        )
        flags = ParamFlag.fAutomaticATR_RES | ParamFlag.fAutomaticRATS
        cmds.parse_no_data(Command.SetParameters, await self.command(cmds.set_parameters(flags)))
        return self.firmware

    async def get_firmware_version(self) -> FirmwareVersion:
        """Raises ReaderTimeout, ReaderFault, ReaderOffline."""
        return cmds.parse_firmware_version(await self.command(cmds.get_firmware_version()))

    async def rf_field(self, on: bool) -> None:
        """Switch the RF field. Raises ReaderTimeout, ReaderFault, ReaderOffline."""
        payload = await self.command(cmds.rf_configuration_field(on))
        cmds.parse_no_data(Command.RFConfiguration, payload)

    async def in_list_passive_target(self, *, timeout: float = 1.0) -> Target | None:
        """Poll once for one 106 kbps type A target; ``None`` when none answered.

        Raises ReaderTimeout, ReaderFault, ReaderOffline.
        """
        payload = await self.command(cmds.in_list_passive_target(), timeout=timeout)
        targets = cmds.parse_in_list_passive_target(payload)
        return targets[0] if targets else None

    async def in_data_exchange(self, tg: int, apdu: bytes, *, timeout: float = 1.5) -> bytes:
        """Send one C-APDU to target ``tg`` and return the whole R-APDU (MI chains joined).

        Raises CardGone (status 0x01/0x2B), ReaderTimeout, ReaderFault, ReaderOffline.
        """
        step = self._max_data_out
        chunks = [apdu[i : i + step] for i in range(0, len(apdu), step)] or [b""]
        for chunk in chunks[:-1]:
            cmds.parse_in_data_exchange(
                await self.command(cmds.in_data_exchange(tg, chunk, more=True), timeout=timeout)
            )
        answer = cmds.parse_in_data_exchange(
            await self.command(cmds.in_data_exchange(tg, chunks[-1]), timeout=timeout)
        )
        out = bytearray(answer.data)
        while answer.more:
            if len(out) > MAX_RESPONSE:
                raise ReaderFault("PN532 InDataExchange: MI chain longer than the bound")
            answer = cmds.parse_in_data_exchange(
                await self.command(cmds.in_data_exchange(tg, b""), timeout=timeout)
            )
            out += answer.data
        return bytes(out)

    async def in_release(self, tg: int = 0) -> None:
        """Release ``tg`` (0 = all). Raises CardGone, ReaderTimeout, ReaderFault, ReaderOffline."""
        cmds.parse_in_release(await self.command(cmds.in_release(tg)))
