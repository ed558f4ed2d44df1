"""A Mosquitto 2.x broker as a child process, for the sandbox and the tests.

docs/protocol.md part C needs an MQTT 5 broker; tests use a real one, never a
mock. ``MosquittoBroker(data_dir, port)`` writes ``data_dir/mosquitto.conf``
(``listener PORT 127.0.0.1``, ``allow_anonymous true``, ``persistence true``,
``persistence_location data_dir/``) and runs ``mosquitto -c`` on it; its
output goes to ``data_dir/mosquitto.log``.

- ``start()`` picks a free loopback port when none was given and returns once
  the port accepts connections. Raises ``BrokerError`` when mosquitto is not
  installed ("install it with: apt-get install mosquitto"), exits at once, or
  does not listen within ``start_timeout`` seconds.
- ``stop()`` sends SIGTERM (Mosquitto then saves its persistence file), kills
  after 5 s; safe to call twice.
- ``restart()`` stops and starts on the same port with the same persistence,
  so persistent sessions and their queued messages survive.

Mosquitto drops root privileges to the ``mosquitto`` user unless told
otherwise; the config names the current user so it can write ``data_dir``.
"""

from __future__ import annotations

import getpass
import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

INSTALL_HINT = "install it with: apt-get install mosquitto"
_CANDIDATES = ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto", "/opt/homebrew/sbin/mosquitto")


class BrokerError(RuntimeError):
    """The broker cannot be found, started or reached."""


def find_mosquitto() -> str:
    """Path of the mosquitto executable. Raises BrokerError."""
    found = shutil.which("mosquitto")
    if found:
        return found
    for candidate in _CANDIDATES:
        if os.access(candidate, os.X_OK):
            return candidate
    raise BrokerError(f"mosquitto is not installed; {INSTALL_HINT}")


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on ``host`` that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """``count`` distinct free TCP ports (held open together while chosen, so
    that the kernel cannot hand out the same one twice)."""
    socks = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(count)]
    try:
        for sock in socks:
            sock.bind((host, 0))
        return [int(sock.getsockname()[1]) for sock in socks]
    finally:
        for sock in socks:
            sock.close()


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as a server binds
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


