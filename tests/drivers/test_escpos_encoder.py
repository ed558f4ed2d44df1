"""``drivers.escpos.encoder``: receipts to ESC/POS bytes, checked byte for byte."""

from __future__ import annotations

import subprocess
import sys

import pytest

from drivers.escpos.encoder import (
    QR_MAX_BYTES,
    Align,
    Block,
    CodePage,
    Line,
    QrCode,
    display_width,
    encode,
)

# The wire tables: blocks -> the exact bytes, in hex, one command per row.
# Every Line is "ESC a n, ESC E n, GS ! n, [ESC t n], text, LF".
LEFT_PLAIN = "1b 61 00  1b 45 00  1d 21 00 "  # ESC a 0, ESC E 0 (bold off), GS ! 0 (normal)

WIRE = [
    pytest.param(
        [],
        False,
        "1b 40 ",  # ESC @: initialize
        id="init",
    ),
    pytest.param(
        [Line("Hi")],
        False,
        "1b 40 "  # ESC @
        "1b 61 00 "  # ESC a 0: left
        "1b 45 00 "  # ESC E 0: bold off
        "1d 21 00 "  # GS ! 0x00: normal size
        "1b 74 00 "  # ESC t 0: PC437 (the page is unknown after ESC @: always selected)
        "48 69  0a ",  # "Hi" LF
        id="plain-line",
    ),
    pytest.param(
        [Line("C", align=Align.CENTER), Line("R", align=Align.RIGHT)],
        False,
        "1b 40 "
        "1b 61 01  1b 45 00  1d 21 00  1b 74 00  43 0a "  # ESC a 1: centre, "C"
        "1b 61 02  1b 45 00  1d 21 00  52 0a ",  # ESC a 2: right, "R"
        id="alignment",
    ),
    pytest.param(
        [Line("B", bold=True), Line("n")],
        False,
        "1b 40 "
        "1b 61 00  1b 45 01  1d 21 00  1b 74 00  42 0a "  # ESC E 1: bold on, "B"
        "1b 61 00  1b 45 00  1d 21 00  6e 0a ",  # ESC E 0: off again, "n"
        id="bold",
    ),
    pytest.param(
        [Line("TOTAL", bold=True, double=True, align=Align.CENTER)],
        False,
        "1b 40 "
        "1b 61 01  1b 45 01 "
        "1d 21 11 "  # GS ! 0x11: double width and double height
        "1b 74 00  54 4f 54 41 4c 0a ",
        id="double",
    ),
    pytest.param(
        [Line("A"), Line("ب"), Line("B"), Line("C")],
        False,
        "1b 40 "
        + LEFT_PLAIN
        + "1b 74 00  41 0a "  # ESC t 0: PC437, "A"
        + LEFT_PLAIN
        + "1b 74 25  a9 0a "  # ESC t 37: PC864, beh isolated (U+FE8F) is 0xA9
        + LEFT_PLAIN
        + "1b 74 00  42 0a "  # back to PC437 for "B"
        + LEFT_PLAIN
        + "43 0a ",  # "C": page unchanged, no ESC t
        id="code-page-switch",
    ),
    pytest.param(
        [Line("خصم 50%")],
        False,
        "1b 40 " + LEFT_PLAIN + "1b 74 25 "
        "35 30 25 20 "  # "50%" first (visual order); '%' is 0x25, the Arabic percent sign
        "ef d5 ce 0a ",  # meem, sad, khah (right to left): isolated, initial, initial
        id="arabic-percent",
    ),
    pytest.param(
        [Line("A\x1b@B\x1dV\x00\t\x7f\x85\u2028Z")],
        False,
        "1b 40 " + LEFT_PLAIN + "1b 74 00 "
        "41 20 40 42 20 56 20 20 20 20 "  # ESC, GS, NUL, HT, DEL, NEL -> ' ': no command
        "3f 5a 0a ",  # U+2028 has no PC437 byte: '?'
        id="control-characters-scrubbed",
    ),
    pytest.param(
        [Line("café €5")],
        False,
        "1b 40 " + LEFT_PLAIN + "1b 74 00 "
        "63 61 66 82 20 3f 35 0a ",  # é is 0x82 in PC437; € is not there: '?'
        id="unencodable-is-question-mark",
    ),
    pytest.param(
        [QrCode("AB", size=4)],
        False,
        "1b 40 "
        "1b 61 01 "  # ESC a 1: QR codes print centred
        "1d 28 6b 04 00 31 41 32 00 "  # GS ( k fn 65: model 2
        "1d 28 6b 03 00 31 43 04 "  # fn 67: module size 4 dots
        "1d 28 6b 03 00 31 45 31 "  # fn 69: error correction M
        "1d 28 6b 05 00 31 50 30 41 42 "  # fn 80: store "AB" (pL = 2 + 3)
        "1d 28 6b 03 00 31 51 30 ",  # fn 81: print
        id="qr",
    ),
    pytest.param(
        [Line("X")],
        True,
        "1b 40 " + LEFT_PLAIN + "1b 74 00 58 0a "
        "1b 64 04 "  # ESC d 4: feed 4 lines
        "1d 56 42 00 ",  # GS V 66 0: feed to the cutter and cut partially
        id="cut",
    ),
    pytest.param(
        [],
        True,
        "1b 40  1b 64 04  1d 56 42 00 ",
        id="cut-only",
    ),
]


