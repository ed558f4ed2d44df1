"""PN532 commands: codes, status bytes, request builders, response parsers (sans-I/O).

Contract:

* Builders return the frame payload PD0..PDn (PD0 = command code) that
  ``frames.encode_host`` wraps; they raise ``ValueError`` for arguments
  outside the field ranges (programming errors, not device faults).
* Parsers take the payload of a ``D5`` frame (PD0 = command code + 1) and
  return frozen dataclasses. They raise ``ReaderFault`` when the payload does
  not follow the manual (wrong response code, truncated), and for a
  non-zero status byte ``status_error``'s exception: ``CardGone`` for 0x01
  (target timeout) and 0x2B (card disappeared) - the normal outcomes of a
  short tap - and ``ReaderFault`` with a readable message otherwise.
* Reprs never show APDU payloads (``DataExchange`` shows a length only).

Spec: NXP UM0701-02 "PN532 User Manual" §7 (command set; §7.1 error codes,
§7.2.2 GetFirmwareVersion, §7.2.9 SetParameters, §7.2.10 SAMConfiguration,
§7.3.1 RFConfiguration, §7.3.5 InListPassiveTarget, §7.3.8 InDataExchange,
§7.3.11 InRelease). Codes and the error table as in nfcpy
``src/nfc/clf/pn532.py`` ``Chipset.CMD``/``Chipset.ERR`` and libnfc
``libnfc/chips/pn53x-internal.h`` (github.com/nfcpy/nfcpy,
github.com/nfc-tools/libnfc).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from drivers.base import CardGone, ReaderError, ReaderFault

__all__ = [
    "MAX_DATA_OUT",
    "BaudRateType",
    "Command",
    "DataExchange",
    "FirmwareVersion",
    "ParamFlag",
    "RfItem",
    "SamMode",
    "Status",
    "Target",
    "expect_response",
    "get_firmware_version",
    "in_data_exchange",
    "in_list_passive_target",
    "in_release",
    "parse_firmware_version",
    "parse_in_data_exchange",
    "parse_in_list_passive_target",
    "parse_in_release",
    "parse_no_data",
    "rf_configuration_field",
    "rf_configuration_max_retries",
    "sam_configuration",
    "set_parameters",
    "status_error",
]


class Command(enum.IntEnum):
    """Command codes (UM0701-02 §7, table "Command set"); response code = code + 1."""

    Diagnose = 0x00
    GetFirmwareVersion = 0x02
    GetGeneralStatus = 0x04
    ReadRegister = 0x06
    WriteRegister = 0x08
    ReadGPIO = 0x0C
    WriteGPIO = 0x0E
    SetSerialBaudRate = 0x10
    SetParameters = 0x12
    SAMConfiguration = 0x14
    PowerDown = 0x16
    RFConfiguration = 0x32
    RFRegulationTest = 0x58
    InJumpForDEP = 0x56
    InJumpForPSL = 0x46
    InListPassiveTarget = 0x4A
    InATR = 0x50
    InPSL = 0x4E
    InDataExchange = 0x40
    InCommunicateThru = 0x42
    InDeselect = 0x44
    InRelease = 0x52
    InSelect = 0x54
    InAutoPoll = 0x60
    TgInitAsTarget = 0x8C
    TgSetGeneralBytes = 0x92
    TgGetData = 0x86
    TgSetData = 0x8E
    TgSetMetaData = 0x94
    TgGetInitiatorCommand = 0x88
    TgResponseToInitiator = 0x90
    TgGetTargetStatus = 0x8A


class Status(enum.IntEnum):
    """Status byte error codes, bits 0-5 of the status (UM0701-02 §7.1; nfcpy ``ERR``)."""

    Ok = 0x00
    Timeout = 0x01
    CrcError = 0x02
    ParityError = 0x03
    AnticollisionBitCount = 0x04
    MifareFraming = 0x05
    BitCollision = 0x06
    BufferTooSmall = 0x07
    RfBufferOverflow = 0x09
    RfFieldTimeout = 0x0A
    RfProtocolError = 0x0B
    Overheated = 0x0D
    InternalBufferOverflow = 0x0E
    InvalidParameter = 0x10
    UnsupportedDepCommand = 0x12
    RfFormatError = 0x13
    MifareAuthError = 0x14
    UidCheckByte = 0x23
    InvalidDepState = 0x25
    OperationNotAllowed = 0x26
    CommandNotAcceptable = 0x27
    ReleasedByInitiator = 0x29
    CardIdMismatch = 0x2A
    CardDisappeared = 0x2B
    Nfcid3Mismatch = 0x2C
    OverCurrent = 0x2D
    NadMissing = 0x2E


STATUS_TEXT: dict[int, str] = {
    Status.Timeout: "target did not answer in time",
    Status.CrcError: "CRC error",
    Status.ParityError: "parity error",
    Status.AnticollisionBitCount: "erroneous bit count during anticollision",
    Status.MifareFraming: "MIFARE framing error",
    Status.BitCollision: "abnormal bit collision",
    Status.BufferTooSmall: "communication buffer too small",
    Status.RfBufferOverflow: "RF buffer overflow",
    Status.RfFieldTimeout: "RF field not switched on in time",
    Status.RfProtocolError: "RF protocol error",
    Status.Overheated: "antenna drivers switched off: overheated",
    Status.InternalBufferOverflow: "internal buffer overflow",
    Status.InvalidParameter: "invalid parameter",
    Status.UnsupportedDepCommand: "command not supported by the target",
    Status.RfFormatError: "RF data format error",
    Status.MifareAuthError: "MIFARE authentication error",
    Status.UidCheckByte: "UID check byte wrong",
    Status.InvalidDepState: "invalid DEP state",
    Status.OperationNotAllowed: "operation not allowed in this configuration",
    Status.CommandNotAcceptable: "command not acceptable in the current context",
    Status.ReleasedByInitiator: "target released by the initiator",
    Status.CardIdMismatch: "ISO 14443-3B card ID mismatch",
    Status.CardDisappeared: "card previously activated has disappeared",
    Status.Nfcid3Mismatch: "NFCID3 mismatch",
    Status.OverCurrent: "over-current",
    Status.NadMissing: "NAD missing",
}

_CARD_GONE = frozenset({Status.Timeout, Status.CardDisappeared})


def status_error(status: int, command: Command) -> ReaderError:
    """The exception for a non-zero status byte (bits 0-5) of ``command``.

    ``CardGone`` for 0x01 and 0x2B (the card left the field), ``ReaderFault``
    otherwise. Returned, not raised, so callers write ``raise status_error(...)``.
    """
    code = status & 0x3F
    text = STATUS_TEXT.get(code, "unknown error")
    message = f"PN532 {command.name}: status 0x{code:02X} ({text})"
    if code in _CARD_GONE:
        return CardGone(message)
    return ReaderFault(message)


class SamMode(enum.IntEnum):
    """SAMConfiguration mode byte (UM0701-02 §7.2.10)."""

    Normal = 0x01
    VirtualCard = 0x02
    WiredCard = 0x03
    DualCard = 0x04


class RfItem(enum.IntEnum):
    """RFConfiguration CfgItem (UM0701-02 §7.3.1)."""

    RfField = 0x01
    VariousTimings = 0x02
    MaxRtyCom = 0x04
    MaxRetries = 0x05
    AnalogSettings106A = 0x0A
    AnalogSettings212_424 = 0x0B
    AnalogSettingsTypeB = 0x0C
    AnalogSettings212_424_848 = 0x0D


class ParamFlag(enum.IntFlag):
    """SetParameters flags (UM0701-02 §7.2.9; libnfc ``PARAM_*``)."""

    fNADUsed = 0x01
    fDIDUsed = 0x02
    fAutomaticATR_RES = 0x04
    fAutomaticRATS = 0x10
    fISO14443_4_PICC = 0x20
    fRemovePrePostAmble = 0x40


class BaudRateType(enum.IntEnum):
    """InListPassiveTarget BrTy (UM0701-02 §7.3.5)."""

    Iso14443A106 = 0x00
    FeliCa212 = 0x01
    FeliCa424 = 0x02
    Iso14443B106 = 0x03
    Jewel106 = 0x04


MAX_DATA_OUT = 262
"""Largest DataOut of one InDataExchange (UM0701-02 §7.3.8); longer APDUs are chained (MI)."""

_MI = 0x40  # "more information" bit of the Tg byte (host) and of the status (PN532), §7.3.8


def _byte(name: str, value: int) -> int:
    if not 0 <= value <= 0xFF:
        raise ValueError(f"{name} must fit in one byte, got {value}")
    return value


# --- request builders --------------------------------------------------------------------


def get_firmware_version() -> bytes:
    """``02`` (§7.2.2)."""
    return bytes((Command.GetFirmwareVersion,))


def sam_configuration(mode: SamMode = SamMode.Normal, timeout: int = 0, irq: bool = False) -> bytes:
    """``14 Mode Timeout IRQ`` (§7.2.10); leaves LowVBat mode. Raises ValueError."""
    return bytes((Command.SAMConfiguration, mode, _byte("timeout", timeout), int(irq)))


def rf_configuration_max_retries(
    atr: int = 0xFF, psl: int = 0x01, passive_activation: int = 0x01
) -> bytes:
    """``32 05 MxRtyATR MxRtyPSL MxRtyPassiveActivation`` (§7.3.1 item 5).

    A finite ``passive_activation`` (0x00-0xFE) makes InListPassiveTarget give
    up and answer ``NbTg = 0``; 0xFF (the power-on default) retries forever so
    the command never answers without a card. Raises ValueError.
    """
    return bytes(
        (
            Command.RFConfiguration,
            RfItem.MaxRetries,
            _byte("atr", atr),
            _byte("psl", psl),
            _byte("passive_activation", passive_activation),
        )
    )


def rf_configuration_field(on: bool, auto_rfca: bool = False) -> bytes:
    """``32 01 xx`` (§7.3.1 item 1): bit 0 RF on, bit 1 AutoRFCA."""
    return bytes((Command.RFConfiguration, RfItem.RfField, int(on) | (int(auto_rfca) << 1)))


def set_parameters(flags: ParamFlag) -> bytes:
    """``12 Flags`` (§7.2.9); libnfc uses AutoATR_RES | AutoRATS (0x14)."""
    return bytes((Command.SetParameters, int(flags) & 0xFF))


def in_list_passive_target(
    max_tg: int = 1, brty: BaudRateType = BaudRateType.Iso14443A106
) -> bytes:
    """``4A MaxTg BrTy`` (§7.3.5). Raises ValueError unless ``max_tg`` is 1 or 2."""
    if max_tg not in (1, 2):
        raise ValueError("MaxTg must be 1 or 2")
    return bytes((Command.InListPassiveTarget, max_tg, brty))


def in_data_exchange(tg: int, data: bytes, more: bool = False) -> bytes:
    """``40 Tg[|MI] DataOut`` (§7.3.8). Raises ValueError for a DataOut over 262 bytes."""
    if not 1 <= tg <= 0x0F:
        raise ValueError("Tg must be 1..15")
    if len(data) > MAX_DATA_OUT:
        raise ValueError(f"DataOut over {MAX_DATA_OUT} bytes must be chained")
    return bytes((Command.InDataExchange, tg | (_MI if more else 0))) + data


def in_release(tg: int = 0) -> bytes:
    """``52 Tg`` (§7.3.11); Tg 0 releases every target."""
    return bytes((Command.InRelease, _byte("tg", tg)))


# --- response parsers --------------------------------------------------------------------


def expect_response(command: Command, payload: bytes) -> bytes:
    """Check PD0 is ``command + 1`` and return the rest. Raises ReaderFault."""
    if not payload or payload[0] != (command + 1) & 0xFF:
        got = f"0x{payload[0]:02X}" if payload else "nothing"
        raise ReaderFault(f"PN532 {command.name}: unexpected response code {got}")
    return payload[1:]


@dataclass(frozen=True, slots=True)
class FirmwareVersion:
    """GetFirmwareVersion answer (§7.2.2): IC 0x32 for a PN532."""

    ic: int
    ver: int
    rev: int
    support: int

    def __str__(self) -> str:
        """nfcpy's format: ``PN532v1.6``."""
        return f"PN5{self.ic:02x}v{self.ver}.{self.rev}"

    @property
    def protocols(self) -> tuple[str, ...]:
        """Support bits (libnfc ``SUPPORT_ISO14443A 0x01 / B 0x02 / ISO18092 0x04``)."""
        names = ((0x01, "ISO14443A"), (0x02, "ISO14443B"), (0x04, "ISO18092"))
        return tuple(name for bit, name in names if self.support & bit)


