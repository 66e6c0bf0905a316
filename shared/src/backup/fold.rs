//! Folding the WAL into the live database while a live backup follows it, so
//! that the downtime never has a long log to deal with. Left alone, the log
//! holds every write made while the main file was copied (minutes of writes
//! on a large database), and the first process to open the database after
//! the daemon stops (the new release's `check`) reads all of it to rebuild
//! its index, and the last to close it (`migrate`) folds all of it into the
//! main file: seconds of downtime that grow with the database.
//!
//! Once the main file is copied whole, what a checkpoint writes into it no
//! longer matters to the backup, which holds the main file as copied and
//! every frame logged since. Only the log must stay whole until the last
//! frame is copied: SQLite restarts it (writes over it from the start) once
//! a checkpoint has folded all of it and no reader is using it. So a read
//! snapshot is held throughout, by two connections in turn — the next begins
//! before the one holding ends, as Litestream does — and a checkpoint, which
//! folds only up to the oldest snapshot, runs after each move of it. When the
//! daemon has stopped and the last frames are copied, [`Fold::finish`] folds
//! the little that is left and empties the log.

use std::path::Path;
use std::time::Duration;

use rusqlite::config::DbConfig;
use rusqlite::{Connection, OpenFlags};

/// How long a snapshot's start may wait on a lock (SQLite's own recovery of
/// the log's index, for one).
const BUSY_TIMEOUT: Duration = Duration::from_secs(2);
/// How long the last fold, in the downtime, waits for another process that
/// still uses the database (none should) before it leaves the log as it is.
const FINISH_TIMEOUT: Duration = Duration::from_millis(100);

/// The snapshot-holding readers and the checkpointing connection.
#[derive(Debug)]
pub struct Fold {
    readers: [Connection; 2],
    /// The reader whose snapshot is held, once one is.
    holding: Option<usize>,
    checkpointer: Connection,
}

/// What a checkpoint reported: frames in the log, and folded of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Folded {
    pub logged: i64,
    pub folded: i64,
}

impl Folded {
    /// Whether the log holds frames not folded yet.
    pub fn behind(self) -> bool {
        self.folded < self.logged
    }
}

fn open(db: &Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open_with_flags(db, OpenFlags::SQLITE_OPEN_READ_WRITE)?;
    // Never a checkpoint at close: only `finish` folds the end of the log,
    // once it is copied.
    conn.set_db_config(DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, true)?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    Ok(conn)
}

impl Fold {
    /// Connections to `db`, holding nothing yet.
    pub fn open(db: &Path) -> rusqlite::Result<Self> {
        let readers = [open(db)?, open(db)?];
        for reader in &readers {
            reader.pragma_update(None, "query_only", true)?;
        }
        Ok(Self {
            readers,
            holding: None,
            checkpointer: open(db)?,
        })
    }

    /// Moves the held snapshot to the log's end: the next reader's snapshot
    /// begins before the held one ends, so a reader always uses the log.
    ///
    /// Only while the log has frames not folded: a snapshot begun on a log
    /// folded to its end reads the main file alone, which does not stop a
    /// writer from restarting the log.
    pub fn pin(&mut self, last: Option<Folded>) -> rusqlite::Result<()> {
        if self.holding.is_some() && !last.is_some_and(Folded::behind) {
            return Ok(());
        }
        let next = self.holding.map_or(0, |held| 1 - held);
        let reader = &self.readers[next];
        reader.execute_batch("BEGIN")?;
        // A read transaction takes its snapshot at its first read.
        reader.query_row("SELECT count(*) FROM sqlite_schema", [], |_| Ok(()))?;
        if let Some(held) = self.holding.replace(next) {
            self.readers[held].execute_batch("COMMIT")?;
        }
        Ok(())
    }

    /// Folds the log up to the held snapshot into the main file, beside the
    /// daemon: a PASSIVE checkpoint never waits for it, nor it for one.
    pub fn fold(&self) -> rusqlite::Result<Folded> {
        let (logged, folded) =
            self.checkpointer
                .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |row| {
                    Ok((row.get(1)?, row.get(2)?))
                })?;
        Ok(Folded { logged, folded })
    }

    /// With the daemon stopped and the log copied: lets go of the snapshot,
    /// folds the rest and empties the log. Whether it could (another process
    /// still using the database keeps the log, which is then as before).
    pub fn finish(mut self) -> rusqlite::Result<bool> {
        if let Some(held) = self.holding.take() {
            self.readers[held].execute_batch("COMMIT")?;
        }
        self.checkpointer.busy_timeout(FINISH_TIMEOUT)?;
        let busy: i64 =
            self.checkpointer
                .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |row| row.get(0))?;
        Ok(busy == 0)
    }
}
