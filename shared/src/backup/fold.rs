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
//! folds only up to the oldest snapshot held, runs after each move of it.
//! When the daemon has stopped and the last frames are copied,
//! [`Fold::finish`] folds the little that is left, and SQLite deletes the
//! log (its blocks freed once the daemon serves again, [`crate::trash`]).
//!
//! These folds do not fsync the main file (`synchronous=OFF`): a checkpoint
//! that does holds SQLite's checkpoint locks across a fsync of every page it
//! wrote, and the daemon's commits beside it stalled for up to a second
//! (4 GiB, the first fold after the copy). Instead the pages are written
//! back a step at a time ([`crate::fsutil::write_back`]). That is safe
//! because such a fold never reaches the log's last frame: it goes up to the
//! older of two snapshots, and only once the log has grown past it (read in
//! the wal-index, [`LogState`]). SQLite restarts a log only when it is
//! folded to its last frame, so before any restart comes a checkpoint that
//! folds the rest with its own fsync, of the whole main file — this one's
//! pages with it — as SQLite has always ordered it, even if this process is
//! killed between the two.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
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
    /// The newest snapshot held.
    newest: Option<Pin>,
    /// The one before it, held until the next fold has gone up to it.
    older: Option<Pin>,
    checkpointer: Connection,
    /// The live files: the main file's pages are written back after a fold,
    /// the log is synced before one, and the index tells how far both are.
    main: File,
    log: File,
    log_path: PathBuf,
    index: File,
}

/// A reader holding a snapshot, and the log's last frame read right after
/// the snapshot began: the snapshot ends there or before.
#[derive(Debug, Clone, Copy)]
struct Pin {
    reader: usize,
    bound: Option<u32>,
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

/// One of the database's files beside `db` (`-wal`, `-shm`).
fn beside(db: &Path, suffix: &str) -> PathBuf {
    let mut name = db.as_os_str().to_owned();
    name.push(suffix);
    name.into()
}

fn io_error(e: std::io::Error) -> rusqlite::Error {
    rusqlite::Error::ToSqlConversionFailure(Box::new(e))
}

impl Fold {
    /// Connections to `db` (in WAL mode, its log and index present), holding
    /// nothing yet.
    pub fn open(db: &Path) -> rusqlite::Result<Self> {
        let readers = [open(db)?, open(db)?];
        for reader in &readers {
            reader.pragma_update(None, "query_only", true)?;
        }
        Ok(Self {
            readers,
            newest: None,
            older: None,
            checkpointer: open(db)?,
            main: File::open(db).map_err(io_error)?,
            log: File::open(beside(db, "-wal")).map_err(io_error)?,
            log_path: beside(db, "-wal"),
            index: File::open(beside(db, "-shm")).map_err(io_error)?,
        })
    }

    /// Begins a snapshot at the log's end, the one held before it kept until
    /// the next [`Fold::fold`]: a reader always uses the log.
    ///
    /// Only while the log has frames not folded: a snapshot begun on a log
    /// folded to its end reads the main file alone, which does not stop a
    /// writer from restarting the log.
    pub fn pin(&mut self, last: Option<Folded>) -> rusqlite::Result<()> {
        if self.older.is_some() || self.newest.is_some() && !last.is_some_and(Folded::behind) {
            return Ok(());
        }
        crate::failpoint::hit("fold-pass");
        let next = self.newest.map_or(0, |held| 1 - held.reader);
        let reader = &self.readers[next];
        reader.execute_batch("BEGIN")?;
        // A read transaction takes its snapshot at its first read. One that
        // could not read is ended, or every later pass would fail to begin.
        if let Err(e) = reader.query_row("SELECT count(*) FROM sqlite_schema", [], |_| Ok(())) {
            let _ = reader.execute_batch("ROLLBACK");
            return Err(e);
        }
        let bound = LogState::read(&self.index).map(|state| state.frames);
        self.older = self.newest.replace(Pin {
            reader: next,
            bound,
        });
        Ok(())
    }

    /// Folds the log into the main file up to the oldest snapshot held, once
    /// the log has grown past it (otherwise the fold could reach the last
    /// frame unsynced; see the module's notes), then writes the pages back
    /// and lets go of the older snapshot. Beside the daemon: a PASSIVE
    /// checkpoint never waits for it, nor it for one.
    pub fn fold(&mut self) -> rusqlite::Result<Folded> {
        let oldest = self.older.or(self.newest).and_then(|pin| pin.bound);
        let state = LogState::read(&self.index);
        let folded = match (oldest, state) {
            (Some(bound), Some(state)) if state.frames > bound => self.fold_behind_the_end(),
            (_, state) => Ok(state.map_or(
                Folded {
                    logged: 0,
                    folded: 0,
                },
                LogState::folded,
            )),
        };
        if let Some(older) = self.older.take() {
            self.readers[older.reader].execute_batch("COMMIT")?;
        }
        folded
    }

