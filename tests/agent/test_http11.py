"""agent.http11 against a real loopback server whose every byte a test
scripts: keep-alive, closes, resets, delays, chunked bodies, garbage, TLS."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import ipaddress
import socket
import ssl
import struct
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from agent.http11 import (
    Http11Client,
    HttpConnectError,
    HttpError,
    HttpProtocolError,
    HttpResponse,
    HttpTimeout,
    HttpTransport,
)

MARKER = b"SEALED-CARD-4111111111111111"  # must never reach an error text
OK = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n"

Script = Callable[["Peer", asyncio.StreamReader, asyncio.StreamWriter, int], Awaitable[None]]


class Peer:
    """A loopback HTTP/1.1 server: ``script`` handles each accepted connection
    (numbered from 0); ``seen`` logs every request body with its connection."""

    def __init__(self, script: Script, tls: ssl.SSLContext | None = None) -> None:
        self.script = script
        self.tls = tls
        self.accepted = 0
        self.seen: list[tuple[int, bytes]] = []
        self.heads: list[bytes] = []
        self.client_closed = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self.port = 0

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._on_conn, "127.0.0.1", 0, ssl=self.tls)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()

    def url(self, path: str = "") -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}{path}"

    async def _on_conn(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        number, self.accepted = self.accepted, self.accepted + 1
        try:
            await self.script(self, reader, writer, number)
        except (ConnectionError, ssl.SSLError):
            pass  # the client gave up on us: that is what some tests check
        except asyncio.CancelledError:
            pass  # stop(): ending quietly spares asyncio's "exception in callback" log
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError, ssl.SSLError):
                await writer.wait_closed()
            self._tasks.discard(task)

    async def read_request(self, reader: asyncio.StreamReader, number: int) -> bytes | None:
        """The next request's body, or None when the client closed the connection."""
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError:
            self.client_closed += 1
            return None
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        body = await reader.readexactly(length)
        self.heads.append(head)
        self.seen.append((number, body))
        return body

    async def wait_client_close(self, reader: asyncio.StreamReader) -> None:
        with contextlib.suppress(ConnectionError):
            await reader.read()
        self.client_closed += 1


@contextlib.asynccontextmanager
async def serving(script: Script, tls: ssl.SSLContext | None = None) -> AsyncIterator[Peer]:
    peer = Peer(script, tls)
    await peer.start()
    try:
        yield peer
    finally:
        await peer.stop()


def answer(body: bytes, extra: bytes = b"") -> bytes:
    return OK + extra + b"Content-Length: %d\r\n\r\n" % len(body) + body


async def echo(peer: Peer, reader: asyncio.StreamReader, w: asyncio.StreamWriter, n: int) -> None:
    """Keep-alive: answer each request with ``got:`` and its body."""
    while (body := await peer.read_request(reader, n)) is not None:
        w.write(answer(b"got:" + body))
        await w.drain()


def reset(writer: asyncio.StreamWriter) -> None:
    """Close with RST rather than FIN, as a server dropping a connection hard does."""
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


def client(peer: Peer, timeout: float = 2.0, **kw: object) -> Http11Client:
    return Http11Client(peer.url(), timeout=timeout, connect_timeout=1.0, **kw)  # type: ignore[arg-type]


def assert_clean(exc: BaseException) -> None:
    assert MARKER.decode() not in str(exc)
    assert MARKER.decode() not in repr(exc)


# ------------------------------------------------------------------ round trips


async def test_post_round_trip_with_prefix_and_headers() -> None:
    async with serving(echo) as peer:
        http = Http11Client(peer.url("/gw/"), timeout=2.0, connect_timeout=1.0)
        resp = await http.request(
            "POST", "/api/entry", body=b'{"a":1}', headers={"Content-Type": "application/json"}
        )
        await http.aclose()
    assert resp == HttpResponse(
        200, {"content-type": "text/plain", "content-length": "11"}, b'got:{"a":1}'
    )
    head = peer.heads[0].lower()
    assert head.startswith(b"post /gw/api/entry http/1.1\r\n")
    assert f"host: 127.0.0.1:{peer.port}\r\n".encode() in head
    assert b"user-agent: sadad-agent\r\n" in head
    assert b"content-length: 7\r\n" in head
    assert b"content-type: application/json\r\n" in head


