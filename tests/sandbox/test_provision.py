"""Data directory preparation and terminal provisioning, in-process."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from agent.config import load_config as agent_load_config
from agent.config import mqtt_password, technician_pin_hash
from agent.technician import verify_pin
from cloud.config import load_config
from sandbox.broker import TMS_USER
from sandbox.broker_mosquitto import MosquittoBroker, mosquitto_password_ok
from sandbox.keys import Layout
from sandbox.provision import (
    ProvisionError,
    parse_readers,
    prepare,
    provision_terminal,
    write_pos_config,
)
from sandbox.store import Store


def test_prepare_is_idempotent_and_keys_are_private(tmp_path: Path) -> None:
    layout = Layout.of(tmp_path / "d")
    first = prepare(layout)
    second = prepare(layout)
    assert first == second
    assert layout.gateway_private.stat().st_mode & 0o777 == 0o600
    assert layout.pos_private.stat().st_mode & 0o777 == 0o600
    with Store(layout.db_path) as store:
        merchant = store.merchant_by_app("pos-sandbox")
    assert merchant is not None
    assert merchant.merchant_no == "M0001"
    assert merchant.public_key_pem == first.pos_public


def test_pos_config_keeps_edits_and_updates_the_url(tmp_path: Path) -> None:
    layout = Layout.of(tmp_path)
    prepare(layout)
    path = write_pos_config(layout, "http://127.0.0.1:1")
    text = path.read_text()
    assert "# relative paths are relative to this file" in text
    path.write_text(text.replace('"QAR"', '"KWD"') + "# mine\n")
    write_pos_config(layout, "http://127.0.0.1:2")
    cfg = tomllib.loads(path.read_text())
    assert cfg == {
        "gateway_url": "http://127.0.0.1:2",
        "app_id": "pos-sandbox",
        "merchant_no": "M0001",
        "private_key_file": "keys/pos_private.pem",
        "gateway_public_key_file": "keys/gateway_public.pem",
        "default_currency": "KWD",
        "order_store": "pos-orders.db",
    }
    assert "# mine" in path.read_text()


def test_provision_before_any_serve_and_again(tmp_path: Path) -> None:
    layout = Layout.of(tmp_path)
    done = provision_terminal(layout, "SN-1", readers={"nfc": "pn532:/dev/x"})
    text = done.agent_config.read_text()
    assert "has not run" in text
    cfg = tomllib.loads(text)
    assert cfg["mqtt"]["url"] == "mqtt://127.0.0.1:1883"
    assert cfg["readers"] == {"nfc": "pn532:/dev/x"}
    key = done.private_key.read_text()
    again = provision_terminal(layout, "SN-1")
    assert again.private_key.read_text() == key  # keys kept
    assert tomllib.loads(again.agent_config.read_text())["readers"] == {}
    assert done.gateway_public_key.read_text() == layout.gateway_public.read_text()


@pytest.mark.parametrize("sn", ["", "a/b", "x" * 33, "T+1", "T#"])
def test_bad_sn(tmp_path: Path, sn: str) -> None:
    with pytest.raises(ProvisionError):
        provision_terminal(Layout.of(tmp_path), sn)


def test_parse_readers() -> None:
    assert parse_readers(["nfc=pn532:/dev/a", " qr = scanner:/dev/b;baud=9600"]) == {
        "nfc": "pn532:/dev/a",
        "qr": "scanner:/dev/b;baud=9600",
    }
    for bad in ("nfc", "=x", "nfc=", "a b=c"):
        with pytest.raises(ProvisionError):
            parse_readers([bad])


def test_reader_ports_are_written_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The agent refuses a relative port (it runs from elsewhere): provision
    writes what it was given relative to where it ran, from /."""
    monkeypatch.chdir(tmp_path)
    readers = parse_readers(
        [
            "nfc=pn532:demo-data/nfc.tty",
            "qr=scanner:/dev/ttyACM0;model=honeywell",
            "u=pn532:socket://h:1",
        ]
    )
    assert readers == {
        "nfc": f"pn532:{tmp_path}/demo-data/nfc.tty",
        "qr": "scanner:/dev/ttyACM0;model=honeywell",
        "u": "pn532:socket://h:1",
    }


