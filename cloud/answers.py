"""Cashier answers bound to the question they answer (docs/protocol.md part D).

A gateway answer is signed, but a signature only says *who* wrote it, not
*which question* it answers: a man in the middle can hand a terminal an
earlier genuine answer ("completed"), the answer meant for another terminal,
or one held back for hours. So every cashier answer's ``data`` - failures
included - names what it answers (``cloud.messages.AnswerBinding``):

* ``request_no``: the create's idempotency key, or the attempt a detail,
  reverse or cancel is about (absent exactly when the question named none);
* ``trans_no``: the order;
* ``terminal_sn``: the terminal that asked;
* ``timestamp``: when the gateway answered, 13-digit ms, within the
  15-minute window of the common envelope.

``open_cashier_answer`` verifies the signature, checks that binding against
the ``Question`` the caller asked, and only then looks at ``code``: an
answer that fails any check raises ``UnboundAnswer``, which the terminal
treats exactly like no answer at all (the outcome stays unknown: detail,
then reverse - never APPROVED). Pure: the clock is passed in.

Raises: ``UnboundAnswer`` (a ``ContractError``), ``SignatureError`` and
``ContractError`` for what is not a valid signed answer, ``CloudRejected``
for a bound failure answer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, TypeVar

import msgspec

from cloud import wirejson
from cloud.errors import ContractError, rejection
from cloud.messages import MAX_CLOCK_SKEW_MS, AnswerBinding, decode
from cloud.signing import PublicKeyLike, verify

T = TypeVar("T", bound=msgspec.Struct)


class UnboundAnswer(ContractError):
    """A signed answer that does not answer the question asked: another
    request, order or terminal, stale, or naming nothing. No answer at all."""


@dataclass(frozen=True, slots=True)
class Question:
    """What a cashier call asked, to hold its answer against."""

    method: str
    trans_no: str
    terminal_sn: str
    request_no: str | None


def binding_for(question: Question, now_ms: int) -> AnswerBinding:
    """The binding a gateway writes into its answer to ``question`` at ``now_ms``."""
    return AnswerBinding(
        trans_no=question.trans_no,
        terminal_sn=question.terminal_sn,
        request_no=question.request_no,
        timestamp=str(now_ms),
    )


def check_binding(binding: AnswerBinding, question: Question, now_ms: int) -> None:
    """Raises UnboundAnswer naming the first field that does not fit."""
    expected = (
        ("trans_no", question.trans_no),
        ("terminal_sn", question.terminal_sn),
        ("request_no", question.request_no),
    )
    for name, want in expected:
        got = getattr(binding, name)
        if got != want:
            raise UnboundAnswer(
                f"{question.method} answer names {name} {_shown(got)}, "
                f"not the {_shown(want)} asked about",
                f"$.data.{name}",
            )
    stamp = binding.timestamp
    if stamp is None or not (stamp.isdigit() and len(stamp) == 13):
        raise UnboundAnswer(
            f"{question.method} answer carries no 13-digit timestamp", "$.data.timestamp"
        )
    age = now_ms - int(stamp)
    if abs(age) > MAX_CLOCK_SKEW_MS:
        raise UnboundAnswer(
            f"{question.method} answer is stamped {age / 60_000:+.1f} min off this clock "
            "(over 15 minutes: delayed, replayed or a wrong clock)",
            "$.data.timestamp",
        )


def open_cashier_answer(
    body: bytes, gateway_key: PublicKeyLike, type_: type[T], question: Question, *, now_ms: int
) -> T:
    """Verify an answer to ``question`` and decode its ``data`` as ``type_``.

    Raises SignatureError / ContractError (not a valid signed answer),
    UnboundAnswer (valid, but not an answer to ``question``), CloudRejected
    (a failure answer to ``question``).
    """
    obj = wirejson.loads(body)
    if not isinstance(obj, dict):
        raise ContractError("answer must be a JSON object")
    verify(obj, gateway_key)
    code = obj.get("code")
    if not isinstance(code, str):
        raise ContractError("code must be a string", "$.code")
    data = _data_object(obj.get("data"))
    if data is None:
        what = "answer" if code == "0" else f"refusal {code} {_shown(obj.get('msg'))}"
        raise UnboundAnswer(f"{question.method} {what} names no request", "$.data")
    check_binding(decode(data, AnswerBinding), question, now_ms)
    if code != "0":
        raise rejection(code, str(obj.get("msg", "")))
    return decode(data, type_)


def _data_object(data: Any) -> dict[str, Any] | None:
    """``data`` (a JSON text) as an object; None when absent or empty."""
    if data is None or data == "":
        return None
    if not isinstance(data, str):
        raise ContractError("data must be a JSON string", "$.data")
    parsed = wirejson.loads(data)
    if not isinstance(parsed, dict):
        raise ContractError("data must hold a JSON object", "$.data")
    return parsed


def _shown(value: object) -> str:
    """A short, printable rendering of a value from the wire (it may be hostile)."""
    if value is None:
        return "nothing"
    text = str(value)
    text = "".join(c if c.isprintable() and c.isascii() else "?" for c in text[:64])
    return repr(text)
