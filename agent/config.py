"""The agent's configuration file, ``agent.toml``: each key declared once, below.

Each attribute of the classes below that comes from the file carries its
``Setting`` (``cloud.config_schema``): TOML key, type with bounds, default,
one-line doc. Validation, the commented example (``dump_example()``, shipped
as ``systemd/agent.toml.example``) and docs/configuration.md are made from
them; ``python -m agent.config_docs --write`` regenerates the two files.

Contract:

* ``load_config(path=paths.CONFIG_FILE) -> AgentConfig`` reads ``agent.toml``
  (tomllib) and validates it; ``loads_config(text, file=..., base_dir=...)``
  does the same for text (the setup screen checks an edit before writing it).
  Both raise ``ConfigError`` (the project's one, ``cloud.config_schema``)
  and nothing else. Its text is one line per problem, each ``FILE:
  SECTION.KEY: what is wrong and what is allowed, got VALUE``, e.g.
  ``agent.toml: mqtt.keepalive: must be an integer 5..3600, got "abc"``; a
  TOML syntax error gives ``FILE: line L, column C: invalid TOML: ...``.
  Unknown sections and keys are errors (a typo must not pass silently);
  secrets (the technician PIN) are never echoed.
* Sections: ``[terminal]``, ``[mqtt]``, ``[gateway]`` are required;
  ``[journal]``, ``[ui]``, ``[printer]``, ``[readers]`` have defaults. The file written by
  ``sadad-sandbox provision`` loads as it is.
* Secrets are file paths (terminal private key, gateway public key, TLS
  files, MQTT password, technician PIN); every path that is relative
  resolves against the directory of the config file. ``load_config`` does
  not touch those files: ``agent.config_files`` reads and checks them
  (``check_files``, ``mqtt_password``, ``technician_pin_hash``,
  ``trust_problems``, ``untrusted``, re-exported here: this module is the
  one import for the agent's config).
* MQTT: ``mqtt://`` or ``mqtts://`` (TLS, port 8883 by default), parsed by
  ``parse_mqtt_url``; ``session_expiry`` at least 24 h (docs/protocol.md
  part C: "session expiry at least 24 h"); ``protocol`` ``"5"`` (falls back
  to 3.1.1 when the broker refuses 5) or ``"3.1.1"``.
* Readers: ``NAME = "KIND:PORT[;key=value...]"`` checked with
  ``drivers.registry.parse_spec``; the printer's ``escpos:PORT[;...]`` with
  ``drivers.escpos.spec.parse_printer_spec``.
* ``ConfigError.exit_code`` is 78 (``EX_CONFIG``, sysexits.h): the unit's
  ``RestartPreventExitStatus=78`` keeps systemd from restarting a daemon that
  cannot start until a person fixes the file.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import msgspec

from agent import paths
from agent.config_files import (
    check_files,
    mqtt_password,
    technician_pin_hash,
    trust_problems,
    untrusted,
)
from cloud.config_checks import FilePath, Flag, Integer, Seconds, Text
from cloud.config_schema import ConfigError, Invalid, Rule, Schema, Section, Setting, Table

__all__ = [
    "AgentConfig",
    "ConfigError",
    "GatewayConfig",
    "JournalConfig",
    "MqttConfig",
    "PrinterConfig",
    "TerminalConfig",
    "UiConfig",
    "check_files",
    "dump_example",
    "load_config",
    "loads_config",
    "mqtt_password",
    "parse_mqtt_url",
    "technician_pin_hash",
    "trust_problems",
    "untrusted",
]

MIN_SESSION_EXPIRY = 86_400  # docs/protocol.md part C: at least 24 h
MAX_SESSION_EXPIRY = 0xFFFF_FFFF  # MQTT 5 Session Expiry Interval: "never expires"

_SN = re.compile(r"[A-Za-z0-9_-]{1,32}")
_READER_NAME = re.compile(r"[A-Za-z0-9_-]{1,32}")
_MQTT_URL = "mqtt://HOST[:PORT] or mqtts://HOST[:PORT]"
_HTTP_URL = "http://HOST[:PORT][/PATH] or https://HOST[:PORT][/PATH]"
_NO_PLAIN_PIN = (
    "a PIN is never written in the config: make its hash file with "
    "`sadad-agent pin set` and name it in technician_pin_file"
)


# ---------------------------------------------------------------- URLs


def parse_mqtt_url(url: str) -> tuple[str, int, bool]:
    """``mqtt://HOST[:PORT]`` or ``mqtts://HOST[:PORT]`` -> (host, port, tls).

    Raises ConfigError (the text says what is allowed).
    """
    allowed = f"must be {_MQTT_URL}"
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


# ---------------------------------------------------------------- checks of this file


def _mqtt_url(value: object, _base: Path) -> object:
    if not isinstance(value, str):
        raise Invalid(f"must be {_MQTT_URL}")
    try:
        parse_mqtt_url(value)
    except ConfigError as exc:
        # A URL with user info may hold a password: do not echo it.
        raise Invalid(str(exc), show_value="@" not in value) from None
    return value


def _mqtt_urls(value: object, base: Path) -> object:
    if not isinstance(value, list) or not value:
        raise Invalid(f"must be a list of {_MQTT_URL}")
    return tuple(str(_mqtt_url(v, base)) for v in value)


def _http_url(value: object, _base: Path) -> object:
    if not isinstance(value, str):
        raise Invalid(f"must be {_HTTP_URL}")
    show = "@" not in value  # user info may hold a password: do not echo it
    try:
        parts = urlsplit(value)
        _ = parts.port
    except ValueError as exc:
        raise Invalid(f"must be {_HTTP_URL} ({exc})", show_value=show) from exc
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise Invalid(f"must be {_HTTP_URL}", show_value=show)
    if parts.username is not None or parts.query or parts.fragment:
        raise Invalid(f"must be {_HTTP_URL} (no user, query or fragment)", show_value=show)
    return value


def _protocol(value: object, _base: Path) -> object:
    if value == 5 and not isinstance(value, bool):
        return "5"
    if value in ("5", "3.1.1"):
        return value
    raise Invalid('must be "5" or "3.1.1"')


def _reader_spec(value: object, _base: Path) -> object:
    from drivers.registry import ReaderSpecError, parse_spec

    if not isinstance(value, str):
        raise Invalid("must be a reader spec KIND:PORT[;key=value...]")
    try:
        parse_spec(value)
    except ReaderSpecError as exc:
        raise Invalid(str(exc)) from None
    return value


MQTT_URL = Rule(_MQTT_URL, _mqtt_url)
MQTT_URLS = Rule(f"a list of {_MQTT_URL}", _mqtt_urls)
HTTP_URL = Rule(_HTTP_URL, _http_url)
PROTOCOL = Rule('"5" or "3.1.1"', _protocol, hint='"5" or "3.1.1"')
READER_SPEC = Rule("a reader spec KIND:PORT[;key=value...]", _reader_spec)


def _printer_spec(value: object, _base: Path) -> object:
    from drivers.escpos.spec import PrinterSpecError, parse_printer_spec

    if not isinstance(value, str):
        raise Invalid("must be a printer spec escpos:PORT[;baud=N][;width=N]")
    try:
        parse_printer_spec(value)
    except PrinterSpecError as exc:
        raise Invalid(str(exc)) from None
    return value


PRINTER_SPEC = Rule("a printer spec escpos:PORT[;baud=N][;width=N]", _printer_spec)


# ---------------------------------------------------------------- the file, declared


class TerminalConfig(msgspec.Struct, frozen=True, kw_only=True):
    sn: Annotated[
        str,
        Setting(
            Text(_SN, "1-32 letters, digits, _ or - (the MQTT client id)"),
            "terminal serial number: the MQTT client id",
            example="T0001",
        ),
    ]
    app_id: Annotated[
        str,
        Setting(
            Text(what="a non-empty string (the gateway's app_id)"),
            "the app_id the gateway issued to this terminal",
            example="T0001",
        ),
    ]
    store_name: Annotated[
        str,
        Setting(
            Text(), "shown on the checkout screen", example="Sandbox Store", set_in_example=True
        ),
    ] = ""
    private_key_file: Annotated[
        Path,
        Setting(
            FilePath("the path of the terminal's RSA private key"),
            "RSA-2048; signs cashier calls and events",
            example=paths.TERMINAL_KEY,
        ),
    ]
    technician_pin_file: Annotated[
        Path | None,
        Setting(
            FilePath("the path of the technician PIN's hash (sadad-agent pin set)"),
            "the setup PIN's hash, made by `sadad-agent pin set`; none: setup stays locked",
            example=paths.TECHNICIAN_PIN,
        ),
    ] = None


class MqttConfig(msgspec.Struct, frozen=True, kw_only=True):
    url: Annotated[
        str,
        Setting(
            MQTT_URL,
            "the broker; mqtts:// is TLS, port 8883 by default",
            example="mqtt://127.0.0.1:1883",
        ),
    ]
    # Other nodes of the same broker cluster, tried in order when the one in
    # use is down (the session is the cluster's, so it follows the terminal).
    fallback_urls: Annotated[
        tuple[str, ...],
        Setting(
            MQTT_URLS,
            "other nodes of the same broker cluster, tried in order",
            example=("mqtt://10.0.0.2:1883",),
        ),
    ] = ()
    keepalive: Annotated[
        int,
        Setting(
            Integer(5, 3600),
            'seconds; the broker sends the will ("offline") within 1.5 keepalives of a silent loss',
            set_in_example=True,
        ),
    ] = 30
    session_expiry: Annotated[
        int,
        Setting(
            Integer(MIN_SESSION_EXPIRY, MAX_SESSION_EXPIRY, " (seconds, at least 24 h)"),
            "seconds the broker keeps the session and its queued pushes",
        ),
    ] = MIN_SESSION_EXPIRY
    protocol: Annotated[
        Literal["5", "3.1.1"],
        Setting(PROTOCOL, "MQTT version; 5 falls back to 3.1.1 when the broker refuses it"),
    ] = "5"
    ca_file: Annotated[
        Path | None,
        Setting(
            FilePath("the path of the CA certificate (PEM)"),
            "TLS: the CA that signed the broker's certificate (else the system's)",
            example="ca.pem",
        ),
    ] = None
    cert_file: Annotated[
        Path | None,
        Setting(
            FilePath("the path of the client certificate (PEM)"),
            "TLS client certificate (one per terminal)",
            example="terminal.crt",
        ),
    ] = None
    key_file: Annotated[
        Path | None,
        Setting(
            FilePath("the path of the client certificate's key (PEM)"),
            "the client certificate's private key",
            example="terminal.key",
        ),
    ] = None
    username: Annotated[
        str | None, Setting(Text(), "the broker user (the sandbox: the SN)", example="T0001")
    ] = None
    password_file: Annotated[
        Path | None,
        Setting(
            FilePath("the path of a file holding the password"),
            "the file holding the broker password (mode 0600)",
            example=paths.MQTT_PASSWORD,
        ),
    ] = None

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
    url: Annotated[
        str,
        Setting(
            HTTP_URL,
            "SadadSystem; cashier calls go to /api/cashier/entry",
            example="http://127.0.0.1:8080",
        ),
    ]
    public_key_file: Annotated[
        Path,
        Setting(
            FilePath("the path of the gateway's RSA public key"),
            "verifies pushes and answers (root's only)",
            example=paths.GATEWAY_KEY,
        ),
    ]
    timeout: Annotated[float, Setting(Seconds(1, 120), "per HTTP call")] = 15.0
    resolve_deadline: Annotated[
        float,
        Setting(Seconds(5, 3600), "trans.detail asked about an unknown outcome before a reversal"),
    ] = 60.0
    allow_plain_http: Annotated[
        bool,
        Setting(
            Flag(),
            "http:// to a host other than loopback: labs only (a warning at every start)",
        ),
    ] = False

    @property
    def plain_http_off_host(self) -> bool:
        """``url`` is plain http:// to a host other than loopback (labs only)."""
        parts = urlsplit(self.url)
        return parts.scheme == "http" and not is_loopback_host(parts.hostname or "")


