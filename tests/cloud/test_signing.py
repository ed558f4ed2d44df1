"""RSA2 signing against fixed vectors (docs/protocol.md "Common envelope").

The pinned signature was cross-checked with
``printf '%s' CANONICAL | openssl dgst -sha256 -sign test_key_pkcs1.pem | base64``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from cloud import signing, wirejson
from cloud.errors import KeyLoadError, SignatureError

DATA = Path(__file__).parent / "data"
PKCS8 = (DATA / "test_key_pkcs8.pem").read_text()
PKCS1 = (DATA / "test_key_pkcs1.pem").read_text()
PKCS8_B64 = (DATA / "test_key_pkcs8.b64").read_text()
PUBLIC = (DATA / "test_key_public.pem").read_text()
PUBLIC_B64 = (DATA / "test_key_public.b64").read_text()

BODY = (
    '{"merchant_no":"M0001","order_amount":12.50,"attach":{"k":[1,2.0,"x"]},'
    '"description":"قهوة","tip_amount":null,"store_no":"","confirm_on_terminal":true}'
)
CANONICAL = (
    'attach={"k":[1,2.0,"x"]}&confirm_on_terminal=true&description=قهوة'
    "&merchant_no=M0001&order_amount=12.50"
)
SIGNATURE = (
    "OjdaTyWQrvbo4wcOqaCnoIXqjtgdkpqtF4EhilDoJQgFwvMXNtZawniRncfS33rE9o266F2BWHzzqCkI724GEnQ2"
    "hPD6j0PV5IOWEbdMqKe2j/0LXmHgLF9nVLI7dI3DPMjQoRp/TM50vVbnuipqX4+G2YmHe6lE72PceFkoapQc0NyZ"
    "540c2POQFq1YL/SffbDB6FVcqZQ5H8SHbVzw8ucIFfaXYpGEzO2C1wlhfrQEsaVwotyoQa5FKjdq1ScO+IlYYVeX"
    "TG0dciMmgMEuD4cw4R2Mpik/m4hFmh+TWSnzrgTKeg30V+qJwM0d/ijs5De+cn3KBFuYGBKgx9TKfQ=="
)


def test_canonical_string_fixed_vector() -> None:
    assert signing.canonical_string(wirejson.loads(BODY)) == CANONICAL


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({"b": "2", "a": "1"}, "a=1&b=2"),
        ({"sign": "x", "SIGN": "y", "Sign": "z", "a": "1"}, "a=1"),
        ({"a": "", "b": None, "c": "0"}, "c=0"),
        ({"Z": "1", "a": "2", "_": "3"}, "Z=1&_=3&a=2"),
        ({"t": True, "f": False}, "f=false&t=true"),
        ({"n": 100, "z": 0}, "n=100&z=0"),
        ({"o": {"b": None, "a": ""}}, 'o={"b":null,"a":""}'),
        ({"l": []}, "l=[]"),
        ({"u": 'é "q" \\'}, 'u=é "q" \\'),
        ({"x": {"n": "ü☕"}}, 'x={"n":"ü☕"}'),
    ],
)
def test_canonical_string_rules(params: dict[str, Any], expected: str) -> None:
    assert signing.canonical_string(params) == expected


def test_numbers_keep_their_wire_text() -> None:
    for text in ("12.50", "100", "1e2", "0.10", "-0.0"):
        parsed = wirejson.loads(f'{{"a":{text}}}')
        assert signing.canonical_string(parsed) == f"a={text}"


def test_floats_are_refused() -> None:
    with pytest.raises(TypeError):
        signing.canonical_string({"a": 1.5})


@pytest.mark.parametrize("key", [PKCS8, PKCS1, PKCS8_B64])
def test_fixed_signature_every_private_key_form(key: str) -> None:
    assert signing.sign(wirejson.loads(BODY), key) == SIGNATURE


@pytest.mark.parametrize("public", [PUBLIC, PUBLIC_B64])
def test_verify_fixed_signature(public: str) -> None:
    params = wirejson.loads(BODY)
    params["sign"] = SIGNATURE
    signing.verify(params, public)


def _signed() -> dict[str, Any]:
    params = wirejson.loads(BODY)
    params["sign"] = SIGNATURE
    assert isinstance(params, dict)
    return params


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("merchant_no", "M0002"),
        ("order_amount", wirejson.WireNumber("12.5")),
        ("order_amount", wirejson.WireNumber("12.51")),
        ("attach", {"k": [1, 2, "x"]}),
        ("description", "قهوه"),
        ("confirm_on_terminal", False),
        ("store_no", "S1"),
        ("extra", "added"),
    ],
)
def test_tampering_any_field_is_detected(field: str, value: Any) -> None:
    params = _signed()
    params[field] = value
    with pytest.raises(SignatureError):
        signing.verify(params, PUBLIC)


def test_removing_a_field_is_detected() -> None:
    params = _signed()
    del params["merchant_no"]
    with pytest.raises(SignatureError):
        signing.verify(params, PUBLIC)


@pytest.mark.parametrize("bad", [None, "", "   ", "not base64!", 42, "AAAA"])
def test_missing_blank_garbled_sign_rejected(bad: Any) -> None:
    params = _signed()
    if bad is None:
        del params["sign"]
    else:
        params["sign"] = bad
    with pytest.raises(SignatureError):
        signing.verify(params, PUBLIC)


def test_wrong_key_rejected() -> None:
    _, other_public = signing.generate_key_pem()
    with pytest.raises(SignatureError):
        signing.verify(_signed(), other_public)


@pytest.mark.parametrize(
    "bad", ["", "-----BEGIN PRIVATE KEY-----\nxx\n-----END PRIVATE KEY-----", "@@"]
)
def test_unloadable_keys(bad: str) -> None:
    with pytest.raises(KeyLoadError):
        signing.sign({"a": "1"}, bad)
    with pytest.raises(KeyLoadError):
        signing.verify({"a": "1", "sign": SIGNATURE}, bad)


def test_round_trip_generated_keys() -> None:
    private, public = signing.generate_key_pem()
    params: dict[str, Any] = {"a": "1", "n": wirejson.WireNumber("0.50")}
    params["sign"] = signing.sign(params, private)
    signing.verify(params, public)
