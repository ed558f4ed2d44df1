"""Waiting in tests: ``until`` for threads and processes, ``async_until`` in asyncio.

One rule for every wait: poll ``check`` against a wall-clock deadline (never a
count of iterations) of ``DEFAULT_TIMEOUT`` seconds, or longer when the caller
knows the awaited thing is slow (a process start, a broker failover), never
shorter: a busy machine must not fail a test that passes on an idle one. A
test that needs something to happen *within* a bound measures it and asserts
on the measurement instead.

On timeout both raise ``AssertionError`` saying what was awaited: ``what``
when given, and always where the check is written (a lambda's source line).

Waits woken by a ``threading.Condition`` (``cond.wait_for``) stay with their
condition: they are notified, not polled. ``tests/ui/conftest.py``'s ``until``
is ``async_until`` with Textual's ``pilot.pause`` between checks.
"""

from __future__ import annotations

import asyncio
import linecache
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")

DEFAULT_TIMEOUT = 10.0  # seconds; generous for anything a test awaits in-process
SYNC_INTERVAL = 0.02
ASYNC_INTERVAL = 0.01


def until(
    check: Callable[[], T | None],
    what: str | None = None,
    *,
    timeout: float = DEFAULT_TIMEOUT,
    interval: float = SYNC_INTERVAL,
) -> T:
    """Call ``check`` every ``interval`` s until it returns something truthy;
    returns that. Raises AssertionError after ``timeout`` s, ValueError for a
    ``timeout`` below ``DEFAULT_TIMEOUT``."""
    deadline = _deadline(timeout)
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise _timed_out(check, what, timeout)
        time.sleep(interval)


async def async_until(
    check: Callable[[], T | None],
    what: str | None = None,
    *,
    timeout: float = DEFAULT_TIMEOUT,
    interval: float = ASYNC_INTERVAL,
    sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
) -> T:
    """``until`` for the event loop: ``await sleep(interval)`` between checks,
    so the tasks under test run."""
    deadline = _deadline(timeout)
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise _timed_out(check, what, timeout)
        await sleep(interval)


def describe(check: Callable[..., object]) -> str:
    """Where ``check`` is written: a lambda's source line, else its name; with
    ``file:line``."""
    name = str(getattr(check, "__qualname__", repr(check)))
    code = getattr(check, "__code__", None)
    if code is None:
        return name
    where = f"{Path(code.co_filename).name}:{code.co_firstlineno}"
    if name.endswith("<lambda>"):
        line = linecache.getline(code.co_filename, code.co_firstlineno).strip()
        if line:
            return f"{line}  [{where}]"
    return f"{name}  [{where}]"


def _deadline(timeout: float) -> float:
    if timeout < DEFAULT_TIMEOUT:
        raise ValueError(
            f"timeout={timeout:g} s is below DEFAULT_TIMEOUT ({DEFAULT_TIMEOUT:g} s): "
            "the test would depend on the machine's speed"
        )
    return time.monotonic() + timeout


def _timed_out(check: Callable[..., object], what: str | None, timeout: float) -> AssertionError:
    awaited = describe(check) if what is None else f"{what}: {describe(check)}"
    return AssertionError(f"not reached within {timeout:g} s: {awaited}")
