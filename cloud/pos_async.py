"""``AsyncPosClient``: the POS server's side of the Open API for asyncio code
(the contract is ``cloud.pos``'s docstring: errors, retries, binding)."""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Any, Self, TypeVar

import httpx
import msgspec

from cloud import envelope
from cloud.backoff import POLL, RETRY, Backoff, Clock, SystemClock
from cloud.config import PosConfig
from cloud.errors import (
    CloudRejected,
    CloudUnavailable,
    ContractError,
    NotOurOrder,
)
from cloud.messages import (
    CloseOrder,
    CloseOrderResult,
    Method,
    Notification,
    OrderInfo,
    OrderQuery,
    PayOrder,
    PayOrderResult,
    TerminalInfo,
    TerminalQuery,
    decode,
)
from cloud.order_store import (
    ExpectedOrder,
    MemoryOrderStore,
    OrderStore,
    SqliteOrderStore,
    check,
)
from cloud.pos_orders import OrderBook, UpdateHook, queue_position, wait_timeout

__all__ = ["AsyncPosClient"]

log = logging.getLogger("cloud.pos")

T = TypeVar("T", bound=msgspec.Struct)
R = TypeVar("R")

CREATE_ATTEMPTS = 3
QUERY_ATTEMPTS = 3


class AsyncPosClient:
    """The POS side of the Open API, for asyncio code.

    ``http``: an ``httpx.AsyncClient`` to use (not closed by ``aclose``);
    by default one is made with ``config.timeout`` (and ``transport``, if
    given: an ``httpx.AsyncBaseTransport`` such as a MockTransport). ``poll`` and ``retry``
    are the backoff schedules, ``rng`` their jitter source, ``clock`` the
    time source and sleep (tests inject fakes). ``order_store`` holds what
    each created order must look like (default: ``config.order_store``'s
    SQLite file if set, else memory). Raises ConfigError when the config's
    order store cannot be opened.
    """

    def __init__(
        self,
        config: PosConfig,
        *,
        http: httpx.AsyncClient | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        poll: Backoff = POLL,
        retry: Backoff = RETRY,
        rng: random.Random | None = None,
        clock: Clock | None = None,
        create_attempts: int = CREATE_ATTEMPTS,
        query_attempts: int = QUERY_ATTEMPTS,
        order_store: OrderStore | None = None,
    ) -> None:
        if create_attempts < 1 or query_attempts < 1:
            raise ValueError("attempts must be >= 1")
        self.config = config
        self._own_http = http is None
        if http is not None and transport is not None:
            raise TypeError("pass http or transport, not both")
        self._http = http or httpx.AsyncClient(
            timeout=httpx.Timeout(config.timeout), transport=transport
        )
        self._poll = poll
        self._retry = retry
        self._rng = rng or random.Random()  # jitter only, not security
        self._clock: Clock = clock or SystemClock()
        self._create_attempts = create_attempts
        self._query_attempts = query_attempts
        self._book = OrderBook()
        if order_store is None:
            order_store = (
                MemoryOrderStore()
                if config.order_store is None
                else SqliteOrderStore(config.order_store)
            )
        self.order_store = order_store

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the HTTP client if this object made it."""
        if self._own_http:
            await self._http.aclose()

    # ------------------------------------------------------------ transport

    async def _send(self, method: Method, body: bytes, type_: type[T]) -> T:
        """One POST. Raises CloudRejected, CloudUnavailable."""
        try:
            response = await self._http.post(
                self.config.entry_url,
                content=body,
                headers={"Content-Type": "application/json; charset=UTF-8"},
            )
        except httpx.HTTPError as exc:
            raise CloudUnavailable(f"{method}: {type(exc).__name__}: {exc}".rstrip(": ")) from exc
        if response.status_code >= 500:
            raise CloudUnavailable(f"{method}: HTTP {response.status_code} from the gateway")
        try:
            return envelope.open_response(response.content, self.config.verify_key, type_)
        except CloudRejected:
            raise
        except ContractError as exc:  # includes SignatureError
            raise CloudUnavailable(
                f"{method}: HTTP {response.status_code}, not a valid signed answer: {exc}"
            ) from exc

    def _body(self, method: Method, biz: msgspec.Struct) -> bytes:
        request = envelope.build_request(
            method, biz, app_id=self.config.app_id, private_key=self.config.signing_key
        )
        return envelope.encode(request)

    async def _with_retries(self, attempts: int, call: Callable[[], Awaitable[R]], what: str) -> R:
        """Run ``call`` until it does not raise CloudUnavailable, at most ``attempts`` times."""
        delays = self._retry.delays(self._rng)
        for attempt in range(1, attempts + 1):
            try:
                return await call()
            except CloudUnavailable as exc:
                if attempt == attempts:
                    raise
                delay = next(delays)
                log.warning(
                    "%s failed (%s); retry %d/%d in %.1f s", what, exc, attempt, attempts - 1, delay
                )
                await self._clock.sleep(delay)
        raise AssertionError("unreachable")  # pragma: no cover

    # ------------------------------------------------------------ order state

    def known_order(self, merchant_order_no: str) -> OrderInfo | None:
        """The state this client holds for an order: its first final status
        if it has one, else the latest status seen, else None."""
        return self._book.known(merchant_order_no)

    # ------------------------------------------------------------ part A

    async def push_order(self, order: PayOrder | None = None, /, **fields: Any) -> PayOrderResult:
        """Create an order and push it to its terminal (``wisehub.cloud.pay.order``).

        Pass a ``PayOrder`` or its fields; missing ``merchant_no``,
        ``price_currency``, ``notify_url`` and ``store_no`` come from the
        config. A network failure is retried with the same body (same
        ``merchant_order_no``): the gateway answers a repeat with its first
        answer. Raises ContractError (bad fields), CloudRejected,
        CloudUnavailable (after the retries: outcome unknown - query, or
        push again with the same order).
        """
        if order is None:
            defaults: dict[str, Any] = {
                "merchant_no": self.config.merchant_no,
                "price_currency": self.config.default_currency,
                "notify_url": self.config.notify_url,
                "store_no": self.config.store_no,
            }
            merged = {k: v for k, v in defaults.items() if v is not None}
            merged.update({k: v for k, v in fields.items() if v is not None})
            order = decode(merged, PayOrder)
        elif fields:
            raise TypeError("pass a PayOrder or its fields, not both")
        body = self._body(Method.PAY_ORDER, order)

        async def once() -> PayOrderResult:
            return await self._send(Method.PAY_ORDER, body, PayOrderResult)

        result = await self._with_retries(
            self._create_attempts, once, f"create {order.merchant_order_no}"
        )
        expected = ExpectedOrder(
            merchant_order_no=order.merchant_order_no,
            trans_no=result.trans_no,
            order_amount=order.order_amount,
            price_currency=order.price_currency,
        )
        try:
            self.order_store.remember(expected)
        except Exception:
            # The order exists at the gateway whatever the store says: raising
            # would hide its trans_no from the caller. Unrecorded, its
            # notifications are refused (never misattributed) and polling,
            # which this client binds by the merchant, app and order number,
            # still settles it.
            log.exception(
                "order %s (trans_no %s) created, but the order store failed to record it: "
                "its notifications will be refused; polling still settles it",
                order.merchant_order_no,
                result.trans_no,
            )
        state = self._book.state(order.merchant_order_no)
        state.terminal_sn = order.terminal_sn
        state.trans_no = result.trans_no
        return result

    def _bind(self, info: OrderInfo, expected: ExpectedOrder | None = None) -> None:
        """Raises NotOurOrder unless ``info`` is about the expected order: the
        one given, else the order store's; with neither there is nothing to
        bind it to, and it is refused too."""
        if expected is None:
            expected = self.order_store.expected(info.merchant_order_no)
        if expected is None:
            raise NotOurOrder(
                f"no record of order {info.merchant_order_no!r} (trans_no {info.trans_no!r}): "
                "a result cannot be bound to it; create orders through this client, share "
                "its order store (pos.toml order_store) or pass expected=",
                "$.merchant_order_no",
            )
        check(info, expected, merchant_no=self.config.merchant_no, app_id=self.config.app_id)

    async def _query_once(
        self, merchant_order_no: str | None = None, trans_no: str | None = None
    ) -> OrderInfo:
        query = decode(
            {
                "merchant_no": self.config.merchant_no,
                "merchant_order_no": merchant_order_no,
                "trans_no": trans_no,
            },
            OrderQuery,
        )
        info = await self._send(
            Method.ORDER_QUERY, self._body(Method.ORDER_QUERY, query), OrderInfo
        )
        # An answer counts only for the question it answers (DESIGN.md): the
        # order asked for, and then the order as its create left it.
        asked = (merchant_order_no is None or info.merchant_order_no == merchant_order_no) and (
            trans_no is None or info.trans_no == trans_no
        )
        try:
            if not asked:
                raise NotOurOrder(
                    f"asked for {merchant_order_no or trans_no}, answered "
                    f"{info.merchant_order_no} ({info.trans_no})"
                )
            expected = self.order_store.expected(info.merchant_order_no)
            if expected is None:
                # Not created through this store (``sadad-pos query`` of any
                # order, another instance with its own memory): the merchant,
                # the app, the order asked for and the trans_no this client
                # already holds for it, if any, are all there is to check.
                known = self._book.get(info.merchant_order_no)
                expected = ExpectedOrder(
                    info.merchant_order_no,
                    (known.trans_no if known is not None else None) or info.trans_no,
                    info.order_amount,
                    info.price_currency,
                )
            self._bind(info, expected)
        except NotOurOrder as exc:
            log.error("order.query answer ignored: %s", exc)
            raise CloudUnavailable(f"order.query: answer is not for this order: {exc}") from exc
        self._book.observe(info, "order.query")
        return info

    async def query_order(
        self, merchant_order_no: str | None = None, trans_no: str | None = None
    ) -> OrderInfo:
        """The order as the gateway reports it now (``order.query``).

        Returns the gateway's answer as is (``known_order`` holds the sticky
        state). Retried with backoff on CloudUnavailable, a few times.
        Raises ContractError (neither key given), CloudRejected (e.g.
        unknown order), CloudUnavailable.
        """

        async def once() -> OrderInfo:
            return await self._query_once(merchant_order_no, trans_no)

        return await self._with_retries(
            self._query_attempts, once, f"query {merchant_order_no or trans_no}"
        )

    async def close_order(
        self,
        merchant_order_no: str,
        description: str | None = None,
        *,
        terminal_sn: str | None = None,
    ) -> CloseOrderResult:
        """Close an order still in status 9 (``wisehub.cloud.pay.close``).

        ``terminal_sn`` defaults to the order's terminal as this client knows
        it, else it is looked up with ``order.query``. Never retried. Raises
        CloudRejected (e.g. the order is no longer 9: void or refund it),
        CloudUnavailable (outcome unknown: query the order), ContractError.
        """
        if terminal_sn is None:
            state = self._book.get(merchant_order_no)
            terminal_sn = state.terminal_sn if state is not None else None
        if terminal_sn is None:
            terminal_sn = (await self.query_order(merchant_order_no)).terminal_sn
        close = decode(
            {
                "merchant_no": self.config.merchant_no,
                "terminal_sn": terminal_sn,
                "merchant_order_no": merchant_order_no,
                "description": description,
            },
            CloseOrder,
        )
        return await self._send(
            Method.PAY_CLOSE, self._body(Method.PAY_CLOSE, close), CloseOrderResult
        )

    async def terminal_status(self, terminal_sn: str) -> TerminalInfo:
        """What the gateway knows of a terminal: online or offline, and its last
        retained status (screen, readers, queue, keepalive) in ``terminal_state``
        (``cloud.messages.terminal_state`` decodes it).

        Sandbox-only (``sandbox.terminal.status``): the live gateway answers
        it with a failure (CloudRejected, unknown method). Retried like a
        query. Raises CloudRejected (e.g. unknown terminal), CloudUnavailable.
        """
        query = decode(
            {"merchant_no": self.config.merchant_no, "terminal_sn": terminal_sn}, TerminalQuery
        )
        body = self._body(Method.TERMINAL_STATUS, query)

        async def once() -> TerminalInfo:
            return await self._send(Method.TERMINAL_STATUS, body, TerminalInfo)

        return await self._with_retries(self._query_attempts, once, f"terminal {terminal_sn}")

    # ------------------------------------------------------------ waiting

    async def _sleep_or_final(self, event: asyncio.Event, seconds: float) -> None:
        """Return after ``seconds`` on the injected clock, or once ``event`` is set."""
        if event.is_set():
            return
        waiter = asyncio.ensure_future(event.wait())
        timer = asyncio.ensure_future(self._clock.sleep(seconds))
        try:
            await asyncio.wait({waiter, timer}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiter.cancel()
            timer.cancel()
            await asyncio.gather(waiter, timer, return_exceptions=True)

    async def _poll_or_final(
        self, merchant_order_no: str, event: asyncio.Event, seconds: float
    ) -> None:
        """One query, abandoned when ``event`` is set or ``seconds`` pass.

        Raises CloudRejected; CloudUnavailable is logged (the next poll retries).
        """
        query = asyncio.ensure_future(self._query_once(merchant_order_no))
        waiter = asyncio.ensure_future(event.wait())
        try:
            done, _ = await asyncio.wait(
                {query, waiter}, timeout=max(seconds, 0.0), return_when=asyncio.FIRST_COMPLETED
            )
            if query in done:
                try:
                    query.result()
                except CloudUnavailable as exc:
                    log.warning("poll of %s failed: %s", merchant_order_no, exc)
        finally:
            query.cancel()
            waiter.cancel()
            await asyncio.gather(query, waiter, return_exceptions=True)

    async def wait_for_final(
        self,
        merchant_order_no: str,
        deadline_s: float,
        *,
        on_update: UpdateHook | None = None,
    ) -> OrderInfo:
        """Wait until the order is final (status 1, 2 or 3) and return it.

        Returns at once when the order is already final here or when a
        verified notification for it reaches this client
        (``accept_notification``). Otherwise polls ``order.query`` on the
        ``poll`` schedule (first after ~1 s, growing to ~5 s, jittered) until
        ``deadline_s`` seconds have passed. ``on_update`` is called with each
        new status seen. Raises WaitTimeout (carrying the last status seen
        and, when the gateway tells, why it still waits), TerminalBusy (a
        WaitTimeout: the order still waits in the queue of a busy terminal),
        CloudRejected (a query was refused, e.g. unknown order).
        """
        state = self._book.state(merchant_order_no)
        if state.final is not None:
            return state.final
        event = state.final_event
        if on_update is not None:
            state.hooks.append(on_update)
        try:
            deadline = self._clock.monotonic() + deadline_s
            delays = self._poll.delays(self._rng)
            warned_position: int | None = None
            while state.final is None:
                remaining = deadline - self._clock.monotonic()
                if remaining <= 0:
                    raise wait_timeout(merchant_order_no, deadline_s, state.last)
                await self._sleep_or_final(event, min(next(delays), remaining))
                if state.final is not None:
                    break
                remaining = deadline - self._clock.monotonic()
                if remaining <= 0:
                    raise wait_timeout(merchant_order_no, deadline_s, state.last)
                await self._poll_or_final(merchant_order_no, event, remaining)
                position = queue_position(state.last)
                if position is not None and position != warned_position:
                    warned_position = position
                    log.warning(
                        "order %s waits in the queue of terminal %s at position %d: the "
                        "terminal is busy with another order",
                        merchant_order_no,
                        state.terminal_sn,
                        position,
                    )
            return state.final
        finally:
            if on_update is not None:
                state.hooks.remove(on_update)

    # ------------------------------------------------------------ part B

    def verify_notification(self, body: bytes | str) -> Notification:
        """Verify a result notification's signature, without binding or
        recording it (``accept_notification`` does both).

        Raises SignatureError (missing, blank or wrong ``sign``), ContractError.
        """
        return envelope.verify_notification(
            body.encode("utf-8") if isinstance(body, str) else body, self.config.verify_key
        )

    def accept_notification(
        self, body: bytes | str, expected: ExpectedOrder | None = None
    ) -> tuple[Notification, bool]:
        """Verify, bind, deduplicate and record a result notification (part B).

        For a POS server's webhook: answer 200 ``success`` when this
        returns (new or duplicate), 400 when it raises. It must be about an
        order this POS created, as ``expected`` (when the caller keeps its
        orders itself) or the order store says: its merchant, app,
        ``trans_no``, amount and currency. ``is_new`` is False for a repeat of
        the same ``trans_no`` + ``trans_status``. Recording it wakes
        ``wait_for_final`` for that order. Not thread-safe: call it on the
        client's event loop (``PosClient`` does that for you).
        Raises SignatureError, NotOurOrder, ContractError; and what the order
        store raises when it cannot be read (e.g. sqlite3.Error: answer 500,
        the gateway retries).
        """
        note = self.verify_notification(body)
        try:
            self._bind(note, expected)
        except NotOurOrder as exc:
            log.error("notification %s refused: %s", note.notify_id, exc)
            raise
        if not self._book.first_time(note.trans_no, int(note.trans_status)):
            log.info(
                "duplicate notification %s for %s (%s)",
                note.notify_id,
                note.merchant_order_no,
                note.trans_status.name,
            )
            return note, False
        self._book.observe(note, f"notification {note.notify_id}")
        return note, True
