"""Forced failures: the sandbox's switchboard for the ways an order goes wrong.

Sandbox-only (nothing here is in docs/protocol.md); sandbox/README.md "Forcing
failures" is the user's view. The acquirer's magic amounts
(``sandbox.acquirer``: timeout ``.91``, HTTP 503 ``.93``, charged-then-500
``.52``, declines) and the reader simulators (a card pulled away, the
cashier's cancel) cover the rest; this module adds the failures between the
POS, the gateway, the TMS and the terminal.

A fault is switched on per order by the last two digits of ``order_amount``,
or per terminal with ``sadad-sandbox fault --terminal SN FAULT... [--seconds
S]`` (table ``terminal_faults`` in the sandbox database, read at every use,
so a running sandbox follows a change at once):

- ``offline`` (per terminal only): the terminal counts as offline whatever
  its status says: creates answer OFFLINE (40903 with
  ``reject_trade_when_terminal_offline``), its pushes are held and published
  when the fault ends, as a broker delivers a session's queue on reconnect;
- ``busy`` (per terminal only): before each order, a sale of the sandbox's
  own (``SBXBUSY...``, confirm on terminal, expiring after S s) is pushed,
  so the terminal answers the order ``busy`` and queues it;
- ``late-create`` (``.94``): the order is created and pushed at once, and
  answered after S s (default: serve's ``--late-seconds``);
- ``create-500`` (``.95``): the order is created and pushed, answered HTTP 500;
- ``notify-twice`` (``.96``): after the final notification is delivered, an
  older one (status 0) and then the final one again (same ``notify_id``);
- ``ack-lost`` (``.97``): the terminal's ``received`` event is dropped and
  the push delivered again (same ``message_id``) 0.5 s and 2 s later;
- ``stale-answers`` (per terminal only, for S s; default until cleared):
  the terminal's cashier answers are stamped 16 minutes in the past - what
  an answer held back by someone in the middle looks like when it arrives;
  the terminal must take none of them as an answer (docs/protocol.md part D).

A repeated create (same ``merchant_order_no`` and fields) is answered at
once with the first answer, as always: that is what a POS retry after
``late-create`` or ``create-500`` must get. Held pushes live in memory (a
restart of the sandbox drops them); one whose expiry passed while held is
dropped, as the broker would.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import math
import sqlite3
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, replace
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx

from cloud import envelope, wirejson
from cloud.messages import EventKind, OrderInfo, PushTopic, TerminalEvent, TransStatus, decode
from sandbox.acquirer import cents
from sandbox.codes import Code
from sandbox.store import Merchant, Order, wire_time
from sandbox.tms import orders_topic

if TYPE_CHECKING:  # the gateway owns the switchboard
    from sandbox.gateway import Gateway, Reply

log = logging.getLogger(__name__)


class Fault(enum.StrEnum):
    OFFLINE = "offline"
    BUSY = "busy"
    LATE_CREATE = "late-create"
    CREATE_500 = "create-500"
    NOTIFY_TWICE = "notify-twice"
    ACK_LOST = "ack-lost"
    STALE_ANSWERS = "stale-answers"


BY_CENTS: dict[int, Fault] = {
    94: Fault.LATE_CREATE,
    95: Fault.CREATE_500,
    96: Fault.NOTIFY_TWICE,
    97: Fault.ACK_LOST,
}
DECOY_PREFIX = "SBXBUSY"  # merchant_order_no of the sale that keeps a terminal busy
DEFAULT_BUSY_S = 10.0
DEFAULT_LATE_S = 12.0  # past the POS module's default 10 s HTTP timeout
REDELIVER_AFTER_S = (0.5, 1.5)  # waits before each redelivery of an ack-lost push
RELEASE_POLL_S = 0.2
NOTIFY_POLL_S = 0.1
NOTIFY_TIMEOUT_S = 5.0
STALE_ANSWER_MS = 16 * 60 * 1000  # past the 15-minute window of the envelope


def order_fault(amount: Decimal) -> Fault | None:
    """The fault an ``order_amount`` asks for by its last two digits, if any."""
    tail = cents(amount)
    return None if tail is None else BY_CENTS.get(tail)


def parse(names: Iterable[str]) -> list[Fault]:
    """Fault names -> faults. Raises ValueError naming an unknown one."""
    out = []
    for name in names:
        try:
            out.append(Fault(name))
        except ValueError:
            known = ", ".join(f.value for f in Fault)
            raise ValueError(f"unknown fault {name!r} (known: {known})") from None
    return out


# ---------------------------------------------------------------- the table


@dataclass(frozen=True, slots=True)
class TerminalFault:
    fault: Fault
    seconds: float | None  # offline: how long; busy: the other sale; late-create: the delay
    since_ms: int

    def active(self, now_ms: int) -> bool:
        # Only offline and stale-answers end by themselves; the others last
        # until cleared.
        if self.fault not in (Fault.OFFLINE, Fault.STALE_ANSWERS) or self.seconds is None:
            return True
        return now_ms < self.since_ms + self.seconds * 1000


_SCHEMA = """
CREATE TABLE IF NOT EXISTS terminal_faults (
    sn TEXT NOT NULL,
    fault TEXT NOT NULL,
    seconds REAL,
    since_ms INTEGER NOT NULL,
    PRIMARY KEY (sn, fault)
);
"""


class FaultTable:
    """The per-terminal faults in the sandbox database (its own connection:
    the ``fault`` command writes it from another process)."""

    def __init__(self, db_path: Path) -> None:
        db_path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(db_path, isolation_level=None, timeout=10.0)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA busy_timeout=10000")
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        self._db.close()

    def set(self, sn: str, faults: Iterable[Fault], seconds: float | None, now_ms: int) -> None:
        """Switch ``faults`` on for terminal ``sn`` (again: with the new ``seconds``)."""
        rows = [(sn, str(f), seconds, now_ms) for f in faults]
        self._db.executemany(
            "INSERT INTO terminal_faults (sn, fault, seconds, since_ms) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (sn, fault) DO UPDATE SET seconds = excluded.seconds, "
            "since_ms = excluded.since_ms",
            rows,
        )

    def clear(self, sn: str, faults: Iterable[Fault] = ()) -> None:
        """Switch ``faults`` off for ``sn`` (all of them when none is named)."""
        names = [str(f) for f in faults]
        if not names:
            self._db.execute("DELETE FROM terminal_faults WHERE sn = ?", (sn,))
        else:
            self._db.executemany(
                "DELETE FROM terminal_faults WHERE sn = ? AND fault = ?", [(sn, n) for n in names]
            )

    def of(self, sn: str, now_ms: int) -> dict[Fault, TerminalFault]:
        """The faults switched on for ``sn`` and still active at ``now_ms``."""
        rows = self._db.execute(
            "SELECT fault, seconds, since_ms FROM terminal_faults WHERE sn = ?", (sn,)
        ).fetchall()
        out: dict[Fault, TerminalFault] = {}
        for name, seconds, since_ms in rows:
            try:
                item = TerminalFault(Fault(name), seconds, since_ms)
            except ValueError:  # written by a newer sandbox
                continue
            if item.active(now_ms):
                out[item.fault] = item
        return out

    def notification(self, trans_no: str, trans_status: int) -> tuple[str, str, str] | None:
        """(state, notify_id, info) of the store's notification, if queued."""
        row = self._db.execute(
            "SELECT state, notify_id, info FROM notifications WHERE trans_no = ? "
            "AND trans_status = ?",
            (trans_no, trans_status),
        ).fetchone()
        return None if row is None else (str(row[0]), str(row[1]), str(row[2]))