class MosquittoBroker:
    """See the module docstring."""

    host = "127.0.0.1"

    def __init__(
        self,
        data_dir: Path,
        port: int | None = None,
        *,
        executable: str | None = None,
        start_timeout: float = 10.0,
    ) -> None:
        self.data_dir = Path(data_dir).resolve()
        self._port = port
        self._executable = executable
        self.start_timeout = start_timeout
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def port(self) -> int:
        if self._port is None:
            raise BrokerError("broker port is chosen by start()")
        return self._port

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"

    @property
    def config_path(self) -> Path:
        return self.data_dir / "mosquitto.conf"

    @property
    def log_path(self) -> Path:
        return self.data_dir / "mosquitto.log"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def _write_config(self) -> None:
        lines = [
            "# Written by sandbox.broker.MosquittoBroker.",
            f"listener {self.port} {self.host}",
            "allow_anonymous true",
            "persistence true",
            f"persistence_location {self.data_dir}/",
            "autosave_interval 1",
            "log_dest stderr",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "log_type information",
            "log_timestamp_format %Y-%m-%dT%H:%M:%S",
        ]
        if hasattr(os, "getuid") and os.getuid() == 0:
            lines.append(f"user {getpass.getuser()}")
        self.config_path.write_text("\n".join(lines) + "\n", "utf-8")

    def start(self) -> None:
        """Start the broker and wait until it accepts connections. Raises BrokerError."""
        if self.running:
            return
        executable = self._executable or find_mosquitto()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if self._port is None:
            self._port = free_port(self.host)
        self._write_config()
        with self.log_path.open("ab") as log:
            self._proc = subprocess.Popen(
                [executable, "-c", str(self.config_path)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
            )
        deadline = time.monotonic() + self.start_timeout
        while True:
            if self._proc.poll() is not None:
                code = self._proc.returncode
                self._proc = None
                raise BrokerError(f"mosquitto exited with {code}:\n{self._log_tail()}")
            try:
                with socket.create_connection((self.host, self.port), timeout=0.5):
                    return
            except OSError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise BrokerError(
                    f"mosquitto did not listen on {self.url} within {self.start_timeout} s:\n"
                    f"{self._log_tail()}"
                )
            time.sleep(0.02)

    def _log_tail(self, lines: int = 20) -> str:
        try:
            text = self.log_path.read_text("utf-8", errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def stop(self) -> None:
        """Stop the broker (SIGTERM, then SIGKILL after 5 s). Idempotent."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def restart(self) -> None:
        """Stop and start again on the same port with the same persistence."""
        self.stop()
        deadline = time.monotonic() + 5
        while not port_is_free(self.port, self.host) and time.monotonic() < deadline:
            time.sleep(0.05)
        self.start()

    def __enter__(self) -> MosquittoBroker:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        port = self._port if self._port is not None else "?"
        return f"MosquittoBroker({self.host}:{port}, {'running' if self.running else 'stopped'})"


# ---------------------------------------------------------------- NATS


NATS_INSTALL_HINT = "install it with: apt-get install nats-server"


def find_nats_server() -> str:
    """Path of the nats-server executable. Raises BrokerError."""
    found = shutil.which("nats-server") or (
        "/usr/bin/nats-server" if os.access("/usr/bin/nats-server", os.X_OK) else None
    )
    if found is None:
        raise BrokerError(f"nats-server is not installed; {NATS_INSTALL_HINT}")
    return found


@dataclass
class _NatsNode:
    name: str
    client_port: int
    route_port: int
    mqtt_port: int
    http_port: int
    proc: subprocess.Popen[bytes] | None = None


class NatsCluster:
    """A NATS cluster serving MQTT 3.1.1 (JetStream), as child processes.

    ``NatsCluster(data_dir, nodes=3)`` writes one config per node under
    ``data_dir`` (``nN.conf``; JetStream in ``nN/``, logs in ``nN.log``), all
    on free loopback ports: client, cluster route, MQTT and monitoring. With
    several nodes the MQTT session, message and retained-message streams are
    replicated on every node (``stream_replicas``), so a session outlives the
    node it was made on. NATS speaks MQTT 3.1.1 only, QoS 0 and 1, and only
    with JetStream (docs/operations.md, "Running a fleet").

    - ``start()`` starts every node and returns once JetStream has a metadata
      leader and every node accepts an MQTT connection (MQTT connects stall
      until then). Raises ``BrokerError``.
    - ``kill(i)`` SIGKILLs node ``i`` (a crash); ``start_node(i)`` brings it back
      on the same ports and storage; ``stop()`` ends them all.
    - ``urls`` lists the nodes' MQTT URLs; ``url`` is node 0's (for a client
      that takes one broker).
    """

    host = "127.0.0.1"

    def __init__(
        self,
        data_dir: Path,
        nodes: int = 3,
        *,
        executable: str | None = None,
        start_timeout: float = 60.0,
    ) -> None:
        self.data_dir = Path(data_dir).resolve()
        self.start_timeout = start_timeout
        self._executable = executable
        ports = free_ports(4 * nodes)
        self.nodes = [
            _NatsNode(f"n{i}", ports[4 * i], ports[4 * i + 1], ports[4 * i + 2], ports[4 * i + 3])
            for i in range(nodes)
        ]

    @property
    def urls(self) -> list[str]:
        return [f"mqtt://{self.host}:{n.mqtt_port}" for n in self.nodes]

    @property
    def url(self) -> str:
        return self.urls[0]

    @property
    def port(self) -> int:
        return self.nodes[0].mqtt_port

    def _config(self, node: _NatsNode) -> str:
        clustered = len(self.nodes) > 1
        lines = [
            "# Written by sandbox.broker.NatsCluster.",
            f"server_name: {node.name}",
            f"listen: {self.host}:{node.client_port}",
            f"http: {self.host}:{node.http_port}",
            f'jetstream {{ store_dir: "{self.data_dir / node.name}" }}',
        ]
        if clustered:
            routes = ", ".join(f"nats-route://{self.host}:{n.route_port}" for n in self.nodes)
            lines.append(
                f"cluster {{ name: fleet, listen: {self.host}:{node.route_port}, "
                f"routes: [{routes}] }}"
            )
        replicas = min(3, len(self.nodes))
        lines.append(
            f"mqtt {{ listen: {self.host}:{node.mqtt_port}, stream_replicas: {replicas} }}"
        )
        return "\n".join(lines) + "\n"

    def start(self) -> None:
        """Start every node; return once the cluster serves MQTT. Raises BrokerError."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        for i in range(len(self.nodes)):
            self._spawn(i)
        self._wait_ready(range(len(self.nodes)))

    def _spawn(self, i: int) -> None:
        node = self.nodes[i]
        if node.proc is not None and node.proc.poll() is None:
            return
        executable = self._executable or find_nats_server()
        conf = self.data_dir / f"{node.name}.conf"
        conf.write_text(self._config(node), "utf-8")
        with (self.data_dir / f"{node.name}.log").open("ab") as log:
            node.proc = subprocess.Popen(
                [executable, "-c", str(conf)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
            )

    def _wait_ready(self, which: range | list[int]) -> None:
        deadline = time.monotonic() + self.start_timeout
        for i in which:
            node = self.nodes[i]
            while not self._serves_mqtt(node):
                if node.proc is None or node.proc.poll() is not None:
                    raise BrokerError(f"nats-server {node.name} exited:\n{self._log_tail(node)}")
                if time.monotonic() > deadline:
                    raise BrokerError(
                        f"nats-server {node.name} did not serve MQTT within "
                        f"{self.start_timeout} s:\n{self._log_tail(node)}"
                    )
                time.sleep(0.1)

    def _serves_mqtt(self, node: _NatsNode) -> bool:
        """An MQTT 3.1.1 CONNECT gets a CONNACK accepting it (it needs JetStream)."""
        # MQTT 3.1.1 CONNECT (spec 3.1): protocol "MQTT" level 4, clean
        # session, keepalive 10 s, a client id of its own.
        client_id = b"ready-" + node.name.encode()
        body = b"\x00\x04MQTT\x04\x02\x00\x0a" + len(client_id).to_bytes(2, "big") + client_id
        connect = bytes([0x10, len(body)]) + body
        try:
            with socket.create_connection((self.host, node.mqtt_port), timeout=2) as sock:
                sock.sendall(connect)
                sock.settimeout(5)
                answer = sock.recv(4)
        except OSError:
            return False
        return answer[:2] == b"\x20\x02" and answer[3:4] == b"\x00"

    def _log_tail(self, node: _NatsNode, lines: int = 20) -> str:
        try:
            text = (self.data_dir / f"{node.name}.log").read_text("utf-8", errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def kill(self, i: int) -> None:
        """SIGKILL node ``i``: a crash (no goodbye to clients or routes)."""
        proc, self.nodes[i].proc = self.nodes[i].proc, None
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()

    def start_node(self, i: int) -> None:
        """Bring node ``i`` back (same ports, same storage). Raises BrokerError."""
        self._spawn(i)
        self._wait_ready([i])

    def stop(self) -> None:
        """Stop every node (SIGTERM, then SIGKILL after 5 s). Idempotent."""
        for node in self.nodes:
            proc, node.proc = node.proc, None
            if proc is None or proc.poll() is not None:
                continue
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def restart(self) -> None:
        """Stop and start every node on the same ports and storage."""
        self.stop()
        self.start()

    def __enter__(self) -> NatsCluster:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        up = sum(1 for n in self.nodes if n.proc is not None and n.proc.poll() is None)
        return f"NatsCluster({len(self.nodes)} nodes, {up} up, mqtt {self.url})"
