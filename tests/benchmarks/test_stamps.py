"""benchmarks/stamps.py with real parts: Mosquitto, TCP and Unix sockets, the child process.

The MQTT bytes in the parser tests are built here, from the spec, not with
the module's own encoders.
"""

from __future__ import annotations

import os
import socket
import struct
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from agent.bridge_protocol import (
    ConnectionEvent,
    HelloEvent,
    Screen,
    ScreenEvent,
    Snapshot,
    TerminalInfo,
    encode_line,
)
from benchmarks.stamps import (
    REPO,
    MqttRefused,
    Packet,
    PacketReader,
    ScreenStamper,
    StampedSubscriber,
    decode_remaining_length,
    enable_kernel_stamps,
    encode_remaining_length,
    parse_publish,
    realtime_offset_ns,
    recv_stamped,
)
from sandbox.broker_mosquitto import MosquittoBroker
from tests.waiting import until

TERMINAL = TerminalInfo(sn="BENCH0001")


# ---------------------------------------------------------------- MQTT bytes, from the spec


def _length(n: int) -> bytes:
    out = bytearray()
    while True:
        n, digit = divmod(n, 128)
        out.append(digit | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _publish_bytes(topic: str, payload: bytes, qos: int = 0, packet_id: int = 0) -> bytes:
    body = struct.pack("!H", len(topic)) + topic.encode()
    if qos:
        body += struct.pack("!H", packet_id)
    return bytes([0x30 | qos << 1]) + _length(len(body + payload)) + body + payload


STREAM_PARTS = [
    (b"\x20\x02\x00\x00", Packet(2, 0, b"\x00\x00")),  # CONNACK
    (b"\x90\x03\x00\x01\x01", Packet(9, 0, b"\x00\x01\x01")),  # SUBACK
    (_publish_bytes("a/b", b"hi"), Packet(3, 0, b"\x00\x03a/bhi")),
    (
        _publish_bytes("t", b"m" * 200, qos=1, packet_id=7),  # 2-byte remaining length
        Packet(3, 2, b"\x00\x01t\x00\x07" + b"m" * 200),
    ),
    (
        _publish_bytes("big", b"L" * 17_000, qos=1, packet_id=258),  # 3-byte
        Packet(3, 2, b"\x00\x03big\x01\x02" + b"L" * 17_000),
    ),
    (b"\xd0\x00", Packet(13, 0, b"")),  # PINGRESP: no body at all
]
STREAM = b"".join(raw for raw, _ in STREAM_PARTS)
PACKETS = [packet for _, packet in STREAM_PARTS]


def test_the_parser_gets_the_same_packets_wherever_the_bytes_are_split() -> None:
    assert len(_length(len(PACKETS[4].body))) == 3  # the stream has a 3-byte length
    for cut in range(len(STREAM) + 1):
        reader = PacketReader()
        first = reader.feed(STREAM[:cut])
        assert first == PACKETS[: len(first)], cut
        assert first + reader.feed(STREAM[cut:]) == PACKETS, cut


def test_the_parser_gets_them_byte_by_byte() -> None:
    reader = PacketReader()
    got = [p for i in range(len(STREAM)) for p in reader.feed(STREAM[i : i + 1])]
    assert got == PACKETS


def test_publish_fields() -> None:
    small, medium, big = (parse_publish(p) for p in PACKETS[2:5])
    assert (small.topic, small.payload, small.qos, small.packet_id) == ("a/b", b"hi", 0, None)
    assert (medium.topic, medium.payload, medium.qos, medium.packet_id) == ("t", b"m" * 200, 1, 7)
    assert (big.topic, len(big.payload), big.packet_id) == ("big", 17_000, 258)


@pytest.mark.parametrize(
    ("value", "wire"),
    [
        (0, b"\x00"),
        (127, b"\x7f"),
        (128, b"\x80\x01"),
        (16_383, b"\xff\x7f"),
        (16_384, b"\x80\x80\x01"),
        (2_097_151, b"\xff\xff\x7f"),
        (2_097_152, b"\x80\x80\x80\x01"),
        (268_435_455, b"\xff\xff\xff\x7f"),
    ],
)
def test_remaining_length_both_ways(value: int, wire: bytes) -> None:
    assert encode_remaining_length(value) == wire
    assert decode_remaining_length(b"\x30" + wire + b"rest") == (value, 1 + len(wire))
    assert decode_remaining_length(b"\x30" + wire[:-1]) is None  # not all there yet


def test_a_five_byte_remaining_length_is_malformed() -> None:
    with pytest.raises(ValueError, match="malformed"):
        PacketReader().feed(b"\x30\xff\xff\xff\xff\x01")


# ---------------------------------------------------------------- kernel stamps


def test_the_stamp_is_the_kernel_receive_time_not_the_read() -> None:
    offset = realtime_offset_ns()
    with socket.create_server(("127.0.0.1", 0)) as server:
        reader = socket.create_connection(server.getsockname())
        writer, _ = server.accept()
        with reader, writer:
            enable_kernel_stamps(reader)
            for _ in range(100):  # the kernel turns stamping on lazily
                writer.sendall(b"w")
                if recv_stamped(reader, offset)[1] is not None:
                    break
                time.sleep(0.01)
            before = time.perf_counter()
            writer.sendall(b"x")
            sent = time.perf_counter()
            time.sleep(0.2)  # a reader that comes late
            data, at = recv_stamped(reader, offset)
            read = time.perf_counter()
    assert data == b"x"
    assert at is not None
    assert before - 0.001 < at < sent + 0.05
    assert read - at > 0.19


# ---------------------------------------------------------------- the subscriber, on Mosquitto


@pytest.fixture(scope="module")
def publisher(module_broker: MosquittoBroker) -> Iterator[mqtt.Client]:
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"test-pub-{uuid.uuid4().hex[:6]}")
    ready = threading.Event()
    client.on_connect = lambda c, u, f, rc, p: ready.set()
    client.connect(module_broker.host, module_broker.port)
    client.loop_start()
    assert ready.wait(5)
    yield client
    client.disconnect()
    client.loop_stop()


