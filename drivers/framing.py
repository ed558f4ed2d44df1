"""Message framing for line-oriented serial readers (swipe readers, scanners), sans I/O.

Contract: ``LineFramer.feed(bytes) -> list[bytes]`` returns complete messages
without their framing; it never raises and never logs (messages are card data).

Rules, matching the output options of common serial readers (ID TECH
MiniMag terminator CR/LF, CR, LF or none; MagTek ``STX ... CR ETX``; scanners'
CR / LF / CRLF suffixes; terminal-side.md sections 3.1 and 3.2):

* STX (0x02) starts a message: any unfinished message before it is dropped
  (resynchronisation after noise or a half-received message).
* CR (0x0D), LF (0x0A) and ETX (0x03) end a message, so CR, LF, CRLF and
  ``CR ETX`` all work; empty messages are skipped.
* A configured ``prefix`` / ``suffix`` (a reader's preamble/postamble) is
  removed when present; a message that is nothing but one of them is skipped.
* A message longer than ``max_len`` is dropped up to its terminator
  (``overflows`` counts them), so a stuck stream cannot grow memory.
* ``flush()`` ends the unfinished message, for readers configured with no
  terminator (the driver calls it after an idle gap); ``discard_current()``
  drops the unfinished message including its bytes still to come, used when a
  reader is armed in the middle of a message that began before the arming.
  ``skipped`` counts the messages dropped up to their terminator (discarded or
  overlong): the device did finish a read.
"""

from __future__ import annotations

__all__ = ["CR", "ETX", "LF", "STX", "LineFramer"]

STX = 0x02
ETX = 0x03
LF = 0x0A
CR = 0x0D


class LineFramer:
    """Split a reader's byte stream into messages (see the module contract)."""

    def __init__(self, *, prefix: bytes = b"", suffix: bytes = b"", max_len: int = 512) -> None:
        if max_len < 1:
            raise ValueError("max_len must be >= 1")
        self.prefix = prefix
        self.suffix = suffix
        self.max_len = max_len
        self.overflows = 0
        self.skipped = 0
        self._buf = bytearray()
        self._skipping = False

    @property
    def pending(self) -> int:
        """Bytes of an unfinished message (0 while skipping one)."""
        return len(self._buf)

    @property
    def skipping(self) -> bool:
        """True while the rest of a discarded or overlong message is being dropped."""
        return self._skipping

    def discard_current(self) -> None:
        """Drop the unfinished message and its bytes still to come (up to the next
        terminator or STX). No effect between messages."""
        if self._buf:
            self._skipping = True
        self._buf.clear()

    def reset(self) -> None:
        """Forget everything, as after reopening the port."""
        self._buf.clear()
        self._skipping = False

    def _finish(self) -> bytes | None:
        message = bytes(self._buf)
        self._buf.clear()
        skipping, self._skipping = self._skipping, False
        if skipping:
            self.skipped += 1
            return None
        if self.prefix and message.startswith(self.prefix):
            message = message[len(self.prefix) :]
        if self.suffix and message.endswith(self.suffix):
            message = message[: -len(self.suffix)]
        return message or None

    def flush(self) -> bytes | None:
        """End the unfinished message now; None when there is none."""
        if not self._buf:
            self._skipping = False
            return None
        return self._finish()

    def feed(self, data: bytes) -> list[bytes]:
        """Consume bytes; return the complete messages (framing removed)."""
        messages: list[bytes] = []
        for byte in data:
            if byte == STX:
                self._buf.clear()
                self._skipping = False
            elif byte in (CR, LF, ETX):
                message = self._finish()
                if message is not None:
                    messages.append(message)
            elif self._skipping:
                continue
            elif len(self._buf) >= self.max_len:
                self._buf.clear()
                self._skipping = True
                self.overflows += 1
            else:
                self._buf.append(byte)
        return messages
