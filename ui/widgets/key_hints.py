"""The keys that work now, on the screen's last line.

A plain Static instead of Textual's ``Footer``: the Footer recomposes its
key widgets on every ``refresh_bindings()`` and never frees the old ones
(Textualize/textual#6666), which cost the checkout ~50 MB per 1,000 sales.
"""

from __future__ import annotations

from textual.binding import Binding
from textual.content import Content
from textual.screen import Screen
from textual.widgets import Static


def working_keys(screen: Screen[None]) -> tuple[tuple[str, str], ...]:
    """(key, what it does) for ``screen``'s bindings its ``check_action`` allows now."""
    return tuple(
        (b.key_display or b.key, b.description)
        for b in screen.BINDINGS
        if isinstance(b, Binding) and screen.check_action(b.action, ())
    )


class KeyHints(Static):
    DEFAULT_CSS = """
    KeyHints {
        dock: bottom; height: 1; width: 1fr; padding: 0 1;
        background: $footer-background; color: $footer-foreground;
    }
    """

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self._shown: tuple[tuple[str, str], ...] | None = None

    def show(self, keys: tuple[tuple[str, str], ...]) -> None:
        """``keys``: (key, what it does) pairs, in order; redrawn only on change."""
        if keys == self._shown:
            return
        self._shown = keys
        hints = [Content.styled(key, "bold") + Content(f" {label}") for key, label in keys]
        self.update(Content("   ").join(hints))
