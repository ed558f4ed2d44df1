"""sd_notify on real AF_UNIX datagram sockets (a path and an abstract name)."""

from __future__ import annotations

import asyncio
import os
import re
import select
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent import notify as sd
from agent.coalescing import STATUS_HOLD
from agent.config import AgentConfig, GatewayConfig, MqttConfig, TerminalConfig, UiConfig
from agent.notify import Notifier
from agent.service import AgentService


class Manager:
    """The service manager's end: a bound SOCK_DGRAM socket."""

    def __init__(self, sock: socket.socket, env_value: str) -> None:
        self.sock = sock
        self.env_value = env_value

    def datagram(self) -> bytes:
        return self.sock.recv(4096)

    def nothing_pending(self) -> bool:
        readable, _, _ = select.select([self.sock], [], [], 0.05)
        return not readable


@pytest.fixture
def path_manager(tmp_path: Path) -> Iterator[Manager]:
    path = tmp_path / "n.sock"
    if len(str(path)) > 100:  # sun_path is 108 bytes
        pytest.skip("tmp_path too long for an AF_UNIX address")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        sock.settimeout(5)
        yield Manager(sock, str(path))


@pytest.fixture
def abstract_manager() -> Iterator[Manager]:
    name = f"sadad-notify-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(5)
        yield Manager(sock, "@" + name)


