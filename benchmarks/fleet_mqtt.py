"""The fleet benchmark's MQTT: a small 3.1.1/5 codec and a connection on asyncio.

``benchmarks/fleet.py`` runs thousands of sessions in a few processes;
a paho client per session would cost more CPU and memory than the broker
per message, so each session is this: raw packets (the parts of MQTT 3.1.1
and 5 a terminal and the TMS use: CONNECT with a user and a will,
SUBSCRIBE, QoS 1 PUBLISH and PUBACK, PINGREQ, DISCONNECT) on an
``asyncio.Protocol`` (``Conn``) that resolves a future per CONNACK, SUBACK
and PUBACK. Framing is ``benchmarks.stamps``' (``PacketReader``). A session
is made as ``agent.mqtt.session`` makes the link's: persistent, keepalive 30 s,
MQTT 5's Maximum Packet Size announced, no Nagle.
"""

from __future__ import annotations

import asyncio
import socket
import struct
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from benchmarks.stamps import Packet, PacketReader, decode_remaining_length, encode_remaining_length
from cloud.messages import MAX_PUSH_BYTES

KEEPALIVE = 30  # the agent's default
SESSION_EXPIRY = 24 * 3600
MAX_PACKET = MAX_PUSH_BYTES + 1024  # as agent.mqtt.session announces
# Unacknowledged QoS 1 publishes per connection: at most this, and at most
# the broker's MQTT 5 Receive Maximum (Mosquitto's is its max_inflight_messages,
# 20). NATS stores each QoS 1 publish in JetStream (three replicas) before its
# PUBACK: with 16 in flight the TMS, not the broker, capped a saturated run.
PUBLISH_WINDOW = 256
CONNECT_TIMEOUT = 60.0

CONNECT, CONNACK, PUBLISH, PUBACK, SUBSCRIBE, SUBACK, PINGREQ, PINGRESP = 1, 2, 3, 4, 8, 9, 12, 13
PINGREQ_PACKET = b"\xc0\x00"
DISCONNECT_PACKET = b"\xe0\x00"


def _packet(first: int, body: bytes) -> bytes:
    return bytes([first]) + encode_remaining_length(len(body)) + body


def _str(data: str | bytes) -> bytes:
    raw = data.encode() if isinstance(data, str) else data
    return struct.pack("!H", len(raw)) + raw


def _props(*pairs: tuple[int, bytes]) -> bytes:
    """An MQTT 5 property list: its length, then each identifier and value."""
    body = b"".join(bytes([ident]) + value for ident, value in pairs)
    return encode_remaining_length(len(body)) + body


def connect_packet(
    client_id: str,
    *,
    v5: bool,
    username: str,
    password: str,
    persistent: bool,
    will: tuple[str, bytes] | None = None,
) -> bytes:
    """CONNECT (spec 3.1 / v5 3.1) with a user, keepalive ``KEEPALIVE``, and a
    retained QoS 1 will; persistent: clean start/session off (v5: session
    expiry 24 h); v5 also announces ``MAX_PACKET``."""
    flags = 0x80 | 0x40 | (0 if persistent else 0x02)
    if will is not None:
        flags |= 0x04 | 0x08 | 0x20  # will, QoS 1, retained
    header = _str("MQTT") + bytes([5 if v5 else 4, flags]) + struct.pack("!H", KEEPALIVE)
    if v5:
        expiry = SESSION_EXPIRY if persistent else 0
        header += _props((0x11, struct.pack("!I", expiry)), (0x27, struct.pack("!I", MAX_PACKET)))
    payload = _str(client_id)
    if will is not None:
        payload += (b"\x00" if v5 else b"") + _str(will[0]) + _str(will[1])
    return _packet(0x10, header + payload + _str(username) + _str(password))


def subscribe_packet(packet_id: int, topic: str, *, v5: bool) -> bytes:
    props = b"\x00" if v5 else b""
    return _packet(0x82, struct.pack("!H", packet_id) + props + _str(topic) + b"\x01")


