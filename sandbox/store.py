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
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import time
import uuid
from collections.abc import Collection, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, fields, replace
from decimal import Decimal
from pathlib import Path
from typing import Any

from cloud import wirejson
from cloud.messages import OrderInfo, PayScenario, TransStatus, TransType, to_fields
from cloud.status_rules import FINAL_STATUSES, may_move

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


_SCHEMA = """
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


def _dec(text: str | None) -> Decimal | None:
    return None if text is None else Decimal(text)


def _text(value: Decimal | None) -> str | None:
    return None if value is None else wirejson.number_text(value)


def _now() -> int:
    return time.time_ns() // 1_000_000


@dataclass(frozen=True, slots=True)
class Merchant:
    merchant_no: str
    app_id: str
    public_key_pem: str
    name: str


@dataclass(frozen=True, slots=True)
class Terminal:
    sn: str
    app_id: str
    merchant_no: str
    public_key_pem: str
    store_name: str
    created_ms: int


@dataclass(frozen=True, slots=True)
class Order:
    trans_no: str
    merchant_no: str
    merchant_order_no: str
    terminal_sn: str
    store_no: str | None
    trans_type: TransType
    orig_trans_no: str | None
    trans_status: TransStatus
    price_currency: str
    order_amount: Decimal
    tip_amount: Decimal | None
    trans_amount: Decimal
    attach: str | None
    pay_scenario: PayScenario | None
    description: str | None
    notify_url: str | None
    expires_at: int
    order_queue_mode: str
    confirm_on_terminal: bool
    fingerprint: str
    message_id: str
    create_answer: str
    close_answer: str | None
    created_ms: int
    updated_ms: int
    request_no: str | None = None
    paid_amount: Decimal | None = None
    pay_method_id: str | None = None
    pay_channel_trans_no: str | None = None
    ref_no: str | None = None
    auth_code: str | None = None
    masked_pan: str | None = None
    trans_end_time: str | None = None
    trans_error_code: str | None = None
    trans_error_msg: str | None = None

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> Order:
        d: dict[str, Any] = dict(row)
        for key in ("order_amount", "tip_amount", "trans_amount", "paid_amount"):
            d[key] = _dec(d[key])
        d["trans_type"] = TransType(d["trans_type"])
        d["trans_status"] = TransStatus(d["trans_status"])
        d["pay_scenario"] = PayScenario(d["pay_scenario"]) if d["pay_scenario"] else None
        d["confirm_on_terminal"] = bool(d["confirm_on_terminal"])
        return cls(**d)

    def to_row(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        for key in ("order_amount", "tip_amount", "trans_amount", "paid_amount"):
            d[key] = _text(d[key])
        d["trans_type"] = int(self.trans_type)
        d["trans_status"] = int(self.trans_status)
        d["pay_scenario"] = str(self.pay_scenario) if self.pay_scenario else None
        d["confirm_on_terminal"] = int(self.confirm_on_terminal)
        return d

    @property
    def is_final(self) -> bool:
        return self.trans_status in FINAL

    def to_info(self, timeline: str | None = None, *, app_id: str | None = None) -> OrderInfo:
        """The ``order.query`` result (part A); payment fields only when paid,
        error fields only when failed or cancelled. It names the merchant and
        the POS app (``app_id``) whose order it is (part B): the receiver binds
        it to its own order by them."""
        paid = self.trans_status is S.COMPLETED
        failed = self.trans_status in (S.CLOSED, S.CANCELLED)
        return OrderInfo(
            trans_no=self.trans_no,
            trans_type=self.trans_type,
            trans_status=self.trans_status,
            merchant_order_no=self.merchant_order_no,
            price_currency=self.price_currency,
            order_amount=self.order_amount,
            trans_amount=self.trans_amount,
            terminal_sn=self.terminal_sn,
            merchant_no=self.merchant_no,
            app_id=app_id,
            tip_amount=self.tip_amount,
            attach=self.attach,
            store_no=self.store_no,
            pay_scenario=self.pay_scenario,
            paid_amount=self.paid_amount if paid else None,
            pay_method_id=self.pay_method_id if paid else None,
            pay_channel_trans_no=self.pay_channel_trans_no if paid else None,
            ref_no=self.ref_no if paid else None,
            auth_code=self.auth_code if paid else None,
            masked_pan=self.masked_pan if paid else None,
            trans_end_time=self.trans_end_time if self.is_final else None,
            trans_error_code=self.trans_error_code if failed else None,
            trans_error_msg=self.trans_error_msg if failed else None,
            terminal_timeline=timeline,
        )


@dataclass(frozen=True, slots=True)
class CashierRequest:
    terminal_sn: str
    request_no: str
    trans_no: str
    method: str
    fingerprint: str
    state: str
    http_status: int | None
    answer: str | None
    created_ms: int


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


_ORDER_COLUMNS = [f.name for f in fields(Order)]


class Store:
    """One connection to ``path``; see the module docstring."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, isolation_level=None, timeout=10.0)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA busy_timeout=10000")
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> Store:
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
                (sn, sn, merchant_no, public_key_pem, store_name, _now()),
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
            new = replace(order, **changes, updated_ms=_now())
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
        now = _now() if now_ms is None else now_ms
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
                self._queue_notification(new, now)
        log.info("order %s: %s -> %s (%s)", trans_no, order.trans_status.name, to.name, why)
        return new, True

    def expired_preorders(self, now_ms: int) -> list[str]:
        rows = self._db.execute(
            "SELECT trans_no FROM orders WHERE trans_status = 9 AND expires_at <= ?", (now_ms,)
        ).fetchall()
        return [str(r["trans_no"]) for r in rows]

    # ------------------------------------------------------------ cashier requests

    def claim_request(
        self, terminal_sn: str, request_no: str, trans_no: str, method: str, fingerprint: str
    ) -> CashierRequest | None:
        """Claim ``request_no`` for a new attempt. Returns None when the claim is
        new (the caller must ``finish_request`` or ``release_request``), else the
        existing row (pending or done)."""
        with self._tx() as db:
            row = self._one(
                "SELECT * FROM cashier_requests WHERE terminal_sn = ? AND request_no = ?",
                terminal_sn,
                request_no,
            )
            if row is not None:
                return CashierRequest(**dict(row))
            db.execute(
                "INSERT INTO cashier_requests (terminal_sn, request_no, trans_no, method, "
                "fingerprint, state, created_ms) VALUES (?, ?, ?, ?, ?, 'pending', ?)",
                (terminal_sn, request_no, trans_no, method, fingerprint, _now()),
            )
        return None

    def finish_request(
        self, terminal_sn: str, request_no: str, answer: str, http_status: int = 200
    ) -> None:
        with self._tx() as db:
            db.execute(
                "UPDATE cashier_requests SET state = 'done', answer = ?, http_status = ? "
                "WHERE terminal_sn = ? AND request_no = ?",
                (answer, http_status, terminal_sn, request_no),
            )

    def release_request(self, terminal_sn: str, request_no: str) -> None:
        with self._tx() as db:
            db.execute(
                "DELETE FROM cashier_requests WHERE terminal_sn = ? AND request_no = ?",
                (terminal_sn, request_no),
            )

    def request(self, terminal_sn: str, request_no: str) -> CashierRequest | None:
        row = self._one(
            "SELECT * FROM cashier_requests WHERE terminal_sn = ? AND request_no = ?",
            terminal_sn,
            request_no,
        )
        return None if row is None else CashierRequest(**dict(row))

    def pending_requests(self) -> list[CashierRequest]:
        rows = self._db.execute("SELECT * FROM cashier_requests WHERE state = 'pending'")
        return [CashierRequest(**dict(r)) for r in rows.fetchall()]

    # ------------------------------------------------------------ charges

    def add_charge(
        self,
        *,
        trans_no: str,
        request_no: str,
        kind: str,
        amount: Decimal,
        price_currency: str,
        auth_code: str,
        ref_no: str,
        pay_method_id: str | None,
        masked_pan: str | None,
        reversed_: bool = False,
    ) -> int:
        now = _now()
        with self._tx() as db:
            cur = db.execute(
                "INSERT INTO charges (trans_no, request_no, kind, amount, price_currency, "
                "auth_code, ref_no, pay_method_id, masked_pan, reversed, created_ms, reversed_ms) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    trans_no,
                    request_no,
                    kind,
                    _text(amount),
                    price_currency,
                    auth_code,
                    ref_no,
                    pay_method_id,
                    masked_pan,
                    int(reversed_),
                    now,
                    now if reversed_ else None,
                ),
            )
        return int(cur.lastrowid or 0)

    def reverse_charges(self, trans_no: str) -> int:
        """Flag every charge of ``trans_no`` reversed; returns how many changed."""
        with self._tx() as db:
            cur = db.execute(
                "UPDATE charges SET reversed = 1, reversed_ms = ? "
                "WHERE trans_no = ? AND reversed = 0",
                (_now(), trans_no),
            )
        return cur.rowcount

    def charges(self, trans_no: str) -> list[dict[str, Any]]:
        rows = self._db.execute("SELECT * FROM charges WHERE trans_no = ? ORDER BY id", (trans_no,))
        return [dict(r) for r in rows.fetchall()]

    # ------------------------------------------------------------ pushes and events

    def add_push(
        self,
        *,
        message_id: str,
        trans_no: str,
        terminal_sn: str,
        topic: str,
        payload: str,
        expiry_s: int | None,
    ) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT OR IGNORE INTO pushes (message_id, trans_no, terminal_sn, topic, payload, "
                "expiry_s, created_ms) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (message_id, trans_no, terminal_sn, topic, payload, expiry_s, _now()),
            )

    def trans_no_for_message(self, message_id: str) -> str | None:
        row = self._one("SELECT trans_no FROM pushes WHERE message_id = ?", message_id)
        return None if row is None else str(row["trans_no"])

    def add_event(
        self,
        *,
        trans_no: str | None,
        terminal_sn: str,
        event: str,
        message_id: str,
        reason: str | None,
        hops: str | None,
        timestamp: str,
        received_ms: int,
    ) -> bool:
        """Store a verified terminal event; False when it was a redelivery."""
        with self._tx() as db:
            cur = db.execute(
                "INSERT OR IGNORE INTO events (trans_no, terminal_sn, event, message_id, reason, "
                "hops, timestamp, received_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (trans_no, terminal_sn, event, message_id, reason, hops, timestamp, received_ms),
            )
        return cur.rowcount == 1

    def timeline(self, trans_no: str) -> list[dict[str, Any]]:
        """The terminal events of ``trans_no`` in arrival order; ``hops`` parsed."""
        rows = self._db.execute(
            "SELECT event, message_id, reason, hops, timestamp, received_ms FROM events "
            "WHERE trans_no = ? ORDER BY id",
            (trans_no,),
        ).fetchall()
        out: list[dict[str, Any]] = []
        for r in rows:
            item = {k: r[k] for k in ("event", "message_id", "timestamp", "received_ms")}
            if r["reason"]:
                item["reason"] = r["reason"]
            if r["hops"]:
                try:
                    item["hops"] = wirejson.loads(r["hops"])
                except ValueError:
                    item["hops"] = r["hops"]
            out.append(item)
        return out

    # ------------------------------------------------------------ notifications

    def _queue_notification(self, order: Order, now: int) -> None:
        assert order.notify_url
        app_id = self.merchant_app_id(order.merchant_no)
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


def timeline_text(store: Store, trans_no: str) -> str | None:
    """``terminal_timeline`` (sandbox extension of ``order.query``): JSON text or None."""
    items = store.timeline(trans_no)
    return wirejson.dumps(items) if items else None
