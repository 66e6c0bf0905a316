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
        crate::failpoint::hit("fold-pass");
        let next = self.holding.map_or(0, |held| 1 - held);
        let reader = &self.readers[next];
        reader.execute_batch("BEGIN")?;
        // A read transaction takes its snapshot at its first read. One that
        // could not read is ended, or every later pass would fail to begin.
        if let Err(e) = reader.query_row("SELECT count(*) FROM sqlite_schema", [], |_| Ok(())) {
            let _ = reader.execute_batch("ROLLBACK");
            return Err(e);
        }
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
        crate::failpoint::hit("fold-finish");
        let busy: i64 =
            self.checkpointer
                .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |row| row.get(0))?;
        Ok(busy == 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A database with a daemon's connection, checkpoints held as the daemon
    /// holds them, and a log of `rows` rows.
    fn served(rows: i64) -> (tempfile::TempDir, std::path::PathBuf, Connection) {
        let tmp = tempfile::tempdir().unwrap();
        let db = tmp.path().join("x.db");
        let daemon = Connection::open(&db).unwrap();
        daemon
            .execute_batch("PRAGMA journal_mode=WAL; CREATE TABLE t(x)")
            .unwrap();
        daemon.pragma_update(None, "wal_autocheckpoint", 0).unwrap();
        daemon
            .set_db_config(DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, true)
            .unwrap();
        write(&daemon, rows);
        (tmp, db, daemon)
    }

    fn write(daemon: &Connection, rows: i64) {
        for x in 0..rows {
            daemon.execute("INSERT INTO t VALUES (?1)", [x]).unwrap();
        }
    }

    /// Whether another process could restart the log now.
    fn restartable(db: &Path) -> bool {
        let other = Connection::open(db).unwrap();
        other.busy_timeout(Duration::ZERO).unwrap();
        let busy: i64 = other
            .query_row("PRAGMA wal_checkpoint(RESTART)", [], |r| r.get(0))
            .unwrap();
        busy == 0
    }

    #[test]
    fn the_snapshot_moves_while_frames_wait_and_the_log_never_restarts() {
        let (_tmp, db, daemon) = served(20);
        let mut fold = Fold::open(&db).unwrap();
        fold.pin(None).unwrap();
        let first = fold.fold().unwrap();
        assert!(first.logged > 0 && !first.behind(), "{first:?}");
        // Frames after the snapshot wait for it to move.
        write(&daemon, 5);
        let waiting = fold.fold().unwrap();
        assert!(waiting.behind(), "{waiting:?}");
        assert!(waiting.folded == first.logged, "{waiting:?}");
        fold.pin(Some(waiting)).unwrap();
        let caught_up = fold.fold().unwrap();
        assert_eq!(caught_up.folded, caught_up.logged);
        // Folded to its end: the snapshot stays where it is (a new one would
        // read the main file alone and hold nothing), so the log stays whole.
        fold.pin(Some(caught_up)).unwrap();
        fold.pin(Some(caught_up)).unwrap();
        assert!(!restartable(&db), "the log is held whole");
        // More frames, and it moves again, from one reader to the other.
        for _ in 0..3 {
            write(&daemon, 2);
            let behind = fold.fold().unwrap();
            assert!(behind.behind(), "{behind:?}");
            fold.pin(Some(behind)).unwrap();
            assert!(!fold.fold().unwrap().behind());
            assert!(!restartable(&db), "the log is held whole");
        }
        drop(daemon);
        assert!(fold.finish().unwrap(), "nothing else uses it");
        assert_eq!(
            std::fs::metadata(db.with_extension("db-wal"))
                .unwrap()
                .len(),
            0
        );
    }

    #[test]
    fn the_last_fold_leaves_a_log_another_process_still_reads() {
        let (_tmp, db, daemon) = served(10);
        let mut fold = Fold::open(&db).unwrap();
        fold.pin(None).unwrap();
        fold.fold().unwrap();
        write(&daemon, 3);
        // A reader that is not ours, mid-transaction.
        let reader = Connection::open(&db).unwrap();
        reader.execute_batch("BEGIN").unwrap();
        reader
            .query_row("SELECT count(*) FROM t", [], |_| Ok(()))
            .unwrap();
        assert!(!fold.finish().unwrap());
        assert!(
            std::fs::metadata(db.with_extension("db-wal"))
                .unwrap()
                .len()
                > 0
        );
    }

    /// A snapshot that could not begin (its first read found the database
    /// locked) does not stop the next pass from beginning one.
    #[test]
    fn a_snapshot_that_could_not_begin_is_begun_again_by_the_next_pass() {
        let (_tmp, db, daemon) = served(10);
        // A connection in exclusive locking mode keeps every other one from
        // reading; it can take that mode only while it is the only one.
        drop(daemon);
        let locker = Connection::open(&db).unwrap();
        locker
            .execute_batch(
                "PRAGMA locking_mode=EXCLUSIVE; BEGIN EXCLUSIVE; INSERT INTO t VALUES (-1)",
            )
            .unwrap();
        let mut fold = Fold::open(&db).unwrap();
        assert!(fold.pin(None).is_err(), "the database is locked");
        locker.execute_batch("ROLLBACK").unwrap();
        drop(locker);
        fold.pin(None).unwrap();
        write(&Connection::open(&db).unwrap(), 3);
        assert!(fold.fold().unwrap().behind(), "the snapshot is held");
    }

    #[test]
    fn a_log_is_behind_while_it_holds_frames_not_folded() {
        let at = |logged, folded| Folded { logged, folded };
        assert!(at(5, 4).behind());
        assert!(!at(5, 5).behind());
        assert!(!at(0, 0).behind());
    }
}
