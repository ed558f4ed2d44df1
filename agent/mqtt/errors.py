"""What goes wrong on the MQTT link, and whose move it is next.

* ``LinkDown``: not connected, or the connection was lost before the
  broker's PUBACK. Nobody refused anything: retry later (the engine keeps
  an outbox; the TMS deduplicates events on ``message_id``).
* ``PublishRejected``: the broker refused the publish (MQTT 5 PUBACK reason
  >= 0x80, e.g. not authorized). Final for that message.
* ``AttemptFailed``: one connection attempt (or the probe) stopped at a
  ``Stage``; the link turns it into a state and a reason, the probe into its
  answer. It never leaves the package.

Both the session (which raises them) and the link and the outbox (which
handle them) import them from here, so none of them imports the others.
"""

from __future__ import annotations

from typing import Literal

from cloud.errors import SadadError

__all__ = ["AttemptFailed", "LinkDown", "LinkError", "PublishRejected", "Stage"]

# Where an attempt stopped, in the order a connection goes through them;
# "ok" when it went all the way (the probe's answer).
Stage = Literal["dns", "tcp", "tls", "auth", "subscribe", "ok"]


class LinkError(SadadError):
    """Base of the MQTT link's errors."""


class LinkDown(LinkError):
    """Not connected, or the connection was lost before the PUBACK: retry later."""


class PublishRejected(LinkError):
    """The broker refused a publish (MQTT 5 PUBACK reason >= 0x80): final for this message."""


class AttemptFailed(Exception):
    """A connection attempt stopped at ``stage``; ``reason`` is a sentence for
    the setup screen. ``retry_now``: the broker refused MQTT 5, so the same
    node is worth trying again at once with 3.1.1."""

    def __init__(self, stage: Stage, reason: str, *, retry_now: bool = False) -> None:
        super().__init__(f"{stage}: {reason}")
        self.stage = stage
        self.reason = reason
        self.retry_now = retry_now
