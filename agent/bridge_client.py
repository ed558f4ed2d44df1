"""The client's end of the agent bridge: a reconnecting JSON-lines client,
used by the checkout UI and by ``sadad-agent status``/``doctor``.

Contract (DESIGN.md "Processes": ``sadad-ui`` can crash or restart, and so
can the agent, without touching a payment in flight; the protocol is in
``agent.bridge_protocol``; this module and the protocol are all of ``agent``
the UI imports):

* ``BridgeClient.connect()`` starts a background task that connects to the
  agent's socket and, whenever the connection fails or drops, tries again
  with exponential backoff (with jitter) until ``close()``.
* ``events()`` yields what the agent sends: first a ``HelloEvent`` (the
  current state), then state events in ``seq`` order. After each reconnect
  it yields a fresh ``hello``. When the agent cannot be reached or the
  connection drops it yields one ``AgentLost`` (a client-side notice, never
  on the wire), so a screen can say "agent not running". A subscriber that
  falls more than ``max_buffered`` events behind has its backlog replaced by
  one ``hello`` built from the client's up-to-date state: it may skip
  intermediate events but never shows a stale screen. Replies are not
  yielded; they go to ``request``.
* ``request()`` sends an intent with a fresh ``id`` and waits for the
  ``reply`` with that ``id``.
* ``query_status()`` is the one-shot used by ``sadad-agent status``.

Errors (from ``agent.bridge_protocol``): ``AgentUnavailable`` (no socket,
refused, permission denied, not connected in time), ``ConnectionLost`` (the
connection dropped before the reply: the intent may or may not have been
acted on), ``RequestTimeout``, ``BridgeProtocolError`` (a bad intent name or
argument), ``BridgeError`` (anything else, e.g. ``status`` refused).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import random
import secrets
from collections.abc import AsyncGenerator
from typing import Any

import msgspec

from agent.bridge_protocol import (
    AgentUnavailable,
    BridgeError,
    BridgeProtocolError,
    ConnectionEvent,
    ConnectionLost,
    Event,
    HelloEvent,
    Intent,
    LineDecoder,
    QueueEvent,
    ReadersEvent,
    Reply,
    RequestTimeout,
    ScreenEvent,
    StatusIntent,
    encode_line,
    intent_from_args,
)
from agent.bridge_replies import D, StatusReply, reply_data
from agent.unix_path import unix_address

__all__ = [
    "AgentLost",
    "BridgeClient",
    "ClientEvent",
    "query_status",
]

log = logging.getLogger(__name__)

_READ_CHUNK = 64 * 1024
_CONNECT_TIMEOUT = 5.0


class AgentLost(msgspec.Struct, frozen=True, kw_only=True):
    """Client-side notice: the agent is not reachable now (never on the wire)."""

    reason: str


ClientEvent = Event | AgentLost


async def _open(path: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Connect to the agent's socket.

    Raises ``AgentUnavailable`` saying why it could not.
    """
    try:
        async with asyncio.timeout(_CONNECT_TIMEOUT):
            with unix_address(path) as address:  # a path of any length
                return await asyncio.open_unix_connection(address)
    # What went wrong first, the path last: the screen shows these in a
    # narrow box, where a long path must not push the reason off it.
    except FileNotFoundError as exc:
        raise AgentUnavailable(f"agent socket not found (is sadad-agent running?): {path}") from exc
    except PermissionError as exc:
        raise AgentUnavailable(
            f"permission denied (run as root or in the agent's group): {path}"
        ) from exc
    except ConnectionRefusedError as exc:
        raise AgentUnavailable(
            f"nothing is listening (sadad-agent is not running; stale socket): {path}"
        ) from exc
    except TimeoutError as exc:
        raise AgentUnavailable(
            f"connecting timed out (the agent is not answering): {path}"
        ) from exc
    except (OSError, ValueError) as exc:
        raise AgentUnavailable(f"cannot connect ({exc}): {path}") from exc


