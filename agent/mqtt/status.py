"""The terminal's retained status on ``sadad/v1/terminals/{sn}/status``
(docs/protocol.md part C): ``online`` with what the terminal is doing, or
``offline``.

Contract:

* The will, registered in CONNECT (``will()``), is the retained QoS 1 status
  ``offline``: the broker publishes it when the connection dies without a
  DISCONNECT (within 1.5 keepalives of a silent loss); its ``timestamp`` is
  that of the CONNECT that registered it (a broker cannot stamp a will).
* Every connect publishes the retained QoS 1 status ``online`` as it is then
  (``announce()``), and the link calls itself connected only after its
  PUBACK. ``sign_off()`` publishes ``offline`` itself before the link's
  clean DISCONNECT (reason 0: the broker drops the will and keeps the
  session).
* The status is a latest value: ``changed()`` (called on every change of
  screen, readers or queue) publishes it ``STATUS_HOLD`` later
  (``agent.coalescing``, the same hold as systemd's ``STATUS=`` line), only
  when it differs from the last one published (the timestamp aside), with
  at most one status publish in flight; changes made during the hold or
  while one is in flight are coalesced into one publish of the latest status
  after its PUBACK. So a subscriber sees the states in order (one that lasts
  less than a publish round trip may be skipped) and a burst never floods
  the broker. ``flush()`` publishes without the hold. Neither raises; while
  the link is not connected they do nothing (the next connect publishes).
* After ``sign_off()`` nothing more is published on that connection: a
  change held or coalesced behind a publish in flight would otherwise go
  out after ``offline`` and leave the retained status ``online`` after a
  clean stop, the will dropped (seen in the suite under load: the TMS got
  online, offline, online).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import msgspec

from agent.coalescing import Coalescer
from agent.mqtt.errors import AttemptFailed, LinkDown, LinkError, PublishRejected
from agent.mqtt.session import CONNECT_TIMEOUT, Session
from cloud import envelope
from cloud.messages import TerminalStatus
from cloud.topics import status_topic

__all__ = ["StatusPublisher"]

log = logging.getLogger(__name__)

SIGN_OFF_WAIT = 2.0  # s stopping waits for the PUBACK of ``offline`` before it disconnects


class StatusPublisher:
    """The status of terminal ``sn``: ``status()`` says what it is now;
    ``connected()`` gives the session to publish on, or None while the link is
    not connected. Used on the asyncio loop only."""

    def __init__(
        self,
        sn: str,
        status: Callable[[], TerminalStatus],
        connected: Callable[[], Session | None],
    ) -> None:
        self.topic = status_topic(sn)
        self._status = status
        self._connected = connected
        self._sent: bytes | None = None  # last status published (_status_key)
        self._flight: asyncio.Future[None] | None = None
        self._idle = asyncio.Event()
        self._idle.set()
        self._hold = Coalescer(self._send)
        self._signed_off: Session | None = None  # the connection sign_off() said offline on

    def will(self, keepalive: int) -> bytes:
        """The ``offline`` status for the CONNECT's will, stamped now."""
        return self._offline(keepalive)

    async def announce(self, session: Session) -> None:
        """Publish the status as it is now on a new connection and wait for its
        PUBACK. Raises AttemptFailed (stage subscribe)."""
        status = self._online(session)
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT):
                await session.publish(self.topic, msgspec.json.encode(status), retain=True)
            self._sent = _status_key(status)
        except TimeoutError:
            raise AttemptFailed("subscribe", "no PUBACK for the status") from None
        except LinkError as exc:
            raise AttemptFailed("subscribe", f"status publish failed: {exc}") from exc

    async def sign_off(self, session: Session) -> None:
        """Publish ``offline`` (retained) before a clean disconnect, waiting up
        to SIGN_OFF_WAIT s for its PUBACK. Never raises."""
        self._signed_off = session  # from here, no online status on it (_send)
        try:
            async with asyncio.timeout(SIGN_OFF_WAIT):
                await session.publish(self.topic, self._offline(session.keepalive), retain=True)
        except (TimeoutError, LinkError) as exc:
            log.warning("could not publish the offline status: %s", exc)

    def changed(self) -> None:
        """``status()`` may have changed: publish it after the hold if it
        differs from the last one published. Never raises."""
        if self._flight is None:
            self._hold.poke()

    async def flush(self) -> None:
        """Publish the status now if it changed, then wait until no status
        publish is in flight (its PUBACK came, or the connection was lost).
        Never raises."""
        if self._flight is None:
            self._hold.flush_now()
        await self._idle.wait()

    # ------------------------------------------------------------ internals

    def _online(self, session: Session) -> TerminalStatus:
        """``status()``, stamped now, online, with the keepalive in force."""
        now = envelope.timestamp()
        try:
            base = self._status()
        except Exception:
            log.exception("status() failed; publishing a bare status")
            base = TerminalStatus(status="online", timestamp=now)
        return msgspec.structs.replace(
            base, status="online", timestamp=now, keepalive=session.keepalive
        )

    def _offline(self, keepalive: int) -> bytes:
        st = TerminalStatus(status="offline", timestamp=envelope.timestamp(), keepalive=keepalive)
        return msgspec.json.encode(st)

    def _send(self) -> None:
        session = self._connected()
        if session is None or session is self._signed_off:
            return
        status = self._online(session)
        key = _status_key(status)
        if key == self._sent:
            return
        try:
            flight = session.publish(self.topic, msgspec.json.encode(status), retain=True)
        except LinkDown:
            return
        self._sent = key
        self._flight = flight
        self._idle.clear()
        flight.add_done_callback(self._published)

    def _published(self, flight: asyncio.Future[None]) -> None:
        self._flight = None
        error = None if flight.cancelled() else flight.exception()
        if isinstance(error, PublishRejected):
            log.warning("status publish refused: %s", error)
        elif error is not None:  # lost with its connection: the next connect publishes
            self._sent = None
        self._send()  # whatever changed meanwhile, as one publish
        if self._flight is None:
            self._idle.set()


def _status_key(status: TerminalStatus) -> bytes:
    """What makes two statuses the same: everything but the timestamp."""
    return msgspec.json.encode(msgspec.structs.replace(status, timestamp=""))
