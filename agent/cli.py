"""``sadad-agent``: the agent's command line (a small argparse dispatch).

Sub-commands:

* ``readers [--config PATH] [--reader NAME=SPEC ...] [--timeout S]``: the
  technician's reader check (``drivers.check``). Readers come from the
  ``[readers]`` table of the TOML config (``name = "KIND:PORT[;k=v...]"``),
  then ``--reader`` adds or replaces entries. ``--timeout 0`` only probes.
  Exit status 0 when every reader is ok, 1 when one is not, 2 on a usage or
  configuration error. Output shows masked card data only.

Add a sub-command by writing ``_cmd_<name>(args) -> int`` and registering its
parser in ``_parser()``.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tomllib
from collections.abc import Sequence
from pathlib import Path

__all__ = ["DEFAULT_CONFIG", "ConfigError", "load_reader_specs", "main"]

DEFAULT_CONFIG = "/etc/sadad-agent/agent.toml"


class ConfigError(Exception):
    """The configuration cannot be used; the text says where and why."""


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
        return 2
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
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    code: int = args.func(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
