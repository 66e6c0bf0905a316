-- 1.1.0: spending policies; a NULL wallet_id is a global policy.
CREATE TABLE policies (
    id          TEXT PRIMARY KEY,
    wallet_id   TEXT REFERENCES wallets (id) ON DELETE CASCADE,
    type        TEXT NOT NULL
                CHECK (type IN ('SPENDING_LIMIT', 'WHITELIST', 'TIME_RESTRICTION', 'RATE_LIMIT')),
    rules       TEXT NOT NULL DEFAULT '{}',
    priority    INTEGER NOT NULL DEFAULT 0,
    enabled     INTEGER NOT NULL DEFAULT 1 CHECK (enabled IN (0, 1)),
    created_at  INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL
);

CREATE INDEX idx_policies_wallet_id ON policies (wallet_id);
