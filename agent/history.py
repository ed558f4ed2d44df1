"""The cashier's history: the last transactions from the journal, as the
bridge's ``history`` intent answers them (``bridge_replies.HistoryEntry``:
masked card at most, amounts as the checkout shows them)."""

from __future__ import annotations

from agent import print_queue
from agent.bridge_protocol import HISTORY_MAX
from agent.bridge_replies import HistoryEntry, HistoryReply
from agent.checkout_screen import amount_text, trans_type_name
from agent.journal import Journal, TxRow


def history_entry(tx: TxRow, *, printer: bool) -> HistoryEntry:
    return HistoryEntry(
        trans_no=tx.trans_no,
        merchant_order_no=tx.merchant_order_no,
        at_ms=tx.updated_at,
        amount=f"{amount_text(tx.trans_amount, tx.currency)} {tx.currency}",
        trans_type=trans_type_name(tx.trans_type),
        status=tx.phase.value,
        masked_pan=tx.masked_pan or "",
        brand=tx.card_brand or "",
        entry_mode=tx.entry_mode or "",
        auth_code=tx.auth_code or "",
        reference=tx.ref_no or "",
        reason=tx.reason or "",
        receipt=printer and tx.final and print_queue.receipt_due(tx),
    )


def history(journal: Journal, limit: int = HISTORY_MAX, *, printer: bool) -> HistoryReply:
    """The last ``limit`` transactions (at most ``HISTORY_MAX``), newest first;
    ``printer``: whether one is configured (an entry offers reprint only then)."""
    rows = journal.recent(min(limit, HISTORY_MAX))
    return HistoryReply(entries=tuple(history_entry(tx, printer=printer) for tx in rows))
