//! The SQLite connection: opened once with the pragmas the daemon relies on,
//! and shared with async code through a blocking-pool hand-off.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rusqlite::Connection;
use rusqlite::config::DbConfig;

/// `PRAGMA synchronous` as SQLite reports FULL.
pub const SYNCHRONOUS_FULL: i64 = 2;

/// The lasting fault (`WAIAAS_FAULT`) that opens the database with
/// `synchronous=NORMAL`: the baseline of the writers' benchmark, never a setting.
pub const FAULT_SYNCHRONOUS_NORMAL: &str = "synchronous-normal";

/// Opens (creating if needed) the database in WAL mode with foreign keys on.
///
/// `synchronous=FULL`: each commit fsyncs the WAL before it returns, so a 2xx
/// for a write means the write is on disk. NORMAL syncs only at checkpoints,
/// and while checkpoints are held for a live backup there are none until the
/// daemon exits.
pub fn open(path: &Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(Duration::from_secs(5))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    let synchronous = if crate::failpoint::fault(FAULT_SYNCHRONOUS_NORMAL) {
        tracing::warn!("test fault: synchronous=NORMAL, acknowledged writes are not durable");
        "NORMAL"
    } else {
        "FULL"
    };
    conn.pragma_update(None, "synchronous", synchronous)?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    Ok(conn)
}

/// The connection's `PRAGMA synchronous` ([`SYNCHRONOUS_FULL`] when durable).
pub fn synchronous(conn: &Connection) -> rusqlite::Result<i64> {
    conn.query_row("PRAGMA synchronous", [], |row| row.get(0))
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

/// A connection shared by the HTTP handlers and the workers, and how many
/// client writes it has committed (the launcher's measure of "busy": an
/// automatic upgrade defers while the write rate is high).
#[derive(Clone)]
pub struct Db {
    conn: Arc<Mutex<Connection>>,
    writes: Arc<AtomicU64>,
}

impl Db {
    pub fn new(conn: Connection) -> Self {
        Self {
            conn: Arc::new(Mutex::new(conn)),
            writes: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Counts one committed client write.
    pub fn wrote(&self) {
        self.writes.fetch_add(1, Ordering::Relaxed);
    }

    /// Client writes committed since the daemon started.
    pub fn writes(&self) -> u64 {
        self.writes.load(Ordering::Relaxed)
    }

    /// Runs `f` with the connection on tokio's blocking pool, so SQLite never
    /// stalls the reactor.
    pub async fn call<T, F>(&self, f: F) -> T
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> T + Send + 'static,
    {
        let inner = Arc::clone(&self.conn);
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

#[cfg(test)]
mod tests {
    use super::*;
    use waiaas_shared::config::Config;
    use waiaas_shared::layout::DataDir;

    /// The connection `serve` answers from fsyncs every commit, and still does
    /// once its checkpoints are held, when the WAL is the only copy of a write.
    #[test]
    fn the_serving_connection_syncs_every_commit_also_with_checkpoints_held() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = DataDir::new(tmp.path());
        let conn = crate::serve::prepare_database(&dir, &Config::default(), true).unwrap();
        assert_eq!(synchronous(&conn).unwrap(), SYNCHRONOUS_FULL);
        let mode: String = conn
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .unwrap();
        assert_eq!(mode, "wal");
        hold_checkpoints(&conn).unwrap();
        assert!(checkpoints_held(&conn).unwrap());
        conn.execute(
            "INSERT INTO key_value_store (key, value, updated_at) VALUES ('x', 'y', 0)",
            [],
        )
        .unwrap();
        assert_eq!(synchronous(&conn).unwrap(), SYNCHRONOUS_FULL);
        // Connections that set no pragma (the launcher's update notice, a
        // backup's checkpoint) get the bundled SQLite's default: FULL too.
        let other = Connection::open(dir.database()).unwrap();
        assert_eq!(synchronous(&other).unwrap(), SYNCHRONOUS_FULL);
    }
}
