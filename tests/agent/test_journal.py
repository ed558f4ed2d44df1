"""The journal: durability settings, dedupe, no regress, pruning, no card data."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.journal import AUTOCHECKPOINT_PAGES, Journal, JournalError, OrderRecord, Phase
from agent.journal_schema import MIGRATIONS
from agent.phases import FINAL_PHASES


def _order(trans_no: str = "TR1", **over: Any) -> OrderRecord:
    base: dict[str, Any] = {
        "trans_no": trans_no,
        "merchant_no": "M0001",
        "merchant_order_no": "1234567890123456",  # long digit order numbers are legitimate
        "trans_type": 1,
        "orig_trans_no": None,
        "currency": "QAR",
        "amount": Decimal("12.50"),
        "tip_amount": Decimal("1.00"),
        "description": "coffee",
        "pay_scenario": None,
        "confirm": False,
        "expires_at": 1,
        "queue_mode": "FIFO",
    }
    base.update(over)
    return OrderRecord(**base)


@pytest.fixture
def journal(tmp_path: Path) -> Iterator[Journal]:
    j = Journal(tmp_path / "j.db")
    yield j
    j.close()


def test_durability_pragmas(journal: Journal) -> None:
    db = sqlite3.connect(journal.path)
    try:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        db.close()
    assert journal._db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    assert journal.schema_version == len(MIGRATIONS)


def test_outbox_drain_reads_only_unsent_events(journal: Journal) -> None:
    """Sent events stay until pruned: the drain must not scan them."""
    plan = journal._db.execute(
        "EXPLAIN QUERY PLAN SELECT id FROM outbox WHERE sent_at IS NULL ORDER BY id LIMIT 10"
    ).fetchall()
    assert any("outbox_unsent" in row["detail"] for row in plan), [tuple(r) for r in plan]


def test_schema_1_journal_is_migrated(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    db = sqlite3.connect(path)
    db.executescript(MIGRATIONS[0] + ";PRAGMA user_version=1;")
    db.close()
    journal = Journal(path)
    try:
        assert journal.schema_version == len(MIGRATIONS)
    finally:
        journal.close()


def test_newer_schema_refused(tmp_path: Path) -> None:
    path = tmp_path / "j.db"
    Journal(path).close()
    db = sqlite3.connect(path)
    db.execute("PRAGMA user_version=99")
    db.close()
    with pytest.raises(JournalError, match="newer than this agent"):
        Journal(path)


def test_order_recorded_once_and_amounts_exact(journal: Journal) -> None:
    assert journal.record_order("m1", _order())
    assert not journal.record_order("m1", _order())
    assert not journal.record_order("m2", _order())  # same trans_no, new message
    assert journal.seen_push("m1")
    assert journal.seen_push("m2")
    row = journal.get("TR1")
    assert row is not None
    assert row.amount == Decimal("12.50")
    assert row.trans_amount == Decimal("13.50")
    assert row.phase is Phase.OFFERED


def test_final_never_regresses(journal: Journal) -> None:
    journal.record_order("m1", _order())
    assert journal.finish("TR1", Phase.APPROVED, auth_code="123456")
    assert not journal.finish("TR1", Phase.CANCELLED)
    with pytest.raises(ValueError, match="final"):
        journal.set_phase("TR1", Phase.APPROVED)
    journal.set_phase("TR1", Phase.AWAITING_PAYMENT)  # ignored for a final row
    row = journal.get("TR1")
    assert row is not None
    assert row.phase is Phase.APPROVED
    assert row.final


def test_card_data_refused_in_card_fields_masked_in_reasons(journal: Journal) -> None:
    journal.record_order("m1", _order())
    with pytest.raises(JournalError, match="card data"):
        journal.set_phase("TR1", Phase.AUTHORIZING, masked_pan="4761739001010010")
    journal.set_phase("TR1", Phase.AUTHORIZING, masked_pan="476173******0010")
    # A gateway's decline message is text from outside: kept, its digits masked.
    assert journal.finish("TR1", Phase.DECLINED, reason="card 4761739001010010 declined")
    row = journal.get("TR1")
    assert row is not None
    assert row.reason == "card 476173******0010 declined"
    journal.enqueue_event("failed", "m1", "TR1", "card 5413330089010434567 declined")
    (event,) = journal.pending_events()
    assert event.reason == "card 541333*********4567 declined"


def test_attempt_and_reverse_bookkeeping(journal: Journal) -> None:
    journal.record_order("m1", _order())
    journal.new_attempt("TR1", "T-TR1-1", "card")
    with pytest.raises(JournalError):
        journal.new_attempt("TR1", "T-TR1-1", "card")  # a request_no is used once
    journal.reverse_requested("T-TR1-1")
    journal.reverse_acked("T-TR1-1")
    (attempt,) = journal.attempts("TR1")
    assert attempt.reverse_requested_at is not None
    assert attempt.reverse_acked_at is not None
    row = journal.get("TR1")
    assert row is not None
    assert row.phase is Phase.AUTHORIZING


def test_outbox_and_hops(journal: Journal) -> None:
    journal.record_order("m1", _order())
    journal.hop("TR1", "push_received", 10)
    journal.hop("TR1", "journaled", 12)
    journal.hop("TR1", "journaled", 99)  # first time wins
    assert journal.hops("TR1") == {"push_received": 10, "journaled": 12}
    journal.hop("TR1", "answered", 7)  # after a restart with the clock behind
    assert journal.hops("TR1") == {"push_received": 10, "journaled": 12, "answered": 12}
    first = journal.enqueue_event("received", "m1", "TR1")
    journal.enqueue_event("paid", "m1", "TR1")
    assert [e.kind for e in journal.pending_events()] == ["received", "paid"]
    journal.event_sent(first)
    assert [e.kind for e in journal.pending_events()] == ["paid"]


def test_prune_keeps_open_transactions(journal: Journal) -> None:
    journal.record_order("m1", _order("OLD"))
    journal.record_order("m2", _order("OPEN"))
    journal.finish("OLD", Phase.APPROVED)
    now = 10**13
    assert journal.prune(keep_days=1, now_ms=now) == 1
    assert journal.get("OLD") is None
    assert journal.get("OPEN") is not None


def test_survives_reopen(tmp_path: Path) -> None:
    path = tmp_path / "j.db"
    j = Journal(path)
    j.record_order("m1", _order())
    j.new_attempt("TR1", "T-TR1-1", "card")
    j.close()
    j2 = Journal(path)
    try:
        assert [t.trans_no for t in j2.open_transactions()] == ["TR1"]
        assert j2.attempts("TR1")[0].request_no == "T-TR1-1"
    finally:
        j2.close()


phases = st.sampled_from(list(Phase))


@given(st.lists(phases, min_size=1, max_size=12))
@settings(max_examples=150, deadline=None)
def test_property_first_final_wins(
    tmp_path_factory: pytest.TempPathFactory, seq: list[Phase]
) -> None:
    """Any shuffled, duplicated stream of phase updates ends in the first final one."""
    j = Journal(tmp_path_factory.mktemp("p") / "j.db")
    try:
        j.record_order("m1", _order())
        first_final = next((p for p in seq if p in FINAL_PHASES), None)
        for phase in seq:
            if phase.is_final:
                j.finish("TR1", phase)
            else:
                j.set_phase("TR1", phase)
        row = j.get("TR1")
        assert row is not None
        if first_final is None:
            assert not row.final
        else:
            assert row.final
            assert row.phase is first_final
    finally:
        j.close()


def test_batch_is_one_commit_or_nothing(journal: Journal) -> None:
    """``batch`` makes a push's rows durable together: a failure inside leaves none."""

    def push_then_power_cut() -> None:
        with journal.batch():
            assert journal.record_order("m1", _order("TR1"))
            journal.enqueue_event("received", "m1", "TR1")
            raise RuntimeError("power cut")

    with pytest.raises(RuntimeError):
        push_then_power_cut()
    assert journal.get("TR1") is None
    assert journal.pending_events() == []
    with journal.batch():
        assert journal.record_order("m1", _order("TR1"))
        journal.enqueue_event("received", "m1", "TR1")
    other = sqlite3.connect(journal.path)  # what another process (journal --show) sees
    try:
        assert other.execute("SELECT COUNT(*) FROM outbox").fetchone()[0] == 1
    finally:
        other.close()


