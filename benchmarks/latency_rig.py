"""Shared parts of the latency benchmarks (``push_to_screen``, ``sale_e2e``, ``pos_client``).

Everything is a real process, as in ``tests/integration``: Mosquitto on a free
port and the sandbox as a subprocess (``cloud``), the simulated readers on ptys
and the agent (``tests.integration.agent_rig.Terminal``), in a scratch
directory on the disk (``workdir``). What this module adds is the timing:

* ``MqttTap``: a bare paho subscriber (its own network thread) that stamps
  each arrival with ``time.perf_counter()``, and ``floor_sample()``: one bare
  QoS 1 publish from a second bare client to it, through the same broker - the
  floor that an MQTT hop cannot beat.
* ``TimedScreens``: a ``ui.bridge_client.BridgeClient`` in a thread that
  stamps each screen event on arrival (``ScreenWatcher`` of the rig, plus
  the clock).
* ``start_agent``: the real ``sadad-agent run`` with the result screen's
  dwell (``[ui] result_seconds``, 4 s by default) at its minimum, 0.1 s: a
  benchmark that runs hundreds of orders through one terminal would
  otherwise spend 4 s per order waiting for the screen to go back to IDLE.
  ``profile=PATH`` runs it under cProfile (``print_profile`` shows the hot
  spots).
* ``wait_paid``: the quiet point after a sale (the ``paid`` event is out,
  the screen is IDLE again), so the next one starts on an idle agent.
* ``journal_hops``: a transaction's hop timeline, read-only beside the agent
  (what ``sadad-agent journal --show`` prints).
* ``summary``: p50/p99 (nearest rank) of a list of seconds, in ms;
  ``cpu_seconds`` of a process; ``machine`` with the load average.

Run as a script with no arguments it only says what it is (``make bench``
runs every ``benchmarks/*.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import platform
import pstats
import resource
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import tomlkit
from paho.mqtt.enums import CallbackAPIVersion

from agent import bridge_protocol as bp
from sandbox.broker import MosquittoBroker
from tests.integration.agent_rig import Terminal, unit_environment
from tests.integration.conftest import REPO, TIME_SCALE, SandboxHandle, wait_until
from ui.bridge_client import BridgeClient

BENCH_RESULT_SECONDS = 0.1  # the result screen's dwell here (``[ui] result_seconds``, default 4)


# ---------------------------------------------------------------- figures


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile ``q`` (0-100) of ``values``."""
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def summary(seconds: Sequence[float]) -> dict[str, float]:
    """p50, p99, mean, min and max of ``seconds``, in ms (2 decimals)."""
    ms = [s * 1000 for s in seconds]
    return {
        "p50": round(percentile(ms, 50), 2),
        "p99": round(percentile(ms, 99), 2),
        "mean": round(statistics.fmean(ms), 2),
        "min": round(min(ms), 2),
        "max": round(max(ms), 2),
    }


def cpu_seconds(pid: int | None = None) -> float:
    """User + system CPU seconds used so far by process ``pid`` (default: this one)."""
    if pid is None:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return usage.ru_utime + usage.ru_stime
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()  # after "pid (comm) "
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine() -> dict[str, Any]:
    """What the figures were measured on, and how busy it was."""
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {
        "cpus": os.cpu_count(),
        "cpu": cpu,
        "python": platform.python_version(),
        "loadavg": [round(x, 2) for x in os.getloadavg()],
    }


# ---------------------------------------------------------------- the cloud


@contextlib.contextmanager
def cloud(root: Path) -> Iterator[SandboxHandle]:
    """Mosquitto on a free port and ``sadad-sandbox serve`` on it (time scale
    0.01, as in the tests), stopped afterwards without printing anything."""
    with MosquittoBroker(root / "broker") as broker:
        args = ["--port", "0", "--mqtt", broker.url, "--time-scale", str(TIME_SCALE)]
        handle = SandboxHandle.start(root / "sandbox", args, broker)
        try:
            yield handle
        finally:
            handle.close()
            handle.stop()


@contextlib.contextmanager
def workdir() -> Iterator[Path]:
    """A scratch directory on the same disk as a terminal's journal would be."""
    with tempfile.TemporaryDirectory(prefix="sadad-latency-") as tmp:
        yield Path(tmp)


# ---------------------------------------------------------------- MQTT


@dataclass(frozen=True, slots=True)
class Arrival:
    at: float  # time.perf_counter() in the tap's network thread
    topic: str
    payload: bytes


