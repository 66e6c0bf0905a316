-- 1.5.2: tokens the daemon knows how to display (built in or added by the
-- operator). Ethereum is listed ahead of wallet support for it (1.6.0).
CREATE TABLE token_registry (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    chain       TEXT NOT NULL CHECK (chain IN ('solana', 'ethereum')),
    network     TEXT NOT NULL,
    address     TEXT NOT NULL,
    symbol      TEXT NOT NULL,
    name        TEXT NOT NULL,
    decimals    INTEGER NOT NULL CHECK (decimals BETWEEN 0 AND 255),
    source      TEXT NOT NULL DEFAULT 'custom' CHECK (source IN ('builtin', 'custom')),
    created_at  INTEGER NOT NULL,
    UNIQUE (chain, network, address)
);
