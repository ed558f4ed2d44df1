"""The UI's simulated peer: the real ``BridgeServer`` driven by a scripted agent.

``ScriptedAgent`` answers ``hello`` with a terminal and the server's
snapshot, records every intent, and answers each from ``replies`` (a dict
per intent name, or a callable, or an exception to raise), so tests publish
ScreenEvents like the engine would and check what the UI sent back.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import msgspec
import pytest

from agent import bridge_protocol as bp
from agent.bridge import BridgeServer, intent_client
from agent.bridge_client import BridgeClient
from agent.bridge_replies import HistoryEntry, HistoryReply, Refused, ReplyData, SetupModeReply
from agent.config import ConfigError, load_config
from agent.journal import Journal
from agent.setup_access import LOCKED as SETUP_LOCKED
from agent.setup_access import SetupAccess
from agent.technician import hash_pin
from cloud.messages import Screen
from cloud.signing import generate_key_pem
from tests.waiting import async_until
from ui.app import CheckoutApp

NOW = 1_800_000_000_000  # the frozen clock (ms): 2027-01-15 08:00:00 UTC

ORDER = bp.OrderInfo(
    trans_no="TR20250101000001",
    merchant_order_no="A-1001",
    amount="1234.50",
    currency="QAR",
    description="2 coffees, 1 croissant",
    expires_at=NOW + 95_000,
    confirm_required=True,
)

Reply = dict[str, Any] | Callable[[bp.Intent], dict[str, Any]] | Exception


READERS: dict[str, bp.ReaderState] = {"nfc": "ready", "msr": "ready", "scanner": "ready"}


class ScriptedAgent:
    """A BridgeServer on a Unix socket with a scripted agent behind it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.intents: list[bp.Intent] = []
        self.replies: dict[str, Reply] = {}
        self.server = BridgeServer(
            str(path), hello=self.hello, on_intent=self.on_intent, on_disconnect=self._gone
        )
        self.journal = Journal(path.with_name("journal.db"))
        self.setup = SetupAccess(self.journal)

    def _gone(self, client: str) -> None:
        self.setup.leave(client)

    def hello(self) -> bp.HelloEvent:
        return bp.HelloEvent(
            terminal=bp.TerminalInfo(sn="T0001", store_name="Demo Coffee"),
            snapshot=self.server.snapshot(),
        )

    async def on_intent(self, intent: bp.Intent) -> ReplyData | dict[str, Any]:
        self.intents.append(intent)
        name = str(type(intent).__struct_config__.tag)
        reply = self.replies.get(name)
        if reply is None and name in SETUP_INTENTS:
            return await self._setup(intent)
        if reply is None:
            reply = {"accepted": True}
        if isinstance(reply, Exception):
            raise reply
        return reply(intent) if callable(reply) else reply

    async def _setup(self, intent: bp.Intent) -> ReplyData:
        """Setup as the real agent does it (``agent.setup_access``, a real
        journal), for the agent.toml beside the socket."""
        client = intent_client() or ""
        try:
            cfg = load_config(self.path.with_name("agent.toml"))
        except ConfigError as exc:
            return Refused(reason=f"the config does not load: {exc}")
        if isinstance(intent, bp.UnlockSetupIntent):
            return await self.setup.unlock(cfg, client, intent.pin)
        if isinstance(intent, bp.LeaveSetupIntent):
            self.setup.leave(client)
            return SetupModeReply(setup=False)
        if not self.setup.unlocked(client):
            return SETUP_LOCKED
        if isinstance(intent, bp.ReadSetupIntent):
            return self.setup.read(cfg)
        assert isinstance(intent, bp.SaveSetupIntent)
        saved = await self.setup.save(cfg, intent)
        if not saved.ok:
            return saved
        reload = self.replies.get("reload", {"ok": True, "reason": "reloaded"})
        assert isinstance(reload, dict)
        return msgspec.structs.replace(saved, reloaded=reload["ok"], reason=reload["reason"])

    def names(self) -> list[str]:
        return [str(type(i).__struct_config__.tag) for i in self.intents]

    def publish(self, event: Any) -> None:
        self.server.publish(event)

    def show(self, screen: Screen, **fields: Any) -> None:
        self.publish(bp.ScreenEvent(screen=screen, **fields))

    async def start(self, *, healthy: bool = True) -> None:
        await self.server.start()
        if healthy:
            self.publish(bp.ConnectionEvent(mqtt="connected", gateway="ok"))
            # The demo's three readers: the status bar must fit them at 80 columns.
            self.publish(bp.ReadersEvent(readers=READERS))
            self.show(Screen.IDLE)


@pytest.fixture
async def agent(tmp_path: Path) -> AsyncIterator[ScriptedAgent]:
    a = ScriptedAgent(tmp_path / "agent.sock")
    await a.start()
    yield a
    await a.server.close()
    a.journal.close()


def make_app(
    socket: Path, config: Path | None = None, *, clock: int = NOW, **kwargs: Any
) -> CheckoutApp:
    """The app with a fast-reconnecting client and a frozen clock. ``config``
    is the agent's (the scripted agent serves setup from the agent.toml beside
    its socket; the UI never reads it)."""
    assert config is None or config.parent == socket.parent
    client = BridgeClient(str(socket), backoff_initial=0.02, backoff_max=0.1)
    return CheckoutApp(str(socket), client, clock=lambda: clock, **kwargs)


