"""Application identifiers -> card brand (the gateway's ``pay_method_id`` names).

An AID is a 5-byte RID (registered application provider, ISO/IEC 7816-5)
followed by a PIX. The brand is taken from the longest matching prefix in
``AID_BRANDS``: full AIDs first where a scheme uses one RID for several
brands, then RIDs. Names follow docs/protocol.md ("pay_method_id: Visa,
MasterCard, Amex, UnionPay, MyDebit, ...").

Sources: EMVCo registered RIDs and the scheme AIDs listed at
emvlab.org/aidlist (A000000003 Visa, A000000004 Mastercard, A000000025
American Express, A000000065 JCB, A000000152 Discover/Diners,
A000000277 Interac, A000000333 UnionPay, A000000615 MyDebit).
"""

from __future__ import annotations

__all__ = ["AID_BRANDS", "brand_for_aid"]

AID_BRANDS: dict[bytes, str] = {
    bytes.fromhex("A000000003"): "Visa",
    bytes.fromhex("A000000004"): "MasterCard",
    bytes.fromhex("A000000025"): "Amex",
    bytes.fromhex("A000000065"): "JCB",
    bytes.fromhex("A000000152"): "Discover",
    bytes.fromhex("A000000277"): "Interac",
    bytes.fromhex("A000000333"): "UnionPay",
    bytes.fromhex("A000000615"): "MyDebit",
}


def brand_for_aid(aid: bytes) -> str | None:
    """The brand of ``aid`` or ``None`` when this terminal does not support it."""
    best: tuple[int, str] | None = None
    for prefix, brand in AID_BRANDS.items():
        if aid.startswith(prefix) and (best is None or len(prefix) > best[0]):
            best = (len(prefix), brand)
    return None if best is None else best[1]
