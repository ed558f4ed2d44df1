"""sd_notify on real AF_UNIX datagram sockets (a path and an abstract name)."""

from __future__ import annotations

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
from agent.notify import Notifier


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
