"""Receipts for the agent: the printer from the config, its worker, reprint.

``Printing(cfg, journal, on_state)`` builds the printer ``[printer] spec``
names (none: the worker only reports ``none``), lays receipts out from the
journaled transaction (``agent.receipt_layout``: the terminal's store name
and SN, the printer's width, local time) and runs ``agent.print_worker`` as
a task (``start()`` / ``stop()``). ``reprint(trans_no)`` queues a customer
copy again (``agent.print_queue.reprint``) and answers the bridge's
``reprint`` intent and ``sadad-agent receipt``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

from agent import print_queue
from agent import receipt_layout as layout
from agent.bridge_protocol import PrinterState
from agent.bridge_replies import ReprintReply
from agent.config import AgentConfig
from agent.journal import Journal, TxRow
from agent.print_queue import Copy
from agent.print_worker import PrintWorker
from agent.receipt_layout import ReceiptFacts
from drivers.escpos.encoder import Align, Block, Line, encode
from drivers.escpos.printer import EscPosPrinter
from drivers.escpos.spec import DEFAULT_WIDTH, parse_printer_spec


def receipt_facts(tx: TxRow, cfg: AgentConfig) -> ReceiptFacts:
    """What a receipt of ``tx`` says, from the journal and the terminal's config."""
    return ReceiptFacts(
        store_name=cfg.terminal.store_name,
        sn=cfg.terminal.sn,
        at_ms=tx.updated_at,
        trans_no=tx.trans_no,
        merchant_order_no=tx.merchant_order_no,
        trans_type=tx.trans_type,
        phase=tx.phase.value,
        reason=tx.reason,
        entry_mode=tx.entry_mode,
        brand=tx.card_brand,
        masked_pan=tx.masked_pan,
        aid=tx.aid,
        app_label=tx.app_label,
        auth_code=tx.auth_code,
        reference=tx.ref_no,
        amount=tx.amount,
        tip=tx.tip_amount,
        currency=tx.currency,
    )


def _width(cfg: AgentConfig) -> int:
    return parse_printer_spec(cfg.printer.spec).width if cfg.printer.spec else DEFAULT_WIDTH


def _blocks(tx: TxRow, cfg: AgentConfig, copy: Copy, reprint: bool) -> list[Block]:
    blocks = layout.receipt_blocks(receipt_facts(tx, cfg), width=_width(cfg), copy=copy)
    if reprint:
        blocks = [Line("*** REPRINT ***", bold=True, align=Align.CENTER), *blocks]
    return blocks


def receipt_bytes(tx: TxRow, cfg: AgentConfig, copy: Copy, *, reprint: bool = False) -> bytes:
    """The ESC/POS bytes of one copy; a reprint says so at its top."""
    return encode(_blocks(tx, cfg, copy, reprint))


def receipt_text(tx: TxRow, cfg: AgentConfig) -> str:
    """The customer copy as plain text, as it prints (``sadad-agent receipt --text``)."""
    return layout.receipt_text(receipt_facts(tx, cfg), width=_width(cfg))


class Printing:
    """See the module docstring."""

    def __init__(
        self,
        cfg: AgentConfig,
        journal: Journal,
        on_state: Callable[[PrinterState, int], None],
    ) -> None:
        self._journal = journal
        spec = cfg.printer.spec
        self.configured = spec is not None
        printer = EscPosPrinter(parse_printer_spec(spec)) if spec else None
        self.worker = PrintWorker(
            journal,
            printer,
            lambda tx, copy, again: receipt_bytes(tx, cfg, copy, reprint=again),
            on_state,
        )
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self.worker.run(), name="print-worker")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def wake(self) -> None:
        self.worker.wake()

    def reprint(self, trans_no: str | None) -> ReprintReply:
        if not self.configured:
            return ReprintReply(ok=False, reason="no printer is configured")
        which, why = print_queue.reprint(self._journal, trans_no)
        if why:
            return ReprintReply(ok=False, reason=why, trans_no=which or "")
        self.worker.wake()
        return ReprintReply(ok=True, trans_no=which or "")
