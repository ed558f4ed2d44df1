"""``make demo DEMO_HEADLESS=1`` as a new user runs it: in a fresh copy of the
repository, with the Makefile's own relative data folder; three sales."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def fresh_copy(dest: Path) -> Path:
    """What a clone of this tree holds (tracked files and new ones not ignored),
    with the venv borrowed: its files look older than the venv's stamp, so
    make does not reinstall it."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        check=True,
    ).stdout.split(b"\0")
    for name in filter(None, listed):
        src = REPO / os.fsdecode(name)
        if not src.is_file():
            continue  # deleted in the working tree
        target = dest / os.fsdecode(name)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, target)
        os.utime(target, (946_684_800, 946_684_800))  # 2000-01-01
    (dest / ".venv").symlink_to(REPO / ".venv")
    return dest


@pytest.mark.timeout(180)
def test_make_demo_headless_in_a_fresh_copy(tmp_path: Path) -> None:
    clone = fresh_copy(tmp_path / "clone")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MAKE", "DEMO_"))}
    done = subprocess.run(
        ["make", "demo", "DEMO_HEADLESS=1"],
        cwd=clone,
        env=env,
        capture_output=True,
        text=True,
        timeout=170,
        stdin=subprocess.DEVNULL,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "pip install" not in done.stdout  # the borrowed venv was taken as installed
    lines = [line for line in done.stdout.splitlines() if line.startswith("sale by")]
    assert len(lines) == 3
    assert all(": status 2 " in line for line in lines), lines
    assert "demo: 3 sales completed, 3 receipts printed" in done.stdout
    assert "setup    F2 on the checkout, technician PIN 1234" in done.stdout
    data = clone / "demo-data"  # the Makefile's default, relative to the clone
    agent_toml = next(data.rglob("agent.toml"))
    assert str(data / "nfc.tty") in agent_toml.read_text()  # absolute paths only
    pin_hash = (agent_toml.parent / "technician.pin").read_text()
    assert pin_hash.startswith("scrypt$")  # setup opens with the PIN, kept only hashed
    # Each sale's receipt, from the simulated printer the demo says it runs.
    assert f"receipts {data / 'receipts.txt'}" in done.stdout
    receipts = (data / "receipts.txt").read_text("utf-8")
    assert receipts.count("APPROVED") == 3
    assert "476173******0010" in receipts
    agent_log = (data / "logs" / "agent.log").read_text()
    for secret in ("4761739001010010", "134567890123456789"):
        assert secret not in agent_log
        assert secret not in receipts
