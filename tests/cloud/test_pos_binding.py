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
from cloud.messages import Method, OrderInfo, TransStatus
from cloud.order_store import ExpectedOrder, MemoryOrderStore, SqliteOrderStore
from cloud.pos import PosClient
from tests.cloud.pos_peer import FakeClock, GatewayPeer, make_config
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
    "no-app": {"app_id": None},
}
# The first field each one gets wrong, and what came instead.
DIFFERS: dict[str, tuple[str, str, str]] = {
    "other-merchant": ("merchant_no", "'M0001'", "'M0002'"),
    "other-app": ("app_id", "'pos-test'", "'pos-other'"),
    "other-trans_no": ("trans_no", "'TN000001'", "'TN999999'"),
    "other-amount": ("order_amount", "12.50", "1.00"),
    "other-currency": ("price_currency", "'QAR'", "'KWD'"),
    "merchant-B's-order": ("merchant_no", "'M0001'", "'M0002'"),
    "no-merchant": ("merchant_no", "'M0001'", "nothing"),
    "no-app": ("app_id", "'pos-test'", "nothing"),
}


@pytest.mark.parametrize("kind", list(ELSEWHERE))
async def test_a_notification_about_another_order_is_refused(peer: GatewayPeer, kind: str) -> None:
    async with client_for(peer, FakeClock()) as client:
        await client.push_order(**ORDER)
        genuine = peer.info("A-1", TransStatus.COMPLETED)
        theirs = peer.info("A-1", TransStatus.COMPLETED, **ELSEWHERE[kind])
        with pytest.raises(NotOurOrder) as refused:
            client.accept_notification(peer.notification(theirs))
        # It says which field differs, expected vs got, and shows no card data.
        name, want, got = DIFFERS[kind]
        assert refused.value.field == f"$.{name}"
        assert (refused.value.expected, refused.value.got) == (want, got)
        assert f"{name} is {got}, expected {want}" in str(refused.value)
        assert theirs.masked_pan is not None
        assert theirs.masked_pan[:6] not in str(refused.value)
        assert client.known_order("A-1") is None  # nothing recorded
        peer.query_script = [peer.info("A-1", TransStatus.PREORDER)] * 20
        with pytest.raises(WaitTimeout):
            await client.wait_for_final("A-1", 5)  # not woken by it
        # Ours, when it comes, is taken.
        _, new = client.accept_notification(peer.notification(genuine))
        assert new
        final = await client.wait_for_final("A-1", 5)
        assert (final.trans_no, final.order_amount) == (genuine.trans_no, Decimal("12.50"))


@pytest.mark.parametrize("kind", list(ELSEWHERE))
async def test_a_query_answer_about_another_order_is_no_answer(
    peer: GatewayPeer, kind: str
) -> None:
    async with client_for(peer, FakeClock()) as client:
        await client.push_order(**ORDER)
        theirs = peer.info("A-1", TransStatus.COMPLETED, **ELSEWHERE[kind])
        peer.query_script = [theirs] * 10
        name = DIFFERS[kind][0]
        with pytest.raises(CloudUnavailable, match=f"answer is not for this order: .*{name} is"):
            await client.query_order("A-1")
        assert len(peer.calls_of(Method.ORDER_QUERY)) == 3  # retried like any bad answer
        assert client.known_order("A-1") is None
        with pytest.raises(WaitTimeout) as waited:
            await client.wait_for_final("A-1", 5)
        assert waited.value.last is None  # never observed
        # The gateway's real answer, when it comes, is taken.
        peer.query_script = [peer.info("A-1", TransStatus.COMPLETED)]
        final = await client.wait_for_final("A-1", 5)
        assert (final.merchant_no, final.order_amount) == ("M0001", Decimal("12.50"))


@pytest.mark.parametrize("kind", ["other-merchant", "other-app", "no-merchant"])
async def test_an_answer_for_an_order_created_elsewhere_must_still_be_ours(
    peer: GatewayPeer, kind: str
) -> None:
    """``sadad-pos query`` of an order this process did not create: nothing
    recorded to compare the trans_no and amount with, but the merchant and
    the app must still be ours."""
    async with client_for(peer, FakeClock()) as client:
        peer.query_script = [peer.info("Z-1", TransStatus.COMPLETED, **ELSEWHERE[kind])] * 3
        with pytest.raises(CloudUnavailable, match="answer is not for this order"):
            await client.query_order("Z-1")
        assert client.known_order("Z-1") is None
        peer.query_script = [peer.info("Z-1", TransStatus.PREORDER)]
        assert (await client.query_order("Z-1")).merchant_order_no == "Z-1"
        # Once seen, its trans_no is pinned: another one is not this order.
        peer.query_script = [peer.info("Z-1", TransStatus.COMPLETED, trans_no="TN777777")] * 3
        with pytest.raises(CloudUnavailable, match="trans_no is 'TN777777', expected 'TN-Z-1'"):
            await client.query_order("Z-1")
        known = client.known_order("Z-1")
        assert known is not None
        assert (known.trans_no, known.trans_status) == ("TN-Z-1", TransStatus.PREORDER)


