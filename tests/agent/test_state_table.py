"""The state table's drawing, its typed triggers and its screens agree with
the table itself (``agent.states``)."""

from __future__ import annotations

import inspect
import textwrap

import pytest

from agent import states
from agent.engine import Engine
from agent.states import FINAL, TABLE, TRIGGERS, State, Triggers
from cloud.messages import Screen


def test_the_docstring_draws_the_table() -> None:
    """The module docstring's diagram is ``diagram()``'s, line for line: a
    transition added, removed or moved shows up in the drawing."""
    doc = states.__doc__ or ""
    start = doc.index("    IDLE --offer-->")
    block = doc[start:].split("\n\n", 1)[0]
    assert textwrap.dedent(block) == states.diagram()


def test_every_transition_is_drawn() -> None:
    drawing = states.diagram()
    for t in TABLE:
        assert f"--{t.trigger}--> {t.dest.value}" in drawing


def test_each_trigger_is_declared_once_typed() -> None:
    assert {t.trigger for t in TABLE} == TRIGGERS
    for name in TRIGGERS:
        method = getattr(Triggers, name)
        assert inspect.iscoroutinefunction(method)
        assert inspect.signature(method).return_annotation in ("bool", bool)


def test_a_trigger_missing_from_the_types_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(states, "TRIGGERS", TRIGGERS - {"fault"})
    with pytest.raises(TypeError, match="fault"):
        states.build_machine(Triggers())


async def test_triggers_are_bound_on_the_model() -> None:
    """``model_override`` binds the declared names: calling one moves the
    machine (an unbound one would raise RuntimeError)."""

    class Model(Triggers):
        state: State

        def seconds_left(self) -> float:  # the order's deadline (OrderDeadline)
            return 60.0

    model = Model()
    states.build_machine(model)
    seen = [model.state]
    assert await model.offer() is True
    seen.append(model.state)
    await model.approve(result=None)  # type: ignore[arg-type]  # ignored: not from OFFERED
    seen.append(model.state)
    assert await model.fault() is True  # and the order deadline's timer is cancelled
    seen.append(model.state)
    assert seen == [State.IDLE, State.OFFERED, State.OFFERED, State.IDLE]


def test_every_state_has_a_screen() -> None:
    assert State.IDLE.screen(False) is Screen.IDLE
    assert State.OFFERED.screen(True) is Screen.WAITING_FOR_CONFIRM
    assert State.OFFERED.screen(False) is Screen.WAITING_FOR_CARD
    assert {s.screen(False) for s in FINAL} == {Screen.RESULT}
    assert {State.AUTHORIZING.screen(False), State.RESOLVING.screen(False)} == {Screen.AUTHORIZING}


def test_the_engine_is_the_typed_model() -> None:
    assert issubclass(Engine, Triggers)
    for name in TRIGGERS:  # the engine never shadows a trigger with a method of its own
        assert getattr(Engine, name) is getattr(Triggers, name)