    fn fold_behind_the_end(&self) -> rusqlite::Result<Folded> {
        // The frames folded are on the disk before the main file changes,
        // as SQLite orders a checkpoint (the daemon's commits sync them
        // already; this costs nothing then).
        self.log.sync_data().map_err(io_error)?;
        self.checkpointer
            .pragma_update(None, "synchronous", "OFF")?;
        let (logged, folded) =
            self.checkpointer
                .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |row| {
                    Ok((row.get(1)?, row.get(2)?))
                })?;
        crate::fsutil::write_back(&self.main).map_err(io_error)?;
        Ok(Folded { logged, folded })
    }

    /// With the daemon stopped and the log copied: lets go of the snapshots,
    /// folds the rest with a fsync of the main file, and lets SQLite delete
    /// the log as at any last close — its blocks freed later, by
    /// [`crate::trash::empty`], from a second name given first: emptying a
    /// log of hundreds of MB in the downtime waited for its blocks' trim.
    /// Whether the log is gone (another process still using the database
    /// keeps it, which is then as before, folded).
    pub fn finish(mut self) -> rusqlite::Result<bool> {
        for held in [self.older.take(), self.newest.take()]
            .into_iter()
            .flatten()
        {
            self.readers[held.reader].execute_batch("COMMIT")?;
        }
        self.checkpointer
            .pragma_update(None, "synchronous", "FULL")?;
        self.checkpointer.busy_timeout(FINISH_TIMEOUT)?;
        crate::failpoint::hit("fold-finish");
        let busy: i64 = self
            .checkpointer
            .query_row("PRAGMA wal_checkpoint(FULL)", [], |row| row.get(0))?;
        if busy != 0 {
            return Ok(false);
        }
        if let Err(e) = crate::trash::link(&self.log_path) {
            tracing::warn!("cannot give the log a second name ({e}): emptying it in place");
            let busy: i64 =
                self.checkpointer
                    .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |row| row.get(0))?;
            return Ok(busy == 0);
        }
        let Self {
            readers,
            checkpointer,
            main,
            log,
            log_path,
            index,
            ..
        } = self;
        // The last connection closes last, with the checkpoint SQLite makes
        // at a last close (nothing left to fold) and its deletion of the
        // log; the plain files after it, as closing one releases this
        // process's locks on that file.
        drop(readers);
        checkpointer.set_db_config(DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, false)?;
        checkpointer.close().map_err(|(_, e)| e)?;
        drop((main, log, index));
        Ok(!log_path.exists())
    }
}

/// Folds the log of a copy no other process uses (a backup staged for a
/// restore) into its main file, and has SQLite delete the log at its close,
/// a second name kept in the trash ([`crate::trash::link`]): the first
/// process to open the restored database in the downtime then has no log to
/// read (at 4 GiB, about 150 ms for the writes of a live copy). The pages are
/// written back a step at a time, then fsynced, before the log goes: the copy
/// is made beside a serving daemon, whose commits would queue behind one
/// fsync of them all. Whether the log is gone; left, it is as before, and
/// correct.
pub fn fold_copy(db: &Path) -> rusqlite::Result<bool> {
    let log = beside(db, "-wal");
    let main = File::open(db).map_err(io_error)?;
    let conn = Connection::open_with_flags(db, OpenFlags::SQLITE_OPEN_READ_WRITE)?;
    conn.busy_timeout(FINISH_TIMEOUT)?;
    // Synced below, before the log it was folded from is deleted: a crash
    // before then leaves the log, replayed again.
    conn.pragma_update(None, "synchronous", "OFF")?;
    let busy: i64 = conn.query_row("PRAGMA wal_checkpoint(FULL)", [], |row| row.get(0))?;
    if busy != 0 {
        return Ok(false);
    }
    crate::fsutil::write_back(&main).map_err(io_error)?;
    main.sync_all().map_err(io_error)?;
    crate::trash::link(&log).map_err(io_error)?;
    conn.close().map_err(|(_, e)| e)?;
    drop(main);
    Ok(!log.exists())
}

