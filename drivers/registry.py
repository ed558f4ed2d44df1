"""Reader specs, the reader factory, and ``ManagedReader``: readers that survive unplugging.

Contract:

* ``parse_spec("KIND:PORT[;key=value...]") -> ReaderSpec``. KIND is one of
  ``KINDS``; PORT is an absolute device path or a pyserial URL with an
  allowed scheme (``loop://``, ``socket://``, ``rfc2217://``; ``spy://`` is
  refused because it writes the traffic - card data - to a log); options are
  ``key=value`` pairs separated by ``;``, each key at most once, and for
  ``magstripe``/``scanner`` only the keys and values the driver knows.
  Option values may use ``\\r \\n \\t \\\\ \\xHH`` escapes (``;`` is ``\\x3b``).
  Any problem raises ``ReaderSpecError`` (a ``ValueError``) naming what is
  wrong and what is allowed. Specs hold no card data, so errors quote them.
* ``create_reader(name, spec) -> Reader``: ``pn532`` ->
  ``drivers.nfc_reader.Pn532Reader`` (imported on first use), ``magstripe`` ->
  ``MagstripeReader``, ``scanner`` -> ``ScannerReader``. Raises
  ReaderSpecError.
* ``ManagedReader(reader, listener)`` keeps a reader open: ``start()`` runs a
  supervisor task that opens the reader and, on ``ReaderOffline`` /
  ``ReaderFault`` (from open, a health probe every ``health_interval`` s while
  idle and disarmed, arm/disarm, or a presentation wait), closes it, reports
  ``offline``/``fault`` (any other exception from open or probe - a driver
  bug - is logged and counts as a fault) and reopens with capped exponential backoff and jitter
  (``backoff_initial * 2**n``, at most ``backoff_max``, times a random factor
  in ``[1 - jitter, 1 + jitter]``). ``state`` is the ``ReaderState`` the
  status topic shows; the ``StateListener(name, state, reason)`` is called on
  every state change (a listener that raises is logged, never propagated).
* Arming survives a replug. ``arm(ctx)`` records the payment context and arms
  the device now if it is ready, or as soon as it is reopened.
  ``next_presentation()`` **keeps waiting across an unplug**: the failure is
  reported through the state (the screen can say "reader offline"), the reader
  is reopened and re-armed with the same context, and the wait goes on; the
  caller bounds it with its own deadline (the order's ``expires_at``) or by
  cancelling. Presentation-level errors (``CardDataError``,
  ``CardNotSupported``, ``CardGone``) are raised to the caller, the reader
  stays armed. ``disarm()`` forgets the context; it never raises for a device
  that is offline. ``close()`` stops everything and never raises.
* Chosen over "raise ReaderOffline to the caller" because a cashier's payment
  should not fail for a cable that is plugged back in while the customer is
  still waiting; the agent learns of the outage from the listener.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import random
import re
from collections.abc import Callable
from dataclasses import dataclass, field

from drivers.base import (
    ArmContext,
    Presentation,
    Reader,
    ReaderError,
    ReaderFault,
    ReaderInfo,
    ReaderOffline,
    ReaderState,
    StateListener,
)
from drivers.stream_reader import parse_escapes

__all__ = [
    "KINDS",
    "ManagedReader",
    "ReaderSpec",
    "ReaderSpecError",
    "check_baud",
    "check_port",
    "create_reader",
    "parse_options",
    "parse_spec",
]

log = logging.getLogger(__name__)

KINDS = ("pn532", "magstripe", "scanner")
URL_SCHEMES = ("loop", "socket", "rfc2217")
BAUD_RATES = (1200, 2400, 4800, 9600, 19200, 38400, 57600, 115200, 230400, 460800, 921600)

_KEY = re.compile(r"[a-z][a-z0-9_]*\Z")


_Check = Callable[[str], None]


class ReaderSpecError(ValueError):
    """A reader spec string that cannot be used; the text says what is allowed."""


@dataclass(frozen=True, slots=True)
class ReaderSpec:
    kind: str
    port: str
    options: dict[str, str] = field(default_factory=dict)

    def __str__(self) -> str:
        opts = "".join(f";{k}={v}" for k, v in self.options.items())
        return f"{self.kind}:{self.port}{opts}"


def check_baud(value: str) -> None:
    """A ``baud=`` value: one of ``BAUD_RATES``. Raises ReaderSpecError (also used
    for printer specs, ``drivers.escpos.spec``)."""
    if not value.isdigit() or int(value) not in BAUD_RATES:
        raise ReaderSpecError(
            f"baud={value!r} is not a standard rate; use one of {', '.join(map(str, BAUD_RATES))}"
        )


def _check_escapes(key: str) -> _Check:
    def check(value: str) -> None:
        try:
            parse_escapes(value)
        except ValueError as exc:
            raise ReaderSpecError(f"{key}: {exc}") from None

    return check


def _check_choice(key: str, *choices: str) -> _Check:
    def check(value: str) -> None:
        if value not in choices:
            allowed = ", ".join(choices)
            raise ReaderSpecError(f"{key}={value!r} is not allowed; use one of {allowed}")

    return check


def _check_seconds(key: str) -> _Check:
    def check(value: str) -> None:
        try:
            seconds = float(value)
        except ValueError:
            seconds = -1.0
        if not 0 <= seconds <= 3600:
            raise ReaderSpecError(f"{key}={value!r} must be seconds between 0 and 3600")

    return check


_COMMON: dict[str, _Check] = {
    "baud": check_baud,
    "prefix": _check_escapes("prefix"),
    "suffix": _check_escapes("suffix"),
    "terminator": _check_choice("terminator", "auto", "none"),
    "idle": _check_seconds("idle"),
    "stale": _check_seconds("stale"),
}

_OPTIONS: dict[str, dict[str, _Check] | None] = {
    "pn532": None,  # checked by the driver class when it declares OPTIONS
    "magstripe": dict(_COMMON),
    "scanner": {
        **_COMMON,
        "model": _check_choice("model", "generic", "honeywell", "cipherlab"),
        "aim": _check_choice("aim", "0", "1"),
        "retrigger": _check_seconds("retrigger"),
    },
}


def check_port(port: str) -> None:
    """A PORT as the contract above allows it. Raises ReaderSpecError (also used
    for printer specs, ``drivers.escpos.spec``)."""
    if not port:
        raise ReaderSpecError("the port is empty; use a device path such as /dev/ttyUSB0 or a URL")
    if "://" in port:
        scheme = port.split("://", 1)[0]
        if scheme == "spy":
            raise ReaderSpecError("spy:// logs all traffic (card data); it is not allowed")
        if scheme not in URL_SCHEMES:
            raise ReaderSpecError(
                f"port URL scheme {scheme!r} is not allowed; use "
                + ", ".join(f"{s}://" for s in URL_SCHEMES)
                + " or a device path"
            )
    elif not port.startswith("/"):
        raise ReaderSpecError(
            f"port {port!r} must be an absolute device path (/dev/ttyUSB0) or a URL; "
            "a relative path would depend on the agent's working directory: write it "
            "in full from / (sadad-sandbox provision does that for you)"
        )


def parse_options(pairs: list[str]) -> dict[str, str]:
    """The ``;key=value`` parts of a spec to a dict (keys lower-cased, blanks
    skipped). Raises ReaderSpecError for a part that is not key=value or a key
    given twice (also used for printer specs, ``drivers.escpos.spec``)."""
    options: dict[str, str] = {}
    for pair in pairs:
        pair = pair.strip()
        if not pair:
            continue
        key, eq, value = pair.partition("=")
        key, value = key.strip().lower(), value.strip()
        if not eq or not _KEY.match(key):
            raise ReaderSpecError(f"option {pair!r} is not key=value")
        if key in options:
            raise ReaderSpecError(f"option {key!r} is given twice")
        options[key] = value
    return options


def parse_spec(spec: str) -> ReaderSpec:
    """``KIND:PORT[;key=value...]`` to a ``ReaderSpec``. Raises ReaderSpecError."""
    spec = spec.strip()
    kind, sep, rest = spec.partition(":")
    if not sep:
        raise ReaderSpecError(
            f"reader spec {spec!r} has no KIND: prefix; expected KIND:PORT[;key=value...] "
            f"with KIND one of {', '.join(KINDS)}"
        )
    kind = kind.strip().lower()
    if kind not in KINDS:
        raise ReaderSpecError(f"reader kind {kind!r} is unknown; use one of {', '.join(KINDS)}")
    port, *pairs = rest.split(";")
    port = port.strip()
    check_port(port)
    allowed = _OPTIONS[kind]
    options = parse_options(pairs)
    for key, value in options.items():
        if allowed is not None:
            check = allowed.get(key)
            if check is None:
                raise ReaderSpecError(
                    f"option {key!r} is not known for {kind}; allowed: {', '.join(sorted(allowed))}"
                )
            check(value)
    return ReaderSpec(kind, port, options)


def _reader_class(kind: str) -> type[Reader]:
    if kind == "magstripe":
        from drivers.magstripe_reader import MagstripeReader

        return MagstripeReader
    if kind == "scanner":
        from drivers.scanner_reader import ScannerReader

        return ScannerReader
    module = importlib.import_module("drivers.nfc_reader")  # written separately; lazy
    cls: type[Reader] = module.Pn532Reader
    return cls


def create_reader(name: str, spec: str) -> Reader:
    """A reader for ``spec`` named ``name`` (not opened). Raises ReaderSpecError."""
    parsed = parse_spec(spec)
    cls = _reader_class(parsed.kind)
    declared = getattr(cls, "OPTIONS", None)
    if declared is not None:
        unknown = sorted(set(parsed.options) - set(declared))
        if unknown:
            raise ReaderSpecError(
                f"option {unknown[0]!r} is not known for {parsed.kind}; "
                f"allowed: {', '.join(sorted(declared))}"
            )
    try:
        return cls(name, parsed.port, parsed.options)
    except ValueError as exc:
        raise ReaderSpecError(str(exc)) from None


class ManagedReader:
    """A reader kept open across unplug/replug; see the module contract."""

    def __init__(
        self,
        reader: Reader,
        listener: StateListener | None = None,
        *,
        backoff_initial: float = 0.5,
        backoff_max: float = 30.0,
        jitter: float = 0.2,
        health_interval: float = 5.0,
        rng: random.Random | None = None,
    ) -> None:
        self.reader = reader
        self.listener = listener
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.jitter = jitter
        self.health_interval = health_interval
        self._rng = rng or random.Random()  # jitter, not security
        self.state = ReaderState.OFFLINE
        self.reason = "not opened yet"
        self.info: ReaderInfo | None = None
        self._ctx: ArmContext | None = None
        self._lock = asyncio.Lock()
        self._ready = asyncio.Event()  # open and (if a ctx is set) armed
        self._failed = asyncio.Event()
        self._failure: ReaderError | None = None
        self._generation = 0
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._waiting = 0

    def __repr__(self) -> str:
        return f"ManagedReader(name={self.name!r}, state={self.state.value})"

    @property
    def name(self) -> str:
        return self.reader.name

    @property
    def kind(self) -> str:
        return self.reader.kind

    @property
    def armed(self) -> bool:
        return self._ctx is not None

    def backoff_delay(self, attempt: int) -> float:
        """Seconds to wait before reopen attempt ``attempt`` (0-based)."""
        base = min(self.backoff_max, self.backoff_initial * (1 << min(attempt, 30)))
        factor: float = self._rng.uniform(1 - self.jitter, 1 + self.jitter)
        return max(0.0, base * factor)

    def _set_state(self, state: ReaderState, reason: str) -> None:
        changed = state != self.state
        self.state, self.reason = state, reason
        if not changed:
            return
        log.info("reader %s %s: %s", self.name, state.value, reason)
        if self.listener is not None:
            try:
                self.listener(self.name, state, reason)
            except Exception:
                log.exception("reader %s: state listener failed", self.name)

    async def start(self) -> None:
        """Start the supervisor (returns at once; see ``wait_ready``)."""
        if self._task is None or self._task.done():
            self._closing = False
            self._task = asyncio.create_task(self._supervise(), name=f"managed-{self.name}")

    async def wait_ready(self) -> None:
        """Wait until the reader is open (and armed, when a payment is armed)."""
        await self._ready.wait()

    def _report_failure(self, generation: int, exc: ReaderError) -> None:
        if generation != self._generation or self._failed.is_set():
            return
        self._failure = exc
        self._ready.clear()
        self._failed.set()

    async def _supervise(self) -> None:
        attempt = 0
        while not self._closing:
            self._failed.clear()
            self._failure = None
            try:
                async with self._lock:
                    self.info = await self.reader.open()
                    if self._ctx is not None:
                        await self.reader.arm(self._ctx)
                    self._generation += 1
                    model = self.info.model if self.info is not None else self.reader.kind
                    self._set_state(ReaderState.READY, f"open: {model}")
                    self._ready.set()
            except Exception as raw:
                exc = _as_reader_error(self.name, raw)
                await self._close_inner()
                self._set_state(_state_for(exc), str(exc))
                delay = self.backoff_delay(attempt)
                attempt += 1
                log.debug("reader %s: reopen in %.2f s", self.name, delay)
                await asyncio.sleep(delay)
                continue
            attempt = 0
            await self._watch(self._generation)
            self._ready.clear()
            failure = self._failure
            await self._close_inner()
            if failure is not None:
                self._set_state(_state_for(failure), str(failure))
                await asyncio.sleep(self.backoff_delay(0))
                attempt = 1

    async def _watch(self, generation: int) -> None:
        """Return when the reader failed; probe it while idle and disarmed."""
        while not self._closing:
            try:
                async with asyncio.timeout(self.health_interval):
                    await self._failed.wait()
                return
            except TimeoutError:
                pass
            if self._ctx is not None or self._waiting or self._lock.locked():
                continue
            async with self._lock:
                try:
                    self.info = await self.reader.probe()
                except Exception as raw:
                    self._report_failure(generation, _as_reader_error(self.name, raw))
                    return

    async def _close_inner(self) -> None:
        with contextlib.suppress(Exception):
            await self.reader.close()

    async def arm(self, ctx: ArmContext) -> None:
        """Arm for one payment, now or as soon as the reader is back. Never raises
        for an offline device."""
        self._ctx = ctx
        async with self._lock:
            if not self._ready.is_set():
                return  # the supervisor arms it after reopening
            generation = self._generation
            try:
                await self.reader.arm(ctx)
            except (ReaderOffline, ReaderFault) as exc:
                self._report_failure(generation, exc)

    async def disarm(self) -> None:
        """Stop accepting presentations. Never raises for an offline device."""
        self._ctx = None
        async with self._lock:
            if not self._ready.is_set():
                return
            generation = self._generation
            try:
                await self.reader.disarm()
            except (ReaderOffline, ReaderFault) as exc:
                self._report_failure(generation, exc)

    async def next_presentation(self) -> Presentation:
        """Wait for a card or code, across unplug/replug (see the module contract).

        Raises CardDataError, CardNotSupported, CardGone; RuntimeError if not armed."""
        if self._ctx is None:
            raise RuntimeError(f"reader {self.name} is not armed")
        self._waiting += 1
        try:
            while True:
                await self._ready.wait()
                if self._ctx is None:
                    raise RuntimeError(f"reader {self.name} was disarmed")
                generation = self._generation
                try:
                    return await self.reader.next_presentation()
                except (ReaderOffline, ReaderFault) as exc:
                    log.warning("reader %s failed while waiting: %s", self.name, exc)
                    self._report_failure(generation, exc)
                    # loop: wait for the reopened (and re-armed) reader
        finally:
            self._waiting -= 1

    async def close(self) -> None:
        """Stop supervising and close the reader. Never raises."""
        self._closing = True
        task, self._task = self._task, None
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._ready.clear()
        await self._close_inner()
        self._set_state(ReaderState.OFFLINE, "closed")


def _as_reader_error(name: str, exc: Exception) -> ReaderError:
    """Offline/fault errors as they are; anything else (a driver bug) as a fault."""
    if isinstance(exc, ReaderOffline | ReaderFault):
        return exc
    log.error("reader %s: unexpected %s while opening/probing", name, type(exc).__name__)
    return ReaderFault(f"{name}: driver error ({type(exc).__name__})")


def _state_for(exc: ReaderError) -> ReaderState:
    return ReaderState.OFFLINE if isinstance(exc, ReaderOffline) else ReaderState.FAULT
