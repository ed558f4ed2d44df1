"""The agent's configuration file: TOML in, frozen typed structs out, exact errors.

Contract:

* ``load_config(path=DEFAULT_PATH) -> AgentConfig`` reads ``agent.toml``
  (tomllib) and validates it; ``loads_config(text, file=..., base_dir=...)``
  does the same for text (the setup screen checks an edit before writing it).
  Both raise ``ConfigError`` and nothing else. Its text is one line per
  problem, each ``FILE: SECTION.KEY: what is wrong and what is allowed, got
  VALUE``, e.g. ``agent.toml: mqtt.keepalive: must be an integer 5..3600,
  got "abc"``; a TOML syntax error gives ``FILE: line L, column C: invalid
  TOML: ...``. Unknown sections and keys are errors (a typo must not pass
  silently); secrets (the technician PIN) are never echoed.
* Sections: ``[terminal]``, ``[mqtt]``, ``[gateway]`` are required;
  ``[journal]``, ``[ui]``, ``[readers]`` have defaults. The file written by
  ``sadad-sandbox provision`` loads as it is. ``dump_example()`` is the
  commented reference (``systemd/agent.toml.example``).
* Secrets are file paths (terminal private key, gateway public key, TLS
  files, MQTT password, technician PIN); every path that is relative
  resolves against the directory of the config file. ``load_config`` does
  not touch those files; ``check_files(cfg) -> list[str]`` reports each that
  is missing, unreadable or does not parse (RSA keys through
  ``cloud.signing``, TLS files through ``ssl``), in the same format.
* MQTT: ``mqtt://`` or ``mqtts://`` (TLS, port 8883 by default);
  ``session_expiry`` at least 24 h (docs/protocol.md part C: "session expiry at
  least 24 h"); ``protocol`` ``"5"`` (falls back to 3.1.1 when the broker
  refuses 5) or ``"3.1.1"``.
* Readers: ``NAME = "KIND:PORT[;key=value...]"`` checked with
  ``drivers.registry.parse_spec``.
* ``ConfigError.exit_code`` is 78 (``EX_CONFIG``, sysexits.h): the unit's
  ``RestartPreventExitStatus=78`` keeps systemd from restarting a daemon that
  cannot start until a person fixes the file.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import ssl
import stat
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import date, datetime, time
from pathlib import Path
from typing import Any, Literal, cast
from urllib.parse import urlsplit

import msgspec

from cloud.errors import SadadError

__all__ = [
    "DEFAULT_PATH",
    "EXIT_CONFIG",
    "AgentConfig",
    "ConfigError",
    "GatewayConfig",
    "JournalConfig",
    "MqttConfig",
    "TerminalConfig",
    "UiConfig",
    "check_files",
    "dump_example",
    "load_config",
    "loads_config",
    "mqtt_password",
    "parse_mqtt_url",
    "technician_pin_hash",
]

DEFAULT_PATH = Path("/etc/sadad-agent/agent.toml")
EXIT_CONFIG = 78  # EX_CONFIG, sysexits.h

DEFAULT_JOURNAL = Path("/var/lib/sadad-agent/journal.db")
DEFAULT_SOCKET = Path("/run/sadad-agent/agent.sock")
MIN_SESSION_EXPIRY = 86_400  # docs/protocol.md part C: at least 24 h
MAX_SESSION_EXPIRY = 0xFFFF_FFFF  # MQTT 5 Session Expiry Interval: "never expires"

_SN = re.compile(r"[A-Za-z0-9_-]{1,32}")
_READER_NAME = re.compile(r"[A-Za-z0-9_-]{1,32}")
_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
_TOML_WHERE = re.compile(
    r"^(?P<msg>.*) \(at (?:line (?P<line>\d+), column (?P<col>\d+)|end of document)\)$"
)


class ConfigError(SadadError):
    """The configuration cannot be used. ``problems`` holds one line per problem."""

    exit_code = EXIT_CONFIG

    def __init__(self, problems: str | list[str]) -> None:
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("\n".join(self.problems))


# ---------------------------------------------------------------- typed config


class TerminalConfig(msgspec.Struct, frozen=True, kw_only=True):
    sn: str
    app_id: str
    private_key_file: Path
    store_name: str = ""
    technician_pin_file: Path | None = None


class MqttConfig(msgspec.Struct, frozen=True, kw_only=True):
    url: str
    # Other nodes of the same broker cluster, tried in order when the one in
    # use is down (the session is the cluster's, so it follows the terminal).
    fallback_urls: tuple[str, ...] = ()
    keepalive: int = 30
    session_expiry: int = MIN_SESSION_EXPIRY
    protocol: Literal["5", "3.1.1"] = "5"
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    username: str | None = None
    password_file: Path | None = None

    @property
    def urls(self) -> tuple[str, ...]:
        """Every broker URL, in the order they are tried."""
        return (self.url, *self.fallback_urls)

    @property
    def host(self) -> str:
        """Raises ConfigError for a bad ``url``."""
        return parse_mqtt_url(self.url)[0]

    @property
    def port(self) -> int:
        """Raises ConfigError for a bad ``url``."""
        return parse_mqtt_url(self.url)[1]

    @property
    def tls(self) -> bool:
        """Raises ConfigError for a bad ``url``."""
        return parse_mqtt_url(self.url)[2]


class GatewayConfig(msgspec.Struct, frozen=True, kw_only=True):
    url: str
    public_key_file: Path
    timeout: float = 15.0
    resolve_deadline: float = 60.0
    allow_plain_http: bool = False

    @property
    def plain_http_off_host(self) -> bool:
        """``url`` is plain http:// to a host other than loopback (labs only)."""
        parts = urlsplit(self.url)
        return parts.scheme == "http" and not is_loopback_host(parts.hostname or "")


