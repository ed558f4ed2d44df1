"""The README's POS quick start, run as a new user runs it: its shell block,
verbatim, in a fresh copy of the repository (so it cannot drift from what
works), then the stop command it gives."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

from tests.integration.test_demo import REPO, fresh_copy


def quick_start() -> str:
    text = (REPO / "README.md").read_text("utf-8")
    match = re.search(r"<!-- quick start -->\n```sh\n(.*?)```", text, re.DOTALL)
    assert match, "README.md lost its quick start block"
    return match.group(1)


@pytest.mark.timeout(120)
def test_readme_quick_start_pays_an_order(tmp_path: Path) -> None:
    clone = fresh_copy(tmp_path / "clone")
    block = quick_start()
    assert block.count("\n") == 3  # three commands
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MAKE", "SADAD_"))}
    try:
        done = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", block],
            cwd=clone,
            env=env,
            capture_output=True,
            text=True,
            timeout=100,
            stdin=subprocess.DEVNULL,
        )
    finally:
        stop = subprocess.run(
            [".venv/bin/sadad-sandbox", "stop", "--data", "./sbx"],
            cwd=clone,
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "COMPLETED (paid)" in done.stdout
    assert "476173******0010" in done.stdout
    assert stop.returncode == 0, stop.stderr
    left = subprocess.run(["pgrep", "-f", str(clone / "sbx")], capture_output=True, text=True)
    assert left.stdout == ""  # the sandbox took its agent, readers and broker with it
