"""The transaction state table: the one place that says what may follow what.

DESIGN.md "Transaction engine". Built on ``transitions`` (AsyncMachine, Enum
states, queued triggers, timeouts as state features). The engine
(``agent.engine.Engine``) is the model: it supplies the ``on_enter_*``
callbacks that journal, drive readers and call the gateway, and it fires the
triggers, typed by ``Triggers`` below. A trigger that does not apply in the
current state is ignored (logged), which is how a late cancel after a payment
was sent, or a second close, can never move a transaction backwards.

The table, as ``diagram()`` draws it (a test keeps this copy equal to it):

    IDLE --offer--> OFFERED
    OFFERED --begin--> AWAITING_PAYMENT            (no confirmation asked)
    OFFERED --confirm--> AWAITING_PAYMENT          (the cashier confirmed the amount)
    AWAITING_PAYMENT --present--> READING          (a card or code was presented)
    READING --retry_read--> AWAITING_PAYMENT       (tap again, wrong method)
    READING --authorize--> AUTHORIZING             (the payment is journaled, then sent)
    AUTHORIZING/RESOLVING --approve--> APPROVED
    AUTHORIZING/RESOLVING --decline--> DECLINED
    AUTHORIZING --unknown--> RESOLVING             (no answer, or none that counts)
    AUTHORIZING/RESOLVING --reversed--> CANCELLED  (reversed, or never completed)
    IDLE --resume--> RESOLVING                     (restart with an unanswered attempt)
    OFFERED/AWAITING_PAYMENT/READING --cancel--> CANCELLED
    OFFERED/AWAITING_PAYMENT/READING --close--> CLOSED
    OFFERED/AWAITING_PAYMENT --expire--> EXPIRED   (the order's expires_at passed)
    final --done--> IDLE                           (after the result was shown)
    any but IDLE --fault--> IDLE                   (an exception: settled from the journal)

Timeouts: OFFERED and AWAITING_PAYMENT carry the order's own deadline
(``expires_at``, docs/protocol.md part C) and fire ``expire``; the final states
fire ``done`` after ``RESULT_SECONDS`` so the result stays on screen.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

from transitions.extensions.asyncio import AsyncMachine, AsyncTimeout
from transitions.extensions.states import add_state_features

from cloud.messages import Screen

if TYPE_CHECKING:
    from cloud.messages import CashierResult
    from drivers.base import Presentation

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
_CANCELLABLE = (State.OFFERED, State.AWAITING_PAYMENT, State.READING)
_PAYING = (State.AUTHORIZING, State.RESOLVING)


class Transition(NamedTuple):
    trigger: str
    sources: tuple[State, ...]
    dest: State
    why: str = ""  # for the diagram


TABLE: tuple[Transition, ...] = (
    Transition("offer", (State.IDLE,), State.OFFERED),
    Transition("begin", (State.OFFERED,), State.AWAITING_PAYMENT, "no confirmation asked"),
    Transition(
        "confirm", (State.OFFERED,), State.AWAITING_PAYMENT, "the cashier confirmed the amount"
    ),
    Transition("present", (State.AWAITING_PAYMENT,), State.READING, "a card or code was presented"),
    Transition("retry_read", (State.READING,), State.AWAITING_PAYMENT, "tap again, wrong method"),
    Transition(
        "authorize", (State.READING,), State.AUTHORIZING, "the payment is journaled, then sent"
    ),
    Transition("approve", _PAYING, State.APPROVED),
    Transition("decline", _PAYING, State.DECLINED),
    Transition("unknown", (State.AUTHORIZING,), State.RESOLVING, "no answer, or none that counts"),
    Transition("reversed", _PAYING, State.CANCELLED, "reversed, or never completed"),
    Transition("resume", (State.IDLE,), State.RESOLVING, "restart with an unanswered attempt"),
    Transition("cancel", _CANCELLABLE, State.CANCELLED),
    Transition("close", _CANCELLABLE, State.CLOSED),
    Transition(
        "expire",
        (State.OFFERED, State.AWAITING_PAYMENT),
        State.EXPIRED,
        "the order's expires_at passed",
    ),
    Transition("done", tuple(FINAL), State.IDLE, "after the result was shown"),
    # An exception escaped a callback: leave the order (the engine settles it
    # from the journal, as a restart would) and go back to IDLE.
    Transition(
        "fault",
        tuple(s for s in State if s is not State.IDLE),
        State.IDLE,
        "an exception: settled from the journal",
    ),
)


def _sources_text(sources: Sequence[State]) -> str:
    if set(sources) == FINAL:
        return "final"
    if set(sources) == set(State) - {State.IDLE}:
        return "any but IDLE"
    return "/".join(s.value for s in sources)


def diagram() -> str:
    """The table as text, one line per trigger (the module docstring's copy)."""
    arrows = [f"{_sources_text(t.sources)} --{t.trigger}--> {t.dest.value}" for t in TABLE]
    width = max(len(a) for a, t in zip(arrows, TABLE, strict=True) if t.why) + 2
    return "\n".join(
        f"{a:<{width}}({t.why})" if t.why else a for a, t in zip(arrows, TABLE, strict=True)
    )


class Triggers:
    """The table's triggers, typed for the engine (which inherits them).

    ``transitions`` binds each of these names to its trigger when the
    machine is built with ``model_override=True`` (it replaces exactly the
    attributes the model declares); ``build_machine`` checks that this class
    and ``TABLE`` name the same triggers. The keyword arguments reach the
    ``on_enter_*`` callbacks. Each returns whether the transition happened."""

    async def offer(self) -> bool:
        raise _unbound()

    async def begin(self) -> bool:
        raise _unbound()

    async def confirm(self, *, cause: str) -> bool:
        raise _unbound()

    async def present(self, *, presentation: Presentation) -> bool:
        raise _unbound()

    async def retry_read(self, *, message: str) -> bool:
        raise _unbound()

    async def authorize(self, *, presentation: Presentation) -> bool:
        raise _unbound()

    async def approve(self, *, result: CashierResult) -> bool:
        raise _unbound()

    async def decline(self, *, result: CashierResult) -> bool:
        raise _unbound()

    async def unknown(self) -> bool:
        raise _unbound()

    async def reversed(self, *, reason: str) -> bool:
        raise _unbound()

    async def resume(self) -> bool:
        raise _unbound()

    async def cancel(self, *, cause: str) -> bool:
        raise _unbound()

    async def close(self, *, cause: str) -> bool:
        raise _unbound()

    async def expire(self) -> bool:
        raise _unbound()

    async def done(self) -> bool:
        raise _unbound()

    async def fault(self) -> bool:
        raise _unbound()


def _unbound() -> RuntimeError:
    return RuntimeError("trigger not bound: build_machine() was not called on this model")


TRIGGERS = frozenset(name for name in vars(Triggers) if not name.startswith("_"))


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


class _QuietOverride(logging.Filter):
    """``model_override`` binds only the triggers ``Triggers`` declares, by
    design; transitions warns of each helper it skips (``is_IDLE``,
    ``may_offer``...), some forty lines per machine. Those only."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "due to model override policy" not in record.getMessage()


logging.getLogger("transitions.core").addFilter(_QuietOverride())


def build_machine(model: Triggers, result_seconds: float = RESULT_SECONDS) -> TransactionMachine:
    """Attach the state table to ``model`` (the engine)."""
    table_triggers = {t.trigger for t in TABLE}
    if table_triggers != TRIGGERS:  # a trigger without a typed method would not be bound
        raise TypeError(f"Triggers and TABLE disagree: {sorted(table_triggers ^ TRIGGERS)}")
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
        transitions=[
            {"trigger": t.trigger, "source": list(t.sources), "dest": t.dest} for t in TABLE
        ],
        initial=State.IDLE,
        queued=True,
        ignore_invalid_triggers=True,
        auto_transitions=False,
        send_event=False,
        model_override=True,
    )
