"""The contactless reader: a PN532 on a serial port reading EMV cards.

Contract (on top of ``drivers.base.Reader``):

* ``Pn532Reader(name, port, options)``, kind ``pn532``; options ``baud``
  (default 115200, the PN532 HSU default), ``poll_interval`` (seconds between
  two empty polls, default 0.05), ``ack_timeout`` (default 0.1 s, nfcpy's),
  ``merchant_name`` (9F4E). Bad option values raise ``ValueError``.
* ``open()`` opens the transport and runs ``probe()`` (wake-up, SAM
  configuration, firmware version, finite MaxRetries, auto-RATS); it returns
  ``ReaderInfo(model="PN532v1.6", ...)``.
* ``arm(ctx)`` keeps the payment context (and checks its amount can be sent
  as n12); ``next_presentation()`` polls InListPassiveTarget (106 kbps type
  A, one target) until a card answers, runs the EMV read
  (``drivers.emv.read``) for an ISO-DEP card (SAK bit 0x20), releases the
  target and returns the ``CardRead``. A tag that is not ISO-DEP raises
  ``CardNotSupported``; a card pulled away raises ``CardGone``; both leave
  the reader armed. ``next_presentation()`` while not armed is a caller bug
  (``RuntimeError``); if ``disarm()`` comes while it polls, polling stops,
  the RF field is switched off and the call waits for the next ``arm()``
  (cancel it to stop waiting).
* Logs carry command names, lengths and the masked PAN only.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Protocol

from drivers.base import (
    ArmContext,
    CardNotSupported,
    CardRead,
    Reader,
    ReaderError,
    ReaderInfo,
    ReaderOffline,
)
from drivers.emv.dol import DEFAULT_PROFILE, TerminalProfile, amount_minor, bcd
from drivers.emv.read import read_card
from drivers.pn532.commands import Target
from drivers.pn532.device import Pn532Device, Transport

__all__ = ["Pn532Reader", "PortTransport"]

log = logging.getLogger(__name__)


class PortTransport(Transport, Protocol):
    """A transport the reader can open and close (``SerialTransport``, ``SimTransport``)."""

    async def open(self) -> None: ...

    async def close(self) -> None: ...


class Pn532Reader(Reader):
    """PN532 + EMV contactless kernel (a test-bench kernel; see terminal-side.md §2.1)."""

    kind = "pn532"
    OPTIONS = frozenset({"baud", "poll_interval", "ack_timeout", "merchant_name"})
    """Option keys ``drivers.registry`` accepts for this kind."""

    def __init__(
        self,
        name: str,
        port: str,
        options: dict[str, str] | None = None,
        *,
        transport: PortTransport | None = None,
    ) -> None:
        super().__init__(name, port, options)
        try:
            self.baudrate = int(self.options.get("baud", "115200"))
            self.poll_interval = float(self.options.get("poll_interval", "0.05"))
            self.ack_timeout = float(self.options.get("ack_timeout", "0.1"))
        except ValueError as exc:
            raise ValueError(f"reader {name}: bad option ({exc})") from None
        merchant = self.options.get("merchant_name")
        self.profile = (
            DEFAULT_PROFILE if merchant is None else TerminalProfile(merchant_name=merchant)
        )
        self._given_transport = transport
        self._transport: PortTransport | None = None
        self._device: Pn532Device | None = None
        self._ctx: ArmContext | None = None
        self._armed = asyncio.Event()
        self._polling = False

    def __repr__(self) -> str:
        return f"Pn532Reader(name={self.name!r}, port={self.port!r})"

    @property
    def armed(self) -> bool:
        return self._armed.is_set()

    @property
    def device(self) -> Pn532Device:
        """The open device. Raises ReaderOffline when the reader is not open."""
        if self._device is None:
            raise ReaderOffline(f"{self.name}: not open")
        return self._device

    async def open(self) -> ReaderInfo:
        """Open the port and probe the PN532. Raises ReaderOffline, ReaderFault."""
        await self.close()
        transport: PortTransport
        if self._given_transport is not None:
            transport = self._given_transport
        else:
            from drivers.transport import SerialTransport

            transport = SerialTransport(self.port, self.baudrate)
        await transport.open()
        self._transport = transport
        self._device = Pn532Device(transport, ack_timeout=self.ack_timeout)
        try:
            info = await self.probe()
        except BaseException:
            await self.close()
            raise
        log.info("reader %s open on %s: %s", self.name, self.port, info.model)
        return info

    async def probe(self) -> ReaderInfo:
        """Wake and configure the PN532. Raises ReaderFault, ReaderTimeout, ReaderOffline.

        The whole init runs each time (a few ms): a chip that browned out and
        rebooted behind a USB adapter that stayed plugged comes back in LowVBat
        mode with the power-on MaxRetries, and a health probe puts it right."""
        firmware = await self.device.init()
        return ReaderInfo(
            kind=self.kind,
            model=str(firmware),
            details={
                "firmware": str(firmware),
                "protocols": ",".join(firmware.protocols),
                "port": self.port,
                "baud": str(self.baudrate),
            },
        )

    async def arm(self, ctx: ArmContext) -> None:
        """Accept cards for the payment ``ctx``. Raises ReaderOffline (not open),
        ValueError (an amount that cannot be sent as n12 minor units)."""
        self.device  # noqa: B018 - raises ReaderOffline when not open
        bcd(amount_minor(ctx.amount, ctx.currency_exponent), 12)
        self._ctx = ctx
        self._armed.set()

    async def disarm(self) -> None:
        """Stop polling and switch the RF field off. Never raises ReaderError."""
        if not self._armed.is_set():
            return
        self._armed.clear()
        if not self._polling and self._device is not None:
            await self._field_off()

    async def _field_off(self) -> None:
        if self._device is None:
            return
        with contextlib.suppress(ReaderError):
            await self._device.rf_field(False)

    async def next_presentation(self) -> CardRead:
        """The next card read while armed. Raises CardGone, CardNotSupported,
        CardDataError, ReaderTimeout, ReaderFault, ReaderOffline; RuntimeError when
        not armed."""
        if not self._armed.is_set():
            raise RuntimeError(f"reader {self.name} is not armed")
        device = self.device
        self._polling = True
        try:
            while True:
                if not self._armed.is_set():
                    await self._field_off()
                    await self._armed.wait()
                    device = self.device
                target = await device.in_list_passive_target()
                if target is None:
                    await asyncio.sleep(self.poll_interval)
                    continue
                if not self._armed.is_set():
                    await self._release(device)
                    continue
                ctx = self._ctx
                assert ctx is not None
                return await self._read(device, target, ctx)
        finally:
            self._polling = False

    async def _read(self, device: Pn532Device, target: Target, ctx: ArmContext) -> CardRead:
        try:
            if not target.iso_dep:
                raise CardNotSupported(
                    f"not an ISO/IEC 14443-4 card (SAK 0x{target.sel_res:02X}): no EMV here"
                )

            async def exchange(apdu: bytes) -> bytes:
                return await device.in_data_exchange(target.tg, apdu)

            card = await read_card(exchange, ctx, profile=self.profile)
        except ReaderError as exc:
            log.info("reader %s: read failed: %s", self.name, exc)
            raise
        finally:
            await self._release(device)
        log.info("reader %s: read %r", self.name, card)
        return card

    async def _release(self, device: Pn532Device) -> None:
        """InRelease all targets; best effort (the card may be gone)."""
        with contextlib.suppress(ReaderError):
            await device.in_release(0)

    async def close(self) -> None:
        """Release the port. Never raises."""
        self._armed.clear()
        transport, self._transport = self._transport, None
        self._device = None
        if transport is not None:
            with contextlib.suppress(Exception):
                await transport.close()
