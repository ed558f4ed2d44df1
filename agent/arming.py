"""The readers an order is paid with: which ones, armed while the order waits
for a card or code, and what the cashier is told (DESIGN.md "Readers";
docs/protocol.md part C ``pay_scenario``).

``arm(tx)`` starts one task per reader that can pay the order; each arms its
reader with the amount (an EMV reader needs it for the transaction), waits
for a presentation and hands it to ``presented`` (the engine's inbox), then
disarms. A card removed too soon or one the reader cannot use is said on
screen (``message``) and the reader waits for the next; a reader that goes
offline is re-armed with backoff (``agent.backoff``), and the status is
refreshed (``status_changed``). ``disarm()`` stops them all.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence
from typing import Protocol

from agent.backoff import Backoff
from agent.bridge_protocol import Method
from agent.journal import ShownOrder, TxRow
from cloud import messages as m
from cloud import money
from drivers.base import (
    ArmContext,
    CardGone,
    CardNotSupported,
    CardRead,
    EntryMode,
    Presentation,
    ReaderError,
    ReaderOffline,
    ReaderState,
    WalletCode,
)

log = logging.getLogger(__name__)

# How the cashier is asked for each kind of reader, in this order.
_WAYS = (("pn532", "tap"), ("magstripe", "swipe"), ("scanner", "scan"))


class ReaderPort(Protocol):
    """What arming needs of a reader (``drivers.registry.ManagedReader``)."""

    @property
    def name(self) -> str: ...

    @property
    def kind(self) -> str: ...

    @property
    def state(self) -> ReaderState: ...

    async def arm(self, ctx: ArmContext) -> None: ...

    async def next_presentation(self) -> Presentation: ...

    async def disarm(self) -> None: ...


class ReaderArming:
    """Use from one event loop. ``readers`` may be replaced between orders
    (a reload)."""

    def __init__(
        self,
        readers: Sequence[ReaderPort],
        *,
        presented: Callable[[Presentation], None],
        message: Callable[[str], None],
        status_changed: Callable[[], None],
        backoff: Callable[[], Backoff],
    ) -> None:
        self.readers = list(readers)
        self._presented = presented
        self._message = message
        self._status_changed = status_changed
        self._backoff = backoff
        self._tasks: list[asyncio.Task[None]] = []

    def for_order(self, tx: ShownOrder) -> list[ReaderPort]:
        """The readers that can pay this order (its ``pay_scenario``)."""
        if tx.pay_scenario == m.PayScenario.SWIPE_CARD.value:
            return [r for r in self.readers if r.kind != "scanner"]
        if tx.pay_scenario == m.PayScenario.BSCANQR_PAY.value:
            return [r for r in self.readers if r.kind == "scanner"]
        return list(self.readers)

    def methods(self, tx: ShownOrder) -> tuple[Method, ...]:
        kinds = {r.kind for r in self.for_order(tx)}
        found: list[Method] = []
        if kinds - {"scanner"}:
            found.append("card")
        if "scanner" in kinds:
            found.append("wallet")
        return tuple(found)

    def prompt(self, tx: ShownOrder) -> str:
        """ "Tap, swipe or scan": what the cashier may do for this order."""
        kinds = {r.kind for r in self.for_order(tx)}
        ways = [way for kind, way in _WAYS if kind in kinds]
        if not ways:
            return "No reader available for this order"
        text = ", ".join(ways[:-1]) + (" or " if len(ways) > 1 else "") + ways[-1]
        return text[0].upper() + text[1:]

    def problem(self, tx: TxRow, p: Presentation) -> str | None:
        """Why this card or code cannot pay this order, for the cashier; None if it can."""
        swiped_chip = (
            isinstance(p, CardRead) and p.entry_mode is EntryMode.MAGSTRIPE and p.chip_card
        )
        if swiped_chip and any(r.kind == "pn532" for r in self.readers):
            return "This card has a chip - please tap it instead of swiping"
        if isinstance(p, WalletCode) and tx.pay_scenario == m.PayScenario.SWIPE_CARD.value:
            return "This order takes cards only"
        if isinstance(p, CardRead) and tx.pay_scenario == m.PayScenario.BSCANQR_PAY.value:
            return "This order takes wallet codes only"
        return None

    async def arm(self, tx: TxRow) -> None:
        """Arm every reader that can pay ``tx`` (after disarming any armed)."""
        await self.disarm()
        currency = money.currency(tx.currency)
        ctx = ArmContext(
            amount=tx.trans_amount,
            currency_numeric=currency.numeric,
            currency_exponent=currency.exponent,
            trans_type=0x20 if tx.trans_type == m.TransType.REFUND else 0x00,
        )
        for reader in self.for_order(tx):
            self._tasks.append(
                asyncio.create_task(self._read(reader, ctx), name=f"read-{reader.name}")
            )

    async def disarm(self) -> None:
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _read(self, reader: ReaderPort, ctx: ArmContext) -> None:
        backoff = self._backoff()
        armed = False
        try:
            while True:
                try:
                    if not armed:
                        await reader.arm(ctx)
                        armed = True
                        backoff.reset()
                    presentation = await reader.next_presentation()
                except CardGone:
                    self._message("Card removed too soon - tap again")
                    continue
                except CardNotSupported as exc:
                    self._message(f"{exc} - try another card or method")
                    continue
                except ReaderOffline as exc:
                    log.warning("reader %s offline: %s", reader.name, exc)
                    armed = False
                    self._status_changed()
                    await asyncio.sleep(backoff.next())
                    continue
                except ReaderError as exc:
                    self._message(f"Card could not be read - try again ({exc})")
                    continue
                self._presented(presentation)
                return
        finally:
            if armed:
                with contextlib.suppress(ReaderError):
                    await reader.disarm()
