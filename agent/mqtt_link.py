"""The terminal's MQTT session with SadadTMS (docs/protocol.md part C).

Contract:

* One ``MqttLink`` per agent. Client id = the terminal SN; MQTT 5 with Clean
  Start 0 and a Session Expiry Interval of ``cfg.session_expiry`` (at least
  24 h), so QoS 1 pushes queued while the terminal is offline are delivered
  when it returns. With ``cfg.protocol == "3.1.1"``, or when the broker
  refuses protocol 5 in its CONNACK (3.1.1 return code 1, which paho reports
  as "Unsupported protocol version"), the link uses MQTT 3.1.1 with
  ``clean_session=False`` from then on. TLS (``mqtts://``) verifies the
  broker against ``ca_file`` (or the system store) and its host name, and
  presents ``cert_file``/``key_file`` when set.
* On every (re)connect: subscribe ``sadad/v1/terminals/{sn}/orders`` at QoS 1
  (also when the broker kept the session: cheap, and it repairs a session
  that lost its subscription), then publish the retained QoS 1 status
  ``{"status": "online", ...}``; only then is the state CONNECTED. The will,
  registered in CONNECT, is the retained QoS 1 status ``offline``: the broker
  publishes it when the connection dies without a DISCONNECT (within 1.5
  keepalives of a silent loss); its ``timestamp`` is that of the CONNECT that
  registered it (a broker cannot stamp a will). ``stop()`` publishes ``offline`` itself and
  then disconnects cleanly (reason 0: the broker drops the will and keeps the
  session).
* Pushes: each message on the orders topic is handed to ``on_push(payload)``
  on the asyncio loop, one at a time in arrival order, and the PUBACK is
  sent (``manual_ack``) only after ``on_push`` returns - that is, after the
  engine has journaled the push (or journaled its rejection). PUBACKs thus
  leave in the order the PUBLISHes arrived, as MQTT requires [MQTT-4.6.0-2].
  If ``on_push`` raises, the message is not acknowledged, the rest of that
  connection's queue is dropped unprocessed, and the link disconnects and
  reconnects (with backoff) so that the broker delivers them again. A PUBACK
  is only ever sent on the connection the message arrived on: every
  connection uses a fresh paho client, so an acknowledgement that completes
  after its connection died goes nowhere (packet ids are reused across
  connections; acking one on the wrong connection could acknowledge another
  message).
* What Mosquitto 2.0.11 does with a QoS 1 message that is not acknowledged
  (verified with this paho, v5 and 3.1.1; ``tests/agent/test_mqtt_link.py``
  keeps the important parts checked): it does NOT resend it on the same
  connection, however long it waits (MQTT 5 forbids it [MQTT-4.4.0-1]); the
  message stays in flight for that session and counts against
  ``max_inflight_messages`` (20: later messages wait in the broker's queue);
  when the client reconnects with the session present (after a clean
  DISCONNECT, a dropped socket or a killed process alike) every
  unacknowledged message is sent again with its original packet id and
  DUP=1. Hence the disconnect after a failed ``on_push``: without it the push
  would sit unacknowledged until the next reconnect. The engine still
  deduplicates on ``message_id`` (the broker may redeliver what was
  journaled but not yet acknowledged when the link died).
* Reconnects: paho's own reconnect (fixed doubling, no jitter) is off; the
  link reconnects itself with ``agent.backoff.Backoff`` (base 1 s, cap 60 s,
  equal jitter). With ``mqtt.fallback_urls`` (the other nodes of a broker
  cluster, whose sessions are the cluster's) a node that fails is left for
  the next one at once; only a whole round of failures waits out the backoff.
  The backoff starts again from the base only after a connection stayed up
  ``STABLE_AFTER`` seconds, so a broker that accepts and then drops the
  terminal (session takeover, ACL kick) is not hammered.
* Threads: none of our own and none of paho's. paho runs in its "external
  event loop" mode (``loop_read``/``loop_write``/``loop_misc`` driven by
  ``loop.add_reader``/``add_writer`` and a 1 s timer), so every paho callback
  runs on the asyncio loop and ``on_push`` needs no hand-over between
  threads. Only the blocking part of connecting (DNS, TCP, TLS handshake,
  sending CONNECT) runs in the loop's default executor, with no callbacks
  installed while it does.
* ``publish_event`` waits for the PUBACK and raises ``LinkDown`` when the
  link is not connected or the connection is lost first (the engine keeps an
  outbox and retries; the TMS deduplicates events on ``message_id``), and
  ``PublishRejected`` when the broker refuses it (MQTT 5 reason >= 0x80,
  e.g. not authorized). The status is a latest value: ``status_changed()``
  (call it on every change of screen, readers or queue) publishes it
  ``STATUS_HOLD`` later, only when it differs from the last one published
  (the timestamp aside), with at most one status publish in flight;
  changes made during the hold or while one is in
  flight are coalesced into one publish of the latest status after its
  PUBACK. So a subscriber sees the states in order (one that lasts less
  than a publish round trip may be skipped) and a burst never floods the
  broker. Every connect publishes the status as it is then. Neither it nor
  ``publish_status`` raises.
* ``probe_connection`` is a one-shot probe for the setup screen and the doctor
  with client id ``{sn}-probe`` and a clean session, so it never takes over
  the terminal's session. Broker ACLs written with ``%c`` (client id) must
  allow that id for the probe to pass the subscribe stage.
* Packet size: under MQTT 5 the CONNECT announces a Maximum Packet Size
  (``MAX_PACKET_BYTES``, just over ``cloud.messages.MAX_PUSH_BYTES``), so
  the broker discards bigger messages for this client (acknowledged for the
  publisher, never delivered here, never redelivered); under 3.1.1 the
  engine rejects a bigger payload unread.
* Payloads are never logged (pushes carry order data).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import random
import socket
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal

import msgspec
import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from agent.backoff import Backoff
from agent.config import ConfigError, MqttConfig, mqtt_password, parse_mqtt_url
from cloud import envelope
from cloud.errors import SadadError
from cloud.messages import MAX_PUSH_BYTES, TerminalStatus
from cloud.topics import events_topic, orders_topic, status_topic

__all__ = [
    "ConnectionState",
    "LinkDown",
    "LinkError",
    "MqttLink",
    "PublishRejected",
    "PushHandler",
    "events_topic",
    "orders_topic",
    "probe_connection",
    "status_topic",
]

log = logging.getLogger(__name__)

PushHandler = Callable[[bytes], Awaitable[None]]
StateListener = Callable[["ConnectionState", str], None]
Stage = Literal["dns", "tcp", "tls", "auth", "subscribe", "ok"]

CONNECT_TIMEOUT = 10.0  # s: TCP connect, TLS handshake, then again for the CONNACK/SUBACK
STABLE_AFTER = 30.0  # s a connection must last before the backoff starts again from its base
STOP_GRACE = 5.0  # s stop() waits for a push in progress so that it can still be acknowledged
_MISC_INTERVAL = 1.0  # s between paho loop_misc() calls (keepalive pings, ping timeout)
# s a status change waits before it is published: the change that wakes the
# checkout (a push) is followed within a millisecond or two by the order on
# screen; publishing at once would send the broker and its subscribers to
# work while the screen is still being drawn, and publish twice.
STATUS_HOLD = 0.01
_UNSUPPORTED_PROTOCOL = 0x84  # CONNACK "Unsupported Protocol Version" (paho maps 3.1.1 rc 1)
# The Maximum Packet Size an MQTT 5 CONNECT announces: the largest push
# (``MAX_PUSH_BYTES``, 64 KiB: a genuine one is a few KB, so a flood of
# megabytes never reaches the terminal) plus headroom for the fixed header,
# topic, packet id and properties. The broker must not send a bigger packet
# [MQTT-3.1.2-24]; it discards it and behaves as if it had sent it
# [MQTT-3.1.2-25]. Seen with Mosquitto 2.0.11 (the broker check in
# tests/agent/test_mqtt_link.py): a bigger QoS 1 message is logged
# "Dropping too large outgoing PUBLISH for <client id> (<n> bytes)", the
# publisher still gets its PUBACK (reason Success), and it is never
# delivered here nor redelivered - also when it was queued while the
# terminal was offline: dropped at the reconnect, the messages behind it
# delivered in order. Under 3.1.1 the engine refuses a payload over
# ``MAX_PUSH_BYTES`` unread (``too_large``).
MAX_PACKET_BYTES = MAX_PUSH_BYTES + 1024


class ConnectionState(enum.StrEnum):
    """What the setup screen shows. ``MqttLink.reason`` says why, in words."""

    CONNECTING = "connecting"
    CONNECTED = "connected"
    DISCONNECTED = "disconnected"  # an established connection was lost (retrying), or stopped
    FAILED = "failed"  # an attempt failed before the session was up (retrying)


class LinkError(SadadError):
    """Base of the MQTT link's errors."""