async def test_a_query_by_trans_no_answered_for_another_trans_no_is_no_answer(
    peer: GatewayPeer,
) -> None:
    async with client_for(peer, FakeClock()) as client:
        created = await client.push_order(**ORDER)
        peer.query_script = [peer.info("A-1", TransStatus.COMPLETED, trans_no="TN777777")] * 3
        with pytest.raises(CloudUnavailable, match=f"asked for {created.trans_no}"):
            await client.query_order(trans_no=created.trans_no)
        assert client.known_order("A-1") is None


async def test_a_query_answer_for_another_order_number_is_no_answer(peer: GatewayPeer) -> None:
    """Even one of our own orders: an answer counts only for the question."""
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


async def test_the_config_order_store_is_shared_by_instances(
    peer: GatewayPeer, tmp_path: Path
) -> None:
    """``order_store`` in the config selects the SQLite store: an instance
    made from the same config binds what another created."""
    config = make_config(order_store=tmp_path / "orders.db")
    async with (
        client_for(peer, FakeClock(), config=config) as creator,
        client_for(peer, FakeClock(), config=config) as webhook,
    ):
        assert isinstance(creator.order_store, SqliteOrderStore)
        await creator.push_order(**ORDER)
        with pytest.raises(NotOurOrder, match=r"order_amount is 500\.00, expected 12\.50"):
            webhook.accept_notification(
                peer.notification(
                    peer.info("A-1", TransStatus.COMPLETED, order_amount=Decimal("500.00"))
                )
            )
        _, new = webhook.accept_notification(
            peer.notification(peer.info("A-1", TransStatus.COMPLETED))
        )
        assert new
        assert (await webhook.wait_for_final("A-1", 5)).trans_status is TransStatus.COMPLETED
    async with client_for(peer, FakeClock()) as default:
        assert isinstance(default.order_store, MemoryOrderStore)


def test_sync_clients_share_a_sqlite_store(peer: GatewayPeer, tmp_path: Path) -> None:
    """The blocking ``PosClient``: client 1 pushes, client 2 (another instance
    behind the load balancer) refuses a wrong trans_no, takes the right one,
    and its ``wait_for_final`` returns it."""
    path = tmp_path / "shared.db"
    options: dict[str, Any] = {"transport": peer.transport(), "clock": FakeClock()}
    with (
        PosClient(make_config(), order_store=SqliteOrderStore(path), **options) as one,
        PosClient(make_config(), order_store=SqliteOrderStore(path), **options) as two,
    ):
        created = one.push_order(**ORDER)
        assert two.order_store.expected("A-1") == ExpectedOrder(
            "A-1", created.trans_no, Decimal("12.50"), "QAR"
        )
        wrong = peer.info("A-1", TransStatus.COMPLETED, trans_no="TN424242")
        with pytest.raises(NotOurOrder, match="trans_no is 'TN424242'"):
            two.accept_notification(peer.notification(wrong))
        assert two.known_order("A-1") is None
        two.accept_notification(peer.notification(peer.info("A-1", TransStatus.COMPLETED)))
        final: OrderInfo = two.wait_for_final("A-1", 5)
        assert (final.trans_no, final.trans_status) == (created.trans_no, TransStatus.COMPLETED)


class _BrokenStore:
    def remember(self, order: ExpectedOrder) -> None:
        raise OSError("disk full")

    def expected(self, merchant_order_no: str) -> ExpectedOrder | None:
        return None


async def test_a_failing_store_never_loses_the_create_nor_binds_wrongly(
    peer: GatewayPeer, caplog: pytest.LogCaptureFixture
) -> None:
    """The order exists at the gateway whatever the store says: the create's
    answer is returned; its notifications are refused (nothing to bind them
    to) and polling, bound by merchant, app and order number, settles it."""
    async with client_for(peer, FakeClock(), order_store=_BrokenStore()) as client:
        created = await client.push_order(**ORDER)
        assert created.trans_no
        assert "the order store failed to record it" in caplog.text
        with pytest.raises(NotOurOrder, match="no record of order 'A-1'"):
            client.accept_notification(peer.notification(peer.info("A-1", TransStatus.COMPLETED)))
        peer.query_script = [peer.info("A-1", TransStatus.COMPLETED, merchant_no="M0002")] * 3
        peer.query_script += [peer.info("A-1", TransStatus.COMPLETED)]
        final = await client.wait_for_final("A-1", 30)
        assert final.merchant_no == "M0001"
