"""A sale end to end: POS push -> card read -> authorization -> final at the POS by notification.

What it measures, per sale (all processes real: Mosquitto, the sandbox, the
agent with its three simulated readers on ptys; the POS side is
``cloud.pos.AsyncPosClient`` with a ``cloud.notify_server.NotifyServer``
receiver, as a POS server would run it):

* ``total``: from ``push_order`` to ``wait_for_final`` returning ``COMPLETED``,
  woken by the verified result notification (a sale that ends by polling
  stops the run);
* the stages between: the agent's hop timeline from its journal (what
  ``sadad-agent journal --show`` prints; wall-clock ms, whole ms) and the POS
  side's own stamps (create answered, notification verified, final);
* ``floor``: the same sale with no terminal, in the same run, sale for sale:
  the POS creates an order for a second, agent-less terminal and a stand-in
  pays it at once with the agent's own cashier client
  (``agent.gateway.GatewayClient.pay_card``: sealed card, signed call) - what
  the gateway and the POS module cost anyway. ``total - floor`` is the
  terminal's share: MQTT, journal, readers, screen.

The card: the simulated PN532 with the ``visa`` card (qVSDC), unpaced (the pty
moves bytes at once; ``emv_read.py`` measures the 115200 baud wire), put in
the field before the push so the read starts as soon as the reader is armed:
no customer in the loop. The journal is on the disk. Between sales (not
timed) the script waits for the agent's ``paid`` event and the IDLE screen
(the agent keeps the result on screen 0.1 s, ``[ui] result_seconds``).

Usage: ``python benchmarks/sale_e2e.py [--quick] [--sales N]``. The last line
of the output is one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

from agent.gateway import GatewayClient, GatewayIdentity, OrderRef
from benchmarks.latency_rig import (
    BENCH_RESULT_SECONDS,
    MqttTap,
    TimedScreens,
    cloud,
    journal_hops,
    machine,
    start_agent,
    stop_agent,
    summary,
    wait_paid,
    workdir,
)
from cloud.config import load_config
from cloud.messages import TransStatus
from cloud.notify_server import NotifyServer, notification_handler
from cloud.pos import AsyncPosClient
from cloud.signing import load_private_key, load_public_key
from cloud.timeline import HOPS
from cloud.topics import events_topic
from drivers.base import CardRead, EntryMode
from tests.integration.agent_rig import Terminal
from tests.integration.conftest import SandboxHandle

WARMUP = 3
AMOUNT = Decimal("12.30")
AGENT_HOPS = HOPS
# Each stage, named by the milestone that ends it, and what happens in it.
STAGES = {
    "created": "POS create call answered",
    "push_received": "POS create -> push in the agent",
    "shown": "  verify the push, order on screen",
    "journaled": "  journal the push (written)",
    "acknowledged": "  the push's fsync done (then PUBACK)",
    "card_presented": "  readers armed, card polled and read (EMV)",
    "card_read": "  card checked",
    "payment_journaled": "  payment attempt journaled",
    "sent": "  authorizing screen",
    "answered": "  cashier create: seal, sign, HTTP, acquirer",
    "result_shown": "  result journaled and shown",
    "event_published": "  'paid' event signed, published",
    "notified": "answered -> notification verified at POS",
    "final": "notification -> wait_for_final returns",
}
# The milestone each stage starts from.
FROM = {stage: prev for prev, stage in itertools.pairwise(("start", *AGENT_HOPS))}
FROM |= {"created": "start", "notified": "answered", "final": "notified"}
EMV_TLV = bytes(180)  # about the size of a contactless read's online TLV


@dataclass(frozen=True, slots=True)
class Sale:
    """One sale as the POS saw it: wall-clock ms, so it lines up with the agent's hops."""

    trans_no: str
    start: float
    created: float
    notified: float
    final: float
    total: float  # seconds (perf_counter)


class Pos:
    """The POS server: the async client and its notification receiver."""

    def __init__(self, config: Path) -> None:
        self.client = AsyncPosClient(load_config(config))
        self.server = NotifyServer(notification_handler(self._accept))
        self.notified: dict[str, float] = {}  # merchant_order_no -> perf_counter

    def _accept(self, body: bytes) -> None:
        at = time.perf_counter()
        note, _ = self.client.accept_notification(body)
        self.notified.setdefault(note.merchant_order_no, at)

    async def sell(self, sn: str, pay: Callable[[str], Awaitable[None]] | None = None) -> Sale:
        """One order to terminal ``sn`` until final by notification.
        ``pay(trans_no)``: a stand-in that pays it (the floor)."""
        order_no = "B" + uuid.uuid4().hex[:16]
        wall0, start = time.time_ns() / 1e6, time.perf_counter()
        created = await self.client.push_order(
            terminal_sn=sn,
            merchant_order_no=order_no,
            order_amount=AMOUNT,
            notify_url=self.server.url,
        )
        answered = time.perf_counter()
        if pay is not None:
            await pay(created.trans_no)
        info = await self.client.wait_for_final(order_no, deadline_s=30)
        end = time.perf_counter()
        if info.trans_status is not TransStatus.COMPLETED:
            raise RuntimeError(f"sale {order_no} ended {info.trans_status.name}")
        if order_no not in self.notified:
            raise RuntimeError(f"sale {order_no} became final by polling, not by notification")
        return Sale(
            trans_no=created.trans_no,
            start=wall0,
            created=wall0 + (answered - start) * 1000,
            notified=wall0 + (self.notified[order_no] - start) * 1000,
            final=wall0 + (end - start) * 1000,
            total=end - start,
        )


