"""The engine's settings: its identity and how long it waits, from the config."""

from __future__ import annotations

from dataclasses import dataclass

from agent.config import AgentConfig
from agent.print_queue import Copy
from agent.states import RESULT_SECONDS
from cloud.signing import PrivateKeyLike, PublicKeyLike


@dataclass(frozen=True, slots=True)
class EngineSettings:
    sn: str
    private_key: PrivateKeyLike
    gateway_public_key: PublicKeyLike
    resolve_deadline: float = 60.0
    result_seconds: float = RESULT_SECONDS
    retry_base: float = 1.0
    retry_cap: float = 30.0
    # The longest a payment call may take, whatever happens under it (the HTTP
    # client has its own timeout and may re-send once): then the outcome is
    # unknown and RESOLVING settles it.
    authorize_deadline: float = 40.0
    # How long one step of the worker may go without progress before the
    # watchdog stops: longer than any legitimate wait between two signs of
    # life (a reversal retry: retry_cap + an HTTP timeout).
    stall_after: float = 120.0
    # The receipt copies a final result queues (none without a printer).
    receipts: tuple[Copy, ...] = ()

    @classmethod
    def of(
        cls,
        cfg: AgentConfig,
        private_key: PrivateKeyLike,
        gateway_public_key: PublicKeyLike,
        result_seconds: float,
    ) -> EngineSettings:
        """The settings ``cfg`` gives (``result_seconds`` apart: it is built
        into the state table, so a reload keeps the running one)."""
        timeout = cfg.gateway.timeout
        return cls(
            sn=cfg.terminal.sn,
            private_key=private_key,
            gateway_public_key=gateway_public_key,
            resolve_deadline=cfg.gateway.resolve_deadline,
            result_seconds=result_seconds,
            # A call may be sent twice (a stale keep-alive connection), each
            # within the timeout; then some slack for sealing and the journal.
            authorize_deadline=2 * timeout + 5,
            stall_after=max(120.0, 4 * timeout + 30),
            receipts=receipt_copies(cfg),
        )


def receipt_copies(cfg: AgentConfig) -> tuple[Copy, ...]:
    """The copies each receipt prints: none without a printer."""
    if cfg.printer.spec is None:
        return ()
    return ("customer", "merchant") if cfg.printer.merchant_copy else ("customer",)
