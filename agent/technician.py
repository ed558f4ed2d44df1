"""The technician PIN: its stored form and the lockout. Pure (clock passed in).

The PIN opens the setup screen (broker, terminal SN, readers). It is checked
by the agent, never by the UI - a person at the terminal, or any process
running as the UI's user, could otherwise skip the check - and it is kept
only as a scrypt hash (RFC 7914, the ``cryptography`` package), one line in
the file ``terminal.technician_pin_file`` names::

    scrypt$n=16384,r=8,p=1$<salt, base64>$<key, base64>

``sadad-agent pin set`` writes it. A 4-12 digit PIN has at most 10^12
values, so the hash alone would not hold an attacker with the file for
long; what it does is keep the PIN out of every config, backup and log.
Against guessing at the screen there is the lockout:

* ``MAX_FAILURES`` wrong PINs in a row lock setup for ``LOCK_MS``; every
  lockout after that without a correct PIN doubles it, up to ``MAX_LOCK_MS``;
* a correct PIN clears the count; a PIN entered while locked is refused
  unchecked (so it is no oracle);
* the state (``Lockout``) is the agent's, kept in its journal, so it
  survives restarts of the UI and of the agent.
"""

from __future__ import annotations

import base64
import hmac
import os
import re
from dataclasses import dataclass, replace
from typing import Literal

from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

PIN = re.compile(r"\d{4,12}")
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**14, 8, 1  # ~16 MiB, ~50 ms: per attempt, on a terminal
_HASH = re.compile(r"scrypt\$n=(\d+),r=(\d+),p=(\d+)\$([A-Za-z0-9+/=]+)\$([A-Za-z0-9+/=]+)")

MAX_FAILURES = 5
LOCK_MS = 60_000
MAX_LOCK_MS = 3_600_000

Verdict = Literal["ok", "wrong", "locked"]


class PinHashError(ValueError):
    """Not a PIN hash this module wrote (the text never holds the PIN)."""


def _kdf(salt: bytes, n: int, r: int, p: int) -> Scrypt:
    return Scrypt(salt=salt, length=32, n=n, r=r, p=p)


def hash_pin(pin: str, *, salt: bytes | None = None) -> str:
    """The stored form of ``pin``. Raises ValueError when it is not 4-12 digits."""
    if not PIN.fullmatch(pin):
        raise ValueError("a technician PIN is 4-12 digits")
    salt = os.urandom(16) if salt is None else salt
    key = _kdf(salt, SCRYPT_N, SCRYPT_R, SCRYPT_P).derive(pin.encode())
    b64 = base64.b64encode
    return f"scrypt$n={SCRYPT_N},r={SCRYPT_R},p={SCRYPT_P}${b64(salt).decode()}${b64(key).decode()}"


def check_hash(text: str) -> str:
    """``text`` (a hash file's content) as a hash line. Raises PinHashError."""
    line = text.strip()
    match = _HASH.fullmatch(line)
    if match is None:
        if PIN.fullmatch(line):
            raise PinHashError("holds a PIN in plain text: make a hash with `sadad-agent pin set`")
        raise PinHashError("is not a PIN hash (scrypt$n=..,r=..,p=..$SALT$KEY)")
    n, r, p = (int(match.group(i)) for i in (1, 2, 3))
    if n < 2**12 or n & (n - 1) or not 1 <= r <= 32 or not 1 <= p <= 16:
        raise PinHashError("has scrypt parameters out of range")
    return line


def verify_pin(pin: str, hashed: str) -> bool:
    """Whether ``pin`` is the one ``hashed`` was made from (constant time).
    Raises PinHashError for a malformed hash."""
    match = _HASH.fullmatch(check_hash(hashed))
    assert match is not None
    n, r, p = (int(match.group(i)) for i in (1, 2, 3))
    salt = base64.b64decode(match.group(4))
    want = base64.b64decode(match.group(5))
    got = _kdf(salt, n, r, p).derive(pin.encode()[:64])
    return hmac.compare_digest(got, want)


@dataclass(frozen=True, slots=True)
class Lockout:
    """Wrong PINs in a row, lockouts since the last correct PIN, and until when
    setup is locked (ms, wall clock: it must hold across restarts)."""

    failures: int = 0
    lockouts: int = 0
    locked_until_ms: int = 0

    def seconds_locked(self, now_ms: int) -> int:
        return max(0, -(-(self.locked_until_ms - now_ms) // 1000))

    def attempts_left(self) -> int:
        return MAX_FAILURES - self.failures

    def after(self, correct: bool, now_ms: int) -> Lockout:
        """The state once a PIN was judged ``correct`` or not (not while locked)."""
        if correct:
            return Lockout()
        failures = self.failures + 1
        if failures < MAX_FAILURES:
            return replace(self, failures=failures)
        lock_ms = min(MAX_LOCK_MS, LOCK_MS * 2**self.lockouts)
        return Lockout(failures=0, lockouts=self.lockouts + 1, locked_until_ms=now_ms + lock_ms)
