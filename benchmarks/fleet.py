"""Fleet: N terminal sessions on Mosquitto and on a three-node NATS cluster.

What it measures, per broker and number of sessions N, with the brokers'
per-terminal security on (``sandbox.broker``, ``secure=True``: a user per
terminal limited to its own topics, the TMS's user, no anonymous clients),
as docs/operations.md "The figures" asks:

* connect: N sessions made as the agent makes them (below), a bounded
  number at a time; how long they took, and how many failed;
* pushes from the TMS (this process) to the terminals, round robin, two
  ways: ``paced`` (``--rate`` pushes/s, open loop: the latency of a push
  while the fleet is otherwise idle) and ``saturated`` (``--window`` pushes
  in flight, a new one as soon as one's ``received`` event is back: the
  most pushes per second the whole set-up carries). Three spans per push:
  ``receipt`` (the TMS's publish to the push's arrival in the terminal's
  process), ``acked`` (to the terminal's PUBACK, after verifying and storing
  it: what "push -> acknowledged" means; the broker's PUBACK to the TMS is
  not it) and ``received`` (to the terminal's ``received`` event reaching
  the TMS: the round trip the TMS itself can see);
* the floor, in the same run and the same phases: one bare subscriber
  (one more session in a terminal process) that acknowledges at once and
  echoes an event-sized message, with no verification, storage or signature.

A simulated terminal does what ``agent.mqtt.link`` and the journal do with a
push (verify, store with fsync, acknowledge, report): see
``benchmarks.fleet_terminal``.

Not on the clock, and why: the RSA-2048 signatures. The TMS signs every
push (``envelope.build_push``, the gateway's key) and the terminal processes
sign every event (``envelope.build_event``; one terminal key shared by all
simulated terminals, which changes nothing for the broker) before the
clock starts, for the message ids the schedule will use: each costs ~0.5
ms of CPU, which the gateway and each real terminal spend on machines of
their own; made during the run on this 2-core machine they would cap it at
the simulator's signing rate, not the broker's. The terminal's check of
the push's signature (~0.06 ms) is on the clock. The TMS does not verify
the events (the sandbox's does).

Processes: the broker(s); ``--workers`` terminal processes (default 2, the
cores), each with its share of the sessions on one asyncio loop over raw
sockets (a small MQTT 3.1.1/5 codec, ``benchmarks.fleet_mqtt``: a paho
client per session would cost more CPU and memory than the broker per
message); this process as the TMS. All share the two cores: the figures
are this machine's, the broker's share of CPU is printed beside them.
Times are ``perf_counter()`` (``CLOCK_MONOTONIC``, one clock for every
process).

Without ``--sessions`` a full run measures 1,000 sessions, then doubles N
(a fresh broker each time) until connecting fails, a push is lost, the
paced p99 ``acked`` passes 1 s, or ``--max-sessions``; what stopped it is
printed. ``--quick``: 200 sessions, short phases, no ramp (under a minute
for both brokers). The last line of the output is one JSON object.

Usage: ``python benchmarks/fleet.py [--quick] [--sessions N[,N...]]
[--broker mosquitto|nats|both] [--workers K] [--rate R] [--window W]
[--store fsync|none]``.

The parts: ``benchmarks.fleet_mqtt`` (the codec and connection),
``benchmarks.fleet_terminal`` (a terminal process, ``--worker``),
``benchmarks.fleet_tms`` (the TMS's pushes and stopwatch) and
``benchmarks.fleet_run`` (one run: a broker, N sessions, the phases); this
module is the entry point: the ramp, the table and the JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import resource
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks.fleet_run import Plan, run
from benchmarks.fleet_terminal import worker_main
from benchmarks.fleet_tms import PHASE_TIMEOUT

EXPLODED_S = 1.0  # a paced p99 "acked" past this ends the ramp


# ---------------------------------------------------------------- the report


def stop_reason(result: dict[str, Any]) -> str | None:
    """Why a ramp ends at this run, or None to go on."""
    c = result.get("connect", {})
    if c.get("failed"):
        return (
            f"{c['failed']} of {result['sessions']} sessions failed to connect: {c['errors'][:1]}"
        )
    phases = result.get("phases", {})
    lost = sum(p["lost"] for p in phases.values())
    if lost:
        return f"{lost} pushes lost (no received event within {PHASE_TIMEOUT:g} s)"
    p99 = phases.get("terminals paced", {}).get("acked", {}).get("p99", 0.0)
    if p99 > EXPLODED_S * 1000:
        return f"paced p99 acked {p99:.0f} ms > {EXPLODED_S * 1000:.0f} ms"
    return None


def print_table(results: list[dict[str, Any]], plan: Plan) -> None:
    print(
        f"Fleet: secure brokers, {plan.workers} terminal processes, store {plan.store}; paced "
        f"{plan.rate:g} pushes/s, saturated {plan.window} in flight; Mosquitto set_tcp_nodelay "
        f"{'true' if plan.nodelay else 'false'}, autosave_interval {plan.autosave}; ms p50/p99"
    )
    head = f"{'broker':<10}{'sessions':>9}  {'phase':<20}{'pushes/s':>9}"
    print(f"{head}  {'receipt':>15}  {'acked':>15}  {'received':>15}  lost")
    for r in results:
        c = r.get("connect", {})
        print(
            f"{r['broker']:<10}{r['sessions']:>9}  connect: {c.get('connected', 0)} in "
            f"{c.get('wall_s', 0):.1f} s (each p99 {c.get('each_p99_ms', 0):.0f} ms), "
            f"{c.get('failed', 0)} failed; broker RSS "
            f"{r.get('broker_rss_after_connect_mb', 0):.0f} MB"
        )
        for name, p in r.get("phases", {}).items():
            cols = "  ".join(
                f"{p[s]['p50']:>7.2f}/{p[s]['p99']:<7.2f}" for s in ("receipt", "acked", "received")
            )
            print(f"{'':<19}  {name:<20}{p['per_s']:>9.0f}  {cols}  {p['lost']}")
        if "saturated_cpu_pct" in r:
            cpu = r["saturated_cpu_pct"]
            print(
                f"{'':<19}  CPU while saturated: broker {cpu['broker']:.0f}%, terminals "
                f"{cpu['terminals']:.0f}%, TMS {cpu['tms']:.0f}% (of one core; 2 cores)"
            )
        if r.get("stopped"):
            print(f"{'':<19}  ramp ends: {r['stopped']}")
        for line in r.get("broker_says", []):
            print(f"{'':<19}  broker log: {line}")


async def main_async(args: argparse.Namespace) -> None:
    from benchmarks.latency_rig import machine

    quick = args.quick
    plan_base = Plan(
        sessions=200 if quick else 1000,
        paced=150 if quick else 500,
        saturated=1000 if quick else 4000,
        rate=args.rate or 50,
        window=args.window or (50 if quick else 100),
        workers=args.workers,
        store=args.store,
        nodelay=not args.mosquitto_nagle,
        autosave=args.mosquitto_autosave,
    )
    counts = args.sessions or [plan_base.sessions]
    ramp = not quick and args.sessions is None
    kinds = ["mosquitto", "nats"] if args.broker == "both" else [args.broker]
    results: list[dict[str, Any]] = []
    held: dict[str, dict[str, Any]] = {}
    for kind in kinds:
        todo = list(counts)
        good, bad, tries = 0, 0, 0
        while todo:
            tries += 1
            n = todo.pop(0)
            plan = dataclasses.replace(plan_base, sessions=n)
            with tempfile.TemporaryDirectory(prefix=f"fleet-{kind}-", dir=args.tmp) as tmp:
                try:
                    r = await run(kind, plan, Path(tmp))
                except Exception as exc:  # a run that breaks ends the ramp, not the report
                    r = {"broker": kind, "sessions": n, "error": f"{type(exc).__name__}: {exc}"}
            reason = r.get("error") or stop_reason(r)
            r["stopped"] = reason
            results.append(r)
            print_table([r], plan)
            sys.stdout.flush()
            if reason is None:
                good = max(good, n)
                held[kind] = {"sessions": good, "limit": None}
            else:
                bad = n if not bad else min(bad, n)
                connected = r.get("connect", {}).get("connected", 0)
                held.setdefault(kind, {"sessions": good})["limit"] = f"at {n}: {reason}"
                held[kind]["connected_at_failure"] = connected
            if not ramp:
                continue
            if not bad and n * 2 <= args.max_sessions:
                todo.append(n * 2)
            elif not bad:
                held[kind]["limit"] = f"--max-sessions {args.max_sessions}"
            elif bad - good > max(1000, good // 4) and tries < 10:
                todo.append((good + bad) // 2 // 500 * 500)  # narrow it down
    print()
    print_table(results, plan_base)
    out = {
        "benchmark": "fleet",
        "quick": args.quick,
        "plan": {k: v for k, v in dataclasses.asdict(plan_base).items() if k != "sessions"},
        "runs": results,
        "max_sessions": held,
        "ulimit_nofile": resource.getrlimit(resource.RLIMIT_NOFILE)[0],
        "machine": machine(),
    }
    for r in results:  # keep the JSON line about figures, not samples
        r.pop("connect_each_s", None)
    print(json.dumps(out, sort_keys=True))


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="200 sessions, short phases (< 1 min)")
    parser.add_argument(
        "--sessions",
        type=lambda s: [int(x) for x in s.split(",")],
        help="session counts to run, e.g. 1000 or 1000,2000 (default: 1000, then doubling)",
    )
    parser.add_argument("--broker", choices=["mosquitto", "nats", "both"], default="both")
    parser.add_argument("--workers", type=int, default=2, help="terminal processes (default 2)")
    parser.add_argument("--rate", type=float, help="paced pushes per second (default 50)")
    parser.add_argument("--window", type=int, help="saturated: pushes in flight (default 100)")
    parser.add_argument("--store", choices=["fsync", "none"], default="fsync")
    parser.add_argument("--max-sessions", type=int, default=64000, help="where a ramp stops")
    parser.add_argument(
        "--mosquitto-nagle",
        action="store_true",
        help="leave Mosquitto's set_tcp_nodelay at its default (false)",
    )
    parser.add_argument(
        "--mosquitto-autosave",
        type=int,
        default=1,
        metavar="S",
        help="Mosquitto's autosave_interval (default 1, the sandbox's; Mosquitto's own is 1800)",
    )
    parser.add_argument("--tmp", help="scratch directory (default: the system's, on disk)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        asyncio.run(worker_main())
        return
    asyncio.run(main_async(args))


if __name__ == "__main__":
    main()
