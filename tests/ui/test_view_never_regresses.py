"""States never regress on the checkout (issue 8, point 4): the view model fed
shuffled, duplicated agent events - including results that contradict an
earlier one - never shows an order back in progress or with another result
once its result was shown, and follows the agent's ``seq`` order only."""

from __future__ import annotations

import logging

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent import bridge_protocol as bp
from cloud.messages import Screen
from cloud.status_rules import Verdict
from tests.ui.conftest import ORDER
from ui.view import ORDER_SCREENS, CheckoutView, screen_verdict

ORDERS = [msgspec.structs.replace(ORDER, trans_no=f"TR{n}") for n in range(2)]
OUTCOMES: list[bp.Outcome] = ["approved", "declined", "cancelled", "closed", "expired", "error"]
HELLO = bp.HelloEvent(terminal=bp.TerminalInfo(sn="T0001"), seq=0)


@st.composite
def screen_events(draw: st.DrawFn) -> bp.ScreenEvent:
    kind = draw(st.sampled_from(["idle", "order", "result"]))
    if kind == "idle":
        return bp.ScreenEvent(screen=Screen.IDLE)
    order = draw(st.sampled_from(ORDERS))
    if kind == "order":
        return bp.ScreenEvent(screen=draw(st.sampled_from(sorted(ORDER_SCREENS))), order=order)
    outcome = draw(st.sampled_from(OUTCOMES))
    return bp.ScreenEvent(screen=Screen.RESULT, order=order, result=bp.ResultInfo(outcome=outcome))


@st.composite
def deliveries(draw: st.DrawFn) -> list[bp.ScreenEvent]:
    """What the agent sent, stamped seq 1..n, shuffled, some of it twice."""
    sent = draw(st.lists(screen_events(), min_size=1, max_size=10))
    stamped = [msgspec.structs.replace(e, seq=n) for n, e in enumerate(sent, start=1)]
    again = draw(st.lists(st.sampled_from(stamped), max_size=6))
    return draw(st.permutations(stamped + again))


def _shown(view: CheckoutView) -> tuple[str, str] | None:
    """(trans_no, what it shows for that order) or None when no order is shown."""
    s = view.screen
    if s is None or s.order is None:
        return None
    if s.screen is Screen.RESULT and s.result is not None:
        return s.order.trans_no, s.result.outcome
    return s.order.trans_no, str(s.screen)


@settings(max_examples=100, deadline=None)
@given(deliveries())
def test_shown_result_never_moves(stream: list[bp.ScreenEvent]) -> None:
    view = CheckoutView()
    view.apply(HELLO)
    results: dict[str, str] = {}  # the first result shown per order
    last_seq = 0
    for event in stream:
        view.apply(event)
        shown_seq = view.screen.seq if view.screen is not None else 0
        assert shown_seq >= last_seq  # only forward, in the agent's order
        last_seq = shown_seq
        shown = _shown(view)
        if shown is None:
            continue
        trans_no, what = shown
        if trans_no in results:
            assert what == results[trans_no]  # final for good
        elif what in OUTCOMES:
            results[trans_no] = what
    applied = sorted({e.seq for e in stream})
    assert view.last_seq == applied[-1]


def test_late_and_contradicting_screens_are_refused_loudly(
    caplog: pytest.LogCaptureFixture,
) -> None:
    order = ORDERS[0]
    view = CheckoutView()
    view.apply(HELLO)
    paid = bp.ScreenEvent(
        seq=3, screen=Screen.RESULT, order=order, result=bp.ResultInfo(outcome="approved")
    )
    view.apply(bp.ScreenEvent(seq=1, screen=Screen.WAITING_FOR_CARD, order=order))
    view.apply(paid)
    with caplog.at_level(logging.WARNING, logger="ui.view"):
        view.apply(bp.ScreenEvent(seq=2, screen=Screen.AUTHORIZING, order=order))  # late
        view.apply(bp.ScreenEvent(seq=4, screen=Screen.READING, order=order))
        view.apply(
            bp.ScreenEvent(
                seq=5, screen=Screen.RESULT, order=order, result=bp.ResultInfo(outcome="declined")
            )
        )
    assert (view.phase, view.result_title()) == ("result", "APPROVED")
    assert view.screen is paid
    assert "late ScreenEvent (seq 2 after 3) dropped" in caplog.text
    assert f"STALE: order {order.trans_no} was shown approved; refusing to show READING" in (
        caplog.text
    )
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert errors == [
        f"CONFLICT: order {order.trans_no} was shown approved; refusing to show declined"
    ]
    # the same result again is harmless; the next order is shown as usual
    view.apply(msgspec.structs.replace(paid, seq=6))
    view.apply(bp.ScreenEvent(seq=7, screen=Screen.WAITING_FOR_CARD, order=ORDERS[1]))
    assert view.phase == "order"


def test_hello_starts_afresh() -> None:
    """A new connection's snapshot is the agent's state now (a restarted agent
    numbers its events from 1 again)."""
    view = CheckoutView()
    view.apply(HELLO)
    view.apply(
        bp.ScreenEvent(
            seq=9, screen=Screen.RESULT, order=ORDERS[0], result=bp.ResultInfo(outcome="expired")
        )
    )
    view.apply(msgspec.structs.replace(HELLO, seq=1))
    view.apply(bp.ScreenEvent(seq=2, screen=Screen.IDLE))
    assert (view.phase, view.last_seq) == ("idle", 2)


def test_screen_verdict() -> None:
    order = ORDERS[0]
    result = bp.ScreenEvent(
        screen=Screen.RESULT, order=order, result=bp.ResultInfo(outcome="closed")
    )
    reading = bp.ScreenEvent(screen=Screen.READING, order=order)
    assert screen_verdict(None, reading) is Verdict.MOVE
    assert screen_verdict(None, result) is Verdict.MOVE
    assert screen_verdict("closed", result) is Verdict.REPEAT
    assert screen_verdict("closed", reading) is Verdict.STALE
    assert screen_verdict("approved", result) is Verdict.CONFLICT
    assert screen_verdict("closed", bp.ScreenEvent(screen=Screen.IDLE)) is Verdict.MOVE