async def _close_writer(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()


class BridgeClient:
    """A reconnecting client of the agent's bridge. See the module docstring."""

    def __init__(
        self,
        path: str,
        *,
        backoff_initial: float = 0.2,
        backoff_max: float = 5.0,
        max_buffered: int = 1024,
    ) -> None:
        self.path = path
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.max_buffered = max_buffered
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self._writer: asyncio.StreamWriter | None = None
        self._write_lock = asyncio.Lock()
        self._ready = asyncio.Event()  # set while connected and greeted
        self._state: HelloEvent | None = None  # last hello, kept up to date
        self._down: AgentLost | None = None  # set once announced, until the next hello
        self._last_reason = "not connected yet"
        self._subscribers: list[asyncio.Queue[ClientEvent | None]] = []
        self._pending: dict[str, asyncio.Future[Reply]] = {}
        self._ids = itertools.count(1)
        self._id_prefix = secrets.token_hex(3)

    @property
    def connected(self) -> bool:
        """True while connected and greeted by the agent."""
        return self._ready.is_set()

    @property
    def state(self) -> HelloEvent | None:
        """The agent's state as last known: the hello with every later event applied."""
        return self._state

    # ------------------------------------------------------------ lifecycle

    async def connect(self, wait: float | None = None) -> None:
        """Start the connect-and-reconnect loop (idempotent).

        With ``wait``, also wait that many seconds for the first ``hello``;
        raises ``AgentUnavailable`` with the last failure if it does not come.
        Raises ``BridgeError`` after ``close()``.
        """
        if self._closed:
            raise BridgeError("client is closed")
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"bridge-client {self.path}")
        if wait is not None:
            try:
                async with asyncio.timeout(wait):
                    await self._ready.wait()
            except TimeoutError:
                raise AgentUnavailable(self._last_reason) from None

    async def close(self) -> None:
        """Stop reconnecting, drop the connection, end every ``events()``."""
        self._closed = True
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for q in self._subscribers:
            self._put(q, None)

    async def __aenter__(self) -> BridgeClient:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _run(self) -> None:
        delay = self.backoff_initial
        while True:
            try:
                reader, writer = await _open(self.path)
            except AgentUnavailable as exc:
                self._link_down(str(exc))
            else:
                greeted = await self._session(reader, writer)
                if greeted:
                    delay = self.backoff_initial
            pause = delay * random.uniform(0.8, 1.2)
            delay = min(delay * 2, self.backoff_max)
            await asyncio.sleep(pause)

    async def _session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        """Serve one connection until it ends; return whether hello came."""
        self._writer = writer
        decoder = LineDecoder.for_events()
        greeted = False
        reason = "the agent closed the connection"
        try:
            while data := await reader.read(_READ_CHUNK):
                for item in decoder.feed(data):
                    if isinstance(item, BridgeProtocolError):
                        log.warning("bridge client: bad line from the agent: %s", item)
                        continue
                    if isinstance(item, HelloEvent):
                        greeted = True
                    self._dispatch(item)
        except OSError as exc:
            reason = f"connection to the agent lost: {exc}"
        finally:
            self._writer = None
            self._ready.clear()
            for fut in self._pending.values():
                if not fut.done():
                    fut.set_exception(ConnectionLost(f"{reason} before the reply"))
            self._pending.clear()
            writer.transport.abort()
        self._link_down(reason)
        return greeted

    # ------------------------------------------------------------ events

    def _dispatch(self, event: Event) -> None:
        if isinstance(event, Reply):
            fut = self._pending.pop(event.id, None)
            if fut is None:
                log.debug("bridge client: reply to nothing pending: %r", event)
            elif not fut.done():
                fut.set_result(event)
            return
        if isinstance(event, HelloEvent):
            self._state = event
            self._down = None
            self._ready.set()
            log.info("bridge client: connected to %s (%s)", self.path, event.terminal.sn)
        elif self._state is not None:
            snap = self._state.snapshot
            if isinstance(event, ScreenEvent):
                snap = msgspec.structs.replace(snap, screen=event)
            elif isinstance(event, ConnectionEvent):
                snap = msgspec.structs.replace(snap, connection=event)
            elif isinstance(event, ReadersEvent):
                snap = msgspec.structs.replace(snap, readers=event)
            elif isinstance(event, QueueEvent):
                snap = msgspec.structs.replace(snap, queue=event)
            self._state = msgspec.structs.replace(self._state, seq=event.seq, snapshot=snap)
        for q in self._subscribers:
            self._put(q, event)

    def _link_down(self, reason: str) -> None:
        self._last_reason = reason
        if self._down is None:
            log.info("bridge client: %s", reason)
            self._down = AgentLost(reason=reason)
            for q in self._subscribers:
                self._put(q, self._down)

    def _put(self, q: asyncio.Queue[ClientEvent | None], item: ClientEvent | None) -> None:
        try:
            q.put_nowait(item)
        except asyncio.QueueFull:
            # Too far behind: replace the backlog with the current state.
            while not q.empty():
                q.get_nowait()
            if item is None:
                q.put_nowait(None)
            elif self._down is not None:
                q.put_nowait(self._down)
            elif self._state is not None:
                q.put_nowait(self._state)

    async def events(self) -> AsyncGenerator[ClientEvent, None]:
        """Yield the agent's events (and ``AgentLost`` notices) until ``close()``.

        Each call is its own subscriber and starts with the current state:
        the hello as last known (or ``AgentLost`` while the agent is away).
        """
        if self._closed:
            return
        q: asyncio.Queue[ClientEvent | None] = asyncio.Queue(self.max_buffered)
        if self._ready.is_set() and self._state is not None:
            q.put_nowait(self._state)
        elif self._down is not None:
            q.put_nowait(self._down)
        self._subscribers.append(q)
        try:
            while (item := await q.get()) is not None:
                yield item
        finally:
            self._subscribers.remove(q)

    # ------------------------------------------------------------ intents

    async def request(
        self,
        intent_name: str,
        timeout: float = 10.0,
        **args: Any,
    ) -> Reply:
        """Send intent ``intent_name`` with ``args``; return the agent's reply.

        Waits up to ``timeout`` seconds in all, for the connection and then
        for the reply. A reply with ``ok: false`` is returned, not raised.
        Raises ``BridgeProtocolError`` for an unknown intent or bad argument,
        ``AgentUnavailable`` if not connected in time (nothing was sent),
        ``RequestTimeout`` if the reply did not come in time,
        ``ConnectionLost`` if the connection dropped after sending,
        ``BridgeError`` if ``connect()`` was not called or after ``close()``.
        """
        intent = intent_from_args(intent_name, f"{self._id_prefix}-{next(self._ids)}", **args)
        line = encode_line(intent)
        if self._task is None or self._closed:
            raise BridgeError("not started: call connect() first")
        loop = asyncio.get_running_loop()
        sent = False
        try:
            async with asyncio.timeout(timeout):
                while True:
                    await self._ready.wait()
                    writer = self._writer
                    if writer is not None:
                        break
                    await asyncio.sleep(0)
                fut: asyncio.Future[Reply] = loop.create_future()
                self._pending[intent.id] = fut
                try:
                    async with self._write_lock:
                        writer.write(line)
                        sent = True
                        await writer.drain()
                    return await fut
                finally:
                    self._pending.pop(intent.id, None)
                    # The reader may fail this future while the write is
                    # still draining; the caller then learns of the loss
                    # from the write, so mark the future's error as seen
                    # (else asyncio logs "exception was never retrieved").
                    if fut.done() and not fut.cancelled():
                        fut.exception()
        except TimeoutError:
            if not sent:
                raise AgentUnavailable(
                    f"not connected to the agent within {timeout:g} s: {self._last_reason}"
                ) from None
            raise RequestTimeout(f"no reply to {intent_name!r} within {timeout:g} s") from None
        except OSError as exc:
            raise ConnectionLost(f"connection to the agent lost: {exc}") from exc


