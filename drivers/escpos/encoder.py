"""Receipts to ESC/POS bytes: the print side of the printer driver, sans I/O.

Contract:

* ``encode(blocks, cut=True) -> bytes``: ``ESC @`` first, then for each
  ``Line``: ``ESC a n`` (alignment), ``ESC E n`` (bold), ``GS ! n`` (size:
  0x11 double width and height, 0x00 normal), ``ESC t n`` (code page) only
  when it differs from the page the previous line left selected, the text,
  ``LF``. For each ``QrCode``: ``ESC a 1`` (QR codes print centred, as on
  every receipt; the next line sets its own alignment) and the ``GS ( k``
  sequence: model 2, module size, error correction level M, store the data,
  print it. With ``cut``: ``ESC d 4`` (feed the last line past the cutter)
  and ``GS V 66 0`` (feed to the cutting position and cut partially).
* Every ``Line`` is written in full on every line (alignment, bold, size)
  so a line never depends on the one before it; the code page is the
  exception because it is the one setting that costs the printer a table
  switch. After ``ESC @`` the selected page is unknown (it is the page the
  printer's memory switch names, not necessarily page 0), so the first line
  always selects its page.
* The encoder never wraps (the caller lays out ``width`` columns; a line
  holds ``width // 2`` columns when ``double``) and never raises on odd text:
  control characters (C0, DEL, C1) become ' ' so text cannot inject a
  command, and a character the page cannot hold prints as '?'.
  ``display_width(text)`` is the number of columns the text takes, one per
  byte sent (after Arabic shaping, which can merge lam + alef into one).
* Code pages: text without Arabic goes out in PC437 (page 0); a line with
  Arabic is shaped and put in visual order (``drivers.escpos.arabic``) and
  goes out in PC864 (page 37). PC864 differs from ASCII at one printable
  byte: 0x25 is the Arabic percent sign, so '%' on an Arabic line prints as
  '٪' (the arabic module maps it so).
* ``QrCode(data, size)`` checks itself when built (``ValueError``): size 1..16
  dots per module; data not empty, no control characters, at most
  ``QR_MAX_BYTES`` bytes of UTF-8 (a model 2 symbol at level M holds no
  more in byte mode).

References (Epson ESC/POS Command Reference for TM printers,
https://download4.epson.biz/sec_pubs/pos/reference_en/escpos/ , one page per
command, named below as in that reference). Page numbers of ``ESC t`` are
Epson's (reference_en/charcode/index.html: "Page 37 [PC864: Arabic]"). Other
vendors number their pages differently (the Samsung SRP-275 manual puts
PC864 at n = 22): a non-Epson printer may need another number here.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass

from drivers.escpos import arabic

__all__ = [
    "QR_MAX_BYTES",
    "Align",
    "Block",
    "CodePage",
    "Line",
    "QrCode",
    "display_width",
    "encode",
]

# -- commands (Epson ESC/POS Command Reference) ---------------------------------------

LF = b"\x0a"  # "LF: Print and line feed"
INITIALIZE = b"\x1b@"  # "ESC @: Initialize printer" (clears the buffer, modes to defaults)
SELECT_JUSTIFICATION = b"\x1ba"  # "ESC a n: Select justification" (0 left, 1 centre, 2 right)
EMPHASIS = b"\x1bE"  # "ESC E n: Turn emphasized mode on/off" (bit 0)
CHARACTER_SIZE = b"\x1d!"  # "GS ! n: Select character size" (bits 4-6 width, 0-2 height)
SELECT_CODE_TABLE = b"\x1bt"  # "ESC t n: Select character code table"
PRINT_AND_FEED_LINES = b"\x1bd"  # "ESC d n: Print and feed n lines"
CUT = b"\x1dV"  # "GS V: Select cut mode and cut paper"
SYMBOL = b"\x1d(k"  # "GS ( k: Set up and print the symbol" (pL pH cn fn ...)

SIZE_NORMAL = 0x00
SIZE_DOUBLE = 0x11  # width x2 (0x10) and height x2 (0x01)
CUT_FEED_LINES = 4  # lines fed before the cut, so the last line clears the cutter
CUT_FEED_AND_PARTIAL = 66  # GS V function B: feed to the cutting position + n, partial cut

QR_CN = 0x31  # cn = 49: the QR Code functions of GS ( k
QR_FN_MODEL = 0x41  # fn 165 (fn byte 65): "QR Code: Select the model"
QR_FN_SIZE = 0x43  # fn 167 (fn byte 67): "QR Code: Set the size of module"
QR_FN_ERROR_CORRECTION = 0x45  # fn 169 (fn byte 69): "QR Code: Select the error correction level"
QR_FN_STORE = 0x50  # fn 180 (fn byte 80): "QR Code: Store the data in the symbol storage area"
QR_FN_PRINT = 0x51  # fn 181 (fn byte 81): "QR Code: Print the symbol data in the storage area"
QR_MODEL_2 = 0x32  # fn 165 n1 = 50
QR_LEVEL_M = 0x31  # fn 169 n = 49: recovers about 15 %
QR_M = 0x30  # m = 48, the fixed parameter of fn 180 and fn 181
QR_MAX_BYTES = 2331  # model 2, version 40, level M, byte mode (ISO/IEC 18004 capacity table)


class CodePage(enum.IntEnum):
    """``ESC t`` page numbers (Epson, "Character Code Tables")."""

    PC437 = 0  # "Page 0 [PC437: USA, Standard Europe]"
    PC864 = 37  # "Page 37 [PC864: Arabic]"


_CODECS = {CodePage.PC437: "cp437", CodePage.PC864: "cp864"}


class Align(enum.IntEnum):
    """``ESC a n`` justification."""

    LEFT = 0
    CENTER = 1
    RIGHT = 2


@dataclass(frozen=True, slots=True)
class Line:
    """One printed line; ``text`` is already laid out (never wrapped here)."""

    text: str = ""
    bold: bool = False
    double: bool = False  # double width and height: a line holds width // 2 columns
    align: Align = Align.LEFT


@dataclass(frozen=True, slots=True)
class QrCode:
    """A QR code (model 2, level M). Raises ValueError for data or a size it cannot print."""

    data: str
    size: int = 6  # module size in dots, 1..16

    def __post_init__(self) -> None:
        if isinstance(self.size, bool) or not 1 <= self.size <= 16:
            raise ValueError(f"QR module size {self.size!r} is not 1..16 dots")
        if not self.data:
            raise ValueError("QR data is empty")
        if any(_is_control(ch) for ch in self.data):
            raise ValueError("QR data holds a control character")
        if len(self.data.encode("utf-8")) > QR_MAX_BYTES:
            raise ValueError(f"QR data is over {QR_MAX_BYTES} bytes of UTF-8")


Block = Line | QrCode


def _is_control(ch: str) -> bool:
    code = ord(ch)
    return code < 0x20 or 0x7F <= code <= 0x9F


def _text_bytes(text: str) -> tuple[CodePage, bytes]:
    """The page a line needs and its text in that page, one byte per printed column."""
    clean = "".join(" " if _is_control(ch) else ch for ch in text)
    if arabic.has_arabic(clean):
        visual = arabic.to_cp864(arabic.to_visual(clean))
        return CodePage.PC864, visual.encode(_CODECS[CodePage.PC864], errors="replace")
    return CodePage.PC437, clean.encode(_CODECS[CodePage.PC437], errors="replace")


def display_width(text: str) -> int:
    """Columns ``text`` takes when printed (after Arabic shaping), at normal size."""
    return len(_text_bytes(text)[1])


def _symbol(fn: int, *params: int) -> bytes:
    body = bytes([QR_CN, fn, *params])
    return SYMBOL + len(body).to_bytes(2, "little") + body


def _qr(block: QrCode) -> bytes:
    data = block.data.encode("utf-8")
    store = bytes([QR_CN, QR_FN_STORE, QR_M]) + data
    return b"".join(
        [
            SELECT_JUSTIFICATION + bytes([Align.CENTER]),
            _symbol(QR_FN_MODEL, QR_MODEL_2, 0),
            _symbol(QR_FN_SIZE, block.size),
            _symbol(QR_FN_ERROR_CORRECTION, QR_LEVEL_M),
            SYMBOL + len(store).to_bytes(2, "little") + store,
            _symbol(QR_FN_PRINT, QR_M),
        ]
    )


def encode(blocks: Sequence[Block], *, cut: bool = True) -> bytes:
    """The ESC/POS bytes that print ``blocks`` (see the module contract). Never raises
    for text; ``TypeError`` for a block that is neither a Line nor a QrCode."""
    out = bytearray(INITIALIZE)
    page: CodePage | None = None
    for block in blocks:
        if isinstance(block, QrCode):
            out += _qr(block)
            continue
        if not isinstance(block, Line):
            raise TypeError(f"not a receipt block: {type(block).__name__}")
        line_page, text = _text_bytes(block.text)
        out += SELECT_JUSTIFICATION + bytes([Align(block.align)])
        out += EMPHASIS + bytes([1 if block.bold else 0])
        out += CHARACTER_SIZE + bytes([SIZE_DOUBLE if block.double else SIZE_NORMAL])
        if line_page != page:
            out += SELECT_CODE_TABLE + bytes([line_page])
            page = line_page
        out += text + LF
    if cut:
        out += PRINT_AND_FEED_LINES + bytes([CUT_FEED_LINES])
        out += CUT + bytes([CUT_FEED_AND_PARTIAL, 0])
    return bytes(out)