class LinkDown(LinkError):
    """Not connected, or the connection was lost before the PUBACK: retry later."""


class PublishRejected(LinkError):
    """The broker refused a publish (MQTT 5 PUBACK reason >= 0x80): final for this message."""


class _AttemptFailed(Exception):
    def __init__(self, stage: Stage, reason: str, *, retry_now: bool = False) -> None:
        super().__init__(f"{stage}: {reason}")
        self.stage = stage
        self.reason = reason
        self.retry_now = retry_now


class _ClosingSSLSocket(ssl.SSLSocket):
    """paho 2.2 drops the socket without closing it when the TLS handshake fails
    (``Client._ssl_wrap_socket``); close it here so no file descriptor leaks."""

    def do_handshake(self, block: bool = False) -> None:
        try:
            super().do_handshake(block)
        except BaseException:
            self.close()
            raise


def _tls_context(cfg: MqttConfig) -> ssl.SSLContext:
    """Raises _AttemptFailed("tls", ...) when a TLS file cannot be loaded."""
    try:
        ctx = ssl.create_default_context(cafile=None if cfg.ca_file is None else str(cfg.ca_file))
        if cfg.cert_file is not None:
            ctx.load_cert_chain(
                str(cfg.cert_file), None if cfg.key_file is None else str(cfg.key_file)
            )
    except (OSError, ssl.SSLError, ValueError) as exc:
        raise _AttemptFailed("tls", f"cannot load the TLS files: {exc}") from exc
    ctx.sslsocket_class = _ClosingSSLSocket
    return ctx


