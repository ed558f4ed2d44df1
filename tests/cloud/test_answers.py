"""``cloud.answers``: a signed cashier answer counts only for its question."""

from __future__ import annotations

from typing import Any

import pytest

from cloud import answers, envelope
from cloud import messages as m
from cloud.errors import CloudRejected, ContractError, SignatureError
from cloud.signing import generate_key_pem

GW_PRIVATE, GW_PUBLIC = generate_key_pem()
OTHER_PRIVATE, _ = generate_key_pem()
NOW = 1_780_000_000_000
Q = answers.Question("cashier.pay.bankcard.trans.create", "TR1", "T0001", "T0001-TR1-1")


def _body(data: Any, *, code: str = "0", key: str = GW_PRIVATE) -> bytes:
    return envelope.encode(envelope.build_response(data, key, code=code, msg="m"))


def _result(**over: Any) -> m.CashierResult:
    fields: dict[str, Any] = {
        "trans_no": "TR1",
        "trans_status": m.TransStatus.COMPLETED,
        "request_no": "T0001-TR1-1",
        "terminal_sn": "T0001",
        "timestamp": str(NOW),
        **over,
    }
    return m.CashierResult(**fields)


def _open(body: bytes, question: answers.Question = Q) -> m.CashierResult:
    return answers.open_cashier_answer(body, GW_PUBLIC, m.CashierResult, question, now_ms=NOW)


def test_bound_answer_is_taken() -> None:
    assert _open(_body(_result())).trans_status is m.TransStatus.COMPLETED


def test_clock_window_is_fifteen_minutes_both_ways() -> None:
    edge = m.MAX_CLOCK_SKEW_MS
    _open(_body(_result(timestamp=str(NOW - edge))))
    _open(_body(_result(timestamp=str(NOW + edge))))
    for stamp in (NOW - edge - 1, NOW + edge + 1):
        with pytest.raises(answers.UnboundAnswer, match="off this clock"):
            _open(_body(_result(timestamp=str(stamp))))


@pytest.mark.parametrize(
    ("over", "field"),
    [
        ({"trans_no": "TR2"}, "trans_no"),
        ({"terminal_sn": "T0002"}, "terminal_sn"),
        ({"request_no": "T0001-TR1-2"}, "request_no"),
        ({"request_no": None}, "request_no"),
        ({"terminal_sn": None}, "terminal_sn"),
        ({"timestamp": None}, "timestamp"),
        ({"timestamp": "17800000000"}, "timestamp"),
        ({"timestamp": "abcdefghijklm"}, "timestamp"),
    ],
)
def test_answer_to_another_question_is_unbound(over: dict[str, Any], field: str) -> None:
    with pytest.raises(answers.UnboundAnswer) as info:
        _open(_body(_result(**over)))
    assert info.value.field == f"$.data.{field}"


def test_question_without_request_wants_an_answer_without_one() -> None:
    ping = answers.Question("cashier.trans.detail", "TR1", "T0001", None)
    _open(_body(_result(request_no=None)), ping)
    with pytest.raises(answers.UnboundAnswer, match="request_no"):
        _open(_body(_result()), ping)


def test_bound_refusal_raises_cloud_rejected() -> None:
    binding = answers.binding_for(Q, NOW)
    with pytest.raises(CloudRejected) as info:
        _open(_body(binding, code="40907"))
    assert info.value.code == "40907"


def test_refusal_that_names_nothing_or_another_request_is_unbound() -> None:
    with pytest.raises(answers.UnboundAnswer, match="refusal 40907 'm' names no request"):
        _open(_body(None, code="40907"))
    other = answers.binding_for(answers.Question("x", "TR1", "T0002", "T0001-TR1-1"), NOW)
    with pytest.raises(answers.UnboundAnswer, match="terminal_sn"):
        _open(_body(other, code="40907"))


def test_signature_is_checked_before_anything_else() -> None:
    with pytest.raises(SignatureError):
        _open(_body(_result(), key=OTHER_PRIVATE))
    with pytest.raises(ContractError):
        _open(b'{"code":"0","data":"[]","sign":"x"}')


def test_hostile_text_in_the_binding_is_shown_printable_and_short() -> None:
    with pytest.raises(answers.UnboundAnswer) as info:
        _open(_body(_result(trans_no="\x1b[2J" + "9" * 500)))
    text = str(info.value)
    assert "\x1b" not in text
    assert len(text) < 300
