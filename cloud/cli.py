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

This module is the command line itself: its flags, which command runs, and
the exit code each error ends with. The commands are ``cloud.cli_commands``,
what they print ``cloud.cli_output`` and ``push --wait``'s status line
``cloud.cli_progress``.

Exit codes:

    0  success: the order is paid (``push --wait``), created (``push``),
       pending or paid (``query``), closed (``close``), online (``terminal``)
    1  the order is declined/closed (1) or cancelled (3); the terminal is
       offline (``terminal``)
    2  usage error (bad amount, unknown currency ...)
    3  gateway unavailable, or ``--wait`` timed out (JSON ``kind``
       ``terminal_busy`` when the order still waits in a busy terminal's queue)
    4  gateway rejected the request (JSON ``kind`` ``terminal_offline`` for a
       ``--reject-offline`` push to an offline terminal)
    78 config error (EX_CONFIG: pos.toml missing or wrong, a key file that
       does not load ...; JSON ``kind`` ``config``)
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any, NoReturn

from cloud.cli_commands import COMMANDS, UsageError
from cloud.cli_output import (
    EXIT_INTERRUPTED,
    EXIT_REJECTED,
    EXIT_UNAVAILABLE,
    EXIT_USAGE,
    Output,
)
from cloud.config import ENV_VAR, PosConfig
from cloud.config_schema import ConfigError
from cloud.errors import CloudRejected, CloudUnavailable, ContractError
from cloud.messages import PayScenario
from cloud.pos import AsyncPosClient


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{self.format_usage().rstrip()}\n{self.prog}: error: {message}")


def _make_client(config: PosConfig) -> AsyncPosClient:
    """The client the commands use (tests replace this to inject a transport)."""
    return AsyncPosClient(config)


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
        "2 usage error, 3 gateway unavailable or timeout (also: terminal busy), "
        "4 gateway rejected (also: terminal offline), 78 config error",
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


async def _run(args: argparse.Namespace, output: Output) -> int:
    try:
        return await COMMANDS[args.command](args, output, _make_client)
    except UsageError as exc:
        return output.fail(EXIT_USAGE, "usage", str(exc))
    except ConfigError as exc:
        return output.fail(ConfigError.exit_code, "config", str(exc))
    except CloudRejected as exc:
        return output.fail(EXIT_REJECTED, "rejected", str(exc), code=exc.code, msg=exc.msg)
    except CloudUnavailable as exc:
        return output.fail(EXIT_UNAVAILABLE, "unavailable", str(exc))
    except ContractError as exc:
        return output.fail(EXIT_USAGE, "invalid", str(exc))


def main(argv: list[str] | None = None) -> int:
    """Run ``sadad-pos``; returns the exit code (see the module docstring)."""
    args_list = sys.argv[1:] if argv is None else list(argv)
    output = Output("--json" in args_list)
    try:
        args = _build_parser().parse_args(args_list)
    except UsageError as exc:
        return output.fail(EXIT_USAGE, "usage", str(exc))
    except SystemExit as exc:  # --help
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    output = Output(bool(args.json))
    try:
        return asyncio.run(_run(args, output))
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
