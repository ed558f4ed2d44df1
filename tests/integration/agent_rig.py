"""A terminal made of real processes for the agent's end-to-end tests.

- ``Sim``: one ``sadad-reader-sim`` on a pseudo-terminal, driven through its
  stdin (``present visa``, ``remove``, ``unplug``, ``replug``).
- ``ScreenWatcher``: an ``agent.bridge_client.BridgeClient`` on the agent's
  socket (in a thread of its own) recording every screen the checkout shows.
- ``Terminal``: readers + ``python -m agent.cli run`` for one provisioned SN
  (stderr captured to ``agent.log``, which the card-data test scans), the
  POS side through ``cloud.pos.PosClient``, and the checks every test ends
  with: ``settled`` (the POS, the journal, the gateway's charges and the
  screen agree on a final outcome) and ``assert_all_settled``.

Waits poll (``until``) instead of sleeping: the sandbox database for the
order's status, the journal (read-only) for the terminal's.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import tomlkit

from agent import bridge_protocol as bp
from agent.bridge_client import BridgeClient
from cloud.config import load_config
from cloud.messages import OnlineStatus, OrderInfo, TransStatus
from cloud.pos import PosClient
from tests.integration.conftest import REPO, SandboxHandle
from tests.waiting import until

# Card data the simulators hold: none of it may reach the agent's log or journal.
SECRETS = (
    "4761739001010010",  # Visa, contactless
    "5413330089010434",  # MasterCard, contactless
    "4761739001010119",  # Visa, magstripe
    "5413330089020011",  # MasterCard, magstripe
    "134567890123456789",  # WeChat Pay code
    "=2812101",  # track 2 after the PAN (Visa swipe)
    "=2812201",  # track 2 after the PAN (Visa chip card swiped)
    "=2910101",  # track 2 after the PAN (MasterCard swipe)
    "^TEST/CARD",  # track 1 name field
)

# The journal's final phase -> the POS's trans_status that must go with it.
PHASE_STATUS = {
    "APPROVED": TransStatus.COMPLETED,
    "DECLINED": TransStatus.CLOSED,
    "CLOSED": TransStatus.CLOSED,
    "EXPIRED": TransStatus.CLOSED,
    "CANCELLED": TransStatus.CANCELLED,
}
PHASE_OUTCOME = {
    "APPROVED": "approved",
    "DECLINED": "declined",
    "CLOSED": "closed",
    "EXPIRED": "expired",
    "CANCELLED": "cancelled",
}


AGENT_UNIT = REPO / "systemd" / "sadad-agent.service"


def unit_environment(unit: Path = AGENT_UNIT) -> dict[str, str]:
    """The ``Environment=`` of the agent's systemd unit, so that agents started
    here run as the unit runs them (e.g. ``PYTHONOPTIMIZE=2``)."""
    env: dict[str, str] = {}
    for line in unit.read_text().splitlines():
        if line.startswith("Environment="):
            for pair in line.removeprefix("Environment=").split():
                name, _, value = pair.partition("=")
                env[name] = value
    return env


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

    def wait_ready(self) -> None:
        def ready() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"reader simulator {self.link.name} exited")
            return self.link.exists()

        until(ready, timeout=15)

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
            with contextlib.suppress(OSError):
                self.proc.stdin.close()
        self._log.close()


class ScreenWatcher:
    """A bridge client in a thread, recording every screen event it sees."""

    def __init__(self, socket: Path) -> None:
        self.socket = socket
        self.screens: list[bp.ScreenEvent] = []
        self.printer: bp.PrinterEvent | None = None  # the last printer state seen
        self._cond = threading.Condition()
        self._loop = asyncio.new_event_loop()
        self._client: BridgeClient | None = None
        self._main_task: asyncio.Task[None] | None = None
        self._started = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="screen-watcher")
        self._thread.start()
        if not self._started.wait(10):
            raise AssertionError("bridge client did not start")

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._main_task = self._loop.create_task(self._main())
        self._loop.run_until_complete(self._main_task)

    async def _main(self) -> None:
        self._client = BridgeClient(str(self.socket))
        await self._client.connect()
        self._started.set()
        try:
            async for event in self._client.events():
                screen: bp.ScreenEvent | None = None
                if isinstance(event, bp.HelloEvent):
                    screen = event.snapshot.screen
                    self.printer = event.snapshot.printer
                elif isinstance(event, bp.ScreenEvent):
                    screen = event
                elif isinstance(event, bp.PrinterEvent):
                    self.printer = event
                if screen is not None:
                    with self._cond:
                        self.screens.append(screen)
                        self._cond.notify_all()
        except asyncio.CancelledError:
            pass
        finally:
            await self._client.close()

    def request(self, name: str, **args: Any) -> bp.Reply:
        assert self._client is not None
        fut = asyncio.run_coroutine_threadsafe(self._client.request(name, **args), self._loop)
        return fut.result(timeout=15)

    def mark(self) -> int:
        """A position in the screen history (for ``since``)."""
        with self._cond:
            return len(self.screens)

    def since(self, mark: int) -> list[bp.ScreenEvent]:
        with self._cond:
            return list(self.screens[mark:])

    def wait_for(
        self, pred: Callable[[bp.ScreenEvent], bool], *, after: int = 0, timeout: float = 15.0
    ) -> bp.ScreenEvent:
        """The first screen at or after position ``after`` for which ``pred`` holds."""

        def match() -> bp.ScreenEvent | None:
            return next((s for s in self.screens[after:] if pred(s)), None)

        with self._cond:
            if not self._cond.wait_for(lambda: match() is not None, timeout):
                seen = [(s.screen.value, s.order and s.order.trans_no) for s in self.screens]
                raise AssertionError(f"screen not shown within {timeout} s; saw {seen}")
            found = match()
            assert found is not None
            return found

    def wait_screen(
        self, name: str, trans_no: str | None = None, *, after: int = 0, timeout: float = 15.0
    ) -> bp.ScreenEvent:
        """The first screen ``name`` (for order ``trans_no``) shown at or after ``after``."""

        def pred(screen: bp.ScreenEvent) -> bool:
            if screen.screen.value != name:
                return False
            return trans_no is None or (
                screen.order is not None and screen.order.trans_no == trans_no
            )

        return self.wait_for(pred, after=after, timeout=timeout)

    def results(self, trans_no: str) -> list[str]:
        """Outcomes shown on the result screen for order ``trans_no``."""
        with self._cond:
            return [
                s.result.outcome
                for s in self.screens
                if s.result is not None and s.order is not None and s.order.trans_no == trans_no
            ]

    def close(self) -> None:
        assert self._main_task is not None
        self._loop.call_soon_threadsafe(self._main_task.cancel)
        self._thread.join(timeout=10)
        if self._thread.is_alive():
            raise AssertionError("bridge client thread did not stop")
        self._loop.close()


@dataclass(frozen=True)
class Order:
    merchant_order_no: str
    trans_no: str
    message_id: str
    terminal_online: bool  # ``terminal_online_status`` in the create's answer


@dataclass(frozen=True)
class Settled:
    """A final order as the POS, the terminal and the gateway see it."""

    info: OrderInfo
    phase: str
    charges: list[sqlite3.Row]


@dataclass
class Terminal:
    """Readers + agent for one provisioned terminal SN."""

    sandbox: SandboxHandle
    sn: str
    workdir: Path
    readers: tuple[str, ...] = ("nfc", "msr", "scan")
    nfc_args: tuple[str, ...] = ("--card", "visa")
    gateway_timeout: float = 2.0
    resolve_deadline: float = 5.0
    # Broker nodes in the order the agent tries them (a cluster: the first is
    # the one it uses; the rest are mqtt.fallback_urls). None: the sandbox's.
    mqtt_urls: tuple[str, ...] | None = None
    # A simulated ESC/POS printer (``sadad-reader-sim printer``): its receipts
    # are appended to ``receipts_path``; ``printer_sim.send("paper-out")``.
    printer: bool = False
    printer_sim: Sim | None = None
    sims: dict[str, Sim] = field(default_factory=dict)
    agent: subprocess.Popen[bytes] | None = None
    watcher: ScreenWatcher | None = None
    orders: list[Order] = field(default_factory=list)
    config: Path = field(init=False)
    pos: PosClient = field(init=False)

    def __post_init__(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        kinds = {
            "nfc": ("nfc", "pn532:{}", self.nfc_args),
            "msr": ("magstripe", "magstripe:{}", ()),
            "scan": ("scanner", "scanner:{};model=honeywell", ("--model", "honeywell")),
        }
        specs = {}
        # Start the simulators together (each is a Python start-up), then wait.
        for name in self.readers:
            kind, spec, args = kinds[name]
            link = self.workdir / f"{name}.tty"
            self.sims[name] = Sim(kind, link, self.workdir / f"{name}.log", *args)
            specs[name] = spec.format(link)
        printer = None
        if self.printer:
            link = self.workdir / "printer.tty"
            out = ("--out", str(self.receipts_path))
            self.printer_sim = Sim("printer", link, self.workdir / "printer.log", *out)
            printer = f"escpos:{link}"
        try:  # a failure anywhere here must not leave the simulators running
            self.config = self.sandbox.provision(self.sn, specs, printer=printer)
            for sim in self._all_sims():
                sim.wait_ready()
            doc = tomlkit.parse(self.config.read_text())
            gateway = doc["gateway"]
            assert isinstance(gateway, tomlkit.items.Table)
            gateway["timeout"] = self.gateway_timeout
            gateway["resolve_deadline"] = self.resolve_deadline
            if self.mqtt_urls:
                mqtt = doc["mqtt"]
                assert isinstance(mqtt, tomlkit.items.Table)
                mqtt["url"] = self.mqtt_urls[0]
                if self.mqtt_urls[1:]:
                    mqtt["fallback_urls"] = list(self.mqtt_urls[1:])
            self.config.write_text(tomlkit.dumps(doc))
            self.pos = PosClient(load_config(self.sandbox.pos_config))
        except BaseException:
            for sim in self._all_sims():
                sim.stop()
            raise

    def _all_sims(self) -> list[Sim]:
        return [*self.sims.values(), *([self.printer_sim] if self.printer_sim else [])]

    @property
    def receipts_path(self) -> Path:
        return self.workdir / "receipts.txt"

    def receipts(self) -> list[str]:
        """The receipts the simulated printer printed, as text, in order."""
        from drivers.sim.printer import SEPARATOR

        try:
            text = self.receipts_path.read_text("utf-8")
        except FileNotFoundError:
            return []
        return [r.strip("\n") for r in text.split(SEPARATOR + "\n") if r.strip()]

    # ------------------------------------------------------------ paths

    @property
    def socket(self) -> Path:
        return self.config.parent / "agent.sock"

    @property
    def journal_path(self) -> Path:
        return self.config.parent / "journal.db"

    @property
    def log_path(self) -> Path:
        return self.workdir / "agent.log"

    def broker_node(self) -> str:
        """The broker URL the agent last connected to (from its log)."""
        found = re.findall(r"connected to (mqtts?://[^ ]+) as ", self.log_text())
        assert found, "the agent never connected"
        return str(found[-1])

    def log_text(self) -> str:
        return self.log_path.read_text("utf-8", errors="replace") if self.log_path.exists() else ""

    # ------------------------------------------------------------ the agent process

    def start_agent(
        self,
        *,
        watch: bool = True,
        crash_at: str | None = None,
        fail_at: str | None = None,
        ready: bool = True,
        connected: float | None = None,
    ) -> None:
        """Run the agent until it says ready (``ready=False``: just start it);
        ``crash_at`` makes it SIGKILL itself at that step
        (``agent.faults.crash_point``), ``fail_at`` raise there once
        (``agent.faults.fail_point``). ``connected``: then wait up to that
        many seconds for its MQTT link to connect (SUBACK granted: from then
        on the broker keeps the pushes for its session). "Ready" comes after
        the first attempt, connected or not; a push published before the
        first subscription of a new session is lost, as MQTT has it."""
        said_ready = f"agent {self.sn} ready ("
        said_connected = "mqtt: connected ("
        log_before = self.log_text()
        before = log_before.count(said_ready)
        connected_before = log_before.count(said_connected)
        env = dict(os.environ, **unit_environment())
        env.pop("SADAD_AGENT_CRASH_AT", None)
        env.pop("SADAD_AGENT_FAIL_AT", None)
        if crash_at:
            env["SADAD_AGENT_CRASH_AT"] = crash_at
        if fail_at:
            env["SADAD_AGENT_FAIL_AT"] = fail_at
        with self.log_path.open("ab") as log:
            self.agent = subprocess.Popen(
                [sys.executable, "-m", "agent.cli", "run", "--config", str(self.config)],
                cwd=REPO,
                env=env,
                stdout=log,
                stderr=log,
                stdin=subprocess.DEVNULL,
            )
        agent = self.agent
        if not ready:
            return

        def said_so() -> bool:
            if agent.poll() is not None:
                raise AssertionError(f"agent exited {agent.returncode}:\n{self.log_text()[-3000:]}")
            return self.log_text().count(said_ready) > before

        until(said_so, timeout=30)
        if connected is not None:

            def link_up() -> bool:
                if agent.poll() is not None:
                    raise AssertionError(f"agent exited {agent.returncode}")
                return self.log_text().count(said_connected) > connected_before

            until(link_up, timeout=connected)
        if watch and self.watcher is None:
            self.watcher = ScreenWatcher(self.socket)

    def _drop_watcher(self) -> None:
        if self.watcher is not None:
            self.watcher.close()
            self.watcher = None

    def kill_agent(self) -> None:
        """SIGKILL, as a power cut would."""
        assert self.agent is not None
        if self.agent.poll() is None:
            self.agent.send_signal(signal.SIGKILL)
        self.agent.wait(timeout=10)
        self.agent = None
        self._drop_watcher()

    def wait_agent_died(self, timeout: float = 20.0) -> int:
        """The agent ended by itself (a crash point); returns its exit status."""
        assert self.agent is not None
        code = self.agent.wait(timeout=timeout)
        self.agent = None
        self._drop_watcher()
        return code

    def stop_agent(self) -> int:
        """SIGTERM: the clean stop (the MQTT session is kept)."""
        assert self.agent is not None
        self.agent.terminate()
        code = self.agent.wait(timeout=30)
        self.agent = None
        self._drop_watcher()
        return code

    @property
    def screens(self) -> ScreenWatcher:
        assert self.watcher is not None, "no bridge client: is the agent running?"
        return self.watcher

    def present(self, sim: str, command: str, order: Order) -> bp.ScreenEvent:
        """Present a card or code until the checkout reads it for ``order``."""

        def reading(screen: bp.ScreenEvent) -> bool:
            return screen.screen.value == "READING" and (
                screen.order is not None and screen.order.trans_no == order.trans_no
            )

        return self.present_until(sim, command, reading)

    def present_until(
        self, sim: str, command: str, shown: Callable[[bp.ScreenEvent], bool]
    ) -> bp.ScreenEvent:
        """Send ``command`` to reader ``sim`` until the checkout shows a screen for
        which ``shown`` holds; returns that screen.

        A tap waits in the field until the reader polls, but a swipe or a scan
        made before the driver armed its reader is discarded (as on the real
        devices), so those are repeated, as a customer would."""
        if sim == "nfc":
            mark = self.screens.mark()
            self.sims[sim].send(command)
            return self.screens.wait_for(shown, after=mark, timeout=15)

        def attempt() -> bp.ScreenEvent | None:
            mark = self.screens.mark()
            self.sims[sim].send(command)
            try:
                return self.screens.wait_for(shown, after=mark, timeout=0.5)
            except AssertionError:
                return None  # made before the reader was armed: discarded

        return until(attempt, f"{sim}: {command!r} to take effect", timeout=15, interval=0)

    # ------------------------------------------------------------ the POS side

    def push(self, amount: str = "12.30", **fields: Any) -> Order:
        """``wisehub.cloud.pay.order`` to this terminal (QAR)."""
        order_no: str = fields.pop("merchant_order_no", "O" + uuid.uuid4().hex[:12])
        result = self.pos.push_order(
            terminal_sn=self.sn,
            merchant_order_no=order_no,
            price_currency="QAR",
            order_amount=Decimal(amount),
            **fields,
        )
        online = result.terminal_online_status is OnlineStatus.ONLINE
        order = Order(order_no, result.trans_no, result.message_id, online)
        self.orders.append(order)
        return order

    def gateway_status(self, order: Order) -> int:
        return self.gateway_status_of(order.trans_no)

    def gateway_status_of(self, trans_no: str) -> int:
        """``trans_status`` in the sandbox's database (readable while it is down)."""
        (row,) = self.sandbox.query("SELECT trans_status FROM orders WHERE trans_no=?", trans_no)
        return int(row["trans_status"])

    def wait_gateway_final(self, order: Order, timeout: float = 30.0) -> int:
        def final() -> int | None:
            status = self.gateway_status(order)
            return status if status in (1, 2, 3) else None

        return int(until(final, timeout=timeout, interval=0.05))

    # ------------------------------------------------------------ the terminal's journal

    def journal_row(self, trans_no: str) -> dict[str, Any] | None:
        """The journal's row for ``trans_no`` (read-only, beside the running agent)."""
        db = sqlite3.connect(f"file:{self.journal_path}?mode=ro", uri=True, timeout=10)
        try:
            db.row_factory = sqlite3.Row
            row = db.execute("SELECT * FROM transactions WHERE trans_no=?", (trans_no,)).fetchone()
        finally:
            db.close()
        return None if row is None else dict(row)

    def journal_count(self, sql: str, *args: Any) -> int:
        db = sqlite3.connect(f"file:{self.journal_path}?mode=ro", uri=True, timeout=10)
        try:
            return int(db.execute(sql, args).fetchone()[0])
        finally:
            db.close()

    def journal_phase(self, trans_no: str) -> str | None:
        row = self.journal_row(trans_no)
        return None if row is None else str(row["phase"])

    def wait_journal_final(self, trans_no: str, timeout: float = 30.0) -> str:
        def final() -> str | None:
            row = self.journal_row(trans_no)
            return str(row["phase"]) if row is not None and row["final"] else None

        return str(until(final, timeout=timeout, interval=0.05))

    # ------------------------------------------------------------ the gateway's books

    def charges(self, trans_no: str) -> list[sqlite3.Row]:
        """Every acquirer approval for ``trans_no``, reversed or not."""
        return self.sandbox.query("SELECT * FROM charges WHERE trans_no=?", trans_no)

    def events(self, **where: str) -> list[sqlite3.Row]:
        """Verified terminal events the gateway received from this terminal."""
        sql = "SELECT * FROM events WHERE terminal_sn=?"
        args: list[Any] = [self.sn]
        for key, value in where.items():
            sql += f" AND {key}=?"
            args.append(value)
        return self.sandbox.query(sql + " ORDER BY id", *args)

    # ------------------------------------------------------------ the end of every test

    def settled(self, order: Order, timeout: float = 30.0) -> Settled:
        """Wait until ``order`` is final at the gateway and in the journal; check
        that ``order.query`` says the same as the journal, that the gateway
        charged at most once (and kept a charge only for a paid order), and
        that the checkout showed the journal's outcome (when a bridge client
        watched)."""
        self.wait_gateway_final(order, timeout)
        phase = self.wait_journal_final(order.trans_no, timeout)
        info = self.pos.query_order(order.merchant_order_no)
        assert info.trans_status is PHASE_STATUS[phase], (order, phase, info.trans_status)
        charges = self.charges(order.trans_no)
        assert len(charges) <= 1, f"charged {len(charges)} times: {order}"
        kept = [c for c in charges if not c["reversed"]]
        if info.trans_status is TransStatus.COMPLETED:
            assert len(kept) == 1, order
            assert Decimal(kept[0]["amount"]) == info.trans_amount
        else:
            assert kept == [], f"{order} is {info.trans_status} but a charge stands"
        if self.watcher is not None:  # what the checkout showed, if it saw the end
            assert set(self.watcher.results(order.trans_no)) <= {PHASE_OUTCOME[phase]}
        return Settled(info, phase, charges)

    def assert_all_settled(self) -> None:
        """Every order this test pushed is final and consistent; the gateway saw
        no terminal event or call that contradicts a final status."""
        for order in self.orders:
            self.settled(order)
        alarms = [
            line
            for line in self.sandbox.stderr_text().splitlines()
            if "!!!" in line and self.sn in line
        ]
        assert alarms == []

    def wait_outcome(self, order: Order, outcome: str, timeout: float = 15.0) -> None:
        """The checkout showed ``outcome`` for ``order`` (and nothing else)."""
        until(lambda: self.screens.results(order.trans_no), timeout=timeout)
        assert set(self.screens.results(order.trans_no)) == {outcome}

    def wait_idle(self, timeout: float = 15.0) -> None:
        """Back to IDLE (after the result has been shown ``RESULT_SECONDS``)."""
        until(
            lambda: self.screens.screens and self.screens.screens[-1].screen.value == "IDLE",
            timeout=timeout,
        )

    # ------------------------------------------------------------ teardown

    def close(self) -> None:
        self._drop_watcher()
        if self.agent is not None and self.agent.poll() is None:
            self.agent.terminate()
            try:
                self.agent.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.agent.kill()
                self.agent.wait()
        for sim in self._all_sims():
            sim.stop()
        self.pos.close()


@contextlib.contextmanager
def running_terminal(
    sandbox: SandboxHandle, prefix: str, workdir: Path, **options: Any
) -> Iterator[Terminal]:
    """A new terminal (unique SN starting with ``prefix``) with its agent running."""
    term = Terminal(sandbox, prefix + uuid.uuid4().hex[:10].upper(), workdir, **options)
    try:
        term.start_agent()
        yield term
    finally:
        term.close()


def scan_for_card_data(*paths: Path) -> list[str]:
    """Which ``SECRETS`` occur in the raw bytes of ``paths`` (file: first digits)."""
    found = []
    for path in paths:
        if not path.exists():
            continue
        data = path.read_bytes()
        for secret in SECRETS:
            if secret.encode() in data:
                found.append(f"{path.name}: {secret[:7]}...")
    return found
