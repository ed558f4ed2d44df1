"""Arrival stamps for the latency benchmarks, taken where the arrival happens.

Why: the benchmarks used to stamp arrivals in threads of the benchmark
script (a paho network thread, a bridge client's asyncio thread), which also
runs the POS client's loop. With the GIL, and six busy processes on two
cores, a stamp was sometimes ~3 ms late: the push's stamp could come after
the screen event it caused (the agent span's minimum was -3 ms), and the
interpreter's switch interval alone moved the p99 by 1.2 ms. Here each
stamp is taken by something that does not wait for the script's GIL:

* ``StampedSubscriber``: a bare MQTT 3.1.1 subscriber on a raw TCP socket
  (no paho) whose arrivals carry the kernel's receive time
  (``SO_TIMESTAMPNS``), converted to the ``time.perf_counter()`` domain.
* ``ScreenStamper``: a tiny child process (stdlib only, so it starts fast)
  reading the agent's UI-bridge socket, stamping with ``perf_counter()`` as
  soon as each ``recv`` returns. Unix stream sockets carry no kernel
  timestamps, so the stamp is taken on the same wake-up a real UI process
  would have. ``perf_counter()`` is ``CLOCK_MONOTONIC`` on Linux: one clock
  for every process.

Both keep what arrived in order, with ``mark()`` and ``wait_for()`` to pick
the first match after a mark. The parser (``PacketReader``,
``parse_publish``) is sans-I/O, for the tests.

Run as ``python -m benchmarks.stamps screens SOCKET`` it is the stamper's
child. Run as a script otherwise (with ``--quick`` too) it only says what it
is and exits 0: ``make bench`` runs the ``BENCHES`` list, which leaves it out,
but a loop over ``benchmarks/*.py`` must not fail on it. The module imports nothing but the standard
library at the top, because the child imports it: the bridge protocol is
imported by the parent only, when a ``ScreenStamper`` starts.
"""

from __future__ import annotations

import os
import queue
import secrets
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Generic, NoReturn, TypeVar

if TYPE_CHECKING:
    from agent import bridge_protocol as bp

T = TypeVar("T")
R = TypeVar("R")

REPO = Path(__file__).resolve().parents[1]
RECV_CHUNK = 65536
CONNECT_RETRY = 0.05  # seconds between the child's connect attempts
HANDSHAKE_TIMEOUT = 5.0

# Linux's SO_TIMESTAMPNS (== SCM_TIMESTAMPNS); Python's socket module lacks it.
SO_TIMESTAMPNS: int = getattr(socket, "SO_TIMESTAMPNS", 35)
_TIMESPEC = struct.Struct("@ll")  # struct timespec: tv_sec, tv_nsec


# ---------------------------------------------------------------- what arrived


@dataclass(frozen=True, slots=True)
class Arrival:
    at: float  # time.perf_counter() domain: the kernel's receive time (see StampedSubscriber)
    topic: str
    payload: bytes


@dataclass(frozen=True, slots=True)
class Seen:
    at: float  # time.perf_counter() in the stamper's child, when its recv returned
    screen: bp.ScreenEvent


class _Log(Generic[T]):
    """Items in arrival order, filled by one thread, waited on by others."""

    def __init__(self) -> None:
        self.items: list[T] = []
        self.cond = threading.Condition()

    def add(self, items: Sequence[T]) -> None:
        """Append ``items`` and wake the waiters (also when empty: state changed)."""
        with self.cond:
            self.items.extend(items)
            self.cond.notify_all()

    def mark(self) -> int:
        with self.cond:
            return len(self.items)

    def wait(self, match: Callable[[], R | None], timeout: float) -> R | None:
        """The first non-None ``match()``, or None after ``timeout`` seconds."""
        found: R | None = None

        def ready() -> bool:
            nonlocal found
            found = match()
            return found is not None

        with self.cond:
            self.cond.wait_for(ready, timeout)
        return found

    def first(self, pred: Callable[[T], bool], after: int) -> T | None:
        return next((x for x in self.items[after:] if pred(x)), None)


