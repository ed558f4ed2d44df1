"""What a POS server expects of its orders, to bind results to them (part B).

Contract (docs/protocol.md part B): the gateway signs every merchant's
notifications with one key, so a valid signature does not say that a
notification - or a query answer - is about *our* order. A result counts as
an order's only when it names this POS's ``merchant_no`` and ``app_id``,
the ``merchant_order_no`` and the ``trans_no`` the create returned for it,
and the order's ``order_amount`` and ``price_currency`` (``check``; amounts
compare as decimals, so ``12.5`` is ``12.50``). Anything else raises
``NotOurOrder`` naming the first field that differs, expected and got.

The expectation (``ExpectedOrder``) is recorded when a create succeeds
(``cloud.pos``) in an ``OrderStore``:

* ``MemoryOrderStore``: this process only (the default; the newest 10 000);
* ``SqliteOrderStore``: one SQLite file (WAL) that every instance of a POS
  server behind a load balancer shares, since a notification may reach an
  instance that did not create the order. Safe from several threads and
  processes; records older than ``keep_days`` (default 30: a notification
  is retried for about 12 h) are pruned by themselves, ``prune`` drops more.
  Keyed on ``merchant_order_no`` (unique per merchant): one file per
  merchant and app, i.e. per ``pos.toml``.

A caller that keeps its orders in its own database can skip the store and
hand the ``ExpectedOrder`` to the check directly
(``accept_notification(body, expected=...)``).
"""

from __future__ import annotations

import random
import sqlite3
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Protocol

from cloud.config_schema import ConfigError, Problem
from cloud.errors import NotOurOrder
from cloud.messages import OrderInfo

__all__ = [
    "DEFAULT_KEEP_DAYS",
    "ExpectedOrder",
    "MemoryOrderStore",
    "OrderStore",
    "SqliteOrderStore",
    "check",
]

DEFAULT_KEEP_DAYS = 30.0
_PRUNE_EVERY_S = 3600.0  # how often ``remember`` prunes, at most
_DAY_MS = 86_400_000


@dataclass(frozen=True, slots=True)
class ExpectedOrder:
    """An order as its create left it: what any result for it must name
    (besides this POS's own merchant and app)."""

    merchant_order_no: str
    trans_no: str
    order_amount: Decimal
    price_currency: str


class OrderStore(Protocol):
    """Where a POS keeps the ``ExpectedOrder`` of each order it created.

    ``remember`` is called after every successful create (a repeated create
    records the same order again); ``expected`` answers None for an order it
    has no record of. Both may raise whatever the store's medium raises
    (the client logs it; a webhook then answers 500 and the gateway retries).
    """

    def remember(self, order: ExpectedOrder) -> None: ...

    def expected(self, merchant_order_no: str) -> ExpectedOrder | None: ...


def check(info: OrderInfo, expected: ExpectedOrder, *, merchant_no: str, app_id: str) -> None:
    """Check that ``info`` (a notification or a query answer) is the result of
    ``expected``, created by merchant ``merchant_no`` through app ``app_id``.

    Raises NotOurOrder naming the first field that differs, with what was
    expected and what came (its ``field``, ``expected`` and ``got``).
    """
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
                f"result for order {_shown(expected.merchant_order_no)}: {name} is "
                f"{_shown(got)}, expected {_shown(want)}",
                f"$.{name}",
                expected=_shown(want),
                got=_shown(got),
            )


def _shown(value: object) -> str:
    """A field's value fit for a log line: short, printable ASCII only (the
    values come from the far side; none of the checked fields is card data)."""
    if value is None:
        return "nothing"
    if isinstance(value, Decimal):
        return format(value, "f")[:40]
    text = str(value)[:40]
    return repr("".join(c if c.isascii() and c.isprintable() else "?" for c in text))


