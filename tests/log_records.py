"""Capture one logger's records inside a block.

For hypothesis tests: pytest's ``caplog`` is function-scoped, so one test
function's examples would share (and keep) its records.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager


class _Collect(logging.Handler):
    def __init__(self, into: list[logging.LogRecord]) -> None:
        super().__init__(logging.DEBUG)
        self.into = into

    def emit(self, record: logging.LogRecord) -> None:
        self.into.append(record)


@contextmanager
def log_records(name: str) -> Iterator[list[logging.LogRecord]]:
    """Every record logger ``name`` emits while the block runs."""
    records: list[logging.LogRecord] = []
    handler = _Collect(records)
    logger = logging.getLogger(name)
    logger.addHandler(handler)
    try:
        yield records
    finally:
        logger.removeHandler(handler)
