"""agent.config_edit: the setup form applied to agent.toml, comments kept, atomic."""

from __future__ import annotations

import dataclasses
import os
import stat
from pathlib import Path

import pytest

from agent.config import ConfigError, load_config
from agent.config_edit import (
    EcrHubSettings,
    apply_settings,
    format_readers,
    parse_readers,
    read_settings,
    save_settings,
)
from tests.ui.conftest import write_config

EXAMPLE = Path(__file__).parents[2] / "systemd" / "agent.toml.example"


def _comments(text: str) -> list[str]:
    return [line[line.index("#") :] for line in text.splitlines() if "#" in line]


def test_reads_the_form_from_the_example() -> None:
    s = read_settings(EXAMPLE.read_text())
    assert s == EcrHubSettings(
        broker_url="mqtt://127.0.0.1:1883",
        terminal_sn="T0001",
        gateway_url="http://127.0.0.1:8080",
        readers=(("nfc", "pn532:/dev/sadad-nfc"),),
    )


def test_apply_keeps_every_comment_and_untouched_line() -> None:
    text = EXAMPLE.read_text()
    new = apply_settings(
        text,
        EcrHubSettings(
            broker_url="mqtts://tms.example.com:8883",
            terminal_sn="T0042",
            ca_file="ca.pem",
            gateway_url="https://gw.example.com",
            readers=(("nfc", "pn532:/dev/ttyUSB0"), ("qr", "scanner:/dev/sadad-qr")),
        ),
    )
    assert _comments(new) == _comments(text)
    assert 'sn = "T0042"                          # terminal serial number' in new
    assert 'url = "mqtts://tms.example.com:8883"' in new
    assert 'ca_file = "ca.pem"' in new
    assert 'nfc = "pn532:/dev/ttyUSB0"' in new
    assert 'qr = "scanner:/dev/sadad-qr"' in new
    unchanged = [line for line in text.splitlines() if "app_id" in line or "keepalive" in line]
    assert all(line in new.splitlines() for line in unchanged)
    again = read_settings(new)
    assert (again.terminal_sn, again.ca_file, len(again.readers)) == ("T0042", "ca.pem", 2)


def test_unchanged_form_changes_nothing_and_empty_tls_removes_the_key() -> None:
    text = EXAMPLE.read_text()
    assert apply_settings(text, read_settings(text)) == text
    with_ca = apply_settings(
        text, dataclasses.replace(read_settings(text), broker_url="mqtts://h", ca_file="ca.pem")
    )
    without = apply_settings(with_ca, dataclasses.replace(read_settings(with_ca), ca_file=" "))
    assert "ca_file =" not in without.replace("# ca_file =", "")


def test_readers_lines() -> None:
    text = (
        "nfc = \"pn532:/dev/ttyUSB0\"\n\n# a comment\nqr=scanner:/dev/qr\ncard = 'magstripe:/dev/m'"
    )
    readers = parse_readers(text)
    assert readers == (
        ("nfc", "pn532:/dev/ttyUSB0"),
        ("qr", "scanner:/dev/qr"),
        ("card", "magstripe:/dev/m"),
    )
    assert parse_readers(format_readers(readers)) == readers
    with pytest.raises(ConfigError) as err:
        parse_readers('nfc = "a:b"\nthis is wrong\nnfc = "c:d"')
    assert err.value.problems[0].startswith("readers line 2:")
    assert err.value.problems[1] == "readers line 3: reader nfc is named twice"


def test_save_validates_writes_atomically_and_keeps_the_mode(tmp_path: Path) -> None:
    path = write_config(tmp_path)
    before = path.read_text()
    settings = dataclasses.replace(
        read_settings(before),
        terminal_sn="T0002",
        cert_file="terminal.crt",
        key_file="terminal.key",
    )
    cfg = save_settings(path, settings)
    assert cfg.terminal.sn == "T0002"
    assert cfg.mqtt.cert_file == tmp_path / "terminal.crt"
    after = path.read_text()
    assert _comments(after) == _comments(before)
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    assert load_config(path).terminal.sn == "T0002"
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_save_refuses_what_the_agent_would_refuse(tmp_path: Path) -> None:
    path = write_config(tmp_path)
    before = path.read_text()
    bad = dataclasses.replace(
        read_settings(before),
        broker_url="mqtt://plain.example.com",  # TLS files need mqtts://
        terminal_sn="bad sn!",
        readers=(("nfc", "warpdrive:/dev/x"),),
    )
    with pytest.raises(ConfigError) as err:
        save_settings(path, bad)
    text = str(err.value)
    assert "agent.toml: terminal.sn: must be 1-32 letters" in text
    assert "agent.toml: mqtt.ca_file: TLS settings need an mqtts:// url" in text
    assert "agent.toml: readers.nfc:" in text
    assert path.read_text() == before


def test_save_through_a_symlink_and_unwritable_dir(tmp_path: Path) -> None:
    real = write_config(tmp_path)
    link = tmp_path / "link.toml"
    link.symlink_to(real)
    save_settings(link, dataclasses.replace(read_settings(real.read_text()), terminal_sn="T0003"))
    assert link.is_symlink()
    assert load_config(real).terminal.sn == "T0003"
    if os.geteuid() == 0:
        return  # root writes anywhere
    tmp_path.chmod(0o500)
    try:
        with pytest.raises(ConfigError, match="cannot write"):
            save_settings(
                real, dataclasses.replace(read_settings(real.read_text()), terminal_sn="T4")
            )
    finally:
        tmp_path.chmod(0o700)


def test_a_failed_rename_leaves_the_file_and_no_temp(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write_config(tmp_path)
    before = path.read_text()

    def refuse(src: object, dst: object) -> None:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(os, "replace", refuse)
    with pytest.raises(ConfigError, match="cannot write: Permission denied"):
        save_settings(path, dataclasses.replace(read_settings(before), terminal_sn="T0009"))
    assert path.read_text() == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_bad_toml_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="invalid TOML"):
        read_settings("[terminal\n")
