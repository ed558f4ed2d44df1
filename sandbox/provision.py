"""Preparing a sandbox data directory and provisioning terminals.

``prepare`` makes a data directory usable (keys, the sandbox merchant
``M0001`` with its POS app ``pos-sandbox``, the database); ``write_pos_config``
writes ``DIR/pos.toml`` for ``sadad-pos``; ``provision_terminal`` gives a
terminal its key pair (docs/protocol.md "Common envelope": "each terminal has its
own key pair, public half registered with the gateway"), registers it with
``app_id`` = its SN, copies the gateway public key beside it, gives it broker
credentials (user = its SN, a random password in ``DIR/terminals/SN/
mqtt.password``, mode 0600, kept when present) and writes
``DIR/terminals/SN/agent.toml`` for ``sadad-agent`` (``[mqtt] username``,
``password_file``).

The credentials are registered with the sandbox's own broker
(``DIR/mosquitto/``, which ``serve`` runs secure: docs/operations.md
"Credentials and ACLs") when it has a password file: a running one reloads
and accepts them before ``provision_terminal`` returns; ``serve`` registers
every provisioned terminal again whenever it starts its broker. With an
outside broker (``serve --mqtt URL``) the user must be added there (the
secure ``sandbox.broker`` classes: ``add_user(sn, password)``; an anonymous
broker ignores the login).

Provisioning works whether or not ``serve`` runs: a running sandbox reads
terminals from SQLite per request. The MQTT and gateway URLs come from the
last ``serve`` (recorded in the database); before any ``serve`` they are the
defaults below and the file says so.

Raises ``ProvisionError`` for a bad SN or reader spec, or a broker that does
not take the terminal's credentials.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import tomlkit

from sandbox.broker import TMS_USER, BrokerError, new_password, write_secret
from sandbox.broker_mosquitto import MosquittoBroker
from sandbox.keys import (
    DEFAULT_CURRENCY,
    DEFAULT_STORE_NAME,
    MERCHANT_NAME,
    MERCHANT_NO,
    POS_APP_ID,
    Layout,
    SandboxKeys,
    ensure_keys,
    ensure_pair,
)
from sandbox.store import Store

STATE_HTTP_URL = "http_url"
STATE_MQTT_URL = "mqtt_url"
STATE_HTTP_PORT = "http_port"
STATE_BROKER_PORT = "broker_port"
DEFAULT_HTTP_URL = "http://127.0.0.1:8080"
DEFAULT_MQTT_URL = "mqtt://127.0.0.1:1883"
MQTT_KEEPALIVE = 30
ORDER_STORE = "pos-orders.db"  # beside pos.toml: the orders sadad-pos created

_SN = re.compile(r"[A-Za-z0-9_-]{1,32}")
_READER_NAME = re.compile(r"[A-Za-z0-9_-]{1,32}")


MQTT_LOGIN_FILE = "mqtt.password"  # beside agent.toml


class ProvisionError(ValueError):
    """Bad provisioning input (SN, reader spec), or the broker refused the terminal."""


def prepare(layout: Layout) -> SandboxKeys:
    """Create what a data directory needs; idempotent. Returns the keys."""
    layout.root.mkdir(parents=True, exist_ok=True)
    keys = ensure_keys(layout)
    with Store(layout.db_path) as store:
        store.ensure_merchant(MERCHANT_NO, POS_APP_ID, keys.pos_public, MERCHANT_NAME)
    return keys


def write_pos_config(layout: Layout, gateway_url: str) -> Path:
    """Write ``DIR/pos.toml``; an existing file keeps everything but ``gateway_url``."""
    path = layout.pos_config
    if path.exists():
        doc = tomlkit.parse(path.read_text("utf-8"))
        doc["gateway_url"] = gateway_url
        if "order_store" not in doc:  # written by an older sandbox
            doc.add("order_store", ORDER_STORE)
    else:
        doc = tomlkit.document()
        doc.add(tomlkit.comment("sadad-pos configuration for the local sandbox."))
        doc.add(tomlkit.comment("Written by sadad-sandbox serve, which updates gateway_url on"))
        doc.add(tomlkit.comment("every start; edits to the other lines are kept."))
        doc.add("gateway_url", gateway_url)
        doc.add("app_id", POS_APP_ID)
        doc.add("merchant_no", MERCHANT_NO)
        doc.add(
            "private_key_file",
            tomlkit.item("keys/pos_private.pem").comment(
                "relative paths are relative to this file"
            ),
        )
        doc.add("gateway_public_key_file", "keys/gateway_public.pem")
        doc.add("default_currency", DEFAULT_CURRENCY)
        doc.add(
            "order_store",
            tomlkit.item(ORDER_STORE).comment(
                "orders this POS created, shared by sadad-pos push and listen"
            ),
        )
    tmp = path.with_suffix(".toml.tmp")
    tmp.write_text(tomlkit.dumps(doc), "utf-8")
    tmp.replace(path)
    return path


def parse_readers(specs: list[str]) -> dict[str, str]:
    """``NAME=SPEC`` strings as a dict. Raises ProvisionError."""
    out: dict[str, str] = {}
    for spec in specs:
        name, sep, value = spec.partition("=")
        name = name.strip()
        if not sep or not _READER_NAME.fullmatch(name) or not value.strip():
            raise ProvisionError(
                f"--reader must be NAME=SPEC (e.g. nfc=pn532:/dev/ttyUSB0): {spec!r}"
            )
        out[name] = _absolute_port(value.strip())
    return out


def _absolute_port(spec: str) -> str:
    """``KIND:PORT[;...]`` with a relative device path made absolute (against
    the current directory): the agent runs from elsewhere and refuses a
    relative port. URLs and absolute paths are kept."""
    kind, sep, rest = spec.partition(":")
    port, semi, options = rest.partition(";")
    if not sep or not port or port.startswith("/") or "://" in port:
        return spec
    return f"{kind}:{Path(port).absolute()}{semi}{options}"


@dataclass(frozen=True, slots=True)
class Provisioned:
    sn: str
    agent_config: Path
    private_key: Path
    public_key: Path
    gateway_public_key: Path
    mqtt_username: str
    mqtt_password_file: Path


def provision_terminal(
    layout: Layout,
    sn: str,
    *,
    readers: Mapping[str, str] | None = None,
    store_name: str = DEFAULT_STORE_NAME,
    technician_pin: str | None = None,
    printer: str | None = None,
) -> Provisioned:
    """Create (or refresh) terminal ``sn``: keys and broker password kept if
    present, registered with the sandbox's broker, agent.toml rewritten; with
    ``technician_pin``, its hash in ``technician.pin`` beside it
    (``agent.technician``) so that setup opens with it; ``printer``: an
    ``escpos:PORT[;...]`` spec for ``[printer]`` (a relative port made
    absolute, as the readers')."""
    if not _SN.fullmatch(sn):
        raise ProvisionError("terminal SN must be 1-32 of letters, digits, _ and -")
    if sn == TMS_USER:
        raise ProvisionError(f"{TMS_USER!r} is the TMS's broker user, not a terminal SN")
    for name in readers or {}:
        if not _READER_NAME.fullmatch(name):
            raise ProvisionError(f"reader name {name!r} must be letters, digits, _ and -")
    if printer is not None:
        from drivers.escpos.spec import PrinterSpecError, parse_printer_spec

        printer = _absolute_port(printer.strip())
        try:
            parse_printer_spec(printer)
        except PrinterSpecError as exc:
            raise ProvisionError(f"--printer: {exc}") from None
    prepare(layout)
    tdir = layout.terminal_dir(sn)
    tdir.mkdir(parents=True, exist_ok=True)
    private = tdir / "terminal_private.pem"
    public = tdir / "terminal_public.pem"
    _, public_pem = ensure_pair(private, public)
    gateway_public = tdir / "gateway_public.pem"
    shutil.copyfile(layout.gateway_public, gateway_public)
    with Store(layout.db_path) as store:
        store.add_terminal(sn, MERCHANT_NO, public_pem, store_name)
        http_url = store.get_state(STATE_HTTP_URL)
        mqtt_url = store.get_state(STATE_MQTT_URL)
    password_file = tdir / MQTT_LOGIN_FILE
    password = mqtt_password(password_file)
    register_with_broker(layout, sn, password)
    pin_file = None
    if technician_pin is not None:
        from agent.technician import PIN, hash_pin

        if not PIN.fullmatch(technician_pin):
            raise ProvisionError("a technician PIN is 4-12 digits")
        pin_file = tdir / "technician.pin"
        pin_file.write_text(hash_pin(technician_pin) + "\n", "utf-8")
        pin_file.chmod(0o600)
    config = tdir / "agent.toml"
    text = agent_toml(
        technician_pin_file=pin_file,
        sn=sn,
        mqtt_password_file=password_file,
        store_name=store_name,
        private_key=private,
        gateway_public_key=gateway_public,
        mqtt_url=mqtt_url,
        http_url=http_url,
        journal=tdir / "journal.db",
        socket=tdir / "agent.sock",
        readers=dict(readers or {}),
        printer=printer,
    )
    tmp = config.with_suffix(".toml.tmp")
    tmp.write_text(text, "utf-8")
    tmp.replace(config)
    return Provisioned(sn, config, private, public, gateway_public, sn, password_file)


def mqtt_password(path: Path) -> str:
    """The terminal's broker password in ``path``, made (random, mode 0600)
    when missing: provisioning again keeps it, as it keeps the keys."""
    if path.exists():
        password = path.read_text("utf-8").strip()
        if password:
            return password
    password = new_password()
    write_secret(path, password + "\n")
    return password


def register_with_broker(layout: Layout, sn: str, password: str) -> bool:
    """Add terminal ``sn`` to the sandbox's own secure broker, if it has one
    (a password file under ``DIR/mosquitto/``); a running broker reloads.
    Returns whether it did. Raises ProvisionError."""
    broker = MosquittoBroker(layout.mosquitto_dir, secure=True)
    if not broker.password_path.exists():
        return False  # never started secure: `serve` registers it when it does
    try:
        broker.add_user(sn, password)
    except BrokerError as exc:
        raise ProvisionError(f"the sandbox's broker did not take terminal {sn}: {exc}") from exc
    return True


def agent_toml(
    *,
    technician_pin_file: Path | None = None,
    mqtt_password_file: Path | None = None,
    sn: str,
    store_name: str,
    private_key: Path,
    gateway_public_key: Path,
    mqtt_url: str | None,
    http_url: str | None,
    journal: Path,
    socket: Path,
    readers: dict[str, str],
    printer: str | None = None,
) -> str:
    """The text of a terminal's ``agent.toml`` (comments included)."""
    doc = tomlkit.document()
    doc.add(tomlkit.comment(f"sadad-agent configuration for terminal {sn}."))
    doc.add(tomlkit.comment("Written by sadad-sandbox provision; running it again rewrites this"))
    doc.add(tomlkit.comment("file and keeps the terminal's keys."))
    if mqtt_url is None or http_url is None:
        doc.add(tomlkit.comment("sadad-sandbox serve has not run on this data directory yet: the"))
        doc.add(tomlkit.comment("URLs below are defaults; provision again after the first serve."))
    doc.add(tomlkit.nl())

    terminal = tomlkit.table()
    terminal.add("sn", sn)
    terminal.add("app_id", tomlkit.item(sn).comment("the gateway knows a terminal by its SN"))
    terminal.add("store_name", store_name)
    terminal.add(
        "private_key_file",
        tomlkit.item(str(private_key)).comment("signs cashier calls and events"),
    )
    if technician_pin_file is not None:
        terminal.add(
            "technician_pin_file",
            tomlkit.item(str(technician_pin_file)).comment("the setup PIN's hash"),
        )
    doc.add("terminal", terminal)

    mqtt = tomlkit.table()
    mqtt.add(
        "url",
        tomlkit.item(mqtt_url or DEFAULT_MQTT_URL).comment(
            "broker of the last sadad-sandbox serve"
        ),
    )
    mqtt.add("keepalive", tomlkit.item(MQTT_KEEPALIVE).comment("seconds"))
    if mqtt_password_file is not None:
        mqtt.add(
            "username",
            tomlkit.item(sn).comment("the broker knows a terminal by its SN, too"),
        )
        mqtt.add(
            "password_file",
            tomlkit.item(str(mqtt_password_file)).comment("its broker password (mode 0600)"),
        )
    doc.add("mqtt", mqtt)

    gateway = tomlkit.table()
    gateway.add(
        "url", tomlkit.item(http_url or DEFAULT_HTTP_URL).comment("SadadSystem (the sandbox)")
    )
    gateway.add(
        "public_key_file",
        tomlkit.item(str(gateway_public_key)).comment("verifies pushes and answers"),
    )
    doc.add("gateway", gateway)

    journal_t = tomlkit.table()
    journal_t.add("path", str(journal))
    doc.add("journal", journal_t)

    ui = tomlkit.table()
    ui.add("socket", tomlkit.item(str(socket)).comment("the checkout screen connects here"))
    doc.add("ui", ui)

    if printer is not None:
        printer_t = tomlkit.table()
        printer_t.add("spec", tomlkit.item(printer).comment("receipts print here"))
        doc.add("printer", printer_t)

    readers_t = tomlkit.table()
    if not readers:
        readers_t.add(tomlkit.comment('none configured; e.g. nfc = "pn532:/dev/ttyUSB0"'))
    for name, spec in readers.items():
        readers_t.add(name, spec)
    doc.add("readers", readers_t)
    return tomlkit.dumps(doc)