class JournalConfig(msgspec.Struct, frozen=True, kw_only=True):
    path: Annotated[
        Path,
        Setting(
            FilePath("the path of the journal database"),
            "the SQLite journal; keep it across updates",
            set_in_example=True,
        ),
    ] = paths.JOURNAL
    keep_days: Annotated[
        int, Setting(Integer(1, 3650), "days a final transaction is kept before it is pruned")
    ] = 90


class UiConfig(msgspec.Struct, frozen=True, kw_only=True):
    socket: Annotated[
        Path,
        Setting(
            FilePath("the path of the UI socket"),
            "the checkout screen connects here",
            set_in_example=True,
        ),
    ] = paths.SOCKET
    result_seconds: Annotated[
        float,
        Setting(
            Seconds(0.1, 60),  # agent.states.RESULT_SECONDS
            "how long a result stays on screen before the next order; a restart applies it",
        ),
    ] = 4.0
    socket_group: Annotated[
        str | None,
        Setting(
            Text(what="a group name (the checkout's user is in it)"),
            "the checkout's user's group (systemd/install.sh makes it)",
            example="sadad-ui",
            set_in_example=True,
        ),
    ] = None


class PrinterConfig(msgspec.Struct, frozen=True, kw_only=True):
    spec: Annotated[
        str | None,
        Setting(
            PRINTER_SPEC,
            "the receipt printer (ESC/POS on a serial port); none: no receipts",
            example="escpos:/dev/sadad-printer;baud=19200;width=42",
        ),
    ] = None
    merchant_copy: Annotated[
        bool, Setting(Flag(), "print a merchant copy after the customer's")
    ] = False


