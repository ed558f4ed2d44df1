"""Soak: many sales through one agent under random faults; no money may go astray.

What it runs (``benchmarks/stack.py``): Mosquitto, ``sadad-sandbox serve --time-scale
0.1 --hang-seconds 30`` (a ``.91`` amount hangs 3 s, past the agent's 2 s gateway
timeout; ``.92`` approves after 0.3 s), reader simulators on ptys (NFC, swipe,
scanner) and ``sadad-agent run`` (``resolve_deadline`` 5 s, results shown 0.1 s).
One sale at a time: the POS pushes an order, a card is tapped or swiped or a wallet
code scanned whenever the checkout asks for one, until the journal holds a final
phase. Faults, drawn from ``--seed``:

- gateway: amounts ending ``.93`` (HTTP 503, nothing charged), ``.91`` (hang: the
  answer comes after the agent gave up), ``.92`` (slow approval), ``.52`` (charged,
  then HTTP 500), ``.95`` (the order is created and pushed but the POS gets HTTP
  500 and retries), ``.97`` (the TMS loses the terminal's ``received`` and pushes
  the order twice more); declines ``.51`` / ``.05`` for variety;
- ``broker_restart``: Mosquitto stopped and started on the same port (persistence kept);
- ``agent_kill``: SIGKILL, then the agent started again (recovery first);
- ``garbage``: line noise on a reader's line (``sadad-reader-sim`` ``garbage``);

each process fault at a random moment of a sale: ``idle`` (before the push),
``offered`` (just after it), ``reading`` (just after the card), ``in_flight`` (0-2 s
after the card: authorizing, resolving or showing the result).

At the end it waits until every order is final at the gateway and in the journal
(or ``SETTLE_SECONDS`` pass), then counts, per order: double charges (more than one
acquirer charge), orders left non-final (gateway ``trans_status`` not 1/2/3, or no
final journal row), and journal/gateway disagreements (the journal's final phase
against ``trans_status``, as ``agent_rig.PHASE_STATUS`` maps them). Also counted:
stray charges (an unreversed charge on an unpaid order, or a paid order without
one) and the sandbox's ``!!!`` alarms. The exit status is 1 when any of these is
not zero; the temporary directory is then kept for its logs.

Baseline, same run: sales/s of the first ``BASELINE_SALES`` sales, with no faults.

Usage: ``python benchmarks/soak.py [--quick] [--sales N] [--seed S] [--fault-rate P]
[--keep]``. ``--quick``: 30 sales with every fault at least once. The last line is
one JSON object.
"""

from __future__ import annotations

import argparse
import json
import random
import sqlite3
import statistics
import sys
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from benchmarks.stack import Stack, load_average, machine, table
from cloud.errors import SadadError
from cloud.messages import TransStatus
from tests.integration.agent_rig import PHASE_STATUS, Order, Terminal

SN = "SOAK0001"
SANDBOX_ARGS = ["--time-scale", "0.1", "--hang-seconds", "30"]
EXPIRES = 180  # seconds an order may wait for its card (the POS's ``expires``)
SALE_TIMEOUT = 90.0  # a sale not final by then is left to the final settle
SETTLE_SECONDS = EXPIRES + 30.0
BASELINE_SALES = 10

READERS = {"nfc": "present visa", "msr": "present visa", "scan": "present wechat"}
REPEAT = {"nfc": 1.0, "msr": 0.5, "scan": 0.5}  # seconds before presenting again
# Amount endings that force a gateway behaviour (sandbox/README.md) -> fault name.
GATEWAY_FAULTS = {
    "93": "gateway_503",
    "91": "gateway_hang",
    "92": "gateway_slow",
    "52": "gateway_500_charged",
    "95": "create_500_to_pos",
    "97": "push_ack_lost",
}
DECLINES = ("51", "05")
MAGIC = {*GATEWAY_FAULTS, *DECLINES, "54", "94", "96"}
PROCESS_FAULTS = ("broker_restart", "agent_kill", "garbage")
MOMENTS = ("idle", "offered", "reading", "in_flight")


@dataclass
class Plan:
    """What happens to one sale."""

    reader: str
    cents: str | None = None  # a magic ending, or None for an ordinary amount
    fault: str | None = None  # one of PROCESS_FAULTS
    moment: str = "idle"


