"""Footprint of the agent on a terminal: memory, start-up time, idle CPU, and the UI's memory.

What it measures, on real processes (``benchmarks/stack.py``: Mosquitto, the sandbox,
three reader simulators on ptys, ``sadad-agent run`` as the unit starts it, with the
unit's watchdog):

- cold start: spawn to ``READY=1`` on a ``NOTIFY_SOCKET`` this script binds (the
  median of several starts; the page cache is warm, as on any start after the first
  since boot);
- agent RSS idle (connected, readers open, no sale yet), then after sales: a
  contactless sale each (push, tap, authorize, final in the journal), the result on
  screen for 0.1 s (``[ui] result_seconds``) so sales are not paced; growth per
  1,000 sales: the least-squares slope of the RSS over ``SAMPLES`` + 1 readings
  taken from the end of a warm-up (``--warmup``, ``WARMUP`` sales) to the last sale
  (the difference of two readings, after the warm-up and after the sales, is also
  given: one noisy reading moves it);
- idle CPU of the agent (and of the UI) over a window, as a percentage of one core;
- ``sadad-ui`` RSS on an 80x25 pty (``TERM=linux``, as the unit runs it), connected to
  the agent, idle and after the sales; its growth per 1,000 sales the same way. Its
  first ~50 sales allocate for good (first draws of each panel). Each sale's new
  texts (order number, amounts, auth code) filled rich's text-keyed caches
  (``rich.cells.cached_cell_len``, 4,096 texts, ~0.6 MB) over the first ~1,000
  sales until the checkout emptied them at the end of each sale
  (``ui/render_caches.py``); ``--warmup 1000`` compares with the figures
  measured before that.

Baselines, measured in the same run and with the unit's environment as the agent
(``PYTHONOPTIMIZE=2``): a bare interpreter (``python -c "import asyncio"``:
start-up time to its first output and RSS, idle CPU over the same window), the
agent's imports alone (``import agent.cli, agent.service``: time and RSS), and a bare
Textual app on the same pty for the UI, so the agent's and the UI's own shares show.

Targets (issue 7): agent RSS <= 40 MB idle, growth <= 2 MB per 1,000 sales, start
<= 1.5 s, idle CPU < 0.1 % of a core.

Usage: ``python benchmarks/footprint.py [--quick] [--sales N] [--warmup W]
[--idle-seconds S] [--starts K]``. ``--quick``: 30 warm-up sales and 60 sales (growth
scaled to 1,000 from so few sales is not judged against the target), a 10 s idle
window, 3 starts. The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from benchmarks.stack import (
    BIN,
    PYTHON,
    OnPty,
    ReadySocket,
    Stack,
    bare_python,
    cpu_seconds,
    load_average,
    machine,
    memory,
    rss_mb,
    sell,
    spawn_agent,
    stop,
    table,
    time_to_line,
    wait_log,
)
from tests.integration.agent_rig import ScreenWatcher, Terminal
from tests.integration.conftest import REPO

TARGETS = {"rss_idle_mb": 40.0, "growth_mb_per_1000": 2.0, "start_s": 1.5, "idle_cpu_pct": 0.1}
WARMUP = 100  # sales before the growth baseline (first-use imports, first draws)
SAMPLES = 20  # RSS readings after the warm-up, evenly spaced, for the growth slope
SETTLE = 3.0  # seconds after READY / a connect before memory is read
SN = "FOOT0001"

BARE_CODE = "import asyncio, sys; print('up', flush=True); asyncio.run(asyncio.sleep(3600))"
IMPORT_CODE = "import agent.cli, agent.service, time; print('up', flush=True); time.sleep(3600)"
BARE_TEXTUAL = "from textual.app import App; App().run()"


def median_ms(values: list[float]) -> float:
    return round(statistics.median(values) * 1000, 1)


def growth_per_1000(samples: list[tuple[int, float, float]], column: int) -> float:
    """MB per 1,000 sales: the least-squares slope of ``column`` (1 agent, 2 UI)
    of ``samples`` (sales after the warm-up, agent RSS, UI RSS)."""
    sales = [float(row[0]) for row in samples]
    rss = [row[column] for row in samples]
    return statistics.linear_regression(sales, rss).slope * 1000


def baselines(runs: int) -> dict[str, Any]:
    """Interpreter and import start-up times (median of ``runs``) and their RSS."""
    bare_times, import_times = [], []
    bare_rss = import_rss = 0.0
    for _ in range(runs):
        elapsed, proc = time_to_line([PYTHON, "-c", BARE_CODE])
        bare_times.append(elapsed)
        bare_rss = rss_mb(proc.pid)
        stop(proc)
        elapsed, proc = time_to_line([PYTHON, "-c", IMPORT_CODE])
        import_times.append(elapsed)
        import_rss = rss_mb(proc.pid)
        stop(proc)
    return {
        "interpreter_start_ms": median_ms(bare_times),
        "interpreter_rss_mb": bare_rss,
        "agent_import_start_ms": median_ms(import_times),
        "agent_import_rss_mb": import_rss,
    }


def import_time_by_package() -> list[tuple[str, float]]:
    """Self import time of the daemon's modules, summed per top-level package (ms)."""
    done = subprocess.run(
        [PYTHON, "-X", "importtime", "-c", "import agent.cli, agent.service"],
        cwd=Path(__file__).resolve().parents[1],
        capture_output=True,
        text=True,
        check=True,
    )
    per: dict[str, float] = defaultdict(float)
    for line in done.stderr.splitlines():
        if not line.startswith("import time:") or "self [us]" in line:
            continue
        self_us, _cumulative, name = line[len("import time:") :].split("|")
        per[name.strip().split(".")[0]] += int(self_us) / 1000
    return sorted(per.items(), key=lambda kv: -kv[1])


