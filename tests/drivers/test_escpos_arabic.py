"""``drivers.escpos.arabic``: shaping, visual order, cp864 forms, and the way back."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from drivers.escpos.arabic import from_visual, has_arabic, to_cp864, to_visual
from drivers.escpos.encoder import Line, encode
from drivers.sim.escpos_decoder import EscPosDecoder, Receipt

# logical text -> the visual string (left to right as printed), form by form
SHAPING = [
    pytest.param("ب", "\ufe8f", id="beh-isolated"),
    pytest.param("بب", "\ufe90\ufe91", id="beh-initial-final"),  # reversed: final first
    pytest.param("ببب", "\ufe90\ufe92\ufe91", id="beh-medial"),
    pytest.param("با", "\ufe8e\ufe91", id="alef-final-after-dual-joiner"),
    pytest.param("اب", "\ufe8f\ufe8d", id="alef-does-not-join-forward"),
    pytest.param("دار", "\ufead\ufe8d\ufea9", id="right-joiners-stay-isolated"),
    pytest.param("بة", "\ufe94\ufe91", id="teh-marbuta-final"),
    pytest.param("مقهى", "\ufef0\ufeec\ufed8\ufee3", id="alef-maksura-final"),
    pytest.param("بءب", "\ufe8f\ufe80\ufe8f", id="hamza-joins-nothing"),
    pytest.param("بؤ", "\ufe86\ufe91", id="waw-hamza-right-joining"),
    pytest.param("لا", "\ufefb", id="lam-alef"),
    pytest.param("لأ", "\ufef7", id="lam-alef-hamza-above"),
    pytest.param("لإ", "\ufef9", id="lam-alef-hamza-below"),
    pytest.param("لآ", "\ufef5", id="lam-alef-madda"),
    pytest.param("سلا", "\ufefc\ufeb3", id="lam-alef-final"),
    pytest.param("بـب", "\ufe90\u0640\ufe91", id="tatweel-joins-both-ways"),
    pytest.param("بَبِ", "\ufe90\ufe91", id="harakat-dropped"),
    pytest.param("کی", "\ufef2\ufedb", id="persian-twins-as-arabic"),
]


@pytest.mark.parametrize(("logical", "visual"), SHAPING)
def test_shaping(logical: str, visual: str) -> None:
    assert to_visual(logical) == visual


def _rev(arabic: str) -> str:
    return to_visual(arabic)


ORDER = [
    pytest.param("Total 12.50", "Total 12.50", id="no-arabic-unchanged"),
    pytest.param("متجر 12", "12 " + _rev("متجر"), id="rtl-number-keeps-order"),
    pytest.param("خصم 12.50%", "12.50% " + _rev("خصم"), id="number-with-signs"),
    pytest.param("هاتف 4444 5555", "4444 5555 " + _rev("هاتف"), id="phone-number-as-typed"),
    pytest.param("متجر Doha 2", "Doha 2 " + _rev("متجر"), id="latin-run-keeps-order"),
    pytest.param("(متجر)", "(" + _rev("متجر") + ")", id="brackets-mirrored"),
    pytest.param("Tel 4444 متجر", "Tel 4444 " + _rev("متجر"), id="ltr-line-arabic-run-reversed"),
    pytest.param("Shop متجر 7", "Shop 7 " + _rev("متجر"), id="ltr-line-number-after-arabic"),
]


@pytest.mark.parametrize(("logical", "visual"), ORDER)
def test_visual_order(logical: str, visual: str) -> None:
    assert to_visual(logical) == visual


CP864 = [
    pytest.param("\ufe90", "\ufe8f", id="final-as-isolated"),
    pytest.param("\ufe92", "\ufe91", id="medial-as-initial"),
    pytest.param("\ufec3", "\ufec1", id="tah-initial-as-isolated"),
    pytest.param("\ufec4", "\ufec1", id="tah-medial-as-isolated"),
    pytest.param("\ufe87", "\ufe8d", id="alef-hamza-below-as-alef"),
    pytest.param("\ufe8a", "\ufef0", id="yeh-hamza-final-as-alef-maksura"),
    pytest.param("\ufef9", "\ufefb", id="lam-alef-hamza-below-as-lam-alef"),
    pytest.param("\ufecc", "\ufecc", id="ain-medial-is-there"),
    pytest.param("%", "\u066a", id="percent-is-0x25"),
    pytest.param("Tel 12", "Tel 12", id="ascii-kept"),
]


@pytest.mark.parametrize(("form", "nearest"), CP864)
def test_cp864_nearest_form(form: str, nearest: str) -> None:
    assert to_cp864(form) == nearest


def test_every_letter_form_has_a_cp864_byte() -> None:
    forms = "".join(chr(c) for c in range(0xFE80, 0xFEFD))
    to_cp864(forms).encode("cp864")  # strict: no form is left for '?'


# U+0621..U+063A and U+0641..U+064A: the letters of Arabic (U+063B..U+063F and the
# tatweel U+0640 between them are not letters of the language)
LETTERS = [chr(c) for c in (*range(0x0621, 0x063B), *range(0x0641, 0x064B))]


@pytest.mark.parametrize("letter", LETTERS)
def test_every_letter_in_every_position_encodes(letter: str) -> None:
    for word in (letter, "ب" + letter, letter + "ب", "ب" + letter + "ب"):
        to_cp864(to_visual(word)).encode("cp864")


STORES = [
    "متجر الدوحة",
    "مقهى السعادة",
    "مطعم الأصدقاء",
    "صيدلية النور 24",
    "مخبز (الخليج) - فرع 2",
    "سوق لؤلؤة قطر",
    "المجموع: 12.50 ر.ق",
    "خصم 10%",
]


@pytest.mark.parametrize("name", STORES)
def test_store_names_round_trip_through_the_printer(name: str) -> None:
    wire = encode([Line(name)])
    assert b"?" not in wire
    assert EscPosDecoder().feed(wire) == [Receipt(name)]


def test_letters_cp864_lacks_come_back_as_their_nearest() -> None:
    wire = encode([Line("إسلام")])  # no alef with hamza below in cp864
    assert EscPosDecoder().feed(wire) == [Receipt("اسلام")]


def test_ltr_line_ending_in_arabic_is_ambiguous() -> None:
    """Documented limit: the visual form is that of the right-to-left line."""
    assert to_visual("Tel متجر") == to_visual("متجر Tel")
    assert from_visual(to_visual("Tel متجر")) == "متجر Tel"


def test_has_arabic() -> None:
    assert has_arabic("abc ب")
    assert has_arabic("٣")  # Arabic-Indic digits need PC864 too
    assert not has_arabic("Total 12.50 \ufeff")


_ARABIC = st.sampled_from("ابتثجحخدذرزسشصضطظعغفقكلمنهويةىأإآؤئء")
_OTHER = st.sampled_from("abcXYZ0123456789٣ .,:-%$#+/()[]")


@given(st.lists(_ARABIC | _OTHER, max_size=30), _ARABIC)
def test_rtl_lines_round_trip(rest: list[str], first: str) -> None:
    """A line whose first letter is Arabic comes back exactly from its visual form
    (hamza below and yeh with hamza are fine here: cp864 is not involved)."""
    logical = first + "".join(rest)
    assert from_visual(to_visual(logical)) == logical
