//! The database as the daemon uses it: one writer connection owned by a
//! writer thread that commits queued writes together (group commit), and a
//! small pool of read connections that never wait for a write's fsync
//! ([`crate::readers`]).

use std::panic::AssertUnwindSafe;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rusqlite::Connection;
use rusqlite::config::DbConfig;
use tokio::sync::{mpsc, oneshot};

use crate::readers::{Closed, Readers};
use crate::wal_room::Room;

/// `PRAGMA synchronous` as SQLite reports FULL.
pub const SYNCHRONOUS_FULL: i64 = 2;

/// The lasting fault (`WAIAAS_FAULT`) that opens the database with
/// `synchronous=NORMAL`: the baseline of the writers' benchmark, never a setting.
pub const FAULT_SYNCHRONOUS_NORMAL: &str = "synchronous-normal";

/// The lasting fault that commits every write in a transaction of its own:
/// one fsync per write, the other baseline of the writers' benchmark.
pub const FAULT_ONE_FSYNC_PER_WRITE: &str = "one-fsync-per-write";

/// Read connections: enough that a slow read never queues the others on a
/// machine of a few cores; each one is a few pages of cache.
const READERS: usize = 4;

/// The most writes one transaction commits: bounds a batch's latency when
/// writers outrun the disk.
const MAX_BATCH: usize = 1024;

/// How long a connection waits on another's lock before it fails.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Opens (creating if needed) the database in WAL mode with foreign keys on.
///
/// `synchronous=FULL`: each commit fsyncs the WAL before it returns, so a 2xx
/// for a write means the write is on disk. NORMAL syncs only at checkpoints,
/// and while checkpoints are held for a live backup there are none until the
/// daemon exits.
pub fn open(path: &Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
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

/// A connection that only reads and never checkpoints, not even at close: a
/// checkpoint is the writer's to run, and only the writer's to hold.
fn open_reader(path: &str) -> rusqlite::Result<Connection> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    conn.pragma_update(None, "query_only", true)?;
    conn.set_db_config(DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, true)?;
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
/// connection that may checkpoint — not even when it closes: from here to the
/// process's exit the main file does not change, so it can be copied while
/// the daemon serves (`FromLauncher::HoldCheckpoints`).
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

/// Copies what the WAL holds into the main file and syncs it, on a connection
/// of its own, without blocking writers or readers (PASSIVE): the long part
/// of a checkpoint — a large main file's fsync — then happens beside the
/// requests, and a [`checkpoint`] right after has little left to do.
fn checkpoint_beside(path: &str) -> rusqlite::Result<()> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    // Not the last connection (the writer is open), but never fold at close.
    conn.set_db_config(DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, true)?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()))
}

/// A write that ran inside the batch's transaction and waits for its commit
/// to answer.
type Staged = Box<dyn FnOnce(&rusqlite::Result<()>) + Send>;

/// A write run by the writer thread inside a savepoint of the batch's
/// transaction (or told why there is none); `None` when it already answered
/// (it failed, or it is rolled back by design).
type WriteJob = Box<dyn FnOnce(Result<&Connection, &rusqlite::Error>) -> Option<Staged> + Send>;

enum Job {
    Write(WriteJob),
    /// Runs on the writer connection between transactions.
    Exclusive(Box<dyn FnOnce(&mut Connection) + Send>),
    /// Closes the writer connection, then answers.
    Close(oneshot::Sender<()>),
}

/// How a write's savepoint ends when its statements succeeded.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Commit,
    RollBack,
}

/// The database shared by the HTTP handlers and the workers, and how many
/// client writes it has committed (the launcher's measure of "busy": an
/// automatic upgrade defers while the write rate is high).
#[derive(Clone)]
pub struct Db {
    writer: mpsc::UnboundedSender<Job>,
    readers: Arc<Readers>,
    path: Arc<str>,
    writes: Arc<AtomicU64>,
}

