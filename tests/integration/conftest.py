"""Fixtures for integration tests: real Mosquitto, the real sandbox process.

- ``broker``, ``module_broker`` (from ``tests/conftest.py``): a real
  Mosquitto on a free loopback port, stopped after the test or the module.
- ``sandbox``: ``python -m sandbox.cli serve --data tmp --port 0 --mqtt
  <broker> --time-scale 0.01`` as a subprocess; yields a ``SandboxHandle``;
  SIGTERM (then kill) afterwards; its stderr is printed at teardown, which
  pytest shows when the test failed.
- ``notify_receiver``: a real HTTP server recording result notifications
  and answering ``success`` (``fail_first = N`` answers 500 to the first N).
- ``terminal_subscriber``: a factory, ``terminal_subscriber(sn)`` returns a
  connected ``TerminalSubscriber`` collecting the pushes of terminal ``sn``
  with their MQTT 5 properties (``on=handle`` for another sandbox).
- ``module_sandbox``: one broker + sandbox shared by a test module (use
  unique SNs and order numbers).

Waits use ``tests.waiting.until`` (``wait_until`` here is the same function,
kept for benchmarks/).

Helpers for acting as the POS or as a terminal without the project's own
clients: ``SandboxHandle.pos_call`` / ``cashier_call`` sign with the right
key, ``open_ok`` verifies and decodes an answer, ``publish`` /
``terminal_event`` speak MQTT as a terminal.
"""

from __future__ import annotations

import contextlib
import os
import selectors
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, TypeVar

import httpx
import msgspec
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from cloud import envelope, sealing, wirejson
from cloud.messages import EventKind, Method
from cloud.signing import verify
from sandbox.broker_mosquitto import MosquittoBroker
from sandbox.broker_nats import NatsCluster
from sandbox.keys import POS_APP_ID
from sandbox.tms import parse_mqtt_url
from tests.waiting import until

T = TypeVar("T", bound=msgspec.Struct)

REPO = Path(__file__).resolve().parents[2]

Broker = MosquittoBroker | NatsCluster  # every broker the suite runs on
TIME_SCALE = 0.01
START_TIMEOUT = 20.0


# ---------------------------------------------------------------- the sandbox process


