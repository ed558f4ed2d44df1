"""What the checkout shows, computed from the agent's events. Pure.

``CheckoutView`` folds bridge events (hello, screen, connection, readers,
queue, AgentLost) into one state; the functions below turn that state into
the texts the widgets display. The rules - which panel is up, the amount
with thousands separators, the countdown, the result wording, which keys
work - are tested here without a terminal.

States never regress (``cloud.status_rules``): an event whose ``seq`` is not
above the last one applied on the connection is late and dropped, and once
an order's result was shown, no screen moves that order back or to another
result (``screen_verdict``; refused ones are logged). A ``hello`` starts a
connection afresh: its snapshot is the agent's state now.

Card data: everything shown comes from the bridge, which carries masked
PANs only; ``mask_digits`` is a second guard applied to every free-text
field from the agent (progress, message, reason, test results), so a long
run of digits never reaches the screen in full.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from typing import Literal

from agent import bridge_protocol as bp
from agent.bridge_client import AgentLost
from cloud.messages import Screen
from cloud.status_rules import Ladder, Verdict

log = logging.getLogger(__name__)

Phase = Literal["connecting", "lost", "idle", "order", "result"]

ORDER_SCREENS = frozenset(
    {Screen.WAITING_FOR_CONFIRM, Screen.WAITING_FOR_CARD, Screen.READING, Screen.AUTHORIZING}
)

OUTCOME_TITLES = {
    "approved": "APPROVED",
    "declined": "DECLINED",
    "cancelled": "CANCELLED",
    "closed": "CLOSED BY THE POS",
    "expired": "EXPIRED",
    "error": "NOT COMPLETED",
}

DEFAULT_PROMPTS = {
    Screen.WAITING_FOR_CONFIRM: "Check the amount, then press Enter to confirm",
    Screen.WAITING_FOR_CARD: "Tap, swipe or scan",
    Screen.READING: "Reading card...",
    Screen.AUTHORIZING: "Authorizing...",
}

# One order on the checkout (``cloud.status_rules``): its order screens in the
# agent's order (a card read may be retried, so they share a step), then one
# result for good.
ORDER_ON_SCREEN: Ladder[str] = Ladder(
    steps=(frozenset(str(s) for s in ORDER_SCREENS),), finals=frozenset(OUTCOME_TITLES)
)
_SETTLED_KEPT = 64  # orders whose result is remembered (oldest forgotten first)

MQTT_LABELS = {
    "connected": "connected",
    "connecting": "connecting...",
    "disconnected": "disconnected",
}
GATEWAY_LABELS = {"ok": "ok", "unreachable": "unreachable", "unknown": "not checked yet"}

_LONG_DIGITS = re.compile(r"\d(?:[ -]?\d){11,}")


def items_width(items: list[tuple[str, str, bool]]) -> int:
    """Cells of ``label state`` items joined by two spaces, as the status bar draws them."""
    return sum(len(label) + 1 + len(state) for label, state, _ in items) + 2 * max(
        len(items) - 1, 0
    )


def mask_digits(text: str) -> str:
    """Mask every run of 12 or more digits (spaces or dashes allowed between)
    to its first 6 and last 4 digits."""

    def repl(m: re.Match[str]) -> str:
        digits = re.sub(r"\D", "", m.group(0))
        return digits[:6] + "*" * (len(digits) - 10) + digits[-4:]

    return _LONG_DIGITS.sub(repl, text)


def format_amount(amount: str) -> str:
    """``1234567.50`` -> ``1,234,567.50`` (the decimals as the agent sent them)."""
    whole, dot, frac = amount.partition(".")
    return f"{int(whole):,}{dot}{frac}" if whole.isdigit() else amount


def countdown_text(expires_at: int, now_ms: int) -> str:
    """``Expires in M:SS`` (rounded up: 0:00 is shown only once it has passed)."""
    if not expires_at:
        return ""
    left_ms = expires_at - now_ms
    if left_ms <= 0:
        return "Expired"
    left = -(-left_ms // 1000)
    return f"Expires in {left // 60}:{left % 60:02d}"


def methods_text(methods: tuple[str, ...]) -> str:
    names = {"card": "Card: tap or swipe", "wallet": "Wallet: scan the QR code"}
    shown = [names.get(m, m) for m in methods]
    return "Accepted   " + "   |   ".join(shown) if shown else ""


def screen_verdict(settled: str | None, event: bp.ScreenEvent) -> Verdict:
    """What ``event`` does to the order it shows, given the outcome already
    shown for that order (None: none yet). An event without an order, or
    showing none of its states, moves nothing back: MOVE."""
    if event.order is None:
        return Verdict.MOVE
    if event.screen is Screen.RESULT and event.result is not None:
        return ORDER_ON_SCREEN.judge(settled, event.result.outcome)
    if event.screen in ORDER_SCREENS:
        return ORDER_ON_SCREEN.judge(settled, str(event.screen))
    return Verdict.MOVE


def spinner_frame(now_ms: int) -> str:
    """An ASCII spinner frame (console fonts have these glyphs)."""
    return "|/-\\"[(now_ms // 125) % 4]


@dataclass
class CheckoutView:
    """Everything the agent told us, folded. ``apply`` takes each event."""

    store: str = ""
    sn: str = ""
    agent_up: bool = False
    ever_connected: bool = False
    lost_reason: str = ""
    mqtt: str = "unknown"
    mqtt_reason: str = ""
    gateway: str = "unknown"
    gateway_reason: str = ""
    readers: dict[str, str] = field(default_factory=dict)
    queue: int = 0
    printer: bp.PrinterEvent | None = None  # None: the agent has not said (none configured)
    screen: bp.ScreenEvent | None = None
    # States never regress: the last ``seq`` applied on this connection, and
    # the outcome shown for each recent order (trans_no -> outcome).
    last_seq: int = 0
    settled: dict[str, str] = field(default_factory=dict)

    def apply(self, event: bp.Event | AgentLost) -> None:
        if isinstance(event, AgentLost):
            self.agent_up = False
            self.lost_reason = event.reason
            return
        if isinstance(event, bp.Reply):
            return
        if isinstance(event, bp.HelloEvent):
            # A new connection: its snapshot is the agent's state now, as a
            # restarted UI would take it; the rules start again from it.
            self.last_seq = event.seq
            self.settled.clear()
        elif event.seq and event.seq <= self.last_seq:
            kind = type(event).__name__
            log.warning("late %s (seq %d after %d) dropped", kind, event.seq, self.last_seq)
            return
        self.last_seq = max(self.last_seq, event.seq)
        self.agent_up = True
        self.ever_connected = True
        self._take(event)

    def _take(self, event: bp.Event) -> None:
        if isinstance(event, bp.HelloEvent):
            self.store, self.sn = event.terminal.store_name, event.terminal.sn
            snap = event.snapshot
            self._show(snap.screen)
            self.printer = snap.printer
            for part in (snap.connection, snap.readers, snap.queue):
                if part is not None:
                    self._take(part)
        elif isinstance(event, bp.ScreenEvent):
            self._show(event)
        elif isinstance(event, bp.ConnectionEvent):
            self.mqtt, self.mqtt_reason = event.mqtt, event.mqtt_reason
            self.gateway, self.gateway_reason = event.gateway, event.gateway_reason
        elif isinstance(event, bp.ReadersEvent):
            self.readers = dict(event.readers)
        elif isinstance(event, bp.QueueEvent):
            self.queue = event.waiting
        elif isinstance(event, bp.PrinterEvent):
            self.printer = event

    def _show(self, event: bp.ScreenEvent | None) -> None:
        """Take ``event`` as the screen unless it would move its order's
        result back or to another one (``screen_verdict``)."""
        if event is None or event.order is None:
            self.screen = event
            return
        trans_no = event.order.trans_no
        settled = self.settled.get(trans_no)
        verdict = screen_verdict(settled, event)
        if verdict in (Verdict.STALE, Verdict.CONFLICT):
            shown = event.result.outcome if event.result is not None else str(event.screen)
            log.log(
                logging.ERROR if verdict is Verdict.CONFLICT else logging.WARNING,
                "%s: order %s was shown %s; refusing to show %s",
                verdict.name,
                trans_no,
                settled,
                shown,
            )
            return
        self.screen = event
        if settled is None and event.result is not None and event.screen is Screen.RESULT:
            self.settled[trans_no] = event.result.outcome
            while len(self.settled) > _SETTLED_KEPT:
                del self.settled[next(iter(self.settled))]

    # ------------------------------------------------------------ state

    @property
    def screen_name(self) -> Screen:
        return self.screen.screen if self.screen else Screen.IDLE

    @property
    def order(self) -> bp.OrderInfo | None:
        return self.screen.order if self.screen else None

    @property
    def phase(self) -> Phase:
        if not self.agent_up:
            return "lost" if self.ever_connected or self.lost_reason else "connecting"
        name = self.screen_name
        if name in ORDER_SCREENS and self.order is not None:
            return "order"
        if name is Screen.RESULT and self.screen is not None and self.screen.result is not None:
            return "result"
        return "idle"

    @property
    def can_confirm(self) -> bool:
        return self.phase == "order" and self.screen_name is Screen.WAITING_FOR_CONFIRM

    @property
    def can_cancel(self) -> bool:
        return self.phase == "order" and self.screen_name is not Screen.AUTHORIZING

    @property
    def has_printer(self) -> bool:
        return self.agent_up and self.printer is not None and self.printer.state != "none"

    @property
    def busy(self) -> bool:
        """True while a payment is in progress (no setup then)."""
        return self.agent_up and self.screen_name in ORDER_SCREENS

    # ------------------------------------------------------------ texts

    def title_line(self) -> str:
        if not self.ever_connected:
            return "Sadad checkout"
        return "  ".join(
            x for x in (self.store or "Sadad checkout", self.sn and f"[{self.sn}]") if x
        )

    def connection_items(self) -> list[tuple[str, str, bool]]:
        """(label, state, healthy) for the TMS, the gateway and each reader."""
        if not self.agent_up:
            return []
        items = [
            ("TMS", MQTT_LABELS.get(self.mqtt, self.mqtt), self.mqtt == "connected"),
            (
                "Gateway",
                GATEWAY_LABELS.get(self.gateway, self.gateway),
                self.gateway != "unreachable",
            ),
        ]
        for name, state in self.readers.items():
            items.append((name, state, state == "ready"))
        printer = self.printer_item()
        return [*items, printer] if printer else items

    def printer_item(self) -> tuple[str, str, bool] | None:
        """("Printer", its state, healthy), the receipts waiting counted when
        it is not ready; None when the terminal has no printer."""
        if not self.has_printer or self.printer is None:
            return None
        state, waiting = self.printer.state, self.printer.pending
        text = state.replace("_", " ")
        if state != "ready" and waiting:
            text += f" ({waiting} waiting)"
        return ("Printer", text, state == "ready")

    def status_items(self, room: int) -> list[tuple[str, str, bool]]:
        """``connection_items()`` for a line of ``room`` cells: when they do not
        fit (three readers at 80 columns), the readers are summed up in one
        item, and only those not ready are still named - what a cashier must
        see of them (the idle panel lists them all)."""
        items = self.connection_items()
        if items_width(items) <= room or len(items) <= 3:
            return items
        printer = self.printer_item()
        links, readers = items[:2], items[2 : len(items) - (1 if printer else 0)]
        down = [item for item in readers if not item[2]]
        ready = len(readers) - len(down)
        summary = f"{ready} ready" if not down else f"{ready}/{len(readers)}"
        # A ready printer is left out when room is short; a fault never is,
        # and then the readers' summary gives way if all of them are ready.
        fault = (
            [(printer[0], self.printer.state.replace("_", " "), False)]
            if (printer and not printer[2] and self.printer)
            else []
        )
        compact = [*links, ("Readers", summary, not down), *down, *fault]
        if fault and not down and items_width(compact) > room:
            return [*links, *fault]
        return compact

    def link_reason(self, label: str) -> str:
        """Why the TMS or the gateway link is down, as the agent said (or "")."""
        if label == "TMS" and self.mqtt != "connected":
            return mask_digits(self.mqtt_reason)
        if label == "Gateway" and self.gateway == "unreachable":
            return mask_digits(self.gateway_reason)
        return ""

    def order_line(self) -> str:
        order = self.order
        if order is None:
            return ""
        kind = "Sale" if order.trans_type == "sale" else order.trans_type.capitalize()
        return f"{kind}  -  Order {order.merchant_order_no}"

    def description(self) -> str:
        order = self.order
        return mask_digits(order.description) if order else ""

    def prompt(self) -> str:
        s = self.screen
        if s is None or self.phase != "order":
            return ""
        if s.screen is Screen.WAITING_FOR_CONFIRM:
            return DEFAULT_PROMPTS[s.screen]
        return mask_digits(s.progress or DEFAULT_PROMPTS.get(s.screen, ""))

    def in_progress(self) -> bool:
        """Reading or authorizing: show the spinner."""
        return self.phase == "order" and self.screen_name in (Screen.READING, Screen.AUTHORIZING)

    def card_line(self) -> str:
        card = self.screen.card if self.screen else None
        if card is None or not card.masked_pan:
            return ""
        return " ".join(
            x
            for x in (card.brand, card.masked_pan, card.entry_mode and f"({card.entry_mode})")
            if x
        )

    def message(self) -> str:
        return mask_digits(self.screen.message or "") if self.screen else ""

    def result(self) -> bp.ResultInfo | None:
        return self.screen.result if self.screen and self.phase == "result" else None

    def result_title(self) -> str:
        r = self.result()
        return OUTCOME_TITLES.get(r.outcome, r.outcome.upper()) if r else ""

    def result_lines(self) -> list[str]:
        """The details under the result title."""
        r = self.result()
        if r is None:
            return []
        lines: list[str] = []
        if r.outcome == "approved":
            if r.auth_code:
                lines.append(f"Auth code {mask_digits(r.auth_code)}")
            if r.masked_pan:
                lines.append(f"Card {r.masked_pan}")
        else:
            if r.reason:
                lines.append(mask_digits(r.reason))
            if r.masked_pan:
                lines.append(f"Card {r.masked_pan}")
            if r.outcome == "declined" and "another card" not in (r.reason or "").lower():
                lines.append("Please try another card")
        return lines

    def queue_line(self) -> str:
        if not self.agent_up or not self.queue:
            return ""
        return f"{self.queue} more order{'s' if self.queue > 1 else ''} waiting"
