-- 0.10.0: agent sessions; only a hash of the session token is stored.
CREATE TABLE sessions (
    id          TEXT PRIMARY KEY,
    wallet_id   TEXT NOT NULL REFERENCES wallets (id) ON DELETE CASCADE,
    token_hash  TEXT NOT NULL UNIQUE,
    expires_at  INTEGER NOT NULL,
    created_at  INTEGER NOT NULL
);

CREATE INDEX idx_sessions_wallet_id ON sessions (wallet_id);