# ---------------------------------------------------------------- MQTT 3.1.1, the parts we need

CONNACK, PUBLISH, SUBACK = 2, 3, 9  # packet types (first byte's high nibble)
DISCONNECT_PACKET = b"\xe0\x00"


class MqttRefused(ConnectionError):
    """The broker refused the connection or a subscription."""


def encode_remaining_length(n: int) -> bytes:
    """MQTT's variable-length integer: 7 bits a byte, low first, high bit = more."""
    if not 0 <= n <= 268_435_455:
        raise ValueError(f"remaining length {n} out of range")
    out = bytearray()
    while True:
        n, digit = divmod(n, 128)
        out.append(digit | (0x80 if n else 0))
        if not n:
            return bytes(out)


def decode_remaining_length(buf: bytes | bytearray, start: int = 1) -> tuple[int, int] | None:
    """(length, offset past it) of the remaining length at ``start``; None if
    ``buf`` ends inside it. Raises ValueError past four bytes (malformed)."""
    value = 0
    for i in range(4):
        if start + i >= len(buf):
            return None
        byte = buf[start + i]
        value |= (byte & 0x7F) << (7 * i)
        if not byte & 0x80:
            return value, start + i + 1
    raise ValueError("malformed remaining length (more than four bytes)")


def _packet(first: int, body: bytes) -> bytes:
    return bytes([first]) + encode_remaining_length(len(body)) + body


def _string(text: str) -> bytes:
    raw = text.encode()
    return struct.pack("!H", len(raw)) + raw


def connect_packet(client_id: str) -> bytes:
    """CONNECT, MQTT 3.1.1: clean session, keepalive 0 (off: no pings to answer)."""
    return _packet(
        0x10, _string("MQTT") + bytes([4, 0x02]) + struct.pack("!H", 0) + _string(client_id)
    )


def subscribe_packet(packet_id: int, topics: Sequence[str], qos: int = 1) -> bytes:
    body = struct.pack("!H", packet_id) + b"".join(_string(t) + bytes([qos]) for t in topics)
    return _packet(0x82, body)  # 0x82: SUBSCRIBE's flags must be 0010


def puback_packet(packet_id: int) -> bytes:
    return bytes([0x40, 2]) + struct.pack("!H", packet_id)


@dataclass(frozen=True, slots=True)
class Packet:
    kind: int  # the packet type
    flags: int  # the first byte's low nibble
    body: bytes  # variable header and payload


@dataclass(frozen=True, slots=True)
class Publish:
    topic: str
    payload: bytes
    qos: int
    packet_id: int | None  # QoS 1 and 2 only


def parse_publish(packet: Packet) -> Publish:
    qos = (packet.flags >> 1) & 0x03
    (size,) = struct.unpack_from("!H", packet.body)
    topic = packet.body[2 : 2 + size].decode()
    at = 2 + size
    packet_id = None
    if qos:
        (packet_id,) = struct.unpack_from("!H", packet.body, at)
        at += 2
    return Publish(topic, packet.body[at:], qos, packet_id)


