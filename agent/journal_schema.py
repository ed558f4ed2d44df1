"""The journal's schema: numbered migrations, applied in order
(``PRAGMA user_version``), and the bounds of its logs."""

from __future__ import annotations

MIGRATIONS: list[str] = [
    # 1: the first schema
    """
    CREATE TABLE pushes (
        message_id TEXT PRIMARY KEY,
        topic TEXT NOT NULL,
        trans_no TEXT,
        received_at INTEGER NOT NULL,
        outcome TEXT NOT NULL
    );
    CREATE TABLE transactions (
        trans_no TEXT PRIMARY KEY,
        message_id TEXT NOT NULL,
        merchant_no TEXT NOT NULL,
        merchant_order_no TEXT NOT NULL,
        trans_type INTEGER NOT NULL,
        orig_trans_no TEXT,
        currency TEXT NOT NULL,
        amount TEXT NOT NULL,
        tip_amount TEXT,
        description TEXT,
        pay_scenario TEXT,
        confirm INTEGER NOT NULL,
        expires_at INTEGER NOT NULL,
        queue_mode TEXT NOT NULL,
        seq INTEGER NOT NULL,
        phase TEXT NOT NULL,
        final INTEGER NOT NULL DEFAULT 0,
        reason TEXT,
        masked_pan TEXT,
        card_brand TEXT,
        entry_mode TEXT,
        auth_code TEXT,
        ref_no TEXT,
        pay_method_id TEXT,
        error_code TEXT,
        created_at INTEGER NOT NULL,
        updated_at INTEGER NOT NULL
    );
    CREATE INDEX transactions_open ON transactions(final, seq);
    CREATE TABLE attempts (
        request_no TEXT PRIMARY KEY,
        trans_no TEXT NOT NULL REFERENCES transactions(trans_no),
        kind TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        answered_at INTEGER,
        answer_status INTEGER,
        reverse_requested_at INTEGER,
        reverse_acked_at INTEGER
    );
    CREATE INDEX attempts_trans ON attempts(trans_no);
    CREATE TABLE hops (
        trans_no TEXT NOT NULL,
        name TEXT NOT NULL,
        at_ms INTEGER NOT NULL,
        PRIMARY KEY (trans_no, name)
    );
    CREATE TABLE outbox (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        trans_no TEXT,
        kind TEXT NOT NULL,
        reason TEXT,
        message_id TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        sent_at INTEGER
    );
    """,
    # 2: the outbox keeps sent events until pruned; without this index every
    # drain scanned all of them (~30 ms a drain after 90 days of 500 sales a day)
    "CREATE INDEX outbox_unsent ON outbox(id) WHERE sent_at IS NULL",
    # 3: pushes refused before their signature verified, kept apart from
    # ``pushes`` (which suppresses duplicates by message_id: a forged push
    # must not claim the id of a genuine one to come); bounded, and never the
    # payload - only what ``cloud.redact.safe`` leaves of its claims.
    """
    CREATE TABLE rejections (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        at_ms INTEGER NOT NULL,
        reason TEXT NOT NULL,
        detail TEXT NOT NULL,
        claimed_id TEXT,
        size INTEGER NOT NULL,
        suppressed INTEGER NOT NULL
    );
    """,
    # 4: the technician PIN's lockout (one row: it must survive restarts of
    # the UI and of the agent) and what was done in setup, when (never a PIN).
    """
    CREATE TABLE technician (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        failures INTEGER NOT NULL,
        lockouts INTEGER NOT NULL,
        locked_until_ms INTEGER NOT NULL
    );
    CREATE TABLE setup_log (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        at_ms INTEGER NOT NULL,
        action TEXT NOT NULL,
        outcome TEXT NOT NULL
    );
    """,
    # 5: receipts. The application a chip card paid with (AID, label: public
    # scheme identifiers, printed on the receipt), and the print queue: a job
    # is written in the same commit as the final phase (``agent.finals``), so
    # a crash or a printer out of paper never loses a receipt, and printing
    # never stands in the money path (``agent.print_queue``).
    """
    ALTER TABLE transactions ADD COLUMN aid TEXT;
    ALTER TABLE transactions ADD COLUMN app_label TEXT;
    CREATE TABLE print_jobs (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        trans_no TEXT NOT NULL REFERENCES transactions(trans_no),
        copy TEXT NOT NULL,
        reprint INTEGER NOT NULL,
        created_at INTEGER NOT NULL,
        printed_at INTEGER, -- when it printed, 0 when given up (cannot be laid out)
        attempts INTEGER NOT NULL DEFAULT 0,
        last_error TEXT
    );
    CREATE INDEX print_jobs_pending ON print_jobs(id) WHERE printed_at IS NULL;
    """,
]

MAX_SETUP_LOG = 1000

# How many rejection rows are kept (the newest); a report at most every 2 s
# (``agent.reject_reports``) makes that ~half an hour of a steady flood.
MAX_REJECTIONS = 1000
