"""What the fleet tests share: a sandbox on a broker of a fleet's kind
(Mosquitto, or a three-node NATS cluster with the TMS on node 0), a terminal
that prefers another node than the TMS's, and paying a pushed order.

NATS is slow to fail over (docs/operations.md; brokers.md measured CONNACKs
and queued deliveries after a node loss taking up to ~20 s while JetStream
re-elects the leaders that lived on the dead node): the waits allow 60 s.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sandbox.broker_nats import NatsCluster
from tests.integration.agent_rig import Order, Terminal
from tests.integration.conftest import SandboxHandle, running_sandbox, started_broker

FAILOVER_S = 60.0


@contextmanager
def fleet_on(kind: str, root: Path) -> Iterator[SandboxHandle]:
    """The sandbox on a broker of ``kind`` ("mosquitto" or "nats") under ``root``."""
    with started_broker(kind, root) as broker, running_sandbox(root / "sandbox", broker) as handle:
        yield handle


def broker_nodes(fleet: SandboxHandle) -> tuple[str, ...]:
    """The broker URLs a terminal tries: on the cluster, another node than the
    TMS's first (and the TMS's last)."""
    broker = fleet.broker
    if isinstance(broker, NatsCluster):
        urls = broker.urls
        return (*urls[1:], urls[0])
    return (fleet.mqtt_url,)


@contextmanager
def fleet_terminal(fleet: SandboxHandle, root: Path) -> Iterator[Terminal]:
    """A new terminal (its own SN) with a contactless reader, its agent
    running and connected: a push before a new session's first SUBACK would
    be lost, as MQTT has it."""
    t = Terminal(
        fleet,
        "FL" + uuid.uuid4().hex[:8].upper(),
        root,
        readers=("nfc",),
        mqtt_urls=broker_nodes(fleet),
    )
    try:
        t.start_agent(connected=FAILOVER_S)
        yield t
    finally:
        t.close()


def pay(term: Terminal, order: Order) -> None:
    term.screens.wait_screen("WAITING_FOR_CARD", order.trans_no, timeout=FAILOVER_S)
    term.present("nfc", "present visa", order)


def event_kinds(term: Terminal, order: Order) -> list[str]:
    return [str(e["event"]) for e in term.events(message_id=order.message_id)]
