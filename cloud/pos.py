"""The POS-server module: push, query, close, wait, verify notifications.

docs/protocol.md part A (``wisehub.cloud.pay.order``, ``wisehub.cloud.pay.close``,
``order.query`` on ``POST {gateway}/api/entry``) and part B (result
notifications). Signing, envelopes and message checks are ``cloud.envelope``
and ``cloud.messages``; this module adds the transport, the retry policy and
the per-order state that makes notifications and polling agree.

Errors (``cloud.errors``):

- ``CloudRejected``: the gateway gave a valid, signed failure answer. Final
  for that request; never retried. ``TerminalOffline`` (a subclass) when a
  create asked ``reject_trade_when_terminal_offline`` and the terminal is
  offline (sandbox code 40903): refused at once, nothing created.
- ``CloudUnavailable``: network error, timeout, HTTP 5xx, or an answer that
  is not JSON, not signed, or badly signed. The outcome is unknown.
- ``ContractError``: what the caller passed is not a valid message
  (``SignatureError``, a subclass, for a bad notification).
- ``WaitTimeout``: ``wait_for_final`` reached its deadline; ``why`` says why
  the order still waits when the gateway tells (the sandbox does).
  ``TerminalBusy`` (a subclass) when it still waits in the queue of a
  terminal that answered ``busy``, with its ``position``; that is also
  logged as a warning as soon as it is seen.

Retries (only what is safe): ``order.query`` (bounded, with backoff), and
``wisehub.cloud.pay.order`` with the very same body - the gateway answers a
repeat of a ``merchant_order_no`` with the same fields with its first answer.
``wisehub.cloud.pay.close`` is never retried.

Binding (docs/protocol.md part B): the gateway signs every merchant's
notifications with one key, so a notification or query answer counts for an
order only when it names this client's ``merchant_no`` and ``app_id``, the
``trans_no`` the create returned for that ``merchant_order_no``, and the
order's amount and currency (``cloud.order_store.check``). The expectation
is recorded by ``push_order`` in an order store - in memory, or the SQLite
file ``config.order_store`` that every instance of a POS server shares, as
a notification may reach an instance that did not create the order - or
handed in by the caller (``expected=``). ``accept_notification`` refuses
anything else with ``NotOurOrder`` (HTTP 400 for a webhook), an order it has
no record of included (it cannot be bound; polling still settles it). A
query answer about another order, merchant or app is no answer
(``CloudUnavailable``, retried) and is never recorded; for an order with no
record (created elsewhere) a query answer must still name this merchant and
app and the order or ``trans_no`` asked for.

Per-order state: every ``OrderInfo`` seen (bound query answers and verified,
bound notifications) updates the order's state. The first final status (1, 2, 3)
is kept for good: a later non-final or different final status never
replaces it (a different final one is logged as an error) except a paid
order voided or reversed afterwards (2 then 3, ``REVERSAL``), and a non-final
status only moves forward (9 -> 0: a late 9 is ignored), by the rule in
``cloud.status_rules`` that every layer applies. A verified
notification that makes an order final wakes ``wait_for_final`` at once.

The per-order state lives in ``cloud.pos_orders``. ``AsyncPosClient``
(``cloud.pos_async``) is the implementation; ``PosClient`` is the same API for
synchronous code, running an ``AsyncPosClient`` on a private event loop in a
background thread (so a web framework's worker thread can call
``accept_notification`` while another thread waits).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from types import TracebackType
from typing import Any, Self, TypeVar

import httpx

from cloud.config import PosConfig
from cloud.messages import (
    CloseOrderResult,
    Notification,
    OrderInfo,
    PayOrder,
    PayOrderResult,
    TerminalInfo,
)
from cloud.order_store import ExpectedOrder, OrderStore
from cloud.pos_async import AsyncPosClient as AsyncPosClient
from cloud.pos_orders import UpdateHook

__all__ = ["AsyncPosClient", "PosClient"]

R = TypeVar("R")


class PosClient:
    """Synchronous ``AsyncPosClient``: the same methods, blocking.

    Runs the async client on a private event loop in a daemon thread; every
    call is marshalled onto it, so calls from several threads are safe.
    Use as a context manager or call ``close()``. ``options`` are
    ``AsyncPosClient``'s (``order_store=``, ``transport=`` ...); each method
    raises what its ``AsyncPosClient`` counterpart raises, the constructor
    too (ConfigError: the config's order store cannot be opened).
    """

    def __init__(
        self,
        config: PosConfig,
        *,
        http: httpx.AsyncClient | None = None,
        **options: Any,
    ) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="sadad-pos-client", daemon=True
        )
        self._thread.start()
        self._closed = False

        async def make() -> AsyncPosClient:
            return AsyncPosClient(config, http=http, **options)

        try:
            self._async = self._run(make())
        except BaseException:
            self._stop_loop()
            raise

    def _stop_loop(self) -> None:
        self._closed = True
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()

    @property
    def config(self) -> PosConfig:
        return self._async.config

    @property
    def order_store(self) -> OrderStore:
        """The ``AsyncPosClient.order_store`` (thread-safe stores only)."""
        return self._async.order_store

    def _run(self, coro: Coroutine[Any, Any, R]) -> R:
        if self._closed:
            coro.close()
            raise RuntimeError("PosClient is closed")
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the HTTP client (if owned) and stop the loop thread."""
        if self._closed:
            return
        self._run(self._async.aclose())
        self._stop_loop()

    def push_order(self, order: PayOrder | None = None, /, **fields: Any) -> PayOrderResult:
        """See ``AsyncPosClient.push_order``."""
        return self._run(self._async.push_order(order, **fields))

    def query_order(
        self, merchant_order_no: str | None = None, trans_no: str | None = None
    ) -> OrderInfo:
        """See ``AsyncPosClient.query_order``."""
        return self._run(self._async.query_order(merchant_order_no, trans_no))

    def close_order(
        self,
        merchant_order_no: str,
        description: str | None = None,
        *,
        terminal_sn: str | None = None,
    ) -> CloseOrderResult:
        """See ``AsyncPosClient.close_order``."""
        return self._run(
            self._async.close_order(merchant_order_no, description, terminal_sn=terminal_sn)
        )

    def terminal_status(self, terminal_sn: str) -> TerminalInfo:
        """See ``AsyncPosClient.terminal_status`` (sandbox-only)."""
        return self._run(self._async.terminal_status(terminal_sn))

    def wait_for_final(
        self,
        merchant_order_no: str,
        deadline_s: float,
        *,
        on_update: UpdateHook | None = None,
    ) -> OrderInfo:
        """See ``AsyncPosClient.wait_for_final`` (``on_update`` runs on the loop thread)."""
        return self._run(
            self._async.wait_for_final(merchant_order_no, deadline_s, on_update=on_update)
        )

    def verify_notification(self, body: bytes | str) -> Notification:
        """See ``AsyncPosClient.verify_notification``."""
        return self._async.verify_notification(body)

    def accept_notification(
        self, body: bytes | str, expected: ExpectedOrder | None = None
    ) -> tuple[Notification, bool]:
        """See ``AsyncPosClient.accept_notification``; safe from any thread."""

        async def accept() -> tuple[Notification, bool]:
            return self._async.accept_notification(body, expected)

        return self._run(accept())

    def known_order(self, merchant_order_no: str) -> OrderInfo | None:
        """See ``AsyncPosClient.known_order``."""

        async def known() -> OrderInfo | None:
            return self._async.known_order(merchant_order_no)

        return self._run(known())
