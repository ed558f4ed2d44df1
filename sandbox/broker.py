"""The sandbox's MQTT brokers as child processes: their contract, and what they share.

docs/protocol.md part C needs an MQTT 5 broker (3.1.1 accepted); tests use
real ones, never a mock. Mosquitto for one site
(``sandbox.broker_mosquitto.MosquittoBroker``) and a NATS cluster for a
fleet (``sandbox.broker_nats.NatsCluster``) share one contract:

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

What each broker does with a refused operation (Mosquitto 2.0.11 and
nats-server 2.9.10, measured in tests/integration/test_broker_acl.py); how
each answers a SUBSCRIBE or PUBLISH outside the ACL is in its own module:

- anonymous CONNECT, or a wrong password: refused in the CONNACK (MQTT 5
  0x86/0x87, 3.1.1 return code 4/5);
- PUBLISH outside the ACL: the broker drops the message, so no subscriber
  ever gets it, and a retained one is not stored;
- a will on a topic outside the ACL is accepted at CONNECT and dropped when
  the broker would publish it.

Shared here: the users (``TMS_USER``, ``Credentials``, the names a user may
have), the secret files (mode 0600) and the lock under which ``serve`` and
``provision`` (another process) change them, free loopback ports, and the
raw CONNACK probe (``connack_code``) with which ``start()`` and ``add_user``
wait until a broker serves, or accepts a new user.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import secrets
import socket
import struct
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

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


def stop_process(proc: subprocess.Popen[bytes] | None) -> None:
    """SIGTERM ``proc`` and wait up to 5 s, then SIGKILL. Nothing if it is gone."""
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def new_password() -> str:
    """A random MQTT password: 32 URL-safe characters (192 bits)."""
    return secrets.token_urlsafe(24)


def check_username(name: str) -> str:
    """``name`` if it can be a broker user. Raises BrokerError."""
    if not _USERNAME.fullmatch(name):
        raise BrokerError(f"a broker user name is 1-64 of letters, digits, _ and -: {name!r}")
    return name


def check_terminal_users(users: Mapping[str, str]) -> None:
    """Raises BrokerError for a name that cannot be a terminal's user."""
    for name in users:
        check_username(name)
        if name == TMS_USER:
            raise BrokerError(f"{TMS_USER!r} is the TMS's user, not a terminal's")


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


def write_secret(path: Path, text: str) -> None:
    """Replace ``path`` with ``text``, readable by the owner only (0600), atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)
    os.chmod(tmp, 0o600)  # O_CREAT's mode only applies to a new file
    tmp.replace(path)


def secret_file(path: Path) -> str:
    """The password in ``path``, made (random, mode 0600) when the file is missing."""
    if not path.exists():
        write_secret(path, new_password() + "\n")
    return path.read_text("utf-8").strip()


@contextlib.contextmanager
def user_files_locked(directory: Path) -> Iterator[None]:
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


def wait_accepts(
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
