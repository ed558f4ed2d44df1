"""Scanner line and wallet tables, and the scanner driver against the simulated scanner."""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path

import pytest

from drivers.base import (
    ArmContext,
    CardDataError,
    CardNotSupported,
    ReaderFault,
    ReaderOffline,
    ReaderTimeout,
    WalletCode,
    WalletKind,
)
from drivers.framing import LineFramer
from drivers.scanner import (
    MenuStatus,
    classify_wallet,
    decode_scan,
    menu_query,
    parse_menu_reply,
    strip_aim,
)
from drivers.scanner_reader import ScannerReader
from drivers.sim.pty import PtyPeer
from drivers.sim.scanner import SIM_CODES, ScannerSim
from tests.waiting import async_until

CTX = ArmContext(Decimal("3.00"), 634, 2)
WECHAT = SIM_CODES["wechat"]


# -- tables -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "wallet"),
    [
        ("104567890123456789", WalletKind.WECHAT_PAY),
        ("134567890123456789", WalletKind.WECHAT_PAY),
        ("154567890123456789", WalletKind.WECHAT_PAY),  # Hong Kong
        ("2500000000000000", WalletKind.ALIPAY),  # 16 digits, lowest prefix
        ("286512345678901234", WalletKind.ALIPAY),  # 18 digits starting 28
        ("300000000000000000000000", WalletKind.ALIPAY),  # 24 digits, prefix 30
        ("629000123456789012345678", WalletKind.ALIPAY_PLUS),  # 24: CII+BTI+UIN
        ("10456789012345678", WalletKind.ALIPAY_PLUS),  # 17 digits: not WeChat (18)
        ("1045678901234567890", WalletKind.ALIPAY_PLUS),  # 19 digits: not WeChat
        ("164567890123456789", WalletKind.ALIPAY_PLUS),  # 18 digits, prefix 16
        ("3100000000000000000", WalletKind.ALIPAY_PLUS),  # prefix 31: not Alipay
        ("2800000000000000000000000", WalletKind.ALIPAY_PLUS),  # 25 digits: too long for Alipay
        ("9" * 32, WalletKind.ALIPAY_PLUS),
    ],
)
def test_wallet_rules_and_order(code: str, wallet: WalletKind) -> None:
    assert classify_wallet(code) is wallet


@pytest.mark.parametrize(
    "code",
    [
        "",
        "5901234123457",  # EAN-13 product code
        "1045678901234567",  # 16 digits, prefix 10: no rule
        "9" * 33,  # too long for Alipay+
        "2499999999999999",  # 16 digits, prefix 24
        "13456789012345678X",
        "https://example.com/menu",
        "١٣٤٥٦٧٨٩٠١٢٣٤٥٦٧٨٩",  # Arabic-Indic digits are not ASCII digits
    ],
)
def test_wallet_rejects(code: str) -> None:
    with pytest.raises(CardNotSupported, match="not a wallet payment code") as info:
        classify_wallet(code)
    assert code not in str(info.value) or not code


@pytest.mark.parametrize(
    ("wire", "options"),
    [
        (WECHAT.encode() + b"\r", {}),
        (WECHAT.encode() + b"\n", {}),
        (WECHAT.encode() + b"\r\n", {}),
        (b"\x02" + WECHAT.encode() + b"\x03", {}),
        (b"]Q1" + WECHAT.encode() + b"\r", {"aim": True}),
        (b"]C0" + WECHAT.encode() + b"\r\n", {"aim": True}),
        (b"PFX" + WECHAT.encode() + b"SFX\r", {"prefix": b"PFX", "suffix": b"SFX"}),
        (b"\xff\x00" + WECHAT.encode() + b" \r", {}),  # edge noise and padding
        (b"#" + WECHAT.encode() + b"\t\r\n", {"prefix": b"#"}),
    ],
    ids=["cr", "lf", "crlf", "stx-etx", "aim-qr", "aim-c128", "prefix-suffix", "noise", "tab"],
)
def test_scanner_lines(wire: bytes, options: dict[str, object]) -> None:
    aim = bool(options.pop("aim", False))
    framer = LineFramer(**options)  # type: ignore[arg-type]
    (line,) = framer.feed(wire)
    code = decode_scan(line, aim=aim)
    assert code.code == WECHAT
    assert code.wallet is WalletKind.WECHAT_PAY
    assert WECHAT not in repr(code)
    assert code.masked == "1345**********6789"


def test_aim_required_when_configured() -> None:
    with pytest.raises(CardDataError, match="AIM"):
        decode_scan(WECHAT.encode(), aim=True)
    assert strip_aim("]Q1abc") == ("]Q1", "abc")
    with pytest.raises(CardDataError):
        strip_aim("]1Qabc")
    # without aim=1 the identifier is not stripped, so the line is no wallet code
    with pytest.raises(CardNotSupported):
        decode_scan(b"]Q1" + WECHAT.encode())


