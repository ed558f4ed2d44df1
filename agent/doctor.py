"""``sadad-agent doctor``: one clear verdict per thing a terminal needs.

Checks, in order: config, keys, clock (against the gateway's HTTP ``Date``;
pushes older than 15 minutes are refused, docs/protocol.md part C), broker
(``agent.mqtt.probe.probe_connection``: dns, tcp, tls, auth, subscribe), gateway (a
signed ``cashier.trans.detail`` round trip), readers (probe only), the
receipt printer (DLE EOT status; paper out or cover open is a WARN). Prints
``OK``/``FAIL``/``WARN`` lines and returns 1 if any check failed, 78 when the
config itself cannot be read.
"""

from __future__ import annotations

import email.utils
import time

from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey, RSAPublicKey

from agent.bridge_replies import StatusReply
from agent.config import AgentConfig, ConfigError, check_files, load_config
from agent.gateway import GatewayClient, GatewayIdentity
from agent.http11 import Http11Client, HttpError
from agent.mqtt.probe import probe_connection
from cloud.errors import KeyLoadError
from cloud.signing import load_private_key, load_public_key

MAX_SKEW_S = 15 * 60


def _line(verdict: str, what: str, detail: str) -> None:
    print(f"{verdict:<5} {what:<8} {detail}", flush=True)


async def _clock(cfg: AgentConfig) -> tuple[str, str]:
    http = Http11Client(cfg.gateway.url, timeout=5.0, connect_timeout=5.0)
    try:
        resp = await http.request("GET", "/")
    except HttpError as exc:
        return "WARN", f"cannot compare with the gateway ({type(exc).__name__})"
    finally:
        await http.aclose()
    date = resp.headers.get("date")
    if not date:
        return "WARN", "gateway sends no Date header to compare with"
    skew = time.time() - email.utils.parsedate_to_datetime(date).timestamp()
    if abs(skew) > MAX_SKEW_S:
        return "FAIL", f"clock is {skew:+.0f} s off the gateway: pushes will be refused"
    if abs(skew) > 60:
        return "WARN", f"clock is {skew:+.0f} s off the gateway (time sync?)"
    return "OK", f"within {abs(skew):.0f} s of the gateway"


async def _agent_status(cfg: AgentConfig) -> StatusReply | None:
    from agent.bridge_client import query_status
    from agent.bridge_protocol import BridgeError

    try:
        return await query_status(str(cfg.ui.socket), timeout=3.0)
    except (BridgeError, TimeoutError, OSError):
        return None


async def _printer(cfg: AgentConfig, running: StatusReply | None) -> tuple[str, str]:
    """The printer's verdict: from the running agent (it holds the port), else asked."""
    if cfg.printer.spec is None:
        return "OK", "none configured (no receipts)"
    if running is not None:
        state, how = running.printer, f"{running.printer_pending} receipts waiting (agent)"
    else:
        from drivers.escpos import EscPosPrinter, PrinterError, parse_printer_spec

        printer = EscPosPrinter(parse_printer_spec(cfg.printer.spec))
        try:
            await printer.open()
            state, how = (await printer.status(2.0)).state, cfg.printer.spec
        except PrinterError as exc:
            state, how = "offline", str(exc)
        finally:
            await printer.close()
    verdict = {"ready": "OK", "offline": "FAIL"}.get(state, "WARN")
    return verdict, f"{state.replace('_', ' ')}: {how}"


async def run_doctor(path: str) -> int:
    failed = False
    try:
        cfg = load_config(path)
    except ConfigError as exc:
        _line("FAIL", "config", str(exc))
        return ConfigError.exit_code
    _line("OK", "config", f"{cfg.source} (terminal {cfg.terminal.sn})")
    problems = check_files(cfg)
    private: RSAPrivateKey | None = None
    public: RSAPublicKey | None = None
    try:
        private = load_private_key(cfg.terminal.private_key_file.read_bytes())
        public = load_public_key(cfg.gateway.public_key_file.read_bytes())
    except (OSError, KeyLoadError) as exc:
        problems.append(str(exc))
    if problems:
        failed = True
        _line("FAIL", "keys", "; ".join(problems))
    else:
        _line("OK", "keys", "terminal private key and gateway public key load")

    verdict, detail = await _clock(cfg)
    failed |= verdict == "FAIL"
    _line(verdict, "clock", detail)

    ok, stage, reason = await probe_connection(cfg.mqtt, cfg.terminal.sn, 10.0)
    failed |= not ok
    _line("OK" if ok else "FAIL", "broker", f"{cfg.mqtt.url}: {stage}: {reason}")

    if private is not None and public is not None:
        gateway = GatewayClient(
            GatewayIdentity(cfg.gateway.url, cfg.terminal.app_id, cfg.terminal.sn, private, public),
            timeout=10.0,
        )
        try:
            gw_ok, gw_reason = await gateway.ping()
        finally:
            await gateway.aclose()
        failed |= not gw_ok
        _line("OK" if gw_ok else "FAIL", "gateway", f"{cfg.gateway.url}: {gw_reason}")
    else:
        failed = True
        _line("FAIL", "gateway", "not checked: keys do not load")

    status = await _agent_status(cfg)
    running = None if status is None else dict(status.readers)
    if running is not None:  # the agent holds the ports: ask it instead of probing
        for name, state in running.items():
            failed |= state != "ready"
            _line("OK" if state == "ready" else "FAIL", "reader", f"{name}: {state} (agent)")
    elif cfg.readers:
        from drivers.check import check_readers

        for row in await check_readers(dict(cfg.readers), 0):
            ok = row.verdict == "ok"
            failed |= not ok
            detail = row.model or getattr(row, "reason", "") or row.verdict
            _line("OK" if ok else "FAIL", "reader", f"{row.name} ({row.spec}): {detail}")
    else:
        _line("WARN", "readers", "none configured")
    verdict, detail = await _printer(cfg, status)
    failed |= verdict == "FAIL"
    _line(verdict, "printer", detail)
    return 1 if failed else 0
