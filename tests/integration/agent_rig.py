"""A terminal made of real processes for the agent's end-to-end tests.

Simulated readers (``sadad-reader-sim`` on pseudo-terminals, driven through
their stdin), the agent (``python -m agent.cli run``, stderr captured to a
file so tests can scan it for card data), a bridge client that records the
screens, and the POS side through ``cloud.pos.PosClient``.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import tomlkit

from agent import bridge_protocol as bp
from cloud.config import load_config
from cloud.messages import OrderInfo
from cloud.pos import PosClient
from tests.integration.conftest import REPO, SandboxHandle, wait_until
from ui.bridge_client import BridgeClient

PANS = ("4761739001010010", "5413330089010434")
WALLET_CODE = "134567890123456789"


class Sim:
    """One simulated reader process; ``send`` writes a command line to its stdin."""

    def __init__(self, kind: str, link: Path, log: Path, *args: str) -> None:
        self.link = link
        self._log = log.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "drivers.sim.cli", kind, "--link", str(link), *args],
            cwd=REPO,
            stdin=subprocess.PIPE,
            stdout=self._log,
            stderr=self._log,
        )
        wait_until(link.exists, timeout=15)

    def send(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line.encode() + b"\n")
        self.proc.stdin.flush()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        self._log.close()


class ScreenWatcher:
    """A bridge client in a thread, recording every screen event it sees."""

    def __init__(self, socket: Path) -> None:
        self.socket = socket
        self.screens: list[bp.ScreenEvent] = []
        self._loop = asyncio.new_event_loop()
        self._client: BridgeClient | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self._main())

    async def _main(self) -> None:
        self._client = BridgeClient(str(self.socket))
        await self._client.connect()
        try:
            async for event in self._client.events():
                if isinstance(event, bp.HelloEvent) and event.snapshot.screen is not None:
                    self.screens.append(event.snapshot.screen)
                elif isinstance(event, bp.ScreenEvent):
                    self.screens.append(event)
        except asyncio.CancelledError:
            pass
        finally:
            await self._client.close()

    def request(self, name: str, **args: Any) -> bp.Reply:
        assert self._client is not None
        fut = asyncio.run_coroutine_threadsafe(self._client.request(name, **args), self._loop)
        return fut.result(timeout=15)

    def outcomes(self) -> list[str]:
        return [s.result.outcome for s in self.screens if s.result is not None]

    def close(self) -> None:
        for task in asyncio.all_tasks(self._loop):
            self._loop.call_soon_threadsafe(task.cancel)
        self._thread.join(timeout=5)
        self._loop.close()


@dataclass
class Terminal:
    """Readers + agent for one provisioned terminal SN."""

    sandbox: SandboxHandle
    sn: str
    workdir: Path
    nfc_args: tuple[str, ...] = ("--card", "visa")
    gateway_timeout: float = 2.0
    resolve_deadline: float = 5.0
    sims: dict[str, Sim] = field(default_factory=dict)
    agent: subprocess.Popen[bytes] | None = None
    watcher: ScreenWatcher | None = None
    config: Path = field(init=False)
    pos: PosClient = field(init=False)

    def __post_init__(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        links = {n: self.workdir / f"{n}.tty" for n in ("nfc", "msr", "scan")}
        self.sims["nfc"] = Sim("nfc", links["nfc"], self.workdir / "nfc.log", *self.nfc_args)
        self.sims["msr"] = Sim(
            "magstripe", links["msr"], self.workdir / "msr.log", "--card", "visa"
        )
        self.sims["scan"] = Sim(
            "scanner", links["scan"], self.workdir / "scan.log", "--model", "honeywell"
        )
        self.config = self.sandbox.provision(
            self.sn,
            {
                "nfc": f"pn532:{links['nfc']}",
                "msr": f"magstripe:{links['msr']}",
                "scan": f"scanner:{links['scan']};model=honeywell",
            },
        )
        doc = tomlkit.parse(self.config.read_text())
        gateway = doc["gateway"]
        assert isinstance(gateway, tomlkit.items.Table)
        gateway["timeout"] = self.gateway_timeout
        gateway["resolve_deadline"] = self.resolve_deadline
        self.config.write_text(tomlkit.dumps(doc))
        self.pos = PosClient(load_config(self.sandbox.pos_config))

    @property
    def socket(self) -> Path:
        return self.config.parent / "agent.sock"

    @property
    def journal_path(self) -> Path:
        return self.config.parent / "journal.db"

    @property
    def log_path(self) -> Path:
        return self.workdir / "agent.log"

    def start_agent(self, *, watch: bool = True, crash_at: str | None = None) -> None:
        """Run the agent; ``crash_at`` makes it SIGKILL itself at that step."""
        before = self.log_path.read_text().count("ready (") if self.log_path.exists() else 0
        log = self.log_path.open("ab")
        env = dict(os.environ)
        env.pop("SADAD_AGENT_CRASH_AT", None)
        if crash_at:
            env["SADAD_AGENT_CRASH_AT"] = crash_at
        self.agent = subprocess.Popen(
            [sys.executable, "-m", "agent.cli", "run", "--config", str(self.config)],
            cwd=REPO,
            env=env,
            stdout=log,
            stderr=log,
            stdin=subprocess.DEVNULL,
        )
        log.close()
        agent = self.agent

        def ready() -> bool:
            if agent.poll() is not None:
                raise AssertionError(f"agent exited: {self.log_path.read_text()[-2000:]}")
            return self.log_path.read_text().count("ready (") > before

        wait_until(ready, timeout=20)
        if watch and self.watcher is None:
            self.watcher = ScreenWatcher(self.socket)

    def kill_agent(self) -> None:
        assert self.agent is not None
        if self.agent.poll() is None:
            self.agent.send_signal(signal.SIGKILL)
        self.agent.wait(timeout=10)
        self.agent = None
        if self.watcher is not None:
            self.watcher.close()
            self.watcher = None

    def stop_agent(self) -> int:
        assert self.agent is not None
        self.agent.terminate()
        code = self.agent.wait(timeout=20)
        self.agent = None
        return code

    def push(self, amount: str = "12.30", **fields: Any) -> str:
        order_no: str = fields.pop("merchant_order_no", "O" + uuid.uuid4().hex[:12])
        self.pos.push_order(
            terminal_sn=self.sn,
            merchant_order_no=order_no,
            price_currency="QAR",
            order_amount=Decimal(amount),
            **fields,
        )
        return order_no

    def final(self, order_no: str, timeout: float = 30.0) -> OrderInfo:
        return self.pos.wait_for_final(order_no, deadline_s=timeout)

    def journal_phase(self, trans_no: str) -> str | None:
        import sqlite3

        db = sqlite3.connect(f"file:{self.journal_path}?mode=ro", uri=True)
        try:
            row = db.execute(
                "SELECT phase FROM transactions WHERE trans_no=?", (trans_no,)
            ).fetchone()
        finally:
            db.close()
        return None if row is None else str(row[0])

    def charges(self, trans_no: str) -> list[Any]:
        return self.sandbox.query("SELECT * FROM charges WHERE trans_no=? AND reversed=0", trans_no)

    def close(self) -> None:
        if self.watcher is not None:
            self.watcher.close()
        if self.agent is not None and self.agent.poll() is None:
            self.agent.terminate()
            try:
                self.agent.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.agent.kill()
                self.agent.wait()
        for sim in self.sims.values():
            sim.stop()
        self.pos.close()


def scan_for_card_data(*paths: Path) -> list[str]:
    """Full PANs, track 2 or the wallet code found in raw bytes of ``paths``."""
    found = []
    for path in paths:
        if not path.exists():
            continue
        data = path.read_bytes()
        for secret in (*PANS, WALLET_CODE):
            if secret.encode() in data:
                found.append(f"{path.name}: {secret[:6]}...")
    return found


def wait_agent_idle(term: Terminal, timeout: float = 10.0) -> None:
    def idle() -> bool:
        w = term.watcher
        return bool(w and w.screens and w.screens[-1].screen.value == "IDLE")

    wait_until(idle, timeout=timeout)


def settle(seconds: float) -> None:
    time.sleep(seconds)
