"""Shared parts of the latency benchmarks (``push_to_screen``, ``sale_e2e``, ``pos_client``).

Everything is a real process, as in ``tests/integration``: Mosquitto on a free
port and the sandbox as a subprocess (``cloud``), the simulated readers on ptys
and the agent (``tests.integration.agent_rig.Terminal``), in a scratch
directory on the disk (``workdir``). What this module adds is the timing:

* ``MqttTap``: a bare subscriber (``stamps.StampedSubscriber``: raw MQTT
  3.1.1 on a TCP socket) whose arrivals carry the kernel's receive time, and
  ``floor_sample()``: one bare QoS 1 publish from a paho client to it,
  through the same broker - the floor that an MQTT hop cannot beat (from
  ``perf_counter()`` just before the publish call to the kernel's stamp).
* ``TimedScreens``: the screen events as a UI process sees them, stamped by
  ``stamps.ScreenStamper`` (a child process that reads the agent's bridge
  socket and stamps each read as it wakes up), and a
  ``agent.bridge_client.BridgeClient`` in a thread for the intents.

  No stamp waits for this script's GIL (which its threads and the POS
  client's loop share): stamped in the script's threads, a push could be
  stamped ~3 ms late, after the screen it caused. All stamps are in the
  ``time.perf_counter()`` domain (``CLOCK_MONOTONIC``, the same in every
  process).
* ``start_agent``: the real ``sadad-agent run`` with the result screen's
  dwell (``[ui] result_seconds``, 4 s by default) at its minimum, 0.1 s: a
  benchmark that runs hundreds of orders through one terminal would
  otherwise spend 4 s per order waiting for the screen to go back to IDLE.
  As the unit runs it otherwise: its ``Environment=``, a notify socket that
  reads every datagram (``NOTIFY_SOCKET``) and ``WATCHDOG_USEC`` of
  ``WatchdogSec=30``. ``profile=PATH`` runs it under cProfile (``print_profile`` shows the hot
  spots).
* ``cloud_in_the_background``: the stand-ins for the cloud and the POS (the
  sandbox's process, this script's threads) put under ``SCHED_IDLE``, so
  that on this one machine they run only when the terminal's processes and
  the broker leave a core free, as if they were the other machines they
  stand for.
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
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import tomlkit
from paho.mqtt.enums import CallbackAPIVersion

from agent import bridge_protocol as bp
from agent.bridge_client import BridgeClient
from benchmarks.stack import ReadySocket, agent_env
from benchmarks.stamps import Arrival, ScreenStamper, Seen, StampedSubscriber
from sandbox.broker_mosquitto import MosquittoBroker
from tests.integration.agent_rig import Terminal
from tests.integration.conftest import REPO, TIME_SCALE, SandboxHandle, wait_until

BENCH_RESULT_SECONDS = 0.1  # the result screen's dwell here (``[ui] result_seconds``, default 4)

# msgspec 0.22 builds a type's decoding info on first use and can crash
# (SIGSEGV) when two threads do that for the same types at once; here the
# bridge client's thread and the ScreenStamper's reader both decode events
# (the script died in 1 of 2 runs). Built once now, in the importing thread.
bp.LineDecoder.for_events()


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


def cloud_in_the_background(*pids: int) -> str:
    """Every thread of the processes ``pids`` (this one included, if given)
    under ``SCHED_IDLE``; returns the policy that was set.

    Why: on a terminal, the POS and the gateway are other machines; here they
    share two cores with it. ``perf sched timehist`` of push_to_screen showed
    the agent woken for a push, then waiting ~1.6 ms in the run queue behind
    the script's own POS client (its loop thread reading the create's answer,
    ~1.2 ms, then its main thread ~1.4 ms) and the sandbox: that was most of
    the agent share's tail. Under ``SCHED_IDLE`` a stand-in never takes a core
    from a process of normal policy that wants it. The broker is not put
    there: the push and the floor both go through it. Threads started later
    by these threads inherit the policy; processes started earlier (the
    agents, the stampers, the simulated readers) keep theirs, so call this
    once everything of the terminal is running. Where ``SCHED_IDLE`` is not
    allowed, nice 19 instead (returned as such)."""
    policy = "SCHED_IDLE"
    for pid in pids:
        for tid in map(int, os.listdir(f"/proc/{pid}/task")):
            with contextlib.suppress(ProcessLookupError):  # a thread that ended meanwhile
                try:
                    os.sched_setscheduler(tid, os.SCHED_IDLE, os.sched_param(0))
                except PermissionError:
                    os.setpriority(os.PRIO_PROCESS, tid, 19)
                    policy = "nice 19"
    return policy


# ---------------------------------------------------------------- MQTT


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
    """A bare subscriber to ``topics`` that stamps every arrival (kernel receive
    time, ``StampedSubscriber``), and a bare paho publisher for the floor
    (``floor_sample``)."""

    def __init__(self, host: str, port: int, topics: Sequence[str]) -> None:
        self._floor_topic = f"bench/floor/{uuid.uuid4().hex[:8]}"
        self._sub = StampedSubscriber(host, port, [*topics, self._floor_topic], name="tap")
        try:
            self._pub = _client(host, port, "floor-pub")
        except BaseException:
            self._sub.close()
            raise

    @property
    def arrivals(self) -> list[Arrival]:
        return self._sub.arrivals

    def mark(self) -> int:
        return self._sub.mark()

    def wait_for(
        self, pred: Callable[[Arrival], bool], *, after: int = 0, timeout: float = 15.0
    ) -> Arrival:
        """The first arrival at or after position ``after`` for which ``pred`` holds."""
        return self._sub.wait_for(pred, after=after, timeout=timeout)

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
        self._pub.disconnect()
        self._pub.loop_stop()
        self._sub.close()


# ---------------------------------------------------------------- the UI bridge


class TimedScreens:
    """The agent's screens, stamped on arrival by a ``ScreenStamper`` (a
    process of its own), and ``request``: an intent on a connection of its
    own, closed after the reply. The stamper is then the agent's only UI
    client while a push is timed, as the checkout is on a terminal (a second
    client cost a send per event and woke this script's thread meanwhile)."""

    def __init__(self, socket: Path) -> None:
        self._socket = socket
        self._stamper = ScreenStamper(socket)
        try:
            self._stamper.wait_hello(timeout=10)  # marks taken from now on count
        except BaseException:
            self._stamper.close()
            raise

    @property
    def seen(self) -> list[Seen]:
        return self._stamper.seen

    def mark(self) -> int:
        return self._stamper.mark()

    def wait_for(
        self, pred: Callable[[bp.ScreenEvent], bool], *, after: int = 0, timeout: float = 15.0
    ) -> Seen:
        """The first screen at or after position ``after`` for which ``pred`` holds."""
        return self._stamper.wait_for(pred, after=after, timeout=timeout)

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

        def match(seen: list[Seen]) -> Seen | None:
            for i, s in enumerate(seen):
                order = s.screen.order
                if s.screen.result is not None and order is not None and order.trans_no == trans_no:
                    return next((t for t in seen[i + 1 :] if t.screen.screen.value == "IDLE"), None)
            return None

        found = self._stamper.wait_match(match, after=after, timeout=timeout)
        if found is None:
            raise TimeoutError(f"order {trans_no} not done within {timeout} s")
        return found

    def request(self, name: str, **args: Any) -> bp.Reply:
        """Call from a thread with no running event loop (it runs its own)."""
        return asyncio.run(asyncio.wait_for(self._request(name, args), 15))

    async def _request(self, name: str, args: dict[str, Any]) -> bp.Reply:
        client = BridgeClient(str(self._socket))
        try:
            await client.connect(wait=10)
            return await client.request(name, **args)
        finally:
            await client.close()

    def close(self) -> None:
        self._stamper.close()


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


_notify_sockets: dict[int, ReadySocket] = {}  # per terminal (id), while its agent runs


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
    # As the unit runs it: its Environment=, and a manager's notify socket
    # (Type=notify, WatchdogSec=30) that reads every datagram.
    notify = ReadySocket(term.workdir / "notify.sock")
    notify.drain()
    _notify_sockets[id(term)] = notify
    with term.log_path.open("ab") as log:
        term.agent = subprocess.Popen(
            cmd,
            cwd=REPO,
            env=agent_env(notify),
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
    notify = _notify_sockets.pop(id(term), None)
    if notify is not None:
        notify.close()


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