class JournalConfig(msgspec.Struct, frozen=True, kw_only=True):
    path: Path = DEFAULT_JOURNAL
    keep_days: int = 90


class UiConfig(msgspec.Struct, frozen=True, kw_only=True):
    socket: Path = DEFAULT_SOCKET
    result_seconds: float = 4.0  # agent.states.RESULT_SECONDS
    socket_group: str | None = None


class AgentConfig(msgspec.Struct, frozen=True, kw_only=True):
    """The whole file. ``source`` is the file it came from (for reload and setup)."""

    terminal: TerminalConfig
    mqtt: MqttConfig
    gateway: GatewayConfig
    journal: JournalConfig = msgspec.field(default_factory=JournalConfig)
    ui: UiConfig = msgspec.field(default_factory=UiConfig)
    readers: dict[str, str] = msgspec.field(default_factory=dict)
    source: Path | None = None


# ---------------------------------------------------------------- URLs


def parse_mqtt_url(url: str) -> tuple[str, int, bool]:
    """``mqtt://HOST[:PORT]`` or ``mqtts://HOST[:PORT]`` -> (host, port, tls).

    Raises ConfigError (the text says what is allowed).
    """
    allowed = "must be mqtt://HOST[:PORT] or mqtts://HOST[:PORT]"
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise ConfigError(f"{allowed} ({exc})") from exc
    if parts.scheme not in ("mqtt", "mqtts"):
        raise ConfigError(allowed)
    if not parts.hostname:
        raise ConfigError(f"{allowed} (the host is missing)")
    if parts.username is not None or parts.password is not None:
        raise ConfigError(
            f"{allowed} (no user or password in the URL: use username, password_file)"
        )
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ConfigError(f"{allowed} (no path, query or fragment)")
    tls = parts.scheme == "mqtts"
    return parts.hostname, port if port else (8883 if tls else 1883), tls