impl Db {
    /// Takes `writer` (opened with [`open`]) for the writer thread and opens
    /// the read connections beside it.
    pub fn new(writer: Connection) -> rusqlite::Result<Self> {
        let path: Arc<str> = Arc::from(writer.path().unwrap_or_default());
        let connections = (0..READERS)
            .map(|_| open_reader(&path))
            .collect::<rusqlite::Result<_>>()?;
        let readers = Readers::start(connections)
            .map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))?;
        let (tx, rx) = mpsc::unbounded_channel();
        let batch = if crate::failpoint::fault(FAULT_ONE_FSYNC_PER_WRITE) {
            tracing::warn!("test fault: one transaction, so one fsync, per write");
            1
        } else {
            MAX_BATCH
        };
        std::thread::Builder::new()
            .name("db-writer".into())
            .spawn(move || write_loop(writer, rx, batch))
            .map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))?;
        Ok(Self {
            writer: tx,
            readers: Arc::new(readers),
            path,
            writes: Arc::new(AtomicU64::new(0)),
        })
    }

    /// Counts one committed client write.
    pub fn wrote(&self) {
        self.writes.fetch_add(1, Ordering::Relaxed);
    }

    /// Client writes committed since the daemon started.
    pub fn writes(&self) -> u64 {
        self.writes.load(Ordering::Relaxed)
    }

    /// Runs `f` on a read connection, on the pool's threads, so SQLite never
    /// stalls the reactor. It sees every write acknowledged before it began.
    pub async fn read<T, F>(&self, f: F) -> rusqlite::Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    {
        match self.readers.read(f).await {
            Ok(Some(result)) => result,
            Ok(None) => Err(failed("the read panicked")),
            Err(Closed) => Err(closed()),
        }
    }

    /// Runs `f` inside the next batch's transaction (in a savepoint of its
    /// own) and answers once that transaction is committed — on disk — or
    /// with the error that failed `f` alone, or the commit.
    pub async fn write<T, F>(&self, f: F) -> rusqlite::Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    {
        self.savepoint(f, Outcome::Commit).await
    }

    /// Runs `f` as [`Db::write`] does, then rolls its savepoint back: the
    /// write path exercised, nothing kept.
    pub async fn write_rolled_back<T, F>(&self, f: F) -> rusqlite::Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    {
        self.savepoint(f, Outcome::RollBack).await
    }

    async fn savepoint<T, F>(&self, f: F, outcome: Outcome) -> rusqlite::Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    {
        let (answer, answered) = oneshot::channel();
        let job: WriteJob = Box::new(move |conn| {
            let value = match conn
                .map_err(duplicate)
                .and_then(|c| in_savepoint(c, f, outcome))
            {
                Ok(value) => value,
                Err(e) => {
                    let _ = answer.send(Err(e));
                    return None;
                }
            };
            if outcome == Outcome::RollBack {
                let _ = answer.send(Ok(value));
                return None;
            }
            Some(Box::new(move |committed: &rusqlite::Result<()>| {
                let _ = answer.send(committed.as_ref().map(|()| value).map_err(duplicate));
            }))
        });
        self.writer.send(Job::Write(job)).map_err(|_| closed())?;
        answered
            .await
            .unwrap_or_else(|_| Err(failed("the write panicked")))
    }

    /// Runs `f` on the writer connection between two transactions: for what
    /// concerns the connection itself (checkpoints).
    pub async fn with_writer<T, F>(&self, f: F) -> rusqlite::Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> rusqlite::Result<T> + Send + 'static,
    {
        let (answer, answered) = oneshot::channel();
        let job = Job::Exclusive(Box::new(move |conn| {
            let _ = answer.send(f(conn));
        }));
        self.writer.send(job).map_err(|_| closed())?;
        answered
            .await
            .unwrap_or_else(|_| Err(failed("the writer panicked")))
    }

    /// [`hold_checkpoints`] without stalling requests: the WAL is folded in
    /// and the main file synced beside them first, so the writer's own
    /// checkpoint, which writes wait for, has only the last moments' writes
    /// to fold.
    pub async fn hold_checkpoints(&self) -> rusqlite::Result<()> {
        let path = Arc::clone(&self.path);
        tokio::task::spawn_blocking(move || checkpoint_beside(&path))
            .await
            .map_err(|_| failed("the checkpoint panicked"))??;
        self.with_writer(|conn| hold_checkpoints(conn)).await
    }

    /// Closes every connection (after the writes queued before it); any use
    /// after fails. The writer connection folds the WAL in at close unless
    /// checkpoints are held.
    pub async fn close(&self) {
        let (answer, answered) = oneshot::channel();
        if self.writer.send(Job::Close(answer)).is_ok() {
            let _ = answered.await;
        }
        self.readers.close().await;
    }
}

