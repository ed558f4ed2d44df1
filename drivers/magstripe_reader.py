"""Serial magnetic stripe reader (kind ``magstripe``): ID TECH / MagTek style output.

Contract: a ``drivers.base.Reader`` over ``drivers.stream_reader.StreamReader``.
Spec: ``magstripe:PORT[;baud=9600][;prefix=..][;suffix=..][;terminator=auto|none]``.

* The devices modelled are output-only (they send a message per swipe and
  take no commands), so ``probe()`` can only prove the port is open and not
  hung up; the model is reported as ``serial swipe reader (output-only)``.
  A reader unplugged while idle is noticed by the pump (EOF/EIO on the port).
* Arming does not reach the device (there is nothing to enable): it opens the
  gate in the driver. Swipes while disarmed are read and discarded.
* ``next_presentation()`` returns a ``CardRead`` (entry mode MAGSTRIPE) for a
  good swipe, including chip cards (service code 2xx/6xx: ``chip_card`` is
  True and the agent asks for a tap); a swipe with no valid track raises
  ``CardDataError("swipe not read - swipe again")`` and the reader stays armed.
  Track parsing rules: ``drivers.magstripe``.
"""

from __future__ import annotations

import logging

from drivers.base import CardDataError, CardRead, ReaderInfo
from drivers.magstripe import SWIPE_AGAIN, card_from_swipe, parse_swipe
from drivers.stream_reader import StreamReader

__all__ = ["MagstripeReader"]

log = logging.getLogger(__name__)


class MagstripeReader(StreamReader):
    """An output-only serial swipe reader."""

    kind = "magstripe"
    default_baud = 9600
    OPTIONS = frozenset({"baud", "prefix", "suffix", "terminator", "idle", "stale"})

    def decode(self, message: bytes) -> CardRead:
        """Raises CardDataError (no valid track, tracks disagree)."""
        swipe = parse_swipe(message)
        if swipe.problems:
            log.info("reader %s swipe: %s", self.name, "; ".join(swipe.problems))
        try:
            card = card_from_swipe(swipe)
        except CardDataError:
            log.info("reader %s: %s", self.name, SWIPE_AGAIN)
            raise
        log.info(
            "reader %s swipe: %s %s%s",
            self.name,
            card.brand,
            card.masked_pan,
            " (chip card)" if card.chip_card else "",
        )
        return card

    async def probe_device(self) -> ReaderInfo:
        """Nothing to ask an output-only reader: report the port and settings."""
        return ReaderInfo(
            kind=self.kind,
            model="serial swipe reader (output-only)",
            details={"port": self.port, "baud": str(self.baudrate)},
        )
