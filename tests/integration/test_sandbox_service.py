"""The sandbox as a service: notifications with the scaled retry schedule
(docs/protocol.md part B), restarts, broker restarts, bad input, its own broker."""

from __future__ import annotations

import itertools
import socket
import time
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path

import httpx

from cloud import envelope, wirejson
from cloud.messages import Method, OrderInfo, PayOrderResult, TransStatus
from cloud.signing import generate_key_pem, sign
from sandbox.keys import POS_APP_ID
from sandbox.notifier import SCHEDULE_S
from tests.integration.conftest import (
    TIME_SCALE,
    NotifyReceiver,
    SandboxHandle,
    TerminalSubscriber,
    order_fields,
    start_sandbox_process,
    stop_process,
)
from tests.waiting import until


def close_order(sandbox: SandboxHandle, sn: str, merchant_order_no: str) -> None:
    close = {"merchant_no": "M0001", "terminal_sn": sn, "merchant_order_no": merchant_order_no}
    assert sandbox.answer(sandbox.pos_call(Method.PAY_CLOSE, close))["code"] == "0"


def query(sandbox: SandboxHandle, merchant_order_no: str) -> OrderInfo:
    resp = sandbox.pos_call(
        Method.ORDER_QUERY, {"merchant_no": "M0001", "merchant_order_no": merchant_order_no}
    )
    return sandbox.open_ok(resp, OrderInfo)


def test_failed_notification_is_retried_on_the_scaled_schedule_until_success(
    sandbox: SandboxHandle, notify_receiver: NotifyReceiver
) -> None:
    sandbox.provision("T300")
    notify_receiver.fail_first = 3
    fields = order_fields("T300", notify_url=notify_receiver.url, attach="a1")
    created = sandbox.open_ok(sandbox.pos_call(Method.PAY_ORDER, fields), PayOrderResult)
    close_order(sandbox, "T300", fields["merchant_order_no"])

    deliveries = notify_receiver.wait_for(4, timeout=10)
    assert [d.answered_ok for d in deliveries] == [False, False, False, True]
    gaps = [b.at - a.at for a, b in itertools.pairwise(deliveries)]
    for gap, wait in zip(gaps, SCHEDULE_S[:3], strict=True):
        assert gap >= wait * TIME_SCALE * 0.9, gaps
    bodies = [d.body for d in deliveries]
    notes = [envelope.verify_notification(b, sandbox.gateway_public_key) for b in bodies]
    assert {n.notify_id for n in notes} == {notes[0].notify_id}
    assert all(n.trans_no == created.trans_no for n in notes)
    assert all(n.trans_status is TransStatus.CLOSED for n in notes)
    assert notes[0].trans_error_code == "CLOSED"
    assert notes[0].attach == "a1"
    assert notes[0].terminal_timeline is None

    # delivered: no more attempts (the next one would be due after 0.3 s)
    def delivered() -> bool:
        (row,) = sandbox.query("SELECT state, attempts FROM notifications")
        return (row["state"], row["attempts"]) == ("delivered", 4)

    until(delivered)
    time.sleep(0.5)
    assert len(notify_receiver.deliveries) == 4


def test_restart_keeps_orders_and_resumes_pending_notifications(
    sandbox: SandboxHandle, notify_receiver: NotifyReceiver
) -> None:
    sandbox.provision("T301")
    notify_receiver.fail_first = 10**6
    kept = order_fields("T301", order_amount=Decimal("3.10"))
    kept_result = sandbox.open_ok(sandbox.pos_call(Method.PAY_ORDER, kept), PayOrderResult)
    noted = order_fields("T301", notify_url=notify_receiver.url)
    sandbox.open_ok(sandbox.pos_call(Method.PAY_ORDER, noted), PayOrderResult)
    close_order(sandbox, "T301", noted["merchant_order_no"])
    notify_receiver.wait_for(2)

    assert sandbox.stop() == 0
    failed_so_far = len(notify_receiver.deliveries)
    notify_receiver.fail_first = failed_so_far  # the next delivery succeeds
    sandbox.restart()

    info = query(sandbox, kept["merchant_order_no"])
    assert info.trans_no == kept_result.trans_no
    assert info.trans_status is TransStatus.PREORDER
    assert info.order_amount == Decimal("3.10")
    # the same create is still answered with the first answer
    again = sandbox.open_ok(sandbox.pos_call(Method.PAY_ORDER, kept), PayOrderResult)
    assert again.message_id == kept_result.message_id
    # the pending notification resumes after the restart
    until(lambda: notify_receiver.deliveries[-1].answered_ok, timeout=10)
    (row,) = sandbox.query("SELECT state, attempts FROM notifications")
    assert row["state"] == "delivered"
    # (an attempt cut short by the stop may not have been recorded)
    assert row["attempts"] in (failed_so_far, failed_so_far + 1)


