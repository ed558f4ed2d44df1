"""Failover on a three-node NATS cluster (JetStream, MQTT 3.1.1, sessions
replicated on every node): the node the terminal is on is killed while a
push is in flight, and while pushes wait in its session; every order is paid
once, none lost, none shown twice.

A new cluster for each (the sandbox and its TMS with it), discarded with
the node still dead: after a node was killed and brought back,
nats-server 2.9.10 was seen here to leave it cut off from the stream groups
for minutes ("has NO quorum, stalled", its stream replicas without a
leader) and to elect consumer leaders on it that delivered nothing (CI: the
next test's push never shown). Those are the broker's to fix; what is
tested here is the terminal's failover, once per cluster.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from sandbox.broker_nats import NatsCluster
from tests.integration.agent_rig import Terminal
from tests.integration.conftest import SandboxHandle
from tests.integration.fleet_rig import FAILOVER_S, event_kinds, fleet_on, fleet_terminal, pay
from tests.waiting import until

pytestmark = pytest.mark.timeout(180)


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[SandboxHandle]:
    """The sandbox on a new NATS cluster; its TMS on node 0."""
    with fleet_on("nats", tmp_path / "fleet") as handle:
        yield handle


@pytest.fixture
def term(fleet: SandboxHandle, tmp_path: Path) -> Iterator[Terminal]:
    with fleet_terminal(fleet, tmp_path / "term") as t:
        yield t


def _kill_the_terminals_node(term: Terminal, cluster: NatsCluster) -> int:
    node = cluster.urls.index(term.broker_node())
    cluster.kill(node)
    return node


def test_node_killed_while_a_push_is_in_flight(term: Terminal, fleet: SandboxHandle) -> None:
    cluster = fleet.broker
    assert isinstance(cluster, NatsCluster)
    order = term.push("10.00")
    dead = _kill_the_terminals_node(term, cluster)  # the push is on its way to it
    pay(term, order)
    assert term.settled(order, timeout=FAILOVER_S).phase == "APPROVED"
    # Its events go out once it is on another node.
    until(lambda: "paid" in event_kinds(term, order), timeout=FAILOVER_S)
    assert term.broker_node() != cluster.urls[dead]
    assert term.screens.results(order.trans_no) == ["approved"]  # shown once
    term.assert_all_settled()


def test_node_killed_while_pushes_wait_in_the_session(term: Terminal, fleet: SandboxHandle) -> None:
    cluster = fleet.broker
    assert isinstance(cluster, NatsCluster)
    node = term.broker_node()
    term.stop_agent()  # its session (subscription, queue) stays in the cluster
    queued = [term.push("10.10"), term.push("10.20")]
    cluster.kill(cluster.urls.index(node))
    term.start_agent(connected=FAILOVER_S)  # ready may come before: the dead node is tried first
    assert term.broker_node() != node
    for order in queued:
        pay(term, order)
        assert term.settled(order, timeout=FAILOVER_S).phase == "APPROVED"
    for order in queued:
        assert term.screens.results(order.trans_no) == ["approved"]
        assert len(term.charges(order.trans_no)) == 1
    term.assert_all_settled()
