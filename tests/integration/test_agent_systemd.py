"""The agent under a real notify socket, as systemd runs it (Type=notify,
WatchdogSec): READY=1 once started, WATCHDOG=1 while healthy, STATUS= lines,
STOPPING=1 on SIGTERM, and a clean exit."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.integration.conftest import REPO, SandboxHandle


def _datagrams(sock: socket.socket, until: float) -> list[str]:
    out: list[str] = []
    sock.settimeout(0.2)
    while time.monotonic() < until:
        try:
            out.append(sock.recv(4096).decode())
        except TimeoutError:
            continue
    return out


@pytest.mark.timeout(60)
def test_ready_watchdog_stopping(sandbox: SandboxHandle, tmp_path: Path) -> None:
    config = sandbox.provision("NOTIFY01")
    path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    env = dict(os.environ, NOTIFY_SOCKET=str(path), WATCHDOG_USEC="1000000")
    env.pop("WATCHDOG_PID", None)
    log = (tmp_path / "agent.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "agent.cli", "run", "--config", str(config)],
        cwd=REPO,
        env=env,
        stdout=log,
        stderr=log,
        stdin=subprocess.DEVNULL,
    )
    try:
        lines: list[str] = []
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not (
            any("READY=1" in d for d in lines) and sum("WATCHDOG=1" in d for d in lines) >= 2
        ):
            lines += _datagrams(sock, time.monotonic() + 0.5)
        ready = next(d for d in lines if "READY=1" in d)
        assert "STATUS=connected; IDLE" in ready
        assert sum("WATCHDOG=1" in d for d in lines) >= 2
        assert lines.index(ready) < next(i for i, d in enumerate(lines) if "WATCHDOG=1" in d)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
        lines += _datagrams(sock, time.monotonic() + 0.3)
        assert any(d.startswith("STOPPING=1") for d in lines)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()
        sock.close()


def test_bad_config_exits_78(tmp_path: Path) -> None:
    bad = tmp_path / "agent.toml"
    bad.write_text('[terminal]\nsn = "T1"\n[mqtt]\nkeepalive = "abc"\n')
    done = subprocess.run(
        [sys.executable, "-m", "agent.cli", "run", "--config", str(bad)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 78
    assert "mqtt.keepalive" in done.stderr
