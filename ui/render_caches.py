"""The text-keyed render caches of rich, emptied when a sale ends.

Issue 15: the checkout grew with every sale. What remained after the widget
fixes (tests/ui/test_no_growth.py) was rich's global memo tables keyed by
the text drawn: every sale shows an order number, amounts, an auth code and
a time never seen before, so each sale adds entries to

- ``rich.cells.cached_cell_len`` (up to 4,096 strings, each with its lru
  node: ~1 MB when full), the width of every string Textual lays out, and
- ``rich.segment.Segment._split_cells`` (up to 16,384 segments split at a
  column, each with its text twice), every line Textual crops.

They are bounded, but they fill over the first thousands of sales (the
checkout's RSS rose ~1 MB per 1,000 sales past the first 1,000, measured by
benchmarks/footprint.py), and what they hold is a past sale's text that will
never be drawn again. ``forget_sale_text()`` empties them when the checkout
returns to idle; the idle screen's few strings come back on its next paint.
The style-keyed caches (``Style.parse``, ``Strip.render_ansi``, ...) are
bounded by the app's own styles and are left alone.

Both are private to rich (read in rich 15.0); if a release drops one,
importing this module (the UI's start) raises rather than let the checkout
grow again unnoticed (tests/ui/test_no_growth.py checks them too).
"""

from __future__ import annotations

from typing import Protocol, cast

from rich import cells, segment


class _LruCached(Protocol):
    def cache_clear(self) -> None: ...
    def cache_info(self) -> object: ...


def _text_caches() -> tuple[_LruCached, ...]:
    """The caches ``forget_sale_text`` empties. Raises RuntimeError if rich no
    longer has one of them as an lru_cache."""
    found: dict[str, object] = {
        "rich.cells.cached_cell_len": getattr(cells, "cached_cell_len", None),
        "rich.segment.Segment._split_cells": getattr(segment.Segment, "_split_cells", None),
    }
    missing = [name for name, fn in found.items() if not hasattr(fn, "cache_clear")]
    if missing:
        raise RuntimeError(
            f"rich has no lru_cache {', '.join(missing)}: ui/render_caches.py needs updating"
        )
    return tuple(cast(_LruCached, fn) for fn in found.values())


TEXT_CACHES = _text_caches()  # found once, when the UI starts (ui.app imports this)


def cached_entries() -> int:
    """How many entries the text caches hold now."""
    return sum(int(getattr(fn.cache_info(), "currsize", 0)) for fn in TEXT_CACHES)


def forget_sale_text() -> None:
    """Empty the text caches."""
    for fn in TEXT_CACHES:
        fn.cache_clear()
