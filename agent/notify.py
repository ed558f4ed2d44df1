"""Dependency-free ``sd_notify`` for a ``Type=notify`` service with a watchdog.

Contract (systemd sd_notify(3), systemd.service(5)):

* The service manager passes ``$NOTIFY_SOCKET``: a filesystem path of an
  ``AF_UNIX`` ``SOCK_DGRAM`` socket, or an abstract-namespace name written
  with a leading ``@`` (sent as a leading NUL byte). Each notification is one
  datagram of newline-separated ``KEY=VALUE`` assignments, UTF-8.
* ``notify(*lines)`` sends one datagram and returns True; without
  ``$NOTIFY_SOCKET`` (not run by systemd, or ``NotifyAccess=none``) it is a
  no-op that returns False. Sending never raises ``OSError``: a manager that
  went away must not take the daemon down, so the failure is logged and False
  returned. A line that is not ``KEY=VALUE`` or contains a newline raises
  ``ValueError`` (that is a bug in the caller).
* Messages used by the agent: ``READY=1`` (start-up done), ``STATUS=...``
  (one line shown by ``systemctl status``), ``WATCHDOG=1`` (keep-alive),
  ``STOPPING=1``, ``RELOADING=1`` together with ``MONOTONIC_USEC=`` (required
  with ``Type=notify-reload`` since systemd 253; harmless before) followed by
  ``READY=1`` when the reload is done, and ``EXTEND_TIMEOUT_USEC=`` while a
  long drain on stop is still making progress.
* ``watchdog_interval()`` is the watchdog timeout in seconds from
  ``$WATCHDOG_USEC`` (``WatchdogSec=``), or None when the watchdog is off, the
  value is not a positive integer, or ``$WATCHDOG_PID`` is set to another pid
  (the variables were inherited from a parent). systemd.service(5) recommends
  pinging at half the timeout: ``Notifier.ping_interval``.
* Supported ``$NOTIFY_SOCKET`` forms: an absolute path and ``@name``. Anything
  else (the ``vsock:`` form of systemd 253, for VMs) is treated as absent.
* ``Notifier`` keeps one connected, non-blocking socket (it is used from the
  event loop): ``STATUS=`` and ``WATCHDOG=1`` are dropped, with a warning,
  when the manager's queue is full (the next one follows); the lifecycle
  messages (``READY=1``, ``STOPPING=1``, ``RELOADING=1``) wait up to
  ``LIFECYCLE_WAIT`` seconds for room. A send that fails otherwise (the
  manager re-executed) is tried once more on a fresh socket.
"""

from __future__ import annotations

import logging
import os
import select
import socket
import time
from collections.abc import Mapping

log = logging.getLogger(__name__)

__all__ = ["Notifier", "notify", "watchdog_interval"]

LIFECYCLE_WAIT = 1.0  # s a READY/STOPPING/RELOADING waits for room in the manager's queue


def _address(value: str | None) -> str | None:
    if not value:
        return None
    if value.startswith("@"):
        return "\0" + value[1:]
    if value.startswith("/"):
        return value
    return None


def _datagram(lines: tuple[str, ...]) -> bytes:
    if not lines:
        raise ValueError("sd_notify needs at least one KEY=VALUE line")
    for line in lines:
        key, sep, _ = line.partition("=")
        if not sep or not key or "\n" in line:
            raise ValueError(f"sd_notify line must be one KEY=VALUE without newlines: {line!r}")
    return "\n".join(lines).encode("utf-8")


def _send(address: str | None, lines: tuple[str, ...]) -> bool:
    data = _datagram(lines)
    if address is None:
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall(data)
    except OSError as exc:
        log.warning("sd_notify to %r failed: %s", address.replace("\0", "@"), exc)
        return False
    return True


def notify(*lines: str) -> bool:
    """Send ``lines`` as one datagram to ``$NOTIFY_SOCKET``.

    True when sent; False when there is no socket or sending failed.
    Raises ValueError for a malformed line.
    """
    return _send(_address(os.environ.get("NOTIFY_SOCKET")), lines)


