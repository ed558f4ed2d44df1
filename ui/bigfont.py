"""A three-row font for the amount, in ASCII or box drawing. Pure.

The ASCII glyphs (seven-segment style, ``_`` and ``|``) render on any
console font; the box-drawing glyphs are Textual's ``Digits`` set, for
fonts that have them (``--ascii`` switches back).
"""

from __future__ import annotations

from textual.renderables.digits import DIGITS, DIGITS3X3

HEIGHT = 3

_ASCII: dict[str, tuple[str, str, str]] = {
    "0": (" _ ", "| |", "|_|"),
    "1": ("   ", "  |", "  |"),
    "2": (" _ ", " _|", "|_ "),
    "3": (" _ ", " _|", " _|"),
    "4": ("   ", "|_|", "  |"),
    "5": (" _ ", "|_ ", " _|"),
    "6": (" _ ", "|_ ", "|_|"),
    "7": (" _ ", "  |", "  |"),
    "8": (" _ ", "|_|", "|_|"),
    "9": (" _ ", "|_|", " _|"),
    ".": ("   ", "   ", " o "),
    ",": ("   ", "   ", " , "),
    " ": ("  ", "  ", "  "),
}


def _box_glyphs() -> dict[str, tuple[str, str, str]]:
    glyphs: dict[str, tuple[str, str, str]] = {}
    for i, char in enumerate(DIGITS):
        if char.isdigit():
            rows = [r.ljust(3) for r in DIGITS3X3[i * 3 : i * 3 + 3]]
            glyphs[char] = (rows[0], rows[1], rows[2])
    glyphs["."] = ("   ", "   ", " • ")
    glyphs[","] = ("   ", "   ", " , ")
    glyphs[" "] = ("  ", "  ", "  ")
    return glyphs


_BOX = _box_glyphs()


def render(text: str, *, ascii_only: bool = False, gap: int = 1) -> list[str] | None:
    """The three rows of ``text`` in the big font, all the same width.

    Returns None when ``text`` holds a character the font lacks (the caller
    shows it in plain text instead).
    """
    glyphs = _ASCII if ascii_only else _BOX
    rows = ["", "", ""]
    for n, char in enumerate(text):
        glyph = glyphs.get(char)
        if glyph is None:
            return None
        pad = " " * gap if n and char.isdigit() and text[n - 1].isdigit() else ""
        for r in range(HEIGHT):
            rows[r] += pad + glyph[r]
    return rows


def width(text: str, *, ascii_only: bool = False, gap: int = 1) -> int:
    rows = render(text, ascii_only=ascii_only, gap=gap)
    return len(rows[0]) if rows else len(text)