def _connect_error(exc: BaseException, host: str, port: int) -> _AttemptFailed:
    if isinstance(exc, socket.gaierror):
        return _AttemptFailed("dns", f"cannot resolve {host}: {exc.strerror or exc}")
    if isinstance(exc, ssl.SSLError | ssl.CertificateError):
        return _AttemptFailed("tls", f"TLS handshake with {host}:{port} failed: {exc}")
    if isinstance(exc, ConnectionRefusedError):
        return _AttemptFailed("tcp", f"{host}:{port} refused the connection")
    if isinstance(exc, TimeoutError):
        return _AttemptFailed("tcp", f"{host}:{port} did not answer within {CONNECT_TIMEOUT:g} s")
    if isinstance(exc, OSError):
        return _AttemptFailed("tcp", f"cannot connect to {host}:{port}: {exc.strerror or exc}")
    return _AttemptFailed("tcp", f"cannot connect to {host}:{port}: {exc!r}")


@dataclass(frozen=True, slots=True)
class _Inbound:
    session: _Session
    mid: int
    qos: int
    payload: bytes


class _Session:
    """One MQTT connection: a fresh paho client driven by the asyncio loop.

    Created and used on the loop thread only; ``open()`` runs paho's blocking
    ``connect`` in the default executor before any callback is installed.
    """

    def __init__(
        self,
        *,
        client_id: str,
        protocol: MQTTProtocolVersion,
        persistent: bool,
        cfg: MqttConfig,
        on_message: Callable[[_Inbound], None] | None = None,
        url: str | None = None,
    ) -> None:
        self.loop = asyncio.get_running_loop()
        self.cfg = cfg
        self.url = cfg.url if url is None else url  # this connection's broker node
        self.protocol = protocol
        self.persistent = persistent
        self.client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=protocol,
            clean_session=None if protocol == MQTTProtocolVersion.MQTTv5 else not persistent,
            reconnect_on_failure=False,
            manual_ack=on_message is not None,
        )
        self.client.connect_timeout = CONNECT_TIMEOUT
        self._on_message = on_message
        self.connack: asyncio.Future[tuple[paho.ConnectFlags, ReasonCode, Properties | None]] = (
            self.loop.create_future()
        )
        self.closed: asyncio.Future[str] = self.loop.create_future()
        self.keepalive = cfg.keepalive
        self._close_reason: str | None = None
        self._publishes: dict[int, asyncio.Future[None]] = {}
        self._subscribes: dict[int, asyncio.Future[list[ReasonCode]]] = {}
        self._misc: asyncio.TimerHandle | None = None
        self._sock: Any = None
        self.closing = False

    # ------------------------------------------------------------ connecting

    def prepare(self, *, will: bytes | None, topic_for_will: str | None) -> None:
        """TLS, credentials and will. Raises _AttemptFailed."""
        cfg = self.cfg
        if parse_mqtt_url(self.url)[2]:
            self.client.tls_set_context(_tls_context(cfg))
        if cfg.username is not None:
            try:
                password = mqtt_password(cfg)
            except ConfigError as exc:
                raise _AttemptFailed("auth", str(exc)) from exc
            self.client.username_pw_set(cfg.username, password)
        if will is not None and topic_for_will is not None:
            self.client.will_set(topic_for_will, will, qos=1, retain=True)

    async def open(self) -> None:
        """DNS, TCP, TLS, CONNECT sent. Raises _AttemptFailed."""
        host, port, _tls = parse_mqtt_url(self.url)
        kwargs: dict[str, Any] = {}
        if self.protocol == MQTTProtocolVersion.MQTTv5:
            props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            if self.persistent:
                props.SessionExpiryInterval = self.cfg.session_expiry
            # Bigger messages are dropped by the broker, for this client only,
            # without redelivery: see MAX_PACKET_BYTES.
            props.MaximumPacketSize = MAX_PACKET_BYTES
            kwargs = {"clean_start": not self.persistent, "properties": props}

        def connect() -> MQTTErrorCode:
            return self.client.connect(host, port, self.cfg.keepalive, **kwargs)

        attempt = self.loop.run_in_executor(None, connect)
        try:
            rc = await asyncio.shield(attempt)
        except asyncio.CancelledError:
            # The thread cannot be interrupted; close what it opens once it is done.
            attempt.add_done_callback(lambda _f: self._drop_orphan_socket())
            raise
        except Exception as exc:  # DNS, TCP, TLS: converted here, at the boundary
            raise _connect_error(exc, host, port) from exc
        sock = self.client.socket()
        if rc != MQTTErrorCode.MQTT_ERR_SUCCESS or sock is None:
            raise _AttemptFailed("tcp", f"connection to {host}:{port} lost while sending CONNECT")
        self._sock = sock
        # PUBACKs, events and the status are small packets often written back
        # to back; with Nagle on, the second waits for the broker's delayed
        # ACK (~40 ms: every event after a push PUBACK did). paho leaves it on.
        if isinstance(sock, socket.socket):  # ssl.SSLSocket too
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        client = self.client
        client.on_connect = self._handle_connect
        client.on_disconnect = self._handle_disconnect
        client.on_publish = self._handle_publish
        client.on_subscribe = self._handle_subscribe
        client.on_message = self._handle_message
        client.on_socket_close = self._handle_socket_close
        client.on_socket_register_write = self._handle_register_write
        client.on_socket_unregister_write = self._handle_unregister_write
        self.loop.add_reader(sock, self._readable)
        if client.want_write():
            self.loop.add_writer(sock, self._writable)
        self._misc = self.loop.call_later(_MISC_INTERVAL, self._tick)

    def _drop_orphan_socket(self) -> None:
        sock = self.client.socket()
        if sock is not None and self._sock is None:
            sock.close()

    async def wait_connack(self, timeout: float) -> paho.ConnectFlags:
        """Raises _AttemptFailed (stage auth) when refused, closed or silent."""
        # Futures, not tasks: asyncio.wait leaves them alone on timeout.
        await asyncio.wait(
            (self.connack, self.closed), timeout=timeout, return_when=asyncio.FIRST_COMPLETED
        )
        if not self.connack.done():
            if self.closed.done():
                raise _AttemptFailed("auth", "the broker closed the connection before CONNACK")
            raise _AttemptFailed("auth", f"no CONNACK within {timeout:g} s")
        flags, reason, props = self.connack.result()
        if reason.is_failure:
            raise _AttemptFailed(
                "auth",
                f"the broker refused the connection: {reason.getName()}",
                retry_now=reason.value == _UNSUPPORTED_PROTOCOL,
            )
        if props is not None and hasattr(props, "ServerKeepAlive"):
            self.keepalive = int(props.ServerKeepAlive)
        return flags

    # ------------------------------------------------------------ operations

    @property
    def is_open(self) -> bool:
        return not self.closed.done() and not self.closing

    def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> asyncio.Future[None]:
        """QoS 1 publish; the future resolves at the PUBACK. Raises LinkDown."""
        if not self.is_open:
            raise LinkDown("the MQTT connection is closed")
        info = self.client.publish(topic, payload, qos=1, retain=retain)
        if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            raise LinkDown(f"publish failed: {paho.error_string(info.rc)}")
        fut: asyncio.Future[None] = self.loop.create_future()
        self._publishes[info.mid] = fut
        return fut

    async def subscribe(self, topic: str, timeout: float) -> ReasonCode:
        """QoS 1 subscription. Raises _AttemptFailed (stage subscribe)."""
        rc, mid = self.client.subscribe(topic, qos=1)
        if rc != MQTTErrorCode.MQTT_ERR_SUCCESS or mid is None:
            raise _AttemptFailed("subscribe", f"cannot subscribe: {paho.error_string(rc)}")
        fut: asyncio.Future[list[ReasonCode]] = self.loop.create_future()
        self._subscribes[mid] = fut
        try:
            async with asyncio.timeout(timeout):
                codes = await fut
        except TimeoutError:
            raise _AttemptFailed("subscribe", f"no SUBACK within {timeout:g} s") from None
        except LinkDown as exc:
            raise _AttemptFailed("subscribe", str(exc)) from exc
        code = codes[0] if codes else ReasonCode(PacketTypes.SUBACK, "Unspecified error")
        if code.is_failure:
            raise _AttemptFailed("subscribe", f"the broker refused {topic}: {code.getName()}")
        return code

    def ack(self, mid: int, qos: int) -> None:
        if self.is_open:
            self.client.ack(mid, qos)

    def disconnect(self, reason: str) -> None:
        """Clean DISCONNECT (reason 0: no will, session kept)."""
        if self.closed.done():
            return
        self._close_reason = reason
        self.closing = True
        if self.client.disconnect() != MQTTErrorCode.MQTT_ERR_SUCCESS:
            self.abort(reason)

    def abort(self, reason: str) -> None:
        """Drop the connection without DISCONNECT (the broker publishes the will)."""
        if self.closed.done():
            return
        self._close_reason = self._close_reason or reason
        self.closing = True
        sock = self.client.socket()
        if sock is None or self._sock is None:
            # Never opened, or open() failed half-way with no reader installed.
            if sock is not None:
                sock.close()
            self._finish(reason)
            return
        # EOF on our side: paho's read sees it, closes the socket and reports.
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)
        self._readable()

    async def aclose(self, reason: str) -> None:
        """Abort and wait until the socket is closed (at most 1 s)."""
        self.abort(reason)
        await self.wait_closed(1.0)

    async def wait_closed(self, timeout: float | None = None) -> str:
        try:
            async with asyncio.timeout(timeout):
                return await asyncio.shield(self.closed)
        except TimeoutError:
            self.abort("close timed out")
            return await asyncio.shield(self.closed)

    # ------------------------------------------------------------ paho callbacks

    def _readable(self) -> None:
        client = self.client
        rc = client.loop_read()
        # TLS may hold decrypted bytes that select() cannot see.
        while rc == MQTTErrorCode.MQTT_ERR_SUCCESS:
            sock = client.socket()
            if not isinstance(sock, ssl.SSLSocket) or sock.pending() <= 0:
                break
            rc = client.loop_read()

    def _writable(self) -> None:
        self.client.loop_write()

    def _tick(self) -> None:
        self._misc = None
        if self.closed.done():
            return
        self.client.loop_misc()
        if not self.closed.done():
            self._misc = self.loop.call_later(_MISC_INTERVAL, self._tick)

    def _handle_register_write(self, _c: paho.Client, _u: Any, sock: Any) -> None:
        self.loop.add_writer(sock, self._writable)

    def _handle_unregister_write(self, _c: paho.Client, _u: Any, sock: Any) -> None:
        self.loop.remove_writer(sock)

    def _handle_socket_close(self, _c: paho.Client, _u: Any, sock: Any) -> None:
        self.loop.remove_reader(sock)
        self.loop.remove_writer(sock)
        self._sock = None
        # paho calls on_disconnect right after this with a better reason; let it.
        self.loop.call_soon(self._finish, None)

    def _handle_connect(
        self,
        _c: paho.Client,
        _u: Any,
        flags: paho.ConnectFlags,
        reason: ReasonCode,
        props: Properties | None,
    ) -> None:
        if not self.connack.done():
            self.connack.set_result((flags, reason, props))

    def _handle_disconnect(
        self,
        _c: paho.Client,
        _u: Any,
        flags: paho.DisconnectFlags,
        reason: ReasonCode,
        _p: Properties | None,
    ) -> None:
        if self._close_reason is None:
            if flags.is_disconnect_packet_from_server:
                self._close_reason = f"the broker disconnected: {reason.getName()}"
            elif reason.getName() == "Keep alive timeout":
                self._close_reason = "no answer from the broker within the keepalive"
            else:
                self._close_reason = "connection lost"
        self._finish(self._close_reason)

    def _handle_publish(
        self, _c: paho.Client, _u: Any, mid: int, reason: ReasonCode, _p: Properties | None
    ) -> None:
        fut = self._publishes.pop(mid, None)
        if fut is None or fut.done():
            return
        if reason.is_failure:
            fut.set_exception(
                PublishRejected(f"the broker refused the publish: {reason.getName()}")
            )
        else:
            fut.set_result(None)

    def _handle_subscribe(
        self,
        _c: paho.Client,
        _u: Any,
        mid: int,
        codes: list[ReasonCode],
        _p: Properties | None,
    ) -> None:
        fut = self._subscribes.pop(mid, None)
        if fut is not None and not fut.done():
            fut.set_result(codes)

    def _handle_message(self, _c: paho.Client, _u: Any, msg: paho.MQTTMessage) -> None:
        # Never log msg.payload: pushes carry order data.
        if self._on_message is None or self.closing:
            return
        self._on_message(_Inbound(self, msg.mid, msg.qos, bytes(msg.payload)))

    def _finish(self, reason: str | None) -> None:
        reason = reason or self._close_reason or "connection lost"
        if self._misc is not None:
            self._misc.cancel()
            self._misc = None
        if not self.closed.done():
            self.closed.set_result(reason)
        down = LinkDown(f"connection lost before the broker acknowledged: {reason}")
        for fut in self._publishes.values():
            if not fut.done():
                fut.set_exception(down)
                fut.exception()  # a caller that gave up must not leave it "never retrieved"
        self._publishes.clear()
        for sub in self._subscribes.values():
            if not sub.done():
                sub.set_exception(LinkDown(reason))
                sub.exception()
        self._subscribes.clear()


