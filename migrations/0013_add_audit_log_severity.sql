-- 1.6.1: a severity per audit entry, so the admin UI can filter. Existing
-- entries are classified from their event type (a backfill of the new column
-- only; no existing value changes).
ALTER TABLE audit_log ADD COLUMN severity TEXT NOT NULL DEFAULT 'info'
    CHECK (severity IN ('info', 'warning', 'critical'));

UPDATE audit_log SET severity = 'warning'
WHERE event_type IN ('TX_FAILED', 'POLICY_DENIED', 'SESSION_REVOKED', 'WALLET_SUSPENDED');

UPDATE audit_log SET severity = 'critical'
WHERE event_type IN ('KILL_SWITCH_ACTIVATED', 'WALLET_TERMINATED', 'AUTH_FAILED');

CREATE INDEX idx_audit_log_severity ON audit_log (severity, timestamp);
