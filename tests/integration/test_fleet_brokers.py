"""The whole flow on the brokers a fleet runs on: Mosquitto, and a three-node
NATS cluster (JetStream, MQTT 3.1.1, sessions replicated on every node) with
the terminal and the TMS connected to different nodes.

The same scenarios on both (a sale; the terminal offline while pushes queue
in its session; busy; the acknowledgement lost; the broker restarted; the
cashier's cancel), each ending with every order final and consistent at the
POS, in the journal, on the checkout and in the gateway's books
(``Terminal.assert_all_settled``). Then failover on the cluster: the node the
terminal is on is killed while a push is in flight, and while pushes wait in
its session; every order is paid once, none lost, none shown twice.

NATS is slow to fail over (docs/operations.md; brokers.md measured CONNACKs
and queued deliveries after a node loss taking up to ~20 s while JetStream
re-elects the leaders that lived on the dead node): the waits here allow 60 s.
"""

from __future__ import annotations

import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.bridge_replies import ActionReply, reply_data
from sandbox.broker_nats import NatsCluster
from tests.integration.agent_rig import Order, Terminal
from tests.integration.conftest import (
    REPO,
    SandboxHandle,
    running_sandbox,
    started_broker,
)
from tests.waiting import until

pytestmark = pytest.mark.timeout(180)

FAILOVER_S = 60.0


