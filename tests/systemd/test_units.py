"""The systemd units verify, the agent's unit stays hardened, and the udev
rules give every reader its stable name and keep ModemManager away."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

SYSTEMD = Path(__file__).resolve().parents[2] / "systemd"
ANALYZE = shutil.which("systemd-analyze")
needs_analyze = pytest.mark.skipif(
    ANALYZE is None, reason="systemd-analyze missing: `make test` installs the systemd package"
)


def _unit_with_existing_binary(name: str, tmp_path: Path) -> Path:
    """`verify` checks ExecStart exists; point it at a stand-in for the venv."""
    fake = tmp_path / "bin"
    fake.mkdir(exist_ok=True)
    for tool in ("sadad-agent", "sadad-ui"):
        exe = fake / tool
        exe.write_text("#!/bin/sh\n")
        exe.chmod(0o755)
    text = (SYSTEMD / name).read_text().replace("/opt/sadad-terminal/venv/bin", str(fake))
    unit = tmp_path / name
    unit.write_text(text)
    return unit


@needs_analyze
@pytest.mark.parametrize("name", ["sadad-agent.service", "sadad-ui.service"])
def test_units_verify(name: str, tmp_path: Path) -> None:
    unit = _unit_with_existing_binary(name, tmp_path)
    done = subprocess.run(
        [str(ANALYZE), "verify", str(unit)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr.strip() == ""  # no warning either


@needs_analyze
def test_agent_exposure_at_most_2(tmp_path: Path) -> None:
    unit = _unit_with_existing_binary("sadad-agent.service", tmp_path)
    done = subprocess.run(
        [str(ANALYZE), "security", "--offline=yes", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    match = re.search(r"Overall exposure level for \S+: ([0-9.]+)", done.stdout)
    assert match, done.stdout + done.stderr
    assert float(match.group(1)) <= 2.0


def test_agent_unit_essentials() -> None:
    text = (SYSTEMD / "sadad-agent.service").read_text()
    for line in (
        "Type=notify",
        "WatchdogSec=",
        "Restart=on-failure",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "SupplementaryGroups=dialout",
        "DevicePolicy=closed",
        "DeviceAllow=char-ttyUSB rw",
        "ProtectSystem=strict",
        "NoNewPrivileges=yes",
        "SystemCallFilter=@system-service",
        "LoadCredential=",
        "RestartPreventExitStatus=78",
    ):
        assert line in text, line
    assert "PrivateDevices=yes" not in text  # it would hide the serial readers


def test_udev_rules() -> None:
    rules = [
        line
        for line in (SYSTEMD / "99-sadad-readers.rules").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    names = set()
    for rule in rules:
        assert rule.startswith('SUBSYSTEM=="tty"'), rule
        assert 'ENV{ID_MM_DEVICE_IGNORE}="1"' in rule
        assert 'MODE="0660"' in rule
        assert 'GROUP="dialout"' in rule
        link = re.search(r'SYMLINK\+="([^"]+)"', rule)
        assert link, rule
        names.add(link.group(1))
    assert names == {"sadad-nfc", "sadad-msr", "sadad-scanner"}


def test_install_into_destdir(tmp_path: Path) -> None:
    dest = tmp_path / "root"
    for _ in range(2):  # idempotent
        done = subprocess.run(
            ["bash", str(SYSTEMD / "install.sh"), "--destdir", str(dest), "--no-venv"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
    config = dest / "etc/sadad-agent/agent.toml"
    assert config.read_text() == (SYSTEMD / "agent.toml.example").read_text()
    assert oct(config.stat().st_mode & 0o777) == "0o640"
    assert oct((dest / "etc/sadad-agent").stat().st_mode & 0o777) == "0o750"
    for unit in ("sadad-agent.service", "sadad-ui.service"):
        assert (dest / "etc/systemd/system" / unit).is_file()
    assert (dest / "etc/udev/rules.d/99-sadad-readers.rules").is_file()


def test_install_refuses_unknown_option() -> None:
    done = subprocess.run(
        ["bash", str(SYSTEMD / "install.sh"), "--bogus"], capture_output=True, text=True
    )
    assert done.returncode == 2
    assert "unknown option" in done.stderr
