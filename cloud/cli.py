"""``sadad-pos``: push, query and close orders, receive notifications.

A command-line POS server for developers (docs/protocol.md parts A and B), built
on ``cloud.pos.AsyncPosClient`` and the config in ``pos.toml``
(``cloud.config``)::

    sadad-pos [--config PATH] [--json] push --terminal SN --amount 12.50 [--wait]
    sadad-pos query (--order-no X | --trans-no T)
    sadad-pos close --order-no X [--terminal SN] [--description T]
    sadad-pos terminal SN
    sadad-pos listen [--host 127.0.0.1] [--port 8090]

``listen`` (and ``push --wait``'s own receiver) takes a notification only
when it is about an order this POS created (docs/protocol.md part B: its
merchant, app, ``trans_no``, amount and currency; ``cloud.order_store``):
it answers anything else HTTP 400 and says why on stderr. ``listen`` sees
the orders ``push`` created through the config's ``order_store`` file
(the sandbox's ``pos.toml`` names one); without one it can bind nothing.

Against the sandbox, ``query`` also prints the terminal's timeline of the
payment (``cloud.timeline``) and why a waiting order waits, and ``terminal``
shows a terminal's live state: these use sandbox-only extensions.

``--config`` defaults to $SADAD_POS_CONFIG, else ./pos.toml. ``--json``
prints exactly one JSON object on stdout (``listen``: one per line);
amounts are strings with the currency's decimals (``"12.50"``).

Exit codes:

    0  success: the order is paid (``push --wait``), created (``push``),
       pending or paid (``query``), closed (``close``), online (``terminal``)
    1  the order is declined/closed (1) or cancelled (3); the terminal is
       offline (``terminal``)
    2  usage or config error (bad amount, missing key file ...)
    3  gateway unavailable, or ``--wait`` timed out (JSON ``kind``
       ``terminal_busy`` when the order still waits in a busy terminal's queue)
    4  gateway rejected the request (JSON ``kind`` ``terminal_offline`` for a
       ``--reject-offline`` push to an offline terminal)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import secrets
import signal
import sys
import time
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, NoReturn, TextIO

import msgspec

from cloud.config import ENV_VAR, PosConfig, load_config
from cloud.errors import (
    CloudRejected,
    CloudUnavailable,
    ConfigError,
    ContractError,
    NotOurOrder,
    TerminalBusy,
    TerminalOffline,
    WaitTimeout,
)
from cloud.messages import (
    OnlineStatus,
    OrderInfo,
    PayScenario,
    QueueMode,
    TerminalInfo,
    TransStatus,
    TransType,
    terminal_state,
    to_fields,
)
from cloud.money import check_amount, currency
from cloud.notify_server import NotifyServer, notification_handler
from cloud.pos import AsyncPosClient
from cloud.timeline import hop_lines, hop_rows, parse_timeline, why_pending

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

# Wire field -> the flag that sets it, for error messages.
_FLAGS = {
    "$.order_amount": "--amount",
    "$.tip_amount": "--tip",
    "$.price_currency": "--currency",
    "$.merchant_order_no": "--order-no",
    "$.orig_merchant_order_no": "--orig-order-no",
    "$.terminal_sn": "--terminal",
    "$.expires": "--expires",
    "$.description": "--description",
}

_SPINNER = "⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏"


class UsageError(Exception):
    """Bad command line (exit 2)."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{self.format_usage().rstrip()}\n{self.prog}: error: {message}")


def _make_client(config: PosConfig) -> AsyncPosClient:
    """The client the commands use (tests replace this to inject a transport)."""
    return AsyncPosClient(config)


# ---------------------------------------------------------------- formatting


def _amount_text(value: Decimal, currency_code: str) -> str:
    try:
        exponent = currency(currency_code).exponent
    except ContractError:
        return format(value, "f")
    return format(value.quantize(Decimal(1).scaleb(-exponent)), "f")


def _plain_message(exc: ContractError) -> str:
    return str(exc).split(" (field ")[0]


def order_json(info: OrderInfo) -> dict[str, Any]:
    """An OrderInfo as JSON-ready values: amounts as exact strings, status code
    and name; the sandbox's ``terminal_timeline`` and ``terminal_state`` as
    JSON values, the merged hops as ``terminal_hops`` rows and, for a waiting
    order, ``waiting``: why it waits."""
    out: dict[str, Any] = {}
    for key, value in to_fields(info).items():
        out[key] = _amount_text(value, info.price_currency) if isinstance(value, Decimal) else value
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


