//! Backups of the database and config (SPEC §6 step 3). Made by the launcher
//! before an upgrade or rollback and by the daemon before it migrates at start,
//! so the format is a contract of both.
//!
//! A backup is built in a hidden temp folder and renamed into place only once
//! every file is copied, verified and fsynced: a folder without the `.partial-`
//! prefix is always complete. Backups are ordered by their `sequence`, never by
//! the clock (it can step back) nor by folder name (`1.10.0` sorts before
//! `1.9.0` as text).

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use rusqlite::{Connection, OpenFlags};
use serde::{Deserialize, Serialize};

use crate::background::Watch;
use crate::fsutil::{
    Copied, CopyError, Pace, copy_hashed, fsync_dir, sha256_file_beside, write_atomic,
};
use crate::layout::DataDir;
use crate::time::UtcTime;

mod fold;
mod wal;
pub use fold::fold_copy;
use fold::{Fold, Folded};
use wal::WalCopy;
pub use wal::WalError;

/// File name of the manifest inside each backup folder.
pub const MANIFEST: &str = "backup.json";
/// The database's main file, in a backup as in `data/`.
pub const DB_FILE: &str = "waiaas.db";
/// The database's write-ahead log, when a backup was taken live (see [`begin`]).
pub const WAL_FILE: &str = "waiaas.db-wal";
pub const CONFIG_FILE: &str = "config.toml";
/// Every file a backup may hold; anything else in a `backup.json` is refused.
pub const FILES: [&str; 3] = [DB_FILE, WAL_FILE, CONFIG_FILE];
const PARTIAL_PREFIX: &str = ".partial-";

/// Why a backup was made; the folder name starts with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    PreUpgrade,
    PreMigrate,
    PreRollback,
    /// The database a rollback replaced, kept as it was ([`adopt`]).
    RolledBack,
}

impl Kind {
    fn prefix(self) -> &'static str {
        match self {
            Kind::PreUpgrade => "pre-upgrade",
            Kind::PreMigrate => "pre-migrate",
            Kind::PreRollback => "pre-rollback",
            Kind::RolledBack => "rolled-back",
        }
    }
}

/// `backup.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub kind: Kind,
    /// The version running when the backup was taken.
    pub from_version: String,
    /// The version about to take over.
    pub to_version: String,
    /// The database's schema version at backup time.
    pub schema_version: u32,
    /// Where the backup stands among the others: one more than the highest
    /// when it was made. Absent from older releases' backups, which come
    /// before every numbered one (see [`Manifest::order`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sequence: Option<u64>,
    /// RFC 3339 UTC with milliseconds: information, never the order.
    pub created_at: String,
    /// SHA-256 of each file in the folder, by file name ([`FILES`]).
    pub files: BTreeMap<String, String>,
    /// Size in bytes of each file in `files` (absent from older backups).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub sizes: BTreeMap<String, u64>,
    /// A live backup's report: how many bytes of the WAL were copied while
    /// the daemon still served (the rest was copied once it had stopped).
    /// Absent from other backups and older releases'.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wal_copied_live: Option<u64>,
}

impl Manifest {
    /// When the backup was taken; unparsable dates sort first (oldest).
    pub fn created(&self) -> UtcTime {
        UtcTime::parse_rfc3339(&self.created_at).unwrap_or(UtcTime::from_unix_ms(0))
    }

    /// The key backups are listed by, oldest first: unnumbered ones (older
    /// releases) by `created_at`, then numbered ones by `sequence`.
    pub fn order(&self) -> (Option<u64>, UtcTime) {
        (self.sequence, self.created())
    }
}

/// A complete backup on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backup {
    pub path: PathBuf,
    pub manifest: Manifest,
}

/// What a backup is of.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    pub kind: Kind,
    pub from_version: String,
    pub to_version: String,
    pub schema_version: u32,
}

/// Why a backup could not be made. Nothing is left behind on failure.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error("cannot back up {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot checkpoint the database before backing it up: {0}")]
    Checkpoint(#[source] rusqlite::Error),
    #[error(
        "the database is in use by another process (its WAL could not be folded in); stop it first"
    )]
    Busy,
    #[error(
        "the database failed its integrity check (PRAGMA quick_check), so it is not backed up: {0}"
    )]
    Corrupt(String),
    #[error("cannot copy the database's write-ahead log: {0}")]
    Wal(#[source] WalError),
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> BackupError + '_ {
    move |source| BackupError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Backs up `data/waiaas.db` (after a WAL checkpoint, verified with
/// `PRAGMA quick_check`) and `config.toml` (if present) into
/// `backups/<kind>-<from>-<yyyymmddThhmmssZ>/` with a `backup.json`. Nothing
/// may be using the database.
pub fn create(dir: &DataDir, request: &Request) -> Result<Backup, BackupError> {
    create_at(dir, request, UtcTime::now())
}

/// [`create`], taken at `now`.
fn create_at(dir: &DataDir, request: &Request, now: UtcTime) -> Result<Backup, BackupError> {
    begin_at(dir, request, Database::Idle, now)?.finish()
}

/// How the database is used while [`begin`] copies it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Database {
    /// Nobody uses it: checkpointed first, the main file is the whole database.
    Idle,
    /// A daemon serves from it with its checkpoints held (see
    /// `control::FromLauncher::HoldCheckpoints`): the main file does not
    /// change until that daemon exits, and every later write is in the WAL,
    /// which [`Pending::finish`] copies once it has stopped.
    Held,
}

/// A backup whose database main file is copied, hashed and checked, still
/// hidden as `.partial-…`: [`Pending::finish`] completes it; dropping it
/// removes it.
#[derive(Debug)]
pub struct Pending {
    dir: DataDir,
    root: PathBuf,
    name: String,
    partial: PathBuf,
    request: Request,
    now: UtcTime,
    files: BTreeMap<String, Copied>,
    /// The main file as it was when copied (`None` without a database).
    copied_from: Option<Stamp>,
    /// The WAL's committed frames, copied while the daemon serves.
    wal: Option<WalCopy>,
    /// How many bytes of it those were (`None` unless a live backup).
    wal_live: Option<u64>,
    /// The live database's log folded into its main file behind the copy
    /// (see [`fold`]); `None` once the main file may not be written to.
    fold: Option<Fold>,
    /// Renamed into place: nothing is left for `Drop` to remove.
    finished: bool,
}

/// What shows that a file was not written to: the same inode, size and mtime.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    ino: u64,
    len: u64,
    mtime_ns: i128,
}

