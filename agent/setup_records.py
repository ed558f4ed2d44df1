"""The technician's records in the journal: the PIN lockout (one row, so
neither a restarted UI nor a restarted agent resets it) and a bounded log of
what was done in setup and when (never a PIN). Tables of migration 4
(``agent.journal_schema``), kept through ``Journal.write`` / ``Journal.read``."""

from __future__ import annotations

import time

from agent.journal import Journal
from agent.journal_schema import MAX_SETUP_LOG


def lockout(journal: Journal) -> tuple[int, int, int]:
    """(failures, lockouts, locked_until_ms) of the technician PIN."""
    rows = journal.read("SELECT failures, lockouts, locked_until_ms FROM technician WHERE id=1")
    return (0, 0, 0) if not rows else (int(rows[0][0]), int(rows[0][1]), int(rows[0][2]))


def set_lockout(journal: Journal, failures: int, lockouts: int, locked_until_ms: int) -> None:
    with journal.write() as db:
        db.execute(
            "INSERT INTO technician VALUES (1,?,?,?) ON CONFLICT (id) DO UPDATE SET "
            "failures=excluded.failures, lockouts=excluded.lockouts, "
            "locked_until_ms=excluded.locked_until_ms",
            (failures, lockouts, locked_until_ms),
        )


def log_setup(journal: Journal, action: str, outcome: str, at_ms: int | None = None) -> None:
    """Journal a setup action and its outcome (the newest ``MAX_SETUP_LOG`` kept)."""
    with journal.write() as db:
        db.execute(
            "INSERT INTO setup_log (at_ms, action, outcome) VALUES (?,?,?)",
            (at_ms or time.time_ns() // 1_000_000, action, outcome),
        )
        db.execute(
            "DELETE FROM setup_log WHERE id <= (SELECT MAX(id) FROM setup_log) - ?",
            (MAX_SETUP_LOG,),
        )


def setup_log(journal: Journal, limit: int = 50) -> list[tuple[int, str, str]]:
    """(at_ms, action, outcome), newest first."""
    rows = journal.read(
        "SELECT at_ms, action, outcome FROM setup_log ORDER BY id DESC LIMIT ?", (limit,)
    )
    return [(int(r[0]), str(r[1]), str(r[2])) for r in rows]
