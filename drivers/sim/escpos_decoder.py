"""ESC/POS bytes back to receipt text: the simulated printer's command parser, sans I/O.

Contract:

* ``EscPosDecoder().feed(data) -> list[Event]``: bytes in any pieces (a
  command may be split anywhere across calls; an incomplete one waits for
  its rest). Events, in stream order:

  - ``StatusRequest(n)`` for each ``DLE EOT n``: the caller answers it at
    once, as a printer answers a real-time command.
  - ``Receipt(text)`` at each cut (``GS V``): the slip's lines joined with
    "\\n". Bold, double-size and aligned lines appear as their plain text;
    a printed QR code as the line ``[QR] <data>``; paper feeds add no lines;
    a cut of an empty slip is no event. Text is decoded with the page
    ``ESC t`` selected (0 PC437, 37 PC864; any other page as PC437); a line
    with PC864 text is put back in logical order with
    ``arabic.from_visual`` and its 0x25 (the Arabic percent sign in PC864)
    shown as '%'.

* ``discard``: while True (the simulator sets it while out of paper or
  with the cover open) everything but real-time commands is dropped and
  counted in ``bytes_discarded``; commands are still parsed, so the
  decoder stays in step with the stream. A slip that lost any byte is not
  a ``Receipt`` at its cut (``slips_dropped`` counts it): the simulator
  writes whole receipts or none, and the agent reprints after a status
  check.
* Commands: ``ESC @`` resets modes and the code page and drops the unprinted
  partial line (not the slip: the paper is still there). Parameter lengths
  of the other commands are taken from the Epson ESC/POS Command Reference:
  fixed ones from the tables below; ``ESC D`` (NUL-terminated), ``ESC *``,
  ``GS *``, ``GS v 0``, ``GS 8 L``, ``GS k``, ``GS ( X`` / ``FS ( X``
  (pL pH length) and ``GS V`` (function A or B) by their own length
  fields; data that is not kept (images, barcodes) is skipped as it comes,
  not buffered. An unknown ``ESC``/``GS``/``FS`` command is taken to have
  no parameters (two bytes), so its parameters, if any, come out as text,
  as they would on a printer that does not know the command either; other
  C0 bytes are ignored, ``HT`` prints a space.
* Known gap: a real printer honours ``DLE EOT`` anywhere in the stream,
  even inside another command's data; this decoder only between commands,
  which is where the driver sends it.
"""

from __future__ import annotations

from dataclasses import dataclass

from drivers.escpos import arabic
from drivers.escpos.encoder import QR_CN, QR_FN_PRINT, QR_FN_STORE, CodePage

__all__ = ["EscPosDecoder", "Event", "Receipt", "StatusRequest"]

DLE, ESC, FS, GS = 0x10, 0x1B, 0x1C, 0x1D
EOT, ENQ, DC4 = 0x04, 0x05, 0x14
LF, CR, HT = 0x0A, 0x0D, 0x09

# Fixed parameter counts after ESC x / GS x / FS x (Epson ESC/POS Command Reference).
_ESC_PARAMS = {
    0x20: 1, 0x21: 1, 0x24: 2, 0x25: 1, 0x2D: 1, 0x32: 0, 0x33: 1, 0x3D: 1, 0x3F: 1,
    0x40: 0, 0x45: 1, 0x47: 1, 0x4A: 1, 0x4C: 0, 0x4D: 1, 0x52: 1, 0x53: 0, 0x54: 1,
    0x55: 1, 0x56: 1, 0x57: 8, 0x5C: 2, 0x61: 1, 0x63: 2, 0x64: 1, 0x65: 1, 0x69: 0,
    0x6D: 0, 0x70: 3, 0x72: 1, 0x74: 1, 0x75: 1, 0x76: 0, 0x7B: 1,
}  # fmt: skip
_GS_PARAMS = {
    0x21: 1, 0x24: 2, 0x2F: 1, 0x3A: 0, 0x42: 1, 0x48: 1, 0x49: 1, 0x4C: 2, 0x50: 2,
    0x54: 1, 0x57: 2, 0x5C: 2, 0x5E: 3, 0x61: 1, 0x62: 1, 0x66: 1, 0x68: 1, 0x72: 1,
    0x77: 1,
}  # fmt: skip
_FS_PARAMS = {0x21: 1, 0x26: 0, 0x2D: 1, 0x2E: 0, 0x43: 1, 0x53: 2, 0x57: 1, 0x70: 2}
_DC4_LENGTHS = {1: 5, 2: 5, 7: 4, 8: 10}  # DLE DC4 fn ...: whole command length
_MAX_NUL_DATA = 255  # longest NUL-terminated parameter kept waiting for its NUL

