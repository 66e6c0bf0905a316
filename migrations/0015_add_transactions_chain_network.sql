-- 1.8.0: transactions carry their chain and network, so history survives a
-- wallet being terminated and is queryable without a join. Backfilled from
-- each transaction's wallet; new rows set them on insert.
ALTER TABLE transactions ADD COLUMN chain TEXT CHECK (chain IN ('solana', 'ethereum'));
ALTER TABLE transactions ADD COLUMN network TEXT;

UPDATE transactions
SET chain = (SELECT w.chain FROM wallets AS w WHERE w.id = transactions.wallet_id),
    network = (SELECT w.network FROM wallets AS w WHERE w.id = transactions.wallet_id);

CREATE INDEX idx_transactions_chain_network ON transactions (chain, network);