async def test_chunked_answer_arriving_in_pieces() -> None:
    async def chunked(peer: Peer, r: asyncio.StreamReader, w: asyncio.StreamWriter, n: int) -> None:
        await peer.read_request(r, n)
        w.write(OK + b"Transfer-Encoding: chunked\r\n\r\n")
        for piece in (b"hello ", b"chunked ", b"world"):
            w.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            await w.drain()
            await asyncio.sleep(0.01)
        w.write(b"0\r\n\r\n")
        await w.drain()
        await peer.read_request(r, n)

    async with serving(chunked) as peer:
        http = client(peer)
        resp = await http.request("POST", "/", body=b"x")
        await http.aclose()
    assert resp.status == 200
    assert resp.body == b"hello chunked world"


async def test_one_connection_carries_sequential_and_concurrent_requests() -> None:
    async with serving(echo) as peer:
        http = client(peer)
        bodies = [(await http.request("POST", "/", body=b"%d" % i)).body for i in range(3)]
        together = await asyncio.gather(*(http.request("POST", "/", body=b"c") for _ in range(3)))
        await http.aclose()
        await asyncio.sleep(0.05)
        assert peer.client_closed == 1  # aclose closed the idle connection
    assert bodies == [b"got:0", b"got:1", b"got:2"]
    assert [r.body for r in together] == [b"got:c"] * 3
    assert peer.accepted == 1
    assert [n for n, _ in peer.seen] == [0] * 6
    with pytest.raises(HttpConnectError):
        await http.request("POST", "/")


async def test_connection_close_and_http10_answers_are_not_reused() -> None:
    async def closing(peer: Peer, r: asyncio.StreamReader, w: asyncio.StreamWriter, n: int) -> None:
        await peer.read_request(r, n)
        if n == 0:
            w.write(answer(b"bye", b"Connection: close\r\n"))
        else:  # HTTP/1.0, no length: the body runs to the close
            w.write(b"HTTP/1.0 200 OK\r\n\r\nto the end")
        await w.drain()

    async with serving(closing) as peer:
        http = client(peer)
        first = await http.request("GET", "/")
        second = await http.request("GET", "/")
        await http.aclose()
    assert (first.body, second.body) == (b"bye", b"to the end")
    assert peer.accepted == 2
    assert b"content-length" not in peer.heads[0].lower()  # a GET without body has none


# ------------------------------------------------------------------ stale keep-alive


async def test_idle_connection_closed_by_server_is_replaced_before_sending() -> None:
    async def one_each(
        peer: Peer, r: asyncio.StreamReader, w: asyncio.StreamWriter, n: int
    ) -> None:
        await peer.read_request(r, n)
        w.write(answer(b"ok"))
        await w.drain()  # then close: the server's keep-alive timer fired

    async with serving(one_each) as peer:
        http = client(peer)
        await http.request("POST", "/", body=b"1")
        await asyncio.sleep(0.05)  # the FIN reaches the idle connection
        resp = await http.request("POST", "/", body=b"2")
        await http.aclose()
    assert resp.body == b"ok"
    assert peer.seen == [(0, b"1"), (1, b"2")]  # "2" sent once, on the fresh connection


async def test_idle_connection_that_got_bytes_is_not_used() -> None:
    async def timing_out(
        peer: Peer, r: asyncio.StreamReader, w: asyncio.StreamWriter, n: int
    ) -> None:
        await peer.read_request(r, n)
        w.write(answer(b"ok"))
        await w.drain()
        await asyncio.sleep(0.02)  # idle too long: some servers say so before closing
        w.write(b"HTTP/1.1 408 Request Timeout\r\nContent-Length: 0\r\n\r\n")
        await w.drain()
        await peer.read_request(r, n)

    async with serving(timing_out) as peer:
        http = client(peer)
        await http.request("POST", "/", body=b"1")
        await asyncio.sleep(0.05)
        resp = await http.request("POST", "/", body=b"2")  # not the stale 408
        await http.aclose()
    assert (resp.status, resp.body) == (200, b"ok")
    assert peer.seen == [(0, b"1"), (1, b"2")]


@pytest.mark.parametrize("how", ["fin", "rst"])
async def test_close_racing_the_request_is_retried_once_on_a_fresh_connection(how: str) -> None:
    async def racing(peer: Peer, r: asyncio.StreamReader, w: asyncio.StreamWriter, n: int) -> None:
        if n == 0:
            await peer.read_request(r, n)
            w.write(answer(b"first"))
            await w.drain()
            await peer.read_request(r, n)  # the close crosses this request
            if how == "rst":
                reset(w)
            return
        await echo(peer, r, w, n)

    async with serving(racing) as peer:
        http = client(peer)
        await http.request("POST", "/", body=b"1")
        resp = await http.request("POST", "/", body=b"2")
        await http.aclose()
    assert resp.body == b"got:2"
    assert peer.seen == [(0, b"1"), (0, b"2"), (1, b"2")]