def _watchdog_seconds(environ: Mapping[str, str]) -> float | None:
    usec = environ.get("WATCHDOG_USEC", "")
    if not usec.isdigit() or int(usec) <= 0:
        return None
    pid = environ.get("WATCHDOG_PID")
    if pid is not None and pid != str(os.getpid()):
        return None
    return int(usec) / 1_000_000


def watchdog_interval() -> float | None:
    """The watchdog timeout in seconds (``$WATCHDOG_USEC``), or None when off.

    Ping (``WATCHDOG=1``) at half of it. Never raises.
    """
    return _watchdog_seconds(os.environ)


def _monotonic_usec() -> int:
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000


class Notifier:
    """The daemon's view of its service manager, read once from the environment.

    ``environ`` defaults to ``os.environ``; tests pass their own mapping.
    Every method returns what ``notify`` returns and never raises OSError.
    """

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        self._address = _address(env.get("NOTIFY_SOCKET"))
        self.watchdog_timeout = _watchdog_seconds(env)
        self._sock: socket.socket | None = None

    @property
    def enabled(self) -> bool:
        """True when running under a manager that listens for notifications."""
        return self._address is not None

    @property
    def ping_interval(self) -> float | None:
        """How often to send ``WATCHDOG=1``: half the timeout, or None without a watchdog."""
        return None if self.watchdog_timeout is None else self.watchdog_timeout / 2

    def send(self, *lines: str, wait: float = 0.0) -> bool:
        """One datagram on the kept socket, never blocking longer than ``wait``
        seconds. Raises ValueError for a malformed line."""
        data = _datagram(lines)
        if self._address is None:
            return False
        for attempt in (1, 2):
            try:
                self._deliver(data, wait)
                return True
            except BlockingIOError:
                log.warning("sd_notify: the service manager is not reading; %r dropped", lines[0])
                return False
            except OSError as exc:
                self.close()
                if attempt == 2:
                    log.warning("sd_notify to %r failed: %s", self._address.replace("\0", "@"), exc)
        return False

    def _deliver(self, data: bytes, wait: float) -> None:
        if self._sock is None:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            try:
                sock.setblocking(False)
                sock.connect(self._address or "")
            except OSError:
                sock.close()
                raise
            self._sock = sock
        try:
            self._sock.send(data)
        except BlockingIOError:
            if wait <= 0 or not select.select([], [self._sock], [], wait)[1]:
                raise
            self._sock.send(data)

    def close(self) -> None:
        """Drop the kept socket (the next send opens a new one)."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def ready(self, status: str | None = None) -> bool:
        lines = ("READY=1",) if status is None else ("READY=1", f"STATUS={_one_line(status)}")
        return self.send(*lines, wait=LIFECYCLE_WAIT)

    def status(self, text: str) -> bool:
        return self.send(f"STATUS={_one_line(text)}")

    def watchdog(self) -> bool:
        return self.send("WATCHDOG=1")

    def stopping(self, status: str | None = None) -> bool:
        lines = ("STOPPING=1",) if status is None else ("STOPPING=1", f"STATUS={_one_line(status)}")
        return self.send(*lines, wait=LIFECYCLE_WAIT)

    def reloading(self) -> bool:
        """Send ``READY=1`` (``ready()``) when the new configuration is in use."""
        return self.send("RELOADING=1", f"MONOTONIC_USEC={_monotonic_usec()}", wait=LIFECYCLE_WAIT)

    def extend_timeout(self, seconds: float) -> bool:
        """Ask for ``seconds`` more to finish starting or stopping."""
        return self.send(f"EXTEND_TIMEOUT_USEC={max(0, round(seconds * 1_000_000))}")


def _one_line(text: str) -> str:
    return " ".join(text.split("\n")).strip()