fn stamp(path: &Path) -> io::Result<Stamp> {
    use std::os::unix::fs::MetadataExt;
    let meta = fs::metadata(path)?;
    Ok(Stamp {
        ino: meta.ino(),
        len: meta.len(),
        mtime_ns: i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec()),
    })
}

/// First half of a backup: the database's main file, copied by the kernel
/// with its hash taken right behind the copy and `quick_check` beside it,
/// both from the page cache. With [`Database::Held`] this is the long part, and it runs while
/// the daemon still serves; the rest ([`Pending::finish`]) is small.
pub fn begin(dir: &DataDir, request: &Request, database: Database) -> Result<Pending, BackupError> {
    begin_at(dir, request, database, UtcTime::now())
}

/// [`begin`], taken at `now`.
fn begin_at(
    dir: &DataDir,
    request: &Request,
    database: Database,
    now: UtcTime,
) -> Result<Pending, BackupError> {
    let root = dir.backups();
    fs::create_dir_all(&root).map_err(io_err(&root))?;
    let name = unused_name(&root, request, now);
    let partial = root.join(format!("{PARTIAL_PREFIX}{name}"));
    // Backups hold the whole database: the owner's alone (0700 / 0600).
    fs::DirBuilder::new()
        .mode(0o700)
        .create(&partial)
        .map_err(io_err(&partial))?;
    let mut pending = Pending {
        dir: dir.clone(),
        root,
        name,
        partial,
        request: request.clone(),
        now,
        files: BTreeMap::new(),
        copied_from: None,
        wal: None,
        wal_live: None,
        fold: None,
        finished: false,
    };
    let db = dir.database();
    // An installation never started has no database yet: the backup then
    // holds the config alone, and restoring it removes any database.
    if db.exists() {
        if database == Database::Idle {
            checkpoint(&db)?;
        }
        pending.copy_main(match database {
            Database::Idle => Pace::Alone,
            Database::Held => Pace::Beside,
        })?;
        if database == Database::Held {
            pending.follow_wal()?;
        }
    }
    Ok(pending)
}

/// `<kind>-<from>-<yyyymmddThhmmssZ>[-n]`, a name no folder of `root` has
/// (a complete backup or a `.partial-` one).
fn unused_name(root: &Path, request: &Request, now: UtcTime) -> String {
    let base = format!(
        "{}-{}-{}",
        request.kind.prefix(),
        request.from_version,
        now.compact()
    );
    (1..)
        .map(|n| {
            if n == 1 {
                base.clone()
            } else {
                format!("{base}-{n}")
            }
        })
        .find(|name| {
            !root.join(name).exists() && !root.join(format!("{PARTIAL_PREFIX}{name}")).exists()
        })
        .expect("an unused name exists")
}

/// `backup.json` for `request`, taken at `now`, holding `files`: numbered
/// after every backup in `dir`, so it is the newest whatever the clock says.
fn manifest(
    dir: &DataDir,
    request: &Request,
    now: UtcTime,
    files: &BTreeMap<String, Copied>,
) -> Result<Manifest, BackupError> {
    let root = dir.backups();
    let highest = list(dir)
        .map_err(io_err(&root))?
        .iter()
        .filter_map(|b| b.manifest.sequence)
        .max();
    Ok(Manifest {
        kind: request.kind,
        from_version: request.from_version.clone(),
        to_version: request.to_version.clone(),
        schema_version: request.schema_version,
        sequence: Some(highest.map_or(1, |n| n + 1)),
        created_at: now.rfc3339(),
        files: files
            .iter()
            .map(|(name, c)| (name.clone(), c.sha256.clone()))
            .collect(),
        sizes: files
            .iter()
            .map(|(name, c)| (name.clone(), c.len))
            .collect(),
        wal_copied_live: None,
    })
}

impl Pending {
    /// Copies the main file, `pace`d for a daemon serving beside the copy
    /// or for none.
    fn copy_main(&mut self, pace: Pace) -> Result<(), BackupError> {
        let db = self.dir.database();
        let before = stamp(&db).map_err(io_err(&db))?;
        let main = self.partial.join(DB_FILE);
        // The file does not change while it is copied (checkpointed and idle,
        // or its checkpoints held), so it is checked beside the copy, from
        // the same page cache: the backup takes about as long as the copy.
        let (copied, checked) = std::thread::scope(|scope| {
            let check = match pace {
                Pace::Alone => scope.spawn(|| quick_check(&db)),
                Pace::Beside => scope.spawn(|| {
                    crate::background::run((), crate::background::STARVED, |(), watch| {
                        checked_unless_taken_over(&db, Some(watch))
                    })
                }),
            };
            let copied = copy(&db, &main, pace);
            (copied, check.join().expect("quick_check does not panic"))
        });
        let copied = copied?;
        checked?;
        self.files.insert(DB_FILE.to_string(), copied);
        self.copied_from = Some(before);
        Ok(())
    }

    /// Copies the WAL's committed frames while the daemon still writes:
    /// pass after pass while a pass finds more than [`WAL_TAIL`], so that
    /// little is left for [`Pending::finish`]. Behind each pass the log is
    /// folded into the live main file ([`fold`]), once that file is known
    /// to have been copied unchanged.
    fn follow_wal(&mut self) -> Result<(), BackupError> {
        let (wal, dest) = (self.dir.wal(), self.partial.join(WAL_FILE));
        let mut copy = WalCopy::create(&dest).map_err(BackupError::Wal)?;
        self.fold = self.fold_if_copied_unchanged();
        let mut last = None;
        let live = passes(|| {
            let copied = copy.catch_up(&wal)?;
            last = self.fold_behind(last);
            Ok(copied)
        })
        .map_err(BackupError::Wal)?;
        // A fold goes up to the snapshot before the newest (see `fold`):
        // one more, and the downtime folds only what was logged since the
        // last pass.
        self.fold_behind(last);
        self.wal = Some(copy);
        self.wal_live = Some(live);
        Ok(())
    }

    /// A [`Fold`] of the live database, if its main file did not change
    /// while it was copied (its checkpoints were held): from here on a
    /// change to it is a fold's, of frames the backup's log holds.
    fn fold_if_copied_unchanged(&self) -> Option<Fold> {
        let db = self.dir.database();
        if stamp(&db).ok() != self.copied_from {
            return None;
        }
        Fold::open(&db)
            .inspect_err(|e| tracing::warn!("cannot fold the WAL while it is copied: {e}"))
            .ok()
    }