class AgentConfig(msgspec.Struct, frozen=True, kw_only=True):
    """The whole file. ``source`` is the file it came from (for reload and setup)."""

    terminal: Annotated[
        TerminalConfig,
        Section(
            "who this terminal is to the broker and the gateway",
            refused=(("technician_pin", _NO_PLAIN_PIN),),
        ),
    ]
    mqtt: Annotated[
        MqttConfig, Section("the broker that pushes the orders (docs/protocol.md part C)")
    ]
    gateway: Annotated[
        GatewayConfig, Section("SadadSystem, which takes the payments (docs/protocol.md part D)")
    ]
    journal: Annotated[
        JournalConfig, Section("the transactions, written before every outside effect")
    ] = msgspec.field(default_factory=JournalConfig)
    ui: Annotated[UiConfig, Section("the checkout screen's connection to the agent")] = (
        msgspec.field(default_factory=UiConfig)
    )
    printer: Annotated[
        PrinterConfig, Section("receipts: a customer copy after every final result")
    ] = msgspec.field(default_factory=PrinterConfig)
    readers: Annotated[
        dict[str, str],
        Table(
            'NAME = "KIND:PORT[;key=value...]"; KIND is pn532, magstripe or scanner',
            item="reader",
            name=_READER_NAME,
            name_allowed="1-32 letters, digits, _ or -",
            check=READER_SPEC,
            example=(("nfc", "pn532:/dev/sadad-nfc"),),
            commented=(
                ("card", "magstripe:/dev/sadad-msr;baud=9600"),
                ("qr", "scanner:/dev/sadad-scanner"),
            ),
        ),
    ] = msgspec.field(default_factory=dict)
    source: Path | None = None


