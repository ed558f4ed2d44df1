"""No bytes on the orders topic can stop the terminal (docs/protocol.md part C):
the engine with a real journal and simulated peers, fed what anyone who can
publish there might send. Each is acknowledged (``handle_push`` returns),
rejected with a reason, reported at a bounded rate, and the next genuine
order is paid."""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sqlite3
from collections.abc import AsyncIterator, Callable, Iterator
from decimal import Decimal
from pathlib import Path

import msgspec
import pytest

from agent.journal import Journal, Phase
from agent.journal_schema import MAX_REJECTIONS
from agent.reject_reports import RejectReports
from cloud import envelope, wirejson
from cloud import messages as m
from cloud.signing import generate_key_pem, sign
from tests.agent.simpeers import GW_PRIVATE, GW_PUBLIC, SN, SimGateway, push_order
from tests.agent.test_engine import VISA, Rig, _make
from tests.waiting import async_until

GOOD = push_order("GOOD").decode()
OTHER_KEY, _ = generate_key_pem()


def _forged() -> bytes:
    """A whole push, well formed, signed with a key that is not the gateway's."""
    biz = m.PushOrder(
        trans_no="EVIL",
        merchant_no="M0001",
        terminal_sn=SN,
        merchant_order_no="ORD-EVIL",
        price_currency="QAR",
        order_amount=Decimal("0.01"),
        trans_type=m.TransType.SALE,
        expires_at=envelope.now_ms() + 60_000,
    )
    push = envelope.build_push(
        m.PushTopic.PAY_ORDER, biz, app_id="gw", private_key=OTHER_KEY, message_id="msg-GOOD"
    )
    return msgspec.json.encode(push)


