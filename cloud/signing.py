"""RSA2 signatures over the canonical string (docs/protocol.md "Common envelope").

1. every field but ``sign`` (any case); fields that are null or "" dropped;
2. objects and arrays as compact JSON, booleans ``true``/``false``, strings
   as they are, numbers as their wire text;
3. keys sorted by byte value, joined ``k1=v1&k2=v2`` with no encoding;
4. SHA256withRSA (PKCS#1 v1.5) over the UTF-8 bytes, standard base64.

Keys: PEM (PKCS#1 or PKCS#8 private, SubjectPublicKeyInfo or PKCS#1 public)
or the bare base64 DER the gateway portal shows. ``sign`` and ``verify``
accept the key text, its bytes, or an already loaded key.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from functools import lru_cache
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from cloud import wirejson
from cloud.errors import KeyLoadError, SignatureError

PrivateKeyLike = str | bytes | rsa.RSAPrivateKey
PublicKeyLike = str | bytes | rsa.RSAPublicKey


def _value_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    return wirejson.dumps(value)


def canonical_string(params: Mapping[str, Any]) -> str:
    """The text that is signed. Raises TypeError for keys and values the wire
    cannot carry (a key that is not a string, a float, nesting deeper than
    ``wirejson.MAX_DEPTH``)."""
    if not all(isinstance(key, str) for key in params):
        raise TypeError("every key must be a string")
    items = [
        (key, _value_text(value))
        for key, value in params.items()
        if key.lower() != "sign" and value is not None and value != ""
    ]
    items.sort(key=lambda kv: kv[0].encode("utf-8"))
    return "&".join(f"{k}={v}" for k, v in items)


def _der_from_text(text: bytes) -> bytes | None:
    stripped = b"".join(text.split())
    try:
        return base64.b64decode(stripped, validate=True)
    except (binascii.Error, ValueError):
        return None


@lru_cache(maxsize=64)
def _load_private(data: bytes) -> rsa.RSAPrivateKey:
    try:
        if b"-----BEGIN" in data:
            key = serialization.load_pem_private_key(data, password=None)
        else:
            der = _der_from_text(data)
            if der is None:
                raise ValueError("neither PEM nor base64 DER")
            key = serialization.load_der_private_key(der, password=None)
    except (ValueError, TypeError) as exc:
        raise KeyLoadError(f"cannot load RSA private key: {exc}") from None
    if not isinstance(key, rsa.RSAPrivateKey):
        raise KeyLoadError("private key is not RSA")
    return key


@lru_cache(maxsize=64)
def _load_public(data: bytes) -> rsa.RSAPublicKey:
    try:
        if b"-----BEGIN" in data:
            key = serialization.load_pem_public_key(data)
        else:
            der = _der_from_text(data)
            if der is None:
                raise ValueError("neither PEM nor base64 DER")
            key = serialization.load_der_public_key(der)
    except (ValueError, TypeError) as exc:
        raise KeyLoadError(f"cannot load RSA public key: {exc}") from None
    if not isinstance(key, rsa.RSAPublicKey):
        raise KeyLoadError("public key is not RSA")
    return key


def load_private_key(key: PrivateKeyLike) -> rsa.RSAPrivateKey:
    """Raises KeyLoadError."""
    if isinstance(key, rsa.RSAPrivateKey):
        return key
    return _load_private(key.encode() if isinstance(key, str) else bytes(key))


def load_public_key(key: PublicKeyLike) -> rsa.RSAPublicKey:
    """Raises KeyLoadError."""
    if isinstance(key, rsa.RSAPublicKey):
        return key
    return _load_public(key.encode() if isinstance(key, str) else bytes(key))


def sign(params: Mapping[str, Any], private_key_pem: PrivateKeyLike) -> str:
    """The base64 RSA2 signature of ``params``. Raises KeyLoadError, TypeError."""
    key = load_private_key(private_key_pem)
    signature = key.sign(
        canonical_string(params).encode("utf-8"), padding.PKCS1v15(), hashes.SHA256()
    )
    return base64.b64encode(signature).decode("ascii")


def verify(params: Mapping[str, Any], public_key_pem: PublicKeyLike) -> None:
    """Check ``params["sign"]``. Raises SignatureError when it is missing, blank,
    not base64, or wrong, or when ``params`` cannot be written as the canonical
    text (a key that is not a string, a lone surrogate, a float, nesting
    deeper than ``wirejson.MAX_DEPTH``); KeyLoadError when the key cannot be
    loaded. Nothing else, whatever ``params`` holds."""
    key = load_public_key(public_key_pem)
    value = params.get("sign")
    if value is None:
        raise SignatureError("sign is missing", "$.sign")
    if not isinstance(value, str) or not value.strip():
        raise SignatureError("sign is blank or not a string", "$.sign")
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise SignatureError("sign is not base64", "$.sign") from None
    # ``params`` may hold anything a sender put there: what cannot be written
    # as the canonical UTF-8 text (a lone surrogate: UnicodeEncodeError, a
    # ValueError) cannot carry a valid signature either.
    try:
        data = canonical_string(params).encode("utf-8")
    except (TypeError, ValueError) as exc:
        raise SignatureError(f"unsignable value ({type(exc).__name__})") from None
    try:
        key.verify(raw, data, padding.PKCS1v15(), hashes.SHA256())
    except InvalidSignature:
        raise SignatureError("sign does not match the message and key", "$.sign") from None


def generate_key_pem() -> tuple[str, str]:
    """A fresh RSA-2048 pair as (PKCS#8 private PEM, SubjectPublicKeyInfo PEM)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode("ascii")
    public = (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode("ascii")
    )
    return private, public
