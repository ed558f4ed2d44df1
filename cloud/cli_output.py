"""What ``sadad-pos`` prints, and the exit code it ends with (``cloud.cli``).

With ``--json`` a command prints exactly one JSON object on stdout
(``listen``: one per line): ``ok``, ``exit_code``, what it is about and, on
failure, ``error`` with its ``kind`` and ``message``; amounts are strings
with the currency's decimals (``"12.50"``). Without it, a summary in text on
stdout and errors on stderr. The orders and terminals in both forms are
here: ``order_json`` and ``terminal_json`` (the sandbox's extensions -
timeline, hops, terminal state - decoded), and their text.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import sys
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, TextIO

import msgspec

from cloud.errors import ContractError
from cloud.messages import OrderInfo, TerminalInfo, TransStatus, terminal_state, to_fields
from cloud.money import currency
from cloud.timeline import hop_lines, hop_rows, parse_timeline, why_pending

# The exit codes: the table in ``cloud.cli``'s docstring.
EXIT_OK = 0
EXIT_NOT_PAID = 1
EXIT_USAGE = 2
EXIT_UNAVAILABLE = 3
EXIT_REJECTED = 4
EXIT_INTERRUPTED = 130

STATUS_TEXT = {
    TransStatus.PREORDER: "waiting for the customer",
    TransStatus.PROCESSING: "payment in progress",
    TransStatus.CLOSED: "declined or closed",
    TransStatus.COMPLETED: "paid",
    TransStatus.CANCELLED: "cancelled",
}


def amount_text(value: Decimal, currency_code: str) -> str:
    """``value`` with its currency's decimals (as it is: an unknown currency)."""
    try:
        exponent = currency(currency_code).exponent
    except ContractError:
        return format(value, "f")
    return format(value.quantize(Decimal(1).scaleb(-exponent)), "f")


def order_json(info: OrderInfo) -> dict[str, Any]:
    """An OrderInfo as JSON-ready values: amounts as exact strings, status code
    and name; the sandbox's ``terminal_timeline`` and ``terminal_state`` as
    JSON values, the merged hops as ``terminal_hops`` rows and, for a waiting
    order, ``waiting``: why it waits."""
    out: dict[str, Any] = {}
    for key, value in to_fields(info).items():
        out[key] = amount_text(value, info.price_currency) if isinstance(value, Decimal) else value
    out["trans_status"] = int(info.trans_status)
    out["trans_status_name"] = info.trans_status.name
    with contextlib.suppress(ContractError):  # malformed extensions stay as their text
        timeline = parse_timeline(info.terminal_timeline)
        if timeline.events:
            out["terminal_timeline"] = [
                {k: v for k, v in dataclasses.asdict(e).items() if v is not None}
                for e in timeline.events
            ]
            out["terminal_hops"] = [dataclasses.asdict(r) for r in hop_rows(timeline.hops())]
    with contextlib.suppress(ContractError):
        state = terminal_state(info.terminal_state)
        if state is not None:
            out["terminal_state"] = msgspec.to_builtins(state)
    why = why_pending(info)
    if why:
        out["waiting"] = why
    return out


def timeline_lines(info: OrderInfo) -> list[str]:
    """The terminal's timeline of the payment, for ``query`` (sandbox only)."""
    try:
        timeline = parse_timeline(info.terminal_timeline)
    except ContractError as exc:
        return [f"terminal timeline unreadable: {exc}"]
    if not timeline.events:
        return []
    lines = ["terminal timeline (sandbox; ms since the terminal received the push):"]
    lines += hop_lines(timeline.hops())
    events = ", ".join(e.event + (f" ({e.reason})" if e.reason else "") for e in timeline.events)
    lines.append(f"terminal events: {events}")
    return lines


