"""pos.toml: every problem names the file, the key, what is wrong, what is allowed."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from cloud.config import PosConfig, config_path, load_config
from cloud.config_schema import ConfigError
from cloud.errors import KeyLoadError
from tests.cloud.pos_peer import GW_PUBLIC, POS_PRIVATE, make_config

GOOD = """\
gateway_url = "http://127.0.0.1:8080"
app_id = "pos-sandbox"
merchant_no = "M0001"
private_key_file = "keys/pos_private.pem"
gateway_public_key_file = "keys/gateway_public.pem"
default_currency = "QAR"
"""


@pytest.fixture
def cfg_dir(tmp_path: Path) -> Path:
    keys = tmp_path / "keys"
    keys.mkdir()
    (keys / "pos_private.pem").write_text(POS_PRIVATE)
    (keys / "gateway_public.pem").write_text(GW_PUBLIC)
    return tmp_path


def write(directory: Path, text: str) -> Path:
    path = directory / "pos.toml"
    path.write_text(text)
    return path


def test_good_file_loads_with_relative_key_paths(cfg_dir: Path) -> None:
    config = load_config(write(cfg_dir, GOOD))
    assert config.gateway_url == "http://127.0.0.1:8080"
    assert config.entry_url == "http://127.0.0.1:8080/api/entry"
    assert config.app_id == "pos-sandbox"
    assert config.merchant_no == "M0001"
    assert config.default_currency == "QAR"
    assert config.notify_url is None
    assert config.timeout == 10.0
    assert isinstance(config.signing_key, rsa.RSAPrivateKey)
    assert isinstance(config.verify_key, rsa.RSAPublicKey)
    assert config.source == (cfg_dir / "pos.toml").resolve()


def test_optional_keys(cfg_dir: Path) -> None:
    text = GOOD + 'notify_url = "https://pos.example/notify"\ntimeout = 3\nstore_no = "S1"\n'
    config = load_config(write(cfg_dir, text))
    assert config.notify_url == "https://pos.example/notify"
    assert config.timeout == 3.0
    assert config.store_no == "S1"


def test_currency_defaults_to_qar(cfg_dir: Path) -> None:
    text = GOOD.replace('default_currency = "QAR"\n', "")
    assert load_config(write(cfg_dir, text)).default_currency == "QAR"


def test_absolute_and_base64_key_files(
    cfg_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    elsewhere = tmp_path_factory.mktemp("elsewhere")
    der_text = "".join(POS_PRIVATE.splitlines()[1:-1])  # bare base64 PKCS#8 as the portal shows
    (elsewhere / "key.b64").write_text(der_text)
    text = GOOD.replace('"keys/pos_private.pem"', f'"{elsewhere / "key.b64"}"')
    assert isinstance(load_config(write(cfg_dir, text)).signing_key, rsa.RSAPrivateKey)


def msg(path: Path, rest: str) -> str:
    return f"{path}: {rest}"


@pytest.mark.parametrize(
    ("edit", "key", "expected"),
    [
        (
            lambda t: t.replace('app_id = "pos-sandbox"\n', ""),
            "app_id",
            "app_id: is required",
        ),
        (
            lambda t: t + 'colour = "blue"\n',
            "colour",
            "colour: unknown key (allowed: gateway_url, app_id, merchant_no, private_key_file, "
            "gateway_public_key_file, default_currency, notify_url, timeout, store_no, "
            "order_store)",
        ),
        (
            lambda t: t.replace('"http://127.0.0.1:8080"', '"127.0.0.1:8080"'),
            "gateway_url",
            "gateway_url: '127.0.0.1:8080' is not an http(s) URL "
            "(allowed: http://host[:port][/path])",
        ),
        (
            lambda t: t.replace('merchant_no = "M0001"', "merchant_no = 1"),
            "merchant_no",
            "merchant_no: must be a string, not int",
        ),
        (
            lambda t: t.replace('merchant_no = "M0001"', 'merchant_no = " "'),
            "merchant_no",
            "merchant_no: must not be empty",
        ),
        (
            lambda t: t.replace('"QAR"', '"XYZ"'),
            "default_currency",
            "default_currency: unsupported currency 'XYZ' (allowed: AED, BHD, CNY, EGP, EUR, "
            "GBP, HKD, INR, JOD, JPY, KWD, OMR, QAR, SAR, USD)",
        ),
        (
            lambda t: t + "timeout = 0\n",
            "timeout",
            "timeout: 0 is out of range (allowed: 0 < timeout <= 300)",
        ),
        (
            lambda t: t + 'timeout = "10"\n',
            "timeout",
            "timeout: must be a number of seconds, not str",
        ),
        (
            lambda t: t + "timeout = true\n",
            "timeout",
            "timeout: must be a number of seconds, not bool",
        ),
        (
            lambda t: t + 'notify_url = "ftp://x"\n',
            "notify_url",
            "notify_url: 'ftp://x' is not an http(s) URL (allowed: http://host[:port][/path])",
        ),
    ],
)
def test_exact_errors(cfg_dir: Path, edit: Callable[[str], str], key: str, expected: str) -> None:
    path = write(cfg_dir, edit(GOOD))
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value) == msg(path, expected)
    assert info.value.key == key
    assert info.value.path == str(path)


def test_missing_key_file_names_the_resolved_path(cfg_dir: Path) -> None:
    (cfg_dir / "keys" / "pos_private.pem").unlink()
    path = write(cfg_dir, GOOD)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value) == msg(
        path, f"private_key_file: file {cfg_dir / 'keys' / 'pos_private.pem'} does not exist"
    )


def test_garbage_key_file(cfg_dir: Path) -> None:
    (cfg_dir / "keys" / "gateway_public.pem").write_text("not a key")
    path = write(cfg_dir, GOOD)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.key == "gateway_public_key_file"
    assert str(info.value).startswith(f"{path}: gateway_public_key_file: cannot load RSA public")
    assert str(info.value).endswith("(allowed: PEM public key or base64 X.509 DER)")


def test_private_key_given_as_public_key_file(cfg_dir: Path) -> None:
    (cfg_dir / "keys" / "gateway_public.pem").write_text(POS_PRIVATE)
    with pytest.raises(ConfigError) as info:
        load_config(write(cfg_dir, GOOD))
    assert info.value.key == "gateway_public_key_file"


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.toml"
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.key is None
    assert str(info.value) == (
        f"{path}: config file not found; pass --config or set SADAD_POS_CONFIG "
        "(the sandbox writes one on its first `serve`)"
    )


def test_bad_toml_names_line(cfg_dir: Path) -> None:
    path = write(cfg_dir, GOOD + "timeout = \n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value).startswith(f"{path}: is not valid TOML: ")
    assert "line 7" in str(info.value)


def test_not_utf8(cfg_dir: Path) -> None:
    path = cfg_dir / "pos.toml"
    path.write_bytes(b'app_id = "\xff"\n')
    with pytest.raises(ConfigError, match="is not UTF-8 text"):
        load_config(path)


def test_config_path_precedence(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("SADAD_POS_CONFIG", raising=False)
    assert config_path() == Path("pos.toml")
    monkeypatch.setenv("SADAD_POS_CONFIG", str(tmp_path / "a.toml"))
    assert config_path() == tmp_path / "a.toml"
    assert config_path(tmp_path / "b.toml") == tmp_path / "b.toml"


def test_direct_construction_loads_keys() -> None:
    config = make_config()
    assert isinstance(config.signing_key, rsa.RSAPrivateKey)
    with pytest.raises(KeyLoadError):
        PosConfig(
            gateway_url="http://x",
            app_id="a",
            merchant_no="m",
            private_key="nope",
            gateway_public_key=GW_PUBLIC,
        )
