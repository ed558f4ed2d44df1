"""States never regress in the sandbox store (issue 8, point 4): shuffled,
duplicated status moves from two writers on one real SQLite file, one result
notification per final status actually reached, and the UPDATE's own guard
against a move judged on a stale read."""

from __future__ import annotations

import itertools
import logging
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cloud.messages import TransStatus
from cloud.status_rules import FINAL_STATUSES, may_move
from sandbox.store import ALLOWED_MOVES, CORRECTIONS, Order, Store, can_move
from tests.log_records import log_records
from tests.sandbox.test_store import make_order

S = TransStatus
RANK = {S.PREORDER: 0, S.PROCESSING: 1, S.CLOSED: 2, S.COMPLETED: 2, S.CANCELLED: 2}


def test_moves_are_the_shared_rule_plus_named_corrections() -> None:
    for frm, to in itertools.product(S, S):
        if can_move(frm, to):
            assert may_move(frm, to) or (frm, to) in CORRECTIONS, (frm, to)
        if frm in (S.CLOSED, S.CANCELLED):
            assert not can_move(frm, to)  # final for good
    assert {(S.COMPLETED, S.CANCELLED), (S.PROCESSING, S.PREORDER)} == CORRECTIONS
    assert not can_move(S.PREORDER, S.COMPLETED)  # paid only through processing
    assert set(ALLOWED_MOVES) == set(S)


# ---------------------------------------------------------------- property

Move = tuple[S, int]  # (status asked for, writer 0 or 1)


@st.composite
def streams(draw: st.DrawFn) -> list[Move]:
    """What the sandbox's callers ask (pay, approve, decline, reverse, cancel,
    close, expire, restart), shuffled, some of it asked again."""
    base = draw(
        st.lists(st.tuples(st.sampled_from(list(S)), st.integers(0, 1)), min_size=1, max_size=8)
    )
    again = draw(st.lists(st.sampled_from(base), max_size=5))
    return draw(st.permutations(base + again))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(streams())
def test_status_never_regresses(
    tmp_path_factory: pytest.TempPathFactory, stream: list[Move]
) -> None:
    path = tmp_path_factory.mktemp("s") / "s.db"
    with Store(path) as one, Store(path) as two:
        writers = (one, two)
        make_order(one)
        seen = [S.PREORDER]
        with log_records("sandbox.store") as records:
            for n, (to, who) in enumerate(stream):
                before = seen[-1]
                order, moved = writers[who].move("T1", to, why=f"step {n}")
                assert moved == can_move(before, to)
                assert order.trans_status is (to if moved else before)
                seen.append(_status(writers[1 - who]))  # as the other writer sees it
        notified = [n.trans_status for n in one.due_notifications(10**15)]

    for before, after in itertools.pairwise(seen):
        if before in (S.CLOSED, S.CANCELLED):
            assert after is before  # final for good
        elif before is S.COMPLETED:
            assert after in (S.COMPLETED, S.CANCELLED)  # only a reversal or void
        elif after not in FINAL_STATUSES:  # non-final: forward, or the restart correction
            assert RANK[after] >= RANK[before] or (before, after) == (S.PROCESSING, S.PREORDER)
    # the first final status applied sticks, unless it was paid and then reversed
    reached = [s for s in dict.fromkeys(seen) if s in FINAL_STATUSES]
    assert reached in ([], [S.CLOSED], [S.CANCELLED], [S.COMPLETED], [S.COMPLETED, S.CANCELLED])
    if reached:
        assert seen[-1] is reached[-1]
    # one notification per final status reached, none for a refused one
    assert notified == [int(s) for s in reached]
    # each refused move logged loudly, naming the order
    refusals = [r for r in records if "STATUS REGRESSION REFUSED" in r.getMessage()]
    expected = [
        (before, to)
        for (to, _), before in zip(stream, seen[:-1], strict=True)
        if to is not before and not can_move(before, to)
    ]
    assert len(refusals) == len(expected)
    for record, (before, to) in zip(refusals, expected, strict=True):
        text = record.getMessage()
        assert record.levelno >= logging.WARNING
        assert f"order T1 is {int(before)} ({before.name})" in text
        assert f"ignored a move to {int(to)} ({to.name})" in text


def _status(store: Store) -> S:
    order = store.order("T1")
    assert order is not None
    return order.trans_status


# ---------------------------------------------------------------- the UPDATE's guard


def test_update_refuses_a_move_judged_on_a_stale_status(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    with Store(tmp_path / "s.db") as store:
        make_order(store)
        store.move("T1", S.PROCESSING, why="pay", request_no="R1")
        store.move("T1", S.COMPLETED, why="approved", auth_code="123456", now_ms=1000)
        paid = store.order("T1")
        assert paid is not None
        # A writer that read the order before it was paid: the rule allows
        # PROCESSING -> CLOSED, but the row is COMPLETED by now.
        real_order = store.order
        stale: Order = replace(paid, trans_status=S.PROCESSING, auth_code=None)
        monkeypatch.setattr(store, "order", lambda trans_no: stale)
        with caplog.at_level(logging.WARNING, logger="sandbox.store"):
            _, moved = store.move("T1", S.CLOSED, why="late decline", trans_error_code="05")
        monkeypatch.setattr(store, "order", real_order)
        assert not moved
        now = store.order("T1")
        assert now is not None
        assert (now.trans_status, now.auth_code, now.trans_error_code) == (
            S.COMPLETED,
            "123456",
            None,
        )
        assert [n.trans_status for n in store.due_notifications(10**15)] == [2]
        assert "STATUS REGRESSION REFUSED: order T1 is" in caplog.text
        assert "late decline (status changed meanwhile)" in caplog.text
