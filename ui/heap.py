"""The C heap's free pages given back to the system when a sale ends.

Issue 15: with rich's text caches emptied at each sale's end
(``ui.render_caches``), the checkout still grew ~1 MB per 1,000 sales
(benchmarks/footprint.py). ``mallinfo2()`` read inside the UI over 500 sales
showed where: glibc's heap grew by 0.55 MB while the bytes in use in it
stayed flat (7.27 -> 7.42 MB); what grew was free space (0.88 -> 1.29 MB).
Each sale's drawing allocates and frees thousands of blocks too big for
Python's own allocator (over 512 bytes: Textual's strips and line lists,
rich's segment lists); the ones still alive at the end of a sale leave the
freed ones between them, and glibc gives memory back to the system only
from the top of its heap (``M_TRIM_THRESHOLD``). ``malloc_trim(0)`` also
releases every whole free page inside it (``MADV_DONTNEED``, glibc >= 2.8):
the same 500 sales then grew the UI by 0.42 MB per 1,000.

It walks the heap and gives pages back (0.4-1 ms here, on a heap of that
size with freed pages in it), so it runs where nobody waits: once the
checkout's idle screen is drawn. Where the C library has no
``malloc_trim`` (musl), ``release_free_heap`` does nothing (the UI logs
that once, at its start).
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable


def _find_trim() -> Callable[[int], int] | None:
    try:
        fn = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_size_t]
    fn.restype = ctypes.c_int
    return fn


_TRIM = _find_trim()  # found once, when the UI starts


def can_release() -> bool:
    """Whether this C library can give free heap pages back (glibc)."""
    return _TRIM is not None


def release_free_heap() -> bool:
    """Give the heap's whole free pages back to the system; True if any were."""
    if _TRIM is None:
        return False
    return bool(_TRIM(0))
