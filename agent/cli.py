"""``sadad-agent``: the agent's command line (a small argparse dispatch).

Sub-commands:

* ``run [--config PATH] [--log-level L]``: the daemon (``agent.service``);
  exit 78 on a bad config.
* ``config check [--config PATH]``: load and validate the config and its
  key files; exit 0 or 78 with every problem named.
* ``status [--config PATH] [--json]``: ask the running agent (UI socket)
  for its connection, readers, current transaction and queue.
* ``journal [--config PATH] [--limit N] [--show TRANS_NO]``: recent
  transactions (masked), or one payment's timeline with the gap between hops.
* ``doctor [--config PATH]``: config, keys, clock, broker, gateway, readers:
  one clear verdict each; exit 1 if any fails.
* ``readers [--config PATH] [--reader NAME=SPEC ...] [--timeout S]``: the
  technician's reader check (``drivers.check``). Readers come from the
  ``[readers]`` table of the TOML config (``name = "KIND:PORT[;k=v...]"``),
  then ``--reader`` adds or replaces entries. ``--timeout 0`` only probes.
  Exit status 0 when every reader is ok, 1 when one is not, 2 on a usage
  error, 78 on a configuration error. Output shows masked card data only.

Add a sub-command by writing ``_cmd_<name>(args) -> int`` and registering its
parser in ``_parser()``.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import tomllib
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from agent.paths import CONFIG_FILE
from cloud.config_schema import EX_CONFIG, ConfigError

if TYPE_CHECKING:
    from agent.config import AgentConfig
    from agent.journal import Journal

__all__ = ["DEFAULT_CONFIG", "load_reader_specs", "main"]

DEFAULT_CONFIG = str(CONFIG_FILE)


def load_reader_specs(path: Path, *, required: bool) -> dict[str, str]:
    """The ``[readers]`` table of the TOML file at ``path`` (name -> spec).

    A missing file gives ``{}`` unless ``required``. Raises ConfigError."""
    try:
        with path.open("rb") as handle:
            data = tomllib.load(handle)
    except FileNotFoundError:
        if required:
            raise ConfigError(f"{path}: no such file") from None
        return {}
    except OSError as exc:
        raise ConfigError(f"{path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    readers = data.get("readers", {})
    if not isinstance(readers, dict):
        raise ConfigError(f'{path}: [readers] must be a table of name = "KIND:PORT"')
    specs: dict[str, str] = {}
    for name, spec in readers.items():
        if not isinstance(spec, str):
            raise ConfigError(f'{path}: readers.{name} must be a string "KIND:PORT[;k=v]"')
        specs[name] = spec
    return specs


def _cmd_readers(args: argparse.Namespace) -> int:
    from drivers.check import check_readers, print_checks

    config = args.config or DEFAULT_CONFIG
    try:
        specs = load_reader_specs(Path(config), required=args.config is not None)
    except ConfigError as exc:
        print(f"sadad-agent: {exc}", file=sys.stderr)
        return EX_CONFIG
    for item in args.reader:
        name, eq, spec = item.partition("=")
        if not eq or not name.strip() or not spec.strip():
            print(f"sadad-agent: --reader {item!r} is not NAME=SPEC", file=sys.stderr)
            return 2
        specs[name.strip()] = spec.strip()
    if not specs:
        print(
            f"sadad-agent: no readers configured (no [readers] in {config}, no --reader)",
            file=sys.stderr,
        )
        return 2

    def prompt(names: list[str]) -> None:
        print(
            f"present a card or code to each reader ({', '.join(names)}) "
            f"within {args.timeout:g} s...",
            flush=True,
        )

    rows = asyncio.run(check_readers(specs, args.timeout, on_waiting=prompt))
    print_checks(rows)
    return 0 if all(row.verdict == "ok" for row in rows) else 1


def _load(args: argparse.Namespace) -> AgentConfig:
    from agent.config import load_config

    return load_config(args.config or DEFAULT_CONFIG)


def _cmd_run(args: argparse.Namespace) -> int:
    from agent.service import AgentService

    logging.basicConfig(
        level=getattr(logging, args.log_level.upper(), logging.INFO),
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # One line per callback is noise.
    logging.getLogger("transitions").setLevel(logging.WARNING)
    try:
        cfg = _load(args)
        return asyncio.run(AgentService(cfg).run())
    except ConfigError as exc:
        print(f"sadad-agent: {exc}", file=sys.stderr)
        return EX_CONFIG


def _cmd_config(args: argparse.Namespace) -> int:
    from agent.config import check_files

    try:
        cfg = _load(args)
    except ConfigError as exc:
        print(f"sadad-agent: {exc}", file=sys.stderr)
        return EX_CONFIG
    problems = check_files(cfg)
    for problem in problems:
        print(f"sadad-agent: {problem}", file=sys.stderr)
    if problems:
        return EX_CONFIG
    print(f"{cfg.source}: ok (terminal {cfg.terminal.sn}, {len(cfg.readers)} readers)")
    return 0


def _socket_path(args: argparse.Namespace) -> str:
    if args.socket:
        return str(args.socket)
    return str(_load(args).ui.socket)


def _cmd_status(args: argparse.Namespace) -> int:
    import msgspec

    from agent.bridge_client import query_status
    from agent.bridge_protocol import BridgeError

    try:
        data = asyncio.run(query_status(_socket_path(args), timeout=5.0))
    except ConfigError as exc:
        print(f"sadad-agent: {exc}", file=sys.stderr)
        return EX_CONFIG
    except (BridgeError, TimeoutError) as exc:
        print(f"sadad-agent: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(msgspec.json.encode(data).decode())
        return 0
    print(f"terminal   {data.sn}")
    print(f"broker     {data.mqtt} ({data.mqtt_reason})")
    print(f"gateway    {data.gateway}")
    print(f"screen     {data.screen}")
    readers = ", ".join(f"{k} {v}" for k, v in data.readers.items()) or "none configured"
    print(f"readers    {readers}")
    cur = data.current
    print("current    " + (f"{cur.trans_no} {cur.amount} ({cur.state})" if cur else "none"))
    print(f"queue      {len(data.queue)} waiting")
    if data.printer != "none":
        print(
            f"printer    {data.printer.replace('_', ' ')} ({data.printer_pending} receipts waiting)"
        )
    return 0


def _open_journal(args: argparse.Namespace) -> tuple[AgentConfig, Journal] | None:
    """The config and its journal, or None once the error is printed."""
    from agent.journal import Journal, JournalError

    try:
        cfg = _load(args)
        return cfg, Journal(cfg.journal.path)
    except (ConfigError, JournalError) as exc:
        print(f"sadad-agent: {exc}", file=sys.stderr)
        return None


def _cmd_journal(args: argparse.Namespace) -> int:
    from cloud.timeline import hop_lines

    opened = _open_journal(args)
    if opened is None:
        return EX_CONFIG
    _cfg, journal = opened
    try:
        if args.show:
            row = journal.get(args.show)
            if row is None:
                print(f"sadad-agent: no transaction {args.show}", file=sys.stderr)
                return 1
            print(
                f"{row.trans_no}  {row.merchant_order_no}  {row.trans_amount} {row.currency}  "
                f"{row.phase.value}  {row.masked_pan or ''}  {row.reason or ''}".rstrip()
            )
            for line in hop_lines(journal.hops(row.trans_no)):
                print(line)
            return 0
        rows = journal.recent(args.limit)
        if not rows:
            print("no transactions")
        for row in rows:
            print(
                f"{row.trans_no:<20} {row.merchant_order_no:<24} "
                f"{row.trans_amount:>10} {row.currency}  {row.phase.value:<16} "
                f"{row.masked_pan or '':<19} {row.reason or ''}".rstrip()
            )
        return 0
    finally:
        journal.close()


def _cmd_receipt(args: argparse.Namespace) -> int:
    """Print a receipt again on the running agent's printer, or (``--text``)
    show it here as it prints, from the journal (masked card at most)."""
    if args.text:
        from agent.printing import receipt_text

        opened = _open_journal(args)
        if opened is None:
            return EX_CONFIG
        cfg, journal = opened
        try:
            row = journal.get(args.trans_no)
        finally:
            journal.close()
        if row is None:
            print(f"sadad-agent: no transaction {args.trans_no}", file=sys.stderr)
            return 1
        print(receipt_text(row, cfg))
        return 0
    from agent.bridge_client import ask_once
    from agent.bridge_protocol import BridgeError, ReprintIntent
    from agent.bridge_replies import ReprintReply

    try:
        intent = ReprintIntent(id="cli-reprint", trans_no=args.trans_no)
        reply = asyncio.run(ask_once(_socket_path(args), intent, ReprintReply, timeout=5.0))
    except ConfigError as exc:
        print(f"sadad-agent: {exc}", file=sys.stderr)
        return EX_CONFIG
    except (BridgeError, TimeoutError) as exc:
        print(f"sadad-agent: {exc}", file=sys.stderr)
        return 1
    if not reply.ok:
        print(f"sadad-agent: {args.trans_no}: {reply.reason}", file=sys.stderr)
        return 1
    print(f"receipt for {reply.trans_no} queued for the printer")
    return 0


def _cmd_doctor(args: argparse.Namespace) -> int:
    from agent.doctor import run_doctor

    return asyncio.run(run_doctor(args.config or DEFAULT_CONFIG))


def _cmd_pin(args: argparse.Namespace) -> int:
    """Write the technician PIN's hash where the config's technician_pin_file
    says (or --file): read twice from the terminal, or once from stdin."""
    import getpass

    from agent.config import load_config
    from agent.config_edit import write_atomic
    from agent.technician import PIN, hash_pin

    target: Path | None = Path(args.file) if args.file else None
    if target is None:
        try:
            cfg = load_config(args.config or DEFAULT_CONFIG)
        except ConfigError as exc:
            print(f"sadad-agent pin: {exc}", file=sys.stderr)
            return ConfigError.exit_code
        target = cfg.terminal.technician_pin_file
        if target is None:
            print(
                "sadad-agent pin: the config names no terminal.technician_pin_file "
                "(add one, or pass --file)",
                file=sys.stderr,
            )
            return 2
    if args.stdin:
        pin = sys.stdin.readline().strip()
    else:
        pin = getpass.getpass("New technician PIN (4-12 digits): ")
        if getpass.getpass("Again: ") != pin:
            print("sadad-agent pin: the two PINs differ; nothing written", file=sys.stderr)
            return 1
    if not PIN.fullmatch(pin):
        print("sadad-agent pin: a technician PIN is 4-12 digits; nothing written", file=sys.stderr)
        return 1
    target.parent.mkdir(parents=True, exist_ok=True)
    if not target.exists():
        target.touch(mode=0o600)
    write_atomic(target, hash_pin(pin) + "\n")
    print(f"technician PIN hash written to {target}; the agent reads it at the next unlock")
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sadad-agent", description="Sadad terminal agent.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    readers = sub.add_parser("readers", help="check the card readers (technician)")
    readers.add_argument("--config", default=None, help=f"config file (default {DEFAULT_CONFIG})")
    readers.add_argument(
        "--reader", action="append", default=[], metavar="NAME=SPEC", help="add/replace a reader"
    )
    readers.add_argument(
        "--timeout", type=float, default=30.0, help="seconds to wait for a presentation (0: probe)"
    )
    readers.set_defaults(func=_cmd_readers)

    run = sub.add_parser("run", help="run the daemon (systemd: Type=notify)")
    run.add_argument("--config", default=None, help=f"config file (default {DEFAULT_CONFIG})")
    run.add_argument("--log-level", default="info", choices=["debug", "info", "warning"])
    run.set_defaults(func=_cmd_run)

    config = sub.add_parser("config", help="configuration tools")
    config_sub = config.add_subparsers(dest="config_command", required=True, metavar="ACTION")
    check = config_sub.add_parser("check", help="validate the config and its key files")
    check.add_argument("--config", default=None, help=f"config file (default {DEFAULT_CONFIG})")
    check.set_defaults(func=_cmd_config)

    status = sub.add_parser("status", help="what the running agent is doing")
    status.add_argument("--config", default=None)
    status.add_argument("--socket", default=None, help="UI socket (default: from the config)")
    status.add_argument("--json", action="store_true")
    status.set_defaults(func=_cmd_status)

    journal = sub.add_parser("journal", help="recent transactions, masked")
    journal.add_argument("--config", default=None)
    journal.add_argument("--limit", type=int, default=20)
    journal.add_argument("--show", metavar="TRANS_NO", help="one payment's timeline")
    journal.set_defaults(func=_cmd_journal)

    receipt = sub.add_parser("receipt", help="print a transaction's receipt again")
    receipt.add_argument("trans_no", metavar="TRANS_NO")
    receipt.add_argument("--config", default=None)
    receipt.add_argument("--socket", default=None, help="UI socket (default: from the config)")
    receipt.add_argument(
        "--text", action="store_true", help="show it here instead, from the journal"
    )
    receipt.set_defaults(func=_cmd_receipt)

    pin = sub.add_parser("pin", help="the technician PIN (kept as a scrypt hash)")
    pin_sub = pin.add_subparsers(dest="pin_command", required=True, metavar="ACTION")
    pin_set = pin_sub.add_parser("set", help="write a new PIN's hash to technician_pin_file")
    pin_set.add_argument("--config", default=None, help=f"config file (default {DEFAULT_CONFIG})")
    pin_set.add_argument("--file", default=None, help="write here instead of the config's file")
    pin_set.add_argument("--stdin", action="store_true", help="read the PIN from stdin, once")
    pin_set.set_defaults(func=_cmd_pin)

    doctor = sub.add_parser("doctor", help="check config, keys, clock, broker, gateway, readers")
    doctor.add_argument("--config", default=None)
    doctor.set_defaults(func=_cmd_doctor)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    code: int = args.func(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