def _timeline_text(info: OrderInfo) -> list[str]:
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


def _summary(info: OrderInfo) -> str:
    status = info.trans_status
    lines = [f"{status.name} ({STATUS_TEXT[status]})"]
    rows: list[tuple[str, str | None]] = [
        ("order", info.merchant_order_no),
        ("trans_no", info.trans_no),
        ("terminal", info.terminal_sn),
        ("amount", f"{_amount_text(info.trans_amount, info.price_currency)} {info.price_currency}"),
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


class _Output:
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


class _Progress:
    """The live status line while ``push --wait`` waits (stderr, TTY only;
    one line per change when stderr is not a TTY; nothing in json mode)."""

    def __init__(
        self, output: _Output, terminal: str, amount: str, *, offline: bool = False
    ) -> None:
        self._output = output
        self._offline = offline
        self._prefix = f"{terminal} | {amount}"
        self._status = TransStatus.PREORDER
        self._why: str | None = None
        self._started = time.monotonic()
        self._task: asyncio.Task[None] | None = None
        err = output.err
        self._live = not output.json and err.isatty()
        encoding = (getattr(err, "encoding", None) or "").lower().replace("-", "")
        self._frames = _SPINNER if encoding == "utf8" else "|/-\\"
        if not output.json and not self._live:
            self._line()

    def _text(self) -> str:
        why = STATUS_TEXT[self._status]
        if self._why:
            why += f"; {self._why}"
        elif self._offline and self._status == TransStatus.PREORDER:
            why += "; terminal offline, it gets the order when it connects"
        return f"{self._prefix} | {self._status.name} ({why})"

    def _line(self) -> None:
        print(self._text(), file=self._output.err, flush=True)

    def update(self, info: OrderInfo) -> None:
        why = why_pending(info)  # e.g. busy terminal, queue position (sandbox)
        if (info.trans_status, why) == (self._status, self._why):
            return
        self._status, self._why = info.trans_status, why
        if not self._output.json and not self._live:
            self._line()

    async def _spin(self) -> None:
        err = self._output.err
        frame = 0
        while True:
            elapsed = int(time.monotonic() - self._started)
            glyph = self._frames[frame % len(self._frames)]
            err.write(f"\r{glyph} {self._text()} {elapsed}s\x1b[K")
            err.flush()
            frame += 1
            await asyncio.sleep(0.1)

    def start(self) -> None:
        if self._live:
            self._task = asyncio.create_task(self._spin())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
            self._output.err.write("\r\x1b[K")
            self._output.err.flush()


# ---------------------------------------------------------------- argument parsing


def _add_globals(parser: argparse.ArgumentParser, *, top: bool) -> None:
    # Accepted before and after the command. Separate action objects: the
    # command's copies must not overwrite what was given before the command.
    default: Any = None if top else argparse.SUPPRESS
    parser.add_argument(
        "--config",
        default=default,
        help=f"pos.toml to use (default: ${ENV_VAR}, else ./pos.toml)",
    )
    parser.add_argument(
        "--json",
        action="store_true",
        default=False if top else argparse.SUPPRESS,
        help="print one JSON object",
    )


def _build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="sadad-pos",
        description="Push, query and close Sadad cloud-ECR orders; receive notifications.",
        epilog="exit codes: 0 paid/success/online, 1 declined/closed/cancelled/offline, "
        "2 usage or config error, 3 gateway unavailable or timeout (also: terminal busy), "
        "4 gateway rejected (also: terminal offline)",
    )
    _add_globals(parser, top=True)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    push = sub.add_parser("push", help="create an order on a terminal")
    _add_globals(push, top=False)
    push.add_argument("--terminal", required=True, metavar="SN", help="terminal serial number")
    push.add_argument("--amount", required=True, help="order amount in major units, e.g. 12.50")
    push.add_argument("--currency", help="ISO 4217 code (default: the config's)")
    push.add_argument(
        "--order-no", help="merchant_order_no (default: generated POS-yyyymmddHHMMSS-xxxx)"
    )
    push.add_argument("--description")
    push.add_argument("--tip", metavar="AMOUNT", help="tip amount")
    push.add_argument("--type", choices=("sale", "void", "refund"), default="sale")
    push.add_argument("--orig-order-no", help="the paid order to void or refund")
    push.add_argument("--scenario", choices=[s.value for s in PayScenario])
    push.add_argument("--confirm", action="store_true", help="cashier confirms on the terminal")
    push.add_argument("--expires", type=int, metavar="S", help="seconds to wait for payment")
    push.add_argument("--filo", action="store_true", help="terminal queues this order FILO")
    push.add_argument(
        "--reject-offline", action="store_true", help="fail at once if the terminal is offline"
    )
    push.add_argument("--notify-url", help="notify_url to send (default: the config's)")
    push.add_argument(
        "--wait",
        action="store_true",
        help="wait for the final status (local notification receiver + polling)",
    )
    push.add_argument(
        "--timeout", type=float, metavar="S", help="with --wait: give up after S seconds"
    )

    query = sub.add_parser("query", help="show an order's current state")
    _add_globals(query, top=False)
    which = query.add_mutually_exclusive_group(required=True)
    which.add_argument("--order-no")
    which.add_argument("--trans-no")

    close = sub.add_parser("close", help="close an order still waiting (9)")
    _add_globals(close, top=False)
    close.add_argument("--order-no", required=True)
    close.add_argument(
        "--terminal", metavar="SN", help="terminal SN (default: looked up with order.query)"
    )
    close.add_argument("--description")

    terminal = sub.add_parser(
        "terminal", help="a terminal's live state: online, screen, readers, queue (sandbox)"
    )
    _add_globals(terminal, top=False)
    terminal.add_argument("sn", metavar="SN", help="terminal serial number")

    listen = sub.add_parser("listen", help="receive and verify notifications")
    _add_globals(listen, top=False)
    listen.add_argument("--host", default="127.0.0.1")
    listen.add_argument("--port", type=int, default=8090)
    return parser