class MqttLink:
    """The terminal's MQTT session. See the module docstring.

    ``backoff`` is for tests (short delays); the daemon uses the default
    (1 s .. 60 s, jittered with ``rng``). Raises ConfigError for a bad URL.
    """

    def __init__(
        self,
        cfg: MqttConfig,
        sn: str,
        *,
        on_push: PushHandler,
        status: Callable[[], TerminalStatus],
        on_state: StateListener | None = None,
        rng: random.Random | None = None,
        backoff: Backoff | None = None,
    ) -> None:
        for url in cfg.urls:
            parse_mqtt_url(url)  # raises ConfigError early
        self._cfg = cfg
        self._node = 0  # index in cfg.urls of the node tried next
        self._sn = sn
        self._on_push = on_push
        self._status = status
        self._on_state = on_state
        self._backoff = backoff or Backoff(1.0, 60.0, rng)
        self._protocol = (
            MQTTProtocolVersion.MQTTv311 if cfg.protocol == "3.1.1" else MQTTProtocolVersion.MQTTv5
        )
        self.state = ConnectionState.DISCONNECTED
        self.reason = "not started"
        self._session: _Session | None = None
        self._task: asyncio.Task[None] | None = None
        self._pump_task: asyncio.Task[None] | None = None
        self._inbox: asyncio.Queue[_Inbound] = asyncio.Queue()
        self._stop = asyncio.Event()
        self._first_attempt = asyncio.Event()
        self._connected = asyncio.Event()
        self._accepting = True
        self._handler_idle = asyncio.Event()
        self._handler_idle.set()
        self._ever_connected = False
        self._status_sent: bytes | None = None  # last status published (_status_key)
        self._status_flight: asyncio.Future[None] | None = None
        self._status_idle = asyncio.Event()
        self._status_idle.set()
        self._status_hold: asyncio.TimerHandle | None = None

    @property
    def topics(self) -> tuple[str, str, str]:
        """(orders, events, status) for this terminal."""
        return orders_topic(self._sn), events_topic(self._sn), status_topic(self._sn)

    @property
    def protocol(self) -> str:
        """The protocol in use now, "5" or "3.1.1" (after any fallback)."""
        return "5" if self._protocol == MQTTProtocolVersion.MQTTv5 else "3.1.1"

    # ------------------------------------------------------------ public API

    async def start(self) -> None:
        """Begin connecting; return once the first attempt has an outcome
        (CONNECTED or FAILED). Each step of an attempt (TCP+TLS, CONNACK,
        SUBACK, status PUBACK) is bounded by CONNECT_TIMEOUT; DNS by the
        resolver. Never raises for network problems: see ``state``/``reason``."""
        if self._task is not None:
            return
        self._task = asyncio.create_task(self._run(), name=f"mqtt-link-{self._sn}")
        self._pump_task = asyncio.create_task(self._pump(), name=f"mqtt-push-{self._sn}")
        first = asyncio.ensure_future(self._first_attempt.wait())
        await asyncio.wait({first, self._task}, return_when=asyncio.FIRST_COMPLETED)
        first.cancel()
        if self._task.done():
            self._task.result()  # a bug in the link: let it show

    async def wait_connected(self, timeout: float) -> bool:
        """True once CONNECTED (now or within ``timeout`` s)."""
        if self.state is ConnectionState.CONNECTED:
            return True
        try:
            async with asyncio.timeout(timeout):
                await self._connected.wait()
        except TimeoutError:
            return False
        return True

    async def publish_event(self, payload: bytes) -> None:
        """QoS 1 on the events topic; returns at the PUBACK.

        Raises LinkDown (not connected, or lost before the PUBACK: retry later)
        and PublishRejected (the broker refused it).
        """
        session = self._session
        if self.state is not ConnectionState.CONNECTED or session is None:
            raise LinkDown(f"MQTT link is {self.state}: {self.reason}")
        await session.publish(events_topic(self._sn), payload)

    def status_changed(self) -> None:
        """``status()`` may have changed: publish it (retained) if it differs from
        the last status published, coalesced as the module docstring says.
        Does nothing when not connected (the next connect publishes it).
        Never raises."""
        if self._status_flight is None and self._status_hold is None:
            loop = asyncio.get_running_loop()
            self._status_hold = loop.call_later(STATUS_HOLD, self._status_held)

    async def publish_status(self) -> None:
        """Publish the status now if it changed, then wait until no status
        publish is in flight (its PUBACK came, or the connection was lost).
        Never raises."""
        if self._status_flight is None:
            self._status_held()
        await self._status_idle.wait()

    def _status_held(self) -> None:
        if self._status_hold is not None:
            self._status_hold.cancel()
            self._status_hold = None
        self._send_status()

    async def stop(self) -> None:
        """Finish the push in progress (up to STOP_GRACE s, so it is acknowledged),
        publish ``offline`` (retained), disconnect cleanly, stop the tasks.
        Never raises; safe to call twice."""
        task = self._task
        if task is None or self._stop.is_set():
            if task is not None:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            return
        self._accepting = False
        try:
            async with asyncio.timeout(STOP_GRACE):
                await self._handler_idle.wait()
        except TimeoutError:
            log.warning("a push was still being handled at stop; it stays unacknowledged")
        self._stop.set()
        try:
            async with asyncio.timeout(2 * CONNECT_TIMEOUT + 5):
                await asyncio.shield(task)
        except TimeoutError:
            task.cancel()
        except Exception:
            log.exception("MQTT link task failed")
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
        if self._pump_task is not None:
            self._pump_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._pump_task
        self._set_state(ConnectionState.DISCONNECTED, "stopped")

    # ------------------------------------------------------------ internals

    def _set_state(self, state: ConnectionState, reason: str) -> None:
        changed = (state, reason) != (self.state, self.reason)
        self.state, self.reason = state, reason
        if state is ConnectionState.CONNECTED:
            self._connected.set()
        else:
            self._connected.clear()
        if not changed:
            return
        log.info("MQTT %s: %s", state, reason)
        if self._on_state is not None:
            try:
                self._on_state(state, reason)
            except Exception:
                log.exception("on_state listener failed")

    def _online_status(self, session: _Session) -> TerminalStatus:
        """``status()``, stamped now, online, with the keepalive in force."""
        now = envelope.timestamp()
        try:
            base = self._status()
        except Exception:
            log.exception("status() failed; publishing a bare status")
            base = TerminalStatus(status="online", timestamp=now)
        return msgspec.structs.replace(
            base, status="online", timestamp=now, keepalive=session.keepalive
        )

    def _offline_payload(self, session: _Session) -> bytes:
        st = TerminalStatus(
            status="offline", timestamp=envelope.timestamp(), keepalive=session.keepalive
        )
        return msgspec.json.encode(st)

    def _send_status(self) -> None:
        session = self._session
        if self.state is not ConnectionState.CONNECTED or session is None:
            return
        status = self._online_status(session)
        key = _status_key(status)
        if key == self._status_sent:
            return
        try:
            flight = session.publish(
                status_topic(self._sn), msgspec.json.encode(status), retain=True
            )
        except LinkDown:
            return
        self._status_sent = key
        self._status_flight = flight
        self._status_idle.clear()
        flight.add_done_callback(self._status_published)

    def _status_published(self, flight: asyncio.Future[None]) -> None:
        self._status_flight = None
        error = None if flight.cancelled() else flight.exception()
        if isinstance(error, PublishRejected):
            log.warning("status publish refused: %s", error)
        elif error is not None:  # lost with its connection: the next connect publishes
            self._status_sent = None
        self._send_status()  # whatever changed meanwhile, as one publish
        if self._status_flight is None:
            self._status_idle.set()

    def _enqueue(self, item: _Inbound) -> None:
        if self._accepting:
            self._inbox.put_nowait(item)
        # else: stopping; not acknowledged, so the broker delivers it next time

    async def _pump(self) -> None:
        """Hand pushes to on_push one at a time; acknowledge after it returns."""
        while True:
            item = await self._inbox.get()
            if item.qos > 0 and (not item.session.is_open or not self._accepting):
                continue  # its connection is gone: the broker redelivers it
            self._handler_idle.clear()
            try:
                await self._on_push(item.payload)
            except Exception as exc:
                log.warning(
                    "push (mid %d) not acknowledged: handler failed with %s: %s; "
                    "reconnecting so the broker delivers it again",
                    item.mid,
                    type(exc).__name__,
                    exc,
                )
                if item.qos > 0:
                    item.session.disconnect(
                        f"push handler failed ({type(exc).__name__}); reconnecting for redelivery"
                    )
            else:
                if item.qos > 0:
                    item.session.ack(item.mid, item.qos)
            finally:
                self._handler_idle.set()

    async def _attempt(self, url: str) -> _Session:
        """One connection to ``url`` up to CONNECTED. Raises _AttemptFailed."""
        session = _Session(
            client_id=self._sn,
            protocol=self._protocol,
            persistent=True,
            cfg=self._cfg,
            on_message=self._enqueue,
            url=url,
        )
        try:
            will = msgspec.json.encode(
                TerminalStatus(
                    status="offline", timestamp=envelope.timestamp(), keepalive=self._cfg.keepalive
                )
            )
            session.prepare(will=will, topic_for_will=status_topic(self._sn))
            await session.open()
            flags = await session.wait_connack(CONNECT_TIMEOUT)
            if not flags.session_present:
                log.log(
                    logging.WARNING if self._ever_connected else logging.INFO,
                    "the broker has no session for %s (first connect, or it expired): "
                    "pushes queued for an older session are gone",
                    self._sn,
                )
            await session.subscribe(orders_topic(self._sn), CONNECT_TIMEOUT)
            status = self._online_status(session)
            try:
                async with asyncio.timeout(CONNECT_TIMEOUT):
                    await session.publish(
                        status_topic(self._sn), msgspec.json.encode(status), retain=True
                    )
                self._status_sent = _status_key(status)
            except TimeoutError:
                raise _AttemptFailed("subscribe", "no PUBACK for the status") from None
            except LinkError as exc:
                raise _AttemptFailed("subscribe", f"status publish failed: {exc}") from exc
        except BaseException:
            await session.aclose("attempt failed")
            raise
        return session

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        urls = self._cfg.urls
        fallbacks = 0
        tried = 0  # nodes tried since the last connection
        while not self._stop.is_set():
            url = urls[self._node]
            host, port, tls = parse_mqtt_url(url)
            where = f"{'mqtts' if tls else 'mqtt'}://{host}:{port}"
            self._set_state(ConnectionState.CONNECTING, f"connecting to {where} as {self._sn}")
            started = loop.time()
            try:
                session = await self._attempt(url)
            except _AttemptFailed as exc:
                if (
                    exc.retry_now
                    and self._protocol == MQTTProtocolVersion.MQTTv5
                    and fallbacks == 0
                ):
                    fallbacks += 1
                    log.info("the broker refused MQTT 5; using MQTT 3.1.1")
                    self._protocol = MQTTProtocolVersion.MQTTv311
                    continue
                was_connected, reason = False, f"{exc.stage}: {exc.reason}"
            except Exception as exc:  # a bug, not the network: keep the link alive
                log.exception("MQTT connection attempt failed unexpectedly")
                was_connected, reason = False, f"internal error: {exc!r}"
            else:
                self._session = session
                self._ever_connected = True
                tried = 0
                self._set_state(
                    ConnectionState.CONNECTED,
                    f"connected to {where} as {self._sn} (MQTT {self.protocol})",
                )
                self._first_attempt.set()
                self.status_changed()  # a change made while connecting
                stop_wait = asyncio.ensure_future(self._stop.wait())
                await asyncio.wait((stop_wait, session.closed), return_when=asyncio.FIRST_COMPLETED)
                stop_wait.cancel()
                if self._stop.is_set() and session.is_open:
                    await self._close_gracefully(session)
                reason = await session.wait_closed(2.0)
                self._session = None
                was_connected = True
            if self._stop.is_set():
                self._first_attempt.set()
                break
            # Failover: the node that failed us is tried again last. A whole
            # round of failures waits out the backoff; the next node of a
            # round is tried at once (a cluster keeps the session).
            self._node = (self._node + 1) % len(urls)
            tried += 1
            if len(urls) > 1 and tried % len(urls):
                log.warning("MQTT %s: %s; trying the next broker node", where, reason)
                continue
            self._first_attempt.set()  # start() returns: connected, or a round failed
            if was_connected and loop.time() - started >= STABLE_AFTER:
                self._backoff.reset()
            delay = self._backoff.next()
            self._set_state(
                ConnectionState.DISCONNECTED if was_connected else ConnectionState.FAILED,
                f"{reason}; retrying in {delay:.1f} s",
            )
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._stop.wait()

    async def _close_gracefully(self, session: _Session) -> None:
        try:
            async with asyncio.timeout(2.0):
                await session.publish(
                    status_topic(self._sn), self._offline_payload(session), retain=True
                )
        except (TimeoutError, LinkError) as exc:
            log.warning("could not publish the offline status: %s", exc)
        session.disconnect("stopped")


