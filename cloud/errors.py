"""One error tree for the cloud contract and the POS module.

It says who is at fault (DESIGN.md "Style"): the caller's own input
(``ContractError`` on decode, ``SignatureError``), the far side refusing
(``CloudRejected``: final, do not retry) or the far side being unreachable
or answering nonsense (``CloudUnavailable``: retry what is safe to retry).
"""

from __future__ import annotations


class SadadError(Exception):
    """Base of every error this package raises."""


class ContractError(SadadError, ValueError):
    """A message does not follow PROTOCOL.md: a missing or malformed field.

    ``field`` names the offending wire field (``$.order_amount``) when known.
    """

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message if field is None else f"{message} (field {field})")
        self.field = field


class SignatureError(ContractError):
    """A ``sign`` is missing, blank, garbled or does not match the key."""


class KeyLoadError(ContractError):
    """A key file or key text cannot be loaded."""


class CloudRejected(SadadError):
    """The gateway answered with a failure ``code``: final for this request."""

    def __init__(self, code: str, msg: str) -> None:
        super().__init__(f"gateway refused: {code} {msg}")
        self.code = code
        self.msg = msg


class CloudUnavailable(SadadError):
    """The gateway could not be reached, timed out, or answered something that is
    not a valid signed response. The outcome of a non-idempotent call is unknown."""