def test_non_ascii_line_is_not_a_wallet_code() -> None:
    with pytest.raises(CardNotSupported):
        decode_scan("1345\u00e978".encode())
    with pytest.raises(CardNotSupported):
        decode_scan(b"1345\x0067890123456789")


def test_menu_reply_parser() -> None:
    assert menu_query(b"TRGMOD") == b"\x16M\rTRGMOD?."
    assert parse_menu_reply(b"TRGMOD0", b"TRGMOD") is None
    assert parse_menu_reply(b"TRGMOD0\x06", b"TRGMOD") is None
    reply = parse_menu_reply(b"xx trgmod0\x06.rest", b"TRGMOD")
    assert reply is not None
    assert reply.status is MenuStatus.ACK
    assert reply.value == "0"
    assert reply.consumed == len(b"xx trgmod0\x06.")
    enq = parse_menu_reply(b"TRGMOD\x05.", b"TRGMOD")
    assert enq is not None
    assert enq.status is MenuStatus.ENQ
    runaway = parse_menu_reply(b"TRGMOD" + b"9" * 100, b"TRGMOD")
    assert runaway is not None
    assert runaway.status is MenuStatus.NAK


# -- the driver over a real pty -----------------------------------------------------


@pytest.fixture
async def peer(tmp_path: Path) -> AsyncIterator[PtyPeer]:
    async with PtyPeer(str(tmp_path / "ttySCAN")) as p:
        yield p


async def _run_sim(sim: ScannerSim) -> asyncio.Task[None]:
    return asyncio.create_task(sim.run())


async def _stop(task: asyncio.Task[None]) -> None:
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


@pytest.mark.parametrize("name", ["wechat", "alipay", "alipayplus"])
async def test_generic_scanner_reads_each_wallet(peer: PtyPeer, name: str) -> None:
    sim = ScannerSim(peer, model="generic")
    task = await _run_sim(sim)
    reader = ScannerReader("qr", peer.link, {"model": "generic"})
    try:
        info = await reader.open()
        assert info.details["model"] == "generic"
        await sim.present(name)  # disarmed: discarded
        await async_until(lambda: reader.discarded == 1)
        await reader.arm(CTX)
        await sim.present(name)
        code = await asyncio.wait_for(reader.next_presentation(), 2)
        assert isinstance(code, WalletCode)
        assert code.code == SIM_CODES[name]
        assert code.wallet.value == {"wechat": "WeChatPay", "alipay": "Alipay"}.get(
            name, "AlipayPlus"
        )
    finally:
        await reader.close()
        await _stop(task)


async def test_honeywell_trigger_commands_and_probe(peer: PtyPeer) -> None:
    sim = ScannerSim(peer, model="honeywell", aim=True, crlf=True)
    task = await _run_sim(sim)
    reader = ScannerReader("qr", peer.link, {"model": "honeywell", "aim": "1"})
    try:
        info = await reader.open()
        assert info.details["trgmod"] == "0"
        assert sim.commands_seen == ["menu TRGMOD?"]
        assert (await sim.present()).startswith("scanner disabled")  # not triggered
        await reader.arm(CTX)
        await async_until(lambda: sim.enabled)
        assert sim.commands_seen[-1] == "trigger"
        await sim.present("junk")
        with pytest.raises(CardNotSupported):
            await asyncio.wait_for(reader.next_presentation(), 2)
        # the driver re-triggers after each line (one decode per trigger)
        await async_until(lambda: sim.enabled)
        await sim.present("alipay")
        code = await asyncio.wait_for(reader.next_presentation(), 2)
        assert isinstance(code, WalletCode)
        assert code.wallet is WalletKind.ALIPAY
        await reader.disarm()
        await async_until(lambda: sim.commands_seen[-1] == "untrigger")
        assert not sim.enabled
    finally:
        await reader.close()
        await _stop(task)


async def test_honeywell_retriggered_after_a_scan_lost_to_noise(peer: PtyPeer) -> None:
    """Noise just before arming swallows the first scan (it is taken for a
    message begun before the arming); the trigger that scan used up is renewed
    at once, not only at ``retrigger`` (found by benchmarks/soak.py)."""
    sim = ScannerSim(peer, model="honeywell")
    task = await _run_sim(sim)
    reader = ScannerReader("qr", peer.link, {"model": "honeywell"})  # retrigger 20 s
    try:
        await reader.open()
        await peer.write(b"\x00\xff\x80\xfe")  # line noise, no terminator
        await async_until(lambda: reader.framer.pending > 0)
        await reader.arm(CTX)
        await async_until(lambda: sim.enabled)
        assert (await sim.present("wechat")).startswith("scanned")  # dropped with the noise
        await async_until(lambda: reader.framer.skipped == 1)
        await async_until(lambda: sim.enabled)
        await sim.present("alipay")
        code = await asyncio.wait_for(reader.next_presentation(), 2)
        assert isinstance(code, WalletCode)
        assert code.wallet is WalletKind.ALIPAY
    finally:
        await reader.close()
        await _stop(task)