async def until(pilot: Any, cond: Callable[[], object], what: str = "the screen") -> None:
    """``tests.waiting.async_until`` that lets the app run between checks:
    ``pilot.pause`` (waits for the screen, then sleeps, then fires due timers)
    instead of a bare ``asyncio.sleep``, so what ``cond`` reads (the rendered
    screen, the app's view) has been brought up to date before each check."""
    await async_until(cond, f"{what} to change", interval=0.02, sleep=pilot.pause)


def screen_text(app: CheckoutApp) -> str:
    """What the terminal shows, as plain text."""
    return "\n".join(strip.text for strip in app.screen._compositor.render_strips())


# ---------------------------------------------------------------- config files

PIN = "246810"
SETUP_INTENTS = ("unlock_setup", "read_setup", "save_setup", "leave_setup")


@functools.cache
def _hash(pin: str) -> str:
    return hash_pin(pin)  # scrypt: made once per PIN for the whole run


def write_config(directory: Path, *, pin: str | None = PIN) -> Path:
    """An agent.toml like systemd/agent.toml.example (comments and all), with
    real key files, TLS files and a technician PIN file beside it."""
    private, public = generate_key_pem()
    (directory / "terminal_private.pem").write_text(private)
    (directory / "gateway_public.pem").write_text(public)
    for name in ("ca.pem", "terminal.crt", "terminal.key"):
        (directory / name).write_text("-----BEGIN CERTIFICATE-----\n")
    pin_line = '# technician_pin_file = "technician.pin"    # the setup PIN\'s hash'
    if pin is not None:
        (directory / "technician.pin").write_text(_hash(pin) + "\n")
        pin_line = 'technician_pin_file = "technician.pin"    # the setup PIN\'s hash'
    text = CONFIG_TEMPLATE.replace("@PIN@", pin_line)
    path = directory / "agent.toml"
    path.write_text(text)
    path.chmod(0o640)
    return path


CONFIG_TEMPLATE = """\
# sadad-agent configuration (/etc/sadad-agent/agent.toml).
#
# Unknown keys are errors. Paths that are not absolute are relative to the
# directory of this file.

[terminal]
sn = "T0001"                          # terminal serial number: the MQTT client id
app_id = "T0001"                      # the app_id the gateway issued to this terminal
store_name = "Demo Coffee"            # shown on the checkout screen
private_key_file = "terminal_private.pem"   # RSA-2048; signs cashier calls and events
@PIN@

[mqtt]
url = "mqtts://tms.example.com:8883"  # mqtt://HOST[:PORT] or mqtts://HOST[:PORT] (TLS, 8883)
keepalive = 30                        # seconds, 5..3600; the broker sends the will
                                      # ("offline") within 1.5 keepalives of a silent loss
ca_file = "ca.pem"                    # TLS: CA that signed the broker's certificate
# cert_file = "terminal.crt"          # TLS client certificate (one per terminal)
# key_file = "terminal.key"           # its private key

[gateway]
url = "https://gateway.example.com"   # SadadSystem; cashier calls go to /api/cashier/entry
public_key_file = "gateway_public.pem"   # verifies pushes and answers

[journal]
path = "/var/lib/sadad-agent/journal.db"

[ui]
socket = "/run/sadad-agent/agent.sock"   # the checkout screen connects here

[readers]
# NAME = "KIND:PORT[;key=value...]"; KIND is pn532, magstripe or scanner
nfc = "pn532:/dev/sadad-nfc"          # the contactless reader
qr = "scanner:/dev/sadad-qr"
"""


# ---------------------------------------------------------------- history


def history_entry(minutes_ago: int, **fields: Any) -> HistoryEntry:
    """A journal row as the agent sends it, made `minutes_ago` before NOW."""
    base: dict[str, Any] = {
        "trans_no": f"2027011508{60 - minutes_ago:02d}00{minutes_ago:06d}",
        "merchant_order_no": f"A-{1000 + minutes_ago}",
        "at_ms": NOW - minutes_ago * 60_000,
        "amount": "12.50 QAR",
        "status": "APPROVED",
        "masked_pan": "476173******0010",
        "brand": "Visa",
        "entry_mode": "CONTACTLESS",
        "auth_code": "635072",
        "reference": "RRN000123",
        "receipt": True,
    }
    base.update(fields)
    return HistoryEntry(**base)


HISTORY = HistoryReply(
    entries=(
        history_entry(2, amount="1,234.50 QAR"),
        history_entry(
            9, status="DECLINED", reason="Insufficient funds", auth_code="", amount="88.00 QAR"
        ),
        history_entry(15, status="CANCELLED", reason="cancelled by the cashier", auth_code=""),
        history_entry(21, brand="WeChatPay", masked_pan="", entry_mode="WALLET", amount="7.25 QAR"),
        history_entry(34, trans_type="refund", amount="3.00 QAR"),
        history_entry(40, status="EXPIRED", masked_pan="", brand="", entry_mode="", receipt=False),
        history_entry(55, merchant_order_no="X" * 200, amount="999,999.99 QAR"),
        history_entry(60 * 26, amount="15.00 QAR"),  # yesterday: its date shows
    )
)


async def drain(seconds: float = 0.05) -> None:
    await asyncio.sleep(seconds)
