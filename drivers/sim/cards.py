"""Virtual contactless cards that answer C-APDUs like EMV cards do (sans-I/O).

Contract:

* A ``VirtualCard`` has the type A activation data a PN532 reports
  (``sens_res``, ``sel_res``, ``uid``, ``ats``) and ``respond(apdu) -> bytes``
  returning an R-APDU (data + SW1 SW2). ``respond`` raises ``CardRemoved``
  when the card leaves the field during that APDU; the simulated PN532 turns
  it into status 0x01 and empties the field.
* ``CARDS`` maps the names the simulator CLI accepts to card classes:
  ``visa`` (Kernel 3 qVSDC: cryptogram in the GPO format 2 answer),
  ``mastercard`` (M/Chip-like: GPO format 1, records, GENERATE AC),
  ``pulled`` (a Visa card pulled away after ``pull_after`` APDUs),
  ``noapp`` (its PPSE lists only an application no terminal here supports;
  SELECT of anything else answers 6A82), ``mifare`` (not ISO-DEP: SAK 0x08).
* The data are the well-known public test cards (Visa 4761739001010010,
  Mastercard 5413330089010434, both Luhn-valid); cryptograms are an
  HMAC-SHA256 over amount, unpredictable number and ATC under a fixed
  simulator key - stable, checkable, and worthless outside a test.
* Quirks for the terminal's status-word handling: ``get_response=True``
  answers every command 61xx and hands the data out with GET RESPONSE;
  ``wrong_le=True`` answers READ RECORD with Le=00 by 6Cxx (resend with Le=xx).

APDU and data layout per EMV 4.4 Book 1 §11-12 (PPSE/FCI), Book 3 §6.5
(GPO, READ RECORD, GENERATE AC) and terminal-side.md §2.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass, field
from typing import ClassVar

from drivers.base import CardDataError
from drivers.emv.dol import parse_dol
from drivers.emv.tlv import decode, encode

__all__ = [
    "CARDS",
    "CardRemoved",
    "EmvCard",
    "MastercardCard",
    "MifareCard",
    "NoAppCard",
    "PulledCard",
    "VirtualCard",
    "VisaCard",
]

SW_OK = b"\x90\x00"
SW_WRONG_LENGTH = b"\x67\x00"
SW_CONDITIONS = b"\x69\x85"
SW_NOT_FOUND = b"\x6a\x82"
SW_RECORD_NOT_FOUND = b"\x6a\x83"
SW_INS = b"\x6d\x00"
SW_CLA = b"\x6e\x00"
SW_P1P2 = b"\x6a\x86"

PPSE_NAME = b"2PAY.SYS.DDF01"
SIM_KEY = b"sadad-terminal simulator card key: not a real key"


class CardRemoved(Exception):
    """The card left the field while answering; ``status`` is what the PN532 reports."""

    def __init__(self, status: int = 0x01) -> None:
        super().__init__(f"card removed (PN532 status 0x{status:02X})")
        self.status = status


@dataclass(frozen=True, slots=True, repr=False)
class Apdu:
    cla: int
    ins: int
    p1: int
    p2: int
    data: bytes
    le: int | None


def parse_apdu(raw: bytes) -> Apdu | None:
    """Short APDU cases 1-4 (ISO/IEC 7816-3 §12.1); ``None`` when malformed."""
    if len(raw) < 4:
        return None
    cla, ins, p1, p2 = raw[:4]
    body = raw[4:]
    if not body:
        return Apdu(cla, ins, p1, p2, b"", None)
    if len(body) == 1:
        return Apdu(cla, ins, p1, p2, b"", body[0])
    lc = body[0]
    if lc == 0 or len(body) not in (1 + lc, 2 + lc):
        return None
    le = body[1 + lc] if len(body) == 2 + lc else None
    return Apdu(cla, ins, p1, p2, body[1 : 1 + lc], le)


class VirtualCard:
    """A card in the field: activation data plus an APDU handler."""

    name: ClassVar[str] = "card"
    sens_res: bytes = b"\x00\x04"  # ATQA
    sel_res: int = 0x20  # SAK: ISO/IEC 14443-4
    uid: bytes = bytes.fromhex("08A1B2C3")  # random UID (first byte 08, ISO/IEC 14443-3)
    ats: bytes = bytes.fromhex("0578807002")  # TL T0 TA TB TC

    def respond(self, apdu: bytes) -> bytes:
        """The R-APDU for ``apdu``. Raises CardRemoved."""
        return SW_INS

    def __repr__(self) -> str:  # test card data stays out of reprs like real card data
        return f"{type(self).__name__}()"


@dataclass(repr=False)
class Application:
    aid: bytes
    label: str
    priority: int | None
    pdol: bytes = b""
    kernel: bytes | None = None

    def fci(self) -> bytes:
        prop = encode(0x50, self.label.encode())
        if self.priority is not None:
            prop += encode(0x87, bytes((self.priority,)))
        if self.pdol:
            prop += encode(0x9F38, self.pdol)
        prop += encode(0x5F2D, b"en")
        return encode(0x6F, encode(0x84, self.aid) + encode(0xA5, prop))

    def directory_entry(self) -> bytes:
        body = encode(0x4F, self.aid) + encode(0x50, self.label.encode())
        if self.priority is not None:
            body += encode(0x87, bytes((self.priority,)))
        if self.kernel is not None:
            body += encode(0x9F2A, self.kernel)
        return encode(0x61, body)


@dataclass(repr=False)
class EmvCard(VirtualCard):
    """Shared EMV behaviour: PPSE, SELECT, READ RECORD, quirks, a transcript."""

    get_response: bool = False
    wrong_le: bool = False
    atc: int = 0
    transcript: list[int] = field(default_factory=list)  # INS bytes received
    last_amount: bytes | None = None
    last_un: bytes | None = None
    _pending: bytes = b""
    _selected: Application | None = None

    def applications(self) -> list[Application]:
        raise NotImplementedError

    def records(self) -> dict[tuple[int, int], bytes]:
        """(SFI, record) -> the record's ``70`` template."""
        return {}

    def ppse_fci(self) -> bytes:
        entries = b"".join(app.directory_entry() for app in self.applications())
        return encode(0x6F, encode(0x84, PPSE_NAME) + encode(0xA5, encode(0xBF0C, entries)))

    def cryptogram(self, amount: bytes, un: bytes, atc: int) -> bytes:
        """The simulator's AC: HMAC-SHA256(key, amount | UN | ATC)[:8]."""
        mac = hmac.new(SIM_KEY, amount + un + atc.to_bytes(2, "big"), hashlib.sha256)
        return mac.digest()[:8]

    # --- dispatch -------------------------------------------------------------------------

    def respond(self, apdu: bytes) -> bytes:
        parsed = parse_apdu(apdu)
        if parsed is None:
            return SW_WRONG_LENGTH
        self.transcript.append(parsed.ins)
        if parsed.cla == 0x00 and parsed.ins == 0xC0:
            return self._get_response(parsed)
        answer = self.handle(parsed)
        if self.get_response and len(answer) > 2 and answer[-2:] == SW_OK:
            self._pending = answer[:-2]
            return bytes((0x61, min(len(self._pending), 256) & 0xFF))
        return answer

    def _get_response(self, apdu: Apdu) -> bytes:
        if not self._pending:
            return SW_CONDITIONS
        size = apdu.le or 256
        out, self._pending = self._pending[:size], self._pending[size:]
        if self._pending:
            return out + bytes((0x61, min(len(self._pending), 256) & 0xFF))
        return out + SW_OK

    def handle(self, apdu: Apdu) -> bytes:
        if apdu.ins == 0xA4 and apdu.cla == 0x00:
            return self.select(apdu)
        if apdu.ins == 0xB2 and apdu.cla == 0x00:
            return self.read_record(apdu)
        if apdu.ins == 0xA8 and apdu.cla == 0x80:
            return self.gpo(apdu)
        if apdu.ins == 0xAE and apdu.cla == 0x80:
            return self.generate_ac(apdu)
        if apdu.cla not in (0x00, 0x80):
            return SW_CLA
        return SW_INS

    def select(self, apdu: Apdu) -> bytes:
        if apdu.p1 != 0x04:
            return SW_P1P2
        if apdu.data == PPSE_NAME:
            self._selected = None
            return self.ppse_fci() + SW_OK
        for app in self.applications():
            if apdu.data == app.aid:
                self._selected = app
                return app.fci() + SW_OK
        return SW_NOT_FOUND

    def read_record(self, apdu: Apdu) -> bytes:
        if self._selected is None:
            return SW_CONDITIONS
        record = self.records().get((apdu.p2 >> 3, apdu.p1))
        if record is None or apdu.p2 & 0x07 != 0x04:
            return SW_RECORD_NOT_FOUND
        if self.wrong_le and apdu.le != len(record) & 0xFF:
            return bytes((0x6C, len(record) & 0xFF))
        return record + SW_OK

    def _dol_values(self, dol: bytes, data: bytes) -> dict[int, bytes] | None:
        entries = parse_dol(dol)
        if sum(e.length for e in entries) != len(data):
            return None
        values: dict[int, bytes] = {}
        pos = 0
        for entry in entries:
            values[entry.tag] = data[pos : pos + entry.length]
            pos += entry.length
        return values

    def gpo(self, apdu: Apdu) -> bytes:
        return SW_CONDITIONS

    def generate_ac(self, apdu: Apdu) -> bytes:
        return SW_CONDITIONS


