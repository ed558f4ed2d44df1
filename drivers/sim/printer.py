"""Simulated ESC/POS receipt printer over a ``PtyPeer``: receipts go to a text file.

Contract:

* ``PrinterSim(peer, out_path)``; ``run()`` serves the device until the peer
  is closed. Each ``DLE EOT n`` (n = 1, 2, 4; 3, the error cause, is
  answered "no error") is answered at once with the simulated status
  (``drivers.escpos.status.reply_byte``), whatever the printer's state.
* While the printer is ready, print data is decoded
  (``drivers.sim.escpos_decoder``) and each receipt is appended to
  ``out_path`` at its cut: its text, then a line of 20 '=' (``SEPARATOR``),
  flushed and fsync'd before the next is read, so a test reading the file
  sees whole receipts only.
* Paper out, cover open or offline: print data is dropped (``bytes_dropped``)
  and so is any receipt that lost bytes, even if the paper is back before
  its cut (``receipts_dropped``). A real printer would hold the data or
  print part of the slip; the agent is expected to check the status before
  and after printing and print again, which is what this makes visible.
* ``apply(command)`` runs one of ``COMMANDS`` (``paper-out``/``paper-in``,
  ``cover-open``/``cover-close``, ``offline``/``online``) and returns the new
  state in one line; a printer out of paper or with its cover open also
  reports itself offline, as Epson printers do. ``describe()`` is the ``status`` command's line.
* An unplug/replug keeps the parser as it was: pulling a serial cable does
  not power the printer off, so a half-received command is still waiting.
* ``present()`` / ``remove()`` exist for the CLI's reader commands and only
  say that printers take no cards.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Literal

from drivers.escpos import status as st
from drivers.sim.escpos_decoder import EscPosDecoder, Receipt, StatusRequest
from drivers.sim.pty import PtyPeer

__all__ = ["COMMANDS", "SEPARATOR", "PrinterSim"]

Fault = Literal["paper_out", "cover_open", "offline"]
# the stdin command -> the fault it sets or clears
COMMANDS: dict[str, tuple[Fault, bool]] = {
    "paper-out": ("paper_out", True),
    "paper-in": ("paper_out", False),
    "cover-open": ("cover_open", True),
    "cover-close": ("cover_open", False),
    "offline": ("offline", True),
    "online": ("offline", False),
}

SEPARATOR = "=" * 20
_NO_ERROR = st.FIXED_BITS  # the DLE EOT 3 (error cause) reply with no error bit set


class PrinterSim:
    """A receipt printer on ``peer`` that prints into ``out_path``."""

    def __init__(self, peer: PtyPeer, out_path: Path) -> None:
        self.peer = peer
        self.out_path = Path(out_path)
        self.receipts_printed = 0
        self.status_requests = 0
        self._faults: set[Fault] = set()
        self._decoder = EscPosDecoder()

    @property
    def status(self) -> st.PrinterStatus:
        return st.PrinterStatus(
            online=not self._faults,
            cover_open="cover_open" in self._faults,
            paper_out="paper_out" in self._faults,
            paper_near_end=False,
        )

    @property
    def ready(self) -> bool:
        return self.status.state == "ready"

    @property
    def bytes_dropped(self) -> int:
        return self._decoder.bytes_discarded

    @property
    def receipts_dropped(self) -> int:
        return self._decoder.slips_dropped

    def describe(self) -> str:
        return (
            f"printer {self.status.describe()}: {self.receipts_printed} printed, "
            f"{self.receipts_dropped} dropped ({self.bytes_dropped} bytes)"
        )

    # -- state -----------------------------------------------------------------------

    def apply(self, command: str) -> str:
        """Set or clear a fault by its ``COMMANDS`` word; returns the new state
        ("paper-in: ready"). Raises KeyError for another word."""
        fault, on = COMMANDS[command]
        if on:
            self._faults.add(fault)
        else:
            self._faults.discard(fault)
        return f"{command}: {self.status.describe()}"

    async def present(self, name: str | None = None) -> str:
        return "printers take no cards"

    async def remove(self) -> str:
        return "printers take no cards"

    # -- device ----------------------------------------------------------------------

    async def run(self) -> None:
        """Serve the printer until the peer is closed."""
        while not self.peer.closed:
            data = await self.peer.read()
            if data:
                await self.handle(data)

    async def handle(self, data: bytes) -> None:
        """Answer the status requests in ``data`` and print (or drop) the rest."""
        self._decoder.discard = not self.ready
        for event in self._decoder.feed(data):
            if isinstance(event, StatusRequest):
                await self._answer(event.n)
            elif isinstance(event, Receipt):
                await asyncio.to_thread(self._append, event.text)
                self.receipts_printed += 1

    async def _answer(self, n: int) -> None:
        self.status_requests += 1
        if n in st.REQUESTS:
            await self.peer.write(bytes([st.reply_byte(n, self.status)]))
        elif n == 3:
            await self.peer.write(bytes([_NO_ERROR]))

    def _append(self, text: str) -> None:
        with self.out_path.open("a", encoding="utf-8") as out:
            out.write(f"{text}\n{SEPARATOR}\n")
            out.flush()
            os.fsync(out.fileno())
