"""What a POS server expects of its orders, to bind results to them (part B).

The gateway signs every merchant's notifications with one key, so a valid
signature does not say the notification is about *our* order. A result is
taken as an order's only when it names this POS's merchant and app, the
``trans_no`` the create returned for that ``merchant_order_no``, and the
order's amount and currency (``check``). The expectation is recorded when
the create succeeds (``cloud.pos``) in an ``OrderStore``:

* ``MemoryOrderStore``: this process only (the default; bounded);
* ``SqliteOrderStore``: one SQLite file (WAL) that every instance of a POS
  server behind a load balancer shares, since a notification may reach an
  instance that did not create the order. Safe from several threads and
  processes; ``prune`` drops old records.

A caller that keeps orders in its own database can skip the store and hand
the ``ExpectedOrder`` to the check directly.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Protocol

from cloud.errors import NotOurOrder
from cloud.messages import OrderInfo

__all__ = [
    "ExpectedOrder",
    "MemoryOrderStore",
    "OrderStore",
    "SqliteOrderStore",
    "check",
]


@dataclass(frozen=True, slots=True)
class ExpectedOrder:
    """An order as its create left it: what any result for it must name."""

    merchant_order_no: str
    trans_no: str
    order_amount: Decimal
    price_currency: str


class OrderStore(Protocol):
    def remember(self, order: ExpectedOrder) -> None: ...

    def expected(self, merchant_order_no: str) -> ExpectedOrder | None: ...


def check(info: OrderInfo, expected: ExpectedOrder, *, merchant_no: str, app_id: str) -> None:
    """Raises NotOurOrder naming the first field of ``info`` (a notification or
    a query answer) that is not the expected order's."""
    fields: tuple[tuple[str, object, object], ...] = (
        ("merchant_no", info.merchant_no, merchant_no),
        ("app_id", info.app_id, app_id),
        ("merchant_order_no", info.merchant_order_no, expected.merchant_order_no),
        ("trans_no", info.trans_no, expected.trans_no),
        ("price_currency", info.price_currency, expected.price_currency),
        ("order_amount", info.order_amount, expected.order_amount),
    )
    for name, got, want in fields:
        if got != want:
            raise NotOurOrder(
                f"result for order {expected.merchant_order_no} names {name} "
                f"{_shown(got)}, not {_shown(want)}",
                f"$.{name}",
            )


def _shown(value: object) -> str:
    if value is None:
        return "nothing"
    text = str(value)[:40]
    return repr("".join(c if c.isascii() and c.isprintable() else "?" for c in text))


class MemoryOrderStore:
    """Expectations in this process's memory (the newest ``limit`` kept)."""

    def __init__(self, limit: int = 10_000) -> None:
        self._orders: OrderedDict[str, ExpectedOrder] = OrderedDict()
        self._limit = limit
        self._lock = threading.Lock()

    def remember(self, order: ExpectedOrder) -> None:
        with self._lock:
            self._orders[order.merchant_order_no] = order
            self._orders.move_to_end(order.merchant_order_no)
            while len(self._orders) > self._limit:
                self._orders.popitem(last=False)

    def expected(self, merchant_order_no: str) -> ExpectedOrder | None:
        with self._lock:
            return self._orders.get(merchant_order_no)


class SqliteOrderStore:
    """Expectations in one SQLite file shared by every instance of a POS
    server. ``merchant_order_no`` is unique per merchant, so it is the key;
    a create repeated with the same order number (the gateway answers it
    with its first answer) records the same row again."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        db = self._db()
        db.execute("PRAGMA journal_mode=WAL")
        db.execute(
            "CREATE TABLE IF NOT EXISTS expected_orders ("
            " merchant_order_no TEXT PRIMARY KEY,"
            " trans_no TEXT NOT NULL,"
            " order_amount TEXT NOT NULL,"
            " price_currency TEXT NOT NULL,"
            " created_ms INTEGER NOT NULL)"
        )

    def _db(self) -> sqlite3.Connection:
        db: sqlite3.Connection | None = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(self.path, timeout=10, isolation_level=None)
            db.execute("PRAGMA busy_timeout=10000")
            self._local.db = db
        return db

    def remember(self, order: ExpectedOrder) -> None:
        self._db().execute(
            "INSERT OR REPLACE INTO expected_orders VALUES (?,?,?,?,?)",
            (
                order.merchant_order_no,
                order.trans_no,
                str(order.order_amount),
                order.price_currency,
                time.time_ns() // 1_000_000,
            ),
        )

    def expected(self, merchant_order_no: str) -> ExpectedOrder | None:
        row = (
            self._db()
            .execute(
                "SELECT merchant_order_no, trans_no, order_amount, price_currency "
                "FROM expected_orders WHERE merchant_order_no=?",
                (merchant_order_no,),
            )
            .fetchone()
        )
        if row is None:
            return None
        return ExpectedOrder(row[0], row[1], Decimal(row[2]), row[3])

    def prune(self, older_than_days: float) -> int:
        """Forget orders recorded more than ``older_than_days`` ago (a
        notification is retried for about 12 h). Returns how many."""
        cutoff = time.time_ns() // 1_000_000 - int(older_than_days * 86_400_000)
        cur = self._db().execute("DELETE FROM expected_orders WHERE created_ms < ?", (cutoff,))
        return cur.rowcount
