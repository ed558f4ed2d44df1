"""A small keep-alive HTTP/1.1 client for one origin: h11 as the protocol
core, a bare asyncio Protocol as the wire.

The agent only ever POSTs signed JSON to its gateway (and ``doctor`` GETs
``/`` for the ``Date`` header). A general-purpose HTTP library brings a
connection pool, anyio, a CA bundle and some 100 modules for that: about
4.5 MB of RSS on a small terminal once its first request is made. This
client keeps one idle connection, sends one request at a time and raises
one error tree:

* ``HttpTimeout``: no connection within ``connect_timeout`` or no complete
  answer within ``timeout``;
* ``HttpConnectError``: DNS, refused, unreachable, TLS handshake or
  certificate failure: the request was never sent;
* ``HttpProtocolError``: the server broke HTTP, closed or reset the
  connection mid-exchange, or sent a body over ``max_body``.

No error text carries the request body: it holds sealed card data.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Protocol
from urllib.parse import urlsplit

import h11

MAX_BODY = 1 << 20  # the gateway's answers are a few hundred bytes
_HIGH_WATER = 256 * 1024  # pause reading the socket when this much is unread


class HttpError(Exception):
    """The HTTP exchange failed; the outcome of the request is unknown."""


class HttpTimeout(HttpError):
    """No connection within ``connect_timeout``, or no complete answer within ``timeout``."""


class HttpConnectError(HttpError):
    """DNS, refused, unreachable or TLS failure: nothing was sent."""


class HttpProtocolError(HttpError):
    """A malformed answer, a connection lost mid-exchange, or a body over the cap."""


@dataclass(frozen=True, slots=True)
class HttpResponse:
    status: int
    headers: dict[str, str]  # lower-case names; repeated fields joined with ", "
    body: bytes


class HttpTransport(Protocol):
    """What the layers above need: ``Http11Client`` or an in-memory peer in tests."""

    async def request(
        self,
        method: str,
        path: str,
        *,
        body: bytes = b"",
        headers: Mapping[str, str] | None = None,
    ) -> HttpResponse: ...

    async def aclose(self) -> None: ...


class _Stale(Exception):
    """A reused connection was closed by the server before any answer byte."""


class _Wire(asyncio.Protocol):
    """The socket side of one connection: bytes in a buffer, EOF as a flag.

    A Protocol rather than StreamReader because the idle check needs to see
    whether anything arrived while the connection sat unused (a FIN, or a
    ``408`` before a close), and StreamReader keeps its buffer private.
    """

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self._buf = bytearray()
        self._eof = False
        self._error: Exception | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._paused = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self._buf += data
        if len(self._buf) > _HIGH_WATER and not self._paused and self.transport is not None:
            self._paused = True
            self.transport.pause_reading()
        self._wake()

    def eof_received(self) -> bool:
        self._eof = True
        self._wake()
        return False  # close our side too: the connection is done either way

    def connection_lost(self, exc: Exception | None) -> None:
        self._eof = True
        self._error = exc
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    @property
    def idle_ok(self) -> bool:
        """Nothing arrived while idle: no answer is due, so any byte or EOF means stale."""
        return not self._buf and not self._eof

    async def read(self) -> bytes:
        """Whatever arrived; ``b""`` at EOF. Raises the OSError that ended the connection."""
        while not self._buf and not self._eof:
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        if self._buf:
            data = bytes(self._buf)
            self._buf.clear()
            if self._paused and self.transport is not None:
                self._paused = False
                self.transport.resume_reading()
            return data
        if self._error is not None:
            raise self._error
        return b""

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()


@dataclass(slots=True)
class _Conn:
    wire: _Wire
    http: h11.Connection
    reused: bool = False  # has carried an exchange before: may be stale
    answered: bool = False  # an answer byte arrived: the request must not be resent


class Http11Client:
    """Keep-alive HTTP/1.1 to the origin of ``base_url``; requests go one at a time.

    ``base_url`` is ``http(s)://host[:port][/prefix]``; ``request`` paths are
    appended to the prefix. ``timeout`` bounds sending a request and reading
    its whole answer; ``connect_timeout`` bounds TCP connect plus TLS.
    """

    def __init__(
        self,
        base_url: str,
        *,
        timeout: float,
        connect_timeout: float,
        ssl_context: ssl.SSLContext | None = None,
        max_body: int = MAX_BODY,
    ) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("base_url must be http://HOST[:PORT][/PATH] or https://...")
        self._host = parts.hostname
        self._port = parts.port or (443 if parts.scheme == "https" else 80)
        self._tls = parts.scheme == "https"
        host = f"[{self._host}]" if ":" in self._host else self._host
        self._authority = host if parts.port is None else f"{host}:{parts.port}"
        self._prefix = parts.path.rstrip("/")
        self._timeout = timeout
        self._connect_timeout = connect_timeout
        self._ssl_context = ssl_context
        self._max_body = max_body
        self._idle: _Conn | None = None
        self._lock = asyncio.Lock()
        self._closed = False

    async def request(
        self,
        method: str,
        path: str,
        *,
        body: bytes = b"",
        headers: Mapping[str, str] | None = None,
    ) -> HttpResponse:
        """One exchange. Raises HttpTimeout, HttpConnectError, HttpProtocolError;
        ValueError for a method, path or header h11 refuses (a caller bug)."""
        req = self._build(method, path, body, headers)
        async with self._lock:
            if self._closed:
                raise HttpConnectError("client is closed")
            conn = self._take_idle()
            if conn is None:
                conn = await self._connect()
            try:
                return await self._exchange(conn, req, body)
            except _Stale:
                # A keep-alive connection can be closed by the server's idle
                # timer while our request is on the way (the FIN crosses it):
                # the server closes or resets without a single answer byte and
                # never read the request, so sending it again, byte for byte,
                # on a fresh connection is safe. It is the only case where it
                # is: after a timeout or after any answer byte the gateway may
                # be charging the card, and a second POST must not follow.
                # (A server that read it and then died without a byte looks
                # the same; the resent body carries the same request_no,
                # which the gateway answers with its first answer, docs/protocol.md
                # part D.) Once only: a fresh connection is never stale, and
                # connections closed while idle are dropped before use.
                conn = await self._connect()
                return await self._exchange(conn, req, body)

    async def aclose(self) -> None:
        """Close the idle connection; later requests raise HttpConnectError."""
        self._closed = True
        if self._idle is not None:
            conn, self._idle = self._idle, None
            if conn.wire.transport is not None:
                conn.wire.transport.close()

    # ------------------------------------------------------------ internals

    def _build(
        self, method: str, path: str, body: bytes, headers: Mapping[str, str] | None
    ) -> h11.Request:
        fields = {"host": self._authority, "user-agent": "sadad-agent"}
        for name, value in (headers or {}).items():
            if name.lower() not in ("host", "content-length", "transfer-encoding"):
                fields[name.lower()] = value
        if body or method.upper() not in ("GET", "HEAD"):
            fields["content-length"] = str(len(body))
        target = self._prefix + (path if path.startswith("/") else "/" + path)
        try:  # h11 validates here, before any byte goes out
            return h11.Request(method=method, target=target, headers=list(fields.items()))
        except h11.LocalProtocolError as exc:
            raise ValueError(f"invalid request: {exc}") from exc

    def _take_idle(self) -> _Conn | None:
        conn, self._idle = self._idle, None
        if conn is not None and not conn.wire.idle_ok:
            conn.wire.abort()  # closed (or talking) while idle: never send on it
            return None
        return conn

    async def _connect(self) -> _Conn:
        loop = asyncio.get_running_loop()
        context: ssl.SSLContext | None = None
        if self._tls:
            if self._ssl_context is None:  # built on first use: loading the CAs costs RSS
                self._ssl_context = ssl.create_default_context()
            context = self._ssl_context
        where = f"{self._authority} (port {self._port})"
        try:
            async with asyncio.timeout(self._connect_timeout):
                transport, wire = await loop.create_connection(
                    _Wire,
                    self._host,
                    self._port,
                    ssl=context,
                    server_hostname=self._host if context is not None else None,
                )
        except TimeoutError as exc:
            raise HttpTimeout(f"no connection to {where} in {self._connect_timeout:g} s") from exc
        except OSError as exc:  # gaierror, refused, unreachable, ssl.SSLError
            reason = exc.strerror or type(exc).__name__
            raise HttpConnectError(f"cannot connect to {where}: {reason}") from exc
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            # asyncio sets this already on TCP; said here because it matters:
            # without it a keep-alive POST can wait 40 ms on delayed ACK.
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return _Conn(wire, h11.Connection(h11.CLIENT))

    async def _exchange(self, conn: _Conn, req: h11.Request, body: bytes) -> HttpResponse:
        """Send ``req`` on ``conn`` and read the answer; on any failure the
        connection is aborted, never reused in an unknown state."""
        conn.answered = False
        try:
            async with asyncio.timeout(self._timeout):
                response = await self._send_and_read(conn, req, body)
        except _Stale:
            conn.wire.abort()
            raise
        except ConnectionError as exc:  # reset or broken pipe
            conn.wire.abort()
            if conn.reused and not conn.answered:
                raise _Stale from exc
            raise HttpProtocolError(f"connection lost ({type(exc).__name__})") from exc
        except TimeoutError as exc:
            conn.wire.abort()
            raise HttpTimeout(f"no complete answer in {self._timeout:g} s") from exc
        except h11.RemoteProtocolError as exc:
            conn.wire.abort()
            # h11 puts the offending bytes after a colon ("illegal status
            # line: b'...'"); they could echo our request, so only the words.
            raise HttpProtocolError(f"bad answer: {str(exc).split(':', 1)[0]}") from exc
        except OSError as exc:  # ssl.SSLError mid-stream and the like
            conn.wire.abort()
            raise HttpProtocolError(f"connection lost ({type(exc).__name__})") from exc
        except BaseException:  # our HttpProtocolError, cancellation: state unknown
            conn.wire.abort()
            raise
        done = conn.http.our_state is h11.DONE and conn.http.their_state is h11.DONE
        if done and not self._closed:
            conn.http.start_next_cycle()
            conn.reused = True
            self._idle = conn
        elif conn.wire.transport is not None:
            conn.wire.transport.close()  # Connection: close, HTTP/1.0, or we are closing
        return response

    async def _send_and_read(self, conn: _Conn, req: h11.Request, body: bytes) -> HttpResponse:
        out = conn.http.send(req) or b""
        if body:
            out += conn.http.send(h11.Data(data=body)) or b""
        out += conn.http.send(h11.EndOfMessage()) or b""
        assert conn.wire.transport is not None
        # One write, so headers and body leave in one segment. Not drained:
        # the body is small and the caller's timeout bounds the whole wait.
        conn.wire.transport.write(out)
        status, size = 0, 0
        headers: dict[str, str] = {}
        chunks: list[bytes] = []
        while True:
            event = conn.http.next_event()
            if event is h11.NEED_DATA:
                data = await conn.wire.read()
                if not data and not conn.answered:
                    if conn.reused:
                        raise _Stale
                    raise HttpProtocolError("server closed the connection without answering")
                conn.answered = True
                conn.http.receive_data(data)  # b"" is EOF: h11 judges if it ends the body
            elif isinstance(event, h11.Response):
                status = event.status_code
                headers = _headers(event.headers)
                declared = headers.get("content-length", "")
                if declared.isdigit() and int(declared) > self._max_body:
                    raise HttpProtocolError(f"answer body over {self._max_body} bytes")
            elif isinstance(event, h11.Data):
                size += len(event.data)
                if size > self._max_body:
                    raise HttpProtocolError(f"answer body over {self._max_body} bytes")
                chunks.append(bytes(event.data))
            elif isinstance(event, h11.EndOfMessage):
                return HttpResponse(status, headers, b"".join(chunks))
            elif isinstance(event, h11.ConnectionClosed):
                raise HttpProtocolError("server closed the connection without answering")
            # InformationalResponse (1xx): skip, the final answer follows


def _headers(raw: Iterable[tuple[bytes, bytes]]) -> dict[str, str]:
    headers: dict[str, str] = {}
    for name, value in raw:
        key, text = name.decode("ascii"), value.decode("latin-1")
        headers[key] = f"{headers[key]}, {text}" if key in headers else text
    return headers
