"""The setup screen's edits to ``agent.toml``: comments kept, checked, atomic.

Contract (DESIGN.md "Processes": setup writes the config file, comments
kept, and asks the agent to reload):

* ``read_settings(text)`` takes the ECR Hub fields from the TOML text as
  they are written (paths unresolved), for the form.
* ``apply_settings(text, settings)`` returns the text with those fields
  replaced through tomlkit: every comment, blank line and untouched key
  stays where it was; a value that did not change is not rewritten; an
  empty optional field (the TLS files) removes its key; readers not in the
  form are removed, new ones are appended to ``[readers]``.
* ``save_settings(path, settings)`` applies the form to the file, validates
  the result with ``agent.config.loads_config`` (relative paths against the
  file's directory) and only then writes it: a temporary file in the same
  directory, fsynced, given the old file's mode, renamed over it, and the
  directory fsynced. A symlinked config is written through the link.

Everything raises ``agent.config.ConfigError`` (one line per problem):
invalid TOML, a bad readers line, what ``loads_config`` rejects, and a file
that cannot be read or written.
"""

from __future__ import annotations

import contextlib
import os
import re
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tomlkit
import tomlkit.exceptions
from tomlkit.items import Table

from agent.config import AgentConfig, ConfigError, loads_config

__all__ = [
    "EcrHubSettings",
    "apply_settings",
    "format_readers",
    "missing_tls_files",
    "parse_readers",
    "read_settings",
    "save_settings",
    "validate",
    "write_atomic",
]

_READER_LINE = re.compile(
    r"""^\s*(?P<name>[A-Za-z0-9_-]+)\s*=\s*(?:"(?P<q>[^"\\]*)"|'(?P<sq>[^']*)'|(?P<bare>\S.*?))\s*$"""
)


@dataclass(frozen=True, slots=True)
class EcrHubSettings:
    """Settings > General > ECR Hub, as the form holds them (text as written)."""

    broker_url: str = ""
    terminal_sn: str = ""
    ca_file: str = ""
    cert_file: str = ""
    key_file: str = ""
    gateway_url: str = ""
    readers: tuple[tuple[str, str], ...] = ()
    mode: str = "cloud"  # the only mode in this build; not stored in the file


# ---------------------------------------------------------------- reading


def _parse(text: str, file: str) -> tomlkit.TOMLDocument:
    try:
        return tomlkit.parse(text)
    except tomlkit.exceptions.ParseError as exc:
        raise ConfigError(f"{file}: line {exc.line}, column {exc.col}: invalid TOML") from exc


def _str(table: Any, key: str) -> str:
    if not isinstance(table, dict) or key not in table:
        return ""
    value = table[key]
    return str(value.unwrap() if hasattr(value, "unwrap") else value)


def read_settings(text: str, *, file: str = "agent.toml") -> EcrHubSettings:
    """The form's fields from the config text. Raises ConfigError for bad TOML."""
    doc = _parse(text, file)
    terminal, mqtt, gateway = doc.get("terminal"), doc.get("mqtt"), doc.get("gateway")
    readers = doc.get("readers")
    return EcrHubSettings(
        broker_url=_str(mqtt, "url"),
        terminal_sn=_str(terminal, "sn"),
        ca_file=_str(mqtt, "ca_file"),
        cert_file=_str(mqtt, "cert_file"),
        key_file=_str(mqtt, "key_file"),
        gateway_url=_str(gateway, "url"),
        readers=tuple((str(k), _str(readers, str(k))) for k in readers)
        if isinstance(readers, dict)
        else (),
    )