_CODECS: dict[int, str] = {CodePage.PC437: "cp437", CodePage.PC864: "cp864"}


@dataclass(frozen=True, slots=True)
class Receipt:
    text: str


@dataclass(frozen=True, slots=True)
class StatusRequest:
    n: int


Event = Receipt | StatusRequest


class EscPosDecoder:
    """One printer's parser state (modes, the slip so far). Not thread-safe."""

    def __init__(self) -> None:
        self.discard = False
        self.bytes_discarded = 0
        self.slips_dropped = 0
        self._buf = bytearray()
        self._skip = 0  # bytes of image/barcode data still to pass over
        self._page = int(CodePage.PC437)
        self._segments: list[tuple[int, bytes]] = []  # the partial line, by code page
        self._lines: list[str] = []
        self._spoiled = False
        self._qr = ""
        self._events: list[Event] = []

    def feed(self, data: bytes) -> list[Event]:
        """Parse ``data``; return the events it completes (see the module contract)."""
        self._buf += data
        self._events = []
        while self._buf:
            if self._skip:
                used = min(self._skip, len(self._buf))
                self._skip -= used
                realtime = False
            else:
                realtime = self._buf[:2] == bytes([DLE, EOT])
                if self.discard and not realtime:
                    self._spoiled = True  # before the step: a cut in it ends the slip
                used = self._step()
                if used == 0:
                    break  # an incomplete command: wait for more bytes
            if self.discard and not realtime:
                self.bytes_discarded += used
            del self._buf[:used]
        return self._events

    # -- one command -------------------------------------------------------------

    def _step(self) -> int:
        """Handle the command at the start of the buffer; bytes used, 0 if incomplete."""
        buf = self._buf
        first = buf[0]
        if first >= 0x20:
            end = 1
            while end < len(buf) and buf[end] >= 0x20:
                end += 1
            self._text(bytes(buf[:end]))
            return end
        if first == LF:
            self._end_line(force=True)
        elif first == HT:
            self._text(b" ")
        elif first in (DLE, ESC, GS, FS):
            if len(buf) < 2:
                return 0
            handler = {DLE: self._dle, ESC: self._esc, GS: self._gs, FS: self._fs}[first]
            return handler(buf[1])
        return 1  # CR, FF, CAN and other C0 bytes: nothing to print

    def _dle(self, fn: int) -> int:
        if fn in (EOT, ENQ):
            if len(self._buf) < 3:
                return 0
            if fn == EOT:
                self._events.append(StatusRequest(self._buf[2]))
            return 3
        if fn == DC4:
            if len(self._buf) < 3:
                return 0
            need = _DC4_LENGTHS.get(self._buf[2], 3)
            return need if len(self._buf) >= need else 0
        return 1

    def _fixed(self, params: int) -> int:
        return 2 + params if len(self._buf) >= 2 + params else 0

    def _length_prefixed(self, header: int, length: int, keep: bool = False) -> int:
        """A command of ``header`` bytes followed by ``length`` data bytes."""
        if keep:
            return header + length if len(self._buf) >= header + length else 0
        self._skip = length
        return header

    def _esc(self, fn: int) -> int:
        buf = self._buf
        if fn == 0x44:  # ESC D n1..nk NUL: horizontal tab positions
            end = buf.find(0, 2)
            if end < 0:
                return 0 if len(buf) < 2 + _MAX_NUL_DATA else len(buf)
            return end + 1
        if fn == 0x2A:  # ESC * m nL nH d1..dk: bit image
            if len(buf) < 5:
                return 0
            columns = buf[3] + 256 * buf[4]
            return self._length_prefixed(5, columns * (3 if buf[2] in (32, 33) else 1))
        used = self._fixed(_ESC_PARAMS.get(fn, 0))
        if used == 0:
            return 0
        if fn == 0x40:  # ESC @
            self._page = int(CodePage.PC437)
            self._segments = []
        elif fn == 0x74:  # ESC t n
            self._page = buf[2]
        elif fn == 0x64:  # ESC d n: prints the buffer, then feeds
            self._end_line(force=False)
        return used

    def _gs(self, fn: int) -> int:
        buf = self._buf
        if fn == 0x28:  # GS ( X pL pH ...
            if len(buf) < 5:
                return 0
            length = buf[3] + 256 * buf[4]
            if buf[2] != 0x6B:
                return self._length_prefixed(5, length)
            used = self._length_prefixed(5, length, keep=True)
            if used:
                self._symbol(bytes(buf[5:used]))
            return used
        if fn == 0x56:  # GS V m [n]: cut (function A: m only; B, C, D: one more byte)
            if len(buf) < 3:
                return 0
            used = self._fixed(1 if buf[2] in (0, 1, 48, 49) else 2)
            if used:
                self._cut()
            return used
        if fn == 0x6B:  # GS k m ...: barcode
            if len(buf) < 3:
                return 0
            if buf[2] <= 6:  # function A: data ends with NUL
                end = buf.find(0, 3)
                if end < 0:
                    return 0 if len(buf) < 3 + _MAX_NUL_DATA else len(buf)
                return end + 1
            return self._length_prefixed(4, buf[3]) if len(buf) >= 4 else 0
        if fn == 0x76:  # GS v 0 m xL xH yL yH d1..dk: raster image
            if len(buf) < 8:
                return 0
            return self._length_prefixed(8, (buf[4] + 256 * buf[5]) * (buf[6] + 256 * buf[7]))
        if fn == 0x38:  # GS 8 L p1..p4 ...: graphics with a 4-byte length
            if len(buf) < 7:
                return 0
            return self._length_prefixed(7, int.from_bytes(buf[3:7], "little"))
        if fn == 0x2A:  # GS * x y d1..d(x*y*8): downloaded bit image
            if len(buf) < 4:
                return 0
            return self._length_prefixed(4, buf[2] * buf[3] * 8)
        return self._fixed(_GS_PARAMS.get(fn, 0))

    def _fs(self, fn: int) -> int:
        if fn == 0x28:  # FS ( X pL pH ...
            if len(self._buf) < 5:
                return 0
            return self._length_prefixed(5, self._buf[3] + 256 * self._buf[4])
        return self._fixed(_FS_PARAMS.get(fn, 0))

    # -- effects -------------------------------------------------------------------

    def _symbol(self, body: bytes) -> None:
        """GS ( k: keep the QR data when stored, print it as a line when asked."""
        if len(body) < 2 or body[0] != QR_CN:
            return
        if body[1] == QR_FN_STORE:
            self._qr = body[3:].decode("utf-8", errors="replace")
        elif body[1] == QR_FN_PRINT and self._qr and not self.discard:
            self._end_line(force=False)
            self._lines.append(f"[QR] {self._qr}")

    def _text(self, data: bytes) -> None:
        if not self.discard:
            self._segments.append((self._page, data))

    def _end_line(self, *, force: bool) -> None:
        """Print the partial line (``force``: even when empty, as LF does)."""
        segments, self._segments = self._segments, []
        if self.discard or not (segments or force):
            return
        text = "".join(
            data.decode(_CODECS.get(page, "cp437"), errors="replace") for page, data in segments
        )
        if any(page == CodePage.PC864 for page, _ in segments):
            text = arabic.from_visual(text.replace("\u066a", "%"))
        self._lines.append(text)

    def _cut(self) -> None:
        self._end_line(force=False)
        lines, self._lines = self._lines, []
        if self._spoiled or self.discard:
            self.slips_dropped += 1
        elif lines:
            self._events.append(Receipt("\n".join(lines)))
        self._spoiled = False