    /// Moves the fold's snapshot to the log's end and folds up to it. A fold
    /// that fails stops folding; the log it held stays whole for the copy.
    fn fold_behind(&mut self, last: Option<Folded>) -> Option<Folded> {
        let fold = self.fold.as_mut()?;
        match fold.pin(last).and_then(|()| fold.fold()) {
            Ok(folded) => Some(folded),
            Err(e) => {
                tracing::warn!("stopped folding the WAL while it is copied: {e}");
                last
            }
        }
    }

    /// Second half, once nothing uses the database any more: the rest of
    /// the WAL and the config, then `backup.json`, and the folder renamed
    /// into place. Had the main file changed since it was copied, or the WAL
    /// restarted (a daemon that did not hold its checkpoints after all), the
    /// database is checkpointed and copied again here.
    pub fn finish(mut self) -> Result<Backup, BackupError> {
        let db = self.dir.database();
        if let Some(copied_from) = self.copied_from {
            let wal = match self.wal.take() {
                Some(copy) => copy,
                None => WalCopy::create(&self.partial.join(WAL_FILE)).map_err(BackupError::Wal)?,
            };
            // Folded: the main file changed by design, after it was copied
            // unchanged; the log it was folded from stayed whole (or the
            // copy finds it restarted).
            let unchanged = self.fold.is_some() || stamp(&db).map_err(io_err(&db))? == copied_from;
            let wal = match unchanged.then(|| wal.finish(&self.dir.wal())) {
                Some(Ok(copied)) => Some(copied),
                Some(Err(e @ WalError::Io { .. })) => return Err(BackupError::Wal(e)),
                Some(Err(WalError::Restarted(_))) | None => None,
            };
            // Copied whole, or to be copied again: either way the live log
            // is not needed whole any longer.
            // (Let go before any checkpoint below, which its snapshot would block.)
            let fold = self.fold.take();
            if wal.is_some() {
                self.fold_rest(fold);
            } else {
                drop(fold);
            }
            match wal {
                Some(copied) if copied.len > 0 => {
                    self.files.insert(WAL_FILE.to_string(), copied);
                }
                Some(_) => remove(&self.partial.join(WAL_FILE))?,
                None => {
                    tracing::warn!(
                        "{} changed while it was copied; copying it again with the daemon stopped",
                        db.display()
                    );
                    for file in [DB_FILE, WAL_FILE] {
                        remove(&self.partial.join(file))?;
                    }
                    checkpoint(&db)?;
                    self.copy_main(Pace::Alone)?;
                    // Copied again with the daemon stopped: nothing live.
                    self.wal_live = self.wal_live.map(|_| 0);
                }
            }
        }
        let config = self.dir.config();
        if config.exists() {
            let copied = copy(&config, &self.partial.join(CONFIG_FILE), Pace::Alone)?;
            self.files.insert(CONFIG_FILE.to_string(), copied);
        }
        let mut manifest = manifest(&self.dir, &self.request, self.now, &self.files)?;
        manifest.wal_copied_live = self.wal_live;
        let json = serde_json::to_vec_pretty(&manifest).expect("a manifest serialises");
        let path = self.partial.join(MANIFEST);
        write_atomic(&path, &json, 0o600).map_err(io_err(&path))?;
        let done = self.root.join(&self.name);
        fs::rename(&self.partial, &done).map_err(io_err(&done))?;
        fsync_dir(&self.root).map_err(io_err(&self.root))?;
        self.finished = true;
        Ok(Backup {
            path: done,
            manifest,
        })
    }
}

impl Pending {
    /// Folds the rest of the live log once it is copied, and has SQLite
    /// delete it (its blocks freed later, [`crate::trash`]), so that the
    /// next process to open the database has no long log to read, nor the
    /// last to close it to fold. Only a speed-up: a log left as it is stays
    /// correct.
    fn fold_rest(&self, fold: Option<Fold>) {
        let Some(fold) = fold else { return };
        match fold.finish() {
            Ok(true) => {}
            Ok(false) => tracing::warn!(
                "{} is still in use: its WAL is left for the next process to fold",
                self.dir.database().display()
            ),
            Err(e) => tracing::warn!("cannot fold the rest of the WAL: {e}"),
        }
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        // Unfinished (an error, an abandoned upgrade): a full disk must not
        // also keep a half-written folder.
        if !self.finished {
            let _ = fs::remove_dir_all(&self.partial);
        }
    }
}

/// Makes the database files in `folder` (`waiaas.db`, and its `waiaas.db-wal`
/// if there is one) a complete backup of `request`: hashed where they are,
/// `backup.json` written beside them, and the folder renamed into
/// `backups/` — moved, not copied, so keeping a large database costs no
/// space. Only when `backups/` is on another file system are the files
/// copied (and `folder` removed after). A restore sets a replaced database
/// aside in such a folder of `data/`; this makes it a [`Kind::RolledBack`],
/// hashing it at idle priority, as it mostly runs beside the restored
/// daemon (a watched hash ends as fast where nothing else wants the CPU).
pub fn adopt(dir: &DataDir, folder: &Path, request: &Request) -> Result<Backup, BackupError> {
    let root = dir.backups();
    fs::create_dir_all(&root).map_err(io_err(&root))?;
    let now = UtcTime::now();
    let name = unused_name(&root, request, now);
    let mut files = BTreeMap::new();
    for file in [DB_FILE, WAL_FILE] {
        let path = folder.join(file);
        let len = match fs::metadata(&path) {
            Ok(meta) => meta.len(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(io_err(&path)(e)),
        };
        let sha256 = sha256_file_beside(&path).map_err(io_err(&path))?;
        files.insert(file.to_string(), Copied { sha256, len });
    }
    let manifest = manifest(dir, request, now, &files)?;
    let json = serde_json::to_vec_pretty(&manifest).expect("a manifest serialises");
    // Written first: the rename then makes the backup complete at once.
    let path = folder.join(MANIFEST);
    write_atomic(&path, &json, 0o600).map_err(io_err(&path))?;
    let done = root.join(&name);
    match fs::rename(folder, &done) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EXDEV) => {
            let partial = root.join(format!("{PARTIAL_PREFIX}{name}"));
            fs::DirBuilder::new()
                .mode(0o700)
                .create(&partial)
                .map_err(io_err(&partial))?;
            for file in files.keys() {
                copy(&folder.join(file), &partial.join(file), Pace::Alone)?;
            }
            let path = partial.join(MANIFEST);
            write_atomic(&path, &json, 0o600).map_err(io_err(&path))?;
            fs::rename(&partial, &done).map_err(io_err(&done))?;
            fs::remove_dir_all(folder).map_err(io_err(folder))?;
        }
        Err(e) => return Err(io_err(&done)(e)),
    }
    fsync_dir(&root).map_err(io_err(&root))?;
    if let Some(parent) = folder.parent() {
        fsync_dir(parent).map_err(io_err(parent))?;
    }
    Ok(Backup {
        path: done,
        manifest,
    })
}

