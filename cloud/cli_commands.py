"""The ``sadad-pos`` commands: push, query, close, terminal, listen.

Each takes the parsed command line, the ``Output`` it reports through and
the factory of its ``AsyncPosClient`` (``cloud.cli`` passes its own, which
tests replace to inject a transport), and returns the exit code. A flag that
is wrong raises ``UsageError`` (exit 2); the gateway's and the config's
errors propagate to ``cloud.cli``, which turns each into its exit code,
except where a command says more (``push``: the order number to query or
push again with when the outcome is unknown).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import secrets
import signal
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from cloud.cli_output import (
    EXIT_NOT_PAID,
    EXIT_OK,
    EXIT_REJECTED,
    EXIT_UNAVAILABLE,
    Output,
    amount_text,
    notification_line,
    order_json,
    order_summary,
    terminal_json,
    terminal_text,
    timeline_lines,
)
from cloud.cli_progress import Progress
from cloud.config import PosConfig, load_config
from cloud.errors import (
    CloudRejected,
    CloudUnavailable,
    ContractError,
    NotOurOrder,
    TerminalBusy,
    TerminalOffline,
    WaitTimeout,
)
from cloud.messages import OnlineStatus, QueueMode, TransStatus, TransType
from cloud.money import check_amount, currency
from cloud.notify_server import NotifyServer, notification_handler
from cloud.pos import AsyncPosClient

# What a command makes its client with (``cloud.cli._make_client``).
ClientFactory = Callable[[PosConfig], AsyncPosClient]

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


class UsageError(Exception):
    """Bad command line (exit 2)."""


def _plain_message(exc: ContractError) -> str:
    return str(exc).split(" (field ")[0]


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


async def cmd_push(args: argparse.Namespace, output: Output, make_client: ClientFactory) -> int:
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

    async with make_client(config) as client:
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
            amount_shown = f"{amount_text(result.trans_amount, currency_code)} {currency_code}"
            base: dict[str, Any] = {
                "merchant_order_no": order_no,
                "trans_no": result.trans_no,
                "message_id": result.message_id,
                "terminal_sn": args.terminal,
                "terminal_online_status": str(result.terminal_online_status),
                "trans_amount": amount_text(result.trans_amount, currency_code),
                "price_currency": currency_code,
            }
            created = (
                f"order {order_no} pushed to {args.terminal} ({amount_shown}): "
                f"trans_no {result.trans_no}, terminal {result.terminal_online_status}"
            )
            if not args.wait:
                output.emit({"ok": True, "exit_code": EXIT_OK, **base}, created)
                return EXIT_OK
            if not output.json:
                print(created, file=output.err, flush=True)
            offline = result.terminal_online_status == OnlineStatus.OFFLINE
            progress = Progress(output, args.terminal, amount_shown, offline=offline)
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
                order_summary(info),
            )
            return code
        finally:
            if receiver is not None:
                await receiver.close()


async def cmd_query(args: argparse.Namespace, output: Output, make_client: ClientFactory) -> int:
    config = load_config(args.config)
    async with make_client(config) as client:
        info = await client.query_order(args.order_no, args.trans_no)
    bad = info.trans_status in (TransStatus.CLOSED, TransStatus.CANCELLED)
    code = EXIT_NOT_PAID if bad else EXIT_OK
    text = "\n".join([order_summary(info), *timeline_lines(info)])
    output.emit({"ok": code == EXIT_OK, "exit_code": code, "order": order_json(info)}, text)
    return code


async def cmd_terminal(args: argparse.Namespace, output: Output, make_client: ClientFactory) -> int:
    config = load_config(args.config)
    async with make_client(config) as client:
        info = await client.terminal_status(args.sn)
    online = info.terminal_online_status is OnlineStatus.ONLINE
    code = EXIT_OK if online else EXIT_NOT_PAID
    output.emit(
        {"ok": online, "exit_code": code, "terminal": terminal_json(info)}, terminal_text(info)
    )
    return code


async def cmd_close(args: argparse.Namespace, output: Output, make_client: ClientFactory) -> int:
    config = load_config(args.config)
    async with make_client(config) as client:
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


async def cmd_listen(args: argparse.Namespace, output: Output, make_client: ClientFactory) -> int:
    config = load_config(args.config)
    async with make_client(config) as client:

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
                output.emit({**order_json(note), **extra}, notification_line(note))
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


Command = Callable[[argparse.Namespace, Output, ClientFactory], Awaitable[int]]

COMMANDS: dict[str, Command] = {
    "push": cmd_push,
    "query": cmd_query,
    "close": cmd_close,
    "terminal": cmd_terminal,
    "listen": cmd_listen,
}
