"""Pushes end to end: the persistent MQTT session, duplicates, and the pushes
a terminal must refuse (docs/protocol.md part C), with the real agent, broker and
sandbox."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest

from cloud import envelope, wirejson
from cloud.messages import MAX_DESCRIPTION, PushOrder, PushTopic, TransStatus, TransType
from cloud.signing import generate_key_pem
from tests.integration.agent_rig import Terminal, running_terminal
from tests.integration.conftest import REPO, SandboxHandle, SubscriberFactory
from tests.waiting import until

pytestmark = pytest.mark.timeout(90)


@pytest.fixture
def term(module_sandbox: SandboxHandle, tmp_path: Path) -> Iterator[Terminal]:
    with running_terminal(module_sandbox, "P", tmp_path / "term") as t:
        yield t


def _more(reason: str) -> int:
    """How many more rejections a ``rejected`` event's reason says it stands for."""
    match = re.search(r"\(\+(\d+) more rejected", reason)
    return int(match.group(1)) if match else 0


def _orders_topic(sn: str) -> str:
    return f"sadad/v1/terminals/{sn}/orders"


def _online(term: Terminal) -> str:
    rows = term.sandbox.query("SELECT status FROM terminal_status WHERE sn=?", term.sn)
    return str(rows[0]["status"]) if rows else "unknown"


@pytest.mark.parametrize("how", ["sigterm", "sigkill"])
def test_push_while_agent_down_is_paid_after_restart(term: Terminal, how: str) -> None:
    """Pushed while the agent is down, after a clean stop or a SIGKILL: the
    broker keeps the push in the terminal's persistent session and the agent
    shows and pays it when it starts again."""
    if how == "sigterm":
        assert term.stop_agent() == 0
        until(lambda: _online(term) == "offline")  # the agent said so itself
    else:
        term.kill_agent()
    order = term.push("8.00")
    if how == "sigterm":
        assert not order.terminal_online
    assert term.journal_row(order.trans_no) is None  # nobody took it yet

    term.start_agent()
    term.screens.wait_screen("WAITING_FOR_CARD", order.trans_no)
    term.present("nfc", "present visa", order)
    done = term.settled(order)
    assert done.info.trans_status is TransStatus.COMPLETED
    term.wait_outcome(order, "approved")
    until(lambda: term.events(message_id=order.message_id, event="paid"))
    kinds = [e["event"] for e in term.events(message_id=order.message_id)]
    assert kinds == ["received", "displayed", "paid"]
    term.assert_all_settled()


def test_order_closed_while_agent_down(term: Terminal) -> None:
    """Pushed, then closed by the POS, both while the agent is down: on start
    it takes both pushes from its session, in order, and ends the order
    closed (status 1 at the POS) without a charge."""
    assert term.stop_agent() == 0
    order = term.push("8.20")
    term.pos.close_order(order.merchant_order_no, "changed my mind", terminal_sn=term.sn)
    term.start_agent()
    done = term.settled(order)
    assert (done.phase, done.info.trans_status) == ("CLOSED", TransStatus.CLOSED)
    assert done.charges == []
    until(lambda: term.events(message_id=order.message_id, event="closed"))
    term.assert_all_settled()


