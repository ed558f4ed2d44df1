"""A config error exits 78 (EX_CONFIG) from every command that reads a config."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from agent import cli as agent_cli
from agent.doctor import run_doctor
from cloud import cli as pos_cli
from cloud.config_schema import EX_CONFIG

BAD_AGENT = "[terminal]\nsn = 42\n"


@pytest.fixture
def bad(tmp_path: Path) -> Path:
    path = tmp_path / "agent.toml"
    path.write_text(BAD_AGENT)
    return path


@pytest.mark.parametrize(
    "argv",
    [
        ["run"],
        ["config", "check"],
        ["journal"],
        ["status"],
        ["pin", "set", "--stdin"],
    ],
)
def test_sadad_agent_exits_78(
    argv: list[str], bad: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert agent_cli.main([*argv, "--config", str(bad)]) == EX_CONFIG
    assert f"{bad}: terminal.sn: must be 1-32 letters" in capsys.readouterr().err


def test_sadad_agent_readers_and_doctor_exit_78(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    broken = tmp_path / "agent.toml"
    broken.write_text("[readers\n")
    assert agent_cli.main(["readers", "--config", str(broken)]) == EX_CONFIG
    assert agent_cli.main(["readers", "--config", str(tmp_path / "none.toml")]) == EX_CONFIG
    assert asyncio.run(run_doctor(str(broken))) == EX_CONFIG
    assert "FAIL  config" in capsys.readouterr().out


def test_sadad_pos_exits_78(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "pos.toml"
    assert pos_cli.main(["--config", str(missing), "query", "--order-no", "A-1"]) == EX_CONFIG
    assert f"{missing}: config file not found" in capsys.readouterr().err
