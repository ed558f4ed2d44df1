"""PN532 commands: the exact request bytes, every response parsed, the device's command path
(ACK, timeout + abort, NACK retransmission, stale frames, MI chaining) against SimPn532."""

from __future__ import annotations

import asyncio

import pytest

from drivers.base import CardGone, ReaderFault, ReaderOffline, ReaderTimeout
from drivers.pn532 import commands as c
from drivers.pn532.commands import Command, FirmwareVersion, ParamFlag, Status, Target
from drivers.pn532.device import WAKEUP, Pn532Device
from drivers.pn532.frames import ACK_FRAME, NACK_FRAME, encode_device, encode_host
from drivers.sim.cards import VirtualCard
from drivers.sim.pn532 import SimPn532, SimTransport


def h(text: str) -> bytes:
    return bytes.fromhex(text.replace(" ", ""))


# --- request wire table ------------------------------------------------------------------

REQUESTS = [
    (c.get_firmware_version(), "00 00 FF 02 FE D4 02 2A 00"),
    (c.sam_configuration(), "00 00 FF 05 FB D4 14 01 00 00 17 00"),
    (c.rf_configuration_max_retries(), "00 00 FF 06 FA D4 32 05 FF 01 01 F4 00"),
    (c.rf_configuration_field(False), "00 00 FF 04 FC D4 32 01 00 F9 00"),
    (c.rf_configuration_field(True), "00 00 FF 04 FC D4 32 01 01 F8 00"),
    (
        c.set_parameters(ParamFlag.fAutomaticATR_RES | ParamFlag.fAutomaticRATS),
        "00 00 FF 03 FD D4 12 14 06 00",
    ),
    (c.in_list_passive_target(), "00 00 FF 04 FC D4 4A 01 00 E1 00"),
    (
        c.in_data_exchange(1, h("00A404000E325041592E5359532E444446303100")),
        "00 00 FF 17 E9 D4 40 01 00 A4 04 00 0E 32 50 41 59 2E 53 59 53 2E 44 44 46 30 31 00 8F 00",
    ),
    (c.in_data_exchange(1, h("0102"), more=True), "00 00 FF 05 FB D4 40 41 01 02 A8 00"),
    (c.in_release(0), "00 00 FF 03 FD D4 52 00 DA 00"),
    (c.in_release(1), "00 00 FF 03 FD D4 52 01 D9 00"),
]


@pytest.mark.parametrize(("payload", "wire"), REQUESTS)
def test_request_bytes(payload: bytes, wire: str) -> None:
    assert encode_host(payload) == h(wire)


def test_builder_argument_checks() -> None:
    with pytest.raises(ValueError, match="MaxTg"):
        c.in_list_passive_target(3)
    with pytest.raises(ValueError, match="chained"):
        c.in_data_exchange(1, bytes(263))
    with pytest.raises(ValueError, match="Tg"):
        c.in_data_exchange(0, b"")
    with pytest.raises(ValueError, match="one byte"):
        c.rf_configuration_max_retries(passive_activation=256)


# --- response parsing --------------------------------------------------------------------


def test_firmware_version() -> None:
    fw = c.parse_firmware_version(h("03 32 01 06 07"))
    assert fw == FirmwareVersion(ic=0x32, ver=1, rev=6, support=7)
    assert str(fw) == "PN532v1.6"
    assert fw.protocols == ("ISO14443A", "ISO14443B", "ISO18092")
    with pytest.raises(ReaderFault, match="not 4 bytes"):
        c.parse_firmware_version(h("03 32 01"))
    with pytest.raises(ReaderFault, match="unexpected response code 0x15"):
        c.parse_firmware_version(h("15"))


def test_no_data_answers() -> None:
    c.parse_no_data(Command.SAMConfiguration, h("15"))
    c.parse_no_data(Command.RFConfiguration, h("33"))
    c.parse_no_data(Command.SetParameters, h("13"))
    with pytest.raises(ReaderFault, match="unexpected data"):
        c.parse_no_data(Command.SetParameters, h("13 00"))
    with pytest.raises(ReaderFault, match="nothing"):
        c.parse_no_data(Command.SetParameters, b"")


def test_in_list_passive_target_answers() -> None:
    assert c.parse_in_list_passive_target(h("4B 00")) == ()
    (emv,) = c.parse_in_list_passive_target(h("4B 01 01 0004 20 04 08A1B2C3 05 78807002"))
    assert emv == Target(1, h("0004"), 0x20, h("08A1B2C3"), h("0578807002"))
    assert emv.iso_dep
    assert "08A1B2C3".lower() not in repr(emv)
    (mifare,) = c.parse_in_list_passive_target(h("4B 01 01 0004 08 04 DEADBEEF"))
    assert not mifare.iso_dep
    assert mifare.ats == b""
    two = c.parse_in_list_passive_target(
        h("4B 02 01 0004 08 04 DEADBEEF 02 0044 20 07 04112233445566 03 7800")
    )
    assert [t.tg for t in two] == [1, 2]
    assert two[1].nfcid == h("04112233445566")
    assert two[1].ats == h("037800")


