"""A man in the middle between terminals and the gateway, as a process of its own.

``python -m tests.integration.mitm_proxy --upstream URL`` listens on a free
loopback port, prints ``{"url": ...}`` on one line, and forwards every
``POST /api/cashier/entry`` to ``URL``, remembering each genuine answer. It
holds no key: everything it hands a terminal was signed by the gateway. A
test arms one trick per terminal with ``POST /_mitm`` ``{"terminal": SN,
"trick": NAME}``; each applies to that terminal's next payment create, then
the proxy forwards honestly again:

- ``replay``: answer the create itself, with the last genuine answer to one
  of this terminal's earlier creates (the gateway never sees the request);
- ``swap``: forward the create, and answer it with the last genuine answer
  another terminal got to a create (keeping this one for the next swap);
- ``hold``: forward the create and sit on the answer for ``seconds`` before
  passing it on (past the terminal's HTTP timeout).

``GET /_mitm`` returns what it did, as ``{"log": [[sn, method, what], ...]}``.
"""

from __future__ import annotations

import argparse
import http.client
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

CREATES = ("cashier.pay.bankcard.trans.create", "cashier.pay.wallet.trans.create")


class Proxy:
    def __init__(self, upstream: str) -> None:
        parts = urlsplit(upstream)
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 80
        self.lock = threading.Lock()
        self.tricks: dict[str, dict[str, Any]] = {}
        self.answers: dict[str, bytes] = {}  # sn -> last genuine answer to a create
        self.log: list[tuple[str, str, str]] = []

    def forward(self, path: str, body: bytes) -> tuple[int, bytes]:
        conn = http.client.HTTPConnection(self.host, self.port, timeout=60)
        try:
            conn.request("POST", path, body, {"Content-Type": "application/json"})
            resp = conn.getresponse()
            return resp.status, resp.read()
        finally:
            conn.close()

    def handle(self, path: str, body: bytes) -> tuple[int, bytes]:
        try:
            request = json.loads(body)
            sn, method = str(request.get("app_id")), str(request.get("method"))
        except (ValueError, AttributeError):
            return self.forward(path, body)
        with self.lock:
            trick = self.tricks.pop(sn, None) if method in CREATES else None
            earlier = self.answers.get(sn)
            others = [a for other, a in self.answers.items() if other != sn]
        if trick is not None and trick["trick"] == "replay" and earlier is not None:
            self._note(sn, method, "replayed an earlier answer of this terminal")
            return 200, earlier
        status, answer = self.forward(path, body)
        if method in CREATES and status == 200:
            with self.lock:
                self.answers[sn] = answer
        if trick is not None and trick["trick"] == "swap" and others:
            self._note(sn, method, "answered with another terminal's answer")
            return 200, others[-1]
        if trick is not None and trick["trick"] == "hold":
            self._note(sn, method, f"held the answer {trick['seconds']} s")
            time.sleep(float(trick["seconds"]))
        elif trick is not None:
            self._note(sn, method, f"{trick['trick']}: nothing to play it with; forwarded")
        return status, answer

    def _note(self, sn: str, method: str, what: str) -> None:
        with self.lock:
            self.log.append((sn, method, what))


def serve(proxy: Proxy) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as the agent's client uses it

        def _reply(self, status: int, body: bytes) -> None:
            try:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
            except OSError:  # the terminal gave up waiting (a held answer)
                self.close_connection = True

        def do_GET(self) -> None:
            with proxy.lock:
                body = json.dumps({"log": proxy.log}).encode()
            self._reply(200, body)

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            if self.path == "/_mitm":
                trick = json.loads(body)
                with proxy.lock:
                    proxy.tricks[str(trick["terminal"])] = trick
                self._reply(200, b"{}")
                return
            self._reply(*proxy.handle(self.path, body))

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    return server


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--upstream", required=True)
    args = parser.parse_args()
    server = serve(Proxy(args.upstream))
    host, port = server.server_address[:2]
    print(json.dumps({"url": f"http://{host!s}:{port}"}), flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
