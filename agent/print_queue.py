"""The print queue: receipts waiting for the printer, in the journal.

Contract:

* A job is one copy (``customer`` or ``merchant``) of one transaction's
  receipt. ``enqueue_receipts`` is called inside the commit that makes the
  transaction final (``agent.finals.record_final``), so a final result
  always has its receipt queued, and a crash or a printer out of paper
  never loses one. The job holds no receipt text: the receipt is laid out
  from the journaled transaction when it prints (``agent.receipt_layout``),
  so no card data is kept twice.
* Which results get a receipt (``receipt_due``): approved and declined,
  and cancelled or expired once a card or code was read (the customer
  tapped: they get a slip saying it did not go through). An order closed or
  cancelled before any read prints nothing.
* ``pending()`` lists unprinted jobs oldest first; the print worker marks
  each ``printed`` once the printer reported itself fine after the job, or
  ``failed`` (attempts + 1, the reason kept) - a job is never dropped.
  ``reprint(trans_no)`` queues the customer copy again (None: the last
  receipt printed or queued); it refuses a transaction that has no receipt,
  and one whose receipt already waits (a key held down prints one slip);
  and at most ``MAX_REPRINTS`` in ``REPRINT_WINDOW_MS``: anyone who can
  reach the agent's socket (the checkout's user) must not be able to empty
  the paper roll.
  A job whose receipt cannot be laid out is ``given_up`` (printed_at 0,
  the reason kept): it must not hold up the ones behind it.
* Printing is outside the money path: nothing here is read by settlement.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Literal

from agent.journal import Journal, Phase, TxRow

Copy = Literal["customer", "merchant"]

MAX_REPRINTS = 5
REPRINT_WINDOW_MS = 60_000

# Results that print whatever happened before, and those that print only
# once the customer presented something.
_ALWAYS = frozenset({Phase.APPROVED, Phase.DECLINED})
_AFTER_A_READ = frozenset({Phase.CANCELLED, Phase.EXPIRED, Phase.CLOSED})


@dataclass(frozen=True, slots=True)
class PrintJob:
    id: int
    trans_no: str
    copy: Copy
    reprint: bool
    attempts: int


def receipt_due(tx: TxRow) -> bool:
    """Whether final ``tx`` gets a receipt (see the module contract)."""
    if tx.phase in _ALWAYS:
        return True
    return tx.phase in _AFTER_A_READ and tx.entry_mode is not None


def enqueue_receipts(journal: Journal, trans_no: str, copies: tuple[Copy, ...]) -> int:
    """Queue ``copies`` of ``trans_no``'s receipt if its result gets one;
    returns how many were queued. Call inside the batch that made it final."""
    tx = journal.get(trans_no)
    if tx is None or not tx.final or not receipt_due(tx):
        return 0
    _insert(journal, trans_no, copies, reprint=False)
    return len(copies)


def reprint(journal: Journal, trans_no: str | None) -> tuple[str | None, str]:
    """Queue the customer copy of ``trans_no`` (None: the newest receipt)
    again. Returns (trans_no, "") when queued, else (trans_no, why not)."""
    if trans_no is None:
        rows = journal.read("SELECT trans_no FROM print_jobs ORDER BY id DESC LIMIT 1")
        if not rows:
            return None, "no receipt printed yet"
        trans_no = str(rows[0]["trans_no"])
    tx = journal.get(trans_no)
    if tx is None:
        return trans_no, "no such transaction"
    if not tx.final:
        return trans_no, "the transaction is not finished yet"
    if not receipt_due(tx):
        return trans_no, "no receipt for this result (nothing was read)"
    since = time.time_ns() // 1_000_000 - REPRINT_WINDOW_MS
    recent = journal.read(
        "SELECT COUNT(*) FROM print_jobs WHERE reprint=1 AND created_at>?", (since,)
    )[0][0]
    if recent >= MAX_REPRINTS:
        return trans_no, f"at most {MAX_REPRINTS} reprints a minute: try again shortly"
    waiting = journal.read(
        "SELECT 1 FROM print_jobs WHERE trans_no=? AND printed_at IS NULL LIMIT 1", (trans_no,)
    )
    if waiting:
        return trans_no, "its receipt is already waiting for the printer"
    _insert(journal, trans_no, ("customer",), reprint=True)
    return trans_no, ""


def _insert(journal: Journal, trans_no: str, copies: tuple[Copy, ...], *, reprint: bool) -> None:
    now = time.time_ns() // 1_000_000
    with journal.write() as db:
        db.executemany(
            "INSERT INTO print_jobs (trans_no, copy, reprint, created_at) VALUES (?,?,?,?)",
            [(trans_no, copy, int(reprint), now) for copy in copies],
        )


def pending(journal: Journal, limit: int = 20) -> list[PrintJob]:
    """Unprinted jobs, oldest first."""
    rows = journal.read(
        "SELECT id, trans_no, copy, reprint, attempts FROM print_jobs "
        "WHERE printed_at IS NULL ORDER BY id LIMIT ?",
        (limit,),
    )
    return [
        PrintJob(
            int(r["id"]),
            str(r["trans_no"]),
            _copy(r["copy"]),
            bool(r["reprint"]),
            int(r["attempts"]),
        )
        for r in rows
    ]


def pending_count(journal: Journal) -> int:
    return int(journal.read("SELECT COUNT(*) FROM print_jobs WHERE printed_at IS NULL")[0][0])


def printed(journal: Journal, job_id: int) -> None:
    with journal.write() as db:
        db.execute(
            "UPDATE print_jobs SET printed_at=?, last_error=NULL WHERE id=?",
            (time.time_ns() // 1_000_000, job_id),
        )


def failed(journal: Journal, job_id: int, reason: str) -> None:
    with journal.write() as db:
        db.execute(
            "UPDATE print_jobs SET attempts=attempts+1, last_error=? WHERE id=?",
            (reason[:200], job_id),
        )


def given_up(journal: Journal, job_id: int, reason: str) -> None:
    with journal.write() as db:
        db.execute(
            "UPDATE print_jobs SET printed_at=0, last_error=? WHERE id=?", (reason[:200], job_id)
        )


def _copy(value: object) -> Copy:
    return "merchant" if value == "merchant" else "customer"
