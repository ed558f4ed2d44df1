"""cloud.order_store: the binding check and the stores that keep what each
order must look like (docs/protocol.md part B), in memory and in one SQLite
file shared by several processes."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import pytest

from cloud.config import load_config
from cloud.config_schema import ConfigError
from cloud.errors import NotOurOrder
from cloud.messages import TransStatus
from cloud.order_store import ExpectedOrder, MemoryOrderStore, SqliteOrderStore, check
from tests.cloud.pos_peer import APP_ID, MERCHANT, GatewayPeer, write_config

ROOT = Path(__file__).resolve().parents[2]
EXPECTED = ExpectedOrder("A-1", "TN-A-1", Decimal("12.50"), "QAR")


def test_check_takes_the_order_and_refuses_the_first_field_that_differs() -> None:
    peer = GatewayPeer()
    ours = peer.info("A-1", TransStatus.COMPLETED)
    check(ours, EXPECTED, merchant_no=MERCHANT, app_id=APP_ID)
    # The wire's 12.5 is the order's 12.50 (decimals, not text).
    check(
        peer.info("A-1", order_amount=Decimal("12.5")),
        EXPECTED,
        merchant_no=MERCHANT,
        app_id=APP_ID,
    )
    with pytest.raises(NotOurOrder) as refused:
        check(ours, EXPECTED, merchant_no="M0002", app_id="pos-b")
    assert str(refused.value) == (
        "result for order 'A-1': merchant_no is 'M0001', expected 'M0002' (field $.merchant_no)"
    )
    with pytest.raises(NotOurOrder, match=r"merchant_order_no is 'A-2', expected 'A-1'"):
        check(peer.info("A-2"), EXPECTED, merchant_no=MERCHANT, app_id=APP_ID)
    # Whatever the far side put there, the message stays one short printable line.
    with pytest.raises(NotOurOrder) as odd:
        check(
            peer.info("A-1", app_id="x\n\x1b[2J" + "y" * 100),
            EXPECTED,
            merchant_no=MERCHANT,
            app_id=APP_ID,
        )
    assert "\n" not in str(odd.value)
    assert "\x1b" not in str(odd.value)
    assert len(str(odd.value)) < 160


def test_memory_store_keeps_the_newest() -> None:
    store = MemoryOrderStore(limit=2)
    for n in range(3):
        store.remember(ExpectedOrder(f"A-{n}", f"TN{n}", Decimal(1), "QAR"))
    assert store.expected("A-0") is None
    assert store.expected("A-2") == ExpectedOrder("A-2", "TN2", Decimal(1), "QAR")


def test_sqlite_store_persists_and_uses_wal(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "orders.db"
    first = SqliteOrderStore(path)
    first.remember(EXPECTED)
    first.remember(EXPECTED)  # a repeated create records the same row
    first.close()
    again = SqliteOrderStore(path)
    assert again.expected("A-1") == EXPECTED
    assert again.expected("A-2") is None
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert db.execute("SELECT COUNT(*) FROM expected_orders").fetchone()[0] == 1


def test_sqlite_store_prunes_old_orders_by_itself(tmp_path: Path) -> None:
    path = tmp_path / "orders.db"
    store = SqliteOrderStore(path)
    store.remember(EXPECTED)
    with sqlite3.connect(path) as db:  # recorded 31 days ago
        db.execute("UPDATE expected_orders SET created_ms = created_ms - 31 * 86400000")
    store.remember(ExpectedOrder("A-2", "TN-A-2", Decimal("1.00"), "QAR"))
    assert store.expected("A-1") is not None  # pruned at most once an hour
    assert SqliteOrderStore(path, keep_days=None).expected("A-1") is not None
    reopened = SqliteOrderStore(path)  # default: 30 days, pruned on open
    assert reopened.expected("A-1") is None
    assert reopened.expected("A-2") is not None
    assert reopened.prune(older_than_days=-1) == 1
    assert reopened.expected("A-2") is None


_WRITER = """
import sys
from decimal import Decimal
from cloud.order_store import ExpectedOrder, SqliteOrderStore
path, who, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
store = SqliteOrderStore(path)
for n in range(count):
    store.remember(ExpectedOrder(f"{who}-{n}", f"TN-{who}-{n}", Decimal(n), "QAR"))
    assert store.expected(f"{who}-{n}") is not None
print("ok")
"""


def test_several_processes_share_one_store(tmp_path: Path) -> None:
    """Instances of a POS server behind a load balancer, each its own process,
    writing and reading one file at the same time."""
    path = tmp_path / "orders.db"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _WRITER, str(path), f"P{i}", "60"],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(4)
    ]
    results = []
    for proc in procs:  # every child waited for, even when one failed
        out, err = proc.communicate(timeout=60)
        results.append((proc.returncode, out.strip(), err))
    for code, out, err in results:
        assert (code, out) == (0, "ok"), err
    store = SqliteOrderStore(path)
    for i in range(4):
        for n in range(60):
            assert store.expected(f"P{i}-{n}") == ExpectedOrder(
                f"P{i}-{n}", f"TN-P{i}-{n}", Decimal(n), "QAR"
            )


def test_sqlite_store_that_cannot_be_opened_is_a_config_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(ConfigError, match="order_store: cannot open"):
        SqliteOrderStore(blocker / "orders.db")
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"not a database" * 100)
    with pytest.raises(ConfigError, match="order_store: not a usable order store"):
        SqliteOrderStore(garbage)


def test_config_order_store_is_relative_to_the_config_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(ROOT)  # not the config's directory
    config = load_config(write_config(tmp_path, order_store="state/orders.db"))
    assert config.order_store == tmp_path / "state" / "orders.db"
    assert load_config(write_config(tmp_path)).order_store is None
    (tmp_path / "adir").mkdir()
    with pytest.raises(ConfigError, match=r"order_store: .* is a directory"):
        load_config(write_config(tmp_path, order_store="adir"))


def test_pruning_keeps_what_a_notification_retry_needs(tmp_path: Path) -> None:
    """Notifications are retried for about 12 h: the default keeps far more."""
    store = SqliteOrderStore(tmp_path / "orders.db")
    store.remember(EXPECTED)
    assert store.keep_days is not None
    assert store.keep_days * 24 > 12
    assert store.prune(older_than_days=0.5) == 0
    assert store.expected("A-1") is not None
