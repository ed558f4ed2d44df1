"""The print worker: prints the queued receipts (``agent.print_queue``) and
tells everyone how the printer is.

Contract:

* ``PrintWorker(journal, printer, receipt, on_state)``; ``run()`` until
  cancelled, ``wake()`` when a receipt may have been queued (cheap: one
  indexed count). ``printer`` is None when none is configured: the worker
  then only reports ``none``.
* Before each job it asks the printer's status (DLE EOT, through
  ``drivers.escpos``); it sends the job only when the printer is ready, and
  marks the job printed only if the status after it is ready too: a printer
  that ran out of paper or had its cover opened meanwhile drops or holds
  what it got, so the job stays queued and prints again, whole, once the
  printer is ready (a second slip is better than none). A real printer
  answers DLE EOT at once, even with lines still in its buffer; paper that
  runs out on the last lines of a slip is not seen here.
* While the printer is not ready (paper out, cover open, offline, not
  answering) it asks again on ``agent.backoff`` (0.5 s doubling to
  ``RETRY_CAP``), so paper put back prints within seconds; while ready and
  idle it asks every ``IDLE_POLL`` seconds so the status bar and the
  retained status notice a fault before the next sale.
* ``on_state(state, pending)`` is called whenever either changes: state is
  ``bridge_protocol.PrinterState``.
* Nothing here touches the money path: a printer fault is a state to show,
  never an exception out of ``run()``. Errors name the port, never the data.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from agent import print_queue
from agent.backoff import Backoff
from agent.bridge_protocol import PrinterState
from agent.journal import Journal, TxRow
from agent.print_queue import Copy
from drivers.escpos.printer import EscPosPrinter, PrinterError

log = logging.getLogger(__name__)

RETRY_BASE, RETRY_CAP = 0.5, 5.0
IDLE_POLL = 15.0
STATUS_TIMEOUT = 1.0

ReceiptBytes = Callable[[TxRow, Copy, bool], bytes]
"""The ESC/POS bytes of one copy of ``tx``'s receipt (the bool: a reprint)."""


class PrintWorker:
    """See the module docstring. Use from one asyncio loop."""

    def __init__(
        self,
        journal: Journal,
        printer: EscPosPrinter | None,
        receipt: ReceiptBytes,
        on_state: Callable[[PrinterState, int], None],
        *,
        backoff: Backoff | None = None,
    ) -> None:
        self._journal = journal
        self._printer = printer
        self._receipt = receipt
        self._on_state = on_state
        self._backoff = backoff or Backoff(RETRY_BASE, RETRY_CAP)
        self._wake = asyncio.Event()
        self.state: PrinterState = "none"
        self.pending = 0
        self.printed = 0

    def wake(self) -> None:
        self._wake.set()

    async def run(self) -> None:
        try:
            self.pending = print_queue.pending_count(self._journal)
            self._on_state(self.state, self.pending)
            if self._printer is None:
                return
            while True:
                try:
                    delay = await self._round(self._printer)
                except Exception:  # a bug here must not end receipts for good
                    log.exception("printer: the print worker failed; trying again")
                    delay = self._backoff.next()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), delay)
                self._wake.clear()
        finally:
            if self._printer is not None:
                await self._printer.close()

    async def _round(self, printer: EscPosPrinter) -> float:
        """Print what is queued while the printer lets us; the wait before the next round."""
        state = await self._status(printer)
        while state == "ready":
            jobs = print_queue.pending(self._journal, limit=1)
            if not jobs:
                break
            state = await self._print(printer, jobs[0])
        self._report(state)
        if state == "ready":
            self._backoff.reset()
            return IDLE_POLL
        return self._backoff.next()

    async def _status(self, printer: EscPosPrinter) -> PrinterState:
        try:
            await printer.open()
            status = await printer.status(STATUS_TIMEOUT)
        except PrinterError as exc:
            if self.state != "offline":
                log.warning("printer: %s", exc)
            await printer.close()  # a replugged adapter is a new device: open it again
            return "offline"
        state = status.state
        if state != self.state and state != "ready":
            log.warning("printer %s: %s", printer.port, status.describe())
        return state

    async def _print(self, printer: EscPosPrinter, job: print_queue.PrintJob) -> PrinterState:
        tx = self._journal.get(job.trans_no)
        if tx is None:  # pruned meanwhile: nothing left to print
            print_queue.printed(self._journal, job.id)
            return "ready"
        try:
            data = self._receipt(tx, job.copy, job.reprint)
        except ValueError as exc:  # e.g. a field the layout refuses: never blocks the queue
            log.error("printer: receipt of %s cannot be laid out (%s); skipped", job.trans_no, exc)
            print_queue.given_up(self._journal, job.id, f"layout: {exc}")
            return "ready"
        try:
            await printer.print(data)
        except PrinterError as exc:
            print_queue.failed(self._journal, job.id, str(exc))
            return await self._status(printer)
        after = await self._status(printer)
        if after == "ready":
            print_queue.printed(self._journal, job.id)
            self.printed += 1
            log.info("printer: %s copy of %s printed", job.copy, job.trans_no)
        else:
            print_queue.failed(self._journal, job.id, after)
            log.warning("printer: %s of %s not printed (%s); kept", job.copy, job.trans_no, after)
        return after

    def _report(self, state: PrinterState) -> None:
        pending = print_queue.pending_count(self._journal)
        if (state, pending) != (self.state, self.pending):
            if state == "ready" and self.state not in ("ready", "none"):
                log.info("printer ready again")
            self.state, self.pending = state, pending
            self._on_state(state, pending)