class PacketReader:
    """Incremental MQTT framing: feed bytes as they come, get the packets they complete."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[Packet]:
        self._buf += data
        out: list[Packet] = []
        while (packet := self._next()) is not None:
            out.append(packet)
        return out

    def _next(self) -> Packet | None:
        header = decode_remaining_length(self._buf)
        if header is None:
            return None
        length, start = header
        end = start + length
        if len(self._buf) < end:
            return None
        first = self._buf[0]
        packet = Packet(first >> 4, first & 0x0F, bytes(self._buf[start:end]))
        del self._buf[:end]
        return packet


# ---------------------------------------------------------------- kernel receive stamps


def realtime_offset_ns(readings: int = 5) -> int:
    """CLOCK_REALTIME minus perf_counter, in ns, from the tightest of a few
    back-to-back readings (the kernel stamps in CLOCK_REALTIME). Integers: a
    float of today's epoch seconds only resolves ~0.2 us."""
    best: tuple[int, int] | None = None
    for _ in range(readings):
        before = time.perf_counter_ns()
        wall = time.time_ns()
        after = time.perf_counter_ns()
        if best is None or after - before < best[0]:
            best = (after - before, wall - (before + after) // 2)
    assert best is not None
    return best[1]


def enable_kernel_stamps(sock: socket.socket) -> None:
    """Ask for receive stamps. The kernel turns stamping on lazily (a deferred
    static key), so the very first segments may still come without one."""
    sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)


def recv_stamped(sock: socket.socket, offset_ns: int) -> tuple[bytes, float | None]:
    """One ``recvmsg``: the bytes and the kernel's receive time of its last
    segment in the perf_counter domain (None when the kernel gave none)."""
    data, ancdata, _flags, _addr = sock.recvmsg(RECV_CHUNK, socket.CMSG_SPACE(_TIMESPEC.size))
    for level, kind, cdata in ancdata:
        if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(cdata) >= _TIMESPEC.size:
            sec, nsec = _TIMESPEC.unpack_from(cdata)
            return data, (sec * 1_000_000_000 + nsec - offset_ns) / 1e9
    return data, None


# ---------------------------------------------------------------- the MQTT subscriber


