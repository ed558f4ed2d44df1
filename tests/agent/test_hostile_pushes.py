"""No bytes on the orders topic can stop the terminal (docs/protocol.md part C):
the engine with a real journal and simulated peers, fed what anyone who can
publish there might send. Each is acknowledged (``handle_push`` returns),
rejected with a reason, reported at a bounded rate, and the next genuine
order is paid."""

from __future__ import annotations

import re
import sqlite3
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from agent.journal import MAX_REJECTIONS, Journal, Phase
from agent.reject_reports import RejectReports
from cloud import envelope
from cloud import messages as m
from tests.agent.simpeers import SimGateway, push_order, until
from tests.agent.test_engine import VISA, Rig, _make

GOOD = push_order("GOOD").decode()

HOSTILE: dict[str, Callable[[], bytes]] = {
    "not-utf8": lambda: b'{"message_id": "\xff\xfe"}',
    "utf16": lambda: '{"message_id": "x"}'.encode("utf-16"),
    "bom": lambda: b"\xef\xbb\xbf" + GOOD.encode(),
    "lone-surrogate-value": lambda: GOOD.replace(
        '"message_id":"', '"message_id":"m\\ud800'
    ).encode(),
    "lone-surrogate-key": lambda: b'{"\\udfff": 1, "message_id": "m"}',
    "deep-array": lambda: b"[" * 5000 + b"]" * 5000,
    "deep-object": lambda: b'{"a":' * 900 + b"1" + b"}" * 900,
    "duplicate-keys": lambda: GOOD.replace('{"topic"', '{"sign":"AAAA","topic"', 1).encode(),
    "wrong-types": lambda: b'{"topic": 1, "message_id": [], "biz_data": {}, "sign": 2}',
    "array": lambda: b"[1, 2, 3]",
    "huge-exponent": lambda: b'{"message_id": "m", "x": 1e999999999}',
    "huge-integer": lambda: b'{"message_id": "m", "x": ' + b"9" * 5000 + b"}",
    "nan": lambda: b'{"message_id": "m", "x": NaN}',
    "empty": lambda: b"",
    "pan-in-id": lambda: b'{"message_id": "4761739001010010", "sign": "eA=="}',
    "control-chars": lambda: b'{"message_id": "\\u001b[2J\\u0007", "sign": "eA=="}',
    "megabytes": lambda: b'{"message_id": "' + b"A" * (3 * 1024 * 1024) + b'"}',
}


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    r = await _make(tmp_path / "journal.db", SimGateway())
    yield r
    await r.engine.stop()
    await r.engine.gateway.aclose()
    r.journal.close()


def _reported(rig: Rig) -> int:
    """Rejections the TMS was told of: each event stands for itself and the
    ones it says were dropped before it."""
    total = 0
    for event in rig.sink.events:
        if event.event is m.EventKind.REJECTED:
            match = re.search(r"\+(\d+) more rejected", event.reason or "")
            total += 1 + (int(match.group(1)) if match else 0)
    return total


async def _pay(rig: Rig, trans_no: str) -> None:
    await rig.engine.handle_push(push_order(trans_no))
    await until(lambda: rig.nfc.armed is not None)
    rig.nfc.present(VISA)
    await until(lambda: (row := rig.journal.get(trans_no)) is not None and row.final)
    assert rig.phase(trans_no) is Phase.APPROVED
    await until(lambda: rig.engine.current is None)


@pytest.mark.parametrize("kind", list(HOSTILE))
async def test_hostile_push_is_rejected_and_the_next_order_paid(rig: Rig, kind: str) -> None:
    await rig.engine.handle_push(HOSTILE[kind]())  # returns: the link acknowledges it
    await until(lambda: _reported(rig) == 1)
    (event,) = [e for e in rig.sink.events if e.event is m.EventKind.REJECTED]
    reason = "too_large" if kind == "megabytes" else event.reason
    assert reason in {"malformed", "bad_signature", "too_large"}
    assert event.message_id.startswith("rejected-")  # never the sender's claim
    assert rig.journal.open_transactions() == []
    db = sqlite3.connect(rig.path)
    assert db.execute("SELECT COUNT(*) FROM pushes").fetchone()[0] == 0
    (row,) = db.execute("SELECT reason, detail, claimed_id, size FROM rejections").fetchall()
    db.close()
    kept = " ".join(str(v) for v in row)
    assert not re.search(r"\d{13}", kept)  # no card number, whatever was claimed
    assert kept.isascii()
    assert kept.isprintable()
    assert len(kept) < 400  # a record, not the payload
    await _pay(rig, "TR1")


