"""PN532 host-interface framing (HSU/UART), sans-I/O.

Contract:

* ``encode_frame(tfi, data)`` builds one information frame; ``encode_host``
  (TFI ``D4``, host -> PN532) and ``encode_device`` (TFI ``D5``, PN532 ->
  host, used by the simulator) are the two directions. Frames whose TFI+PD
  exceed 255 bytes, or when asked, use the extended form.
* ``FrameDecoder.feed(chunk)`` accepts arbitrary byte chunks (one byte at a
  time, several frames at once, garbage in between) and returns the events
  completed by that chunk: ``Ack``, ``Nack``, ``ErrorFrame``, ``Frame`` and
  ``BadFrame`` (a frame dropped for a bad checksum or an impossible header;
  also counted in ``FrameDecoder.bad_frames``). It never raises: garbage is
  skipped up to the next ``00 FF`` start code (and counted in
  ``skipped_bytes``; ``00`` bytes are legal pre/postamble and not counted).
* Nothing here logs; ``Frame`` reprs show the TFI, command code and length
  only, never the payload (it may carry APDUs with card data).

Spec (NXP UM0701-02 "PN532 User Manual" rev. 02, section 6.2; the frame
layer of nfcpy ``src/nfc/clf/pn53x.py`` and libnfc ``pn532_uart.c`` agree):

* normal information frame (§6.2.1.1)
  ``PREAMBLE 00 | START 00 FF | LEN | LCS | TFI | PD0..PDn | DCS | POSTAMBLE 00``;
  LEN counts TFI+PD, ``LEN + LCS == 0 (mod 256)``,
  ``TFI + PD0 + ... + PDn + DCS == 0 (mod 256)``;
* extended information frame (§6.2.1.2)
  ``00 | 00 FF | FF FF | LENM LENL | LCS | TFI | PD.. | DCS | 00`` with
  ``LENM + LENL + LCS == 0 (mod 256)``; the firmware takes at most 264 data
  bytes plus the TFI;
* ACK ``00 00 FF 00 FF 00`` (§6.2.1.3, both directions, also the abort),
  NACK ``00 00 FF FF 00 00`` (§6.2.1.4, host asks for a retransmission),
  application-level error frame ``00 00 FF 01 FF 7F 81 00`` (§6.2.1.5);
* preamble and postamble may be any number of ``00`` bytes (§6.2.1.6).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

__all__ = [
    "ACK_FRAME",
    "ERROR_FRAME",
    "MAX_EXTENDED_LEN",
    "MAX_NORMAL_LEN",
    "NACK_FRAME",
    "Ack",
    "BadFrame",
    "ErrorFrame",
    "Event",
    "Frame",
    "FrameDecoder",
    "Nack",
    "Tfi",
    "encode_device",
    "encode_frame",
    "encode_host",
]


class Tfi(enum.IntEnum):
    """Frame identifier byte (UM0701-02 §6.2.1.1 and §6.2.1.5)."""

    HostToPn532 = 0xD4
    Pn532ToHost = 0xD5
    ApplicationError = 0x7F


ACK_FRAME = bytes.fromhex("0000FF00FF00")
NACK_FRAME = bytes.fromhex("0000FFFF0000")
ERROR_FRAME = bytes.fromhex("0000FF01FF7F8100")

MAX_NORMAL_LEN = 255
"""Largest TFI+PD length a normal frame can carry (one LEN byte)."""

MAX_EXTENDED_LEN = 265
"""Largest TFI+PD length the PN532 firmware accepts (264 data bytes + TFI, §6.2.1.2)."""

_START = b"\x00\xff"


def _checksum(data: bytes) -> int:
    """The byte that makes ``sum(data) + byte == 0 (mod 256)``."""
    return (-sum(data)) & 0xFF


def encode_frame(tfi: int, data: bytes, *, extended: bool | None = None) -> bytes:
    """One information frame carrying ``tfi`` and ``data`` (PD0 = command code).

    ``extended=None`` picks the normal form when TFI+PD fit in 255 bytes and the
    extended form otherwise; ``True`` forces the extended form (always legal for
    the host, §6.2.1.2). Raises ``ValueError`` when TFI+PD exceed 265 bytes or
    when ``extended=False`` is asked for a body that does not fit.
    """
    body = bytes((tfi & 0xFF,)) + data
    length = len(body)
    if length > MAX_EXTENDED_LEN:
        raise ValueError(f"PN532 frame body of {length} bytes exceeds {MAX_EXTENDED_LEN}")
    if extended is None:
        extended = length > MAX_NORMAL_LEN
    if extended:
        lenm, lenl = length >> 8, length & 0xFF
        header = b"\x00\x00\xff\xff\xff" + bytes((lenm, lenl, _checksum(bytes((lenm, lenl)))))
    else:
        if length > MAX_NORMAL_LEN:
            raise ValueError(f"PN532 normal frame cannot carry {length} bytes")
        header = b"\x00\x00\xff" + bytes((length, _checksum(bytes((length,)))))
    return header + body + bytes((_checksum(body), 0x00))


def encode_host(data: bytes, *, extended: bool | None = None) -> bytes:
    """A host -> PN532 frame (TFI ``D4``). Raises ``ValueError`` as ``encode_frame``."""
    return encode_frame(Tfi.HostToPn532, data, extended=extended)


def encode_device(data: bytes, *, extended: bool | None = None) -> bytes:
    """A PN532 -> host frame (TFI ``D5``), for the simulator. Raises ``ValueError``."""
    return encode_frame(Tfi.Pn532ToHost, data, extended=extended)


# --- events -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Ack:
    """ACK frame ``00 FF 00 FF`` (§6.2.1.3)."""


@dataclass(frozen=True, slots=True)
class Nack:
    """NACK frame ``00 FF FF 00`` (§6.2.1.4): retransmit the last frame."""


@dataclass(frozen=True, slots=True)
class ErrorFrame:
    """Application-level error frame (§6.2.1.5): the PN532 rejected the syntax."""


@dataclass(frozen=True, slots=True, repr=False)
class Frame:
    """A good information frame. ``data`` is PD0..PDn (PD0 = command code)."""

    tfi: int
    data: bytes
    extended: bool = False

    @property
    def code(self) -> int | None:
        """PD0, the (response) command code, or ``None`` for an empty frame."""
        return self.data[0] if self.data else None

    def __repr__(self) -> str:
        code = "-" if self.code is None else f"0x{self.code:02X}"
        return f"Frame(tfi=0x{self.tfi:02X}, code={code}, len={len(self.data)})"

    __str__ = __repr__


class BadReason(enum.StrEnum):
    LENGTH_CHECKSUM = "length checksum"
    DATA_CHECKSUM = "data checksum"
    BAD_TFI = "unknown frame identifier"
    BAD_LENGTH = "length zero or above the firmware maximum"


@dataclass(frozen=True, slots=True)
class BadFrame:
    """A frame that was dropped; the decoder resynchronised after its start code."""

    reason: BadReason


Event = Ack | Nack | ErrorFrame | Frame | BadFrame

_KNOWN_TFI = frozenset(int(t) for t in Tfi)


@dataclass(slots=True)
class FrameDecoder:
    """Streaming decoder: ``feed`` bytes, get the events they complete.

    ``max_len`` bounds the TFI+PD length accepted from an extended header (a
    garbage header would otherwise make the decoder wait for up to 64 KiB).
    """

    max_len: int = MAX_EXTENDED_LEN
    bad_frames: int = 0
    skipped_bytes: int = 0
    _buf: bytearray = field(default_factory=bytearray)

    def reset(self) -> None:
        """Forget buffered bytes (after a flush or an abort); counters are kept."""
        self._buf.clear()

    @property
    def pending(self) -> int:
        """Bytes buffered towards an incomplete frame."""
        return len(self._buf)

    def feed(self, chunk: bytes) -> list[Event]:
        """Add ``chunk`` and return every event it completed, in order. Never raises."""
        self._buf += chunk
        events: list[Event] = []
        while True:
            event, consumed = self._parse_one()
            if consumed:
                del self._buf[:consumed]
            if event is None:
                if not consumed:
                    return events
                continue
            if isinstance(event, BadFrame):
                self.bad_frames += 1
            events.append(event)

    def _skip_to_start(self) -> int:
        """Drop bytes before the first ``00 FF``; returns how many to drop (0 if at one)."""
        buf = self._buf
        idx = buf.find(_START)
        if idx == 0:
            return 0
        end = idx
        if idx < 0:  # no start code yet; keep a trailing 00, it may be the first half of one
            end = len(buf) - 1 if buf.endswith(b"\x00") else len(buf)
        self.skipped_bytes += sum(1 for b in buf[:end] if b != 0x00)
        return end

    def _parse_one(self) -> tuple[Event | None, int]:
        """One step: ``(event or None, bytes to drop)``; ``(None, 0)`` = need more input."""
        drop = self._skip_to_start()
        if drop:
            return None, drop
        buf = self._buf
        if len(buf) < 4:
            return None, 0
        b2, b3 = buf[2], buf[3]
        if b2 == 0x00 and b3 == 0xFF:
            return Ack(), 4
        if b2 == 0xFF and b3 == 0x00:
            return Nack(), 4
        if b2 == 0xFF and b3 == 0xFF:
            return self._parse_extended()
        if (b2 + b3) & 0xFF:
            return BadFrame(BadReason.LENGTH_CHECKSUM), 2
        return self._parse_body(header=4, length=b2, extended=False)

    def _parse_extended(self) -> tuple[Event | None, int]:
        buf = self._buf
        if len(buf) < 7:
            return None, 0
        lenm, lenl, lcs = buf[4], buf[5], buf[6]
        if (lenm + lenl + lcs) & 0xFF:
            return BadFrame(BadReason.LENGTH_CHECKSUM), 2
        return self._parse_body(header=7, length=(lenm << 8) | lenl, extended=True)

    def _parse_body(self, *, header: int, length: int, extended: bool) -> tuple[Event | None, int]:
        buf = self._buf
        if length == 0 or length > self.max_len:
            return BadFrame(BadReason.BAD_LENGTH), 2
        if len(buf) <= header:
            return None, 0
        tfi = buf[header]
        if tfi not in _KNOWN_TFI:
            # Fail fast on a garbage header instead of waiting for LEN bytes.
            return BadFrame(BadReason.BAD_TFI), 2
        end = header + length + 1  # + DCS
        if len(buf) < end:
            return None, 0
        body = bytes(buf[header : header + length])
        if (sum(body) + buf[end - 1]) & 0xFF:
            # Rescan from just after the start code: a real frame may hide in here.
            return BadFrame(BadReason.DATA_CHECKSUM), 2
        if tfi == Tfi.ApplicationError:
            return ErrorFrame(), end
        return Frame(tfi=tfi, data=body[1:], extended=extended), end