def start_sandbox_process(
    data_dir: Path, args: list[str], stderr_path: Path
) -> tuple[subprocess.Popen[bytes], dict[str, str]]:
    """Run ``sandbox.cli serve --data data_dir *args``; returns it and its JSON line."""
    cmd = [sys.executable, "-m", "sandbox.cli", "serve", "--data", str(data_dir), *args]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    with stderr_path.open("ab") as err:
        proc = subprocess.Popen(
            cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=err, stdin=subprocess.DEVNULL, env=env
        )
    assert proc.stdout is not None
    line = b""
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        deadline = time.monotonic() + START_TIMEOUT
        while not line.endswith(b"\n"):
            left = deadline - time.monotonic()
            if left <= 0 or not sel.select(timeout=left):
                stop_process(proc)
                raise RuntimeError(f"sandbox did not start:\n{stderr_path.read_text()}")
            chunk = os.read(proc.stdout.fileno(), 4096)
            if not chunk:
                stop_process(proc)
                raise RuntimeError(f"sandbox exited at start:\n{stderr_path.read_text()}")
            line += chunk
    announce = wirejson.loads(line)
    assert isinstance(announce, dict)
    return proc, announce


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 10.0) -> int:
    """SIGTERM, then SIGKILL after ``timeout``; returns the exit status."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    if proc.stdout is not None:
        proc.stdout.close()
    return proc.returncode


@dataclass
class SandboxHandle:
    """A running ``sadad-sandbox serve`` and helpers to talk to it."""

    http_url: str
    mqtt_url: str
    mqtt_host: str
    mqtt_port: int
    data_dir: Path
    pos_config: Path
    broker: Broker | None
    process: subprocess.Popen[bytes] = field(repr=False)
    stderr_path: Path = field(repr=False)
    args: list[str] = field(default_factory=list, repr=False)
    time_scale: float = TIME_SCALE
    _conns: list[sqlite3.Connection] = field(default_factory=list, repr=False)

    # ------------------------------------------------------------ lifecycle

    @classmethod
    def start(cls, data_dir: Path, args: list[str], broker: Broker | None) -> SandboxHandle:
        stderr_path = data_dir.parent / f"{data_dir.name}.stderr.log"
        proc, announce = start_sandbox_process(data_dir, args, stderr_path)
        host, port = parse_mqtt_url(announce["mqtt_url"])
        return cls(
            http_url=announce["http_url"],
            mqtt_url=announce["mqtt_url"],
            mqtt_host=host,
            mqtt_port=port,
            data_dir=Path(announce["data"]),
            pos_config=Path(announce["pos_config"]),
            broker=broker,
            process=proc,
            stderr_path=stderr_path,
            args=args,
        )

    def stop(self) -> int:
        """Stop the process (SIGTERM, then kill); returns its exit status."""
        return stop_process(self.process)

    def restart(self) -> None:
        """Stop and serve again on the same data directory (the port may change)."""
        self.stop()
        new = SandboxHandle.start(self.data_dir, self.args, self.broker)
        self.process = new.process
        self.http_url = new.http_url
        self.mqtt_url, self.mqtt_host, self.mqtt_port = new.mqtt_url, new.mqtt_host, new.mqtt_port

    def stderr_text(self) -> str:
        try:
            return self.stderr_path.read_text("utf-8", errors="replace")
        except OSError:
            return ""

    def close(self) -> None:
        for conn in self._conns:
            conn.close()
        self._conns.clear()

    # ------------------------------------------------------------ setup helpers

    def provision(
        self,
        sn: str,
        readers: Mapping[str, str] | None = None,
        store_name: str | None = None,
        printer: str | None = None,
    ) -> Path:
        """Run ``sadad-sandbox provision``; returns the terminal's agent.toml path."""
        cmd = [sys.executable, "-m", "sandbox.cli", "provision", "--data", str(self.data_dir)]
        cmd += ["--terminal", sn]
        for name, spec in (readers or {}).items():
            cmd += ["--reader", f"{name}={spec}"]
        if store_name is not None:
            cmd += ["--store-name", store_name]
        if printer is not None:
            cmd += ["--printer", printer]
        done = subprocess.run(cmd, cwd=REPO, capture_output=True, check=False, timeout=30)
        if done.returncode != 0:
            raise RuntimeError(f"provision failed: {done.stderr.decode()}")
        out = wirejson.loads(done.stdout.splitlines()[-1])
        return Path(out["agent_config"])

    def db(self) -> sqlite3.Connection:
        """A connection to the sandbox database (closed at teardown)."""
        conn = sqlite3.connect(self.data_dir / "sandbox.db", timeout=10.0)
        conn.row_factory = sqlite3.Row
        self._conns.append(conn)
        return conn

    def query(self, sql: str, *args: Any) -> list[sqlite3.Row]:
        conn = self.db()
        try:
            return conn.execute(sql, args).fetchall()
        finally:
            conn.close()
            self._conns.remove(conn)

    # ------------------------------------------------------------ keys

    @property
    def gateway_public_key(self) -> str:
        return (self.data_dir / "keys" / "gateway_public.pem").read_text()

    @property
    def pos_private_key(self) -> str:
        return (self.data_dir / "keys" / "pos_private.pem").read_text()

    def terminal_private_key(self, sn: str) -> str:
        return (self.data_dir / "terminals" / sn / "terminal_private.pem").read_text()

    # ------------------------------------------------------------ calls

    def pos_call(
        self, method: Method | str, biz: Mapping[str, Any], *, timeout: float = 10.0
    ) -> httpx.Response:
        """A signed Open API call as the sandbox POS app."""
        body = envelope.build_request(
            method, dict(biz), app_id=POS_APP_ID, private_key=self.pos_private_key
        )
        return httpx.post(
            self.http_url + envelope.ENTRY_PATH,
            content=envelope.encode(body),
            headers={"Content-Type": "application/json"},
            timeout=timeout,
        )

    def cashier_call(
        self, sn: str, method: Method | str, biz: Mapping[str, Any], *, timeout: float = 10.0
    ) -> httpx.Response:
        """A signed cashier API call as terminal ``sn``."""
        body = envelope.build_request(
            method, dict(biz), app_id=sn, private_key=self.terminal_private_key(sn)
        )
        return httpx.post(
            self.http_url + envelope.CASHIER_PATH,
            content=envelope.encode(body),
            headers={"Content-Type": "application/json"},
            timeout=timeout,
        )

    def open_ok(self, resp: httpx.Response, type_: type[T]) -> T:
        """Verify an answer and decode its data; fails the test on a failure code."""
        assert resp.status_code == 200, resp.text
        return envelope.open_response(resp.content, self.gateway_public_key, type_)

    def answer(self, resp: httpx.Response) -> dict[str, Any]:
        """The answer object, its signature checked (for failure answers)."""
        obj = wirejson.loads(resp.content)
        assert isinstance(obj, dict)
        verify(obj, self.gateway_public_key)
        return obj

    # ------------------------------------------------------------ acting as a terminal

    def seal(self, payload: dict[str, Any] | bytes) -> str:
        return sealing.seal(payload, self.gateway_public_key)

    def card_fields(
        self, pan: str, *, brand: str = "VISA", entry_mode: str = "CONTACTLESS"
    ) -> dict[str, Any]:
        """``card_cipher`` and the clear fields of a bankcard create for ``pan``."""
        card = {"pan": pan, "expiry": "2812", "entry_mode": entry_mode}
        return {
            "card_cipher": self.seal(card),
            "masked_pan": pan[:6] + "*" * (len(pan) - 10) + pan[-4:],
            "card_brand": brand,
            "entry_mode": entry_mode,
        }

    def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> None:
        v311 = isinstance(self.broker, NatsCluster)  # NATS speaks MQTT 3.1.1 only
        publish(self.mqtt_host, self.mqtt_port, topic, payload, retain=retain, v311=v311)

    def set_terminal_status(self, sn: str, status: str = "online") -> None:
        payload = wirejson.dumps(
            {"status": status, "timestamp": envelope.timestamp(), "keepalive": 30, "queue": 0}
        )
        self.publish(f"sadad/v1/terminals/{sn}/status", payload.encode(), retain=True)

    def terminal_event(
        self,
        sn: str,
        event: EventKind,
        *,
        message_id: str,
        trans_no: str | None = None,
        reason: str | None = None,
        hops: dict[str, int] | None = None,
        key: str | None = None,
    ) -> None:
        """Publish a signed terminal event (``key`` overrides the terminal's key)."""
        ev = envelope.build_event(
            event,
            terminal_sn=sn,
            message_id=message_id,
            private_key=key or self.terminal_private_key(sn),
            trans_no=trans_no,
            reason=reason,
            hops=hops,
        )
        payload = wirejson.dumps(msgspec.to_builtins(ev)).encode()
        self.publish(f"sadad/v1/terminals/{sn}/events", payload)


