-- 1.4.0: token transfers, contract calls, approvals and batches, plus the
-- QUEUED / CANCELLED / EXPIRED states of the delay queue. SQLite cannot alter a
-- CHECK constraint, so the table is rebuilt (sqlite.org/lang_altertable.html,
-- "making other kinds of table schema changes"). The runner turns foreign keys
-- off around this transaction and runs foreign_key_check before committing.
-- Columns are always listed by name: never `SELECT *`, whose column order
-- belongs to whichever table happens to be on disk.
CREATE TABLE transactions_new (
    id          TEXT PRIMARY KEY,
    wallet_id   TEXT NOT NULL REFERENCES wallets (id) ON DELETE RESTRICT,
    session_id  TEXT REFERENCES sessions (id) ON DELETE SET NULL,
    type        TEXT NOT NULL
                CHECK (type IN ('TRANSFER', 'TOKEN_TRANSFER', 'CONTRACT_CALL', 'APPROVE', 'BATCH')),
    status      TEXT NOT NULL DEFAULT 'PENDING'
                CHECK (status IN ('PENDING', 'QUEUED', 'SUBMITTED', 'CONFIRMED', 'FAILED',
                                  'CANCELLED', 'EXPIRED')),
    to_address  TEXT NOT NULL,
    amount      TEXT NOT NULL,
    tx_hash     TEXT,
    created_at  INTEGER NOT NULL
);

INSERT INTO transactions_new (id, wallet_id, session_id, type, status, to_address, amount,
                              tx_hash, created_at)
SELECT id, wallet_id, session_id, type, status, to_address, amount, tx_hash, created_at
FROM transactions;

DROP TABLE transactions;

ALTER TABLE transactions_new RENAME TO transactions;

CREATE INDEX idx_transactions_wallet_id ON transactions (wallet_id);
CREATE INDEX idx_transactions_created_at ON transactions (created_at);
CREATE INDEX idx_transactions_status ON transactions (status);
-- New: confirmations are looked up by hash.
CREATE INDEX idx_transactions_tx_hash ON transactions (tx_hash);