def stand_in(sandbox: SandboxHandle, sn: str) -> GatewayClient:
    """The agent's cashier client for an agent-less terminal (the floor's payer)."""
    ident = GatewayIdentity(
        url=sandbox.http_url,
        app_id=sn,
        terminal_sn=sn,
        private_key=load_private_key(sandbox.terminal_private_key(sn)),
        gateway_public_key=load_public_key(sandbox.gateway_public_key),
    )
    return GatewayClient(ident, timeout=10)


async def run(sales: int) -> dict[str, Any]:
    with workdir() as root, cloud(root) as sandbox:
        sn = "BENCHE2E" + uuid.uuid4().hex[:6].upper()
        floor_sn = "BENCHFLR" + uuid.uuid4().hex[:6].upper()
        sandbox.provision(floor_sn)
        term = Terminal(sandbox, sn, root / "terminal")
        screens: TimedScreens | None = None
        tap: MqttTap | None = None
        pos = Pos(sandbox.pos_config)
        payer = stand_in(sandbox, floor_sn)
        card = CardRead(
            entry_mode=EntryMode.CONTACTLESS,
            pan="4761739001010010",
            expiry="2812",
            brand="Visa",
            pan_seq="01",
            emv_tlv=EMV_TLV,
        )

        async def pay(trans_no: str) -> None:
            ref = OrderRef(trans_no=trans_no, amount=AMOUNT, currency="QAR")
            await payer.pay_card(ref, f"{floor_sn}-{trans_no}-1", card)

        stages: dict[str, list[float]] = {stage: [] for stage in STAGES}
        totals: list[float] = []
        floors: list[float] = []
        try:
            start_agent(term)
            screens = TimedScreens(term.socket)
            tap = MqttTap(sandbox.mqtt_host, sandbox.mqtt_port, [events_topic(sn)])
            await pos.server.start()
            for i in range(WARMUP + sales):
                term.sims["nfc"].send("present")  # in the field before the push
                tap_mark, screen_mark = tap.mark(), screens.mark()
                sale = await pos.sell(sn)
                await asyncio.to_thread(
                    wait_paid, tap, screens, sale.trans_no, tap_mark, screen_mark
                )
                floor = await pos.sell(floor_sn, pay)
                if i < WARMUP:
                    continue
                totals.append(sale.total)
                floors.append(floor.total)
                at: dict[str, float] = {
                    "start": sale.start,
                    "created": sale.created,
                    "notified": sale.notified,
                    "final": sale.final,
                }
                at |= journal_hops(term.journal_path, sale.trans_no)
                for stage, prev in FROM.items():
                    if stage in at and prev in at:
                        stages[stage].append((at[stage] - at[prev]) / 1000)
        finally:
            await pos.server.close()
            await pos.client.aclose()
            await payer.aclose()
            if screens is not None:
                screens.close()
            if tap is not None:
                tap.close()
            stop_agent(term)
            term.close()
        return {
            "sales": sales,
            "total": summary(totals),
            "floor": summary(floors),
            "stages": {stage: summary(v) for stage, v in stages.items() if v},
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="30 sales (well under a minute)")
    parser.add_argument("--sales", type=int, default=None, help="timed sales (default 200)")
    args = parser.parse_args()
    sales = args.sales or (30 if args.quick else 200)
    # The MQTT tap and the bridge client run in threads while the POS stamps
    # are taken: a short GIL switch interval keeps a stamp from waiting 5 ms.
    sys.setswitchinterval(0.0005)
    r = asyncio.run(run(sales))
    total, floor = r["total"], r["floor"]

    print(
        f"Sale end to end: {sales} sales, simulated Visa contactless (unpaced), "
        f"notification to the POS, result dwell {BENCH_RESULT_SECONDS} s"
    )
    print(f"{'stage':<50} {'p50':>9} {'p99':>9}")
    rows = [(label, r["stages"].get(stage)) for stage, label in STAGES.items()]
    rows += [
        ("total: push_order -> final at the POS", total),
        ("floor: same sale, no terminal (stand-in pays)", floor),
    ]
    for label, s in rows:
        if s is not None:
            print(f"{label:<50} {s['p50']:>6.2f} ms {s['p99']:>6.2f} ms")
    print(f"terminal's share at p50: {total['p50'] - floor['p50']:.2f} ms")
    out = {
        "benchmark": "sale_e2e",
        **r,
        "total_p50_ms": total["p50"],
        "total_p99_ms": total["p99"],
        "floor_p50_ms": floor["p50"],
        "floor_p99_ms": floor["p99"],
        "terminal_share_p50_ms": round(total["p50"] - floor["p50"], 2),
        "machine": machine(),
    }
    print(json.dumps(out, sort_keys=True))


if __name__ == "__main__":
    main()