# --- Visa: Kernel 3 qVSDC ----------------------------------------------------------------


VISA_PAN = "4761739001010010"
VISA_PDOL = bytes.fromhex("9F66049F02069F03069F1A0295055F2A029A039C019F3704")


@dataclass(repr=False)
class VisaCard(EmvCard):
    """Visa payWave qVSDC: the online cryptogram comes back in the GPO answer."""

    name: ClassVar[str] = "visa"
    uid: bytes = bytes.fromhex("08476173")

    def applications(self) -> list[Application]:
        return [Application(bytes.fromhex("A0000000031010"), "VISA CREDIT", 1, VISA_PDOL, b"\x03")]

    def records(self) -> dict[tuple[int, int], bytes]:
        return {
            (1, 1): encode(
                0x70,
                encode(0x5F24, bytes.fromhex("281231"))
                + encode(0x5A, bytes.fromhex(VISA_PAN))
                + encode(0x5F20, b"VISA ACQUIRER TEST/CARD 01")
                + encode(0x5F28, bytes.fromhex("0840"))
                + encode(0x9F07, bytes.fromhex("FF00")),
            )
        }

    def gpo(self, apdu: Apdu) -> bytes:
        if self._selected is None:
            return SW_CONDITIONS
        try:
            nodes = decode(apdu.data) if apdu.data[:1] == b"\x83" else []
        except CardDataError:
            nodes = []
        if len(nodes) != 1:
            return SW_WRONG_LENGTH
        values = self._dol_values(VISA_PDOL, nodes[0].value)
        if values is None:
            return SW_WRONG_LENGTH
        if not values[0x9F66][0] & 0x20:  # TTQ: reader does not do qVSDC
            return SW_CONDITIONS
        self.atc += 1
        self.last_amount, self.last_un = values[0x9F02], values[0x9F37]
        ac = self.cryptogram(values[0x9F02], values[0x9F37], self.atc)
        body = (
            encode(0x82, bytes.fromhex("2000"))
            + encode(0x94, bytes.fromhex("08010100"))
            + encode(0x57, bytes.fromhex(f"{VISA_PAN}D28122011234567890"))
            + encode(0x5F34, b"\x01")
            + encode(0x9F10, bytes.fromhex("06011203A00000"))
            + encode(0x9F26, ac)
            + encode(0x9F27, b"\x80")
            + encode(0x9F36, self.atc.to_bytes(2, "big"))
            + encode(0x9F6C, bytes.fromhex("0080"))
            + encode(0x9F6E, bytes.fromhex("20700000"))
        )
        return encode(0x77, body) + SW_OK