# ---------------------------------------------------------------- rules between keys


def _cross_checks(
    values: Mapping[str | None, Mapping[str, object]], problem: Callable[[str, str], None]
) -> None:
    mqtt = values.get("mqtt", {})
    url = mqtt.get("url")
    if isinstance(url, str) and not url.startswith("mqtts:"):
        for name in ("ca_file", "cert_file", "key_file"):
            if name in mqtt:
                problem(f"mqtt.{name}", "TLS settings need an mqtts:// url")
    if "key_file" in mqtt and "cert_file" not in mqtt:
        problem("mqtt.key_file", "needs cert_file (the client certificate it belongs to)")
    if "password_file" in mqtt and "username" not in mqtt:
        problem("mqtt.password_file", "needs username")
    # Part D: the gateway is reached over HTTPS. Plain HTTP would hand a
    # network neighbour every answer to read and to hold back.
    gateway = values.get("gateway", {})
    url = gateway.get("url")
    if isinstance(url, str) and not gateway.get("allow_plain_http"):
        parts = urlsplit(url)
        if parts.scheme == "http" and not is_loopback_host(parts.hostname or ""):
            problem(
                "gateway.url",
                "plain http:// is allowed only to a loopback host (127.0.0.1, ::1, "
                "localhost): use https://, or set allow_plain_http = true for a lab "
                "(a warning at every start)",
            )


SCHEMA = Schema(AgentConfig, cross_check=_cross_checks)

EXAMPLE_HEADER = f"""\
sadad-agent configuration ({paths.CONFIG_FILE}).

Unknown keys are errors. Paths that are not absolute are relative to the
directory of this file. Secrets are never written here: keys, the MQTT
password and the technician PIN live in files of their own (mode 0600).
Every key: docs/configuration.md. Made from agent/config.py by
`python -m agent.config_docs --write`."""


# ---------------------------------------------------------------- loading


def parse_config(
    doc: Mapping[str, Any], *, file: str = "agent.toml", base_dir: Path | None = None
) -> AgentConfig:
    """Validate a parsed TOML document. Raises ConfigError."""
    return SCHEMA.build(doc, file=file, base=(base_dir or Path.cwd()).absolute())


def loads_config(
    text: str, *, file: str = "agent.toml", base_dir: Path | None = None
) -> AgentConfig:
    """Parse and validate TOML text. Relative paths resolve against ``base_dir``
    (default: the current directory). Raises ConfigError."""
    return SCHEMA.loads(text, file=file, base=(base_dir or Path.cwd()).absolute())


def load_config(path: str | os.PathLike[str] = paths.CONFIG_FILE) -> AgentConfig:
    """Read and validate the config file. Raises ConfigError (see the module docstring)."""
    file = os.fspath(path)
    source = Path(file).absolute()
    text = SCHEMA.read(file)
    return SCHEMA.loads(text, file=file, base=source.parent, extra={"source": source})


def dump_example() -> str:
    """The commented example config (``systemd/agent.toml.example``); it loads as is."""
    from cloud.config_render import example_toml  # not needed by the daemon

    return example_toml(SCHEMA, EXAMPLE_HEADER)
