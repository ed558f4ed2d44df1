"""One run of the fleet benchmark: a fresh secure broker, N sessions, four phases.

``run(kind, plan, tmp)`` starts Mosquitto or a three-node NATS cluster
(``sandbox.broker_mosquitto``, ``sandbox.broker_nats``) with a user per
terminal written before it starts (no reload), signs the pushes and starts
the terminal processes (``benchmarks.fleet_terminal``, each given its
sessions and its events' message ids), connects the TMS
(``benchmarks.fleet_tms``), then runs the phases in this order: terminals
paced, floor paced, floor saturated, terminals saturated - CPU is measured
over the last (``/proc``: the broker, the terminal processes, this one).
It returns the figures as a dict: connect, per phase pushes/s, lost and the
p50/p99 of the three spans (``spans``, nearest rank), broker RSS, and what
the broker logged when sessions failed to connect.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.fleet_mqtt import CONNECT_TIMEOUT, keep_alive
from benchmarks.fleet_terminal import FLOOR_SN, event_payload
from benchmarks.fleet_tms import Tms, build_push, schedule
from cloud.messages import EventKind
from cloud.signing import generate_key_pem
from cloud.topics import orders_topic

REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Plan:
    sessions: int
    paced: int  # pushes in the paced phase (and as many for the floor)
    saturated: int  # pushes in the saturated phase (and as many for the floor)
    rate: float
    window: int
    workers: int
    store: str
    concurrency: int = 64  # sessions connecting at a time, per worker
    nodelay: bool = True  # Mosquitto's set_tcp_nodelay (NATS, in Go, has no Nagle by default)
    autosave: int = 1  # Mosquitto's autosave_interval, as the sandbox runs it


# ---------------------------------------------------------------- figures


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile ``q`` (0-100); 0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[max(1, math.ceil(q / 100 * len(ordered))) - 1]


def spans(
    ids: Sequence[str],
    sent: dict[str, float],
    stamps: dict[str, tuple[float, float]],
    done: dict[str, float],
) -> dict[str, dict[str, float]]:
    """p50/p99 in ms of receipt, acked and received, over the pushes that have them."""

    def summary(seconds: list[float]) -> dict[str, float]:
        ms = [s * 1000 for s in seconds]
        return {"p50": round(percentile(ms, 50), 2), "p99": round(percentile(ms, 99), 2)}

    have = [i for i in ids if i in sent and i in stamps]
    return {
        "receipt": summary([stamps[i][0] - sent[i] for i in have]),
        "acked": summary([stamps[i][1] - sent[i] for i in have]),
        "received": summary([done[i] - sent[i] for i in ids if i in sent and i in done]),
    }


def _proc_cpu(pid: int) -> float:
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _proc_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


async def run(kind: str, plan: Plan, tmp: Path) -> dict[str, Any]:
    """One broker, N sessions: connect, the four phases, what it cost."""
    from sandbox.broker import new_password
    from sandbox.broker_mosquitto import MosquittoBroker
    from sandbox.broker_nats import NatsCluster

    n = plan.sessions
    sns = [f"F{i:06d}" for i in range(n)]
    passwords = {sn: new_password() for sn in [*sns, FLOOR_SN]}
    broker: MosquittoBroker | NatsCluster = (
        MosquittoBroker(
            tmp / "mosquitto",
            secure=True,
            tcp_nodelay=plan.nodelay,
            autosave_interval=plan.autosave,
        )
        if kind == "mosquitto"
        else NatsCluster(tmp / "nats", nodes=3, secure=True)
    )
    broker.add_users(passwords)  # before start: no reload
    t = time.perf_counter()
    broker.start()
    broker_start_s = time.perf_counter() - t
    v5 = kind == "mosquitto"
    ports = (
        [broker.port]
        if isinstance(broker, MosquittoBroker)
        else [node.mqtt_port for node in broker.nodes]
    )
    broker_pids = broker.pids
    gateway_key, gateway_public = generate_key_pem()
    terminal_key, _ = generate_key_pem()
    paced = schedule(sns, plan.paced)
    saturated = schedule(sns, plan.saturated, start=plan.paced)
    t = time.perf_counter()
    pushes = {mid: build_push(sn, mid, gateway_key) for sn, mid in [*paced, *saturated]}
    push_sign_s = time.perf_counter() - t
    floor_ids = [f"{FLOOR_SN}-{i}" for i in range(plan.paced + plan.saturated)]
    push_bytes = max(len(p) for p in pushes.values())
    event_bytes = len(event_payload(EventKind.RECEIVED, sns[0], paced[0][1], terminal_key))
    floor_pushes = {mid: mid.encode() + b" " * (push_bytes - len(mid)) for mid in floor_ids}

    workers: list[asyncio.subprocess.Process] = []
    tms = Tms()
    result: dict[str, Any] = {
        "broker": kind,
        "sessions": n,
        "broker_start_s": round(broker_start_s, 2),
    }
    try:
        for k in range(plan.workers):
            mine = [sn for i, sn in enumerate(sns) if i % plan.workers == k]
            ids: dict[str, list[str]] = {sn: [] for sn in mine}
            for sn, mid in [*paced, *saturated]:
                if sn in ids:
                    ids[sn].append(mid)
            cfg = {
                "host": broker.host,
                "v5": v5,
                "sessions": [[sn, passwords[sn], ports[sns.index(sn) % len(ports)]] for sn in mine],
                "floor": [FLOOR_SN, passwords[FLOOR_SN], ports[1 % len(ports)]] if k == 0 else None,
                "message_ids": ids,
                "terminal_key": terminal_key,
                "gateway_public": gateway_public,
                "store": str(tmp / f"store-{k}.log") if plan.store == "fsync" else None,
                "event_bytes": event_bytes,
                "concurrency": plan.concurrency,
            }
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "benchmarks.fleet",
                "--worker",
                cwd=REPO,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                limit=1 << 26,
            )
            assert proc.stdin is not None
            proc.stdin.write(json.dumps(cfg).encode() + b"\n")
            await proc.stdin.drain()
            workers.append(proc)
        tms_login = broker.tms_credentials
        await tms.connect(broker.host, ports[0], (tms_login.username, tms_login.password), v5=v5)
        keeper = asyncio.create_task(keep_alive(lambda: [tms.conn] if tms.conn else []))
        reports = [await _line(p, CONNECT_TIMEOUT + 30 + n / 20) for p in workers]
        each = [s for r in reports for s in r["connect_each_s"]]
        result["connect"] = {
            "connected": sum(r["connected"] for r in reports),
            "failed": sum(r["failed"] for r in reports),
            "errors": [e for r in reports for e in r["errors"]][:3],
            "wall_s": max(r["connect_s"] for r in reports),
            "each_p50_ms": round(percentile(each, 50) * 1000, 1),
            "each_p99_ms": round(percentile(each, 99) * 1000, 1),
        }
        result["presign"] = {
            "pushes": len(pushes),
            "push_sign_s": round(push_sign_s, 2),
            "events": sum(r["events_signed"] for r in reports),
            "event_sign_s": max(r["presign_s"] for r in reports),
        }
        result["broker_rss_after_connect_mb"] = round(sum(map(_proc_rss_mb, broker_pids)), 1)
        if result["connect"]["failed"]:
            result["broker_says"] = complaints(broker)
            return result

        def items(pairs: list[tuple[str, str]]) -> list[tuple[str, str, bytes]]:
            return [(orders_topic(sn), mid, pushes[mid]) for sn, mid in pairs]

        floor_topic = orders_topic(FLOOR_SN)
        floor_paced = [(floor_topic, m, floor_pushes[m]) for m in floor_ids[: plan.paced]]
        floor_sat = [(floor_topic, m, floor_pushes[m]) for m in floor_ids[plan.paced :]]
        phases: dict[str, dict[str, Any]] = {}
        phases["terminals paced"] = await tms.paced(items(paced), plan.rate)
        phases["floor paced"] = await tms.paced(floor_paced, plan.rate)
        phases["floor saturated"] = await tms.saturated(floor_sat, plan.window)
        cpu_before = {p: _proc_cpu(p) for p in [*broker_pids, *(w.pid for w in workers)]}
        own_before = time.process_time()
        t = time.perf_counter()
        phases["terminals saturated"] = await tms.saturated(items(saturated), plan.window)
        wall = time.perf_counter() - t
        cpu = {p: _proc_cpu(p) - c for p, c in cpu_before.items()}
        result["saturated_cpu_pct"] = {
            "broker": round(100 * sum(cpu[p] for p in broker_pids) / wall, 1),
            "terminals": round(100 * sum(cpu[w.pid] for w in workers) / wall, 1),
            "tms": round(100 * (time.process_time() - own_before) / wall, 1),
        }
        result["broker_rss_end_mb"] = round(sum(map(_proc_rss_mb, broker_pids)), 1)
        keeper.cancel()
        stats = []
        for proc in workers:
            assert proc.stdin is not None
            proc.stdin.write(b"stop\n")
            await proc.stdin.drain()
            stats.append(await _line(proc, 60))
        stamps: dict[str, tuple[float, float]] = {}
        for s in stats:
            stamps.update({k: (v[0], v[1]) for k, v in s["stamps"].items()})
        ids_of = {
            "floor paced": [i[1] for i in floor_paced],
            "terminals paced": [mid for _, mid in paced],
            "floor saturated": [i[1] for i in floor_sat],
            "terminals saturated": [mid for _, mid in saturated],
        }
        for name, phase in phases.items():
            phase.update(spans(ids_of[name], tms.sent, stamps, tms.done))
        result["phases"] = phases
        result["terminals"] = {
            "rejected": sum(s["rejected"] for s in stats),
            "lost_connections": sum(s["lost_connections"] for s in stats),
            "fsyncs": sum(s["fsyncs"] for s in stats),
            "stored": sum(s["stored"] for s in stats),
            "cpu_s": round(sum(s["cpu_s"] for s in stats), 2),
            "maxrss_mb": max(s["maxrss_mb"] for s in stats),
        }
        result["push_bytes"], result["event_bytes"] = push_bytes, event_bytes
        return result
    finally:
        if tms.conn is not None:
            tms.conn.close()
        for proc in workers:
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
        broker.stop()


def complaints(broker: Any) -> list[str]:
    """The broker's last warnings and errors (why connects failed), one of each."""
    logs = [broker.log_path] if hasattr(broker, "log_path") else []
    logs += [broker.data_dir / f"{node.name}.log" for node in getattr(broker, "nodes", [])]
    seen: dict[str, None] = {}
    for log in logs:
        with contextlib.suppress(OSError):
            for line in log.read_text("utf-8", errors="replace").splitlines()[-2000:]:
                if any(w in line for w in ("ulimit", "Warning", "[ERR]", "[WRN]", "Error")):
                    seen[line.split(": ", 1)[-1][:200]] = None
    return list(seen)[-3:]


async def _line(proc: asyncio.subprocess.Process, timeout: float) -> dict[str, Any]:
    assert proc.stdout is not None
    line = await asyncio.wait_for(proc.stdout.readline(), timeout)
    if not line:
        raise RuntimeError(f"terminal process {proc.pid} ended (exit {await proc.wait()})")
    out = json.loads(line)
    assert isinstance(out, dict)
    return out
