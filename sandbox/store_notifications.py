"""The sandbox store's result notifications (docs/protocol.md part B).

A notification is queued in the transaction that moves an order with a
``notify_url`` to a final status (``sandbox.store.Store.move``), with the
order's ``OrderInfo`` as it was then: at most one per order and status. ``sandbox.notifier``
takes the due ones, delivers them on the real retry schedule and records
each attempt here: ``pending`` until delivered, ``failed`` once the
schedule is exhausted.
"""

from __future__ import annotations

import uuid
from collections.abc import Collection
from dataclasses import dataclass

from cloud import wirejson
from cloud.messages import to_fields
from sandbox.store_db import StoreDb
from sandbox.store_records import Order


@dataclass(frozen=True, slots=True)
class PendingNotification:
    id: int
    trans_no: str
    trans_status: int
    notify_url: str
    notify_id: str
    info: str
    attempts: int
    next_at_ms: int


class NotificationQueue(StoreDb):
    """``notifications`` and ``notification_attempts``; a part of
    ``sandbox.store.Store``."""

    def _queue_notification(self, order: Order, app_id: str | None, now: int) -> None:
        """Queue ``order``'s notification (inside the caller's transaction);
        ``app_id``: its merchant's POS app, which the notification names."""
        assert order.notify_url
        info = wirejson.dumps(to_fields(order.to_info(app_id=app_id)))
        self._db.execute(
            "INSERT OR IGNORE INTO notifications (trans_no, trans_status, notify_url, notify_id, "
            "info, state, next_at_ms, created_ms) VALUES (?, ?, ?, ?, ?, 'pending', ?, ?)",
            (
                order.trans_no,
                int(order.trans_status),
                order.notify_url,
                uuid.uuid4().hex,
                info,
                now,
                now,
            ),
        )

    def due_notifications(self, now_ms: int) -> list[PendingNotification]:
        rows = self._db.execute(
            "SELECT id, trans_no, trans_status, notify_url, notify_id, info, attempts, next_at_ms "
            "FROM notifications WHERE state = 'pending' AND next_at_ms <= ? ORDER BY next_at_ms",
            (now_ms,),
        ).fetchall()
        return [PendingNotification(**dict(r)) for r in rows]

    def next_notification_at(self, exclude: Collection[int] = ()) -> int | None:
        """When the next pending notification not in ``exclude`` is due."""
        marks = ",".join("?" for _ in exclude)  # placeholders only
        sql = f"SELECT MIN(next_at_ms) AS t FROM notifications WHERE state = 'pending' AND id NOT IN ({marks})"  # noqa: E501, S608
        row = self._one(sql, *exclude)
        return None if row is None or row["t"] is None else int(row["t"])

    def record_attempt(
        self,
        notification_id: int,
        *,
        attempt: int,
        at_ms: int,
        ok: bool,
        http_status: int | None,
        error: str | None,
        next_at_ms: int | None,
    ) -> None:
        """Record delivery attempt number ``attempt``; ``next_at_ms`` None after a
        failure means the schedule is exhausted."""
        state = "delivered" if ok else ("pending" if next_at_ms is not None else "failed")
        with self._tx() as db:
            db.execute(
                "INSERT INTO notification_attempts (notification_id, attempt, at_ms, http_status, "
                "ok, error) VALUES (?, ?, ?, ?, ?, ?)",
                (notification_id, attempt, at_ms, http_status, int(ok), error),
            )
            db.execute(
                "UPDATE notifications SET state = ?, attempts = ?, next_at_ms = ?, last_error = ?, "
                "delivered_ms = ? WHERE id = ?",
                (
                    state,
                    attempt,
                    next_at_ms if next_at_ms is not None else at_ms,
                    error,
                    at_ms if ok else None,
                    notification_id,
                ),
            )