@pytest.mark.parametrize(
    "bad",
    [
        "4B",  # no NbTg
        "4B 03",  # more than 2 targets
        "4B 01 01 0004 20",  # truncated header
        "4B 01 01 0004 08 07 DEADBEEF",  # NFCID shorter than its length
        "4B 01 01 0004 20 04 08A1B2C3 09 7880",  # ATS shorter than TL
        "4B 01 01 0004 08 04 DEADBEEF FF",  # trailing junk
    ],
)
def test_in_list_passive_target_malformed(bad: str) -> None:
    with pytest.raises(ReaderFault, match="malformed"):
        c.parse_in_list_passive_target(h(bad))


def test_in_data_exchange_answers() -> None:
    ok = c.parse_in_data_exchange(h("41 00 9000"))
    assert (ok.more, ok.data) == (False, h("9000"))
    more = c.parse_in_data_exchange(h("41 40 6F10"))
    assert (more.more, more.data) == (True, h("6F10"))
    assert "6f10" not in repr(more).lower()
    with pytest.raises(ReaderFault, match="without status"):
        c.parse_in_data_exchange(h("41"))


@pytest.mark.parametrize(
    ("status", "kind", "text"),
    [
        (0x01, CardGone, "status 0x01 (target did not answer in time)"),
        (0x2B, CardGone, "status 0x2B (card previously activated has disappeared)"),
        (0x41, CardGone, "status 0x01"),  # MI bit does not hide the error
        (0x02, ReaderFault, "status 0x02 (CRC error)"),
        (0x0D, ReaderFault, "overheated"),
        (0x27, ReaderFault, "command not acceptable in the current context"),
        (0x3E, ReaderFault, "status 0x3E (unknown error)"),
    ],
)
def test_status_errors(status: int, kind: type[Exception], text: str) -> None:
    with pytest.raises(kind, match=text.replace("(", r"\(").replace(")", r"\)")) as info:
        c.parse_in_data_exchange(bytes((0x41, status)))
    assert "InDataExchange" in str(info.value)
    if kind is ReaderFault:
        assert not isinstance(info.value, CardGone)


def test_every_status_has_text_and_right_class() -> None:
    for status in Status:
        if status is Status.Ok:
            continue
        err = c.status_error(status, Command.InRelease)
        assert f"0x{status:02X}" in str(err)
        assert "unknown" not in str(err)
        assert isinstance(err, CardGone) == (status in (0x01, 0x2B))


def test_in_release_answers() -> None:
    c.parse_in_release(h("53 00"))
    with pytest.raises(CardGone):
        c.parse_in_release(h("53 2B"))
    with pytest.raises(ReaderFault, match="one status byte"):
        c.parse_in_release(h("53"))


# --- the device's command path, against the simulated chip -------------------------------


class RecordingTransport(SimTransport):
    """SimTransport that keeps what the host wrote (the sim's own feed is the real path)."""

    def __init__(self, sim: SimPn532, **kwargs: object) -> None:
        super().__init__(sim, **kwargs)  # type: ignore[arg-type]
        self.writes: list[bytes] = []

    async def write(self, data: bytes) -> None:
        self.writes.append(data)
        await super().write(data)


class EchoCard(VirtualCard):
    """Answers every APDU with the APDU itself plus 9000; keeps what it got."""

    def __init__(self) -> None:
        self.got: list[bytes] = []

    def respond(self, apdu: bytes) -> bytes:
        self.got.append(apdu)
        return apdu + b"\x90\x00"


async def opened(sim: SimPn532, **kwargs: object) -> tuple[Pn532Device, RecordingTransport]:
    transport = RecordingTransport(sim, **kwargs)
    await transport.open()
    device = Pn532Device(transport)
    return device, transport


async def test_init_sequence() -> None:
    sim = SimPn532()
    device, transport = await opened(sim)
    fw = await device.init()
    assert str(fw) == "PN532v1.6"
    assert transport.writes[0] == WAKEUP
    assert transport.writes[1] == encode_host(c.sam_configuration())
    assert sim.commands == [0x14, 0x02, 0x32, 0x12]
    assert sim.max_retries_passive == 0x01
    assert sim.params == ParamFlag.fAutomaticATR_RES | ParamFlag.fAutomaticRATS
    assert not sim.asleep


