"""Arabic for a code-page receipt printer: shaping, visual order, the forms cp864 has.

Contract (pure: no I/O):

* ``to_visual(text) -> str``: the line as the print head lays it down, left
  to right. Arabic letters become their contextual presentation forms
  (U+FE80..U+FEFC) by joining type: dual-joining letters (ب ت س ...) join on
  both sides, right-joining ones (ا د ذ ر ز و ة ى آ أ إ ؤ) only to the letter
  before, hamza ء to neither; lam + alef (ا أ إ آ) is one ligature (ﻻ ﻷ ﻹ ﻵ).
  Harakat and bidi/joiner marks are dropped: the printer gives every byte a
  cell, and a vowel in a cell of its own would split the word. Text without
  Arabic comes back unchanged.
* The order is a small subset of UAX #9 (Unicode Bidirectional Algorithm):
  right-to-left when the first strong letter is Arabic (P2/P3); Arabic runs
  reversed, Latin and digit runs kept in order; a number keeps its
  separators and %/$-like signs (W4/W5); other neutrals take the lower level
  of their two neighbours, the line ends counting as the paragraph level
  (N1/N2); brackets in a reversed run are mirrored (L4). One deliberate
  difference: numbers separated by spaces keep their order ("4444 5555";
  UAX #9 would swap them in an Arabic run): phone numbers must read as typed.
* ``to_cp864(visual) -> str``: each form replaced by the nearest form code
  page 864 holds, as cp864 lacks most final and medial forms: a missing
  final prints as the isolated form, a missing medial as the initial form,
  a letter with no form there as its nearest letter (إ as ا, ئ as ى); '%' as
  U+066A (cp864 has the Arabic percent sign at 0x25, so its codec has no
  '%'). Every letter of Arabic (U+0621..U+063A, U+0641..U+064A) then encodes
  in every position: ordinary store names never print as '?'.
* ``from_visual(visual) -> str``: the way back, enough for the simulator to
  show readable text: brackets mirrored back, Arabic runs in reading order,
  forms folded (NFKC) to letters. The direction is guessed from the
  rightmost strong letter. "Tel متجر" (left-to-right) looks exactly like
  "متجر Tel" (right-to-left) and comes back as the latter; right-to-left
  lines round-trip exactly (up to dropped marks, cp864 substitutions).

Sources: Unicode data through ``unicodedata`` (the forms' compatibility
decompositions give every form and, by which forms exist, the joining
type); UAX #9; Python's ``cp864`` codec (Microsoft's CP864.TXT).
"""

from __future__ import annotations

import unicodedata

__all__ = ["from_visual", "has_arabic", "to_cp864", "to_visual"]

_ISOLATED, _FINAL, _INITIAL, _MEDIAL = "isolated", "final", "initial", "medial"

LAM = "\u0644"
ALEFS = frozenset("\u0622\u0623\u0625\u0627")  # آ أ إ ا: the ones lam joins into a ligature
TATWEEL = "\u0640"  # the joining stroke: joins both ways, has no forms of its own

_ARABIC_RANGES = ((0x0600, 0x06FF), (0xFB50, 0xFDFF), (0xFE70, 0xFEFC))
_PRESENTATION_RANGES = ((0xFB50, 0xFDFF), (0xFE70, 0xFEFC))


def _forms() -> dict[tuple[str, str], str]:
    """(letter or lam+alef, position) -> presentation form, from Unicode's decompositions."""
    forms: dict[tuple[str, str], str] = {}
    for code in range(0xFE80, 0xFEFD):
        tag, *letters = unicodedata.decomposition(chr(code)).split()
        base = "".join(chr(int(c, 16)) for c in letters)
        forms[(base, tag.strip("<>"))] = chr(code)
    return forms


_FORMS = _forms()

# Letters Persian keyboards type for their Arabic twins (the Arabic ones print).
_TWINS = str.maketrans({"\u06cc": "\u064a", "\u06a9": "\u0643"})  # ی -> ي, ک -> ك

_DROPPED = frozenset(
    [chr(c) for c in range(0x064B, 0x0660)]  # harakat, shadda, sukun, ...
    + ["\u0670", "\u061c", "\u200c", "\u200d", "\u200e", "\u200f"]  # dagger alef, ALM, ZWNJ..RLM
)

_MIRROR = str.maketrans("()[]{}<>«»", ")(][}{><»«")


def _in(ranges: tuple[tuple[int, int], ...], ch: str) -> bool:
    code = ord(ch)
    return any(lo <= code <= hi for lo, hi in ranges)


def has_arabic(text: str) -> bool:
    """True when ``text`` holds any Arabic-script character (letters, digits, forms)."""
    return any(_in(_ARABIC_RANGES, ch) for ch in text)


def _joining(ch: str) -> str | None:
    """Joining type (UAX #9 / ArabicShaping): D dual, R right, U none, C causing."""
    if ch == TATWEEL:
        return "C"
    if (ch, _MEDIAL) in _FORMS:
        return "D"
    if (ch, _FINAL) in _FORMS:
        return "R"
    if (ch, _ISOLATED) in _FORMS:
        return "U"
    return None


def _fold(text: str) -> str:
    """Presentation forms back to letters (NFKC), everything else as it is."""
    return "".join(
        unicodedata.normalize("NFKC", ch) if _in(_PRESENTATION_RANGES, ch) else ch for ch in text
    )


# (joins the letter before, joins the letter after) -> position
_POSITION = {
    (False, False): _ISOLATED, (True, False): _FINAL, (False, True): _INITIAL, (True, True): _MEDIAL
}  # fmt: skip


