"""The sandbox's HTTP side: a Starlette app for SadadSystem.

Routes (docs/protocol.md "Common envelope", parts A and D):

- ``POST /api/entry``: the Open API (``sandbox.openapi``), requests verified
  with ``envelope.open_request`` against the POS app's public key;
- ``POST /api/cashier/entry``: the cashier API (``sandbox.cashier``),
  verified against the calling terminal's key (``app_id`` = SN), looked up
  in SQLite per request so newly provisioned terminals work at once;
- ``GET /health``: ``{"status": "ok"}``.

Every answer to an entry call is a signed response. A body that is not a
JSON object gets HTTP 400 (code 40000); a bad signature, unknown app, stale
timestamp, unknown method or invalid field gets HTTP 200 with its code
(``sandbox.codes``) and a message naming the field; a bug gets HTTP 500
with code 50000 and its trace in the log, never in the answer. The app's
lifespan starts and stops the ``Gateway`` (MQTT link, notifier, sweeper).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from cloud import envelope, wirejson
from cloud.errors import ContractError, SignatureError
from cloud.signing import PublicKeyLike
from sandbox import cashier, openapi
from sandbox.codes import ApiError, Code
from sandbox.gateway import Gateway, Reply

log = logging.getLogger(__name__)


def _verify_failure(gw: Gateway, exc: ContractError) -> Reply:
    if isinstance(exc, SignatureError):
        return gw.fail(Code.INVALID_SIGNATURE, f"invalid signature: {exc}")
    if exc.field == "$.app_id":
        return gw.fail(Code.UNKNOWN_APP, str(exc))
    if exc.field == "$.timestamp":
        return gw.fail(Code.CLOCK_SKEW, f"invalid timestamp: {exc}")
    return gw.fail(Code.INVALID_PARAMETER, f"invalid parameter: {exc}")


async def _entry(
    gw: Gateway,
    request: Request,
    key_for: Callable[[str], PublicKeyLike | None],
    dispatch: Callable[[str, str, dict[str, Any]], Any],
) -> Response:
    body = await request.body()
    try:
        obj = wirejson.loads(body)
    except ContractError as exc:
        return _send(gw.fail(Code.MALFORMED_BODY, str(exc), 400))
    if not isinstance(obj, dict):
        return _send(gw.fail(Code.MALFORMED_BODY, "request must be a JSON object", 400))
    try:
        method, app_id, fields = envelope.open_request(body, key_for)
    except ContractError as exc:
        reply = _verify_failure(gw, exc)
        log.info("%s refused before dispatch: %s", request.url.path, exc)
        return _send(reply)
    try:
        reply = await dispatch(method, app_id, fields)
    except ApiError as exc:
        reply = gw.fail(exc.code, exc.msg, exc.http_status)
    except ContractError as exc:
        reply = gw.fail(Code.INVALID_PARAMETER, f"invalid parameter: {exc}")
    except Exception:
        log.exception("%s from %s failed", method, app_id)
        reply = gw.fail(Code.INTERNAL, "internal error (see the sandbox log)", 500)
    log.info("%s %s from %s -> HTTP %d", request.url.path, method, app_id, reply.http_status)
    return _send(reply)


def _send(reply: Reply) -> Response:
    return Response(reply.body, status_code=reply.http_status, media_type=reply.media_type)


def build_app(gw: Gateway) -> Starlette:
    """The Starlette app serving ``gw``."""

    def pos_key(app_id: str) -> str | None:
        merchant = gw.store.merchant_by_app(app_id)
        return None if merchant is None else merchant.public_key_pem

    def terminal_key(app_id: str) -> str | None:
        terminal = gw.store.terminal(app_id)
        return None if terminal is None else terminal.public_key_pem

    async def open_api_dispatch(method: str, app_id: str, fields: dict[str, Any]) -> Reply:
        handler = openapi.HANDLERS.get(method)
        if handler is None:
            raise ApiError(
                Code.UNKNOWN_METHOD,
                f"unknown method {method!r} on /api/entry (offered: {', '.join(openapi.HANDLERS)})",
            )
        merchant = gw.store.merchant_by_app(app_id)
        assert merchant is not None  # open_request found its key
        return await handler(gw, merchant, fields)

    async def cashier_dispatch(method: str, app_id: str, fields: dict[str, Any]) -> Reply:
        terminal = gw.store.terminal(app_id)
        assert terminal is not None  # open_request found its key
        return await cashier.dispatch(gw, terminal, method, fields)

    async def open_api(request: Request) -> Response:
        return await _entry(gw, request, pos_key, open_api_dispatch)

    async def cashier_api(request: Request) -> Response:
        return await _entry(gw, request, terminal_key, cashier_dispatch)

    async def health(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await gw.start()
        try:
            yield
        finally:
            await gw.stop()

    return Starlette(
        routes=[
            Route(envelope.ENTRY_PATH, open_api, methods=["POST"]),
            Route(envelope.CASHIER_PATH, cashier_api, methods=["POST"]),
            Route("/health", health, methods=["GET"]),
        ],
        lifespan=lifespan,
    )
