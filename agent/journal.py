"""The journal: what the terminal must not lose, in SQLite.

Contract (DESIGN.md "Transaction engine", docs/protocol.md part C and D):

* WAL with ``synchronous=FULL``: a method returns only once its rows are on
  disk, so the caller may then take the outside effect (PUBACK a push, send a
  payment, publish an event). One exception, for a push, which the terminal
  takes on at once: ``batch(deferred_sync=True)`` commits to the OS
  only (safe if the agent crashes, not if the power fails) and the caller
  runs ``sync()`` (the WAL's fdatasync, from any thread) before the effect.
* Pushes are keyed by ``message_id``: ``record_order`` and
  ``record_close_push`` say whether it is new, which is how a redelivered
  push is processed once. Only pushes whose signature verified enter
  ``pushes``; the rest (anyone's bytes) leave a bounded, sanitized record
  in ``rejections`` (``record_rejection``), never their payload.
* A payment attempt's ``request_no`` is stored before the first send and
  reused on every retry; an attempt without a journaled answer is an unknown
  outcome, resolved by detail and reverse, never by paying again.
* Phases never regress (``phase_verdict``): ``finish`` on an already final
  transaction leaves it as it is and returns False (another final phase is
  logged loudly as a conflict); non-final phases only move forward, except
  that an order with no payment attempt may be offered again. Each UPDATE
  re-checks the phase it was judged against, so no writer can overwrite a
  final phase.
* Events for the TMS go through an outbox (transactional outbox pattern), so
  a crash between "final" and "published" loses nothing.
* It never holds a full PAN, track data, EMV data or a wallet code: callers
  pass masked values only, and ``check_clean`` refuses card fields with digit
  runs that look like a PAN; a free-text ``reason`` from outside (a decline
  message) has such runs masked instead, so it is never refused.

Schema changes are numbered migrations applied in order (``PRAGMA
user_version``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

# The journal's vocabulary, re-exported: importers take these from here.
from agent.journal_rows import AttemptRow as AttemptRow
from agent.journal_rows import JournalError as JournalError
from agent.journal_rows import OrderRecord as OrderRecord
from agent.journal_rows import OutboxRow as OutboxRow
from agent.journal_rows import ShownOrder as ShownOrder
from agent.journal_rows import TxRow as TxRow
from agent.journal_rows import check_clean, tx_row
from agent.journal_schema import MAX_REJECTIONS, MIGRATIONS
from agent.phases import ATTEMPT_FROM, phase_verdict
from agent.phases import Phase as Phase
from cloud import redact
from cloud.status_rules import Verdict

log = logging.getLogger(__name__)

# SQLite's automatic checkpoint, in WAL pages (its default, set explicitly):
# the COMMIT that brings the WAL past it copies the WAL into the database
# and syncs both, inside that commit.
AUTOCHECKPOINT_PAGES = 1000


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


class Journal:
    """One SQLite file; use from one thread (the agent's event loop)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._depth = 0  # open transactions (``batch``)
        # Deferred commits (``batch(deferred_sync=True)``) counted, and how many
        # of them an fsync has covered: a FULL commit covers every earlier one.
        self._written = 0
        self._synced = 0
        self._wal_inode = -1  # the WAL file whose directory entry was synced
        self._closed = False
        self._hops: list[tuple[str, str, int]] = []  # written with the next commit
        # Called (on the journal's thread) when a FULL commit has made the
        # deferred ones durable: ``agent.durability`` waits for it.
        self.on_covered: Callable[[], None] | None = None
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            self._db.row_factory = sqlite3.Row
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute("PRAGMA foreign_keys=ON")
            self._db.execute("PRAGMA busy_timeout=5000")
            self._db.execute(f"PRAGMA wal_autocheckpoint={AUTOCHECKPOINT_PAGES}")
            # The working set is the last few transactions: SQLite's default
            # 2 MiB page cache would only fill up with history (RSS growing by
            # ~1 MB per 300 sales until it is full).
            self._db.execute("PRAGMA cache_size=-256")
            self._migrate()
        except (sqlite3.Error, OSError) as exc:
            raise JournalError(f"cannot open journal {self.path}: {exc}") from exc

    # ------------------------------------------------------------ plumbing

    def _migrate(self) -> None:
        version = int(self._db.execute("PRAGMA user_version").fetchone()[0])
        if version > len(MIGRATIONS):
            raise JournalError(
                f"journal {self.path} has schema {version}, newer than this agent "
                f"({len(MIGRATIONS)}): upgrade the agent or move the file away"
            )
        for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
            with self._tx():
                for statement in script.split(";"):
                    if statement.strip():
                        self._db.execute(statement)
                self._db.execute(f"PRAGMA user_version={number}")
            log.info("journal migrated to schema %d", number)

    @contextmanager
    def _tx(self, *, deferred_sync: bool = False) -> Iterator[sqlite3.Connection]:
        if self._depth:  # inside ``batch``: its commit covers this write
            yield self._db
            return
        try:
            if deferred_sync:
                self._db.execute("PRAGMA synchronous=NORMAL")  # WAL: no fsync at commit
                # Nor a checkpoint: this commit is on a push's way to the
                # screen or the OFFERED commit, and a checkpoint inside it
                # (its page copies and two syncs) held it back by ~1.5 ms
                # about once in 30 pushes (benchmarks/push_to_screen.py).
                # The next FULL commit runs it (an idle terminal's OFFERED).
                self._db.execute("PRAGMA wal_autocheckpoint=0")
            try:
                self._db.execute("BEGIN IMMEDIATE")
                self._depth += 1
                try:
                    yield self._db
                    self._write_hops(self._db)
                except BaseException:
                    self._db.execute("ROLLBACK")
                    raise
                finally:
                    self._depth -= 1
                self._db.execute("COMMIT")
            finally:
                if deferred_sync:
                    self._db.execute("PRAGMA synchronous=FULL")
                    self._db.execute(f"PRAGMA wal_autocheckpoint={AUTOCHECKPOINT_PAGES}")
        except sqlite3.Error as exc:
            raise JournalError(f"journal write failed: {exc}") from exc
        if deferred_sync:
            self._written += 1
        elif self._synced < self._written:
            # This commit's fsync of the WAL covered the deferred ones too.
            self._synced = self._written
            if self.on_covered is not None:
                self.on_covered()

    @contextmanager
    def batch(self, *, deferred_sync: bool = False) -> Iterator[None]:
        """Several writes in one commit (one fsync): they become durable
        together when the block ends, and not at all if it raises.

        With ``deferred_sync`` the commit reaches the OS (another process
        reads it; it survives this one being killed) but is durable only once
        ``sync()`` has run: call it before any outside effect that relies on
        these rows."""
        with self._tx(deferred_sync=deferred_sync):
            yield

    def write(self) -> contextlib.AbstractContextManager[sqlite3.Connection]:
        """One commit (or a part of the enclosing ``batch``) for a module that
        keeps tables of its own here (``agent.print_queue``)."""
        return self._tx()

    def read(self, sql: str, params: tuple[object, ...] = ()) -> list[sqlite3.Row]:
        return self._db.execute(sql, params).fetchall()

    @property
    def unsynced(self) -> bool:
        """Whether a deferred commit still waits for ``sync()``."""
        return self._synced < self._written

    def sync(self) -> None:
        """Make every deferred commit durable: fdatasync the WAL file, as
        SQLite's own FULL commit does (and on a new WAL file its directory
        too, as SQLite does at a file's first sync). Blocking, and safe from a
        worker thread: it opens the file by path and never uses the
        connection, so the loop's thread may go on reading and writing."""
        target = self._written
        if self._synced >= target or self._closed:  # close() checkpointed it, with fsync
            return
        try:
            fd = os.open(f"{self.path}-wal", os.O_RDONLY | os.O_CLOEXEC)
            try:
                os.fdatasync(fd)
                inode = os.fstat(fd).st_ino
            finally:
                os.close(fd)
            if inode != self._wal_inode:
                _fsync_dir(self.path.parent)
                self._wal_inode = inode
        except OSError as exc:
            log.error("journal %s: fsync failed: %s", self.path, exc)
            raise JournalError(f"journal sync failed: {exc}") from exc
        # A FULL commit meanwhile may have covered more; never claim less.
        self._synced = max(self._synced, target)

    def close(self) -> None:
        if self._hops:  # the last hops, written on the way out
            with contextlib.suppress(JournalError), self._tx():
                pass
        self._closed = True
        self._db.close()

    @property
    def schema_version(self) -> int:
        return int(self._db.execute("PRAGMA user_version").fetchone()[0])

    # ------------------------------------------------------------ pushes

    def seen_push(self, message_id: str) -> bool:
        row = self._db.execute("SELECT 1 FROM pushes WHERE message_id=?", (message_id,)).fetchone()
        return row is not None

    def has_order(self, trans_no: str) -> bool:
        """Whether ``trans_no`` is journaled (a push of it again is a duplicate)."""
        row = self._db.execute("SELECT 1 FROM transactions WHERE trans_no=?", (trans_no,))
        return row.fetchone() is not None

    def record_rejected_push(self, message_id: str, topic: str, reason: str) -> bool:
        """Journal a push we refuse although its signature verified (another
        terminal's, off the clock, expired: the gateway sent it, so its
        ``message_id`` is genuine). Returns False if the message_id was seen
        before. Never an unverified push: ``pushes`` suppresses duplicates by
        message_id, and a forgery must not claim the id of a genuine push to
        come (``record_rejection`` keeps those)."""
        with self._tx() as db:
            cur = db.execute(
                "INSERT OR IGNORE INTO pushes VALUES (?,?,?,?,?)",
                (message_id, topic, None, _now_ms(), f"rejected:{reason}"),
            )
            return cur.rowcount == 1

    def record_rejection(
        self,
        *,
        reason: str,
        detail: str,
        size: int,
        suppressed: int,
        claimed_id: str | None,
        event_id: str,
        event_reason: str,
        at_ms: int | None = None,
    ) -> None:
        """Keep a reported rejection of an unverified push and queue its
        ``rejected`` event (``event_id``, ``event_reason``), in one commit.

        Every text came from whoever sent the push: it is made safe here
        too (``cloud.redact.safe``: printable ASCII, cut, 13+ digit runs
        masked), whatever the caller did, so no such write is ever refused
        for looking like card data or fails on an unencodable character.
        Committed without an fsync of its own (it moves no money; the next
        FULL commit or ``sync()`` covers it), so a flood costs no flash
        writes per message. Keeps the newest ``MAX_REJECTIONS`` rows."""
        row = (
            at_ms or _now_ms(),
            redact.safe(reason, 32),
            redact.safe(detail, 160),
            None if claimed_id is None else redact.safe(claimed_id, 64),
            size,
            suppressed,
        )
        with self.batch(deferred_sync=True), self._tx() as db:
            db.execute(
                "INSERT INTO rejections (at_ms, reason, detail, claimed_id, size, suppressed) "
                "VALUES (?,?,?,?,?,?)",
                row,
            )
            db.execute(
                "DELETE FROM rejections WHERE id <= (SELECT MAX(id) FROM rejections) - ?",
                (MAX_REJECTIONS,),
            )
            self.enqueue_event(
                "rejected", redact.safe(event_id, 64), None, redact.safe(event_reason, 160)
            )

    def rejections(self, limit: int = 50) -> list[dict[str, Any]]:
        """The newest kept rejections, newest first."""
        rows = self._db.execute(
            "SELECT * FROM rejections ORDER BY id DESC LIMIT ?", (limit,)
        ).fetchall()
        return [dict(r) for r in rows]

    def record_order(self, message_id: str, order: OrderRecord) -> bool:
        """Journal an accepted order push and its transaction in one commit.

        Returns False (and writes nothing) when ``message_id`` or the
        ``trans_no`` was journaled before: a redelivery.
        """
        tx = check_clean(order.columns())
        now = _now_ms()
        with self._tx() as db:
            cur = db.execute(
                "INSERT OR IGNORE INTO pushes VALUES (?,?,?,?,?)",
                (message_id, "ecrhub.pay.order", tx["trans_no"], now, "accepted"),
            )
            if cur.rowcount == 0:
                return False
            if self.has_order(tx["trans_no"]):
                db.execute(
                    "UPDATE pushes SET outcome='duplicate_trans_no' WHERE message_id=?",
                    (message_id,),
                )
                return False
            seq = db.execute("SELECT COALESCE(MAX(seq), 0) + 1 FROM transactions").fetchone()[0]
            row = {
                "message_id": message_id,
                "seq": seq,
                "phase": Phase.OFFERED.value,
                "final": 0,
                "created_at": now,
                "updated_at": now,
                **tx,
            }
            cols = ",".join(row)
            db.execute(
                f"INSERT INTO transactions ({cols}) VALUES ({','.join('?' * len(row))})",  # noqa: S608 - column names are ours
                tuple(row.values()),
            )
            return True

    def record_close_push(self, message_id: str, trans_no: str) -> bool:
        """Journal a close push, to be applied (``close_applied`` once it is):
        a close acknowledged and then lost in a crash is applied at the next
        start (``pending_closes``). Returns False for a redelivery."""
        with self._tx() as db:
            cur = db.execute(
                "INSERT OR IGNORE INTO pushes VALUES (?,?,?,?,?)",
                (message_id, "ecrhub.pay.close", trans_no, _now_ms(), "close_pending"),
            )
            return cur.rowcount == 1

    def pending_closes(self) -> list[tuple[str, str]]:
        """(trans_no, message_id) of journaled closes not applied yet, oldest first."""
        rows = self._db.execute(
            "SELECT trans_no, message_id FROM pushes WHERE outcome='close_pending' "
            "ORDER BY received_at, rowid"
        ).fetchall()
        return [(str(r["trans_no"]), str(r["message_id"])) for r in rows]

    def close_applied(self, message_id: str) -> None:
        with self._tx() as db:
            db.execute(
                "UPDATE pushes SET outcome='close_applied' WHERE message_id=?", (message_id,)
            )

    # ------------------------------------------------------------ transactions

    def get(self, trans_no: str) -> TxRow | None:
        row = self._db.execute(
            "SELECT * FROM transactions WHERE trans_no=?", (trans_no,)
        ).fetchone()
        return None if row is None else tx_row(row)

    def open_transactions(self) -> list[TxRow]:
        """Non-final transactions in arrival order."""
        rows = self._db.execute("SELECT * FROM transactions WHERE final=0 ORDER BY seq").fetchall()
        return [tx_row(r) for r in rows]

    def recent(self, limit: int = 20) -> list[TxRow]:
        rows = self._db.execute(
            "SELECT * FROM transactions ORDER BY seq DESC LIMIT ?", (limit,)
        ).fetchall()
        return [tx_row(r) for r in rows]

    def set_phase(self, trans_no: str, phase: Phase, **fields: Any) -> bool:
        """Move a non-final transaction to a non-final phase (with masked card
        fields). Returns False, changing nothing, when ``phase_verdict`` refuses
        it (the transaction is final, or the move goes back)."""
        if phase.is_final:
            raise ValueError("use finish() for final phases")
        return self._update(trans_no, phase, final=False, fields=check_clean(fields))

    def finish(self, trans_no: str, phase: Phase, **fields: Any) -> bool:
        """Make a transaction final. Returns False if it already was (no change;
        another final phase is logged as a conflict)."""
        if not phase.is_final:
            raise ValueError(f"{phase} is not final")
        return self._update(trans_no, phase, final=True, fields=check_clean(fields))

    def _update(self, trans_no: str, phase: Phase, *, final: bool, fields: dict[str, Any]) -> bool:
        sets = {"phase": phase.value, "final": int(final), "updated_at": _now_ms(), **fields}
        assignments = ",".join(f"{k}=?" for k in sets)
        with self._tx() as db:
            current = db.execute(
                "SELECT phase, EXISTS (SELECT 1 FROM attempts WHERE trans_no=?) AS attempted "
                "FROM transactions WHERE trans_no=?",
                (trans_no, trans_no),
            ).fetchone()
            if current is None:
                raise JournalError(f"no transaction {trans_no}")
            held = Phase(current["phase"])
            verdict = phase_verdict(held, phase, attempted=bool(current["attempted"]))
            # A non-final phase again may bring fresher fields (the card read).
            if not (verdict is Verdict.MOVE or (verdict is Verdict.REPEAT and not held.is_final)):
                _log_refused(trans_no, held, phase, verdict)
                return False
            # Guarded by what was judged: a writer that got in between makes this a no-op.
            cur = db.execute(
                f"UPDATE transactions SET {assignments} "  # noqa: S608 - column names are ours
                "WHERE trans_no=? AND phase=? AND final=0",
                (*sets.values(), trans_no, held.value),
            )
            if cur.rowcount != 1:
                log.error("CONFLICT: %s changed while moving it to %s; refused", trans_no, phase)
                return False
            return True

    # ------------------------------------------------------------ attempts

    def new_attempt(self, trans_no: str, request_no: str, kind: str) -> None:
        """Store the idempotency key before the first send (and move to AUTHORIZING)."""
        now = _now_ms()
        with self._tx() as db:
            db.execute(
                "INSERT INTO attempts (request_no, trans_no, kind, created_at) VALUES (?,?,?,?)",
                (request_no, trans_no, kind, now),
            )
            cur = db.execute(
                "UPDATE transactions SET phase=?, updated_at=? "  # noqa: S608 - placeholders only
                f"WHERE trans_no=? AND final=0 AND phase IN ({','.join('?' * len(ATTEMPT_FROM))})",
                (Phase.AUTHORIZING.value, now, trans_no, *ATTEMPT_FROM),
            )
            if cur.rowcount != 1:
                log.error(
                    "CONFLICT: new payment attempt %s for %s, which is already past "
                    "authorizing; its phase is kept",
                    request_no,
                    trans_no,
                )

    def attempts(self, trans_no: str) -> list[AttemptRow]:
        rows = self._db.execute(
            "SELECT * FROM attempts WHERE trans_no=? ORDER BY created_at", (trans_no,)
        ).fetchall()
        return [AttemptRow(**dict(r)) for r in rows]

    def attempt_answered(self, request_no: str, status: int) -> None:
        with self._tx() as db:
            db.execute(
                "UPDATE attempts SET answered_at=?, answer_status=? WHERE request_no=?",
                (_now_ms(), status, request_no),
            )

    def reverse_requested(self, request_no: str) -> None:
        with self._tx() as db:
            db.execute(
                "UPDATE attempts SET reverse_requested_at=COALESCE(reverse_requested_at, ?) "
                "WHERE request_no=?",
                (_now_ms(), request_no),
            )

    def reverse_acked(self, request_no: str) -> None:
        with self._tx() as db:
            db.execute(
                "UPDATE attempts SET reverse_acked_at=? WHERE request_no=?",
                (_now_ms(), request_no),
            )

    # ------------------------------------------------------------ timeline

    def hop(self, trans_no: str, name: str, at_ms: int) -> None:
        """Record when a hop was reached (first time only). The engine's clock is
        monotonic within a run; a hop recorded after a restart whose wall clock
        is behind the payment's latest hop is raised to it, so a timeline never
        goes back.

        Timing data is not worth an fsync of its own: a hop is kept in memory
        and written with the next commit, which always follows (the outbox row
        or phase of the same step). A crash may lose the last hops, nothing
        else."""
        self._hops.append((trans_no, name, at_ms))

    def _write_hops(self, db: sqlite3.Connection) -> None:
        for trans_no, name, at_ms in self._hops:
            row = db.execute("SELECT MAX(at_ms) FROM hops WHERE trans_no=?", (trans_no,))
            latest = row.fetchone()[0]
            if latest is not None and at_ms < latest:
                log.info(
                    "hop %s of %s: clock behind by %d ms, recorded at the latest hop",
                    name,
                    trans_no,
                    latest - at_ms,
                )
                at_ms = latest
            db.execute("INSERT OR IGNORE INTO hops VALUES (?,?,?)", (trans_no, name, at_ms))
        self._hops.clear()

    def hops(self, trans_no: str) -> dict[str, int]:
        """The hops of ``trans_no``, the ones not yet written included."""
        rows = self._db.execute(
            "SELECT name, at_ms FROM hops WHERE trans_no=? ORDER BY at_ms, rowid", (trans_no,)
        ).fetchall()
        hops = {r["name"]: r["at_ms"] for r in rows}
        for tn, name, at_ms in self._hops:
            if tn == trans_no:
                hops.setdefault(name, max(at_ms, *hops.values()) if hops else at_ms)
        return hops

    # ------------------------------------------------------------ outbox

    def enqueue_event(
        self, kind: str, message_id: str, trans_no: str | None, reason: str | None = None
    ) -> int:
        reason = check_clean({"reason": reason})["reason"]
        with self._tx() as db:
            cur = db.execute(
                "INSERT INTO outbox (trans_no, kind, reason, message_id, created_at) "
                "VALUES (?,?,?,?,?)",
                (trans_no, kind, reason, message_id, _now_ms()),
            )
            assert cur.lastrowid is not None
            return cur.lastrowid

    def pending_events(self, limit: int = 100) -> list[OutboxRow]:
        rows = self._db.execute(
            "SELECT id, trans_no, kind, reason, message_id FROM outbox "
            "WHERE sent_at IS NULL ORDER BY id LIMIT ?",
            (limit,),
        ).fetchall()
        return [OutboxRow(**dict(r)) for r in rows]

    def event_sent(self, event_id: int) -> None:
        with self._tx() as db:
            db.execute("UPDATE outbox SET sent_at=? WHERE id=?", (_now_ms(), event_id))

    # ------------------------------------------------------------ housekeeping

    def prune(self, keep_days: int, now_ms: int | None = None) -> int:
        """Delete final transactions (and their rows) older than ``keep_days``.
        Non-final transactions are never pruned. Returns the number removed."""
        cutoff = (now_ms if now_ms is not None else _now_ms()) - keep_days * 86_400_000
        with self._tx() as db:
            old = [
                r[0]
                for r in db.execute(
                    "SELECT trans_no FROM transactions WHERE final=1 AND updated_at<?", (cutoff,)
                )
            ]
            for trans_no in old:
                db.execute("DELETE FROM attempts WHERE trans_no=?", (trans_no,))
                db.execute("DELETE FROM hops WHERE trans_no=?", (trans_no,))
                db.execute("DELETE FROM print_jobs WHERE trans_no=?", (trans_no,))
                db.execute(
                    "DELETE FROM outbox WHERE trans_no=? AND sent_at IS NOT NULL", (trans_no,)
                )
                db.execute("DELETE FROM transactions WHERE trans_no=?", (trans_no,))
            db.execute("DELETE FROM pushes WHERE received_at<?", (cutoff,))
        return len(old)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _log_refused(trans_no: str, held: Phase, refused: Phase, verdict: Verdict) -> None:
    if verdict is Verdict.REPEAT:
        return  # the same final phase again: nothing to say
    level = logging.ERROR if verdict is Verdict.CONFLICT else logging.WARNING
    log.log(
        level,
        "%s: transaction %s is %s; refusing to move it to %s",
        "CONFLICT" if verdict is Verdict.CONFLICT else "STALE",
        trans_no,
        held.value,
        refused.value,
    )
