"""POS-server configuration: ``pos.toml`` (written by the sandbox's first ``serve``).

Format::

    gateway_url = "http://127.0.0.1:8080"           # {gateway_url}/api/entry, docs/protocol.md A
    app_id = "pos-sandbox"                           # the app_id the gateway issued
    merchant_no = "M0001"
    private_key_file = "keys/pos_private.pem"        # relative to this file
    gateway_public_key_file = "keys/gateway_public.pem"
    default_currency = "QAR"                         # optional, default QAR
    # optional: notify_url = "https://pos.example/notify", timeout = 10.0, store_no = "S1"
    order_store = "pos-orders.db"                    # optional, relative to this file

``order_store`` names the SQLite file where ``cloud.pos`` records each order
it creates, to bind notifications and query answers to it (docs/protocol.md
part B); every instance of a POS server (and ``sadad-pos push`` and
``listen``) given the same file sees the same orders. Without it they are
kept in the process's memory.

Keys may be PEM or the bare base64 DER text of the gateway portal
(docs/protocol.md "Common envelope"). Every problem is a ``ConfigError`` naming
the file, the key, what is wrong and what is allowed; nothing else escapes
``load_config``.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from cryptography.hazmat.primitives.asymmetric import rsa

from cloud.envelope import ENTRY_PATH
from cloud.errors import ConfigError, KeyLoadError
from cloud.money import CURRENCIES
from cloud.signing import PrivateKeyLike, PublicKeyLike, load_private_key, load_public_key

ENV_VAR = "SADAD_POS_CONFIG"
DEFAULT_PATH = "pos.toml"
DEFAULT_TIMEOUT = 10.0
MAX_TIMEOUT = 300.0

_REQUIRED = ("gateway_url", "app_id", "merchant_no", "private_key_file", "gateway_public_key_file")
_OPTIONAL = ("default_currency", "notify_url", "timeout", "store_no", "order_store")
_ALLOWED_KEYS = ", ".join(_REQUIRED + _OPTIONAL)


@dataclass(frozen=True, slots=True)
class PosConfig:
    """What the POS module needs. Keys are loaded when the config is built.

    Built by ``load_config`` from a file, or directly (tests, embedding
    applications) with key text or loaded keys. Raises KeyLoadError when a
    key given directly cannot be loaded.
    """

    gateway_url: str
    app_id: str
    merchant_no: str
    private_key: PrivateKeyLike
    gateway_public_key: PublicKeyLike
    default_currency: str = "QAR"
    notify_url: str | None = None
    timeout: float = DEFAULT_TIMEOUT
    store_no: str | None = None
    # A SQLite file of the orders this POS created (``cloud.order_store``):
    # shared by every instance of the POS server; None keeps them in memory.
    order_store: Path | None = None
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


def config_path(explicit: str | os.PathLike[str] | None = None) -> Path:
    """The config file to use: ``explicit``, else $SADAD_POS_CONFIG, else ./pos.toml."""
    if explicit is not None:
        return Path(explicit)
    return Path(os.environ.get(ENV_VAR) or DEFAULT_PATH)


def _http_url(where: str, key: str, value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(
            where, key, f"{value!r} is not an http(s) URL", "http://host[:port][/path]"
        )
    return value


def _string(where: str, raw: dict[str, Any], key: str) -> str:
    value = raw[key]
    if not isinstance(value, str):
        raise ConfigError(where, key, f"must be a string, not {type(value).__name__}")
    if not value.strip():
        raise ConfigError(where, key, "must not be empty")
    return value


def _key_file(where: str, base: Path, raw: dict[str, Any], key: str) -> bytes:
    name = _string(where, raw, key)
    path = Path(name).expanduser()
    if not path.is_absolute():
        path = base / path
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(where, key, f"file {path} does not exist") from None
    except OSError as exc:
        raise ConfigError(where, key, f"cannot read {path}: {exc.strerror}") from None


def load_config(path: str | os.PathLike[str] | None = None) -> PosConfig:
    """Read and check a ``pos.toml`` (see ``config_path`` for the default).

    Raises ConfigError naming the file and key.
    """
    file = config_path(path)
    where = str(file)
    try:
        text = file.read_bytes()
    except FileNotFoundError:
        raise ConfigError(
            where,
            None,
            f"config file not found; pass --config or set {ENV_VAR} "
            "(the sandbox writes one on its first `serve`)",
        ) from None
    except OSError as exc:
        raise ConfigError(where, None, f"cannot read: {exc.strerror}") from None
    try:
        raw = tomllib.loads(text.decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(where, None, "is not UTF-8 text") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(where, None, f"is not valid TOML: {exc}") from None

    for key in raw:
        if key not in _REQUIRED and key not in _OPTIONAL:
            raise ConfigError(where, key, "unknown key", _ALLOWED_KEYS)
    for key in _REQUIRED:
        if key not in raw:
            raise ConfigError(where, key, "is required")

    gateway_url = _http_url(where, "gateway_url", _string(where, raw, "gateway_url"))
    app_id = _string(where, raw, "app_id")
    merchant_no = _string(where, raw, "merchant_no")

    currency = "QAR"
    if "default_currency" in raw:
        currency = _string(where, raw, "default_currency")
        if currency not in CURRENCIES:
            raise ConfigError(
                where,
                "default_currency",
                f"unsupported currency {currency!r}",
                ", ".join(sorted(CURRENCIES)),
            )

    notify_url = None
    if "notify_url" in raw:
        notify_url = _http_url(where, "notify_url", _string(where, raw, "notify_url"))

    timeout = DEFAULT_TIMEOUT
    if "timeout" in raw:
        value = raw["timeout"]
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(
                where, "timeout", f"must be a number of seconds, not {type(value).__name__}"
            )
        if not 0 < value <= MAX_TIMEOUT:
            raise ConfigError(
                where, "timeout", f"{value} is out of range", f"0 < timeout <= {MAX_TIMEOUT:g}"
            )
        timeout = float(value)

    store_no = _string(where, raw, "store_no") if "store_no" in raw else None

    base = file.parent
    order_store = None
    if "order_store" in raw:
        order_store = Path(_string(where, raw, "order_store")).expanduser()
        if not order_store.is_absolute():
            order_store = (base / order_store).absolute()
        if order_store.is_dir():
            raise ConfigError(where, "order_store", f"{order_store} is a directory", "a file path")
    private_pem = _key_file(where, base, raw, "private_key_file")
    public_pem = _key_file(where, base, raw, "gateway_public_key_file")
    try:
        private_key = load_private_key(private_pem)
    except KeyLoadError as exc:
        raise ConfigError(
            where, "private_key_file", str(exc), "PEM (PKCS#1 or PKCS#8) or base64 PKCS#8 DER"
        ) from None
    try:
        public_key = load_public_key(public_pem)
    except KeyLoadError as exc:
        raise ConfigError(
            where, "gateway_public_key_file", str(exc), "PEM public key or base64 X.509 DER"
        ) from None

    return PosConfig(
        gateway_url=gateway_url,
        app_id=app_id,
        merchant_no=merchant_no,
        private_key=private_key,
        gateway_public_key=public_key,
        default_currency=currency,
        notify_url=notify_url,
        timeout=timeout,
        store_no=store_no,
        order_store=order_store,
        source=file.resolve(),
    )
