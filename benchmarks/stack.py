"""The real processes behind ``footprint.py`` and ``soak.py``, and what /proc says of them.

- ``Stack``: a temporary directory with Mosquitto (``sandbox.broker_mosquitto.MosquittoBroker``,
  restartable on its port), ``sadad-sandbox serve`` as a subprocess
  (``tests.integration.conftest.SandboxHandle``) and ``terminal()``, a provisioned
  ``tests.integration.agent_rig.Terminal`` (reader simulators on ptys, the agent as
  ``python -m agent.cli run``) with its ``[ui] result_seconds`` shortened so sales are
  not paced by the result screen.
- ``sell``: one sale by a reader simulator, pushed by the POS client, until the
  journal holds its final phase.
- ``ReadySocket``: a bound ``NOTIFY_SOCKET`` that times ``READY=1`` as systemd sees it.
- ``OnPty``: a process on a pseudo-terminal of a given size (the checkout screen),
  its output drained so it never blocks.
- ``/proc`` readings: ``rss_mb`` (VmRSS), ``memory`` (smaps_rollup: RSS, PSS,
  private), ``cpu_seconds`` (utime + stime); Linux only, no psutil on a terminal.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import termios
import threading
import time
from pathlib import Path
from types import TracebackType
from typing import Any

import tomlkit

from sandbox.broker_mosquitto import MosquittoBroker
from tests.integration.agent_rig import Order, Terminal, unit_environment
from tests.integration.conftest import REPO, SandboxHandle, stop_process, wait_until

PYTHON = sys.executable
BIN = Path(PYTHON).parent


# ---------------------------------------------------------------- /proc


def rss_mb(pid: int) -> float:
    """Resident set size (VmRSS) of ``pid`` in MiB."""
    return memory(pid)["rss_mb"]


def memory(pid: int) -> dict[str, float]:
    """RSS, PSS and private (unshared) memory of ``pid`` in MiB, from smaps_rollup."""
    fields: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        key, _, rest = line.partition(":")
        fields[key] = int(rest.split()[0])
    private = fields["Private_Clean"] + fields["Private_Dirty"]
    return {
        "rss_mb": round(fields["Rss"] / 1024, 2),
        "pss_mb": round(fields["Pss"] / 1024, 2),
        "private_mb": round(private / 1024, 2),
    }


def cpu_seconds(pid: int) -> float:
    """CPU seconds the live threads of ``pid`` have run so far: the scheduler's
    nanosecond count (``/proc/PID/task/*/schedstat``), as ``/proc/PID/stat``
    counts 10 ms ticks, too coarse for an idle daemon."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(FileNotFoundError):  # a thread that just ended
            total += int((task / "schedstat").read_text().split()[0])
    return total / 1e9


def load_average() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def machine() -> str:
    model = "unknown CPU"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.partition(":")[2].strip()
            break
    return f"{os.cpu_count()} x {model}, Python {sys.version.split()[0]}"


# ---------------------------------------------------------------- processes


class ReadySocket:
    """An ``AF_UNIX`` datagram socket standing in for systemd's notify socket.

    Like the manager it must keep reading: the agent's notifications are
    blocking sends, and a full socket would stall its event loop (``drain``)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.bind(str(path))
        self.datagrams: list[str] = []
        self._closed = False
        self._drainer: threading.Thread | None = None

    def wait_ready(self, proc: subprocess.Popen[bytes], timeout: float = 30.0) -> float:
        """``time.monotonic()`` when ``READY=1`` arrived. Raises RuntimeError."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"agent exited {proc.returncode} before READY=1")
            self._sock.settimeout(0.1)
            try:
                data = self._sock.recv(4096).decode()
            except TimeoutError:
                continue
            at = time.monotonic()
            self.datagrams.append(data)
            if "READY=1" in data.split("\n"):
                return at
        raise RuntimeError(f"no READY=1 within {timeout} s")

    def drain(self) -> None:
        """Keep reading (in a thread) until ``close``."""

        def read() -> None:
            self._sock.settimeout(0.2)
            while not self._closed:
                with contextlib.suppress(TimeoutError, OSError):
                    self.datagrams.append(self._sock.recv(4096).decode())

        self._drainer = threading.Thread(target=read, daemon=True, name="notify-drain")
        self._drainer.start()

    def close(self) -> None:
        self._closed = True
        if self._drainer is not None:
            self._drainer.join(timeout=5)
        self._sock.close()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()


def stop(proc: subprocess.Popen[Any], timeout: float = 15.0) -> int:
    """SIGTERM, SIGKILL after ``timeout``; the exit status."""
    return stop_process(proc, timeout)


class OnPty:
    """``argv`` on a fresh pty of ``cols`` x ``rows`` (its session leader), output drained."""

    def __init__(
        self, argv: list[str], *, cols: int = 80, rows: int = 25, env: dict[str, str] | None = None
    ) -> None:
        master, slave = os.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
        self._master = master
        self.output = 0
        self.proc = subprocess.Popen(
            argv,
            cwd=REPO,
            stdin=slave,
            stdout=slave,
            stderr=slave,
            env=env,
            start_new_session=True,
        )
        os.close(slave)
        self._drain = threading.Thread(target=self._read, daemon=True, name="pty-drain")
        self._drain.start()

    def _read(self) -> None:
        while True:
            try:
                chunk = os.read(self._master, 65536)
            except OSError:  # EIO: the process and its pty are gone
                return
            if not chunk:
                return
            self.output += len(chunk)

    def close(self) -> None:
        stop(self.proc)
        self._drain.join(timeout=5)
        with contextlib.suppress(OSError):
            os.close(self._master)


def bare_python(code: str) -> subprocess.Popen[bytes]:
    """``python -c code`` with stdout piped (it announces itself on it)."""
    return subprocess.Popen(
        [PYTHON, "-c", code], cwd=REPO, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL
    )


def time_to_line(argv: list[str]) -> tuple[float, subprocess.Popen[bytes]]:
    """Seconds from spawning ``argv`` to its first line on stdout; the process.
    Run with the agent unit's environment, as the agent it is compared with."""
    env = dict(os.environ, **unit_environment())
    start = time.monotonic()
    proc = subprocess.Popen(
        argv, cwd=REPO, env=env, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL
    )
    assert proc.stdout is not None
    proc.stdout.readline()
    return time.monotonic() - start, proc


# ---------------------------------------------------------------- the stack


class Stack:
    """Mosquitto + the sandbox in a temporary directory; see the module docstring.

    ``sandbox_args`` are added to ``serve --port 0 --mqtt URL``."""

    def __init__(self, sandbox_args: list[str], *, keep: bool = False) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="sadad-bench-"))
        self.keep = keep
        self.broker = MosquittoBroker(self.root / "broker")
        self.broker.start()
        try:
            args = ["--port", "0", "--mqtt", self.broker.url, *sandbox_args]
            self.sandbox = SandboxHandle.start(self.root / "sandbox", args, self.broker)
        except BaseException:
            self.broker.stop()
            raise
        self.terminals: list[Terminal] = []

    def terminal(
        self,
        sn: str,
        *,
        result_seconds: float,
        nfc_args: tuple[str, ...] = ("--card", "visa"),
        **options: Any,
    ) -> Terminal:
        """A provisioned terminal (its agent not started yet)."""
        term = Terminal(self.sandbox, sn, self.root / sn, nfc_args=nfc_args, **options)
        self.terminals.append(term)
        set_config(term.config, "ui", "result_seconds", result_seconds)
        return term

    def close(self) -> None:
        for term in self.terminals:
            term.close()
        self.sandbox.close()
        self.sandbox.stop()
        self.broker.stop()
        if self.keep:
            print(f"(kept {self.root})", file=sys.stderr)
        else:
            shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> Stack:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is not None:
            self.keep = True  # its logs say what went wrong
        self.close()


def set_config(path: Path, section: str, key: str, value: Any) -> None:
    """Set ``[section] key = value`` in a TOML file, keeping the rest."""
    doc = tomlkit.parse(path.read_text())
    table = doc.get(section)
    if table is None:
        table = tomlkit.table()
        doc[section] = table
    table[key] = value
    path.write_text(tomlkit.dumps(doc))


def sell(term: Terminal, amount: str = "12.30", timeout: float = 30.0) -> tuple[Order, str]:
    """One contactless sale: push, tap once the order is on screen, wait for the
    journal's final phase. Returns the order and that phase."""
    order = term.push(amount)
    term.present("nfc", "present visa", order)
    return order, term.wait_journal_final(order.trans_no, timeout)


def agent_argv(config: Path) -> list[str]:
    """The daemon as the unit starts it (``sadad-agent run --config``)."""
    return [str(BIN / "sadad-agent"), "run", "--config", str(config)]


def agent_env(notify: ReadySocket | None = None) -> dict[str, str]:
    """The environment the unit gives the agent: its ``Environment=``, the
    watchdog (``WatchdogSec=30``) and, with ``notify``, the manager's socket."""
    env = dict(os.environ, **unit_environment(), WATCHDOG_USEC="30000000")
    env.pop("WATCHDOG_PID", None)
    env.pop("SADAD_AGENT_CRASH_AT", None)
    if notify is not None:
        env["NOTIFY_SOCKET"] = str(notify.path)
    return env


def spawn_agent(
    config: Path, log: Path, notify: ReadySocket | None = None
) -> subprocess.Popen[bytes]:
    """The agent as the unit starts it (``agent_env``)."""
    env = agent_env(notify)
    with log.open("ab") as out:
        return subprocess.Popen(
            agent_argv(config), cwd=REPO, env=env, stdout=out, stderr=out, stdin=subprocess.DEVNULL
        )


def wait_log(path: Path, text: str, before: int, timeout: float = 30.0) -> None:
    """Wait until ``text`` occurs in the file more than ``before`` times."""

    def count() -> bool:
        return path.exists() and path.read_text("utf-8", errors="replace").count(text) > before

    wait_until(count, timeout=timeout, interval=0.05)


def table(headers: tuple[str, ...], rows: list[tuple[Any, ...]]) -> str:
    """A plain text table, columns sized to fit, the first left-aligned."""
    cells = [tuple(str(c) for c in headers)] + [tuple(str(c) for c in row) for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = []
    for row in cells:
        rest = zip(row[1:], widths[1:], strict=True)
        parts = [row[0].ljust(widths[0])] + [c.rjust(w) for c, w in rest]
        lines.append("  ".join(parts))
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
