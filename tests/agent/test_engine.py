"""The transaction engine against simulated peers (gateway, readers, link)."""

from __future__ import annotations

import asyncio
import os
import threading
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

import pytest

from agent import engine as engine_module
from agent.bridge_protocol import ScreenEvent
from agent.engine import Engine
from agent.engine_settings import EngineSettings
from agent.journal import Journal, JournalError, OrderRecord, Phase
from agent.reject_reports import RejectReports
from agent.states import State
from cloud import envelope
from cloud import messages as m
from drivers.base import CardGone, CardRead, EntryMode, WalletCode, WalletKind
from tests.agent.simpeers import (
    GW_PUBLIC,
    SN,
    TERM_PRIVATE,
    EventSink,
    SimGateway,
    SimReader,
    push_close,
    push_order,
)
from tests.waiting import async_until

VISA = CardRead(
    entry_mode=EntryMode.CONTACTLESS,
    pan="4761739001010010",
    expiry="2812",
    brand="Visa",
    track2="4761739001010010D28122011234567890",
    emv_tlv=bytes.fromhex("9f2608a1b2c3d4e5f60718"),
)
CHIP_SWIPE = CardRead(
    entry_mode=EntryMode.MAGSTRIPE,
    pan="5413330089010434",
    expiry="2812",
    brand="MasterCard",
    track2="5413330089010434=28122011234567890",
    service_code="201",
)
WECHAT = WalletCode(code="134567890123456789", wallet=WalletKind.WECHAT_PAY)


@dataclass
class Rig:
    engine: Engine
    journal: Journal
    gateway: SimGateway
    nfc: SimReader
    msr: SimReader
    scanner: SimReader
    sink: EventSink
    screens: list[ScreenEvent]
    path: Path

    def phase(self, trans_no: str) -> Phase | None:
        row = self.journal.get(trans_no)
        return None if row is None else row.phase


def _settings(**over: float) -> EngineSettings:
    return EngineSettings(
        sn=SN,
        private_key=TERM_PRIVATE,
        gateway_public_key=GW_PUBLIC,
        result_seconds=over.get("result_seconds", 0.05),
        resolve_deadline=over.get("resolve_deadline", 0.3),
        retry_base=over.get("retry_base", 0.01),
        retry_cap=over.get("retry_cap", 0.05),
        authorize_deadline=over.get("authorize_deadline", 40.0),
        stall_after=over.get("stall_after", 120.0),
    )


async def _make(
    path: Path, gateway: SimGateway, *, reject_reports: RejectReports | None = None, **over: float
) -> Rig:
    journal = Journal(path)
    nfc, msr, scanner = (
        SimReader("nfc", "pn532"),
        SimReader("msr", "magstripe"),
        SimReader("scan", "scanner"),
    )
    screens: list[ScreenEvent] = []
    engine = Engine(
        _settings(**over),
        journal,
        gateway.client(),
        [nfc, msr, scanner],
        on_screen=lambda view, _waiting: screens.append(view),
        reject_reports=reject_reports,
    )
    sink = EventSink()
    engine.outbox.set_publisher(sink.publish)
    await engine.recover()
    engine.start()
    return Rig(engine, journal, gateway, nfc, msr, scanner, sink, screens, path)


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    r = await _make(tmp_path / "journal.db", SimGateway())
    yield r
    await r.engine.stop()
    await r.engine.gateway.aclose()
    r.journal.close()


