"""Mosquitto as the sandbox's broker, a child process (``sandbox.broker``'s contract).

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

What Mosquitto 2.0.11 does with a refused operation beyond what both
brokers do (``sandbox.broker``; measured in
tests/integration/test_broker_acl.py):

- SUBSCRIBE outside the ACL: Mosquitto 2.0's acl_file does not check
  subscriptions at all (a FIXME in its ``security_default.c``): the SUBACK
  grants QoS 1, and each message is checked for ``read`` as it is routed to
  the subscriber, so nothing is ever delivered;
- PUBLISH outside the ACL: Mosquitto answers MQTT 5 with PUBACK reason 0x87
  (Not authorized) and 3.1.1 with a plain PUBACK, and drops the message.
"""

from __future__ import annotations

import base64
import getpass
import hashlib
import itertools
import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType

from cloud.topics import PREFIX, every_terminal
from sandbox.broker import (
    TMS_USER,
    BrokerError,
    Credentials,
    check_terminal_users,
    check_username,
    free_port,
    port_is_free,
    secret_file,
    stop_process,
    user_files_locked,
    wait_accepts,
    write_secret,
)

INSTALL_HINT = "install it with: apt-get install mosquitto"
_CANDIDATES = ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto", "/opt/homebrew/sbin/mosquitto")


def find_mosquitto() -> str:
    """Path of the mosquitto executable. Raises BrokerError."""
    found = shutil.which("mosquitto")
    if found:
        return found
    for candidate in _CANDIDATES:
        if os.access(candidate, os.X_OK):
            return candidate
    raise BrokerError(f"mosquitto is not installed; {INSTALL_HINT}")


# The ACL of a secure Mosquitto. A line's access is checked against the
# topic of each PUBLISH a client sends (write) and of each message routed to
# it (read); see the module docstring for subscriptions.
MOSQUITTO_ACL = f"""\
# Written by sandbox.broker_mosquitto.MosquittoBroker (docs/protocol.md part C,
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
        with user_files_locked(self.data_dir):
            return self._tms_credentials()

    def _tms_credentials(self) -> Credentials:
        password = secret_file(self.tms_password_path)
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
        check_terminal_users(users)
        with user_files_locked(self.data_dir):
            self._tms_credentials()  # the TMS is in every password file
            if not self._put_passwords(users):
                return  # nothing new: no reload
            pid = self._running_pid()
            if pid is None:
                return  # not running: read at the next start
            os.kill(pid, signal.SIGHUP)  # Mosquitto re-reads password_file and acl_file
        if wait and users:
            # One reload covers every line: one login shows it is done.
            wait_accepts(
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
            "# Written by sandbox.broker_mosquitto.MosquittoBroker.",
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
            with user_files_locked(self.data_dir):
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
        stop_process(proc)
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
