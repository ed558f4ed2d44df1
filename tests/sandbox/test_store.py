"""The sandbox store: status moves never regress, notifications are queued
once per final status, request_no claims, charges, events."""

from __future__ import annotations

import itertools
import logging
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import pytest

from cloud import wirejson
from cloud.messages import TransStatus, TransType
from sandbox.store import ALLOWED_MOVES, Order, Store, can_move, timeline_text

S = TransStatus


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    with Store(tmp_path / "s.db") as s:
        yield s


def make_order(store: Store, trans_no: str = "T1", notify_url: str | None = "http://x/n") -> Order:
    order = Order(
        trans_no=trans_no,
        merchant_no="M0001",
        merchant_order_no="MO-" + trans_no,
        terminal_sn="SN1",
        store_no=None,
        trans_type=TransType.SALE,
        orig_trans_no=None,
        trans_status=S.PREORDER,
        price_currency="QAR",
        order_amount=Decimal("12.50"),
        tip_amount=None,
        trans_amount=Decimal("12.50"),
        attach="att",
        pay_scenario=None,
        description=None,
        notify_url=notify_url,
        expires_at=2_000_000_000_000,
        order_queue_mode="FIFO",
        confirm_on_terminal=False,
        fingerprint="fp",
        message_id="m1",
        create_answer="{}",
        close_answer=None,
        created_ms=1,
        updated_ms=1,
    )
    store.insert_order(order)
    return order


def test_move_table() -> None:
    final = {S.CLOSED, S.COMPLETED, S.CANCELLED}
    for frm, to in itertools.product(S, S):
        if frm in (S.CLOSED, S.CANCELLED):
            assert not can_move(frm, to)
        if frm is S.COMPLETED:
            assert can_move(frm, to) == (to is S.CANCELLED)
        if frm in final and to not in final:
            assert not can_move(frm, to), (frm, to)
    assert can_move(S.PREORDER, S.PROCESSING)
    assert can_move(S.PROCESSING, S.PREORDER)  # restart recovery, nothing charged
    assert not can_move(S.PREORDER, S.COMPLETED)  # paid only through processing
    assert set(ALLOWED_MOVES) == set(S)


def test_order_round_trips_with_exact_amounts(store: Store) -> None:
    order = make_order(store)
    back = store.order("T1")
    assert back == order
    assert back is not None
    assert str(back.order_amount) == "12.50"
    assert store.order_by_merchant_order_no("M0001", "MO-T1") == order
    assert store.order("nope") is None


def test_regression_is_refused_loudly(store: Store, caplog: pytest.LogCaptureFixture) -> None:
    make_order(store)
    _, moved = store.move("T1", S.PROCESSING, why="pay", request_no="R1")
    assert moved
    order, moved = store.move("T1", S.COMPLETED, why="ok", auth_code="123456")
    assert moved
    assert order.trans_end_time
    with caplog.at_level(logging.WARNING):
        order, moved = store.move("T1", S.CLOSED, why="late decline")
    assert not moved
    assert order.trans_status is S.COMPLETED
    assert "STATUS REGRESSION REFUSED" in caplog.text
    order, moved = store.move("T1", S.CANCELLED, why="reverse")
    assert moved
    for to in (S.PREORDER, S.PROCESSING, S.COMPLETED, S.CLOSED):
        order, moved = store.move("T1", to, why="late")
        assert not moved
        assert order.trans_status is S.CANCELLED
    assert store.move("T1", S.CANCELLED, why="again") == (order, False)