def _parse_amount(text: str, currency_code: str, flag: str, *, allow_zero: bool) -> Decimal:
    try:
        value = Decimal(text.strip())
    except ArithmeticError:
        raise UsageError(f"{flag}: {text!r} is not an amount") from None
    try:
        return check_amount(value, currency_code, allow_zero=allow_zero)
    except ContractError as exc:
        raise UsageError(f"{flag}: {text!r}: {_plain_message(exc)}") from None


def generate_order_no() -> str:
    """``POS-yyyymmddHHMMSS-xxxx`` (UTC, 4 random hex digits): 24 characters."""
    return f"POS-{datetime.now(UTC):%Y%m%d%H%M%S}-{secrets.token_hex(2)}"


# ---------------------------------------------------------------- commands


async def _cmd_push(args: argparse.Namespace, output: _Output) -> int:
    config = load_config(args.config)
    currency_code = args.currency or config.default_currency
    try:
        currency(currency_code)
    except ContractError as exc:
        raise UsageError(f"--currency: {_plain_message(exc)}") from None
    amount = _parse_amount(args.amount, currency_code, "--amount", allow_zero=False)
    tip = None
    if args.tip is not None:
        tip = _parse_amount(args.tip, currency_code, "--tip", allow_zero=True)
    trans_type = {"sale": TransType.SALE, "void": TransType.VOID, "refund": TransType.REFUND}[
        args.type
    ]
    if trans_type != TransType.SALE and not args.orig_order_no:
        raise UsageError(f"--orig-order-no is required with --type {args.type}")
    if args.timeout is not None and not args.wait:
        raise UsageError("--timeout needs --wait")
    if args.timeout is not None and args.timeout <= 0:
        raise UsageError("--timeout must be greater than 0")
    order_no = args.order_no or generate_order_no()
    fields: dict[str, Any] = {
        "terminal_sn": args.terminal,
        "merchant_order_no": order_no,
        "price_currency": currency_code,
        "order_amount": amount,
        "tip_amount": tip,
        "description": args.description,
        "trans_type": trans_type,
        "orig_merchant_order_no": args.orig_order_no,
        "pay_scenario": args.scenario,
        "confirm_on_terminal": args.confirm,
        "order_queue_mode": QueueMode.FILO if args.filo else QueueMode.FIFO,
        "reject_trade_when_terminal_offline": args.reject_offline,
        "notify_url": args.notify_url,
    }
    if args.expires is not None:
        fields["expires"] = args.expires
    expires = int(fields.get("expires", 300))
    wait_s = args.timeout if args.timeout is not None else float(expires + 30)

    async with _make_client(config) as client:
        receiver: NotifyServer | None = None
        try:
            if args.wait and not args.notify_url:
                receiver = NotifyServer(notification_handler(client.accept_notification))
                await receiver.start()
                fields["notify_url"] = receiver.url
            mark = {"merchant_order_no": order_no}
            try:
                result = await client.push_order(**fields)
            except ContractError as exc:
                flag = _FLAGS.get(exc.field or "", exc.field or "order")
                raise UsageError(f"{flag}: {_plain_message(exc)}") from None
            except CloudUnavailable as exc:
                message = (
                    f"order {order_no}: {exc} - outcome unknown: query it, or push again "
                    f"with --order-no {order_no} and the same options"
                )
                return output.fail(EXIT_UNAVAILABLE, "unavailable", message, top=mark)
            except CloudRejected as exc:
                message = f"order {order_no}: {exc}"
                kind = "terminal_offline" if isinstance(exc, TerminalOffline) else "rejected"
                return output.fail(
                    EXIT_REJECTED, kind, message, top=mark, code=exc.code, msg=exc.msg
                )
            amount_text = f"{_amount_text(result.trans_amount, currency_code)} {currency_code}"
            base: dict[str, Any] = {
                "merchant_order_no": order_no,
                "trans_no": result.trans_no,
                "message_id": result.message_id,
                "terminal_sn": args.terminal,
                "terminal_online_status": str(result.terminal_online_status),
                "trans_amount": _amount_text(result.trans_amount, currency_code),
                "price_currency": currency_code,
            }
            created = (
                f"order {order_no} pushed to {args.terminal} ({amount_text}): "
                f"trans_no {result.trans_no}, terminal {result.terminal_online_status}"
            )
            if not args.wait:
                output.emit({"ok": True, "exit_code": EXIT_OK, **base}, created)
                return EXIT_OK
            if not output.json:
                print(created, file=output.err, flush=True)
            offline = result.terminal_online_status == OnlineStatus.OFFLINE
            progress = _Progress(output, args.terminal, amount_text, offline=offline)
            progress.start()
            try:
                info = await client.wait_for_final(order_no, wait_s, on_update=progress.update)
            except WaitTimeout as exc:
                await progress.stop()
                last = None if exc.last is None else order_json(exc.last)
                kind = "terminal_busy" if isinstance(exc, TerminalBusy) else "timeout"
                return output.fail(EXIT_UNAVAILABLE, kind, str(exc), top={**base, "order": last})
            except CloudRejected as exc:
                await progress.stop()
                return output.fail(
                    EXIT_REJECTED, "rejected", str(exc), top=base, code=exc.code, msg=exc.msg
                )
            finally:
                await progress.stop()
            code = EXIT_OK if info.trans_status == TransStatus.COMPLETED else EXIT_NOT_PAID
            output.emit(
                {"ok": code == EXIT_OK, "exit_code": code, **base, "order": order_json(info)},
                _summary(info),
            )
            return code
        finally:
            if receiver is not None:
                await receiver.close()


