"""Result notifications to the POS server (docs/protocol.md part B).

When an order reaches a final status the store queues one notification per
(``trans_no``, ``trans_status``) with a snapshot of the ``order.query``
fields. ``Notifier.run`` delivers them: it signs the snapshot with
``envelope.build_notification`` (same ``notify_id`` on every attempt,
``notify_time`` = the attempt's time), POSTs it to ``notify_url`` with a 5 s
timeout, and counts a delivery as done only on HTTP 200 with the body exactly
``success``. A failed attempt is retried after the next wait of
``SCHEDULE_S`` times ``time_scale``; after 15 attempts it gives up.
Attempts are recorded in the store, so a restart resumes where it stopped.

Every notification names the order's ``merchant_no`` and ``app_id`` (the
POS app of the merchant that created it): the gateway signs every
merchant's notifications with one key, so these are what a POS server binds
one to its own order by (part B). A snapshot queued by an older sandbox,
without them, gets them from the order and its merchant when sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import httpx
import msgspec

from cloud import envelope, wirejson
from cloud.messages import OrderInfo, decode
from cloud.signing import PrivateKeyLike
from sandbox.store import PendingNotification, Store, wire_time

log = logging.getLogger(__name__)

# Waits before attempts 2..15: 5 s, 10 s, 15 s, 30 s, 60 s, 3 min, 10 min,
# 15 min, 30 min x3, 3 h x3 (docs/protocol.md part B).
SCHEDULE_S: tuple[int, ...] = (5, 10, 15, 30, 60, 180, 600, 900, 1800, 1800, 1800) + (10800,) * 3
MAX_ATTEMPTS = len(SCHEDULE_S) + 1  # 15
TIMEOUT_S = 5.0
IDLE_POLL_S = 1.0


def retry_delay_s(attempts_done: int, time_scale: float = 1.0) -> float | None:
    """Seconds to wait after ``attempts_done`` failed attempts; None when they are all used."""
    if attempts_done >= MAX_ATTEMPTS:
        return None
    return SCHEDULE_S[attempts_done - 1] * time_scale


class Notifier:
    """Delivers queued notifications until stopped; see the module docstring."""

    def __init__(
        self,
        store: Store,
        gateway_private_key: PrivateKeyLike,
        *,
        time_scale: float = 1.0,
    ) -> None:
        self._store = store
        self._key = gateway_private_key
        self._scale = time_scale
        self._wake = asyncio.Event()
        self._inflight: set[int] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    def wake(self) -> None:
        """Look for due notifications now (after a status became final)."""
        self._wake.set()

    async def run(self) -> None:
        async with httpx.AsyncClient(timeout=TIMEOUT_S, follow_redirects=False) as client:
            try:
                while True:
                    now = envelope.now_ms()
                    for item in self._store.due_notifications(now):
                        if item.id in self._inflight:
                            continue
                        self._inflight.add(item.id)
                        task = asyncio.create_task(self._deliver(client, item))
                        self._tasks.add(task)
                        task.add_done_callback(self._tasks.discard)
                    await self._sleep()
            finally:
                for task in list(self._tasks):
                    task.cancel()
                for task in list(self._tasks):
                    with contextlib.suppress(asyncio.CancelledError):
                        await task

    async def _sleep(self) -> None:
        nxt = self._store.next_notification_at(exclude=self._inflight)
        wait = IDLE_POLL_S
        if nxt is not None:
            wait = min(wait, max(0.0, (nxt - envelope.now_ms()) / 1000))
        self._wake.clear()
        # asyncio.timeout, not wait_for: Python 3.11's wait_for swallows a
        # cancellation that lands as the wake comes (the run loop then never
        # stops; a test hung on it under load).
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(wait):
                await self._wake.wait()

    def _named(self, info: OrderInfo) -> OrderInfo:
        """``info`` naming its merchant and app (filled in for old snapshots)."""
        if info.merchant_no is not None and info.app_id is not None:
            return info
        order = self._store.order(info.trans_no)
        merchant_no = info.merchant_no or (order.merchant_no if order is not None else None)
        app_id = info.app_id or (
            self._store.merchant_app_id(merchant_no) if merchant_no is not None else None
        )
        return msgspec.structs.replace(info, merchant_no=merchant_no, app_id=app_id)

    async def _deliver(self, client: httpx.AsyncClient, item: PendingNotification) -> None:
        attempt = item.attempts + 1
        status: int | None = None
        error: str | None = None
        ok = False
        try:
            info = self._named(decode(wirejson.loads(item.info), OrderInfo))
            now = envelope.now_ms()
            body = envelope.build_notification(
                info, self._key, notify_id=item.notify_id, notify_time=wire_time(now)
            )
            resp = await client.post(
                item.notify_url,
                content=envelope.encode(body),
                headers={"Content-Type": "application/json"},
            )
            status = resp.status_code
            ok = status == 200 and resp.content == b"success"
            if not ok:
                error = f"HTTP {status}: {resp.content[:80]!r}"
        except httpx.HTTPError as exc:
            error = f"{type(exc).__name__}: {exc}"
        except Exception as exc:  # a bug: record it and keep the schedule going
            log.exception("notification %s for %s failed to build", item.notify_id, item.trans_no)
            error = f"{type(exc).__name__}: {exc}"
        at = envelope.now_ms()
        delay = None if ok else retry_delay_s(attempt, self._scale)
        next_at = None if delay is None else at + int(delay * 1000)
        self._store.record_attempt(
            item.id,
            attempt=attempt,
            at_ms=at,
            ok=ok,
            http_status=status,
            error=error,
            next_at_ms=next_at,
        )
        self._inflight.discard(item.id)
        if ok:
            log.info(
                "notified %s (status %d), attempt %d", item.trans_no, item.trans_status, attempt
            )
        elif next_at is None:
            log.warning(
                "gave up notifying %s (status %d) after %d attempts: %s",
                item.trans_no,
                item.trans_status,
                attempt,
                error,
            )
        else:
            log.info(
                "notification of %s (status %d) attempt %d failed (%s); next in %.2f s",
                item.trans_no,
                item.trans_status,
                attempt,
                error,
                delay,
            )
        self._wake.set()
