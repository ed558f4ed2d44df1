"""EMV read of the simulated ``visa`` card at 115200 baud, against the wire-time lower bound.

What it measures: ``Pn532Reader.next_presentation()`` from the call to the returned
``CardRead`` - one InListPassiveTarget, the EMV APDUs (SELECT PPSE, SELECT AID, GPO,
READ RECORD) as InDataExchange commands, and the InRelease - with the simulated
PN532 pacing its output at 10 bit times per byte (8N1).

Baseline, measured in the same run: the wire time of the bytes actually exchanged,
``(bytes host->PN532 + bytes PN532->host) * 10 / baud``: what a perfect driver on a
half-duplex command/response link could not beat. The sim adds no processing time
(``poll_delay=0``, ``exchange_delay=0``), so everything above the bound is the
driver stack plus the transport (pty + event loop, or in-memory).

Transports: ``pty`` - a real pty (``drivers.sim.pty.PtyPeer``) with the simulator
pacing its output on an absolute schedule (``run_pn532_sim(pace_baud=...)``);
``pty-peer-paced`` - the same with the peer's own pacing (one relative sleep per
write, so event-loop wake-up lateness adds up: shown for comparison); ``memory`` -
the in-memory ``SimTransport`` pacing both directions.

Usage: ``python benchmarks/emv_read.py [--quick] [--reads N]``. The last line of
the output is one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from decimal import Decimal
from pathlib import Path

from drivers.base import ArmContext
from drivers.nfc_reader import Pn532Reader
from drivers.pn532.commands import Command
from drivers.sim.cards import VisaCard
from drivers.sim.pn532 import SimPn532, SimTransport, run_pn532_sim
from drivers.sim.pty import PtyPeer

BAUD = 115200
CTX = ArmContext(amount=Decimal("12.34"), currency_numeric=634, currency_exponent=2)


async def measure(reader: Pn532Reader, sim: SimPn532, reads: int) -> dict[str, float]:
    """``reads`` timed reads after one warm-up read; per-read bytes and wire bound."""
    await reader.arm(CTX)
    await reader.next_presentation()  # warm-up
    times: list[float] = []
    wire_bytes: list[int] = []
    exchanges: list[int] = []
    for _ in range(reads):
        device = reader.device
        before = device.bytes_in + device.bytes_out
        commands_before = sim.commands.count(Command.InDataExchange)
        start = time.perf_counter()
        card = await reader.next_presentation()
        times.append(time.perf_counter() - start)
        assert card.brand == "Visa"
        wire_bytes.append(device.bytes_in + device.bytes_out - before)
        exchanges.append(sim.commands.count(Command.InDataExchange) - commands_before)
    await reader.disarm()
    bound = statistics.median(wire_bytes) * 10 / BAUD
    times.sort()
    return {
        "reads": reads,
        "bytes_per_read": statistics.median(wire_bytes),
        "apdus_per_read": statistics.median(exchanges),
        "wire_bound_ms": round(bound * 1000, 2),
        "median_ms": round(statistics.median(times) * 1000, 2),
        "p95_ms": round(times[min(len(times) - 1, int(len(times) * 0.95))] * 1000, 2),
        "min_ms": round(times[0] * 1000, 2),
        "overhead_ratio": round(statistics.median(times) / bound, 3),
    }


async def over_pty(reads: int, *, peer_paced: bool) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        link = str(Path(tmp) / "pn532")
        peer = PtyPeer(link, pace_baud=BAUD if peer_paced else None)
        await peer.start()
        commands: asyncio.Queue[str] = asyncio.Queue()
        sim = SimPn532(poll_delay=0.0)
        task = asyncio.create_task(
            run_pn532_sim(
                peer,
                "visa",
                True,
                commands,
                sim=sim,
                auto_gap=0,
                pace_baud=None if peer_paced else BAUD,
            )
        )
        reader = Pn532Reader("bench", link, {"baud": str(BAUD), "poll_interval": "0"})
        try:
            await reader.open()
            return await measure(reader, sim, reads)
        finally:
            await reader.close()
            commands.put_nowait("quit")
            await task
            await peer.close()


async def in_memory(reads: int) -> dict[str, float]:
    sim = SimPn532(VisaCard(), poll_delay=0.0)  # stays in the field between reads
    transport = SimTransport(sim, pace_baud=BAUD)
    reader = Pn532Reader("bench", "sim", {"poll_interval": "0"}, transport=transport)
    try:
        await reader.open()
        return await measure(reader, sim, reads)
    finally:
        await reader.close()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="few reads (well under a minute)")
    parser.add_argument("--reads", type=int, default=None, help="timed reads per transport")
    args = parser.parse_args()
    reads = args.reads or (20 if args.quick else 200)
    results = {
        "pty": await over_pty(reads, peer_paced=False),
        "pty-peer-paced": await over_pty(reads, peer_paced=True),
        "memory": await in_memory(reads),
    }

    print(f"EMV read, simulated visa card (qVSDC), PN532 HSU at {BAUD} baud, 8N1")
    header = ("transport", "reads", "bytes", "APDUs", "wire bound", "median", "p95", "x bound")
    print("{:<15} {:>6} {:>6} {:>6} {:>11} {:>10} {:>10} {:>8}".format(*header))
    for name, r in results.items():
        print(
            f"{name:<15} {r['reads']:>6} {r['bytes_per_read']:>6.0f} {r['apdus_per_read']:>6.0f} "
            f"{r['wire_bound_ms']:>8.2f} ms {r['median_ms']:>7.2f} ms {r['p95_ms']:>7.2f} ms "
            f"{r['overhead_ratio']:>8.3f}"
        )
    summary = {"benchmark": "emv_read", "card": "visa", "baud": BAUD, **results}
    print(json.dumps(summary, sort_keys=True))


if __name__ == "__main__":
    asyncio.run(main())
