"""When a push is durable: the one mechanism behind "PUBACK only once the push
is on disk" (docs/protocol.md part C; DESIGN.md "Journal").

A push is committed with ``Journal.batch(deferred_sync=True)``: written to
the OS (another process reads it, and it survives this one being killed) but
not yet fsynced, so that the terminal goes on with the order at once (an idle
one has drawn it already, ``agent.intake``). It becomes durable either

* when any later FULL commit fsyncs the WAL (the journal calls
  ``on_covered``): an idle terminal's OFFERED commit, made right after the
  order is drawn, covers its push; or
* by ``sync()``, an fdatasync of the WAL in a worker thread, so the loop goes
  on meanwhile.

``durable(wait_for_commit=s)`` returns once every deferred commit is durable,
waiting up to ``s`` seconds for a FULL commit before syncing itself: an fsync
of our own meanwhile would compete with the worker for the interpreter (the
order reached the screen ~0.9 ms later at p50 in push_to_screen). The outbox
calls ``sync()`` before anything leaves: no event about a push goes out
before the push is on disk.
"""

from __future__ import annotations

import asyncio
import contextlib

from agent.journal import Journal


class Durability:
    """Use from the journal's event loop."""

    def __init__(self, journal: Journal) -> None:
        self._journal = journal
        self._waiters: list[asyncio.Future[None]] = []
        journal.on_covered = self._covered

    async def sync(self) -> None:
        """Make deferred commits durable now. Raises JournalError."""
        if self._journal.unsynced:
            await asyncio.to_thread(self._journal.sync)

    async def durable(self, *, wait_for_commit: float = 0.0) -> None:
        """Return once every deferred commit is durable (see the module
        docstring). Raises JournalError."""
        if wait_for_commit > 0 and self._journal.unsynced:
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                with contextlib.suppress(TimeoutError):  # not wait_for: see agent.outbox
                    async with asyncio.timeout(wait_for_commit):
                        await waiter
            finally:
                with contextlib.suppress(ValueError):
                    self._waiters.remove(waiter)
        await self.sync()

    def _covered(self) -> None:
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)