async def test_honeywell_retriggers_periodically(peer: PtyPeer) -> None:
    sim = ScannerSim(peer, model="honeywell")
    task = await _run_sim(sim)
    reader = ScannerReader("qr", peer.link, {"model": "honeywell", "retrigger": "0.05"})
    try:
        await reader.open()
        await reader.arm(CTX)
        await async_until(lambda: sim.commands_seen.count("trigger") >= 3)
        await reader.disarm()
    finally:
        await reader.close()
        await _stop(task)


async def test_cipherlab_enable_disable_and_auto(peer: PtyPeer) -> None:
    sim = ScannerSim(peer, model="cipherlab", auto=True, code="alipayplus")
    task = await _run_sim(sim)
    reader = ScannerReader("qr", peer.link, {"model": "cipherlab"})
    try:
        await reader.open()
        assert not sim.enabled
        for _ in range(2):  # once per arming
            await reader.arm(CTX)
            code = await asyncio.wait_for(reader.next_presentation(), 2)
            assert isinstance(code, WalletCode)
            assert code.wallet is WalletKind.ALIPAY_PLUS
            await reader.disarm()
            await async_until(lambda: not sim.enabled)
        assert sim.commands_seen == ["enable", "disable", "enable", "disable"]
        assert sim.presented == 2
    finally:
        await reader.close()
        await _stop(task)


async def test_honeywell_probe_without_answer_times_out(peer: PtyPeer) -> None:
    sim = ScannerSim(peer, model="generic")  # ignores menu commands
    task = await _run_sim(sim)
    reader = ScannerReader("qr", peer.link, {"model": "honeywell"})
    try:
        with pytest.raises(ReaderTimeout):
            await reader.open()
    finally:
        await reader.close()
        await _stop(task)


async def test_honeywell_probe_enq_is_fault(peer: PtyPeer) -> None:
    async def answer_enq() -> None:
        await peer.read(timeout=2)
        await peer.write(b"TRGMOD\x05.")

    task = asyncio.create_task(answer_enq())
    reader = ScannerReader("qr", peer.link, {"model": "honeywell"})
    try:
        with pytest.raises(ReaderFault, match="enq"):
            await reader.open()
    finally:
        await reader.close()
        await task


async def test_scanner_unplug_is_offline(peer: PtyPeer) -> None:
    reader = ScannerReader("qr", peer.link)
    await reader.open()
    try:
        await reader.arm(CTX)
        waiting = asyncio.create_task(reader.next_presentation())
        await asyncio.sleep(0.02)
        peer.unplug()
        with pytest.raises(ReaderOffline):
            await asyncio.wait_for(waiting, 2)
    finally:
        await reader.close()


def test_bad_options_are_value_errors() -> None:
    with pytest.raises(ValueError, match="model"):
        ScannerReader("qr", "/dev/null", {"model": "zebra"})
    with pytest.raises(ValueError, match="aim"):
        ScannerReader("qr", "/dev/null", {"aim": "yes"})
    with pytest.raises(ValueError, match="bad option"):
        ScannerReader("qr", "/dev/null", {"baud": "fast"})


async def test_scanner_logs_only_masked_codes(
    peer: PtyPeer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    sim = ScannerSim(peer)
    reader = ScannerReader("qr", peer.link)
    await reader.open()
    try:
        await reader.arm(CTX)
        await sim.present("wechat")
        await asyncio.wait_for(reader.next_presentation(), 2)
        await sim.present("junk")
        with pytest.raises(CardNotSupported) as info:
            await asyncio.wait_for(reader.next_presentation(), 2)
        assert SIM_CODES["junk"] not in str(info.value)
    finally:
        await reader.close()
    assert "1345**********6789" in caplog.text
    assert WECHAT not in caplog.text
    assert SIM_CODES["junk"] not in caplog.text


def test_codecs_are_sans_io() -> None:
    """The track, scanner-line and framing codecs import no asyncio, serial or logging."""
    code = (
        "import sys, drivers.magstripe, drivers.scanner, drivers.framing, drivers.brands; "
        "print(','.join(m for m in ('asyncio', 'serial', 'logging') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=30
    )
    assert out.stdout.strip() == ""
