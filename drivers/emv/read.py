"""The EMV contactless card read, over an ``exchange(apdu) -> response`` callable.

Contract:

* ``read_card(exchange, ctx)`` runs one read and returns a ``CardRead``
  (entry mode CONTACTLESS) holding the PAN, expiry, PAN sequence number,
  track 2 equivalent, brand and ``emv_tlv`` - the BER-TLV objects for the
  online message. ``exchange`` sends one C-APDU and returns the R-APDU
  (data + SW1 SW2); it is the only I/O, so the flow runs against a virtual
  card in memory as well as through a PN532.
* Raises ``CardNotSupported`` (no PPSE, no supported application, the card
  refuses the transaction conditions or declines with an AAC),
  ``CardDataError`` (an answer that does not parse, a failed Luhn check, an
  unexpected status word) and whatever ``exchange`` raises (``CardGone``,
  ``ReaderTimeout``, ...). ``ValueError`` for an ``ArmContext`` whose amount
  cannot be sent (check it when arming).
* Logs and exception texts carry step names, status words, AIDs, tag names
  and the masked PAN only - never APDU data, the PAN, track 2 or cryptograms
  (PCI DSS 3.3/3.4; terminal-side.md §4.2).

Flow (EMV Contactless Book A/B Entry Point, Book 3 §6.5 and §10; the
summary with sources is terminal-side.md §2.1):

1. SELECT the PPSE ``2PAY.SYS.DDF01``; its FCI lists one ``61`` per
   application (``4F`` AID, ``87`` priority: lower is preferred, 0 = none).
   Applications whose AID this terminal supports (``brands``) are tried in
   priority order; SELECT failing with 6A82/6A81/6283 moves to the next.
2. GET PROCESSING OPTIONS with the PDOL (``9F38`` in the AID's FCI) filled
   from terminal data inside a ``83`` template; the answer is format 1
   (``80``: AIP, AFL) or format 2 (``77`` template).
3. READ RECORD for every record the AFL names (``70`` templates).
4. Kernel 3 / Visa qVSDC returns the cryptogram (``9F26``) in the GPO answer;
   otherwise (Kernel 2 / Mastercard M/Chip) GENERATE AC with P1 = 0x80
   (ARQC) and CDOL1 (``8C``) values.
5. Status words: 61xx -> GET RESPONSE for xx bytes, 6Cxx -> the same command
   again with Le = xx (ISO/IEC 7816-4 §5.3.4; python-emv ``transmission``).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from datetime import datetime

from drivers.base import (
    ArmContext,
    CardDataError,
    CardNotSupported,
    CardRead,
    EntryMode,
    ReaderError,
)
from drivers.brands import luhn_valid
from drivers.emv import tlv
from drivers.emv.brands import brand_for_aid
from drivers.emv.dol import DEFAULT_PROFILE, TerminalProfile, fill_dol, parse_dol, terminal_data

__all__ = [
    "ONLINE_TAGS",
    "PPSE",
    "Candidate",
    "Exchange",
    "apdu_generate_ac",
    "apdu_gpo",
    "apdu_read_record",
    "apdu_select",
    "read_card",
    "transmit",
]

log = logging.getLogger(__name__)

Exchange = Callable[[bytes], Awaitable[bytes]]

PPSE = b"2PAY.SYS.DDF01"

ONLINE_TAGS = (
    0x9F26,
    0x9F27,
    0x9F10,
    0x9F36,
    0x9F37,
    0x95,
    0x9A,
    0x9C,
    0x9F02,
    0x5F2A,
    0x82,
    0x9F1A,
)
"""The minimum online-message list (pyemv ``generate_ac`` docstring; terminal-side.md §2.2)."""

EXTRA_TAGS = (0x84, 0x9F03, 0x9F33, 0x9F34, 0x9F35, 0x9F6E)
"""Also sent when known: DF name, other amount, terminal capabilities, CVM results,
terminal type, form factor indicator."""

NEVER_ONLINE_TAGS = frozenset({0x56, 0x57, 0x5A, 0x5F20, 0x5F24, 0x9F6B})
"""Card data that travels in its own encrypted fields (docs/protocol.md part D), not in
emv_tlv."""

_SKIP_CANDIDATE_SW = frozenset({0x6A82, 0x6A81, 0x6283})
_NOT_SUPPORTED_SW = {
    0x6A82: "file or application not found",
    0x6A81: "function not supported",
    0x6283: "selected file invalidated",
    0x6985: "conditions of use not satisfied",
    0x6984: "referenced data invalidated",
    0x6D00: "instruction not supported",
    0x6E00: "class not supported",
}
_MAX_GET_RESPONSE = 32


# --- APDUs --------------------------------------------------------------------------


def apdu_select(name: bytes) -> bytes:
    """SELECT by DF name, first occurrence: ``00 A4 04 00 Lc name 00``."""
    return bytes((0x00, 0xA4, 0x04, 0x00, len(name))) + name + b"\x00"


def apdu_gpo(pdol_data: bytes) -> bytes:
    """GET PROCESSING OPTIONS: ``80 A8 00 00 Lc 83 L data 00`` (Book 3 §6.5.8)."""
    body = tlv.encode(0x83, pdol_data)
    return bytes((0x80, 0xA8, 0x00, 0x00, len(body))) + body + b"\x00"


def apdu_read_record(sfi: int, record: int) -> bytes:
    """READ RECORD: ``00 B2 rec (SFI<<3)|4 00`` (Book 3 §6.5.11)."""
    return bytes((0x00, 0xB2, record, (sfi << 3) | 0x04, 0x00))


def apdu_generate_ac(p1: int, cdol_data: bytes) -> bytes:
    """GENERATE AC: ``80 AE P1 00 Lc data 00`` (Book 3 §6.5.5); P1 0x80 asks for an ARQC."""
    return bytes((0x80, 0xAE, p1, 0x00, len(cdol_data))) + cdol_data + b"\x00"


def apdu_get_response(length: int) -> bytes:
    return bytes((0x00, 0xC0, 0x00, 0x00, length))


async def transmit(exchange: Exchange, apdu: bytes, step: str) -> tuple[bytes, int]:
    """Send ``apdu``, following 61xx and 6Cxx; returns (data, SW).

    Raises CardDataError for an answer without a status word, and what
    ``exchange`` raises.
    """
    data = bytearray()
    command = apdu
    for _ in range(_MAX_GET_RESPONSE):
        answer = await exchange(command)
        if len(answer) < 2:
            raise CardDataError(f"{step}: answer without a status word")
        data += answer[:-2]
        sw1, sw2 = answer[-2], answer[-1]
        if sw1 == 0x6C:
            command = apdu[:-1] + bytes((sw2,))  # wrong Le: same command, Le = SW2
            data.clear()
        elif sw1 == 0x61:
            command = apdu_get_response(sw2)  # SW2 more bytes are waiting
        else:
            return bytes(data), (sw1 << 8) | sw2
    raise CardDataError(f"{step}: too many GET RESPONSE / wrong-Le rounds")


def _sw_error(step: str, sw: int) -> ReaderError:
    text = _NOT_SUPPORTED_SW.get(sw)
    if text is not None:
        return CardNotSupported(f"{step}: card answered {sw:04X} ({text})")
    return CardDataError(f"{step}: card answered {sw:04X}")


async def _command(exchange: Exchange, apdu: bytes, step: str) -> bytes:
    data, sw = await transmit(exchange, apdu, step)
    if sw != 0x9000:
        raise _sw_error(step, sw)
    return data


def _decode(data: bytes, step: str) -> list[tlv.Tlv]:
    try:
        return tlv.decode(data)
    except CardDataError as exc:
        raise CardDataError(f"{step}: {exc}") from None


# --- helpers ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Candidate:
    """A supported application from the PPSE (an AID is not card data)."""

    aid: bytes
    brand: str
    priority: int
    order: int

    @property
    def sort_key(self) -> tuple[int, int]:
        # 87 bits 4-1: 1 = highest, 0 = no priority given (lowest) (Book 1 §12.2.3)
        prio = self.priority & 0x0F
        return (prio if prio else 16, self.order)


def _candidates(fci: list[tlv.Tlv]) -> list[Candidate]:
    found: list[Candidate] = []
    for order, entry in enumerate(tlv.find_all(fci, 0x61)):
        aid_node = tlv.find(entry.children, 0x4F)
        if aid_node is None or not 5 <= len(aid_node.value) <= 16:
            continue
        brand = brand_for_aid(aid_node.value)
        if brand is None:
            log.info("EMV: application %s not supported", aid_node.value.hex().upper())
            continue
        prio_node = tlv.find(entry.children, 0x87)
        priority = prio_node.value[0] if prio_node is not None and prio_node.value else 0
        found.append(Candidate(aid_node.value, brand, priority, order))
    return sorted(found, key=lambda c: c.sort_key)


def _afl(afl: bytes) -> list[tuple[int, int]]:
    """(SFI, record) pairs from an AFL (Book 3 §10.2). Raises CardDataError."""
    if len(afl) % 4:
        raise CardDataError("GET PROCESSING OPTIONS: AFL length is not a multiple of 4")
    records: list[tuple[int, int]] = []
    for i in range(0, len(afl), 4):
        sfi, first, last = afl[i] >> 3, afl[i + 1], afl[i + 2]
        if not 1 <= sfi <= 30 or first == 0 or last < first:
            raise CardDataError("GET PROCESSING OPTIONS: malformed AFL entry")
        records.extend((sfi, rec) for rec in range(first, last + 1))
    return records


def _digits(value: bytes, what: str) -> str:
    """Compressed numeric (cn) to digits: stop at the first F pad nibble."""
    text = value.hex().upper().split("F", 1)[0]
    if not text.isdigit():
        raise CardDataError(f"{what} is not numeric")
    return text


def _track2(value: bytes) -> tuple[str, str, str, str]:
    """57 -> (pan, YYMM, service code, track 2 as digits with '='). Raises CardDataError."""
    text = value.hex().upper().rstrip("F")
    pan, sep, rest = text.partition("D")
    if not sep or not pan.isdigit() or not rest.isdigit() or len(rest) < 7:
        raise CardDataError("Track 2 Equivalent Data is malformed")
    return pan, rest[:4], rest[4:7], f"{pan}={rest}"


# --- the read --------------------------------------------------------------------------


class _Read:
    def __init__(self, exchange: Exchange, terminal: dict[int, bytes]) -> None:
        self.exchange = exchange
        self.terminal = terminal
        self.card: dict[int, bytes] = {}
        self.sent: dict[int, bytes] = {}  # DOL values as the card received them

    def keep(self, nodes: Iterable[tlv.Tlv]) -> None:
        for tag, value in tlv.primitives(nodes).items():
            self.card.setdefault(tag, value)

    def dol_data(self, dol: bytes, what: str, limit: int) -> bytes:
        """The values a DOL asks for; ``limit`` is what the command's Lc can carry."""
        try:
            entries = parse_dol(dol)
        except CardDataError as exc:
            raise CardDataError(f"{what}: {exc}") from None
        if sum(e.length for e in entries) > limit:
            raise CardDataError(f"{what} asks for more data than one command carries")
        data = fill_dol(entries, self.terminal)
        pos = 0
        for entry in entries:
            if entry.tag in self.terminal:
                self.sent.setdefault(entry.tag, data[pos : pos + entry.length])
            pos += entry.length
        return data

    async def select_application(self) -> Candidate:
        data, sw = await transmit(self.exchange, apdu_select(PPSE), "SELECT PPSE")
        if sw != 0x9000:
            if sw in _SKIP_CANDIDATE_SW:
                raise CardNotSupported(f"SELECT PPSE: card answered {sw:04X}, no contactless PPSE")
            raise _sw_error("SELECT PPSE", sw)
        candidates = _candidates(_decode(data, "SELECT PPSE"))
        if not candidates:
            raise CardNotSupported("no supported application on the card")
        for cand in candidates:
            step = f"SELECT {cand.aid.hex().upper()}"
            data, sw = await transmit(self.exchange, apdu_select(cand.aid), step)
            if sw in _SKIP_CANDIDATE_SW:
                log.info("EMV: %s answered %04X, trying the next application", step, sw)
                continue
            if sw != 0x9000:
                raise _sw_error(step, sw)
            fci = _decode(data, step)
            self.keep(fci)
            self.card.setdefault(0x84, cand.aid)
            return cand
        raise CardNotSupported("no supported application could be selected")

    async def processing_options(self) -> None:
        pdol = self.card.get(0x9F38, b"")
        body = self.dol_data(pdol, "PDOL", 255 - 3)  # Lc holds the 83 tag and length too
        step = "GET PROCESSING OPTIONS"
        data = await _command(self.exchange, apdu_gpo(body), step)
        nodes = _decode(data, step)
        if len(nodes) != 1 or nodes[0].tag not in (0x77, 0x80):
            raise CardDataError(f"{step}: answer is neither format 1 nor format 2")
        answer = nodes[0]
        if answer.tag == 0x80:
            if len(answer.value) < 2:
                raise CardDataError(f"{step}: format 1 answer too short")
            self.card[0x82] = answer.value[:2]
            self.card[0x94] = answer.value[2:]
        else:
            for tag, value in tlv.primitives(answer.children).items():
                self.card[tag] = value  # the GPO answer is authoritative over the FCI
        if 0x82 not in self.card:
            raise CardDataError(f"{step}: no AIP in the answer")

    async def read_records(self) -> None:
        for sfi, record in _afl(self.card.get(0x94, b"")):
            step = f"READ RECORD SFI {sfi} #{record}"
            data = await _command(self.exchange, apdu_read_record(sfi, record), step)
            nodes = _decode(data, step)
            if len(nodes) != 1 or nodes[0].tag != 0x70:
                raise CardDataError(f"{step}: not a record template")
            self.keep(nodes[0].children)

    async def generate_ac(self) -> None:
        cdol1 = self.card.get(0x8C)
        if cdol1 is None:
            raise CardDataError("no cryptogram in the GPO answer and no CDOL1 on the card")
        step = "GENERATE AC"
        data = await _command(
            self.exchange, apdu_generate_ac(0x80, self.dol_data(cdol1, "CDOL1", 255)), step
        )
        nodes = _decode(data, step)
        if len(nodes) != 1 or nodes[0].tag not in (0x77, 0x80):
            raise CardDataError(f"{step}: answer is neither format 1 nor format 2")
        answer = nodes[0]
        if answer.tag == 0x80:
            value = answer.value
            if len(value) < 11:
                raise CardDataError(f"{step}: format 1 answer too short")
            self.card.update({0x9F27: value[:1], 0x9F36: value[1:3], 0x9F26: value[3:11]})
            if len(value) > 11:
                self.card[0x9F10] = value[11:]
        else:
            for tag, value in tlv.primitives(answer.children).items():
                self.card[tag] = value

    def online_tlv(self) -> bytes:
        tags: list[int] = [*ONLINE_TAGS, *EXTRA_TAGS]
        tags += [t for t in self.sent if t not in tags]
        out = bytearray()
        for tag in tags:
            if tag in NEVER_ONLINE_TAGS:
                continue
            value = self.sent.get(tag)
            if value is None:
                value = self.card.get(tag, self.terminal.get(tag))
            if value is not None:
                out += tlv.encode(tag, value)
        return bytes(out)


