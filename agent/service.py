"""``sadad-agent run``: the daemon that ties the services together.

Start order (DESIGN.md "Processes"; each step must succeed before the next):

1. config and keys (a bad config exits 78, EX_CONFIG);
2. the journal, pruned of old final rows;
3. readers (opened in the background; an unplugged reader is "offline",
   not a failure to start), the gateway client, the UI bridge socket;
4. recovery: every non-final transaction is resolved, expired or queued
   again (``Engine.recover``) *before* the MQTT link subscribes, so new
   pushes wait at the broker (persistent session) meanwhile;
5. the MQTT link; then ``READY=1``.

``WATCHDOG=1`` is sent at half of ``WatchdogSec`` only while the engine's
tasks are alive and the journal answers; ``STATUS=`` says what the terminal
is doing. SIGTERM drains in reverse order (``STOPPING=1``); SIGHUP reloads
the config and rebuilds the link, the readers and the gateway client once no
payment is in flight (journal and socket paths need a restart).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import msgspec

from agent import bridge_protocol as bp
from agent import setup_records
from agent.bridge import BridgeServer, intent_client
from agent.bridge_replies import (
    ActionReply,
    ConnectionCheckReply,
    CurrentOrder,
    ReaderCheckReply,
    ReloadReply,
    ReplyData,
    SetupModeReply,
    StatusReply,
)
from agent.coalescing import Coalescer
from agent.config import AgentConfig, ConfigError, load_config, trust_problems
from agent.engine import Engine
from agent.engine_settings import EngineSettings
from agent.gateway import GatewayClient, GatewayIdentity
from agent.history import history
from agent.journal import Journal
from agent.mqtt.link import ConnectionState, MqttLink
from agent.mqtt.probe import probe_connection
from agent.notify import Notifier
from agent.printing import Printing
from agent.setup_access import LOCKED as SETUP_LOCKED
from agent.setup_access import SetupAccess
from cloud import messages as m
from cloud.envelope import timestamp
from cloud.errors import KeyLoadError
from cloud.signing import load_private_key, load_public_key
from drivers.base import ArmContext, CardRead, ReaderError, ReaderState
from drivers.registry import ManagedReader, create_reader

log = logging.getLogger(__name__)

READER_TEST_SECONDS = 20.0


@dataclass
class _Health:
    mqtt: str = "connecting"
    mqtt_reason: str = "starting"
    readers: dict[str, ReaderState] = field(default_factory=dict)
    setup: bool = False
    setup_client: str | None = None  # the UI that entered setup (its bridge name)
    printer: bp.PrinterState = "none"


class AgentService:
    """One running agent. ``run()`` returns the process exit code."""

    def __init__(self, cfg: AgentConfig, notifier: Notifier | None = None) -> None:
        self.cfg = cfg
        self.notifier = notifier or Notifier()
        self.health = _Health()
        self._stop = asyncio.Event()
        self._reload = asyncio.Event()
        self._last_status = ""
        # A STATUS= line waits STATUS_HOLD, like the retained MQTT status
        self._status_note = Coalescer(self._notify_status)
        self._stopping = False
        self.journal: Journal | None = None
        self.engine: Engine | None = None
        self.link: MqttLink | None = None
        self.bridge: BridgeServer | None = None
        self.readers: list[ManagedReader] = []
        self.gateway: GatewayClient | None = None
        self.setup: SetupAccess | None = None
        self.printing: Printing | None = None

    # ------------------------------------------------------------ build

    def _keys(self, cfg: AgentConfig) -> tuple[Any, Any]:
        problems = trust_problems(cfg)
        if problems:  # a key someone else could swap is no key to trust
            raise ConfigError(problems)
        try:
            private = load_private_key(cfg.terminal.private_key_file.read_bytes())
            public = load_public_key(cfg.gateway.public_key_file.read_bytes())
        except (OSError, KeyLoadError) as exc:
            raise ConfigError(f"{cfg.source or 'agent.toml'}: keys: {exc}") from exc
        return private, public

    def _build_readers(self, cfg: AgentConfig) -> list[ManagedReader]:
        readers = []
        for name, spec in cfg.readers.items():
            readers.append(ManagedReader(create_reader(name, spec), self._reader_state))
            self.health.readers[name] = ReaderState.OFFLINE
        return readers

    def _build_gateway(self, cfg: AgentConfig, private: Any, public: Any) -> GatewayClient:
        ident = GatewayIdentity(
            url=cfg.gateway.url,
            app_id=cfg.terminal.app_id,
            terminal_sn=cfg.terminal.sn,
            private_key=private,
            gateway_public_key=public,
        )
        return GatewayClient(ident, timeout=cfg.gateway.timeout)

    def _build_link(self, cfg: AgentConfig, engine: Engine) -> MqttLink:
        return MqttLink(
            cfg.mqtt,
            cfg.terminal.sn,
            on_push=engine.handle_push,
            status=self._terminal_status,
            on_state=self._link_state,
        )

    def _build_bridge(self) -> BridgeServer:
        return BridgeServer(
            str(self.cfg.ui.socket),
            hello=self._hello,
            on_intent=self._intent,
            on_disconnect=self._client_gone,
            group=self.cfg.ui.socket_group,
        )

    # ------------------------------------------------------------ run

    async def run(self) -> int:
        cfg = self.cfg
        private, public = self._keys(cfg)
        if cfg.gateway.plain_http_off_host:  # allowed by config check only for labs
            log.warning(
                "gateway.url %s is plain http:// off this machine (allow_plain_http = true): "
                "anyone on the network can read and hold back the gateway's answers; "
                "labs only, use https:// in a store",
                cfg.gateway.url,
            )
        self.journal = Journal(cfg.journal.path)
        self.setup = SetupAccess(self.journal)
        self.printing = Printing(cfg, self.journal, self._printer_state)
        pruned = self.journal.prune(cfg.journal.keep_days)
        if pruned:
            log.info("journal: pruned %d old transactions", pruned)
        self.gateway = self._build_gateway(cfg, private, public)
        self.readers = self._build_readers(cfg)
        for reader in self.readers:
            await reader.start()
        self.engine = Engine(
            EngineSettings.of(cfg, private, public, cfg.ui.result_seconds),
            self.journal,
            self.gateway,
            self.readers,
            on_screen=self._on_screen,
            on_status=self._status_changed,
        )
        self.bridge = self._build_bridge()
        await self.bridge.start()
        self.printing.start()  # receipts queued before a crash print now
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, self._stop.set)
        loop.add_signal_handler(signal.SIGINT, self._stop.set)
        loop.add_signal_handler(signal.SIGHUP, self._reload.set)
        self._notify_status("resolving unfinished payments")
        if not await self._recover_unless_stopped():
            self._say_stopping()
            log.info("agent stopping")
            await self._shutdown()
            self.notifier.close()
            return 0
        self.engine.start()
        self.link = self._build_link(cfg, self.engine)
        self.engine.outbox.set_publisher(self.link.publish_event)
        await self.link.start()
        self.notifier.ready(self._status_line())
        log.info("agent %s ready (%s)", cfg.terminal.sn, self._status_line())
        watchdog = asyncio.create_task(self._watchdog(), name="watchdog")
        reloader = asyncio.create_task(self._reloader(), name="reloader")
        try:
            await self._stop.wait()
        finally:
            self._say_stopping()
            log.info("agent stopping")
            watchdog.cancel()
            reloader.cancel()
            await self._shutdown()
            self.notifier.close()
        return 0

    async def _recover_unless_stopped(self) -> bool:
        """``Engine.recover``, given up if SIGTERM/SIGINT comes first (it can take
        long: a reversal is retried until the gateway acknowledges it). The
        journal keeps the unresolved attempt and the next start resumes it.
        Returns False when stopped."""
        assert self.engine is not None
        recovering = asyncio.create_task(self.engine.recover(), name="recover")
        stopped = asyncio.create_task(self._stop.wait(), name="stop-requested")
        try:
            await asyncio.wait({recovering, stopped}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopped.cancel()
        if recovering.done():
            recovering.result()  # a failure stops the agent, as before
            return True
        log.warning("stopped while resolving unfinished payments: they resume at the next start")
        recovering.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await recovering
        return False

    async def _shutdown(self) -> None:
        if self.printing is not None:
            await self.printing.stop()
        if self.link is not None:
            await self.link.stop()
        if self.engine is not None:
            await self.engine.stop()
        if self.bridge is not None:
            await self.bridge.close()
        for reader in self.readers:
            await reader.close()
        if self.gateway is not None:
            await self.gateway.aclose()
        if self.journal is not None:
            self.journal.close()

    def healthy(self) -> bool:
        engine = self.engine
        if engine is None or not engine.tasks_alive() or engine.stalled():
            return False
        try:
            assert self.journal is not None
            self.journal.schema_version  # noqa: B018 - the journal answers
        except Exception:
            return False
        return True

    async def _watchdog(self) -> None:
        interval = self.notifier.ping_interval
        while True:
            if interval and self.healthy():
                self.notifier.watchdog()
            elif interval:
                log.error("unhealthy: watchdog not pinged")
            await asyncio.sleep(interval or 5.0)

    # ------------------------------------------------------------ reload

    async def _reloader(self) -> None:
        while True:
            await self._reload.wait()
            self._reload.clear()
            await self.reload()

    async def reload(self) -> tuple[bool, str]:
        """Re-read the config; rebuild link, readers and gateway when idle."""
        self.notifier.reloading()
        try:
            assert self.cfg.source is not None
            new = load_config(self.cfg.source)
            private, public = self._keys(new)
        except (ConfigError, AssertionError) as exc:
            log.error("reload refused, keeping the running config: %s", exc)
            self.notifier.ready(self._status_line())
            return False, str(exc)
        engine = self.engine
        assert engine is not None
        await engine.wait_idle()  # never swap parts under a payment
        if (new.journal.path, new.ui, new.printer) != (
            self.cfg.journal.path,
            self.cfg.ui,
            self.cfg.printer,
        ):
            log.warning("journal path, [ui] or [printer] changed: takes effect after a restart")
        if self.link is not None:
            await self.link.stop()
        for reader in self.readers:
            await reader.close()
        if self.gateway is not None:
            await self.gateway.aclose()
        self.cfg = new
        self.health.readers.clear()
        self.gateway = self._build_gateway(new, private, public)
        self.readers = self._build_readers(new)
        for reader in self.readers:
            await reader.start()
        engine.arming.readers = list(self.readers)  # between orders: it is idle
        # result_seconds is built into the state table: a restart changes it.
        settings = EngineSettings.of(new, private, public, engine.settings.result_seconds)
        engine.reconfigure(settings, self.gateway)
        self.link = self._build_link(new, engine)
        engine.outbox.set_publisher(self.link.publish_event)
        await self.link.start()
        self.notifier.ready(self._status_line())
        log.info("config reloaded")
        return True, "reloaded"

    # ------------------------------------------------------------ state out

    def _status_line(self) -> str:
        engine = self.engine
        screen = engine.screen.view.screen.value if engine else "STARTING"
        ready = sum(1 for s in self.health.readers.values() if s is ReaderState.READY)
        return (
            f"{self.health.mqtt}; {screen}; readers {ready}/{len(self.health.readers)} ready; "
            f"queue {len(engine.queue) if engine else 0}"
        )

    def _notify_status(self, text: str | None = None) -> None:
        line = text or self._status_line()
        if line != self._last_status:
            self._last_status = line
            self.notifier.status(line)

    def _screen_name(self) -> m.Screen:
        if self.health.setup and (self.engine is None or self.engine.current is None):
            return m.Screen.SETUP
        return self.engine.screen.view.screen if self.engine else m.Screen.IDLE

    def _terminal_status(self) -> m.TerminalStatus:
        return m.TerminalStatus(
            status="online",
            timestamp=timestamp(),
            keepalive=self.cfg.mqtt.keepalive,
            screen=self._screen_name(),
            readers={k: v.value for k, v in self.health.readers.items()},
            queue=len(self.engine.queue) if self.engine else 0,
            printer=None if self.health.printer == "none" else self.health.printer,
        )

    def _status_changed(self) -> None:
        # Screen, readers, queue or setup may have changed: the link publishes
        # the retained status only when it differs, coalescing bursts; so is
        # systemd's STATUS= line, after the same hold: a datagram to PID 1 on
        # the way to every screen cost the screen ~0.4 ms at p50.
        if not self._stopping:
            self._status_note.poke()
        if self.link is not None:
            self.link.status_changed()

    def _say_stopping(self) -> None:
        """STOPPING=1, and no STATUS= line after it (one may be on its way)."""
        self._stopping = True
        self._status_note.cancel()
        self.notifier.stopping("stopping")

    def _on_screen(self, view: bp.ScreenEvent, waiting: int) -> None:
        if self.bridge is None:
            return
        self.bridge.publish(view)
        self.bridge.publish(bp.QueueEvent(waiting=waiting))
        if view.screen is m.Screen.RESULT and self.printing is not None:
            self.printing.wake()  # a final result may have queued its receipt
        connection = self._connection_event()
        last = self.bridge.snapshot().connection
        if last is None or (last.mqtt, last.gateway) != (connection.mqtt, connection.gateway):
            self.bridge.publish(connection)  # gateway reachability learned from a payment

    def _printer_state(self, state: bp.PrinterState, pending: int) -> None:
        if state != self.health.printer:
            log.info("printer: %s (%d receipts waiting)", state, pending)
        self.health.printer = state
        if self.bridge is not None:
            self.bridge.publish(bp.PrinterEvent(state=state, pending=pending))
        self._status_changed()

    def _reader_state(self, name: str, state: ReaderState, reason: str) -> None:
        if self.health.readers.get(name) is not state:
            log.info("reader %s: %s (%s)", name, state.value, reason)
        self.health.readers[name] = state
        if self.bridge is not None:
            self.bridge.publish(
                bp.ReadersEvent(readers={k: v.value for k, v in self.health.readers.items()})
            )
        self._status_changed()

    def _link_state(self, state: ConnectionState, reason: str) -> None:
        self.health.mqtt = {
            ConnectionState.CONNECTED: "connected",
            ConnectionState.CONNECTING: "connecting",
        }.get(state, "disconnected")
        self.health.mqtt_reason = reason
        log.info("mqtt: %s (%s)", state.value, reason)
        if state is ConnectionState.CONNECTED and self.engine is not None:
            self.engine.outbox.wake()
        if self.bridge is not None:
            self.bridge.publish(self._connection_event())
        self._notify_status()

    def _connection_event(self) -> bp.ConnectionEvent:
        ok = self.engine.settlement.gateway_ok if self.engine else None
        return bp.ConnectionEvent(
            mqtt=self.health.mqtt,  # type: ignore[arg-type]
            mqtt_reason=self.health.mqtt_reason,
            gateway="unknown" if ok is None else ("ok" if ok else "unreachable"),
        )

    def _hello(self) -> bp.HelloEvent:
        assert self.bridge is not None
        snap = self.bridge.snapshot()
        if snap.connection is None:
            snap = bp.Snapshot(
                screen=snap.screen or bp.ScreenEvent(screen=m.Screen.IDLE),
                connection=self._connection_event(),
                readers=bp.ReadersEvent(
                    readers={k: v.value for k, v in self.health.readers.items()}
                ),
                queue=snap.queue,
                printer=snap.printer,
            )
        return bp.HelloEvent(
            terminal=bp.TerminalInfo(
                sn=self.cfg.terminal.sn, store_name=self.cfg.terminal.store_name
            ),
            snapshot=snap,
        )

    # ------------------------------------------------------------ intents in

    async def _intent(self, intent: bp.Intent) -> ReplyData:
        engine = self.engine
        assert engine is not None
        if isinstance(intent, bp.ConfirmIntent | bp.CancelIntent):
            name = "confirm" if isinstance(intent, bp.ConfirmIntent) else "cancel"
            if intent.trans_no and engine.current and engine.current.tx.trans_no != intent.trans_no:
                return ActionReply(accepted=False, reason="that order is no longer on screen")
            return await engine.handle_intent(name)
        if isinstance(intent, bp.StatusIntent):
            return self.status()
        if isinstance(intent, bp.HistoryIntent):
            assert self.journal is not None
            return history(self.journal, intent.limit, printer=self.cfg.printer.spec is not None)
        if isinstance(intent, bp.ReprintIntent):
            assert self.printing is not None
            return self.printing.reprint(intent.trans_no)
        setup = self.setup
        assert setup is not None  # made with the journal, before the bridge
        if isinstance(intent, bp.EnterSetupIntent | bp.LeaveSetupIntent):
            self.health.setup = isinstance(intent, bp.EnterSetupIntent)
            self.health.setup_client = intent_client() if self.health.setup else None
            if not self.health.setup:
                setup.leave(intent_client())
            self._status_changed()
            return SetupModeReply(setup=self.health.setup)
        if isinstance(intent, bp.UnlockSetupIntent):
            return await setup.unlock(self.cfg, intent_client() or "", intent.pin)
        # Everything below is setup: only for a connection the PIN unlocked.
        if not setup.unlocked(intent_client()):
            return SETUP_LOCKED
        assert self.journal is not None
        setup_records.log_setup(self.journal, type(intent).__name__.removesuffix("Intent"), "asked")
        if isinstance(intent, bp.ReadSetupIntent):
            return setup.read(self.cfg)
        if isinstance(intent, bp.SaveSetupIntent):
            saved = await setup.save(self.cfg, intent)
            if not saved.ok:
                return saved
            ok, text = await self.reload()
            return msgspec.structs.replace(saved, reloaded=ok, reason=text)
        if isinstance(intent, bp.ReloadIntent):
            ok, text = await self.reload()
            return ReloadReply(ok=ok, reason=text)
        if isinstance(intent, bp.CheckConnectionIntent):
            ok, stage, reason = await probe_connection(self.cfg.mqtt, self.cfg.terminal.sn, 10.0)
            gw_ok, gw_reason = (False, "not configured")
            if self.gateway is not None:
                gw_ok, gw_reason = await self.gateway.ping()
            if ok and not gw_ok:
                ok, stage, reason = False, "gateway", gw_reason
            return ConnectionCheckReply(ok=ok, stage=stage, reason=reason, gateway=gw_reason)
        if isinstance(intent, bp.CheckReaderIntent):
            return await self._check_reader(intent.reader)
        raise ValueError(f"unsupported intent {type(intent).__name__}")

    def _client_gone(self, client: str) -> None:
        if self.setup is not None:
            self.setup.leave(client)
        # A UI killed in setup never sends leave_setup: its setup ends with it,
        # or the terminal would report SETUP to the TMS until the next setup.
        if self.health.setup and client == self.health.setup_client:
            log.info("the UI in setup went away: setup ended")
            self.health.setup = False
            self.health.setup_client = None
            self._status_changed()

    async def _check_reader(self, name: str | None) -> ReaderCheckReply:
        engine = self.engine
        assert engine is not None
        if engine.current is not None:
            return ReaderCheckReply(reason="a payment is in progress")
        readers = [r for r in self.readers if name in (None, r.name)]
        if not readers:
            return ReaderCheckReply(reason=f"no reader named {name}")
        ctx = ArmContext(amount=Decimal("0.01"), currency_numeric=634, currency_exponent=2)
        reader = readers[0]
        try:
            await reader.arm(ctx)
            presented = await asyncio.wait_for(reader.next_presentation(), READER_TEST_SECONDS)
        except TimeoutError:
            return ReaderCheckReply(reader=reader.name, reason="nothing presented")
        except ReaderError as exc:
            return ReaderCheckReply(reader=reader.name, reason=str(exc))
        finally:
            with contextlib.suppress(ReaderError):
                await reader.disarm()
        if isinstance(presented, CardRead):
            shown = f"{presented.brand} {presented.masked_pan}"
        else:
            shown = f"{presented.wallet.value} {presented.masked}"
        return ReaderCheckReply(ok=True, reader=reader.name, presented=shown)

    def status(self) -> StatusReply:
        engine = self.engine
        current = None
        if engine is not None and engine.current is not None:
            tx = engine.current.tx
            current = CurrentOrder(
                trans_no=tx.trans_no,
                merchant_order_no=tx.merchant_order_no,
                amount=f"{tx.trans_amount} {tx.currency}",
                state=engine.state.value,
            )
        return StatusReply(
            sn=self.cfg.terminal.sn,
            mqtt=self.health.mqtt,
            mqtt_reason=self.health.mqtt_reason,
            gateway=self._connection_event().gateway,
            screen=self._screen_name().value,
            readers={k: v.value for k, v in self.health.readers.items()},
            current=current,
            queue=tuple(engine.queue) if engine else (),
            printer=self.health.printer,
            printer_pending=self.printing.worker.pending if self.printing else 0,
        )
