"""SadadTMS's MQTT link (docs/protocol.md part C), on paho-mqtt 2.x.

- speaks MQTT 5 where the broker offers it and MQTT 3.1.1 otherwise (a broker
  that refuses protocol 5 in its CONNACK, as NATS does, gets a 3.1.1 client
  with a persistent session from then on); topics are ``cloud.topics``;
- publishes pushes to ``sadad/v1/terminals/{sn}/orders`` at QoS 1, with the
  MQTT 5 Message Expiry Interval when it speaks 5 (under 3.1.1 the terminal
  enforces ``expires_at`` from the payload alone);
- subscribes to ``sadad/v1/terminals/+/status`` (retained) and
  ``sadad/v1/terminals/+/events`` and hands each message, with the SN taken
  from its topic, to a callback *on the asyncio loop* (paho's network thread
  never touches the sandbox's state); a topic the broker does not grant in
  the SUBACK (0x80: refused, or under NATS a JetStream consumer it could not
  make in time) is logged and subscribed again, 1 s doubling to 30 s, until
  granted: without it the TMS would hear no terminal and say nothing;
- keeps a persistent session (clean start off, session expiry 1 day; clean
  session off under 3.1.1) and reconnects by itself when the broker
  restarts; it subscribes again on every connect. Pushes published while
  disconnected are queued by paho and sent on reconnect (a push queued in
  the first second, before a 3.1.1 broker refused protocol 5, is published
  again by the fallback client).
- logs in with ``username``/``password`` when given: a secure broker's TMS
  user (``sandbox.broker.TMS_USER``) may publish every terminal's orders and
  read every terminal's events and status, and nothing else; a refused login
  is logged and retried like a broker that is down.

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
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from cloud.topics import every_terminal, orders_topic, sn_from_topic

__all__ = ["Tms", "orders_topic", "parse_mqtt_url"]

log = logging.getLogger(__name__)

SESSION_EXPIRY_S = 24 * 3600
KEEPALIVE_S = 30
TOPICS = (every_terminal("status"), every_terminal("events"))
# A SUBACK that does not grant a topic: subscribe again after 1 s, doubling to 30 s.
SUBSCRIBE_RETRY_FIRST_S = 1.0
SUBSCRIBE_RETRY_MAX_S = 30.0
# CONNACK "Unsupported Protocol Version": 0x84 under MQTT 5, return code 1
# under 3.1.1, which paho reports as the same reason.
_UNSUPPORTED_PROTOCOL = 0x84

Handler = Callable[[str, bytes], None]  # (terminal sn, payload)


def parse_mqtt_url(url: str) -> tuple[str, int]:
    """``mqtt://host[:port]`` -> (host, port). Raises ValueError."""
    parts = urlsplit(url)
    if parts.scheme not in ("mqtt", "tcp") or not parts.hostname:
        raise ValueError(f"broker URL must look like mqtt://127.0.0.1:1883, not {url!r}")
    return parts.hostname, parts.port or 1883


