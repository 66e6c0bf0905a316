-- 1.3.0: delivery log of owner notifications.
CREATE TABLE notification_logs (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    event_type  TEXT NOT NULL,
    channel     TEXT NOT NULL CHECK (channel IN ('telegram', 'discord', 'ntfy')),
    wallet_id   TEXT REFERENCES wallets (id) ON DELETE SET NULL,
    status      TEXT NOT NULL CHECK (status IN ('sent', 'failed')),
    error       TEXT,
    created_at  INTEGER NOT NULL
);

CREATE INDEX idx_notification_logs_created_at ON notification_logs (created_at);