/// Runs `f` in a savepoint: released on success (or rolled back for
/// [`Outcome::RollBack`]), rolled back on failure, so a failed write leaves
/// the batch's other writes as they were.
fn in_savepoint<T>(
    conn: &Connection,
    f: impl FnOnce(&Connection) -> rusqlite::Result<T>,
    outcome: Outcome,
) -> rusqlite::Result<T> {
    conn.execute_batch("SAVEPOINT request")?;
    let result = std::panic::catch_unwind(AssertUnwindSafe(|| f(conn)))
        .unwrap_or_else(|_| Err(failed("the write panicked")));
    let end = match (&result, outcome) {
        (Ok(_), Outcome::Commit) => "RELEASE request",
        _ => "ROLLBACK TO request; RELEASE request",
    };
    // After an error that rolled the whole transaction back (a full disk)
    // there is no savepoint left to end: the batch notices.
    if !conn.is_autocommit() {
        conn.execute_batch(end)?;
    }
    result
}

/// The writer thread: takes what is queued (up to `max_batch` writes), runs
/// each in its savepoint of one transaction, commits once — one fsync — and
/// only then answers each.
fn write_loop(mut conn: Connection, mut queue: mpsc::UnboundedReceiver<Job>, max_batch: usize) {
    // Once checkpoints are held, the WAL's room to grow (see `wal_room`).
    let mut room: Option<Room> = None;
    let mut next = queue.blocking_recv();
    while let Some(job) = next.take() {
        match job {
            Job::Write(first) => {
                let mut writes = vec![first];
                while writes.len() < max_batch {
                    match queue.try_recv() {
                        Ok(Job::Write(write)) => writes.push(write),
                        Ok(other) => {
                            next = Some(other);
                            break;
                        }
                        Err(_) => break,
                    }
                }
                commit_batch(&conn, writes);
                Room::keep_ahead(&mut room);
            }
            Job::Exclusive(f) => {
                f(&mut conn);
                if room.is_none() && checkpoints_held(&conn).unwrap_or(false) {
                    room = Room::open(&mut conn);
                }
            }
            Job::Close(answer) => {
                if !checkpoints_held(&conn).unwrap_or(true)
                    && let Err(e) = checkpoint(&conn)
                {
                    tracing::warn!("could not checkpoint the WAL at close: {e}");
                }
                drop(conn);
                let _ = answer.send(());
                return;
            }
        }
        if next.is_none() {
            next = queue.blocking_recv();
        }
    }
}

/// One transaction for `writes`; each answers after the commit, or with its
/// own error.
fn commit_batch(conn: &Connection, writes: Vec<WriteJob>) {
    let mut staged: Vec<Staged> = Vec::with_capacity(writes.len());
    let mut begun = conn.execute_batch("BEGIN IMMEDIATE");
    for write in writes {
        // Without a transaction a write would commit by itself: it fails.
        let conn = begun.as_ref().map(|()| conn);
        if let Some(answer) = write(conn) {
            staged.push(answer);
        }
        let conn = match conn {
            Ok(conn) => conn,
            Err(_) => continue,
        };
        if conn.is_autocommit() {
            // SQLite rolled the transaction back under the write (a full disk,
            // an I/O error): what was staged is gone.
            let lost = Err(failed("the transaction was rolled back by an error"));
            staged.drain(..).for_each(|answer| answer(&lost));
            begun = conn.execute_batch("BEGIN IMMEDIATE");
        }
    }
    if begun.is_err() {
        return;
    }
    let committed = conn.execute_batch("COMMIT");
    if committed.is_err() && !conn.is_autocommit() {
        let _ = conn.execute_batch("ROLLBACK");
    }
    staged.into_iter().for_each(|answer| answer(&committed));
}