async def test_init_wakes_the_chip_again_if_it_missed_the_first_wake_up() -> None:
    class DropFirstWakeup(RecordingTransport):
        dropped = False

        async def write(self, data: bytes) -> None:
            if data == WAKEUP and not self.dropped:
                self.dropped = True  # lost on the line: the chip stays in LowVBat
                self.writes.append(data)
                return
            await super().write(data)

    sim = SimPn532()
    transport = DropFirstWakeup(sim)
    await transport.open()
    device = Pn532Device(transport, first_ack_timeout=0.1)
    assert str(await device.init()) == "PN532v1.6"
    assert transport.writes[:4] == [WAKEUP, encode_host(c.sam_configuration()), ACK_FRAME, WAKEUP]
    assert sim.commands == [0x14, 0x02, 0x32, 0x12]


async def test_asleep_chip_times_out_and_command_is_aborted() -> None:
    sim = SimPn532()  # LowVBat: no wake-up preamble sent
    transport = RecordingTransport(sim)
    await transport.open()
    device = Pn532Device(transport, first_ack_timeout=0.2)
    with pytest.raises(ReaderTimeout, match="GetFirmwareVersion: no ACK"):
        await device.command(c.get_firmware_version(), timeout=0.05)
    assert transport.writes[-1] == ACK_FRAME  # the abort
    assert sim.commands == []


async def test_no_response_aborts_with_ack() -> None:
    sim = SimPn532(awake=True)  # MaxRetries still 0xFF: no answer without a card
    device, transport = await opened(sim)
    with pytest.raises(ReaderTimeout, match="InListPassiveTarget: no response"):
        await device.in_list_passive_target(timeout=0.1)
    assert transport.writes[-1] == ACK_FRAME
    # the chip is usable right after the abort
    assert str(await device.get_firmware_version()) == "PN532v1.6"


async def test_corrupted_response_is_asked_again_once() -> None:
    sim = SimPn532(awake=True)
    device, transport = await opened(sim)
    sim.corrupt_responses = 1
    assert str(await device.get_firmware_version()) == "PN532v1.6"
    assert device.nacks_sent == 1
    assert device.bad_frames == 1
    assert NACK_FRAME in transport.writes
    sim.corrupt_responses = 2
    with pytest.raises(ReaderFault, match="corrupted response, twice"):
        await device.get_firmware_version()


async def test_stale_frames_before_the_answer_are_ignored() -> None:
    sim = SimPn532(awake=True)
    stale = encode_device(h("4B 00"))  # an InListPassiveTarget answer from an aborted poll
    device, _ = await opened(sim, garbage_bytes=stale)
    assert str(await device.get_firmware_version()) == "PN532v1.6"
    assert device.stale_frames >= 1


async def test_error_frame_raises_fault() -> None:
    device, _ = await opened(SimPn532(awake=True))
    with pytest.raises(ReaderFault, match="error frame"):
        await device.command(bytes((Command.PowerDown, 0x20)))


@pytest.mark.parametrize(("max_out", "max_in", "exchanges"), [(262, 262, 2 + 1), (16, 16, 19 + 18)])
async def test_in_data_exchange_chains_both_ways(max_out: int, max_in: int, exchanges: int) -> None:
    card = EchoCard()
    sim = SimPn532(card, awake=True, max_data_in=max_in)
    transport = RecordingTransport(sim)
    await transport.open()
    device = Pn532Device(transport, max_data_out=max_out)
    await device.init()
    target = await device.in_list_passive_target()
    assert target is not None
    assert target.ats == card.ats
    apdu = bytes(range(256)) + bytes(range(44))  # 300 bytes: more than one DataOut
    before = sim.commands.count(Command.InDataExchange)
    answer = await device.in_data_exchange(target.tg, apdu)
    assert card.got == [apdu]
    assert answer == apdu + b"\x90\x00"
    assert sim.commands.count(Command.InDataExchange) - before == exchanges


async def test_card_gone_mid_exchange() -> None:
    card = EchoCard()
    sim = SimPn532(card, awake=True)
    device, _ = await opened(sim)
    await device.init()
    target = await device.in_list_passive_target()
    assert target is not None
    sim.remove()
    with pytest.raises(CardGone, match="0x2B"):
        await device.in_data_exchange(target.tg, b"\x00\xa4\x04\x00")
    await device.in_release()
    assert await device.in_list_passive_target() is None


async def test_unplugged_transport_is_offline() -> None:
    device, transport = await opened(SimPn532(awake=True))
    transport.unplug()
    with pytest.raises(ReaderOffline):
        await device.get_firmware_version()


async def test_cancelled_command_is_aborted_on_the_chip() -> None:
    sim = SimPn532(awake=True)  # InListPassiveTarget never answers (MaxRetries 0xFF)
    device, transport = await opened(sim)
    task = asyncio.create_task(device.in_list_passive_target(timeout=5))
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert transport.writes[-1] == ACK_FRAME
    assert str(await device.get_firmware_version()) == "PN532v1.6"
