-- 0.11.0: outgoing transactions; amounts are decimal strings (no float rounding).
CREATE TABLE transactions (
    id          TEXT PRIMARY KEY,
    wallet_id   TEXT NOT NULL REFERENCES wallets (id) ON DELETE RESTRICT,
    session_id  TEXT REFERENCES sessions (id) ON DELETE SET NULL,
    type        TEXT NOT NULL CHECK (type IN ('TRANSFER')),
    status      TEXT NOT NULL DEFAULT 'PENDING'
                CHECK (status IN ('PENDING', 'SUBMITTED', 'CONFIRMED', 'FAILED')),
    to_address  TEXT NOT NULL,
    amount      TEXT NOT NULL,
    tx_hash     TEXT,
    created_at  INTEGER NOT NULL
);

CREATE INDEX idx_transactions_wallet_id ON transactions (wallet_id);
CREATE INDEX idx_transactions_created_at ON transactions (created_at);
