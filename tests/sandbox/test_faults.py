"""The fault switchboard's pure rules, its table and the ``fault`` command
(``sandbox.faults``, ``sadad-sandbox fault``); the faults themselves are
shown end to end in tests/integration/test_failure_scenarios.py."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path

import pytest

from sandbox import cli
from sandbox.faults import Fault, FaultTable, order_fault, parse
from sandbox.keys import Layout
from sandbox.store import Store


@pytest.mark.parametrize(
    ("amount", "fault"),
    [
        ("10.94", Fault.LATE_CREATE),
        ("1.95", Fault.CREATE_500),
        ("0.96", Fault.NOTIFY_TWICE),
        ("12.97", Fault.ACK_LOST),
        ("12.93", None),  # the acquirer's, not ours
        ("12.50", None),
        ("1.947", None),  # more precise than hundredths: no rule
    ],
)
def test_order_fault_by_amount(amount: str, fault: Fault | None) -> None:
    assert order_fault(Decimal(amount)) is fault


def test_parse_names_the_unknown_fault() -> None:
    assert parse(["offline", "ack-lost"]) == [Fault.OFFLINE, Fault.ACK_LOST]
    with pytest.raises(ValueError, match=r"unknown fault 'slow' \(known: offline, busy"):
        parse(["busy", "slow"])


def test_table_set_clear_and_offline_ending(tmp_path: Path) -> None:
    table = FaultTable(tmp_path / "sandbox.db")
    try:
        table.set("T1", [Fault.OFFLINE, Fault.BUSY], 2.0, now_ms=1_000)
        table.set("T2", [Fault.ACK_LOST], None, now_ms=1_000)
        assert set(table.of("T1", 2_999)) == {Fault.OFFLINE, Fault.BUSY}
        assert set(table.of("T1", 3_000)) == {Fault.BUSY}  # offline for 2 s only
        assert table.of("T1", 3_000)[Fault.BUSY].seconds == 2.0
        table.set("T1", [Fault.OFFLINE], None, now_ms=5_000)  # again: until cleared
        assert set(table.of("T1", 10**12)) == {Fault.OFFLINE, Fault.BUSY}
        table.clear("T1", [Fault.BUSY])
        assert set(table.of("T1", 6_000)) == {Fault.OFFLINE}
        table.clear("T1")
        assert table.of("T1", 6_000) == {}
        assert set(table.of("T2", 6_000)) == {Fault.ACK_LOST}
    finally:
        table.close()


def test_fault_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    layout = Layout.of(tmp_path / "data")
    with Store(layout.db_path) as store:
        store.add_terminal("T1", "M0001", "unused", "Shop")

    def run(*args: str) -> tuple[int, dict[str, object] | str]:
        code = cli.main(["fault", "--data", str(layout.root), *args])
        out, err = capsys.readouterr()
        return code, json.loads(out) if code == 0 else err

    assert run("--terminal", "T1", "offline", "--seconds", "30") == (
        0,
        {"terminal": "T1", "faults": {"offline": 30.0}},
    )
    assert run("--terminal", "T1", "busy")[1] == {
        "terminal": "T1",
        "faults": {"offline": 30.0, "busy": None},
    }
    assert run("--terminal", "T1", "--clear", "offline")[1] == {
        "terminal": "T1",
        "faults": {"busy": None},
    }
    assert run("--terminal", "T1")[1] == {"terminal": "T1", "faults": {"busy": None}}
    assert run("--terminal", "T1", "--clear")[1] == {"terminal": "T1", "faults": {}}
    code, err = run("--terminal", "T1", "late")
    assert code == 2
    assert "unknown fault 'late'" in str(err)
    code, err = run("--terminal", "NOPE", "busy")
    assert code == 2
    assert "unknown terminal NOPE" in str(err)