def order_fields(sn: str, **over: Any) -> dict[str, Any]:
    """A valid ``wisehub.cloud.pay.order`` body for terminal ``sn``."""
    base: dict[str, Any] = {
        "merchant_no": "M0001",
        "terminal_sn": sn,
        "merchant_order_no": "O" + uuid.uuid4().hex[:12],
        "price_currency": "QAR",
        "order_amount": Decimal("12.30"),  # .93 and other magic endings force outcomes
        "description": "2 x coffee",
    }
    base.update(over)
    return base


# The shared poll (tests.waiting.until), under the name benchmarks/ import from here.
wait_until = until


# ---------------------------------------------------------------- MQTT helpers


def _connected_client(
    host: str, port: int, client_id: str, *, v311: bool = False, **connect: Any
) -> mqtt.Client:
    """A paho client, MQTT 5 (or 3.1.1 with ``v311``: NATS speaks no other)."""
    protocol = mqtt.MQTTv311 if v311 else mqtt.MQTTv5
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=protocol)
    ready = threading.Event()
    client.on_connect = lambda c, u, f, rc, p: ready.set()
    client.connect(host, port, keepalive=30, **connect)
    client.loop_start()
    if not ready.wait(5):
        client.loop_stop()
        raise AssertionError(f"cannot connect to mqtt://{host}:{port}")
    return client