def test_final_status_queues_one_notification_each(store: Store) -> None:
    make_order(store)
    make_order(store, "T2", notify_url=None)
    store.move("T1", S.PROCESSING, why="pay")
    assert store.due_notifications(10**15) == []
    store.move("T1", S.COMPLETED, why="ok", now_ms=1000)
    store.move("T1", S.COMPLETED, why="dup")
    store.move("T1", S.CANCELLED, why="reverse", now_ms=2000)
    store.move("T2", S.CLOSED, why="close")  # no notify_url: nothing queued
    due = store.due_notifications(10**15)
    assert [(n.trans_no, n.trans_status) for n in due] == [("T1", 2), ("T1", 3)]
    info = wirejson.loads(due[0].info)
    assert info["trans_status"] == 2
    assert info["order_amount"] == Decimal("12.50")
    assert store.next_notification_at() == 1000
    assert store.next_notification_at(exclude=[due[0].id]) == 2000

    store.record_attempt(
        due[0].id, attempt=1, at_ms=1000, ok=False, http_status=500, error="x", next_at_ms=6000
    )
    assert [n.trans_status for n in store.due_notifications(5999)] == [3]
    store.record_attempt(
        due[0].id, attempt=2, at_ms=6000, ok=True, http_status=200, error=None, next_at_ms=None
    )
    store.record_attempt(
        due[1].id, attempt=15, at_ms=6000, ok=False, http_status=None, error="e", next_at_ms=None
    )
    assert store.due_notifications(10**15) == []
    assert store.next_notification_at() is None


def test_request_claims_and_charges(store: Store) -> None:
    make_order(store)
    assert store.claim_request("SN1", "R1", "T1", "m", "fp") is None
    pending = store.claim_request("SN1", "R1", "T1", "m", "fp")
    assert pending is not None
    assert pending.state == "pending"
    assert store.claim_request("SN2", "R1", "T1", "m", "fp") is None  # per terminal
    assert [r.request_no for r in store.pending_requests()] == ["R1", "R1"]
    store.finish_request("SN1", "R1", '{"a":1}')
    done = store.request("SN1", "R1")
    assert done is not None
    assert (done.state, done.answer, done.http_status) == ("done", '{"a":1}', 200)
    store.release_request("SN2", "R1")
    assert store.request("SN2", "R1") is None

    store.add_charge(
        trans_no="T1", request_no="R1", kind="sale", amount=Decimal("12.50"),
        price_currency="QAR", auth_code="123456", ref_no="1" * 12,
        pay_method_id="Visa", masked_pan="476173******0010",
    )  # fmt: skip
    assert store.reverse_charges("T1") == 1
    assert store.reverse_charges("T1") == 0
    (charge,) = store.charges("T1")
    assert charge["reversed"] == 1
    assert charge["amount"] == "12.50"


def test_events_and_timeline(store: Store) -> None:
    make_order(store)
    store.add_push(
        message_id="m1", trans_no="T1", terminal_sn="SN1", topic="t", payload="{}", expiry_s=5
    )
    assert store.trans_no_for_message("m1") == "T1"
    kwargs = {
        "trans_no": "T1", "terminal_sn": "SN1", "event": "received", "message_id": "m1",
        "reason": None, "hops": '{"tms":1,"received":2}', "timestamp": "1", "received_ms": 5,
    }  # fmt: skip
    assert store.add_event(**kwargs)  # type: ignore[arg-type]
    assert not store.add_event(**kwargs)  # type: ignore[arg-type]  # redelivery
    text = timeline_text(store, "T1")
    assert text is not None
    (item,) = wirejson.loads(text)
    assert item["hops"] == {"tms": 1, "received": 2}
    assert timeline_text(store, "T2") is None


def test_terminals_and_status(store: Store) -> None:
    assert store.terminal("SN1") is None
    store.add_terminal("SN1", "M0001", "PEM", "Shop")
    terminal = store.terminal("SN1")
    assert terminal is not None
    assert terminal.app_id == "SN1"
    assert not store.terminal_online("SN1")
    assert store.terminal_status("SN1") is None
    store.set_terminal_status("SN1", "online", "{}", 1)
    assert store.terminal_online("SN1")
    store.set_terminal_status("SN1", "offline", '{"status":"offline"}', 2)
    assert not store.terminal_online("SN1")
    assert store.terminal_status("SN1") == ("offline", '{"status":"offline"}', 2)
    store.set_state("k", "v")
    assert store.get_state("k") == "v"
    assert store.get_state("missing") is None
