"""States never regress in the agent's journal (issue 8, point 4): shuffled,
duplicated phase updates from two writers on one real SQLite file, the
UPDATE's own guard against a decision made on a stale read, and the engine
showing the journaled outcome when a refused one reaches it."""

from __future__ import annotations

import itertools
import logging
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.journal import Journal, Phase
from agent.phases import FINAL_PHASES, phase_verdict
from cloud import messages as m
from cloud.status_rules import Verdict
from tests.agent.simpeers import SimGateway, push_order
from tests.agent.test_engine import VISA, _make
from tests.agent.test_journal import _order
from tests.log_records import log_records
from tests.waiting import async_until

WAITING = (Phase.OFFERED, Phase.AWAITING_PAYMENT)
RANK = {
    Phase.OFFERED: 0,
    Phase.AWAITING_PAYMENT: 1,
    Phase.AUTHORIZING: 2,
    Phase.RESOLVING: 3,
    **{p: 4 for p in FINAL_PHASES},
}


# ---------------------------------------------------------------- the rule


def test_phase_rule_table() -> None:
    for held, new, attempted in itertools.product(Phase, Phase, (False, True)):
        verdict = phase_verdict(held, new, attempted=attempted)
        if held.is_final:
            assert verdict is not Verdict.MOVE, (held, new, attempted)
        elif new == held:
            assert verdict is Verdict.REPEAT
        elif new in WAITING and not attempted:
            assert verdict is Verdict.MOVE  # a restart offers an unpaid order again
        else:
            assert (verdict is Verdict.MOVE) == (RANK[new] > RANK[held]), (held, new, attempted)
    assert phase_verdict(Phase.APPROVED, Phase.DECLINED, attempted=True) is Verdict.CONFLICT
    assert phase_verdict(Phase.APPROVED, Phase.OFFERED, attempted=False) is Verdict.STALE


# ---------------------------------------------------------------- property

# ("phase", non-final) | ("finish", final) | ("attempt", -), each by writer 0 or 1
Op = tuple[str, Phase, int]
ops = st.one_of(
    st.tuples(
        st.just("phase"), st.sampled_from([p for p in Phase if not p.is_final]), st.integers(0, 1)
    ),
    st.tuples(st.just("finish"), st.sampled_from(sorted(FINAL_PHASES)), st.integers(0, 1)),
    st.tuples(st.just("attempt"), st.just(Phase.AUTHORIZING), st.integers(0, 1)),
)


@st.composite
def streams(draw: st.DrawFn) -> list[Op]:
    base = draw(st.lists(ops, min_size=1, max_size=8))
    again = draw(st.lists(st.sampled_from(base), max_size=5))
    return draw(st.permutations(base + again))


def _read(path: Path) -> tuple[Phase, bool, bool]:
    """(phase, final, attempted) as a third connection sees it."""
    with sqlite3.connect(path) as db:
        phase, final = db.execute("SELECT phase, final FROM transactions").fetchone()
        attempted = db.execute("SELECT COUNT(*) FROM attempts").fetchone()[0] > 0
    db.close()
    return Phase(phase), bool(final), attempted


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(streams())
def test_phases_never_regress(tmp_path_factory: pytest.TempPathFactory, stream: list[Op]) -> None:
    path = tmp_path_factory.mktemp("j") / "j.db"
    writers = (Journal(path), Journal(path))
    try:
        with log_records("agent.journal") as records:
            writers[0].record_order("m1", _order())
            seen = [_read(path)]
            first_final: Phase | None = None
            for n, (kind, phase, who) in enumerate(stream):
                journal = writers[who]
                if kind == "attempt":
                    journal.new_attempt("TR1", f"R-{n}", "card")
                elif kind == "phase":
                    journal.set_phase("TR1", phase)
                else:
                    moved = journal.finish("TR1", phase)
                    assert moved == (first_final is None)
                    first_final = first_final or phase
                seen.append(_read(path))
    finally:
        for journal in writers:
            journal.close()

    for (before, was_final, _), (after, is_final, attempted) in itertools.pairwise(seen):
        if was_final:  # once final, nothing changes
            assert (after, is_final) == (before, True)
        elif not is_final:  # non-final: forward, or an unpaid order offered again
            assert RANK[after] >= RANK[before] or (after in WAITING and not attempted)
        if attempted and not is_final:  # a payment may have been sent: never wait for a card
            assert after not in WAITING
    final_phase, final, _ = seen[-1]
    assert final == (first_final is not None)
    if first_final is not None:
        assert final_phase is first_final
        refused = {p for kind, p, _ in stream if kind == "finish" and p is not first_final}
        conflicts = [r for r in records if r.getMessage().startswith("CONFLICT")]
        for phase in refused:  # logged loudly: the order, the phase kept, the one refused
            assert any(
                r.levelno == logging.ERROR
                and f"TR1 is {first_final.value}; refusing to move it to {phase.value}"
                in r.getMessage()
                for r in conflicts
            ), phase