@dataclass
class Soak:
    term: Terminal
    stack: Stack
    rng: random.Random
    faults: Counter[str] = field(default_factory=Counter)
    timeline: list[str] = field(default_factory=list)
    unanswered: list[str] = field(default_factory=list)  # pushes the POS got no answer to

    # ------------------------------------------------------------ faults

    def inject(self, fault: str, reader: str) -> None:
        self.faults[fault] += 1
        if fault == "broker_restart":
            self.stack.broker.restart()
        elif fault == "agent_kill":
            self.term.kill_agent()
            time.sleep(self.rng.uniform(0.0, 0.5))
            self.term.start_agent()
        elif fault == "garbage":
            target = reader if self.rng.random() < 0.7 else self.rng.choice(list(READERS))
            self.term.sims[target].send("garbage")
        else:
            raise ValueError(fault)

    # ------------------------------------------------------------ one sale

    def amount(self, cents: str | None) -> str:
        whole = self.rng.randint(1, 99)
        if cents is None:
            cents = f"{self.rng.randint(0, 99):02d}"
            while cents in MAGIC:
                cents = f"{self.rng.randint(0, 99):02d}"
        return f"{whole}.{cents}"

    def sale(self, number: int, plan: Plan) -> tuple[Order | None, str | None]:
        """Push, present whenever asked, inject the planned fault; the order (None
        when the push got no answer) and the journal's final phase (None if not
        final within ``SALE_TIMEOUT``)."""
        if plan.cents in GATEWAY_FAULTS:
            self.faults[GATEWAY_FAULTS[plan.cents]] += 1
        if plan.fault:
            self.timeline.append(f"sale {number}: {plan.fault} at {plan.moment}")
        if plan.fault and plan.moment == "idle":
            self.inject(plan.fault, plan.reader)
        order_no = "O" + uuid.uuid4().hex[:12]
        try:
            order = self.term.push(
                self.amount(plan.cents), merchant_order_no=order_no, expires=EXPIRES
            )
        except SadadError as exc:  # outcome unknown to the POS: audited from the gateway's books
            self.unanswered.append(order_no)
            self.timeline.append(f"sale {number}: push {order_no} failed: {exc}")
            return None, None
        if plan.fault and plan.moment == "offered":
            self.inject(plan.fault, plan.reader)
        pending = plan.fault if plan.moment in ("reading", "in_flight") else None
        inject_at: float | None = None
        watcher = None
        seen = 0  # screens of the current watcher looked at
        latest: str | None = None  # the checkout's latest screen for this order
        last_sent = -1e9
        deadline = time.monotonic() + SALE_TIMEOUT
        while time.monotonic() < deadline:
            row = journal_row(self.term, order.trans_no)
            if row is not None and row["final"]:
                if pending:  # the sale beat the fault: it lands on the result screen
                    self.inject(pending, plan.reader)
                return order, str(row["phase"])
            if self.term.watcher is not watcher:  # the agent was restarted
                watcher, seen, latest = self.term.watcher, 0, None
            if watcher is not None:
                for screen in watcher.since(seen):
                    seen += 1
                    if screen.order is not None and screen.order.trans_no == order.trans_no:
                        latest = screen.screen.value
            now = time.monotonic()
            # Present while the checkout asks; a swipe or scan made before the
            # reader is armed is lost (as on the real devices), so repeat it.
            if latest == "WAITING_FOR_CARD" and now - last_sent > REPEAT[plan.reader]:
                self.term.sims[plan.reader].send(READERS[plan.reader])
                last_sent = now
                if pending and inject_at is None:
                    delay = 0.0 if plan.moment == "reading" else self.rng.uniform(0.0, 2.0)
                    inject_at = now + delay
            if pending and inject_at is not None and now >= inject_at:
                self.inject(pending, plan.reader)
                pending = None
            time.sleep(0.02)
        return order, None


def describe(number: int, plan: Plan, phase: str | None) -> str:
    what = [f"#{number} {plan.reader}"]
    if plan.cents:
        what.append(f".{plan.cents}")
    if plan.fault:
        what.append(f"{plan.fault} at {plan.moment}")
    return " ".join(what) + f" -> {phase}"


def plans(rng: random.Random, sales: int, rate: float, quick: bool) -> list[Plan]:
    """Every sale's reader, amount and fault; with ``quick``, each fault at least once."""
    out = []
    for _ in range(sales):
        plan = Plan(reader=rng.choices(list(READERS), weights=(2, 1, 1))[0])
        for cents in (*GATEWAY_FAULTS, *DECLINES):
            if rng.random() < (rate if cents in GATEWAY_FAULTS else rate / 2):
                plan.cents = cents
        for fault in PROCESS_FAULTS:
            if rng.random() < rate:
                plan.fault, plan.moment = fault, rng.choice(MOMENTS)
        out.append(plan)
    if quick:  # the first sales stay clean for the baseline
        slots = rng.sample(range(BASELINE_SALES, sales), len(GATEWAY_FAULTS) + 2 * 3)
        kinds: list[tuple[str, str]] = [("cents", c) for c in GATEWAY_FAULTS]
        kinds += [("fault", f) for f in PROCESS_FAULTS for _ in range(2)]
        for slot, (what, value) in zip(slots, kinds, strict=True):
            if what == "cents":
                out[slot].cents = value
            else:
                out[slot].fault, out[slot].moment = value, rng.choice(MOMENTS)
    for plan in out[:BASELINE_SALES]:
        plan.cents, plan.fault = None, None
    return out


