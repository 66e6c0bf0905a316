-- 1.0.0: the audit trail and a small key-value store for daemon state
-- (the version check writes here). audit_log.wallet_id has no foreign key on
-- purpose: the history must outlive the wallets it mentions.
CREATE TABLE audit_log (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    timestamp   INTEGER NOT NULL,
    event_type  TEXT NOT NULL,
    actor       TEXT NOT NULL,
    wallet_id   TEXT,
    details     TEXT NOT NULL DEFAULT '{}'
);

CREATE INDEX idx_audit_log_timestamp ON audit_log (timestamp);
CREATE INDEX idx_audit_log_wallet_id ON audit_log (wallet_id);

CREATE TABLE key_value_store (
    key         TEXT PRIMARY KEY,
    value       TEXT NOT NULL,
    updated_at  INTEGER NOT NULL
);
