"""The technician's reader check, in process and as ``sadad-agent readers``."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from agent.cli import load_reader_specs, main
from drivers.check import Verdict, check_readers, format_checks
from drivers.sim.magstripe import MagstripeSim
from drivers.sim.pty import PtyPeer
from drivers.sim.scanner import SIM_CODES, ScannerSim

BIN = Path(sys.executable).parent
FULL_PANS = ("4761739001010119", "5413330089020011", "4761739001010010")


@pytest.fixture
async def scanner(tmp_path: Path) -> AsyncIterator[tuple[PtyPeer, ScannerSim]]:
    async with PtyPeer(str(tmp_path / "scan")) as peer:
        sim = ScannerSim(peer, model="cipherlab", auto=True, code="wechat")
        task = asyncio.create_task(sim.run())
        yield peer, sim
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_check_rows_for_each_verdict(
    tmp_path: Path, scanner: tuple[PtyPeer, ScannerSim]
) -> None:
    peer, _ = scanner
    async with PtyPeer(str(tmp_path / "mag")) as mag_peer:
        junk_peer = PtyPeer(str(tmp_path / "junk"))
        await junk_peer.start()
        junk = ScannerSim(junk_peer, model="cipherlab", auto=True, code="junk")
        junk_task = asyncio.create_task(junk.run())
        swiper = MagstripeSim(mag_peer, card="chip")

        async def swipe_soon() -> None:
            await asyncio.sleep(0.2)
            await swiper.present()

        swipe = asyncio.create_task(swipe_soon())
        try:
            rows = await check_readers(
                {
                    "qr": f"scanner:{peer.link};model=cipherlab",
                    "swipe": f"magstripe:{mag_peer.link}",
                    "gone": f"magstripe:{tmp_path / 'nothing'}",
                    "typo": "magstripe:ttyS0",
                    "junk": f"scanner:{junk_peer.link};model=cipherlab",
                    "mute": f"scanner:{tmp_path / 'mag'};model=honeywell",
                },
                present_timeout=1.0,
            )
        finally:
            await swipe
            junk_task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await junk_task
            await junk_peer.close()
    by_name = {row.name: row for row in rows}
    assert [row.name for row in rows] == ["qr", "swipe", "gone", "typo", "junk", "mute"]
    assert by_name["qr"].verdict is Verdict.OK
    assert by_name["qr"].presented == "WeChatPay 1345**********6789"
    assert by_name["swipe"].verdict is Verdict.OK
    assert by_name["swipe"].presented == "Visa 476173******0010 magstripe (chip card: tap instead)"
    assert by_name["gone"].verdict is Verdict.OFFLINE
    assert by_name["typo"].verdict is Verdict.BAD_SPEC
    assert by_name["junk"].verdict is Verdict.NO_PRESENTATION
    assert by_name["junk"].reason == "last read: not a wallet payment code"
    assert by_name["mute"].verdict in (Verdict.FAULT, Verdict.OFFLINE)  # busy or no answer
    table = format_checks(rows)
    for secret in (*FULL_PANS, SIM_CODES["wechat"], SIM_CODES["junk"]):
        assert secret not in table
    assert "476173******0010" in table


async def test_probe_only(scanner: tuple[PtyPeer, ScannerSim]) -> None:
    peer, sim = scanner
    rows = await check_readers({"qr": f"scanner:{peer.link};model=cipherlab"}, 0)
    assert rows[0].verdict is Verdict.OK
    assert rows[0].reason == "probe only"
    assert rows[0].model.startswith("CipherLab")
    assert sim.presented == 0


def test_config_loading(tmp_path: Path) -> None:
    config = tmp_path / "agent.toml"
    config.write_text('[readers]\nqr = "scanner:/dev/ttyACM0"\n[other]\nx = 1\n')
    assert load_reader_specs(config, required=True) == {"qr": "scanner:/dev/ttyACM0"}
    assert load_reader_specs(tmp_path / "missing.toml", required=False) == {}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[readers\n", "agent.toml"),
        ("readers = 3\n", "must be a table"),
        ("[readers]\nqr = 5\n", "readers.qr must be a string"),
    ],
)
def test_bad_config_exits_78(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, message: str
) -> None:
    config = tmp_path / "agent.toml"
    config.write_text(text)
    assert main(["readers", "--config", str(config)]) == 78
    assert message in capsys.readouterr().err


def test_cli_usage_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["readers", "--config", str(tmp_path / "none.toml")]) == 78  # EX_CONFIG
    assert "no such file" in capsys.readouterr().err
    # The missing config is found before the bad --reader.
    assert main(["readers", "--config", str(tmp_path / "none.toml"), "--reader", "x"]) == 78
    assert main(["readers", "--reader", "bad=magstripe:ttyS0", "--timeout", "0"]) == 1
    assert "bad spec" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main([])


async def test_sadad_agent_readers_subprocess(tmp_path: Path) -> None:
    """Two simulator processes, the agent CLI as a third; only masked data printed."""
    scan_link, mag_link = str(tmp_path / "scan"), str(tmp_path / "mag")
    sims = [
        await asyncio.create_subprocess_exec(
            str(BIN / "sadad-reader-sim"),
            *args,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
        )
        for args in (
            ["scanner", "--link", scan_link, "--auto", "--model", "honeywell", "--card", "alipay"],
            ["magstripe", "--link", mag_link, "--auto", "--interval", "0.3", "--card", "amex"],
        )
    ]
    try:
        for proc in sims:
            assert proc.stdout is not None
            assert (await asyncio.wait_for(proc.stdout.readline(), 5)).startswith(b"ready ")
        config = tmp_path / "agent.toml"
        config.write_text(
            f'[readers]\nqr = "scanner:{scan_link};model=honeywell"\n'
            f'swipe = "magstripe:{mag_link}"\n'
        )
        agent = await asyncio.create_subprocess_exec(
            str(BIN / "sadad-agent"),
            "readers",
            "--config",
            str(config),
            "--timeout",
            "5",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(agent.communicate(), 20)
    finally:
        for proc in sims:
            proc.terminate()
            await asyncio.wait_for(proc.communicate(), 5)
    text = out.decode() + err.decode()
    assert agent.returncode == 0, text
    assert "present a card or code to each reader (qr, swipe)" in text
    assert "Alipay 2865**********1234" in text
    assert "Amex 37424******0124 magstripe" in text  # 15 digits: 6 hidden, 5 + 4 shown
    assert "Honeywell-style scanner" in text
    for secret in ("374245000000124", SIM_CODES["alipay"], "2706101"):
        assert secret not in text
