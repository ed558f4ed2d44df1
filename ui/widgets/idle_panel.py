"""Between orders: ready, the store, and what the terminal is connected to."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import Center, Vertical
from textual.content import Content
from textual.widgets import Static

from ui.view import CheckoutView


class IdlePanel(Vertical):
    """``show(view, hint)``: one line per link, green when healthy."""

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        # Kept, not queried on each event (ui.screens.checkout says why).
        self._title = Static(id="idle-title")
        self._store = Static(id="idle-store")
        self._links = Static(id="idle-links")
        self._hint = Static(id="idle-hint")

    def compose(self) -> ComposeResult:
        yield self._title
        yield self._store
        with Center():
            yield self._links
        yield self._hint

    def show(self, view: CheckoutView, hint: str = "") -> None:
        self._title.update(Content("Ready for the next order"))
        store = view.store or "Sadad checkout"
        self._store.update(Content(f"{store}   -   terminal {view.sn}" if view.sn else store))
        lines: list[Content] = []
        items = view.connection_items()
        names = [
            {"TMS": "TMS (MQTT)", "Gateway": "Gateway"}.get(label, f"Reader {label}")
            for label, _, _ in items
        ]
        if view.printer_item() is not None:  # the last item: not a reader
            names[-1] = "Receipt printer"
        # The names in a column two cells wider than the longest (a reader's
        # name is up to 32 characters): "Reader scanner  ready", never run together.
        column = max((len(name) for name in names), default=12) + 2
        for name, (label, state, healthy) in zip(names, items, strict=True):
            style = "$text-success" if healthy else "$text-error"
            line = Content.assemble(f"{name:<{column}}", (state, f"bold {style}"))
            reason = view.link_reason(label)
            if reason:
                short = reason if len(reason) <= 44 else reason[:43] + "~"
                line = Content.assemble(line, (f"  {short}", "$text-muted"))
            lines.append(line)
        if not view.readers:
            none = ("none configured", "$text-warning")
            lines.append(Content.assemble(f"{'Readers':<{column}}", none))
        self._links.update(Content("\n").join(lines))
        self._hint.update(Content(hint))
        self._hint.display = bool(hint)
