"""What anyone can send: ``signing.verify`` raises only SignatureError, and
``envelope.open_push`` only PushRejected, whatever they are given (issue 13
part 1: a lone surrogate in a push's ``message_id`` once escaped as
UnicodeEncodeError and stopped the terminal)."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cloud import envelope, signing
from cloud import messages as m
from cloud.errors import SignatureError

GW_PRIVATE, GW_PUBLIC = signing.generate_key_pem()
SN = "T0001"
NOW = 1_800_000_000_000


def _deep(levels: int) -> list[Any]:
    value: list[Any] = []
    for _ in range(levels):
        value = [value]
    return value


@pytest.mark.parametrize(
    "params",
    [
        {"message_id": "m\ud800x", "sign": "eA=="},
        {"\udfff": "x", "sign": "eA=="},
        {"a": {"\ud800": 1}, "sign": "eA=="},
        {"a": _deep(5000), "sign": "eA=="},
        {1: "x", "sign": "eA=="},
        {"a": 1.5, "sign": "eA=="},
        {"a": Decimal("NaN"), "sign": "eA=="},
        {"a": object(), "sign": "eA=="},
    ],
    ids=[
        "surrogate",
        "surrogate-key",
        "nested-surrogate-key",
        "deep",
        "int-key",
        "float",
        "nan",
        "object",
    ],
)
def test_verify_raises_only_signature_error(params: dict[Any, Any]) -> None:
    with pytest.raises(SignatureError, match="unsignable"):
        signing.verify(params, GW_PUBLIC)


def _genuine(message_id: str = "msg-1") -> bytes:
    biz = m.PushOrder(
        trans_no="TR1",
        merchant_no="M0001",
        terminal_sn=SN,
        merchant_order_no="ORD-1",
        price_currency="QAR",
        order_amount=Decimal("12.50"),
        trans_type=m.TransType.SALE,
        expires_at=NOW + 60_000,
    )
    push = envelope.build_push(
        m.PushTopic.PAY_ORDER,
        biz,
        app_id="gw",
        private_key=GW_PRIVATE,
        message_id=message_id,
        ts_ms=NOW,
    )
    return msgspec.json.encode(push)


GENUINE = _genuine()


def test_the_genuine_push_opens() -> None:
    push, biz = envelope.open_push(GENUINE, GW_PUBLIC, SN, now=NOW)
    assert (push.message_id, biz.trans_no) == ("msg-1", "TR1")


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (GENUINE.replace(b'"msg-1"', b'"m\\ud800x"'), "malformed"),
        (GENUINE.replace(b'"message_id"', b'"\\udc00"'), "malformed"),
        (GENUINE.replace(b'{"', b'{"message_id":"evil","', 1), "malformed"),  # duplicate key
        (GENUINE.replace(b'{"', b'{"x":1e999999999,"', 1), "malformed"),
        (GENUINE.replace(b"12.50", b"1e999999999"), "bad_signature"),  # inside biz_data's text
        (GENUINE.replace(b'"msg-1"', b'"' + b"4" * 5000 + b'"'), "bad_signature"),
        (GENUINE.replace(b'"msg-1"', b"[" * 5000 + b"]" * 5000), "malformed"),
        (GENUINE.replace(b'"msg-1"', b"NaN"), "malformed"),
        (GENUINE.decode().encode("utf-16"), "malformed"),
        (b"\xef\xbb\xbf" + GENUINE, "malformed"),
        (GENUINE.replace(b'"msg-1"', b'"msg-2"'), "bad_signature"),
    ],
    ids=[
        "surrogate-id",
        "surrogate-key",
        "duplicate-id",
        "huge-number",
        "huge-number-in-biz-data",
        "long-id",
        "deep-id",
        "nan-id",
        "utf16",
        "bom",
        "forged-id",
    ],
)
def test_hostile_variants_of_a_genuine_push(payload: bytes, reason: str) -> None:
    with pytest.raises(envelope.PushRejected) as info:
        envelope.open_push(payload, GW_PUBLIC, SN, now=NOW)
    assert info.value.reason == reason
    assert info.value.message_id is None  # unverified: its id is nobody's word


def _mutations() -> st.SearchStrategy[bytes]:
    splice = st.tuples(
        st.integers(0, len(GENUINE)),
        st.integers(0, 40),
        st.sampled_from(
            [b"\\ud800", b'"', b"\\", b"[", b"{", b"}", b",", b"1e9999", b"\xff", b"\x00", b"NaN"]
        )
        | st.binary(max_size=12),
    )

    def apply(edits: list[tuple[int, int, bytes]]) -> bytes:
        out = GENUINE
        for at, cut, insert in edits:
            out = out[:at] + insert + out[at + cut :]
        return out

    return st.lists(splice, min_size=1, max_size=4).map(apply)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_mutations())
def test_open_push_raises_only_push_rejected(payload: bytes) -> None:
    try:
        push, _biz = envelope.open_push(payload, GW_PUBLIC, SN, now=NOW)
    except envelope.PushRejected as exc:
        rejected = exc
    else:
        # Only what the signature covers unchanged (whitespace, a null field) opens.
        assert push.message_id == "msg-1"
        return
    assert rejected.reason in {"malformed", "bad_signature", "wrong_terminal", "clock", "expired"}
    if rejected.message_id is not None:  # only a push the gateway signed keeps its id
        assert rejected.message_id == "msg-1"
