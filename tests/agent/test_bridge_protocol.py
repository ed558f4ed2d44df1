"""The bridge's sans-I/O codec: every message round-trips, bad lines are
reported in place and never cost the stream its sync."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import msgspec
import pytest

from agent.bridge_protocol import (
    INTENT_NAMES,
    MAX_LINE,
    BridgeProtocolError,
    CancelIntent,
    CardInfo,
    CheckConnectionIntent,
    CheckReaderIntent,
    ConfirmIntent,
    ConnectionEvent,
    EnterSetupIntent,
    Event,
    HelloEvent,
    HistoryIntent,
    Intent,
    LeaveSetupIntent,
    LineDecoder,
    OrderInfo,
    PrinterEvent,
    QueueEvent,
    ReadersEvent,
    ReadSetupIntent,
    ReloadIntent,
    Reply,
    ReprintIntent,
    ResultInfo,
    SaveSetupIntent,
    Screen,
    ScreenEvent,
    Snapshot,
    StatusIntent,
    TerminalInfo,
    UnlockSetupIntent,
    encode_line,
    intent_from_args,
)

ORDER = OrderInfo(
    trans_no="T20240101000001",
    merchant_order_no="M-42",
    amount="12.50",
    currency="USD",
    description="2 coffees",
    trans_type="sale",
    methods=("card", "wallet"),
    expires_at=1_700_000_000_000,
    confirm_required=True,
)
CARD = CardInfo(masked_pan="411111******1111", brand="VISA", entry_mode="CONTACTLESS")
SCREEN = ScreenEvent(
    seq=3,
    screen=Screen.READING,
    order=ORDER,
    progress="Reading card...",
    card=CARD,
    message="Hold the card still",
)
RESULT = ScreenEvent(
    seq=4,
    screen=Screen.RESULT,
    order=ORDER,
    result=ResultInfo(
        outcome="approved", auth_code="A1B2C3", reason="Approved", masked_pan="411111******1111"
    ),
)
CONN = ConnectionEvent(
    seq=5, mqtt="connected", mqtt_reason="", gateway="unreachable", gateway_reason="DNS failure"
)
READERS = ReadersEvent(seq=6, readers={"nfc": "ready", "msr": "offline", "qr": "fault"})
QUEUE = QueueEvent(seq=7, waiting=2)
HELLO = HelloEvent(
    seq=1,
    terminal=TerminalInfo(sn="PP35271234567", store_name="Corner Café"),
    snapshot=Snapshot(screen=SCREEN, connection=CONN, readers=READERS, queue=QUEUE),
)
REPLY = Reply(seq=8, id="abc-1", ok=True, data={"screen": "IDLE", "nested": {"n": [1, 2]}})
REPLY_ERR = Reply(seq=9, id="abc-2", ok=False, error="no order to confirm")

EVENTS: list[Event] = [
    HELLO,
    HelloEvent(terminal=TerminalInfo(sn="X")),
    SCREEN,
    RESULT,
    ScreenEvent(screen=Screen.IDLE),
    CONN,
    READERS,
    QUEUE,
    PrinterEvent(state="paper_out", pending=2),
    REPLY,
    REPLY_ERR,
]
INTENTS: list[Intent] = [
    ConfirmIntent(id="1", trans_no="T1"),
    ConfirmIntent(id="1b"),
    CancelIntent(id="2", trans_no="T1"),
    ReloadIntent(id="3"),
    CheckConnectionIntent(id="4"),
    CheckReaderIntent(id="5", reader="nfc"),
    CheckReaderIntent(id="5b"),
    StatusIntent(id="6"),
    EnterSetupIntent(id="7"),
    LeaveSetupIntent(id="8"),
    UnlockSetupIntent(id="9", pin="246810"),
    ReadSetupIntent(id="10"),
    SaveSetupIntent(id="11", broker_url="mqtts://b", readers=(("nfc", "pn532:/dev/x"),)),
    HistoryIntent(id="12", limit=10),
    ReprintIntent(id="13", trans_no="T1"),
    ReprintIntent(id="13b"),
]


def test_a_pin_is_never_in_a_repr() -> None:
    assert "246810" not in repr(UnlockSetupIntent(id="9", pin="246810"))


@pytest.mark.parametrize("event", EVENTS, ids=lambda e: type(e).__name__)
def test_every_event_round_trips(event: Event) -> None:
    line = encode_line(event)
    assert line.endswith(b"\n")
    assert line.count(b"\n") == 1
    assert LineDecoder.for_events().feed(line) == [event]


@pytest.mark.parametrize("intent", INTENTS, ids=lambda i: f"{type(i).__name__}-{i.id}")
def test_every_intent_round_trips(intent: Intent) -> None:
    assert LineDecoder.for_intents().feed(encode_line(intent)) == [intent]


def test_every_intent_name_has_a_type() -> None:
    tags = {type(i).__struct_config__.tag for i in INTENTS}
    assert tags == set(INTENT_NAMES)
    for name in INTENT_NAMES:
        args = {"pin": "1234"} if name == "unlock_setup" else {}
        assert intent_from_args(name, "x", **args).id == "x"


def test_wire_shape_matches_the_documented_protocol() -> None:
    obj = json.loads(encode_line(HELLO))
    assert obj["type"] == "hello"
    assert obj["version"] == 1
    assert obj["terminal"] == {"sn": "PP35271234567", "store_name": "Corner Café"}
    screen = obj["snapshot"]["screen"]
    assert screen["type"] == "screen"
    assert screen["screen"] == "READING"
    assert screen["order"]["amount"] == "12.50"
    assert screen["order"]["methods"] == ["card", "wallet"]
    assert screen["card"] == {
        "masked_pan": "411111******1111",
        "brand": "VISA",
        "entry_mode": "CONTACTLESS",
    }
    assert screen["result"] is None
    assert obj["snapshot"]["readers"]["readers"] == {
        "nfc": "ready",
        "msr": "offline",
        "qr": "fault",
    }
    assert json.loads(encode_line(REPLY_ERR)) == {
        "type": "reply",
        "seq": 9,
        "id": "abc-2",
        "ok": False,
        "data": {},
        "error": "no order to confirm",
    }
    assert json.loads(encode_line(CheckReaderIntent(id="5", reader="nfc"))) == {
        "intent": "test_reader",
        "id": "5",
        "reader": "nfc",
    }


def test_hand_written_intent_with_extra_fields_decodes() -> None:
    out = LineDecoder.for_intents().feed(b'{"intent":"cancel","id":"9","why":"customer left"}\r\n')
    assert out == [CancelIntent(id="9")]


def test_bytes_fed_one_at_a_time() -> None:
    stream = b"".join(encode_line(e) for e in EVENTS)
    decoder = LineDecoder.for_events()
    out: list[Any] = []
    for i in range(len(stream)):
        out += decoder.feed(stream[i : i + 1])
    assert out == EVENTS
    assert decoder.buffered == 0


def test_many_lines_in_one_chunk_and_blank_lines_skipped() -> None:
    stream = b"\n\n" + b"".join(encode_line(i) for i in INTENTS) + b"  \n"
    assert LineDecoder.for_intents().feed(stream) == INTENTS


BAD_LINES = [
    pytest.param(b"garbage", id="garbage"),
    pytest.param(b'{"intent": "confirm", "id": ', id="truncated-json"),
    pytest.param(b"\xff\xfe\x00", id="not-utf8"),
    pytest.param(b"[1, 2, 3]", id="not-an-object"),
    pytest.param(b'{"intent": "pay_twice", "id": "7"}', id="unknown-intent"),
    pytest.param(b'{"id": "7"}', id="no-tag"),
    pytest.param(b'{"intent": "confirm"}', id="no-id"),
    pytest.param(b'{"intent": "confirm", "id": 7}', id="id-wrong-type"),
    pytest.param(b'{"intent": "test_reader", "id": "7", "reader": 3}', id="arg-wrong-type"),
]


@pytest.mark.parametrize("bad", BAD_LINES)
def test_bad_line_is_reported_and_the_next_line_decodes(bad: bytes) -> None:
    good = encode_line(StatusIntent(id="after"))
    decoder = LineDecoder.for_intents()
    out = decoder.feed(bad + b"\n" + good)
    assert len(out) == 2
    assert isinstance(out[0], BridgeProtocolError)
    assert out[1] == StatusIntent(id="after")


def test_bad_line_reports_the_id_it_carried() -> None:
    (err,) = LineDecoder.for_intents().feed(b'{"intent": "pay_twice", "id": "7"}\n')
    assert isinstance(err, BridgeProtocolError)
    assert err.msg_id == "7"
    assert "intent" in str(err)
    (err,) = LineDecoder.for_intents().feed(b"garbage\n")
    assert isinstance(err, BridgeProtocolError)
    assert err.msg_id is None


def test_unknown_event_type_is_reported() -> None:
    decoder = LineDecoder.for_events()
    out = decoder.feed(b'{"type": "telemetry", "seq": 1}\n' + encode_line(QUEUE))
    assert isinstance(out[0], BridgeProtocolError)
    assert out[1] == QUEUE


def test_over_long_line_is_reported_once_and_not_buffered() -> None:
    decoder = LineDecoder.for_intents()
    out = decoder.feed(b'{"intent": "status", "id": "' + b"x" * 10_000)
    assert out == []
    errors: list[Any] = []
    for _ in range(20):  # 200 KB more of the same line, in pieces
        errors += decoder.feed(b"x" * 10_000)
        assert decoder.buffered <= MAX_LINE
    assert len(errors) == 1
    assert isinstance(errors[0], BridgeProtocolError)
    assert "longer than" in str(errors[0])
    out = decoder.feed(b'"}\n' + encode_line(StatusIntent(id="after")))
    assert out == [StatusIntent(id="after")]


def test_over_long_line_in_a_single_chunk() -> None:
    decoder = LineDecoder.for_intents()
    long_line = b'{"intent": "status", "id": "' + b"x" * MAX_LINE + b'"}\n'
    out = decoder.feed(long_line + encode_line(StatusIntent(id="after")))
    assert len(out) == 2
    assert isinstance(out[0], BridgeProtocolError)
    assert out[1] == StatusIntent(id="after")


def test_line_of_exactly_max_bytes_decodes() -> None:
    prefix, suffix = b'{"intent":"status","id":"', b'"}'
    line = prefix + b"x" * (MAX_LINE - len(prefix) - len(suffix)) + suffix
    assert len(line) == MAX_LINE
    (msg,) = LineDecoder.for_intents().feed(line + b"\n")
    assert isinstance(msg, StatusIntent)


def test_encode_refuses_an_over_long_message() -> None:
    with pytest.raises(BridgeProtocolError, match="line limit"):
        encode_line(Reply(id="1", ok=True, data={"blob": "x" * MAX_LINE}))


def test_encode_refuses_a_value_json_cannot_carry() -> None:
    with pytest.raises(BridgeProtocolError, match="cannot encode"):
        encode_line(Reply(id="1", ok=True, data={"x": object()}))


@pytest.mark.parametrize(
    "pan", ["4111111111111111", "41111111", "4111111111**1111", "411111******11112", "abc"]
)
def test_types_hold_masked_pans_only(pan: str) -> None:
    with pytest.raises(ValueError, match="masked PAN"):
        CardInfo(masked_pan=pan)
    with pytest.raises(ValueError, match="masked PAN"):
        ResultInfo(outcome="declined", masked_pan=pan)
    line = json.dumps({"type": "screen", "screen": "READING", "card": {"masked_pan": pan}})
    (err,) = LineDecoder.for_events().feed(line.encode() + b"\n")
    assert isinstance(err, BridgeProtocolError)


def test_amount_is_a_decimal_string() -> None:
    with pytest.raises(ValueError, match="amount"):
        msgspec.structs.replace(ORDER, amount="12,50")


def test_intent_from_args_rejects_unknown_names_and_bad_args() -> None:
    assert intent_from_args("test_reader", "i", reader="qr") == CheckReaderIntent(
        id="i", reader="qr"
    )
    with pytest.raises(BridgeProtocolError, match="pay_twice"):
        intent_from_args("pay_twice", "i")
    with pytest.raises(BridgeProtocolError, match="reader"):
        intent_from_args("test_reader", "i", reader=5)


def test_protocol_module_is_sans_io() -> None:
    code = (
        "import sys, agent.bridge_protocol\n"
        # agent.deferred_imports: the package's __init__ (no I/O of its own)
        "ours = ('agent.bridge_protocol', 'agent.deferred_imports')\n"
        "bad = [m for m in sys.modules if m in ('asyncio', 'socket', 'selectors')"
        " or (m.startswith('agent.') and m not in ours)]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=30)


def test_a_history_entry_never_holds_a_full_pan() -> None:
    from agent.bridge_replies import HistoryEntry, HistoryReply, ReprintReply, reply_data

    entry = HistoryEntry(trans_no="T1", amount="12.50 QAR", masked_pan="476173******0010")
    reply = Reply(id="h", ok=True, data=msgspec.to_builtins(HistoryReply(entries=(entry,))))
    assert reply_data(reply, HistoryReply).entries == (entry,)
    assert reply_data(Reply(id="r", ok=True, data={"ok": True}), ReprintReply).ok
    with pytest.raises(ValueError, match="masked"):
        HistoryEntry(trans_no="T1", masked_pan="4761739001010010")