@pytest.fixture(scope="module", params=["mosquitto", "nats"])
def fleet(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[SandboxHandle]:
    """The sandbox on a broker of each kind; its TMS on node 0."""
    root = tmp_path_factory.mktemp(str(request.param))
    with (
        started_broker(str(request.param), root) as broker,
        running_sandbox(root / "sandbox", broker) as handle,
    ):
        yield handle


def nodes(fleet: SandboxHandle) -> tuple[str, ...]:
    """The broker URLs a terminal tries: on the cluster, another node than the
    TMS's first (and the TMS's last)."""
    broker = fleet.broker
    if isinstance(broker, NatsCluster):
        urls = broker.urls
        return (*urls[1:], urls[0])
    return (fleet.mqtt_url,)


@pytest.fixture
def term(fleet: SandboxHandle, tmp_path: Path) -> Iterator[Terminal]:
    t = Terminal(
        fleet,
        "FL" + uuid.uuid4().hex[:8].upper(),
        tmp_path / "term",
        readers=("nfc",),
        mqtt_urls=nodes(fleet),
    )
    try:
        t.start_agent(connected=FAILOVER_S)  # a push before its first SUBACK would be lost
        yield t
    finally:
        t.close()


def pay(term: Terminal, order: Order) -> None:
    term.screens.wait_screen("WAITING_FOR_CARD", order.trans_no, timeout=FAILOVER_S)
    term.present("nfc", "present visa", order)


def fault(term: Terminal, *args: str) -> None:
    cmd = [sys.executable, "-m", "sandbox.cli", "fault", "--data", str(term.sandbox.data_dir)]
    done = subprocess.run([*cmd, "--terminal", term.sn, *args], cwd=REPO, capture_output=True)
    assert done.returncode == 0, done.stderr.decode()


def event_kinds(term: Terminal, order: Order) -> list[str]:
    return [str(e["event"]) for e in term.events(message_id=order.message_id)]


# ---------------------------------------------------------------- on both brokers


def test_sale(term: Terminal, fleet: SandboxHandle) -> None:
    if isinstance(fleet.broker, NatsCluster):
        assert term.broker_node() != fleet.mqtt_url  # the terminal and the TMS: two nodes
    order = term.push("12.30")
    pay(term, order)
    assert term.settled(order).phase == "APPROVED"
    until(lambda: "paid" in event_kinds(term, order), timeout=FAILOVER_S)
    assert event_kinds(term, order) == ["received", "displayed", "paid"]
    term.assert_all_settled()


def test_offline_terminal_gets_its_queued_pushes(term: Terminal) -> None:
    term.stop_agent()
    first, second = term.push("7.00"), term.push("7.10")
    assert not first.terminal_online
    term.start_agent()
    for order in (first, second):  # FIFO, each once
        pay(term, order)
        assert term.settled(order).phase == "APPROVED"
    term.assert_all_settled()


def test_busy_terminal_queues_and_pays_both(term: Terminal) -> None:
    on_screen = term.push("8.00")
    term.screens.wait_screen("WAITING_FOR_CARD", on_screen.trans_no, timeout=FAILOVER_S)
    waiting = term.push("8.10")
    until(lambda: term.events(message_id=waiting.message_id, event="busy"), timeout=30)
    for order in (on_screen, waiting):
        pay(term, order)
        assert term.settled(order).phase == "APPROVED"
    term.assert_all_settled()


def test_acknowledgement_lost_is_processed_once(term: Terminal) -> None:
    order = term.push("9.97")  # .97: the received event dropped, the push sent again
    pay(term, order)
    assert term.settled(order).phase == "APPROVED"
    until(lambda: "paid" in event_kinds(term, order), timeout=FAILOVER_S)
    assert term.journal_count("SELECT COUNT(*) FROM transactions") == 1
    assert len(term.charges(order.trans_no)) == 1
    term.assert_all_settled()


def test_broker_restart(term: Terminal, fleet: SandboxHandle) -> None:
    assert fleet.broker is not None
    fleet.broker.restart()  # every node of the cluster, one at a time
    order = term.push("9.10")
    pay(term, order)
    assert term.settled(order, timeout=FAILOVER_S).phase == "APPROVED"
    term.assert_all_settled()


def test_cashier_cancel(term: Terminal) -> None:
    order = term.push("9.20")
    term.screens.wait_screen("WAITING_FOR_CARD", order.trans_no, timeout=FAILOVER_S)
    assert reply_data(term.screens.request("cancel"), ActionReply).accepted
    assert term.settled(order).phase == "CANCELLED"
    term.assert_all_settled()


# ---------------------------------------------------------------- failover (the cluster)


# Failover needs a cluster: these run on the NATS one only (the same
# module-scoped fleet the scenarios above used).
ON_THE_CLUSTER = pytest.mark.parametrize("fleet", ["nats"], indirect=True)


def _kill_the_terminals_node(term: Terminal, cluster: NatsCluster) -> int:
    node = cluster.urls.index(term.broker_node())
    cluster.kill(node)
    return node


@ON_THE_CLUSTER
def test_node_killed_while_a_push_is_in_flight(term: Terminal, fleet: SandboxHandle) -> None:
    cluster = fleet.broker
    assert isinstance(cluster, NatsCluster)
    order = term.push("10.00")
    dead = _kill_the_terminals_node(term, cluster)  # the push is on its way to it
    try:
        pay(term, order)
        assert term.settled(order, timeout=FAILOVER_S).phase == "APPROVED"
        # Its events go out once it is on another node.
        until(lambda: "paid" in event_kinds(term, order), timeout=FAILOVER_S)
        assert term.broker_node() != cluster.urls[dead]
        assert term.screens.results(order.trans_no) == ["approved"]  # shown once
        term.assert_all_settled()
    finally:
        cluster.start_node(dead)


@ON_THE_CLUSTER
def test_node_killed_while_pushes_wait_in_the_session(term: Terminal, fleet: SandboxHandle) -> None:
    cluster = fleet.broker
    assert isinstance(cluster, NatsCluster)
    node = term.broker_node()
    term.stop_agent()  # its session (subscription, queue) stays in the cluster
    queued = [term.push("10.10"), term.push("10.20")]
    dead = cluster.urls.index(node)
    cluster.kill(dead)
    try:
        term.start_agent()
        assert term.broker_node() != node
        for order in queued:
            pay(term, order)
            assert term.settled(order, timeout=FAILOVER_S).phase == "APPROVED"
        for order in queued:
            assert term.screens.results(order.trans_no) == ["approved"]
            assert len(term.charges(order.trans_no)) == 1
        term.assert_all_settled()
    finally:
        cluster.start_node(dead)
