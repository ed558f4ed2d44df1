"""The live status line ``sadad-pos push --wait`` shows while it waits.

On a terminal (stderr a TTY) one line redrawn ten times a second: a
spinner, the terminal and amount, the order's status and why it waits
(``cloud.timeline.why_pending``: a busy terminal, its queue position),
the seconds waited; the line is erased when the wait ends. Not a TTY: one
line per change. Nothing in ``--json`` mode, whose stdout is one object.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

from cloud.cli_output import STATUS_TEXT, Output
from cloud.messages import OrderInfo, TransStatus
from cloud.timeline import why_pending

_SPINNER = "⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏"


class Progress:
    """The live status line while ``push --wait`` waits (stderr, TTY only;
    one line per change when stderr is not a TTY; nothing in json mode)."""

    def __init__(
        self, output: Output, terminal: str, amount: str, *, offline: bool = False
    ) -> None:
        self._output = output
        self._offline = offline
        self._prefix = f"{terminal} | {amount}"
        self._status = TransStatus.PREORDER
        self._why: str | None = None
        self._started = time.monotonic()
        self._task: asyncio.Task[None] | None = None
        err = output.err
        self._live = not output.json and err.isatty()
        encoding = (getattr(err, "encoding", None) or "").lower().replace("-", "")
        self._frames = _SPINNER if encoding == "utf8" else "|/-\\"
        if not output.json and not self._live:
            self._line()

    def _text(self) -> str:
        why = STATUS_TEXT[self._status]
        if self._why:
            why += f"; {self._why}"
        elif self._offline and self._status == TransStatus.PREORDER:
            why += "; terminal offline, it gets the order when it connects"
        return f"{self._prefix} | {self._status.name} ({why})"

    def _line(self) -> None:
        print(self._text(), file=self._output.err, flush=True)

    def update(self, info: OrderInfo) -> None:
        why = why_pending(info)  # e.g. busy terminal, queue position (sandbox)
        if (info.trans_status, why) == (self._status, self._why):
            return
        self._status, self._why = info.trans_status, why
        if not self._output.json and not self._live:
            self._line()

    async def _spin(self) -> None:
        err = self._output.err
        frame = 0
        while True:
            elapsed = int(time.monotonic() - self._started)
            glyph = self._frames[frame % len(self._frames)]
            err.write(f"\r{glyph} {self._text()} {elapsed}s\x1b[K")
            err.flush()
            frame += 1
            await asyncio.sleep(0.1)

    def start(self) -> None:
        if self._live:
            self._task = asyncio.create_task(self._spin())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
            self._output.err.write("\r\x1b[K")
            self._output.err.flush()
