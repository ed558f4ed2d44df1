"""One MQTT connection over paho, driven by the asyncio loop (docs/protocol.md part C).

paho rather than aiomqtt: aiomqtt offers no manual PUBACK, and a push must
be acknowledged only after the journal has it.

Contract:

* A ``Session`` is one connection on a fresh paho client, never reused.
  Persistent (the link): MQTT 5 with Clean Start 0 and a Session Expiry
  Interval of ``cfg.session_expiry``, or MQTT 3.1.1 with
  ``clean_session=False``; not persistent (the probe): a clean session. A
  broker that refuses protocol 5 in its CONNACK (3.1.1 return code 1, which
  paho reports as "Unsupported protocol version") fails the attempt with
  ``retry_now``: the caller connects again with 3.1.1.
* TLS (``mqtts://``) verifies the broker against ``ca_file`` (or the system
  store) and its host name, and presents ``cert_file``/``key_file`` when set.
* Manual acknowledgement: given an ``on_message`` handler, the session
  turns paho's ``manual_ack`` on, and a QoS 1 message is acknowledged only
  when ``ack()`` is called. A PUBACK is only ever sent on the connection
  the message arrived on: an acknowledgement that completes after its
  connection died goes nowhere (packet ids are reused across connections;
  acking one on the wrong connection could acknowledge another message).
* Packet size: under MQTT 5 the CONNECT announces a Maximum Packet Size
  (``MAX_PACKET_BYTES``, just over ``cloud.messages.MAX_PUSH_BYTES``), so
  the broker discards bigger messages for this client (acknowledged for the
  publisher, never delivered here, never redelivered); under 3.1.1 the
  engine rejects a bigger payload unread.
* Threads: none of our own and none of paho's. paho runs in its "external
  event loop" mode (``loop_read``/``loop_write``/``loop_misc`` driven by
  ``loop.add_reader``/``add_writer`` and a 1 s timer), so every paho callback
  runs on the asyncio loop and the push handler needs no hand-over between
  threads. Only the blocking part of connecting (DNS, TCP, TLS handshake,
  sending CONNECT) runs in the loop's default executor, with no callbacks
  installed while it does.
* Network and paho failures are converted here, at the boundary: an attempt
  raises ``AttemptFailed`` (with its stage), a publish ``LinkDown`` or
  ``PublishRejected``.
* Payloads are never logged (pushes carry order data).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from agent.config import ConfigError, MqttConfig, mqtt_password
from agent.mqtt.errors import AttemptFailed, LinkDown, PublishRejected
from agent.mqtt.url import BrokerUrl
from cloud.messages import MAX_PUSH_BYTES

__all__ = [
    "CONNECT_TIMEOUT",
    "MAX_PACKET_BYTES",
    "Inbound",
    "Session",
    "connect_error",
    "first_protocol",
    "tls_context",
]

CONNECT_TIMEOUT = 10.0  # s: TCP connect, TLS handshake, then again for the CONNACK/SUBACK
_MISC_INTERVAL = 1.0  # s between paho loop_misc() calls (keepalive pings, ping timeout)
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


def first_protocol(cfg: MqttConfig) -> MQTTProtocolVersion:
    """The protocol to try first: 3.1.1 when configured so, else 5."""
    return MQTTProtocolVersion.MQTTv311 if cfg.protocol == "3.1.1" else MQTTProtocolVersion.MQTTv5


class _ClosingSSLSocket(ssl.SSLSocket):
    """paho 2.2 drops the socket without closing it when the TLS handshake fails
    (``Client._ssl_wrap_socket``); close it here so no file descriptor leaks."""

    def do_handshake(self, block: bool = False) -> None:
        try:
            super().do_handshake(block)
        except BaseException:
            self.close()
            raise


def tls_context(cfg: MqttConfig) -> ssl.SSLContext:
    """Raises AttemptFailed("tls", ...) when a TLS file cannot be loaded."""
    try:
        ctx = ssl.create_default_context(cafile=None if cfg.ca_file is None else str(cfg.ca_file))
        if cfg.cert_file is not None:
            ctx.load_cert_chain(
                str(cfg.cert_file), None if cfg.key_file is None else str(cfg.key_file)
            )
    except (OSError, ssl.SSLError, ValueError) as exc:
        raise AttemptFailed("tls", f"cannot load the TLS files: {exc}") from exc
    ctx.sslsocket_class = _ClosingSSLSocket
    return ctx


def connect_error(exc: BaseException, host: str, port: int) -> AttemptFailed:
    """What a failed DNS lookup, TCP connect or TLS handshake means, in words."""
    if isinstance(exc, socket.gaierror):
        return AttemptFailed("dns", f"cannot resolve {host}: {exc.strerror or exc}")
    if isinstance(exc, ssl.SSLError | ssl.CertificateError):
        return AttemptFailed("tls", f"TLS handshake with {host}:{port} failed: {exc}")
    if isinstance(exc, ConnectionRefusedError):
        return AttemptFailed("tcp", f"{host}:{port} refused the connection")
    if isinstance(exc, TimeoutError):
        return AttemptFailed("tcp", f"{host}:{port} did not answer within {CONNECT_TIMEOUT:g} s")
    if isinstance(exc, OSError):
        return AttemptFailed("tcp", f"cannot connect to {host}:{port}: {exc.strerror or exc}")
    return AttemptFailed("tcp", f"cannot connect to {host}:{port}: {exc!r}")


@dataclass(frozen=True, slots=True)
class Inbound:
    """A message as it arrived, with the session that must acknowledge it."""

    session: Session
    mid: int
    qos: int
    payload: bytes


class Session:
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
        broker: BrokerUrl,
        on_message: Callable[[Inbound], None] | None = None,
    ) -> None:
        self.loop = asyncio.get_running_loop()
        self.cfg = cfg
        self.broker = broker  # this connection's broker node
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
        """TLS, credentials and will. Raises AttemptFailed."""
        cfg = self.cfg
        if self.broker.tls:
            self.client.tls_set_context(tls_context(cfg))
        if cfg.username is not None:
            try:
                password = mqtt_password(cfg)
            except ConfigError as exc:
                raise AttemptFailed("auth", str(exc)) from exc
            self.client.username_pw_set(cfg.username, password)
        if will is not None and topic_for_will is not None:
            self.client.will_set(topic_for_will, will, qos=1, retain=True)

    async def open(self) -> None:
        """DNS, TCP, TLS, CONNECT sent. Raises AttemptFailed."""
        host, port = self.broker.host, self.broker.port
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
            raise connect_error(exc, host, port) from exc
        sock = self.client.socket()
        if rc != MQTTErrorCode.MQTT_ERR_SUCCESS or sock is None:
            raise AttemptFailed("tcp", f"connection to {host}:{port} lost while sending CONNECT")
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
        """Raises AttemptFailed (stage auth) when refused, closed or silent."""
        # Futures, not tasks: asyncio.wait leaves them alone on timeout.
        await asyncio.wait(
            (self.connack, self.closed), timeout=timeout, return_when=asyncio.FIRST_COMPLETED
        )
        if not self.connack.done():
            if self.closed.done():
                raise AttemptFailed("auth", "the broker closed the connection before CONNACK")
            raise AttemptFailed("auth", f"no CONNACK within {timeout:g} s")
        flags, reason, props = self.connack.result()
        if reason.is_failure:
            raise AttemptFailed(
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
        """QoS 1 subscription. Raises AttemptFailed (stage subscribe)."""
        rc, mid = self.client.subscribe(topic, qos=1)
        if rc != MQTTErrorCode.MQTT_ERR_SUCCESS or mid is None:
            raise AttemptFailed("subscribe", f"cannot subscribe: {paho.error_string(rc)}")
        fut: asyncio.Future[list[ReasonCode]] = self.loop.create_future()
        self._subscribes[mid] = fut
        try:
            async with asyncio.timeout(timeout):
                codes = await fut
        except TimeoutError:
            raise AttemptFailed("subscribe", f"no SUBACK within {timeout:g} s") from None
        except LinkDown as exc:
            raise AttemptFailed("subscribe", str(exc)) from exc
        code = codes[0] if codes else ReasonCode(PacketTypes.SUBACK, "Unspecified error")
        if code.is_failure:
            raise AttemptFailed("subscribe", f"the broker refused {topic}: {code.getName()}")
        return code

    def ack(self, mid: int, qos: int) -> None:
        """PUBACK ``mid``, if this connection is still open (else: nowhere)."""
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
        self._on_message(Inbound(self, msg.mid, msg.qos, bytes(msg.payload)))

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