/// An error again, for each write of a batch it failed.
fn duplicate(e: &rusqlite::Error) -> rusqlite::Error {
    match e {
        rusqlite::Error::SqliteFailure(code, message) => {
            rusqlite::Error::SqliteFailure(*code, message.clone())
        }
        other => failed(&other.to_string()),
    }
}

fn failed(message: &str) -> rusqlite::Error {
    rusqlite::Error::SqliteFailure(
        rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_ERROR),
        Some(message.to_string()),
    )
}

fn closed() -> rusqlite::Error {
    failed("the database is closed (the daemon is stopping)")
}

#[cfg(test)]
mod tests {
    use super::*;
    use waiaas_shared::config::Config;
    use waiaas_shared::layout::DataDir;

    /// A served database in a temp dir.
    fn served() -> (tempfile::TempDir, DataDir, Db) {
        let tmp = tempfile::tempdir().unwrap();
        let dir = DataDir::new(tmp.path());
        let conn = crate::serve::prepare_database(&dir, &Config::default(), false).unwrap();
        (tmp, dir.clone(), Db::new(conn).unwrap())
    }

    fn insert(conn: &Connection, key: &str) -> rusqlite::Result<()> {
        conn.execute(
            "INSERT INTO key_value_store (key, value, updated_at) VALUES (?1, 'v', 0)",
            [key],
        )
        .map(drop)
    }

    async fn keys(db: &Db) -> Vec<String> {
        db.read(|conn| {
            let mut stmt = conn.prepare("SELECT key FROM key_value_store WHERE key LIKE 'k%'")?;
            stmt.query_map([], |r| r.get(0))?.collect()
        })
        .await
        .unwrap()
    }

