"""A simulated PN532 that speaks the real HSU byte protocol, with virtual cards.

Contract:

* ``SimPn532`` is the sans-I/O core: ``feed(bytes)`` takes whatever the host
  wrote and returns ``Send``/``Cancel`` outputs. It decodes host frames with
  ``drivers.pn532.frames``, answers each good command with an ACK then the
  response frame (``Send.delay`` is the simulated processing time), resends
  its last response on a NACK (``corrupt_responses`` breaks the checksum of that
  many response frames, resends included), and returns ``Cancel`` for a host ACK (abort:
  drop any response still waiting to go out). ``present(card)`` /
  ``remove()`` put a ``drivers.sim.cards.VirtualCard`` in or out of the field.
* Modelled behaviour (NXP UM0701-02; terminal-side.md §1): the chip starts
  in LowVBat mode and ignores frames until it sees ``0x55`` (the HSU wake-up);
  GetFirmwareVersion answers ``32 01 06 07`` (PN532 v1.6); SAMConfiguration,
  RFConfiguration (item 5 MaxRetries is remembered: with the power-on 0xFF an
  empty field gets no answer at all, as on the real chip), SetParameters
  (fAutomaticRATS adds the ATS to an ISO-DEP target); InListPassiveTarget
  answers ``NbTg = 0`` after ``poll_delay`` with no card, else one target;
  InDataExchange passes APDUs to the card, with MI chaining both ways
  (answers longer than ``max_data_in`` go out in pieces with status bit
  0x40); a card removed mid-APDU gives status 0x01, an exchange after it
  0x2B; InRelease; anything else gets the application error frame.
* ``SimTransport`` runs a ``SimPn532`` in memory behind the same interface as
  ``drivers.transport.SerialTransport`` (options ``chunk``, ``garbage_bytes``,
  ``pace_baud``), so the whole driver stack is tested without a pty.
* ``run_pn532_sim(peer, card, auto, commands)`` serves a ``SimPn532`` on a
  ``drivers.sim.pty.PtyPeer`` for ``sadad-reader-sim nfc``: with ``auto`` the
  named card is presented whenever the host polls (and taken away for
  ``auto_gap`` seconds after each InRelease, like a tap); without it a card is
  presented when ``present [CARD]`` (or an empty line) arrives on
  ``commands``, and stays until the host releases it or ``remove`` arrives.
  ``quit`` ends the function. With pacing on (the runner's ``pace_baud`` or
  the peer's) the chip also waits for the host's bytes to cross the wire.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from drivers.base import ReaderOffline
from drivers.pn532.commands import Command, ParamFlag, RfItem, Status
from drivers.pn532.frames import (
    ACK_FRAME,
    ERROR_FRAME,
    Ack,
    Frame,
    FrameDecoder,
    Nack,
    Tfi,
    encode_device,
)
from drivers.sim.cards import CARDS, CardRemoved, VirtualCard

__all__ = [
    "CARDS",
    "Cancel",
    "Send",
    "SimOutput",
    "SimPn532",
    "SimTransport",
    "run_pn532_sim",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True, repr=False)
class Send:
    """Bytes for the host, to go out ``delay`` seconds after the previous output."""

    data: bytes
    delay: float = 0.0

    def __repr__(self) -> str:
        return f"Send(len={len(self.data)}, delay={self.delay})"


@dataclass(frozen=True, slots=True)
class Cancel:
    """The host aborted: drop every ``Send`` not yet delivered."""


SimOutput = Send | Cancel


class SimPn532:
    """The simulated chip (sans-I/O). Not thread-safe."""

    def __init__(
        self,
        card: VirtualCard | None = None,
        *,
        awake: bool = False,
        poll_delay: float = 0.02,
        exchange_delay: float = 0.0,
        max_data_in: int = 262,
        firmware: bytes = bytes.fromhex("32010607"),
    ) -> None:
        if not 1 <= max_data_in <= 262:
            raise ValueError("max_data_in must be 1..262")
        self.card = card
        self.asleep = not awake
        self.poll_delay = poll_delay
        self.exchange_delay = exchange_delay
        self.max_data_in = max_data_in
        self.firmware = firmware
        self.decoder = FrameDecoder()
        self.max_retries_passive = 0xFF
        self.params = ParamFlag(0)
        self.sam_configured = False
        self.rf_on = False
        self.commands: list[int] = []  # command codes served, for tests
        self.corrupt_responses = 0  # flip the DCS of the next N response frames
        self.on_poll: Callable[[], None] | None = None
        self.on_release: Callable[[], None] | None = None
        self._active = False  # a target is activated
        self._lost = False  # the activated card left the field
        self._chain_in = bytearray()
        self._chain_out = b""
        self._last: bytes | None = None

    # --- the field ------------------------------------------------------------------------

    def present(self, card: VirtualCard) -> None:
        self.card = card
        self._lost = False

    def remove(self) -> None:
        if self.card is not None and self._active:
            self._lost = True
        self.card = None

    # --- host bytes -----------------------------------------------------------------------

    def feed(self, data: bytes) -> list[SimOutput]:
        """Take host bytes, return what the chip sends back."""
        if self.asleep:
            if 0x55 not in data:
                return []
            self.asleep = False
            data = data[data.index(0x55) :]
        out: list[SimOutput] = []
        for event in self.decoder.feed(data):
            if isinstance(event, Ack):
                self._chain_in.clear()
                out.append(Cancel())
            elif isinstance(event, Nack):
                if self._last is not None:
                    out.append(Send(self._corrupted(self._last)))
            elif isinstance(event, Frame) and event.tfi == Tfi.HostToPn532 and event.data:
                out.append(Send(ACK_FRAME))
                out.extend(self._command(event.data))
        return out

    def _corrupted(self, frame: bytes) -> bytes:
        """``frame`` with its DCS broken while ``corrupt_responses`` lasts (a line error)."""
        if not self.corrupt_responses:
            return frame
        self.corrupt_responses -= 1
        return frame[:-2] + bytes(((frame[-2] + 1) & 0xFF,)) + frame[-1:]

    def _respond(self, payload: bytes, delay: float = 0.0) -> list[SimOutput]:
        frame = encode_device(payload)
        self._last = frame
        return [Send(self._corrupted(frame), delay)]

    def _command(self, data: bytes) -> list[SimOutput]:
        code, args = data[0], data[1:]
        if len(self.commands) >= 10_000:  # a long-running simulator keeps the recent ones
            del self.commands[:5_000]
        self.commands.append(code)
        reply = bytes(((code + 1) & 0xFF,))
        if code == Command.GetFirmwareVersion:
            return self._respond(reply + self.firmware)
        if code == Command.SAMConfiguration and args[:1] == b"\x01":
            self.sam_configured = True
            return self._respond(reply)
        if code == Command.RFConfiguration and len(args) >= 2:
            if args[0] == RfItem.MaxRetries and len(args) == 4:
                self.max_retries_passive = args[3]
            elif args[0] == RfItem.RfField:
                self.rf_on = bool(args[1] & 0x01)
            return self._respond(reply)
        if code == Command.SetParameters and len(args) == 1:
            self.params = ParamFlag(args[0])
            return self._respond(reply)
        if code == Command.InListPassiveTarget and args[:2] == b"\x01\x00":
            return self._list_target(reply)
        if code == Command.InDataExchange and args:
            return self._exchange(reply, args[0], args[1:])
        if code == Command.InRelease and len(args) == 1:
            self._active = False
            self._lost = False
            self._chain_in.clear()
            self._chain_out = b""
            if self.on_release is not None:
                self.on_release()
            return self._respond(reply + b"\x00")
        log.debug("sim PN532: unsupported command 0x%02X", code)
        self._last = ERROR_FRAME
        return [Send(ERROR_FRAME)]

    def _list_target(self, reply: bytes) -> list[SimOutput]:
        self.rf_on = True
        self._active = False
        self._lost = False
        if self.card is None and self.on_poll is not None:
            self.on_poll()
        card = self.card
        if card is None:
            if self.max_retries_passive == 0xFF:
                return []  # retries forever: only the ACK until a card comes (§1.2)
            return self._respond(reply + b"\x00", self.poll_delay)
        self._active = True
        body = bytearray(b"\x01\x01")  # NbTg 1, Tg 1
        body += card.sens_res + bytes((card.sel_res, len(card.uid))) + card.uid
        if card.sel_res & 0x20 and self.params & ParamFlag.fAutomaticRATS and card.ats:
            body += card.ats
        return self._respond(reply + bytes(body), self.poll_delay / 4)

    def _exchange(self, reply: bytes, tg: int, data_out: bytes) -> list[SimOutput]:
        if tg & 0x0F != 1 or not self._active:
            return self._respond(reply + bytes((Status.CommandNotAcceptable,)))
        if self._lost or self.card is None:
            status = Status.CardDisappeared if self._lost else Status.Timeout
            self._lost = True
            return self._respond(reply + bytes((status,)), self.exchange_delay)
        if tg & 0x40:  # host chaining: more data follows
            self._chain_in += data_out
            return self._respond(reply + b"\x00", self.exchange_delay)
        if not data_out and self._chain_out and not self._chain_in:
            return self._send_chunk(reply)
        apdu = bytes(self._chain_in) + data_out
        self._chain_in.clear()
        try:
            self._chain_out = self.card.respond(apdu)
        except CardRemoved as gone:
            self.card = None
            self._lost = True
            return self._respond(reply + bytes((gone.status,)), self.exchange_delay)
        return self._send_chunk(reply)

    def _send_chunk(self, reply: bytes) -> list[SimOutput]:
        chunk, self._chain_out = (
            self._chain_out[: self.max_data_in],
            self._chain_out[self.max_data_in :],
        )
        status = 0x40 if self._chain_out else 0x00
        return self._respond(reply + bytes((status,)) + chunk, self.exchange_delay)


# --- in-memory transport -----------------------------------------------------------------


class SimTransport:
    """A ``SimPn532`` behind the ``SerialTransport`` interface, in memory.

    ``chunk`` caps each ``read`` (1 = one byte at a time); ``garbage_bytes`` go
    out before every chip output; ``pace_baud`` models both directions of the
    wire at 10 bits per byte: the chip answers only after the host's bytes have
    crossed it, and each output arrives after its own wire time. ``unplug()``
    makes every later call raise ReaderOffline.
    """

    def __init__(
        self,
        sim: SimPn532,
        *,
        chunk: int | None = None,
        garbage_bytes: bytes | None = None,
        pace_baud: int | None = None,
    ) -> None:
        self.sim = sim
        self.chunk = chunk
        self.garbage_bytes = garbage_bytes
        self.pace_baud = pace_baud
        self.is_open = False
        self.unplugged = False
        self.bytes_in = 0  # bytes the host wrote
        self.bytes_out = 0  # bytes delivered to the host
        self._rx = bytearray()
        self._scheduled: list[tuple[float, bytes]] = []
        self._line_free = 0.0
        self._host_line_free = 0.0
        self._wakeup: asyncio.Event | None = None

    def _check(self) -> None:
        if self.unplugged:
            raise ReaderOffline("sim: unplugged")
        if not self.is_open:
            raise ReaderOffline("sim: port is not open")

    async def open(self) -> None:
        if self.unplugged:
            raise ReaderOffline("sim: unplugged")
        self.is_open = True

    async def close(self) -> None:
        self.is_open = False

    def unplug(self) -> None:
        self.unplugged = True
        if self._wakeup is not None:
            self._wakeup.set()

    def reset_input(self) -> None:
        self._check()
        self._promote(asyncio.get_running_loop().time())
        self._rx.clear()

    async def write(self, data: bytes) -> None:
        self._check()
        self.bytes_in += len(data)
        loop = asyncio.get_running_loop()
        now = loop.time()
        if self.pace_baud:
            # the chip sees the host's bytes only after their wire time
            self._host_line_free = max(now, self._host_line_free) + len(data) * 10 / self.pace_baud
            now = self._host_line_free
        for out in self.sim.feed(data):
            if isinstance(out, Cancel):
                self._scheduled.clear()
                continue
            payload = (self.garbage_bytes or b"") + out.data
            start = max(now + out.delay, self._line_free)
            wire = len(payload) * 10 / self.pace_baud if self.pace_baud else 0.0
            self._line_free = start + wire
            self._scheduled.append((self._line_free, payload))
            now = self._line_free
        if self._wakeup is not None:
            self._wakeup.set()

    def _promote(self, now: float) -> None:
        while self._scheduled and self._scheduled[0][0] <= now:
            self._rx += self._scheduled.pop(0)[1]

    async def read(self, max_bytes: int = 4096, timeout: float | None = None) -> bytes:
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        if self._wakeup is None:
            self._wakeup = asyncio.Event()
        while True:
            self._check()
            now = loop.time()
            self._promote(now)
            if self._rx:
                size = min(max_bytes, self.chunk or max_bytes)
                data = bytes(self._rx[:size])
                del self._rx[:size]
                self.bytes_out += len(data)
                return data
            wake_at = self._scheduled[0][0] if self._scheduled else None
            if deadline is not None and (wake_at is None or deadline < wake_at):
                wake_at = deadline
            if deadline is not None and now >= deadline:
                return b""
            self._wakeup.clear()
            wait = None if wake_at is None else max(0.0, wake_at - now)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await self._wakeup.wait()


# --- pty runner --------------------------------------------------------------------------


class Peer(Protocol):
    """What ``run_pn532_sim`` needs from ``drivers.sim.pty.PtyPeer``."""

    async def read(self, timeout: float | None = None) -> bytes: ...

    async def write(self, data: bytes) -> None: ...


async def run_pn532_sim(
    peer: Peer,
    card: str | None,
    auto: bool,
    commands: asyncio.Queue[str],
    *,
    sim: SimPn532 | None = None,
    auto_gap: float = 1.0,
    pace_baud: int | None = None,
) -> None:
    """Serve a simulated PN532 on ``peer`` until ``quit`` arrives or the task is cancelled.

    ``card`` names the card from ``CARDS`` presented by ``auto`` and by a bare
    ``present``; commands: ``present [CARD]`` (or an empty line), ``remove``,
    ``quit``. ``pace_baud`` paces the chip's output here, on an absolute schedule
    (use it with an unpaced peer; a peer's own ``pace_baud`` sleeps per write).
    Raises ValueError for an unknown card name.
    """
    default = card or "visa"
    if default not in CARDS:
        raise ValueError(f"unknown card {default!r}; known: {', '.join(sorted(CARDS))}")
    chip = sim if sim is not None else SimPn532()
    made: dict[str, VirtualCard] = {}
    released_at = [float("-inf")]

    def make(name: str) -> VirtualCard:
        if name not in made:
            made[name] = CARDS[name]()
        return made[name]

    def on_poll() -> None:
        if auto and time.monotonic() - released_at[0] >= auto_gap:
            chip.present(make(default))

    def on_release() -> None:
        released_at[0] = time.monotonic()
        chip.remove()

    chip.on_poll = on_poll
    chip.on_release = on_release
    loop = asyncio.get_running_loop()
    # Bit time of the simulated wire: ours when we pace, else the peer's if it paces.
    wire_baud = pace_baud or getattr(peer, "pace_baud", None)
    outbox: asyncio.Queue[tuple[int, float, bytes]] = asyncio.Queue()
    generation = [0]
    line_free = [0.0]

    async def writer() -> None:
        while True:
            gen, due, data = await outbox.get()
            if gen != generation[0]:
                continue
            wait = due - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
                if gen != generation[0]:
                    continue
            await peer.write(data)

    async def host() -> None:
        while True:
            data = await peer.read(0.5)
            if not data:
                continue
            now = loop.time()
            # A pty moves the host's bytes at once; on a wire the chip has them
            # only after 10 bit times per byte.
            due = now + (len(data) * 10 / wire_baud if wire_baud else 0.0)
            for out in chip.feed(data):
                if isinstance(out, Cancel):
                    generation[0] += 1
                    line_free[0] = now
                    continue
                # Absolute schedule: a late wake-up is absorbed, not accumulated.
                due = max(due + out.delay, line_free[0])
                if pace_baud:
                    due += len(out.data) * 10 / pace_baud
                line_free[0] = due
                outbox.put_nowait((generation[0], due, out.data))

    async def operator() -> None:
        while True:
            words = (await commands.get()).split()
            verb = words[0].lower() if words else "present"
            if verb == "quit":
                return
            if verb == "present":
                name = words[1] if len(words) > 1 else default
                if name not in CARDS:
                    log.warning("sim PN532: unknown card %r", name)
                    continue
                chip.present(make(name))
                log.info("sim PN532: %s card presented", name)
            elif verb == "remove":
                chip.remove()
                log.info("sim PN532: card removed")
            else:
                log.warning("sim PN532: unknown command %r", verb)

    tasks = {
        asyncio.create_task(writer()),
        asyncio.create_task(host()),
        asyncio.create_task(operator()),
    }
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            task.result()  # re-raise a failure (a peer error ends the simulator)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