def _card_read(session: _Read, cand: Candidate) -> CardRead:
    card = session.card
    pan = track2 = service_code = None
    expiry = None
    if 0x57 in card:
        pan, expiry, service_code, track2 = _track2(card[0x57])
    if 0x5A in card:
        pan_5a = _digits(card[0x5A], "PAN")
        if pan is not None and pan != pan_5a:
            raise CardDataError("PAN in 5A and in Track 2 Equivalent Data differ")
        pan = pan_5a
    if pan is None:
        raise CardDataError("card gave no PAN (neither 5A nor 57)")
    if not 12 <= len(pan) <= 19 or not luhn_valid(pan):
        raise CardDataError("PAN fails the Luhn check")
    if 0x5F24 in card:
        expiry = _digits(card[0x5F24], "Expiration Date")[:4]
    if expiry is None or len(expiry) != 4:
        raise CardDataError("card gave no expiry date")
    pan_seq = card[0x5F34].hex().upper() if card.get(0x5F34) else None
    name = card.get(0x5F20, b"").decode("ascii", "replace").strip() or None
    label = "".join(c for c in card.get(0x50, b"").decode("ascii", "replace") if c.isprintable())
    return CardRead(
        entry_mode=EntryMode.CONTACTLESS,
        pan=pan,
        expiry=expiry,
        brand=cand.brand,
        pan_seq=pan_seq,
        track2=track2,
        service_code=service_code,
        emv_tlv=session.online_tlv(),
        cardholder_name=name,
        aid=(card.get(0x84) or cand.aid).hex().upper(),
        app_label=label.strip()[:16] or None,
    )