def publish_packet(
    topic: str,
    payload: bytes,
    packet_id: int,
    *,
    v5: bool,
    retain: bool = False,
    expiry_s: int | None = None,
) -> bytes:
    """QoS 1 PUBLISH; v5 with the Message Expiry Interval when given."""
    header = _str(topic) + struct.pack("!H", packet_id)
    if v5:
        header += _props((0x02, struct.pack("!I", expiry_s))) if expiry_s else b"\x00"
    return _packet(0x32 | (0x01 if retain else 0), header + payload)


def puback_packet(packet_id: int) -> bytes:
    return b"\x40\x02" + struct.pack("!H", packet_id)  # v5 too: no reason code = success


@dataclass(frozen=True, slots=True)
class Publish:
    topic: str
    packet_id: int | None
    payload: bytes


def parse_publish(packet: Packet, *, v5: bool) -> Publish:
    (size,) = struct.unpack_from("!H", packet.body)
    topic = packet.body[2 : 2 + size].decode()
    at = 2 + size
    packet_id = None
    if (packet.flags >> 1) & 0x03:
        (packet_id,) = struct.unpack_from("!H", packet.body, at)
        at += 2
    if v5:
        parsed = decode_remaining_length(packet.body, at)
        if parsed is None:
            raise ValueError("PUBLISH properties cut short")
        length, at = parsed
        at += length
    return Publish(topic, packet_id, packet.body[at:])


# MQTT 5 property sizes (v5 2.2.2.2): fixed-size ones by identifier; "s" a
# length-prefixed string or binary, "p" a string pair, "v" a variable integer.
_PROPERTY_SIZES: dict[int, int | str] = {
    0x01: 1, 0x02: 4, 0x03: "s", 0x08: "s", 0x09: "s", 0x0B: "v", 0x11: 4, 0x12: "s",
    0x13: 2, 0x15: "s", 0x16: "s", 0x17: 1, 0x18: 4, 0x19: 1, 0x1A: "s", 0x1C: "s",
    0x1F: "s", 0x21: 2, 0x22: 2, 0x23: 2, 0x24: 1, 0x25: 1, 0x26: "p", 0x27: 4,
    0x28: 1, 0x29: 1, 0x2A: 1,
}  # fmt: skip


def receive_maximum(connack: Packet) -> int:
    """An MQTT 5 CONNACK's Receive Maximum (property 0x21; 65535 when absent)."""
    parsed = decode_remaining_length(connack.body, 2)
    if parsed is None:
        return 65535
    length, at = parsed
    end = at + length
    while at < end:
        ident = connack.body[at]
        at += 1
        size = _PROPERTY_SIZES.get(ident)
        if ident == 0x21:
            return int(struct.unpack_from("!H", connack.body, at)[0])
        if isinstance(size, int):
            at += size
        elif size == "v":
            skip = decode_remaining_length(connack.body, at)
            at = end if skip is None else skip[1]
        elif size in ("s", "p"):
            for _ in range(2 if size == "p" else 1):
                at += 2 + struct.unpack_from("!H", connack.body, at)[0]
        else:
            break  # unknown: stop reading
    return 65535


def ack_code(packet: Packet, *, v5: bool) -> tuple[int, int]:
    """(packet id, first reason/return code) of a PUBACK or SUBACK."""
    (packet_id,) = struct.unpack_from("!H", packet.body)
    rest = packet.body[2:]
    if packet.kind == SUBACK and v5:
        parsed = decode_remaining_length(packet.body, 2)
        if parsed is None:
            raise ValueError("SUBACK properties cut short")
        length, at = parsed
        rest = packet.body[at + length :]
    return packet_id, rest[0] if rest else 0


# ---------------------------------------------------------------- one connection


class MqttError(ConnectionError):
    """Refused or lost: the CONNACK, SUBACK or PUBACK said no, or the socket closed."""


