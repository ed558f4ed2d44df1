"""``EscPosPrinter`` against the simulated printer on real ptys, in process and as the CLI."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from drivers.base import ReaderOffline
from drivers.escpos import (
    Align,
    Block,
    EscPosPrinter,
    Line,
    PrinterOffline,
    QrCode,
    encode,
    parse_printer_spec,
)
from drivers.escpos.status import request
from drivers.sim.cli import GARBAGE
from drivers.sim.escpos_decoder import EscPosDecoder, Receipt, StatusRequest
from drivers.sim.printer import SEPARATOR, PrinterSim
from drivers.sim.pty import PtyPeer
from tests.waiting import async_until

RECEIPT: list[Block] = [
    Line("متجر الدوحة", bold=True, double=True, align=Align.CENTER),
    Line("Card  ****1234"),
    Line("Total      12.50 QAR", bold=True),
    QrCode("https://example.com/r/42"),
]
RECEIPT_TEXT = "متجر الدوحة\nCard  ****1234\nTotal      12.50 QAR\n[QR] https://example.com/r/42"
PRINTED = f"{RECEIPT_TEXT}\n{SEPARATOR}\n"
WAIT = 10.0  # seconds a status reply may take on a busy machine (the default is 1 s)


# -- the simulator's decoder ----------------------------------------------------------


def test_decoder_reads_the_receipt_back() -> None:
    assert EscPosDecoder().feed(encode(RECEIPT)) == [Receipt(RECEIPT_TEXT)]


def test_decoder_takes_any_split() -> None:
    data = request(1) + encode(RECEIPT) + request(4)
    whole = EscPosDecoder().feed(data)
    assert whole == [StatusRequest(1), Receipt(RECEIPT_TEXT), StatusRequest(4)]
    for cut_at in range(len(data)):
        decoder = EscPosDecoder()
        assert decoder.feed(data[:cut_at]) + decoder.feed(data[cut_at:]) == whole
    decoder = EscPosDecoder()
    assert [e for b in data for e in decoder.feed(bytes([b]))] == whole


OTHER_COMMANDS = (
    "1b 21 08 "  # ESC ! n: print modes
    "1b 2d 01 "  # ESC - 1: underline
    "1b 44 08 10 00 "  # ESC D ... NUL: tab positions
    "1b 2a 00 03 00 0a 1b 1d "  # ESC * 0, 3 columns of image data (LF, ESC, GS in it)
    "1d 76 30 00 02 00 02 00 0a 0a 1d 56 "  # GS v 0: 2x2 raster bytes
    "1d 28 4c 04 00 30 45 20 20 "  # GS ( L: graphics, 4 bytes
    "1d 6b 04 31 32 33 00 "  # GS k 4 ... NUL: a CODE39 barcode
    "1d 6b 49 03 7b 42 31 "  # GS k 73 n ...: a CODE128 barcode
    "1d 42 01 "  # GS B 1: reverse printing
    "10 05 01 "  # DLE ENQ 1
    "10 14 01 00 01 "  # DLE DC4 1 m t: drawer pulse
    "0d 0c 18 "  # CR, FF, CAN: nothing printed
)


def test_decoder_skips_the_commands_it_does_not_print() -> None:
    data = (
        bytes.fromhex("1b 40")
        + b"A\tB\n"
        + bytes.fromhex(OTHER_COMMANDS)
        + b"C\n"
        + bytes.fromhex("1b 7e")  # unknown ESC ~: taken as two bytes
        + b"D\n"
        + bytes.fromhex("1d 56 00")  # GS V 0: full cut
    )
    whole = EscPosDecoder().feed(data)
    assert whole == [Receipt("A B\nC\nD")]
    decoder = EscPosDecoder()
    assert [e for b in data for e in decoder.feed(bytes([b]))] == whole


def test_decoder_skips_big_images_in_pieces() -> None:
    image = bytes.fromhex("1d 76 30 00 e8 03 01 00") + b"\n" * 1000  # 1000 x 1 raster
    data = encode([Line("before")], cut=False) + image + encode([Line("after")])
    decoder = EscPosDecoder()
    events = [e for i in range(0, len(data), 7) for e in decoder.feed(data[i : i + 7])]
    assert events == [Receipt("before\nafter")]


def test_decoder_discards_but_still_answers_status() -> None:
    decoder = EscPosDecoder()
    decoder.discard = True
    receipt = encode(RECEIPT)
    assert decoder.feed(receipt + request(2)) == [StatusRequest(2)]
    assert (decoder.bytes_discarded, decoder.slips_dropped) == (len(receipt), 1)
    decoder.discard = False
    assert decoder.feed(receipt) == [Receipt(RECEIPT_TEXT)]


def test_decoder_cut_of_an_empty_slip_is_no_receipt() -> None:
    assert EscPosDecoder().feed(encode([])) == []


class Rig:
    def __init__(self, peer: PtyPeer, sim: PrinterSim, printer: EscPosPrinter) -> None:
        self.peer, self.sim, self.printer = peer, sim, printer

    def printed(self) -> str:
        return self.sim.out_path.read_text("utf-8") if self.sim.out_path.exists() else ""


@asynccontextmanager
async def rig(tmp_path: Path, **peer_options: object) -> AsyncIterator[Rig]:
    async with PtyPeer(str(tmp_path / "lp0"), **peer_options) as peer:  # type: ignore[arg-type]
        sim = PrinterSim(peer, tmp_path / "receipts.txt")
        device = asyncio.create_task(sim.run())
        printer = EscPosPrinter(parse_printer_spec(f"escpos:{peer.link};width=32"))
        try:
            await printer.open()
            yield Rig(peer, sim, printer)
        finally:
            await printer.close()
            device.cancel()
            with pytest.raises(asyncio.CancelledError):
                await device


async def test_prints_a_receipt(tmp_path: Path) -> None:
    async with rig(tmp_path) as r:
        assert r.printer.width == 32
        assert (await r.printer.status(WAIT)).state == "ready"
        await r.printer.print(encode(RECEIPT))
        await async_until(lambda: SEPARATOR in r.printed())
        assert r.printed() == PRINTED
        assert (await r.printer.status(WAIT)).state == "ready"
        await r.printer.print(encode(RECEIPT))
        await async_until(lambda: r.printed().count(SEPARATOR) == 2)
        assert r.printed() == PRINTED * 2
        assert r.sim.receipts_printed == 2


async def test_paper_out_drops_the_receipt_until_paper_is_back(tmp_path: Path) -> None:
    async with rig(tmp_path) as r:
        assert r.sim.apply("paper-out") == "paper-out: paper out"
        status = await r.printer.status(WAIT)
        assert (status.state, status.describe(), status.online) == ("paper_out", "paper out", False)

        data = encode(RECEIPT)
        await r.printer.print(data)
        # the status requests travel behind the receipt: once answered, it was handled
        assert (await r.printer.status(WAIT)).state == "paper_out"
        assert r.sim.bytes_dropped == len(data)
        assert r.sim.receipts_dropped == 1
        assert r.printed() == ""

        assert r.sim.apply("paper-in") == "paper-in: ready"
        assert (await r.printer.status(WAIT)).state == "ready"
        await r.printer.print(data)
        await async_until(lambda: SEPARATOR in r.printed())
        assert r.printed() == PRINTED


async def test_a_receipt_cut_in_two_by_paper_out_is_not_printed(tmp_path: Path) -> None:
    async with rig(tmp_path) as r:
        data = encode(RECEIPT)
        half = len(data) // 2
        await r.printer.print(data[:half])
        await r.printer.status(WAIT)  # the first half is handled
        r.sim.apply("paper-out")
        await r.printer.print(data[half:])
        await r.printer.status(WAIT)
        r.sim.apply("paper-in")
        await r.printer.print(data)
        await async_until(lambda: SEPARATOR in r.printed())
        assert r.printed() == PRINTED  # the reprint only
        assert r.sim.receipts_dropped == 1


async def test_cover_and_offline_states(tmp_path: Path) -> None:
    async with rig(tmp_path) as r:
        assert r.sim.apply("cover-open") == "cover-open: cover open"
        r.sim.apply("paper-out")
        assert (await r.printer.status(WAIT)).state == "cover_open"  # the cover comes first
        r.sim.apply("paper-in")
        assert r.sim.apply("cover-close") == "cover-close: ready"
        assert r.sim.apply("offline") == "offline: offline"
        assert (await r.printer.status(WAIT)).describe() == "offline"
        assert r.sim.apply("online") == "online: ready"
        assert (await r.printer.status(WAIT)).state == "ready"


async def test_unplug_is_printer_offline_and_replug_prints_again(tmp_path: Path) -> None:
    async with rig(tmp_path) as r:
        r.peer.unplug()
        with pytest.raises(PrinterOffline, match="lp0") as info:
            await r.printer.status(WAIT)
        assert isinstance(info.value.__cause__, ReaderOffline)
        with pytest.raises(PrinterOffline) as info:
            await r.printer.print(encode(RECEIPT))
        assert isinstance(info.value.__cause__, ReaderOffline)
        assert "12.50" not in str(info.value)  # the port, never the bytes
        await r.printer.close()
        with pytest.raises(PrinterOffline, match="cannot open"):
            await r.printer.open()  # the link is gone

        r.peer.replug()
        await r.printer.open()
        assert (await r.printer.status(WAIT)).state == "ready"
        await r.printer.print(encode(RECEIPT))
        await async_until(lambda: SEPARATOR in r.printed())
        assert r.printed() == PRINTED


async def test_no_answer_is_printer_offline(tmp_path: Path) -> None:
    async with PtyPeer(str(tmp_path / "mute")) as peer:  # a port with nothing behind it
        printer = EscPosPrinter(parse_printer_spec(f"escpos:{peer.link}"))
        await printer.open()
        try:
            with pytest.raises(PrinterOffline, match="no answer to status request 1"):
                await printer.status(timeout=0.2)
        finally:
            await printer.close()
            await printer.close()  # twice: still never raises


async def test_stray_bytes_and_stale_replies_are_skipped(tmp_path: Path) -> None:
    async with rig(tmp_path, garbage_bytes=GARBAGE) as r:  # noise before every reply
        await r.peer.write(bytes([0x1A]))  # a stale "offline" reply from an earlier request
        assert (await r.printer.status(WAIT)).state == "ready"
        r.sim.apply("paper-out")
        assert (await r.printer.status(WAIT)).state == "paper_out"


async def test_not_open_is_printer_offline(tmp_path: Path) -> None:
    printer = EscPosPrinter(parse_printer_spec(f"escpos:{tmp_path / 'none'}"))
    with pytest.raises(PrinterOffline, match="not open"):
        await printer.status(WAIT)
    with pytest.raises(PrinterOffline, match="not open"):
        await printer.print(b"\x1b@")
    with pytest.raises(PrinterOffline, match="cannot open"):
        await printer.open()


# -- the CLI, as a process -------------------------------------------------------------


class SimProcess:
    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc

    async def line(self, timeout: float = 10.0) -> str:
        assert self.proc.stdout is not None
        return (await asyncio.wait_for(self.proc.stdout.readline(), timeout)).decode().strip()

    async def ask(self, command: str) -> str:
        assert self.proc.stdin is not None
        self.proc.stdin.write(command.encode() + b"\n")
        await self.proc.stdin.drain()
        return await self.line()


@asynccontextmanager
async def printer_sim(*args: str) -> AsyncIterator[SimProcess]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "drivers.sim.cli",
        "printer",
        *args,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        yield SimProcess(proc)
    finally:
        if proc.returncode is None:
            proc.terminate()
        await asyncio.wait_for(proc.communicate(), 10)


async def test_cli_printer_paper_out_and_in(tmp_path: Path) -> None:
    link, out = str(tmp_path / "lp"), tmp_path / "paper.txt"
    async with printer_sim("--link", link, "--out", str(out)) as sim:
        assert await sim.line() == f"ready {link}"
        printer = EscPosPrinter(parse_printer_spec(f"escpos:{link}"))
        await printer.open()
        try:
            assert await sim.ask("paper-out") == "paper-out: paper out"
            assert (await printer.status(WAIT)).state == "paper_out"
            await printer.print(encode(RECEIPT))
            assert (await printer.status(WAIT)).state == "paper_out"  # the receipt was handled
            assert (await sim.ask("status")).startswith("printer paper out: 0 printed, 1 dropped")
            assert not out.exists()

            assert await sim.ask("paper-in") == "paper-in: ready"
            assert (await printer.status(WAIT)).state == "ready"
            await printer.print(encode(RECEIPT))
            await async_until(lambda: out.exists() and SEPARATOR in out.read_text("utf-8"))
            assert out.read_text("utf-8") == PRINTED

            assert await sim.ask("cover-open") == "cover-open: cover open"
            assert (await printer.status(WAIT)).state == "cover_open"
            assert await sim.ask("cover-close") == "cover-close: ready"
            assert await sim.ask("present") == "printers take no cards"
            assert (await sim.ask("help")).startswith("commands: paper-out")
        finally:
            await printer.close()
        assert await sim.ask("quit") == "bye"
        assert await asyncio.wait_for(sim.proc.wait(), 10) == 0
    assert not _exists(link)


def _exists(path: str) -> bool:
    return os.path.lexists(path)


async def test_cli_printer_needs_out(tmp_path: Path) -> None:
    async with printer_sim("--link", str(tmp_path / "lp")) as sim:
        assert await asyncio.wait_for(sim.proc.wait(), 10) == 2
        assert sim.proc.stderr is not None
        assert b"--out" in await sim.proc.stderr.read()
