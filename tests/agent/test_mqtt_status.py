"""The retained status's last word on a clean stop is ``offline`` (one
layer: ``StatusPublisher`` with a session that records what is published
and whose PUBACKs the test gives; the whole link on a real broker:
tests/agent/test_mqtt_link.py)."""

from __future__ import annotations

import asyncio

import msgspec

from agent.mqtt.status import StatusPublisher
from cloud.messages import Screen, TerminalStatus


class RecordingSession:
    """What the publisher sends, each publish's PUBACK left to the test."""

    keepalive = 30

    def __init__(self) -> None:
        self.sent: list[tuple[str, asyncio.Future[None]]] = []

    def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> asyncio.Future[None]:
        status = msgspec.json.decode(payload, type=TerminalStatus)
        flight: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.sent.append((f"{status.status} {status.screen}", flight))
        return flight

    def puback(self, i: int) -> None:
        self.sent[i][1].set_result(None)

    @property
    def said(self) -> list[str]:
        return [what for what, _ in self.sent]


async def test_nothing_online_follows_the_sign_off() -> None:
    """A change coalesced behind a publish in flight went out after
    ``offline`` when that PUBACK came during the sign-off: the retained
    status stayed ``online`` after a clean stop (the TMS saw online,
    offline, online in a load run)."""
    screen = [Screen.IDLE]
    session = RecordingSession()

    def status() -> TerminalStatus:
        return TerminalStatus(status="online", timestamp="0", screen=screen[0])

    publisher = StatusPublisher("T1", status, lambda: session)  # type: ignore[arg-type,return-value]
    flush = asyncio.create_task(publisher.flush())
    await asyncio.sleep(0)
    assert session.said == ["online IDLE"]  # in flight
    screen[0] = Screen.READING
    publisher.changed()  # coalesced behind the one in flight
    sign_off = asyncio.create_task(publisher.sign_off(session))  # type: ignore[arg-type]
    await asyncio.sleep(0)
    assert session.said == ["online IDLE", "offline None"]
    session.puback(0)  # the first PUBACK comes during the sign-off
    await asyncio.sleep(0)
    session.puback(1)
    await sign_off
    await asyncio.sleep(0)
    said = session.said
    for i in range(2, len(said)):
        session.puback(i)  # so that flush() returns either way
    await flush
    assert said == ["online IDLE", "offline None"]  # offline is the last word