def publish(
    host: str, port: int, topic: str, payload: bytes, *, retain: bool = False, v311: bool = False
) -> None:
    """Publish one QoS 1 message and wait for the broker's PUBACK."""
    client = _connected_client(host, port, f"test-pub-{uuid.uuid4().hex[:8]}", v311=v311)
    try:
        info = client.publish(topic, payload, qos=1, retain=retain)
        info.wait_for_publish(timeout=5)
        assert info.is_published()
    finally:
        client.disconnect()
        client.loop_stop()


@dataclass(frozen=True)
class ReceivedMessage:
    topic: str
    payload: bytes
    qos: int
    retain: bool
    properties: dict[str, Any]


class TerminalSubscriber:
    """Subscribes to ``sadad/v1/terminals/{sn}/orders`` and collects what arrives."""

    def __init__(self, host: str, port: int, sn: str) -> None:
        self.sn = sn
        self.topic = f"sadad/v1/terminals/{sn}/orders"
        self.messages: list[ReceivedMessage] = []
        self._cond = threading.Condition()
        subscribed = threading.Event()
        self._client = _connected_client(host, port, f"test-sub-{sn}-{uuid.uuid4().hex[:6]}")
        self._client.on_message = self._on_message
        self._client.on_subscribe = lambda c, u, mid, rcs, p: subscribed.set()
        self._client.subscribe(self.topic, qos=1)
        if not subscribed.wait(5):
            self.close()
            raise AssertionError("subscription not acknowledged")

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        props = msg.properties.json() if msg.properties is not None else {}  # type: ignore[no-untyped-call]
        with self._cond:
            self.messages.append(
                ReceivedMessage(msg.topic, bytes(msg.payload), msg.qos, bool(msg.retain), props)
            )
            self._cond.notify_all()

    def wait_for(self, count: int, timeout: float = 5.0) -> list[ReceivedMessage]:
        """The first ``count`` messages; fails when fewer arrive within ``timeout``."""
        with self._cond:
            if not self._cond.wait_for(lambda: len(self.messages) >= count, timeout):
                raise AssertionError(
                    f"expected {count} pushes on {self.topic}, got {self.messages}"
                )
            return list(self.messages[:count])

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()


# ---------------------------------------------------------------- notification receiver


@dataclass(frozen=True)
class Delivery:
    at: float  # time.monotonic()
    body: bytes
    answered_ok: bool

    def fields(self) -> dict[str, Any]:
        obj = wirejson.loads(self.body)
        assert isinstance(obj, dict)
        return obj