def parse_firmware_version(payload: bytes) -> FirmwareVersion:
    """``03 IC Ver Rev Support``. Raises ReaderFault."""
    data = expect_response(Command.GetFirmwareVersion, payload)
    if len(data) != 4:
        raise ReaderFault("PN532 GetFirmwareVersion: answer is not 4 bytes")
    return FirmwareVersion(ic=data[0], ver=data[1], rev=data[2], support=data[3])


def parse_no_data(command: Command, payload: bytes) -> None:
    """Answers that carry no data (SAMConfiguration, RFConfiguration, SetParameters).

    Raises ReaderFault.
    """
    if expect_response(command, payload):
        raise ReaderFault(f"PN532 {command.name}: unexpected data in the answer")


@dataclass(frozen=True, slots=True, repr=False)
class Target:
    """One ISO/IEC 14443 type A target from InListPassiveTarget (§7.3.5)."""

    tg: int
    sens_res: bytes
    sel_res: int
    nfcid: bytes
    ats: bytes = b""

    @property
    def iso_dep(self) -> bool:
        """SAK bit 0x20: ISO/IEC 14443-4 compliant (libnfc ``SAK_ISO14443_4_COMPLIANT``)."""
        return bool(self.sel_res & 0x20)

    def __repr__(self) -> str:
        return (
            f"Target(tg={self.tg}, sens_res={self.sens_res.hex()}, sel_res=0x{self.sel_res:02X}, "
            f"nfcid_len={len(self.nfcid)}, ats_len={len(self.ats)})"
        )

    __str__ = __repr__