# --- Mastercard: M/Chip-like -------------------------------------------------------------


MC_PAN = "5413330089010434"
MC_CDOL1 = bytes.fromhex(
    "9F02069F03069F1A0295055F2A029A039C019F37049F35019F45029F4C089F34039F21039F7C14"
)
MC_CDOL2 = bytes.fromhex("910A8A0295059F37049F4C08")


@dataclass(repr=False)
class MastercardCard(EmvCard):
    """Mastercard PayPass M/Chip: GPO format 1, records, then GENERATE AC with CDOL1.

    The PPSE also lists Maestro (priority 2, listed first) and an AID no terminal
    here supports, so the terminal must sort by priority and skip unknown AIDs.
    A 1984-bit issuer certificate makes one record 256 bytes long: the PN532 answer
    needs an extended frame, or MI chaining when the simulator's chunk is small.
    """

    name: ClassVar[str] = "mastercard"
    uid: bytes = bytes.fromhex("08541333")
    ac_format: int = 2  # GENERATE AC answer: 1 (tag 80) or 2 (tag 77)

    def applications(self) -> list[Application]:
        return [
            Application(bytes.fromhex("A0000000043060"), "MAESTRO", 2, kernel=b"\x02"),
            Application(bytes.fromhex("A0000009990001"), "LOYALTY", 3),
            Application(bytes.fromhex("A0000000041010"), "MASTERCARD", 1, kernel=b"\x02"),
        ]

    def records(self) -> dict[tuple[int, int], bytes]:
        track2 = f"{MC_PAN}D29122010000000000000F"
        cert = hashlib.sha256(b"issuer certificate").digest() * 8  # 256 bytes of filler
        return {
            (1, 1): encode(
                0x70,
                encode(0x57, bytes.fromhex(track2)) + encode(0x5F20, b"MASTERCARD TEST/CARD"),
            ),
            (2, 1): encode(
                0x70,
                encode(0x5A, bytes.fromhex(MC_PAN))
                + encode(0x5F24, bytes.fromhex("291231"))
                + encode(0x5F25, bytes.fromhex("240101"))
                + encode(0x5F28, bytes.fromhex("0056"))
                + encode(0x5F34, b"\x00")
                + encode(0x8C, MC_CDOL1)
                + encode(0x8D, MC_CDOL2)
                + encode(0x8E, bytes.fromhex("000000000000000042031E031F03"))
                + encode(0x9F07, bytes.fromhex("FF00"))
                + encode(0x9F0D, bytes.fromhex("B450840000"))
                + encode(0x9F0E, bytes.fromhex("0000000000"))
                + encode(0x9F0F, bytes.fromhex("B470848000"))
                + encode(0x9F42, bytes.fromhex("0978")),
            ),
            (2, 2): encode(0x70, encode(0x90, cert[:248])),
            (2, 3): encode(
                0x70,
                encode(0x8F, b"\x05")
                + encode(0x92, cert[:36])
                + encode(0x9F32, b"\x03")
                + encode(0x9F4A, b"\x82"),
            ),
        }

    def gpo(self, apdu: Apdu) -> bytes:
        if self._selected is None:
            return SW_CONDITIONS
        if apdu.data != b"\x83\x00":
            return SW_WRONG_LENGTH
        aip_afl = bytes.fromhex("1980") + bytes.fromhex("08010100") + bytes.fromhex("10010301")
        return encode(0x80, aip_afl) + SW_OK

    def generate_ac(self, apdu: Apdu) -> bytes:
        if self._selected is None:
            return SW_CONDITIONS
        values = self._dol_values(MC_CDOL1, apdu.data)
        if values is None:
            return SW_WRONG_LENGTH
        self.atc += 1
        self.last_amount, self.last_un = values[0x9F02], values[0x9F37]
        asked = apdu.p1 & 0xC0
        cid = 0x00 if asked == 0x00 else 0x80  # AAC asked -> AAC, else go online (ARQC)
        ac = self.cryptogram(values[0x9F02], values[0x9F37], self.atc)
        iad = bytes.fromhex("0110A04003220000000000000000000000FF")
        atc = self.atc.to_bytes(2, "big")
        if self.ac_format == 1:
            return encode(0x80, bytes((cid,)) + atc + ac + iad) + SW_OK
        body = (
            encode(0x9F27, bytes((cid,)))
            + encode(0x9F36, atc)
            + encode(0x9F26, ac)
            + encode(0x9F10, iad)
        )
        return encode(0x77, body) + SW_OK


