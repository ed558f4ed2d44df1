"""The sandbox store's SQLite file: its tables, one connection, transactions.

``StoreDb`` opens the file in WAL mode (``synchronous=NORMAL``: a commit
survives a crash of the sandbox, not of the machine, which is enough for a
stand-in) and creates any table that is missing, so an older file gains the
newer tables when it is opened. Every write runs in ``BEGIN IMMEDIATE``; a
write made inside another's transaction joins it, which is how a status
move and the notification it queues commit together (``sandbox.store``).

The tables by what they hold (docs/protocol.md): ``state`` (the sandbox's
own ports and URLs), ``merchants`` and ``terminals`` with their keys and
``terminal_status`` (parts A and C), ``orders`` (part A), ``cashier_requests``
and ``charges`` (part D), ``pushes`` and ``events`` (part C),
``notifications`` and their ``notification_attempts`` (part B). The mixins
beside this module (``sandbox.store_*``) each read and write their own.
"""

from __future__ import annotations

import contextlib
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Self

SCHEMA = """
CREATE TABLE IF NOT EXISTS state (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS merchants (
    merchant_no TEXT PRIMARY KEY,
    app_id TEXT NOT NULL UNIQUE,
    public_key_pem TEXT NOT NULL,
    name TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS terminals (
    sn TEXT PRIMARY KEY,
    app_id TEXT NOT NULL UNIQUE,
    merchant_no TEXT NOT NULL,
    public_key_pem TEXT NOT NULL,
    store_name TEXT NOT NULL,
    created_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS terminal_status (
    sn TEXT PRIMARY KEY,
    status TEXT NOT NULL,
    payload TEXT NOT NULL,
    updated_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS orders (
    trans_no TEXT PRIMARY KEY,
    merchant_no TEXT NOT NULL,
    merchant_order_no TEXT NOT NULL,
    terminal_sn TEXT NOT NULL,
    store_no TEXT,
    trans_type INTEGER NOT NULL,
    orig_trans_no TEXT,
    trans_status INTEGER NOT NULL,
    price_currency TEXT NOT NULL,
    order_amount TEXT NOT NULL,
    tip_amount TEXT,
    trans_amount TEXT NOT NULL,
    attach TEXT,
    pay_scenario TEXT,
    description TEXT,
    notify_url TEXT,
    expires_at INTEGER NOT NULL,
    order_queue_mode TEXT NOT NULL,
    confirm_on_terminal INTEGER NOT NULL,
    fingerprint TEXT NOT NULL,
    message_id TEXT NOT NULL,
    create_answer TEXT NOT NULL,
    close_answer TEXT,
    created_ms INTEGER NOT NULL,
    updated_ms INTEGER NOT NULL,
    request_no TEXT,
    paid_amount TEXT,
    pay_method_id TEXT,
    pay_channel_trans_no TEXT,
    ref_no TEXT,
    auth_code TEXT,
    masked_pan TEXT,
    trans_end_time TEXT,
    trans_error_code TEXT,
    trans_error_msg TEXT,
    UNIQUE (merchant_no, merchant_order_no)
);
CREATE INDEX IF NOT EXISTS orders_status ON orders (trans_status, expires_at);
CREATE INDEX IF NOT EXISTS orders_orig ON orders (orig_trans_no);
CREATE TABLE IF NOT EXISTS cashier_requests (
    terminal_sn TEXT NOT NULL,
    request_no TEXT NOT NULL,
    trans_no TEXT NOT NULL,
    method TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    state TEXT NOT NULL,            -- pending | done
    http_status INTEGER,
    answer TEXT,                    -- the signed response, replayed as is
    created_ms INTEGER NOT NULL,
    PRIMARY KEY (terminal_sn, request_no)
);
CREATE TABLE IF NOT EXISTS charges (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    trans_no TEXT NOT NULL,
    request_no TEXT NOT NULL,
    kind TEXT NOT NULL,             -- sale | void | refund
    amount TEXT NOT NULL,
    price_currency TEXT NOT NULL,
    auth_code TEXT NOT NULL,
    ref_no TEXT NOT NULL,
    pay_method_id TEXT,
    masked_pan TEXT,
    reversed INTEGER NOT NULL DEFAULT 0,
    created_ms INTEGER NOT NULL,
    reversed_ms INTEGER
);
CREATE TABLE IF NOT EXISTS pushes (
    message_id TEXT PRIMARY KEY,
    trans_no TEXT NOT NULL,
    terminal_sn TEXT NOT NULL,
    topic TEXT NOT NULL,
    payload TEXT NOT NULL,
    expiry_s INTEGER,
    created_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    trans_no TEXT,
    terminal_sn TEXT NOT NULL,
    event TEXT NOT NULL,
    message_id TEXT NOT NULL,
    reason TEXT,
    hops TEXT,
    timestamp TEXT NOT NULL,
    received_ms INTEGER NOT NULL,
    UNIQUE (terminal_sn, message_id, event, timestamp)
);
CREATE TABLE IF NOT EXISTS notifications (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    trans_no TEXT NOT NULL,
    trans_status INTEGER NOT NULL,
    notify_url TEXT NOT NULL,
    notify_id TEXT NOT NULL,
    info TEXT NOT NULL,             -- OrderInfo wire JSON at the time of the status
    state TEXT NOT NULL,            -- pending | delivered | failed
    attempts INTEGER NOT NULL DEFAULT 0,
    next_at_ms INTEGER NOT NULL,
    last_error TEXT,
    created_ms INTEGER NOT NULL,
    delivered_ms INTEGER,
    UNIQUE (trans_no, trans_status)
);
CREATE TABLE IF NOT EXISTS notification_attempts (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    notification_id INTEGER NOT NULL,
    attempt INTEGER NOT NULL,
    at_ms INTEGER NOT NULL,
    http_status INTEGER,
    ok INTEGER NOT NULL,
    error TEXT
);
"""


def wall_ms() -> int:
    """The wall clock in ms: what the store stamps rows with."""
    return time.time_ns() // 1_000_000


class StoreDb:
    """One connection to ``path``; not thread-safe (``sandbox.store``)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, isolation_level=None, timeout=10.0)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA busy_timeout=10000")
        self._db.executescript(SCHEMA)

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        if self._db.in_transaction:  # nested: join the outer transaction
            yield self._db
            return
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def transaction(self) -> contextlib.AbstractContextManager[sqlite3.Connection]:
        """One write transaction; the store's own writes inside it join it."""
        return self._tx()

    def _one(self, sql: str, *args: Any) -> sqlite3.Row | None:
        row: sqlite3.Row | None = self._db.execute(sql, args).fetchone()
        return row