# ---------------------------------------------------------------- the UPDATE's guard


class _StaleRead:
    """A connection whose phase read is stale: what a writer would see if
    another one committed between its read and its write."""

    def __init__(self, db: sqlite3.Connection, phase: Phase) -> None:
        self._db = db
        self._phase = phase

    def execute(self, sql: str, params: Any = ()) -> Any:
        if sql.startswith("SELECT phase, EXISTS"):
            return self._db.execute("SELECT ? AS phase, 0 AS attempted", (self._phase.value,))
        return self._db.execute(sql, params)


def test_update_refuses_a_move_judged_on_a_stale_phase(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "j.db"
    journal = Journal(path)
    try:
        journal.record_order("m1", _order())
        assert journal.finish("TR1", Phase.APPROVED, auth_code="123456")
        # The writer believes the order still waits for a card: the rule allows
        # AWAITING_PAYMENT -> DECLINED, but the row is APPROVED by now.
        monkeypatch.setattr(journal, "_db", _StaleRead(journal._db, Phase.AWAITING_PAYMENT))
        with caplog.at_level(logging.ERROR, logger="agent.journal"):
            assert not journal.finish("TR1", Phase.DECLINED, reason="late decline")
            assert not journal.set_phase("TR1", Phase.RESOLVING)
        monkeypatch.undo()
        row = journal.get("TR1")
        assert row is not None
        assert (row.phase, row.final, row.auth_code, row.reason) == (
            Phase.APPROVED,
            True,
            "123456",
            None,
        )
        assert "CONFLICT: TR1 changed while moving it to DECLINED" in caplog.text
    finally:
        journal.close()


def test_new_attempt_never_moves_a_final_or_resolving_phase(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    journal = Journal(tmp_path / "j.db")
    try:
        journal.record_order("m1", _order("A"))
        journal.record_order("m2", _order("B"))
        journal.new_attempt("A", "R-A-1", "card")
        assert journal.set_phase("A", Phase.RESOLVING)
        assert journal.finish("B", Phase.CANCELLED)
        with caplog.at_level(logging.ERROR, logger="agent.journal"):
            journal.new_attempt("A", "R-A-2", "card")
            journal.new_attempt("B", "R-B-1", "card")
        phases = [(r.phase, r.final) for r in (journal.get("A"), journal.get("B")) if r]
        assert phases == [(Phase.RESOLVING, False), (Phase.CANCELLED, True)]
        assert "new payment attempt R-B-1 for B" in caplog.text
        # a paid-for order is never offered again
        assert not journal.set_phase("A", Phase.OFFERED)
        assert "STALE: transaction A is RESOLVING; refusing to move it to OFFERED" in caplog.text
    finally:
        journal.close()


# ---------------------------------------------------------------- the engine


async def test_engine_shows_the_journaled_outcome_not_a_refused_one(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    rig = await _make(tmp_path / "journal.db", SimGateway())
    try:
        await rig.engine.handle_push(push_order("TR1"))
        await async_until(lambda: rig.nfc.armed is not None)
        # Another writer made it final while the card was awaited.
        assert rig.journal.finish("TR1", Phase.CLOSED, reason="Closed by the POS")
        with caplog.at_level(logging.ERROR):
            rig.nfc.present(VISA)
            await async_until(lambda: any(s.screen is m.Screen.RESULT for s in rig.screens))
        result = next(s for s in rig.screens if s.screen is m.Screen.RESULT).result
        assert result is not None
        assert (result.outcome, result.reason) == ("closed", "Closed by the POS")
        row = rig.journal.get("TR1")
        assert row is not None
        assert row.phase is Phase.CLOSED
        assert "paid" not in rig.sink.kinds("TR1")
        assert "paid" not in [e.kind for e in rig.journal.pending_events()]
        assert "CONFLICT: TR1 is final CLOSED; showing that, not APPROVED" in caplog.text
    finally:
        await rig.engine.stop()
        await rig.engine.gateway.aclose()
        rig.journal.close()
