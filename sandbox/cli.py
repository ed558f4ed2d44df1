"""``sadad-sandbox``: the local SadadSystem + SadadTMS (docs/protocol.md parts A-D).

``sadad-sandbox serve --data DIR [--host 127.0.0.1] [--port N] [--mqtt URL
[--mqtt-username NAME --mqtt-password-file PATH] | --start-broker
[--anonymous-broker]] [--time-scale F] [--hang-seconds S] [--simulated-terminal
SN ...] [--background]`` prepares DIR (keys,
merchant ``M0001`` with POS app ``pos-sandbox``, ``DIR/pos.toml``), binds the
HTTP port, starts the app under uvicorn on one asyncio loop and then prints
exactly one JSON line to stdout::

    {"http_url": ..., "mqtt_url": "mqtt://127.0.0.1:PORT", "data": DIR,
     "pos_config": DIR/pos.toml}

Logs go to stderr. SIGTERM / SIGINT / SIGHUP stop it cleanly, and the broker it
started. ``--simulated-terminal SN`` (repeatable) provisions terminal SN and
runs the real agent for it with simulated readers that pay by themselves
(``sandbox.simulated``), started and stopped with the sandbox; the JSON line
comes once they are online. ``--background`` returns once the sandbox is
ready (the JSON line printed), leaving it running with its log in
``DIR/sandbox.log``; ``sadad-sandbox stop --data DIR`` stops it.
``--port 0`` picks a free port; without ``--port`` the last serve's port is
reused when free. Without ``--mqtt`` it starts its own Mosquitto
(``--start-broker``), on the last serve's broker port when free, secure
(``sandbox.broker``: no anonymous clients; each terminal its own user and
topics, every provisioned terminal registered at start; the TMS logs in as
``sadad-tms`` with the password in ``DIR/mosquitto/tms.password``);
``--anonymous-broker`` starts it open to anyone instead. With ``--mqtt URL``
the TMS logs in as ``--mqtt-username`` with the password in
``--mqtt-password-file`` when given, and anonymously otherwise.

``sadad-sandbox provision --data DIR --terminal SN [--reader NAME=SPEC ...] [--printer SPEC]
[--store-name TEXT]`` registers a terminal, gives it broker credentials
(registered with the sandbox's own broker, which reloads if it runs) and
writes ``DIR/terminals/SN/agent.toml``; it prints one JSON line
``{"terminal": SN, "agent_config": PATH, "mqtt_username": SN,
"mqtt_password_file": PATH}``.

``sadad-sandbox fault --data DIR --terminal SN [FAULT ...] [--seconds S]
[--clear]`` switches forced failures (``sandbox.faults``) on for every order
of a provisioned terminal, or off with ``--clear`` (the named ones, or all);
a running sandbox follows at once. It prints one JSON line
``{"terminal": SN, "faults": {FAULT: SECONDS-or-null, ...}}`` (the faults now on).

Exit status: 0 on a clean stop, 2 for bad arguments or a broker that cannot
start.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from hashlib import sha1
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

from sandbox.broker import BrokerError, Credentials, port_is_free
from sandbox.broker_mosquitto import MosquittoBroker
from sandbox.faults import DEFAULT_LATE_S, Fault, FaultTable, parse
from sandbox.keys import DEFAULT_STORE_NAME, Layout
from sandbox.provision import (
    MQTT_LOGIN_FILE,
    STATE_BROKER_PORT,
    STATE_HTTP_PORT,
    STATE_HTTP_URL,
    STATE_MQTT_URL,
    ProvisionError,
    parse_readers,
    prepare,
    provision_terminal,
    write_pos_config,
)
from sandbox.simulated import SimulatedTerminal
from sandbox.store import Store

if TYPE_CHECKING:
    import uvicorn

log = logging.getLogger("sandbox")

READY_TIMEOUT = 30.0


def _positive(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError("must be greater than 0")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sadad-sandbox",
        description="Local stand-in for SadadSystem (payment gateway) and SadadTMS (MQTT pushes).",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the gateway and the TMS on loopback")
    serve.add_argument("--data", required=True, type=Path, help="data directory (created)")
    serve.add_argument("--host", default="127.0.0.1", help="HTTP address (default 127.0.0.1)")
    serve.add_argument(
        "--port", type=int, default=None, help="HTTP port; 0 = a free port (default: last one)"
    )
    mq = serve.add_mutually_exclusive_group()
    mq.add_argument("--mqtt", metavar="URL", help="use this broker, e.g. mqtt://127.0.0.1:1883")
    mq.add_argument(
        "--start-broker",
        action="store_true",
        help="start a Mosquitto under DIR/mosquitto (the default without --mqtt)",
    )
    serve.add_argument(
        "--anonymous-broker",
        action="store_true",
        help="the Mosquitto it starts lets anyone connect and use any topic "
        "(default: a user per terminal, limited to its own topics)",
    )
    serve.add_argument(
        "--mqtt-username",
        metavar="NAME",
        help="with --mqtt: the TMS's user on that broker (default: anonymous)",
    )
    serve.add_argument(
        "--mqtt-password-file",
        metavar="PATH",
        type=Path,
        help="with --mqtt-username: a file holding the TMS's password",
    )
    serve.add_argument(
        "--time-scale",
        type=_positive,
        default=1.0,
        help="multiply the notification retry waits and acquirer delays (e.g. 0.01 in tests)",
    )
    serve.add_argument(
        "--hang-seconds",
        type=_positive,
        default=40.0,
        help="how long a .91 amount keeps the create waiting, before scaling (default 40)",
    )
    serve.add_argument(
        "--late-seconds",
        type=_positive,
        default=DEFAULT_LATE_S,
        help="how late a late-create fault answers, not scaled (default 12: past the "
        "POS module's 10 s timeout)",
    )
    serve.add_argument(
        "--simulated-terminal",
        action="append",
        default=[],
        metavar="SN",
        help="also run terminal SN (the real agent, simulated readers that pay by themselves); "
        "repeatable",
    )
    serve.add_argument(
        "--background",
        action="store_true",
        help="return once ready, leaving the sandbox running (stop it with `stop`)",
    )
    serve.add_argument("-v", "--verbose", action="store_true", help="debug logging")

    stop = sub.add_parser("stop", help="stop a sandbox started with serve --background")
    stop.add_argument("--data", required=True, type=Path, help="data directory")

    prov = sub.add_parser("provision", help="register a terminal and write its agent.toml")
    prov.add_argument("--data", required=True, type=Path, help="data directory")
    prov.add_argument("--terminal", required=True, metavar="SN", help="terminal serial number")
    prov.add_argument(
        "--reader",
        action="append",
        default=[],
        metavar="NAME=SPEC",
        help="a reader line for agent.toml, e.g. nfc=pn532:/dev/ttyUSB0 (repeatable)",
    )
    prov.add_argument("--store-name", default=DEFAULT_STORE_NAME, help="shown on the terminal")
    prov.add_argument(
        "--printer",
        metavar="SPEC",
        help="the receipt printer for agent.toml, e.g. escpos:/dev/ttyUSB1;width=42",
    )
    prov.add_argument(
        "--technician-pin",
        metavar="DIGITS",
        help="the setup screen's PIN (4-12 digits); its hash is written beside agent.toml",
    )

    flt = sub.add_parser("fault", help="force failures for a terminal (see sandbox/README.md)")
    flt.add_argument("--data", required=True, type=Path, help="data directory")
    flt.add_argument("--terminal", required=True, metavar="SN", help="a provisioned terminal")
    flt.add_argument(
        "faults", nargs="*", metavar="FAULT", help=f"one of: {', '.join(f for f in Fault)}"
    )
    flt.add_argument(
        "--seconds",
        type=_positive,
        help="offline: for how long; busy: how long the other sale holds it; "
        "late-create: how late the answer comes",
    )
    flt.add_argument(
        "--clear", action="store_true", help="switch the named faults off (all when none)"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if getattr(args, "verbose", False) else logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)  # the notifier logs its own lines
    if args.command == "provision":
        return _provision(args)
    if args.command == "fault":
        return _fault(args)
    if args.command == "stop":
        return _stop_background(args.data)
    if args.background:
        return _serve_in_background(args, list(sys.argv[1:] if argv is None else argv))
    return _serve(args)


PID_FILE = "sandbox.pid"


def _serve_in_background(args: argparse.Namespace, argv: list[str]) -> int:
    """Run ``serve`` without ``--background`` as a process of its own session,
    wait for its JSON line (it comes once everything is ready), print it and
    return; the sandbox goes on, logging to DIR/sandbox.log."""
    data = Path(args.data).absolute()
    data.mkdir(parents=True, exist_ok=True)
    child_argv = [a for a in argv if a != "--background"]
    with (data / "sandbox.log").open("ab") as log:
        child = subprocess.Popen(
            [sys.executable, "-m", "sandbox.cli", *child_argv],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=log,
            start_new_session=True,
        )
    assert child.stdout is not None
    line = child.stdout.readline()  # the announce line, or EOF if it failed
    if not line:
        code = child.wait()
        print(
            f"sadad-sandbox serve: failed (exit {code}); see {data / 'sandbox.log'}",
            file=sys.stderr,
        )
        return code or 2
    (data / PID_FILE).write_text(f"{child.pid}\n")
    sys.stdout.write(line.decode())
    sys.stdout.flush()
    return 0


def _stop_background(data: Path) -> int:
    pid_file = Path(data) / PID_FILE
    try:
        pid = int(pid_file.read_text().strip())
    except (OSError, ValueError):
        print(
            f"sadad-sandbox stop: no sandbox started with --background in {data}", file=sys.stderr
        )
        return 2
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        pid_file.unlink(missing_ok=True)
        return 0
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            pid_file.unlink(missing_ok=True)
            return 0
        time.sleep(0.1)
    print(f"sadad-sandbox stop: {pid} did not stop within 30 s", file=sys.stderr)
    return 1


def _provision(args: argparse.Namespace) -> int:
    try:
        readers = parse_readers(args.reader)
        done = provision_terminal(
            Layout.of(args.data),
            args.terminal,
            readers=readers,
            store_name=args.store_name,
            technician_pin=args.technician_pin,
            printer=args.printer,
        )
    except ProvisionError as exc:
        print(f"sadad-sandbox provision: {exc}", file=sys.stderr)
        return 2
    out = {
        "terminal": done.sn,
        "agent_config": str(done.agent_config),
        "mqtt_username": done.mqtt_username,
        "mqtt_password_file": str(done.mqtt_password_file),
    }
    print(json.dumps(out), flush=True)
    return 0


def _fault(args: argparse.Namespace) -> int:
    try:
        faults = parse(args.faults)
    except ValueError as exc:
        print(f"sadad-sandbox fault: {exc}", file=sys.stderr)
        return 2
    layout = Layout.of(args.data)
    with Store(layout.db_path) as store:
        if store.terminal(args.terminal) is None:
            print(
                f"sadad-sandbox fault: unknown terminal {args.terminal} (provision it first)",
                file=sys.stderr,
            )
            return 2
    table = FaultTable(layout.db_path)
    try:
        now = time.time_ns() // 1_000_000
        if args.clear:
            table.clear(args.terminal, faults)
        elif faults:
            table.set(args.terminal, faults, args.seconds, now)
        active = {str(f): t.seconds for f, t in table.of(args.terminal, now).items()}
    finally:
        table.close()
    print(json.dumps({"terminal": args.terminal, "faults": active}), flush=True)
    return 0


def _bind(host: str, port: int | None, last: str | None) -> socket.socket:
    if port is None:
        port = int(last) if last and last.isdigit() and port_is_free(int(last), host) else 0
    # proto=IPPROTO_TCP: asyncio sets TCP_NODELAY only on accepted sockets whose
    # proto says TCP; with 0, uvicorn's separate header and body writes meet the
    # client's delayed ACK and every keep-alive request waits ~40 ms.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    sock.listen(128)
    sock.setblocking(False)
    return sock


def _outside_login(args: argparse.Namespace) -> Credentials | None:
    """The TMS's login on an outside broker (``--mqtt-username``,
    ``--mqtt-password-file``), or None. Raises ValueError."""
    if args.mqtt_username is None:
        if args.mqtt_password_file is not None:
            raise ValueError("--mqtt-password-file needs --mqtt-username")
        return None
    if args.mqtt_password_file is None:
        raise ValueError("--mqtt-username needs --mqtt-password-file")
    try:
        password = Path(args.mqtt_password_file).read_text("utf-8").strip()
    except OSError as exc:
        raise ValueError(f"--mqtt-password-file {args.mqtt_password_file}: {exc}") from exc
    if not password:
        raise ValueError(f"--mqtt-password-file {args.mqtt_password_file} is empty")
    return Credentials(args.mqtt_username, password)


def _register_terminals(layout: Layout, broker: MosquittoBroker) -> None:
    """Every provisioned terminal's credentials into the broker's password file
    before it starts: a terminal provisioned while the sandbox used another
    broker (or before its first serve) logs in all the same. Raises BrokerError."""
    for password_file in sorted(layout.root.glob(f"terminals/*/{MQTT_LOGIN_FILE}")):
        password = password_file.read_text("utf-8").strip()
        if password:
            broker.add_user(password_file.parent.name, password)


@dataclass
class _Stop:
    """What the signal handlers set: stop asked for, and the server to tell."""

    requested: bool = False
    server: uvicorn.Server | None = None

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        self.requested = True
        if self.server is not None:
            self.server.should_exit = True


def _serve(args: argparse.Namespace) -> int:
    # SIGTERM / SIGINT only ask to stop, from the first moment, so a broker this
    # process started is always stopped again. uvicorn installs its own handlers
    # while it serves, then restores these and raises the signal again.
    stop = _Stop()
    # SIGHUP too: a closed terminal must not leave its broker behind.
    previous = {s: signal.signal(s, stop) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
    try:
        return _serve_until_stopped(args, stop)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def _serve_until_stopped(args: argparse.Namespace, stop: _Stop) -> int:
    # The server's imports are here so that `provision` starts fast.
    import uvicorn

    from sandbox.app import build_app
    from sandbox.gateway import Gateway, Settings
    from sandbox.tms import parse_mqtt_url

    layout = Layout.of(args.data)
    keys = prepare(layout)
    store = Store(layout.db_path)
    broker: MosquittoBroker | None = None
    sock: socket.socket | None = None
    terminals: list[SimulatedTerminal] = []
    login: Credentials | None = None
    try:
        if args.mqtt and args.anonymous_broker:
            print(
                "sadad-sandbox serve: --anonymous-broker is for the broker serve starts, "
                "not with --mqtt",
                file=sys.stderr,
            )
            return 2
        if not args.mqtt and (args.mqtt_username or args.mqtt_password_file):
            print(
                "sadad-sandbox serve: --mqtt-username and --mqtt-password-file go with --mqtt "
                "(serve logs in to its own broker by itself)",
                file=sys.stderr,
            )
            return 2
        if args.mqtt:
            try:
                parse_mqtt_url(args.mqtt)
                login = _outside_login(args)
            except ValueError as exc:
                print(f"sadad-sandbox serve: {exc}", file=sys.stderr)
                return 2
            mqtt_url = args.mqtt
        else:
            last = store.get_state(STATE_BROKER_PORT)
            port = int(last) if last and last.isdigit() and port_is_free(int(last)) else None
            broker = MosquittoBroker(layout.mosquitto_dir, port, secure=not args.anonymous_broker)
            try:
                if broker.secure:
                    _register_terminals(layout, broker)
                    login = broker.tms_credentials
                broker.start()
            except BrokerError as exc:
                print(f"sadad-sandbox serve: {exc}", file=sys.stderr)
                return 2
            store.set_state(STATE_BROKER_PORT, str(broker.port))
            mqtt_url = broker.url
        try:
            sock = _bind(args.host, args.port, store.get_state(STATE_HTTP_PORT))
        except OSError as exc:
            print(
                f"sadad-sandbox serve: cannot listen on {args.host}:{args.port}: {exc}",
                file=sys.stderr,
            )
            return 2
        port = int(sock.getsockname()[1])
        http_url = f"http://{args.host}:{port}"
        write_pos_config(layout, http_url)
        store.set_state(STATE_HTTP_URL, http_url)
        store.set_state(STATE_HTTP_PORT, str(port))
        store.set_state(STATE_MQTT_URL, mqtt_url)

        settings = Settings(
            layout=layout,
            mqtt_url=mqtt_url,
            time_scale=args.time_scale,
            hang_seconds=args.hang_seconds,
            late_seconds=args.late_seconds,
            http_url=http_url,
            tms_client_id="sadad-tms-" + sha1(str(layout.root).encode()).hexdigest()[:12],  # noqa: S324
            mqtt_username=login.username if login else None,
            mqtt_password=login.password if login else None,
        )
        gw = Gateway(settings, keys, store)
        for sn in args.simulated_terminal:
            terminal = SimulatedTerminal(layout, sn)
            terminals.append(terminal)
            try:
                terminal.start()
            except (RuntimeError, ProvisionError) as exc:
                print(f"sadad-sandbox serve: simulated terminal {sn}: {exc}", file=sys.stderr)
                return 2
        config = uvicorn.Config(
            build_app(gw),
            log_config=None,
            lifespan="on",
            timeout_graceful_shutdown=2,
            access_log=False,
        )
        server = uvicorn.Server(config)
        stop.server = server
        if stop.requested:
            return 0
        announce = {
            "http_url": http_url,
            "mqtt_url": mqtt_url,
            "data": str(layout.root),
            "pos_config": str(layout.pos_config),
        }
        online = [t.sn for t in terminals]

        def ready() -> bool:
            listening = gw.tms is None or gw.tms.subscribed.is_set()
            return listening and all(map(store.terminal_online, online))

        asyncio.run(_run(server, sock, announce, ready))
        log.info("sandbox stopped")
        return 0
    finally:
        for terminal in terminals:
            terminal.stop()
        if sock is not None:
            sock.close()
        store.close()
        if broker is not None:
            broker.stop()


async def _run(
    server: uvicorn.Server,
    sock: socket.socket,
    announce: dict[str, str],
    ready: Callable[[], bool],
) -> None:
    task = asyncio.create_task(server.serve(sockets=[sock]))
    deadline = time.monotonic() + READY_TIMEOUT
    # Ready: serving, the TMS subscribed to every terminal's status and events
    # (an event sent before that is never heard), and every simulated
    # terminal online (its retained status reached the TMS), so an order
    # pushed next is delivered at once.
    while not (server.started and (ready() or time.monotonic() > deadline)):
        if task.done():
            await task  # startup failed: raise its error
            return
        await asyncio.sleep(0.05)
    if not ready():
        log.warning(
            "the TMS is not subscribed or simulated terminals are not online after %.0f s; "
            "see the broker and their agent.log",
            READY_TIMEOUT,
        )
    print(json.dumps(announce), flush=True)
    log.info("sandbox ready: %s", announce)
    await task


if __name__ == "__main__":
    sys.exit(main())
