"""The POS module (``cloud.pos.AsyncPosClient``) against the sandbox: per sale, and under load.

1. Requests per sale and time to final, with a result notification versus
   polling alone. Real sales (the agent with a simulated Visa tap, as in
   ``sale_e2e.py``), the two ways taking turns sale by sale: ``notify`` passes
   a ``cloud.notify_server.NotifyServer`` as ``notify_url`` and lets the
   verified notification wake ``wait_for_final``; ``polling`` passes none, so
   ``wait_for_final`` learns the end from ``order.query`` on its schedule
   (first after ~1 s, then x1.6, jittered). Requests are counted with an
   httpx event hook on the client's own connection pool. The floor: when the
   sale was final at the gateway - the agent's ``answered`` hop, the moment
   the cashier call came back - so ``time to final - floor`` is what the POS
   side adds to learn it.
2. 500 concurrent orders from one ``AsyncPosClient`` (one event loop, its
   default httpx pool): each task creates an order (``wisehub.cloud.pay.order``
   to a provisioned terminal that is offline: the TMS publishes the push, no
   session takes it) and then queries it (``order.query``). Throughput in
   orders/s (create + query) and the p99 of each call, beside the floor in the
   same run: ``GET /health``, the sandbox's cheapest endpoint, with a bare
   ``httpx.AsyncClient`` - once at a time (round trip) and 500 at once
   (what the HTTP stack alone can carry). Each signed call costs an RSA-2048
   signature on each side and a verification on each side.

Usage: ``python benchmarks/pos_client.py [--quick] [--sales N] [--orders N]``.
The last line of the output is one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
import uuid
from collections import Counter
from collections.abc import Awaitable
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx

from benchmarks.latency_rig import (
    MqttTap,
    TimedScreens,
    cloud,
    cpu_seconds,
    journal_hops,
    machine,
    start_agent,
    stop_agent,
    summary,
    wait_paid,
    workdir,
)
from cloud.config import PosConfig, load_config
from cloud.messages import TransStatus
from cloud.notify_server import NotifyServer, notification_handler
from cloud.pos import AsyncPosClient
from cloud.topics import events_topic
from tests.integration.agent_rig import Terminal
from tests.integration.conftest import SandboxHandle

WARMUP = 2
AMOUNT = Decimal("12.30")
HEALTH_ROUND_TRIPS = 200


class CountingPos:
    """An ``AsyncPosClient`` whose HTTP requests are counted, by method."""

    def __init__(self, config: PosConfig) -> None:
        self.requests: Counter[str] = Counter()
        self.http = httpx.AsyncClient(
            timeout=httpx.Timeout(config.timeout), event_hooks={"request": [self._count]}
        )
        self.client = AsyncPosClient(config, http=self.http)

    async def _count(self, request: httpx.Request) -> None:
        method = json.loads(request.content).get("method", "?")
        self.requests[str(method)] += 1

    async def aclose(self) -> None:
        await self.client.aclose()
        await self.http.aclose()


# ---------------------------------------------------------------- 1. per sale


async def per_sale(sandbox: SandboxHandle, root: Path, sales: int) -> dict[str, Any]:
    sn = "BENCHPOS" + uuid.uuid4().hex[:6].upper()
    term = Terminal(sandbox, sn, root / "terminal")
    pos = CountingPos(load_config(sandbox.pos_config))
    server = NotifyServer(notification_handler(pos.client.accept_notification))
    screens: TimedScreens | None = None
    tap: MqttTap | None = None
    modes = ("notify", "polling")
    requests: dict[str, list[int]] = {m: [] for m in modes}
    final: dict[str, list[float]] = {m: [] for m in modes}
    gateway: dict[str, list[float]] = {m: [] for m in modes}
    try:
        start_agent(term)
        screens = TimedScreens(term.socket)
        tap = MqttTap(sandbox.mqtt_host, sandbox.mqtt_port, [events_topic(sn)])
        await server.start()
        for i in range(WARMUP + sales):
            for mode in modes:
                term.sims["nfc"].send("present")  # in the field before the push
                tap_mark, screen_mark = tap.mark(), screens.mark()
                order_no = "P" + uuid.uuid4().hex[:16]
                before = sum(pos.requests.values())
                wall0, start = time.time_ns() / 1e6, time.perf_counter()
                created = await pos.client.push_order(
                    terminal_sn=sn,
                    merchant_order_no=order_no,
                    order_amount=AMOUNT,
                    notify_url=server.url if mode == "notify" else None,
                )
                info = await pos.client.wait_for_final(order_no, deadline_s=30)
                took = time.perf_counter() - start
                count = sum(pos.requests.values()) - before
                if info.trans_status is not TransStatus.COMPLETED:
                    raise RuntimeError(f"sale {order_no} ended {info.trans_status.name}")
                await asyncio.to_thread(
                    wait_paid, tap, screens, created.trans_no, tap_mark, screen_mark
                )
                if i < WARMUP:
                    continue
                requests[mode].append(count)
                final[mode].append(took)
                answered = journal_hops(term.journal_path, created.trans_no)["answered"]
                gateway[mode].append((answered - wall0) / 1000)
    finally:
        await server.close()
        await pos.aclose()
        if screens is not None:
            screens.close()
        if tap is not None:
            tap.close()
        stop_agent(term)
        term.close()
    return {
        mode: {
            "sales": sales,
            "requests_per_sale": round(sum(requests[mode]) / sales, 2),
            "requests_max": max(requests[mode]),
            "time_to_final": summary(final[mode]),
            "final_at_gateway": summary(gateway[mode]),
        }
        for mode in modes
    }


# ---------------------------------------------------------------- 2. under load


async def timed(call: Awaitable[object]) -> float:
    start = time.perf_counter()
    await call
    return time.perf_counter() - start


class CpuMeter:
    """CPU used by this process (the client) and the sandbox over a stretch, per item."""

    def __init__(self, sandbox: SandboxHandle) -> None:
        self.pid = sandbox.process.pid
        self.client = cpu_seconds()
        self.server = cpu_seconds(self.pid)

    def per(self, items: int) -> dict[str, float]:
        return {
            "client_cpu_ms": round((cpu_seconds() - self.client) / items * 1000, 2),
            "sandbox_cpu_ms": round((cpu_seconds(self.pid) - self.server) / items * 1000, 2),
        }


async def health_floor(sandbox: SandboxHandle, burst: int) -> dict[str, Any]:
    """``GET /health`` with a bare client: one at a time, then ``burst`` at once."""
    url = sandbox.http_url + "/health"
    async with httpx.AsyncClient(timeout=60) as http:
        await http.get(url)  # connect
        one = [await timed(http.get(url)) for _ in range(HEALTH_ROUND_TRIPS)]
        cpu = CpuMeter(sandbox)
        start = time.perf_counter()
        many = await asyncio.gather(*(timed(http.get(url)) for _ in range(burst)))
        wall = time.perf_counter() - start
        used = cpu.per(burst)
    return {
        "round_trip": summary(one),
        "burst": summary(many),
        "burst_per_s": round(burst / wall, 1),
        **used,
    }


async def concurrent_orders(sandbox: SandboxHandle, orders: int) -> dict[str, Any]:
    sn = "BENCHOFF" + uuid.uuid4().hex[:6].upper()
    await asyncio.to_thread(sandbox.provision, sn)
    pos = CountingPos(load_config(sandbox.pos_config))
    creates: list[float] = []
    queries: list[float] = []
    both: list[float] = []

    async def one(n: int) -> None:
        order_no = f"C{n:04d}{uuid.uuid4().hex[:10]}"
        start = time.perf_counter()
        await pos.client.push_order(terminal_sn=sn, merchant_order_no=order_no, order_amount=AMOUNT)
        middle = time.perf_counter()
        info = await pos.client.query_order(order_no)
        end = time.perf_counter()
        if info.trans_status is not TransStatus.PREORDER:
            raise RuntimeError(f"order {order_no} is {info.trans_status.name}")
        creates.append(middle - start)
        queries.append(end - middle)
        both.append(end - start)

    try:
        await one(orders)  # connect, warm the sandbox's code paths
        for figures in (creates, queries, both):
            figures.clear()
        before = dict(pos.requests)
        cpu = CpuMeter(sandbox)
        start = time.perf_counter()
        await asyncio.gather(*(one(n) for n in range(orders)))
        wall = time.perf_counter() - start
        used = cpu.per(orders)
    finally:
        await pos.aclose()
    sent = {k: v - before.get(k, 0) for k, v in pos.requests.items()}
    return {
        "orders": orders,
        "seconds": round(wall, 3),
        "orders_per_s": round(orders / wall, 1),
        "requests": sent,
        "create": summary(creates),
        "query": summary(queries),
        "create_and_query": summary(both),
        **used,
    }


async def run(sales: int, orders: int) -> dict[str, Any]:
    with workdir() as root, cloud(root) as sandbox:
        floor = await health_floor(sandbox, orders)
        load = await concurrent_orders(sandbox, orders)
        sale = await per_sale(sandbox, root, sales)
    return {"per_sale": sale, "load": load, "health": floor}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="10 sales per mode (< 1 min)")
    parser.add_argument("--sales", type=int, default=None, help="sales per mode (default 50)")
    parser.add_argument("--orders", type=int, default=500, help="concurrent orders (default 500)")
    args = parser.parse_args()
    sales = args.sales or (10 if args.quick else 50)
    r = asyncio.run(run(sales, args.orders))
    sale, load, health = r["per_sale"], r["load"], r["health"]

    print(f"POS module, per sale ({sales} sales each way, simulated Visa tap)")
    print(
        f"{'way':<9} {'req/sale':>8} {'max':>4} {'final p50':>10} {'p99':>10} {'gateway p50':>12}"
    )
    for mode, f in sale.items():
        t, g = f["time_to_final"], f["final_at_gateway"]
        print(
            f"{mode:<9} {f['requests_per_sale']:>8.2f} {f['requests_max']:>4} "
            f"{t['p50']:>7.1f} ms {t['p99']:>7.1f} ms {g['p50']:>9.1f} ms"
        )
    print()
    print(f"{args.orders} concurrent orders, one AsyncPosClient (create, then query)")
    print(f"{'what':<38} {'per s':>8} {'p50':>10} {'p99':>10} {'CPU: POS':>9} {'sandbox':>8}")
    rows = [
        ("orders (create + query)", load, load["create_and_query"]),
        ("  create (wisehub.cloud.pay.order)", None, load["create"]),
        ("  query (order.query)", None, load["query"]),
        (f"floor: GET /health x {args.orders} at once", health, health["burst"]),
        ("floor: GET /health one at a time", None, health["round_trip"]),
    ]
    for label, whole, s in rows:
        rate = cpu = ""
        if whole is not None:
            rate = f"{whole.get('orders_per_s', whole.get('burst_per_s')):.1f}"
            cpu = f"{whole['client_cpu_ms']:>6.2f} ms {whole['sandbox_cpu_ms']:>5.2f} ms"
        print(f"{label:<38} {rate:>8} {s['p50']:>7.2f} ms {s['p99']:>7.2f} ms {cpu}")
    out = {
        "benchmark": "pos_client",
        **r,
        "requests_per_sale_notify": sale["notify"]["requests_per_sale"],
        "requests_per_sale_polling": sale["polling"]["requests_per_sale"],
        "time_to_final_notify_p50_ms": sale["notify"]["time_to_final"]["p50"],
        "time_to_final_polling_p50_ms": sale["polling"]["time_to_final"]["p50"],
        "orders_per_s": load["orders_per_s"],
        "create_and_query_p99_ms": load["create_and_query"]["p99"],
        "health_burst_per_s": health["burst_per_s"],
        "machine": machine(),
    }
    print(json.dumps(out, sort_keys=True))


if __name__ == "__main__":
    main()
