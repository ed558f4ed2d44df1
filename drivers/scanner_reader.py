"""Serial barcode/QR scanner (kind ``scanner``) reading wallet payment codes.

Contract: a ``drivers.base.Reader`` over ``drivers.stream_reader.StreamReader``.
Spec: ``scanner:PORT[;model=generic|honeywell|cipherlab][;baud=9600][;aim=0|1]
[;prefix=..][;suffix=..][;terminator=auto|none][;retrigger=SECONDS]``.

* ``arm()`` sends the model's enable command (Honeywell ``SYN T CR``,
  CipherLab ``E``); ``disarm()`` sends the disable command. The ``generic``
  model has none: its lines are gated in the driver (discarded while
  disarmed). With ``honeywell`` a trigger gives one decode, so the driver
  re-triggers after every line and every ``retrigger`` seconds (default 20,
  below the usual serial trigger timeouts) while armed.
* ``probe()``: Honeywell answers a menu query (``TRGMOD?``); no answer within
  1 s raises ``ReaderTimeout``, ENQ/NAK raise ``ReaderFault``. Other models
  have nothing to ask.
* ``next_presentation()`` returns a ``WalletCode``; a line that is not a
  wallet code raises ``CardNotSupported("not a wallet payment code")`` and the
  reader stays armed (re-triggered). Codes are logged masked only.
  Decoding rules: ``drivers.scanner``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from drivers.base import (
    CardNotSupported,
    ReaderFault,
    ReaderInfo,
    ReaderOffline,
    ReaderTimeout,
    WalletCode,
)
from drivers.scanner import MODELS, MenuStatus, decode_scan, menu_query, parse_menu_reply
from drivers.stream_reader import StreamReader

__all__ = ["ScannerReader"]

log = logging.getLogger(__name__)

PROBE_TIMEOUT = 1.0


class ScannerReader(StreamReader):
    """A line-oriented serial scanner."""

    kind = "scanner"
    default_baud = 9600
    max_message = 4096
    OPTIONS = frozenset(
        {"baud", "model", "aim", "prefix", "suffix", "terminator", "idle", "stale", "retrigger"}
    )

    def __init__(self, name: str, port: str, options: dict[str, str] | None = None) -> None:
        super().__init__(name, port, options)
        model = self.options.get("model", "generic")
        if model not in MODELS:
            raise ValueError(f"reader {name}: model must be one of {', '.join(sorted(MODELS))}")
        self.model = MODELS[model]
        aim = self.options.get("aim", "0")
        if aim not in ("0", "1"):
            raise ValueError(f"reader {name}: aim must be 0 or 1")
        self.aim = aim == "1"
        try:
            self.retrigger = float(self.options.get("retrigger", "20"))
        except ValueError:
            raise ValueError(f"reader {name}: retrigger must be a number of seconds") from None
        self._retrigger_task: asyncio.Task[None] | None = None

    def decode(self, message: bytes) -> WalletCode:
        """Raises CardNotSupported (not a wallet code), CardDataError (AIM missing)."""
        try:
            code = decode_scan(message, aim=self.aim)
        except CardNotSupported:
            log.info("reader %s: %d-byte scan is not a wallet code", self.name, len(message))
            raise
        log.info("reader %s scan: %s %s", self.name, code.wallet.value, code.masked)
        return code

    async def probe_device(self) -> ReaderInfo:
        details = {"port": self.port, "baud": str(self.baudrate), "model": self.model.name}
        tag = self.model.probe_tag
        if tag is not None:
            transport = self.transport
            await transport.write(menu_query(tag))
            buffer = b""
            loop = asyncio.get_running_loop()
            deadline = loop.time() + PROBE_TIMEOUT
            while True:
                reply = parse_menu_reply(buffer, tag)
                if reply is not None:
                    break
                remaining = deadline - loop.time()
                chunk = await transport.read(timeout=remaining) if remaining > 0 else b""
                if not chunk:
                    raise ReaderTimeout(f"{self.name}: no answer to the {tag.decode()} query")
                buffer += chunk
                if len(buffer) > 4096:
                    raise ReaderFault(f"{self.name}: no menu reply in 4096 bytes")
            if reply.status is not MenuStatus.ACK:
                status = reply.status.value
                raise ReaderFault(f"{self.name}: {tag.decode()} query answered {status}")
            details[tag.decode().lower()] = reply.value
        return ReaderInfo(kind=self.kind, model=self.model.description, details=details)

    async def _send(self, command: bytes) -> None:
        if command:
            await self.transport.write(command)

    async def on_arm(self) -> None:
        await self._send(self.model.enable)
        if self.model.retrigger and self.retrigger > 0:
            self._stop_retrigger()
            self._retrigger_task = asyncio.create_task(
                self._retrigger_loop(), name=f"reader-{self.name}-retrigger"
            )

    async def on_disarm(self) -> None:
        self._stop_retrigger()
        await self._send(self.model.disable)

    async def on_message(self) -> None:
        if self.model.retrigger and self.armed:
            await self._send(self.model.enable)

    async def _retrigger_loop(self) -> None:
        with contextlib.suppress(ReaderOffline):
            while self.armed:
                await asyncio.sleep(self.retrigger)
                if self.armed:
                    await self._send(self.model.enable)

    def _stop_retrigger(self) -> None:
        task, self._retrigger_task = self._retrigger_task, None
        if task is not None and not task.done():
            task.cancel()

    async def close(self) -> None:
        task, self._retrigger_task = self._retrigger_task, None
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await super().close()
