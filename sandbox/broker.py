"""The sandbox's MQTT brokers as child processes: Mosquitto, and a NATS cluster.

docs/protocol.md part C needs an MQTT 5 broker (3.1.1 accepted); tests use
real ones, never a mock. Both classes share one contract:

- ``start()`` returns once the broker serves MQTT; ``stop()`` ends it
  (SIGTERM, then SIGKILL after 5 s; safe to call twice); ``restart()``
  keeps ports and persistence, so persistent sessions and their queued
  messages survive; ``url`` is what a client connects to. Every failure
  raises ``BrokerError`` (not installed - with the apt-get line -, exited at
  once, not serving within ``start_timeout``).
- ``secure=True``: per-terminal security (docs/operations.md, "Credentials
  and ACLs"). Anonymous clients are refused at CONNECT. Each terminal is a
  user named by its SN (``add_user(sn, password)``) that may subscribe only
  to its own ``orders`` topic and publish only its own ``events`` and
  ``status`` (retained, and its will there). The TMS is the user
  ``TMS_USER`` (``tms_credentials``: created at the first start, kept in the
  data directory, mode 0600) that publishes every terminal's ``orders`` and
  reads every terminal's ``events`` and ``status``. ``add_user`` rewrites the
  broker's files and has a running broker reload them (SIGHUP), then returns
  once the broker accepts the new credentials; a broker that is not running
  reads them at its next start. Without ``secure`` the broker is anonymous
  and open, as the existing tests use it.

``MosquittoBroker(data_dir, port)`` writes ``data_dir/mosquitto.conf``
(``listener PORT 127.0.0.1``, ``persistence true`` in ``data_dir/``) and runs
``mosquitto -c`` on it, its output in ``data_dir/mosquitto.log`` and its pid
in ``data_dir/mosquitto.pid`` (so that ``sadad-sandbox provision``, another
process, can make it reload). Secure, it adds ``allow_anonymous false``,
``password_file data_dir/passwords`` (PBKDF2-SHA512 hashes, written here in
the ``$7$`` format of Mosquitto 2.0's ``mosquitto_passwd``) and ``acl_file
data_dir/acl`` (``MOSQUITTO_ACL``). Mosquitto drops root privileges to the
``mosquitto`` user unless told otherwise; the config names the current user
so it can write ``data_dir``. ``tcp_nodelay=True`` writes ``set_tcp_nodelay
true``: Mosquitto leaves Nagle on by default, so a message written while
the client's ACK of the previous one is still delayed waits for it (up to
40 ms; benchmarks/fleet.py measured it on back-to-back pushes).
``autosave_interval`` (seconds, default 1: a queued push survives a kill of
the broker within a second) is how often Mosquitto writes its whole
database; with thousands of sessions each write stalls it for milliseconds
(benchmarks/fleet.py).

``NatsCluster(data_dir, nodes=3)``: see its docstring. Secure, each node's
config carries ``authorization { users: [...] }`` (``nats_user``): MQTT
topics become NATS subjects (``nats_subject``) in per-user ``publish`` /
``subscribe`` permissions; the passwords are in the configs in clear (mode
0600: nats-server takes bcrypt hashes too, but the standard library cannot
make them).

What each broker does with a refused operation (Mosquitto 2.0.11 and
nats-server 2.9.10, measured in tests/integration/test_broker_acl.py):

- anonymous CONNECT, or a wrong password: refused in the CONNACK (MQTT 5
  0x86/0x87, 3.1.1 return code 4/5);
- SUBSCRIBE outside the ACL: Mosquitto 2.0's acl_file does not check
  subscriptions at all (a FIXME in its ``security_default.c``): the SUBACK
  grants QoS 1, and each message is checked for ``read`` as it is routed to
  the subscriber, so nothing is ever delivered. NATS refuses it in the
  SUBACK (0x80);
- PUBLISH outside the ACL: Mosquitto answers MQTT 5 with PUBACK reason 0x87
  (Not authorized) and 3.1.1 with a plain PUBACK, and drops the message;
  NATS (3.1.1 only) sends a plain PUBACK and drops it. Either way no
  subscriber ever gets it, and a retained one is not stored;
- a will on a topic outside the ACL is accepted at CONNECT and dropped when
  the broker would publish it.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import getpass
import hashlib
import itertools
import json
import os
import re
import secrets
import shutil
import signal
import socket
import struct
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

from cloud.topics import PREFIX, every_terminal, topic

INSTALL_HINT = "install it with: apt-get install mosquitto"
_CANDIDATES = ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto", "/opt/homebrew/sbin/mosquitto")

TMS_USER = "sadad-tms"
# Letters, digits, _ and -: what a terminal SN may be (sandbox.provision), and
# safe everywhere a name goes - a Mosquitto %u pattern (which refuses names
# with + or #), a NATS subject token (no ".", "*", ">"), a config string.
_USERNAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
RELOAD_TIMEOUT = 10.0  # seconds for a reloaded broker to accept new credentials


class BrokerError(RuntimeError):
    """The broker cannot be found, started or reached, or a user not added."""


@dataclass(frozen=True, slots=True)
class Credentials:
    username: str
    password: str = field(repr=False)


def new_password() -> str:
    """A random MQTT password: 32 URL-safe characters (192 bits)."""
    return secrets.token_urlsafe(24)


def check_username(name: str) -> str:
    """``name`` if it can be a broker user. Raises BrokerError."""
    if not _USERNAME.fullmatch(name):
        raise BrokerError(f"a broker user name is 1-64 of letters, digits, _ and -: {name!r}")
    return name


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


# ---------------------------------------------------------------- shared helpers


def write_secret(path: Path, text: str) -> None:
    """Replace ``path`` with ``text``, readable by the owner only (0600), atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)
    os.chmod(tmp, 0o600)  # O_CREAT's mode only applies to a new file
    tmp.replace(path)