def test_no_socket_is_a_no_op(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert sd.notify("READY=1") is False
    n = Notifier({})
    assert not n.enabled
    assert n.ready() is False
    assert n.watchdog() is False


def test_notify_sends_one_datagram_to_a_path(
    path_manager: Manager, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", path_manager.env_value)
    assert sd.notify("READY=1", "STATUS=Connected to broker") is True
    assert path_manager.datagram() == b"READY=1\nSTATUS=Connected to broker"
    assert sd.notify("WATCHDOG=1") is True
    assert path_manager.datagram() == b"WATCHDOG=1"


def test_abstract_namespace(abstract_manager: Manager, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", abstract_manager.env_value)
    assert sd.notify("STOPPING=1") is True
    assert abstract_manager.datagram() == b"STOPPING=1"


def test_notifier_messages(abstract_manager: Manager) -> None:
    n = Notifier({"NOTIFY_SOCKET": abstract_manager.env_value})
    assert n.enabled
    assert n.ready("Ready: 2 readers")
    assert abstract_manager.datagram() == b"READY=1\nSTATUS=Ready: 2 readers"
    assert n.status("MQTT: connection lost\nretrying")
    assert abstract_manager.datagram() == b"STATUS=MQTT: connection lost retrying"
    assert n.watchdog()
    assert abstract_manager.datagram() == b"WATCHDOG=1"
    assert n.stopping("draining")
    assert abstract_manager.datagram() == b"STOPPING=1\nSTATUS=draining"
    assert n.extend_timeout(12.5)
    assert abstract_manager.datagram() == b"EXTEND_TIMEOUT_USEC=12500000"

    before = time_usec()
    assert n.reloading()
    data = abstract_manager.datagram().decode()
    after = time_usec()
    match = re.fullmatch(r"RELOADING=1\nMONOTONIC_USEC=(\d+)", data)
    assert match is not None, data
    assert before <= int(match[1]) <= after
    assert abstract_manager.nothing_pending()
    n.close()


def time_usec() -> int:
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000


def test_malformed_lines_raise() -> None:
    n = Notifier({})
    for bad in ("READY", "=1", "STATUS=a\nb"):
        with pytest.raises(ValueError, match="KEY=VALUE"):
            n.send(bad)
    with pytest.raises(ValueError, match="at least one"):
        sd.notify()


def test_manager_gone_returns_false(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    n = Notifier({"NOTIFY_SOCKET": str(tmp_path / "gone.sock")})
    assert n.enabled
    assert n.ready() is False
    assert "sd_notify to" in caplog.text
    n.close()


def test_unsupported_address_forms_are_ignored() -> None:
    assert not Notifier({"NOTIFY_SOCKET": "vsock:2:1234"}).enabled
    assert not Notifier({"NOTIFY_SOCKET": "relative/path"}).enabled


def test_watchdog_interval(monkeypatch: pytest.MonkeyPatch) -> None:
    pid = str(os.getpid())
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    monkeypatch.delenv("WATCHDOG_USEC", raising=False)
    assert sd.watchdog_interval() is None
    monkeypatch.setenv("WATCHDOG_USEC", "30000000")
    assert sd.watchdog_interval() == 30.0
    monkeypatch.setenv("WATCHDOG_PID", pid)
    assert sd.watchdog_interval() == 30.0
    monkeypatch.setenv("WATCHDOG_PID", "1")  # inherited from a parent: not ours
    assert sd.watchdog_interval() is None

    n = Notifier({"WATCHDOG_USEC": "20000000", "WATCHDOG_PID": pid})
    assert n.watchdog_timeout == 20.0
    assert n.ping_interval == 10.0
    for bad in ("0", "-5", "abc", ""):
        assert Notifier({"WATCHDOG_USEC": bad}).ping_interval is None


def test_one_socket_kept_and_a_new_one_after_the_manager_restarts(tmp_path: Path) -> None:
    """The notifier keeps its connected socket; when the manager comes back on
    the same path (``systemctl daemon-reexec``), the send that fails is tried
    again on a fresh socket."""
    path = tmp_path / "n.sock"
    first = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    first.bind(str(path))
    n = Notifier({"NOTIFY_SOCKET": str(path)})
    try:
        assert n.status("one")
        kept = n._sock
        assert n.status("two")
        assert n._sock is kept
        assert first.recv(4096) == b"STATUS=one"
        first.close()
        path.unlink()
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as second:
            second.bind(str(path))
            second.settimeout(5)
            assert n.status("three")
            assert n._sock is not kept
            assert second.recv(4096) == b"STATUS=three"
    finally:
        n.close()


def test_a_manager_that_does_not_read_never_blocks_the_agent(
    path_manager: Manager, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """STATUS= and WATCHDOG=1 are dropped at once when the manager's queue is
    full; a lifecycle message waits at most LIFECYCLE_WAIT for room."""
    monkeypatch.setattr(sd, "LIFECYCLE_WAIT", 0.2)
    n = Notifier({"NOTIFY_SOCKET": path_manager.env_value})
    try:
        sent = 0
        while n.status(f"filling {sent}"):  # until the manager's queue is full
            sent += 1
            assert sent < 100_000
        assert "not reading" in caplog.text
        start = time.monotonic()
        assert n.watchdog() is False
        assert time.monotonic() - start < 0.1
        start = time.monotonic()
        assert n.stopping() is False
        assert 0.15 <= time.monotonic() - start < 1.0
        path_manager.datagram()  # room for one: a lifecycle message gets it
        assert n.stopping() is True
    finally:
        n.close()


def _service(notifier: Notifier, tmp_path: Path) -> AgentService:
    cfg = AgentConfig(
        terminal=TerminalConfig(sn="T1", app_id="T1", private_key_file=tmp_path / "k.pem"),
        mqtt=MqttConfig(url="mqtt://127.0.0.1:1"),
        gateway=GatewayConfig(url="http://gw.test", public_key_file=tmp_path / "gw.pem"),
        ui=UiConfig(socket=tmp_path / "agent.sock"),
    )
    return AgentService(cfg, notifier)


async def test_status_line_sent_once_after_a_burst_not_on_the_screen_path(
    abstract_manager: Manager, tmp_path: Path
) -> None:
    """A screen change costs the screen no datagram to PID 1: the STATUS= line
    follows STATUS_HOLD later, once for a burst of changes."""
    n = Notifier({"NOTIFY_SOCKET": abstract_manager.env_value})
    svc = _service(n, tmp_path)
    try:
        for _ in range(3):
            svc._status_changed()
        assert abstract_manager.nothing_pending()  # (this blocks the loop: no timer ran)
        await asyncio.sleep(STATUS_HOLD + 0.05)
        assert abstract_manager.datagram().startswith(b"STATUS=")
        assert abstract_manager.nothing_pending()
    finally:
        n.close()


async def test_no_status_line_after_stopping(abstract_manager: Manager, tmp_path: Path) -> None:
    n = Notifier({"NOTIFY_SOCKET": abstract_manager.env_value})
    svc = _service(n, tmp_path)
    try:
        svc._status_changed()  # a STATUS= line on its way
        svc._say_stopping()
        svc._status_changed()  # the shutdown changes the screen too
        await asyncio.sleep(STATUS_HOLD + 0.05)
        assert abstract_manager.datagram() == b"STOPPING=1\nSTATUS=stopping"
        assert abstract_manager.nothing_pending()
    finally:
        n.close()
