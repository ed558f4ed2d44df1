"""``cloud.wirejson.loads`` is strict and bounded, and raises ContractError only."""

from __future__ import annotations

import contextlib
import json
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cloud import wirejson
from cloud.errors import ContractError


@pytest.mark.parametrize(
    ("body", "why"),
    [
        (b'{"a":"\xff"}', "not UTF-8"),
        ('{"a":1}'.encode("utf-16"), "not UTF-8"),
        (b"\xef\xbb\xbf{}", "byte order mark"),
        (b'{"a":"m\\ud800x"}', "lone surrogate"),
        (b'{"\\udc00":1}', "lone surrogate"),
        (b'{"a":1,"a":2}', "duplicate key 'a'"),
        (b"[" * 33 + b"]" * 33, "nested more than 32"),
        (b"[" * 100_000, "nested"),
        (b'{"a":NaN}', "NaN"),
        (b'{"a":-Infinity}', "-Infinity"),
        (b'{"a":1e999999999}', "out of range"),
        (b'{"a":' + b"1" * 41 + b"}", "out of range"),
        (b'{"a":1e' + b"9" * 5000 + b"}", "out of range"),
        (b'{"a":1.' + b"0" * 60_000 + b"1}", "out of range"),
        (b'{"a":[' + b"[" * 40 + b'"unterminated', "nested more than 32"),
        (b'{"a":"' + b'\\"' * 10_000, "not valid JSON"),
        (b"{", "not valid JSON"),
    ],
)
def test_refused(body: bytes, why: str) -> None:
    with pytest.raises(ContractError, match=why):
        wirejson.loads(body)


def test_depth_is_counted_outside_strings_only() -> None:
    assert wirejson.loads(b"[" * 32 + b"]" * 32) is not None  # the limit itself is fine
    brackets = "[{" * 100
    assert wirejson.loads(b'{"a":"' + brackets.encode() + b'"}') == {"a": brackets}
    escaped = '{"a":"\\"[[[[","b":' + "[" * 31 + "]" * 31 + "}"  # 32 levels
    assert wirejson.loads(escaped)["a"] == '"[[[['


def test_deep_nesting_never_reaches_the_parser(monkeypatch: pytest.MonkeyPatch) -> None:
    """The text is refused before the (recursive) parser sees it, so it never
    recurses deeper than MAX_DEPTH, however deep its caller's stack is."""

    def parser(*_a: object, **_k: object) -> object:
        raise AssertionError("the parser saw it")

    monkeypatch.setattr(json, "loads", parser)
    for body in (b"[" * 33, b'{"a":' * 900, b"[" * 20 + b"{" * 20 + b"1"):
        with pytest.raises(ContractError, match="nested more than 32"):
            wirejson.loads(body)


def test_dumps_refuses_what_it_could_not_write_back() -> None:
    nested: list[object] = []
    for _ in range(40):
        nested = [nested]
    with pytest.raises(TypeError, match="nested more than 32"):
        wirejson.dumps({"a": nested})
    ok: list[object] = []
    for _ in range(30):
        ok = [ok]  # 31 levels, 32 in the object
    assert wirejson.loads(wirejson.dumps({"a": ok})) == {"a": ok}


def test_numbers_keep_their_text_and_pairs_are_fine() -> None:
    value = wirejson.loads(b'{"a":12.50,"b":100,"c":"\\ud83d\\ude00","d":[[[1]]]}')
    assert value["a"] == Decimal("12.50")
    assert wirejson.number_text(value["a"]) == "12.50"
    assert value["c"] == "\U0001f600"


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_any_bytes_give_a_value_or_contract_error(body: bytes) -> None:
    with contextlib.suppress(ContractError):
        wirejson.loads(body)


@settings(max_examples=200, deadline=None)
@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(),
        lambda kids: st.lists(kids, max_size=3) | st.dictionaries(st.text(), kids, max_size=3),
        max_leaves=20,
    )
)
def test_what_it_accepts_can_be_written_back(value: object) -> None:
    try:
        text = json.dumps(value)
    except ValueError:
        return
    try:
        parsed = wirejson.loads(text)
    except ContractError:
        return
    wirejson.dumps(parsed).encode("utf-8")  # the signature's input: never raises
