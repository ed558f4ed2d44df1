"""Where the fault tests break the agent, and one guard for cancellation.

``fail_point`` and ``crash_point`` are named steps of a payment where the
tests make the agent raise (``SADAD_AGENT_FAIL_AT``) or die as a power cut
would (``SADAD_AGENT_CRASH_AT``): failpoints, as in FoundationDB's
simulator. Without either variable they do nothing.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal

log = logging.getLogger(__name__)

_FAILED_AT: set[str] = set()


class Failpoint(RuntimeError):
    """Raised where ``SADAD_AGENT_FAIL_AT`` says (tests only)."""


def fail_point(step: str) -> None:
    """Raise here, once per process, when ``SADAD_AGENT_FAIL_AT`` names this
    step: the fault tests prove that an exception in any state callback ends
    the order as recovery would, and the terminal takes the next one."""
    if os.environ.get("SADAD_AGENT_FAIL_AT") == step and step not in _FAILED_AT:
        _FAILED_AT.add(step)
        log.warning("fail point %s: raising", step)
        raise Failpoint(f"fail point {step}")


def crash_point(step: str) -> None:
    """Die here, as a power cut would, when ``SADAD_AGENT_CRASH_AT`` names this
    step. Only the crash tests set it: they prove a restart settles the
    payment from the journal."""
    if os.environ.get("SADAD_AGENT_CRASH_AT") == step:
        log.warning("crash point %s: SIGKILL", step)
        os.kill(os.getpid(), signal.SIGKILL)


def raise_if_cancelling() -> None:
    """Honour a cancellation that ``transitions`` swallowed.

    ``AsyncMachine.process_context`` catches the CancelledError raised inside a
    trigger's callbacks and returns False, so a task cancelled mid-transition
    (``stop()`` while a payment is with the gateway, or during a reversal)
    would carry on as if nothing happened and ``stop()`` would wait for it
    forever. Call this after each outermost trigger returns."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError
