"""The checkout (``ui/``) on the real agent: a POS push wakes it, the cashier
confirms and the sale completes; killing the UI process mid-payment or in
setup changes nothing the agent does.

Real processes throughout (``agent_rig``): Mosquitto, the sandbox, reader
simulators on ptys and ``sadad-agent run``. The first test runs the Textual app
in this process (``App.run_test``) on the agent's socket; the rig's blocking
helpers go through ``asyncio.to_thread`` so Textual's loop keeps running. The
others run ``sadad-ui`` as a process on a pseudo-terminal of its own
(``UiProcess``), read what it draws from the pty and type keys into it.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import pty
import re
import signal
import struct
import subprocess
import sys
import termios
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import tomlkit

from agent.technician import hash_pin
from cloud.messages import TransStatus
from tests.integration.agent_rig import Terminal
from tests.integration.conftest import REPO, SandboxHandle
from tests.ui.conftest import screen_text
from tests.waiting import async_until, until
from ui.app import CheckoutApp, build_app
from ui.widgets.amount import Amount

pytestmark = pytest.mark.timeout(90)

PIN = "135790"
MASKED_VISA = "476173******0010"  # the simulated contactless Visa
IDLE = "Ready for the next order"
F2 = "\x1bOQ"
ENTER = "\r"


@pytest.fixture(scope="module")
def term(
    module_sandbox: SandboxHandle, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Terminal]:
    """One terminal for the module (each test waits for IDLE first), with a
    technician PIN so setup can be unlocked."""
    t = Terminal(module_sandbox, "U" + os.urandom(5).hex().upper(), tmp_path_factory.mktemp("ui"))
    try:
        (t.config.parent / "technician.pin").write_text(hash_pin(PIN) + "\n")
        doc = tomlkit.parse(t.config.read_text())
        terminal = doc["terminal"]
        assert isinstance(terminal, tomlkit.items.Table)
        terminal["technician_pin_file"] = "technician.pin"
        t.config.write_text(tomlkit.dumps(doc))
        t.start_agent()
        yield t
    finally:
        t.close()


def wait_idle(term: Terminal) -> None:
    """The checkout is idle (no screen published yet counts: the agent starts idle)."""
    screens = term.screens.screens
    until(lambda: not screens or screens[-1].screen.value == "IDLE", timeout=15)


def tms_screen(term: Terminal) -> str | None:
    """The screen in the terminal's last status as the TMS (sandbox) received it."""
    rows = term.sandbox.query("SELECT payload FROM terminal_status WHERE sn=?", term.sn)
    return json.loads(rows[0]["payload"]).get("screen") if rows else None


# ---------------------------------------------------------------- the app in this process


async def shows(pilot: Any, app: CheckoutApp, *texts: str, timeout: float = 15.0) -> str:
    """Wait until the app's screen holds every one of ``texts``; returns the screen."""

    def shown() -> str | None:
        text = screen_text(app)
        return text if all(t in text for t in texts) else None

    return await async_until(shown, repr(texts), timeout=timeout, interval=0.05, sleep=pilot.pause)


async def test_push_wakes_the_ui_and_the_sale_completes(term: Terminal) -> None:
    """Idle, then the pushed order (amount, currency, order number), confirmed
    by Enter, a card tapped, approved with the masked card on screen; the POS
    sees the order completed (trans_status 2)."""
    await asyncio.to_thread(wait_idle, term)
    app = build_app(["--socket", str(term.socket)])
    async with app.run_test(size=(80, 24)) as pilot:
        idle = await shows(pilot, app, IDLE, f"[{term.sn}]", "TMS (MQTT) ", "Reader nfc ")
        assert re.search(r"TMS \(MQTT\) +connected", idle)
        assert re.search(r"Reader nfc +ready", idle)

        order = await asyncio.to_thread(
            term.push, "1234.50", confirm_on_terminal=True, description="2 coffees"
        )
        text = await shows(pilot, app, f"Order {order.merchant_order_no}", "press Enter to confirm")
        assert "2 coffees" in text
        assert "QAR" in text
        amount = app.screen.query_one("#amount", Amount)
        assert (amount.amount, amount.currency) == ("1234.50", "QAR")

        await pilot.press("enter")
        await shows(pilot, app, "Tap, swipe or scan")
        await asyncio.to_thread(term.present, "nfc", "present visa", order)
        text = await shows(pilot, app, "APPROVED", f"Card {MASKED_VISA}")

        done = await asyncio.to_thread(term.settled, order)
        assert done.phase == "APPROVED"
        assert done.info.trans_status is TransStatus.COMPLETED  # trans_status 2
        assert f"Auth code {done.info.auth_code}" in text
        assert f"Order {order.merchant_order_no}" in text


# ---------------------------------------------------------------- sadad-ui as a process

_ESCAPES = re.compile(
    r"\x1b\[[0-9;?<>=$]*[ -/]*[@-~]"  # CSI
    r"|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)"  # OSC
    r"|\x1b[PX^_].*?\x1b\\"  # DCS and the like
    r"|\x1b[()][0-9A-Za-z]|\x1b[=>78]",
    re.DOTALL,
)


class UiProcess:
    """``sadad-ui --socket`` on a pseudo-terminal of its own (80x24, xterm).

    Everything it draws is kept; ``text`` is that with the escape sequences
    removed, so a line Textual draws reads as plain text. ``type`` writes
    keys to it as a keyboard would."""

    def __init__(self, term: Terminal) -> None:
        master, slave = pty.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
        env = dict(os.environ, TERM="xterm-256color", COLUMNS="80", LINES="24")
        self.master = master
        self._out = bytearray()
        self._lock = threading.Lock()
        try:
            self.proc = subprocess.Popen(
                [
                    str(Path(sys.executable).with_name("sadad-ui")),
                    *("--socket", str(term.socket)),
                ],
                cwd=REPO,
                env=env,
                stdin=slave,
                stdout=slave,
                stderr=slave,  # Textual draws on stderr
                start_new_session=True,  # out of the test's process group and its signals
            )
        except BaseException:
            os.close(master)
            raise
        finally:
            os.close(slave)
        self._reader = threading.Thread(target=self._read, daemon=True, name="ui-pty")
        self._reader.start()

    def _read(self) -> None:
        while True:
            try:
                data = os.read(self.master, 65536)
            except OSError:  # EIO: the process and its pty are gone
                return
            if not data:
                return
            with self._lock:
                self._out += data

    def text(self) -> str:
        with self._lock:
            raw = bytes(self._out)
        return _ESCAPES.sub("", raw.decode("utf-8", errors="replace"))

    def wait_for(self, drawn: Callable[[str], bool], what: str, timeout: float = 20.0) -> str:
        """Wait until ``drawn(text)`` holds; returns the text."""

        def check() -> str | None:
            if self.proc.poll() is not None:
                raise AssertionError(f"sadad-ui exited {self.proc.returncode}:\n{self.text()}")
            shown = self.text()
            return shown if drawn(shown) else None

        try:
            return str(until(check, timeout=timeout, interval=0.05))
        except AssertionError as exc:
            raise AssertionError(f"{exc}: {what} not drawn; last:\n{self.text()[-3000:]}") from None

    def wait_shows(self, *texts: str) -> str:
        """Wait until every one of ``texts`` was drawn."""
        return self.wait_for(lambda shown: all(t in shown for t in texts), repr(texts))

    def type(self, keys: str) -> None:
        os.write(self.master, keys.encode())

    def kill(self) -> None:
        """SIGKILL, as a crash would: no leave_setup, no goodbye."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)
        self._reader.join(timeout=5)
        with contextlib.suppress(OSError):
            os.close(self.master)


@pytest.fixture
def start_ui(term: Terminal) -> Iterator[Callable[[], UiProcess]]:
    """``start_ui()``: a new ``sadad-ui`` on the terminal; all killed at teardown."""
    started: list[UiProcess] = []

    def start() -> UiProcess:
        ui = UiProcess(term)
        started.append(ui)
        return ui

    try:
        yield start
    finally:
        for ui in started:
            ui.kill()


def test_killing_the_ui_mid_payment_changes_nothing(
    term: Terminal, start_ui: Callable[[], UiProcess]
) -> None:
    """The UI is SIGKILLed while the order waits for the cashier, and again
    while the card is being paid. Each new UI shows the agent's state at once
    (the order, then its end); the sale ends as it would have: approved in the
    journal, charged once, completed at the POS."""
    wait_idle(term)
    order = term.push("12.40", confirm_on_terminal=True, description="3 teas")
    first = start_ui()
    first.wait_shows(f"Order {order.merchant_order_no}", "press Enter to confirm")
    first.kill()

    # The order still waits: a new UI shows it again, and its Enter confirms it.
    second = start_ui()
    second.wait_shows(f"Order {order.merchant_order_no}", "press Enter to confirm", "3 teas")
    mark = term.screens.mark()
    second.type(ENTER)
    term.screens.wait_screen("WAITING_FOR_CARD", order.trans_no, after=mark)
    second.wait_shows("Tap, swipe or scan")

    term.present("nfc", "present visa", order)  # the card is read: the payment is on
    second.kill()
    third = start_ui()

    done = term.settled(order)
    assert (done.phase, done.info.trans_status) == ("APPROVED", TransStatus.COMPLETED)
    assert len(done.charges) == 1
    assert term.journal_count("SELECT COUNT(*) FROM transactions WHERE final=0") == 0
    # The third UI came up while the card was paid or after: it follows the
    # agent to the approval with the masked card, or shows idle if the result
    # was over when it connected; it never shows another outcome.
    approved = f"Card {MASKED_VISA}"
    shown = third.wait_for(lambda t: approved in t or IDLE in t, "the approval or idle")
    assert approved in shown or "APPROVED" not in shown
    for other in ("DECLINED", "CANCELLED", "NOT COMPLETED", "EXPIRED"):
        assert other not in shown
    term.assert_all_settled()


def test_ui_killed_in_setup_leaves_the_terminal_in_service(
    term: Terminal, start_ui: Callable[[], UiProcess]
) -> None:
    """A UI killed in the setup screen (PIN entered) sends no leave_setup: the
    agent drops SETUP when that client goes, tells the TMS, and takes orders."""
    ui = start_ui()
    wait_idle(term)
    ui.wait_shows(IDLE)
    ui.type(F2)
    ui.wait_shows("Enter the technician PIN")
    ui.type(PIN + ENTER)  # at once, maybe before setup has read the PIN: not lost
    ui.wait_shows("Test connection")
    until(lambda: term.screens.request("status").data["screen"] == "SETUP", timeout=10)
    until(lambda: tms_screen(term) == "SETUP", timeout=10)
    ui.kill()

    until(lambda: term.screens.request("status").data["screen"] == "IDLE", timeout=10)
    until(lambda: tms_screen(term) == "IDLE", timeout=10)
    order = term.push("12.60")
    term.screens.wait_screen("WAITING_FOR_CARD", order.trans_no)
    term.present("nfc", "present visa", order)
    done = term.settled(order)
    assert (done.phase, done.info.trans_status) == ("APPROVED", TransStatus.COMPLETED)