async def _cmd_query(args: argparse.Namespace, output: _Output) -> int:
    config = load_config(args.config)
    async with _make_client(config) as client:
        info = await client.query_order(args.order_no, args.trans_no)
    bad = info.trans_status in (TransStatus.CLOSED, TransStatus.CANCELLED)
    code = EXIT_NOT_PAID if bad else EXIT_OK
    text = "\n".join([_summary(info), *_timeline_text(info)])
    output.emit({"ok": code == EXIT_OK, "exit_code": code, "order": order_json(info)}, text)
    return code


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


def _terminal_text(info: TerminalInfo) -> str:
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
        (
            "keepalive",
            f"{state.keepalive} s (a silent loss shows as offline within "
            f"{(3 * state.keepalive + 1) // 2} s)",
        ),
    ]
    lines += [f"  {name:<10} {value}" for name, value in rows if value]
    return "\n".join(lines)


async def _cmd_terminal(args: argparse.Namespace, output: _Output) -> int:
    config = load_config(args.config)
    async with _make_client(config) as client:
        info = await client.terminal_status(args.sn)
    online = info.terminal_online_status is OnlineStatus.ONLINE
    code = EXIT_OK if online else EXIT_NOT_PAID
    output.emit(
        {"ok": online, "exit_code": code, "terminal": terminal_json(info)}, _terminal_text(info)
    )
    return code