# ---------------------------------------------------------------- the books


def settle(term: Terminal, timeout: float) -> float:
    """Wait until every order is final at the gateway and in the journal; seconds waited."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if not [o for o in term.orders if problems_non_final(term, o)]:
            break
        time.sleep(0.5)
    return time.monotonic() - start


def journal_row(term: Terminal, trans_no: str) -> dict[str, Any] | None:
    """The journal's row, read beside the agent; None while it cannot be read
    (a read-only reader cannot open a WAL file whose -shm is being recreated)."""
    try:
        return term.journal_row(trans_no)
    except sqlite3.OperationalError:
        return None


def adopt_unanswered(term: Terminal, order_nos: list[str]) -> int:
    """Add to ``term.orders`` the orders the gateway created though the POS got no
    answer (they must settle like the rest); how many."""
    found = 0
    for order_no in order_nos:
        rows = term.sandbox.query(
            "SELECT trans_no, message_id FROM orders WHERE merchant_order_no=?", order_no
        )
        for row in rows:
            term.orders.append(Order(order_no, row["trans_no"], row["message_id"], True))
            found += 1
    return found


def problems_non_final(term: Terminal, order: Order) -> list[str]:
    out = []
    status = term.gateway_status(order)
    if status not in (1, 2, 3):
        out.append(f"gateway trans_status {status}")
    row = journal_row(term, order.trans_no)
    if row is None:
        out.append("not in the journal")
    elif not row["final"]:
        out.append(f"journal phase {row['phase']} (not final)")
    return out


def audit(term: Terminal) -> dict[str, list[str]]:
    """Each order's problems, by kind."""
    found: dict[str, list[str]] = {
        "double_charges": [],
        "non_final": [],
        "disagreements": [],
        "stray_charges": [],
    }
    for order in term.orders:
        name = f"{order.merchant_order_no}/{order.trans_no}"
        charges = term.charges(order.trans_no)
        if len(charges) > 1:
            found["double_charges"].append(f"{name}: {len(charges)} charges")
        for problem in problems_non_final(term, order):
            found["non_final"].append(f"{name}: {problem}")
        status = term.gateway_status(order)
        row = journal_row(term, order.trans_no)
        if row is not None and row["final"] and status in (1, 2, 3):
            expected = PHASE_STATUS[str(row["phase"])]
            if TransStatus(status) is not expected:
                found["disagreements"].append(
                    f"{name}: journal {row['phase']}, gateway trans_status {status}"
                )
        kept = [c for c in charges if not c["reversed"]]
        if status == 2 and len(kept) != 1:
            found["stray_charges"].append(f"{name}: paid with {len(kept)} standing charges")
        if status != 2 and kept:
            found["stray_charges"].append(f"{name}: status {status} but a charge stands")
        elif status == 2 and kept and Decimal(kept[0]["amount"]) <= 0:
            found["stray_charges"].append(f"{name}: charge of {kept[0]['amount']}")
    return found