def parse_in_list_passive_target(payload: bytes) -> tuple[Target, ...]:
    """``4B NbTg [Tg SENS_RES(2) SEL_RES NFCIDLen NFCID [ATS]]...`` for 106 kbps type A.

    The ATS (its first byte TL counts the whole ATS) follows when SEL_RES says
    ISO/IEC 14443-4 and auto-RATS produced one. Raises ReaderFault.
    """
    data = expect_response(Command.InListPassiveTarget, payload)
    fault = ReaderFault("PN532 InListPassiveTarget: malformed target data")
    if not data or data[0] > 2:
        raise fault
    targets: list[Target] = []
    pos = 1
    for _ in range(data[0]):
        if len(data) < pos + 5:
            raise fault
        tg, sens_res, sel_res, uid_len = (
            data[pos],
            data[pos + 1 : pos + 3],
            data[pos + 3],
            data[pos + 4],
        )
        pos += 5
        if len(data) < pos + uid_len:
            raise fault
        nfcid = data[pos : pos + uid_len]
        pos += uid_len
        ats = b""
        if sel_res & 0x20 and pos < len(data):
            tl = data[pos]
            if tl == 0 or len(data) < pos + tl:
                raise fault
            ats = data[pos : pos + tl]
            pos += tl
        targets.append(Target(tg=tg, sens_res=sens_res, sel_res=sel_res, nfcid=nfcid, ats=ats))
    if pos != len(data):
        raise fault
    return tuple(targets)


@dataclass(frozen=True, slots=True, repr=False)
class DataExchange:
    """InDataExchange answer: ``more`` is the MI bit (more data follows, §7.3.8)."""

    more: bool
    data: bytes

    def __repr__(self) -> str:
        return f"DataExchange(more={self.more}, len={len(self.data)})"

    __str__ = __repr__


def parse_in_data_exchange(payload: bytes) -> DataExchange:
    """``41 Status DataIn``; status bit 6 = MI. Raises CardGone, ReaderFault."""
    data = expect_response(Command.InDataExchange, payload)
    if not data:
        raise ReaderFault("PN532 InDataExchange: answer without status")
    status = data[0]
    if status & 0x3F:
        raise status_error(status, Command.InDataExchange)
    return DataExchange(more=bool(status & _MI), data=data[1:])


def parse_in_release(payload: bytes) -> None:
    """``53 Status``. Raises CardGone, ReaderFault."""
    data = expect_response(Command.InRelease, payload)
    if len(data) != 1:
        raise ReaderFault("PN532 InRelease: answer is not one status byte")
    if data[0] & 0x3F:
        raise status_error(data[0], Command.InRelease)
