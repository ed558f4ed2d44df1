"""BER-TLV as EMV uses it (sans-I/O codec).

Contract:

* ``decode(data)`` returns the data objects in order as ``Tlv`` nodes; a
  constructed object (tag bit 0x20 of its first byte) carries its decoded
  ``children``. Duplicate tags are kept (a PPSE answer holds one ``61`` per
  application). ``00`` and ``FF`` bytes before, between and after objects are
  skipped. Bad input raises ``CardDataError`` only, whose text gives an
  offset and a tag name, never the data.
* ``find``/``find_all`` search depth-first; ``primitives`` flattens to the
  first value of each primitive tag.
* ``encode``/``encode_tlv`` build objects (shortest length form).
* ``Tlv`` reprs show tag names and lengths, never values (PAN, track 2,
  cryptograms; terminal-side.md §4.2).

Spec: EMV 4.4 Book 3 Annex B "Rules for BER-TLV Data Objects" (B1 tag field:
bit 6 of the first byte = constructed, low five bits all set = more tag bytes
follow, b8 of each following byte = another follows; B2 length field: one
byte below 0x80, else 0x81-0x84 followed by that many length bytes) and
§5.2 / Annex B: "Before, between, or after TLV-coded data objects, '00' or
'FF' bytes without any meaning may occur" (terminal-side.md §2.3).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

from drivers.base import CardDataError

__all__ = [
    "TAG_NAMES",
    "Tlv",
    "decode",
    "encode",
    "encode_length",
    "encode_tag",
    "encode_tlv",
    "find",
    "find_all",
    "is_constructed",
    "primitives",
    "tag_name",
]

MAX_TAG_BYTES = 4
MAX_DEPTH = 16

TAG_NAMES: dict[int, str] = {
    0x42: "IIN",
    0x4F: "AID",
    0x50: "Application Label",
    0x57: "Track 2 Equivalent Data",
    0x5A: "PAN",
    0x5F20: "Cardholder Name",
    0x5F24: "Expiration Date",
    0x5F25: "Effective Date",
    0x5F28: "Issuer Country Code",
    0x5F2A: "Transaction Currency Code",
    0x5F2D: "Language Preference",
    0x5F30: "Service Code",
    0x5F34: "PAN Sequence Number",
    0x61: "Application Template",
    0x6F: "FCI Template",
    0x70: "Record Template",
    0x77: "Response Message Template Format 2",
    0x80: "Response Message Template Format 1",
    0x82: "AIP",
    0x83: "Command Template",
    0x84: "DF Name",
    0x87: "Application Priority Indicator",
    0x88: "SFI",
    0x8A: "Authorisation Response Code",
    0x8C: "CDOL1",
    0x8D: "CDOL2",
    0x8E: "CVM List",
    0x8F: "CA Public Key Index",
    0x90: "Issuer Public Key Certificate",
    0x92: "Issuer Public Key Remainder",
    0x94: "AFL",
    0x95: "TVR",
    0x9A: "Transaction Date",
    0x9C: "Transaction Type",
    0x9F02: "Amount, Authorised",
    0x9F03: "Amount, Other",
    0x9F07: "Application Usage Control",
    0x9F08: "Application Version Number",
    0x9F09: "Terminal Application Version Number",
    0x9F0D: "IAC Default",
    0x9F0E: "IAC Denial",
    0x9F0F: "IAC Online",
    0x9F10: "Issuer Application Data",
    0x9F12: "Application Preferred Name",
    0x9F1A: "Terminal Country Code",
    0x9F1E: "IFD Serial Number",
    0x9F21: "Transaction Time",
    0x9F26: "Application Cryptogram",
    0x9F27: "Cryptogram Information Data",
    0x9F2A: "Kernel Identifier",
    0x9F32: "Issuer Public Key Exponent",
    0x9F33: "Terminal Capabilities",
    0x9F34: "CVM Results",
    0x9F35: "Terminal Type",
    0x9F36: "ATC",
    0x9F37: "Unpredictable Number",
    0x9F38: "PDOL",
    0x9F40: "Additional Terminal Capabilities",
    0x9F42: "Application Currency Code",
    0x9F45: "Data Authentication Code",
    0x9F46: "ICC Public Key Certificate",
    0x9F47: "ICC Public Key Exponent",
    0x9F4A: "SDA Tag List",
    0x9F4B: "Signed Dynamic Application Data",
    0x9F4C: "ICC Dynamic Number",
    0x9F4E: "Merchant Name and Location",
    0x9F66: "TTQ",
    0x9F6C: "CTQ",
    0x9F6E: "Form Factor Indicator",
    0x9F7C: "Merchant Custom Data",
    0xA5: "FCI Proprietary Template",
    0xBF0C: "FCI Issuer Discretionary Data",
}


def tag_name(tag: int) -> str:
    """Hex tag with its EMV name, for logs and errors (``9F26 Application Cryptogram``)."""
    name = TAG_NAMES.get(tag)
    return f"{tag:02X}" if name is None else f"{tag:02X} {name}"


def _first_byte(tag: int) -> int:
    return tag >> (8 * ((max(tag.bit_length(), 1) - 1) // 8))


def is_constructed(tag: int) -> bool:
    """Bit 6 (0x20) of the first tag byte (Annex B1)."""
    return bool(_first_byte(tag) & 0x20)


@dataclass(frozen=True, slots=True, repr=False)
class Tlv:
    """One data object. ``value`` is the raw value field; ``children`` is the
    decoded content of a constructed object and ``()`` for a primitive one."""

    tag: int
    value: bytes
    children: tuple[Tlv, ...] = ()

    @property
    def constructed(self) -> bool:
        return is_constructed(self.tag)

    def __repr__(self) -> str:
        extra = f", children={len(self.children)}" if self.constructed else ""
        return f"Tlv({tag_name(self.tag)}, len={len(self.value)}{extra})"

    __str__ = __repr__


def _read_tag(data: bytes, pos: int) -> tuple[int, int]:
    start = pos
    tag = data[pos]
    pos += 1
    if tag & 0x1F == 0x1F:
        while True:
            if pos >= len(data):
                raise CardDataError(f"TLV: tag truncated at offset {start}")
            if pos - start >= MAX_TAG_BYTES:
                raise CardDataError(f"TLV: tag longer than {MAX_TAG_BYTES} bytes at offset {start}")
            byte = data[pos]
            tag = (tag << 8) | byte
            pos += 1
            if not byte & 0x80:
                break
    return tag, pos


def _read_length(data: bytes, pos: int, tag: int) -> tuple[int, int]:
    if pos >= len(data):
        raise CardDataError(f"TLV: length of {tag_name(tag)} missing at offset {pos}")
    first = data[pos]
    pos += 1
    if first < 0x80:
        return first, pos
    count = first & 0x7F
    if count == 0 or count > 4:
        raise CardDataError(f"TLV: bad length form 0x{first:02X} for {tag_name(tag)}")
    if pos + count > len(data):
        raise CardDataError(f"TLV: length of {tag_name(tag)} truncated at offset {pos}")
    return int.from_bytes(data[pos : pos + count], "big"), pos + count


def _decode(data: bytes, depth: int) -> list[Tlv]:
    if depth > MAX_DEPTH:
        raise CardDataError(f"TLV: nested deeper than {MAX_DEPTH} levels")
    nodes: list[Tlv] = []
    pos = 0
    end = len(data)
    while pos < end:
        if data[pos] in (0x00, 0xFF):
            pos += 1
            continue
        tag, pos = _read_tag(data, pos)
        length, pos = _read_length(data, pos, tag)
        if pos + length > end:
            raise CardDataError(f"TLV: value of {tag_name(tag)} runs past the end")
        value = data[pos : pos + length]
        pos += length
        children = tuple(_decode(value, depth + 1)) if is_constructed(tag) else ()
        nodes.append(Tlv(tag, value, children))
    return nodes


def decode(data: bytes) -> list[Tlv]:
    """Decode a run of BER-TLV objects. Raises CardDataError."""
    return _decode(bytes(data), 0)


def _walk(nodes: Iterable[Tlv]) -> Iterator[Tlv]:
    for node in nodes:
        yield node
        yield from _walk(node.children)


def find(nodes: Iterable[Tlv], tag: int) -> Tlv | None:
    """First node with ``tag``, depth-first in document order."""
    return next((n for n in _walk(nodes) if n.tag == tag), None)


def find_all(nodes: Iterable[Tlv], tag: int) -> list[Tlv]:
    """Every node with ``tag``, depth-first in document order."""
    return [n for n in _walk(nodes) if n.tag == tag]


def primitives(nodes: Iterable[Tlv]) -> dict[int, bytes]:
    """Value of the first occurrence of each primitive tag, depth-first."""
    out: dict[int, bytes] = {}
    for node in _walk(nodes):
        if not node.constructed:
            out.setdefault(node.tag, node.value)
    return out


def encode_tag(tag: int) -> bytes:
    """The tag bytes. Raises ValueError for a negative tag or one over 4 bytes."""
    if tag < 0 or tag > 0xFFFFFFFF:
        raise ValueError("tag out of range")
    return tag.to_bytes(max(1, (tag.bit_length() + 7) // 8), "big")


def encode_length(length: int) -> bytes:
    """Shortest definite length form (Annex B2). Raises ValueError past 4 length bytes."""
    if length < 0:
        raise ValueError("negative length")
    if length < 0x80:
        return bytes((length,))
    raw = length.to_bytes((length.bit_length() + 7) // 8, "big")
    if len(raw) > 4:
        raise ValueError("length too large")
    return bytes((0x80 | len(raw),)) + raw


def encode(tag: int, value: bytes | Sequence[Tlv]) -> bytes:
    """One object: ``value`` is raw bytes or child nodes. Raises ValueError."""
    raw = value if isinstance(value, bytes | bytearray) else b"".join(encode_tlv(c) for c in value)
    return encode_tag(tag) + encode_length(len(raw)) + bytes(raw)


def encode_tlv(node: Tlv) -> bytes:
    """Re-encode a node (children when constructed and present, else its value)."""
    return encode(node.tag, node.children if node.children else node.value)
