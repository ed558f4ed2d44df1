"""Setup belongs to the UI that entered it: ``AgentService`` on its real
``BridgeServer``, UIs as raw socket clients. A UI killed in setup sends no
``leave_setup``; the terminal must not report SETUP after it is gone."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from agent import setup_records
from agent.bridge_protocol import (
    EnterSetupIntent,
    HelloEvent,
    Intent,
    LeaveSetupIntent,
    LineDecoder,
    ReadSetupIntent,
    Reply,
    UnlockSetupIntent,
    encode_line,
)
from agent.bridge_replies import UnlockReply, reply_data
from agent.config import AgentConfig, GatewayConfig, MqttConfig, TerminalConfig, UiConfig
from agent.engine import Engine
from agent.engine_settings import EngineSettings
from agent.journal import Journal
from agent.service import AgentService
from agent.setup_access import SetupAccess
from agent.technician import hash_pin
from tests.agent.simpeers import GW_PUBLIC, SN, TERM_PRIVATE, SimGateway
from tests.waiting import async_until


class Ui:
    """A UI on the agent's socket: reads its hello, sends intents, hangs up."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.decoder = LineDecoder.for_events()
        self.inbox: list[object] = []

    @classmethod
    async def open(cls, path: Path) -> Ui:
        ui = cls(*await asyncio.open_unix_connection(str(path)))
        assert isinstance(await ui.next(), HelloEvent)
        return ui

    async def next(self) -> object:
        async with asyncio.timeout(5):
            while not self.inbox:
                data = await self.reader.read(65536)
                assert data, "the agent hung up"
                self.inbox += self.decoder.feed(data)
        return self.inbox.pop(0)

    async def ask(self, intent: Intent) -> Reply:
        self.writer.write(encode_line(intent))
        await self.writer.drain()
        while not isinstance(item := await self.next(), Reply):
            pass
        assert item.ok, item
        return item

    def kill(self) -> None:
        self.writer.transport.abort()


@pytest.fixture
async def service(tmp_path: Path) -> AsyncIterator[AgentService]:
    cfg = AgentConfig(
        terminal=TerminalConfig(sn=SN, app_id=SN, private_key_file=tmp_path / "k.pem"),
        mqtt=MqttConfig(url="mqtt://127.0.0.1:1"),
        gateway=GatewayConfig(url="http://gw.test", public_key_file=tmp_path / "gw.pem"),
        ui=UiConfig(socket=tmp_path / "agent.sock"),
    )
    svc = AgentService(cfg)
    settings = EngineSettings(sn=SN, private_key=TERM_PRIVATE, gateway_public_key=GW_PUBLIC)
    journal = Journal(tmp_path / "journal.db")
    svc.engine = Engine(settings, journal, SimGateway().client(), [])
    svc.journal = journal
    svc.setup = SetupAccess(journal)
    svc.bridge = svc._build_bridge()
    await svc.bridge.start()
    yield svc
    await svc.bridge.close()
    journal.close()


async def wait_for_screen(svc: AgentService, screen: str) -> None:
    await async_until(lambda: svc.status().screen == screen, f"the agent's screen {screen}")


async def test_a_ui_killed_in_setup_takes_setup_with_it(service: AgentService) -> None:
    socket = service.cfg.ui.socket
    watcher = await Ui.open(socket)  # another client (a second screen) stays
    tech = await Ui.open(socket)
    assert (await tech.ask(EnterSetupIntent(id="e-1"))).data == {"setup": True}
    assert service.status().screen == "SETUP"

    watcher.kill()  # not the one in setup: nothing changes
    await asyncio.sleep(0.05)
    assert service.status().screen == "SETUP"

    tech.kill()  # killed in setup: no leave_setup comes
    await wait_for_screen(service, "IDLE")


async def test_leave_setup_then_hanging_up_is_plain(service: AgentService) -> None:
    tech = await Ui.open(service.cfg.ui.socket)
    await tech.ask(EnterSetupIntent(id="e-1"))
    assert (await tech.ask(LeaveSetupIntent(id="l-1"))).data == {"setup": False}
    assert service.status().screen == "IDLE"
    other = await Ui.open(service.cfg.ui.socket)
    await other.ask(EnterSetupIntent(id="e-2"))  # a new UI's setup is its own
    tech.kill()
    await asyncio.sleep(0.05)
    assert service.status().screen == "SETUP"
    other.kill()
    await wait_for_screen(service, "IDLE")


