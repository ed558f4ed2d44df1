"""Simulated serial swipe reader: ID TECH or MagTek style output over a ``PtyPeer``.

Contract:

* Named virtual swipes (``SIM_SWIPES``): ``visa``, ``mastercard``, ``amex``,
  ``unionpay`` (service code 101), ``chip`` (a Visa with service code 201:
  the driver returns it and the agent asks for a tap), ``track1only``
  (track 2 failed), ``badlrc`` (LRCs sent, track 2's wrong: the driver falls back to
  track 1) and
  ``bad`` (no track read: ``%E?;E?``). Test card numbers only.
* Output formats (``drivers.magstripe`` docstring): ``idtech`` =
  ``%T1?;T2?<CR>`` and ``magtek`` = ``<STX>%T1?;T2?<CR><ETX>``; ``lrc=True``
  appends each track's LRC character after its end sentinel.
* The devices are output-only: nothing the driver sends is interpreted, and
  the simulator cannot see when the driver arms. So ``auto`` presents the
  default swipe once every ``interval`` seconds while plugged in (the driver
  discards swipes that arrive while it is disarmed, as with a real reader).
  Without ``auto`` a swipe happens only on ``present()``.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from drivers.magstripe import track1_lrc, track2_lrc
from drivers.sim.pty import PtyPeer

__all__ = ["FORMATS", "SIM_SWIPES", "MagstripeSim", "SimSwipe", "swipe_bytes"]

FORMATS = ("idtech", "magtek")


@dataclass(frozen=True, slots=True)
class SimSwipe:
    """Test card on a stripe; ``None`` tracks did not read (sent as ``E``);
    ``bad_lrc`` sends LRCs with track 2's wrong."""

    track1: str | None
    track2: str | None
    bad_lrc: bool = False


def _t1(pan: str, name: str, expiry: str, service: str, disc: str = "0000000000") -> str:
    return f"%B{pan}^{name}^{expiry}{service}{disc}?"


def _t2(pan: str, expiry: str, service: str, disc: str = "00000000000") -> str:
    return f";{pan}={expiry}{service}{disc}?"


SIM_SWIPES: dict[str, SimSwipe] = {
    "visa": SimSwipe(
        _t1("4761739001010119", "TEST/CARD VISA", "2812", "101"),
        _t2("4761739001010119", "2812", "101"),
    ),
    "mastercard": SimSwipe(
        _t1("5413330089020011", "TEST/CARD MC", "2910", "101"),
        _t2("5413330089020011", "2910", "101"),
    ),
    "amex": SimSwipe(
        _t1("374245000000124", "TEST/CARD AMEX", "2706", "101"),
        _t2("374245000000124", "2706", "101"),
    ),
    "unionpay": SimSwipe(
        _t1("6250940000000001", "TEST/CARD CUP", "3001", "101"),
        _t2("6250940000000001", "3001", "101"),
    ),
    "chip": SimSwipe(
        _t1("4761739001010010", "TEST/CARD CHIP", "2812", "201"),
        _t2("4761739001010010", "2812", "201"),
    ),
    "track1only": SimSwipe(_t1("4000000000000002", "TEST/CARD T1", "2805", "101"), None),
    "badlrc": SimSwipe(
        _t1("4761739001010119", "TEST/CARD VISA", "2812", "101"),
        _t2("4761739001010119", "2812", "101"),
        bad_lrc=True,
    ),
    "bad": SimSwipe(None, None),
}


def _with_lrc(segment: str, lrc: str, bad: bool) -> str:
    if not bad:
        return segment + lrc
    # a wrong LRC that is still a character of the track's set, never a sentinel
    wrong = chr(ord(lrc) ^ 0x01)
    if wrong in "%;+?":
        wrong = chr(ord(lrc) ^ 0x02)
    return segment + wrong


def swipe_bytes(name: str, fmt: str = "idtech", *, lrc: bool = False) -> bytes:
    """The bytes a reader sends for swipe ``name``. Raises KeyError, ValueError."""
    swipe = SIM_SWIPES[name]
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}")
    t1 = swipe.track1 if swipe.track1 is not None else "%E?"
    t2 = swipe.track2 if swipe.track2 is not None else ";E?"
    if (lrc or swipe.bad_lrc) and swipe.track1 is not None:
        t1 = _with_lrc(t1, track1_lrc(t1), False)
    if (lrc or swipe.bad_lrc) and swipe.track2 is not None:
        t2 = _with_lrc(t2, track2_lrc(t2), swipe.bad_lrc)
    body = (t1 + t2).encode("ascii")
    if fmt == "magtek":
        return b"\x02" + body + b"\r\x03"
    return body + b"\r"


class MagstripeSim:
    """An output-only swipe reader on ``peer``."""

    names = tuple(SIM_SWIPES)

    def __init__(
        self,
        peer: PtyPeer,
        *,
        card: str = "visa",
        fmt: str = "idtech",
        auto: bool = False,
        interval: float = 2.0,
        lrc: bool = False,
    ) -> None:
        if card not in SIM_SWIPES:
            raise ValueError(f"unknown swipe {card!r}; known: {', '.join(SIM_SWIPES)}")
        if fmt not in FORMATS:
            raise ValueError(f"format must be one of {', '.join(FORMATS)}")
        self.peer = peer
        self.card = card
        self.fmt = fmt
        self.auto = auto
        self.interval = interval
        self.lrc = lrc
        self.presented = 0

    async def present(self, name: str | None = None) -> str:
        """Swipe ``name`` (default: the configured card); returns what happened."""
        name = name or self.card
        data = swipe_bytes(name, self.fmt, lrc=self.lrc)
        await self.peer.write(data)
        self.presented += 1
        return f"swiped {name}"

    async def remove(self) -> str:
        return "a swipe has nothing to remove"

    async def run(self) -> None:
        """Drain what the driver sends (ignored) and swipe every ``interval`` with auto."""
        drain = asyncio.create_task(self._drain())
        try:
            while self.auto:
                await asyncio.sleep(self.interval)
                if self.peer.plugged:
                    await self.present()
            await drain
        finally:
            drain.cancel()

    async def _drain(self) -> None:
        while not self.peer.closed:
            await self.peer.read()
