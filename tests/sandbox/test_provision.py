"""Data directory preparation and terminal provisioning, in-process."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from agent.config import load_config as agent_load_config
from agent.config import technician_pin_hash
from agent.technician import verify_pin
from cloud.config import load_config
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