def test_bad_input_gets_a_clean_signed_error_and_the_server_keeps_running(
    sandbox: SandboxHandle,
) -> None:
    sandbox.provision("T302")
    headers = {"Content-Type": "application/json"}

    def post(body: bytes, path: str = envelope.ENTRY_PATH) -> httpx.Response:
        return httpx.post(sandbox.http_url + path, content=body, headers=headers, timeout=10)

    def signed(fields: dict[str, object], key: str | None = None) -> bytes:
        body = envelope.build_request(
            Method.PAY_ORDER, fields, app_id=POS_APP_ID, private_key=key or sandbox.pos_private_key
        )
        return envelope.encode(body)

    good = order_fields("T302")
    for body in (b"", b"garbage{", b"[1, 2]", b'"text"', b"\xff\xfe"):
        resp = post(body)
        assert resp.status_code == 400, body
        assert sandbox.answer(resp)["code"] == "40000"

    unsigned = wirejson.loads(signed(good))
    del unsigned["sign"]
    assert sandbox.answer(post(wirejson.dumps(unsigned).encode()))["code"] == "40002"
    blank = dict(unsigned, sign="")
    assert sandbox.answer(post(wirejson.dumps(blank).encode()))["code"] == "40002"
    forger, _ = generate_key_pem()
    assert sandbox.answer(post(signed(good, forger)))["code"] == "40002"
    tampered = wirejson.loads(signed(good))
    tampered["order_amount"] = Decimal("1.00")
    assert sandbox.answer(post(envelope.encode(tampered)))["code"] == "40002"

    stranger = envelope.build_request(
        Method.PAY_ORDER, good, app_id="someone-else", private_key=sandbox.pos_private_key
    )
    refused = sandbox.answer(post(envelope.encode(stranger)))
    assert refused["code"] == "40003"
    assert "someone-else" in refused["msg"]
    # a POS app key is not a terminal: the cashier endpoint refuses it
    as_terminal = post(signed(good), envelope.CASHIER_PATH)
    assert sandbox.answer(as_terminal)["code"] == "40003"

    stale = envelope.build_request(
        Method.PAY_ORDER,
        good,
        app_id=POS_APP_ID,
        private_key=sandbox.pos_private_key,
        ts_ms=envelope.now_ms() - 16 * 60 * 1000,
    )
    assert sandbox.answer(post(envelope.encode(stale)))["code"] == "40004"

    unknown = sandbox.answer(sandbox.pos_call("wisehub.cloud.pay.teleport", good))
    assert unknown["code"] == "40005"

    invalid = sandbox.answer(sandbox.pos_call(Method.PAY_ORDER, good | {"order_amount": "x"}))
    assert invalid["code"] == "40001"
    assert "$.order_amount" in invalid["msg"]
    too_precise = sandbox.pos_call(Method.PAY_ORDER, good | {"order_amount": Decimal("1.005")})
    assert "$.order_amount" in sandbox.answer(too_precise)["msg"]
    missing = sandbox.answer(sandbox.pos_call(Method.PAY_ORDER, {"merchant_no": "M0001"}))
    assert missing["code"] == "40001"
    bad_url = sandbox.answer(sandbox.pos_call(Method.PAY_ORDER, good | {"notify_url": "x:y"}))
    assert "$.notify_url" in bad_url["msg"]
    wrong_merchant = sandbox.answer(
        sandbox.pos_call(Method.PAY_ORDER, good | {"merchant_no": "M9"})
    )
    assert wrong_merchant["code"] == "40006"
    # a signature over a float-free but odd object still verifies and is refused cleanly
    odd = {"app_id": POS_APP_ID, "method": "order.query", "timestamp": envelope.timestamp()}
    odd["sign"] = sign(odd, sandbox.pos_private_key)
    assert sandbox.answer(post(wirejson.dumps(odd).encode()))["code"] == "40001"

    for resp in (post(b"garbage"), sandbox.pos_call(Method.PAY_ORDER, good)):
        assert "Traceback" not in resp.text
    assert sandbox.process.poll() is None
    assert sandbox.open_ok(sandbox.pos_call(Method.PAY_ORDER, good), PayOrderResult).trans_no
    assert httpx.get(sandbox.http_url + "/health").json() == {"status": "ok"}


def test_tms_reconnects_after_a_broker_restart(
    sandbox: SandboxHandle, terminal_subscriber: Callable[[str], TerminalSubscriber]
) -> None:
    sandbox.provision("T303")
    assert sandbox.broker is not None
    sandbox.broker.restart()
    sub = terminal_subscriber("T303")
    fields = order_fields("T303")
    created = sandbox.open_ok(sandbox.pos_call(Method.PAY_ORDER, fields), PayOrderResult)
    (msg,) = sub.wait_for(1, timeout=15)
    push, _ = envelope.open_push(msg.payload, sandbox.gateway_public_key, "T303")
    assert push.message_id == created.message_id


def test_serve_with_its_own_broker_and_a_clean_stop(tmp_path: Path) -> None:
    data = tmp_path / "own"
    proc, announce = start_sandbox_process(
        data, ["--port", "0", "--start-broker", "--time-scale", "0.01"], tmp_path / "own.log"
    )
    try:
        assert set(announce) == {"http_url", "mqtt_url", "data", "pos_config"}
        assert announce["data"] == str(data.resolve())
        assert announce["mqtt_url"].startswith("mqtt://127.0.0.1:")
        port = int(announce["mqtt_url"].rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port), timeout=2):
            pass
        conf = (data / "mosquitto" / "mosquitto.conf").read_text()
        assert f"listener {port} 127.0.0.1" in conf
        assert "allow_anonymous false" in conf  # a user per terminal (issue 16)
        assert "persistence true" in conf
        for name in ("gateway_private", "gateway_public", "pos_private", "pos_public"):
            assert (data / "keys" / f"{name}.pem").exists()
    finally:
        code = stop_process(proc)
    assert code == 0
    refused = True
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            refused = False
    except OSError:
        pass
    assert refused, "the sandbox's broker still listens after it stopped"
    assert "Traceback" not in (tmp_path / "own.log").read_text()
