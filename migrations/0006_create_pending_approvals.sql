-- 1.2.0: transactions held for the owner's approval.
CREATE TABLE pending_approvals (
    id           TEXT PRIMARY KEY,
    tx_id        TEXT NOT NULL REFERENCES transactions (id) ON DELETE CASCADE,
    required_by  INTEGER NOT NULL,
    expires_at   INTEGER NOT NULL,
    approved_at  INTEGER,
    rejected_at  INTEGER,
    created_at   INTEGER NOT NULL
);

CREATE INDEX idx_pending_approvals_tx_id ON pending_approvals (tx_id);
