"""The checkout holds no more after many sales than after a few.

Issue 15: the UI grew per sale. Two causes so far, both in how we used
Textual: its ``Footer`` recomposed (and leaked) its key widgets on every
binding refresh (Textualize/textual#6666; ``ui.widgets.key_hints``), and
``query_one`` on every agent event: Textual caches each query per node,
keyed by the node's count of child changes, which every ``display`` toggle
bumps (the panel switch, the message line, the touch buttons), so each event
left stale entries behind (up to 1,024 per node, ~1 MB in all). The screen
and its panels now keep their widgets as attributes.

Counted after order -> result -> idle cycles under Pilot, not measured: the
widgets in the DOM and those alive in the interpreter (with Textual's Footer
back, 63 live widgets after 3 sales became 147 after 15), the entries in the
query caches (with ``query_one`` on each event, 291 became 1,371) and the
live timers. Each must be the same after 15 sales as after 3 (the first
sales draw every panel once). And the entries in rich's text-keyed caches
(``ui.render_caches``: each sale's order number, amounts and auth code,
about 8 entries a sale up to ~20,000, emptied when the sale ends) must not
grow with the sales.
"""

from __future__ import annotations

import gc
from typing import Any

import msgspec
import pytest
from textual.widget import Widget

from agent import bridge_protocol as bp
from cloud.messages import Screen
from tests.ui.conftest import ORDER, ScriptedAgent, make_app, until
from ui import app as ui_app
from ui.app import CheckoutApp
from ui.render_caches import cached_entries

CARD = bp.CardInfo(brand="VISA", masked_pan="476173******0010", entry_mode="contactless")
OUTCOMES: tuple[bp.ResultInfo, ...] = (
    bp.ResultInfo(outcome="approved", auth_code="A1B2C3", masked_pan="476173******0010"),
    bp.ResultInfo(outcome="declined", reason="Insufficient funds"),
    bp.ResultInfo(outcome="cancelled", reason="Cancelled by the cashier"),
)


def footprint(app: CheckoutApp) -> dict[str, int]:
    """What the app holds that could grow per sale (Textual 8 internals)."""
    nodes = [app, *(n for s in app.screen_stack for n in s.walk_children(with_self=True))]
    for attr in ("_query_one_cache", "_timers"):
        assert all(hasattr(n, attr) for n in nodes), f"Textual has no {attr}: update this test"
    gc.collect()
    return {
        "widgets": len(nodes),
        "live widget objects": sum(isinstance(o, Widget) for o in gc.get_objects()),
        "query cache entries": sum(len(n._query_one_cache) for n in nodes),
        "timers": sum(len(n._timers) for n in nodes),
    }


async def sale(agent: ScriptedAgent, app: CheckoutApp, pilot: Any, n: int) -> None:
    """One sale as the agent shows it, each step drawn before the next."""
    order = msgspec.structs.replace(
        ORDER,
        trans_no=f"TR{n:014d}",
        merchant_order_no=f"A-{1000 + n}",
        amount=f"{n}.{n % 100:02d}",
        confirm_required=n % 2 == 0,
    )

    async def step(screen: Screen, **fields: Any) -> None:
        agent.show(screen, order=order, **fields)
        await until(pilot, lambda: app.view.screen_name is screen and app.view.order == order)
        await pilot.pause()

    if order.confirm_required:
        await step(Screen.WAITING_FOR_CONFIRM)
    agent.publish(bp.QueueEvent(waiting=1))
    await step(Screen.WAITING_FOR_CARD, message="Card removed too soon - tap again")
    await step(Screen.READING, progress="Reading card...", card=CARD)
    await step(Screen.AUTHORIZING, progress="Authorizing...", card=CARD)
    await step(Screen.RESULT, card=CARD, result=OUTCOMES[n % len(OUTCOMES)])
    agent.publish(bp.QueueEvent(waiting=0))
    agent.show(Screen.IDLE)
    await until(pilot, lambda: app.view.phase == "idle" and not app.view.queue)
    await pilot.pause()


async def test_sales_leave_nothing_behind(agent: ScriptedAgent) -> None:
    app = make_app(agent.path)
    async with app.run_test(size=(80, 24)) as pilot:
        await until(pilot, lambda: app.view.phase == "idle")
        for n in range(3):
            await sale(agent, app, pilot, n)
        before, text_before = footprint(app), cached_entries()
        for n in range(3, 15):
            await sale(agent, app, pilot, n)
        assert footprint(app) == before
        # The idle screen's own strings stay (~100); a sale's amounts, order
        # number and auth code differ in number from another's by a few. Not
        # emptied, the 12 sales added ~90 entries (268 -> 362).
        assert cached_entries() - text_before < 20


async def test_each_sale_end_gives_the_freed_heap_back(
    agent: ScriptedAgent, monkeypatch: pytest.MonkeyPatch
) -> None:
    """When the checkout returns to idle, the C heap's free pages go back
    (``ui.heap``), once per sale, and not while a sale is on screen."""
    app = make_app(agent.path)
    released: list[bool] = []

    def release() -> None:
        released.append(app.view.busy)

    monkeypatch.setattr(ui_app, "release_free_heap", release)
    async with app.run_test(size=(80, 24)) as pilot:
        await until(pilot, lambda: app.view.phase == "idle")
        for n in range(3):
            await sale(agent, app, pilot, n)
            sales = n + 1
            await until(pilot, lambda: len(released) == sales, "the heap released")  # noqa: B023
        await pilot.pause()
    assert released == [False, False, False]
