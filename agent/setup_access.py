"""Who may use the setup screen: the technician PIN, checked by the agent.

The UI only asks (bridge intents ``unlock_setup``, ``read_setup``,
``save_setup``); the agent decides. A bridge connection that sent the right
PIN (``agent.technician``: a scrypt hash in ``technician_pin_file``) may
read and save the ECR Hub settings, test the connection and the readers and
ask for a reload, until it leaves setup, goes away, or is idle for
``IDLE_S``. The lockout lives in the journal, so neither a restarted UI nor
a restarted agent resets it; every setup action is journaled with its time
(``agent.setup_records``; never a PIN).

The agent writes its own config (``agent.config_edit``: comments kept,
validated, atomic, never through a symlink) - the UI's user cannot write the
config directory at all (firmware-notes.md, "Users and files").
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from pathlib import Path

import msgspec

from agent import bridge_protocol as bp
from agent import setup_records
from agent.bridge_replies import EcrHubFields, ReadSetupReply, Refused, SaveSetupReply, UnlockReply
from agent.config import AgentConfig, ConfigError, technician_pin_hash
from agent.journal import Journal
from agent.technician import PIN, Lockout, PinHashError, verify_pin

log = logging.getLogger(__name__)

IDLE_S = 600.0  # an unlocked setup left alone locks again
LOCKED = Refused(reason="setup is locked: enter the technician PIN")


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


class SetupAccess:
    def __init__(self, journal: Journal) -> None:
        self.journal = journal
        self._unlocked: dict[str, float] = {}  # bridge client -> last action (monotonic)

    # ------------------------------------------------------------ the PIN

    async def unlock(self, cfg: AgentConfig, client: str, pin: str) -> UnlockReply:
        now = _now_ms()
        lock = Lockout(*setup_records.lockout(self.journal))
        waiting = lock.seconds_locked(now)
        if waiting:
            setup_records.log_setup(self.journal, "unlock", f"refused: locked for {waiting} s")
            return UnlockReply(reason="locked", locked_for=waiting)
        try:
            hashed = technician_pin_hash(cfg)
        except ConfigError as exc:
            setup_records.log_setup(self.journal, "unlock", "refused: the PIN file is not usable")
            return UnlockReply(reason=f"no usable technician PIN: {exc}")
        if hashed is None:
            setup_records.log_setup(self.journal, "unlock", "refused: no PIN configured")
            return UnlockReply(
                reason="no technician PIN configured: sadad-agent pin set, "
                "then terminal.technician_pin_file"
            )
        try:  # scrypt: ~50 ms of CPU, off the loop
            correct = bool(PIN.fullmatch(pin)) and await asyncio.to_thread(verify_pin, pin, hashed)
        except PinHashError:
            correct = False
        lock = lock.after(correct, now)
        setup_records.set_lockout(self.journal, lock.failures, lock.lockouts, lock.locked_until_ms)
        if correct:
            self._unlocked[client] = time.monotonic()
            setup_records.log_setup(self.journal, "unlock", "ok")
            log.info("setup unlocked")
            return UnlockReply(ok=True)
        waiting = lock.seconds_locked(now)
        locked = f"; locked for {waiting} s" if waiting else ""
        setup_records.log_setup(self.journal, "unlock", "wrong PIN" + locked)
        log.warning("wrong technician PIN%s", f": setup locked for {waiting} s" if waiting else "")
        return UnlockReply(
            reason="locked" if waiting else "wrong",
            locked_for=waiting,
            attempts_left=lock.attempts_left(),
        )

    def unlocked(self, client: str | None) -> bool:
        """Whether ``client`` may act in setup now (and note that it does)."""
        if client is None or client not in self._unlocked:
            return False
        if time.monotonic() - self._unlocked[client] > IDLE_S:
            del self._unlocked[client]
            setup_records.log_setup(self.journal, "lock", "idle")
            return False
        self._unlocked[client] = time.monotonic()
        return True

    def leave(self, client: str | None) -> None:
        if client is not None and self._unlocked.pop(client, None) is not None:
            setup_records.log_setup(self.journal, "leave", "locked again")

    # ------------------------------------------------------------ the settings

    def read(self, cfg: AgentConfig) -> ReadSetupReply:
        # tomlkit and tempfile only when setup is used: not kept in the daemon's memory.
        from agent.config_edit import read_settings

        assert cfg.source is not None
        try:
            text = Path(cfg.source).read_text("utf-8")
            settings = read_settings(text, file=Path(cfg.source).name)
        except (OSError, ConfigError) as exc:
            return ReadSetupReply(reason=f"the config does not load: {exc}")
        fields = msgspec.convert(dataclasses.asdict(settings), EcrHubFields)
        return ReadSetupReply(ok=True, settings=fields)

    async def save(self, cfg: AgentConfig, intent: bp.SaveSetupIntent) -> SaveSetupReply:
        """Check and write the settings. Returns ``ok`` (written) and, when it
        was not, the problems, one per line."""
        from agent.config_edit import EcrHubSettings, missing_tls_files, save_settings

        assert cfg.source is not None
        settings = EcrHubSettings(
            broker_url=intent.broker_url,
            terminal_sn=intent.terminal_sn,
            ca_file=intent.ca_file,
            cert_file=intent.cert_file,
            key_file=intent.key_file,
            gateway_url=intent.gateway_url,
            readers=intent.readers,
        )
        try:
            saved = await asyncio.to_thread(save_settings, Path(cfg.source), settings)
        except ConfigError as exc:
            refused = "refused: " + str(exc).splitlines()[0][:200]
            setup_records.log_setup(self.journal, "save", refused)
            return SaveSetupReply(reason=str(exc))
        setup_records.log_setup(self.journal, "save", "written")
        return SaveSetupReply(ok=True, warnings=tuple(missing_tls_files(saved)))
