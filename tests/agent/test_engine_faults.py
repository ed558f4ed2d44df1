"""No fault leaves an order or the terminal stuck (issue 14): an exception in
any state callback ends the order as recovery would - resolved by detail and
reverse if a payment may have left, else cancelled at the gateway - and the
next order is paid; waits have deadlines; the cashier can cancel while a
payment is out; short PANs and card numbers in decline messages are masked,
never refused; a journaled close survives a crash; a stuck worker stops the
watchdog. Engine + real journal + simulated peers."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from agent import faults
from agent.bridge_replies import ActionReply
from agent.engine import Engine
from agent.inbox import OfferNext
from agent.journal import Journal, Phase
from agent.states import State
from cloud import messages as m
from drivers.base import CardRead, EntryMode
from tests.agent.simpeers import SimGateway, push_close, push_order
from tests.agent.test_engine import VISA, Rig, _make
from tests.waiting import async_until

# The gateway's status that must go with each final phase.
AGREES = {
    Phase.APPROVED: m.TransStatus.COMPLETED,
    Phase.CANCELLED: m.TransStatus.CANCELLED,
    Phase.DECLINED: m.TransStatus.CLOSED,
}


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    r = await _make(tmp_path / "journal.db", SimGateway())
    yield r
    await r.engine.stop()
    await r.engine.gateway.aclose()
    r.journal.close()


async def _final(rig: Rig, trans_no: str) -> Phase:
    await async_until(lambda: (row := rig.journal.get(trans_no)) is not None and row.final)
    row = rig.journal.get(trans_no)
    assert row is not None
    return row.phase


async def _pay(rig: Rig, trans_no: str, card: CardRead = VISA) -> Phase:
    await rig.engine.handle_push(push_order(trans_no))
    await async_until(lambda: rig.nfc.armed is not None and rig.engine.current is not None)
    rig.nfc.present(card)
    return await _final(rig, trans_no)


async def _idle(rig: Rig) -> None:
    await async_until(lambda: rig.engine.current is None and rig.engine.state is State.IDLE)


async def _gateway_final(rig: Rig, trans_no: str) -> m.TransStatus:
    await async_until(lambda: rig.gateway.status.get(trans_no, m.TransStatus.PREORDER).is_final)
    return rig.gateway.status[trans_no]


@pytest.mark.parametrize(
    ("step", "ends"),
    [
        ("offered", Phase.CANCELLED),
        ("awaiting_payment", Phase.CANCELLED),
        ("reading", Phase.CANCELLED),
        ("payment_journaled", Phase.CANCELLED),  # journaled, never sent: reversed
        ("answered", Phase.APPROVED),  # paid at the gateway: detail finds it
        ("resolving", Phase.CANCELLED),  # a timed-out create, then the fault
        ("final", Phase.APPROVED),
    ],
)
async def test_an_exception_in_any_state_ends_the_order_and_the_next_is_paid(
    rig: Rig, monkeypatch: pytest.MonkeyPatch, step: str, ends: Phase
) -> None:
    monkeypatch.setenv("SADAD_AGENT_FAIL_AT", step)
    monkeypatch.setattr(faults, "_FAILED_AT", set())
    if step == "resolving":
        rig.gateway.fail_next.append("timeout")  # no charge, outcome unknown
    await rig.engine.handle_push(push_order("TR1"))
    if step not in ("offered", "awaiting_payment"):
        await async_until(lambda: rig.nfc.armed is not None)
        rig.nfc.present(VISA)
    assert await _final(rig, "TR1") is ends
    assert await _gateway_final(rig, "TR1") is AGREES[ends]  # the gateway agrees
    assert rig.gateway.charges.count("TR1") == (1 if ends is Phase.APPROVED else 0)
    assert {step} == faults._FAILED_AT  # it did fire
    await async_until(lambda: rig.journal.pending_events() == [])  # reported
    await _idle(rig)
    rig.nfc.armed = None
    assert await _pay(rig, "TR2") is Phase.APPROVED
    assert not rig.engine.stalled()


async def test_a_screen_that_cannot_be_drawn_does_not_touch_the_money(tmp_path: Path) -> None:
    rig = await _make(tmp_path / "journal.db", SimGateway())
    try:

        def broken(_view: object, _waiting: int) -> None:
            raise ValueError("line too long for the bridge")

        rig.engine.screen._sink = broken
        assert await _pay(rig, "TR1") is Phase.APPROVED
    finally:
        await rig.engine.stop()
        await rig.engine.gateway.aclose()
        rig.journal.close()


async def test_a_hung_gateway_call_has_a_deadline(tmp_path: Path) -> None:
    gateway = SimGateway()
    gateway.fail_next.append("hang")
    rig = await _make(tmp_path / "journal.db", gateway, authorize_deadline=0.2)
    try:
        assert await _pay(rig, "TR1") is Phase.CANCELLED  # unknown, detail: unpaid, reversed
        assert gateway.charges == []
    finally:
        await rig.engine.stop()
        await rig.engine.gateway.aclose()
        rig.journal.close()


async def test_the_cashier_can_cancel_while_the_payment_is_out(tmp_path: Path) -> None:
    gateway = SimGateway()
    gateway.fail_next.append("hang")
    rig = await _make(tmp_path / "journal.db", gateway, authorize_deadline=60)
    try:
        await rig.engine.handle_push(push_order("TR1"))
        await async_until(lambda: rig.nfc.armed is not None)
        rig.nfc.present(VISA)
        await async_until(lambda: rig.engine.state is State.AUTHORIZING)
        assert await rig.engine.handle_intent("cancel") == ActionReply(accepted=True)
        assert await _final(rig, "TR1") is Phase.CANCELLED
        assert m.Method.TRANS_REVERSE in gateway.calls  # reversed, not left to complete
        assert gateway.status["TR1"] is m.TransStatus.CANCELLED
    finally:
        await rig.engine.stop()
        await rig.engine.gateway.aclose()
        rig.journal.close()


@pytest.mark.parametrize("length", [12, 13, 15, 19])
async def test_pans_of_any_length_are_paid_masked(rig: Rig, length: int) -> None:
    pan = ("4761739001010010123")[:length]
    card = CardRead(
        entry_mode=EntryMode.CONTACTLESS, pan=pan, expiry="2812", brand="Visa", track2=None
    )
    assert await _pay(rig, f"TR{length}", card) is Phase.APPROVED
    row = rig.journal.get(f"TR{length}")
    assert row is not None
    assert row.masked_pan is not None
    assert len(row.masked_pan) == length
    assert row.masked_pan.count("*") >= 6
    assert pan not in repr([s for s in rig.screens])


async def test_a_decline_message_with_a_card_number_is_kept_masked(rig: Rig) -> None:
    rig.gateway.decline_code = "XX"
    rig.gateway.decline_message = "Card 4761739001010010 blocked\x1b[2J by issuer"
    assert await _pay(rig, "TR1") is Phase.DECLINED
    row = rig.journal.get("TR1")
    assert row is not None
    assert row.reason == "Card 476173******0010 blocked[2J by issuer"
    (result,) = [s.result for s in rig.screens if s.result is not None]
    assert result.reason == row.reason
    await async_until(lambda: "failed" in rig.sink.kinds("TR1"))
    assert rig.sink.events[-1].reason == row.reason
    await _idle(rig)
    rig.nfc.armed = None
    rig.gateway.decline_code = None
    assert await _pay(rig, "TR2") is Phase.APPROVED


async def test_a_journaled_close_is_applied_after_a_crash(tmp_path: Path) -> None:
    path = tmp_path / "journal.db"
    rig = await _make(path, SimGateway())
    await rig.engine.handle_push(push_order("TR1"))
    await async_until(lambda: rig.nfc.armed is not None)
    # The close is journaled (and so acknowledged) but the agent dies before
    # its worker applies it: nothing but the journal survives.
    rig.engine._inbox.put_nowait = lambda item: None  # type: ignore[method-assign]
    await rig.engine.handle_push(push_close("TR1", message_id="close-1"))
    await rig.engine.stop()
    rig.journal.close()

    again = await _make(path, rig.gateway)
    try:
        assert await _final(again, "TR1") is Phase.CLOSED
        assert again.journal.pending_closes() == []
        await again.engine.handle_push(push_close("TR1", message_id="close-1"))  # redelivered
        assert again.journal.get("TR1") is not None
    finally:
        await again.engine.stop()
        await again.engine.gateway.aclose()
        again.journal.close()


async def test_a_stuck_worker_stops_the_watchdog(tmp_path: Path) -> None:
    rig = await _make(tmp_path / "journal.db", SimGateway(), stall_after=0.2)
    try:

        async def hangs(_event: object) -> None:
            await asyncio.Event().wait()

        rig.engine._handle = hangs  # type: ignore[method-assign,assignment]
        assert not rig.engine.stalled()
        rig.engine._inbox.put_nowait(OfferNext())
        await asyncio.sleep(0.05)
        assert not rig.engine.stalled()
        await async_until(rig.engine.stalled)
        assert rig.engine.tasks_alive()  # alive, and yet not healthy
    finally:
        await rig.engine.stop()
        await rig.engine.gateway.aclose()
        rig.journal.close()


def test_journal_keeps_closes_until_applied(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "j.db")
    try:
        assert journal.record_close_push("c1", "TR1")
        assert not journal.record_close_push("c1", "TR1")
        assert journal.pending_closes() == [("TR1", "c1")]
        journal.close_applied("c1")
        assert journal.pending_closes() == []
    finally:
        journal.close()


def test_engine_is_importable_with_its_fail_points() -> None:
    assert issubclass(faults.Failpoint, RuntimeError)
    assert Engine.stalled.__doc__
