"""``cloud.wirejson.loads`` is strict and bounded, and raises ContractError only."""

from __future__ import annotations

import contextlib
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
        (b"{", "not valid JSON"),
    ],
)
def test_refused(body: bytes, why: str) -> None:
    with pytest.raises(ContractError, match=why):
        wirejson.loads(body)


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
    import json

    try:
        text = json.dumps(value)
    except ValueError:
        return
    try:
        parsed = wirejson.loads(text)
    except ContractError:
        return
    wirejson.dumps(parsed).encode("utf-8")  # the signature's input: never raises
