"""A TMS-side subscriber to one terminal's retained status topic, for tests.

``StatusWatcher(host, port, sn)`` subscribes to ``sadad/v1/terminals/{sn}/status``
with its own paho client on a real broker and records every message as a
``Seen`` (the decoded ``TerminalStatus`` and whether the broker delivered it
as the retained value on subscribe). ``wait_for(pred)`` blocks until a
status matching ``pred`` arrives at or after a ``mark()``.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import msgspec
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from cloud.messages import TerminalStatus


@dataclass(frozen=True)
class Seen:
    status: TerminalStatus
    retained: bool


class StatusWatcher:
    """Records the statuses terminal ``sn`` publishes (and its will)."""

    def __init__(self, host: str, port: int, sn: str) -> None:
        self.topic = f"sadad/v1/terminals/{sn}/status"
        self.seen: list[Seen] = []
        self._cond = threading.Condition()
        subscribed = threading.Event()
        connected = threading.Event()
        self._client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"test-status-{sn}-{uuid.uuid4().hex[:6]}",
            protocol=mqtt.MQTTv5,
        )
        self._client.on_connect = lambda c, u, f, rc, p: connected.set()
        self._client.on_subscribe = lambda c, u, mid, rcs, p: subscribed.set()
        self._client.on_message = self._on_message
        self._client.connect(host, port, keepalive=30)
        self._client.loop_start()
        if not connected.wait(5):
            self.close()
            raise AssertionError(f"cannot connect to mqtt://{host}:{port}")
        self._client.subscribe(self.topic, qos=1)
        if not subscribed.wait(5):
            self.close()
            raise AssertionError("status subscription not acknowledged")

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        status = msgspec.json.decode(msg.payload, type=TerminalStatus)
        with self._cond:
            self.seen.append(Seen(status, bool(msg.retain)))
            self._cond.notify_all()

    def mark(self) -> int:
        with self._cond:
            return len(self.seen)

    def since(self, mark: int = 0) -> list[TerminalStatus]:
        with self._cond:
            return [s.status for s in self.seen[mark:]]

    def wait_for(
        self, pred: Callable[[TerminalStatus], bool], *, after: int = 0, timeout: float = 15.0
    ) -> TerminalStatus:
        """The first status at or after position ``after`` for which ``pred`` holds."""

        def match() -> TerminalStatus | None:
            return next((s.status for s in self.seen[after:] if pred(s.status)), None)

        with self._cond:
            if not self._cond.wait_for(lambda: match() is not None, timeout):
                raise AssertionError(f"no such status within {timeout} s; saw {self.seen}")
            found = match()
            assert found is not None
            return found

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()
