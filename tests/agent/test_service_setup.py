"""Setup belongs to the UI that entered it: ``AgentService`` on its real
``BridgeServer``, UIs as raw socket clients. A UI killed in setup sends no
``leave_setup``; the terminal must not report SETUP after it is gone."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from agent.bridge_protocol import (
    EnterSetupIntent,
    HelloEvent,
    Intent,
    LeaveSetupIntent,
    LineDecoder,
    Reply,
    encode_line,
)
from agent.config import AgentConfig, GatewayConfig, MqttConfig, TerminalConfig, UiConfig
from agent.engine import Engine, EngineSettings
from agent.journal import Journal
from agent.service import AgentService
from tests.agent.simpeers import GW_PUBLIC, SN, TERM_PRIVATE, SimGateway


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
    svc.bridge = svc._build_bridge()
    await svc.bridge.start()
    yield svc
    await svc.bridge.close()
    journal.close()


async def wait_for_screen(svc: AgentService, screen: str) -> None:
    async with asyncio.timeout(5):
        while svc.status()["screen"] != screen:  # noqa: ASYNC110 - the agent's state
            await asyncio.sleep(0.01)


async def test_a_ui_killed_in_setup_takes_setup_with_it(service: AgentService) -> None:
    socket = service.cfg.ui.socket
    watcher = await Ui.open(socket)  # another client (a second screen) stays
    tech = await Ui.open(socket)
    assert (await tech.ask(EnterSetupIntent(id="e-1"))).data == {"setup": True}
    assert service.status()["screen"] == "SETUP"

    watcher.kill()  # not the one in setup: nothing changes
    await asyncio.sleep(0.05)
    assert service.status()["screen"] == "SETUP"

    tech.kill()  # killed in setup: no leave_setup comes
    await wait_for_screen(service, "IDLE")


async def test_leave_setup_then_hanging_up_is_plain(service: AgentService) -> None:
    tech = await Ui.open(service.cfg.ui.socket)
    await tech.ask(EnterSetupIntent(id="e-1"))
    assert (await tech.ask(LeaveSetupIntent(id="l-1"))).data == {"setup": False}
    assert service.status()["screen"] == "IDLE"
    other = await Ui.open(service.cfg.ui.socket)
    await other.ask(EnterSetupIntent(id="e-2"))  # a new UI's setup is its own
    tech.kill()
    await asyncio.sleep(0.05)
    assert service.status()["screen"] == "SETUP"
    other.kill()
    await wait_for_screen(service, "IDLE")