def is_loopback_host(host: str) -> bool:
    """127.0.0.0/8, ::1 or ``localhost``: traffic that never leaves the machine."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _check_http_url(url: str) -> None:
    allowed = "must be http://HOST[:PORT][/PATH] or https://HOST[:PORT][/PATH]"
    show = "@" not in url  # user info may hold a password: do not echo it
    try:
        parts = urlsplit(url)
        _ = parts.port
    except ValueError as exc:
        raise _Invalid(f"{allowed} ({exc})", show_value=show) from exc
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise _Invalid(allowed, show_value=show)
    if parts.username is not None or parts.query or parts.fragment:
        raise _Invalid(f"{allowed} (no user, query or fragment)", show_value=show)


# ---------------------------------------------------------------- validation


class _Invalid(Exception):
    """A value is wrong; the text says what is allowed."""

    def __init__(self, allowed: str, *, show_value: bool = True) -> None:
        super().__init__(allowed)
        self.allowed = allowed
        self.show_value = show_value


_Convert = Callable[[object, Path], object]


@dataclass(frozen=True, slots=True)
class _Key:
    name: str
    convert: _Convert
    allowed: str
    required: bool = False
    secret: bool = False


def _show(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, datetime | date | time):
        return value.isoformat()
    return type(value).__name__


def _key_text(*parts: str) -> str:
    return ".".join(p if _BARE_KEY.fullmatch(p) else json.dumps(p) for p in parts)


def _integer(lo: int, hi: int, note: str = "") -> tuple[_Convert, str]:
    allowed = f"must be an integer {lo}..{hi}{note}"

    def convert(value: object, _base: Path) -> object:
        if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
            raise _Invalid(allowed)
        return value

    return convert, allowed


def _seconds(lo: float, hi: float) -> tuple[_Convert, str]:
    allowed = f"must be a number of seconds {lo:g}..{hi:g}"

    def convert(value: object, _base: Path) -> object:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise _Invalid(allowed)
        if not lo <= value <= hi:  # NaN fails too
            raise _Invalid(allowed)
        return float(value)

    return convert, allowed


def _string(
    pattern: re.Pattern[str] | None = None, what: str = "a non-empty string"
) -> tuple[_Convert, str]:
    allowed = f"must be {what}"

    def convert(value: object, _base: Path) -> object:
        if not isinstance(value, str) or not value.strip() or "\0" in value:
            raise _Invalid(allowed)
        if pattern is not None and not pattern.fullmatch(value):
            raise _Invalid(allowed)
        return value

    return convert, allowed


def _path(what: str = "a file path") -> tuple[_Convert, str]:
    allowed = f"must be {what} (absolute, or relative to the config file's directory)"

    def convert(value: object, base: Path) -> object:
        if not isinstance(value, str) or not value.strip() or "\0" in value:
            raise _Invalid(allowed)
        path = Path(value)
        return path if path.is_absolute() else base / path

    return convert, allowed


def _mqtt_url_key(value: object, _base: Path) -> object:
    allowed = "must be mqtt://HOST[:PORT] or mqtts://HOST[:PORT]"
    if not isinstance(value, str):
        raise _Invalid(allowed)
    try:
        parse_mqtt_url(value)
    except ConfigError as exc:
        # A URL with user info may hold a password: do not echo it.
        raise _Invalid(str(exc), show_value="@" not in value) from None
    return value


def _mqtt_urls_key(value: object, base: Path) -> object:
    if not isinstance(value, list) or not value:
        raise _Invalid("must be a list of mqtt://HOST[:PORT] or mqtts://HOST[:PORT]")
    return tuple(str(_mqtt_url_key(v, base)) for v in value)


def _http_url_key(value: object, _base: Path) -> object:
    if not isinstance(value, str):
        raise _Invalid("must be http://HOST[:PORT][/PATH] or https://HOST[:PORT][/PATH]")
    _check_http_url(value)
    return value


def _protocol_key(value: object, _base: Path) -> object:
    if value == 5 and not isinstance(value, bool):
        return "5"
    if value in ("5", "3.1.1"):
        return value
    raise _Invalid('must be "5" or "3.1.1"')


def _bool_key(value: object, _base: Path) -> object:
    if not isinstance(value, bool):
        raise _Invalid("must be true or false")
    return value


_NO_PLAIN_PIN = (
    "a PIN is never written in the config: make its hash file with "
    "`sadad-agent pin set` and name it in technician_pin_file"
)


def _no_plain_pin(_value: object, _base: Path) -> object:
    raise _Invalid(_NO_PLAIN_PIN)


def _key(name: str, spec: tuple[_Convert, str], *, required: bool = False) -> _Key:
    return _Key(name, spec[0], spec[1], required=required)


_SECTIONS: dict[str, tuple[_Key, ...]] = {
    "terminal": (
        _key(
            "sn",
            _string(_SN, "1-32 letters, digits, _ or - (the MQTT client id)"),
            required=True,
        ),
        _key("app_id", _string(what="a non-empty string (the gateway's app_id)"), required=True),
        _key("store_name", _string()),
        _key(
            "private_key_file", _path("the path of the terminal's RSA private key"), required=True
        ),
        _key(
            "technician_pin_file",
            _path("the path of the technician PIN's hash (sadad-agent pin set)"),
        ),
        _Key("technician_pin", _no_plain_pin, _NO_PLAIN_PIN, secret=True),
    ),
    "mqtt": (
        _Key(
            "url",
            _mqtt_url_key,
            "must be mqtt://HOST[:PORT] or mqtts://HOST[:PORT]",
            required=True,
        ),
        _Key(
            "fallback_urls",
            _mqtt_urls_key,
            "must be a list of mqtt://HOST[:PORT] or mqtts://HOST[:PORT]",
        ),
        _key("keepalive", _integer(5, 3600)),
        _key(
            "session_expiry",
            _integer(MIN_SESSION_EXPIRY, MAX_SESSION_EXPIRY, " (seconds, at least 24 h)"),
        ),
        _Key("protocol", _protocol_key, 'must be "5" or "3.1.1"'),
        _key("ca_file", _path("the path of the CA certificate (PEM)")),
        _key("cert_file", _path("the path of the client certificate (PEM)")),
        _key("key_file", _path("the path of the client certificate's key (PEM)")),
        _key("username", _string()),
        _key("password_file", _path("the path of a file holding the password")),
    ),
    "gateway": (
        _Key(
            "url",
            _http_url_key,
            "must be http://HOST[:PORT][/PATH] or https://HOST[:PORT][/PATH]",
            required=True,
        ),
        _key("public_key_file", _path("the path of the gateway's RSA public key"), required=True),
        _key("timeout", _seconds(1, 120)),
        _key("resolve_deadline", _seconds(5, 3600)),
        _Key("allow_plain_http", _bool_key, "must be true or false"),
    ),
    "journal": (
        _key("path", _path("the path of the journal database")),
        _key("keep_days", _integer(1, 3650)),
    ),
    "ui": (
        _key("socket", _path("the path of the UI socket")),
        _key("result_seconds", _seconds(0.1, 60)),
        _key("socket_group", _string(what="a group name (the checkout's user is in it)")),
    ),
}
_REQUIRED_SECTIONS = ("terminal", "mqtt", "gateway")
_ALL_SECTIONS = (*_SECTIONS, "readers")


def _did_you_mean(name: str, choices: tuple[str, ...]) -> str:
    import difflib  # only for a broken config: not kept in the daemon's memory

    close = difflib.get_close_matches(name, choices, n=1)
    return f" (did you mean {close[0]}?)" if close else ""


class _Checker:
    def __init__(self, file: str, base: Path) -> None:
        self.file = file
        self.base = base
        self.problems: list[str] = []

    def problem(self, key: str, text: str) -> None:
        self.problems.append(f"{self.file}: {key}: {text}")

    def section(self, name: str, table: Mapping[str, Any]) -> dict[str, object]:
        keys = _SECTIONS[name]
        names = tuple(k.name for k in keys)
        out: dict[str, object] = {}
        for key_name in table:
            if key_name not in names:
                self.problem(
                    _key_text(name, key_name),
                    f"unknown key{_did_you_mean(key_name, names)}; allowed: {', '.join(names)}",
                )
        for key in keys:
            where = _key_text(name, key.name)
            if key.name not in table:
                if key.required:
                    self.problem(where, f"required key is missing; it {key.allowed}")
                continue
            value = table[key.name]
            try:
                out[key.name] = key.convert(value, self.base)
            except _Invalid as exc:
                if key.secret or not exc.show_value:
                    self.problem(where, exc.allowed)
                else:
                    self.problem(where, f"{exc.allowed}, got {_show(value)}")
        return out

    def readers(self, table: Mapping[str, Any]) -> dict[str, str]:
        from drivers.registry import ReaderSpecError, parse_spec

        out: dict[str, str] = {}
        for name, spec in table.items():
            where = _key_text("readers", name)
            if not _READER_NAME.fullmatch(name):
                self.problem(where, "a reader name must be 1-32 letters, digits, _ or -")
                continue
            if not isinstance(spec, str):
                self.problem(
                    where, f"must be a reader spec KIND:PORT[;key=value...], got {_show(spec)}"
                )
                continue
            try:
                parse_spec(spec)
            except ReaderSpecError as exc:
                self.problem(where, f"{exc}, got {_show(spec)}")
                continue
            out[name] = spec
        return out


def _cross_checks(chk: _Checker, sections: dict[str, dict[str, object]]) -> None:
    mqtt = sections.get("mqtt", {})
    url = mqtt.get("url")
    if isinstance(url, str) and not url.startswith("mqtts:"):
        for name in ("ca_file", "cert_file", "key_file"):
            if name in mqtt:
                chk.problem(f"mqtt.{name}", "TLS settings need an mqtts:// url")
    if "key_file" in mqtt and "cert_file" not in mqtt:
        chk.problem("mqtt.key_file", "needs cert_file (the client certificate it belongs to)")
    if "password_file" in mqtt and "username" not in mqtt:
        chk.problem("mqtt.password_file", "needs username")
    # Part D: the gateway is reached over HTTPS. Plain HTTP would hand a
    # network neighbour every answer to read and to hold back.
    gateway = sections.get("gateway", {})
    url = gateway.get("url")
    if isinstance(url, str) and not gateway.get("allow_plain_http"):
        parts = urlsplit(url)
        if parts.scheme == "http" and not is_loopback_host(parts.hostname or ""):
            chk.problem(
                "gateway.url",
                "plain http:// is allowed only to a loopback host (127.0.0.1, ::1, "
                "localhost): use https://, or set allow_plain_http = true for a lab "
                "(a warning at every start)",
            )


def parse_config(
    doc: Mapping[str, Any], *, file: str = "agent.toml", base_dir: Path | None = None
) -> AgentConfig:
    """Validate a parsed TOML document. Raises ConfigError."""
    base = (base_dir or Path.cwd()).absolute()
    chk = _Checker(file, base)
    sections: dict[str, dict[str, object]] = {}
    readers: dict[str, str] = {}
    for name, value in doc.items():
        if name not in _ALL_SECTIONS:
            if isinstance(value, dict):
                chk.problem(
                    _key_text(name),
                    f"unknown section{_did_you_mean(name, _ALL_SECTIONS)}; "
                    f"allowed: {', '.join(_ALL_SECTIONS)}",
                )
            else:
                chk.problem(
                    _key_text(name),
                    f"not allowed at the top level; settings belong in a section: "
                    f"{', '.join(_ALL_SECTIONS)}",
                )
            continue
        if not isinstance(value, dict):
            chk.problem(name, f"must be a table [{name}], got {_show(value)}")
            continue
        if name == "readers":
            readers = chk.readers(value)
        else:
            sections[name] = chk.section(name, value)
    for name in _REQUIRED_SECTIONS:
        if name not in doc:
            required = ", ".join(k.name for k in _SECTIONS[name] if k.required)
            chk.problem(name, f"section [{name}] is missing; required keys: {required}")
    _cross_checks(chk, sections)
    if chk.problems:
        raise ConfigError(chk.problems)
    # Every required key is present and converted, so the Struct calls cannot fail.
    return AgentConfig(
        terminal=TerminalConfig(**cast(dict[str, Any], sections["terminal"])),
        mqtt=MqttConfig(**cast(dict[str, Any], sections["mqtt"])),
        gateway=GatewayConfig(**cast(dict[str, Any], sections["gateway"])),
        journal=JournalConfig(**cast(dict[str, Any], sections.get("journal", {}))),
        ui=UiConfig(**cast(dict[str, Any], sections.get("ui", {}))),
        readers=readers,
    )


def loads_config(
    text: str, *, file: str = "agent.toml", base_dir: Path | None = None
) -> AgentConfig:
    """Parse and validate TOML text. Relative paths resolve against ``base_dir``
    (default: the current directory). Raises ConfigError."""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        match = _TOML_WHERE.match(str(exc))
        if match is None:
            where, msg = "", str(exc)
        elif match["line"]:
            where, msg = f"line {match['line']}, column {match['col']}: ", match["msg"]
        else:
            where, msg = "at the end of the file: ", match["msg"]
        raise ConfigError(f"{file}: {where}invalid TOML: {msg}") from exc
    return parse_config(doc, file=file, base_dir=base_dir)


def load_config(path: str | os.PathLike[str] = DEFAULT_PATH) -> AgentConfig:
    """Read and validate the config file. Raises ConfigError (see the module docstring)."""
    file = os.fspath(path)
    source = Path(file).absolute()
    try:
        raw = source.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{file}: cannot read: {exc.strerror or exc}") from exc
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{file}: not UTF-8 text (byte {exc.start})") from exc
    cfg = loads_config(text, file=file, base_dir=source.parent)
    return msgspec.structs.replace(cfg, source=source)


# ---------------------------------------------------------------- files


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


# ---------------------------------------------------------------- example


_EXAMPLE = """\
# sadad-agent configuration (/etc/sadad-agent/agent.toml).
#
# Unknown keys are errors. Paths that are not absolute are relative to the
# directory of this file. Secrets are never written here: keys, the MQTT
# password and the technician PIN live in files of their own (mode 0600).