class StampedSubscriber:
    """A bare MQTT 3.1.1 subscriber to ``topics`` (QoS 1) that stamps each
    message with the kernel's receive time.

    A daemon thread reads the socket with ``recvmsg`` and ``SO_TIMESTAMPNS``;
    each PUBLISH gets the stamp of the ``recvmsg`` that completed it, moved to
    the ``time.perf_counter()`` domain with an offset sampled at start (a step
    of the wall clock during a run would skew it; NTP's slewing moves both
    clocks alike). A ``recvmsg`` that reads several messages stamps them all
    with the time of its last segment: fine here, pushes are timed one at a
    time. Without a kernel stamp (not expected on Linux TCP) the stamp is
    ``perf_counter()`` when ``recvmsg`` returned. QoS 1 messages are
    acknowledged (PUBACK); keepalive is off, so there is nothing else to send.
    """

    def __init__(self, host: str, port: int, topics: Sequence[str], *, name: str = "tap") -> None:
        self.client_id = f"bench-{name}-{secrets.token_hex(4)}"
        self._log: _Log[Arrival] = _Log()
        self._control: queue.Queue[Packet | None] = queue.Queue()  # CONNACK, SUBACK
        self._send_lock = threading.Lock()
        self._closing = False
        self._lost: str | None = None
        self._offset_ns = realtime_offset_ns()
        self._sock = socket.create_connection((host, port), timeout=HANDSHAKE_TIMEOUT)
        self._sock.settimeout(None)
        self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # PUBACKs go at once
        enable_kernel_stamps(self._sock)
        self._thread = threading.Thread(target=self._read, daemon=True, name=f"stamped-{name}")
        self._thread.start()
        try:
            self._handshake(topics)
        except BaseException:
            self.close()
            raise

    def _handshake(self, topics: Sequence[str]) -> None:
        self._send(connect_packet(self.client_id))
        connack = self._expect(CONNACK)
        if len(connack.body) < 2 or connack.body[1] != 0:
            raise MqttRefused(f"broker refused the connection: CONNACK {connack.body.hex()}")
        self._send(subscribe_packet(1, topics))
        codes = self._expect(SUBACK).body[2:]
        if len(codes) != len(topics) or 0x80 in codes:
            raise MqttRefused(f"broker refused a subscription: SUBACK codes {codes.hex()}")

    def _expect(self, kind: int) -> Packet:
        try:
            packet = self._control.get(timeout=HANDSHAKE_TIMEOUT)
        except queue.Empty:
            raise TimeoutError(f"no answer from the broker within {HANDSHAKE_TIMEOUT} s") from None
        if packet is None:
            raise ConnectionError(f"connection lost during the handshake: {self._lost}")
        if packet.kind != kind:
            raise ConnectionError(f"expected packet type {kind}, got {packet.kind}")
        return packet

    def _send(self, data: bytes) -> None:
        with self._send_lock:
            self._sock.sendall(data)

    def _read(self) -> None:
        reader = PacketReader()
        reason = "the broker closed the connection"
        try:
            while True:
                data, at = recv_stamped(self._sock, self._offset_ns)
                if at is None:
                    at = time.perf_counter()
                if not data:
                    break
                self._take(reader.feed(data), at)
        except (OSError, ValueError) as exc:  # ValueError: a malformed packet
            reason = f"connection lost: {exc}"
        if not self._closing:
            self._lost = reason
        self._control.put(None)
        self._log.add([])

    def _take(self, packets: list[Packet], at: float) -> None:
        arrivals: list[Arrival] = []
        acks = bytearray()
        for packet in packets:
            if packet.kind == PUBLISH:
                msg = parse_publish(packet)
                if msg.qos == 1 and msg.packet_id is not None:
                    acks += puback_packet(msg.packet_id)
                arrivals.append(Arrival(at, msg.topic, msg.payload))
            elif packet.kind in (CONNACK, SUBACK):
                self._control.put(packet)
        if acks:
            self._send(bytes(acks))
        if arrivals:
            self._log.add(arrivals)

    @property
    def arrivals(self) -> list[Arrival]:
        return self._log.items

    def mark(self) -> int:
        return self._log.mark()

    def wait_for(
        self, pred: Callable[[Arrival], bool], *, after: int = 0, timeout: float = 15.0
    ) -> Arrival:
        """The first arrival at or after position ``after`` for which ``pred`` holds."""
        found = self._log.wait(lambda: self._log.first(pred, after), timeout)
        if found is None:
            lost = f" ({self._lost})" if self._lost else ""
            raise TimeoutError(f"no matching MQTT message within {timeout} s{lost}")
        return found

    def close(self) -> None:
        """DISCONNECT, then end the reader thread. Safe to call twice."""
        if self._closing:
            return
        self._closing = True
        try:
            self._send(DISCONNECT_PACKET)
            self._sock.shutdown(socket.SHUT_RDWR)  # wakes the reader's recvmsg
        except OSError:
            pass
        self._thread.join(timeout=5)
        self._sock.close()


# ---------------------------------------------------------------- the screen stamper


