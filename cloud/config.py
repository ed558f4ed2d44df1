"""POS-server configuration: ``pos.toml`` (written by the sandbox's first ``serve``).

A flat TOML file, declared once in ``PosConfig`` below (``cloud.config_schema``:
each key's type, bounds, default and doc in its attribute's annotation);
docs/configuration.md shows the keys and an example, made from it.

``order_store`` names the SQLite file where ``cloud.pos`` records each order
it creates, to bind notifications and query answers to it (docs/protocol.md
part B); every instance of a POS server (and ``sadad-pos push`` and
``listen``) given the same file sees the same orders. Without it they are
kept in the process's memory.

Keys may be PEM or the bare base64 DER text of the gateway portal
(docs/protocol.md "Common envelope"); they are loaded when the config is
loaded. Every problem is a ``ConfigError`` (``cloud.config_schema``, the
project's one; exit code 78) naming the file, the key, what is wrong and
what is allowed; nothing else escapes ``load_config``. The phrasing
(``POS_WORDING``, the checks below) is pos.toml's own, older than the shared
schema, and kept: scripts match on it.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated
from urllib.parse import urlsplit

from cryptography.hazmat.primitives.asymmetric import rsa

from cloud.config_schema import Invalid, Rule, Schema, Setting, Wording
from cloud.envelope import ENTRY_PATH
from cloud.errors import KeyLoadError
from cloud.money import CURRENCIES
from cloud.signing import PrivateKeyLike, PublicKeyLike, load_private_key, load_public_key

__all__ = ["DEFAULT_PATH", "ENV_VAR", "SCHEMA", "PosConfig", "config_path", "load_config"]

ENV_VAR = "SADAD_POS_CONFIG"
DEFAULT_PATH = "pos.toml"
DEFAULT_TIMEOUT = 10.0
MAX_TIMEOUT = 300.0

POS_WORDING = Wording(
    unknown_key="unknown key (allowed: {allowed})",
    missing_key="is required",
    bad_value="{problem}",  # the checks below show the value themselves
    not_found=(
        f"config file not found; pass --config or set {ENV_VAR} "
        "(the sandbox writes one on its first `serve`)"
    ),
    unreadable="cannot read: {reason}",
    not_utf8="is not UTF-8 text",
    bad_toml="is not valid TOML: {error}",
)


# ---------------------------------------------------------------- checks of this file


def _text(value: object) -> str:
    if not isinstance(value, str):
        raise Invalid(f"must be a string, not {type(value).__name__}")
    if not value.strip():
        raise Invalid("must not be empty")
    return value


def _string(value: object, _base: Path) -> object:
    return _text(value)


def _http_url(value: object, _base: Path) -> object:
    text = _text(value)
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise Invalid(f"{text!r} is not an http(s) URL (allowed: http://host[:port][/path])")
    return text


def _currency(value: object, _base: Path) -> object:
    code = _text(value)
    if code not in CURRENCIES:
        raise Invalid(f"unsupported currency {code!r} (allowed: {_CURRENCIES})")
    return code


def _timeout(value: object, _base: Path) -> object:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise Invalid(f"must be a number of seconds, not {type(value).__name__}")
    if not 0 < value <= MAX_TIMEOUT:
        raise Invalid(f"{value} is out of range (allowed: 0 < timeout <= {MAX_TIMEOUT:g})")
    return float(value)


def _path(value: object, base: Path) -> Path:
    path = Path(_text(value)).expanduser()
    return path if path.is_absolute() else base / path


def _order_store(value: object, base: Path) -> object:
    path = _path(value, base).absolute()
    if path.is_dir():
        raise Invalid(f"{path} is a directory (allowed: a file path)")
    return path


def _key_file(load: Callable[[bytes], object], allowed: str) -> Rule:
    """A key file, loaded with ``load`` (``cloud.signing``)."""

    def convert(value: object, base: Path) -> object:
        path = _path(value, base)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise Invalid(f"file {path} does not exist") from None
        except OSError as exc:
            raise Invalid(f"cannot read {path}: {exc.strerror}") from None
        try:
            return load(data)
        except KeyLoadError as exc:
            raise Invalid(f"{exc} (allowed: {allowed})") from None

    return Rule(f"the path of a file holding {allowed}", convert)


_CURRENCIES = ", ".join(sorted(CURRENCIES))
TEXT = Rule("a non-empty string", _string)
HTTP_URL = Rule("an http(s) URL: http://host[:port][/path]", _http_url)
CURRENCY = Rule(f"one of {_CURRENCIES}", _currency)
TIMEOUT = Rule(f"a number of seconds, 0 < timeout <= {MAX_TIMEOUT:g}", _timeout)
ORDER_STORE = Rule("a file path (relative to this file)", _order_store)
PRIVATE_KEY = _key_file(load_private_key, "PEM (PKCS#1 or PKCS#8) or base64 PKCS#8 DER")
PUBLIC_KEY = _key_file(load_public_key, "PEM public key or base64 X.509 DER")


# ---------------------------------------------------------------- the file, declared


@dataclass(frozen=True, slots=True)
class PosConfig:
    """What the POS module needs. Keys are loaded when the config is built.

    Built by ``load_config`` from a file, or directly (tests, embedding
    applications) with key text or loaded keys. Raises KeyLoadError when a
    key given directly cannot be loaded.
    """

    gateway_url: Annotated[
        str,
        Setting(
            HTTP_URL,
            "the gateway: requests go to {gateway_url}/api/entry (docs/protocol.md part A)",
            example="http://127.0.0.1:8080",
        ),
    ]
    app_id: Annotated[
        str, Setting(TEXT, "the app_id the gateway issued to this POS", example="pos-sandbox")
    ]
    merchant_no: Annotated[str, Setting(TEXT, "the merchant the orders are for", example="M0001")]
    private_key: Annotated[
        PrivateKeyLike,
        Setting(
            PRIVATE_KEY,
            "the POS's RSA private key (relative paths: to this file); signs each request",
            key="private_key_file",
            example="keys/pos_private.pem",
        ),
    ]
    gateway_public_key: Annotated[
        PublicKeyLike,
        Setting(
            PUBLIC_KEY,
            "the gateway's RSA public key; verifies answers and notifications",
            key="gateway_public_key_file",
            example="keys/gateway_public.pem",
        ),
    ]
    default_currency: Annotated[
        str,
        Setting(CURRENCY, "the currency of an order that names none", set_in_example=True),
    ] = "QAR"
    notify_url: Annotated[
        str | None,
        Setting(
            HTTP_URL,
            "where the gateway sends result notifications (docs/protocol.md part B)",
            example="https://pos.example/notify",
        ),
    ] = None
    timeout: Annotated[float, Setting(TIMEOUT, "seconds per HTTP request")] = DEFAULT_TIMEOUT
    store_no: Annotated[str | None, Setting(TEXT, "the store the orders are for", example="S1")] = (
        None
    )
    # A SQLite file of the orders this POS created (``cloud.order_store``):
    # shared by every instance of the POS server; None keeps them in memory.
    order_store: Annotated[
        Path | None,
        Setting(
            ORDER_STORE,
            "the SQLite file of the orders this POS created, shared by its instances",
            example="pos-orders.db",
            set_in_example=True,
        ),
    ] = None
    source: Path | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "private_key", load_private_key(self.private_key))
        object.__setattr__(self, "gateway_public_key", load_public_key(self.gateway_public_key))

    @property
    def signing_key(self) -> rsa.RSAPrivateKey:
        key = self.private_key
        assert isinstance(key, rsa.RSAPrivateKey)
        return key

    @property
    def verify_key(self) -> rsa.RSAPublicKey:
        key = self.gateway_public_key
        assert isinstance(key, rsa.RSAPublicKey)
        return key

    @property
    def entry_url(self) -> str:
        """``{gateway_url}/api/entry``."""
        return self.gateway_url.rstrip("/") + ENTRY_PATH


SCHEMA = Schema(PosConfig, wording=POS_WORDING)


def config_path(explicit: str | os.PathLike[str] | None = None) -> Path:
    """The config file to use: ``explicit``, else $SADAD_POS_CONFIG, else ./pos.toml."""
    if explicit is not None:
        return Path(explicit)
    return Path(os.environ.get(ENV_VAR) or DEFAULT_PATH)


def load_config(path: str | os.PathLike[str] | None = None) -> PosConfig:
    """Read and check a ``pos.toml`` (see ``config_path`` for the default).

    Raises ConfigError naming the file and key, every problem at once.
    """
    file = config_path(path)
    text = SCHEMA.read(file)
    return SCHEMA.loads(text, file=str(file), base=file.parent, extra={"source": file.resolve()})