def _client(host: str, port: int, name: str) -> mqtt.Client:
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2,
        client_id=f"bench-{name}-{uuid.uuid4().hex[:6]}",
        protocol=mqtt.MQTTv5,
    )
    connected = threading.Event()
    client.on_connect = lambda c, u, f, rc, p: connected.set()
    client.connect(host, port, keepalive=30)
    client.loop_start()
    if not connected.wait(5):
        client.loop_stop()
        raise RuntimeError(f"cannot connect to mqtt://{host}:{port}")
    return client


class MqttTap:
    """A bare subscriber to ``topics`` that stamps every arrival, and a bare
    publisher for the floor (``floor_sample``)."""

    def __init__(self, host: str, port: int, topics: Sequence[str]) -> None:
        self.arrivals: list[Arrival] = []
        self._cond = threading.Condition()
        self._floor_topic = f"bench/floor/{uuid.uuid4().hex[:8]}"
        self._sub = _client(host, port, "tap")
        self._sub.on_message = self._on_message
        subscribed = threading.Event()
        self._sub.on_subscribe = lambda c, u, mid, rcs, p: subscribed.set()
        self._sub.subscribe([(t, 1) for t in (*topics, self._floor_topic)])
        if not subscribed.wait(5):
            raise RuntimeError("subscription not acknowledged")
        self._pub = _client(host, port, "floor-pub")

    def _on_message(self, _c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        at = time.perf_counter()
        with self._cond:
            self.arrivals.append(Arrival(at, msg.topic, bytes(msg.payload)))
            self._cond.notify_all()

    def mark(self) -> int:
        with self._cond:
            return len(self.arrivals)

    def wait_for(
        self, pred: Callable[[Arrival], bool], *, after: int = 0, timeout: float = 15.0
    ) -> Arrival:
        """The first arrival at or after position ``after`` for which ``pred`` holds."""

        def match() -> Arrival | None:
            return next((a for a in self.arrivals[after:] if pred(a)), None)

        with self._cond:
            if not self._cond.wait_for(lambda: match() is not None, timeout):
                raise TimeoutError(f"no matching MQTT message within {timeout} s")
            found = match()
            assert found is not None
            return found

    def floor_sample(self, size: int) -> float:
        """Seconds from a bare QoS 1 publish of ``size`` bytes to its arrival here."""
        tag = uuid.uuid4().hex.encode()
        payload = tag + b"x" * max(0, size - len(tag))
        mark = self.mark()
        start = time.perf_counter()
        self._pub.publish(self._floor_topic, payload, qos=1)
        got = self.wait_for(lambda a: a.payload[: len(tag)] == tag, after=mark, timeout=5)
        return got.at - start

    def close(self) -> None:
        for client in (self._sub, self._pub):
            client.disconnect()
            client.loop_stop()


# ---------------------------------------------------------------- the UI bridge


@dataclass(frozen=True, slots=True)
class Seen:
    at: float  # time.perf_counter() when the bridge client yielded it
    screen: bp.ScreenEvent


class TimedScreens:
    """A bridge client in a thread of its own, stamping every screen event."""

    def __init__(self, socket: Path) -> None:
        self.seen: list[Seen] = []
        self._cond = threading.Condition()
        self._loop = asyncio.new_event_loop()
        self._client = BridgeClient(str(socket))
        self._task: asyncio.Task[None] | None = None
        started = threading.Event()
        self._thread = threading.Thread(
            target=self._run, args=(started,), daemon=True, name="timed-screens"
        )
        self._thread.start()
        if not started.wait(10):
            raise RuntimeError("bridge client did not start")

    def _run(self, started: threading.Event) -> None:
        asyncio.set_event_loop(self._loop)
        self._task = self._loop.create_task(self._main(started))
        with contextlib.suppress(asyncio.CancelledError):
            self._loop.run_until_complete(self._task)

    async def _main(self, started: threading.Event) -> None:
        await self._client.connect()
        started.set()
        try:
            async for event in self._client.events():
                at = time.perf_counter()
                screen = event.snapshot.screen if isinstance(event, bp.HelloEvent) else event
                if isinstance(screen, bp.ScreenEvent):
                    with self._cond:
                        self.seen.append(Seen(at, screen))
                        self._cond.notify_all()
        finally:
            await self._client.close()

    def mark(self) -> int:
        with self._cond:
            return len(self.seen)

    def wait_for(
        self, pred: Callable[[bp.ScreenEvent], bool], *, after: int = 0, timeout: float = 15.0
    ) -> Seen:
        """The first screen at or after position ``after`` for which ``pred`` holds."""

        def match() -> Seen | None:
            return next((s for s in self.seen[after:] if pred(s.screen)), None)

        with self._cond:
            if not self._cond.wait_for(lambda: match() is not None, timeout):
                last = [s.screen.screen.value for s in self.seen[-5:]]
                raise TimeoutError(f"screen not shown within {timeout} s (last: {last})")
            found = match()
            assert found is not None
            return found

    def wait_order(self, trans_no: str, *, after: int = 0, timeout: float = 15.0) -> Seen:
        """The first screen showing order ``trans_no`` (the order is on screen)."""
        return self.wait_for(
            lambda s: s.order is not None and s.order.trans_no == trans_no,
            after=after,
            timeout=timeout,
        )

    def wait_idle(self, *, after: int = 0, timeout: float = 15.0) -> Seen:
        return self.wait_for(lambda s: s.screen.value == "IDLE", after=after, timeout=timeout)

    def wait_done(self, trans_no: str, *, after: int = 0, timeout: float = 15.0) -> Seen:
        """IDLE again after the result screen of order ``trans_no``."""

        def match() -> Seen | None:
            seen = self.seen[after:]
            for i, s in enumerate(seen):
                order = s.screen.order
                if s.screen.result is not None and order is not None and order.trans_no == trans_no:
                    return next((t for t in seen[i + 1 :] if t.screen.screen.value == "IDLE"), None)
            return None

        with self._cond:
            if not self._cond.wait_for(lambda: match() is not None, timeout):
                raise TimeoutError(f"order {trans_no} not done within {timeout} s")
            found = match()
            assert found is not None
            return found

    def request(self, name: str, **args: Any) -> bp.Reply:
        fut = asyncio.run_coroutine_threadsafe(self._client.request(name, **args), self._loop)
        return fut.result(timeout=15)

    def close(self) -> None:
        if self._task is not None:
            self._loop.call_soon_threadsafe(self._task.cancel)
        self._thread.join(timeout=10)
        self._loop.close()


def wait_paid(tap: MqttTap, screens: TimedScreens, trans_no: str, tap_mark: int, mark: int) -> None:
    """After a sale: the agent's ``paid`` event (the tap subscribes to the events
    topic) and the IDLE screen after the result, both after the given marks."""
    key = trans_no.encode()
    tap.wait_for(lambda a: key in a.payload and b'"paid"' in a.payload, after=tap_mark)
    screens.wait_done(trans_no, after=mark)


# ---------------------------------------------------------------- the agent


def set_config(term: Terminal, section: str, key: str, value: str | float) -> None:
    """Set ``[section] key = value`` in the terminal's agent.toml."""
    doc = tomlkit.parse(term.config.read_text())
    table = doc.setdefault(section, tomlkit.table())
    assert isinstance(table, tomlkit.items.Table)
    table[key] = value
    term.config.write_text(tomlkit.dumps(doc))


def start_agent(
    term: Terminal,
    *,
    result_seconds: float = BENCH_RESULT_SECONDS,
    profile: Path | None = None,
) -> None:
    """Run the real agent for ``term`` (see the module docstring) until it says ready."""
    said_ready = f"agent {term.sn} ready ("
    before = term.log_text().count(said_ready)
    set_config(term, "ui", "result_seconds", result_seconds)
    cmd = [sys.executable]
    if profile is not None:
        cmd += ["-m", "cProfile", "-o", str(profile)]
    cmd += ["-m", "agent.cli", "run", "--config", str(term.config)]
    with term.log_path.open("ab") as log:
        term.agent = subprocess.Popen(
            cmd,
            cwd=REPO,
            env=dict(os.environ, **unit_environment()),  # as the unit runs it
            stdout=log,
            stderr=log,
            stdin=subprocess.DEVNULL,
        )
    agent = term.agent

    def said_so() -> bool:
        if agent.poll() is not None:
            raise RuntimeError(f"agent exited {agent.returncode}:\n{term.log_text()[-3000:]}")
        return term.log_text().count(said_ready) > before

    wait_until(said_so, timeout=30)


def stop_agent(term: Terminal) -> None:
    """SIGTERM and wait (the profile, if any, is written on the way out)."""
    if term.agent is not None:
        term.agent.terminate()
        term.agent.wait(timeout=30)
        term.agent = None


def journal_hops(path: Path, trans_no: str) -> dict[str, int]:
    """The hop timeline of ``trans_no`` (``Journal.hops``), read-only beside the agent."""
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
    try:
        rows = db.execute("SELECT name, at_ms FROM hops WHERE trans_no=?", (trans_no,)).fetchall()
    finally:
        db.close()
    return {str(name): int(at) for name, at in rows}


def print_profile(path: Path, limit: int = 25) -> None:
    """The agent's hottest functions by cumulative and by own time (to stderr)."""
    stats = pstats.Stats(str(path), stream=sys.stderr)
    stats.strip_dirs().sort_stats("cumulative").print_stats(limit)
    stats.sort_stats("tottime").print_stats(limit)


if __name__ == "__main__":
    print("latency_rig: support module of the latency benchmarks; nothing to measure on its own")
