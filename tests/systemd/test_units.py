"""The systemd units verify and stay hardened, the udev rules give every reader
its stable name and keep ModemManager away, and install.sh / uninstall.sh
stage the right files with the right modes (into a temporary DESTDIR).

``systemd-analyze`` comes from Debian's ``systemd`` package (``make deps``
installs it); only the tests that run it are skipped without it.
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.agent_rig import unit_environment

SYSTEMD = Path(__file__).resolve().parents[2] / "systemd"
INSTALL = SYSTEMD / "install.sh"
UNINSTALL = SYSTEMD / "uninstall.sh"
UNITS = ("sadad-agent.service", "sadad-ui.service")
VENV_BIN = "/opt/sadad-terminal/venv/bin"
ANALYZE = shutil.which("systemd-analyze")
needs_analyze = pytest.mark.skipif(
    ANALYZE is None,
    reason="systemd-analyze is missing: `make deps` installs it "
    "(apt-get install systemd); these tests run it on the unit files",
)

Unit = dict[str, dict[str, list[str]]]


def parse_unit(text: str) -> Unit:
    """Sections -> key -> every value assigned, in order (systemd.syntax(7),
    without line continuations, which the units do not use)."""
    unit: Unit = {}
    section: dict[str, list[str]] | None = None
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        assert not line.endswith("\\"), f"line {n}: continuation lines are not expected"
        if line.startswith("["):
            assert re.fullmatch(r"\[[A-Za-z]+\]", line), f"line {n}: bad section {line!r}"
            section = unit.setdefault(line[1:-1], {})
            continue
        key, sep, value = line.partition("=")
        assert sep, f"line {n}: not KEY=VALUE: {line!r}"
        assert re.fullmatch(r"[A-Za-z]+", key), f"line {n}: bad key {key!r}"
        assert section is not None, f"line {n}: assignment before any section"
        section.setdefault(key, []).append(value)
    return unit


def one(unit: Unit, section: str, key: str) -> str:
    values = unit[section].get(key, [])
    assert len(values) == 1, f"[{section}] {key}: expected one value, got {values}"
    return values[0]


def _unit_with_existing_binary(name: str, tmp_path: Path) -> Path:
    """``verify`` checks that ExecStart exists: point it at stand-ins for the venv."""
    fake = tmp_path / "bin"
    fake.mkdir(exist_ok=True)
    for tool in ("sadad-agent", "sadad-ui"):
        exe = fake / tool
        exe.write_text("#!/bin/sh\nexit 0\n")
        exe.chmod(0o755)
    text = (SYSTEMD / name).read_text()
    assert VENV_BIN in text
    unit = tmp_path / name
    unit.write_text(text.replace(VENV_BIN, str(fake)))
    return unit


def _analyze(*args: str) -> subprocess.CompletedProcess[str]:
    assert ANALYZE is not None
    return subprocess.run([ANALYZE, *args], capture_output=True, text=True, timeout=50)


# ---------------------------------------------------------------- systemd-analyze


@needs_analyze
@pytest.mark.parametrize("name", UNITS)
def test_unit_verifies_without_warnings(name: str, tmp_path: Path) -> None:
    unit = _unit_with_existing_binary(name, tmp_path)
    done = _analyze("verify", str(unit))
    assert done.returncode == 0, done.stderr
    assert done.stderr.strip() == "", done.stderr  # no warning either


@needs_analyze
@pytest.mark.parametrize("name", UNITS)
def test_exposure_at_most_2(name: str, tmp_path: Path) -> None:
    """Measured with systemd 252 (Debian 12): agent 1.5, UI 1.0."""
    unit = _unit_with_existing_binary(name, tmp_path)
    done = _analyze("security", "--offline=yes", "--no-pager", str(unit))
    match = re.search(r"Overall exposure level for \S+: ([0-9]+\.[0-9]+)", done.stdout)
    assert match, done.stdout + done.stderr
    assert float(match.group(1)) <= 2.0, done.stdout


# ---------------------------------------------------------------- unit contents


def test_agent_unit_settings() -> None:
    unit = parse_unit((SYSTEMD / "sadad-agent.service").read_text())
    expected = {
        "Type": "notify",
        "NotifyAccess": "main",
        "WatchdogSec": "30",
        "Restart": "on-failure",
        "ExecStart": f"{VENV_BIN}/sadad-agent run --config /etc/sadad-agent/agent.toml",
        "ExecReload": "/bin/kill -HUP $MAINPID",
        "RestartPreventExitStatus": "78",  # agent.config.EXIT_CONFIG
        "User": "sadad",
        "Group": "sadad",
        "SupplementaryGroups": "dialout sadad-ui",  # sadad-ui: the UI socket's group
        "StateDirectory": "sadad-agent",
        "ConfigurationDirectory": "sadad-agent",
        "ConfigurationDirectoryMode": "0770",  # what install.sh sets
        "ReadWritePaths": "/etc/sadad-agent",  # setup saves through the agent
        "RuntimeDirectory": "sadad-agent",
        "RuntimeDirectoryMode": "0755",
        "RuntimeDirectoryPreserve": "restart",
        "LoadCredential": "terminal.key:/etc/sadad-agent/keys/terminal_private.pem",
        "UMask": "0027",
        "LimitCORE": "0",
        "DevicePolicy": "closed",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "NoNewPrivileges": "yes",
        "RestrictAddressFamilies": "AF_UNIX AF_INET AF_INET6",
        "SystemCallArchitectures": "native",
        "CapabilityBoundingSet": "",
        "MemoryDenyWriteExecute": "yes",
        "ProtectProc": "invisible",
        "ProcSubset": "pid",
    }
    for key, value in expected.items():
        assert one(unit, "Service", key) == value, key
    assert unit["Service"]["SystemCallFilter"][0] == "@system-service"
    # The integration tests and benchmarks start the agent with this environment
    # (agent_rig.unit_environment), so they run it as the unit does.
    assert set(unit["Service"]["Environment"]) == {"PYTHONFAULTHANDLER=1", "PYTHONOPTIMIZE=2"}
    assert unit_environment(SYSTEMD / "sadad-agent.service") == {
        "PYTHONFAULTHANDLER": "1",
        "PYTHONOPTIMIZE": "2",
    }
    assert set(unit["Service"]["DeviceAllow"]) == {
        "char-ttyUSB rw",
        "char-ttyACM rw",
        "char-ttyS rw",
    }
    # PrivateDevices=yes would leave only pseudo devices in /dev: no readers.
    assert "PrivateDevices" not in unit["Service"]
    assert "time-sync.target" in one(unit, "Unit", "After")
    assert one(unit, "Install", "WantedBy") == "multi-user.target"


def test_ui_unit_settings() -> None:
    unit = parse_unit((SYSTEMD / "sadad-ui.service").read_text())
    expected = {
        "ExecStart": f"{VENV_BIN}/sadad-ui --socket /run/sadad-agent/agent.sock",
        "Restart": "always",
        "User": "sadad-ui",  # in no group of the agent's
        "Group": "sadad-ui",
        "SupplementaryGroups": "tty",
        "Environment": "TERM=linux",
        "TTYPath": "/dev/tty1",
        "StandardInput": "tty",
        "StandardOutput": "tty",
        "TTYReset": "yes",
        "TTYVHangup": "yes",
        "TTYVTDisallocate": "yes",
        "RestrictAddressFamilies": "AF_UNIX",
    }
    assert "ReadWritePaths" not in unit["Service"]  # setup saves through the agent
    for key, value in expected.items():
        assert one(unit, "Service", key) == value, key
    assert one(unit, "Unit", "Conflicts") == "getty@tty1.service"
    assert any("sadad-agent.service" in v for v in unit["Unit"]["After"])
    # The agent's socket path is the one the config example and the UI use.
    example = (SYSTEMD / "agent.toml.example").read_text()
    assert 'socket = "/run/sadad-agent/agent.sock"' in example
    assert 'socket_group = "sadad-ui"' in example  # the UI unit's group


# ---------------------------------------------------------------- udev rules

_UDEV_TOKEN = re.compile(
    r'(?P<key>[A-Z_]+)(?:\{(?P<attr>[A-Za-z0-9_]+)\})?\s*(?P<op>==|!=|\+=|:=|=)\s*"(?P<value>[^"]*)"'
)
_MATCH_KEYS = {"SUBSYSTEM", "ATTRS", "KERNELS", "ENV", "ACTION"}
_ASSIGN_KEYS = {"SYMLINK", "GROUP", "MODE", "ENV"}


def _udev_rules() -> Iterator[list[tuple[str, str | None, str, str]]]:
    for n, line in enumerate((SYSTEMD / "99-sadad-readers.rules").read_text().splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        tokens = []
        for part in line.split(","):
            token = _UDEV_TOKEN.fullmatch(part.strip())
            assert token, f"line {n}: malformed udev token {part.strip()!r}"
            tokens.append((token["key"], token["attr"], token["op"], token["value"]))
        yield tokens


def test_udev_rules_are_well_formed_and_name_every_reader() -> None:
    names: set[str] = set()
    rules = list(_udev_rules())
    assert len(rules) >= 3
    for tokens in rules:
        matches = {(k, a): v for k, a, op, v in tokens if op in ("==", "!=")}
        assigns = {(k, a): v for k, a, op, v in tokens if op in ("=", "+=", ":=")}
        for key, _attr, op, _value in tokens:
            allowed = _MATCH_KEYS if op in ("==", "!=") else _ASSIGN_KEYS
            assert key in allowed, f"{key} with {op}"
        assert matches[("SUBSYSTEM", None)] == "tty"
        assert re.fullmatch(r"[0-9a-f]{4}", matches[("ATTRS", "idVendor")])
        assert re.fullmatch(r"[0-9a-f]{4}", matches[("ATTRS", "idProduct")])
        assert assigns[("GROUP", None)] == "dialout"
        assert assigns[("MODE", None)] == "0660"
        assert assigns[("ENV", "ID_MM_DEVICE_IGNORE")] == "1"
        symlinks = [v for k, _a, op, v in tokens if k == "SYMLINK"]
        assert [op for k, _a, op, _v in tokens if k == "SYMLINK"] == ["+="]
        names.update(symlinks)
    assert names == {"sadad-nfc", "sadad-msr", "sadad-scanner"}


def test_udev_rules_cover_the_common_pn532_bridges() -> None:
    bridges = set()
    for tokens in _udev_rules():
        values = {(k, a): v for k, a, _op, v in tokens}
        if values[("SYMLINK", None)] == "sadad-nfc":
            bridges.add((values[("ATTRS", "idVendor")], values[("ATTRS", "idProduct")]))
    # CH340, FTDI FT232R, CP210x
    assert bridges == {("1a86", "7523"), ("0403", "6001"), ("10c4", "ea60")}


# ---------------------------------------------------------------- install.sh / uninstall.sh


def _run(script: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(script), *args], capture_output=True, text=True, timeout=50, check=False
    )


def _mode(path: Path) -> int:
    return path.stat().st_mode & 0o7777


@pytest.mark.parametrize("script", [INSTALL, UNINSTALL])
def test_scripts_are_strict_bash(script: Path) -> None:
    text = script.read_text()
    assert text.startswith("#!/usr/bin/env bash\n")
    assert "set -euo pipefail" in text
    assert _mode(script) & 0o111, "not executable"
    done = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_install_into_destdir(tmp_path: Path) -> None:
    dest = tmp_path / "root"
    for _ in range(2):  # idempotent
        done = _run(INSTALL, "--destdir", str(dest), "--no-venv")
        assert done.returncode == 0, done.stderr
    config_dir = dest / "etc/sadad-agent"
    config = config_dir / "agent.toml"
    assert config.read_text() == (SYSTEMD / "agent.toml.example").read_text()
    assert _mode(config) == 0o640
    assert _mode(config_dir) == 0o770  # the agent replaces agent.toml here
    assert _mode(config_dir / "keys") == 0o750  # the keys: root's, the agent reads them
    for unit in UNITS:
        installed = dest / "etc/systemd/system" / unit
        assert installed.read_text() == (SYSTEMD / unit).read_text()
        assert _mode(installed) == 0o644
    rules = dest / "etc/udev/rules.d/99-sadad-readers.rules"
    assert rules.read_text() == (SYSTEMD / "99-sadad-readers.rules").read_text()
    assert _mode(rules) == 0o644
    assert (dest / "opt/sadad-terminal/README.md").is_file()
    assert not (dest / "opt/sadad-terminal/venv").exists()
    leftovers = [p.name for p in dest.rglob("*") if p.name.endswith((".tmp", ".new"))]
    assert leftovers == []


def test_install_honours_destdir_env_and_prefix(tmp_path: Path) -> None:
    dest = tmp_path / "root"
    done = subprocess.run(
        ["bash", str(INSTALL), "--no-venv", "--prefix=/srv/sadad"],
        capture_output=True,
        text=True,
        timeout=50,
        env={"PATH": "/usr/bin:/bin", "DESTDIR": str(dest)},
    )
    assert done.returncode == 0, done.stderr
    agent = (dest / "etc/systemd/system/sadad-agent.service").read_text()
    assert "ExecStart=/srv/sadad/venv/bin/sadad-agent run " in agent
    assert "/opt/sadad-terminal" not in agent
    ui = (dest / "etc/systemd/system/sadad-ui.service").read_text()
    assert "ExecStart=/srv/sadad/venv/bin/sadad-ui " in ui
    assert (dest / "srv/sadad/README.md").is_file()


def test_install_keeps_the_config_and_edited_rules(tmp_path: Path) -> None:
    dest = tmp_path / "root"
    assert _run(INSTALL, "--destdir", str(dest), "--no-venv").returncode == 0
    config = dest / "etc/sadad-agent/agent.toml"
    config.write_text("# this terminal's own settings\n")
    rules = dest / "etc/udev/rules.d/99-sadad-readers.rules"
    edited = rules.read_text().replace('"0acd"', '"0801"')
    rules.write_text(edited)

    done = _run(INSTALL, "--destdir", str(dest), "--no-venv")
    assert done.returncode == 0, done.stderr
    assert config.read_text() == "# this terminal's own settings\n"
    assert rules.read_text() == edited
    new = rules.with_name(rules.name + ".new")
    assert new.read_text() == (SYSTEMD / "99-sadad-readers.rules").read_text()
    assert "kept your edited" in done.stdout

    rules.write_text(new.read_text())  # the technician merged the new version
    assert _run(INSTALL, "--destdir", str(dest), "--no-venv").returncode == 0
    assert not new.exists()


def test_install_refuses_to_build_a_venv_into_a_destdir(tmp_path: Path) -> None:
    done = _run(INSTALL, "--destdir", str(tmp_path / "root"))
    assert done.returncode == 2
    assert "--no-venv" in done.stderr


@pytest.mark.parametrize(
    ("script", "args"),
    [
        (INSTALL, ["--bogus"]),
        (INSTALL, ["--destdir"]),
        (INSTALL, ["--destdir", "{dest}", "--no-venv", "--prefix", "relative/path"]),
        (UNINSTALL, ["--bogus"]),
        (UNINSTALL, ["--destdir", "{dest}", "--prefix", "/"]),
    ],
)
def test_scripts_refuse_bad_options(script: Path, args: list[str], tmp_path: Path) -> None:
    # Every case that gets past option parsing has a --destdir: never the live system.
    done = _run(script, *(a.replace("{dest}", str(tmp_path / "root")) for a in args))
    assert done.returncode == 2, done.stdout + done.stderr
    assert done.stderr.startswith(script.name + ": ")


@pytest.mark.parametrize("script", [INSTALL, UNINSTALL])
def test_scripts_have_help(script: Path) -> None:
    done = _run(script, "--help")
    assert done.returncode == 0
    assert "--destdir" in done.stdout
    assert "--prefix" in done.stdout


def test_uninstall_from_destdir(tmp_path: Path) -> None:
    dest = tmp_path / "root"
    assert _run(INSTALL, "--destdir", str(dest), "--no-venv").returncode == 0
    journal = dest / "var/lib/sadad-agent/journal.db"
    journal.parent.mkdir(parents=True)
    journal.write_bytes(b"")

    for _ in range(2):  # idempotent
        done = _run(UNINSTALL, "--destdir", str(dest))
        assert done.returncode == 0, done.stderr
    for unit in UNITS:
        assert not (dest / "etc/systemd/system" / unit).exists()
    assert not (dest / "etc/udev/rules.d/99-sadad-readers.rules").exists()
    assert not (dest / "opt/sadad-terminal").exists()
    # The config and the journal stay: unfinished payments are resolved from it.
    assert (dest / "etc/sadad-agent/agent.toml").is_file()
    assert journal.is_file()

    done = _run(UNINSTALL, "--destdir", str(dest), "--purge")
    assert done.returncode == 0, done.stderr
    assert not (dest / "etc/sadad-agent").exists()
    assert not (dest / "var/lib/sadad-agent").exists()


# ---------------------------------------------------------------- symlinks planted


def _outside(tmp_path: Path) -> Path:
    victim = tmp_path / "shadow"
    victim.write_text("root:x:0:0\n")
    victim.chmod(0o600)
    return victim


@pytest.mark.parametrize(
    "planted",
    ["etc/sadad-agent/agent.toml", "etc/sadad-agent", "etc/sadad-agent/keys"],
)
def test_install_never_works_through_a_planted_symlink(tmp_path: Path, planted: str) -> None:
    """The config directory was group-writable: its user could plant a link
    where the installer sets owners and modes. It refuses, and nothing
    outside DESTDIR changes."""
    dest = tmp_path / "root"
    victim = _outside(tmp_path)
    link = dest / planted
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(victim if planted.endswith(".toml") else tmp_path)
    before = (victim.read_text(), victim.stat().st_mode, victim.stat().st_uid)
    done = _run(INSTALL, "--destdir", str(dest), "--no-venv")
    assert done.returncode != 0
    assert "symbolic link" in done.stderr
    assert (victim.read_text(), victim.stat().st_mode, victim.stat().st_uid) == before


def test_install_sets_key_modes_without_following_links(tmp_path: Path) -> None:
    dest = tmp_path / "root"
    assert _run(INSTALL, "--destdir", str(dest), "--no-venv").returncode == 0
    keys = dest / "etc/sadad-agent/keys"
    (keys / "gateway_public.pem").write_text("public\n")
    (keys / "gateway_public.pem").chmod(0o666)
    (keys / "terminal_private.pem").write_text("private\n")
    (keys / "terminal_private.pem").chmod(0o644)
    assert _run(INSTALL, "--destdir", str(dest), "--no-venv").returncode == 0
    assert _mode(keys / "gateway_public.pem") == 0o640
    assert _mode(keys / "terminal_private.pem") == 0o600
    victim = _outside(tmp_path)
    (keys / "technician.pin").symlink_to(victim)  # planted in keys/
    done = _run(INSTALL, "--destdir", str(dest), "--no-venv")
    assert done.returncode != 0
    assert "a symbolic link" in done.stderr
    assert _mode(victim) == 0o600


def test_own_changes_the_owner_through_the_descriptor(tmp_path: Path) -> None:
    """As root, the installer's owner change on a live system: a symlink to
    another file is refused; a real file gets the owner and mode."""
    if os.geteuid() != 0:
        pytest.skip("changing owners needs root")
    script = INSTALL.read_text()
    start = script.index("own() {")
    end = script.index("\n}\n", script.index("PY\n", start)) + 3
    helper = script[start:end]
    victim = _outside(tmp_path)
    os.chown(victim, 0, 0)
    link = tmp_path / "agent.toml"
    link.symlink_to(victim)
    real = tmp_path / "real.pem"
    real.write_text("x")
    body = (
        'set -eu\npython=python3\ndestdir=""\ndie() { echo "$1" >&2; exit 1; }\n'
        + helper
        + f'\nown "{real}" nobody:nogroup 0640\nown "{link}" nobody:nogroup 0644\n'
    )
    done = subprocess.run(["bash", "-c", body], capture_output=True, text=True, timeout=30)
    assert done.returncode != 0
    assert "symbolic link" in done.stderr
    assert (real.stat().st_uid, _mode(real)) == (pwd.getpwnam("nobody").pw_uid, 0o640)
    assert (victim.stat().st_uid, _mode(victim)) == (0, 0o600)
