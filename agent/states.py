"""The transaction state table: the one place that says what may follow what.

DESIGN.md "Transaction engine". Built on ``transitions`` (AsyncMachine, Enum
states, queued triggers, timeouts as state features). The engine
(``agent.engine.Engine``) is the model: it supplies the ``on_enter_*``
callbacks that journal, drive readers and call the gateway, and it fires the
triggers below. A trigger that does not apply in the current state is
ignored (logged), which is how a late cancel after a payment was sent, or a
second close, can never move a transaction backwards.

    IDLE --offer--> OFFERED --begin/confirm--> AWAITING_PAYMENT --present--> READING
    READING --authorize--> AUTHORIZING --approve/decline--> APPROVED/DECLINED
    READING --retry_read--> AWAITING_PAYMENT          (tap again, wrong method)
    AUTHORIZING --unknown--> RESOLVING --approve/decline/reversed--> final
    OFFERED/AWAITING_PAYMENT/READING --cancel/close--> CANCELLED/CLOSED
    OFFERED/AWAITING_PAYMENT --expire (deadline)--> EXPIRED
    IDLE --resume--> RESOLVING                        (restart with an unanswered attempt)
    final --done (after the result is shown)--> IDLE
    any but IDLE --fault--> IDLE                      (an exception: settled from the journal)

Timeouts: OFFERED and AWAITING_PAYMENT carry the order's own deadline
(``expires_at``, docs/protocol.md part C) and fire ``expire``; the final states
fire ``done`` after ``RESULT_SECONDS`` so the result stays on screen.
"""

from __future__ import annotations

import enum
import time
from typing import Any

from transitions.extensions.asyncio import AsyncMachine, AsyncTimeout
from transitions.extensions.states import add_state_features

from cloud.messages import Screen

RESULT_SECONDS = 4.0


class State(enum.Enum):
    IDLE = "IDLE"
    OFFERED = "OFFERED"
    AWAITING_PAYMENT = "AWAITING_PAYMENT"
    READING = "READING"
    AUTHORIZING = "AUTHORIZING"
    RESOLVING = "RESOLVING"
    APPROVED = "APPROVED"
    DECLINED = "DECLINED"
    CANCELLED = "CANCELLED"
    CLOSED = "CLOSED"
    EXPIRED = "EXPIRED"

    @property
    def is_final(self) -> bool:
        return self in FINAL

    def screen(self, confirm_required: bool) -> Screen:
        """What the checkout shows in this state (docs/protocol.md part C ``screen``)."""
        if self is State.IDLE:
            return Screen.IDLE
        if self is State.OFFERED:
            return Screen.WAITING_FOR_CONFIRM if confirm_required else Screen.WAITING_FOR_CARD
        if self is State.AWAITING_PAYMENT:
            return Screen.WAITING_FOR_CARD
        if self is State.READING:
            return Screen.READING
        if self in (State.AUTHORIZING, State.RESOLVING):
            return Screen.AUTHORIZING
        return Screen.RESULT


FINAL = frozenset({State.APPROVED, State.DECLINED, State.CANCELLED, State.CLOSED, State.EXPIRED})
_CANCELLABLE = [State.OFFERED, State.AWAITING_PAYMENT, State.READING]

TRANSITIONS: list[dict[str, Any]] = [
    {"trigger": "offer", "source": State.IDLE, "dest": State.OFFERED},
    {"trigger": "begin", "source": State.OFFERED, "dest": State.AWAITING_PAYMENT},
    {"trigger": "confirm", "source": State.OFFERED, "dest": State.AWAITING_PAYMENT},
    {"trigger": "present", "source": State.AWAITING_PAYMENT, "dest": State.READING},
    {"trigger": "retry_read", "source": State.READING, "dest": State.AWAITING_PAYMENT},
    {"trigger": "authorize", "source": State.READING, "dest": State.AUTHORIZING},
    {"trigger": "approve", "source": [State.AUTHORIZING, State.RESOLVING], "dest": State.APPROVED},
    {"trigger": "decline", "source": [State.AUTHORIZING, State.RESOLVING], "dest": State.DECLINED},
    {"trigger": "unknown", "source": State.AUTHORIZING, "dest": State.RESOLVING},
    {
        "trigger": "reversed",
        "source": [State.AUTHORIZING, State.RESOLVING],
        "dest": State.CANCELLED,
    },
    {"trigger": "resume", "source": State.IDLE, "dest": State.RESOLVING},
    {"trigger": "cancel", "source": _CANCELLABLE, "dest": State.CANCELLED},
    {"trigger": "close", "source": _CANCELLABLE, "dest": State.CLOSED},
    {"trigger": "expire", "source": [State.OFFERED, State.AWAITING_PAYMENT], "dest": State.EXPIRED},
    {"trigger": "done", "source": list(FINAL), "dest": State.IDLE},
    # An exception escaped a callback: leave the order (the engine settles it
    # from the journal, as a restart would) and go back to IDLE.
    {"trigger": "fault", "source": [s for s in State if s is not State.IDLE], "dest": State.IDLE},
]


class OrderDeadline(AsyncTimeout):
    """A timeout whose length is the current order's time left, read on entry
    from the model's ``seconds_left()`` (AsyncTimeout has a fixed length)."""

    async def enter(self, event_data: Any) -> None:  # type: ignore[override]
        if self._deadline:
            self.timeout = max(0.001, float(event_data.model.seconds_left()))
        await super().enter(event_data)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._deadline = bool(kwargs.pop("order_deadline", False))
        if self._deadline:
            kwargs.setdefault("timeout", 1.0)
        super().__init__(*args, **kwargs)


@add_state_features(OrderDeadline)
class TransactionMachine(AsyncMachine):
    """AsyncMachine with the ``timeout``/``on_timeout``/``order_deadline`` state features."""


def build_machine(model: Any, result_seconds: float = RESULT_SECONDS) -> TransactionMachine:
    """Attach the state table to ``model`` (the engine)."""
    states: list[dict[str, Any]] = []
    for state in State:
        spec: dict[str, Any] = {"name": state}
        if state in (State.OFFERED, State.AWAITING_PAYMENT):
            spec.update(order_deadline=True, on_timeout="expire")
        elif state.is_final:
            spec.update(timeout=result_seconds, on_timeout="done")
        states.append(spec)
    return TransactionMachine(
        model=model,
        states=states,
        transitions=TRANSITIONS,
        initial=State.IDLE,
        queued=True,
        ignore_invalid_triggers=True,
        auto_transitions=False,
        send_event=False,
    )


def monotonic_ms() -> int:
    return time.monotonic_ns() // 1_000_000