async def _cmd_close(args: argparse.Namespace, output: _Output) -> int:
    config = load_config(args.config)
    async with _make_client(config) as client:
        result = await client.close_order(
            args.order_no, args.description, terminal_sn=args.terminal
        )
    output.emit(
        {
            "ok": True,
            "exit_code": EXIT_OK,
            "merchant_order_no": args.order_no,
            "trans_no": result.trans_no,
            "message_id": result.message_id,
        },
        f"order {args.order_no} closed (trans_no {result.trans_no})",
    )
    return EXIT_OK


def _notification_line(info: OrderInfo) -> str:
    status = info.trans_status
    parts = [
        info.trans_end_time or datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S"),
        f"{status.name:<10}",
        info.merchant_order_no,
        f"trans_no={info.trans_no}",
        f"{_amount_text(info.trans_amount, info.price_currency)} {info.price_currency}",
        f"terminal={info.terminal_sn}",
    ]
    if info.auth_code:
        parts.append(f"auth={info.auth_code}")
    if info.masked_pan:
        parts.append(f"card={info.masked_pan}")
    if info.trans_error_code or info.trans_error_msg:
        parts.append(f"error={info.trans_error_code or ''} {info.trans_error_msg or ''}".strip())
    return " ".join(parts)


async def _cmd_listen(args: argparse.Namespace, output: _Output) -> int:
    config = load_config(args.config)
    async with _make_client(config) as client:

        def handle(body: bytes) -> tuple[int, str]:
            try:
                note, new = client.accept_notification(body)
            except NotOurOrder as exc:
                # Genuine, but another merchant's, app's or order's result.
                print(f"refused notification: not our order: {exc}", file=output.err, flush=True)
                return 400, f"not our order: {exc}"
            except ContractError as exc:
                print(f"rejected notification: {exc}", file=output.err, flush=True)
                return 400, f"invalid notification: {exc}"
            if new:
                extra = {"notify_id": note.notify_id, "notify_time": note.notify_time}
                output.emit({**order_json(note), **extra}, _notification_line(note))
            else:
                print(
                    f"duplicate notification {note.notify_id} for {note.merchant_order_no} "
                    f"({note.trans_status.name})",
                    file=output.err,
                    flush=True,
                )
            return 200, "success"

        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.add_signal_handler(sig, stop.set)
        try:
            server = NotifyServer(handle, host=args.host, port=args.port)
            await server.start()
        except OSError as exc:
            raise UsageError(f"cannot listen on {args.host}:{args.port}: {exc.strerror}") from None
        try:
            if config.order_store is None:
                # This process creates no order, so its memory holds none:
                # every notification would be refused.
                print(
                    "warning: no order_store in the config: notifications cannot be bound to "
                    "the orders `sadad-pos push` created and will all be refused (HTTP 400); "
                    'add order_store = "pos-orders.db" to it',
                    file=output.err,
                    flush=True,
                )
            print(f"listening on {server.url} (Ctrl-C to stop)", file=output.err, flush=True)
            await stop.wait()
        finally:
            await server.close()
    return EXIT_OK


_COMMANDS = {
    "push": _cmd_push,
    "query": _cmd_query,
    "close": _cmd_close,
    "terminal": _cmd_terminal,
    "listen": _cmd_listen,
}


async def _run(args: argparse.Namespace, output: _Output) -> int:
    try:
        return await _COMMANDS[args.command](args, output)
    except UsageError as exc:
        return output.fail(EXIT_USAGE, "usage", str(exc))
    except ConfigError as exc:
        return output.fail(EXIT_USAGE, "config", str(exc))
    except CloudRejected as exc:
        return output.fail(EXIT_REJECTED, "rejected", str(exc), code=exc.code, msg=exc.msg)
    except CloudUnavailable as exc:
        return output.fail(EXIT_UNAVAILABLE, "unavailable", str(exc))
    except ContractError as exc:
        return output.fail(EXIT_USAGE, "invalid", str(exc))


def main(argv: list[str] | None = None) -> int:
    """Run ``sadad-pos``; returns the exit code (see the module docstring)."""
    args_list = sys.argv[1:] if argv is None else list(argv)
    output = _Output("--json" in args_list)
    try:
        args = _build_parser().parse_args(args_list)
    except UsageError as exc:
        return output.fail(EXIT_USAGE, "usage", str(exc))
    except SystemExit as exc:  # --help
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    output = _Output(bool(args.json))
    try:
        return asyncio.run(_run(args, output))
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
