"""The sandbox store's cashier requests and charges (docs/protocol.md part D).

A cashier create is keyed by its terminal and ``request_no``: the first
call claims the key (``claim_request``), and the answer it ends with is
stored (``finish_request``) and replayed as is for every repeat; an attempt
the acquirer turned away unanswered (unavailable: nothing charged) gives the
key back (``release_request``), so a retry is a new attempt. A claim still
pending when the sandbox stopped is found at its next start
(``pending_requests``). ``charges`` are what the simulated acquirer took:
one row per sale, void or refund, flagged ``reversed`` when undone, never
deleted. Card data: the masked PAN only.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from sandbox.store_db import StoreDb, wall_ms
from sandbox.store_records import decimal_text


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


class CashierTables(StoreDb):
    """``cashier_requests`` and ``charges``; a part of ``sandbox.store.Store``."""

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
                (terminal_sn, request_no, trans_no, method, fingerprint, wall_ms()),
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
        now = wall_ms()
        with self._tx() as db:
            cur = db.execute(
                "INSERT INTO charges (trans_no, request_no, kind, amount, price_currency, "
                "auth_code, ref_no, pay_method_id, masked_pan, reversed, created_ms, reversed_ms) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    trans_no,
                    request_no,
                    kind,
                    decimal_text(amount),
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
                (wall_ms(), trans_no),
            )
        return cur.rowcount

    def charges(self, trans_no: str) -> list[dict[str, Any]]:
        rows = self._db.execute("SELECT * FROM charges WHERE trans_no = ? ORDER BY id", (trans_no,))
        return [dict(r) for r in rows.fetchall()]
