"""A simulator for every failure (sandbox/README.md "Forcing failures"), end
to end with real processes: Mosquitto, the sandbox, a simulated PN532 on a
pseudo-terminal, ``sadad-agent run`` and the POS module (``cloud.pos``).

One test per failure a POS developer can force in the sandbox: terminal
offline, terminal busy, push acknowledgement lost, create answered after the
POS client's timeout, gateway 5xx (to the POS and to the terminal),
notification delivered twice and out of order, acquirer timeout, customer
cancel, card removed mid-read. Each asserts what the POS module sees (its
status, its exceptions) and what the terminal did, and ends with the POS,
the journal, the gateway's charges and the checkout agreeing on one final
status (``Terminal.settled`` / ``assert_all_settled``).

The sandbox runs at time scale 0.01 with ``--hang-seconds 1000`` (a ``.91``
hang lasts 10 s: longer than the agent's 1 s HTTP timeout plus its 5 s
resolve deadline) and ``--late-seconds 2`` (a late create is answered after
2 s; the POS clients here time out after 1 s).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from agent.bridge_replies import ActionReply, reply_data
from cloud import wirejson
from cloud.config import load_config
from cloud.errors import (
    CloudRejected,
    ContractError,
    TerminalBusy,
    TerminalOffline,
    WaitTimeout,
)
from cloud.messages import OnlineStatus, TransStatus
from cloud.pos import PosClient
from cloud.timeline import parse_timeline
from sandbox.broker_mosquitto import MosquittoBroker
from sandbox.faults import DECOY_PREFIX
from tests.integration.agent_rig import Order, Terminal, running_terminal
from tests.integration.conftest import REPO, SandboxHandle, running_sandbox
from tests.waiting import until

pytestmark = pytest.mark.timeout(60)

LATE_S = 2.0  # --late-seconds: how late a late create is answered
POS_TIMEOUT_S = 1.0  # the POS clients' HTTP timeout where it matters
WAIT_S = 20.0  # wait_for_final deadline once the order can end


class PosWebhook:
    """A POS server's notification endpoint built on the POS module: every
    POST goes through ``pos.accept_notification``; records
    ``(trans_status, is_new)`` per delivery."""

    def __init__(self) -> None:
        self.pos: PosClient | None = None
        self.seen: list[tuple[int, bool]] = []
        self._cond = threading.Condition()
        hook = self

        class _Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                assert hook.pos is not None
                try:
                    note, is_new = hook.pos.accept_notification(body)
                except ContractError:
                    code, text = 400, b"invalid"
                else:
                    code, text = 200, b"success"
                    with hook._cond:
                        hook.seen.append((int(note.trans_status), is_new))
                        hook._cond.notify_all()
                self.send_response(code)
                self.send_header("Content-Length", str(len(text)))
                self.end_headers()
                self.wfile.write(text)

            def log_message(self, format: str, *args: Any) -> None:
                return

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/notify"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def wait_for(self, count: int, timeout: float = 10.0) -> list[tuple[int, bool]]:
        with self._cond:
            assert self._cond.wait_for(lambda: len(self.seen) >= count, timeout), self.seen
            return list(self.seen)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)


@pytest.fixture(scope="module")
def gateway(
    tmp_path_factory: pytest.TempPathFactory, module_broker: MosquittoBroker
) -> Iterator[SandboxHandle]:
    root = tmp_path_factory.mktemp("faults")
    args = ["--hang-seconds", "1000", "--late-seconds", str(LATE_S)]
    with running_sandbox(root / "sandbox", module_broker, args) as handle:
        yield handle


@pytest.fixture
def webhook() -> Iterator[PosWebhook]:
    hook = PosWebhook()
    try:
        yield hook
    finally:
        hook.close()


@pytest.fixture
def term(gateway: SandboxHandle, tmp_path: Path, webhook: PosWebhook) -> Iterator[Terminal]:
    """A terminal whose POS client has ``webhook`` as its ``notify_url``, as a
    POS server would: its waits end when the notification comes."""
    with running_terminal(
        gateway,
        "F",
        tmp_path / "term",
        readers=("nfc",),
        gateway_timeout=1.0,
        resolve_deadline=5.0,
    ) as t:
        t.pos.close()
        config = dataclasses.replace(load_config(gateway.pos_config), notify_url=webhook.url)
        t.pos = webhook.pos = PosClient(config)
        yield t


def fault(term: Terminal, *args: str) -> dict[str, Any]:
    """``sadad-sandbox fault --terminal SN *args``, as a POS developer runs it."""
    cmd = [sys.executable, "-m", "sandbox.cli", "fault", "--data", str(term.sandbox.data_dir)]
    done = subprocess.run(
        [*cmd, "--terminal", term.sn, *args], cwd=REPO, capture_output=True, timeout=30
    )
    assert done.returncode == 0, done.stderr.decode()
    out = wirejson.loads(done.stdout)
    assert isinstance(out, dict)
    return out


@contextlib.contextmanager
def short_timeout_pos(term: Terminal) -> Iterator[PosClient]:
    """A POS client whose HTTP calls give up after ``POS_TIMEOUT_S``."""
    config = dataclasses.replace(term.pos.config, timeout=POS_TIMEOUT_S)
    with PosClient(config) as pos:
        yield pos


def pay_by_tap(term: Terminal, order: Order) -> None:
    term.screens.wait_screen("WAITING_FOR_CARD", order.trans_no)
    term.present("nfc", "present visa", order)


def event_kinds(term: Terminal, order: Order) -> list[str]:
    return [str(e["event"]) for e in term.events(message_id=order.message_id)]


# ---------------------------------------------------------------- the terminal's side of a push


def test_terminal_offline(term: Terminal) -> None:
    """``fault offline``: a create that asks to be refused for an offline
    terminal fails at once (TerminalOffline, 40903, nothing created); one
    that does not is created but held like a broker session's queue, so the
    POS's wait times out saying the terminal is offline. Once the fault is
    cleared the terminal gets the order and it is paid."""
    assert fault(term, "offline")["faults"] == {"offline": None}

    refused_no = "O" + uuid.uuid4().hex[:12]
    with pytest.raises(TerminalOffline) as refused:
        term.push("7.00", merchant_order_no=refused_no, reject_trade_when_terminal_offline=True)
    assert refused.value.code == "40903"
    with pytest.raises(CloudRejected) as unknown:
        term.pos.query_order(refused_no)
    assert unknown.value.code == "40402"  # nothing was created

    order = term.push("7.00")
    assert not order.terminal_online
    assert term.pos.query_order(order.merchant_order_no).trans_status is TransStatus.PREORDER
    with pytest.raises(WaitTimeout) as waited:
        term.pos.wait_for_final(order.merchant_order_no, deadline_s=1.0)
    assert not isinstance(waited.value, TerminalBusy)
    assert waited.value.last is not None
    assert waited.value.last.terminal_online_status is OnlineStatus.OFFLINE
    assert waited.value.why is not None
    assert waited.value.why.startswith("terminal offline")
    assert term.journal_row(order.trans_no) is None  # the push never reached it
    assert {s.screen.value for s in term.screens.screens} <= {"IDLE"}

    assert fault(term, "--clear")["faults"] == {}
    pay_by_tap(term, order)
    final = term.pos.wait_for_final(order.merchant_order_no, deadline_s=WAIT_S)
    assert final.trans_status is TransStatus.COMPLETED
    assert term.settled(order).phase == "APPROVED"
    # The events reach the gateway after the order is final there: wait for the
    # last one, then look at the first (delivered once, when it was back).
    until(lambda: "paid" in event_kinds(term, order))
    assert event_kinds(term, order)[0] == "received"
    term.assert_all_settled()


def test_terminal_busy(term: Terminal) -> None:
    """``fault busy``: a sale of the sandbox's own occupies the terminal, so the
    real one is answered ``busy`` and queued. The POS module's wait ends in
    TerminalBusy with the queue position; once the other sale has expired the
    order is shown and paid."""
    fault(term, "busy", "--seconds", "3")  # long enough to look while it lasts
    order = term.push("8.00")
    other = term.screens.wait_for(
        lambda s: s.order is not None and s.order.merchant_order_no.startswith(DECOY_PREFIX)
    )
    assert other.screen.value == "WAITING_FOR_CONFIRM"
    until(lambda: term.events(message_id=order.message_id, event="busy"))

    assert term.pos.query_order(order.merchant_order_no).trans_status is TransStatus.PREORDER
    with pytest.raises(TerminalBusy) as busy:
        term.pos.wait_for_final(order.merchant_order_no, deadline_s=2.0)
    assert busy.value.position == 1
    assert busy.value.last is not None
    assert busy.value.last.trans_status is TransStatus.PREORDER
    timeline = parse_timeline(busy.value.last.terminal_timeline)
    assert timeline.queue_position() == 1

    pay_by_tap(term, order)
    final = term.pos.wait_for_final(order.merchant_order_no, deadline_s=WAIT_S)
    assert final.trans_status is TransStatus.COMPLETED
    assert term.settled(order).phase == "APPROVED"
    until(lambda: "paid" in event_kinds(term, order))  # events trail the final status
    kinds = event_kinds(term, order)
    assert kinds.index("busy") < kinds.index("displayed") < kinds.index("paid")

    # The other sale ended on both sides too: expired, nothing charged.
    (row,) = term.sandbox.query(
        "SELECT trans_no, trans_status, trans_error_code FROM orders "
        "WHERE terminal_sn=? AND merchant_order_no LIKE ?",
        term.sn,
        DECOY_PREFIX + "%",
    )
    assert (row["trans_status"], row["trans_error_code"]) == (1, "EXPIRED")
    assert term.wait_journal_final(row["trans_no"]) == "EXPIRED"
    assert term.charges(row["trans_no"]) == []
    term.assert_all_settled()


def test_push_acknowledgement_lost(term: Terminal) -> None:
    """``.97`` (ack-lost): the terminal's acknowledgement never reaches the TMS
    (its ``received`` event is dropped) and the push is delivered twice more.
    The terminal journals, shows and pays it once."""
    order = term.push("9.97")
    pay_by_tap(term, order)
    final = term.pos.wait_for_final(order.merchant_order_no, deadline_s=WAIT_S)
    assert final.trans_status is TransStatus.COMPLETED
    assert term.settled(order).phase == "APPROVED"

    again = f"push {order.message_id} delivered again"
    until(lambda: term.log_text().count(again) == 2, timeout=10)
    assert term.journal_count("SELECT COUNT(*) FROM transactions") == 1
    pushes = "SELECT COUNT(*) FROM pushes WHERE message_id=?"
    assert term.journal_count(pushes, order.message_id) == 1
    screens = [s.screen.value for s in term.screens.screens if s.order]
    assert "WAITING_FOR_CARD" not in screens[screens.index("READING") :]  # never offered again
    until(lambda: "paid" in event_kinds(term, order))
    kinds = event_kinds(term, order)
    assert "received" not in kinds
    assert kinds.count("displayed") == 1
    assert len(term.charges(order.trans_no)) == 1
    term.assert_all_settled()


# ---------------------------------------------------------------- the POS's side of a create


def test_create_answered_after_pos_timeout(
    term: Terminal, caplog: pytest.LogCaptureFixture
) -> None:
    """``.94`` (late-create): the order is created and pushed at once, but its
    answer comes after the POS client's timeout. The client retries with the
    same body and gets the first answer: one order, one ``trans_no``, one
    push, paid once."""
    order_no = "O" + uuid.uuid4().hex[:12]
    with short_timeout_pos(term) as pos, caplog.at_level(logging.WARNING, logger="cloud.pos"):
        created = pos.push_order(
            terminal_sn=term.sn,
            merchant_order_no=order_no,
            price_currency="QAR",
            order_amount=Decimal("10.94"),
        )
    assert f"create {order_no} failed" in caplog.text  # the first try timed out
    rows = term.sandbox.query(
        "SELECT trans_no, message_id FROM orders WHERE merchant_order_no=?", order_no
    )
    assert [(r["trans_no"], r["message_id"]) for r in rows] == [
        (created.trans_no, created.message_id)
    ]
    order = Order(order_no, created.trans_no, created.message_id, True)
    term.orders.append(order)
    pay_by_tap(term, order)
    final = term.pos.wait_for_final(order_no, deadline_s=WAIT_S)
    assert final.trans_status is TransStatus.COMPLETED
    assert term.settled(order).phase == "APPROVED"
    assert term.journal_count("SELECT COUNT(*) FROM transactions") == 1
    assert len(term.sandbox.query("SELECT 1 FROM pushes WHERE trans_no=?", order.trans_no)) == 1
    term.assert_all_settled()


@pytest.mark.parametrize(
    ("amount", "phase", "status"),
    [
        ("11.95", "APPROVED", TransStatus.COMPLETED),  # the POS's create answered 500
        ("11.93", "CANCELLED", TransStatus.CANCELLED),  # the terminal's payment answered 503
        ("11.52", "APPROVED", TransStatus.COMPLETED),  # charged, then answered 500
    ],
    ids=["create-500", "payment-503", "payment-500-after-charge"],
)
def test_gateway_5xx(
    term: Terminal,
    caplog: pytest.LogCaptureFixture,
    amount: str,
    phase: str,
    status: TransStatus,
) -> None:
    """The gateway answers 5xx. To the POS's create (``.95``, create-500): the
    order was created, the POS module retries with the same body and gets the
    same ``trans_no``. To the terminal's payment: nothing happened (``.93``),
    so the agent's detail finds nothing and its reverse closes the order (3),
    or it was charged (``.52``), which detail finds (2). Never charged twice."""
    with caplog.at_level(logging.WARNING, logger="cloud.pos"):
        order = term.push(amount)
    retried = f"create {order.merchant_order_no} failed" in caplog.text
    assert retried is (amount == "11.95")
    assert len(term.sandbox.query("SELECT 1 FROM orders WHERE trans_no=?", order.trans_no)) == 1
    pay_by_tap(term, order)
    final = term.pos.wait_for_final(order.merchant_order_no, deadline_s=WAIT_S)
    assert final.trans_status is status
    done = term.settled(order)
    assert done.phase == phase
    if phase == "CANCELLED":
        assert final.trans_error_code == "REVERSED"
        assert done.charges == []
        assert f"payment {order.trans_no} outcome unknown" in term.log_text()
    term.assert_all_settled()


# ---------------------------------------------------------------- notifications


def test_notification_twice_and_out_of_order(term: Terminal, webhook: PosWebhook) -> None:
    """``.96`` (notify-twice): after the final notification the gateway delivers
    an older one (status 0) and then the final one again. The POS module
    wakes on the first, ignores the stale one, counts the repeat as a
    duplicate, and its status stays paid."""
    order = term.push("12.96")
    pay_by_tap(term, order)
    final = term.pos.wait_for_final(order.merchant_order_no, deadline_s=WAIT_S)
    assert final.trans_status is TransStatus.COMPLETED
    assert webhook.wait_for(3) == [(2, True), (0, True), (2, False)]
    known = term.pos.known_order(order.merchant_order_no)
    assert known is not None
    assert known.trans_status is TransStatus.COMPLETED
    assert term.pos.wait_for_final(order.merchant_order_no, deadline_s=1).auth_code == (
        final.auth_code
    )
    assert term.settled(order).phase == "APPROVED"
    term.assert_all_settled()


# ---------------------------------------------------------------- the acquirer and the customer


def test_acquirer_timeout(term: Terminal) -> None:
    """``.91``: the acquirer does not answer within the agent's HTTP timeout nor
    its resolve deadline. The agent reverses; the POS sees cancelled (3,
    REVERSED) and the checkout "cancelled - no charge"."""
    order = term.push("13.91")
    pay_by_tap(term, order)
    final = term.pos.wait_for_final(order.merchant_order_no, deadline_s=WAIT_S)
    assert (final.trans_status, final.trans_error_code) == (TransStatus.CANCELLED, "REVERSED")
    done = term.settled(order)
    assert done.phase == "CANCELLED"
    term.wait_outcome(order, "cancelled")
    assert f"payment {order.trans_no} outcome unknown" in term.log_text()
    assert f"payment {order.trans_no} reversed" in term.log_text()
    term.assert_all_settled()


def test_customer_cancel(term: Terminal) -> None:
    """The customer cancels on the checkout (its cancel key, here the bridge's
    ``cancel`` intent): the POS sees cancelled (3) and can no longer close it."""
    order = term.push("14.00")
    term.screens.wait_screen("WAITING_FOR_CARD", order.trans_no)
    cancelled = term.screens.request("cancel", trans_no=order.trans_no)
    assert reply_data(cancelled, ActionReply).accepted
    final = term.pos.wait_for_final(order.merchant_order_no, deadline_s=WAIT_S)
    assert final.trans_status is TransStatus.CANCELLED
    with pytest.raises(CloudRejected) as refused:
        term.pos.close_order(order.merchant_order_no, terminal_sn=term.sn)
    assert refused.value.code == "40902"
    done = term.settled(order)
    assert (done.phase, done.charges) == ("CANCELLED", [])
    term.wait_outcome(order, "cancelled")
    until(lambda: "cancelled" in event_kinds(term, order))
    term.assert_all_settled()


def test_card_removed_mid_read(term: Terminal) -> None:
    """The card leaves the field in the middle of the EMV read (the simulator's
    ``pulled`` card): nothing is sent to the gateway, the checkout asks to tap
    again, and the next tap pays once."""
    order = term.push("15.00")
    term.screens.wait_screen("WAITING_FOR_CARD", order.trans_no)
    mark = term.screens.mark()
    term.sims["nfc"].send("present pulled")
    asked = term.screens.wait_for(lambda s: "removed" in (s.message or ""), after=mark)
    assert asked.screen.value == "WAITING_FOR_CARD"
    assert term.journal_phase(order.trans_no) == "AWAITING_PAYMENT"
    creates = "SELECT request_no FROM cashier_requests WHERE trans_no=?"
    assert term.sandbox.query(creates, order.trans_no) == []
    assert term.pos.query_order(order.merchant_order_no).trans_status is TransStatus.PREORDER

    term.present("nfc", "present visa", order)
    final = term.pos.wait_for_final(order.merchant_order_no, deadline_s=WAIT_S)
    assert final.trans_status is TransStatus.COMPLETED
    assert term.settled(order).phase == "APPROVED"
    assert len(term.sandbox.query(creates, order.trans_no)) == 1
    term.wait_outcome(order, "approved")
    term.assert_all_settled()
