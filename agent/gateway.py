"""The terminal's client of the cashier API (docs/protocol.md part D) over
``agent.http11`` (keep-alive HTTP/1.1 on h11).

Each call is one signed request; this module does not retry and does not
decide what an unknown outcome means — the engine does (journal first, then
detail, then reverse). What it guarantees:

* card data leaves only sealed (``cloud.sealing``) with the gateway key;
  beside it in clear only masked PAN, brand and entry mode;
* every answer is verified with the gateway key and must name the question
  it answers (``cloud.answers``: the ``request_no``, ``trans_no`` and
  ``terminal_sn`` asked about, stamped within 15 minutes); a missing, blank
  or wrong signature, an answer bound to another request, order or terminal
  or a stale one (replayed, swapped or delayed by someone in the middle), a
  non-JSON body, HTTP 5xx, a timeout or a network failure all raise
  ``CloudUnavailable`` (outcome unknown); a bound failure answer raises
  ``CloudRejected`` (final for that request);
* declines are mapped to a reason a cashier understands (``decline_reason``).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, TypeVar

import msgspec

from agent.http11 import Http11Client, HttpError, HttpTimeout, HttpTransport
from cloud import envelope, redact
from cloud import messages as m
from cloud.answers import Question, UnboundAnswer, open_cashier_answer
from cloud.errors import CloudRejected, CloudUnavailable, ContractError
from cloud.sealing import seal
from cloud.signing import PrivateKeyLike, PublicKeyLike
from drivers.base import CardRead, WalletCode

T = TypeVar("T", bound=msgspec.Struct)

log = logging.getLogger(__name__)

# ISO 8583 response codes as acquirers send them, in words a cashier can say
# to a customer. Anything else falls back to the gateway's own message.
_DECLINE_REASONS = {
    "05": "Declined by the card issuer - try another card",
    "14": "Card number not valid - try another card",
    "51": "Insufficient funds - try another card",
    "54": "Card expired - try another card",
    "55": "Wrong PIN",
    "57": "This card cannot be used for this purchase",
    "61": "Amount over the card's limit - try another card",
    "62": "Card restricted - try another card",
    "65": "Card limit reached - insert or try another card",
    "91": "Card issuer not reachable - try again",
    "96": "Payment system error - try again",
}


def decline_reason(code: str | None, message: str | None) -> str:
    """A human reason for a decline code (ISO 8583 field 39 style); else the
    gateway's own message as it may be shown and journaled (``redact.display``:
    card-number-like digit runs masked, no control characters, 120 at most)."""
    if code and code in _DECLINE_REASONS:
        return _DECLINE_REASONS[code]
    return redact.display(message or "", 120) or "Payment declined"


@dataclass(frozen=True, slots=True)
class GatewayIdentity:
    url: str
    app_id: str
    terminal_sn: str
    private_key: PrivateKeyLike
    gateway_public_key: PublicKeyLike


class GatewayClient:
    """One terminal's cashier API client. ``timeout`` bounds each HTTP call."""

    def __init__(
        self,
        ident: GatewayIdentity,
        *,
        timeout: float = 15.0,
        transport: HttpTransport | None = None,
    ) -> None:
        self.ident = ident
        if transport is None:
            transport = Http11Client(ident.url, timeout=timeout, connect_timeout=min(timeout, 5.0))
        self._http = transport

    async def aclose(self) -> None:
        await self._http.aclose()

    def _question(self, method: m.Method, trans_no: str, request_no: str | None) -> Question:
        return Question(str(method), trans_no, self.ident.terminal_sn, request_no)

    async def _call(
        self, method: m.Method, biz: msgspec.Struct, type_: type[T], question: Question
    ) -> T:
        body = envelope.build_request(
            method, biz, app_id=self.ident.app_id, private_key=self.ident.private_key
        )
        try:
            resp = await self._http.request(
                "POST",
                envelope.CASHIER_PATH,
                body=envelope.encode(body),
                headers={"Content-Type": "application/json"},
            )
        except HttpTimeout as exc:
            raise CloudUnavailable(f"{method}: gateway did not answer in time") from exc
        except HttpError as exc:
            raise CloudUnavailable(f"{method}: gateway unreachable ({type(exc).__name__})") from exc
        if resp.status >= 500:
            raise CloudUnavailable(f"{method}: gateway error HTTP {resp.status}")
        if resp.status != 200:
            raise CloudUnavailable(f"{method}: unexpected HTTP {resp.status}")
        try:
            return open_cashier_answer(
                resp.body, self.ident.gateway_public_key, type_, question, now_ms=envelope.now_ms()
            )
        except UnboundAnswer as exc:
            # Genuine, but not for this question: as if nothing came back.
            log.warning("%s: answer ignored: %s", method, exc)
            raise CloudUnavailable(f"{method}: answer not for this request: {exc}") from exc
        except ContractError as exc:
            raise CloudUnavailable(f"{method}: invalid answer: {exc}") from exc

    # ------------------------------------------------------------ calls

    async def pay_card(
        self,
        order: OrderRef,
        request_no: str,
        card: CardRead,
    ) -> m.CashierResult:
        """``cashier.pay.bankcard.trans.create``. Raises CloudUnavailable, CloudRejected."""
        cipher = seal(
            {
                "pan": card.pan,
                "expiry": card.expiry,
                "track2": card.track2,
                "pan_seq": card.pan_seq,
                "emv_tlv": card.emv_tlv.hex(),
                "entry_mode": card.entry_mode.value,
            },
            self.ident.gateway_public_key,
        )
        biz = m.BankcardCreate(
            trans_no=order.trans_no,
            terminal_sn=self.ident.terminal_sn,
            order_amount=order.amount,
            price_currency=order.currency,
            request_no=request_no,
            card_cipher=cipher,
            masked_pan=card.masked_pan,
            card_brand=card.brand,
            entry_mode=m.CardEntryMode(card.entry_mode.value),
            trans_type=m.TransType(order.trans_type),
            orig_trans_no=order.orig_trans_no,
        )
        question = self._question(m.Method.BANKCARD_CREATE, order.trans_no, request_no)
        return await self._call(m.Method.BANKCARD_CREATE, biz, m.CashierResult, question)

    async def pay_wallet(
        self, order: OrderRef, request_no: str, code: WalletCode
    ) -> m.CashierResult:
        """``cashier.pay.wallet.trans.create``. Raises CloudUnavailable, CloudRejected."""
        cipher = seal(
            json.dumps({"auth_code": code.code, "wallet": code.wallet.value}).encode(),
            self.ident.gateway_public_key,
        )
        biz = m.WalletCreate(
            trans_no=order.trans_no,
            terminal_sn=self.ident.terminal_sn,
            order_amount=order.amount,
            price_currency=order.currency,
            request_no=request_no,
            auth_code_cipher=cipher,
            trans_type=m.TransType(order.trans_type),
            orig_trans_no=order.orig_trans_no,
        )
        question = self._question(m.Method.WALLET_CREATE, order.trans_no, request_no)
        return await self._call(m.Method.WALLET_CREATE, biz, m.CashierResult, question)

    async def detail(self, trans_no: str, request_no: str | None = None) -> m.CashierResult:
        """``cashier.trans.detail``. Raises CloudUnavailable, CloudRejected."""
        biz = m.TransDetail(
            trans_no=trans_no, terminal_sn=self.ident.terminal_sn, request_no=request_no
        )
        question = self._question(m.Method.TRANS_DETAIL, trans_no, request_no)
        return await self._call(m.Method.TRANS_DETAIL, biz, m.CashierResult, question)

    async def reverse(self, trans_no: str, request_no: str, reason: str) -> m.CashierResult:
        """``cashier.trans.reverse``. Raises CloudUnavailable, CloudRejected."""
        biz = m.TransReverse(
            trans_no=trans_no,
            terminal_sn=self.ident.terminal_sn,
            request_no=request_no,
            reason=reason,
        )
        question = self._question(m.Method.TRANS_REVERSE, trans_no, request_no)
        return await self._call(m.Method.TRANS_REVERSE, biz, m.CashierResult, question)

    async def cancel(self, trans_no: str, reason: str) -> m.CashierResult:
        """``cashier.trans.cancel``. Raises CloudUnavailable, CloudRejected."""
        # One cancel per order (it only closes a status-9 order): a fixed
        # request_no, so the answer to a retry still names it.
        request_no = f"{self.ident.terminal_sn}-{trans_no}-cancel"
        biz = m.TransCancel(
            trans_no=trans_no,
            terminal_sn=self.ident.terminal_sn,
            reason=reason,
            request_no=request_no,
        )
        question = self._question(m.Method.TRANS_CANCEL, trans_no, request_no)
        return await self._call(m.Method.TRANS_CANCEL, biz, m.CashierResult, question)

    async def ping(self) -> tuple[bool, str]:
        """Reachability for ``doctor`` and the setup screen: any signed answer counts."""
        try:
            await self.detail("ping-" + self.ident.terminal_sn)
        except CloudUnavailable as exc:
            return False, str(exc)
        except CloudRejected:  # a signed refusal: reachable, and our key is accepted
            return True, "reachable, signed answers verified"
        return True, "reachable"


@dataclass(frozen=True, slots=True)
class OrderRef:
    """What a payment call needs to know about the order."""

    trans_no: str
    amount: Decimal
    currency: str
    trans_type: int = 1
    orig_trans_no: str | None = None

    @classmethod
    def of(cls, row: Any) -> OrderRef:
        return cls(
            trans_no=row.trans_no,
            amount=row.amount,  # the order amount; the tip is already known to the gateway
            currency=row.currency,
            trans_type=row.trans_type,
            orig_trans_no=row.orig_trans_no,
        )