@pytest.mark.parametrize(("blocks", "cut", "wire"), WIRE)
def test_wire_table(blocks: list[Block], cut: bool, wire: str) -> None:
    assert encode(blocks, cut=cut).hex(" ") == bytes.fromhex(wire).hex(" ")


def test_cut_is_the_default() -> None:
    assert encode([Line("X")]).endswith(bytes.fromhex("1b 64 04 1d 56 42 00"))


def test_qr_store_length_is_little_endian() -> None:
    data = "x" * 300
    wire = encode([QrCode(data)], cut=False)
    store = bytes.fromhex("1d 28 6b") + (300 + 3).to_bytes(2, "little") + b"\x31\x50\x30"
    assert store + data.encode() in wire


def test_qr_data_is_utf8() -> None:
    assert "متجر".encode() in encode([QrCode("متجر")], cut=False)


@pytest.mark.parametrize(
    ("data", "size"),
    [
        ("", 6),  # nothing to encode
        ("a\nb", 6),  # control characters could end up as commands on some printers
        ("a\x10\x04\x01", 6),
        ("x" * (QR_MAX_BYTES + 1), 6),  # more than a version 40-M symbol holds
        ("ok", 0),
        ("ok", 17),
        ("ok", True),
    ],
)
def test_qr_refuses_what_it_cannot_print(data: str, size: int) -> None:
    with pytest.raises(ValueError, match="QR"):
        QrCode(data, size=size)


def test_qr_limits_are_inclusive() -> None:
    QrCode("x" * QR_MAX_BYTES, size=16)
    QrCode("x", size=1)


def test_not_a_block_is_a_type_error() -> None:
    with pytest.raises(TypeError):
        encode(["text"])  # type: ignore[list-item]


def test_text_never_holds_a_command_byte() -> None:
    nasty = "".join(chr(c) for c in range(0x00, 0xA0)) + "\u202e\ufeff"
    wire = encode([Line(nasty)], cut=False)
    text = wire[len(bytes.fromhex("1b 40" + LEFT_PLAIN + "1b 74 00")) : -1]
    assert not any(b < 0x20 for b in text)
    assert len(text) == display_width(nasty) == len(nasty)


@pytest.mark.parametrize(
    ("text", "width"),
    [
        ("", 0),
        ("Total 12.50", 11),
        ("a\x1bb", 3),  # a control character prints as one space
        ("€", 1),  # as '?'
        ("لا", 1),  # lam + alef is one ligature
        ("سلام", 3),
        ("متجر الدوحة", 11),
        ("قَهوة", 4),  # the fatha is dropped: it would take a cell of its own
    ],
)
def test_display_width(text: str, width: int) -> None:
    assert display_width(text) == width


def test_code_pages_are_epsons() -> None:
    assert (CodePage.PC437, CodePage.PC864) == (0, 37)


def test_codecs_are_sans_io() -> None:
    """The encoder, the Arabic shaping, the status codec and the simulator's decoder
    import no asyncio, serial or logging."""
    code = (
        "import sys, drivers.escpos.encoder, drivers.escpos.arabic, drivers.escpos.status, "
        "drivers.sim.escpos_decoder, drivers.escpos; "
        "print(','.join(m for m in ('asyncio', 'serial', 'logging') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=30
    )
    assert out.stdout.strip() == ""
