"""``make demo DEMO_HEADLESS=1``: the whole stack as real processes, three sales."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(180)
def test_headless_demo_completes_three_sales(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "sandbox.demo", "--headless", "--data", str(tmp_path / "demo")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=170,
        stdin=subprocess.DEVNULL,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    lines = [line for line in done.stdout.splitlines() if line.startswith("sale by")]
    assert len(lines) == 3
    assert all(": status 2 " in line for line in lines), lines
    assert "demo: 3 sales completed" in done.stdout
    agent_log = (tmp_path / "demo" / "logs" / "agent.log").read_text()
    for secret in ("4761739001010010", "134567890123456789"):
        assert secret not in agent_log
