"""Between orders: ready, the store, and what the terminal is connected to."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import Center, Vertical
from textual.content import Content
from textual.widgets import Static

from ui.view import CheckoutView


class IdlePanel(Vertical):
    """``show(view, hint)``: one line per link, green when healthy."""

    def compose(self) -> ComposeResult:
        yield Static(id="idle-title")
        yield Static(id="idle-store")
        with Center():
            yield Static(id="idle-links")
        yield Static(id="idle-hint")

    def show(self, view: CheckoutView, hint: str = "") -> None:
        self.query_one("#idle-title", Static).update(Content("Ready for the next order"))
        store = view.store or "Sadad checkout"
        self.query_one("#idle-store", Static).update(
            Content(f"{store}   -   terminal {view.sn}" if view.sn else store)
        )
        lines: list[Content] = []
        for label, state, healthy in view.connection_items():
            name = {"TMS": "TMS (MQTT)", "Gateway": "Gateway"}.get(label, f"Reader {label}")
            style = "$text-success" if healthy else "$text-error"
            line = Content.assemble(f"{name:<14}", (state, f"bold {style}"))
            reason = view.link_reason(label)
            if reason:
                short = reason if len(reason) <= 44 else reason[:43] + "~"
                line = Content.assemble(line, (f"  {short}", "$text-muted"))
            lines.append(line)
        if not view.readers:
            lines.append(Content.assemble(f"{'Readers':<14}", ("none configured", "$text-warning")))
        self.query_one("#idle-links", Static).update(Content("\n").join(lines))
        hint_line = self.query_one("#idle-hint", Static)
        hint_line.update(Content(hint))
        hint_line.display = bool(hint)
