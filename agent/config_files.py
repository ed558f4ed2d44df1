"""The files agent.toml names: secrets read from them, and checks that they
exist, parse and cannot be replaced by someone else.

Secrets are never written in the config itself (a config is copied,
backed up and shown on screens); it names files: the MQTT password, the
technician PIN's hash, the keys. ``agent.config`` validates the names
without touching the files; this module reads them. Every problem is a line
``FILE: SECTION.KEY: PATH: what is wrong``, like the config's own.

``AgentConfig`` is imported for annotations only: ``agent.config``
re-exports these functions, so this module must not import it back.
"""

from __future__ import annotations

import os
import ssl
import stat
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from cloud.config_schema import ConfigError

if TYPE_CHECKING:
    from agent.config import AgentConfig, MqttConfig

__all__ = ["check_files", "mqtt_password", "technician_pin_hash", "trust_problems", "untrusted"]


def _where(cfg: AgentConfig) -> str:
    return str(cfg.source) if cfg.source is not None else "agent.toml"


def _read_small(path: Path, limit: int = 1 << 20) -> bytes:
    with path.open("rb") as fh:
        return fh.read(limit)


def _secret_text(where: str, key: str, path: Path) -> str:
    try:
        text = _read_small(path, 4096).decode("utf-8").strip()
    except OSError as exc:
        raise ConfigError(f"{where}: {key}: {path}: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{where}: {key}: {path}: not UTF-8 text") from exc
    if not text:
        raise ConfigError(f"{where}: {key}: {path}: the file is empty")
    return text


def untrusted(path: Path) -> str | None:
    """Why someone other than root or this process's user could change the
    file at ``path`` (a key the agent trusts, the PIN hash), or None if no one
    can. Like OpenSSH's StrictModes: the file, wherever a symlink leads, and
    its directory must be owned by root or by us and writable by no one else
    - else anyone in that group (the checkout's user, say) could put a key of
    theirs in its place. Raises OSError when the file cannot be looked at."""
    real = Path(os.path.realpath(path))
    me = os.geteuid()
    for target, what in ((real, "the file"), (real.parent, "its directory")):
        st = target.stat()
        if st.st_uid not in (0, me):
            return f"{what} {target} belongs to uid {st.st_uid}: make it root's"
        if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
            return f"{what} {target} can be written by its group or others: chmod go-w"
    return None


def technician_pin_hash(cfg: AgentConfig) -> str | None:
    """The technician PIN's hash (``agent.technician``), or None when setup has
    no PIN (it then stays locked).

    Raises ConfigError when the file cannot be read or holds no hash (a
    plain PIN included: the message says how to make a hash).
    """
    from agent.technician import PinHashError, check_hash

    path = cfg.terminal.technician_pin_file
    if path is None:
        return None
    key = "terminal.technician_pin_file"
    text = _secret_text(_where(cfg), key, path)
    try:
        return check_hash(text)
    except PinHashError as exc:
        raise ConfigError(f"{_where(cfg)}: {key}: {path}: {exc}") from None


def mqtt_password(mqtt: MqttConfig, *, file: str = "agent.toml") -> str | None:
    """The MQTT password from ``password_file``, or None when not set.

    Raises ConfigError when the file cannot be read or is empty.
    """
    if mqtt.password_file is None:
        return None
    return _secret_text(file, "mqtt.password_file", mqtt.password_file)


def trust_problems(cfg: AgentConfig) -> list[str]:
    """The files the agent trusts (the gateway's key, the PIN hash) that
    someone else could replace (``untrusted``), one line each."""
    out = []
    files = [("gateway.public_key_file", cfg.gateway.public_key_file)]
    if cfg.terminal.technician_pin_file is not None:
        files.append(("terminal.technician_pin_file", cfg.terminal.technician_pin_file))
    for key, path in files:
        try:
            why = untrusted(path)
        except OSError:
            continue  # reported as unreadable
        if why is not None:
            out.append(f"{_where(cfg)}: {key}: not trusted: {why}")
    return out


def check_files(cfg: AgentConfig) -> list[str]:
    """Problems with the files the config names: missing, unreadable, or not
    parsing as what they should hold. Empty when all is well. Never raises."""
    from cloud.errors import KeyLoadError
    from cloud.signing import load_private_key, load_public_key

    where = _where(cfg)
    problems: list[str] = []

    def read(key: str, path: Path) -> bytes | None:
        try:
            return _read_small(path)
        except OSError as exc:
            problems.append(f"{where}: {key}: {path}: {exc.strerror or exc}")
            return None

    def key_file(key: str, path: Path, load: Callable[[bytes], object]) -> None:
        data = read(key, path)
        if data is None:
            return
        try:
            load(data)
        except KeyLoadError as exc:
            problems.append(f"{where}: {key}: {path}: {exc}")

    key_file("terminal.private_key_file", cfg.terminal.private_key_file, load_private_key)
    key_file("gateway.public_key_file", cfg.gateway.public_key_file, load_public_key)
    problems.extend(trust_problems(cfg))
    try:
        technician_pin_hash(cfg)
    except ConfigError as exc:
        problems.extend(exc.problems)
    try:
        mqtt_password(cfg.mqtt, file=where)
    except ConfigError as exc:
        problems.extend(exc.problems)

    mqtt = cfg.mqtt
    if mqtt.ca_file is not None and read("mqtt.ca_file", mqtt.ca_file) is not None:
        try:
            ssl.create_default_context(cafile=str(mqtt.ca_file))
        except (ssl.SSLError, ValueError) as exc:
            problems.append(
                f"{where}: mqtt.ca_file: {mqtt.ca_file}: not a PEM CA certificate: {exc}"
            )
    if mqtt.cert_file is not None:
        ok = read("mqtt.cert_file", mqtt.cert_file) is not None
        if mqtt.key_file is not None:
            ok = read("mqtt.key_file", mqtt.key_file) is not None and ok
        if ok:
            try:
                ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
                ctx.load_cert_chain(
                    str(mqtt.cert_file), None if mqtt.key_file is None else str(mqtt.key_file)
                )
            except (ssl.SSLError, OSError) as exc:
                problems.append(
                    f"{where}: mqtt.cert_file: {mqtt.cert_file}: certificate and key do not "
                    f"load as a pair: {exc}"
                )
    return problems