/// Passes over a growing WAL before the daemon stops, at most.
const WAL_PASSES: usize = 4;
/// A pass that copied no more than this leaves the rest to the stop.
const WAL_TAIL: u64 = 1 << 20;

/// Runs `pass` (one pass of the live WAL copy, returning the bytes it
/// copied) again while a pass copies more than [`WAL_TAIL`], at most
/// [`WAL_PASSES`] times; the bytes copied in all.
fn passes(mut pass: impl FnMut() -> Result<u64, WalError>) -> Result<u64, WalError> {
    let mut live = 0;
    for _ in 0..WAL_PASSES {
        let copied = pass()?;
        live += copied;
        if copied <= WAL_TAIL {
            break;
        }
    }
    Ok(live)
}

fn remove(path: &Path) -> Result<(), BackupError> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(io_err(path)(e)),
        _ => Ok(()),
    }
}

/// Folds the WAL into the main file so copying the file alone is a full copy.
fn checkpoint(db: &Path) -> Result<(), BackupError> {
    let conn = Connection::open_with_flags(db, OpenFlags::SQLITE_OPEN_READ_WRITE)
        .map_err(BackupError::Checkpoint)?;
    let busy: i64 = conn
        .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |row| row.get(0))
        .map_err(BackupError::Checkpoint)?;
    if busy != 0 {
        return Err(BackupError::Busy);
    }
    Ok(())
}

/// [`copy_hashed`] as the owner's alone (0600), fsynced.
fn copy(from: &Path, to: &Path, pace: Pace) -> Result<Copied, BackupError> {
    copy_hashed(from, to, 0o600, pace).map_err(|e| match e {
        CopyError::Read(source) => io_err(from)(source),
        CopyError::Write(source) => io_err(to)(source),
    })
}

/// How much of the database `quick_check` maps (SQLite caps it at its
/// compiled limit, 2 GiB by default; the rest is read as usual).
const MMAP_SIZE: i64 = 1 << 40;
/// SQLite instructions between two steps of a watched `quick_check`: about
/// 0.2 ms of it here (100,000 took 2 ms).
const CHECK_STEP_OPS: std::ffi::c_int = 10_000;

/// `PRAGMA quick_check` of the main file `db` alone (its WAL unread).
pub fn quick_check(db: &Path) -> Result<(), BackupError> {
    checked_unless_taken_over(db, None).expect("a check nobody watches runs to its end")
}

/// [`quick_check`], stopped (`None`) if `watch` takes it over: it then
/// runs again from the start, a check having no state to go on from.
fn checked_unless_taken_over(db: &Path, watch: Option<&Watch>) -> Option<Result<(), BackupError>> {
    // immutable=1: the main file alone, as a plain file: no WAL read, no
    // lock taken, no -wal/-shm created beside it.
    let uri = format!("file:{}?immutable=1", db.display());
    let corrupt = |e: rusqlite::Error| BackupError::Corrupt(e.to_string());
    let checked = (|| {
        let mut conn = Connection::open_with_flags(
            &uri,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_URI,
        )?;
        // Pages read through a mapping, not a pread and a copy each: about half
        // the CPU, which the copy and its hash beside it need. (A mapped file
        // that shrinks under a reader faults; this one does not shrink: the
        // daemon never vacuums, and it is stopped or its checkpoints are held.)
        conn.pragma_update(None, "mmap_size", MMAP_SIZE)?;
        if let Some(watch) = watch.cloned() {
            conn.progress_handler(
                CHECK_STEP_OPS,
                Some(move || {
                    watch.step();
                    watch.taken_over()
                }),
            )?;
        }
        conn.query_row("PRAGMA quick_check", [], |row| row.get::<_, String>(0))
    })();
    match checked {
        Ok(verdict) if verdict == "ok" => Some(Ok(())),
        Ok(verdict) => Some(Err(BackupError::Corrupt(verdict))),
        Err(_) if watch.is_some_and(Watch::taken_over) => None,
        Err(e) => Some(Err(corrupt(e))),
    }
}

/// Every complete backup, oldest first by [`Manifest::order`]. Folders without a
/// readable manifest (or still `.partial-`) are not backups and are skipped.
pub fn list(dir: &DataDir) -> io::Result<Vec<Backup>> {
    let root = dir.backups();
    let entries = match fs::read_dir(&root) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut backups = Vec::new();
    for entry in entries {
        let path = entry?.path();
        let hidden = path
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with('.'));
        if hidden || !path.is_dir() {
            continue;
        }
        let Ok(text) = fs::read(path.join(MANIFEST)) else {
            continue;
        };
        if let Ok(manifest) = serde_json::from_slice::<Manifest>(&text) {
            backups.push(Backup { path, manifest });
        }
    }
    backups.sort_by(|a, b| (a.manifest.order(), &a.path).cmp(&(b.manifest.order(), &b.path)));
    Ok(backups)
}

