//! Backups of the database and config (SPEC §6 step 3). Made by the launcher
//! before an upgrade or rollback and by the daemon before it migrates at start,
//! so the format is a contract of both.
//!
//! A backup is built in a hidden temp folder and renamed into place only once
//! every file is copied, verified and fsynced: a folder without the `.partial-`
//! prefix is always complete. Backups are ordered by `created_at`, never by
//! folder name (`1.10.0` sorts before `1.9.0` as text).

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use rusqlite::{Connection, OpenFlags};
use serde::{Deserialize, Serialize};

use crate::fsutil::{fsync_dir, sha256_file, write_atomic};
use crate::layout::DataDir;
use crate::time::UtcTime;

/// File name of the manifest inside each backup folder.
pub const MANIFEST: &str = "backup.json";
const DB_FILE: &str = "waiaas.db";
const CONFIG_FILE: &str = "config.toml";
const PARTIAL_PREFIX: &str = ".partial-";

/// Why a backup was made; the folder name starts with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    PreUpgrade,
    PreMigrate,
    PreRollback,
}

impl Kind {
    fn prefix(self) -> &'static str {
        match self {
            Kind::PreUpgrade => "pre-upgrade",
            Kind::PreMigrate => "pre-migrate",
            Kind::PreRollback => "pre-rollback",
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
    /// RFC 3339 UTC with milliseconds.
    pub created_at: String,
    /// SHA-256 of each file in the folder, by file name.
    pub files: BTreeMap<String, String>,
}

impl Manifest {
    /// When the backup was taken; unparsable dates sort first (oldest).
    pub fn created(&self) -> UtcTime {
        UtcTime::parse_rfc3339(&self.created_at).unwrap_or(UtcTime::from_unix_ms(0))
    }
}

/// A complete backup on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backup {
    pub path: PathBuf,
    pub manifest: Manifest,
}

/// What a backup is of.
pub struct Request<'a> {
    pub kind: Kind,
    pub from_version: &'a str,
    pub to_version: &'a str,
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
    #[error("the copied database failed its integrity check: {0}")]
    Corrupt(String),
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> BackupError + '_ {
    move |source| BackupError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Backs up `data/waiaas.db` (after a WAL checkpoint, verified with
/// `PRAGMA quick_check`) and `config.toml` (if present) into
/// `backups/<kind>-<from>-<yyyymmddThhmmssZ>/` with a `backup.json`.
pub fn create(dir: &DataDir, request: &Request<'_>) -> Result<Backup, BackupError> {
    let root = dir.backups();
    fs::create_dir_all(&root).map_err(io_err(&root))?;
    let now = UtcTime::now();
    let base = format!(
        "{}-{}-{}",
        request.kind.prefix(),
        request.from_version,
        now.compact()
    );
    let name = (1..)
        .map(|n| {
            if n == 1 {
                base.clone()
            } else {
                format!("{base}-{n}")
            }
        })
        .find(|name| !root.join(name).exists())
        .expect("an unused name exists");
    let partial = root.join(format!("{PARTIAL_PREFIX}{name}"));
    let result = fill(dir, &partial, request, now).and_then(|manifest| {
        let done = root.join(&name);
        fs::rename(&partial, &done).map_err(io_err(&done))?;
        fsync_dir(&root).map_err(io_err(&root))?;
        Ok(Backup {
            path: done,
            manifest,
        })
    });
    if result.is_err() {
        // A full disk must not also leave a half-written folder behind.
        let _ = fs::remove_dir_all(&partial);
    }
    result
}

fn fill(
    dir: &DataDir,
    partial: &Path,
    request: &Request<'_>,
    now: UtcTime,
) -> Result<Manifest, BackupError> {
    // Backups hold the whole database: the owner's alone (0700 / 0600).
    fs::DirBuilder::new()
        .mode(0o700)
        .create(partial)
        .map_err(io_err(partial))?;
    let db = dir.database();
    let mut files = BTreeMap::new();
    // An installation never started has no database yet: the backup then
    // holds the config alone, and restoring it removes any database.
    if db.exists() {
        checkpoint(&db)?;
        let db_copy = partial.join(DB_FILE);
        copy_synced(&db, &db_copy)?;
        quick_check(&db_copy)?;
        files.insert(
            DB_FILE.to_string(),
            sha256_file(&db_copy).map_err(io_err(&db_copy))?,
        );
    }
    let config = dir.config();
    if config.exists() {
        let copy = partial.join(CONFIG_FILE);
        copy_synced(&config, &copy)?;
        files.insert(
            CONFIG_FILE.to_string(),
            sha256_file(&copy).map_err(io_err(&copy))?,
        );
    }
    let manifest = Manifest {
        kind: request.kind,
        from_version: request.from_version.to_string(),
        to_version: request.to_version.to_string(),
        schema_version: request.schema_version,
        created_at: now.rfc3339(),
        files,
    };
    let json = serde_json::to_vec_pretty(&manifest).expect("a manifest serialises");
    let path = partial.join(MANIFEST);
    write_atomic(&path, &json, 0o600).map_err(io_err(&path))?;
    Ok(manifest)
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

/// `fs::copy` (copy_file_range: a reflink where the file system supports it), then fsync.
fn copy_synced(from: &Path, to: &Path) -> Result<(), BackupError> {
    use std::os::unix::fs::PermissionsExt;
    fs::copy(from, to).map_err(io_err(from))?;
    fs::set_permissions(to, fs::Permissions::from_mode(0o600)).map_err(io_err(to))?;
    fs::File::open(to)
        .and_then(|f| f.sync_all())
        .map_err(io_err(to))
}

fn quick_check(db: &Path) -> Result<(), BackupError> {
    // immutable=1: read the copy as a plain file, creating no -wal/-shm beside it.
    let uri = format!("file:{}?immutable=1", db.display());
    let conn = Connection::open_with_flags(
        &uri,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_URI,
    )
    .map_err(|e| BackupError::Corrupt(e.to_string()))?;
    let verdict: String = conn
        .query_row("PRAGMA quick_check", [], |row| row.get(0))
        .map_err(|e| BackupError::Corrupt(e.to_string()))?;
    if verdict == "ok" {
        Ok(())
    } else {
        Err(BackupError::Corrupt(verdict))
    }
}

/// Every complete backup, oldest first by `created_at`. Folders without a
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
    backups.sort_by_key(|b| b.manifest.created());
    Ok(backups)
}

/// Deletes all but the `keep` newest backups (by `created_at`) and any
/// `.partial-` leftovers of an interrupted backup; returns what was deleted.
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
                fs::remove_dir_all(&path)?;
                removed.push(path);
            }
        }
    }
    let backups = list(dir)?;
    let excess = backups.len().saturating_sub(keep);
    for backup in backups.into_iter().take(excess) {
        fs::remove_dir_all(&backup.path)?;
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

    fn request(from: &str) -> Request<'_> {
        Request {
            kind: Kind::PreUpgrade,
            from_version: from,
            to_version: "9.9.9",
            schema_version: 16,
        }
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

    #[test]
    fn listing_and_pruning_go_by_created_at_not_name() {
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
                created_at: at.into(),
                files: BTreeMap::new(),
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
