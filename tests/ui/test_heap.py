"""``ui.heap``: free pages inside the C heap go back to the system.

Issue 15: the checkout's heap kept the pages each sale's drawing freed
between blocks still alive, and glibc gives back only the top of its heap.
A child process makes that shape on purpose (many 2 KB blocks, too big for
Python's own allocator; every 64th kept, the last one pinning the top), so
that the RSS it reads is its own: the freed pages stay resident until
``release_free_heap`` runs, and then they are gone.
"""

from __future__ import annotations

import json
import subprocess
import sys

from ui import heap

CHILD = """
import json, os
from ui import heap

def rss() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

blocks = [bytes(2048) for _ in range(20_000)]  # ~40 MB from malloc, not pymalloc
kept = blocks[::64] + [blocks[-1]]  # holes everywhere, the top pinned
del blocks
before = rss()
released = heap.release_free_heap()
print(json.dumps({"before": before, "after": rss(), "released": released, "kept": len(kept)}))
"""


def test_freed_pages_inside_the_heap_are_given_back() -> None:
    assert heap.can_release()  # Debian's glibc: the platform this project ships on
    out = subprocess.run(
        [sys.executable, "-c", CHILD], capture_output=True, text=True, check=True, timeout=60
    )
    got = json.loads(out.stdout)
    assert got["released"] is True
    # ~39 MB freed in holes: without the trim the RSS stays where it was.
    assert got["before"] - got["after"] > 20 * 1024 * 1024, got