/// Removes all but the `keep` (at least 1) newest backups by
/// [`Manifest::order`], so the one just made is never removed, and any
/// `.partial-` leftovers of an interrupted backup; returns what was removed.
/// They are put in the trash of `backups/` (a rename: a pruning inside an
/// upgrade's downtime does not wait for gigabytes to be freed), for
/// [`crate::trash::empty`] to delete.
pub fn prune(dir: &DataDir, keep: usize) -> io::Result<Vec<PathBuf>> {
    let mut removed = Vec::new();
    let root = dir.backups();
    if let Ok(entries) = fs::read_dir(&root) {
        for entry in entries {
            let path = entry?.path();
            if path
                .file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with(PARTIAL_PREFIX))
            {
                crate::trash::put(&path)?;
                removed.push(path);
            }
        }
    }
    let backups = list(dir)?;
    let excess = backups.len().saturating_sub(keep.max(1));
    for backup in backups.into_iter().take(excess) {
        crate::trash::put(&backup.path)?;
        removed.push(backup.path);
    }
    if !removed.is_empty() {
        fsync_dir(&root)?;
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fsutil::sha256_file;

    fn install() -> (tempfile::TempDir, DataDir) {
        let tmp = tempfile::tempdir().unwrap();
        let dir = DataDir::new(tmp.path());
        fs::create_dir_all(dir.data()).unwrap();
        let conn = Connection::open(dir.database()).unwrap();
        conn.pragma_update(None, "journal_mode", "WAL").unwrap();
        conn.execute_batch("CREATE TABLE t(x); INSERT INTO t VALUES (1), (2);")
            .unwrap();
        // Keep this connection open: its writes sit in the WAL until checkpointed.
        std::mem::forget(conn);
        fs::write(dir.config(), "[daemon]\nport = 3100\n").unwrap();
        (tmp, dir)
    }

    fn request(from: &str) -> Request {
        Request {
            kind: Kind::PreUpgrade,
            from_version: from.to_string(),
            to_version: "9.9.9".to_string(),
            schema_version: 16,
        }
    }

    /// A watched check stops when taken over (to be run again, whole),
    /// and otherwise gives its verdict, its steps counted.
    #[test]
    fn a_watched_quick_check_stops_when_taken_over() {
        let tmp = tempfile::tempdir().unwrap();
        let db = tmp.path().join("big.db");
        let conn = Connection::open(&db).unwrap();
        conn.execute_batch(
            "CREATE TABLE t(x TEXT); CREATE INDEX t_x ON t(x);
             WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 50000)
             INSERT INTO t SELECT hex(randomblob(16)) FROM n;",
        )
        .unwrap();
        drop(conn);
        assert!(checked_unless_taken_over(&db, Some(&Watch::taken())).is_none());
        let watch = Watch::default();
        let verdict = checked_unless_taken_over(&db, Some(&watch));
        assert!(matches!(verdict, Some(Ok(()))), "{verdict:?}");
        assert!(watch.steps() > 0, "the check reported its steps");
        quick_check(&db).unwrap();
        // A watched check that fails on its own says so: not taken over.
        fs::write(&db, vec![7u8; 8192]).unwrap();
        let verdict = checked_unless_taken_over(&db, Some(&Watch::default()));
        assert!(
            matches!(verdict, Some(Err(BackupError::Corrupt(_)))),
            "{verdict:?}"
        );
    }

    #[test]
    fn a_backup_holds_verified_copies_and_a_manifest() {
        let (_tmp, dir) = install();
        let backup = create(&dir, &request("1.8.1")).unwrap();
        let name = backup
            .path
            .file_name()
            .unwrap()
            .to_string_lossy()
            .to_string();
        assert!(name.starts_with("pre-upgrade-1.8.1-"), "{name}");
        let copy = Connection::open(backup.path.join(DB_FILE)).unwrap();
        let n: i64 = copy
            .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 2, "rows still in the WAL are in the copy");
        let m = &backup.manifest;
        assert_eq!(m.files.len(), 2);
        assert_eq!(m.files["config.toml"], sha256_file(&dir.config()).unwrap());
        let on_disk: Manifest =
            serde_json::from_slice(&fs::read(backup.path.join(MANIFEST)).unwrap()).unwrap();
        assert_eq!(&on_disk, m);
        // The whole database, so the owner's alone.
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&backup.path), 0o700);
        for file in [DB_FILE, "config.toml", MANIFEST] {
            assert_eq!(mode(&backup.path.join(file)), 0o600, "{file}");
        }
        assert_eq!(list(&dir).unwrap(), vec![backup]);
    }

    /// A machine without a real-time clock can boot before NTP sets its
    /// time: a backup made then has an earlier `created_at` than the last one,
    /// and is still the newest.
    #[test]
    fn a_backup_made_after_the_clock_stepped_back_is_the_newest() {
        let (_tmp, dir) = install();
        let t = 1_800_000_000_000;
        let a = create_at(&dir, &request("1.8.1"), UtcTime::from_unix_ms(t)).unwrap();
        let b = create_at(
            &dir,
            &request("1.9.0"),
            UtcTime::from_unix_ms(t - 3_600_000),
        )
        .unwrap();
        assert!(b.manifest.created() < a.manifest.created());
        assert_eq!(
            (a.manifest.sequence, b.manifest.sequence),
            (Some(1), Some(2))
        );
        assert_eq!(list(&dir).unwrap(), vec![a.clone(), b.clone()]);
        assert_eq!(prune(&dir, 1).unwrap(), vec![a.path]);
        assert_eq!(list(&dir).unwrap(), vec![b]);
    }

    #[test]
    fn listing_and_pruning_go_by_sequence_then_created_at_not_name() {
        let (_tmp, dir) = install();
        let root = dir.backups();
        // Names that sort the wrong way as text.
        for (name, from, at) in [
            ("pre-upgrade-1.9.0-x", "1.9.0", "2026-01-01T00:00:00.000Z"),
            ("pre-upgrade-1.10.0-x", "1.10.0", "2026-02-01T00:00:00.000Z"),
            (
                "pre-upgrade-2.0.0-rc.1-x",
                "2.0.0-rc.1",
                "2026-03-01T00:00:00.000Z",
            ),
        ] {
            fs::create_dir_all(root.join(name)).unwrap();
            let m = Manifest {
                kind: Kind::PreUpgrade,
                from_version: from.into(),
                to_version: "x".into(),
                schema_version: 1,
                sequence: None,
                created_at: at.into(),
                files: BTreeMap::new(),
                sizes: BTreeMap::new(),
                wal_copied_live: None,
            };
            fs::write(
                root.join(name).join(MANIFEST),
                serde_json::to_vec(&m).unwrap(),
            )
            .unwrap();
        }
        fs::create_dir_all(root.join(".partial-pre-upgrade-3.0.0-x")).unwrap();
        let order: Vec<_> = list(&dir)
            .unwrap()
            .iter()
            .map(|b| b.manifest.from_version.clone())
            .collect();
        assert_eq!(order, ["1.9.0", "1.10.0", "2.0.0-rc.1"]);
        prune(&dir, 2).unwrap();
        let left: Vec<_> = list(&dir)
            .unwrap()
            .iter()
            .map(|b| b.manifest.from_version.clone())
            .collect();
        assert_eq!(left, ["1.10.0", "2.0.0-rc.1"]);
        assert!(!root.join(".partial-pre-upgrade-3.0.0-x").exists());
        // Put in the trash, which listing skips, until it is emptied.
        let trash = root.join(crate::trash::FOLDER);
        assert_eq!(fs::read_dir(&trash).unwrap().count(), 2);
        crate::trash::empty(&root).unwrap();
        assert!(!trash.exists());
        assert_eq!(list(&dir).unwrap().len(), 2);
        // Numbered backups come after every unnumbered one (an older
        // release's), whatever their times.
        let made = create_at(&dir, &request("3.0.0"), UtcTime::from_unix_ms(0)).unwrap();
        assert_eq!(made.manifest.sequence, Some(1));
        let newer = create_at(&dir, &request("3.1.0"), UtcTime::from_unix_ms(0)).unwrap();
        assert_eq!(newer.manifest.sequence, Some(2));
        prune(&dir, 2).unwrap();
        assert_eq!(list(&dir).unwrap(), vec![made, newer]);
    }

    /// The folder is named for what the backup is of and when; a number
    /// follows only when that name is taken.
    #[test]
    fn a_backup_folder_is_numbered_only_when_its_name_is_taken() {
        let (_tmp, dir) = install();
        let at = UtcTime::from_unix_ms(1_800_000_000_000);
        let names: Vec<String> = (0..3)
            .map(|_| {
                let backup = create_at(&dir, &request("1.8.1"), at).unwrap();
                backup.path.file_name().unwrap().to_string_lossy().into()
            })
            .collect();
        let base = format!("pre-upgrade-1.8.1-{}", at.compact());
        assert_eq!(
            names,
            [base.clone(), format!("{base}-2"), format!("{base}-3")]
        );
    }

    /// A daemon that rewrote the main file in place (same inode, same size)
    /// shows only in the mtime: a second or a nanosecond apart is a change.
    #[test]
    fn a_stamp_tells_apart_mtimes_a_second_or_a_nanosecond_apart() {
        use std::time::{Duration, UNIX_EPOCH};
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("waiaas.db");
        fs::write(&path, "same size").unwrap();
        let file = fs::File::options().write(true).open(&path).unwrap();
        let s = 1_800_000_000;
        let stamps: Vec<Stamp> = [(s, 0), (s + 1, 0), (s, 1)]
            .into_iter()
            .map(|(secs, nanos)| {
                file.set_modified(UNIX_EPOCH + Duration::new(secs, nanos))
                    .unwrap();
                stamp(&path).unwrap()
            })
            .collect();
        assert_ne!(stamps[0], stamps[1], "a second later");
        assert_ne!(stamps[0], stamps[2], "a nanosecond later");
        assert_ne!(stamps[1], stamps[2], "a second later, a nanosecond earlier");
    }

    /// No `backups/` yet is no backup; a `backups/` that cannot be read is
    /// an error, not "no backup" (a rollback would find nothing to restore).
    #[test]
    fn a_missing_backups_folder_lists_nothing_and_an_unreadable_one_fails() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = DataDir::new(tmp.path());
        assert_eq!(list(&dir).unwrap(), vec![]);
        assert_eq!(
            prune(&dir, 1).unwrap(),
            Vec::<PathBuf>::new(),
            "nothing to prune"
        );
        fs::write(dir.backups(), "not a folder").unwrap();
        let refused = list(&dir).unwrap_err();
        assert_eq!(refused.raw_os_error(), Some(libc::ENOTDIR), "{refused}");
    }

    /// A backup interrupted after its `backup.json` was written, before the
    /// rename, is still `.partial-`: not a backup.
    #[test]
    fn a_partial_backup_is_not_listed_even_with_its_manifest_written() {
        let (_tmp, dir) = install();
        let made = create(&dir, &request("1.8.1")).unwrap();
        let partial = dir.backups().join(format!("{PARTIAL_PREFIX}interrupted"));
        fs::create_dir_all(&partial).unwrap();
        fs::copy(made.path.join(MANIFEST), partial.join(MANIFEST)).unwrap();
        fs::write(dir.backups().join("notes.txt"), "not a backup").unwrap();
        assert_eq!(list(&dir).unwrap(), vec![made]);
    }

    #[test]
    fn removing_a_file_already_gone_is_not_an_error_but_other_failures_are() {
        let tmp = tempfile::tempdir().unwrap();
        remove(&tmp.path().join("absent")).unwrap();
        let file = tmp.path().join("file");
        fs::write(&file, "x").unwrap();
        remove(&file).unwrap();
        assert!(!file.exists());
        // unlink(2) of a folder fails (EISDIR): reported, with its path.
        let refused = remove(tmp.path()).unwrap_err();
        assert!(
            matches!(&refused, BackupError::Io { path, .. } if path == tmp.path()),
            "{refused}"
        );
    }

    /// The live copy follows a growing WAL while each pass copies more than
    /// the tail, and gives up after a few passes, leaving the rest to the stop.
    #[test]
    fn the_live_wal_copy_passes_again_while_a_pass_copies_more_than_the_tail() {
        let run = |sizes: &[u64]| {
            let mut sizes = sizes.iter();
            let mut calls = 0;
            let live = passes(|| {
                calls += 1;
                Ok(*sizes.next().expect("no more passes than sizes"))
            })
            .unwrap();
            (calls, live)
        };
        let big = WAL_TAIL + 1;
        assert_eq!(run(&[big, big, WAL_TAIL]), (3, 2 * big + WAL_TAIL));
        assert_eq!(run(&[0]), (1, 0));
        assert_eq!(
            run(&[512 << 10]),
            (1, 512 << 10),
            "half a MiB is left to the stop"
        );
        assert_eq!(run(&[big; 5]), (WAL_PASSES, WAL_PASSES as u64 * big));
        let failed = passes(|| Err(WalError::Restarted(PathBuf::from("w"))));
        assert!(matches!(failed, Err(WalError::Restarted(_))));
    }

    /// A daemon's connection with checkpoints held, as the daemon holds them.
    fn held(dir: &DataDir) -> Connection {
        let conn = Connection::open(dir.database()).unwrap();
        conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
            .unwrap();
        conn.pragma_update(None, "wal_autocheckpoint", 0).unwrap();
        conn.set_db_config(
            rusqlite::config::DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE,
            true,
        )
        .unwrap();
        conn
    }

    fn count(db: &Path) -> i64 {
        Connection::open(db)
            .unwrap()
            .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
            .unwrap()
    }

    #[test]
    fn a_live_backup_holds_the_main_file_and_the_writes_made_while_it_was_copied() {
        let (tmp, dir) = install();
        let daemon = held(&dir);
        let pending = begin(&dir, &request("1.8.1"), Database::Held).unwrap();
        // Written while (after) the main file is copied: they land in the WAL.
        for x in 0..50 {
            daemon.execute("INSERT INTO t VALUES (?1)", [x]).unwrap();
        }
        drop(daemon);
        assert!(
            dir.wal().metadata().unwrap().len() > 0,
            "no checkpoint at close"
        );
        let backup = pending.finish().unwrap();
        let m = &backup.manifest;
        assert_eq!(
            m.files.keys().collect::<Vec<_>>(),
            [CONFIG_FILE, DB_FILE, WAL_FILE]
        );
        for (file, sha) in &m.files {
            let path = backup.path.join(file);
            assert_eq!(&sha256_file(&path).unwrap(), sha, "{file}");
            assert_eq!(m.sizes[file], path.metadata().unwrap().len(), "{file}");
        }
        // Main file and WAL together are the database as the daemon left it.
        let check = tmp.path().join("check");
        fs::create_dir_all(&check).unwrap();
        fs::copy(backup.path.join(DB_FILE), check.join("x.db")).unwrap();
        fs::copy(backup.path.join(WAL_FILE), check.join("x.db-wal")).unwrap();
        assert_eq!(count(&check.join("x.db")), 52);
        // The main file alone is the database as it was when the copy began.
        fs::copy(backup.path.join(DB_FILE), check.join("y.db")).unwrap();
        assert_eq!(count(&check.join("y.db")), 2);
    }

    #[test]
    fn a_live_backup_reports_how_much_of_the_wal_it_copied_while_the_daemon_served() {
        let (_tmp, dir) = install();
        let daemon = held(&dir);
        for x in 0..40 {
            daemon.execute("INSERT INTO t VALUES (?1)", [x]).unwrap();
        }
        let before = dir.wal().metadata().unwrap().len();
        let pending = begin(&dir, &request("1.8.1"), Database::Held).unwrap();
        for x in 40..50 {
            daemon.execute("INSERT INTO t VALUES (?1)", [x]).unwrap();
        }
        drop(daemon);
        let backup = pending.finish().unwrap();
        let m = &backup.manifest;
        assert_eq!(
            m.wal_copied_live,
            Some(before),
            "the log as it was at the start"
        );
        assert!(m.sizes[WAL_FILE] > before, "the rest at the stop: {m:?}");
        // An idle backup has nothing to report.
        let idle = create(&dir, &request("1.8.1")).unwrap();
        assert_eq!(idle.manifest.wal_copied_live, None);
    }

    #[test]
    fn a_main_file_changed_while_it_was_copied_is_copied_again() {
        let (_tmp, dir) = install();
        let mut pending = begin(&dir, &request("1.8.1"), Database::Idle).unwrap();
        // A daemon that did not hold its checkpoints: its write reaches the
        // main file before the log is followed.
        let conn = Connection::open(dir.database()).unwrap();
        conn.execute("INSERT INTO t VALUES (3)", []).unwrap();
        conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
            .unwrap();
        drop(conn);
        pending.follow_wal().unwrap();
        assert!(
            pending.fold.is_none(),
            "a changed main file is not folded into"
        );
        let backup = pending.finish().unwrap();
        assert!(!backup.manifest.files.contains_key(WAL_FILE));
        assert_eq!(count(&backup.path.join(DB_FILE)), 3);
    }

    /// Once its main file is copied, the log is folded into the live
    /// database behind the copy (`fold`'s own tests), and whole at the
    /// end: the next process to open the database has no long log to fold.
    /// Meanwhile nothing restarts the log the backup follows — not even a
    /// process that checkpoints on its own.
    #[test]
    fn a_live_backup_folds_the_log_behind_its_copy_and_whole_at_the_end() {
        let (tmp, dir) = install();
        let daemon = held(&dir);
        for x in 10..60 {
            daemon.execute("INSERT INTO t VALUES (?1)", [x]).unwrap();
        }
        let pending = begin(&dir, &request("1.8.1"), Database::Held).unwrap();
        assert!(pending.fold.is_some());
        let main = || {
            Connection::open_with_flags(
                format!("file:{}?immutable=1", dir.database().display()),
                OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_URI,
            )
            .unwrap()
            .query_row("SELECT count(*) FROM t", [], |r| r.get::<_, i64>(0))
            .unwrap()
        };
        // Nothing was logged past the fold's snapshot while it was copied:
        // folding up to it would reach the log's end unsynced (see `fold`).
        assert_eq!(main(), 2, "the log's end is not folded beside the daemon");
        // A writer would restart the log now, were it not for the snapshot
        // held; a checkpoint (which folds up to it) cannot empty it either.
        let other = Connection::open(dir.database()).unwrap();
        other.busy_timeout(std::time::Duration::ZERO).unwrap();
        for x in 60..70 {
            daemon.execute("INSERT INTO t VALUES (?1)", [x]).unwrap();
            let busy: i64 = other
                .query_row("PRAGMA wal_checkpoint(RESTART)", [], |r| r.get(0))
                .unwrap();
            assert_eq!(busy, 1, "the log is held whole");
            other
                .execute("INSERT INTO t VALUES (?1)", [x + 100])
                .unwrap();
        }
        drop((daemon, other));
        let backup = pending.finish().unwrap();
        assert!(
            backup.manifest.files.contains_key(WAL_FILE),
            "not copied again"
        );
        // `install`'s connection is still open, as another process's would
        // be: SQLite keeps the log, folded whole (below). `fold`'s own tests
        // see it deleted when nothing else uses the database.
        assert_eq!(main(), 72, "and folded whole");
        let check = tmp.path().join("check");
        fs::create_dir_all(&check).unwrap();
        fs::copy(backup.path.join(DB_FILE), check.join("x.db")).unwrap();
        fs::copy(backup.path.join(WAL_FILE), check.join("x.db-wal")).unwrap();
        assert_eq!(count(&check.join("x.db")), 72);
        fs::copy(backup.path.join(DB_FILE), check.join("y.db")).unwrap();
        assert_eq!(count(&check.join("y.db")), 2, "the main file as copied");
    }

    #[test]
    fn an_unfinished_backup_leaves_nothing() {
        let (_tmp, dir) = install();
        let pending = begin(&dir, &request("1.8.1"), Database::Held).unwrap();
        drop(pending);
        let left: Vec<_> = fs::read_dir(dir.backups()).unwrap().collect();
        assert!(left.is_empty(), "{left:?}");
    }

    /// `adopt` moves a folder into `backups/` by a rename; with `backups/` on
    /// another file system (here a tmpfs) it copies, and the backup is the same.
    #[test]
    fn a_folder_is_adopted_across_file_systems_too() {
        let (_tmp, dir) = install();
        let request = Request {
            kind: Kind::RolledBack,
            ..request("1.9.0")
        };
        let adopt_one = |dir: &DataDir| {
            let folder = dir.data().join(".aside");
            fs::create_dir_all(&folder).unwrap();
            fs::copy(dir.database(), folder.join(DB_FILE)).unwrap();
            fs::write(folder.join(WAL_FILE), b"frames").unwrap();
            let made = adopt(dir, &folder, &request).unwrap();
            assert!(!folder.exists());
            assert_eq!(list(dir).unwrap(), vec![made.clone()]);
            for (file, sha) in &made.manifest.files {
                assert_eq!(&sha256_file(&made.path.join(file)).unwrap(), sha, "{file}");
            }
            let name = made.path.file_name().unwrap().to_string_lossy().to_string();
            assert!(name.starts_with("rolled-back-1.9.0-"), "{name}");
            fs::remove_dir_all(&made.path).unwrap();
        };
        adopt_one(&dir);
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped the second half: mounting a tmpfs needs root");
            return;
        }
        let mounted = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=16m,mode=0700", "tmpfs"])
            .arg(dir.backups())
            .status()
            .is_ok_and(|s| s.success());
        if !mounted {
            eprintln!("skipped the second half: mount -t tmpfs failed");
            return;
        }
        let result = std::panic::catch_unwind(|| adopt_one(&dir));
        let _ = std::process::Command::new("umount")
            .arg(dir.backups())
            .status();
        result.unwrap();
    }

    /// A database set aside without a WAL is adopted as it is; a file that
    /// is there but cannot be read fails the adoption (rather than leaving
    /// it out of the backup).
    #[test]
    fn a_folder_without_a_wal_is_adopted_and_an_unreadable_file_refused() {
        let (_tmp, dir) = install();
        let request = Request {
            kind: Kind::RolledBack,
            ..request("1.9.0")
        };
        let folder = dir.data().join(".aside");
        fs::create_dir_all(&folder).unwrap();
        fs::copy(dir.database(), folder.join(DB_FILE)).unwrap();
        let made = adopt(&dir, &folder, &request).unwrap();
        assert_eq!(made.manifest.files.keys().collect::<Vec<_>>(), [DB_FILE]);
        assert!(!made.path.join(WAL_FILE).exists());

        let looped = dir.data().join(".looped");
        fs::create_dir_all(&looped).unwrap();
        fs::copy(dir.database(), looped.join(DB_FILE)).unwrap();
        // A WAL that is a symlink to itself: there, and unreadable (ELOOP).
        std::os::unix::fs::symlink(WAL_FILE, looped.join(WAL_FILE)).unwrap();
        let refused = adopt(&dir, &looped, &request).unwrap_err();
        assert!(
            matches!(&refused, BackupError::Io { path, .. } if path == &looped.join(WAL_FILE)),
            "{refused}"
        );
        assert!(looped.exists(), "left where it was");
        assert_eq!(list(&dir).unwrap(), vec![made]);
    }

    /// Only a move across file systems falls back to copying: a folder that
    /// cannot be moved for another reason (here a mount point: EBUSY) is an
    /// error, and no backup is made of it.
    #[test]
    fn a_folder_that_cannot_be_moved_is_not_copied_instead() {
        let (_tmp, dir) = install();
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped: mounting a tmpfs needs root");
            return;
        }
        let folder = dir.data().join(".aside");
        fs::create_dir_all(&folder).unwrap();
        let mounted = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=16m,mode=0700", "tmpfs"])
            .arg(&folder)
            .status()
            .is_ok_and(|s| s.success());
        if !mounted {
            eprintln!("skipped: mount -t tmpfs failed");
            return;
        }
        let result = std::panic::catch_unwind(|| {
            fs::copy(dir.database(), folder.join(DB_FILE)).unwrap();
            let request = Request {
                kind: Kind::RolledBack,
                ..request("1.9.0")
            };
            let refused = adopt(&dir, &folder, &request).unwrap_err();
            assert!(
                matches!(&refused, BackupError::Io { source, .. }
                    if source.raw_os_error() == Some(libc::EBUSY)),
                "{refused}"
            );
            assert_eq!(list(&dir).unwrap(), vec![], "no backup made");
            assert!(folder.join(DB_FILE).exists(), "left where it was");
        });
        let _ = std::process::Command::new("umount").arg(&folder).status();
        result.unwrap();
    }

    #[test]
    fn a_damaged_database_is_not_backed_up() {
        let (_tmp, dir) = install();
        let conn = Connection::open(dir.database()).unwrap();
        conn.execute_batch(
            "CREATE TABLE big(x); WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 2000)
             INSERT INTO big SELECT hex(randomblob(100)) FROM n;
             PRAGMA wal_checkpoint(TRUNCATE);",
        )
        .unwrap();
        drop(conn);
        // Garbage over a b-tree page in the middle of the file.
        use std::os::unix::fs::FileExt;
        let file = fs::OpenOptions::new()
            .write(true)
            .open(dir.database())
            .unwrap();
        let len = file.metadata().unwrap().len();
        file.write_all_at(&[0xA5; 512], (len / 2) & !4095).unwrap();
        drop(file);
        let err = create(&dir, &request("1.8.1")).unwrap_err();
        assert!(matches!(err, BackupError::Corrupt(_)), "{err}");
        let left: Vec<_> = fs::read_dir(dir.backups()).unwrap().collect();
        assert!(left.is_empty(), "{left:?}");
    }

    #[test]
    fn a_failed_backup_leaves_nothing() {
        let (_tmp, dir) = install();
        for suffix in ["", "-wal", "-shm"] {
            let _ = fs::remove_file(format!("{}{suffix}", dir.database().display()));
        }
        fs::write(dir.database(), b"this is not a database").unwrap();
        let err = create(&dir, &request("1.8.1")).unwrap_err();
        assert!(
            matches!(err, BackupError::Checkpoint(_) | BackupError::Corrupt(_)),
            "{err}"
        );
        let left: Vec<_> = fs::read_dir(dir.backups()).unwrap().collect();
        assert!(left.is_empty(), "{left:?}");
    }
}