@pytest.fixture
def topic() -> str:
    return f"test/stamps/{uuid.uuid4().hex[:8]}"


@pytest.fixture
def tap(module_broker: MosquittoBroker, topic: str) -> Iterator[StampedSubscriber]:
    sub = StampedSubscriber(
        module_broker.host, module_broker.port, [topic, f"{topic}/other"], name="test"
    )
    yield sub
    sub.close()


@pytest.mark.parametrize("qos", [0, 1])
def test_a_publish_arrives_with_its_topic_payload_and_a_stamp(
    tap: StampedSubscriber, publisher: mqtt.Client, topic: str, qos: int
) -> None:
    for where in (topic, f"{topic}/other"):
        mark = tap.mark()
        before = time.perf_counter()
        publisher.publish(where, f"hello {where}".encode(), qos=qos)
        got = tap.wait_for(lambda a: True, after=mark, timeout=5)
        after = time.perf_counter()
        assert (got.topic, got.payload) == (where, f"hello {where}".encode())
        assert before <= got.at <= after


def test_a_late_reader_still_gets_the_arrival_time(
    tap: StampedSubscriber, publisher: mqtt.Client, topic: str
) -> None:
    with tap._send_lock:  # the reader blocks on the first PUBACK: the second message waits
        publisher.publish(topic, b"first", qos=1)
        time.sleep(0.05)
        before = time.perf_counter()
        publisher.publish(topic, b"second", qos=0)
        time.sleep(0.2)
    got = tap.wait_for(lambda a: a.payload == b"second", timeout=5)
    assert before <= got.at < before + 0.1  # the kernel's stamp, not the late read


def test_qos1_messages_are_acknowledged(
    tap: StampedSubscriber, publisher: mqtt.Client, topic: str
) -> None:
    # Mosquitto keeps at most 20 unacknowledged QoS 1 messages in flight to a
    # client (max_inflight_messages): without PUBACKs the 21st never comes.
    for i in range(50):
        publisher.publish(topic, b"n%d" % i, qos=1)
    tap.wait_for(lambda a: a.payload == b"n49", timeout=5)
    time.sleep(0.3)  # nothing redelivered
    assert [a.payload for a in tap.arrivals] == [b"n%d" % i for i in range(50)]