async def test_forged_push_cannot_claim_a_genuine_message_id(rig: Rig) -> None:
    genuine = push_order("TR1", message_id="m-42")
    forged = genuine.replace(b"12.50", b"0.01")  # same message_id, signature broken
    await rig.engine.handle_push(forged)
    await until(lambda: _reported(rig) == 1)
    assert rig.sink.events[-1].message_id != "m-42"
    await rig.engine.handle_push(genuine)  # the real one, later
    assert rig.journal.get("TR1") is not None
    await until(lambda: rig.nfc.armed is not None)
    assert rig.nfc.armed is not None
    assert str(rig.nfc.armed.amount) == "12.50"


async def test_genuine_push_refused_is_reported_once_under_its_own_id(rig: Rig) -> None:
    expired = push_order("TR1", message_id="m-7", expires_in_ms=-1)
    for _ in range(3):  # the broker delivers it again
        await rig.engine.handle_push(expired)
    await until(lambda: _reported(rig) == 1)
    (event,) = [e for e in rig.sink.events if e.event is m.EventKind.REJECTED]
    assert (event.message_id, event.reason) == ("m-7", "expired")


async def test_a_flood_is_reported_at_a_bounded_rate_and_counted(tmp_path: Path) -> None:
    reports = RejectReports(burst=3, interval=0.05)
    rig = await _make(tmp_path / "journal.db", SimGateway(), reject_reports=reports)
    try:
        for i in range(200):
            await rig.engine.handle_push(b"garbage %d" % i)
        events = [e for e in rig.sink.events if e.event is m.EventKind.REJECTED]
        assert len(events) <= 4  # the burst, then held
        await until(lambda: _reported(rig) == 200)  # the timer reports the rest
        events = [e for e in rig.sink.events if e.event is m.EventKind.REJECTED]
        assert len(events) < 10
        assert "more rejected since the last report" in (events[-1].reason or "")
        await _pay(rig, "TR1")  # and the terminal still takes orders
    finally:
        await rig.engine.stop()
        await rig.engine.gateway.aclose()
        rig.journal.close()


async def test_a_bug_on_a_genuine_push_is_a_rejection_not_a_stall(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*_a: object, **_k: object) -> bool:
        raise RuntimeError("a bug")

    monkeypatch.setattr(rig.journal, "record_order", broken)
    await rig.engine.handle_push(push_order("TR1"))  # does not raise: acknowledged
    await until(lambda: _reported(rig) == 1)
    assert "internal_error" in (rig.sink.events[-1].reason or "")
    monkeypatch.undo()
    await _pay(rig, "TR2")


def test_rejections_table_is_bounded(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "journal.db")
    try:
        for i in range(MAX_REJECTIONS + 50):
            journal.record_rejection(
                reason="malformed",
                detail="x",
                size=1,
                suppressed=0,
                claimed_id=None,
                event_id=f"rejected-{i}",
                event_reason="malformed",
            )
        rows = journal.rejections(limit=MAX_REJECTIONS + 100)
        assert len(rows) == MAX_REJECTIONS
        assert rows[-1]["id"] == 51  # the oldest went
    finally:
        journal.close()


def test_open_push_raises_only_push_rejected() -> None:
    for kind, make in HOSTILE.items():
        with pytest.raises(envelope.PushRejected) as info:
            envelope.open_push(make(), "not a key", "T0001")
        assert info.value.message_id is None, kind
