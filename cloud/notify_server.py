"""A minimal HTTP receiver for result notifications (docs/protocol.md part B).

The gateway POSTs a signed JSON object to the order's ``notify_url`` and
wants HTTP 200 with the plain body ``success`` within 5 s; anything else is
a failed delivery that it retries. This server takes one POST per
connection (``Connection: close``), hands the body to a handler and writes
the handler's status and text back. It is for the ``sadad-pos`` CLI and
local development; a production POS server mounts
``AsyncPosClient.accept_notification`` in its own web framework instead.

Stdlib asyncio only (no web framework): ``cloud/`` must stay importable
with httpx, cryptography and msgspec alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from http import HTTPStatus
from types import TracebackType
from typing import Self

from cloud.errors import ContractError, NotOurOrder

log = logging.getLogger("cloud.notify_server")

MAX_BODY = 1 << 20
MAX_HEADERS = 100
READ_TIMEOUT_S = 10.0

Handler = Callable[[bytes], tuple[int, str]]


def notification_handler(
    accept: Callable[[bytes], object],
) -> Handler:
    """A handler that answers 200 ``success`` when ``accept(body)`` returns and
    400 when it raises ContractError: a bad or missing signature, bad fields,
    or (NotOurOrder) a genuine notification about another merchant's, app's
    or order's payment (docs/protocol.md part B). Each refusal is logged.
    Anything else ``accept`` raises becomes a 500 (the gateway retries)."""

    def handle(body: bytes) -> tuple[int, str]:
        try:
            accept(body)
        except NotOurOrder as exc:
            log.warning("refused notification: not our order: %s", exc)
            return 400, f"not our order: {exc}"
        except ContractError as exc:
            log.warning("rejected notification: %s", exc)
            return 400, f"invalid notification: {exc}"
        return 200, "success"

    return handle


class _BadRequest(Exception):
    def __init__(self, status: int, text: str) -> None:
        super().__init__(text)
        self.status = status
        self.text = text


class NotifyServer:
    """``async with NotifyServer(handler) as server: ... server.url``.

    Binds ``host``:``port`` (0: an ephemeral port). ``url`` is
    ``http://host:port{path}``; every path is accepted. Raises OSError when
    the address cannot be bound.
    """

    def __init__(
        self,
        handler: Handler,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        path: str = "/notify",
    ) -> None:
        self._handler = handler
        self._host = host
        self._port = port
        self._path = path
        self._server: asyncio.Server | None = None

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("server not started")
        return int(self._server.sockets[0].getsockname()[1])

    @property
    def url(self) -> str:
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"http://{host}:{self.port}{self._path}"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, self._host, self._port)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def _read_request(self, reader: asyncio.StreamReader) -> bytes:
        line = await reader.readline()
        parts = line.decode("latin-1").split()
        if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
            raise _BadRequest(400, "bad request line")
        method = parts[0]
        headers: dict[str, str] = {}
        for _ in range(MAX_HEADERS + 1):
            raw = await reader.readline()
            if raw in (b"\r\n", b"\n", b""):
                break
            name, sep, value = raw.decode("latin-1").partition(":")
            if not sep:
                raise _BadRequest(400, "bad header line")
            headers[name.strip().lower()] = value.strip()
        else:
            raise _BadRequest(431, "too many headers")
        if method != "POST":
            raise _BadRequest(405, "only POST is accepted")
        if "chunked" in headers.get("transfer-encoding", "").lower():
            raise _BadRequest(411, "send a Content-Length")
        try:
            length = int(headers.get("content-length", ""))
        except ValueError:
            raise _BadRequest(411, "send a Content-Length") from None
        if not 0 <= length <= MAX_BODY:
            raise _BadRequest(413, "body too large")
        return await reader.readexactly(length)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            try:
                body = await asyncio.wait_for(self._read_request(reader), READ_TIMEOUT_S)
            except _BadRequest as exc:
                status, text = exc.status, exc.text
            except (TimeoutError, asyncio.IncompleteReadError, ValueError, ConnectionError):
                return  # ValueError: a line over the StreamReader limit
            else:
                try:
                    status, text = self._handler(body)
                except Exception:
                    log.exception("notification handler failed")
                    status, text = 500, "internal error"
            payload = text.encode("utf-8")
            try:
                reason = HTTPStatus(status).phrase
            except ValueError:
                reason = ""
            head = (
                f"HTTP/1.1 {status} {reason}\r\n"
                "Content-Type: text/plain; charset=utf-8\r\n"
                f"Content-Length: {len(payload)}\r\n"
                "Connection: close\r\n\r\n"
            )
            writer.write(head.encode("latin-1") + payload)
            with contextlib.suppress(ConnectionError):
                await writer.drain()
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()
