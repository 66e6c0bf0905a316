//! The SQLite connection: opened once with the pragmas the daemon relies on,
//! and shared with async code through a blocking-pool hand-off.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rusqlite::Connection;
use rusqlite::config::DbConfig;

/// Opens (creating if needed) the database in WAL mode with foreign keys on.
pub fn open(path: &Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(Duration::from_secs(5))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    Ok(conn)
}

/// Folds the WAL back into the main file, so the file alone is the database.
pub fn checkpoint(conn: &Connection) -> rusqlite::Result<()> {
    conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
}

/// Folds the WAL in once, then makes no more checkpoints on this — the only
/// — connection, not even when it closes: from here to the process's exit the
/// main file does not change, so it can be copied while the daemon serves
/// (`FromLauncher::HoldCheckpoints`).
pub fn hold_checkpoints(conn: &Connection) -> rusqlite::Result<()> {
    checkpoint(conn)?;
    conn.pragma_update(None, "wal_autocheckpoint", 0)?;
    conn.set_db_config(DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, true)?;
    Ok(())
}

/// Whether [`hold_checkpoints`] is in force.
pub fn checkpoints_held(conn: &Connection) -> rusqlite::Result<bool> {
    conn.db_config(DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE)
}

/// A connection shared by the HTTP handlers and the workers.
#[derive(Clone)]
pub struct Db(Arc<Mutex<Connection>>);

impl Db {
    pub fn new(conn: Connection) -> Self {
        Self(Arc::new(Mutex::new(conn)))
    }

    /// Runs `f` with the connection on tokio's blocking pool, so SQLite never
    /// stalls the reactor.
    pub async fn call<T, F>(&self, f: F) -> T
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> T + Send + 'static,
    {
        let inner = Arc::clone(&self.0);
        tokio::task::spawn_blocking(move || {
            // A panic while holding the lock leaves the connection usable: SQLite
            // rolls back any open transaction when the statement is dropped.
            let mut conn = inner.lock().unwrap_or_else(|p| p.into_inner());
            f(&mut conn)
        })
        .await
        .expect("database task panicked")
    }
}