@pytest.mark.parametrize("size", [200, 200_000])  # 2- and 3-byte lengths; many segments
def test_long_payloads_arrive_whole(
    tap: StampedSubscriber, publisher: mqtt.Client, topic: str, size: int
) -> None:
    payload = os.urandom(size)
    publisher.publish(topic, payload, qos=1)
    got = tap.wait_for(lambda a: True, timeout=5)
    assert got.payload == payload
    assert len(tap.arrivals) == 1


def test_the_session_is_clean_without_keepalive_and_close_disconnects(
    module_broker: MosquittoBroker, topic: str
) -> None:
    sub = StampedSubscriber(module_broker.host, module_broker.port, [topic], name="idcheck")
    assert sub.client_id.startswith("bench-idcheck-")
    sub.close()
    sub.close()  # twice is fine

    def logged(text: str) -> bool:
        return text in module_broker.log_path.read_text()

    # MQTT 3.1.1 (p2), clean session (c1), keepalive off (k0); a DISCONNECT, not a drop.
    until(lambda: logged(f"as {sub.client_id} (p2, c1, k0)."))
    until(lambda: logged(f"Client {sub.client_id} disconnected."))


# ---------------------------------------------------------------- refusals, from a scripted broker


def _scripted_broker(answers: list[bytes]) -> tuple[socket.socket, int, list[bytes]]:
    """A listening socket whose one client gets ``answers``, one per packet it sends."""
    server = socket.create_server(("127.0.0.1", 0))
    received: list[bytes] = []

    def serve() -> None:
        conn, _ = server.accept()
        with conn:
            for answer in answers:
                received.append(conn.recv(4096))
                conn.sendall(answer)
            conn.recv(4096)

    threading.Thread(target=serve, daemon=True).start()
    return server, server.getsockname()[1], received


def test_a_refused_connection_raises() -> None:
    server, port, received = _scripted_broker([b"\x20\x02\x00\x05"])  # not authorized
    with server, pytest.raises(MqttRefused, match="refused the connection"):
        StampedSubscriber("127.0.0.1", port, ["a"], name="refused")
    connect = received[0]
    # MQTT 3.1.1, clean session, keepalive 0, the client id last.
    assert connect[:12] == b"\x10" + bytes([len(connect) - 2]) + b"\x00\x04MQTT\x04\x02\x00\x00"
    assert connect[14:].startswith(b"bench-refused-")


def test_a_refused_subscription_raises() -> None:
    server, port, received = _scripted_broker([b"\x20\x02\x00\x00", b"\x90\x04\x00\x01\x01\x80"])
    with server, pytest.raises(MqttRefused, match="refused a subscription"):
        StampedSubscriber("127.0.0.1", port, ["a", "b/#"], name="refused")
    assert received[1] == b"\x82\x0c\x00\x01\x00\x01a\x01\x00\x03b/#\x01"  # both at QoS 1


# ---------------------------------------------------------------- the screen stamper


def _screen(seq: int, screen: Screen = Screen.IDLE, message: str | None = None) -> ScreenEvent:
    return ScreenEvent(seq=seq, screen=screen, message=message)


def _hello(seq: int) -> bytes:
    return encode_line(
        HelloEvent(seq=seq, terminal=TERMINAL, snapshot=Snapshot(screen=_screen(seq)))
    )


class FakeBridge:
    """The agent's side of the bridge socket: listens at ``path``, writes lines."""

    def __init__(self, path: Path) -> None:
        self.server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.server.bind(str(path))
        self.server.listen()
        self.server.settimeout(10)
        self.path = path

    def accept(self) -> socket.socket:
        conn, _ = self.server.accept()
        return conn

    def close(self) -> None:
        self.server.close()
        self.path.unlink()


@pytest.fixture
def bridge_path(tmp_path: Path) -> Path:
    return tmp_path / "b.sock"


@pytest.fixture
def stamper(bridge_path: Path) -> Iterator[ScreenStamper]:
    s = ScreenStamper(bridge_path)
    yield s
    s.close()