/// How far the log is, as its index (`-shm`) says: SQLite's wal-index,
/// whose layout is documented (sqlite.org/walformat.html) and has not
/// changed since it began (version 3007000).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct LogState {
    /// The last committed frame (`mxFrame`).
    frames: u32,
    /// Frames folded into the main file (`nBackfill`).
    backfilled: u32,
}

impl LogState {
    const VERSION: u32 = 3_007_000;
    /// The header, twice (48 bytes each), then `nBackfill`.
    const READ: usize = 100;
    /// A header being written is told by its copies differing; a few reads
    /// find it whole.
    const TRIES: usize = 4;

    /// `None` when the index is not one this reads, or was always caught
    /// mid-write: no fold then.
    fn read(index: &File) -> Option<Self> {
        let mut bytes = [0u8; Self::READ];
        (0..Self::TRIES).find_map(|_| {
            index.read_exact_at(&mut bytes, 0).ok()?;
            Self::parse(&bytes)
        })
    }

    fn parse(bytes: &[u8; Self::READ]) -> Option<Self> {
        let word = |at: usize| u32::from_ne_bytes(bytes[at..at + 4].try_into().expect("4 bytes"));
        let (first, second) = (&bytes[..48], &bytes[48..96]);
        // SQLite's own check: both copies alike, initialised, and the
        // checksum over the first 40 bytes (native order) matching.
        let mut sum = [0u32; 2];
        for pair in first[..40].chunks_exact(8) {
            let [a, b] =
                [0, 4].map(|at| u32::from_ne_bytes(pair[at..at + 4].try_into().expect("4 bytes")));
            sum[0] = sum[0].wrapping_add(a).wrapping_add(sum[1]);
            sum[1] = sum[1].wrapping_add(b).wrapping_add(sum[0]);
        }
        let whole = first == second
            && word(0) == Self::VERSION
            && first[12] == 1
            && sum == [word(40), word(44)];
        whole.then(|| Self {
            frames: word(16),
            backfilled: word(96),
        })
    }

