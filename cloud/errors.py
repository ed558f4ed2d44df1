"""One error tree for the cloud contract and the POS module.

It says who is at fault (DESIGN.md "Style"): the caller's own input
(``ContractError`` on decode, ``SignatureError``), the far side refusing
(``CloudRejected``: final, do not retry) or the far side being unreachable
or answering nonsense (``CloudUnavailable``: retry what is safe to retry).
A config file that cannot be used is a ``ConfigError``, the project's one,
beside the schema that finds its problems (``cloud.config_schema``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # messages imports this module; the type is only for annotations
    from cloud.messages import OrderInfo


class SadadError(Exception):
    """Base of every error this package raises."""


class ContractError(SadadError, ValueError):
    """A message does not follow docs/protocol.md: a missing or malformed field.

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


class TerminalOffline(CloudRejected):
    """The gateway refused a create at once because the terminal is offline and
    the order asked ``reject_trade_when_terminal_offline`` (sandbox code
    40903). Nothing was created: push again when the terminal is back."""


# Failure codes that have an exception of their own (the sandbox's codes:
# sandbox/README.md "Failure codes").
REJECTIONS: dict[str, type[CloudRejected]] = {"40903": TerminalOffline}


def rejection(code: str, msg: str) -> CloudRejected:
    """The CloudRejected (or the subclass ``REJECTIONS`` names) for a failure answer."""
    return REJECTIONS.get(code, CloudRejected)(code, msg)


class CloudUnavailable(SadadError):
    """The gateway could not be reached, timed out, or answered something that is
    not a valid signed response. The outcome of a non-idempotent call is unknown."""


class WaitTimeout(SadadError):
    """An order did not reach a final status before the caller's deadline.

    ``last`` is the last ``OrderInfo`` seen for it (None when no query
    succeeded); ``why`` says, when known, why it still waits (sandbox:
    ``cloud.timeline.why_pending``). The order may still complete: keep
    polling or close it.
    """

    def __init__(
        self,
        merchant_order_no: str,
        waited_s: float,
        last: OrderInfo | None,
        why: str | None = None,
    ) -> None:
        status = "nothing seen" if last is None else f"last status {last.trans_status.name}"
        if why:
            status += f"; {why}"
        super().__init__(f"order {merchant_order_no} not final after {waited_s:g} s ({status})")
        self.merchant_order_no = merchant_order_no
        self.waited_s = waited_s
        self.last = last
        self.why = why


class TerminalBusy(WaitTimeout):
    """The deadline passed while the order still waits in the terminal's queue:
    the terminal answered ``busy`` (another order is on its screen).
    ``position`` is the order's place in that queue (1 = next). The order is
    still valid: wait longer, or close it."""

    def __init__(
        self,
        merchant_order_no: str,
        waited_s: float,
        last: OrderInfo | None,
        why: str | None,
        position: int,
    ) -> None:
        super().__init__(merchant_order_no, waited_s, last, why)
        self.position = position


class NotOurOrder(ContractError):
    """A genuine, gateway-signed notification or query answer that is not about
    the order it would settle: another merchant's or app's, another
    ``trans_no`` than the create returned, another amount or currency, or an
    order this POS has no record of (docs/protocol.md part B). A webhook
    answers it HTTP 400; it never becomes the order's result.

    ``field`` is the wire field that differs (``$.merchant_no``); ``expected``
    and ``got`` its two values as shown in the message (None when the order
    has no record at all).
    """

    def __init__(
        self,
        message: str,
        field: str | None = None,
        *,
        expected: str | None = None,
        got: str | None = None,
    ) -> None:
        super().__init__(message, field)
        self.expected = expected
        self.got = got
