"""Failure codes the sandbox answers with (docs/protocol.md "Common envelope": a
response whose ``code`` is not "0" is a failure with a human-readable ``msg``).

The real gateway's code list is not published; these are the sandbox's own,
stable so tests and POS developers can branch on them. ``ApiError`` carries a
code, a message and the HTTP status to answer with (200 for every signed
business failure, 400 for a body that is not a JSON object).
"""

from __future__ import annotations

import enum


class Code(enum.StrEnum):
    OK = "0"
    MALFORMED_BODY = "40000"  # body is not a JSON object (HTTP 400)
    INVALID_PARAMETER = "40001"  # a field is missing or malformed
    INVALID_SIGNATURE = "40002"  # sign missing, blank or wrong
    UNKNOWN_APP = "40003"  # app_id not registered
    CLOCK_SKEW = "40004"  # timestamp more than 15 minutes off
    UNKNOWN_METHOD = "40005"  # method not offered on this endpoint
    WRONG_MERCHANT = "40006"  # merchant_no is not the calling app's merchant
    UNKNOWN_TERMINAL = "40401"  # terminal_sn not registered for the merchant
    ORDER_NOT_FOUND = "40402"  # no such merchant_order_no / trans_no
    ORDER_NO_REUSED = "40901"  # same merchant_order_no, different fields
    CLOSE_NOT_ALLOWED = "40902"  # close outside status 9: void or refund instead
    TERMINAL_OFFLINE = "40903"  # reject_trade_when_terminal_offline and it is
    ORIGINAL_NOT_ELIGIBLE = "40904"  # void/refund of an order that is not paid
    AMOUNT_EXCEEDS_ORIGINAL = "40905"  # refund/void above what was paid
    ORDER_EXPIRED = "40906"  # payment after expires_at
    ORDER_FINAL = "40907"  # payment or cancel of a final order
    AMOUNT_MISMATCH = "40908"  # cashier amount differs from the order's
    WRONG_TERMINAL = "40909"  # the order belongs to another terminal
    REQUEST_NO_REUSED = "40910"  # same request_no, different fields
    PAYMENT_IN_PROGRESS = "40911"  # cancel while a payment is being authorized
    GATEWAY_RESTARTED = "50001"  # the sandbox restarted before the acquirer answered
    INTERNAL = "50000"  # a bug in the sandbox (logged with its trace on stderr)


class ApiError(Exception):
    """A failure answered as a signed response with ``code`` and ``msg``."""

    def __init__(self, code: Code, msg: str, *, http_status: int = 200) -> None:
        super().__init__(f"{code} {msg}")
        self.code = code
        self.msg = msg
        self.http_status = http_status