class MemoryOrderStore:
    """Expectations in this process's memory (the newest ``limit`` kept).

    Thread-safe. Only for a POS server that runs as one process: another
    instance cannot see them (use ``SqliteOrderStore``)."""

    def __init__(self, limit: int = 10_000) -> None:
        if limit < 1:
            raise ValueError("limit must be >= 1")
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
    server (see the module docstring).

    ``merchant_order_no`` is unique per merchant, so it is the key; a create
    repeated with the same order number (the gateway answers it with its
    first answer) records the same row again. WAL lets readers and one
    writer proceed together across processes; a writer waits up to
    ``busy_timeout_s`` for another. One connection per object, guarded by a
    lock, so an object may be shared by threads. Raises ConfigError when the
    file cannot be opened or is not such a store; ``remember``, ``expected``
    and ``prune`` raise sqlite3.Error on a failing disk or a lock held longer
    than the timeout.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        keep_days: float | None = DEFAULT_KEEP_DAYS,
        busy_timeout_s: float = 10.0,
    ) -> None:
        self.path = Path(path)
        self.keep_days = keep_days
        self._lock = threading.Lock()
        self._pruned_at: float | None = None
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(
                self.path,
                timeout=busy_timeout_s,
                isolation_level=None,  # autocommit: each statement is its own transaction
                check_same_thread=False,  # guarded by self._lock
            )
        except (OSError, sqlite3.Error) as exc:
            raise ConfigError(
                Problem(str(self.path), "order_store", f"cannot open: {exc}")
            ) from exc
        try:
            # Set before anything that may wait for another process's lock
            # (switching to WAL does, the first time).
            self._db.execute(f"PRAGMA busy_timeout={int(busy_timeout_s * 1000)}")
            # Switching a new file to WAL takes an exclusive lock, and SQLite
            # answers "database is locked" at once, without its busy handler,
            # when several processes open a new file together (it would
            # otherwise risk a deadlock between them): retry until the timeout.
            deadline = time.monotonic() + busy_timeout_s
            while True:
                try:
                    self._db.execute("PRAGMA journal_mode=WAL")
                    break
                except sqlite3.OperationalError as exc:
                    if "locked" not in str(exc) or time.monotonic() > deadline:
                        raise
                    time.sleep(0.02 + random.random() * 0.05)
            # NORMAL is durable enough under WAL for an expectation: a power cut
            # may lose the last ones, and then their results are refused (the
            # POS still polls), never misattributed.
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS expected_orders ("
                " merchant_order_no TEXT PRIMARY KEY,"
                " trans_no TEXT NOT NULL,"
                " order_amount TEXT NOT NULL,"
                " price_currency TEXT NOT NULL,"
                " created_ms INTEGER NOT NULL)"
            )
            self._db.execute(
                "CREATE INDEX IF NOT EXISTS expected_orders_created ON expected_orders (created_ms)"
            )
        except sqlite3.Error as exc:
            self._db.close()
            raise ConfigError(
                Problem(str(self.path), "order_store", f"not a usable order store: {exc}")
            ) from exc
        self._maybe_prune()

    def close(self) -> None:
        """Close the connection (the file stays)."""
        with self._lock:
            self._db.close()

    def remember(self, order: ExpectedOrder) -> None:
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO expected_orders VALUES (?,?,?,?,?)",
                (
                    order.merchant_order_no,
                    order.trans_no,
                    str(order.order_amount),
                    order.price_currency,
                    time.time_ns() // 1_000_000,
                ),
            )
        self._maybe_prune()

    def expected(self, merchant_order_no: str) -> ExpectedOrder | None:
        with self._lock:
            row = self._db.execute(
                "SELECT merchant_order_no, trans_no, order_amount, price_currency "
                "FROM expected_orders WHERE merchant_order_no=?",
                (merchant_order_no,),
            ).fetchone()
        if row is None:
            return None
        try:
            amount = Decimal(row[2])
        except InvalidOperation:  # written by hand: no order can match it
            return None
        return ExpectedOrder(str(row[0]), str(row[1]), amount, str(row[3]))

    def prune(self, older_than_days: float) -> int:
        """Forget orders recorded more than ``older_than_days`` ago. Returns
        how many. A result for a forgotten order is refused (NotOurOrder)."""
        cutoff = time.time_ns() // 1_000_000 - int(older_than_days * _DAY_MS)
        with self._lock:
            cur = self._db.execute("DELETE FROM expected_orders WHERE created_ms < ?", (cutoff,))
        return cur.rowcount

    def _maybe_prune(self) -> None:
        # Bounded without a cron job: each instance prunes when it opens the
        # file and then at most once an hour (an indexed DELETE).
        now = time.monotonic()
        if self.keep_days is None:
            return
        if self._pruned_at is not None and now - self._pruned_at < _PRUNE_EVERY_S:
            return
        self._pruned_at = now
        self.prune(self.keep_days)
