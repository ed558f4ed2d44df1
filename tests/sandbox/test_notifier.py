"""Notification retry schedule (docs/protocol.md part B) and delivery against a
real local HTTP server, in-process."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from cloud import envelope
from cloud.messages import TransStatus, TransType
from cloud.signing import generate_key_pem
from sandbox.notifier import MAX_ATTEMPTS, SCHEDULE_S, Notifier, retry_delay_s
from sandbox.store import Order, Store
from tests.waiting import async_until

PRIVATE, PUBLIC = generate_key_pem()


def test_schedule_is_15_attempts_over_about_12_hours() -> None:
    assert MAX_ATTEMPTS == 15
    assert SCHEDULE_S[:5] == (5, 10, 15, 30, 60)
    assert SCHEDULE_S[5:8] == (180, 600, 900)
    assert SCHEDULE_S[8:] == (1800,) * 3 + (10800,) * 3
    assert sum(SCHEDULE_S) == 11 * 3600  # "about 12 h" in docs/protocol.md
    assert retry_delay_s(1) == 5
    assert retry_delay_s(3, 0.01) == pytest.approx(0.15)
    assert retry_delay_s(14) == 10800
    assert retry_delay_s(15) is None


class _Server:
    def __init__(self, answers: list[tuple[int, bytes]]) -> None:
        self.bodies: list[bytes] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                outer.bodies.append(body)
                status, answer = answers[min(len(outer.bodies), len(answers)) - 1]
                self.send_response(status)
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, format: str, *args: Any) -> None:
                return

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/n"
        self.thread = threading.Thread(target=self.httpd.serve_forever)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join()


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    with Store(tmp_path / "n.db") as s:
        yield s


async def test_only_200_success_counts(store: Store) -> None:
    # 200 with another body, then 500, then 200 "success"
    server = _Server([(200, b"ok"), (500, b"success"), (200, b"success")])
    try:
        store.insert_order(
            Order(
                trans_no="T1", merchant_no="M0001", merchant_order_no="A", terminal_sn="S",
                store_no=None, trans_type=TransType.SALE, orig_trans_no=None,
                trans_status=TransStatus.PREORDER, price_currency="QAR",
                order_amount=Decimal("1.50"), tip_amount=None, trans_amount=Decimal("1.50"),
                attach=None, pay_scenario=None, description=None, notify_url=server.url,
                expires_at=2**41, order_queue_mode="FIFO", confirm_on_terminal=False,
                fingerprint="f", message_id="m", create_answer="{}", close_answer=None,
                created_ms=1, updated_ms=1,
            )
        )  # fmt: skip
        store.move("T1", TransStatus.CLOSED, why="test", trans_error_code="CLOSED")
        notifier = Notifier(store, PRIVATE, time_scale=0.001)
        task = asyncio.create_task(notifier.run())
        try:
            await async_until(lambda: len(server.bodies) >= 3)
            await asyncio.sleep(0.05)
        finally:
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
    finally:
        server.close()
    assert len(server.bodies) == 3
    notes = [envelope.verify_notification(b, PUBLIC) for b in server.bodies]
    assert {n.notify_id for n in notes} == {notes[0].notify_id}
    assert notes[0].order_amount == Decimal("1.50")
    assert b'"order_amount":1.50' in server.bodies[0]
    assert store.due_notifications(2**62) == []


def _order(notify_url: str, trans_no: str = "T2") -> Order:
    return Order(
        trans_no=trans_no, merchant_no="M0001", merchant_order_no="A-" + trans_no,
        terminal_sn="S", store_no=None, trans_type=TransType.SALE, orig_trans_no=None,
        trans_status=TransStatus.PREORDER, price_currency="QAR",
        order_amount=Decimal("1.50"), tip_amount=None, trans_amount=Decimal("1.50"),
        attach=None, pay_scenario=None, description=None, notify_url=notify_url,
        expires_at=2**41, order_queue_mode="FIFO", confirm_on_terminal=False,
        fingerprint="f", message_id="m", create_answer="{}", close_answer=None,
        created_ms=1, updated_ms=1,
    )  # fmt: skip


async def _deliver_all(store: Store, server: _Server, count: int) -> None:
    notifier = Notifier(store, PRIVATE, time_scale=0.001)
    task = asyncio.create_task(notifier.run())
    try:
        await async_until(lambda: len(server.bodies) >= count, timeout=30)
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_notifications_name_the_merchant_and_its_pos_app(store: Store) -> None:
    """Part B: the gateway signs every merchant's notifications with one key,
    so each names the merchant and the POS app whose order it is - also one
    queued by an older sandbox that did not write them into its snapshot."""
    store.ensure_merchant("M0001", "pos-sandbox", PUBLIC, "Demo")
    server = _Server([(200, b"success")])
    try:
        store.insert_order(_order(server.url, "T2"))
        store.move("T2", TransStatus.CLOSED, why="test", trans_error_code="CLOSED")
        store.insert_order(_order(server.url, "T3"))
        store.move("T3", TransStatus.CLOSED, why="test", trans_error_code="CLOSED")
        with store.transaction() as db:  # T3's snapshot as an older sandbox wrote it
            (info,) = db.execute("SELECT info FROM notifications WHERE trans_no = 'T3'").fetchone()
            old = {k: v for k, v in json.loads(info).items() if k not in ("merchant_no", "app_id")}
            db.execute(
                "UPDATE notifications SET info = ? WHERE trans_no = 'T3'", (json.dumps(old),)
            )
        await _deliver_all(store, server, 2)
    finally:
        server.close()
    notes = sorted(
        (envelope.verify_notification(b, PUBLIC) for b in server.bodies), key=lambda n: n.trans_no
    )
    assert [(n.trans_no, n.merchant_no, n.app_id) for n in notes] == [
        ("T2", "M0001", "pos-sandbox"),
        ("T3", "M0001", "pos-sandbox"),
    ]