# --- failure cards -----------------------------------------------------------------------


@dataclass(repr=False)
class PulledCard(VisaCard):
    """A Visa card that leaves the field on APDU number ``pull_after + 1`` of each read
    (the count starts again at every SELECT PPSE, so each tap fails the same way)."""

    name: ClassVar[str] = "pulled"
    pull_after: int = 2
    status: int = 0x01
    _count: int = 0

    def respond(self, apdu: bytes) -> bytes:
        if apdu[:4] == b"\x00\xa4\x04\x00" and PPSE_NAME in apdu:
            self._count = 0
        self._count += 1
        if self._count > self.pull_after:
            raise CardRemoved(self.status)
        return super().respond(apdu)


@dataclass(repr=False)
class NoAppCard(EmvCard):
    """A card whose PPSE lists only an unsupported application (a transit or loyalty
    card); every other SELECT answers 6A82. ``ppse=False``: the PPSE is missing too."""

    name: ClassVar[str] = "noapp"
    ppse: bool = True

    def applications(self) -> list[Application]:
        return [Application(bytes.fromhex("A0000009990001"), "TRANSIT", 1)]

    def select(self, apdu: Apdu) -> bytes:
        if apdu.data == PPSE_NAME and self.ppse:
            return self.ppse_fci() + SW_OK
        return SW_NOT_FOUND


class MifareCard(VirtualCard):
    """A MIFARE Classic tag: SAK 0x08, no ISO-DEP, no ATS."""

    name: ClassVar[str] = "mifare"
    sens_res = b"\x00\x04"
    sel_res = 0x08
    uid = bytes.fromhex("DEADBEEF")
    ats = b""


CARDS: dict[str, type[VirtualCard]] = {
    cls.name: cls for cls in (VisaCard, MastercardCard, PulledCard, NoAppCard, MifareCard)
}