class Conn(asyncio.Protocol):
    """One MQTT connection on the loop: sends what it is given, answers
    PINGREQs' replies away, hands PUBLISHes to ``on_publish`` and resolves
    the futures waiting for CONNACK, SUBACKs and PUBACKs."""

    def __init__(self, *, v5: bool, on_publish: Callable[[Conn, Publish], None]) -> None:
        loop = asyncio.get_running_loop()
        self.v5 = v5
        self.on_publish = on_publish
        self.reader = PacketReader()
        self.transport: asyncio.Transport | None = None
        self.connack: asyncio.Future[int] = loop.create_future()
        self.closed: asyncio.Future[None] = loop.create_future()
        self.waiting: dict[int, asyncio.Future[int]] = {}
        self.window = asyncio.Semaphore(PUBLISH_WINDOW)
        self.last_sent = time.monotonic()
        self._next_id = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None:  # small packets back to back: no Nagle (as the agent)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        for packet in self.reader.feed(data):
            if packet.kind == PUBLISH:
                self.on_publish(self, parse_publish(packet, v5=self.v5))
            elif packet.kind in (PUBACK, SUBACK):
                packet_id, code = ack_code(packet, v5=self.v5)
                fut = self.waiting.pop(packet_id, None)
                if fut is not None and not fut.done():
                    fut.set_result(code)
            elif packet.kind == CONNACK and not self.connack.done():
                if self.v5:
                    self.window = asyncio.Semaphore(min(PUBLISH_WINDOW, receive_maximum(packet)))
                self.connack.set_result(packet.body[1])

    def connection_lost(self, exc: Exception | None) -> None:
        lost = MqttError(f"connection lost: {exc or 'closed by the broker'}")
        for fut in [self.connack, *self.waiting.values()]:
            if not fut.done():
                fut.set_exception(lost)
        self.waiting.clear()
        if not self.closed.done():
            self.closed.set_result(None)

    def send(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)
            self.last_sent = time.monotonic()

    def packet_id(self) -> int:
        while True:
            self._next_id = self._next_id % 65535 + 1
            if self._next_id not in self.waiting:
                return self._next_id

    async def request(self, build: Callable[[int], bytes]) -> int:
        """Send a SUBSCRIBE or QoS 1 PUBLISH; its SUBACK/PUBACK code."""
        packet_id = self.packet_id()
        fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self.waiting[packet_id] = fut
        self.send(build(packet_id))
        return await fut

    async def subscribe(self, topic: str) -> int:
        """SUBSCRIBE at QoS 1; the SUBACK's code (1: granted QoS 1)."""
        return await self.request(lambda pid: subscribe_packet(pid, topic, v5=self.v5))

    async def publish(
        self, topic: str, payload: bytes, *, retain: bool = False, expiry_s: int | None = None
    ) -> int:
        """QoS 1, within ``PUBLISH_WINDOW`` unacknowledged; the PUBACK's code."""
        async with self.window:
            return await self.request(
                lambda pid: publish_packet(
                    topic, payload, pid, v5=self.v5, retain=retain, expiry_s=expiry_s
                )
            )

    def close(self) -> None:
        self.send(DISCONNECT_PACKET)
        if self.transport is not None:
            self.transport.close()


async def open_conn(
    host: str,
    port: int,
    client_id: str,
    username: str,
    password: str,
    *,
    v5: bool,
    on_publish: Callable[[Conn, Publish], None],
    will: tuple[str, bytes] | None = None,
) -> Conn:
    """A connected, accepted, persistent session. Raises MqttError, OSError."""
    loop = asyncio.get_running_loop()
    _, conn = await loop.create_connection(lambda: Conn(v5=v5, on_publish=on_publish), host, port)
    conn.send(
        connect_packet(
            client_id, v5=v5, username=username, password=password, persistent=True, will=will
        )
    )
    code = await asyncio.wait_for(conn.connack, CONNECT_TIMEOUT)
    if code != 0:
        conn.close()
        raise MqttError(f"CONNACK refused {client_id}: code {code:#x}")
    return conn


PING_TICK = 0.1  # seconds


async def keep_alive(conns: Callable[[], Sequence[Conn]]) -> None:
    """A PINGREQ on every connection once per 0.8 keepalive (the broker drops
    one silent for 1.5), spread evenly over that period as the pings of N
    terminals that started at different times are: all at once, 16,000
    sessions' pings stalled the broker and the floor's p99 for ~20 ms."""
    slices = round(KEEPALIVE * 0.8 / PING_TICK)
    tick = 0
    while True:
        await asyncio.sleep(PING_TICK)
        for conn in conns()[tick % slices :: slices]:
            conn.send(PINGREQ_PACKET)
        tick += 1
