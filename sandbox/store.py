"""The sandbox's state in SQLite (WAL), kept across restarts.

Holds what SadadSystem and SadadTMS know: merchants and their POS app keys,
terminals and their keys (read per request, so a terminal provisioned while
``serve`` runs is seen at once), orders with their ``trans_status``
(docs/protocol.md part A), cashier ``request_no`` answers and the charges the
simulated acquirer made (part D), pushes sent and terminal events and status
received (part C), and result notifications with their delivery state
(part B).

Status moves (``can_move``) never regress (``cloud.status_rules``): 1 and 3
are final for good; 2 (paid) may only become 3 (reversed or voided); 0 may go
back to 9 only when the attempt died in the sandbox before the acquirer
answered (nothing was charged). A refused move is logged as a loud warning
and changes nothing; the UPDATE itself is guarded by the status the move was
checked against, so no other writer's move can be overwritten.

Amounts are stored as their decimal text. Never stored: a full PAN, track
data or a wallet code (masked PAN only). Not thread-safe: use one ``Store``
from one thread (the sandbox's event loop); other processes (``provision``)
open their own.

``Store`` holds the parties (merchants, terminals and their status), the
orders and their status moves; it is made of the parts beside it, one per
idea, all on one connection (``sandbox.store_db``): the rows
(``sandbox.store_records``), cashier requests and charges
(``sandbox.store_cashier``), pushes and terminal events
(``sandbox.store_events``) and result notifications
(``sandbox.store_notifications``). Its importers take every name from here.
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from decimal import Decimal
from typing import Any

from cloud import wirejson
from cloud.messages import TransStatus, TransType
from cloud.status_rules import FINAL_STATUSES, may_move
from sandbox.store_cashier import CashierRequest, CashierTables
from sandbox.store_db import wall_ms
from sandbox.store_events import TerminalTraffic
from sandbox.store_notifications import NotificationQueue, PendingNotification
from sandbox.store_records import Merchant, Order, Terminal

__all__ = [
    "ALLOWED_MOVES",
    "CORRECTIONS",
    "CashierRequest",
    "Merchant",
    "Order",
    "PendingNotification",
    "Store",
    "Terminal",
    "can_move",
    "timeline_text",
    "wire_time",
]

log = logging.getLogger(__name__)

S = TransStatus
FINAL = FINAL_STATUSES

# The gateway's own corrections, the only moves against ``cloud.status_rules``:
# both are decided here (a reverse or void; an attempt that died in the
# sandbox before anything was charged), never made by a late report.
CORRECTIONS = frozenset({(S.COMPLETED, S.CANCELLED), (S.PROCESSING, S.PREORDER)})


def can_move(frm: TransStatus, to: TransStatus) -> bool:
    """Whether an order in ``frm`` may move to ``to``: forward by the shared
    rule (but paid only through processing), or one of the ``CORRECTIONS``."""
    if (frm, to) in CORRECTIONS:
        return True
    return may_move(frm, to) and (frm, to) != (S.PREORDER, S.COMPLETED)


# from -> the statuses it may move to (``can_move`` as a table, for reading)
ALLOWED_MOVES: dict[TransStatus, frozenset[TransStatus]] = {
    frm: frozenset(to for to in S if can_move(frm, to)) for frm in S
}


def wire_time(ms: int) -> str:
    """UTC ``YYYY-MM-DD HH:mm:ss`` (docs/protocol.md: times that are not ``timestamp``)."""
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ms / 1000))


class Store(CashierTables, TerminalTraffic, NotificationQueue):
    """One connection to ``path``; see the module docstring."""

    # ------------------------------------------------------------ state

    def set_state(self, key: str, value: str) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT INTO state (key, value) VALUES (?, ?) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (key, value),
            )

    def get_state(self, key: str) -> str | None:
        row = self._one("SELECT value FROM state WHERE key = ?", key)
        return None if row is None else str(row["value"])

    # ------------------------------------------------------------ parties

    def ensure_merchant(
        self, merchant_no: str, app_id: str, public_key_pem: str, name: str
    ) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT INTO merchants (merchant_no, app_id, public_key_pem, name) "
                "VALUES (?, ?, ?, ?) ON CONFLICT (merchant_no) DO UPDATE SET "
                "app_id = excluded.app_id, public_key_pem = excluded.public_key_pem",
                (merchant_no, app_id, public_key_pem, name),
            )

    def merchant_by_app(self, app_id: str) -> Merchant | None:
        row = self._one("SELECT * FROM merchants WHERE app_id = ?", app_id)
        return None if row is None else Merchant(**dict(row))

    def merchant_app_id(self, merchant_no: str) -> str | None:
        row = self._one("SELECT app_id FROM merchants WHERE merchant_no = ?", merchant_no)
        return None if row is None else str(row["app_id"])

    def add_terminal(self, sn: str, merchant_no: str, public_key_pem: str, store_name: str) -> None:
        """Register (or re-register) terminal ``sn``; its ``app_id`` is the SN."""
        with self._tx() as db:
            db.execute(
                "INSERT INTO terminals (sn, app_id, merchant_no, public_key_pem, store_name, "
                "created_ms) VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (sn) DO UPDATE SET "
                "merchant_no = excluded.merchant_no, public_key_pem = excluded.public_key_pem, "
                "store_name = excluded.store_name",
                (sn, sn, merchant_no, public_key_pem, store_name, wall_ms()),
            )

    def terminal(self, sn: str) -> Terminal | None:
        row = self._one("SELECT * FROM terminals WHERE sn = ?", sn)
        return None if row is None else Terminal(**dict(row))

    def set_terminal_status(self, sn: str, status: str, payload: str, now_ms: int) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT INTO terminal_status (sn, status, payload, updated_ms) VALUES (?,?,?,?) "
                "ON CONFLICT (sn) DO UPDATE SET status = excluded.status, "
                "payload = excluded.payload, updated_ms = excluded.updated_ms",
                (sn, status, payload, now_ms),
            )

    def terminal_online(self, sn: str) -> bool:
        row = self._one("SELECT status FROM terminal_status WHERE sn = ?", sn)
        return row is not None and row["status"] == "online"

    def terminal_status(self, sn: str) -> tuple[str, str, int] | None:
        """The terminal's last retained status: (status, payload, received ms), or None."""
        row = self._one("SELECT status, payload, updated_ms FROM terminal_status WHERE sn = ?", sn)
        if row is None:
            return None
        return str(row["status"]), str(row["payload"]), int(row["updated_ms"])

    # ------------------------------------------------------------ orders

    def insert_order(self, order: Order) -> None:
        row = order.to_row()
        cols = ", ".join(row)
        marks = ", ".join("?" for _ in row)
        with self._tx() as db:
            db.execute(f"INSERT INTO orders ({cols}) VALUES ({marks})", tuple(row.values()))  # noqa: S608

    def order(self, trans_no: str) -> Order | None:
        row = self._one("SELECT * FROM orders WHERE trans_no = ?", trans_no)
        return None if row is None else Order.from_row(row)

    def order_by_merchant_order_no(self, merchant_no: str, merchant_order_no: str) -> Order | None:
        row = self._one(
            "SELECT * FROM orders WHERE merchant_no = ? AND merchant_order_no = ?",
            merchant_no,
            merchant_order_no,
        )
        return None if row is None else Order.from_row(row)

    def related_total(self, orig_trans_no: str, trans_type: TransType) -> Decimal:
        """Sum of ``trans_amount`` of the void/refund orders of ``orig_trans_no``
        that are paid or still open (9, 0, 2)."""
        rows = self._db.execute(
            "SELECT trans_amount FROM orders WHERE orig_trans_no = ? AND trans_type = ? "
            "AND trans_status IN (9, 0, 2)",
            (orig_trans_no, int(trans_type)),
        ).fetchall()
        return sum((Decimal(r["trans_amount"]) for r in rows), Decimal(0))

    def update_order(self, trans_no: str, **changes: Any) -> Order:
        """Change fields that are not the status (``move`` changes the status)."""
        if "trans_status" in changes:
            raise ValueError("use move() to change trans_status")
        with self._tx():
            order = self.order(trans_no)
            if order is None:
                raise KeyError(trans_no)
            new = replace(order, **changes, updated_ms=wall_ms())
            if not self._write(new, checked=order.trans_status):
                log.warning(
                    "!!! order %s changed status meanwhile: %s not written", trans_no, changes
                )
                return self.order(trans_no) or order
        return new

    def _write(self, order: Order, *, checked: TransStatus) -> bool:
        """Write ``order``'s row only if its status is still ``checked`` (the one
        the caller judged the change against); False when it was not."""
        row = order.to_row()
        sets = ", ".join(f"{k} = ?" for k in row if k != "trans_no")
        values = [v for k, v in row.items() if k != "trans_no"]
        cur = self._db.execute(
            f"UPDATE orders SET {sets} WHERE trans_no = ? AND trans_status = ?",  # noqa: S608
            (*values, order.trans_no, int(checked)),
        )
        return cur.rowcount == 1

    def _refused(self, seen: Order, to: TransStatus, why: str) -> Order:
        """Log a move that did not happen; returns the order as it is now."""
        now = self.order(seen.trans_no) or seen
        log.warning(
            "!!! STATUS REGRESSION REFUSED: order %s is %d (%s) and stays so; "
            "ignored a move to %d (%s) because: %s",
            now.trans_no,
            now.trans_status,
            now.trans_status.name,
            to,
            to.name,
            why,
        )
        return now

    def move(
        self, trans_no: str, to: TransStatus, *, why: str, now_ms: int | None = None, **changes: Any
    ) -> tuple[Order, bool]:
        """Move an order to status ``to`` with field ``changes``.

        Returns (the order as it is now, whether it moved). A move the table
        does not allow changes nothing and is logged as a loud warning; moving
        to the status it already has is a quiet no-op. Reaching a final status
        stamps ``trans_end_time`` and queues the result notification.
        """
        now = wall_ms() if now_ms is None else now_ms
        with self._tx():
            order = self.order(trans_no)
            if order is None:
                raise KeyError(trans_no)
            if order.trans_status is to:
                return order, False
            if not can_move(order.trans_status, to):
                return self._refused(order, to, why), False
            final = to in FINAL
            new = replace(
                order,
                **changes,
                trans_status=to,
                updated_ms=now,
                trans_end_time=wire_time(now) if final else order.trans_end_time,
            )
            if not self._write(new, checked=order.trans_status):
                # another writer moved it since it was read: judged on a stale status
                return self._refused(order, to, f"{why} (status changed meanwhile)"), False
            if final and new.notify_url:
                self._queue_notification(new, self.merchant_app_id(new.merchant_no), now)
        log.info("order %s: %s -> %s (%s)", trans_no, order.trans_status.name, to.name, why)
        return new, True

    def expired_preorders(self, now_ms: int) -> list[str]:
        rows = self._db.execute(
            "SELECT trans_no FROM orders WHERE trans_status = 9 AND expires_at <= ?", (now_ms,)
        ).fetchall()
        return [str(r["trans_no"]) for r in rows]


def timeline_text(store: Store, trans_no: str) -> str | None:
    """``terminal_timeline`` (sandbox extension of ``order.query``): JSON text or None."""
    items = store.timeline(trans_no)
    return wirejson.dumps(items) if items else None