def test_duplicate_push_is_processed_once(
    term: Terminal, terminal_subscriber: SubscriberFactory
) -> None:
    """The TMS's own push, republished verbatim twice while the order is on
    screen and once more after it was paid: journaled once, shown once,
    reported once, paid once."""
    sub = terminal_subscriber(term.sn, on=term.sandbox)
    order = term.push("9.00")
    (real,) = sub.wait_for(1, timeout=10)
    assert wirejson.loads(real.payload)["message_id"] == order.message_id
    term.screens.wait_screen("WAITING_FOR_CARD", order.trans_no)

    def redelivered() -> int:
        return term.log_text().count(f"push {order.message_id} delivered again")

    topic = _orders_topic(term.sn)
    term.sandbox.publish(topic, real.payload)
    term.sandbox.publish(topic, real.payload)
    until(lambda: redelivered() == 2)
    term.present("nfc", "present visa", order)
    assert term.settled(order).info.trans_status is TransStatus.COMPLETED
    term.wait_outcome(order, "approved")

    # Replayed after it was paid: nothing happens either.
    mark = term.screens.mark()
    term.sandbox.publish(topic, real.payload)
    until(lambda: redelivered() == 3)
    assert term.screens.request("status").data["queue"] == []  # not queued again
    assert {s.screen.value for s in term.screens.since(mark)} <= {"RESULT", "IDLE"}

    # Never offered again once the card was read.
    screens = [s.screen.value for s in term.screens.screens if s.order]
    assert "WAITING_FOR_CARD" not in screens[screens.index("READING") :]
    assert term.journal_count("SELECT COUNT(*) FROM transactions") == 1
    pushes = "SELECT COUNT(*) FROM pushes WHERE message_id=?"
    assert term.journal_count(pushes, order.message_id) == 1
    until(lambda: term.events(message_id=order.message_id, event="paid"))
    kinds = [e["event"] for e in term.events(message_id=order.message_id)]
    assert kinds == ["received", "displayed", "paid"]
    assert len(term.charges(order.trans_no)) == 1
    term.assert_all_settled()


def _biz(term: Terminal, trans_no: str, **over: Any) -> PushOrder:
    fields: dict[str, Any] = {
        "trans_no": trans_no,
        "merchant_no": "M0001",
        "terminal_sn": term.sn,
        "merchant_order_no": "O" + trans_no,
        "price_currency": "QAR",
        "order_amount": "7.00",
        "trans_type": int(TransType.SALE),
        "expires_at": envelope.now_ms() + 120_000,
    }
    fields.update(over)
    return msgspec.convert(fields, PushOrder, strict=False)


def _push(biz: PushOrder, key: str, ts_ms: int | None = None) -> bytes:
    built = envelope.build_push(PushTopic.PAY_ORDER, biz, app_id="gw", private_key=key, ts_ms=ts_ms)
    return msgspec.json.encode(built)


def test_bad_pushes_are_rejected_reported_and_never_shown(term: Terminal) -> None:
    """Forged (another key), tampered, expired, for another terminal, off the
    clock and malformed pushes: each is rejected, reported to the gateway in
    a signed ``rejected`` event with its reason, never journaled as an order
    and never shown; the terminal takes a good order afterwards."""
    gw_key = (term.sandbox.data_dir / "keys" / "gateway_private.pem").read_text()
    now = envelope.now_ms()
    tampered = wirejson.loads(_push(_biz(term, "TAMPER1"), gw_key))
    tampered["biz_data"] = tampered["biz_data"].replace("7.00", "0.01")
    bad: list[tuple[str, bytes]] = [
        ("bad_signature", _push(_biz(term, "FORGED1"), generate_key_pem()[0])),
        ("bad_signature", wirejson.dumps(tampered).encode()),
        ("expired", _push(_biz(term, "EXPIRED1", expires_at=now - 1_000), gw_key)),
        ("wrong_terminal", _push(_biz(term, "OTHER1", terminal_sn="SOMEONE"), gw_key)),
        ("clock", _push(_biz(term, "STALE1"), gw_key, ts_ms=now - 20 * 60_000)),
    ]
    expected = {wirejson.loads(payload)["message_id"]: reason for reason, payload in bad}
    assert len(expected) == len(bad)

    mark = term.screens.mark()
    topic = _orders_topic(term.sn)
    for _reason, payload in bad:
        term.sandbox.publish(topic, payload)
    term.sandbox.publish(topic, b"{not json")

    def rejected() -> dict[str, str]:
        return {e["message_id"]: e["reason"] for e in term.events(event="rejected")}

    def reported() -> int:  # each event, plus the rejections it says it stands for
        return sum(1 + _more(e["reason"]) for e in term.events(event="rejected"))

    until(lambda: reported() == len(bad) + 1, timeout=15)
    got = rejected()
    # Genuine (gateway-signed) pushes are reported under their own id, each.
    for message_id, reason in expected.items():
        if reason != "bad_signature":
            assert got.pop(message_id) == reason, reason
    # The others are nobody's: reported under ids the terminal makes, never the
    # id they claim (a forgery must not attach itself to a genuine order).
    assert not set(got) & set(expected)
    assert all(message_id.startswith("rejected-") for message_id in got)
    assert {r.split(" ")[0] for r in got.values()} <= {"bad_signature", "malformed"}

    assert all(s.screen.value == "IDLE" for s in term.screens.since(mark))
    assert term.journal_count("SELECT COUNT(*) FROM transactions") == 0
    status = wirejson.loads(
        term.sandbox.query("SELECT payload FROM terminal_status WHERE sn=?", term.sn)[0]["payload"]
    )
    assert (status["screen"], status["queue"]) == ("IDLE", 0)
    log = term.log_text()
    for reason in ("bad_signature", "expired", "wrong_terminal", "clock"):
        assert f"({reason}" in log

    # A forged push is never remembered as seen (only signed ones are): sent
    # again, it is rejected and counted again.
    term.sandbox.publish(topic, bad[0][1])
    until(lambda: reported() == len(bad) + 2, timeout=15)
    order = term.push("7.00")
    term.screens.wait_screen("WAITING_FOR_CARD", order.trans_no)
    term.present("nfc", "present visa", order)
    assert term.settled(order).info.trans_status is TransStatus.COMPLETED
    assert reported() == len(bad) + 2
    assert all(
        s.order is None or s.order.trans_no == order.trans_no for s in term.screens.since(mark)
    )
    term.assert_all_settled()