async def test_retry_happens_once_only() -> None:
    async def dropping(
        peer: Peer, r: asyncio.StreamReader, w: asyncio.StreamWriter, n: int
    ) -> None:
        if n == 0:
            await peer.read_request(r, n)
            w.write(answer(b"first"))
            await w.drain()
        await peer.read_request(r, n)  # and close without a byte, every time

    async with serving(dropping) as peer:
        http = client(peer)
        await http.request("POST", "/", body=b"1")
        with pytest.raises(HttpProtocolError, match="without answering") as caught:
            await http.request("POST", "/", body=MARKER)
        await http.aclose()
    assert_clean(caught.value)
    assert peer.seen == [(0, b"1"), (0, MARKER), (1, MARKER)]
    assert peer.accepted == 2


async def test_fresh_connection_closed_without_answer_is_not_retried() -> None:
    async def dropping(
        peer: Peer, r: asyncio.StreamReader, w: asyncio.StreamWriter, n: int
    ) -> None:
        await peer.read_request(r, n)

    async with serving(dropping) as peer:
        http = client(peer)
        with pytest.raises(HttpProtocolError):
            await http.request("POST", "/", body=MARKER)
        await http.aclose()
    assert peer.seen == [(0, MARKER)]


# ------------------------------------------------------------------ never resent


async def test_timeout_on_a_reused_connection_is_not_resent_and_closes_it() -> None:
    async def stalling(
        peer: Peer, r: asyncio.StreamReader, w: asyncio.StreamWriter, n: int
    ) -> None:
        await peer.read_request(r, n)
        w.write(answer(b"first"))
        await w.drain()
        await peer.read_request(r, n)
        await peer.wait_client_close(r)  # never answers

    async with serving(stalling) as peer:
        http = client(peer, timeout=0.3)
        await http.request("POST", "/", body=b"1")
        started = time.monotonic()
        with pytest.raises(HttpTimeout) as caught:
            await http.request("POST", "/", body=MARKER)
        elapsed = time.monotonic() - started
        await asyncio.sleep(0.05)
        assert peer.client_closed == 1  # the connection was dropped, not kept
        await http.aclose()
    assert 0.25 < elapsed < 1.0
    assert_clean(caught.value)
    assert peer.seen == [(0, b"1"), (0, MARKER)]
    assert peer.accepted == 1


@pytest.mark.parametrize(
    ("cut", "how"),
    [
        (b"HTTP/1.1 2", "fin"),
        (OK + b"Content-Length: 100\r\n\r\npartial", "fin"),
        (OK + b"Content-Length: 100\r\n\r\npartial", "rst"),
    ],
    ids=["in-status-line", "in-body", "in-body-reset"],
)
async def test_close_mid_answer_is_a_protocol_error_not_retried(cut: bytes, how: str) -> None:
    async def cutting(peer: Peer, r: asyncio.StreamReader, w: asyncio.StreamWriter, n: int) -> None:
        await peer.read_request(r, n)
        w.write(answer(b"first"))
        await w.drain()
        await peer.read_request(r, n)
        w.write(cut)
        await w.drain()
        if how == "rst":
            await asyncio.sleep(0.05)  # the client has the bytes before the reset
            reset(w)

    async with serving(cutting) as peer:
        http = client(peer)
        await http.request("POST", "/", body=b"1")
        with pytest.raises(HttpProtocolError) as caught:
            await http.request("POST", "/", body=MARKER)
        await http.aclose()
    assert_clean(caught.value)
    assert peer.seen == [(0, b"1"), (0, MARKER)]
    assert peer.accepted == 1


# ------------------------------------------------------------------ bad answers


@pytest.mark.parametrize("echo_body", [False, True])
async def test_garbage_answer_is_a_protocol_error(echo_body: bool) -> None:
    async def garbage(peer: Peer, r: asyncio.StreamReader, w: asyncio.StreamWriter, n: int) -> None:
        body = await peer.read_request(r, n)
        assert body is not None
        # A confused peer may echo what it got: the error text must not.
        w.write(b"GARBAGE " + (body if echo_body else b"") + b"\r\n\r\n")
        await w.drain()
        await peer.wait_client_close(r)

    async with serving(garbage) as peer:
        http = client(peer)
        with pytest.raises(HttpProtocolError, match="bad answer") as caught:
            await http.request("POST", "/", body=MARKER)
        await http.aclose()
    assert_clean(caught.value)
    assert peer.seen == [(0, MARKER)]