async def read_card(
    exchange: Exchange,
    ctx: ArmContext,
    *,
    now: datetime | None = None,
    unpredictable: bytes | None = None,
    profile: TerminalProfile = DEFAULT_PROFILE,
) -> CardRead:
    """Read one contactless EMV card for the payment ``ctx`` describes.

    Raises CardNotSupported, CardDataError, ValueError (``ctx``), and whatever
    ``exchange`` raises (CardGone, ReaderTimeout, ReaderFault, ReaderOffline).
    """
    session = _Read(
        exchange, terminal_data(ctx, now=now, unpredictable=unpredictable, profile=profile)
    )
    cand = await session.select_application()
    await session.processing_options()
    await session.read_records()
    if 0x9F26 in session.card:
        kernel = "qVSDC-style (cryptogram in GPO)"
    else:
        kernel = "M/Chip-style (GENERATE AC)"
        await session.generate_ac()
    if 0x9F26 not in session.card:
        raise CardDataError("card gave no application cryptogram")
    cid = session.card.get(0x9F27, b"\x80")[:1] or b"\x80"
    if cid[0] & 0xC0 == 0x00:
        raise CardNotSupported("card declined the transaction (AAC)")
    result = _card_read(session, cand)
    log.info(
        "EMV read %s: %s %s, %s", cand.aid.hex().upper(), result.brand, result.masked_pan, kernel
    )
    return result