# ---------------------------------------------------------------- main


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="30 sales, every fault once")
    parser.add_argument("--sales", type=int, default=None, help="sales (default 5000)")
    parser.add_argument("--seed", type=int, default=1, help="seed of the fault schedule")
    parser.add_argument(
        "--fault-rate", type=float, default=0.02, help="chance per sale of each fault kind"
    )
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = parser.parse_args()
    sales = args.sales or (30 if args.quick else 5000)
    if sales <= BASELINE_SALES + 12:
        parser.error(f"--sales must be more than {BASELINE_SALES + 12}")
    rng = random.Random(args.seed)
    schedule = plans(rng, sales, args.fault_rate, args.quick)
    load_before = load_average()

    with Stack(SANDBOX_ARGS, keep=args.keep) as stack:
        term = stack.terminal(SN, result_seconds=0.1, gateway_timeout=2.0, resolve_deadline=5.0)
        term.start_agent()
        soak = Soak(term, stack, rng)
        phases: Counter[str] = Counter()
        durations: list[float] = []
        slow: list[tuple[float, str]] = []
        t0 = time.monotonic()
        baseline_s = 0.0
        for number, plan in enumerate(schedule, start=1):
            started = time.monotonic()
            order, phase = soak.sale(number, plan)
            durations.append(time.monotonic() - started)
            slow.append((durations[-1], describe(number, plan, phase)))
            if order is None:
                phases["push unanswered"] += 1
            else:
                phases[phase or "not final in time"] += 1
            if number == BASELINE_SALES:
                baseline_s = time.monotonic() - t0
            if number % 500 == 0:
                print(f"... {number} sales, {dict(soak.faults)}", file=sys.stderr, flush=True)
        elapsed = time.monotonic() - t0
        adopted = adopt_unanswered(term, soak.unanswered)
        waited = settle(term, SETTLE_SECONDS)
        found = audit(term)
        alarms = [
            line
            for line in stack.sandbox.stderr_text().splitlines()
            if "!!!" in line and SN in line
        ]
        conflicts = [line for line in term.log_text().splitlines() if "CONFLICT" in line]
        failed = any(found.values()) or bool(alarms)
        if failed:
            stack.keep = True
        paths = {"agent_log": str(term.log_path), "sandbox_log": str(stack.sandbox.stderr_path)}

    durations.sort()
    slow.sort(reverse=True)
    figures: dict[str, Any] = {
        "benchmark": "soak",
        "quick": args.quick,
        "seed": args.seed,
        "fault_rate": args.fault_rate,
        "machine": machine(),
        "load_average": {"before": load_before, "after": load_average()},
        "sales": sales,
        "elapsed_s": round(elapsed, 1),
        "sales_per_s": round(sales / elapsed, 2),
        "baseline_sales_per_s": round(BASELINE_SALES / baseline_s, 2),
        "sale_p50_s": round(statistics.median(durations), 3),
        "sale_p99_s": round(durations[min(len(durations) - 1, int(len(durations) * 0.99))], 3),
        "settle_wait_s": round(waited, 1),
        "pushes_unanswered": len(soak.unanswered),
        "unanswered_orders_created": adopted,
        "faults": dict(sorted(soak.faults.items())),
        "outcomes": dict(sorted(phases.items())),
        "double_charges": len(found["double_charges"]),
        "non_final": len(found["non_final"]),
        "disagreements": len(found["disagreements"]),
        "stray_charges": len(found["stray_charges"]),
        "sandbox_alarms": len(alarms),
        "agent_conflicts_logged": len(conflicts),
        "ok": not failed,
        "slowest_sales": [f"{d:.1f} s {what}" for d, what in slow[:5]],
    }
    report(figures, found, alarms, soak.timeline, paths if failed else None)
    print(json.dumps(figures, sort_keys=True))
    return 1 if failed else 0


def report(
    f: dict[str, Any],
    found: dict[str, list[str]],
    alarms: list[str],
    timeline: list[str],
    paths: dict[str, str] | None,
) -> None:
    print(f"Soak: {f['sales']} sales through one agent, seed {f['seed']}, {f['machine']}")
    print(f"load average before {f['load_average']['before']}, after {f['load_average']['after']}")
    print()
    rows = [
        ("double charges", f["double_charges"], "0"),
        ("orders left non-final", f["non_final"], "0"),
        ("journal/gateway disagreements", f["disagreements"], "0"),
        ("stray charges", f["stray_charges"], "0"),
        ("sandbox alarms (!!!)", f["sandbox_alarms"], "0"),
        ("pushes the POS got no answer to", f["pushes_unanswered"], "(audited all the same)"),
    ]
    print(table(("check", "count", "must be"), rows))
    print()
    print(table(("fault injected", "count"), list(f["faults"].items())))
    print()
    print(table(("journal outcome", "sales"), list(f["outcomes"].items())))
    print()
    print(
        f"{f['sales_per_s']} sales/s over {f['elapsed_s']} s with faults "
        f"({f['baseline_sales_per_s']} sales/s for the first {BASELINE_SALES}, no faults); "
        f"sale p50 {f['sale_p50_s']} s, p99 {f['sale_p99_s']} s; "
        f"settled {f['settle_wait_s']} s after the last sale"
    )
    print("slowest: " + "; ".join(f["slowest_sales"]))
    for kind, items in found.items():
        for item in items[:20]:
            print(f"{kind}: {item}")
    for line in alarms[:20]:
        print(f"alarm: {line}")
    if paths is not None:
        print("fault timeline: " + "; ".join(timeline[-30:]))
        print(f"logs kept: {paths['agent_log']} {paths['sandbox_log']}")


if __name__ == "__main__":
    sys.exit(main())