@pytest.mark.parametrize("framing", ["declared", "chunked"])
async def test_body_over_the_cap_is_refused(framing: str) -> None:
    async def big(peer: Peer, r: asyncio.StreamReader, w: asyncio.StreamWriter, n: int) -> None:
        await peer.read_request(r, n)
        if framing == "declared":
            w.write(OK + b"Content-Length: %d\r\n\r\n" % (2 << 20))
        else:
            w.write(OK + b"Transfer-Encoding: chunked\r\n\r\n")
            piece = b"x" * 65536
            for _ in range(17):  # 1 MiB + 64 KiB, no length announced
                w.write(b"%x\r\n%s\r\n" % (len(piece), piece))
                await w.drain()
        await w.drain()
        await peer.wait_client_close(r)

    async with serving(big) as peer:
        http = client(peer)
        with pytest.raises(HttpProtocolError, match="over 1048576 bytes") as caught:
            await http.request("POST", "/", body=MARKER)
        await http.aclose()
    assert_clean(caught.value)


async def test_refused_connection_is_a_connect_error() -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    http = Http11Client(f"http://127.0.0.1:{port}", timeout=1.0, connect_timeout=1.0)
    with pytest.raises(HttpConnectError) as caught:
        await http.request("POST", "/", body=MARKER)
    assert_clean(caught.value)
    await http.aclose()


def test_the_agent_daemon_does_not_import_httpx() -> None:
    code = (
        "import sys, agent.cli, agent.service, agent.doctor\n"
        "heavy = {'httpx', 'httpcore', 'anyio'}\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in heavy)\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=30)


def test_error_tree_and_transport_seam() -> None:
    assert issubclass(HttpTimeout, HttpError)
    assert issubclass(HttpConnectError, HttpError)
    assert issubclass(HttpProtocolError, HttpError)
    http: HttpTransport = Http11Client("https://gw.example", timeout=1.0, connect_timeout=1.0)
    assert http is not None
    with pytest.raises(ValueError, match="base_url"):
        Http11Client("ftp://gw.example", timeout=1.0, connect_timeout=1.0)


# ------------------------------------------------------------------ TLS


@pytest.fixture(scope="module")
def cert_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "sadad test gateway")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    folder = tmp_path_factory.mktemp("tls")
    cert_file, key_file = folder / "cert.pem", folder / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_file, key_file


def server_tls(cert_files: tuple[Path, Path]) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(*cert_files)
    return context


async def test_https_round_trip_with_a_trusted_self_signed_cert(
    cert_files: tuple[Path, Path],
) -> None:
    trusted = ssl.create_default_context(cafile=str(cert_files[0]))
    async with serving(echo, tls=server_tls(cert_files)) as peer:
        http = client(peer, ssl_context=trusted)
        first = await http.request("POST", "/", body=b"1")
        second = await http.request("POST", "/", body=b"2")
        await http.aclose()
    assert (first.body, second.body) == (b"got:1", b"got:2")
    assert peer.accepted == 1


async def test_https_with_an_untrusted_cert_is_a_connect_error(
    cert_files: tuple[Path, Path],
) -> None:
    async with serving(echo, tls=server_tls(cert_files)) as peer:
        http = client(peer)  # the system's CAs: our self-signed cert is unknown
        with pytest.raises(HttpConnectError) as caught:
            await http.request("POST", "/", body=MARKER)
        await http.aclose()
    assert_clean(caught.value)
    assert peer.seen == []


async def test_stalled_tls_handshake_hits_the_connect_timeout() -> None:
    async def silent(peer: Peer, r: asyncio.StreamReader, w: asyncio.StreamWriter, n: int) -> None:
        await peer.wait_client_close(r)  # plain TCP: never says a TLS word

    async with serving(silent) as peer:
        http = Http11Client(f"https://127.0.0.1:{peer.port}", timeout=5.0, connect_timeout=0.2)
        started = time.monotonic()
        with pytest.raises(HttpTimeout, match="no connection"):
            await http.request("POST", "/", body=MARKER)
        assert time.monotonic() - started < 1.0
        await http.aclose()