def _status_key(status: TerminalStatus) -> bytes:
    """What makes two statuses the same: everything but the timestamp."""
    return msgspec.json.encode(msgspec.structs.replace(status, timestamp=""))


async def probe_connection(cfg: MqttConfig, sn: str, timeout: float) -> tuple[bool, str, str]:
    """Probe the broker the way the link would connect, without touching the
    terminal's session. Returns ``(ok, stage, reason)``: ``stage`` is where it
    stopped (``dns``, ``tcp``, ``tls``, ``auth``, ``subscribe``) or ``ok``;
    ``reason`` is a sentence for the setup screen. Never raises (a bad URL is
    reported at stage ``dns``)."""
    progress: list[Stage] = ["dns"]
    try:
        async with asyncio.timeout(timeout):
            return await _probe(cfg, sn, progress)
    except TimeoutError:
        return False, progress[-1], f"no answer within {timeout:g} s"


async def _probe(cfg: MqttConfig, sn: str, progress: list[Stage]) -> tuple[bool, str, str]:
    loop = asyncio.get_running_loop()
    try:
        host, port, tls = parse_mqtt_url(cfg.url)
    except ConfigError as exc:
        return False, "dns", f"invalid broker URL {cfg.url!r}: {exc}"
    try:
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as exc:
        return False, "dns", _connect_error(exc, host, port).reason
    progress.append("tcp")
    address = infos[0][4]
    try:
        _reader, writer = await asyncio.open_connection(str(address[0]), port)
    except OSError as exc:
        return False, "tcp", _connect_error(exc, host, port).reason
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    if tls:
        progress.append("tls")
        try:
            ctx = _tls_context(cfg)
            _reader, writer = await asyncio.open_connection(
                host, port, ssl=ctx, server_hostname=host, ssl_handshake_timeout=CONNECT_TIMEOUT
            )
        except _AttemptFailed as exc:
            return False, "tls", exc.reason
        except OSError as exc:
            return False, "tls", _connect_error(exc, host, port).reason
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
    progress.append("auth")
    protocol = (
        MQTTProtocolVersion.MQTTv311 if cfg.protocol == "3.1.1" else MQTTProtocolVersion.MQTTv5
    )
    while True:
        session = _Session(client_id=f"{sn}-probe", protocol=protocol, persistent=False, cfg=cfg)
        try:
            session.prepare(will=None, topic_for_will=None)
            await session.open()
            await session.wait_connack(CONNECT_TIMEOUT)
            progress.append("subscribe")
            await session.subscribe(orders_topic(sn), CONNECT_TIMEOUT)
        except _AttemptFailed as exc:
            await session.aclose("probe failed")
            if exc.retry_now and protocol == MQTTProtocolVersion.MQTTv5:
                protocol = MQTTProtocolVersion.MQTTv311
                continue
            return False, exc.stage, exc.reason
        except BaseException:
            session.abort("probe cancelled")
            raise
        session.disconnect("probe done")
        await session.wait_closed(2.0)
        version = "5" if protocol == MQTTProtocolVersion.MQTTv5 else "3.1.1"
        return (
            True,
            "ok",
            f"connected to {host}:{port} as {sn}-probe (MQTT {version}) and subscribed to "
            f"{orders_topic(sn)}",
        )