[terminal]
sn = "T0001"                          # terminal serial number: the MQTT client id
app_id = "T0001"                      # the app_id the gateway issued to this terminal
store_name = "Sandbox Store"          # shown on the checkout screen
private_key_file = "keys/terminal_private.pem"   # RSA-2048; signs cashier calls and events
# technician_pin_file = "keys/technician.pin"    # the setup PIN's hash: sadad-agent pin set

[mqtt]
url = "mqtt://127.0.0.1:1883"         # mqtt://HOST[:PORT] or mqtts://HOST[:PORT] (TLS, 8883)
keepalive = 30                        # seconds, 5..3600; the broker sends the will
                                      # ("offline") within 1.5 keepalives of a silent loss
# fallback_urls = ["mqtt://10.0.0.2:1883"]   # other nodes of a broker cluster, in order
# session_expiry = 86400              # seconds the broker keeps queued pushes (>= 86400)
# protocol = "5"                      # "5" (falls back to 3.1.1 if refused) or "3.1.1"
# ca_file = "ca.pem"                  # TLS: CA that signed the broker's certificate
# cert_file = "terminal.crt"          # TLS client certificate (one per terminal)
# key_file = "terminal.key"           # its private key
# username = "T0001"
# password_file = "mqtt.password"

[gateway]
url = "http://127.0.0.1:8080"         # SadadSystem; cashier calls go to /api/cashier/entry
public_key_file = "keys/gateway_public.pem"   # verifies pushes and answers (root's only)
# timeout = 15.0                      # seconds per HTTP call, 1..120
# resolve_deadline = 60.0             # seconds of trans.detail before a reversal, 5..3600
# allow_plain_http = false            # http:// to a host other than loopback: labs only
                                      # (https:// otherwise; a warning at every start)

[journal]
path = "/var/lib/sadad-agent/journal.db"
# keep_days = 90                      # final transactions older than this are pruned

[ui]
socket = "/run/sadad-agent/agent.sock"   # the checkout screen connects here
socket_group = "sadad-ui"             # the checkout's user (systemd/install.sh makes it)
# result_seconds = 4.0                # how long a result stays on screen before the
                                      # next order, 0.1..60 (a restart applies it)

[readers]
# NAME = "KIND:PORT[;key=value...]"; KIND is pn532, magstripe or scanner
nfc = "pn532:/dev/sadad-nfc"
# card = "magstripe:/dev/sadad-msr;baud=9600"
# qr = "scanner:/dev/sadad-scanner"
"""


def dump_example() -> str:
    """The commented example config (``systemd/agent.toml.example``); it loads as is."""
    return _EXAMPLE
