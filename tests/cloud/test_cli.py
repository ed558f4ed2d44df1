"""``sadad-pos``: argument handling, exit codes and output, against the
simulated gateway peer (in process) and as a real process for ``listen``."""

from __future__ import annotations

import asyncio
import io
import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from cloud import cli, wirejson
from cloud.backoff import Backoff
from cloud.config import PosConfig
from cloud.messages import Method, OnlineStatus, TransStatus
from cloud.order_store import SqliteOrderStore
from cloud.pos import AsyncPosClient
from tests.cloud.pos_peer import OTHER_PRIVATE, GatewayPeer, write_config

ROOT = Path(__file__).resolve().parents[2]
FAST_RETRY = Backoff(first=0.01, factor=1, cap=0.01)


@pytest.fixture
def peer() -> GatewayPeer:
    return GatewayPeer()


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    return write_config(tmp_path)


Runner = Callable[..., tuple[int, str, str]]


@pytest.fixture
def run(
    peer: GatewayPeer,
    config_file: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> Runner:
    """Run ``main`` against the peer; returns (exit code, stdout, stderr)."""
    transport: list[httpx.AsyncBaseTransport] = [peer.transport()]

    def make(config: PosConfig) -> AsyncPosClient:
        return AsyncPosClient(config, transport=transport[0], retry=FAST_RETRY)

    monkeypatch.setattr(cli, "_make_client", make)
    monkeypatch.delenv("SADAD_POS_CONFIG", raising=False)

    def runner(
        *argv: str, transport_: httpx.AsyncBaseTransport | None = None
    ) -> tuple[int, str, str]:
        if transport_ is not None:
            transport[0] = transport_
        code = cli.main(["--config", str(config_file), *argv])
        out, err = capsys.readouterr()
        return code, out, err

    return runner


def paying(peer: GatewayPeer, status: TransStatus, **extra: Any) -> httpx.MockTransport:
    """The peer, plus: right after a create, the order turns ``status`` and the
    notification is POSTed (for real, over HTTP) to the order's notify_url."""
    tasks: list[asyncio.Task[None]] = []

    async def handler(request: httpx.Request) -> httpx.Response:
        response = peer.handler(request)
        call = peer.calls[-1]
        if call.method == Method.PAY_ORDER:
            info = peer.set_status(call.fields["merchant_order_no"], status, **extra)
            url = call.fields["notify_url"]

            async def deliver() -> None:
                async with httpx.AsyncClient() as http:
                    answer = await http.post(url, content=peer.notification(info))
                    assert answer.text == "success"

            tasks.append(asyncio.create_task(deliver()))
        return response

    return httpx.MockTransport(handler)


PUSH = ("push", "--terminal", "T0001", "--amount", "12.50")


# ---------------------------------------------------------------- usage errors


@pytest.mark.parametrize(
    ("amount", "message"),
    [
        ("12.505", "--amount: '12.505': QAR has 2 decimal places; 12.505 has more"),
        ("abc", "--amount: 'abc' is not an amount"),
        ("0", "--amount: '0': amount must be greater than zero"),
        ("-1", "--amount: '-1': amount must be greater than zero"),
        ("NaN", "--amount: 'NaN': amount must be a finite decimal number"),
    ],
)
def test_bad_amount_exit_2(run: Runner, peer: GatewayPeer, amount: str, message: str) -> None:
    code, out, err = run("push", "--terminal", "T0001", "--amount", amount)
    assert code == 2
    assert out == ""
    assert err.strip() == f"sadad-pos: {message}"
    assert peer.calls == []


def test_bad_amount_json(run: Runner) -> None:
    code, out, _ = run("--json", "push", "--terminal", "T0001", "--amount", "1.001")
    assert code == 2
    assert json.loads(out) == {
        "ok": False,
        "exit_code": 2,
        "error": {
            "kind": "usage",
            "message": "--amount: '1.001': QAR has 2 decimal places; 1.001 has more",
        },
    }


def test_amount_follows_currency_decimals(run: Runner) -> None:
    code, out, _ = run(
        "--json",
        "push",
        "--terminal",
        "T0001",
        "--amount",
        "1.250",
        "--currency",
        "KWD",
        "--tip",
        "0",
    )
    assert code == 0
    assert json.loads(out)["trans_amount"] == "1.250"
    code, _, err = run("push", "--terminal", "T0001", "--amount", "1", "--currency", "XYZ")
    assert code == 2
    assert "--currency: unsupported currency 'XYZ'" in err


def test_argparse_errors_are_exit_2_and_json(run: Runner) -> None:
    code, out, err = run("--json", "query")
    assert code == 2
    error = json.loads(out)["error"]
    assert error["kind"] == "usage"
    assert "one of the arguments --order-no --trans-no is required" in error["message"]
    code, out, err = run("push", "--amount", "1")
    assert code == 2
    assert "the following arguments are required: --terminal" in err
    code, _, err = run("push", "--terminal", "T1", "--amount", "1", "--type", "refund")
    assert code == 2
    assert "--orig-order-no is required with --type refund" in err
    code, _, err = run(*PUSH, "--timeout", "5")
    assert code == 2
    assert "--timeout needs --wait" in err
    code, _, err = run(*PUSH, "--order-no", "bad order")
    assert (code, err.strip()) == (
        2,
        "sadad-pos: --order-no: invalid PayOrder: must be 1-32 of letters, digits and _-|*@",
    )


def test_help_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--help"]) == 0
    assert "exit codes: 0 paid/success" in capsys.readouterr().out


def test_config_errors_exit_78(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "missing.toml"
    monkeypatch.setenv("SADAD_POS_CONFIG", str(missing))
    assert cli.main(["--json", "query", "--order-no", "A-1"]) == 78
    error = json.loads(capsys.readouterr().out)["error"]
    assert error["kind"] == "config"
    assert error["message"].startswith(f"{missing}: config file not found")
    bad = write_config(tmp_path, gateway_url="gateway")
    assert cli.main(["query", "--order-no", "A-1", "--config", str(bad)]) == 78
    assert f"{bad}: gateway_url: 'gateway' is not an http(s) URL" in capsys.readouterr().err


# ---------------------------------------------------------------- push


def test_push_json(run: Runner, peer: GatewayPeer) -> None:
    code, out, err = run(
        *PUSH,
        "--json",
        "--description",
        "coffee",
        "--confirm",
        "--filo",
        "--scenario",
        "SWIPE_CARD",
        "--expires",
        "120",
        "--reject-offline",
    )
    assert code == 0
    assert err == ""
    result = json.loads(out)
    order_no = result["merchant_order_no"]
    assert re.fullmatch(r"POS-\d{14}-[0-9a-f]{4}", order_no)
    assert result == {
        "ok": True,
        "exit_code": 0,
        "merchant_order_no": order_no,
        "trans_no": peer.orders[order_no].result.trans_no,
        "message_id": peer.orders[order_no].result.message_id,
        "terminal_sn": "T0001",
        "terminal_online_status": "ONLINE",
        "trans_amount": "12.50",
        "price_currency": "QAR",
    }
    sent = peer.calls[0].fields
    assert sent["description"] == "coffee"
    assert sent["confirm_on_terminal"] is True
    assert sent["order_queue_mode"] == "FILO"
    assert sent["pay_scenario"] == "SWIPE_CARD"
    assert sent["expires"] == 120
    assert sent["reject_trade_when_terminal_offline"] is True
    assert "notify_url" not in sent


def test_push_text_and_repeat(run: Runner, peer: GatewayPeer) -> None:
    code, out, _ = run(*PUSH, "--order-no", "R-1", "--tip", "1.5")
    assert code == 0
    trans_no = peer.orders["R-1"].result.trans_no
    assert out.strip() == (
        f"order R-1 pushed to T0001 (14.00 QAR): trans_no {trans_no}, terminal ONLINE"
    )
    code, out, _ = run(*PUSH, "--order-no", "R-1", "--tip", "1.5", "--json")
    assert (code, json.loads(out)["trans_no"]) == (0, trans_no)
    code, out, _ = run(*PUSH, "--order-no", "R-1", "--json")  # other fields: refused
    assert code == 4
    assert json.loads(out)["error"]["code"] == "ORDER_DUPLICATE"


def test_push_wait_returns_on_notification(run: Runner, peer: GatewayPeer) -> None:
    transport = paying(peer, TransStatus.COMPLETED, auth_code="777777")
    code, out, err = run(*PUSH, "--order-no", "W-1", "--wait", "--json", transport_=transport)
    assert code == 0, err
    result = json.loads(out)  # exactly one object
    assert result["ok"] is True
    order = result["order"]
    assert order["trans_status"] == 2
    assert order["trans_status_name"] == "COMPLETED"
    assert order["auth_code"] == "777777"
    assert order["masked_pan"] == "411111******1111"
    assert order["trans_amount"] == "12.50"
    notify_url = peer.calls[0].fields["notify_url"]
    assert re.fullmatch(r"http://127\.0\.0\.1:\d+/notify", notify_url)
    assert peer.calls_of(Method.ORDER_QUERY) == []  # woken by the notification


def test_push_wait_refuses_another_merchants_notification(run: Runner, peer: GatewayPeer) -> None:
    """``push --wait``'s receiver binds like ``listen``: merchant B's genuine
    notification for the same order number (1.00, another trans_no) gets a
    400 and does not end the wait; ours, next, does."""
    answers: list[tuple[int, str]] = []
    tasks: list[asyncio.Task[None]] = []

    async def handler(request: httpx.Request) -> httpx.Response:
        response = peer.handler(request)
        call = peer.calls[-1]
        if call.method == Method.PAY_ORDER:
            ours = peer.set_status(call.fields["merchant_order_no"], TransStatus.COMPLETED)
            theirs = peer.info(
                ours.merchant_order_no,
                TransStatus.COMPLETED,
                merchant_no="M0002",
                app_id="pos-b",
                trans_no="TNB00001",
                order_amount="1.00",
                trans_amount="1.00",
            )
            url = call.fields["notify_url"]

            async def deliver() -> None:
                async with httpx.AsyncClient() as http:
                    for info in (theirs, ours):
                        answer = await http.post(url, content=peer.notification(info))
                        answers.append((answer.status_code, answer.text))

            tasks.append(asyncio.create_task(deliver()))
        return response

    code, out, err = run(
        *PUSH, "--order-no", "W-9", "--wait", "--json", transport_=httpx.MockTransport(handler)
    )
    assert code == 0, err
    order = json.loads(out)["order"]
    assert (order["merchant_no"], order["trans_amount"]) == ("M0001", "12.50")
    assert answers[0][0] == 400
    assert "merchant_no is 'M0002', expected 'M0001'" in answers[0][1]
    assert answers[1] == (200, "success")


def test_push_wait_declined_text(run: Runner, peer: GatewayPeer) -> None:
    transport = paying(peer, TransStatus.CLOSED)
    code, out, err = run(*PUSH, "--order-no", "W-2", "--wait", transport_=transport)
    assert code == 1
    assert out.startswith("CLOSED (declined or closed)\n")
    assert "  error      05 Do not honour" in out
    assert "  order      W-2" in out
    assert "order W-2 pushed to T0001" in err
    assert "T0001 | 12.50 QAR | PREORDER (waiting for the customer)" in err


def test_push_wait_timeout_exit_3(run: Runner) -> None:
    code, out, _ = run(*PUSH, "--order-no", "W-3", "--wait", "--timeout", "0.2", "--json")
    assert code == 3
    result = json.loads(out)
    assert result["error"]["kind"] == "timeout"
    assert result["merchant_order_no"] == "W-3"
    assert result["order"] is None


def test_push_unavailable_exit_3(run: Runner, peer: GatewayPeer) -> None:
    peer.fail_next("connect", times=10)
    code, out, _ = run(*PUSH, "--json")
    assert code == 3
    result = json.loads(out)
    assert result["error"]["kind"] == "unavailable"
    order_no = result["merchant_order_no"]  # so it can be queried or pushed again
    assert f"push again with --order-no {order_no}" in result["error"]["message"]
    assert len(peer.calls) == 3  # the create was retried, with the same order
    assert {c.fields["merchant_order_no"] for c in peer.calls} == {order_no}


class _FakeTTY(io.StringIO):
    encoding = "utf-8"

    def isatty(self) -> bool:
        return True


def test_live_status_line_on_a_tty(
    run: Runner, peer: GatewayPeer, monkeypatch: pytest.MonkeyPatch
) -> None:
    tty = _FakeTTY()
    monkeypatch.setattr(sys, "stderr", tty)
    code, out, _ = run(*PUSH, "--order-no", "S-1", "--wait", "--timeout", "0.35")
    assert code == 3
    assert out == ""
    text = tty.getvalue()
    assert "\r⠋ T0001 | 12.50 QAR | PREORDER (waiting for the customer) 0s\x1b[K" in text
    peer.online = OnlineStatus.OFFLINE
    code, _, _ = run(*PUSH, "--order-no", "S-2", "--wait", "--timeout", "0.2")
    assert "PREORDER (waiting for the customer; terminal offline, it gets the order when" in (
        tty.getvalue()
    )
    assert "\r⠙ T0001" in text  # it moves
    assert "\r\x1b[K" in text  # and is wiped before the result
    assert text.rstrip().endswith("not final after 0.35 s (nothing seen)")


# ---------------------------------------------------------------- query, close


def test_query_and_close(run: Runner, peer: GatewayPeer) -> None:
    assert run(*PUSH, "--order-no", "Q-1")[0] == 0
    code, out, _ = run("query", "--order-no", "Q-1", "--json")
    assert code == 0
    order = json.loads(out)["order"]
    assert order["trans_status_name"] == "PREORDER"
    assert order["order_amount"] == "12.50"
    code, out, _ = run("close", "--order-no", "Q-1", "--description", "left", "--json")
    assert code == 0
    assert json.loads(out)["trans_no"] == peer.orders["Q-1"].result.trans_no
    assert peer.calls_of(Method.PAY_CLOSE)[0].fields["terminal_sn"] == "T0001"  # looked up
    code, out, _ = run("query", "--trans-no", peer.orders["Q-1"].result.trans_no)
    assert code == 1
    assert out.startswith("CLOSED (declined or closed)")
    code, out, _ = run("close", "--order-no", "Q-1", "--terminal", "T0001", "--json")
    assert code == 4
    assert json.loads(out)["error"] == {
        "kind": "rejected",
        "message": "gateway refused: ORDER_STATUS_ERROR order is no longer waiting",
        "code": "ORDER_STATUS_ERROR",
        "msg": "order is no longer waiting",
    }


def test_close_unavailable_is_not_retried(run: Runner, peer: GatewayPeer) -> None:
    assert run(*PUSH, "--order-no", "C-1")[0] == 0
    peer.fail_next("lose", Method.PAY_CLOSE, times=3)
    code, _, err = run("close", "--order-no", "C-1", "--terminal", "T0001")
    assert code == 3
    assert "ReadTimeout" in err
    assert len(peer.calls_of(Method.PAY_CLOSE)) == 1


def test_query_unknown_exit_4(run: Runner) -> None:
    code, _, err = run("query", "--order-no", "NOPE")
    assert code == 4
    assert err.strip() == "sadad-pos: gateway refused: ORDER_NOT_EXIST no such order"


# ---------------------------------------------------------------- listen (a real process)


def test_listen_process(tmp_path: Path) -> None:
    """``sadad-pos listen`` as its own process: it binds a notification to an
    order created by another process (``push``) through the shared order
    store, and answers 400 to a forged one and to another merchant's."""
    config_file = write_config(tmp_path, order_store="orders.db")
    peer = GatewayPeer()
    SqliteOrderStore(tmp_path / "orders.db").remember(peer.expected("L-1"))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "cloud.cli",
            "--config",
            str(config_file),
            "listen",
            "--port",
            "0",
            "--json",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=ROOT,
    )
    try:
        assert proc.stderr is not None
        assert proc.stdout is not None
        banner = proc.stderr.readline()
        match = re.match(r"listening on (http://127\.0\.0\.1:\d+/notify) ", banner)
        assert match, banner
        url = match.group(1)
        good = peer.notification(peer.info("L-1", TransStatus.COMPLETED), notify_id="N-L1")
        forged = peer.notification(peer.info("L-2", TransStatus.COMPLETED), key=OTHER_PRIVATE)
        theirs = peer.notification(peer.info("L-1", TransStatus.COMPLETED, merchant_no="M0002"))
        with httpx.Client() as http:
            first = http.post(url, content=good)
            assert (first.status_code, first.text) == (200, "success")
            assert (http.post(url, content=good).text) == "success"  # duplicate: still 200
            assert http.post(url, content=forged).status_code == 400
            other = http.post(url, content=theirs)
            assert other.status_code == 400
            assert other.text.startswith("not our order: ")
            assert "merchant_no is 'M0002', expected 'M0001'" in other.text
            line = json.loads(proc.stdout.readline())
            assert line["merchant_order_no"] == "L-1"
            assert line["notify_id"] == "N-L1"
            assert line["trans_status_name"] == "COMPLETED"
            assert line["trans_amount"] == "12.50"
        proc.send_signal(signal.SIGTERM)
        rest, errors = proc.communicate(timeout=10)
        assert proc.returncode == 0
        assert rest == ""  # the duplicate printed nothing more on stdout
        assert "duplicate notification N-L1" in errors
        assert "rejected notification" in errors  # the forged one
        assert "refused notification: not our order: " in errors  # merchant M0002's
        assert "no order_store" not in errors
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_listen_without_an_order_store_says_it_can_bind_nothing(
    config_file: Path,
) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "cloud.cli", "--config", str(config_file), "listen", "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=ROOT,
    )
    try:
        assert proc.stderr is not None
        warning = proc.stderr.readline()
        assert warning.startswith("warning: no order_store in the config: "), warning
        banner = proc.stderr.readline()
        match = re.match(r"listening on (http://127\.0\.0\.1:\d+/notify) ", banner)
        assert match, banner
        peer = GatewayPeer()
        with httpx.Client() as http:
            answer = http.post(
                match.group(1),
                content=peer.notification(peer.info("L-1", TransStatus.COMPLETED)),
            )
        assert answer.status_code == 400
        assert "no record of order 'L-1'" in answer.text
        proc.send_signal(signal.SIGTERM)
        _, errors = proc.communicate(timeout=10)
        assert proc.returncode == 0
        assert "refused notification: not our order: " in errors
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_cloud_needs_no_server_side_packages() -> None:
    """A POS server installs cloud/ with httpx, cryptography and msgspec only."""
    code = (
        "import sys, cloud.cli, cloud.pos, cloud.config, cloud.notify_server\n"
        "heavy = {'starlette', 'uvicorn', 'paho', 'textual', 'tomlkit', 'transitions',\n"
        "         'serial', 'agent', 'sandbox', 'drivers', 'ui'}\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & heavy))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert done.stdout.strip() == "[]"


# ---------------------------------------------------------------- fail fast, timeline, terminal


def test_push_to_an_offline_terminal_fails_fast(run: Runner, peer: GatewayPeer) -> None:
    peer.online = OnlineStatus.OFFLINE
    code, out, _ = run(*PUSH, "--reject-offline", "--json")
    assert code == 4
    error = json.loads(out)["error"]
    assert (error["kind"], error["code"]) == ("terminal_offline", "40903")
    assert len(peer.calls) == 1


def _timeline(*events: tuple[str, str | None, dict[str, int]]) -> str:
    return wirejson.dumps(
        [
            {"event": e, "message_id": "M", "timestamp": "1", "received_ms": 1, "reason": r}
            | ({"hops": h} if h else {})
            for e, r, h in events
        ]
    )


def test_push_wait_on_a_busy_terminal_says_so(run: Runner, peer: GatewayPeer) -> None:
    busy = _timeline(("received", None, {}), ("busy", "queue position 1", {}))
    for n, (order_no, json_mode) in enumerate((("B-1", ()), ("B-2", ("--json",))), 1):
        info = peer.info(
            order_no,
            trans_no=f"TN{n:06d}",  # what the push is about to create
            terminal_timeline=busy,
            terminal_online_status="ONLINE",
        )
        peer.query_script = [info] * 50
        code, out, err = run(
            *PUSH, "--order-no", order_no, "--wait", "--timeout", "1.5", *json_mode
        )
        assert code == 3
        if not json_mode:
            waits = "terminal busy: the order waits in its queue at position 1"
            assert f"PREORDER (waiting for the customer; {waits})" in err  # the progress line
            assert (
                f"sadad-pos: order B-1 not final after 1.5 s (last status PREORDER; {waits})" in err
            )
    result = json.loads(out)
    assert result["error"]["kind"] == "terminal_busy"
    assert result["order"]["waiting"] == "terminal busy: the order waits in its queue at position 1"


def test_query_prints_the_terminal_timeline(run: Runner, peer: GatewayPeer) -> None:
    hops = {"push_received": 1000, "journaled": 1004, "acknowledged": 1005, "shown": 1020}
    paid = peer.info(
        "T-1",
        TransStatus.COMPLETED,
        terminal_timeline=_timeline(
            ("received", None, {"push_received": 1000}), ("paid", None, hops)
        ),
        terminal_online_status="ONLINE",
    )
    peer.query_script = [paid, paid]
    code, out, _ = run("query", "--order-no", "T-1")
    assert code == 0
    assert out.splitlines()[-6:] == [
        "terminal timeline (sandbox; ms since the terminal received the push):",
        "  push_received               0 ms",
        "  journaled                   4 ms  +4 ms",
        "  acknowledged                5 ms  +1 ms",
        "  shown                      20 ms  +15 ms",
        "terminal events: received, paid",
    ]
    code, out, _ = run("query", "--order-no", "T-1", "--json")
    order = json.loads(out)["order"]
    assert order["terminal_hops"][-1] == {
        "name": "shown",
        "at_ms": 1020,
        "since_ms": 20,
        "gap_ms": 15,
    }
    assert [e["event"] for e in order["terminal_timeline"]] == ["received", "paid"]
    assert order["terminal_timeline"][1]["hops"] == hops


def test_terminal_command(run: Runner, peer: GatewayPeer) -> None:
    code, out, _ = run("terminal", "T0001")
    assert (code, out) == (0, "T0001 ONLINE\n  the terminal never published a status\n")
    peer.terminal_state = wirejson.dumps(
        {
            "status": "online",
            "timestamp": "1",
            "keepalive": 5,
            "screen": "WAITING_FOR_CONFIRM",
            "readers": {"nfc": "ready", "msr": "offline"},
            "queue": 3,
            "printer": "paper_out",
        }
    )
    code, out, _ = run("terminal", "T0001")
    assert code == 0
    assert out.splitlines() == [
        "T0001 ONLINE (status received 2030-01-01 12:00:00 UTC)",
        "  screen     WAITING_FOR_CONFIRM",
        "  readers    nfc ready, msr offline",
        "  queue      3 waiting",
        "  printer    paper out",
        "  keepalive  5 s (a silent loss shows as offline within 8 s)",
    ]
    peer.online = OnlineStatus.OFFLINE
    peer.terminal_state = wirejson.dumps({"status": "offline", "timestamp": "1", "keepalive": 30})
    code, out, _ = run("--json", "terminal", "T0001")
    assert code == 1
    assert json.loads(out) == {
        "ok": False,
        "exit_code": 1,
        "terminal": {
            "terminal_sn": "T0001",
            "terminal_online_status": "OFFLINE",
            "terminal_state": {
                "status": "offline",
                "timestamp": "1",
                "keepalive": 30,
                "screen": None,
                "readers": {},
                "queue": 0,
                "printer": None,
            },
            "status_time": "2030-01-01 12:00:00",
            "offline_within_s": 45,
        },
    }
