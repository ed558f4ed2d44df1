"""The whole flow on the brokers a fleet runs on: Mosquitto, and a three-node
NATS cluster (JetStream, MQTT 3.1.1, sessions replicated on every node) with
the terminal and the TMS connected to different nodes.

The same scenarios on both (a sale; the terminal offline while pushes queue
in its session; busy; the acknowledgement lost; the broker restarted; the
cashier's cancel), each ending with every order final and consistent at the
POS, in the journal, on the checkout and in the gateway's books
(``Terminal.assert_all_settled``). Failover on the cluster (a node killed):
tests/integration/test_fleet_failover.py. The waits allow 60 s
(``fleet_rig.FAILOVER_S``).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.bridge_replies import ActionReply, reply_data
from sandbox.broker_nats import NatsCluster
from tests.integration.agent_rig import Terminal
from tests.integration.conftest import SandboxHandle
from tests.integration.fleet_rig import FAILOVER_S, event_kinds, fleet_on, fleet_terminal, pay
from tests.waiting import until

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module", params=["mosquitto", "nats"])
def fleet(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[SandboxHandle]:
    """The sandbox on a broker of each kind; its TMS on node 0."""
    with fleet_on(str(request.param), tmp_path_factory.mktemp(str(request.param))) as handle:
        yield handle


@pytest.fixture
def term(fleet: SandboxHandle, tmp_path: Path) -> Iterator[Terminal]:
    with fleet_terminal(fleet, tmp_path / "term") as t:
        yield t


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
