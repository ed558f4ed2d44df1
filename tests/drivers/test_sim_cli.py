"""``sadad-reader-sim`` run as a real process, read by the real drivers."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from decimal import Decimal
from pathlib import Path

import pytest

from drivers.base import ArmContext, CardRead, ReaderOffline, WalletCode, WalletKind
from drivers.magstripe_reader import MagstripeReader
from drivers.scanner_reader import ScannerReader
from tests.waiting import async_until

SIM = str(Path(sys.executable).with_name("sadad-reader-sim"))
CTX = ArmContext(Decimal("1.00"), 634, 2)


class SimProcess:
    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc

    async def line(self, timeout: float = 5.0) -> str:
        assert self.proc.stdout is not None
        raw = await asyncio.wait_for(self.proc.stdout.readline(), timeout)
        return raw.decode().strip()

    async def send(self, command: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(command.encode() + b"\n")
        await self.proc.stdin.drain()


@asynccontextmanager
async def run_sim(*args: str, stdin: bool = True) -> AsyncIterator[SimProcess]:
    proc = await asyncio.create_subprocess_exec(
        SIM,
        *args,
        stdin=asyncio.subprocess.PIPE if stdin else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    sim = SimProcess(proc)
    try:
        yield sim
    finally:
        if proc.returncode is None:
            proc.terminate()
        await asyncio.wait_for(proc.communicate(), 10)


def _exists(path: str) -> bool:
    return os.path.lexists(path)


async def test_scanner_auto_sim_read_by_driver(tmp_path: Path) -> None:
    link = str(tmp_path / "scan")
    async with run_sim("scanner", "--link", link, "--auto", "--model", "honeywell", "--aim") as sim:
        assert await sim.line() == f"ready {link}"
        reader = ScannerReader("qr", link, {"model": "honeywell", "aim": "1"})
        info = await reader.open()
        try:
            assert info.details["trgmod"] == "0"
            for _ in range(2):  # once per arming
                await reader.arm(CTX)
                code = await asyncio.wait_for(reader.next_presentation(), 5)
                assert isinstance(code, WalletCode)
                assert code.wallet is WalletKind.WECHAT_PAY
                await reader.disarm()
        finally:
            await reader.close()
        sim.proc.terminate()
        assert await sim.line() == "bye"
        assert await asyncio.wait_for(sim.proc.wait(), 5) == 0
    assert not _exists(link)


async def test_generic_scanner_sim_with_wire_effects(tmp_path: Path) -> None:
    link = str(tmp_path / "scan2")
    args = ["scanner", "--link", link, "--auto", "--interval", "0.2", "--card", "alipay"]
    args += ["--garbage", "--chunk", "3", "--baud", "38400", "--pace", "--crlf"]
    async with run_sim(*args, stdin=False) as sim:
        assert await sim.line() == f"ready {link}"
        reader = ScannerReader("qr", link)
        await reader.open()
        try:
            await reader.arm(CTX)
            code = await asyncio.wait_for(reader.next_presentation(), 5)
            assert isinstance(code, WalletCode)
            assert code.wallet is WalletKind.ALIPAY
        finally:
            await reader.close()


async def test_magstripe_sim_commands_unplug_replug_quit(tmp_path: Path) -> None:
    link = str(tmp_path / "mag")
    async with run_sim("magstripe", "--link", link, "--format", "magtek", "--lrc") as sim:
        assert await sim.line() == f"ready {link}"
        reader = MagstripeReader("swipe", link)
        await reader.open()
        try:
            await reader.arm(CTX)
            await sim.send("present mastercard")
            assert await sim.line() == "swiped mastercard"
            card = await asyncio.wait_for(reader.next_presentation(), 5)
            assert isinstance(card, CardRead)
            assert card.brand == "MasterCard"
            await sim.send("garbage")  # line noise before the next swipe
            assert await sim.line() == "garbage 4 bytes"
            await sim.send("")  # Enter: the default card
            assert await sim.line() == "swiped visa"
            card = await asyncio.wait_for(reader.next_presentation(), 5)
            assert isinstance(card, CardRead)
            assert card.brand == "Visa"

            await sim.send("unplug")
            assert await sim.line() == "unplugged"
            with pytest.raises(ReaderOffline):
                await asyncio.wait_for(reader.next_presentation(), 5)
            assert not _exists(link)
        finally:
            await reader.close()

        await sim.send("replug")
        assert await sim.line() == f"replugged {link}"
        reader = MagstripeReader("swipe", link)
        await reader.open()
        try:
            await reader.arm(CTX)
            await sim.send("present chip")
            assert await sim.line() == "swiped chip"
            card = await asyncio.wait_for(reader.next_presentation(), 5)
            assert isinstance(card, CardRead)
            assert card.chip_card
        finally:
            await reader.close()
        await sim.send("present nosuchcard")
        assert (await sim.line()).startswith("error:")
        await sim.send("help")
        assert (await sim.line()).startswith("commands:")
        await sim.send("quit")
        assert await sim.line() == "bye"
        assert await asyncio.wait_for(sim.proc.wait(), 5) == 0
    assert not _exists(link)


async def test_magstripe_auto_swipes_periodically(tmp_path: Path) -> None:
    link = str(tmp_path / "mag2")
    async with run_sim("magstripe", "--link", link, "--auto", "--interval", "0.2") as sim:
        assert await sim.line() == f"ready {link}"
        reader = MagstripeReader("swipe", link)
        await reader.open()
        try:
            await async_until(lambda: reader.discarded >= 1)  # swipes while disarmed are dropped
            await reader.arm(CTX)
            card = await asyncio.wait_for(reader.next_presentation(), 5)
            assert isinstance(card, CardRead)
        finally:
            await reader.close()


async def test_unknown_card_is_a_usage_error(tmp_path: Path) -> None:
    async with run_sim("scanner", "--link", str(tmp_path / "x"), "--card", "nope") as sim:
        assert await asyncio.wait_for(sim.proc.wait(), 5) == 2
        assert sim.proc.stderr is not None
        assert b"known codes" in await sim.proc.stderr.read()


async def test_link_over_a_regular_file_is_refused(tmp_path: Path) -> None:
    target = tmp_path / "file"
    target.write_text("keep")
    async with run_sim("magstripe", "--link", str(target)) as sim:
        assert await asyncio.wait_for(sim.proc.wait(), 5) == 1
    assert target.read_text() == "keep"


async def test_nfc_branch_serves_a_pn532(tmp_path: Path) -> None:
    pytest.importorskip("drivers.sim.pn532")
    nfc_reader = pytest.importorskip("drivers.nfc_reader")
    link = str(tmp_path / "nfc")
    async with run_sim("nfc", "--link", link) as sim:
        assert await sim.line() == f"ready {link}"
        reader = nfc_reader.Pn532Reader("tap", link)
        info = await asyncio.wait_for(reader.open(), 5)
        try:
            assert info.kind == "pn532"
        finally:
            await reader.close()
        await sim.send("quit")
        assert await sim.line() == "bye"