def _secret_file(path: Path) -> str:
    """The password in ``path``, made (random, mode 0600) when the file is missing."""
    if not path.exists():
        write_secret(path, new_password() + "\n")
    return path.read_text("utf-8").strip()


@contextlib.contextmanager
def _locked(directory: Path) -> Iterator[None]:
    """An exclusive lock on ``directory``'s user files: ``provision`` (another
    process) and ``serve`` may add users at the same time."""
    directory.mkdir(parents=True, exist_ok=True)
    with (directory / ".users.lock").open("a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _mqtt_string(data: bytes) -> bytes:
    return struct.pack("!H", len(data)) + data


def connack_code(
    host: str,
    port: int,
    client_id: str,
    credentials: Credentials | None = None,
    timeout: float = 5.0,
) -> int | None:
    """The CONNACK return code a clean-session MQTT 3.1.1 CONNECT gets (0:
    accepted, 4: bad user name or password, 5: not authorized), or None when
    no CONNACK comes (refused, closed, timed out). Disconnects when accepted.

    Raw bytes (spec 3.1): every broker here speaks 3.1.1, and this runs in
    ``start()`` and ``add_user`` before any client library is wanted."""
    flags = 0x02  # clean session
    payload = _mqtt_string(client_id.encode())
    if credentials is not None:
        flags |= 0x80 | 0x40
        payload += _mqtt_string(credentials.username.encode())
        payload += _mqtt_string(credentials.password.encode())
    body = _mqtt_string(b"MQTT") + bytes([4, flags]) + struct.pack("!H", 10) + payload
    if len(body) > 127:
        raise BrokerError("CONNECT too long for the probe")  # one-byte remaining length
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.sendall(bytes([0x10, len(body)]) + body)
            answer = b""
            while len(answer) < 4:
                chunk = sock.recv(4 - len(answer))
                if not chunk:
                    return None
                answer += chunk
            if answer[:2] != b"\x20\x02":
                return None
            if answer[3] == 0:
                with contextlib.suppress(OSError):
                    sock.sendall(b"\xe0\x00")  # DISCONNECT: no will, no error logged
            return answer[3]
    except OSError:
        return None


def _wait_accepts(
    host: str,
    port: int,
    credentials: Credentials,
    alive: Callable[[], bool],
    timeout: float = RELOAD_TIMEOUT,
) -> None:
    """Until the broker at host:port accepts ``credentials`` (it has reloaded).
    ``alive()`` False stops the wait early. Raises BrokerError."""
    deadline = time.monotonic() + timeout
    probe = f"reload-probe-{secrets.token_hex(4)}"
    while True:
        code = connack_code(host, port, probe, credentials, timeout=2.0)
        if code == 0:
            return
        if not alive():
            return  # stopped meanwhile: its next start reads the files
        if time.monotonic() > deadline:
            raise BrokerError(
                f"the broker at {host}:{port} did not accept user {credentials.username} "
                f"within {timeout} s of the reload (CONNACK {code})"
            )
        time.sleep(0.05)


# ---------------------------------------------------------------- Mosquitto

# The ACL of a secure Mosquitto. A line's access is checked against the
# topic of each PUBLISH a client sends (write) and of each message routed to
# it (read); see the module docstring for subscriptions.
MOSQUITTO_ACL = f"""\
# Written by sandbox.broker.MosquittoBroker (docs/protocol.md part C,
# docs/operations.md "Credentials and ACLs"). Anything not allowed here is
# denied; anonymous clients are refused at CONNECT (allow_anonymous false).

# The TMS (the sandbox's own client): pushes to every terminal, and every
# terminal's events and retained status (the will included) back.
user {TMS_USER}
topic write {every_terminal("orders")}
topic read {every_terminal("events")}
topic read {every_terminal("status")}

# Every terminal: its user name is its SN (%u, which the broker took from a
# CONNECT whose password it checked). Its own pushes in; its own events and
# status out (retained, and the will the broker publishes for it is checked
# as a write of the terminal's when it is sent). Not %c: the client id is
# whatever the client claims - a pattern on it would let a terminal read
# another's orders by connecting under that SN as client id - and the
# agent's connection probe uses "SN-probe". Pattern lines apply to every
# user, the TMS too: no terminal may be called "{TMS_USER}".
pattern read {PREFIX}/%u/orders
pattern write {PREFIX}/%u/events
pattern write {PREFIX}/%u/status
"""

PBKDF2_ITERATIONS = 101  # mosquitto_passwd's default in 2.0 (PW_DEFAULT_ITERATIONS)
_SALT_BYTES = 12  # its SALT_LEN


def mosquitto_password_line(username: str, password: str, *, salt: bytes | None = None) -> str:
    """``username:$7$101$SALT$HASH``: what ``mosquitto_passwd -b`` writes in
    Mosquitto 2.0 - PBKDF2-HMAC-SHA512 over the password with a 12-byte
    random salt, 101 iterations, salt and 64-byte hash in standard base64."""
    check_username(username)
    salt = secrets.token_bytes(_SALT_BYTES) if salt is None else salt
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, PBKDF2_ITERATIONS)
    b64 = base64.b64encode
    return f"{username}:$7${PBKDF2_ITERATIONS}${b64(salt).decode()}${b64(digest).decode()}"


