"""A NATS cluster as the sandbox's broker for a fleet (``sandbox.broker``'s contract).

``NatsCluster(data_dir, nodes=3)``: see its docstring. Secure, each node's
config carries ``authorization { users: [...] }`` (``nats_user``): MQTT
topics become NATS subjects (``nats_subject``) in per-user ``publish`` /
``subscribe`` permissions; the passwords are in the configs in clear (mode
0600: nats-server takes bcrypt hashes too, but the standard library cannot
make them).

What nats-server 2.9.10 does with a refused operation beyond what both
brokers do (``sandbox.broker``; measured in
tests/integration/test_broker_acl.py):

- SUBSCRIBE outside the permissions: refused in the SUBACK (0x80);
- PUBLISH outside them: a plain PUBACK (it speaks MQTT 3.1.1 only), and the
  message is dropped.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from cloud.topics import every_terminal, topic
from sandbox.broker import (
    TMS_USER,
    BrokerError,
    Credentials,
    check_terminal_users,
    check_username,
    connack_code,
    free_ports,
    secret_file,
    stop_process,
    user_files_locked,
    wait_accepts,
    write_secret,
)

NATS_INSTALL_HINT = "install it with: apt-get install nats-server"
# The delivery subjects of the JetStream consumers behind an MQTT client's
# QoS 1 subscriptions are "$MQTT.sub.<nuid>", subscribed on the client's own
# connection, so a user with permissions needs them (nats-server docs, MQTT
# "Configuration"). It opens nothing to an MQTT client: nats-server refuses
# an MQTT SUBSCRIBE whose subject starts with "$MQTT.sub." (mqtt.go).
NATS_MQTT_DELIVERY = "$MQTT.sub.>"


def find_nats_server() -> str:
    """Path of the nats-server executable. Raises BrokerError."""
    found = shutil.which("nats-server") or (
        "/usr/bin/nats-server" if os.access("/usr/bin/nats-server", os.X_OK) else None
    )
    if found is None:
        raise BrokerError(f"nats-server is not installed; {NATS_INSTALL_HINT}")
    return found


def nats_subject(mqtt_topic: str) -> str:
    """The NATS subject nats-server gives an MQTT topic or filter: levels
    joined by "." instead of "/", "+" -> "*", "#" -> ">" (nats-server docs,
    "MQTT Topics and NATS Subjects"). Only for the plain topics of
    ``cloud.topics``: raises ValueError for an empty level or a "." in a
    level, which nats-server encodes in ways not needed here."""
    levels = mqtt_topic.split("/")
    if any(not level or "." in level or " " in level for level in levels):
        raise ValueError(f"not a plain MQTT topic: {mqtt_topic!r}")
    return ".".join({"+": "*", "#": ">"}.get(level, level) for level in levels)


def nats_user(name: str, password: str) -> dict[str, Any]:
    """One entry of a node's ``authorization { users: [...] }``: the TMS's
    (``TMS_USER``) or terminal ``name``'s permissions, on the subjects of
    their MQTT topics, plus the delivery subjects (``NATS_MQTT_DELIVERY``).
    Listed subjects are the only ones allowed. ``allowed_connection_types``:
    these users speak MQTT only, so their passwords open nothing on the NATS
    client port (JetStream's API, for one)."""
    if name == TMS_USER:
        publish = [nats_subject(every_terminal("orders"))]
        subscribe = [nats_subject(every_terminal("events")), nats_subject(every_terminal("status"))]
    else:
        publish = [nats_subject(topic(name, "events")), nats_subject(topic(name, "status"))]
        subscribe = [nats_subject(topic(name, "orders"))]
    return {
        "user": check_username(name),
        "password": password,
        "permissions": {
            "publish": {"allow": publish},
            "subscribe": {"allow": [*subscribe, NATS_MQTT_DELIVERY]},
        },
        "allowed_connection_types": ["MQTT"],
    }


def _alive(proc: subprocess.Popen[bytes] | None) -> Callable[[], bool]:
    return lambda: proc is not None and proc.poll() is None


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
    ``data_dir`` (``nN.conf``, mode 0600; JetStream in ``nN/``, logs in
    ``nN.log``), all on free loopback ports: client, cluster route, MQTT and
    monitoring. With several nodes the MQTT session, message and
    retained-message streams are replicated on every node
    (``stream_replicas``), so a session outlives the node it was made on.
    NATS speaks MQTT 3.1.1 only, QoS 0 and 1, and only with JetStream
    (docs/operations.md, "Running a fleet").

    - ``start()`` starts every node and returns once each is routed to the
      others, its JetStream current with the metadata leader
      (``/healthz?js-server-only=true``) and it accepts an MQTT connection
      (MQTT connects stall until then; secure, the probe logs in as the
      TMS). Raises ``BrokerError``.
    - ``kill(i)`` SIGKILLs node ``i`` (a crash); ``start_node(i)`` brings it back
      on the same ports and storage and returns once it is ready as
      ``start()`` says and replicated: every stream and consumer led, and
      the node's stream replicas current (``_replicated``). After a crash
      2.9.10 was seen to elect a consumer's leader on the node brought back
      while its replica of the message stream still lagged, and that
      consumer delivered nothing. ``stop()`` ends them all.
    - ``restart()`` restarts every node, one at a time, each back, ready and
      replicated before the next stops: the rolling restart a
      NATS cluster is maintained with (docs/operations.md). Stopping all of
      them at once is not a restart but an outage, after which nats-server
      2.9 was seen here (in CI) to stop delivering QoS 1 messages to MQTT
      sessions for over a minute, as upstream reports for consumers after
      their leaders restart (nats-io/nats-server#5679, #6025).
    - ``urls`` lists the nodes' MQTT URLs; ``url`` is node 0's (for a client
      that takes one broker).
    - secure: the terminals' users live in ``data_dir/users.json``, the TMS's
      password in ``data_dir/tms.password`` (both mode 0600), and all of them
      in every node's config; ``add_user`` rewrites the configs and sends SIGHUP to
      every running node (a NATS config reload keeps the connections of
      users whose entry did not change), then waits until each accepts the
      user.
    """

    host = "127.0.0.1"

    def __init__(
        self,
        data_dir: Path,
        nodes: int = 3,
        *,
        secure: bool = False,
        executable: str | None = None,
        start_timeout: float = 60.0,
    ) -> None:
        self.data_dir = Path(data_dir).resolve()
        self.secure = secure
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

    @property
    def pids(self) -> list[int]:
        """The process ids of the nodes that run (for /proc readings)."""
        return [n.proc.pid for n in self.nodes if n.proc is not None and n.proc.poll() is None]

    @property
    def users_path(self) -> Path:
        return self.data_dir / "users.json"

    # ------------------------------------------------------------ users

    @property
    def tms_password_path(self) -> Path:
        return self.data_dir / "tms.password"

    def _users(self) -> dict[str, str]:
        """Every user and password: the terminals' from ``users.json``, the TMS's."""
        try:
            users = json.loads(self.users_path.read_text("utf-8"))
        except FileNotFoundError:
            users = {}
        out = {str(k): str(v) for k, v in users.items()}
        out[TMS_USER] = secret_file(self.tms_password_path)
        return out

    @property
    def tms_credentials(self) -> Credentials:
        """The TMS's user and password (made on first use, kept in
        ``tms_password_path``). Raises BrokerError when the cluster is not secure."""
        if not self.secure:
            raise BrokerError("an anonymous broker has no TMS user")
        with user_files_locked(self.data_dir):
            return Credentials(TMS_USER, secret_file(self.tms_password_path))

    def add_user(self, name: str, password: str, *, wait: bool = True) -> None:
        """Give terminal ``name`` (its SN) ``password`` on every node: configs
        rewritten, running nodes reloaded (SIGHUP), and with ``wait`` this
        returns once each running node accepts them. Raises BrokerError."""
        self.add_users({name: password}, wait=wait)

    def add_users(self, users: Mapping[str, str], *, wait: bool = True) -> None:
        """``add_user`` for many terminals with one reload per node."""
        if not self.secure:
            raise BrokerError("users are for a secure broker (secure=True)")
        check_terminal_users(users)
        with user_files_locked(self.data_dir):
            everyone = self._users()
            fresh = {k: v for k, v in users.items() if everyone.get(k) != v}
            if not fresh:
                return  # nothing new: no reload
            everyone.update(fresh)
            terminals = {k: v for k, v in everyone.items() if k != TMS_USER}
            write_secret(self.users_path, json.dumps(terminals, indent=1, sort_keys=True) + "\n")
            running = [n for n in self.nodes if n.proc is not None and n.proc.poll() is None]
            for node in running:
                self._write_node_config(node, everyone)
                if node.proc is not None:
                    node.proc.send_signal(signal.SIGHUP)  # the reload
        if wait:
            login = Credentials(*next(iter(fresh.items())))
            for node in running:
                wait_accepts(self.host, node.mqtt_port, login, _alive(node.proc))

    # ------------------------------------------------------------ process

    def _config(self, node: _NatsNode, users: dict[str, str] | None = None) -> str:
        clustered = len(self.nodes) > 1
        lines = [
            "# Written by sandbox.broker_nats.NatsCluster.",
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
        if users is not None:
            # JSON is valid NATS config; its quoted strings keep "$MQTT..."
            # from being read as a variable reference.
            entries = [nats_user(name, users[name]) for name in sorted(users)]
            lines.append("authorization { users: " + json.dumps(entries, indent=1) + " }")
        return "\n".join(lines) + "\n"

    def _write_node_config(self, node: _NatsNode, users: dict[str, str] | None) -> Path:
        conf = self.data_dir / f"{node.name}.conf"
        write_secret(conf, self._config(node, users))
        return conf

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
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if self.secure:
            with user_files_locked(self.data_dir):
                conf = self._write_node_config(node, self._users())
        else:
            conf = self._write_node_config(node, None)
        with (self.data_dir / f"{node.name}.log").open("ab") as log:
            node.proc = subprocess.Popen(
                [executable, "-c", str(conf)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
            )

    def _wait_ready(self, which: range | list[int], *, replicated: bool = False) -> None:
        deadline = time.monotonic() + self.start_timeout
        for i in which:
            node = self.nodes[i]
            while not (
                self._serves_mqtt(node)
                and self._joined(node)
                and (not replicated or self._replicated(node))
            ):
                if node.proc is None or node.proc.poll() is not None:
                    raise BrokerError(f"nats-server {node.name} exited:\n{self._log_tail(node)}")
                if time.monotonic() > deadline:
                    raise BrokerError(
                        f"nats-server {node.name} did not serve MQTT within "
                        f"{self.start_timeout} s:\n{self._log_tail(node)}"
                    )
                time.sleep(0.1)

    def _joined(self, node: _NatsNode) -> bool:
        """Routed to every other node, JetStream has a metadata leader, and
        the node's JetStream is current with it (the monitoring port's
        /routez, /jsz, /healthz?js-server-only=true). A node accepts MQTT
        CONNECTs before that ("Waiting for routing to be established"), and a
        push published then could wait a minute: the suite under stress-ng
        saw it."""
        if len(self.nodes) < 2:
            return True
        try:
            routes = self._monitor(node, "routez").get("num_routes", 0)
            meta = self._monitor(node, "jsz").get("meta_cluster") or {}
            health = self._monitor(node, "healthz?js-server-only=true").get("status")
        except (OSError, ValueError):
            return False
        return bool(routes >= len(self.nodes) - 1 and meta.get("leader") and health == "ok")

    def _replicated(self, node: _NatsNode) -> bool:
        """Every stream (the sessions, the queued messages, the retained
        ones) and consumer has a leader, and each stream's leader counts
        ``node``'s replica current (/jsz with its streams and consumers, from
        every running node). Not /healthz: after a restart nats-server 2.9.10
        was seen to leave a consumer's replica on the node "not current" for
        over a minute while its leader delivered and took acks as usual, so
        /healthz stayed 503 for an asset nothing waited on."""
        if len(self.nodes) < 2:
            return True
        page = "jsz?accounts=true&streams=true&consumers=true"
        running = [n for n in self.nodes if n.proc is not None and n.proc.poll() is None]
        try:
            views = {n.name: self._monitor(n, page) for n in running}
        except (OSError, ValueError):
            return False
        for name, view in views.items():
            for account in view.get("account_details") or []:
                for stream in account.get("stream_detail") or []:
                    cluster = stream.get("cluster") or {}
                    if not cluster.get("leader"):
                        return False
                    consumers = stream.get("consumer_detail") or []
                    if any(not (c.get("cluster") or {}).get("leader") for c in consumers):
                        return False
                    if cluster["leader"] != name or name == node.name:
                        continue  # only a leader knows whether its followers are current
                    replicas = {r.get("name"): r for r in cluster.get("replicas") or []}
                    if not (replicas.get(node.name) or {}).get("current"):
                        return False
        return True

    def _monitor(self, node: _NatsNode, page: str) -> dict[str, Any]:
        url = f"http://{self.host}:{node.http_port}/{page}"
        direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # no proxy env
        with direct.open(url, timeout=2.0) as answer:
            data = json.loads(answer.read())
        return data if isinstance(data, dict) else {}

    def _serves_mqtt(self, node: _NatsNode) -> bool:
        """An MQTT 3.1.1 CONNECT gets a CONNACK accepting it (it needs JetStream)."""
        creds = self.tms_credentials if self.secure else None
        return connack_code(self.host, node.mqtt_port, f"ready-{node.name}", creds) == 0

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
        self._wait_ready([i], replicated=True)

    def stop(self) -> None:
        """Stop every node (SIGTERM, then SIGKILL after 5 s). Idempotent."""
        for node in self.nodes:
            self._terminate(node)

    @staticmethod
    def _terminate(node: _NatsNode) -> None:
        proc, node.proc = node.proc, None
        stop_process(proc)

    def restart(self) -> None:
        """Restart every node on the same ports and storage, one at a time
        (SIGTERM, then back and healthy before the next). Raises BrokerError."""
        for i in range(len(self.nodes)):
            self._terminate(self.nodes[i])
            self.start_node(i)

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
        secure = ", secure" if self.secure else ""
        return f"NatsCluster({len(self.nodes)} nodes, {up} up, mqtt {self.url}{secure})"