async def test_sale_by_card_approved_and_reported(rig: Rig) -> None:
    await rig.engine.handle_push(push_order("TR1"))
    assert rig.phase("TR1") is not None  # journaled before handle_push returned
    await async_until(lambda: rig.nfc.armed is not None)
    assert rig.nfc.armed is not None
    assert str(rig.nfc.armed.amount) == "12.50"
    rig.nfc.present(VISA)
    await async_until(lambda: "paid" in rig.sink.kinds("TR1"))
    assert rig.phase("TR1") is Phase.APPROVED
    assert rig.gateway.charges == ["TR1"]
    assert rig.gateway.seen_pans == ["4761739001010010"]
    row = rig.journal.get("TR1")
    assert row is not None
    assert row.masked_pan == "476173******0010"
    assert row.auth_code == "123456"
    assert rig.sink.kinds("TR1") == ["received", "displayed", "paid"]
    hops = rig.sink.hops("TR1", "paid")
    names = [h for h in hops if h != "event_published"]
    # Drawn before it is journaled, acknowledged once it is durable.
    assert names[:3] == ["push_received", "shown", "journaled"]
    assert "acknowledged" in names
    assert list(hops.values()) == sorted(hops.values())
    result = [s for s in rig.screens if s.screen is m.Screen.RESULT][-1]
    assert result.result is not None
    assert result.result.outcome == "approved"
    await async_until(lambda: rig.engine.state is State.IDLE)


async def test_wallet_and_decline_reason(tmp_path: Path) -> None:
    gw = SimGateway(decline_code="51")
    r = await _make(tmp_path / "j.db", gw)
    try:
        await r.engine.handle_push(push_order("TR2"))
        await async_until(lambda: r.scanner.armed is not None)
        r.scanner.present(WECHAT)
        await async_until(lambda: "failed" in r.sink.kinds("TR2"))
        row = r.journal.get("TR2")
        assert row is not None
        assert row.phase is Phase.DECLINED
        assert row.reason == "Insufficient funds - try another card"
        assert gw.charges == []
    finally:
        await r.engine.stop()
        r.journal.close()


async def test_duplicate_push_processed_once(rig: Rig) -> None:
    payload = push_order("TR3")
    await rig.engine.handle_push(payload)
    await rig.engine.handle_push(payload)
    await rig.engine.handle_push(push_order("TR3", message_id="other-id"))
    assert list(rig.engine.queue) in ([], ["TR3"])
    await async_until(lambda: rig.nfc.armed is not None)
    rig.nfc.present(VISA)
    await async_until(lambda: rig.phase("TR3") is Phase.APPROVED)
    assert rig.gateway.charges == ["TR3"]
    assert rig.sink.kinds("TR3").count("received") == 1


class GatedSync:
    """Holds ``Journal.sync`` (in its worker thread) until released."""

    def __init__(self, journal: Journal) -> None:
        self.calls = 0
        self.gate = threading.Event()
        self._real = journal.sync

    def __call__(self) -> None:
        self.calls += 1
        assert self.gate.wait(5), "sync never released"
        self._real()


async def test_idle_push_drawn_before_it_is_journaled_and_acknowledged_once_durable(
    rig: Rig,
) -> None:
    """An idle terminal draws a verified new order before it journals it (the
    journal's write then runs beside the UI's drawing); handle_push (after
    which the link sends the PUBACK) returns only once the push is durable."""
    journaled_when_drawn: list[bool] = []
    draw = rig.engine.screen._sink

    def on_screen(view: ScreenEvent, waiting: int) -> None:
        if view.order is not None and not journaled_when_drawn:
            journaled_when_drawn.append(rig.journal.get(view.order.trans_no) is not None)
        draw(view, waiting)

    rig.engine.screen._sink = on_screen
    await rig.engine.handle_push(push_order("TR1"))
    assert journaled_when_drawn == [False]  # on screen before it is journaled
    assert rig.phase("TR1") is not None
    assert not rig.journal.unsynced  # durable before the PUBACK


