-- 1.2.1: the queue worker scans transactions by status; without this index
-- that was a full table scan on every tick.
CREATE INDEX idx_transactions_status ON transactions (status);