PIN = "246810"


@pytest.fixture
async def pinned(tmp_path: Path) -> AsyncIterator[AgentService]:
    """The service with a technician PIN hash and a config file to edit."""
    (tmp_path / "technician.pin").write_text(hash_pin(PIN) + "\n")
    config = tmp_path / "agent.toml"
    config.write_text(
        f"""[terminal]
sn = "{SN}"
app_id = "{SN}"
private_key_file = "k.pem"
technician_pin_file = "technician.pin"

[mqtt]
url = "mqtt://127.0.0.1:1"

[gateway]
url = "http://127.0.0.1:9"
public_key_file = "gw.pem"

[ui]
socket = "agent.sock"
"""
    )
    from agent.config import load_config

    svc = AgentService(load_config(config))
    journal = Journal(tmp_path / "journal.db")
    settings = EngineSettings(sn=SN, private_key=TERM_PRIVATE, gateway_public_key=GW_PUBLIC)
    svc.engine = Engine(settings, journal, SimGateway().client(), [])
    svc.journal = journal
    svc.setup = SetupAccess(journal)
    svc.bridge = svc._build_bridge()
    await svc.bridge.start()
    yield svc
    await svc.bridge.close()
    journal.close()


async def test_the_pin_is_checked_by_the_agent_and_its_lockout_is_durable(
    pinned: AgentService, tmp_path: Path
) -> None:
    tech = await Ui.open(pinned.cfg.ui.socket)
    locked = {"ok": False, "reason": "setup is locked: enter the technician PIN"}
    assert (await tech.ask(ReadSetupIntent(id="r-0"))).data == locked  # no PIN, no settings
    answers = [
        (await tech.ask(UnlockSetupIntent(id=f"u-{i}", pin="000000"))).data for i in range(5)
    ]
    assert [a.get("attempts_left") for a in answers[:4]] == [4, 3, 2, 1]
    assert answers[4]["reason"] == "locked"
    assert answers[4]["locked_for"] == 60
    refused = (await tech.ask(UnlockSetupIntent(id="u-5", pin=PIN))).data
    assert refused["reason"] == "locked"  # the right PIN while locked: not even checked
    tech.kill()

    # Another agent process on the same journal (a restart): still locked.
    again = SetupAccess(Journal(tmp_path / "journal.db"))
    assert (await again.unlock(pinned.cfg, "ui-2", PIN)).reason == "locked"
    assert setup_records.lockout(again.journal)[:2] == (0, 1)
    setup_records.set_lockout(again.journal, 0, 1, 0)  # the minute passed
    assert (await again.unlock(pinned.cfg, "ui-2", "111111")).attempts_left == 4
    for _ in range(4):
        await again.unlock(pinned.cfg, "ui-2", "111111")
    assert setup_records.lockout(again.journal)[1] == 2  # the second lockout: twice as long
    assert setup_records.lockout(again.journal)[2] - time.time() * 1000 > 119_000
    setup_records.set_lockout(again.journal, 0, 2, 0)
    assert (await again.unlock(pinned.cfg, "ui-2", PIN)).ok
    assert setup_records.lockout(again.journal) == (0, 0, 0)  # a correct PIN clears it all
    log = setup_records.setup_log(again.journal, limit=50)
    assert {a for _t, a, _o in log} == {"unlock", "ReadSetup"} or {"unlock"} <= {
        a for _t, a, _o in log
    }
    assert PIN not in repr(log)
    again.journal.close()

    # A fresh connection to the running agent needs the PIN again.
    ui = await Ui.open(pinned.cfg.ui.socket)
    assert (await ui.ask(ReadSetupIntent(id="r-1"))).data == locked
    assert reply_data(await ui.ask(UnlockSetupIntent(id="u-9", pin=PIN)), UnlockReply).ok
    read = (await ui.ask(ReadSetupIntent(id="r-2"))).data
    assert read["ok"]
    assert read["settings"]["terminal_sn"] == SN
    ui.kill()
