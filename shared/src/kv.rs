//! The `key_value_store` table's keys that both processes use (SPEC §4, §5).
//! Values are plain text, never JSON. The daemon's worker writes the check
//! results; the launcher's CLI notice reads them and writes `notified_at`
//! directly in the database, so it works whether or not the daemon runs.

use rusqlite::{Connection, OptionalExtension, params};

/// The newest version the last successful check found (semver text).
pub const LATEST: &str = "version_check_latest";
/// When that check ran (Unix seconds).
pub const CHECKED_AT: &str = "version_check_checked_at";
/// When the CLI last showed the update notice (Unix seconds).
pub const NOTIFIED_AT: &str = "version_check_notified_at";
/// The version of the daemon that last opened the database, so a backup taken
/// before migrating can say which release it came from.
pub const LAST_RUN_VERSION: &str = "daemon_last_version";

/// The value stored under `key`, if any.
pub fn get(conn: &Connection, key: &str) -> rusqlite::Result<Option<String>> {
    conn.query_row(
        "SELECT value FROM key_value_store WHERE key = ?1",
        params![key],
        |row| row.get(0),
    )
    .optional()
}

/// Stores `value` under `key`, replacing what was there.
pub fn set(conn: &Connection, key: &str, value: &str) -> rusqlite::Result<()> {
    conn.execute(
        "INSERT INTO key_value_store (key, value, updated_at) VALUES (?1, ?2, unixepoch())
         ON CONFLICT(key) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at",
        params![key, value],
    )?;
    Ok(())
}
