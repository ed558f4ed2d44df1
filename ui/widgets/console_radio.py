"""A radio button drawn with ASCII, for console fonts without block glyphs."""

from __future__ import annotations

from textual.content import Content
from textual.widgets import RadioButton


class ConsoleRadioButton(RadioButton):
    """``( )`` / ``(*)`` instead of half blocks and a coloured bullet."""

    @property
    def _button(self) -> Content:
        if self.value:
            return Content.assemble("(", ("*", "bold $text-success"), ")")
        return Content("( )")
