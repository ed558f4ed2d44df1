"""``sadad-reader-sim``: a simulated reader or receipt printer on a pty, for the demo,
tests and technicians.

Usage::

    sadad-reader-sim nfc|magstripe|scanner --link PATH [--card NAME] [--auto]
        [--interval S] [--baud N --pace] [--chunk N] [--garbage]
        [--model generic|honeywell|cipherlab] [--aim] [--crlf]
        [--format idtech|magtek] [--lrc]
    sadad-reader-sim printer --link PATH --out FILE [--baud N --pace] [--chunk N]

It creates a pty, symlinks the device end at PATH (configure the agent with
``KIND:PATH``), prints ``ready PATH`` (flushed) and serves the device until
``quit``, SIGINT or SIGTERM (end of input does not stop it); the link is
removed on exit and ``bye`` printed. Commands on stdin, one per line:

* empty line / ``present [NAME]``: present the default (or named) card/code;
* ``remove``: take the card away (NFC);
* ``unplug`` / ``replug``: pull the cable / plug it back (new pty, same link);
* ``garbage``: send line noise (``GARBAGE``) now, as a flaky cable would:
  between two frames (inside one with ``--chunk`` or ``--pace``); the driver
  must resynchronise;
* ``quit``.

``printer`` is an ESC/POS receipt printer (``drivers.sim.printer``,
configure the agent with ``escpos:PATH``): each receipt it cuts is appended
to ``--out FILE`` (required), followed by a line of 20 '='. Its commands:
``paper-out`` / ``paper-in``, ``cover-open`` / ``cover-close``, ``offline`` /
``online`` (while not ready it drops what it is sent, and says so in its
status replies), ``status`` (prints the state and the printed/dropped
counts), and ``unplug``, ``replug``, ``garbage``, ``quit`` as above;
``present`` and ``remove`` answer that printers take no cards.

``--auto`` presents by itself: NFC and scanners with an enable command
present once each time the driver arms them; output-only swipe readers and
the ``generic`` scanner (which cannot see arming) present every
``--interval`` seconds. ``--pace`` delivers bytes at ``--baud`` wire speed,
``--chunk N`` in pieces of N bytes, ``--garbage`` sends line noise before
every write (the driver must resynchronise). The output never contains card
data, only card names.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import signal
import sys
import threading
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

from drivers.sim.magstripe import FORMATS, SIM_SWIPES, MagstripeSim
from drivers.sim.printer import COMMANDS as PRINTER_COMMANDS
from drivers.sim.printer import PrinterSim
from drivers.sim.pty import PtyPeer
from drivers.sim.scanner import SIM_CODES, ScannerSim

__all__ = ["GARBAGE", "main"]

GARBAGE = b"\x00\xff\x80\xfe"
"""Line noise for ``--garbage``: no STX/ETX/CR/LF, not a frame start."""


class _Sim(Protocol):
    async def present(self, name: str | None = None) -> str: ...
    async def remove(self) -> str: ...
    async def run(self) -> None: ...


class _NfcSim:
    """Adapter to ``drivers.sim.pn532.run_pn532_sim(peer, card, auto, commands)``:
    ``present [NAME]`` and ``remove`` lines go through its command queue."""

    def __init__(self, peer: PtyPeer, card: str | None, auto: bool) -> None:
        self.peer = peer
        self.card = card
        self.auto = auto
        self.commands: asyncio.Queue[str] = asyncio.Queue()

    async def present(self, name: str | None = None) -> str:
        await self.commands.put(f"present {name}" if name else "present")
        return f"present {name or self.card or '(default)'}"

    async def remove(self) -> str:
        await self.commands.put("remove")
        return "card removed"

    async def run(self) -> None:
        module = importlib.import_module("drivers.sim.pn532")
        run: Callable[..., Awaitable[None]] = module.run_pn532_sim
        await run(self.peer, self.card, self.auto, self.commands)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="sadad-reader-sim", description="Simulated card reader on a pty."
    )
    p.add_argument("kind", choices=("nfc", "magstripe", "scanner", "printer"))
    p.add_argument("--link", required=True, help="path of the symlink to the pty device")
    p.add_argument("--card", help="default card or code name")
    p.add_argument("--auto", action="store_true", help="present by itself (see --help text)")
    p.add_argument("--interval", type=float, default=2.0, help="seconds between auto swipes")
    p.add_argument("--baud", type=int, default=None, help="nominal baud rate (with --pace)")
    p.add_argument("--pace", action="store_true", help="deliver bytes at --baud wire speed")
    p.add_argument("--chunk", type=int, default=None, help="deliver N bytes at a time")
    p.add_argument("--garbage", action="store_true", help="send line noise before each write")
    p.add_argument("--model", default="generic", help="scanner model: generic|honeywell|cipherlab")
    p.add_argument("--aim", action="store_true", help="scanner: send AIM id ]Q1 before data")
    p.add_argument("--crlf", action="store_true", help="scanner: end lines with CR LF")
    p.add_argument("--format", default="idtech", choices=FORMATS, help="swipe output format")
    p.add_argument("--lrc", action="store_true", help="swipe: send the LRC after each track")
    p.add_argument("--out", type=Path, help="printer: file the printed receipts are appended to")
    return p


def _make_sim(args: argparse.Namespace, peer: PtyPeer) -> _Sim:
    if args.kind == "printer":
        return PrinterSim(peer, args.out)
    if args.kind == "magstripe":
        return MagstripeSim(
            peer,
            card=args.card or "visa",
            fmt=args.format,
            auto=args.auto,
            interval=args.interval,
            lrc=args.lrc,
        )
    if args.kind == "scanner":
        return ScannerSim(
            peer,
            code=args.card or "wechat",
            model=args.model,
            auto=args.auto,
            interval=args.interval,
            aim=args.aim,
            crlf=args.crlf,
        )
    return _NfcSim(peer, args.card, args.auto)


def _stdin_lines(loop: asyncio.AbstractEventLoop, queue: asyncio.Queue[str | None]) -> None:
    """Thread: forward stdin lines to the loop; None at end of input."""
    try:
        for line in sys.stdin:
            loop.call_soon_threadsafe(queue.put_nowait, line.strip())
    except (OSError, ValueError):
        pass
    with contextlib.suppress(RuntimeError):  # loop already closed
        loop.call_soon_threadsafe(queue.put_nowait, None)


def _say(text: str) -> None:
    print(text, flush=True)


async def _serve(args: argparse.Namespace) -> int:
    pace = args.baud if args.pace else None
    if args.pace and not args.baud:
        pace = {"nfc": 115200, "printer": 19200}.get(args.kind, 9600)
    peer = PtyPeer(
        args.link,
        pace_baud=pace,
        chunk=args.chunk,
        garbage_bytes=GARBAGE if args.garbage else None,
    )
    try:
        sim = _make_sim(args, peer)
    except ValueError as exc:
        print(f"sadad-reader-sim: {exc}", file=sys.stderr)
        return 2
    try:
        await peer.start()
    except OSError as exc:
        print(f"sadad-reader-sim: cannot create {args.link}: {exc}", file=sys.stderr)
        return 1
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    lines: asyncio.Queue[str | None] = asyncio.Queue()
    threading.Thread(target=_stdin_lines, args=(loop, lines), daemon=True).start()
    device = asyncio.create_task(sim.run(), name="sim-device")
    _say(f"ready {args.link}")
    stopper = asyncio.create_task(stop.wait())
    code = 0
    stdin_open = True
    try:
        while True:
            waits: set[asyncio.Future[Any]] = {stopper, device}
            getter = asyncio.create_task(lines.get()) if stdin_open else None
            if getter is not None:
                waits.add(getter)
            done, _ = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            if getter is not None and getter not in done:
                getter.cancel()
            if device in done:
                failure = device.exception()
                if failure is not None:
                    print(f"sadad-reader-sim: device loop failed: {failure!r}", file=sys.stderr)
                    code = 1
                break
            if stopper in done or getter is None:
                break
            line = getter.result()
            if line is None:
                stdin_open = False  # end of input: serve until a signal
                continue
            if not await _command(line, sim, peer):
                break
    finally:
        stopper.cancel()
        device.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await device
        await peer.close()
        _say("bye")
    return code


# the reader commands a printer shares (present/remove only say it takes no cards)
_GENERAL_COMMANDS = frozenset(
    ("", "present", "p", "remove", "unplug", "replug", "garbage", "quit", "exit", "q")
)


async def _command(line: str, sim: _Sim, peer: PtyPeer) -> bool:
    """Run one stdin command; False to quit."""
    word, _, arg = line.partition(" ")
    arg = arg.strip()
    if isinstance(sim, PrinterSim) and word in PRINTER_COMMANDS:
        _say(sim.apply(word))
    elif isinstance(sim, PrinterSim) and word == "status":
        _say(sim.describe())
    elif isinstance(sim, PrinterSim) and word not in _GENERAL_COMMANDS:
        _say(
            "commands: paper-out | paper-in | cover-open | cover-close | offline | online "
            "| status | unplug | replug | garbage | quit"
        )
    elif word in ("", "present", "p"):
        try:
            _say(await sim.present(arg or None))
        except (KeyError, ValueError) as exc:
            _say(f"error: {exc}")
    elif word == "remove":
        _say(await sim.remove())
    elif word == "unplug":
        peer.unplug()
        _say("unplugged")
    elif word == "garbage":
        await peer.write(GARBAGE)
        _say(f"garbage {len(GARBAGE)} bytes")
    elif word == "replug":
        peer.replug()
        _say(f"replugged {peer.link}")
    elif word in ("quit", "exit", "q"):
        return False
    else:
        _say("commands: present [NAME] | remove | unplug | replug | garbage | quit")
    return True


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.kind == "printer" and args.out is None:
        parser.error("printer needs --out FILE (where the printed receipts go)")
    if args.kind == "magstripe" and args.card and args.card not in SIM_SWIPES:
        print(f"sadad-reader-sim: known swipes: {', '.join(SIM_SWIPES)}", file=sys.stderr)
        return 2
    if args.kind == "scanner" and args.card and args.card not in SIM_CODES:
        print(f"sadad-reader-sim: known codes: {', '.join(SIM_CODES)}", file=sys.stderr)
        return 2
    try:
        return asyncio.run(_serve(args))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
