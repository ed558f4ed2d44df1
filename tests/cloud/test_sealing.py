from __future__ import annotations

import base64
import json

import pytest

from cloud import sealing, signing
from cloud.errors import ContractError

PRIVATE, PUBLIC = signing.generate_key_pem()
CARD = {"pan": "4761739001010010", "expiry": "2812", "entry_mode": "CONTACTLESS"}


def test_seal_open_round_trip_and_no_clear_text() -> None:
    sealed = sealing.seal(CARD, PUBLIC)
    assert "4761739001010010" not in sealed
    env = json.loads(sealed)
    assert env["alg"] == "RSA-OAEP-256+A256GCM"
    assert len(base64.b64decode(env["iv"])) == 12
    assert len(base64.b64decode(env["ek"])) == 256
    assert json.loads(sealing.open(sealed, PRIVATE)) == CARD


def test_each_seal_uses_a_fresh_key() -> None:
    assert sealing.seal(CARD, PUBLIC) != sealing.seal(CARD, PUBLIC)


@pytest.mark.parametrize("field", ["ct", "iv", "ek"])
def test_tampered_envelope_fails_without_leaking(field: str) -> None:
    env = json.loads(sealing.seal(CARD, PUBLIC))
    raw = bytearray(base64.b64decode(env[field]))
    raw[0] ^= 1
    env[field] = base64.b64encode(bytes(raw)).decode()
    with pytest.raises(ContractError) as info:
        sealing.open(json.dumps(env), PRIVATE)
    assert "4761" not in str(info.value)


@pytest.mark.parametrize("bad", ["", "{}", "[]", '{"alg":"none"}', "not json"])
def test_malformed_envelope(bad: str) -> None:
    with pytest.raises(ContractError):
        sealing.open(bad, PRIVATE)


def test_wrong_key_cannot_open() -> None:
    other_private, _ = signing.generate_key_pem()
    with pytest.raises(ContractError):
        sealing.open(sealing.seal(CARD, PUBLIC), other_private)
