"""Property: however notifications and query answers for one order are
shuffled and duplicated, the client ends in the first final status it
observed, and ``wait_for_final`` returns exactly that (docs/protocol.md part B:
at-least-once delivery, polling beside it)."""

from __future__ import annotations

import asyncio
import random

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cloud.messages import OrderInfo, TransStatus
from cloud.status_rules import REVERSAL
from tests.cloud.pos_peer import FakeClock, GatewayPeer

S = TransStatus

PEER = GatewayPeer()
INFOS = {status: PEER.info("A-1", status) for status in TransStatus}
# One signed body per (status, notify_id) so hypothesis does not spend its time in RSA.
NOTES = {
    (status, n): PEER.notification(INFOS[status], notify_id=f"N{n}")
    for status in TransStatus
    for n in range(2)
}

events = st.tuples(
    st.sampled_from(["notify", "query"]), st.sampled_from(list(TransStatus)), st.integers(0, 1)
)


@st.composite
def streams(draw: st.DrawFn) -> list[tuple[str, TransStatus, int]]:
    base = draw(st.lists(events, min_size=1, max_size=8))
    repeats = draw(st.lists(st.sampled_from(base), max_size=6))
    return draw(st.permutations(base + repeats))


async def _play(stream: list[tuple[str, TransStatus, int]]) -> tuple[OrderInfo | None, OrderInfo]:
    peer = GatewayPeer()
    async with peer.client(clock=FakeClock(), rng=random.Random(0)) as client:
        client.order_store.remember(peer.expected("A-1"))
        for kind, status, n in stream:
            if kind == "notify":
                client.accept_notification(NOTES[(status, n)])
            else:
                peer.query_script.append(INFOS[status])
                await client.query_order("A-1")
        known = client.known_order("A-1")
        assert known is not None
        final = None
        if known.trans_status.is_final:
            final = await client.wait_for_final("A-1", 5)
            assert peer.query_script == []  # returned without polling
        return final, known


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(streams())
def test_first_final_wins_unless_reversed(
    stream: list[tuple[str, TransStatus, int]],
) -> None:
    final, known = asyncio.run(_play(stream))
    finals = [status for _, status, _ in stream if status.is_final]
    if finals:
        # the first final status wins; only a reversal (2 then 3) comes after it
        first = finals[0]
        kept = REVERSAL[1] if first is REVERSAL[0] and REVERSAL[1] in finals else first
        assert final is not None
        assert final.trans_status == kept
        assert known.trans_status == kept
    else:
        # without a final status, non-final ones only move forward (9 -> 0):
        # once 0 was seen, a late 9 does not take it back
        assert final is None
        expected = S.PROCESSING if S.PROCESSING in [s for _, s, _ in stream] else S.PREORDER
        assert known.trans_status == expected