def cold_starts(
    term: Terminal, runs: int
) -> tuple[list[float], subprocess.Popen[bytes], ReadySocket]:
    """Spawn-to-READY=1 of ``runs`` starts; the agent of the last start keeps
    running, its notify socket read as systemd would (close it at the end)."""
    times: list[float] = []
    notify = ReadySocket(term.workdir / "notify.sock")
    try:
        for i in range(runs):
            start = time.monotonic()
            proc = spawn_agent(term.config, term.log_path, notify)
            times.append(notify.wait_ready(proc) - start)
            if i < runs - 1 and stop(proc) != 0:
                raise RuntimeError(f"agent exited {proc.returncode} on SIGTERM")
    except BaseException:
        notify.close()
        raise
    notify.drain()
    return times, proc, notify


def ui_on_pty(argv: list[str]) -> OnPty:
    env = dict(os.environ, TERM="linux")
    return OnPty(argv, cols=80, rows=25, env=env)


def compile_like_install() -> None:
    """The ``.opt-2.pyc`` files ``systemd/install.sh`` compiles for the unit's
    ``PYTHONOPTIMIZE=2``, here for the tree and the venv: without them the
    agent (and the import baseline) compiles every module it imports at each
    start, and the RSS keeps the compiler's memory (+0.7 MB measured with a
    few stale modules)."""
    site = subprocess.run(
        [PYTHON, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    dirs = [str(REPO / pkg) for pkg in ("agent", "cloud", "drivers", "ui")]
    subprocess.run([PYTHON, "-OO", "-m", "compileall", "-qq", "-j0", *dirs, site], check=False)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a run under a minute")
    parser.add_argument("--sales", type=int, default=None, help="sales after the warm-up")
    parser.add_argument(
        "--warmup", type=int, default=None, help=f"sales before growth is measured ({WARMUP})"
    )
    parser.add_argument("--idle-seconds", type=float, default=None, help="idle CPU window")
    parser.add_argument("--starts", type=int, default=None, help="cold starts timed")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = parser.parse_args()
    sales = args.sales or (60 if args.quick else 1000)
    warmup = args.warmup if args.warmup is not None else (30 if args.quick else WARMUP)
    idle_window = args.idle_seconds or (10.0 if args.quick else 60.0)
    starts = args.starts or (3 if args.quick else 7)
    load_before = load_average()

    compile_like_install()
    base = baselines(starts)
    import_split = import_time_by_package()

    with Stack(["--time-scale", "0.01"], keep=args.keep) as stack:
        term = stack.terminal(SN, result_seconds=0.1)
        start_times, agent, notify = cold_starts(term, starts)
        term.agent = agent
        pid = agent.pid
        time.sleep(SETTLE)
        agent_idle = memory(pid)

        # The checkout screen, and a bare Textual app on the same kind of pty.
        bare_ui = ui_on_pty([PYTHON, "-c", BARE_TEXTUAL])
        time.sleep(SETTLE)
        bare_ui_mem = memory(bare_ui.proc.pid)
        bare_ui.close()
        log_before = term.log_text().count(" connected (")
        ui = ui_on_pty([str(BIN / "sadad-ui"), "--socket", str(term.socket)])
        wait_log(term.log_path, " connected (", log_before)
        time.sleep(SETTLE)
        ui_idle = memory(ui.proc.pid)
        agent_with_ui = memory(pid)

        # Idle CPU: the agent, the UI and a bare sleeping interpreter, same window.
        sleeper = bare_python(BARE_CODE)
        assert sleeper.stdout is not None
        sleeper.stdout.readline()
        cpu0 = {"agent": cpu_seconds(pid), "ui": cpu_seconds(ui.proc.pid)}
        cpu0["bare"] = cpu_seconds(sleeper.pid)
        t0 = time.monotonic()
        time.sleep(idle_window)
        window = time.monotonic() - t0
        cpu_pct = {
            "agent": (cpu_seconds(pid) - cpu0["agent"]) / window * 100,
            "ui": (cpu_seconds(ui.proc.pid) - cpu0["ui"]) / window * 100,
            "bare": (cpu_seconds(sleeper.pid) - cpu0["bare"]) / window * 100,
        }
        stop(sleeper)

        # Sales, the UI showing each one.
        term.watcher = ScreenWatcher(term.socket)
        for _ in range(warmup):
            sell(term)
        after_warmup = rss_mb(pid)
        ui_after_warmup = rss_mb(ui.proc.pid)
        samples = [(0, after_warmup, ui_after_warmup)]
        step = max(1, sales // SAMPLES)
        t0 = time.monotonic()
        for i in range(1, sales + 1):
            _, phase = sell(term)
            if phase != "APPROVED":
                raise RuntimeError(f"sale {i} ended {phase}")
            if i % step == 0 or i == sales:
                samples.append((i, rss_mb(pid), rss_mb(ui.proc.pid)))
        selling = time.monotonic() - t0
        time.sleep(SETTLE)
        agent_after = memory(pid)
        ui_after = memory(ui.proc.pid)
        ui.close()
        stop(agent)
        notify.close()

    growth = growth_per_1000(samples, 1)
    ui_growth = growth_per_1000(samples, 2)
    growth_two_point = (agent_after["rss_mb"] - after_warmup) * 1000 / sales
    ui_growth_two_point = (ui_after["rss_mb"] - ui_after_warmup) * 1000 / sales
    start_s = statistics.median(start_times)
    figures: dict[str, Any] = {
        "benchmark": "footprint",
        "quick": args.quick,
        "machine": machine(),
        "load_average": {"before": load_before, "after": load_average()},
        "readers": list(term.readers),
        "start_s": round(start_s, 3),
        "start_runs_s": [round(t, 3) for t in start_times],
        **base,
        "rss_idle_mb": agent_idle["rss_mb"],
        "agent_idle": agent_idle,
        "agent_idle_with_ui": agent_with_ui,
        "sales": sales,
        "warmup_sales": warmup,
        "rss_after_warmup_mb": after_warmup,
        "rss_after_sales_mb": agent_after["rss_mb"],
        "agent_after_sales": agent_after,
        "rss_samples_sales_agent_ui": samples,
        "growth_mb_per_1000": round(growth, 2),
        "growth_two_point_mb_per_1000": round(growth_two_point, 2),
        "growth_scaled_from_sales": sales,
        "growth_samples": len(samples),
        "sales_per_s": round(sales / selling, 2),
        "idle_window_s": round(window, 1),
        "idle_cpu_pct": round(cpu_pct["agent"], 4),
        "ui_idle_cpu_pct": round(cpu_pct["ui"], 4),
        "bare_idle_cpu_pct": round(cpu_pct["bare"], 4),
        "ui_rss_idle_mb": ui_idle["rss_mb"],
        "ui_idle": ui_idle,
        "ui_rss_after_sales_mb": ui_after["rss_mb"],
        "ui_growth_mb_per_1000": round(ui_growth, 2),
        "ui_growth_two_point_mb_per_1000": round(ui_growth_two_point, 2),
        "bare_textual_rss_mb": bare_ui_mem["rss_mb"],
        "import_ms_by_package": {k: round(v, 1) for k, v in import_split[:10]},
        "targets": TARGETS,
    }
    figures["met"] = {
        "rss_idle_mb": figures["rss_idle_mb"] <= TARGETS["rss_idle_mb"],
        # Too few sales to judge: most of the growth comes in the first ~100.
        "growth_mb_per_1000": None
        if sales < 500
        else figures["growth_mb_per_1000"] <= TARGETS["growth_mb_per_1000"],
        "start_s": figures["start_s"] <= TARGETS["start_s"],
        "idle_cpu_pct": figures["idle_cpu_pct"] < TARGETS["idle_cpu_pct"],
    }
    report(figures)
    print(json.dumps(figures, sort_keys=True))
    return 0


def report(f: dict[str, Any]) -> None:
    def ok(key: str) -> str:
        met = f["met"][key]
        return "?" if met is None else "yes" if met else "NO"

    scaled = f" (slope over {f['sales']} sales)" + ("" if f["sales"] >= 1000 else ", scaled up")
    print(f"Footprint of sadad-agent ({', '.join(f['readers'])} readers), {f['machine']}")
    print(f"load average before {f['load_average']['before']}, after {f['load_average']['after']}")
    print()
    rows = [
        (
            "cold start to READY=1",
            f"{f['start_s'] * 1000:.0f} ms",
            f"{f['interpreter_start_ms']:.0f} ms interpreter, "
            f"{f['agent_import_start_ms']:.0f} ms with the agent's imports",
            "<= 1500 ms",
            ok("start_s"),
        ),
        (
            "agent RSS idle",
            f"{f['rss_idle_mb']:.1f} MB",
            f"{f['interpreter_rss_mb']:.1f} MB interpreter, "
            f"{f['agent_import_rss_mb']:.1f} MB with the agent's imports",
            "<= 40 MB",
            ok("rss_idle_mb"),
        ),
        (
            f"agent RSS after {f['sales']} sales",
            f"{f['rss_after_sales_mb']:.1f} MB",
            f"{f['rss_after_warmup_mb']:.1f} MB after {f['warmup_sales']} warm-up sales",
            "",
            "",
        ),
        (
            "growth per 1,000 sales" + scaled,
            f"{f['growth_mb_per_1000']:.2f} MB",
            f"{f['growth_two_point_mb_per_1000']:.2f} MB from two readings",
            "<= 2 MB",
            ok("growth_mb_per_1000"),
        ),
        (
            f"agent CPU idle ({f['idle_window_s']:.0f} s)",
            f"{f['idle_cpu_pct']:.3f} %",
            f"{f['bare_idle_cpu_pct']:.3f} % sleeping interpreter",
            "< 0.1 %",
            ok("idle_cpu_pct"),
        ),
        (
            "sadad-ui RSS, connected, idle",
            f"{f['ui_rss_idle_mb']:.1f} MB",
            f"{f['bare_textual_rss_mb']:.1f} MB bare Textual app",
            "",
            "",
        ),
        (
            f"sadad-ui RSS after {f['sales']} sales",
            f"{f['ui_rss_after_sales_mb']:.1f} MB",
            f"idle CPU {f['ui_idle_cpu_pct']:.3f} %",
            "",
            "",
        ),
        (
            "sadad-ui growth per 1,000 sales" + scaled,
            f"{f['ui_growth_mb_per_1000']:.2f} MB",
            f"{f['ui_growth_two_point_mb_per_1000']:.2f} MB from two readings",
            "",
            "",
        ),
    ]
    print(table(("figure", "measured", "baseline (same run)", "target", "met"), rows))
    print()
    mem = [
        (name, m["rss_mb"], m["pss_mb"], m["private_mb"])
        for name, m in (
            ("agent idle", f["agent_idle"]),
            ("agent idle, UI connected", f["agent_idle_with_ui"]),
            (f"agent after {f['sales']} sales", f["agent_after_sales"]),
            ("sadad-ui idle", f["ui_idle"]),
        )
    ]
    print(table(("process (MB)", "RSS", "PSS", "private"), mem))
    print()
    print(f"starts (s): {f['start_runs_s']}; sales/s: {f['sales_per_s']}")
    split = ", ".join(f"{k} {v:.0f}" for k, v in f["import_ms_by_package"].items())
    print(f"import self-time by package (ms, one run): {split}")


if __name__ == "__main__":
    sys.exit(main())
