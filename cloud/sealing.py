"""The card-data envelope (docs/protocol.md part D): RSA-OAEP-SHA256 + AES-256-GCM.

``seal`` encrypts a payload for the gateway with a fresh AES-256 key, which
RSA-OAEP (SHA-256, MGF1-SHA-256) wraps with the gateway public key. The
result is the JSON text ``{"alg", "ek", "iv", "ct"}`` (standard base64; ``ct``
includes the 16-byte GCM tag). ``open`` is the gateway side.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from cloud.errors import ContractError
from cloud.signing import PrivateKeyLike, PublicKeyLike, load_private_key, load_public_key

ALG = "RSA-OAEP-256+A256GCM"
_OAEP = padding.OAEP(mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=None)


def seal(payload: dict[str, Any] | bytes, gateway_public_key: PublicKeyLike) -> str:
    """Encrypt ``payload`` (a dict is written as compact JSON) for the gateway."""
    plain = (
        payload
        if isinstance(payload, bytes)
        else json.dumps(payload, separators=(",", ":")).encode()
    )
    key = AESGCM.generate_key(bit_length=256)
    iv = os.urandom(12)
    ct = AESGCM(key).encrypt(iv, plain, None)
    ek = load_public_key(gateway_public_key).encrypt(key, _OAEP)

    def b64(b: bytes) -> str:
        return base64.b64encode(b).decode("ascii")

    return json.dumps({"alg": ALG, "ek": b64(ek), "iv": b64(iv), "ct": b64(ct)})


def open(sealed: str, gateway_private_key: PrivateKeyLike) -> bytes:
    """Decrypt a sealed envelope. Raises ContractError for anything malformed or
    tampered with; the error text never holds the plaintext."""
    try:
        obj = json.loads(sealed)
        if not isinstance(obj, dict) or obj.get("alg") != ALG:
            raise ContractError(f"card envelope alg must be {ALG}")
        ek, iv, ct = (base64.b64decode(obj[k], validate=True) for k in ("ek", "iv", "ct"))
        key = load_private_key(gateway_private_key).decrypt(ek, _OAEP)
        return AESGCM(key).decrypt(iv, ct, None)
    except ContractError:
        raise
    except (ValueError, KeyError, TypeError, binascii.Error, InvalidTag) as exc:
        raise ContractError(f"card envelope cannot be opened ({type(exc).__name__})") from None
