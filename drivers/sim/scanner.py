"""Simulated serial barcode/QR scanner over a ``PtyPeer``.

Contract:

* Named codes (``SIM_CODES``): ``wechat`` (18 digits, 13...), ``alipay``
  (18 digits, 28...), ``alipayplus`` (24 digits, 62...), ``junk`` (an EAN-13
  product barcode: not a wallet code), ``url`` (a QR with a web address).
  Test values only.
* A scan is sent as ``[]Q1]`` + code + terminator (``\\r`` by default,
  ``\\r\\n`` with ``crlf=True``; the AIM identifier with ``aim=True``).
* Models (``drivers.scanner.MODELS``): ``generic`` takes no commands and is
  always enabled. ``honeywell`` understands ``SYN T CR`` (trigger: enabled for
  one decode), ``SYN U CR`` (untrigger) and ``SYN M CR <tag>?.`` menu queries
  (``TRGMOD`` is answered ``TRGMOD0<ACK>.``, anything else ``<ENQ>``).
  ``cipherlab`` understands ``E`` (enable) and ``D`` (disable).
* ``present()`` scans only while enabled (a disabled scanner does not read);
  with ``honeywell`` a scan ends the trigger, as in manual trigger mode.
* ``auto``: with a command model, "armed" = enable command received: the
  default code is scanned once per arming (at once; again only after a
  disable). With ``generic`` (no commands, so arming is invisible) the code
  is scanned once every ``interval`` seconds.
"""

from __future__ import annotations

import asyncio

from drivers.scanner import MODELS, SYN
from drivers.sim.pty import PtyPeer

__all__ = ["SIM_CODES", "ScannerSim"]

SIM_CODES: dict[str, str] = {
    "wechat": "134567890123456789",
    "alipay": "286512345678901234",
    "alipayplus": "629000123456789012345678",
    "junk": "5901234123457",
    "url": "https://example.com/menu",
}

ACK, ENQ = b"\x06", b"\x05"


class ScannerSim:
    """A scanner on ``peer`` speaking the ``model``'s commands."""

    names = tuple(SIM_CODES)

    def __init__(
        self,
        peer: PtyPeer,
        *,
        code: str = "wechat",
        model: str = "generic",
        auto: bool = False,
        interval: float = 2.0,
        aim: bool = False,
        crlf: bool = False,
    ) -> None:
        if code not in SIM_CODES:
            raise ValueError(f"unknown code {code!r}; known: {', '.join(SIM_CODES)}")
        if model not in MODELS:
            raise ValueError(f"model must be one of {', '.join(MODELS)}")
        self.peer = peer
        self.code = code
        self.model = MODELS[model]
        self.auto = auto
        self.interval = interval
        self.aim = aim
        self.crlf = crlf
        self.has_commands = bool(self.model.enable)
        self.enabled = not self.has_commands
        self.presented = 0
        self.commands_seen: list[str] = []
        self._auto_done = False
        self._inbuf = b""

    def line(self, name: str) -> bytes:
        data = SIM_CODES[name].encode("ascii")
        if self.aim:
            data = b"]Q1" + data
        return data + (b"\r\n" if self.crlf else b"\r")

    async def present(self, name: str | None = None) -> str:
        """Scan ``name`` if enabled; returns what happened (for the CLI)."""
        name = name or self.code
        if name not in SIM_CODES:
            raise ValueError(f"unknown code {name!r}; known: {', '.join(SIM_CODES)}")
        if not self.enabled:
            return f"scanner disabled: {name} not scanned"
        if self.model.name == "honeywell":
            self.enabled = False  # one decode per trigger
        await self.peer.write(self.line(name))
        self.presented += 1
        return f"scanned {name}"

    async def remove(self) -> str:
        return "a scan has nothing to remove"

    async def run(self) -> None:
        """Serve commands from the driver; with ``generic`` + auto, scan periodically."""
        ticker = asyncio.create_task(self._tick()) if self.auto and not self.has_commands else None
        try:
            while not self.peer.closed:
                data = await self.peer.read()
                if data:
                    await self._on_input(data)
        finally:
            if ticker is not None:
                ticker.cancel()

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            if self.peer.plugged:
                await self.present()

    async def _on_input(self, data: bytes) -> None:
        self._inbuf += data
        while self._inbuf:
            consumed = await self._one_command()
            if consumed == 0:
                break
            self._inbuf = self._inbuf[consumed:]
        if len(self._inbuf) > 1024:
            self._inbuf = b""

    async def _one_command(self) -> int:
        """Handle the first command in the buffer; return bytes used (0: need more)."""
        buf = self._inbuf
        if self.model.name == "cipherlab":
            if buf[:1] == b"E":
                await self._set_enabled(True, "enable")
            elif buf[:1] == b"D":
                await self._set_enabled(False, "disable")
            return 1
        if self.model.name != "honeywell":
            return len(buf)  # generic: ignores everything
        start = buf.find(SYN)
        if start < 0:
            return len(buf)
        if start > 0:
            return start
        if len(buf) < 3:
            return 0
        if buf[:3] == SYN + b"T\r":
            await self._set_enabled(True, "trigger")
            return 3
        if buf[:3] == SYN + b"U\r":
            await self._set_enabled(False, "untrigger")
            return 3
        if buf[:3] == SYN + b"M\r":
            end = min((i for i in (buf.find(b".", 3), buf.find(b"!", 3)) if i >= 0), default=-1)
            if end < 0:
                return 0
            command = buf[3:end]
            self.commands_seen.append("menu " + command.decode("latin-1"))
            if command.upper() == b"TRGMOD?":
                await self.peer.write(b"TRGMOD0" + ACK + buf[end : end + 1])
            else:
                await self.peer.write(command + ENQ + buf[end : end + 1])
            return end + 1
        return 1

    async def _set_enabled(self, enabled: bool, what: str) -> None:
        self.commands_seen.append(what)
        self.enabled = enabled
        if not enabled:
            self._auto_done = False
            return
        if self.auto and not self._auto_done:
            self._auto_done = True
            await asyncio.sleep(0.02)  # a real scanner needs a moment to decode
            await self.present()