# ---------------------------------------------------------------- the switchboard


@dataclass(frozen=True, slots=True)
class _Held:
    payload: str
    expires_ms: int  # when the broker would have dropped it


class Faults:
    """The running sandbox's side: the gateway calls these hooks (loop thread only)."""

    def __init__(self, gw: Gateway, *, late_seconds: float = DEFAULT_LATE_S) -> None:
        self._gw = gw
        self._table = FaultTable(gw.store.path)
        self._late_s = late_seconds
        self._held: dict[str, list[_Held]] = {}
        self._ack_lost: set[str] = set()  # message ids whose ``received`` is to be dropped

    def close(self) -> None:
        self._table.close()

    def terminal(self, sn: str) -> dict[Fault, TerminalFault]:
        return self._table.of(sn, envelope.now_ms())

    def of_order(self, order: Order) -> dict[Fault, float | None]:
        """The faults that apply to ``order`` (fault -> seconds, if given)."""
        if order.merchant_order_no.startswith(DECOY_PREFIX):
            return {}
        faults = {f: t.seconds for f, t in self.terminal(order.terminal_sn).items()}
        by_amount = order_fault(order.order_amount)
        if by_amount is not None:
            faults.setdefault(by_amount, None)
        return faults

    # ------------------------------------------------------------ creates (part A)

    def answer_lag_ms(self, sn: str) -> int:
        """How far in the past terminal ``sn``'s cashier answers are stamped."""
        return STALE_ANSWER_MS if Fault.STALE_ANSWERS in self.terminal(sn) else 0

    def online(self, sn: str) -> bool:
        """Its retained status says online and no ``offline`` fault says otherwise."""
        return self._gw.store.terminal_online(sn) and Fault.OFFLINE not in self.terminal(sn)

    async def occupy(self, merchant: Merchant, order: Order) -> None:
        """``busy``: create and push a sale of the sandbox's own first, which the
        terminal shows (waiting for the cashier's confirmation) until it expires."""
        faults = self.of_order(order)
        if Fault.BUSY not in faults:
            return
        from sandbox import openapi  # openapi calls this module

        seconds = faults[Fault.BUSY] or DEFAULT_BUSY_S
        decoy = DECOY_PREFIX + uuid.uuid4().hex[:16].upper()
        fields: dict[str, Any] = {
            "merchant_no": order.merchant_no,
            "terminal_sn": order.terminal_sn,
            "merchant_order_no": decoy,
            "price_currency": order.price_currency,
            "order_amount": order.order_amount,
            "description": "sandbox fault busy: another sale",
            "expires": max(1, math.ceil(seconds)),
            "confirm_on_terminal": True,
        }
        await openapi.pay_order(self._gw, merchant, fields)
        log.info("fault busy: %s keeps %s busy before %s", decoy, order.terminal_sn, order.trans_no)

    async def answer(self, order: Order, reply: Reply) -> Reply:
        """The first answer to a create that was done: late, a 500, or as it is."""
        faults = self.of_order(order)
        if Fault.CREATE_500 in faults:
            log.info("fault create-500: %s created, answered HTTP 500", order.trans_no)
            return self._gw.fail(
                Code.INTERNAL,
                "sandbox fault create-500: the order was created; ask again with the same "
                "merchant_order_no",
                500,
            )
        if Fault.LATE_CREATE in faults:
            delay = faults[Fault.LATE_CREATE] or self._late_s
            log.info("fault late-create: %s created, answered in %.1f s", order.trans_no, delay)
            await asyncio.sleep(delay)
        return reply

    # ------------------------------------------------------------ pushes and events (part C)

    def hold(self, sn: str, payload: str, expiry_s: int) -> bool:
        """``offline``: keep the push until the fault ends; True when held."""
        if Fault.OFFLINE not in self.terminal(sn):
            return False
        held = _Held(payload, envelope.now_ms() + expiry_s * 1000)
        self._held.setdefault(sn, []).append(held)
        log.info("fault offline: push to %s held until it is back", sn)
        return True

    def pushed(self, order: Order, topic: str, message_id: str, payload: str) -> None:
        """``ack-lost``: drop the acknowledgement, deliver the push again."""
        if topic != PushTopic.PAY_ORDER or Fault.ACK_LOST not in self.of_order(order):
            return
        self._ack_lost.add(message_id)
        self._gw.spawn(self._redeliver(order.terminal_sn, payload, order.expires_at))

    def drops(self, event: TerminalEvent) -> bool:
        """Whether the TMS must act as if ``event`` never arrived (``ack-lost``)."""
        if event.event is EventKind.RECEIVED and event.message_id in self._ack_lost:
            self._ack_lost.discard(event.message_id)
            log.info("fault ack-lost: %s's received event dropped", event.message_id)
            return True
        return False

    async def _redeliver(self, sn: str, payload: str, expires_ms: int) -> None:
        for wait in REDELIVER_AFTER_S:
            await asyncio.sleep(wait)
            if not self._publish(sn, payload, expires_ms):
                return
            log.info("fault ack-lost: push to %s delivered again", sn)

    def _publish(self, sn: str, payload: str, expires_ms: int) -> bool:
        left_s = -(-(expires_ms - envelope.now_ms()) // 1000)
        if left_s <= 0 or self._gw.tms is None:
            return False
        self._gw.tms.publish(orders_topic(sn), payload.encode(), expiry_s=left_s)
        return True

    async def run(self) -> None:
        """Publish the pushes held for a terminal once its ``offline`` fault ends."""
        while True:
            await asyncio.sleep(RELEASE_POLL_S)
            for sn in [sn for sn in self._held if Fault.OFFLINE not in self.terminal(sn)]:
                held = self._held.pop(sn)
                sent = sum(self._publish(sn, h.payload, h.expires_ms) for h in held)
                log.info(
                    "fault offline ended: %d of %d held push(es) to %s sent", sent, len(held), sn
                )

    # ------------------------------------------------------------ notifications (part B)

    def on_final(self, order: Order) -> None:
        """``notify-twice``: once the final notification is delivered, misdeliver."""
        if order.notify_url and Fault.NOTIFY_TWICE in self.of_order(order):
            self._gw.spawn(self._misdeliver(order, order.notify_url))

    async def _misdeliver(self, order: Order, url: str) -> None:
        row = self._table.notification(order.trans_no, int(order.trans_status))
        while row is None or row[0] == "pending":  # the real one first
            await asyncio.sleep(NOTIFY_POLL_S)
            row = self._table.notification(order.trans_no, int(order.trans_status))
        state, notify_id, info_text = row
        if state != "delivered":
            log.warning("fault notify-twice: %s was never delivered; nothing more", order.trans_no)
            return
        key = self._gw.keys.gateway_private
        final = decode(wirejson.loads(info_text), OrderInfo)
        app_id = self._gw.store.merchant_app_id(order.merchant_no)
        stale = replace(order, trans_status=TransStatus.PROCESSING).to_info(app_id=app_id)
        bodies = (
            ("an older one (status 0)", stale, uuid.uuid4().hex, order.created_ms),
            ("the final one again", final, notify_id, envelope.now_ms()),
        )
        async with httpx.AsyncClient(timeout=NOTIFY_TIMEOUT_S) as client:
            for what, info, nid, at_ms in bodies:
                body = envelope.build_notification(
                    info, key, notify_id=nid, notify_time=wire_time(at_ms)
                )
                try:
                    resp = await client.post(
                        url,
                        content=envelope.encode(body),
                        headers={"Content-Type": "application/json"},
                    )
                except httpx.HTTPError as exc:
                    log.warning(
                        "fault notify-twice: %s for %s failed: %s", what, order.trans_no, exc
                    )
                    continue
                log.info(
                    "fault notify-twice: %s for %s delivered: HTTP %d",
                    what,
                    order.trans_no,
                    resp.status_code,
                )
