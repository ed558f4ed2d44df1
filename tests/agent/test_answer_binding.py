"""Gateway answers count only for the question they answer (part D), against
a simulated gateway and a man in the middle between it and the engine: a
replayed, swapped, rebound or stale answer is no answer - the outcome is
settled with detail and reverse, never taken as APPROVED."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from agent.journal import Phase
from agent.states import State
from cloud import envelope
from cloud import messages as m
from tests.agent.simpeers import SN, SimGateway, push_order
from tests.agent.test_engine import VISA, Rig, _make
from tests.waiting import async_until

SIXTEEN_MIN_MS = 16 * 60 * 1000


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    r = await _make(tmp_path / "journal.db", SimGateway())
    yield r
    await r.engine.stop()
    await r.engine.gateway.aclose()
    r.journal.close()


async def _pay(rig: Rig, trans_no: str) -> None:
    await rig.engine.handle_push(push_order(trans_no))
    await async_until(lambda: rig.nfc.armed is not None)
    rig.nfc.present(VISA)


async def _final(rig: Rig, trans_no: str) -> Phase:
    await async_until(lambda: (row := rig.journal.get(trans_no)) is not None and row.final)
    row = rig.journal.get(trans_no)
    assert row is not None
    return row.phase


def _outcomes(rig: Rig, trans_no: str) -> set[str]:
    return {
        s.result.outcome
        for s in rig.screens
        if s.result is not None and s.order is not None and s.order.trans_no == trans_no
    }


async def test_earlier_genuine_answer_replayed_for_a_new_sale_is_no_answer(
    rig: Rig, caplog: pytest.LogCaptureFixture
) -> None:
    await _pay(rig, "TR1")
    assert await _final(rig, "TR1") is Phase.APPROVED
    await async_until(lambda: rig.engine.state is State.IDLE)
    (completed,) = [a for meth, a in rig.gateway.sent if meth == m.Method.BANKCARD_CREATE]
    # The next create never reaches the gateway: the proxy answers it with
    # TR1's genuine, correctly signed "completed".
    rig.gateway.intercept_next.append(completed)
    with caplog.at_level(logging.WARNING, "agent.gateway"):
        await _pay(rig, "TR2")
        phase = await _final(rig, "TR2")
    assert phase is Phase.CANCELLED  # detail found it unpaid; reversed
    assert "TR2" not in rig.gateway.charges
    assert rig.gateway.status["TR2"] is m.TransStatus.CANCELLED
    assert _outcomes(rig, "TR2") == {"cancelled"}
    assert "paid" not in rig.sink.kinds("TR2")
    assert "answer names trans_no 'TR1', not the 'TR2' asked about" in caplog.text


@pytest.mark.parametrize(
    ("rebind", "why"),
    [
        ({"request_no": f"{SN}-TR0-1"}, "names request_no"),
        ({"trans_no": "TR0"}, "names trans_no"),
        ({"terminal_sn": "T0002"}, "names terminal_sn"),
        ({"timestamp": -SIXTEEN_MIN_MS}, "min off this clock"),
        ({"timestamp": +SIXTEEN_MIN_MS}, "min off this clock"),
        ({"timestamp": ""}, "no 13-digit timestamp"),
    ],
    ids=["other-request", "other-order", "other-terminal", "stale", "future", "unstamped"],
)
async def test_answer_for_another_question_is_settled_by_detail(
    rig: Rig, caplog: pytest.LogCaptureFixture, rebind: dict[str, str | int], why: str
) -> None:
    # The gateway charged; the answer that says so is bound to something else
    # (swapped between terminals, replayed, or held past the window). A
    # timestamp given as a number is an offset from the clock now.
    stamp = rebind.get("timestamp")
    if isinstance(stamp, int):
        rebind = {**rebind, "timestamp": str(envelope.now_ms() + stamp)}
    rig.gateway.rebind_next.append({k: str(v) for k, v in rebind.items()})
    with caplog.at_level(logging.WARNING, "agent.gateway"):
        await _pay(rig, "TR1")
        phase = await _final(rig, "TR1")
    assert why in caplog.text
    assert rig.gateway.calls.count(m.Method.BANKCARD_CREATE) == 1  # never paid again
    assert m.Method.TRANS_DETAIL in rig.gateway.calls
    # What the gateway has is what the terminal shows: paid, once.
    assert phase is Phase.APPROVED
    assert rig.gateway.charges == ["TR1"]
    assert _outcomes(rig, "TR1") == {"approved"}


async def test_unbound_detail_answers_keep_the_outcome_unknown_until_reversed(
    rig: Rig,
) -> None:
    # The create times out (nothing charged); every detail answer in the
    # window is rebound, then the reverse's first answer is too.
    rig.gateway.fail_next.append("timeout")
    rig.gateway.rebind_next.extend({"request_no": "other"} for _ in range(200))
    await _pay(rig, "TR1")
    await async_until(lambda: m.Method.TRANS_REVERSE in rig.gateway.calls)
    rig.gateway.rebind_next.clear()
    rig.gateway.rebind_next.append({"terminal_sn": "T0002"})  # the reverse's answer
    phase = await _final(rig, "TR1")
    assert phase is Phase.CANCELLED
    assert rig.gateway.calls.count(m.Method.TRANS_REVERSE) >= 2  # retried until bound
    assert rig.gateway.charges == []
    assert _outcomes(rig, "TR1") == {"cancelled"}


async def test_cancel_answer_bound_to_another_order_is_sent_again(rig: Rig) -> None:
    # The cashier cancels; the cancel's answer arrives bound to another order:
    # the outbox keeps the cancel and sends it again (the gateway's bound
    # refusal of the repeat, "already final", ends it).
    await rig.engine.handle_push(push_order("TR1"))
    await async_until(lambda: rig.nfc.armed is not None)
    rig.gateway.rebind_next.append({"trans_no": "TR9"})
    await rig.engine.handle_intent("cancel")
    await async_until(lambda: rig.gateway.calls.count(m.Method.TRANS_CANCEL) == 2)
    await async_until(lambda: rig.journal.pending_events() == [])
    assert rig.gateway.status["TR1"] is m.TransStatus.CANCELLED
    assert rig.gateway.calls.count(m.Method.TRANS_CANCEL) == 2
