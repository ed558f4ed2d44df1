"""A genuine, gateway-signed result is taken only for the order it is about
(docs/protocol.md part B): never another merchant's, another app's, another
``trans_no``'s, another amount's or currency's - not from a notification,
not from a query answer - and the binding holds across POS instances that
share an order store."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from cloud.errors import CloudUnavailable, NotOurOrder, WaitTimeout
from cloud.messages import TransStatus
from cloud.order_store import ExpectedOrder, SqliteOrderStore
from tests.cloud.pos_peer import FakeClock, GatewayPeer
from tests.cloud.test_pos_client import ORDER, client_for


@pytest.fixture
def peer() -> GatewayPeer:
    return GatewayPeer()


# Merchant B's genuine notification about its own "A-1" (1.00), and the ways
# a result can be about something else than our A-1 (12.50 QAR).
ELSEWHERE: dict[str, dict[str, Any]] = {
    "other-merchant": {"merchant_no": "M0002"},
    "other-app": {"app_id": "pos-other"},
    "other-trans_no": {"trans_no": "TN999999"},
    "other-amount": {"order_amount": Decimal("1.00"), "trans_amount": Decimal("1.00")},
    "other-currency": {"price_currency": "KWD"},
    "merchant-B's-order": {
        "merchant_no": "M0002",
        "app_id": "pos-b",
        "trans_no": "TNB00001",
        "order_amount": Decimal("1.00"),
        "trans_amount": Decimal("1.00"),
    },
    "no-merchant": {"merchant_no": None, "app_id": None},
}


@pytest.mark.parametrize("kind", list(ELSEWHERE))
async def test_a_notification_about_another_order_is_refused(peer: GatewayPeer, kind: str) -> None:
    async with client_for(peer, FakeClock()) as client:
        await client.push_order(**ORDER)
        genuine = peer.info("A-1", TransStatus.COMPLETED)
        theirs = peer.info("A-1", TransStatus.COMPLETED, **ELSEWHERE[kind])
        with pytest.raises(NotOurOrder):
            client.accept_notification(peer.notification(theirs))
        assert client.known_order("A-1") is None  # nothing recorded
        peer.query_script = [peer.info("A-1", TransStatus.PREORDER)] * 20
        with pytest.raises(WaitTimeout):
            await client.wait_for_final("A-1", 5)  # not woken by it
        # Ours, when it comes, is taken.
        _, new = client.accept_notification(peer.notification(genuine))
        assert new
        final = await client.wait_for_final("A-1", 5)
        assert (final.trans_no, final.order_amount) == (genuine.trans_no, Decimal("12.50"))


@pytest.mark.parametrize("kind", [k for k in ELSEWHERE if k != "no-merchant"])
async def test_a_query_answer_about_another_order_is_no_answer(
    peer: GatewayPeer, kind: str
) -> None:
    async with client_for(peer, FakeClock()) as client:
        await client.push_order(**ORDER)
        theirs = peer.info("A-1", TransStatus.COMPLETED, **ELSEWHERE[kind])
        peer.query_script = [theirs] * 10
        with pytest.raises(CloudUnavailable, match="answer is not for this order"):
            await client.query_order("A-1")
        assert client.known_order("A-1") is None
        with pytest.raises(WaitTimeout):
            await client.wait_for_final("A-1", 5)


async def test_a_query_answer_for_another_order_number_is_no_answer(peer: GatewayPeer) -> None:
    async with client_for(peer, FakeClock()) as client:
        await client.push_order(**ORDER)
        await client.push_order(**{**ORDER, "merchant_order_no": "A-2"})
        peer.query_script = [peer.info("A-2", TransStatus.COMPLETED)] * 10  # swapped
        with pytest.raises(CloudUnavailable, match="asked for A-1, answered A-2"):
            await client.query_order("A-1")
        assert client.known_order("A-1") is None


async def test_an_order_never_created_here_cannot_be_settled(peer: GatewayPeer) -> None:
    async with client_for(peer, FakeClock()) as client:
        with pytest.raises(NotOurOrder, match="no record of order 'Z-9'"):
            client.accept_notification(peer.notification(peer.info("Z-9", TransStatus.COMPLETED)))
        # A caller that keeps its orders itself hands the expectation in.
        expected = ExpectedOrder("Z-9", "TN-Z-9", Decimal("12.50"), "QAR")
        _, new = client.accept_notification(
            peer.notification(peer.info("Z-9", TransStatus.COMPLETED)), expected
        )
        assert new
        with pytest.raises(NotOurOrder, match="order_amount"):
            client.accept_notification(
                peer.notification(peer.info("Z-9", TransStatus.CLOSED)),
                ExpectedOrder("Z-9", "TN-Z-9", Decimal("500.00"), "QAR"),
            )


async def test_two_instances_share_one_order_store(peer: GatewayPeer, tmp_path: Path) -> None:
    """A POS server behind a load balancer: the instance that created the order
    is not the one the notification reaches."""
    store = tmp_path / "orders.db"
    async with (
        client_for(peer, FakeClock(), order_store=SqliteOrderStore(store)) as creator,
        client_for(peer, FakeClock(), order_store=SqliteOrderStore(store)) as webhook,
    ):
        created = await creator.push_order(**ORDER)
        wrong = peer.info("A-1", TransStatus.COMPLETED, trans_no="TN424242")
        with pytest.raises(NotOurOrder, match="trans_no"):
            webhook.accept_notification(peer.notification(wrong))
        right = peer.info("A-1", TransStatus.COMPLETED)
        assert right.trans_no == created.trans_no
        _, new = webhook.accept_notification(peer.notification(right))
        assert new
        final = await webhook.wait_for_final("A-1", 5)
        assert final.trans_status is TransStatus.COMPLETED
    assert SqliteOrderStore(store).expected("A-1") == ExpectedOrder(
        "A-1", created.trans_no, Decimal("12.50"), "QAR"
    )
    assert SqliteOrderStore(store).prune(older_than_days=-1) == 1
