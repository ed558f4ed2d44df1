"""The ESC/POS receipt printer on a serial port: real-time status and printing.

Contract:

* ``EscPosPrinter(spec, transport_factory=SerialTransport)``: the transport
  is made as ``transport_factory(spec.port, spec.baud)`` on ``open()``
  (the layer below: ``drivers.transport``; bytes come from
  ``drivers.escpos.encoder``, replies are read with ``drivers.escpos.status``).
* ``open()`` opens the port; ``close()`` closes it and never raises.
* ``status(timeout=1.0) -> PrinterStatus``: drops whatever the printer sent
  before (a late reply to an earlier request must not answer this one), then
  sends ``DLE EOT 1``, ``2``, ``4`` one at a time and reads one reply byte to
  each within ``timeout`` seconds. Bytes that are not status replies (line
  noise, a printer's unsolicited output) are skipped. No reply in time, or a
  port failure, raises ``PrinterOffline``. The printer answers these even
  while offline, out of paper or with its cover open, so a reply always
  means "there is a printer"; what it can do is in the status.
* ``print(data)`` writes ``data`` (from ``encoder.encode``). A port failure
  raises ``PrinterOffline`` chained to the transport's ``ReaderOffline``;
  after one, ``close()`` and ``open()`` again (a replugged USB adapter is a
  new device behind the same path).
  Nothing here knows whether the paper came out: a printer that is out of
  paper or has its cover open drops or holds what it gets, so the caller
  asks ``status()`` before printing and again after.
* Error texts name the port and the OS error only, never the bytes: a
  receipt holds a masked PAN at most, but the rule is the readers' rule
  (DESIGN.md "Card data").
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Protocol

from drivers.base import ReaderOffline
from drivers.escpos import status as st
from drivers.escpos.spec import PrinterSpec
from drivers.transport import SerialTransport

__all__ = ["EscPosPrinter", "PrinterError", "PrinterOffline", "PrinterTransport"]


class PrinterError(Exception):
    """Base of the printer driver's errors; its text never holds printed data."""


class PrinterOffline(PrinterError):
    """No printer answers on the port (unplugged, powered off, port gone): retry later."""


class PrinterTransport(Protocol):
    """What the printer needs of ``drivers.transport.SerialTransport``."""

    async def open(self) -> None: ...
    async def close(self) -> None: ...
    async def read(self, max_bytes: int = 4096, timeout: float | None = None) -> bytes: ...
    async def write(self, data: bytes) -> None: ...
    def reset_input(self) -> None: ...


TransportFactory = Callable[[str, int], PrinterTransport]


class EscPosPrinter:
    """One receipt printer. Not for concurrent use: one caller at a time."""

    def __init__(
        self, spec: PrinterSpec, *, transport_factory: TransportFactory = SerialTransport
    ) -> None:
        self.spec = spec
        self._factory = transport_factory
        self._transport: PrinterTransport | None = None

    def __repr__(self) -> str:
        state = "open" if self._transport is not None else "closed"
        return f"EscPosPrinter({str(self.spec)!r}, {state})"

    @property
    def width(self) -> int:
        """Columns of a normal-size line."""
        return self.spec.width

    @property
    def port(self) -> str:
        return self.spec.port

    async def open(self) -> None:
        """Open the port. Raises PrinterOffline (missing, busy, no permission)."""
        if self._transport is not None:
            return
        transport = self._factory(self.spec.port, self.spec.baud)
        try:
            await transport.open()
        except ReaderOffline as exc:
            raise PrinterOffline(f"printer {self.port}: {exc}") from exc
        self._transport = transport

    async def close(self) -> None:
        """Close the port. Never raises."""
        transport, self._transport = self._transport, None
        if transport is not None:
            with contextlib.suppress(Exception):  # close never raises (contract)
                await transport.close()

    async def __aenter__(self) -> EscPosPrinter:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _open_transport(self) -> PrinterTransport:
        if self._transport is None:
            raise PrinterOffline(f"printer {self.port}: port is not open")
        return self._transport

    async def status(self, timeout: float = 1.0) -> st.PrinterStatus:
        """Ask the printer (DLE EOT 1, 2, 4). Raises PrinterOffline when it does not answer."""
        transport = self._open_transport()
        try:
            transport.reset_input()
            facts = [await self._ask(transport, n, timeout) for n in st.REQUESTS]
        except ReaderOffline as exc:
            raise PrinterOffline(f"printer {self.port}: {exc}") from exc
        return st.combine(*facts)

    async def _ask(self, transport: PrinterTransport, n: int, timeout: float) -> st.StatusFacts:
        await transport.write(st.request(n))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while (remaining := deadline - loop.time()) > 0:
            data = await transport.read(64, timeout=remaining)
            replies = [byte for byte in data if st.is_reply(byte)]
            if replies:
                # nothing else was asked, so anything after the reply is noise too
                return st.parse(n, replies[0])
        raise PrinterOffline(
            f"printer {self.port}: no answer to status request {n} within {timeout:g} s"
        )

    async def print(self, data: bytes) -> None:
        """Send ``data`` to the printer. Raises PrinterOffline when the port fails."""
        transport = self._open_transport()
        try:
            await transport.write(data)
        except ReaderOffline as exc:
            raise PrinterOffline(f"printer {self.port}: {exc}") from exc