    fn folded(self) -> Folded {
        Folded {
            logged: self.frames.into(),
            folded: self.backfilled.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A database with a daemon's connection, checkpoints held as the daemon
    /// holds them, and a log of `rows` rows.
    fn served(rows: i64) -> (tempfile::TempDir, std::path::PathBuf, Connection) {
        let tmp = tempfile::tempdir().unwrap();
        let (db, daemon) = served_in(tmp.path(), rows);
        (tmp, db, daemon)
    }

    fn served_in(folder: &Path, rows: i64) -> (std::path::PathBuf, Connection) {
        let db = folder.join("x.db");
        let daemon = Connection::open(&db).unwrap();
        daemon
            .execute_batch("PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL; CREATE TABLE t(x)")
            .unwrap();
        daemon.pragma_update(None, "wal_autocheckpoint", 0).unwrap();
        daemon
            .set_db_config(DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, true)
            .unwrap();
        write(&daemon, rows);
        (db, daemon)
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

    /// The log as its index says now.
    fn state(db: &Path) -> LogState {
        LogState::read(&File::open(beside(db, "-shm")).unwrap()).expect("a whole index")
    }

    #[test]
    fn folds_go_up_to_the_older_snapshot_and_never_reach_the_last_frame() {
        let (_tmp, db, daemon) = served(20);
        let mut fold = Fold::open(&db).unwrap();
        fold.pin(None).unwrap();
        // Nothing logged past the snapshot: nothing may be folded.
        let first = fold.fold().unwrap();
        assert_eq!(first.folded, 0, "{first:?}");
        assert_eq!(state(&db).backfilled, 0);
        let mut last = Some(first);
        let mut folded_before = 0;
        for pass in 0..6 {
            let logged_before = state(&db).frames;
            write(&daemon, 3);
            fold.pin(last).unwrap();
            let folded = fold.fold().unwrap();
            let now = state(&db);
            assert_eq!(
                now.folded(),
                folded,
                "the index says what the checkpoint did"
            );
            assert!(
                now.backfilled < now.frames,
                "pass {pass}: an unsynced fold reached the log's end: {now:?}"
            );
            // Up to the snapshot before this pass's writes, at least.
            assert!(now.backfilled >= folded_before, "pass {pass}: {now:?}");
            folded_before = logged_before;
            last = Some(folded);
        }
        assert!(folded_before > 20, "the folds went on");
        assert!(!restartable(&db), "the log is held whole");
        drop(daemon);
        let logged = std::fs::metadata(beside(&db, "-wal")).unwrap().len();
        assert!(fold.finish().unwrap(), "nothing else uses it");
        assert!(!beside(&db, "-wal").exists(), "the log deleted");
        // Its blocks are freed later, from the trash's name for it.
        let folder = db.parent().unwrap();
        assert_eq!(crate::trash::empty(folder).unwrap(), logged);
        let reopened = Connection::open(&db).unwrap();
        let rows: i64 = reopened
            .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
            .unwrap();
        assert!(rows > 20, "every row in the main file: {rows}");
    }

    /// Two snapshots at the most: a move while the older one is still held
    /// (no fold since) waits for the next fold, which lets go of it.
    #[test]
    fn the_snapshot_moves_again_only_after_a_fold() {
        let (_tmp, db, daemon) = served(10);
        let mut fold = Fold::open(&db).unwrap();
        fold.pin(None).unwrap();
        let behind = Some(Folded {
            logged: 2,
            folded: 1,
        });
        write(&daemon, 2);
        fold.pin(behind).unwrap();
        write(&daemon, 2);
        fold.pin(behind).unwrap();
        let folded = fold.fold().unwrap();
        assert!(folded.folded > 0 && folded.behind(), "{folded:?}");
        fold.pin(Some(folded)).unwrap();
        assert!(fold.fold().unwrap().folded > folded.folded);
    }

    /// The fold's process killed right after a fold (no writeback, no
    /// snapshot held any more): the daemon's next write goes on the end of
    /// the log, not over its start, so the frames folded unsynced stay in it
    /// until a checkpoint that syncs folds past them.
    #[test]
    fn after_the_fold_is_gone_the_next_write_does_not_restart_the_log() {
        let (_tmp, db, daemon) = served(20);
        let mut fold = Fold::open(&db).unwrap();
        fold.pin(None).unwrap();
        let mut last = Some(fold.fold().unwrap());
        for _ in 0..3 {
            write(&daemon, 3);
            fold.pin(last).unwrap();
            last = Some(fold.fold().unwrap());
        }
        let before = state(&db);
        assert!(before.backfilled > 0, "{before:?}");
        drop(fold);
        write(&daemon, 1);
        let after = state(&db);
        assert!(after.frames > before.frames, "restarted: {after:?}");
        assert_eq!(after.backfilled, before.backfilled);
    }

    /// On a filesystem that loses power: a database served with 20 rows,
    /// `fold` run on it (writing rows of its own), then 5 more rows, then
    /// the power cut (every byte not fsynced dropped). The rows committed,
    /// and the rows the database holds after the cut (or why it cannot be
    /// read).
    fn committed_and_kept_after_a_cut(
        fold: impl FnOnce(&Path, Connection) -> Connection,
    ) -> (i64, Result<i64, String>) {
        let (backing, mount) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let power = waiaas_powercut::PowerCut::mount(backing.path(), mount.path()).unwrap();
        let (db, daemon) = served_in(mount.path(), 20);
        let daemon = fold(&db, daemon);
        write(&daemon, 5);
        let committed: i64 = daemon
            .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
            .unwrap();
        power.cut().unwrap();
        drop(daemon);
        power.unmount().unwrap();
        let kept = Connection::open(backing.path().join("x.db")).and_then(|after| {
            let check: String = after.query_row("PRAGMA quick_check", [], |r| r.get(0))?;
            let rows = after.query_row("SELECT count(*) FROM t", [], |r| r.get(0))?;
            Ok((check, rows))
        });
        let kept = match kept {
            Ok((check, rows)) if check == "ok" => Ok(rows),
            Ok((check, _)) => Err(check),
            Err(e) => Err(e.to_string()),
        };
        (committed, kept)
    }

    /// Passes of a fold beside `daemon` writing, until it has folded.
    fn folded_beside(db: &Path, daemon: &Connection) -> Fold {
        let mut fold = Fold::open(db).unwrap();
        fold.pin(None).unwrap();
        let mut last = Some(fold.fold().unwrap());
        for _ in 0..3 {
            write(daemon, 3);
            fold.pin(last).unwrap();
            last = Some(fold.fold().unwrap());
        }
        assert!(state(db).backfilled > 0, "folded");
        fold
    }

    /// The fold's process killed right after folds that wrote the main
    /// file without a fsync, the daemon writing on, then the power cut:
    /// every commit is kept, because those folds stopped short of the log's
    /// end, so the daemon's next write did not restart the log over frames
    /// whose folded pages the cut took back. A fold to the end without a
    /// fsync loses them — shown first, so that the test can fail. And the
    /// last fold, which empties the log, fsyncs them first: a new daemon's
    /// writes after it start the log anew.
    #[test]
    fn a_power_cut_after_folds_without_a_fsync_loses_no_commit() {
        if !waiaas_powercut::tier_ready("a_power_cut_after_folds_without_a_fsync_loses_no_commit") {
            return;
        }
        let (committed, kept) = committed_and_kept_after_a_cut(|db, daemon| {
            let unsafe_fold = open(db).unwrap();
            unsafe_fold
                .pragma_update(None, "synchronous", "OFF")
                .unwrap();
            unsafe_fold
                .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()))
                .unwrap();
            daemon
        });
        assert_ne!(
            kept,
            Ok(committed),
            "a fold to the end, unsynced, then a cut"
        );

        let (committed, kept) = committed_and_kept_after_a_cut(|db, daemon| {
            drop(folded_beside(db, &daemon));
            daemon
        });
        assert_eq!(kept, Ok(committed), "the fold killed");

        let (committed, kept) = committed_and_kept_after_a_cut(|db, daemon| {
            let fold = folded_beside(db, &daemon);
            drop(daemon);
            assert!(fold.finish().unwrap(), "the log emptied");
            let next = Connection::open(db).unwrap();
            next.pragma_update(None, "synchronous", "FULL").unwrap();
            next
        });
        assert_eq!(kept, Ok(committed), "the last fold, then a new daemon");
    }

    /// Where the log cannot get a second name (here a file stands where the
    /// trash would be), the last fold empties it in place, as before.
    #[test]
    fn a_log_that_cannot_be_linked_into_the_trash_is_emptied_in_place() {
        let (tmp, db, daemon) = served(10);
        let mut fold = Fold::open(&db).unwrap();
        fold.pin(None).unwrap();
        fold.fold().unwrap();
        drop(daemon);
        std::fs::write(tmp.path().join(crate::trash::FOLDER), b"not a folder").unwrap();
        assert!(fold.finish().unwrap(), "emptied");
        assert_eq!(std::fs::metadata(beside(&db, "-wal")).unwrap().len(), 0);
    }

    /// A copy's log is folded into its main file and deleted, its blocks
    /// left to the trash; one another connection still reads is kept.
    #[test]
    fn a_copys_log_is_folded_and_deleted_unless_another_connection_reads_it() {
        let (tmp, db, daemon) = served(30);
        drop(daemon);
        let logged = std::fs::metadata(beside(&db, "-wal")).unwrap().len();
        assert!(fold_copy(&db).unwrap(), "nothing else uses it");
        assert!(!beside(&db, "-wal").exists());
        let main_alone = Connection::open_with_flags(
            format!("file:{}?immutable=1", db.display()),
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_URI,
        )
        .unwrap();
        let rows: i64 = main_alone
            .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
            .unwrap();
        assert_eq!(rows, 30, "every row in the main file");
        assert_eq!(crate::trash::empty(tmp.path()).unwrap(), logged);

        let in_use = tmp.path().join("in-use");
        std::fs::create_dir(&in_use).unwrap();
        let (db, daemon) = served_in(&in_use, 5);
        daemon
            .query_row("SELECT count(*) FROM t", [], |_| Ok(()))
            .unwrap();
        assert!(!fold_copy(&db).unwrap(), "another connection has it open");
        assert!(beside(&db, "-wal").exists());
    }

    #[test]
    fn an_index_read_mid_write_or_of_another_layout_is_not_believed() {
        let (_tmp, db, _daemon) = served(5);
        let mut bytes = [0u8; LogState::READ];
        File::open(beside(&db, "-shm"))
            .unwrap()
            .read_exact_at(&mut bytes, 0)
            .unwrap();
        let whole = LogState::parse(&bytes).expect("a whole index");
        assert!(whole.frames >= 5, "{whole:?}");
        for at in [0, 12, 16, 40, 60] {
            let mut torn = bytes;
            torn[at] ^= 1;
            assert_eq!(LogState::parse(&torn), None, "byte {at} changed");
        }
        // Both copies changed alike: the checksum tells.
        let mut both = bytes;
        both[16] ^= 1;
        both[64] ^= 1;
        assert_eq!(LogState::parse(&both), None);
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
