-- 1.6.0: Ethereum wallets, and TERMINATED as a final wallet state. Both are
-- CHECK changes, so the table is rebuilt (see 0009). sessions, transactions,
-- policies and notification_logs reference wallets(id) by name and pick up the
-- new table when it is renamed into place; foreign_key_check verifies it.
-- owner_address moves next to public_key: the new column order differs from
-- the old one, which is why the copy names every column.
CREATE TABLE wallets_new (
    id             TEXT PRIMARY KEY,
    name           TEXT NOT NULL,
    chain          TEXT NOT NULL CHECK (chain IN ('solana', 'ethereum')),
    network        TEXT NOT NULL,
    public_key     TEXT NOT NULL UNIQUE,
    owner_address  TEXT,
    status         TEXT NOT NULL DEFAULT 'ACTIVE'
                   CHECK (status IN ('ACTIVE', 'SUSPENDED', 'TERMINATED')),
    created_at     INTEGER NOT NULL,
    updated_at     INTEGER NOT NULL
);

INSERT INTO wallets_new (id, name, chain, network, public_key, owner_address, status,
                         created_at, updated_at)
SELECT id, name, chain, network, public_key, owner_address, status, created_at, updated_at
FROM wallets;

DROP TABLE wallets;

ALTER TABLE wallets_new RENAME TO wallets;

-- New: the wallet list filters by status.
CREATE INDEX idx_wallets_status ON wallets (status);