def test_hops_ride_with_the_next_commit(journal: Journal) -> None:
    """A hop costs no fsync of its own: it is written with the next commit, and
    ``hops`` shows it before that."""
    journal.record_order("m1", _order("TR1"))

    def on_disk() -> int:
        other = sqlite3.connect(journal.path)
        try:
            return int(other.execute("SELECT COUNT(*) FROM hops").fetchone()[0])
        finally:
            other.close()

    journal.hop("TR1", "shown", 1000)
    assert journal.hops("TR1") == {"shown": 1000}
    assert on_disk() == 0
    journal.set_phase("TR1", Phase.OFFERED)
    assert on_disk() == 1
    journal.hop("TR1", "card_presented", 1500)
    journal.close()  # written on the way out
    reopened = Journal(journal.path)
    try:
        assert reopened.hops("TR1") == {"shown": 1000, "card_presented": 1500}
    finally:
        reopened.close()


class _SyncSpy:
    """Records the files ``os.fdatasync`` and ``os.fsync`` were called on."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls: list[tuple[str, str]] = []
        for name in ("fdatasync", "fsync"):
            real = getattr(os, name)
            monkeypatch.setattr(os, name, self._spy(name, real))

    def _spy(self, name: str, real: Callable[[int], None]) -> Callable[[int], None]:
        def call(fd: int) -> None:
            self.calls.append((name, os.readlink(f"/proc/self/fd/{fd}")))
            real(fd)

        return call


def test_deferred_sync_commit_is_written_then_fsynced_by_sync(
    journal: Journal, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A push's commit reaches the OS at once (another process reads it) and
    is fdatasynced by ``sync()``: the WAL, plus its directory the first time;
    the connection keeps ``synchronous=FULL`` for every other write."""
    spy = _SyncSpy(monkeypatch)
    with journal.batch(deferred_sync=True):
        assert journal.record_order("m1", _order("TR1"))
        journal.enqueue_event("received", "m1", "TR1")
    assert journal.unsynced
    assert journal._db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL again
    other = sqlite3.connect(journal.path)
    try:
        assert other.execute("SELECT COUNT(*) FROM outbox").fetchone()[0] == 1
    finally:
        other.close()
    assert spy.calls == []
    journal.sync()
    wal, directory = f"{journal.path}-wal", str(journal.path.parent)
    assert spy.calls == [("fdatasync", wal), ("fsync", directory)]
    assert not journal.unsynced
    journal.sync()  # nothing left to sync: no system call
    with journal.batch(deferred_sync=True):
        journal.record_order("m2", _order("TR2"))
    journal.sync()  # same WAL file: its directory entry is on disk already
    assert spy.calls[2:] == [("fdatasync", wal)]