class NotifyReceiver:
    """A POS server's notification endpoint: records every POST, answers
    ``success`` (or HTTP 500 ``fail`` to the first ``fail_first`` deliveries)."""

    def __init__(self) -> None:
        self.deliveries: list[Delivery] = []
        self.fail_first = 0
        self._cond = threading.Condition()
        receiver = self

        class _Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                with receiver._cond:
                    ok = len(receiver.deliveries) >= receiver.fail_first
                    receiver.deliveries.append(Delivery(time.monotonic(), body, ok))
                    receiver._cond.notify_all()
                answer = b"success" if ok else b"fail"
                self.send_response(200 if ok else 500)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, format: str, *args: Any) -> None:
                return

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self._server.daemon_threads = True
        self.port = int(self._server.server_address[1])
        self.url = f"http://127.0.0.1:{self.port}/notify"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def bodies(self) -> list[dict[str, Any]]:
        with self._cond:
            return [d.fields() for d in self.deliveries]

    def wait_for(self, count: int, timeout: float = 5.0) -> list[Delivery]:
        """The first ``count`` deliveries; fails when fewer arrive within ``timeout``."""
        with self._cond:
            if not self._cond.wait_for(lambda: len(self.deliveries) >= count, timeout):
                raise AssertionError(f"expected {count} deliveries, got {len(self.deliveries)}")
            return list(self.deliveries[:count])

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)


# ---------------------------------------------------------------- fixtures


@contextlib.contextmanager
def running_sandbox(
    data_dir: Path, broker: Broker, extra_args: Sequence[str] = ()
) -> Iterator[SandboxHandle]:
    """``serve --data data_dir --port 0 --mqtt <broker> --time-scale 0.01 *extra_args``
    for the block; its stderr is printed afterwards (pytest shows it when the test
    failed)."""
    args = ["--port", "0", "--mqtt", broker.url, "--time-scale", str(TIME_SCALE), *extra_args]
    handle = SandboxHandle.start(data_dir, args, broker)
    try:
        yield handle
    finally:
        handle.close()
        code = handle.stop()
        print(f"--- sandbox stderr (exit {code}) ---\n{handle.stderr_text()}")


@pytest.fixture
def sandbox(tmp_path: Path, broker: MosquittoBroker) -> Iterator[SandboxHandle]:
    with running_sandbox(tmp_path / "sandbox", broker) as handle:
        yield handle


@pytest.fixture(scope="module")
def module_sandbox(
    tmp_path_factory: pytest.TempPathFactory, module_broker: MosquittoBroker
) -> Iterator[SandboxHandle]:
    """One broker + sandbox shared by the tests of a module (faster; use unique
    terminal SNs and order numbers per test)."""
    root = tmp_path_factory.mktemp("module-sandbox")
    with running_sandbox(root / "sandbox", module_broker) as handle:
        yield handle


@pytest.fixture
def notify_receiver() -> Iterator[NotifyReceiver]:
    receiver = NotifyReceiver()
    try:
        yield receiver
    finally:
        receiver.close()


SubscriberFactory = Callable[..., TerminalSubscriber]


@pytest.fixture
def terminal_subscriber(request: pytest.FixtureRequest) -> Iterator[SubscriberFactory]:
    """``terminal_subscriber(sn, on=handle)``: subscribe as terminal ``sn`` on the
    broker of ``handle`` (default: the ``sandbox`` fixture's)."""
    made: list[TerminalSubscriber] = []

    def make(sn: str, on: SandboxHandle | None = None) -> TerminalSubscriber:
        handle = on if on is not None else request.getfixturevalue("sandbox")
        sub = TerminalSubscriber(handle.mqtt_host, handle.mqtt_port, sn)
        made.append(sub)
        return sub

    try:
        yield make
    finally:
        for sub in made:
            with contextlib.suppress(Exception):
                sub.close()


@contextlib.contextmanager
def started_broker(kind: str, root: Path) -> Iterator[Broker]:
    """A broker of ``kind``: ``mosquitto`` (one node), or ``nats`` (a three-node
    NATS cluster with JetStream, MQTT 3.1.1, sessions replicated on every
    node), on free loopback ports under ``root``; stopped afterwards."""
    broker: Broker = (
        MosquittoBroker(root / "mosquitto")
        if kind == "mosquitto"
        else NatsCluster(root / "nats", nodes=3)
    )
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()