async def test_idle_push_gives_the_ui_the_core_before_offered(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Once the order is drawn the engine yields the CPU (the UI, woken onto
    this core, draws it) before the journal's write and the OFFERED trigger's
    work: the screen, the yield, then the rest; and the worker's offer does
    not draw it a second time."""
    order: list[str] = []
    draw = rig.engine.screen._sink

    def on_screen(view: ScreenEvent, waiting: int) -> None:
        if view.order is not None:
            order.append(f"screen {view.screen.value}: {view.progress}")
        draw(view, waiting)

    def sched_yield() -> None:
        journaled = "journaled" if rig.journal.get("TR1") is not None else "not journaled"
        order.append(f"yield in {rig.engine.state.value}, {journaled}")

    rig.engine.screen._sink = on_screen
    monkeypatch.setattr(os, "sched_yield", sched_yield)
    await rig.engine.handle_push(push_order("TR1"))
    offered = ["screen WAITING_FOR_CARD: None", "yield in IDLE, not journaled"]
    assert order == offered
    assert rig.engine.state is not State.IDLE  # offered once the yield returned
    await async_until(lambda: rig.nfc.armed is not None)
    assert order == [*offered, "screen WAITING_FOR_CARD: Tap, swipe or scan"]  # armed


async def _finish_cancelled(rig: Rig, trans_no: str) -> None:
    await async_until(lambda: rig.nfc.armed is not None)
    assert (await rig.engine.handle_intent("cancel")).accepted
    await async_until(lambda: "cancelled" in rig.sink.kinds(trans_no))
    await async_until(lambda: rig.engine.state is State.IDLE and rig.engine.current is None)


async def test_replayed_order_never_drawn_again(rig: Rig) -> None:
    """Anyone on the broker may replay a genuine signed push, and the POS may
    push a trans_no again under a new message: an idle terminal draws only an
    order never journaled, so neither reaches the screen."""
    payload = push_order("TR1")
    await rig.engine.handle_push(payload)
    await _finish_cancelled(rig, "TR1")
    before = len(rig.screens)
    await rig.engine.handle_push(payload)  # the same message: a replay or a redelivery
    await rig.engine.handle_push(push_order("TR1", message_id="msg-new"))
    assert [s for s in rig.screens[before:] if s.order is not None] == []
    assert rig.engine.current is None
    assert rig.phase("TR1") is Phase.CANCELLED
    assert rig.sink.kinds("TR1").count("received") == 1


async def test_order_taken_off_the_screen_when_it_cannot_be_journaled(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Drawn, then the journal refuses it (a full or failing disk): the order
    leaves the screen, the push is not acknowledged (handle_push raises), and
    its redelivery is drawn and offered."""
    record_order = rig.journal.record_order

    def refused(message_id: str, order: OrderRecord) -> bool:
        raise JournalError("journal write failed: database or disk is full")

    monkeypatch.setattr(rig.journal, "record_order", refused)
    with pytest.raises(JournalError):
        await rig.engine.handle_push(push_order("TR1"))
    assert [s.order.trans_no for s in rig.screens if s.order] == ["TR1"]
    assert rig.screens[-1].screen is m.Screen.IDLE
    assert rig.engine.current is None
    assert rig.journal.get("TR1") is None

    monkeypatch.setattr(rig.journal, "record_order", record_order)
    await rig.engine.handle_push(push_order("TR1"))  # the broker delivers it again
    await async_until(lambda: rig.nfc.armed is not None)
    assert rig.phase("TR1") is Phase.AWAITING_PAYMENT


async def test_order_taken_off_the_screen_when_taking_it_fails(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Drawn, then a bug while journaling it: the push is rejected under its
    own message_id (so it cannot block the topic) and leaves the screen."""

    def broken(message_id: str, order: OrderRecord) -> bool:
        raise ValueError("a bug")

    monkeypatch.setattr(rig.journal, "record_order", broken)
    await rig.engine.handle_push(push_order("TR1"))
    await async_until(lambda: "rejected" in rig.sink.kinds())
    assert rig.sink.events[-1].reason == "internal_error"
    assert [s.order.trans_no for s in rig.screens if s.order] == ["TR1"]
    assert rig.screens[-1].screen is m.Screen.IDLE
    assert rig.engine.current is None


async def test_push_cancelled_once_drawn_leaves_no_order_on_screen(rig: Rig) -> None:
    """A push whose handling is cancelled once drawn (the link stopped by a
    reload or a shutdown) takes its order off the screen: not acknowledged,
    the broker delivers it again."""
    draw = rig.engine.screen._sink
    task: asyncio.Task[None] | None = None

    def on_screen(view: ScreenEvent, waiting: int) -> None:
        draw(view, waiting)
        if view.order is not None and task is not None:
            task.cancel()

    rig.engine.screen._sink = on_screen
    task = asyncio.create_task(rig.engine.handle_push(push_order("TR1")))
    with pytest.raises(asyncio.CancelledError):
        await task
    assert [s.order.trans_no for s in rig.screens if s.order] == ["TR1"]
    assert rig.screens[-1].screen is m.Screen.IDLE
    assert rig.engine.current is None
    assert rig.journal.get("TR1") is None


async def test_push_fsynced_by_itself_when_the_worker_is_slow(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    """When the worker does not reach the OFFERED commit in time, the push is
    fsynced in a thread, and handle_push still waits for it."""
    monkeypatch.setattr(engine_module, "OFFER_COMMIT_WAIT", 0.01)
    offer_gate = asyncio.Event()
    offer = rig.engine._offer_next

    async def slow_offer() -> None:
        await offer_gate.wait()
        await offer()

    monkeypatch.setattr(rig.engine, "_offer_next", slow_offer)
    sync = GatedSync(rig.journal)
    monkeypatch.setattr(rig.journal, "sync", sync)
    task = asyncio.create_task(rig.engine.handle_push(push_order("TR1")))
    await async_until(lambda: sync.calls == 1)
    await asyncio.sleep(0.05)
    assert not task.done()  # not durable yet: no PUBACK
    sync.gate.set()
    await asyncio.wait_for(task, 5)
    assert not rig.journal.unsynced
    offer_gate.set()
    await async_until(lambda: any(s.order is not None for s in rig.screens))


async def test_outbox_waits_for_the_push_fsync(rig: Rig, monkeypatch: pytest.MonkeyPatch) -> None:
    """A busy terminal's push: its ``received`` and ``busy`` events do not
    leave before the push is durable, even when the outbox wakes meanwhile."""
    await rig.engine.handle_push(push_order("A"))
    await async_until(lambda: rig.nfc.armed is not None)
    await async_until(lambda: "displayed" in rig.sink.kinds("A"))
    sync = GatedSync(rig.journal)
    monkeypatch.setattr(rig.journal, "sync", sync)
    task = asyncio.create_task(rig.engine.handle_push(push_order("B")))
    await async_until(lambda: rig.engine.queue == deque(["B"]))
    rig.engine.outbox.wake()
    await asyncio.sleep(0.1)
    assert rig.sink.kinds("B") == []
    assert not task.done()
    sync.gate.set()
    await asyncio.wait_for(task, 5)
    await async_until(lambda: rig.sink.kinds("B") == ["received", "busy"])


async def test_push_not_acknowledged_when_its_fsync_fails(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    await rig.engine.handle_push(push_order("A"))
    await async_until(lambda: rig.nfc.armed is not None)

    def failing() -> None:
        raise JournalError("journal sync failed: [Errno 5] Input/output error")

    monkeypatch.setattr(rig.journal, "sync", failing)
    with pytest.raises(JournalError):  # the link then reconnects for a redelivery
        await rig.engine.handle_push(push_order("B"))


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (lambda: push_order("X1", sn="T9999"), "wrong_terminal"),
        (lambda: push_order("X2", expires_in_ms=-1), "expired"),
        (lambda: push_order("X3").replace(b"12.50", b"1.25"), "bad_signature"),
        (lambda: b"\x00garbage", "malformed"),
    ],
)
async def test_bad_pushes_rejected_never_shown(rig: Rig, payload: object, reason: str) -> None:
    assert callable(payload)
    await rig.engine.handle_push(payload())
    await async_until(lambda: "rejected" in rig.sink.kinds())
    assert rig.sink.events[-1].reason == reason
    assert all(s.screen is m.Screen.IDLE for s in rig.screens)
    assert rig.journal.open_transactions() == []


async def test_queue_fifo_and_filo_with_busy_event(rig: Rig) -> None:
    await rig.engine.handle_push(push_order("A"))
    await async_until(lambda: rig.nfc.armed is not None)
    await rig.engine.handle_push(push_order("B"))
    await rig.engine.handle_push(push_order("C", order_queue_mode=m.QueueMode.FILO))
    assert list(rig.engine.queue) == ["C", "B"]
    order = []
    for _ in range(3):
        await async_until(lambda: rig.nfc.armed is not None and rig.engine.current is not None)
        assert rig.engine.current is not None
        order.append(rig.engine.current.tx.trans_no)
        rig.nfc.present(VISA)
        await async_until(lambda: rig.engine.state is State.APPROVED)
        await async_until(lambda: rig.engine.state is not State.APPROVED)
    assert order == ["A", "C", "B"]
    await async_until(lambda: "busy" in rig.sink.kinds("B"))
    busy = {e.trans_no: e.reason for e in rig.sink.events if e.event is m.EventKind.BUSY}
    # B queued behind A: next; C (FILO) jumped ahead of B: next too.
    assert busy == {"B": "queue position 1", "C": "queue position 1"}


async def test_push_while_busy_is_queued_never_drawn_over_the_current_order(rig: Rig) -> None:
    """Only an idle terminal draws a push at once: while an order is being
    paid, a new one waits, off the screen, until that payment ends."""
    await rig.engine.handle_push(push_order("A"))
    await async_until(lambda: rig.nfc.armed is not None)
    before = len(rig.screens)
    await rig.engine.handle_push(push_order("B"))
    assert list(rig.engine.queue) == ["B"]
    assert {s.order.trans_no for s in rig.screens[before:] if s.order} == {"A"}
    assert rig.engine.screen.view.order is not None
    assert rig.engine.screen.view.order.trans_no == "A"
    assert (await rig.engine.handle_intent("cancel")).accepted
    await async_until(
        lambda: rig.engine.current is not None and rig.engine.current.tx.trans_no == "B"
    )
    await async_until(lambda: rig.nfc.armed is not None)
    assert rig.engine.screen.view.order is not None
    assert rig.engine.screen.view.order.trans_no == "B"


async def test_cashier_cancel_cancels_at_gateway(rig: Rig) -> None:
    await rig.engine.handle_push(push_order("TR4"))
    await async_until(lambda: rig.nfc.armed is not None)
    assert (await rig.engine.handle_intent("cancel")).accepted
    await async_until(lambda: "cancelled" in rig.sink.kinds("TR4"))
    assert rig.phase("TR4") is Phase.CANCELLED
    await async_until(lambda: rig.gateway.status.get("TR4") is m.TransStatus.CANCELLED)
    assert rig.nfc.armed is None


async def test_cancel_reaches_gateway_while_link_is_down(tmp_path: Path) -> None:
    """The outbox keeps two channels: events waiting for the broker do not hold
    the gateway cancel back, and the link coming up drains them at once."""
    r = await _make(tmp_path / "j.db", SimGateway(), retry_base=30, retry_cap=60)
    try:
        r.sink.up = False
        await r.engine.handle_push(push_order("TR9"))
        await async_until(lambda: r.nfc.armed is not None)
        assert (await r.engine.handle_intent("cancel")).accepted
        await async_until(lambda: r.gateway.status.get("TR9") is m.TransStatus.CANCELLED)
        assert r.sink.kinds("TR9") == []
        r.sink.up = True
        r.engine.outbox.wake()  # what the service does when the link connects
        await async_until(lambda: r.sink.kinds("TR9") == ["received", "displayed", "cancelled"])
    finally:
        await r.engine.stop()
        r.journal.close()


async def test_confirm_on_terminal(rig: Rig) -> None:
    await rig.engine.handle_push(push_order("TR5", confirm_on_terminal=True))
    await async_until(lambda: rig.engine.state is State.OFFERED)
    assert rig.screens[-1].screen is m.Screen.WAITING_FOR_CONFIRM
    assert rig.nfc.armed is None
    await rig.engine.handle_intent("confirm")
    await async_until(lambda: rig.nfc.armed is not None)


async def test_cloud_close_while_waiting(rig: Rig) -> None:
    await rig.engine.handle_push(push_order("TR6"))
    await async_until(lambda: rig.nfc.armed is not None)
    await rig.engine.handle_push(push_close("TR6"))
    await async_until(lambda: rig.phase("TR6") is Phase.CLOSED)
    await async_until(lambda: "closed" in rig.sink.kinds("TR6"))
    assert rig.gateway.charges == []


async def test_close_of_queued_order(rig: Rig) -> None:
    await rig.engine.handle_push(push_order("Q1"))
    await rig.engine.handle_push(push_order("Q2"))
    await async_until(lambda: rig.nfc.armed is not None)
    await rig.engine.handle_push(push_close("Q2"))
    await async_until(lambda: rig.phase("Q2") is Phase.CLOSED)
    assert "Q2" not in rig.engine.queue


async def test_expiry(rig: Rig) -> None:
    await rig.engine.handle_push(push_order("TR7", expires_in_ms=300))
    await async_until(lambda: rig.phase("TR7") is Phase.EXPIRED)
    await async_until(lambda: rig.sink.kinds("TR7")[-1:] == ["failed"])
    assert m.Method.TRANS_CANCEL not in rig.gateway.calls  # the gateway expires it itself


async def test_tap_again_after_card_gone_and_chip_swipe(rig: Rig) -> None:
    await rig.engine.handle_push(push_order("TR8"))
    await async_until(lambda: rig.nfc.armed is not None)
    rig.nfc.present(CardGone("card removed"))
    await async_until(lambda: any(s.message and "tap again" in s.message for s in rig.screens))
    rig.msr.present(CHIP_SWIPE)
    await async_until(lambda: any(s.message and "chip" in s.message for s in rig.screens))
    await async_until(lambda: rig.nfc.armed is not None)
    rig.nfc.present(VISA)
    await async_until(lambda: rig.phase("TR8") is Phase.APPROVED)
    assert rig.gateway.seen_pans == ["4761739001010010"]


@pytest.mark.parametrize("failure", ["timeout", "500", "garbage"])
async def test_unknown_outcome_resolved_by_detail_never_paid_twice(
    tmp_path: Path, failure: str
) -> None:
    gw = SimGateway(fail_next=[failure], charge_then_fail=True)
    r = await _make(tmp_path / "j.db", gw)
    try:
        await r.engine.handle_push(push_order("TR9"))
        await async_until(lambda: r.nfc.armed is not None)
        r.nfc.present(VISA)
        await async_until(lambda: r.phase("TR9") is Phase.APPROVED)
        assert gw.charges == ["TR9"]
        assert gw.calls.count(m.Method.BANKCARD_CREATE) == 1
        assert m.Method.TRANS_DETAIL in gw.calls
    finally:
        await r.engine.stop()
        r.journal.close()


async def test_gateway_down_resolved_by_reverse(tmp_path: Path) -> None:
    gw = SimGateway(fail_next=["timeout", "detail-timeout"], charge_then_fail=True)
    r = await _make(tmp_path / "j.db", gw, resolve_deadline=0.0)
    try:
        await r.engine.handle_push(push_order("TR10"))
        await async_until(lambda: r.nfc.armed is not None)
        r.nfc.present(VISA)
        await async_until(lambda: r.phase("TR10") is Phase.CANCELLED)
        assert gw.charges == []  # reversed
        assert m.Method.TRANS_REVERSE in gw.calls
        assert gw.calls.count(m.Method.BANKCARD_CREATE) == 1
        attempts = r.journal.attempts("TR10")
        assert attempts[0].reverse_acked_at is not None
    finally:
        await r.engine.stop()
        r.journal.close()


async def test_restart_with_unanswered_attempt_resolves_before_taking_pushes(
    tmp_path: Path,
) -> None:
    path = tmp_path / "j.db"
    gw = SimGateway()
    # A previous life journaled the push and the attempt, then died.
    j = Journal(path)
    await _seed_attempt(j, gw, "TR11", charged=True)
    j.close()
    r = await _make(path, gw)
    try:
        assert r.phase("TR11") is Phase.APPROVED  # settled during recover()
        assert gw.calls == [m.Method.TRANS_DETAIL]
        assert gw.charges == ["TR11"]
        await async_until(lambda: "paid" in r.sink.kinds("TR11"))
    finally:
        await r.engine.stop()
        r.journal.close()


async def test_restart_with_uncharged_attempt_reverses(tmp_path: Path) -> None:
    path = tmp_path / "j.db"
    gw = SimGateway()
    j = Journal(path)
    await _seed_attempt(j, gw, "TR12", charged=False)
    j.close()
    r = await _make(path, gw, resolve_deadline=0.05)
    try:
        assert r.phase("TR12") is Phase.CANCELLED
        assert gw.charges == []
        assert m.Method.BANKCARD_CREATE not in gw.calls
    finally:
        await r.engine.stop()
        r.journal.close()


async def test_restart_reoffers_unpaid_order(tmp_path: Path) -> None:
    path = tmp_path / "j.db"
    r = await _make(path, SimGateway())
    await r.engine.handle_push(push_order("TR13"))
    await async_until(lambda: r.nfc.armed is not None)
    await r.engine.stop()
    r.journal.close()
    r2 = await _make(path, r.gateway)
    try:
        await async_until(lambda: r2.nfc.armed is not None)
        assert r2.engine.current is not None
        assert r2.engine.current.tx.trans_no == "TR13"
    finally:
        await r2.engine.stop()
        r2.journal.close()


async def test_events_wait_for_the_link(rig: Rig) -> None:
    rig.sink.up = False
    await rig.engine.handle_push(push_order("TR14"))
    await async_until(lambda: rig.nfc.armed is not None)
    rig.nfc.present(VISA)
    await async_until(lambda: rig.phase("TR14") is Phase.APPROVED)
    assert rig.sink.events == []
    rig.sink.up = True
    await async_until(lambda: "paid" in rig.sink.kinds("TR14"))


async def _seed_attempt(j: Journal, gw: SimGateway, trans_no: str, *, charged: bool) -> None:
    push, biz = envelope.open_push(push_order(trans_no), GW_PUBLIC, SN)
    assert isinstance(biz, m.PushOrder)
    fields = OrderRecord(
        trans_no=biz.trans_no,
        merchant_no=biz.merchant_no,
        merchant_order_no=biz.merchant_order_no,
        trans_type=1,
        orig_trans_no=None,
        currency="QAR",
        amount=biz.order_amount,
        tip_amount=None,
        description=None,
        pay_scenario=None,
        confirm=False,
        expires_at=biz.expires_at,
        queue_mode="FIFO",
    )
    assert j.record_order(push.message_id, fields)
    j.new_attempt(trans_no, f"{SN}-{trans_no}-1", "card")
    if charged:
        gw.charges.append(trans_no)
        gw.status[trans_no] = m.TransStatus.COMPLETED


async def test_tip_is_not_added_to_the_order_amount_sent(rig: Rig) -> None:
    """The cashier create carries the order amount; the gateway knows the tip."""
    await rig.engine.handle_push(push_order("TR15", tip_amount=Decimal("2.00")))
    await async_until(lambda: rig.nfc.armed is not None)
    assert rig.nfc.armed is not None
    assert rig.nfc.armed.amount == Decimal("14.50")  # the card is asked for the total
    rig.nfc.present(VISA)
    await async_until(lambda: rig.phase("TR15") is Phase.APPROVED)
    assert rig.gateway.amounts == ["12.50"]