def test_pos_config_names_an_order_store_beside_it(tmp_path: Path) -> None:
    """``sadad-pos push`` and ``listen`` (and every POS client made from this
    file) share the orders they bind results to; a pos.toml written by an
    older sandbox gains the line on the next serve, the rest kept."""
    layout = Layout.of(tmp_path)
    prepare(layout)
    path = write_pos_config(layout, "http://127.0.0.1:1")
    assert load_config(path).order_store == tmp_path.absolute() / "pos-orders.db"
    older = "\n".join(
        line for line in path.read_text().splitlines() if not line.startswith("order_store")
    )
    path.write_text(older + "\n# mine\n")
    assert load_config(path).order_store is None
    write_pos_config(layout, "http://127.0.0.1:2")
    assert load_config(path).order_store == tmp_path.absolute() / "pos-orders.db"
    assert "# mine" in path.read_text()


def test_a_technician_pin_is_provisioned_hashed(tmp_path: Path) -> None:
    layout = Layout.of(tmp_path)
    done = provision_terminal(layout, "T7", technician_pin="4321")
    cfg = agent_load_config(done.agent_config)
    hashed = technician_pin_hash(cfg)
    assert hashed is not None
    assert verify_pin("4321", hashed)
    assert "4321" not in done.agent_config.read_text()
    with pytest.raises(ProvisionError, match="4-12 digits"):
        provision_terminal(layout, "T7", technician_pin="12")


def test_a_printer_is_provisioned_with_an_absolute_port(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    layout = Layout.of(tmp_path)
    done = provision_terminal(layout, "T9", printer="escpos:lp0.tty;width=32")
    cfg = agent_load_config(done.agent_config)
    assert cfg.printer.spec == f"escpos:{tmp_path.absolute() / 'lp0.tty'};width=32"
    assert cfg.printer.merchant_copy is False
    assert agent_load_config(provision_terminal(layout, "T9").agent_config).printer.spec is None
    with pytest.raises(ProvisionError, match="--printer: width='8' must be"):
        provision_terminal(layout, "T9", printer="escpos:/dev/lp0;width=8")


def test_a_terminal_gets_broker_credentials_of_its_own(tmp_path: Path) -> None:
    """User = SN, a random password in mqtt.password (0600) beside agent.toml,
    named there; kept when provisioned again, as the keys are."""
    layout = Layout.of(tmp_path)
    done = provision_terminal(layout, "T8")
    assert done.mqtt_username == "T8"
    assert done.mqtt_password_file == done.agent_config.parent / "mqtt.password"
    assert done.mqtt_password_file.stat().st_mode & 0o777 == 0o600
    cfg = agent_load_config(done.agent_config)
    assert cfg.mqtt.username == "T8"
    assert cfg.mqtt.password_file == done.mqtt_password_file
    password = mqtt_password(cfg.mqtt)
    assert password is not None
    assert len(password) >= 32
    assert password not in done.agent_config.read_text()
    again = provision_terminal(layout, "T8")
    assert mqtt_password(agent_load_config(again.agent_config).mqtt) == password
    other = provision_terminal(layout, "T9")
    assert mqtt_password(agent_load_config(other.agent_config).mqtt) != password
    # Never run secure: nothing registered, nothing made under DIR/mosquitto.
    assert not layout.mosquitto_dir.exists()


def test_credentials_are_registered_with_the_sandboxs_secure_broker(tmp_path: Path) -> None:
    """Once the sandbox's Mosquitto has a password file, provisioning adds the
    terminal to it (a stopped broker reads it at its next start)."""
    layout = Layout.of(tmp_path)
    broker = MosquittoBroker(layout.mosquitto_dir, secure=True)
    broker.tms_credentials  # noqa: B018  # makes the password file, as a secure start does
    done = provision_terminal(layout, "T10")
    password = done.mqtt_password_file.read_text().strip()
    lines = {line.partition(":")[0]: line for line in broker.password_path.read_text().splitlines()}
    assert set(lines) == {"T10", TMS_USER}
    assert mosquitto_password_ok(lines["T10"], password)


def test_the_tms_user_is_not_a_terminal(tmp_path: Path) -> None:
    with pytest.raises(ProvisionError, match="TMS"):
        provision_terminal(Layout.of(tmp_path), TMS_USER)