def _fault(term: Terminal, *args: str) -> None:
    cmd = [sys.executable, "-m", "sandbox.cli", "fault", "--data", str(term.sandbox.data_dir)]
    done = subprocess.run([*cmd, "--terminal", term.sn, *args], cwd=REPO, capture_output=True)
    assert done.returncode == 0, done.stderr.decode()


ODD = "\x1b[2J\x07 قهوة\u202e ☕ e\u0301\u0301 \u200f\r\n" + "x" * 60


def test_long_and_odd_descriptions_never_stop_the_terminal(term: Terminal) -> None:
    """With the checkout connected: a genuinely signed push whose description is
    200 KB (over the push size limit: rejected, never shown), one whose
    description is 60 KB (under it: shown cut to what fits), and one full of
    control, right-to-left and combining characters from the POS: the two
    that can be are paid, and so is the next order."""
    gw_key = (term.sandbox.data_dir / "keys" / "gateway_private.pem").read_text()
    topic = _orders_topic(term.sn)
    huge = _push(_biz(term, "HUGE1", description="d" * 200_000), gw_key)
    term.sandbox.publish(topic, huge)

    # An order the gateway has, whose push the sandbox holds (terminal
    # "offline"): the same order arrives first in a push of our own signing
    # with a 60 KB description; the held one, later, is the same trans_no.
    _fault(term, "offline")
    order = term.push("7.00")
    long = _biz(
        term,
        order.trans_no,
        description="long " * 12_000,
        merchant_order_no=order.merchant_order_no,
    )
    term.sandbox.publish(topic, _push(long, gw_key))
    shown = term.screens.wait_screen("WAITING_FOR_CARD", order.trans_no)
    assert shown.order is not None
    assert len(shown.order.description) <= MAX_DESCRIPTION
    assert shown.order.description.endswith("\u2026")
    term.present("nfc", "present visa", order)
    assert term.settled(order).phase == "APPROVED"
    _fault(term, "--clear")

    odd = term.push("7.10", description=ODD)
    shown = term.screens.wait_screen("WAITING_FOR_CARD", odd.trans_no)
    assert shown.order is not None
    text = shown.order.description
    assert "قهوة" in text
    assert "☕" in text
    assert not any(c in text for c in "\x1b\x07\r\n\u202e\u200f")
    term.present("nfc", "present visa", odd)
    assert term.settled(odd).phase == "APPROVED"

    # The agent announced its maximum packet size (MQTT 5): the broker dropped
    # the 200 KB push without delivering it (under 3.1.1 the agent rejects it
    # unread: tests/integration/test_hostile_pushes.py).
    after = term.push("7.20")
    term.screens.wait_screen("WAITING_FOR_CARD", after.trans_no)
    term.present("nfc", "present visa", after)
    assert term.settled(after).phase == "APPROVED"
    assert term.journal_row("HUGE1") is None
    term.assert_all_settled()
