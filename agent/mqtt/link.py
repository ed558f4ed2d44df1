"""The terminal's MQTT link with SadadTMS: a session kept up (docs/protocol.md part C).

Contract:

* One ``MqttLink`` per agent. Client id = the terminal SN; a persistent
  session with a Session Expiry Interval of ``cfg.session_expiry`` (at least
  24 h), so QoS 1 pushes queued while the terminal is offline are delivered
  when it returns. MQTT 5, or 3.1.1 with ``cfg.protocol == "3.1.1"``, or
  from the moment a broker refuses 5 (``agent.mqtt.session``).
* On every (re)connect: subscribe ``sadad/v1/terminals/{sn}/orders`` at QoS 1
  (also when the broker kept the session: cheap, and it repairs a session
  that lost its subscription), then publish the retained status ``online``
  (``agent.mqtt.status``); only then is the state CONNECTED. ``stop()``
  publishes ``offline`` itself and then disconnects cleanly.
* Pushes: each message on the orders topic is handed to ``on_push(payload)``
  on the asyncio loop, one at a time in arrival order, and the PUBACK is
  sent (``manual_ack``) only after ``on_push`` returns - that is, after the
  engine has journaled the push (or journaled its rejection). PUBACKs thus
  leave in the order the PUBLISHes arrived, as MQTT requires [MQTT-4.6.0-2].
  If ``on_push`` raises, the message is not acknowledged, the rest of that
  connection's queue is dropped unprocessed, and the link disconnects and
  reconnects (with backoff) so that the broker delivers them again. A PUBACK
  is only ever sent on the connection the message arrived on (every
  connection is a fresh ``Session``).
* What Mosquitto 2.0.11 does with a QoS 1 message that is not acknowledged
  (verified with this paho, v5 and 3.1.1; ``tests/agent/test_mqtt_link.py``
  keeps the important parts checked): it does NOT resend it on the same
  connection, however long it waits (MQTT 5 forbids it [MQTT-4.4.0-1]); the
  message stays in flight for that session and counts against
  ``max_inflight_messages`` (20: later messages wait in the broker's queue);
  when the client reconnects with the session present (after a clean
  DISCONNECT, a dropped socket or a killed process alike) every
  unacknowledged message is sent again with its original packet id and
  DUP=1. Hence the disconnect after a failed ``on_push``: without it the push
  would sit unacknowledged until the next reconnect. The engine still
  deduplicates on ``message_id`` (the broker may redeliver what was
  journaled but not yet acknowledged when the link died).
* Reconnects: paho's own reconnect (fixed doubling, no jitter) is off; the
  link reconnects itself with ``agent.backoff.Backoff`` (base 1 s, cap 60 s,
  equal jitter). With ``mqtt.fallback_urls`` (the other nodes of a broker
  cluster, whose sessions are the cluster's) a node that fails is left for
  the next one at once; only a whole round of failures waits out the backoff.
  The backoff starts again from the base only after a connection stayed up
  ``STABLE_AFTER`` seconds, so a broker that accepts and then drops the
  terminal (session takeover, ACL kick) is not hammered.
* ``publish_event`` waits for the PUBACK and raises ``LinkDown`` when the
  link is not connected or the connection is lost first (the engine keeps an
  outbox and retries; the TMS deduplicates events on ``message_id``), and
  ``PublishRejected`` when the broker refuses it (MQTT 5 reason >= 0x80,
  e.g. not authorized). ``status_changed`` and ``publish_status`` never
  raise (``agent.mqtt.status`` says how they coalesce).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import random
from collections.abc import Awaitable, Callable

from paho.mqtt.enums import MQTTProtocolVersion

from agent.backoff import Backoff
from agent.config import MqttConfig
from agent.mqtt.errors import AttemptFailed, LinkDown
from agent.mqtt.session import CONNECT_TIMEOUT, Inbound, Session, first_protocol
from agent.mqtt.status import StatusPublisher
from agent.mqtt.url import BrokerUrl
from cloud.messages import TerminalStatus
from cloud.topics import events_topic, orders_topic, status_topic

__all__ = ["ConnectionState", "MqttLink", "PushHandler", "StateListener"]

log = logging.getLogger(__name__)

PushHandler = Callable[[bytes], Awaitable[None]]
StateListener = Callable[["ConnectionState", str], None]

STABLE_AFTER = 30.0  # s a connection must last before the backoff starts again from its base
STOP_GRACE = 5.0  # s stop() waits for a push in progress so that it can still be acknowledged


class ConnectionState(enum.StrEnum):
    """What the setup screen shows. ``MqttLink.reason`` says why, in words."""

    CONNECTING = "connecting"
    CONNECTED = "connected"
    DISCONNECTED = "disconnected"  # an established connection was lost (retrying), or stopped
    FAILED = "failed"  # an attempt failed before the session was up (retrying)


class MqttLink:
    """The terminal's MQTT session. See the module docstring.

    ``backoff`` is for tests (short delays); the daemon uses the default
    (1 s .. 60 s, jittered with ``rng``). Raises ConfigError for a bad URL.
    """

    def __init__(
        self,
        cfg: MqttConfig,
        sn: str,
        *,
        on_push: PushHandler,
        status: Callable[[], TerminalStatus],
        on_state: StateListener | None = None,
        rng: random.Random | None = None,
        backoff: Backoff | None = None,
    ) -> None:
        self._brokers = tuple(BrokerUrl.parse(url) for url in cfg.urls)  # ConfigError early
        self._cfg = cfg
        self._node = 0  # index in self._brokers of the node tried next
        self._sn = sn
        self._on_push = on_push
        self._status = StatusPublisher(sn, status, self._connected_session)
        self._on_state = on_state
        self._backoff = backoff or Backoff(1.0, 60.0, rng)
        self._protocol = first_protocol(cfg)
        self.state = ConnectionState.DISCONNECTED
        self.reason = "not started"
        self._session: Session | None = None
        self._task: asyncio.Task[None] | None = None
        self._pump_task: asyncio.Task[None] | None = None
        self._inbox: asyncio.Queue[Inbound] = asyncio.Queue()
        self._stop = asyncio.Event()
        self._first_attempt = asyncio.Event()
        self._connected = asyncio.Event()
        self._accepting = True
        self._handler_idle = asyncio.Event()
        self._handler_idle.set()
        self._ever_connected = False

    @property
    def topics(self) -> tuple[str, str, str]:
        """(orders, events, status) for this terminal."""
        return orders_topic(self._sn), events_topic(self._sn), status_topic(self._sn)

    @property
    def protocol(self) -> str:
        """The protocol in use now, "5" or "3.1.1" (after any fallback)."""
        return "5" if self._protocol == MQTTProtocolVersion.MQTTv5 else "3.1.1"

    # ------------------------------------------------------------ public API

    async def start(self) -> None:
        """Begin connecting; return once the first attempt has an outcome
        (CONNECTED or FAILED). Each step of an attempt (TCP+TLS, CONNACK,
        SUBACK, status PUBACK) is bounded by CONNECT_TIMEOUT; DNS by the
        resolver. Never raises for network problems: see ``state``/``reason``."""
        if self._task is not None:
            return
        self._task = asyncio.create_task(self._run(), name=f"mqtt-link-{self._sn}")
        self._pump_task = asyncio.create_task(self._pump(), name=f"mqtt-push-{self._sn}")
        first = asyncio.ensure_future(self._first_attempt.wait())
        await asyncio.wait({first, self._task}, return_when=asyncio.FIRST_COMPLETED)
        first.cancel()
        if self._task.done():
            self._task.result()  # a bug in the link: let it show

    async def wait_connected(self, timeout: float) -> bool:
        """True once CONNECTED (now or within ``timeout`` s)."""
        if self.state is ConnectionState.CONNECTED:
            return True
        try:
            async with asyncio.timeout(timeout):
                await self._connected.wait()
        except TimeoutError:
            return False
        return True

    async def publish_event(self, payload: bytes) -> None:
        """QoS 1 on the events topic; returns at the PUBACK.

        Raises LinkDown (not connected, or lost before the PUBACK: retry later)
        and PublishRejected (the broker refused it).
        """
        session = self._session
        if self.state is not ConnectionState.CONNECTED or session is None:
            raise LinkDown(f"MQTT link is {self.state}: {self.reason}")
        await session.publish(events_topic(self._sn), payload)

    def status_changed(self) -> None:
        """``status()`` may have changed: publish it (retained) if it differs from
        the last status published, coalesced as ``agent.mqtt.status`` says.
        Does nothing when not connected (the next connect publishes it).
        Never raises."""
        self._status.changed()

    async def publish_status(self) -> None:
        """Publish the status now if it changed, then wait until no status
        publish is in flight (its PUBACK came, or the connection was lost).
        Never raises."""
        await self._status.flush()

    async def stop(self) -> None:
        """Finish the push in progress (up to STOP_GRACE s, so it is acknowledged),
        publish ``offline`` (retained), disconnect cleanly, stop the tasks.
        Never raises; safe to call twice."""
        task = self._task
        if task is None or self._stop.is_set():
            if task is not None:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            return
        self._accepting = False
        try:
            async with asyncio.timeout(STOP_GRACE):
                await self._handler_idle.wait()
        except TimeoutError:
            log.warning("a push was still being handled at stop; it stays unacknowledged")
        self._stop.set()
        try:
            async with asyncio.timeout(2 * CONNECT_TIMEOUT + 5):
                await asyncio.shield(task)
        except TimeoutError:
            task.cancel()
        except Exception:
            log.exception("MQTT link task failed")
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
        if self._pump_task is not None:
            self._pump_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._pump_task
        self._set_state(ConnectionState.DISCONNECTED, "stopped")

    # ------------------------------------------------------------ internals

    def _set_state(self, state: ConnectionState, reason: str) -> None:
        changed = (state, reason) != (self.state, self.reason)
        self.state, self.reason = state, reason
        if state is ConnectionState.CONNECTED:
            self._connected.set()
        else:
            self._connected.clear()
        if not changed:
            return
        log.info("MQTT %s: %s", state, reason)
        if self._on_state is not None:
            try:
                self._on_state(state, reason)
            except Exception:
                log.exception("on_state listener failed")

    def _connected_session(self) -> Session | None:
        """The session to publish the status on: None unless CONNECTED."""
        return self._session if self.state is ConnectionState.CONNECTED else None

    def _enqueue(self, item: Inbound) -> None:
        if self._accepting:
            self._inbox.put_nowait(item)
        # else: stopping; not acknowledged, so the broker delivers it next time

    async def _pump(self) -> None:
        """Hand pushes to on_push one at a time; acknowledge after it returns."""
        while True:
            item = await self._inbox.get()
            if item.qos > 0 and (not item.session.is_open or not self._accepting):
                continue  # its connection is gone: the broker redelivers it
            self._handler_idle.clear()
            try:
                await self._on_push(item.payload)
            except Exception as exc:
                log.warning(
                    "push (mid %d) not acknowledged: handler failed with %s: %s; "
                    "reconnecting so the broker delivers it again",
                    item.mid,
                    type(exc).__name__,
                    exc,
                )
                if item.qos > 0:
                    item.session.disconnect(
                        f"push handler failed ({type(exc).__name__}); reconnecting for redelivery"
                    )
            else:
                if item.qos > 0:
                    item.session.ack(item.mid, item.qos)
            finally:
                self._handler_idle.set()

    async def _attempt(self, broker: BrokerUrl) -> Session:
        """One connection to ``broker`` up to CONNECTED. Raises AttemptFailed."""
        session = Session(
            client_id=self._sn,
            protocol=self._protocol,
            persistent=True,
            cfg=self._cfg,
            broker=broker,
            on_message=self._enqueue,
        )
        try:
            will = self._status.will(self._cfg.keepalive)
            session.prepare(will=will, topic_for_will=self._status.topic)
            await session.open()
            flags = await session.wait_connack(CONNECT_TIMEOUT)
            if not flags.session_present:
                log.log(
                    logging.WARNING if self._ever_connected else logging.INFO,
                    "the broker has no session for %s (first connect, or it expired): "
                    "pushes queued for an older session are gone",
                    self._sn,
                )
            await session.subscribe(orders_topic(self._sn), CONNECT_TIMEOUT)
            await self._status.announce(session)
        except BaseException:
            await session.aclose("attempt failed")
            raise
        return session

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        brokers = self._brokers
        fallbacks = 0
        tried = 0  # nodes tried since the last connection
        while not self._stop.is_set():
            broker = brokers[self._node]
            where = str(broker)
            self._set_state(ConnectionState.CONNECTING, f"connecting to {where} as {self._sn}")
            started = loop.time()
            try:
                session = await self._attempt(broker)
            except AttemptFailed as exc:
                if (
                    exc.retry_now
                    and self._protocol == MQTTProtocolVersion.MQTTv5
                    and fallbacks == 0
                ):
                    fallbacks += 1
                    log.info("the broker refused MQTT 5; using MQTT 3.1.1")
                    self._protocol = MQTTProtocolVersion.MQTTv311
                    continue
                was_connected, reason = False, f"{exc.stage}: {exc.reason}"
            except Exception as exc:  # a bug, not the network: keep the link alive
                log.exception("MQTT connection attempt failed unexpectedly")
                was_connected, reason = False, f"internal error: {exc!r}"
            else:
                self._session = session
                self._ever_connected = True
                tried = 0
                self._set_state(
                    ConnectionState.CONNECTED,
                    f"connected to {where} as {self._sn} (MQTT {self.protocol})",
                )
                self._first_attempt.set()
                self.status_changed()  # a change made while connecting
                stop_wait = asyncio.ensure_future(self._stop.wait())
                await asyncio.wait((stop_wait, session.closed), return_when=asyncio.FIRST_COMPLETED)
                stop_wait.cancel()
                if self._stop.is_set() and session.is_open:
                    await self._status.sign_off(session)
                    session.disconnect("stopped")
                reason = await session.wait_closed(2.0)
                self._session = None
                was_connected = True
            if self._stop.is_set():
                self._first_attempt.set()
                break
            # Failover: the node that failed us is tried again last. A whole
            # round of failures waits out the backoff; the next node of a
            # round is tried at once (a cluster keeps the session).
            self._node = (self._node + 1) % len(brokers)
            tried += 1
            if len(brokers) > 1 and tried % len(brokers):
                log.warning("MQTT %s: %s; trying the next broker node", where, reason)
                continue
            self._first_attempt.set()  # start() returns: connected, or a round failed
            if was_connected and loop.time() - started >= STABLE_AFTER:
                self._backoff.reset()
            delay = self._backoff.next()
            self._set_state(
                ConnectionState.DISCONNECTED if was_connected else ConnectionState.FAILED,
                f"{reason}; retrying in {delay:.1f} s",
            )
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._stop.wait()
