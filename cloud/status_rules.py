"""States never regress: the one rule every layer applies to a status it keeps.

Delivery is at least once and answers race (docs/protocol.md part B: retried
notifications beside ``order.query`` polling; part C: redelivered pushes and
events), so a report may arrive late, twice or out of order. Whoever stores
or shows a status - the POS client, the sandbox, the agent's journal, the
checkout screen - judges each report against what it holds:

- ``MOVE``: further along (a later step, or any final status from a
  non-final one): apply it.
- ``REPEAT``: the status already held: nothing moves (a non-final repeat may
  refresh its details).
- ``STALE``: an earlier step, or a non-final status after a final one: a late
  report; ignore it.
- ``CONFLICT``: another final status after a final one: ignore it and log it
  loudly, naming the order, the status kept and the one refused.

A ``Ladder`` is a layer's statuses: its non-final steps, earliest first
(statuses sharing a step may follow one another freely), and its final
statuses, which all sit above every step and never move. ``TRANS_STATUS`` is
the ladder of ``trans_status`` (docs/protocol.md part A: 9 -> 0 -> 1/2/3).
A layer that is itself the authority may allow named exceptions on top
(the sandbox's reversal 2 -> 3); a report never makes one.
"""

from __future__ import annotations

import enum
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Generic, TypeVar

from cloud.messages import TransStatus

S = TypeVar("S", bound=Hashable)


class Verdict(enum.Enum):
    MOVE = "move"
    REPEAT = "repeat"
    STALE = "stale"
    CONFLICT = "conflict"


@dataclass(frozen=True, slots=True)
class Ladder(Generic[S]):
    """Non-final ``steps`` (earliest first) below the ``finals``; see the module docstring."""

    steps: tuple[frozenset[S], ...]
    finals: frozenset[S]

    def __post_init__(self) -> None:
        members = [s for step in self.steps for s in step]
        if len(set(members)) != len(members) or self.finals.intersection(members):
            raise ValueError("a status sits on one step of a ladder only")

    def _step(self, status: S) -> int:
        for index, step in enumerate(self.steps):
            if status in step:
                return index
        raise ValueError(f"{status!r} is not on this ladder")

    def judge(self, held: S | None, new: S) -> Verdict:
        """What a report of ``new`` does to ``held`` (None: nothing held yet).

        Raises ValueError for a status that is not on the ladder.
        """
        new_final = new in self.finals
        if not new_final:
            self._step(new)
        if held is None:
            return Verdict.MOVE
        if new == held:
            return Verdict.REPEAT
        if held in self.finals:
            return Verdict.CONFLICT if new_final else Verdict.STALE
        if new_final:
            return Verdict.MOVE
        return Verdict.MOVE if self._step(new) >= self._step(held) else Verdict.STALE


FINAL_STATUSES = frozenset({TransStatus.CLOSED, TransStatus.COMPLETED, TransStatus.CANCELLED})

TRANS_STATUS: Ladder[TransStatus] = Ladder(
    steps=(frozenset({TransStatus.PREORDER}), frozenset({TransStatus.PROCESSING})),
    finals=FINAL_STATUSES,
)


# The one final -> final move that is news, not a late report: a paid order
# voided or reversed afterwards (a void order, or the terminal's reversal of
# an outcome it could not learn). A 2 never follows a 3, so a 3 after a 2 is
# never stale. The gateway makes it (sandbox ``CORRECTIONS``); observers (the
# POS client) follow it, logged as a warning.
REVERSAL = (TransStatus.COMPLETED, TransStatus.CANCELLED)


def may_move(held: TransStatus, new: TransStatus) -> bool:
    """Whether a report of ``new`` moves an order that is in ``held`` (``TRANS_STATUS``)."""
    return TRANS_STATUS.judge(held, new) is Verdict.MOVE
