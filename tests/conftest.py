"""Fixtures shared by every test package.

- ``broker``: a real Mosquitto (``sandbox.broker_mosquitto.MosquittoBroker``)
  on a free loopback port under ``tmp_path``, stopped after the test
  (``broker.restart()`` keeps its port and persistence).
- ``module_broker``: the same, one per test module, for module-scoped
  fixtures (a sandbox or a publisher shared by a module's tests).

Brokers with users and ACLs (``secure=True``) or a NATS cluster are made by
the tests about them. The waiting helpers are in ``tests.waiting`` (a
conftest is not imported by name).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from sandbox.broker_mosquitto import MosquittoBroker


def _running_broker(data_dir: Path) -> Iterator[MosquittoBroker]:
    # Imported here: tests that use no broker (drivers, cloud) never load the sandbox.
    from sandbox.broker_mosquitto import MosquittoBroker

    with MosquittoBroker(data_dir) as b:
        yield b


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[MosquittoBroker]:
    yield from _running_broker(tmp_path / "broker")


@pytest.fixture(scope="module")
def module_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MosquittoBroker]:
    yield from _running_broker(tmp_path_factory.mktemp("broker"))
