"""The UI bridge server: the agent's Unix socket speaking JSON lines.

Contract (DESIGN.md "Processes"; the messages and framing are in
``agent.bridge_protocol``):

* ``start()`` binds the socket with mode 0660 (set before ``listen``, so
  there is no moment when it is open to others) and, with ``group``, gives
  it that group: the checkout runs as a user of its own (``sadad-ui``), which
  may connect here and nothing else of the agent's. A stale socket file (no one
  listening) is removed; a live one, or a path that is not a socket, is an
  error: two agents never share a socket.
* Every connection first gets a ``hello`` from the ``hello`` callable (the
  terminal and a snapshot of the current state), then every event
  ``publish``\\ed after it, in order. ``seq`` is stamped here from one
  counter, so it strictly increases on every connection.
* ``publish`` never blocks and never raises for a client: it puts the
  encoded line on each client's bounded queue; a client whose queue is full
  (it stopped reading) is dropped, and a UI that reconnects gets a fresh
  ``hello``. With no client connected, ``publish`` only records the state.
* Each intent is handed to ``on_intent`` in its own task (a slow
  ``test_connection`` does not hold up a ``cancel``) and answered with a
  ``reply`` carrying its ``id``: the dict returned, or ``ok: false`` with
  the exception's text. A line that does not decode gets ``ok: false,
  error: "bad line: ..."``; the connection stays.
* Inside ``on_intent``, ``intent_client()`` names the client that sent the
  intent; ``on_disconnect`` is called with that name once the client is gone
  (it hung up, was killed, was dropped, or the server closed), so state a UI
  set for itself (setup) can end with it.
* ``close()`` drops every client and removes the socket file (if it is
  still ours).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import grp
import logging
import os
import socket
import stat
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import msgspec

from agent.bridge_protocol import (
    BridgeError,
    BridgeProtocolError,
    ConnectionEvent,
    HelloEvent,
    Intent,
    LineDecoder,
    PrinterEvent,
    QueueEvent,
    ReadersEvent,
    Reply,
    ScreenEvent,
    Snapshot,
    StateEvent,
    encode_line,
)
from agent.bridge_replies import ReplyData, to_data
from agent.unix_path import unix_address

__all__ = ["BridgeServer", "intent_client"]

log = logging.getLogger(__name__)

E = TypeVar("E", bound=msgspec.Struct)
SE = TypeVar("SE", ScreenEvent, ConnectionEvent, ReadersEvent, QueueEvent, PrinterEvent)

DEFAULT_QUEUE = 256  # lines waiting for one client before it is dropped
MAX_PENDING_INTENTS = 32  # per client
_READ_CHUNK = 64 * 1024

# Set in each intent's own task, so it never leaks to another intent.
_intent_client: contextvars.ContextVar[str] = contextvars.ContextVar("bridge_intent_client")


def intent_client() -> str | None:
    """Inside ``on_intent``: the name of the client that sent the intent."""
    return _intent_client.get(None)


class _Client:
    """One connected UI: its writer task, reader task and intent tasks."""

    def __init__(
        self, server: BridgeServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self.server = server
        self.reader = reader
        self.writer = writer
        self.queue: asyncio.Queue[bytes] = asyncio.Queue(server.queue_size)
        self.tasks: set[asyncio.Task[None]] = set()  # reader, writer and intents
        self.intents = 0  # intents waiting for on_intent
        self.closed = False
        self.name = f"client-{id(self):x}"

    def send(self, line: bytes) -> None:
        """Queue a line; drop the client if its queue is full."""
        if self.closed:
            return
        try:
            self.queue.put_nowait(line)
        except asyncio.QueueFull:
            log.warning("bridge: %s is not reading; dropping it", self.name)
            self.drop()

    def drop(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.server._clients.discard(self)
        self.writer.transport.abort()
        current = asyncio.current_task()
        for task in self.tasks:
            if task is not current:
                task.cancel()
        self.server._client_gone(self.name)

    async def write_loop(self) -> None:
        try:
            while True:
                lines = [await self.queue.get()]
                # What was queued meanwhile goes in the same write (one system
                # call: a screen event comes with its queue event).
                while not self.queue.empty():
                    lines.append(self.queue.get_nowait())
                self.writer.write(b"".join(lines))
                await self.writer.drain()
        except (ConnectionError, OSError) as exc:
            log.info("bridge: %s gone while writing: %s", self.name, exc)
        finally:
            self.drop()

    async def read_loop(self) -> None:
        decoder = LineDecoder.for_intents()
        try:
            while data := await self.reader.read(_READ_CHUNK):
                for item in decoder.feed(data):
                    if isinstance(item, BridgeProtocolError):
                        log.info("bridge: bad line from %s: %s", self.name, item)
                        self.reply(item.msg_id or "", ok=False, error=f"bad line: {item}")
                    else:
                        self.start_intent(item)
        except (ConnectionError, OSError) as exc:
            log.info("bridge: %s gone while reading: %s", self.name, exc)
        finally:
            self.drop()

    def start_intent(self, intent: Intent) -> None:
        if self.intents >= MAX_PENDING_INTENTS:
            self.reply(intent.id, ok=False, error="busy: too many intents waiting for a reply")
            return
        self.intents += 1  # counted now, so a burst cannot outrun the cap
        task = asyncio.create_task(self.run_intent(intent), name=f"{self.name}-{intent.id}")
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def run_intent(self, intent: Intent) -> None:
        _intent_client.set(self.name)
        try:
            answer = await self.server._on_intent(intent)
            data = answer if isinstance(answer, dict) else to_data(answer)
        except Exception as exc:
            log.warning("bridge: intent %r failed: %s", intent, exc, exc_info=True)
            self.reply(intent.id, ok=False, error=str(exc) or type(exc).__name__)
            return
        finally:
            self.intents -= 1
        self.reply(intent.id, ok=True, data=data)

    def reply(
        self,
        intent_id: str,
        *,
        ok: bool,
        data: dict[str, Any] | None = None,
        error: str | None = None,
    ) -> None:
        msg = Reply(id=intent_id, ok=ok, data=data or {}, error=error)
        try:
            line = encode_line(self.server._stamp(msg))
        except BridgeProtocolError as exc:
            line = encode_line(
                self.server._stamp(Reply(id=intent_id, ok=False, error=f"reply not sent: {exc}"))
            )
        self.send(line)


class BridgeServer:
    """The agent's end of the UI bridge. See the module docstring.

    ``hello`` builds the greeting for a new connection (its ``seq`` is set
    here); ``snapshot()`` gives the last published state of each kind, to
    put in it. ``on_intent`` answers one intent with the reply's ``data``;
    ``on_disconnect`` hears the name of each client that goes.
    """

    def __init__(
        self,
        path: str,
        *,
        hello: Callable[[], HelloEvent],
        on_intent: Callable[[Intent], Awaitable[ReplyData | dict[str, Any]]],
        on_disconnect: Callable[[str], None] | None = None,
        queue_size: int = DEFAULT_QUEUE,
        mode: int = 0o660,
        group: str | None = None,
    ) -> None:
        self.path = path
        self.queue_size = queue_size
        self.mode = mode
        self.group = group
        self._hello = hello
        self._on_intent = on_intent
        self._on_disconnect = on_disconnect
        self._clients: set[_Client] = set()
        self._server: asyncio.Server | None = None
        self._inode: tuple[int, int] | None = None
        self._seq = 0
        self._snapshot = Snapshot()

    @property
    def clients(self) -> int:
        """How many UIs are connected now."""
        return len(self._clients)

    @property
    def serving(self) -> bool:
        return self._server is not None

    def snapshot(self) -> Snapshot:
        """The last published event of each kind (None: never published)."""
        return self._snapshot

    def _client_gone(self, name: str) -> None:
        log.info("bridge: %s disconnected (%d left)", name, len(self._clients))
        if self._on_disconnect is not None:
            try:
                self._on_disconnect(name)
            except Exception:
                log.exception("bridge: on_disconnect failed for %s", name)

    def _stamp(self, event: E) -> E:
        self._seq += 1
        return msgspec.structs.replace(event, seq=self._seq)

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Bind and listen.

        Raises ``BridgeError`` if another process is listening on ``path``,
        if ``path`` exists and is not a socket, or if its file name alone is
        too long for a Unix socket (a long directory is fine:
        ``agent.unix_path``); ``OSError`` if the directory is missing or not
        writable.
        """
        if self._server is not None:
            raise BridgeError("bridge server already started")
        await self._remove_stale()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            try:
                with unix_address(self.path) as address:
                    sock.bind(address)
            except ValueError as exc:
                raise BridgeError(str(exc)) from exc
            # Before listen() every connect is refused, so tightening the
            # mode here leaves no window whatever the umask.
            os.chmod(self.path, self.mode)
            if self.group is not None:
                try:
                    gid = grp.getgrnam(self.group).gr_gid
                except KeyError:
                    raise BridgeError(f"ui.socket_group: no group {self.group!r}") from None
                os.chown(self.path, -1, gid)  # we are a member: the unit's SupplementaryGroups
            sock.listen(16)
            sock.setblocking(False)
            st = os.stat(self.path)
            self._server = await asyncio.start_unix_server(self._accept, sock=sock)
        except BaseException:
            sock.close()
            with contextlib.suppress(OSError):
                os.unlink(self.path)
            raise
        self._inode = (st.st_dev, st.st_ino)
        log.info("bridge: listening on %s", self.path)

    async def _remove_stale(self) -> None:
        try:
            st = os.lstat(self.path)
        except FileNotFoundError:
            return
        if not stat.S_ISSOCK(st.st_mode):
            raise BridgeError(f"{self.path} exists and is not a socket; not removing it")
        try:
            with unix_address(self.path) as address:
                _, writer = await asyncio.wait_for(asyncio.open_unix_connection(address), 2.0)
        except (ConnectionRefusedError, FileNotFoundError):
            log.info("bridge: removing stale socket %s", self.path)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)
            return
        except (OSError, TimeoutError) as exc:
            raise BridgeError(f"cannot tell whether {self.path} is in use: {exc}") from exc
        writer.transport.abort()
        raise BridgeError(f"another process is listening on {self.path}")

    async def close(self) -> None:
        """Stop listening, drop every client, remove the socket file."""
        server, self._server = self._server, None
        if server is not None:
            server.close()
        clients = list(self._clients)
        tasks = [t for c in clients for t in c.tasks]
        for client in clients:
            client.drop()
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        if server is not None:
            await server.wait_closed()
        if self._inode is not None:
            with contextlib.suppress(OSError):
                st = os.stat(self.path)
                if (st.st_dev, st.st_ino) == self._inode:
                    os.unlink(self.path)
            self._inode = None

    async def __aenter__(self) -> BridgeServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # ------------------------------------------------------------ traffic

    def publish(self, event: SE) -> SE:
        """Stamp ``event`` with the next seq and queue it for every client.

        Never blocks. Returns the stamped event. Raises
        ``BridgeProtocolError`` (and sends nothing) if it cannot be encoded.
        """
        stamped = self._stamp(event)
        line = encode_line(stamped)
        self._remember(stamped)
        for client in list(self._clients):
            client.send(line)
        return stamped

    def _remember(self, event: StateEvent) -> None:
        snap = self._snapshot
        match event:
            case ScreenEvent():
                snap = msgspec.structs.replace(snap, screen=event)
            case ConnectionEvent():
                snap = msgspec.structs.replace(snap, connection=event)
            case ReadersEvent():
                snap = msgspec.structs.replace(snap, readers=event)
            case QueueEvent():
                snap = msgspec.structs.replace(snap, queue=event)
            case PrinterEvent():
                snap = msgspec.structs.replace(snap, printer=event)
        self._snapshot = snap

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        client = _Client(self, reader, writer)
        try:
            hello = self._stamp(self._hello())
            line = encode_line(hello)
        except Exception:
            log.exception("bridge: cannot build hello; closing the connection")
            writer.transport.abort()
            return
        # No await between queueing hello and joining the fan-out: the
        # client misses no event and sees hello first.
        client.queue.put_nowait(line)
        self._clients.add(client)
        log.info("bridge: %s connected (%d now)", client.name, len(self._clients))
        for coro, what in ((client.write_loop(), "writer"), (client.read_loop(), "reader")):
            task = asyncio.create_task(coro, name=f"{client.name}-{what}")
            client.tasks.add(task)
            task.add_done_callback(client.tasks.discard)