class Tms:
    """The TMS MQTT client; see the module docstring."""

    def __init__(
        self,
        url: str,
        *,
        client_id: str | None = None,
        username: str | None = None,
        password: str | None = None,
        on_status: Handler,
        on_event: Handler,
    ) -> None:
        self.host, self.port = parse_mqtt_url(url)
        self.url = url
        self.client_id = client_id or f"sadad-tms-{uuid.uuid4().hex[:12]}"
        self.username = username
        self._password = password
        self._on_status = on_status
        self._on_event = on_event
        self._loop: asyncio.AbstractEventLoop | None = None
        self.connected = threading.Event()
        self.subscribed = threading.Event()  # every topic of TOPICS granted
        self._subscribing: dict[int, tuple[str, ...]] = {}  # SUBSCRIBE mid -> its topics
        self._subscribe_failures = 0  # since the last full grant
        self._stopping = False
        self._falling_back = False
        self._lock = threading.Lock()  # guards _client and _unsent across the switch to 3.1.1
        self.protocol = MQTTProtocolVersion.MQTTv5
        self._client = self._new_client(self.protocol)
        # (topic, payload, expiry) published before the first CONNACK: kept so
        # that a fallback client can publish them again.
        self._unsent: list[tuple[str, bytes, int | None]] | None = []

    def _new_client(self, protocol: MQTTProtocolVersion) -> mqtt.Client:
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            protocol=protocol,
            clean_session=None if protocol == MQTTProtocolVersion.MQTTv5 else False,
        )
        if self.username is not None:
            client.username_pw_set(self.username, self._password)
        client.reconnect_delay_set(min_delay=1, max_delay=2)
        client.max_queued_messages_set(0)
        client.on_connect = self._handle_connect
        client.on_disconnect = self._handle_disconnect
        client.on_message = self._handle_message
        client.on_subscribe = self._handle_subscribe
        return client

    # ---------------------------------------------------------------- lifecycle

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Connect in the background (retrying until the broker answers)."""
        self._loop = loop
        self._connect(self._client)

    def _connect(self, client: mqtt.Client) -> None:
        if self.protocol == MQTTProtocolVersion.MQTTv5:
            props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            props.SessionExpiryInterval = SESSION_EXPIRY_S
            client.connect_async(
                self.host, self.port, keepalive=KEEPALIVE_S, clean_start=False, properties=props
            )
        else:
            client.connect_async(self.host, self.port, keepalive=KEEPALIVE_S)
        client.loop_start()

    def stop(self) -> None:
        self._stopping = True
        with self._lock:
            client = self._client
        client.disconnect()
        client.loop_stop()
        self.connected.clear()

    # ---------------------------------------------------------------- publishing

    def publish(self, topic: str, payload: bytes, *, expiry_s: int | None) -> None:
        """Publish at QoS 1 (queued by paho while disconnected)."""
        with self._lock:
            client = self._client
            if self._unsent is not None:
                self._unsent.append((topic, payload, expiry_s))
            v5 = self.protocol == MQTTProtocolVersion.MQTTv5
        props = None
        if v5 and expiry_s is not None:
            props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
            props.MessageExpiryInterval = max(1, int(expiry_s))
        info = client.publish(topic, payload, qos=1, properties=props)
        if info.rc not in (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_NO_CONN):
            log.error("publish to %s failed: %s", topic, mqtt.error_string(info.rc))
        elif info.rc == mqtt.MQTT_ERR_NO_CONN:
            log.warning("broker unreachable; push to %s queued until it reconnects", topic)

    def _fall_back(self, refused: mqtt.Client) -> None:
        """Replace a client the broker refused for protocol 5 with a 3.1.1 one
        (in a thread of its own: paho's thread cannot stop itself)."""
        refused.loop_stop()
        with self._lock:
            if self._stopping or self._client is not refused:
                return
            self.protocol = MQTTProtocolVersion.MQTTv311
            self._client = client = self._new_client(self.protocol)
            self._falling_back = False
            unsent, self._unsent = self._unsent or [], []
        self._connect(client)
        for topic, payload, expiry_s in unsent:
            self.publish(topic, payload, expiry_s=expiry_s)

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
            if reason_code.value == _UNSUPPORTED_PROTOCOL and self.protocol == (
                MQTTProtocolVersion.MQTTv5
            ):
                log.info("broker %s refused MQTT 5: the TMS uses MQTT 3.1.1", self.url)
                client.reconnect_delay_set(min_delay=60, max_delay=60)  # no retry race
                with self._lock:
                    self._falling_back = True
                threading.Thread(target=self._fall_back, args=(client,), daemon=True).start()
                return
            log.warning(
                "broker %s refused the TMS (user %s): %s",
                self.url,
                self.username or "anonymous",
                reason_code,
            )
            return
        with self._lock:
            if client is self._client:
                self._unsent = None  # paho's own queue carries everything from here
            self._subscribe_failures = 0
            self._subscribing.clear()  # a SUBACK due on the last connection never comes
        self.subscribed.clear()
        self._subscribe(client, TOPICS)
        self.connected.set()
        log.info(
            "TMS connected to %s as %s (MQTT %s, session present: %s)",
            self.url,
            self.client_id,
            "5" if self.protocol == MQTTProtocolVersion.MQTTv5 else "3.1.1",
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
        with self._lock:
            replaced = client is not self._client or self._falling_back
        if replaced:  # refused for protocol 5: _fall_back takes over
            return
        self.connected.clear()
        self.subscribed.clear()
        if self._stopping:
            log.info("TMS disconnected from %s", self.url)
        else:
            log.warning("TMS lost %s (%s); reconnecting", self.url, reason_code)

    def _subscribe(self, client: mqtt.Client, topics: tuple[str, ...]) -> None:
        with self._lock:
            if self._stopping or client is not self._client:
                return
            rc, mid = client.subscribe([(t, 1) for t in topics])
            if rc == mqtt.MQTT_ERR_SUCCESS and mid is not None:
                self._subscribing[mid] = topics
        # Not connected: the next CONNACK subscribes to everything again.

    def _handle_subscribe(
        self,
        client: mqtt.Client,
        userdata: Any,
        mid: int,
        reason_codes: list[Any],
        properties: Properties | None,
    ) -> None:
        with self._lock:
            topics = self._subscribing.pop(mid, ())
        failed = tuple(t for t, code in zip(topics, reason_codes, strict=False) if code.is_failure)
        failed += topics[len(reason_codes) :]  # a SUBACK short of codes grants nothing more
        if not failed:
            with self._lock:
                retried, self._subscribe_failures = self._subscribe_failures, 0
                everything = not self._subscribing  # no other SUBACK still due
            if retried:
                log.info("TMS subscribed to %s after %d refusals", ", ".join(topics), retried)
            if everything:
                self.subscribed.set()
            return
        with self._lock:
            self._subscribe_failures += 1
            attempt = self._subscribe_failures
        delay = min(SUBSCRIBE_RETRY_MAX_S, SUBSCRIBE_RETRY_FIRST_S * 2 ** (attempt - 1))
        codes = ", ".join(str(c) for c in reason_codes)
        log.warning(
            "broker %s did not grant the TMS %s (SUBACK: %s): it hears no terminal "
            "there; subscribing again in %g s",
            self.url,
            ", ".join(failed),
            codes,
            delay,
        )
        retry = threading.Timer(delay, self._subscribe, args=(client, failed))
        retry.daemon = True
        retry.start()

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
