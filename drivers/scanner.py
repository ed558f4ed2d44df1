"""Barcode/QR scanner lines and wallet payment codes, sans I/O.

Contract: bytes in, values out; no asyncio, no serial, no logging. Errors are
``drivers.base.CardDataError`` (the line does not parse) and
``drivers.base.CardNotSupported`` (it parses but is no wallet code); their
texts never hold the scanned data (PCI DSS 3.3/3.4 treats it like card data;
DESIGN.md "Card data").

Lines (terminal-side.md section 3.2): a scanner sends one line per decode,
ended by CR, LF or CRLF (``drivers.framing.LineFramer``), optionally wrapped
in a configured prefix/suffix (removed by the framer) and optionally led by an
AIM symbology identifier ``]cm`` (``]Q1`` QR, ``]C0`` Code 128, ``]E0``
EAN-13, ...; ISO/IEC 15424): with ``aim=True`` it is required and removed.
Bytes outside printable ASCII and spaces at either end of a line are line
noise (power-up bursts, cable glitches) and are removed; inside a line they
make it "not a wallet payment code".

Wallet codes (merchant scans customer, "micropay"; terminal-side.md 3.3):

1. WeChat Pay ``auth_code``: exactly 18 digits, first two 10-15
   (pay.weixin.qq.com ... ImportantParameters).
2. Alipay ``auth_code``: 16-24 digits, first two 25-30 (``^(2[5-9]|30)\\d{14,22}$``).
3. Alipay+: 17-32 digits (docs.alipayplus.com code format; no prefix rule).

The rules overlap (an 18-digit code starting 10-15 is also 17-32 digits; an
Alipay code of 17-24 digits is also an Alipay+ length), so they are tried in
the order above - the most specific prefix rule first - and the first match
wins. Anything else (letters, URLs, product barcodes, wrong lengths) raises
``CardNotSupported("not a wallet payment code")``. Prefix routing is a
heuristic: the wallets say codes may change, so the gateway has the last word.

Scanner models (serial enable/disable commands):

* ``generic``: no commands; the scanner always scans and the driver drops
  lines that arrive while disarmed.
* ``honeywell``: Honeywell serial trigger (manual trigger mode ``TRGMOD0``):
  ``SYN T CR`` triggers, ``SYN U CR`` untriggers; a trigger yields one decode
  (or ends at the trigger timeout), so the driver re-triggers after each line
  and periodically while armed. Probe: the menu query ``SYN M CR TRGMOD?.``,
  answered ``TRGMOD<value><ACK>.`` (the command echoed with the status ACK /
  ENQ / NAK inserted before the punctuation). Source: Honeywell 1900/3800g/
  N3680 user guides, "Serial Trigger Commands" and "Menu Command Syntax" /
  "Responses".
* ``cipherlab``: CipherLab 1600-series host serial commands ``E`` enable,
  ``D`` disable; no reply, so the probe only proves the port is open.
  Source: CipherLab 1664 user guide, Appendix II "Host serial commands".
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from drivers.base import CardDataError, CardNotSupported, WalletCode, WalletKind

__all__ = [
    "MODELS",
    "NOT_WALLET",
    "MenuReply",
    "MenuStatus",
    "ScannerModel",
    "classify_wallet",
    "decode_scan",
    "menu_query",
    "parse_menu_reply",
    "strip_aim",
]

NOT_WALLET = "not a wallet payment code"

# Line noise at either end of a line (power-up bursts, a cable glitch, padding):
# everything outside printable ASCII, and spaces.
_EDGE_NOISE_BYTES = bytes(b for b in range(256) if not 0x21 <= b <= 0x7E)

SYN = b"\x16"
ACK, ENQ, NAK = 0x06, 0x05, 0x15


@dataclass(frozen=True, slots=True)
class ScannerModel:
    """Serial commands of one scanner family. Empty bytes: no such command."""

    name: str
    enable: bytes
    disable: bytes
    probe_tag: bytes | None  # Honeywell-style menu query tag+subtag, e.g. b"TRGMOD"
    retrigger: bool  # one decode per enable: re-send ``enable`` after each line
    description: str


MODELS: dict[str, ScannerModel] = {
    "generic": ScannerModel(
        "generic", b"", b"", None, False, "serial scanner without host commands"
    ),
    "honeywell": ScannerModel(
        "honeywell",
        SYN + b"T\r",
        SYN + b"U\r",
        b"TRGMOD",
        True,
        "Honeywell-style scanner, serial trigger (TRGMOD0)",
    ),
    "cipherlab": ScannerModel(
        "cipherlab", b"E", b"D", None, False, "CipherLab-style scanner, host commands E/D"
    ),
}


def strip_aim(text: str) -> tuple[str, str]:
    """Split ``]cm`` + data into (``]cm``, data). Raises CardDataError if absent."""
    if len(text) >= 3 and text[0] == "]" and text[1].isascii() and text[1].isalpha():
        mod = text[2]
        if mod.isascii() and mod.isalnum():
            return text[:3], text[3:]
    raise CardDataError("scan: AIM symbology identifier missing")


def classify_wallet(code: str) -> WalletKind:
    """Wallet of a payment code, by the ordered rules above. Raises CardNotSupported."""
    if not (code.isascii() and code.isdigit()):
        raise CardNotSupported(NOT_WALLET)
    length, head = len(code), int(code[:2]) if len(code) >= 2 else -1
    if length == 18 and 10 <= head <= 15:
        return WalletKind.WECHAT_PAY
    if 16 <= length <= 24 and 25 <= head <= 30:
        return WalletKind.ALIPAY
    if 17 <= length <= 32:
        return WalletKind.ALIPAY_PLUS
    raise CardNotSupported(NOT_WALLET)


def decode_scan(message: bytes, *, aim: bool = False) -> WalletCode:
    """One framed scanner line to a ``WalletCode``.

    Raises CardDataError (AIM id required but missing) or CardNotSupported
    (not ASCII, not a wallet code)."""
    message = message.strip(_EDGE_NOISE_BYTES)
    try:
        text = message.decode("ascii")
    except UnicodeDecodeError:
        raise CardNotSupported(NOT_WALLET) from None
    if aim:
        _, text = strip_aim(text)
    return WalletCode(code=text, wallet=classify_wallet(text))


class MenuStatus(enum.Enum):
    ACK = "ack"  # good command, processed
    ENQ = "enq"  # invalid tag or subtag
    NAK = "nak"  # data out of range


@dataclass(frozen=True, slots=True)
class MenuReply:
    status: MenuStatus
    value: str
    consumed: int  # bytes of the buffer up to and including the reply


def menu_query(tag: bytes) -> bytes:
    """Honeywell menu query for the current value of ``tag`` (volatile table)."""
    return SYN + b"M\r" + tag + b"?."


def parse_menu_reply(buffer: bytes, tag: bytes) -> MenuReply | None:
    """Find ``TAG value STATUS punct`` in ``buffer`` (case-insensitive tag).

    Returns None while incomplete. Bytes before the tag are skipped. Never raises."""
    start = buffer.upper().find(tag.upper())
    if start < 0:
        return None
    i = start + len(tag)
    value = bytearray()
    while i < len(buffer):
        byte = buffer[i]
        if byte in (ACK, ENQ, NAK):
            if i + 1 >= len(buffer):
                return None
            status = {ACK: MenuStatus.ACK, ENQ: MenuStatus.ENQ, NAK: MenuStatus.NAK}[byte]
            return MenuReply(status, value.decode("latin-1"), i + 2)
        if len(value) > 64:
            return MenuReply(MenuStatus.NAK, "", i)
        value.append(byte)
        i += 1
    return None
