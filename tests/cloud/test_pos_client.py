"""AsyncPosClient / PosClient against a simulated gateway peer (signed answers).

Covers: safe retries only (create with the same body, queries; never close),
who-is-at-fault errors, waiting by notification or by polling on the backoff
schedule with a fake clock, the sticky first final status, notification
verification and deduplication (docs/protocol.md parts A and B).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import random
import threading
from decimal import Decimal

import httpx
import pytest

from cloud.backoff import POLL, RETRY
from cloud.errors import (
    CloudRejected,
    CloudUnavailable,
    ContractError,
    SignatureError,
    WaitTimeout,
)
from cloud.messages import Method, PayOrder, TransStatus
from cloud.pos import AsyncPosClient, PosClient
from tests.cloud.pos_peer import (
    OTHER_PRIVATE,
    FakeClock,
    GatewayPeer,
    body_fields,
    make_config,
)
from tests.waiting import until

ORDER = {"terminal_sn": "T0001", "merchant_order_no": "A-1", "order_amount": Decimal("12.50")}


@pytest.fixture
def peer() -> GatewayPeer:
    return GatewayPeer()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def client_for(peer: GatewayPeer, clock: FakeClock, **options: object) -> AsyncPosClient:
    return peer.client(clock=clock, rng=random.Random(42), **options)


# ---------------------------------------------------------------- create


async def test_push_order_fills_defaults_and_signs(peer: GatewayPeer, clock: FakeClock) -> None:
    async with client_for(peer, clock) as client:
        result = await client.push_order(**ORDER, description="coffee")
    assert result.trans_amount == Decimal("12.50")
    assert result.trans_no.startswith("TN")
    (call,) = peer.calls
    assert call.method == "wisehub.cloud.pay.order"
    sent = body_fields(call)
    assert sent["merchant_no"] == "M0001"
    assert sent["price_currency"] == "QAR"
    assert sent["app_id"] == "pos-test"
    assert sent["message_receiving_application"] == "SADAD POS"
    assert b'"order_amount":12.50' in call.body  # exact decimals on the wire
    assert sent["description"] == "coffee"


async def test_push_order_accepts_a_struct(peer: GatewayPeer, clock: FakeClock) -> None:
    order = PayOrder(
        merchant_no="M0001",
        terminal_sn="T0001",
        merchant_order_no="A-2",
        price_currency="KWD",
        order_amount=Decimal("1.250"),
    )
    async with client_for(peer, clock) as client:
        result = await client.push_order(order)
        assert result.trans_amount == Decimal("1.250")
        with pytest.raises(TypeError):
            await client.push_order(order, description="x")


async def test_push_order_invalid_fields_raise_contract_error(
    peer: GatewayPeer, clock: FakeClock
) -> None:
    async with client_for(peer, clock) as client:
        with pytest.raises(ContractError) as info:
            await client.push_order(**{**ORDER, "order_amount": Decimal("12.505")})
    assert info.value.field == "$.order_amount"
    assert peer.calls == []


@pytest.mark.parametrize("fault", ["lose", "connect", "502", "badsign"])
async def test_create_retry_reuses_order_and_returns_first_answer(
    peer: GatewayPeer, clock: FakeClock, fault: str
) -> None:
    peer.fail_next(fault, Method.PAY_ORDER)
    async with client_for(peer, clock) as client:
        result = await client.push_order(**ORDER)
    creates = peer.calls_of(Method.PAY_ORDER)
    assert len(creates) == 2
    assert {c.fields["merchant_order_no"] for c in creates} == {"A-1"}
    assert creates[0].body == creates[1].body  # the very same request
    assert len(peer.orders) == 1
    assert result.trans_no == peer.orders["A-1"].result.trans_no
    assert clock.sleeps == [RETRY.delay(0, random.Random(42))]


async def test_create_lost_answer_then_repeat_gets_first_trans_no(
    peer: GatewayPeer, clock: FakeClock
) -> None:
    peer.fail_next("lose", Method.PAY_ORDER)
    async with client_for(peer, clock) as client:
        result = await client.push_order(**ORDER)
        again = await client.push_order(**ORDER)
    assert result.trans_no == again.trans_no
    assert len(peer.orders) == 1


async def test_create_gives_up_after_bounded_attempts(peer: GatewayPeer, clock: FakeClock) -> None:
    peer.fail_next("connect", Method.PAY_ORDER, times=5)
    async with client_for(peer, clock) as client:
        with pytest.raises(CloudUnavailable, match="ConnectError"):
            await client.push_order(**ORDER)
    assert len(peer.calls_of(Method.PAY_ORDER)) == 3
    assert len(clock.sleeps) == 2


async def test_create_rejected_is_final_not_retried(peer: GatewayPeer, clock: FakeClock) -> None:
    async with client_for(peer, clock) as client:
        await client.push_order(**ORDER)
        with pytest.raises(CloudRejected) as info:
            await client.push_order(**{**ORDER, "order_amount": Decimal("13.00")})
    assert info.value.code == "ORDER_DUPLICATE"
    assert "merchant_order_no used with other fields" in str(info.value)
    assert len(peer.calls_of(Method.PAY_ORDER)) == 2
    assert clock.sleeps == []


# ---------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("fault", "text"),
    [
        ("connect", "ConnectError"),
        ("lose", "ReadTimeout"),
        ("500", "HTTP 500"),
        ("502", "HTTP 502"),
        ("unsigned", "sign is missing"),
        ("blanksign", "sign is blank"),
        ("badsign", "sign does not match"),
        ("html", "not valid JSON"),
    ],
)
async def test_bad_answers_are_unavailable(
    peer: GatewayPeer, clock: FakeClock, fault: str, text: str
) -> None:
    peer.fail_next(fault, times=10)
    async with client_for(peer, clock, query_attempts=1) as client:
        with pytest.raises(CloudUnavailable, match=text):
            await client.query_order("A-1")


async def test_query_retried_with_backoff_then_answers(peer: GatewayPeer, clock: FakeClock) -> None:
    async with client_for(peer, clock) as client:
        await client.push_order(**ORDER)
        peer.fail_next("500", Method.ORDER_QUERY, times=2)
        info = await client.query_order("A-1")
    assert info.trans_status == TransStatus.PREORDER
    assert len(peer.calls_of(Method.ORDER_QUERY)) == 3
    rng = random.Random(42)
    assert clock.sleeps == [RETRY.delay(0, rng), RETRY.delay(1, rng)]


async def test_query_by_trans_no(peer: GatewayPeer, clock: FakeClock) -> None:
    async with client_for(peer, clock) as client:
        created = await client.push_order(**ORDER)
        info = await client.query_order(trans_no=created.trans_no)
        assert info.merchant_order_no == "A-1"
        with pytest.raises(ContractError):
            await client.query_order()


async def test_query_unknown_order_rejected_once(peer: GatewayPeer, clock: FakeClock) -> None:
    async with client_for(peer, clock) as client:
        with pytest.raises(CloudRejected) as info:
            await client.query_order("NOPE")
    assert info.value.code == "ORDER_NOT_EXIST"
    assert len(peer.calls) == 1


# ---------------------------------------------------------------- close


async def test_close_uses_known_terminal(peer: GatewayPeer, clock: FakeClock) -> None:
    async with client_for(peer, clock) as client:
        created = await client.push_order(**ORDER)
        result = await client.close_order("A-1", "customer left")
    assert result.trans_no == created.trans_no
    (close,) = peer.calls_of(Method.PAY_CLOSE)
    assert close.fields["terminal_sn"] == "T0001"
    assert close.fields["description"] == "customer left"
    assert peer.orders["A-1"].info.trans_status == TransStatus.CLOSED


async def test_close_looks_up_terminal_when_unknown(peer: GatewayPeer, clock: FakeClock) -> None:
    async with client_for(peer, clock) as client:
        await client.push_order(**ORDER)
    async with client_for(peer, clock) as fresh:
        await fresh.close_order("A-1")
    assert [c.method for c in peer.calls] == [
        "wisehub.cloud.pay.order",
        "order.query",
        "wisehub.cloud.pay.close",
    ]


@pytest.mark.parametrize("fault", ["lose", "connect", "502", "unsigned"])
async def test_close_is_never_retried(peer: GatewayPeer, clock: FakeClock, fault: str) -> None:
    async with client_for(peer, clock) as client:
        await client.push_order(**ORDER)
        peer.fail_next(fault, Method.PAY_CLOSE, times=3)
        with pytest.raises(CloudUnavailable):
            await client.close_order("A-1", terminal_sn="T0001")
    assert len(peer.calls_of(Method.PAY_CLOSE)) == 1
    assert clock.sleeps == []


async def test_close_after_payment_rejected(peer: GatewayPeer, clock: FakeClock) -> None:
    async with client_for(peer, clock) as client:
        await client.push_order(**ORDER)
        peer.set_status("A-1", TransStatus.COMPLETED)
        with pytest.raises(CloudRejected) as info:
            await client.close_order("A-1")
    assert info.value.code == "ORDER_STATUS_ERROR"


# ---------------------------------------------------------------- waiting


async def test_wait_returns_at_once_when_already_notified(peer: GatewayPeer) -> None:
    clock = FakeClock(autojump=False)
    async with client_for(peer, clock) as client:
        client.order_store.remember(peer.expected("A-1"))  # created by another instance
        client.accept_notification(peer.notification(peer.info("A-1", TransStatus.COMPLETED)))
        info = await client.wait_for_final("A-1", 60)
    assert info.trans_status == TransStatus.COMPLETED
    assert clock.sleeps == []
    assert peer.calls == []


async def test_notification_wakes_a_sleeping_wait(peer: GatewayPeer) -> None:
    clock = FakeClock(autojump=False)
    async with client_for(peer, clock) as client:
        await client.push_order(**ORDER)
        waiting = asyncio.create_task(client.wait_for_final("A-1", 60))
        for _ in range(5):
            await asyncio.sleep(0)
        assert clock.sleeping == 1  # waiting for the first poll
        note, new = client.accept_notification(
            peer.notification(peer.info("A-1", TransStatus.COMPLETED, trans_no="TN000001"))
        )
        assert new
        info = await asyncio.wait_for(waiting, 1)
    assert info is note
    assert clock.now == 0
    assert peer.calls_of(Method.ORDER_QUERY) == []


async def test_notification_wins_over_a_slow_query(peer: GatewayPeer, clock: FakeClock) -> None:
    release = asyncio.Event()
    started = asyncio.Event()

    async def slow(request: httpx.Request) -> httpx.Response:
        started.set()
        await release.wait()
        raise AssertionError("never answered")

    client = AsyncPosClient(make_config(), transport=httpx.MockTransport(slow), clock=clock)
    async with client:
        client.order_store.remember(peer.expected("A-1"))
        waiting = asyncio.create_task(client.wait_for_final("A-1", 60))
        await asyncio.wait_for(started.wait(), 1)
        client.accept_notification(peer.notification(peer.info("A-1", TransStatus.CANCELLED)))
        info = await asyncio.wait_for(waiting, 1)
    assert info.trans_status == TransStatus.CANCELLED


async def test_wait_polls_on_the_backoff_schedule(peer: GatewayPeer, clock: FakeClock) -> None:
    async with client_for(peer, clock) as client:
        await client.push_order(**ORDER)
        seen: list[TransStatus] = []
        polls = 0

        def on_sleep(_: float) -> None:
            nonlocal polls
            polls += 1
            if polls == 3:
                peer.set_status("A-1", TransStatus.PROCESSING)
            if polls == 5:
                peer.set_status("A-1", TransStatus.COMPLETED, auth_code="654321")

        clock.on_sleep = on_sleep
        info = await client.wait_for_final(
            "A-1", 60, on_update=lambda i: seen.append(i.trans_status)
        )
    assert info.trans_status == TransStatus.COMPLETED
    assert info.auth_code == "654321"
    assert len(peer.calls_of(Method.ORDER_QUERY)) == 5
    expected = list(itertools.islice(POLL.delays(random.Random(42)), 5))
    assert clock.sleeps == expected
    assert 0.9 <= clock.sleeps[0] <= 1.1
    assert 4.5 <= clock.sleeps[4] <= 5.5
    assert seen == [
        TransStatus.PREORDER,
        TransStatus.PREORDER,
        TransStatus.PROCESSING,
        TransStatus.PROCESSING,
        TransStatus.COMPLETED,
    ]


async def test_wait_keeps_polling_through_outages(peer: GatewayPeer, clock: FakeClock) -> None:
    async with client_for(peer, clock) as client:
        await client.push_order(**ORDER)
        peer.set_status("A-1", TransStatus.CLOSED)
        peer.fail_next("connect", Method.ORDER_QUERY)
        peer.fail_next("unsigned", Method.ORDER_QUERY)
        info = await client.wait_for_final("A-1", 60)
    assert info.trans_status == TransStatus.CLOSED
    assert len(peer.calls_of(Method.ORDER_QUERY)) == 3


async def test_wait_times_out_with_last_status(peer: GatewayPeer, clock: FakeClock) -> None:
    async with client_for(peer, clock) as client:
        await client.push_order(**ORDER)
        with pytest.raises(WaitTimeout) as info:
            await client.wait_for_final("A-1", 10)
    assert info.value.last is not None
    assert info.value.last.trans_status == TransStatus.PREORDER
    assert info.value.merchant_order_no == "A-1"
    assert "not final after 10 s (last status PREORDER)" in str(info.value)
    assert clock.now == pytest.approx(10)
    assert sum(clock.sleeps) == pytest.approx(10)
    # ~1, 1.6, 2.6, 4.1 fit before 10 s; the rest of the time is a clipped wait
    assert len(peer.calls_of(Method.ORDER_QUERY)) == 4


async def test_wait_timeout_when_nothing_seen(peer: GatewayPeer, clock: FakeClock) -> None:
    peer.fail_next("connect", times=100)
    async with client_for(peer, clock) as client:
        with pytest.raises(WaitTimeout) as info:
            await client.wait_for_final("A-1", 3)
    assert info.value.last is None
    assert "nothing seen" in str(info.value)


async def test_wait_raises_when_query_rejected(peer: GatewayPeer, clock: FakeClock) -> None:
    async with client_for(peer, clock) as client:
        with pytest.raises(CloudRejected):
            await client.wait_for_final("UNKNOWN", 30)


async def test_final_status_never_regresses(
    peer: GatewayPeer, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    async with client_for(peer, clock) as client:
        client.order_store.remember(peer.expected("A-1"))
        client.accept_notification(peer.notification(peer.info("A-1", TransStatus.COMPLETED)))
        peer.query_script.append(peer.info("A-1", TransStatus.PROCESSING))
        answer = await client.query_order("A-1")
        assert answer.trans_status == TransStatus.PROCESSING  # the answer itself, as is
        known = client.known_order("A-1")
        assert known is not None
        assert known.trans_status == TransStatus.COMPLETED
        with caplog.at_level(logging.ERROR, logger="cloud.pos"):
            client.accept_notification(peer.notification(peer.info("A-1", TransStatus.CLOSED)))
        assert "CONFLICT" in caplog.text
        assert "keeping COMPLETED" in caplog.text
        info = await client.wait_for_final("A-1", 10)
    assert info.trans_status == TransStatus.COMPLETED


# ---------------------------------------------------------------- notifications


async def test_accept_notification_dedupes(peer: GatewayPeer, clock: FakeClock) -> None:
    async with client_for(peer, clock) as client:
        client.order_store.remember(peer.expected("A-1"))
        paid = peer.info("A-1", TransStatus.PROCESSING)
        first, new1 = client.accept_notification(peer.notification(paid, notify_id="N1"))
        again, new2 = client.accept_notification(peer.notification(paid, notify_id="N2"))
        done = peer.info("A-1", TransStatus.COMPLETED)
        _, new3 = client.accept_notification(peer.notification(done).decode())
    assert (new1, new2, new3) == (True, False, True)
    assert first.notify_id == "N1"
    assert again.notify_id == "N2"


def _tamper(body: bytes, old: bytes, new: bytes) -> bytes:
    assert old in body
    return body.replace(old, new)


@pytest.mark.parametrize("case", ["blank", "missing", "forged", "tampered", "garbage"])
async def test_verify_notification_rejects_bad_signatures(
    peer: GatewayPeer, clock: FakeClock, case: str
) -> None:
    info = peer.info("A-1", TransStatus.COMPLETED)
    good = peer.notification(info)
    body = {
        "blank": lambda: _tamper(good, good[good.index(b'"sign":"') : -1], b'"sign":""'),
        "missing": lambda: _tamper(good, good[good.index(b',"sign":"') : -1], b""),
        "forged": lambda: peer.notification(info, key=OTHER_PRIVATE),
        "tampered": lambda: _tamper(good, b'"order_amount":12.50', b'"order_amount":1.25'),
        "garbage": lambda: _tamper(good, b'"sign":"', b'"sign":"!!'),
    }[case]()
    async with client_for(peer, clock) as client:
        with pytest.raises(SignatureError):
            client.verify_notification(body)
        with pytest.raises(SignatureError):
            client.accept_notification(body)
        assert client.known_order("A-1") is None


async def test_notification_not_json_is_contract_error(peer: GatewayPeer, clock: FakeClock) -> None:
    async with client_for(peer, clock) as client:
        with pytest.raises(ContractError):
            client.accept_notification(b"status=paid")


# ---------------------------------------------------------------- sync client


def test_sync_client_same_api(peer: GatewayPeer) -> None:
    with PosClient(make_config(), transport=peer.transport(), clock=FakeClock()) as client:
        created = client.push_order(**ORDER)
        assert client.query_order("A-1").trans_no == created.trans_no
        assert client.close_order("A-1").trans_no == created.trans_no
        assert client.wait_for_final("A-1", 5).trans_status == TransStatus.CLOSED
        known = client.known_order("A-1")
        assert known is not None
        assert known.trans_status == TransStatus.CLOSED
        with pytest.raises(CloudRejected):
            client.query_order("NOPE")
    with pytest.raises(RuntimeError, match="closed"):
        client.query_order("A-1")
    client.close()  # idempotent


def test_sync_webhook_thread_wakes_waiting_thread(peer: GatewayPeer) -> None:
    clock = FakeClock(autojump=False)
    with PosClient(make_config(), transport=peer.transport(), clock=clock) as client:
        client.push_order(**ORDER)
        result: list[object] = []
        waiter = threading.Thread(target=lambda: result.append(client.wait_for_final("A-1", 60)))
        waiter.start()
        until(lambda: clock.sleeping, "the waiting thread to sleep")
        assert clock.sleeping == 1  # the waiting thread is between polls
        body = peer.notification(peer.info("A-1", TransStatus.COMPLETED))
        note, new = client.accept_notification(body)  # as a web framework's worker would
        waiter.join(5)
        assert not waiter.is_alive()
        assert new
        assert client.accept_notification(body)[1] is False
        assert client.verify_notification(body).trans_status == TransStatus.COMPLETED
    assert result == [note]
    assert peer.calls_of(Method.ORDER_QUERY) == []
