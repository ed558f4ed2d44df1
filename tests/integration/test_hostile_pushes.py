"""No bytes on the orders topic can stop a terminal, through the real broker.

A property test (hypothesis) against real processes - Mosquitto, the sandbox,
the agent with a simulated PN532: a client with no key publishes hostile
payloads of every kind (not UTF-8, lone surrogates, nesting thousands deep,
duplicate keys, wrong types, numbers out of range, whole pushes signed with
the wrong key, over the size limit, megabytes) at QoS 1 on the terminal's
orders topic, between genuine orders pushed the POS way. Every genuine order
is paid; every hostile message is acknowledged (a clean restart of the agent
brings none back) and reported (the ``rejected`` events, with the counts they
carry, add up to what was sent, under terminal-made message_ids); nothing of
them reaches the journal's ``pushes`` and no card number the journal or the
log; the agent never stalls. Once on MQTT 5, where the broker drops the
megabytes for the terminal (the Maximum Packet Size it announced), and once
with the agent on 3.1.1, where the terminal itself refuses them unread.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import msgspec
import paho.mqtt.client as mqtt
import pytest
import tomlkit
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from paho.mqtt.enums import CallbackAPIVersion

from cloud import envelope, topics
from cloud import messages as m
from cloud.messages import MAX_PUSH_BYTES
from cloud.signing import generate_key_pem
from tests.integration.agent_rig import Terminal, scan_for_card_data
from tests.integration.conftest import SandboxHandle
from tests.waiting import until

pytestmark = pytest.mark.timeout(240)

FIXED: list[bytes] = [
    b'{"message_id": "\xff\xfe"}',
    '{"message_id": "x"}'.encode("utf-16"),
    b'{"message_id": "m\\ud800x", "topic": "ecrhub.pay.order"}',
    b'{"\\udfff": 1}',
    b"[" * 20_000 + b"]" * 20_000,
    b'{"a":' * 950 + b"1" + b"}" * 950,
    b'{"message_id": "a", "message_id": "b", "sign": "eA=="}',
    b'{"topic": 1, "message_id": [], "biz_data": {}, "sign": 2}',
    b'{"message_id": "m", "x": 1e999999999}',
    b'{"message_id": "m", "x": ' + b"9" * 5000 + b"}",
    b'{"message_id": "m", "x": NaN}',
    b"",
    b'{"message_id": "4761739001010010", "sign": "eA=="}',
    b'{"message_id": "\\u001b[2J", "sign": "eA==", "topic": "ecrhub.pay.order", "biz_data": "{}"}',
]
MEGABYTES = b'{"message_id": "' + b"A" * (2 * 1024 * 1024) + b'"}'
# Over the push limit but under the packet size announced under MQTT 5: the
# broker delivers it either way and the terminal refuses it unread.
JUST_OVER = b'{"message_id": "' + b"B" * MAX_PUSH_BYTES + b'"}'


def forged(sn: str) -> bytes:
    """A whole push, well formed, for this terminal, signed with a key of the
    attacker's own (the POS's money amount, a genuine-looking message_id)."""
    biz = m.PushOrder(
        trans_no=f"EVIL{uuid.uuid4().hex[:8]}",
        merchant_no="M0001",
        terminal_sn=sn,
        merchant_order_no="EVIL-1",
        price_currency="QAR",
        order_amount=Decimal("0.01"),
        trans_type=m.TransType.SALE,
        expires_at=envelope.now_ms() + 60_000,
    )
    push = envelope.build_push(m.PushTopic.PAY_ORDER, biz, app_id="gw", private_key=ATTACKER_KEY)
    return msgspec.json.encode(push)


ATTACKER_KEY, _ = generate_key_pem()

hostile = st.one_of(
    st.sampled_from(FIXED),
    st.binary(max_size=300),
    st.text(max_size=200).map(lambda t: t.encode("utf-8", "surrogatepass")),
    st.dictionaries(
        st.sampled_from(["message_id", "topic", "sign", "biz_data", "app_id", "timestamp"]),
        st.one_of(st.text(max_size=30), st.integers(), st.none(), st.booleans()),
    ).map(lambda d: json.dumps(d).encode()),
)


class Attacker:
    """A client with no key and no account of its own, publishing at QoS 1."""

    def __init__(self, sandbox: SandboxHandle, sn: str) -> None:
        self.topic = topics.orders_topic(sn)
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=f"evil-{uuid.uuid4().hex[:8]}"
        )
        self.client.connect(sandbox.mqtt_host, sandbox.mqtt_port)
        self.client.loop_start()
        self.sent = 0

    def send(self, payload: bytes) -> None:
        info = self.client.publish(self.topic, payload, qos=1)
        info.wait_for_publish(timeout=10)
        assert info.is_published()
        self.sent += 1

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def reported(term: Terminal) -> int:
    """Rejections the gateway heard of: each event, and the ones it says it stands for."""
    total = 0
    for event in term.events(event="rejected"):
        match = re.search(r"\(\+(\d+) more rejected", event["reason"] or "")
        total += 1 + (int(match.group(1)) if match else 0)
    return total


@pytest.fixture(params=["5", "3.1.1"])
def term(
    request: pytest.FixtureRequest, sandbox: SandboxHandle, tmp_path: Path
) -> Iterator[Terminal]:
    protocol = str(request.param)
    t = Terminal(sandbox, f"EVIL{uuid.uuid4().hex[:6].upper()}", tmp_path / "t", readers=("nfc",))
    try:
        doc = tomlkit.parse(t.config.read_text())
        table = doc["mqtt"]
        assert isinstance(table, tomlkit.items.Table)
        table["protocol"] = protocol
        t.config.write_text(tomlkit.dumps(doc))
        t.start_agent()
        yield t
    finally:
        t.close()


def test_hostile_payloads_between_genuine_orders(term: Terminal) -> None:
    attacker = Attacker(term.sandbox, term.sn)
    protocol_5 = "(MQTT 5)" in term.log_text()
    try:
        # Over the size limit first, while the rate limiter has its burst: each
        # is reported with its own reason. Megabytes: over the packet size
        # announced under MQTT 5 (the broker drops it, for this client only:
        # never delivered, never redelivered) or refused unread (3.1.1).
        attacker.send(MEGABYTES)
        attacker.send(JUST_OVER)
        assert len(MEGABYTES) > MAX_PUSH_BYTES
        dropped_by_broker = 1 if protocol_5 else 0
        until(lambda: reported(term) == attacker.sent - dropped_by_broker, timeout=20)
        too_large = [e for e in term.events(event="rejected") if e["reason"] == "too_large"]
        assert len(too_large) == 2 - dropped_by_broker

        @settings(
            max_examples=4,
            deadline=None,
            derandomize=True,
            suppress_health_check=list(HealthCheck),
        )
        @given(st.lists(hostile, min_size=2, max_size=6))
        def genuine_order_after(payloads: list[bytes]) -> None:
            for payload in payloads:
                attacker.send(payload)
            attacker.send(forged(term.sn))
            order = term.push("12.30")
            term.screens.wait_screen("WAITING_FOR_CARD", order.trans_no, timeout=30)
            term.present("nfc", "present visa", order)
            assert term.settled(order).phase == "APPROVED"

        genuine_order_after()

        # Every hostile message the terminal got was reported (the rate
        # limiter's last report comes within its interval), never under a
        # message_id of the sender's choosing.
        expected = attacker.sent - dropped_by_broker
        until(lambda: reported(term) == expected, timeout=20)
        assert all(e["message_id"].startswith("rejected-") for e in term.events(event="rejected"))
        # Only genuine pushes in the journal's pushes; no card number anywhere.
        assert term.journal_count("SELECT COUNT(*) FROM pushes WHERE outcome LIKE 'rejected%'") == 0
        wal = term.journal_path.with_name(term.journal_path.name + "-wal")
        assert scan_for_card_data(term.journal_path, wal, term.log_path) == []

        # ... and acknowledged: a clean restart of the agent brings none back.
        before = reported(term)
        mark = len(term.log_text())
        term.stop_agent()
        term.start_agent()
        order = term.push("8.00")
        term.screens.wait_screen("WAITING_FOR_CARD", order.trans_no, timeout=30)
        term.present("nfc", "present visa", order)
        assert term.settled(order).phase == "APPROVED"
        assert reported(term) == before
        assert "rejected" not in term.log_text()[mark:]
        term.assert_all_settled()
    finally:
        attacker.close()
