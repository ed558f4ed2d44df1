"""Where the sandbox keeps things under its data directory, and its RSA keys.

Layout of ``DIR`` (docs/protocol.md "Common envelope": the gateway signs with its
private key, the POS app and each terminal with their own)::

    DIR/sandbox.db                      state (sandbox.store)
    DIR/pos.toml                        config for sadad-pos
    DIR/keys/gateway_{private,public}.pem
    DIR/keys/pos_{private,public}.pem
    DIR/terminals/SN/                   per terminal (sandbox.provision)
    DIR/mosquitto/                      broker config, log and persistence

Keys are RSA-2048 from ``cloud.signing.generate_key_pem`` (PKCS#8 private,
SubjectPublicKeyInfo public); a pair is created once and never replaced.
Private key files are written with mode 0600.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from cloud.signing import generate_key_pem

MERCHANT_NO = "M0001"
MERCHANT_NAME = "Sandbox Merchant"
POS_APP_ID = "pos-sandbox"
DEFAULT_CURRENCY = "QAR"
DEFAULT_STORE_NAME = "Sandbox Store"


@dataclass(frozen=True, slots=True)
class Layout:
    """Paths under the data directory ``root`` (absolute)."""

    root: Path

    @classmethod
    def of(cls, root: Path | str) -> Layout:
        return cls(Path(root).expanduser().resolve())

    @property
    def db_path(self) -> Path:
        return self.root / "sandbox.db"

    @property
    def pos_config(self) -> Path:
        return self.root / "pos.toml"

    @property
    def keys_dir(self) -> Path:
        return self.root / "keys"

    @property
    def gateway_private(self) -> Path:
        return self.keys_dir / "gateway_private.pem"

    @property
    def gateway_public(self) -> Path:
        return self.keys_dir / "gateway_public.pem"

    @property
    def pos_private(self) -> Path:
        return self.keys_dir / "pos_private.pem"

    @property
    def pos_public(self) -> Path:
        return self.keys_dir / "pos_public.pem"

    @property
    def mosquitto_dir(self) -> Path:
        return self.root / "mosquitto"

    def terminal_dir(self, sn: str) -> Path:
        return self.root / "terminals" / sn


def write_private(path: Path, pem: str) -> None:
    """Write a private key readable by the owner only."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="ascii") as fh:
        fh.write(pem)


def ensure_pair(private_path: Path, public_path: Path) -> tuple[str, str]:
    """The key pair at these paths, created when the private key is missing.

    Returns (private PEM, public PEM)."""
    if private_path.exists() and public_path.exists():
        return private_path.read_text("ascii"), public_path.read_text("ascii")
    private, public = generate_key_pem()
    write_private(private_path, private)
    public_path.write_text(public, "ascii")
    return private, public


@dataclass(frozen=True, slots=True)
class SandboxKeys:
    gateway_private: str
    gateway_public: str
    pos_private: str
    pos_public: str


def ensure_keys(layout: Layout) -> SandboxKeys:
    """The gateway and POS key pairs, created on first use."""
    layout.keys_dir.mkdir(parents=True, exist_ok=True)
    gw_priv, gw_pub = ensure_pair(layout.gateway_private, layout.gateway_public)
    pos_priv, pos_pub = ensure_pair(layout.pos_private, layout.pos_public)
    return SandboxKeys(gw_priv, gw_pub, pos_priv, pos_pub)
