"""States never regress (issue 8, point 4): the shared rule
(``cloud.status_rules``) and the POS client's ``wait_for_final`` fed shuffled,
duplicated mixes of verified notifications and ``order.query`` answers
through its real code path (a simulated gateway peer behind httpx's
MockTransport, a fake clock that never sleeps)."""

from __future__ import annotations

import asyncio
import itertools
import logging
import random
from collections import deque
from decimal import Decimal

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cloud.errors import WaitTimeout
from cloud.messages import OrderInfo, TransStatus
from cloud.status_rules import FINAL_STATUSES, REVERSAL, TRANS_STATUS, Ladder, Verdict, may_move
from tests.cloud.pos_peer import FakeClock, GatewayPeer
from tests.log_records import log_records

S = TransStatus
ORDER = {"terminal_sn": "T0001", "merchant_order_no": "A-1", "order_amount": Decimal("12.50")}
TRANS_NO = "TN000001"  # what a fresh GatewayPeer answers to the first create
RANK = {S.PREORDER: 0, S.PROCESSING: 1, S.CLOSED: 2, S.COMPLETED: 2, S.CANCELLED: 2}

# Signed once (RSA is slow): one answer per status, two notifications each.
_PEER = GatewayPeer()
INFOS = {status: _PEER.info("A-1", status, trans_no=TRANS_NO) for status in S}
NOTES = {
    (status, n): _PEER.notification(INFOS[status], notify_id=f"N{int(status)}-{n}")
    for status in S
    for n in range(2)
}


# ---------------------------------------------------------------- the rule


def test_trans_status_rule_table() -> None:
    for held, new in itertools.product(S, S):
        verdict = TRANS_STATUS.judge(held, new)
        if held == new:
            assert verdict is Verdict.REPEAT
        elif held in FINAL_STATUSES:
            expected = Verdict.CONFLICT if new in FINAL_STATUSES else Verdict.STALE
            assert verdict is expected, (held, new)
        else:
            assert (verdict is Verdict.MOVE) == (RANK[new] > RANK[held]), (held, new)
        assert may_move(held, new) == (verdict is Verdict.MOVE)
    assert all(TRANS_STATUS.judge(None, s) is Verdict.MOVE for s in S)


def test_ladder_steps_share_and_refuse_unknown() -> None:
    ladder: Ladder[str] = Ladder(
        steps=(frozenset({"a", "b"}), frozenset({"c"})), finals=frozenset({"x"})
    )
    assert ladder.judge("b", "a") is Verdict.MOVE  # one step: either may follow
    assert ladder.judge("c", "a") is Verdict.STALE
    with pytest.raises(ValueError, match="not on this ladder"):
        ladder.judge("a", "zz")
    with pytest.raises(ValueError, match="one step"):
        Ladder(steps=(frozenset({"a"}),), finals=frozenset({"a"}))


# ---------------------------------------------------------------- wait_for_final

Item = tuple[str, S, int]  # ("notify" | "query", status, which of two notify_ids)

items = st.tuples(st.sampled_from(["notify", "query"]), st.sampled_from(list(S)), st.integers(0, 1))


@st.composite
def streams(draw: st.DrawFn) -> list[Item]:
    """A shuffled stream of reports with some of them delivered again."""
    base = draw(st.lists(items, min_size=1, max_size=7))
    again = draw(st.lists(st.sampled_from(base), max_size=5))
    return draw(st.permutations(base + again))


async def _play(stream: list[Item]) -> tuple[OrderInfo | WaitTimeout, list[S], OrderInfo]:
    """Deliver ``stream`` in its order: before each poll, the notifications that
    come before the next query answer; that answer to the poll. What is left
    when ``wait_for_final`` returns arrives late, in the same order.
    Returns (what the wait gave, the statuses ``on_update`` saw, what the
    client holds at the end)."""
    peer = GatewayPeer()
    clock = FakeClock()
    pending = deque(stream)
    shown: list[S] = []
    async with peer.client(clock=clock, rng=random.Random(0)) as client:
        created = await client.push_order(**ORDER)
        assert created.trans_no == TRANS_NO

        def deliver(_seconds: float) -> None:
            while pending and pending[0][0] == "notify":
                _, status, n = pending.popleft()
                client.accept_notification(NOTES[(status, n)])
            if pending and not peer.query_script:
                peer.query_script.append(INFOS[pending.popleft()[1]])

        clock.on_sleep = deliver
        outcome: OrderInfo | WaitTimeout
        try:
            outcome = await client.wait_for_final(
                "A-1", 100, on_update=lambda i: shown.append(i.trans_status)
            )
        except WaitTimeout as exc:
            outcome = exc
        clock.on_sleep = None
        if peer.query_script:  # scripted for a poll the wait no longer made
            await client.query_order("A-1")
        for kind, status, n in pending:
            if kind == "notify":
                client.accept_notification(NOTES[(status, n)])
            else:
                peer.query_script.append(INFOS[status])
                await client.query_order("A-1")
        known = client.known_order("A-1")
        assert known is not None
        if known.trans_status in FINAL_STATUSES:
            again = await client.wait_for_final("A-1", 1)
            assert again.trans_status is known.trans_status
    return outcome, shown, known


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(streams())
def test_wait_for_final_keeps_the_first_final_status_or_its_reversal(stream: list[Item]) -> None:
    with log_records("cloud.pos") as records:
        outcome, shown, known = asyncio.run(_play(stream))
    finals = [status for _, status, _ in stream if status in FINAL_STATUSES]
    # non-final statuses only move forward; after a final one, only a reversal
    assert [RANK[s] for s in shown] == sorted(RANK[s] for s in shown)
    shown_finals = [s for s in shown if s in FINAL_STATUSES]
    assert shown_finals in ([], shown_finals[:1], list(REVERSAL))
    if finals:
        first = finals[0]
        # the first final status sticks, but a paid order may be reversed after it
        kept = REVERSAL[1] if first is REVERSAL[0] and REVERSAL[1] in finals else first
        assert isinstance(outcome, OrderInfo)
        assert outcome.trans_status in (first, kept)
        assert known.trans_status is kept  # however many late reports followed
        assert shown[-1] in (first, kept)  # on_update ends with the wait
        conflicts = [r for r in records if "CONFLICT" in r.getMessage()]
        refused = {s for s in finals if s not in (first, kept)}
        assert {r.levelno for r in conflicts} <= {logging.ERROR}
        for status in refused:  # each other final status is named, beside the one kept
            assert any(
                f"says {status.name}" in r.getMessage()
                and (
                    f"keeping {first.name}" in r.getMessage()
                    or f"keeping {kept.name}" in r.getMessage()
                )
                for r in conflicts
            ), status
    else:
        assert isinstance(outcome, WaitTimeout)
        furthest = S.PROCESSING if S.PROCESSING in [s for _, s, _ in stream] else S.PREORDER
        assert outcome.last is not None
        assert outcome.last.trans_status is furthest
        assert known.trans_status is furthest


async def test_late_preorder_answer_does_not_take_processing_back() -> None:
    peer = GatewayPeer()
    async with peer.client(clock=FakeClock(), rng=random.Random(0)) as client:
        await client.push_order(**ORDER)
        peer.query_script.extend([INFOS[S.PROCESSING], INFOS[S.PREORDER]])
        assert (await client.query_order("A-1")).trans_status is S.PROCESSING
        late = await client.query_order("A-1")
        assert late.trans_status is S.PREORDER  # the answer itself, as the gateway gave it
        known = client.known_order("A-1")
        assert known is not None
        assert known.trans_status is S.PROCESSING
