"""The fleet benchmark's TMS: its pushes, their schedule, and its stopwatch.

This process (``benchmarks/fleet.py``) stands for the TMS: one session as
its own user, subscribed to every terminal's events and status. The pushes
go round robin over the terminals (``schedule``) and are built and signed
with the gateway's key before the clock starts (``build_push``). A phase
sends them ``paced`` (open loop at a rate) or ``saturated`` (a window in
flight); ``Tms`` notes when each push left and when its ``received`` event
came back, and counts a push lost when that event is not back within
``PHASE_TIMEOUT``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Callable, Sequence
from decimal import Decimal
from typing import Any

import msgspec

from benchmarks.fleet_mqtt import Conn, MqttError, Publish, open_conn, puback_packet, publish_packet
from cloud import envelope
from cloud.messages import PushOrder, PushTopic, QueueMode, TransType
from cloud.topics import every_terminal

PUSH_EXPIRY_S = 300
PHASE_TIMEOUT = 120.0


def schedule(sns: Sequence[str], count: int, start: int = 0) -> list[tuple[str, str]]:
    """(sn, message id) for pushes ``start`` .. ``start + count - 1`` of the
    round robin: push i goes to ``sns[i % N]`` as its ``i // N``-th."""
    out = []
    for i in range(start, start + count):
        sn = sns[i % len(sns)]
        out.append((sn, f"{sn}-{i // len(sns)}"))
    return out


def build_push(sn: str, message_id: str, key: str) -> bytes:
    order = PushOrder(
        trans_no=message_id.replace("-", "")[:32],
        merchant_no="M0001",
        terminal_sn=sn,
        merchant_order_no=f"O{message_id}"[:32].replace("-", "_"),
        price_currency="QAR",
        order_amount=Decimal("12.50"),
        trans_type=TransType.SALE,
        expires_at=envelope.now_ms() + PUSH_EXPIRY_S * 1000,
        description="2 x coffee",
        order_queue_mode=QueueMode.FIFO,
    )
    push = envelope.build_push(
        PushTopic.PAY_ORDER, order, app_id="pos-sandbox", private_key=key, message_id=message_id
    )
    return envelope.encode(msgspec.to_builtins(push))


class Tms:
    """The TMS's session (its own user; every terminal's events and status),
    the push schedule's send times and the ``received`` events' arrivals."""

    def __init__(self) -> None:
        self.conn: Conn | None = None
        self.sent: dict[str, float] = {}
        self.done: dict[str, float] = {}
        self.on_done: dict[str, Callable[[], None]] = {}
        self.awaited: set[str] = set()  # the phase's pushes whose ``received`` is still out
        self.all_done = asyncio.Event()
        self.statuses = 0

    async def connect(self, host: str, port: int, login: tuple[str, str], *, v5: bool) -> None:
        self.conn = await open_conn(
            host, port, "sadad-tms-bench", *login, v5=v5, on_publish=self._message
        )
        for topic in (every_terminal("events"), every_terminal("status")):
            code = await self.conn.subscribe(topic)
            if code != 1:
                raise MqttError(f"the TMS's SUBACK for {topic}: {code:#x}")

    def _message(self, conn: Conn, msg: Publish) -> None:
        at = time.perf_counter()
        if msg.packet_id is not None:
            conn.send(puback_packet(msg.packet_id))
        if msg.topic.endswith("/status"):
            self.statuses += 1
            return
        try:
            event = json.loads(msg.payload)
        except ValueError:
            return
        message_id = event.get("message_id")
        fresh = message_id in self.sent and message_id not in self.done
        if event.get("event") == "received" and fresh:
            self.done[message_id] = at
            callback = self.on_done.pop(message_id, None)
            if callback is not None:
                callback()
            self.awaited.discard(message_id)
            if not self.awaited:
                self.all_done.set()

    async def push(self, topic: str, message_id: str, payload: bytes) -> None:
        assert self.conn is not None
        conn = self.conn
        async with conn.window:  # the send time is when it leaves, not when it queued
            self.sent[message_id] = time.perf_counter()
            fut = conn.request(
                lambda pid: publish_packet(topic, payload, pid, v5=conn.v5, expiry_s=PUSH_EXPIRY_S)
            )
            await fut

    async def paced(self, items: Sequence[tuple[str, str, bytes]], rate: float) -> dict[str, Any]:
        """Open loop at ``rate`` pushes/s; then wait for every ``received``."""
        self.expect([i[1] for i in items])
        start = time.perf_counter()
        sends = []
        for i, item in enumerate(items):
            delay = start + i / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            sends.append(asyncio.create_task(self.push(*item)))
        await asyncio.gather(*sends, return_exceptions=True)
        return await self._settle([i[1] for i in items], start)

    async def saturated(
        self, items: Sequence[tuple[str, str, bytes]], window: int
    ) -> dict[str, Any]:
        """``window`` pushes in flight: the next goes when one's ``received`` is back."""
        slots = asyncio.Semaphore(window)
        self.expect([i[1] for i in items])
        start = time.perf_counter()
        sends = []
        for topic, message_id, payload in items:
            try:
                await asyncio.wait_for(slots.acquire(), PHASE_TIMEOUT)
            except TimeoutError:
                break  # pushes lost: the rest would wait forever
            self.on_done[message_id] = slots.release
            sends.append(asyncio.create_task(self.push(topic, message_id, payload)))
        await asyncio.gather(*sends, return_exceptions=True)
        return await self._settle([i[1] for i in items], start)

    def expect(self, ids: Sequence[str]) -> None:
        """Track the ``received`` events of a phase's pushes (before they go)."""
        self.awaited = {i for i in ids if i not in self.done}
        self.all_done.clear()
        if not self.awaited:
            self.all_done.set()

    async def _settle(self, ids: list[str], start: float) -> dict[str, Any]:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.all_done.wait(), PHASE_TIMEOUT)
        finished = [self.done[i] for i in ids if i in self.done]
        elapsed = (max(finished) if finished else time.perf_counter()) - start
        return {
            "pushes": len(ids),
            "lost": len(ids) - len(finished),
            "per_s": round(len(finished) / elapsed, 1) if elapsed > 0 else 0.0,
        }
