"""Unix socket paths of any length (for the bridge's server and its clients).

A ``sockaddr_un`` holds at most 107 bytes of path on Linux (unix(7)), and
a socket's directory is wherever the config puts it - a data folder under a
long temporary or home path included. ``unix_address`` yields an address
that reaches the same file: the path itself when it fits, else the path
through the directory's descriptor, ``/proc/self/fd/N/NAME`` (the kernel
resolves it like any path; the descriptor is opened ``O_PATH`` and closed
after the bind or connect). Raises ``OSError`` when the directory cannot be
opened, ``ValueError`` when even the file name does not fit.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

MAX_SUN_PATH = 107  # sizeof(sun_path) - 1 for the terminating NUL


@contextlib.contextmanager
def unix_address(path: str) -> Iterator[str]:
    if len(os.fsencode(path)) <= MAX_SUN_PATH:
        yield path
        return
    directory, name = os.path.split(path)
    fd = os.open(directory or ".", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        short = f"/proc/self/fd/{fd}/{name}"
        if len(os.fsencode(short)) > MAX_SUN_PATH:
            raise ValueError(f"socket file name too long for a Unix socket: {name!r}")
        yield short
    finally:
        os.close(fd)
