"""``make demo``: the whole flow on one machine, with nothing to install by hand.

Starts, as real processes: the sandbox (SadadSystem + SadadTMS) with its own
Mosquitto, simulated readers on pseudo-terminals (a PN532 with a Visa card
that taps whenever the reader polls, a magstripe reader, a Honeywell-style
scanner that shows a WeChat Pay code when triggered), a simulated ESC/POS
receipt printer (its receipts appended to ``DIR/receipts.txt``), the
terminal agent, and - on a terminal - the checkout screen. Then it pushes orders the POS
way, with ``sadad-pos push --wait``.

* Interactive (default, on a TTY): the checkout UI runs in the foreground;
  a first order is pushed and paid on screen with no input; the demo then
  stays up and prints how to push more. Quit the UI (Ctrl+Q) to stop.
* Headless (``--headless`` or ``DEMO_HEADLESS=1``): three sales - card,
  wallet, card with a tip - each must end COMPLETED; exits 0, or 1 with the
  logs' tails.

Everything lives under ``--data`` (logs in ``DIR/logs``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO, Any

SN = "DEMO0001"
DEMO_PIN = "1234"  # opens the setup screen (F2): a demo's, printed, never a real terminal's
SALES: list[tuple[str, list[str]]] = [
    (
        "contactless card",
        ["--amount", "12.50", "--scenario", "SWIPE_CARD", "--description", "2 coffees"],
    ),
    (
        "WeChat Pay code",
        ["--amount", "7.25", "--scenario", "BSCANQR_PAY", "--description", "Pastry"],
    ),
    ("card with a tip", ["--amount", "30.00", "--tip", "2.00", "--scenario", "SWIPE_CARD"]),
]


def _bin(name: str) -> str:
    here = Path(sys.executable).parent / name
    return str(here) if here.exists() else name


class Stack:
    """The demo's processes; stops them all on exit."""

    def __init__(self, data: Path) -> None:
        self.data = data
        self.logs = data / "logs"
        self.procs: list[tuple[str, subprocess.Popen[bytes]]] = []
        self._files: list[IO[bytes]] = []

    def start(
        self,
        name: str,
        argv: list[str],
        *,
        stdout: int | IO[bytes] | None = None,
        on_screen: bool = False,
    ) -> subprocess.Popen[bytes]:
        """Start a process logging to DIR/logs/NAME.log; ``on_screen`` keeps
        the terminal's stdin and stdout (the checkout UI)."""
        log = (self.logs / f"{name}.log").open("ab")
        self._files.append(log)
        proc = subprocess.Popen(
            argv,
            stdout=None if on_screen else (stdout if stdout is not None else log),
            stderr=None if on_screen else log,  # Textual draws on stderr
            stdin=None if on_screen else subprocess.DEVNULL,
        )
        self.procs.append((name, proc))
        return proc

    def stop(self) -> None:
        for _name, proc in reversed(self.procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 10
        for _name, proc in reversed(self.procs):
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for f in self._files:
            f.close()

    def tail(self, lines: int = 15) -> str:
        out = []
        for path in sorted(self.logs.glob("*.log")):
            text = path.read_text(errors="replace").splitlines()[-lines:]
            out.append(f"--- {path.name}\n" + "\n".join(text))
        return "\n".join(out)


def _wait_for_line(proc: subprocess.Popen[bytes], timeout: float) -> str:
    assert proc.stdout is not None
    os.set_blocking(proc.stdout.fileno(), True)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if line:
            return line.decode().strip()
        if proc.poll() is not None:
            break
    raise RuntimeError("process did not start (see its log)")


def _wait_for(path: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline:
            raise RuntimeError(f"{path} did not appear")
        time.sleep(0.05)


@contextlib.contextmanager
def running(data: Path) -> Iterator[tuple[Stack, Path, Path]]:
    """Sandbox, readers and agent up; yields (stack, pos.toml, agent.toml)."""
    data.mkdir(parents=True, exist_ok=True)
    stack = Stack(data)
    stack.logs.mkdir(exist_ok=True)
    try:
        serve = stack.start(
            "sandbox",
            [_bin("sadad-sandbox"), "serve", "--data", str(data / "sandbox"), "--start-broker"],
            stdout=subprocess.PIPE,
        )
        info: dict[str, Any] = json.loads(_wait_for_line(serve, 30))
        print(f"sandbox  {info['http_url']}  broker {info['mqtt_url']}", flush=True)
        links = {name: data / f"{name}.tty" for name in ("nfc", "msr", "scanner")}
        stack.start(
            "sim-nfc",
            [
                _bin("sadad-reader-sim"),
                "nfc",
                "--link",
                str(links["nfc"]),
                "--card",
                "visa",
                "--auto",
            ],
        )
        stack.start(
            "sim-msr",
            [_bin("sadad-reader-sim"), "magstripe", "--link", str(links["msr"]), "--card", "visa"],
        )
        stack.start(
            "sim-scanner",
            [
                _bin("sadad-reader-sim"),
                "scanner",
                "--link",
                str(links["scanner"]),
                "--model",
                "honeywell",
                "--card",
                "wechat",
                "--auto",
            ],
        )
        printer_link, receipts = data / "printer.tty", data / "receipts.txt"
        stack.start(
            "sim-printer",
            [
                _bin("sadad-reader-sim"),
                "printer",
                "--link",
                str(printer_link),
                "--out",
                str(receipts),
            ],
        )
        for link in (*links.values(), printer_link):
            _wait_for(link, 15)
        readers = [
            f"nfc=pn532:{links['nfc']}",
            f"msr=magstripe:{links['msr']}",
            f"scanner=scanner:{links['scanner']};model=honeywell",
        ]
        args = [
            _bin("sadad-sandbox"),
            "provision",
            "--data",
            str(data / "sandbox"),
            "--terminal",
            SN,
            "--store-name",
            "Demo Coffee",
            "--technician-pin",
            DEMO_PIN,
            "--printer",
            f"escpos:{printer_link}",
        ]
        for spec in readers:
            args += ["--reader", spec]
        out = subprocess.run(args, check=True, capture_output=True, text=True).stdout
        agent_toml = Path(json.loads(out.strip().splitlines()[-1])["agent_config"])
        stack.start("agent", [_bin("sadad-agent"), "run", "--config", str(agent_toml)])
        socket = agent_toml.parent / "agent.sock"
        _wait_for(socket, 30)
        print(f"agent    {SN} running ({agent_toml})", flush=True)
        print(f"setup    F2 on the checkout, technician PIN {DEMO_PIN}", flush=True)
        print(f"receipts {receipts} (a simulated ESC/POS printer)", flush=True)
        yield stack, Path(info["pos_config"]), agent_toml
    finally:
        stack.stop()


def push(pos_toml: Path, extra: Sequence[str], *, quiet: bool) -> dict[str, Any]:
    argv = [
        _bin("sadad-pos"),
        "--config",
        str(pos_toml),
        "--json",
        "push",
        "--terminal",
        SN,
        *extra,
        "--wait",
        "--timeout",
        "60",
    ]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    try:
        result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    except (IndexError, json.JSONDecodeError):
        raise RuntimeError(f"sadad-pos failed: {done.stderr.strip()}") from None
    if not quiet:
        print(json.dumps(result, indent=2))
    return result


def _status(result: dict[str, Any]) -> str:
    order = result.get("order", result)
    return str(order.get("trans_status_name") or order.get("status") or order.get("trans_status"))


def headless(data: Path) -> int:
    with running(data) as (stack, pos_toml, agent_toml):
        ok = 0
        for label, extra in SALES:
            try:
                result = push(pos_toml, extra, quiet=True)
            except (RuntimeError, subprocess.TimeoutExpired) as exc:
                print(f"sale by {label}: FAILED: {exc}")
                print(stack.tail())
                return 1
            order = result.get("order", result)
            status = order.get("trans_status")
            line = (
                f"sale by {label:<17} {order.get('order_amount', ''):>7} "
                f"{order.get('price_currency', '')}: status {status} "
                f"{order.get('masked_pan') or order.get('pay_method_id') or ''}"
            )
            print(line, flush=True)
            if status != 2:
                print(stack.tail())
                return 1
            ok += 1
        subprocess.run([_bin("sadad-agent"), "journal", "--config", str(agent_toml)], check=False)
        printed = _receipts_printed(data / "receipts.txt", ok)
        print(f"demo: {ok} sales completed, {printed} receipts printed")
        return 0


def _receipts_printed(path: Path, expected: int, timeout: float = 15.0) -> int:
    """How many receipts the simulated printer printed, once it has ``expected``
    (the last prints a moment after its sale is paid) or ``timeout`` passed."""
    from drivers.sim.printer import SEPARATOR

    deadline = time.monotonic() + timeout
    while True:
        text = path.read_text("utf-8") if path.exists() else ""
        count = text.count(SEPARATOR + "\n")
        if count >= expected or time.monotonic() > deadline:
            return count
        time.sleep(0.1)


def interactive(data: Path) -> int:
    with running(data) as (stack, pos_toml, agent_toml):
        socket = agent_toml.parent / "agent.sock"
        if shutil.which(_bin("sadad-ui")) is None and not Path(_bin("sadad-ui")).exists():
            print("sadad-ui is not installed: running headless")
            return headless(data)
        # The first order, pushed the POS way once the screen is up.
        argv = [
            _bin("sadad-pos"),
            "--config",
            str(pos_toml),
            "push",
            "--terminal",
            SN,
            *SALES[0][1],
            "--wait",
            "--timeout",
            "60",
        ]
        timer = threading.Timer(3.0, lambda: stack.start("pos", argv))
        timer.start()
        ui = stack.start(
            "ui",
            [
                _bin("sadad-ui"),
                "--socket",
                str(socket),
                "--allow-quit",
                "--hint",
                f"Push more: sadad-pos --config {pos_toml} push --terminal {SN} "
                "--amount 9.99   (Ctrl+Q quits the demo)",
            ],
            on_screen=True,
        )
        ui.wait()
        timer.cancel()
        print("Push more orders with:")
        print(
            f"  .venv/bin/sadad-pos --config {pos_toml} push --terminal {SN} --amount 9.99 --wait"
        )
        return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="sandbox.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="demo-data", type=Path)
    parser.add_argument(
        "--headless", action="store_true", default=bool(os.environ.get("DEMO_HEADLESS"))
    )
    args = parser.parse_args(argv)

    def leave(signum: int, _frame: object) -> None:
        # A closed terminal (SIGHUP) or a kill must still stop every child.
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, leave)
    signal.signal(signal.SIGHUP, leave)
    # Every path handed to the agent, the readers and the sandbox is absolute,
    # so the demo works from any directory with the Makefile's relative default.
    data = args.data.absolute()
    if args.headless or not sys.stdout.isatty():
        return headless(data)
    return interactive(data)


if __name__ == "__main__":
    sys.exit(main())
