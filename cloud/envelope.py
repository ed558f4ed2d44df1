"""The signed envelope around every call, response, push, notification and event.

docs/protocol.md "Common envelope": flat JSON objects, system fields beside the
business fields, RSA2 ``sign``; responses carry ``data`` as a JSON *string*
and sign ``code``, ``msg``, ``data`` and ``psn``. Pure functions; the clock
is passed in (``now_ms``) so callers and tests control it.

Raises: ContractError / SignatureError for what we received, CloudRejected
for a well-formed failure answer.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any, TypeVar

import msgspec

from cloud import wirejson
from cloud.errors import ContractError, SignatureError, rejection
from cloud.messages import (
    MAX_CLOCK_SKEW_MS,
    EventKind,
    Method,
    Notification,
    OrderInfo,
    Push,
    PushClose,
    PushOrder,
    PushTopic,
    TerminalEvent,
    decode,
    to_fields,
)
from cloud.signing import PrivateKeyLike, PublicKeyLike, sign, verify

T = TypeVar("T", bound=msgspec.Struct)

ENTRY_PATH = "/api/entry"
CASHIER_PATH = "/api/cashier/entry"


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def timestamp(ms: int | None = None) -> str:
    """13-digit milliseconds since the epoch, as on the wire."""
    return str(now_ms() if ms is None else ms)


def check_clock(ts: object, now: int, field: str = "timestamp") -> int:
    """Raises ContractError when ``ts`` is not a ms timestamp within 15 minutes of ``now``."""
    text = str(ts) if isinstance(ts, str | int) and not isinstance(ts, bool) else ""
    if not (text.isdigit() and len(text) == 13):
        raise ContractError("must be a 13-digit millisecond timestamp", f"$.{field}")
    if abs(int(text) - now) > MAX_CLOCK_SKEW_MS:
        raise ContractError("is more than 15 minutes off the receiver's clock", f"$.{field}")
    return int(text)


def encode(params: dict[str, Any]) -> bytes:
    return wirejson.dumps(params).encode("utf-8")


# ---------------------------------------------------------------- requests


def build_request(
    method: Method | str,
    biz: msgspec.Struct | dict[str, Any],
    *,
    app_id: str,
    private_key: PrivateKeyLike,
    ts_ms: int | None = None,
) -> dict[str, Any]:
    """The signed flat request object for ``method``."""
    fields = to_fields(biz) if isinstance(biz, msgspec.Struct) else dict(biz)
    fields.update(
        app_id=app_id,
        method=str(method),
        format="JSON",
        charset="UTF-8",
        sign_type="RSA2",
        version="1.0",
        timestamp=timestamp(ts_ms),
    )
    fields["sign"] = sign(fields, private_key)
    return fields


def open_request(
    body: bytes,
    public_key_for: Callable[[str], PublicKeyLike | None],
    *,
    now: int | None = None,
) -> tuple[str, str, dict[str, Any]]:
    """Verify a request body; returns (method, app_id, all fields).

    Raises ContractError (unknown app, bad timestamp, bad system fields) and
    SignatureError.
    """
    obj = wirejson.loads(body)
    if not isinstance(obj, dict):
        raise ContractError("request must be a JSON object")
    app_id = obj.get("app_id")
    if not isinstance(app_id, str) or not app_id:
        raise ContractError("app_id is required", "$.app_id")
    method = obj.get("method")
    if not isinstance(method, str) or not method:
        raise ContractError("method is required", "$.method")
    if obj.get("sign_type", "RSA2") != "RSA2":
        raise ContractError("only RSA2 is supported", "$.sign_type")
    key = public_key_for(app_id)
    if key is None:
        raise ContractError(f"unknown app_id {app_id!r}", "$.app_id")
    verify(obj, key)
    check_clock(obj.get("timestamp"), now_ms() if now is None else now)
    return method, app_id, obj


# ---------------------------------------------------------------- responses


def build_response(
    data: msgspec.Struct | dict[str, Any] | None,
    private_key: PrivateKeyLike,
    *,
    code: str = "0",
    msg: str = "success",
    psn: str | None = None,
) -> dict[str, Any]:
    """A signed response; ``data`` is written as a JSON string."""
    if isinstance(data, msgspec.Struct):
        data = to_fields(data)
    out: dict[str, Any] = {
        "code": code,
        "msg": msg,
        "data": "" if data is None else wirejson.dumps(data),
        "psn": psn or uuid.uuid4().hex,
    }
    out["sign"] = sign(out, private_key)
    return out


def open_response(body: bytes, gateway_key: PublicKeyLike, type_: type[T]) -> T:
    """Verify a response and decode its ``data``.

    Raises SignatureError / ContractError when the answer is not a valid signed
    response (callers treat that as "outcome unknown"), CloudRejected when it
    is a valid failure answer (a subclass for the codes in
    ``cloud.errors.REJECTIONS``, e.g. TerminalOffline).
    """
    obj = wirejson.loads(body)
    if not isinstance(obj, dict):
        raise ContractError("response must be a JSON object")
    verify(obj, gateway_key)
    code = obj.get("code")
    if not isinstance(code, str):
        raise ContractError("code must be a string", "$.code")
    if code != "0":
        raise rejection(code, str(obj.get("msg", "")))
    data = obj.get("data")
    if not isinstance(data, str) or not data:
        raise ContractError("data must be a JSON string", "$.data")
    return decode(wirejson.loads(data), type_)


# ---------------------------------------------------------------- notifications


def build_notification(
    info: OrderInfo, private_key: PrivateKeyLike, *, notify_id: str, notify_time: str
) -> dict[str, Any]:
    fields = to_fields(info)
    fields.update(notify_id=notify_id, notify_time=notify_time, sign_type="RSA2")
    fields["sign"] = sign(fields, private_key)
    return fields


def verify_notification(body: bytes | dict[str, Any], gateway_key: PublicKeyLike) -> Notification:
    """Verify and decode a result notification. Raises SignatureError, ContractError."""
    obj = wirejson.loads(body) if isinstance(body, bytes | str) else body
    if not isinstance(obj, dict):
        raise ContractError("notification must be a JSON object")
    verify(obj, gateway_key)
    return decode(obj, Notification)


# ---------------------------------------------------------------- pushes (part C)


class PushRejected(ContractError):
    """A push the terminal must not act on; ``reason`` is the short code reported
    in the ``rejected`` event: ``malformed``, ``bad_signature``,
    ``wrong_terminal``, ``clock``, ``expired`` here; the terminal adds
    ``too_large`` (refused unread) and ``internal_error`` (a bug while taking
    a genuine push). ``message_id`` is the push's own id when its signature
    verified (a genuine push, refused for what it says), else None: an
    unverified push's claims, its id included, are the sender's word only."""

    def __init__(
        self,
        reason: str,
        message: str,
        message_id: str | None = None,
        *,
        topic: str | None = None,
        claimed_id: str | None = None,
    ) -> None:
        super().__init__(message)
        self.reason = reason
        self.message_id = message_id
        self.topic = topic  # the signed topic, with message_id
        self.claimed_id = claimed_id  # what an unverified push said its id was


def build_push(
    topic: PushTopic,
    biz: PushOrder | PushClose,
    *,
    app_id: str,
    private_key: PrivateKeyLike,
    message_id: str | None = None,
    ts_ms: int | None = None,
) -> Push:
    fields: dict[str, Any] = {
        "topic": str(topic),
        "message_id": message_id or uuid.uuid4().hex,
        "app_id": app_id,
        "timestamp": timestamp(ts_ms),
        "version": "1.0",
        "biz_data": wirejson.dumps(to_fields(biz)),
        "sign_type": "RSA2",
    }
    fields["sign"] = sign(fields, private_key)
    return decode(fields, Push)


def open_push(
    payload: bytes, gateway_key: PublicKeyLike, terminal_sn: str, *, now: int | None = None
) -> tuple[Push, PushOrder | PushClose]:
    """Everything the terminal checks before it acts on a push (part C).

    ``payload`` is whatever arrived on the orders topic, from anyone. Raises
    PushRejected with a reason code; never anything else, whatever the bytes.
    """
    try:
        return _open_push(payload, gateway_key, terminal_sn, now_ms() if now is None else now)
    except PushRejected:
        raise
    except Exception as exc:  # a check that tripped over the bytes: still a rejection
        raise PushRejected("malformed", f"unreadable push ({type(exc).__name__})") from None


def _open_push(
    payload: bytes, gateway_key: PublicKeyLike, terminal_sn: str, now: int
) -> tuple[Push, PushOrder | PushClose]:
    claimed: str | None = None
    try:
        obj = wirejson.loads(payload)
        if not isinstance(obj, dict):
            raise ContractError("push must be a JSON object")
        claimed_id = obj.get("message_id")
        claimed = claimed_id if isinstance(claimed_id, str) else None
        verify(obj, gateway_key)
    except SignatureError as exc:
        raise PushRejected("bad_signature", str(exc), claimed_id=claimed) from None
    except ContractError as exc:
        raise PushRejected("malformed", str(exc), claimed_id=claimed) from None
    # Signed by the gateway from here on: its message_id is a genuine one.
    message_id = claimed or None
    signed_topic = obj.get("topic")
    topic = signed_topic if isinstance(signed_topic, str) else None

    def refused(reason: str, why: str) -> PushRejected:
        return PushRejected(reason, why, message_id, topic=topic, claimed_id=claimed)

    try:
        push = decode(obj, Push)
        biz_type: type[PushOrder] | type[PushClose] = (
            PushOrder if push.topic is PushTopic.PAY_ORDER else PushClose
        )
        biz = decode(wirejson.loads(push.biz_data), biz_type)
    except ContractError as exc:
        raise refused("malformed", str(exc)) from None
    if biz.terminal_sn != terminal_sn:
        raise refused("wrong_terminal", "push is addressed to another terminal")
    try:
        check_clock(push.timestamp, now)
    except ContractError as exc:
        raise refused("clock", str(exc)) from None
    if isinstance(biz, PushOrder) and biz.expires_at <= now:
        raise refused("expired", "order expired before it could be shown")
    return push, biz


# ---------------------------------------------------------------- terminal events


def build_event(
    event: EventKind,
    *,
    terminal_sn: str,
    message_id: str,
    private_key: PrivateKeyLike,
    trans_no: str | None = None,
    reason: str | None = None,
    hops: dict[str, int] | None = None,
    ts_ms: int | None = None,
) -> TerminalEvent:
    fields: dict[str, Any] = {
        "event": str(event),
        "message_id": message_id,
        "terminal_sn": terminal_sn,
        "timestamp": timestamp(ts_ms),
        "trans_no": trans_no,
        "reason": reason,
        "hops": wirejson.dumps(hops) if hops else None,
        "sign_type": "RSA2",
    }
    fields = {k: v for k, v in fields.items() if v is not None}
    fields["sign"] = sign(fields, private_key)
    return decode(fields, TerminalEvent)


def open_event(payload: bytes, terminal_key: PublicKeyLike) -> TerminalEvent:
    """Verify a terminal event. Raises SignatureError, ContractError."""
    obj = wirejson.loads(payload)
    if not isinstance(obj, dict):
        raise ContractError("event must be a JSON object")
    verify(obj, terminal_key)
    return decode(obj, TerminalEvent)