def mosquitto_password_ok(line: str, password: str) -> bool:
    """Whether a ``$7$`` password-file line holds ``password`` (for tests and checks)."""
    _user, _, hashed = line.strip().partition(":")
    parts = hashed.split("$")
    if len(parts) != 5 or parts[1] != "7":
        return False
    salt, digest = base64.b64decode(parts[3]), base64.b64decode(parts[4])
    mine = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, int(parts[2]))
    return secrets.compare_digest(mine, digest)


def _pid_runs(pid: int, config: Path) -> bool:
    """Whether ``pid`` is a live process started with ``-c config``: a pid file
    can outlive its broker, and SIGHUP kills most other programs."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return any(a == b"-c" and b == str(config).encode() for a, b in itertools.pairwise(argv))


class MosquittoBroker:
    """See the module docstring."""

    host = "127.0.0.1"

    def __init__(
        self,
        data_dir: Path,
        port: int | None = None,
        *,
        secure: bool = False,
        tcp_nodelay: bool = False,
        autosave_interval: int = 1,
        executable: str | None = None,
        start_timeout: float = 10.0,
    ) -> None:
        self.data_dir = Path(data_dir).resolve()
        self._port = port
        self.secure = secure
        self.tcp_nodelay = tcp_nodelay
        self.autosave_interval = autosave_interval
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
    def pid_path(self) -> Path:
        return self.data_dir / "mosquitto.pid"

    @property
    def password_path(self) -> Path:
        return self.data_dir / "passwords"

    @property
    def acl_path(self) -> Path:
        return self.data_dir / "acl"

    @property
    def tms_password_path(self) -> Path:
        return self.data_dir / "tms.password"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pids(self) -> list[int]:
        """The broker's process id while it runs (for /proc readings)."""
        return [self._proc.pid] if self._proc is not None and self.running else []

    # ------------------------------------------------------------ users

    @property
    def tms_credentials(self) -> Credentials:
        """The TMS's user and password (made on first use). Raises BrokerError
        when the broker is not secure."""
        if not self.secure:
            raise BrokerError("an anonymous broker has no TMS user")
        with _locked(self.data_dir):
            return self._tms_credentials()

    def _tms_credentials(self) -> Credentials:
        password = _secret_file(self.tms_password_path)
        self._put_passwords({TMS_USER: password})  # also after the password file was lost
        return Credentials(TMS_USER, password)

    def _put_passwords(self, users: Mapping[str, str]) -> bool:
        """Set the users' lines in the password file (sorted; other lines kept,
        and a line whose password is unchanged keeps its salt). Returns
        whether the file changed."""
        lines: dict[str, str] = {}
        if self.password_path.exists():
            for line in self.password_path.read_text("utf-8").splitlines():
                user, sep, _ = line.partition(":")
                if sep and not line.startswith("#"):
                    lines[user] = line
        changed = False
        for name, password in users.items():
            current = lines.get(name)
            if current is None or not mosquitto_password_ok(current, password):
                lines[name] = mosquitto_password_line(name, password)
                changed = True
        if changed:
            write_secret(self.password_path, "".join(lines[u] + "\n" for u in sorted(lines)))
        return changed

    def add_user(self, name: str, password: str, *, wait: bool = True) -> None:
        """Give terminal ``name`` (its SN) ``password``; a running broker - ours,
        or one another process started on this ``data_dir`` - reloads, and
        with ``wait`` this returns once it accepts them. Raises BrokerError
        (a bad name, the TMS's name, a broker that does not take them)."""
        self.add_users({name: password}, wait=wait)

    def add_users(self, users: Mapping[str, str], *, wait: bool = True) -> None:
        """``add_user`` for many terminals with one reload."""
        if not self.secure:
            raise BrokerError("users are for a secure broker (secure=True)")
        _check_terminal_users(users)
        with _locked(self.data_dir):
            self._tms_credentials()  # the TMS is in every password file
            if not self._put_passwords(users):
                return  # nothing new: no reload
            pid = self._running_pid()
            if pid is None:
                return  # not running: read at the next start
            os.kill(pid, signal.SIGHUP)  # Mosquitto re-reads password_file and acl_file
        if wait and users:
            # One reload covers every line: one login shows it is done.
            _wait_accepts(
                self.host,
                self._port or self._configured_port(),
                Credentials(*next(iter(users.items()))),
                lambda: self._running_pid() is not None,
            )

    def _running_pid(self) -> int | None:
        if self._proc is not None:
            return self._proc.pid if self._proc.poll() is None else None
        try:
            pid = int(self.pid_path.read_text().strip())
        except (OSError, ValueError):
            return None
        return pid if _pid_runs(pid, self.config_path) else None

    def _configured_port(self) -> int:
        """The port in the config file (a broker another process started)."""
        for line in self.config_path.read_text("utf-8").splitlines():
            words = line.split()
            if len(words) >= 2 and words[0] == "listener":
                return int(words[1])
        raise BrokerError(f"no listener in {self.config_path}")

    # ------------------------------------------------------------ process

    def _write_config(self) -> None:
        lines = [
            "# Written by sandbox.broker.MosquittoBroker.",
            f"listener {self.port} {self.host}",
        ]
        if self.secure:
            lines += [
                "allow_anonymous false",
                f"password_file {self.password_path}",
                f"acl_file {self.acl_path}",
            ]
        else:
            lines.append("allow_anonymous true")
        if self.tcp_nodelay:
            lines.append("set_tcp_nodelay true")
        lines += [
            "persistence true",
            f"persistence_location {self.data_dir}/",
            f"autosave_interval {self.autosave_interval}",
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
        if self.secure:
            with _locked(self.data_dir):
                self._tms_credentials()
                write_secret(self.acl_path, MOSQUITTO_ACL)
        with self.log_path.open("ab") as log:
            self._proc = subprocess.Popen(
                [executable, "-c", str(self.config_path)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
            )
        self.pid_path.write_text(f"{self._proc.pid}\n")
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
        self.pid_path.unlink(missing_ok=True)

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
        state = "running" if self.running else "stopped"
        return f"MosquittoBroker({self.host}:{port}, {state}{', secure' if self.secure else ''})"


# ---------------------------------------------------------------- NATS


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


def _check_terminal_users(users: Mapping[str, str]) -> None:
    """Raises BrokerError for a name that cannot be a terminal's user."""
    for name in users:
        check_username(name)
        if name == TMS_USER:
            raise BrokerError(f"{TMS_USER!r} is the TMS's user, not a terminal's")


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

    - ``start()`` starts every node and returns once JetStream has a metadata
      leader and every node accepts an MQTT connection (MQTT connects stall
      until then; secure, the probe logs in as the TMS). Raises
      ``BrokerError``.
    - ``kill(i)`` SIGKILLs node ``i`` (a crash); ``start_node(i)`` brings it back
      on the same ports and storage; ``stop()`` ends them all.
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
        out[TMS_USER] = _secret_file(self.tms_password_path)
        return out

    @property
    def tms_credentials(self) -> Credentials:
        """The TMS's user and password (made on first use, kept in
        ``tms_password_path``). Raises BrokerError when the cluster is not secure."""
        if not self.secure:
            raise BrokerError("an anonymous broker has no TMS user")
        with _locked(self.data_dir):
            return Credentials(TMS_USER, _secret_file(self.tms_password_path))

    def add_user(self, name: str, password: str, *, wait: bool = True) -> None:
        """Give terminal ``name`` (its SN) ``password`` on every node: configs
        rewritten, running nodes reloaded (SIGHUP), and with ``wait`` this
        returns once each running node accepts them. Raises BrokerError."""
        self.add_users({name: password}, wait=wait)

    def add_users(self, users: Mapping[str, str], *, wait: bool = True) -> None:
        """``add_user`` for many terminals with one reload per node."""
        if not self.secure:
            raise BrokerError("users are for a secure broker (secure=True)")
        _check_terminal_users(users)
        with _locked(self.data_dir):
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
                _wait_accepts(self.host, node.mqtt_port, login, _alive(node.proc))

    # ------------------------------------------------------------ process

    def _config(self, node: _NatsNode, users: dict[str, str] | None = None) -> str:
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
            with _locked(self.data_dir):
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
        secure = ", secure" if self.secure else ""
        return f"NatsCluster({len(self.nodes)} nodes, {up} up, mqtt {self.url}{secure})"
