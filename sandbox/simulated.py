"""A terminal with no hardware, for POS developers: ``serve --simulated-terminal SN``.

``SimulatedTerminal`` provisions terminal ``SN`` in the sandbox's data
directory and runs, as real processes, the real agent (``sadad-agent run``)
and two simulated readers on pseudo-terminals that present by themselves
whenever the agent arms them: a PN532 with the approving test Visa card,
and a scanner with a WeChat Pay code. So an order pushed to ``SN`` is paid
with no one at the terminal, and its outcome follows the sandbox's amount
rules (sandbox/README.md: ``.51`` declines, ``.91`` times out, ...).

Everything lives in ``DIR/terminals/SN/`` (``agent.toml``, the journal,
``agent.log``, the readers' logs and links). ``start`` returns once the
readers' links exist and the agent runs; ``stop`` ends them (SIGTERM, then
SIGKILL); ``online`` says whether the agent's retained status reached the
gateway. Raises ``RuntimeError`` when a process cannot start.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import IO

from sandbox.keys import Layout
from sandbox.provision import provision_terminal

# (reader name, spec kind, simulator arguments)
READERS = (
    ("nfc", "pn532:{link}", ("nfc", "--card", "visa", "--auto")),
    (
        "scanner",
        "scanner:{link};model=honeywell",
        ("scanner", "--model", "honeywell", "--card", "wechat", "--auto"),
    ),
)
START_TIMEOUT = 20.0


class SimulatedTerminal:
    def __init__(self, layout: Layout, sn: str) -> None:
        self.layout = layout
        self.sn = sn
        self.dir = layout.root / "terminals" / sn
        self._procs: list[subprocess.Popen[bytes]] = []
        self._logs: list[IO[bytes]] = []

    def _spawn(self, name: str, argv: list[str]) -> subprocess.Popen[bytes]:
        log = (self.dir / f"{name}.log").open("ab")
        self._logs.append(log)
        proc = subprocess.Popen(
            [sys.executable, *argv],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            start_new_session=True,  # a Ctrl+C in the shell reaches the sandbox, which stops us
        )
        self._procs.append(proc)
        return proc

    def start(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        links: list[Path] = []
        specs: dict[str, str] = {}
        for name, spec, args in READERS:
            link = (self.dir / f"{name}.tty").absolute()
            links.append(link)
            specs[name] = spec.format(link=link)
            self._spawn(f"sim-{name}", ["-m", "drivers.sim.cli", *args, "--link", str(link)])
        deadline = time.monotonic() + START_TIMEOUT
        for link in links:
            while not link.exists():
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"simulated reader {link.name} did not start")
                time.sleep(0.05)
        done = provision_terminal(self.layout, self.sn, readers=specs, store_name="Simulated Store")
        self._spawn("agent", ["-m", "agent.cli", "run", "--config", str(done.agent_config)])

    def alive(self) -> bool:
        return all(p.poll() is None for p in self._procs)

    def stop(self) -> None:
        procs, self._procs = self._procs, []
        for proc in reversed(procs):  # the agent first, then its readers
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 10
        for proc in reversed(procs):
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for log in self._logs:
            log.close()
        self._logs = []
