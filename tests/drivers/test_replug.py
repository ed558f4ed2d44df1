"""ManagedReader across unplug/replug of real ptys: states, reopen, re-arm, presentations."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path

import pytest

from drivers.base import (
    ArmContext,
    CardDataError,
    CardRead,
    ReaderInfo,
    ReaderState,
    WalletCode,
)
from drivers.magstripe_reader import MagstripeReader
from drivers.registry import ManagedReader
from drivers.scanner_reader import ScannerReader
from drivers.sim.magstripe import MagstripeSim
from drivers.sim.pty import PtyPeer
from drivers.sim.scanner import ScannerSim
from tests.waiting import async_until

CTX = ArmContext(Decimal("7.00"), 634, 2)
FAST = {"backoff_initial": 0.02, "backoff_max": 0.1, "health_interval": 0.05}


class Recorder:
    def __init__(self) -> None:
        self.events: list[tuple[str, ReaderState, str]] = []

    def __call__(self, name: str, state: ReaderState, reason: str) -> None:
        self.events.append((name, state, reason))

    @property
    def states(self) -> list[ReaderState]:
        return [state for _, state, _ in self.events]


def state(managed: ManagedReader) -> ReaderState:
    return managed.state  # a call, so mypy does not narrow the enum between awaits


@pytest.fixture
async def peer(tmp_path: Path) -> AsyncIterator[PtyPeer]:
    async with PtyPeer(str(tmp_path / "ttyR")) as p:
        yield p


async def test_wait_survives_unplug_and_replug(peer: PtyPeer) -> None:
    rec = Recorder()
    managed = ManagedReader(MagstripeReader("swipe", peer.link), rec, **FAST)  # type: ignore[arg-type]
    await managed.start()
    try:
        await asyncio.wait_for(managed.wait_ready(), 3)
        assert state(managed) is ReaderState.READY
        await managed.arm(CTX)
        waiting = asyncio.create_task(managed.next_presentation())
        await asyncio.sleep(0.05)

        peer.unplug()
        await async_until(lambda: state(managed) is ReaderState.OFFLINE)
        assert not waiting.done()  # the wait goes on across the outage
        await asyncio.sleep(0.2)  # several failed reopen attempts (link is gone)
        assert state(managed) is ReaderState.OFFLINE

        peer.replug()
        await async_until(lambda: state(managed) is ReaderState.READY)
        assert not waiting.done()
        await MagstripeSim(peer).present("visa")
        card = await asyncio.wait_for(waiting, 3)
        assert isinstance(card, CardRead)
        assert card.brand == "Visa"
        assert rec.states == [ReaderState.READY, ReaderState.OFFLINE, ReaderState.READY]
        assert all(name == "swipe" for name, _, _ in rec.events)
        assert "hung up" in rec.events[1][2] or "offline" in rec.events[1][2].lower()
    finally:
        await managed.close()
    assert state(managed) is ReaderState.OFFLINE
    assert rec.events[-1][2] == "closed"


async def test_idle_unplug_is_noticed_by_the_health_probe(peer: PtyPeer) -> None:
    rec = Recorder()
    managed = ManagedReader(MagstripeReader("swipe", peer.link), rec, **FAST)  # type: ignore[arg-type]
    await managed.start()
    try:
        await asyncio.wait_for(managed.wait_ready(), 3)
        peer.unplug()
        await async_until(lambda: state(managed) is ReaderState.OFFLINE)
        peer.replug()
        await async_until(lambda: state(managed) is ReaderState.READY)
        # still works after the replug
        await managed.arm(CTX)
        await MagstripeSim(peer).present("mastercard")
        card = await asyncio.wait_for(managed.next_presentation(), 3)
        assert isinstance(card, CardRead)
        assert card.brand == "MasterCard"
        await managed.disarm()
    finally:
        await managed.close()


async def test_reader_missing_at_start_comes_up_later(tmp_path: Path) -> None:
    rec = Recorder()
    link = str(tmp_path / "later")
    managed = ManagedReader(MagstripeReader("swipe", link), rec, **FAST)  # type: ignore[arg-type]
    await managed.start()
    try:
        await asyncio.sleep(0.15)
        assert state(managed) is ReaderState.OFFLINE
        assert "cannot open" in managed.reason
        async with PtyPeer(link) as peer:
            await asyncio.wait_for(managed.wait_ready(), 3)
            assert rec.states == [ReaderState.READY]
            await managed.arm(CTX)
            await MagstripeSim(peer).present("bad")
            with pytest.raises(CardDataError):
                await asyncio.wait_for(managed.next_presentation(), 3)
            assert state(managed) is ReaderState.READY  # a bad swipe is not a reader fault
    finally:
        await managed.close()


async def test_scanner_is_rearmed_after_replug(peer: PtyPeer) -> None:
    sim = ScannerSim(peer, model="honeywell")
    sim_task = asyncio.create_task(sim.run())
    rec = Recorder()
    reader = ScannerReader("qr", peer.link, {"model": "honeywell"})
    managed = ManagedReader(reader, rec, **FAST)  # type: ignore[arg-type]
    await managed.start()
    try:
        await asyncio.wait_for(managed.wait_ready(), 3)
        await managed.arm(CTX)
        await async_until(lambda: sim.enabled)
        waiting = asyncio.create_task(managed.next_presentation())
        peer.unplug()
        sim.enabled = False  # a power cycle forgets the trigger
        await async_until(lambda: state(managed) is ReaderState.OFFLINE)
        peer.replug()
        await async_until(lambda: state(managed) is ReaderState.READY)
        await async_until(lambda: sim.enabled)  # re-armed: trigger sent on the new port
        assert sim.commands_seen.count("trigger") >= 2
        await sim.present("wechat")
        code = await asyncio.wait_for(waiting, 3)
        assert isinstance(code, WalletCode)
        await managed.disarm()
        await async_until(lambda: sim.commands_seen[-1] == "untrigger")
    finally:
        await managed.close()
        sim_task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await sim_task


async def test_fault_state_when_device_does_not_answer(peer: PtyPeer) -> None:
    rec = Recorder()
    reader = ScannerReader("qr", peer.link, {"model": "honeywell"})  # nobody answers the probe
    managed = ManagedReader(reader, rec, **FAST)  # type: ignore[arg-type]
    await managed.start()
    try:
        await async_until(lambda: state(managed) is ReaderState.FAULT)
        assert "no answer" in managed.reason
        assert rec.states == [ReaderState.FAULT]
        await managed.disarm()  # never raises while not ready
        await managed.arm(CTX)  # recorded; applied once the reader is back
        assert managed.armed
    finally:
        await managed.close()


async def test_listener_errors_are_logged_not_raised(
    peer: PtyPeer, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(name: str, state: ReaderState, reason: str) -> None:
        raise RuntimeError("listener bug")

    managed = ManagedReader(MagstripeReader("swipe", peer.link), broken, **FAST)  # type: ignore[arg-type]
    with caplog.at_level(logging.ERROR):
        await managed.start()
        try:
            await asyncio.wait_for(managed.wait_ready(), 3)
            assert state(managed) is ReaderState.READY
        finally:
            await managed.close()
    assert "state listener failed" in caplog.text


async def test_next_presentation_needs_arm(peer: PtyPeer) -> None:
    managed = ManagedReader(MagstripeReader("swipe", peer.link), **FAST)  # type: ignore[arg-type]
    with pytest.raises(RuntimeError, match="not armed"):
        await managed.next_presentation()
    await managed.close()


class BuggyOnce(MagstripeReader):
    """A driver whose first open fails with a bug, not a ReaderError."""

    calls = 0

    async def open(self) -> ReaderInfo:
        self.calls += 1
        if self.calls == 1:
            raise KeyError("driver bug")
        return await super().open()


async def test_driver_bug_in_open_is_a_fault_then_recovers(
    peer: PtyPeer, caplog: pytest.LogCaptureFixture
) -> None:
    rec = Recorder()
    managed = ManagedReader(BuggyOnce("swipe", peer.link), rec, **FAST)  # type: ignore[arg-type]
    await managed.start()
    try:
        await asyncio.wait_for(managed.wait_ready(), 3)
        assert rec.states == [ReaderState.FAULT, ReaderState.READY]
        assert rec.events[0][2] == "swipe: driver error (KeyError)"
        assert "unexpected KeyError" in caplog.text
    finally:
        await managed.close()
