-- 1.5.0: sessions can be revoked and renewed; a wallet may name its owner's
-- address (for approvals). Older rows: not revoked, never renewed, no owner.
ALTER TABLE sessions ADD COLUMN revoked_at INTEGER;
ALTER TABLE sessions ADD COLUMN renewal_count INTEGER NOT NULL DEFAULT 0;
ALTER TABLE wallets ADD COLUMN owner_address TEXT;