class ScreenStamper:
    """The agent's screen events, stamped on arrival by a child process.

    The child (``python -m benchmarks.stamps screens SOCKET``) connects to the
    agent's UI-bridge socket (retrying every 50 ms, and again after the agent
    closes it: benchmarks restart agents), stamps each ``recv`` with
    ``time.perf_counter()`` and writes ``<stamp>\\t<line>`` for every complete
    JSON line to its stdout. It sends nothing to the agent. A reader thread
    here decodes the lines with the bridge protocol and keeps the screen
    events (a ``hello``'s snapshot screen too) in ``seen``; ``hellos`` counts
    the connections the agent greeted.
    """

    def __init__(self, socket_path: Path) -> None:
        self._log: _Log[Seen] = _Log()
        self.hellos = 0
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.stamps", "screens", str(socket_path)],
            cwd=REPO,  # ``-m`` puts it first on sys.path: this very file is the child
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
        )
        assert self._proc.stdout is not None
        self._thread = threading.Thread(
            target=self._read, args=(self._proc.stdout,), daemon=True, name="screen-stamper"
        )
        self._thread.start()

    def _read(self, lines: IO[bytes]) -> None:
        from agent import bridge_protocol as bp  # the parent only: the child stays stdlib

        decoder = bp.LineDecoder.for_events()
        for raw in lines:
            stamp, _, line = raw.partition(b"\t")
            at = float(stamp)
            seen: list[Seen] = []
            for event in decoder.feed(line):
                screen: object = event
                if isinstance(event, bp.HelloEvent):
                    self.hellos += 1  # waiters read it under the lock add() takes next
                    screen = event.snapshot.screen
                if isinstance(screen, bp.ScreenEvent):
                    seen.append(Seen(at, screen))
            self._log.add(seen)

    @property
    def seen(self) -> list[Seen]:
        return self._log.items

    def mark(self) -> int:
        return self._log.mark()

    def wait_hello(self, count: int = 1, *, timeout: float = 10.0) -> None:
        """Until the agent has greeted ``count`` connections of the stamper."""
        if self._log.wait(lambda: self.hellos >= count or None, timeout) is None:
            code = self._proc.poll()
            child = "" if code is None else f" (the stamper's child exited {code})"
            raise TimeoutError(f"no hello from the agent's bridge within {timeout} s{child}")

    def wait_match(
        self, match: Callable[[list[Seen]], Seen | None], *, after: int = 0, timeout: float = 15.0
    ) -> Seen | None:
        """The first non-None ``match(seen[after:])``, or None after ``timeout``."""
        return self._log.wait(lambda: match(self.seen[after:]), timeout)

    def wait_for(
        self, pred: Callable[[bp.ScreenEvent], bool], *, after: int = 0, timeout: float = 15.0
    ) -> Seen:
        """The first screen at or after position ``after`` for which ``pred`` holds."""
        found = self._log.wait(lambda: self._log.first(lambda s: pred(s.screen), after), timeout)
        if found is None:
            last = [s.screen.screen.value for s in self.seen[-5:]]
            raise TimeoutError(f"screen not shown within {timeout} s (last: {last})")
        return found

    def close(self) -> None:
        """Stop the child and the reader. Safe to call twice."""
        if self._proc.poll() is None:
            self._proc.terminate()
        try:
            self._proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        self._thread.join(timeout=10)
        if self._proc.stdout is not None:
            self._proc.stdout.close()


# ---------------------------------------------------------------- the child


def _connect_unix(path: str, parent: int) -> socket.socket:
    """Connect to ``path``, retrying every 50 ms; exit once orphaned (the
    benchmark died without closing us)."""
    while True:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(path)
            return sock
        except OSError:
            sock.close()
        if os.getppid() != parent:
            raise SystemExit(0)
        time.sleep(CONNECT_RETRY)


def _relay(sock: socket.socket, out: IO[bytes]) -> None:
    """Stamp each read and write its complete lines, until the agent hangs up."""
    pending = b""
    while True:
        try:
            data = sock.recv(RECV_CHUNK)
        except OSError:
            return
        at = time.perf_counter()  # first thing after the wake-up
        if not data:
            return
        *lines, pending = (pending + data).split(b"\n")
        if lines:
            prefix = f"{at!r}\t".encode()
            out.write(b"".join(prefix + line + b"\n" for line in lines))
            out.flush()


def relay_screens(path: str) -> NoReturn:
    """The child's main loop (see ``ScreenStamper``)."""
    parent = os.getppid()
    out = sys.stdout.buffer
    while True:
        with _connect_unix(path, parent) as sock:
            try:
                _relay(sock, out)
            except BrokenPipeError:
                os._exit(0)  # the parent is gone; skip the flush at exit, it would fail too


def main(argv: Sequence[str]) -> None:
    if len(argv) == 2 and argv[0] == "screens":
        relay_screens(argv[1])
    # Anything else (``make bench`` passes ``--quick``): say what this is.
    print("stamps: support module of the latency benchmarks (arrival stamps); nothing to measure")


if __name__ == "__main__":
    main(sys.argv[1:])