def test_screens_are_stamped_between_the_write_and_their_receipt(
    bridge_path: Path, stamper: ScreenStamper
) -> None:
    bridge = FakeBridge(bridge_path)
    with bridge.accept() as conn:
        conn.sendall(_hello(1))
        stamper.wait_hello(timeout=5)
        assert [s.screen.screen for s in stamper.seen] == [Screen.IDLE]  # the hello's screen
        stamps = [stamper.seen[0].at]
        for seq in range(2, 6):
            mark = stamper.mark()
            before = time.perf_counter()
            conn.sendall(encode_line(ConnectionEvent(seq=seq, mqtt="connected")))  # not kept
            conn.sendall(encode_line(_screen(seq, Screen.WAITING_FOR_CARD)))
            got = stamper.wait_for(lambda s: s.screen is Screen.WAITING_FOR_CARD, after=mark)
            after = time.perf_counter()
            assert got.screen.seq == seq
            assert before <= got.at <= after
            assert stamper.mark() == mark + 1
            stamps.append(got.at)
        assert stamps == sorted(stamps)
        conn.setblocking(False)
        with pytest.raises(BlockingIOError):
            conn.recv(1)  # the stamper never writes to the agent
    bridge.close()


def test_the_stamp_does_not_wait_for_this_process(
    bridge_path: Path, stamper: ScreenStamper
) -> None:
    bridge = FakeBridge(bridge_path)
    with bridge.accept() as conn:
        conn.sendall(_hello(1))
        stamper.wait_hello(timeout=5)
        with stamper._log.cond:  # the reader here stops at the next line: the one after waits
            conn.sendall(encode_line(_screen(2, Screen.READING)))
            time.sleep(0.05)
            sent = time.perf_counter()
            conn.sendall(encode_line(_screen(3, Screen.AUTHORIZING)))
            time.sleep(0.2)
        got = stamper.wait_for(lambda s: s.seq == 3, timeout=5)
        assert got.at - sent < 0.1  # taken in the child, on arrival
    bridge.close()


def test_a_line_split_across_writes_is_stamped_once_complete(
    bridge_path: Path, stamper: ScreenStamper
) -> None:
    bridge = FakeBridge(bridge_path)
    with bridge.accept() as conn:
        conn.sendall(_hello(1))
        stamper.wait_hello(timeout=5)
        line = encode_line(_screen(2, Screen.RESULT, message="split " * 50))
        mark = stamper.mark()
        conn.sendall(line[:100])
        time.sleep(0.1)
        assert stamper.mark() == mark
        completed = time.perf_counter()
        conn.sendall(line[100:])
        got = stamper.wait_for(lambda s: s.seq == 2, after=mark, timeout=5)
        assert completed <= got.at
        assert got.screen.message == "split " * 50
    bridge.close()


def test_the_stamper_reconnects_when_the_agent_restarts(
    bridge_path: Path, stamper: ScreenStamper
) -> None:
    bridge = FakeBridge(bridge_path)
    with bridge.accept() as conn:
        conn.sendall(_hello(1) + encode_line(_screen(2, Screen.READING)))
        stamper.wait_for(lambda s: s.seq == 2, timeout=5)
    bridge.close()
    time.sleep(0.2)  # the stamper retries meanwhile: no socket file, then nobody listening
    bridge = FakeBridge(bridge_path)
    with bridge.accept() as conn:
        conn.sendall(_hello(10) + encode_line(_screen(11, Screen.WAITING_FOR_CARD)))
        got = stamper.wait_for(lambda s: s.seq == 11, timeout=5)
    bridge.close()
    assert got.screen.screen is Screen.WAITING_FOR_CARD
    assert stamper.hellos == 2
    assert [s.screen.seq for s in stamper.seen] == [1, 2, 10, 11]


# ---------------------------------------------------------------- the module as a script


def test_run_as_a_script_it_only_says_what_it_is() -> None:
    for args in ([], ["--quick"]):
        out = subprocess.run(
            [sys.executable, str(REPO / "benchmarks" / "stamps.py"), *args],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )
        assert out.stdout.count("\n") == 1
        assert "support module" in out.stdout


def test_the_child_imports_only_the_standard_library() -> None:
    code = (
        "import sys, benchmarks.stamps; "
        "print(' '.join(m for m in ('asyncio', 'agent', 'msgspec', 'paho') if m in sys.modules))"
    )
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, env=env, check=True
    )
    assert out.stdout.strip() == ""