    /// Stops the writer thread until the returned sender is dropped, so the
    /// writes queued meanwhile form one batch.
    async fn pause_writer(db: &Db) -> std::sync::mpsc::Sender<()> {
        let (release, wait) = std::sync::mpsc::channel::<()>();
        let (paused, is_paused) = oneshot::channel();
        let db = db.clone();
        tokio::spawn(async move {
            db.with_writer(move |_| {
                let _ = paused.send(());
                let _ = wait.recv();
                Ok(())
            })
            .await
        });
        is_paused.await.unwrap();
        release
    }

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
        insert(&conn, "x").unwrap();
        assert_eq!(synchronous(&conn).unwrap(), SYNCHRONOUS_FULL);
        // Connections that set no pragma (the launcher's update notice, a
        // backup's checkpoint) get the bundled SQLite's default: FULL too.
        let other = Connection::open(dir.database()).unwrap();
        assert_eq!(synchronous(&other).unwrap(), SYNCHRONOUS_FULL);
    }

    /// Writes queued together share a transaction; the one whose statement
    /// fails (a duplicate key) fails alone, and every other one is stored.
    #[tokio::test]
    async fn a_failed_write_in_a_batch_fails_only_itself() {
        let (_tmp, _dir, db) = served();
        db.write(|conn| insert(conn, "k-dup")).await.unwrap();
        let release = pause_writer(&db).await;
        let writes: Vec<_> = ["k-1", "k-dup", "k-2", "k-3"]
            .into_iter()
            .map(|key| {
                let db = db.clone();
                tokio::spawn(async move { (key, db.write(move |conn| insert(conn, key)).await) })
            })
            .collect();
        // Every write is queued behind the paused writer before it resumes.
        tokio::task::yield_now().await;
        drop(release);
        let mut acknowledged = Vec::new();
        for write in writes {
            match write.await.unwrap() {
                (key, Ok(())) => acknowledged.push(key.to_string()),
                (key, Err(e)) => {
                    assert_eq!(key, "k-dup", "{key} failed: {e}");
                    assert_eq!(
                        e.sqlite_error_code(),
                        Some(rusqlite::ErrorCode::ConstraintViolation)
                    );
                }
            }
        }
        assert_eq!(acknowledged, ["k-1", "k-2", "k-3"]);
        let stored = keys(&db).await;
        for key in &acknowledged {
            assert!(
                stored.contains(key),
                "{key} acknowledged, not stored: {stored:?}"
            );
        }
    }

    /// A read is answered while a write's transaction is open on the writer.
    #[tokio::test]
    async fn reads_do_not_wait_for_the_writer() {
        let (_tmp, _dir, db) = served();
        db.write(|conn| insert(conn, "k-before")).await.unwrap();
        let (release, wait) = std::sync::mpsc::channel::<()>();
        let (inside, is_inside) = oneshot::channel();
        let writer = db.clone();
        let write = tokio::spawn(async move {
            writer
                .write(move |conn| {
                    insert(conn, "k-during")?;
                    let _ = inside.send(());
                    let _ = wait.recv();
                    Ok(())
                })
                .await
        });
        is_inside.await.unwrap();
        let read = tokio::time::timeout(Duration::from_secs(10), keys(&db))
            .await
            .expect("a read waited for the writer's transaction");
        assert_eq!(read, ["k-before"], "a read saw an uncommitted write");
        drop(release);
        write.await.unwrap().unwrap();
        assert_eq!(keys(&db).await, ["k-before", "k-during"]);
    }

    /// The probe's write runs in a batch and leaves nothing behind.
    #[tokio::test]
    async fn a_rolled_back_write_leaves_nothing() {
        let (_tmp, _dir, db) = served();
        let release = pause_writer(&db).await;
        let (kept, probe) = {
            let (a, b) = (db.clone(), db.clone());
            (
                tokio::spawn(async move { a.write(|conn| insert(conn, "k-kept")).await }),
                tokio::spawn(
                    async move { b.write_rolled_back(|conn| insert(conn, "k-probe")).await },
                ),
            )
        };
        tokio::task::yield_now().await;
        drop(release);
        probe.await.unwrap().unwrap();
        kept.await.unwrap().unwrap();
        assert_eq!(keys(&db).await, ["k-kept"]);
    }

    /// With checkpoints held, nothing folds the WAL into the main file: not
    /// the writer's commits, not the read connections, not the close.
    #[tokio::test]
    async fn held_checkpoints_cover_every_connection_to_the_close() {
        let (_tmp, dir, db) = served();
        db.write(|conn| insert(conn, "k-0")).await.unwrap();
        db.hold_checkpoints().await.unwrap();
        let main = std::fs::read(dir.database()).unwrap();
        for n in 1..200 {
            let key = format!("k-{n}");
            db.write(move |conn| insert(conn, &key)).await.unwrap();
            keys(&db).await;
        }
        let readers_hold = db
            .read(|conn| conn.db_config(DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE))
            .await
            .unwrap();
        assert!(readers_hold, "a read connection would checkpoint at close");
        db.close().await;
        assert_eq!(
            std::fs::read(dir.database()).unwrap(),
            main,
            "the main file changed"
        );
        let wal = std::path::PathBuf::from(format!("{}-wal", dir.database().display()));
        assert!(std::fs::metadata(wal).unwrap().len() > 0, "the WAL is gone");
        let conn = Connection::open(dir.database()).unwrap();
        let count: i64 = conn
            .query_row(
                "SELECT count(*) FROM key_value_store WHERE key LIKE 'k%'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(count, 200);
    }
}