def _shape(text: str) -> str:
    chars = [ch for ch in _fold(text).translate(_TWINS) if ch not in _DROPPED]
    out: list[str] = []
    i = 0
    while i < len(chars):
        ch, kind = chars[i], _joining(chars[i])
        if kind is None or kind == "C":
            out.append(ch)
            i += 1
            continue
        before = kind != "U" and i > 0 and _joining(chars[i - 1]) in ("D", "C")
        if ch == LAM and i + 1 < len(chars) and chars[i + 1] in ALEFS:
            out.append(_FORMS[(ch + chars[i + 1], _POSITION[(before, False)])])
            i += 2
            continue
        after = kind == "D" and i + 1 < len(chars) and _joining(chars[i + 1]) in ("D", "R", "C")
        out.append(_FORMS[(ch, _POSITION[(before, after)])])
        i += 1
    return "".join(out)


# -- order ------------------------------------------------------------------------


def _kind(ch: str) -> str:
    """R (Arabic, Hebrew), L (other letters), D (digits), T (number signs), N (neutral)."""
    bidi = unicodedata.bidirectional(ch)
    if bidi in ("R", "AL"):
        return "R"
    if bidi == "L":
        return "L"
    if bidi in ("EN", "AN"):
        return "D"
    if bidi == "ET":
        return "T"
    return "N"


def _runs(flags: list[bool]) -> list[tuple[int, int]]:
    """(start, end) of each maximal run of True in ``flags``."""
    runs: list[tuple[int, int]] = []
    i = 0
    while i < len(flags):
        if not flags[i]:
            i += 1
            continue
        j = i
        while j < len(flags) and flags[j]:
            j += 1
        runs.append((i, j))
        i = j
    return runs


def _levels(chars: str, rtl: bool) -> list[int]:
    base = 1 if rtl else 0
    kinds = [_kind(ch) for ch in chars]
    levels: list[int | None] = []
    strong = "R" if rtl else "L"
    for kind in kinds:
        if kind == "R":
            level: int | None = 1
        elif kind == "L":
            level = 2 if rtl else 0
        elif kind == "D":  # W2/W7 then I1/I2: after Arabic (or in an RTL line) one level up
            level = 2 if rtl or strong == "R" else 0
        else:
            level = None
        if kind in ("R", "L"):
            strong = kind
        levels.append(level)
    resolved = [base if lv is None else lv for lv in levels]
    for i, j in _runs([lv is None for lv in levels]):
        before = resolved[i - 1] if i > 0 else base
        after = resolved[j] if j < len(levels) else base
        resolved[i:j] = [min(before, after)] * (j - i)
    # W5 as far as it survives reordering: %, $, ° ... touching a raised number (digits
    # and separators, no letters: both its ends are digits) join it. A sign touching a
    # run that ends in a letter stays out, or it would touch the run's other end in the
    # visual string and join there.
    for i, j in _runs([lv == 2 for lv in resolved]):
        if "L" in kinds[i:j]:
            continue
        k = i
        while k > 0 and kinds[k - 1] == "T" and resolved[k - 1] < 2:
            k -= 1
        m = j
        while m < len(kinds) and kinds[m] == "T" and resolved[m] < 2:
            m += 1
        resolved[k:m] = [2] * (m - k)
    return resolved


def _reorder(text: str, rtl: bool) -> str:
    """UAX #9 L2 (reverse runs from the highest level down) and L4 (mirror in odd levels)."""
    levels = _levels(text, rtl)
    cells = [
        (ch.translate(_MIRROR) if level % 2 else ch, level)
        for ch, level in zip(text, levels, strict=True)
    ]
    for level in range(max(levels, default=0), 0, -1):
        for i, j in _runs([lv >= level for _, lv in cells]):
            cells[i:j] = cells[i:j][::-1]
    return "".join(ch for ch, _ in cells)


def _first_strong_is_arabic(text: str) -> bool:
    for ch in text:
        kind = _kind(ch)
        if kind in ("R", "L"):
            return kind == "R"
    return False


def to_visual(text: str) -> str:
    """Shape the Arabic in ``text`` and put the line in left-to-right print order."""
    if not has_arabic(text):
        return text
    shaped = _shape(text)
    return _reorder(shaped, _first_strong_is_arabic(shaped))


def from_visual(text: str) -> str:
    """Logical text back from a visual line (see the module contract for the limits)."""
    if not has_arabic(text):
        return text
    rtl = _first_strong_is_arabic(text[::-1])
    return _fold(_reorder(text, rtl))


# -- code page 864 ---------------------------------------------------------------------

_CP864_HAS = frozenset(bytes(range(256)).decode("cp864", errors="ignore"))

_NEAREST_POSITION = {
    _ISOLATED: (_ISOLATED,),
    _FINAL: (_FINAL, _ISOLATED),
    _INITIAL: (_INITIAL, _ISOLATED),
    _MEDIAL: (_MEDIAL, _INITIAL, _ISOLATED),
}
_NEAREST_LETTER = str.maketrans({"\u0625": "\u0627", "\u0626": "\u0649"})  # إ -> ا, ئ -> ى


def _cp864_forms() -> dict[str, str]:
    table: dict[str, str] = {"%": "\u066a"}
    for (base, position), form in _FORMS.items():
        if form in _CP864_HAS:
            continue
        for letters in (base, base.translate(_NEAREST_LETTER)):
            found = [
                _FORMS[(letters, p)]
                for p in _NEAREST_POSITION[position]
                if _FORMS.get((letters, p), "") in _CP864_HAS
            ]
            if found:
                table[form] = found[0]
                break
    return table


_TO_CP864 = str.maketrans(_cp864_forms())


def to_cp864(visual: str) -> str:
    """``visual`` with every form cp864 lacks replaced by the nearest one it has."""
    return visual.translate(_TO_CP864)
