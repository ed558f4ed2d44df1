"""SadadTMS's MQTT link (PROTOCOL.md part C), on paho-mqtt 2.x.

- publishes pushes to ``sadad/v1/terminals/{sn}/orders`` at QoS 1 with the
  MQTT 5 Message Expiry Interval;
- subscribes to ``sadad/v1/terminals/+/status`` (retained) and
  ``sadad/v1/terminals/+/events`` and hands each message, with the SN taken
  from its topic, to a callback *on the asyncio loop* (paho's network thread
  never touches the sandbox's state);
- keeps a persistent session (clean start off, session expiry 1 day) and
  reconnects by itself when the broker restarts; it subscribes again on every
  connect. Pushes published while disconnected are queued by paho and sent
  on reconnect.

Raises ``ValueError`` for a broker URL that is not ``mqtt://host[:port]``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import uuid
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

log = logging.getLogger(__name__)

TOPIC_PREFIX = "sadad/v1/terminals"
SESSION_EXPIRY_S = 24 * 3600
KEEPALIVE_S = 30

Handler = Callable[[str, bytes], None]  # (terminal sn, payload)


def orders_topic(sn: str) -> str:
    return f"{TOPIC_PREFIX}/{sn}/orders"


def parse_mqtt_url(url: str) -> tuple[str, int]:
    """``mqtt://host[:port]`` -> (host, port). Raises ValueError."""
    parts = urlsplit(url)
    if parts.scheme not in ("mqtt", "tcp") or not parts.hostname:
        raise ValueError(f"broker URL must look like mqtt://127.0.0.1:1883, not {url!r}")
    return parts.hostname, parts.port or 1883


def sn_from_topic(topic: str, kind: str) -> str | None:
    """The SN in ``sadad/v1/terminals/{sn}/{kind}``, or None for another topic."""
    parts = topic.split("/")
    if len(parts) == 5 and "/".join(parts[:3]) == TOPIC_PREFIX and parts[4] == kind and parts[3]:
        return parts[3]
    return None


class Tms:
    """The TMS MQTT client; see the module docstring."""

    def __init__(
        self,
        url: str,
        *,
        client_id: str | None = None,
        on_status: Handler,
        on_event: Handler,
    ) -> None:
        self.host, self.port = parse_mqtt_url(url)
        self.url = url
        self.client_id = client_id or f"sadad-tms-{uuid.uuid4().hex[:12]}"
        self._on_status = on_status
        self._on_event = on_event
        self._loop: asyncio.AbstractEventLoop | None = None
        self.connected = threading.Event()
        self._stopping = False
        self._client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            protocol=mqtt.MQTTv5,
        )
        self._client.reconnect_delay_set(min_delay=1, max_delay=2)
        self._client.max_queued_messages_set(0)
        self._client.on_connect = self._handle_connect
        self._client.on_disconnect = self._handle_disconnect
        self._client.on_message = self._handle_message

    # ---------------------------------------------------------------- lifecycle

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Connect in the background (retrying until the broker answers)."""
        self._loop = loop
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = SESSION_EXPIRY_S
        self._client.connect_async(
            self.host, self.port, keepalive=KEEPALIVE_S, clean_start=False, properties=props
        )
        self._client.loop_start()

    def stop(self) -> None:
        self._stopping = True
        self._client.disconnect()
        self._client.loop_stop()
        self.connected.clear()

    # ---------------------------------------------------------------- publishing

    def publish(self, topic: str, payload: bytes, *, expiry_s: int | None) -> None:
        """Publish at QoS 1 (queued by paho while disconnected)."""
        props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        if expiry_s is not None:
            props.MessageExpiryInterval = max(1, int(expiry_s))
        info = self._client.publish(topic, payload, qos=1, properties=props)
        if info.rc not in (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_NO_CONN):
            log.error("publish to %s failed: %s", topic, mqtt.error_string(info.rc))
        elif info.rc == mqtt.MQTT_ERR_NO_CONN:
            log.warning("broker unreachable; push to %s queued until it reconnects", topic)

    # ---------------------------------------------------------------- paho thread

    def _handle_connect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: mqtt.ConnectFlags,
        reason_code: Any,
        properties: Properties | None,
    ) -> None:
        if reason_code.is_failure:
            log.warning("broker %s refused the TMS: %s", self.url, reason_code)
            return
        client.subscribe(
            [(f"{TOPIC_PREFIX}/+/status", 1), (f"{TOPIC_PREFIX}/+/events", 1)],
        )
        self.connected.set()
        log.info(
            "TMS connected to %s as %s (session present: %s)",
            self.url,
            self.client_id,
            flags.session_present,
        )

    def _handle_disconnect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: mqtt.DisconnectFlags,
        reason_code: Any,
        properties: Properties | None,
    ) -> None:
        self.connected.clear()
        if self._stopping:
            log.info("TMS disconnected from %s", self.url)
        else:
            log.warning("TMS lost %s (%s); reconnecting", self.url, reason_code)

    def _handle_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        payload = bytes(msg.payload)
        handler: Handler | None = None
        sn = sn_from_topic(msg.topic, "status")
        if sn is not None:
            handler = self._on_status
        else:
            sn = sn_from_topic(msg.topic, "events")
            handler = self._on_event if sn is not None else None
        if handler is None or sn is None:
            log.debug("ignored message on %s", msg.topic)
            return
        with contextlib.suppress(RuntimeError):  # the loop closed while shutting down
            loop.call_soon_threadsafe(handler, sn, payload)
