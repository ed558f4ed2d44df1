"""Where a transaction stands, as journaled, and which moves are allowed:
phases never regress (DESIGN.md "Journal"; ``cloud.status_rules``)."""

from __future__ import annotations

import enum

from cloud.status_rules import Ladder, Verdict


class Phase(enum.StrEnum):
    """Where a transaction stands, as journaled (a subset of the engine states)."""

    OFFERED = "OFFERED"
    AWAITING_PAYMENT = "AWAITING_PAYMENT"
    AUTHORIZING = "AUTHORIZING"
    RESOLVING = "RESOLVING"
    APPROVED = "APPROVED"
    DECLINED = "DECLINED"
    CANCELLED = "CANCELLED"
    CLOSED = "CLOSED"
    EXPIRED = "EXPIRED"

    @property
    def is_final(self) -> bool:
        return self in FINAL_PHASES


FINAL_PHASES = frozenset(
    {Phase.APPROVED, Phase.DECLINED, Phase.CANCELLED, Phase.CLOSED, Phase.EXPIRED}
)

# A transaction's phases in the order a sale reaches them (``cloud.status_rules``).
PHASES: Ladder[Phase] = Ladder(
    steps=tuple(
        frozenset({p})
        for p in (Phase.OFFERED, Phase.AWAITING_PAYMENT, Phase.AUTHORIZING, Phase.RESOLVING)
    ),
    finals=FINAL_PHASES,
)
_WAITING = frozenset({Phase.OFFERED, Phase.AWAITING_PAYMENT})


def phase_verdict(held: Phase, new: Phase, *, attempted: bool) -> Verdict:
    """What moving a transaction in ``held`` to ``new`` does: ``PHASES``, except
    that a restart may offer an order again (back to waiting for the card)
    while no payment attempt is journaled - after one, never: that would
    invite a second payment."""
    verdict = PHASES.judge(held, new)
    if verdict is Verdict.STALE and not held.is_final and new in _WAITING and not attempted:
        return Verdict.MOVE
    return verdict


# The phases a new payment attempt may start from (it moves them to AUTHORIZING).
ATTEMPT_FROM = tuple(
    p.value
    for p in Phase
    if phase_verdict(p, Phase.AUTHORIZING, attempted=True) in (Verdict.MOVE, Verdict.REPEAT)
)
