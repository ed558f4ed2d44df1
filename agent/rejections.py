"""Journal and report the pushes the terminal refuses (docs/protocol.md part
C, "Rejected pushes"), without letting a flood of them cost the terminal.

Two kinds, told apart by whether anyone signed the push:

* **Genuine** (``PushRejected.message_id`` set): a push the gateway signed,
  refused for what it says (another terminal's, stale, expired). Its
  message_id is genuine, so it is journaled with the pushes, where a
  redelivery is recognised, and the TMS hears of each one under that id;
  there are only as many as the gateway signed, so no rate limit is needed,
  and the order's fate depends on the report.
* **Unverified**: anything else. Nothing of it is trusted, its claimed
  message_id included (a forgery must not claim the id of a genuine push to
  come), and only a bounded, rate-limited record is kept
  (``agent.reject_reports``): one journal row, event and log line per report.

``reject`` never raises: the push is acknowledged whatever happens here.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from agent.clock import wall_ms
from agent.journal import Journal
from agent.reject_reports import RejectReports, Report
from cloud import envelope, redact
from cloud.messages import MAX_ID

log = logging.getLogger(__name__)


def _contract_id(message_id: str) -> bool:
    """An id as docs/protocol.md has it: 1..64 printable ASCII characters."""
    return 0 < len(message_id) <= MAX_ID and message_id.isascii() and message_id.isprintable()


class PushRejections:
    """Use from the journal's event loop. ``wake_outbox`` is called once an
    event is journaled."""

    def __init__(
        self,
        journal: Journal,
        wake_outbox: Callable[[], None],
        reports: RejectReports | None = None,
    ) -> None:
        self._journal = journal
        self._wake_outbox = wake_outbox
        self._reports = reports or RejectReports()
        self._timer: asyncio.TimerHandle | None = None
        self._seq = 0

    def reject(self, size: int, exc: envelope.PushRejected) -> None:
        """Journal and report one rejected push of ``size`` bytes."""
        try:
            if exc.message_id is not None:
                self._genuine(exc.message_id, exc)
            else:
                self._unverified(size, exc)
        except Exception:
            log.exception("push rejection (%s) not journaled; acknowledged anyway", exc.reason)

    def stop(self) -> None:
        """Report what is still counted now, token or not: it leaves with the
        next start rather than being lost with the process."""
        if self._timer is not None:
            self._timer.cancel()
        self._flush(stopping=True)

    def _genuine(self, message_id: str, exc: envelope.PushRejected) -> None:
        # The gateway's own id, signed: journaled and reported exactly as it
        # came (the TMS finds its push by it; a hex id can hold a run of 13
        # digits, which masking would have changed), as an accepted push's
        # is. Only the log line masks it. An id outside the contract's shape
        # (1..64 printable ASCII) is not an id anyone can match: kept masked.
        shown = redact.safe(message_id, MAX_ID)
        key = message_id if _contract_id(message_id) else shown
        with self._journal.batch():  # the record and its event in one commit
            if not self._journal.record_rejected_push(
                key, redact.safe(exc.topic or "unknown"), exc.reason
            ):
                return  # delivered again: reported the first time
            self._journal.enqueue_event("rejected", key, None, exc.reason)
        log.warning("push %s rejected (%s): %s", shown, exc.reason, redact.safe(str(exc), 160))
        self._wake_outbox()

    def _unverified(self, size: int, exc: envelope.PushRejected) -> None:
        report = self._reports.offer(exc.reason, time.monotonic())
        if report is None:  # counted for a later report
            self._schedule_flush()
            return
        claimed = redact.safe(exc.claimed_id, 64) if exc.claimed_id is not None else None
        detail = redact.safe(str(exc), 160)
        log.warning(
            "push rejected (%s, %d bytes%s): %s",
            report.text,
            size,
            f", claiming message_id {claimed}" if claimed is not None else "",
            detail,
        )
        self._record(report, detail, size, claimed)

    def _record(self, report: Report, detail: str, size: int, claimed: str | None) -> None:
        self._seq += 1
        self._journal.record_rejection(
            reason=report.reason,
            detail=detail,
            size=size,
            suppressed=report.suppressed,
            claimed_id=claimed,
            event_id=f"rejected-{wall_ms()}-{self._seq}",
            event_reason=report.text,
        )
        self._wake_outbox()

    def _schedule_flush(self) -> None:
        if self._timer is not None:
            return
        due = self._reports.due(time.monotonic())
        if due is None:
            return
        self._timer = asyncio.get_running_loop().call_later(due + 0.01, self._flush)

    def _flush(self, *, stopping: bool = False) -> None:
        """The rejections counted while reports were held, reported as one."""
        self._timer = None
        now = time.monotonic()
        report = self._reports.drain() if stopping else self._reports.flush(now)
        if report is None:
            if not stopping:
                self._schedule_flush()
            return
        count = report.suppressed + 1
        log.warning("%d more pushes rejected (the last: %s)", count, report.reason)
        try:
            self._record(report, f"{count} rejected since the last report", 0, None)
        except Exception:
            log.exception("push rejection report not journaled")
