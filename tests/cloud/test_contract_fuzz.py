"""Property tests: whatever arrives, only the contract's own errors escape."""

from __future__ import annotations

import contextlib
import json
from decimal import Decimal
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cloud import envelope, wirejson
from cloud import messages as m
from cloud.errors import CloudRejected, ContractError
from cloud.signing import generate_key_pem

MESSAGES: list[type[msgspec.Struct]] = [
    m.PayOrder,
    m.PayOrderResult,
    m.CloseOrder,
    m.CloseOrderResult,
    m.OrderQuery,
    m.OrderInfo,
    m.Notification,
    m.PushOrder,
    m.PushClose,
    m.Push,
    m.TerminalEvent,
    m.TerminalStatus,
    m.BankcardCreate,
    m.WalletCreate,
    m.TransDetail,
    m.TransReverse,
    m.TransCancel,
    m.CashierResult,
]
FIELDS = sorted({f for t in MESSAGES for f in t.__struct_fields__})
_, PUBLIC = generate_key_pem()

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.decimals(allow_nan=False, allow_infinity=False),
    st.text(max_size=40),
    st.sampled_from(["QAR", "KWD", "JPY", "12.50", "1", "9", "FIFO", "SWIPE_CARD", "online"]),
)
json_values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
objects = st.dictionaries(st.one_of(st.sampled_from(FIELDS), st.text(max_size=10)), json_values)


def _check_decode(obj: Any) -> None:
    for type_ in MESSAGES:
        with contextlib.suppress(ContractError):
            m.decode(obj, type_)


@given(st.one_of(objects, json_values))
@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
def test_decode_raises_only_contract_errors(obj: Any) -> None:
    _check_decode(obj)


@given(st.binary(max_size=200) | st.text(max_size=200).map(str.encode))
@settings(max_examples=300)
def test_receivers_raise_only_contract_errors(body: bytes) -> None:
    with pytest.raises((ContractError, CloudRejected)):
        envelope.open_response(body, PUBLIC, m.OrderInfo)
    with pytest.raises(envelope.PushRejected):
        envelope.open_push(body, PUBLIC, "T0001")
    with pytest.raises(ContractError):
        envelope.verify_notification(body, PUBLIC)
    with pytest.raises(ContractError):
        envelope.open_request(body, lambda _app: PUBLIC)


@given(objects)
@settings(max_examples=200)
def test_unsigned_objects_never_pass(obj: dict[str, Any]) -> None:
    body = json.dumps(obj, default=str).encode()
    with pytest.raises((ContractError, CloudRejected)):
        envelope.open_response(body, PUBLIC, m.OrderInfo)
    with pytest.raises(envelope.PushRejected):
        envelope.open_push(body, PUBLIC, "T0001")


@pytest.mark.slow
@given(st.one_of(objects, json_values))
@settings(max_examples=100_000, suppress_health_check=list(HealthCheck), deadline=None)
def test_decode_raises_only_contract_errors_long(obj: Any) -> None:
    _check_decode(obj)


def test_wire_json_round_trip_keeps_amount_text() -> None:
    text = '{"a":12.50,"b":[1,0.10],"c":"x"}'
    assert wirejson.dumps(wirejson.loads(text)) == text
    assert wirejson.loads("1.10") == Decimal("1.10")
