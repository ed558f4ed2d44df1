"""A Mosquitto 2.x broker as a child process, for the sandbox and the tests.

PROTOCOL.md part C needs an MQTT 5 broker; tests use a real one, never a
mock. ``MosquittoBroker(data_dir, port)`` writes ``data_dir/mosquitto.conf``
(``listener PORT 127.0.0.1``, ``allow_anonymous true``, ``persistence true``,
``persistence_location data_dir/``) and runs ``mosquitto -c`` on it; its
output goes to ``data_dir/mosquitto.log``.

- ``start()`` picks a free loopback port when none was given and returns once
  the port accepts connections. Raises ``BrokerError`` when mosquitto is not
  installed ("install it with: apt-get install mosquitto"), exits at once, or
  does not listen within ``start_timeout`` seconds.
- ``stop()`` sends SIGTERM (Mosquitto then saves its persistence file), kills
  after 5 s; safe to call twice.
- ``restart()`` stops and starts on the same port with the same persistence,
  so persistent sessions and their queued messages survive.

Mosquitto drops root privileges to the ``mosquitto`` user unless told
otherwise; the config names the current user so it can write ``data_dir``.
"""

from __future__ import annotations

import getpass
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType

INSTALL_HINT = "install it with: apt-get install mosquitto"
_CANDIDATES = ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto", "/opt/homebrew/sbin/mosquitto")


class BrokerError(RuntimeError):
    """The broker cannot be found, started or reached."""


def find_mosquitto() -> str:
    """Path of the mosquitto executable. Raises BrokerError."""
    found = shutil.which("mosquitto")
    if found:
        return found
    for candidate in _CANDIDATES:
        if os.access(candidate, os.X_OK):
            return candidate
    raise BrokerError(f"mosquitto is not installed; {INSTALL_HINT}")


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on ``host`` that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as a server binds
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


class MosquittoBroker:
    """See the module docstring."""

    host = "127.0.0.1"

    def __init__(
        self,
        data_dir: Path,
        port: int | None = None,
        *,
        executable: str | None = None,
        start_timeout: float = 10.0,
    ) -> None:
        self.data_dir = Path(data_dir).resolve()
        self._port = port
        self._executable = executable
        self.start_timeout = start_timeout
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def port(self) -> int:
        if self._port is None:
            raise BrokerError("broker port is chosen by start()")
        return self._port

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"

    @property
    def config_path(self) -> Path:
        return self.data_dir / "mosquitto.conf"

    @property
    def log_path(self) -> Path:
        return self.data_dir / "mosquitto.log"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def _write_config(self) -> None:
        lines = [
            "# Written by sandbox.broker.MosquittoBroker.",
            f"listener {self.port} {self.host}",
            "allow_anonymous true",
            "persistence true",
            f"persistence_location {self.data_dir}/",
            "autosave_interval 1",
            "log_dest stderr",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "log_type information",
            "log_timestamp_format %Y-%m-%dT%H:%M:%S",
        ]
        if hasattr(os, "getuid") and os.getuid() == 0:
            lines.append(f"user {getpass.getuser()}")
        self.config_path.write_text("\n".join(lines) + "\n", "utf-8")

    def start(self) -> None:
        """Start the broker and wait until it accepts connections. Raises BrokerError."""
        if self.running:
            return
        executable = self._executable or find_mosquitto()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if self._port is None:
            self._port = free_port(self.host)
        self._write_config()
        with self.log_path.open("ab") as log:
            self._proc = subprocess.Popen(
                [executable, "-c", str(self.config_path)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
            )
        deadline = time.monotonic() + self.start_timeout
        while True:
            if self._proc.poll() is not None:
                code = self._proc.returncode
                self._proc = None
                raise BrokerError(f"mosquitto exited with {code}:\n{self._log_tail()}")
            try:
                with socket.create_connection((self.host, self.port), timeout=0.5):
                    return
            except OSError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise BrokerError(
                    f"mosquitto did not listen on {self.url} within {self.start_timeout} s:\n"
                    f"{self._log_tail()}"
                )
            time.sleep(0.02)

    def _log_tail(self, lines: int = 20) -> str:
        try:
            text = self.log_path.read_text("utf-8", errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def stop(self) -> None:
        """Stop the broker (SIGTERM, then SIGKILL after 5 s). Idempotent."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def restart(self) -> None:
        """Stop and start again on the same port with the same persistence."""
        self.stop()
        deadline = time.monotonic() + 5
        while not port_is_free(self.port, self.host) and time.monotonic() < deadline:
            time.sleep(0.05)
        self.start()

    def __enter__(self) -> MosquittoBroker:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        port = self._port if self._port is not None else "?"
        return f"MosquittoBroker({self.host}:{port}, {'running' if self.running else 'stopped'})"