def parse_readers(text: str) -> tuple[tuple[str, str], ...]:
    """``NAME = "KIND:PORT[;key=value...]"`` lines -> pairs, in order.

    Blank lines and ``#`` comments are skipped; quotes are optional. Raises
    ConfigError naming each bad or repeated line (the specs themselves are
    checked by ``loads_config``).
    """
    out: dict[str, str] = {}
    problems: list[str] = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        m = _READER_LINE.match(line)
        if m is None:
            problems.append(
                f'readers line {n}: write NAME = "KIND:PORT", e.g. nfc = "pn532:/dev/ttyUSB0"'
            )
            continue
        name = m["name"]
        spec = next(v for v in (m["q"], m["sq"], m["bare"]) if v is not None).strip()
        if name in out:
            problems.append(f"readers line {n}: reader {name} is named twice")
            continue
        out[name] = spec
    if problems:
        raise ConfigError(problems)
    return tuple(out.items())


def format_readers(readers: tuple[tuple[str, str], ...]) -> str:
    return "\n".join(f"{name} = {tomlkit.string(spec).as_string()}" for name, spec in readers)


# ---------------------------------------------------------------- editing


def _table(doc: tomlkit.TOMLDocument, name: str) -> Table:
    table = doc.get(name)
    if not isinstance(table, Table):
        table = tomlkit.table()
        doc[name] = table
    return table


def _set(table: Table, key: str, value: str, *, optional: bool = False) -> None:
    if optional and not value.strip():
        if key in table:
            del table[key]
        return
    if key in table and _str(table, key) == value:
        return  # unchanged: leave the item (and its formatting) alone
    table[key] = value


def apply_settings(text: str, settings: EcrHubSettings, *, file: str = "agent.toml") -> str:
    """The config text with the form applied, comments kept. Raises ConfigError for bad TOML."""
    doc = _parse(text, file)
    _set(_table(doc, "terminal"), "sn", settings.terminal_sn.strip())
    mqtt = _table(doc, "mqtt")
    _set(mqtt, "url", settings.broker_url.strip())
    for key in ("ca_file", "cert_file", "key_file"):
        _set(mqtt, key, getattr(settings, key).strip(), optional=True)
    _set(_table(doc, "gateway"), "url", settings.gateway_url.strip())
    readers = _table(doc, "readers")
    wanted = dict(settings.readers)
    for name in [str(k) for k in readers if str(k) not in wanted]:
        del readers[name]
    for name, spec in wanted.items():
        _set(readers, name, spec)
    return tomlkit.dumps(doc)


def validate(text: str, path: Path) -> AgentConfig:
    """``loads_config`` as the agent will load the file at ``path``. Raises ConfigError."""
    return loads_config(text, file=path.name, base_dir=path.absolute().parent)


def missing_tls_files(cfg: AgentConfig) -> list[str]:
    """The TLS files the config names that do not exist (warnings, not errors:
    the UI may not be allowed to read what the agent can)."""
    out = []
    for key in ("ca_file", "cert_file", "key_file"):
        value = getattr(cfg.mqtt, key)
        if value is not None and not Path(value).exists():
            out.append(f"mqtt.{key}: {value}: no such file")
    return out


# ---------------------------------------------------------------- writing


def write_atomic(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` atomically (temp file + fsync + rename).

    The new file gets the old one's permission bits (0640 when new). Raises
    OSError.
    """
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
    except FileNotFoundError:
        mode = 0o640
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fchmod(fh.fileno(), mode)
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    with contextlib.suppress(OSError):
        dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def save_settings(path: str | os.PathLike[str], settings: EcrHubSettings) -> AgentConfig:
    """Apply ``settings`` to the config file, validate, write atomically.

    Returns the validated config. Nothing is written when the result does
    not validate or did not change. Raises ConfigError (bad TOML, bad
    readers, what ``loads_config`` rejects, or an I/O error reading or
    writing the file).
    """
    target = Path(os.path.realpath(path))
    try:
        old = target.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        why = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise ConfigError(f"{path}: cannot read: {why or exc}") from exc
    new = apply_settings(old, settings, file=target.name)
    cfg = validate(new, target)
    if new != old:
        try:
            write_atomic(target, new)
        except OSError as exc:
            raise ConfigError(f"{path}: cannot write: {exc.strerror or exc}") from exc
    return cfg
