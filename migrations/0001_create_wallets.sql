-- 0.9.0: the first schema. One key pair per wallet; Solana only at first.
CREATE TABLE wallets (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL,
    chain       TEXT NOT NULL CHECK (chain IN ('solana')),
    network     TEXT NOT NULL,
    public_key  TEXT NOT NULL UNIQUE,
    status      TEXT NOT NULL DEFAULT 'ACTIVE' CHECK (status IN ('ACTIVE', 'SUSPENDED')),
    created_at  INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL
);
