"""PN532 framing (UM0701-02 §6.2): exact bytes, and a decoder that survives any stream."""

from __future__ import annotations

import subprocess
import sys

import pytest

from drivers.pn532.frames import (
    ACK_FRAME,
    ERROR_FRAME,
    NACK_FRAME,
    Ack,
    BadFrame,
    BadReason,
    ErrorFrame,
    Frame,
    FrameDecoder,
    Nack,
    Tfi,
    encode_device,
    encode_frame,
    encode_host,
)


def h(text: str) -> bytes:
    return bytes.fromhex(text)


# --- encoding ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("payload", "wire"),
    [
        # worked examples from terminal-side.md §1.1 (nfcpy pn532.py init)
        ("02", "0000FF02FED4022A00"),
        ("14010000", "0000FF05FBD4140100001700"),
        ("4A0100", "0000FF04FCD44A0100E100"),
    ],
)
def test_encode_host_known_frames(payload: str, wire: str) -> None:
    assert encode_host(h(payload)) == h(wire)


def test_encode_device_response() -> None:
    assert encode_device(h("15")) == h("0000FF02FED5151600")
    assert encode_device(h("0332010607")) == h("0000FF06FAD50332010607E800")


def test_checksums_hold_for_every_length() -> None:
    for size in range(0, 255):
        data = bytes((i * 7) & 0xFF for i in range(size))
        frame = encode_host(data)
        length, lcs = frame[3], frame[4]
        assert length == size + 1
        assert (length + lcs) & 0xFF == 0
        assert (sum(frame[5:-2]) + frame[-2]) & 0xFF == 0
        assert frame[-1] == 0x00


def test_extended_frame_layout() -> None:
    data = bytes(range(256)) + bytes(8)  # 264 bytes + TFI = 265, the firmware maximum
    frame = encode_device(data)
    assert frame[:5] == h("0000FFFFFF")
    lenm, lenl, lcs = frame[5], frame[6], frame[7]
    assert (lenm << 8) | lenl == 265
    assert (lenm + lenl + lcs) & 0xFF == 0
    assert frame[8] == Tfi.Pn532ToHost
    assert (sum(frame[8:-2]) + frame[-2]) & 0xFF == 0
    # normal form is picked up to 255 bytes of TFI+PD, extended above
    assert encode_host(bytes(254))[:5] == h("0000FFFF01")
    assert encode_host(bytes(255))[:5] == h("0000FFFFFF")


def test_extended_can_be_forced_and_limits_hold() -> None:
    assert encode_host(h("02"), extended=True) == h("0000FFFFFF0002FED4022A00")
    with pytest.raises(ValueError, match="exceeds"):
        encode_host(bytes(265))
    with pytest.raises(ValueError, match="normal frame"):
        encode_frame(Tfi.HostToPn532, bytes(255), extended=False)


# --- decoding --------------------------------------------------------------------------------


def test_control_frames() -> None:
    dec = FrameDecoder()
    assert dec.feed(ACK_FRAME + NACK_FRAME + ERROR_FRAME) == [Ack(), Nack(), ErrorFrame()]
    assert dec.bad_frames == 0
    assert dec.pending <= 1  # at most a trailing postamble byte


def test_frame_roundtrip_and_repr_hides_payload() -> None:
    dec = FrameDecoder()
    secret = b"\x41\x00" + b"4761739001010010"
    events = dec.feed(encode_device(secret))
    assert events == [Frame(tfi=0xD5, data=secret)]
    frame = events[0]
    assert isinstance(frame, Frame)
    assert frame.code == 0x41
    text = repr(frame) + str(frame)
    assert "4761739001010010" not in text
    assert "34373631" not in text
    assert "len=18" in text


def test_one_byte_at_a_time() -> None:
    stream = ACK_FRAME + encode_device(h("4B00")) + encode_device(bytes(260))
    dec = FrameDecoder()
    events = []
    for byte in stream:
        events += dec.feed(bytes((byte,)))
    assert events == [Ack(), Frame(0xD5, h("4B00")), Frame(0xD5, bytes(260), extended=True)]


def test_many_frames_in_one_chunk_with_long_preambles() -> None:
    stream = b"\x00" * 10 + ACK_FRAME + b"\x00" * 5 + encode_device(h("15")) + b"\x00" * 3
    assert FrameDecoder().feed(stream) == [Ack(), Frame(0xD5, h("15"))]


def test_garbage_between_frames_is_skipped_and_counted() -> None:
    dec = FrameDecoder()
    stream = b"\x55\xaa\x13" + ACK_FRAME + b"\xfe\x01\xff" + encode_device(h("4100"))
    assert dec.feed(stream) == [Ack(), Frame(0xD5, h("4100"))]
    assert dec.skipped_bytes == 6
    assert dec.bad_frames == 0


def test_bad_length_checksum_resyncs_to_next_frame() -> None:
    bad = h("0000FF05FAD4140100001700")  # LCS should be FB
    events = FrameDecoder().feed(bad + encode_device(h("15")))
    assert events == [BadFrame(BadReason.LENGTH_CHECKSUM), Frame(0xD5, h("15"))]


def test_bad_data_checksum_is_reported_and_next_frame_decoded() -> None:
    good = encode_device(h("4100") + b"ABC")
    bad = good[:-2] + bytes(((good[-2] + 1) & 0xFF,)) + b"\x00"
    dec = FrameDecoder()
    events = dec.feed(bad + good)
    assert events == [BadFrame(BadReason.DATA_CHECKSUM), Frame(0xD5, h("4100") + b"ABC")]
    assert dec.bad_frames == 1


def test_unknown_tfi_fails_fast() -> None:
    # header passes LCS but TFI is garbage: reported at once, no waiting for 0x40 bytes
    dec = FrameDecoder()
    assert dec.feed(h("0000FF40C0AA")) == [BadFrame(BadReason.BAD_TFI)]
    assert dec.feed(ACK_FRAME) == [Ack()]


def test_impossible_extended_length_is_dropped() -> None:
    lenm, lenl = 0x10, 0x00  # 4096 > 265
    header = h("0000FFFFFF") + bytes((lenm, lenl, (-(lenm + lenl)) & 0xFF))
    dec = FrameDecoder()
    assert dec.feed(header + h("D5")) == [BadFrame(BadReason.BAD_LENGTH)]
    assert dec.feed(encode_device(h("4B00"))) == [Frame(0xD5, h("4B00"))]
    assert FrameDecoder().feed(h("0000FF0000")) == [BadFrame(BadReason.BAD_LENGTH)]


def test_start_code_split_across_chunks() -> None:
    dec = FrameDecoder()
    frame = encode_device(h("4B00"))
    assert dec.feed(b"\x77" + frame[:2]) == []
    assert dec.feed(frame[2:]) == [Frame(0xD5, h("4B00"))]


def test_reset_drops_partial_frame() -> None:
    dec = FrameDecoder()
    frame = encode_device(h("4B00"))
    dec.feed(frame[:6])
    dec.reset()
    assert dec.pending == 0
    assert dec.feed(frame[6:] + ACK_FRAME) == [Ack()]


def test_sans_io_modules_import_no_asyncio_or_serial() -> None:
    code = (
        "import sys\n"
        "import drivers.pn532.frames, drivers.pn532.commands\n"
        "import drivers.emv.tlv, drivers.emv.dol, drivers.emv.read, drivers.sim.cards\n"
        "bad = sorted(m for m in ('asyncio', 'serial') if m in sys.modules)\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