def test_full_commit_covers_earlier_deferred_ones(journal: Journal) -> None:
    with journal.batch(deferred_sync=True):
        journal.record_order("m1", _order("TR1"))
    assert journal.unsynced
    journal.set_phase("TR1", Phase.OFFERED)  # FULL: fsyncs the WAL, earlier frames too
    assert not journal.unsynced


def test_deferred_sync_commit_never_checkpoints(journal: Journal) -> None:
    """A push's commit is on the way to the screen: SQLite's automatic
    checkpoint (page copies and two syncs inside the COMMIT) waits for the
    next FULL commit, however far past ``AUTOCHECKPOINT_PAGES`` the WAL is."""
    db_size = journal.path.stat().st_size
    for n in range(400):  # a few WAL pages each: well past the threshold
        with journal.batch(deferred_sync=True):
            journal.record_order(f"m{n}", _order(f"TR{n}", description="x" * 200))
            journal.enqueue_event("received", f"m{n}", f"TR{n}")
    page = journal._db.execute("PRAGMA page_size").fetchone()[0]
    wal = journal.path.with_name("j.db-wal").stat().st_size
    assert (wal - 32) // (page + 24) > AUTOCHECKPOINT_PAGES  # WAL header, frames
    assert journal.path.stat().st_size == db_size  # nothing copied into the database
    pragma = journal._db.execute("PRAGMA wal_autocheckpoint").fetchone()[0]
    assert pragma == AUTOCHECKPOINT_PAGES  # restored for every other commit
    journal.set_phase("TR0", Phase.OFFERED)  # FULL: this commit checkpoints
    assert journal.path.stat().st_size > db_size
    assert not journal.unsynced


def test_deferred_sync_commit_survives_the_process_being_killed(tmp_path: Path) -> None:
    """Written to the OS means safe against the agent's own crash: SIGKILL
    right after the commit, before any sync, loses nothing."""
    path = tmp_path / "j.db"
    script = (
        "import os, signal, sys\n"
        "from decimal import Decimal\n"
        "from agent.journal import Journal, OrderRecord\n"
        "j = Journal(sys.argv[1])\n"
        "with j.batch(deferred_sync=True):\n"
        f"    j.record_order('m1', {_order('TR1')!r})\n"
        "    j.enqueue_event('received', 'm1', 'TR1')\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    done = subprocess.run([sys.executable, "-c", script, str(path)], check=False, timeout=30)
    assert done.returncode == -signal.SIGKILL
    j = Journal(path)
    try:
        assert [t.trans_no for t in j.open_transactions()] == ["TR1"]
        assert [e.kind for e in j.pending_events()] == ["received"]
    finally:
        j.close()


def test_sync_failure_is_a_journal_error(journal: Journal, monkeypatch: pytest.MonkeyPatch) -> None:
    with journal.batch(deferred_sync=True):
        journal.record_order("m1", _order("TR1"))

    def failing(fd: int) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "fdatasync", failing)
    with pytest.raises(JournalError, match="sync failed"):
        journal.sync()
    assert journal.unsynced  # not claimed durable: the next sync tries again