# kind -> (payload, the reason it is rejected for)
HOSTILE: dict[str, tuple[Callable[[], bytes], str]] = {
    "not-utf8": (lambda: b'{"message_id": "\xff\xfe"}', "malformed"),
    "utf16": (lambda: '{"message_id": "x"}'.encode("utf-16"), "malformed"),
    "bom": (lambda: b"\xef\xbb\xbf" + GOOD.encode(), "malformed"),
    "lone-surrogate-value": (
        lambda: GOOD.replace('"message_id":"', '"message_id":"m\\ud800').encode(),
        "malformed",
    ),
    "lone-surrogate-key": (lambda: b'{"\\udfff": 1, "message_id": "m"}', "malformed"),
    "lone-surrogate-in-biz-data": (
        lambda: GOOD.replace('"biz_data":"{', '"biz_data":"\\udc00{').encode(),
        "malformed",
    ),
    "deep-array": (lambda: b"[" * 5000 + b"]" * 5000, "malformed"),
    "deep-object": (lambda: b'{"a":' * 900 + b"1" + b"}" * 900, "malformed"),
    "duplicate-keys": (
        lambda: GOOD.replace('{"topic"', '{"sign":"AAAA","topic"', 1).encode(),
        "malformed",
    ),
    "duplicate-message-id": (
        lambda: GOOD.replace('{"topic"', '{"message_id":"evil","topic"', 1).encode(),
        "malformed",
    ),
    "wrong-types": (
        lambda: b'{"topic": 1, "message_id": [], "biz_data": {}, "sign": 2}',
        "bad_signature",
    ),
    "array": (lambda: b"[1, 2, 3]", "malformed"),
    "huge-exponent": (lambda: b'{"message_id": "m", "x": 1e999999999}', "malformed"),
    "huge-integer": (lambda: b'{"message_id": "m", "x": ' + b"9" * 5000 + b"}", "malformed"),
    "huge-mantissa": (lambda: b'{"message_id": "m", "x": 1.' + b"0" * 5000 + b"1}", "malformed"),
    "nan": (lambda: b'{"message_id": "m", "x": NaN}', "malformed"),
    "infinity": (lambda: b'{"message_id": "m", "x": -Infinity}', "malformed"),
    "empty": (lambda: b"", "malformed"),
    "pan-in-id": (lambda: b'{"message_id": "4761739001010010", "sign": "eA=="}', "bad_signature"),
    "control-chars": (
        lambda: b'{"message_id": "\\u001b[2J\\u0007", "sign": "eA=="}',
        "bad_signature",
    ),
    "forged-signature": (_forged, "bad_signature"),
    "megabytes": (lambda: b'{"message_id": "' + b"A" * (3 * 1024 * 1024) + b'"}', "too_large"),
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
    await async_until(lambda: rig.nfc.armed is not None)
    rig.nfc.present(VISA)
    await async_until(lambda: (row := rig.journal.get(trans_no)) is not None and row.final)
    assert rig.phase(trans_no) is Phase.APPROVED
    await async_until(lambda: rig.engine.current is None)


@pytest.mark.parametrize("kind", list(HOSTILE))
async def test_hostile_push_is_rejected_and_the_next_order_paid(rig: Rig, kind: str) -> None:
    make, reason = HOSTILE[kind]
    payload = make()
    await rig.engine.handle_push(payload)  # returns: the link acknowledges it
    await async_until(lambda: _reported(rig) == 1)
    (event,) = [e for e in rig.sink.events if e.event is m.EventKind.REJECTED]
    assert event.reason == reason
    assert event.message_id.startswith("rejected-")  # never the sender's claim
    assert rig.journal.open_transactions() == []
    db = sqlite3.connect(rig.path)
    assert db.execute("SELECT COUNT(*) FROM pushes").fetchone()[0] == 0
    (row,) = db.execute("SELECT reason, detail, claimed_id, size FROM rejections").fetchall()
    db.close()
    assert row[0] == reason
    assert row[3] == len(payload)
    kept = " ".join(str(v) for v in row)
    assert not re.search(r"\d{13}", kept)  # no card number, whatever was claimed
    assert kept.isascii()
    assert kept.isprintable()
    assert len(kept) < 400  # a record, not the payload
    await _pay(rig, "TR1")


async def test_hostile_texts_never_reach_a_log_line(
    rig: Rig, caplog: pytest.LogCaptureFixture
) -> None:
    for make, _reason in HOSTILE.values():
        await rig.engine.handle_push(make())
    lines = [r.getMessage() for r in caplog.records]
    assert lines
    for line in lines:
        assert line.isascii()
        assert line.isprintable()
        assert len(line) < 600
        assert not re.search(r"\d{13}", line)
        assert "AAAAAAAAAAAAAAAAAAAA" not in line  # no payload
    # One warning per report, not one per message: the burst of 3.
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 3


async def test_oversize_push_is_refused_unread(rig: Rig) -> None:
    """MQTT 3.1.1 cannot tell the broker the limit: a genuine push padded past
    it (a valid signature still) is refused as too large without being
    parsed - its message_id is not taken - and the push itself, later, is."""
    genuine = push_order("TR1", message_id="m-9")
    padded = genuine[:-1] + b" " * m.MAX_PUSH_BYTES + b"}"
    await rig.engine.handle_push(padded)
    await async_until(lambda: _reported(rig) == 1)
    assert rig.sink.events[-1].reason == "too_large"
    assert rig.journal.get("TR1") is None
    assert not rig.journal.seen_push("m-9")
    await rig.engine.handle_push(genuine)
    assert rig.journal.get("TR1") is not None


async def test_forged_push_cannot_claim_a_genuine_message_id(rig: Rig) -> None:
    genuine = push_order("TR1", message_id="m-42")
    forged = genuine.replace(b"12.50", b"0.01")  # same message_id, signature broken
    await rig.engine.handle_push(forged)
    await async_until(lambda: _reported(rig) == 1)
    assert rig.sink.events[-1].message_id != "m-42"
    await rig.engine.handle_push(genuine)  # the real one, later
    assert rig.journal.get("TR1") is not None
    await async_until(lambda: rig.nfc.armed is not None)
    assert rig.nfc.armed is not None
    assert str(rig.nfc.armed.amount) == "12.50"


async def test_genuine_push_refused_is_reported_once_under_its_own_id(rig: Rig) -> None:
    expired = push_order("TR1", message_id="m-7", expires_in_ms=-1)
    for _ in range(3):  # the broker delivers it again
        await rig.engine.handle_push(expired)
    await async_until(lambda: _reported(rig) == 1)
    (event,) = [e for e in rig.sink.events if e.event is m.EventKind.REJECTED]
    assert (event.message_id, event.reason) == ("m-7", "expired")


async def test_a_genuine_id_with_a_long_digit_run_is_reported_as_it_came(rig: Rig) -> None:
    """A uuid4 hex id holds a run of 13 digits about once in 25: it was
    masked like a card number, and the TMS never heard of its push (the
    suite under load: 'fb8605bab2744ee2837034195869da5b' reported as
    'fb8605bab2744ee283******5869da5b'). The log line still masks it."""
    message_id = "fb8605bab2744ee2837034195869da5b"
    refused = push_order("TR1", message_id=message_id, sn="SOMEONE")
    await rig.engine.handle_push(refused)
    await async_until(lambda: _reported(rig) == 1)
    (event,) = [e for e in rig.sink.events if e.event is m.EventKind.REJECTED]
    assert (event.message_id, event.reason) == (message_id, "wrong_terminal")
    assert rig.journal.seen_push(message_id)


@pytest.mark.parametrize(
    "message_id",
    ["\x1b[2J4761739001010010", "\u202e" + "a" * 10, "A" * 70 + "4761739001010010"],
    ids=["control-chars-and-pan", "bidi", "too-long"],
)
async def test_a_genuine_id_outside_the_contract_is_reported_masked(
    rig: Rig, message_id: str
) -> None:
    """Signed, but no id anyone can match (docs/protocol.md: 1..64 printable
    ASCII): reported masked and cut, never as it came."""
    # Signed by the gateway's key, as the builder would not write it.
    fields = wirejson.loads(push_order("TR1", sn="SOMEONE"))
    fields["message_id"] = message_id
    fields["sign"] = sign({k: v for k, v in fields.items() if k != "sign"}, GW_PRIVATE)
    await rig.engine.handle_push(wirejson.dumps(fields).encode())
    await async_until(lambda: _reported(rig) == 1)
    (event,) = [e for e in rig.sink.events if e.event is m.EventKind.REJECTED]
    assert event.reason in ("malformed", "wrong_terminal")  # refused as signed, not forged
    assert event.message_id != message_id
    assert event.message_id is not None
    assert len(event.message_id) <= 64
    assert event.message_id.isascii()
    assert event.message_id.isprintable()
    assert "4761739001010010" not in event.message_id


async def test_a_flood_is_reported_at_a_bounded_rate_and_counted(tmp_path: Path) -> None:
    reports = RejectReports(burst=3, interval=0.05)
    rig = await _make(tmp_path / "journal.db", SimGateway(), reject_reports=reports)
    try:
        for i in range(200):
            await rig.engine.handle_push(b"garbage %d" % i)
        events = [e for e in rig.sink.events if e.event is m.EventKind.REJECTED]
        assert len(events) <= 4  # the burst, then held
        await async_until(lambda: _reported(rig) == 200)  # the timer reports the rest
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
    await async_until(lambda: _reported(rig) == 1)
    event = rig.sink.events[-1]
    # Signed by the gateway: reported under its own id, so the TMS knows which.
    assert (event.message_id, event.reason) == ("msg-TR1", "internal_error")
    assert not rig.journal.unsynced  # durable before the PUBACK, as any genuine push
    monkeypatch.undo()
    await rig.engine.handle_push(push_order("TR1"))  # delivered again: not taken twice
    await _pay(rig, "TR2")
    assert _reported(rig) == 1
    assert rig.journal.get("TR1") is None


async def test_a_flood_costs_no_fsync_per_message(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rejections are committed without a sync of their own (and most not at
    all: counted for the next report), so a flood does not slow a genuine
    push behind it."""
    syncs = 0
    journal = rig.journal
    real_tx, real_fdatasync = journal._tx, os.fdatasync

    @contextlib.contextmanager
    def counting_tx(*, deferred_sync: bool = False) -> Iterator[sqlite3.Connection]:
        nonlocal syncs
        syncs += not journal._depth and not deferred_sync  # a FULL commit: an fsync
        with real_tx(deferred_sync=deferred_sync) as db:
            yield db

    def counting_fdatasync(fd: int) -> None:
        nonlocal syncs
        syncs += 1
        real_fdatasync(fd)

    monkeypatch.setattr(journal, "_tx", counting_tx)
    monkeypatch.setattr("agent.journal.os.fdatasync", counting_fdatasync)
    flooded = 0
    for i in range(100):
        before = syncs
        await rig.engine.handle_push(b'{"message_id": "m-%d", "sign": "eA=="}' % i)
        flooded += syncs - before
    assert flooded == 0
    monkeypatch.undo()
    await _pay(rig, "TR1")


async def test_stop_reports_what_was_held(tmp_path: Path) -> None:
    """A count held by the rate limiter is not lost with the process: the
    stop journals it, and the next start sends it."""
    path = tmp_path / "journal.db"
    rig = await _make(path, SimGateway(), reject_reports=RejectReports(burst=1, interval=60))
    for i in range(5):
        await rig.engine.handle_push(b"garbage %d" % i)
    await async_until(lambda: _reported(rig) == 1)
    await rig.engine.stop()
    await rig.engine.gateway.aclose()
    rig.journal.close()
    again = await _make(path, SimGateway())
    try:
        await async_until(lambda: _reported(again) == 4)
        (event,) = [e for e in again.sink.events if e.event is m.EventKind.REJECTED]
        assert event.reason == "malformed (+3 more rejected since the last report)"
    finally:
        await again.engine.stop()
        await again.engine.gateway.aclose()
        again.journal.close()


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


def test_rejection_texts_are_made_safe_by_the_journal_itself(tmp_path: Path) -> None:
    """Whatever a caller hands it, a rejection write neither fails (a lone
    surrogate, a PAN-like run the card-data guard would refuse) nor keeps
    more than a short printable text."""
    journal = Journal(tmp_path / "journal.db")
    hostile = "m\ud800\x1b[2J 4761739001010010 " + "A" * 10_000
    try:
        journal.record_rejection(
            reason=hostile,
            detail=hostile,
            size=10_050,
            suppressed=0,
            claimed_id=hostile,
            event_id=hostile,
            event_reason=hostile,
        )
        (row,) = journal.rejections()
        (event,) = journal.pending_events()
        kept = [row["reason"], row["detail"], row["claimed_id"], event.message_id, event.reason]
        for text in kept:
            assert text.isascii()
            assert text.isprintable()
            assert len(text) <= 160
            assert "4761739001010010" not in text
            assert not re.search(r"\d{13}", text)
    finally:
        journal.close()


def test_open_push_raises_only_push_rejected() -> None:
    for kind, (make, reason) in HOSTILE.items():
        if reason == "too_large":
            continue  # the engine refuses it before open_push
        with pytest.raises(envelope.PushRejected) as info:
            envelope.open_push(make(), GW_PUBLIC, SN)
        assert info.value.message_id is None, kind
        assert info.value.reason == reason, kind