def order_summary(info: OrderInfo) -> str:
    status = info.trans_status
    lines = [f"{status.name} ({STATUS_TEXT[status]})"]
    rows: list[tuple[str, str | None]] = [
        ("order", info.merchant_order_no),
        ("trans_no", info.trans_no),
        ("terminal", info.terminal_sn),
        ("amount", f"{amount_text(info.trans_amount, info.price_currency)} {info.price_currency}"),
        ("method", info.pay_method_id),
        ("card", info.masked_pan),
        ("auth code", info.auth_code),
        ("ref no", info.ref_no),
        ("finished", info.trans_end_time),
    ]
    if info.trans_error_code or info.trans_error_msg:
        error = " ".join(x for x in (info.trans_error_code, info.trans_error_msg) if x)
        rows.append(("error", error))
    rows.append(("waiting", why_pending(info)))
    lines += [f"  {name:<10} {value}" for name, value in rows if value]
    return "\n".join(lines)


class Output:
    def __init__(self, json_mode: bool) -> None:
        self.json = json_mode

    @property
    def out(self) -> TextIO:
        return sys.stdout

    @property
    def err(self) -> TextIO:
        return sys.stderr

    def emit(self, obj: dict[str, Any], text: str | None) -> None:
        """Print the one JSON object (json mode) or the text."""
        if self.json:
            print(json.dumps(obj, ensure_ascii=False), file=self.out, flush=True)
        elif text is not None:
            print(text, file=self.out, flush=True)

    def fail(
        self,
        exit_code: int,
        kind: str,
        message: str,
        /,
        *,
        top: dict[str, Any] | None = None,
        **extra: Any,
    ) -> int:
        """Report an error (stderr, or the JSON object); returns ``exit_code``."""
        if self.json:
            error = {"kind": kind, "message": message, **extra}
            self.emit({"ok": False, "exit_code": exit_code, **(top or {}), "error": error}, None)
        else:
            print(f"sadad-pos: {message}", file=self.err, flush=True)
        return exit_code


def terminal_json(info: TerminalInfo) -> dict[str, Any]:
    """A TerminalInfo as JSON values: ``terminal_state`` decoded, and
    ``offline_within_s``, the bound within which the gateway learns of a
    silent loss (1.5 keepalives: the broker then publishes the will)."""
    out: dict[str, Any] = to_fields(info)
    state = terminal_state(info.terminal_state)
    if state is not None:
        out["terminal_state"] = msgspec.to_builtins(state)
        out["offline_within_s"] = (3 * state.keepalive + 1) // 2
    return out


def terminal_text(info: TerminalInfo) -> str:
    state = terminal_state(info.terminal_state)
    since = f" (status received {info.status_time} UTC)" if info.status_time else ""
    lines = [f"{info.terminal_sn} {info.terminal_online_status}{since}"]
    if state is None:
        lines.append("  the terminal never published a status")
        return "\n".join(lines)
    readers = ", ".join(f"{k} {v}" for k, v in state.readers.items()) or "none reported"
    rows = [
        ("screen", state.screen.value if state.screen else None),
        ("readers", readers if state.status == "online" else None),
        ("queue", f"{state.queue} waiting" if state.status == "online" else None),
        ("printer", state.printer.replace("_", " ") if state.printer else None),
        (
            "keepalive",
            f"{state.keepalive} s (a silent loss shows as offline within "
            f"{(3 * state.keepalive + 1) // 2} s)",
        ),
    ]
    lines += [f"  {name:<10} {value}" for name, value in rows if value]
    return "\n".join(lines)


def notification_line(info: OrderInfo) -> str:
    status = info.trans_status
    parts = [
        info.trans_end_time or datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S"),
        f"{status.name:<10}",
        info.merchant_order_no,
        f"trans_no={info.trans_no}",
        f"{amount_text(info.trans_amount, info.price_currency)} {info.price_currency}",
        f"terminal={info.terminal_sn}",
    ]
    if info.auth_code:
        parts.append(f"auth={info.auth_code}")
    if info.masked_pan:
        parts.append(f"card={info.masked_pan}")
    if info.trans_error_code or info.trans_error_msg:
        parts.append(f"error={info.trans_error_code or ''} {info.trans_error_msg or ''}".strip())
    return " ".join(parts)
