"""The technician's reader check (``sadad-agent readers``): probe, then one presentation.

Contract:

* ``check_readers(specs, present_timeout)`` builds each reader from its spec
  (``drivers.registry``), opens and probes it, then - when
  ``present_timeout > 0`` - arms every reader that opened and waits up to
  ``present_timeout`` seconds for one good presentation on each (all at once,
  so the technician can use them in any order). It returns one
  ``ReaderCheck`` per spec, in the order given, and never raises for a
  reader problem: that is the verdict.
* Verdicts: ``ok`` (opened, and a card/code was read when asked),
  ``offline`` (the port is missing or went away), ``fault`` (the device
  answered wrongly), ``no presentation`` (opened, nothing good read in time;
  ``reason`` tells the last unusable read, e.g. "not a wallet payment
  code"), ``bad spec`` (the configuration string is wrong).
* Rows hold masked data only (brand + first 6 / last 4, wallet + masked
  code); the arm context is a dummy 1.00 QAR purchase that is never sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import TextIO

from drivers.base import (
    ArmContext,
    CardDataError,
    CardGone,
    CardNotSupported,
    CardRead,
    Presentation,
    Reader,
    ReaderFault,
    ReaderOffline,
    WalletCode,
)
from drivers.registry import ReaderSpecError, create_reader

__all__ = [
    "CHECK_CONTEXT",
    "ReaderCheck",
    "Verdict",
    "check_readers",
    "format_checks",
    "masked",
    "print_checks",
]

CHECK_CONTEXT = ArmContext(amount=Decimal("1.00"), currency_numeric=634, currency_exponent=2)


class Verdict(enum.StrEnum):
    OK = "ok"
    OFFLINE = "offline"
    FAULT = "fault"
    NO_PRESENTATION = "no presentation"
    BAD_SPEC = "bad spec"


@dataclass(frozen=True, slots=True)
class ReaderCheck:
    """One row of the check. Holds masked data only."""

    name: str
    spec: str
    verdict: Verdict
    model: str = ""
    details: dict[str, str] = field(default_factory=dict)
    presented: str | None = None
    reason: str = ""


def masked(presentation: Presentation) -> str:
    """A display line for a presentation: no full PAN, no track, no full code."""
    if isinstance(presentation, WalletCode):
        return f"{presentation.wallet.value} {presentation.masked}"
    card: CardRead = presentation
    text = f"{card.brand} {card.masked_pan} {card.entry_mode.value.lower()}"
    if card.chip_card and card.entry_mode.value == "MAGSTRIPE":
        text += " (chip card: tap instead)"
    return text


async def _wait_presentation(reader: Reader, timeout: float) -> tuple[str | None, str]:
    """(masked presentation or None, reason). ReaderOffline/ReaderFault propagate."""
    last = "nothing presented"
    try:
        async with asyncio.timeout(timeout):
            while True:
                try:
                    return masked(await reader.next_presentation()), ""
                except (CardDataError, CardNotSupported, CardGone) as exc:
                    last = f"last read: {exc}"
    except TimeoutError:
        return None, last


async def _check_one(name: str, spec: str, present_timeout: float) -> ReaderCheck:
    try:
        reader = create_reader(name, spec)
    except ReaderSpecError as exc:
        return ReaderCheck(name, spec, Verdict.BAD_SPEC, reason=str(exc))
    model, details = "", {}
    try:
        try:
            info = await reader.open()
        except ReaderOffline as exc:
            return ReaderCheck(name, spec, Verdict.OFFLINE, reason=str(exc))
        except ReaderFault as exc:
            return ReaderCheck(name, spec, Verdict.FAULT, reason=str(exc))
        model, details = info.model, dict(info.details)
        if present_timeout <= 0:
            return ReaderCheck(name, spec, Verdict.OK, model, details, reason="probe only")
        await reader.arm(CHECK_CONTEXT)
        try:
            presented, reason = await _wait_presentation(reader, present_timeout)
        finally:
            with contextlib.suppress(ReaderOffline, ReaderFault):
                await reader.disarm()
        if presented is None:
            return ReaderCheck(name, spec, Verdict.NO_PRESENTATION, model, details, reason=reason)
        return ReaderCheck(name, spec, Verdict.OK, model, details, presented)
    except ReaderOffline as exc:
        return ReaderCheck(name, spec, Verdict.OFFLINE, model, details, reason=str(exc))
    except ReaderFault as exc:
        return ReaderCheck(name, spec, Verdict.FAULT, model, details, reason=str(exc))
    finally:
        await reader.close()


async def check_readers(
    specs: dict[str, str],
    present_timeout: float,
    *,
    on_waiting: Callable[[list[str]], None] | None = None,
) -> list[ReaderCheck]:
    """Check every reader (see the module contract). Never raises for a reader problem.

    ``on_waiting`` is called once with the names of the readers that wait for a
    presentation, so a CLI can prompt the technician."""
    names = list(specs)
    if on_waiting is not None and present_timeout > 0 and names:
        on_waiting(names)
    async with asyncio.TaskGroup() as group:
        tasks = [
            group.create_task(_check_one(name, specs[name], present_timeout)) for name in names
        ]
    return [task.result() for task in tasks]


def format_checks(rows: list[ReaderCheck]) -> str:
    """A plain-text table for a terminal; masked data only."""
    if not rows:
        return "no readers configured\n"
    head = ("READER", "VERDICT", "MODEL", "PRESENTED / REASON")
    table = [
        (
            row.name,
            row.verdict.value,
            row.model or "-",
            row.presented or row.reason or "-",
        )
        for row in rows
    ]
    widths = [max(len(r[i]) for r in [head, *table]) for i in range(3)]
    lines = []
    for cells in [head, *table]:
        lines.append(
            "  ".join(cell.ljust(widths[i]) for i, cell in enumerate(cells[:3])) + "  " + cells[3]
        )
    for row in rows:
        lines.append(f"  {row.name}: {row.spec}")
        for key, value in row.details.items():
            lines.append(f"    {key}: {value}")
    return "\n".join(lines) + "\n"


def print_checks(rows: list[ReaderCheck], file: TextIO | None = None) -> None:
    (file or sys.stdout).write(format_checks(rows))
