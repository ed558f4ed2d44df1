"""What the checkout shows, computed from the agent's events. Pure.

``CheckoutView`` folds bridge events (hello, screen, connection, readers,
queue, AgentLost) into the texts the widgets display, so the rules - the
amount with its currency's decimals, the countdown, the result wording -
are tested without a terminal.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from agent import bridge_protocol as bp
from ui.bridge_client import AgentLost

OUTCOME_TITLES = {
    "approved": "APPROVED",
    "declined": "DECLINED",
    "cancelled": "CANCELLED",
    "closed": "CLOSED BY THE POS",
    "expired": "EXPIRED",
    "error": "NOT COMPLETED",
}


@dataclass
class CheckoutView:
    store: str = ""
    sn: str = ""
    agent_up: bool = False
    agent_reason: str = "connecting to the agent..."
    mqtt: str = "unknown"
    gateway: str = "unknown"
    readers: dict[str, str] = field(default_factory=dict)
    queue: int = 0
    screen: bp.ScreenEvent | None = None

    def apply(self, event: bp.Event | AgentLost) -> None:
        if isinstance(event, AgentLost):
            self.agent_up = False
            self.agent_reason = f"Agent not running - reconnecting ({event.reason})"
            return
        self.agent_up = True
        if isinstance(event, bp.HelloEvent):
            self.store, self.sn = event.terminal.store_name, event.terminal.sn
            snap = event.snapshot
            for part in (snap.connection, snap.readers, snap.queue, snap.screen):
                if part is not None:
                    self.apply(part)
        elif isinstance(event, bp.ScreenEvent):
            self.screen = event
        elif isinstance(event, bp.ConnectionEvent):
            self.mqtt, self.gateway = event.mqtt, event.gateway
        elif isinstance(event, bp.ReadersEvent):
            self.readers = dict(event.readers)
        elif isinstance(event, bp.QueueEvent):
            self.queue = event.waiting

    @property
    def screen_name(self) -> str:
        return self.screen.screen.value if self.screen else "IDLE"

    def status_line(self) -> str:
        if not self.agent_up:
            return self.agent_reason
        readers = " ".join(f"{k}:{v}" for k, v in self.readers.items()) or "no readers"
        return f"{self.store} | {self.sn} | TMS {self.mqtt} | gateway {self.gateway} | {readers}"

    def amount(self) -> str:
        order = self.screen.order if self.screen else None
        return f"{order.amount} {order.currency}" if order else ""

    def order_line(self) -> str:
        order = self.screen.order if self.screen else None
        if order is None:
            return ""
        kind = "" if order.trans_type == "sale" else f"{order.trans_type.upper()}  "
        text = f"{kind}Order {order.merchant_order_no}"
        return text + (f"  -  {order.description}" if order.description else "")

    def countdown(self, now_ms: int) -> str:
        order = self.screen.order if self.screen else None
        if order is None or not order.expires_at or self.screen_name == "RESULT":
            return ""
        left = max(0, (order.expires_at - now_ms) // 1000)
        return f"expires in {left // 60}:{left % 60:02d}"

    def prompt(self) -> str:
        s = self.screen
        if s is None or s.screen.value == "IDLE":
            return "Ready" if self.agent_up else ""
        if s.screen.value == "WAITING_FOR_CONFIRM":
            return "Confirm the amount: Enter to confirm, Esc to cancel"
        if s.screen.value == "RESULT" and s.result is not None:
            r = s.result
            title = OUTCOME_TITLES.get(r.outcome, r.outcome.upper())
            details = [
                x
                for x in (r.masked_pan, f"auth {r.auth_code}" if r.auth_code else None, r.reason)
                if x
            ]
            return f"{title}  " + "  ".join(details)
        card = s.card.masked_pan if s.card and s.card.masked_pan else ""
        return " ".join(x for x in (s.progress or "", card) if x)

    def message(self) -> str:
        return (self.screen.message or "") if self.screen else ""

    def queue_line(self) -> str:
        return f"{self.queue} more order(s) waiting" if self.queue else ""