async def query_status(path: str, timeout: float = 5.0) -> StatusReply:
    """Ask a running agent for its status (``ask_once``)."""
    intent = StatusIntent(id=f"status-{secrets.token_hex(3)}")
    return await ask_once(path, intent, StatusReply, timeout)


async def ask_once(path: str, intent: Intent, kind: type[D], timeout: float = 5.0) -> D:
    """Send a running agent one intent; return the reply's ``data`` as ``kind``
    (``sadad-agent status``, ``receipt``).

    One connection, no retry: read the hello, send ``intent``, await the
    reply. Raises ``AgentUnavailable`` when the socket is missing, refused
    or not permitted; ``RequestTimeout`` if the agent does not answer within
    ``timeout``; ``ConnectionLost`` if it hangs up first; ``BridgeError`` if
    it answers ``ok: false``.
    """
    reader, writer = await _open(path)
    decoder = LineDecoder.for_events()
    reply: Reply | None = None
    try:
        async with asyncio.timeout(timeout):
            greeted = False
            while reply is None:
                data = await reader.read(_READ_CHUNK)
                if not data:
                    raise ConnectionLost("the agent closed the connection before answering")
                for item in decoder.feed(data):
                    if isinstance(item, HelloEvent) and not greeted:
                        greeted = True
                        writer.write(encode_line(intent))
                        await writer.drain()
                    elif isinstance(item, Reply) and item.id == intent.id:
                        reply = item
                        break
    except TimeoutError:
        raise RequestTimeout(f"the agent did not answer within {timeout:g} s") from None
    except OSError as exc:
        raise ConnectionLost(f"connection to the agent lost: {exc}") from exc
    finally:
        await _close_writer(writer)
    if not reply.ok:
        name = type(intent).__struct_config__.tag
        raise BridgeError(f"the agent refused {name}: {reply.error}")
    return reply_data(reply, kind)
