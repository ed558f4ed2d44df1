"""The outbox: what the terminal owes others, delivered until it is delivered
(DESIGN.md "Journal"; docs/protocol.md parts C and D).

Every report is journaled first (``Journal.enqueue_event``), in the same
commit as the change it reports, so a crash can delay it but never lose it.
``run`` sends them in order on two channels, each kept in order: signed
terminal events over MQTT (``received``, ``displayed``, ``paid``, ...), and
``cashier.trans.cancel`` calls to the gateway (kinds ``gw:*``). One channel
being down does not hold the other: a cancel waiting behind events while the
broker is away would let the order expire at the gateway. A failed channel
is retried with backoff (``agent.backoff``), or at once on ``wake``: the
engine wakes it after each journaled event, the service when the MQTT link
comes up. Nothing leaves before the rows it reports are on disk
(``Durability.sync``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from agent.backoff import Backoff
from agent.clock import Clock
from agent.durability import Durability
from agent.gateway import GatewayClient
from agent.journal import Journal, JournalError, OutboxRow
from agent.mqtt.errors import LinkDown, LinkError
from cloud import envelope
from cloud import messages as m
from cloud.errors import CloudRejected, CloudUnavailable
from cloud.signing import PrivateKeyLike

log = logging.getLogger(__name__)

EventPublisher = Callable[[bytes], Awaitable[None]]

# The events that end an order: their hops carry the moment they left.
_FINAL_EVENTS = frozenset({"paid", "failed", "cancelled", "closed"})


class Outbox:
    """Use from the journal's event loop."""

    def __init__(
        self,
        journal: Journal,
        gateway: GatewayClient,
        durability: Durability,
        *,
        sn: str,
        private_key: PrivateKeyLike,
        clock: Clock,
        backoff: Backoff,
    ) -> None:
        self._journal = journal
        self._gateway = gateway
        self._durability = durability
        self._sn = sn
        self._private_key = private_key
        self._clock = clock
        self._backoff = backoff
        self._publish: EventPublisher | None = None
        self._wake = asyncio.Event()

    def retarget(self, gateway: GatewayClient, *, sn: str, private_key: PrivateKeyLike) -> None:
        """Deliver with a new gateway client and signing identity (a reload)."""
        self._gateway = gateway
        self._sn = sn
        self._private_key = private_key

    def set_publisher(self, publish: EventPublisher | None) -> None:
        """Where terminal events go (the MQTT link); None while there is none."""
        self._publish = publish
        self._wake.set()

    def wake(self) -> None:
        """Try now: an event was journaled, or a channel came back."""
        self._wake.set()

    async def run(self) -> None:
        """Deliver forever (a task; cancel to stop)."""
        while True:
            self._wake.clear()
            try:
                await self._durability.sync()
            except JournalError:
                log.exception("outbox: journal not durable; events wait")
                await asyncio.sleep(self._backoff.next())
                continue
            if await self._deliver_pending():
                self._backoff.reset()
                await self._wake.wait()
            else:
                # asyncio.timeout: 3.11's wait_for can swallow a cancellation
                # that lands as the wake comes, and the agent would not stop.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self._backoff.next()):
                        await self._wake.wait()

    async def _deliver_pending(self) -> bool:
        """One pass over the pending rows; whether every one went."""
        blocked: set[str] = set()
        for row in self._journal.pending_events():
            channel = "gateway" if row.kind.startswith("gw:") else "mqtt"
            if channel in blocked:
                continue
            try:
                await self._deliver(row)
            except (LinkError, CloudUnavailable, OSError) as exc:
                log.info("outbox: %s for %s waits (%s)", row.kind, row.trans_no, exc)
                blocked.add(channel)
                continue
            except Exception:
                log.exception("outbox: %s for %s failed", row.kind, row.trans_no)
                blocked.add(channel)
                continue
            self._journal.event_sent(row.id)
        return not blocked

    async def _deliver(self, row: OutboxRow) -> None:
        trans_no = row.trans_no
        if row.kind == "gw:cancel":
            assert trans_no is not None
            try:
                await self._gateway.cancel(trans_no, row.reason or "cancelled")
            except CloudRejected as exc:  # already final there: nothing left to do
                log.info("cancel %s: gateway says %s", trans_no, exc)
            return
        if self._publish is None:
            raise LinkDown("no MQTT link")
        hops = self._journal.hops(trans_no) if trans_no else {}
        if row.kind in _FINAL_EVENTS and trans_no:
            hops["event_published"] = self._clock.ms()
        event = envelope.build_event(
            m.EventKind(row.kind),
            terminal_sn=self._sn,
            message_id=row.message_id,
            private_key=self._private_key,
            trans_no=trans_no,
            reason=row.reason,
            hops=hops or None,
        )
        await self._publish(envelope.encode(m.to_fields(event)))
        if "event_published" in hops and trans_no:
            self._journal.hop(trans_no, "event_published", hops["event_published"])
