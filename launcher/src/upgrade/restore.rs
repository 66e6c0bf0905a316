//! Putting a backup back: the database and config, verified against the
//! backup's manifest first, with the database's stale `-wal`/`-shm` removed
//! *before* the restored file takes its place (a leftover WAL would be
//! replayed over the restored database — SPEC §11). The database a restore
//! replaces is set aside, its WAL with it, and kept as a `rolled-back-…`
//! backup ([`keep_replaced`]): a net for writes a rollback would drop.

use std::io;
use std::path::{Path, PathBuf};

use waiaas_shared::backup::{
    self, Backup, CONFIG_FILE, DB_FILE, Kind, MANIFEST, Manifest, Request, WAL_FILE,
};
use waiaas_shared::fsutil::{self, CopyError, fsync_dir, sha256_file};
use waiaas_shared::layout::DataDir;

#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error("the backup {0} has no readable backup.json")]
    NoManifest(PathBuf),
    #[error("the backup's {file} does not match its recorded checksum; the backup is damaged")]
    Damaged { file: String },
    #[error(
        "the backup's backup.json lists `{file}`, which no backup holds; the backup is not usable"
    )]
    Unknown { file: String },
    #[error("restoring {path} failed: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

fn io_at(path: &Path) -> impl FnOnce(io::Error) -> RestoreError + '_ {
    move |source| RestoreError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Reads the backup at `path`.
pub fn open(path: &Path) -> Result<Backup, RestoreError> {
    let manifest: Manifest = std::fs::read(path.join(MANIFEST))
        .ok()
        .and_then(|bytes| serde_json::from_slice(&bytes).ok())
        .ok_or_else(|| RestoreError::NoManifest(path.to_path_buf()))?;
    Ok(Backup {
        path: path.to_path_buf(),
        manifest,
    })
}

/// The trust settings of `[update]`: a rollback never brings back a key or a
/// registry the config in use no longer has (one removed after a key
/// compromise must stay removed).
const TRUST_SETTINGS: [&str; 3] = ["trusted_keys", "registry", "allow_insecure_registry"];

/// What a restore did beyond copying files back.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Restored {
    /// `[update]` settings kept from the config in use instead of the backup's.
    pub kept: Vec<&'static str>,
}

/// Restores `backup` into `dir`, setting the database in use aside as
/// `replaced` ([`put_back`]). Idempotent: running it again after a crash
/// part-way gives the same result.
pub fn restore(
    dir: &DataDir,
    backup: &Backup,
    replaced: &Request,
) -> Result<Restored, RestoreError> {
    put_back(dir, stage(dir, backup, fsutil::Pace::Alone)?, replaced)
}

/// A backup's database copied beside its place in `data/` (and its config
/// checked), each file verified against `backup.json` as it is read — one
/// read — so that [`put_back`] is only renames. Staging does not touch the
/// database in use, so it can run while the daemon serves. Dropped without
/// being put back, the staged copies are removed.
#[derive(Debug)]
pub struct Staged {
    backup: Backup,
    /// `.waiaas.db.restore` and, for a live backup whose WAL could not be
    /// folded into it, `.waiaas.db.restore-wal`.
    files: Vec<(PathBuf, PathBuf)>,
}

impl Drop for Staged {
    fn drop(&mut self) {
        for (staged, _) in &self.files {
            let _ = std::fs::remove_file(staged);
        }
    }
}

/// Stages `backup` for [`put_back`], its copy `pace`d for a daemon serving
/// beside it or for none; refuses a backup whose `backup.json` lists
/// anything but the files a backup holds, or whose files do not match it.
pub fn stage(dir: &DataDir, backup: &Backup, pace: fsutil::Pace) -> Result<Staged, RestoreError> {
    // backup.json is local state: only the files a backup holds, never a path.
    if let Some(file) = backup
        .manifest
        .files
        .keys()
        .find(|file| !backup::FILES.contains(&file.as_str()))
    {
        return Err(RestoreError::Unknown { file: file.clone() });
    }
    let mut staged = Staged {
        backup: backup.clone(),
        files: Vec::new(),
    };
    let data = dir.data();
    for (file, target) in [(DB_FILE, dir.database()), (WAL_FILE, dir.wal())] {
        let Some(sha) = backup.manifest.files.get(file) else {
            continue;
        };
        std::fs::create_dir_all(&data).map_err(io_at(&data))?;
        let copy = staged_path(dir, file);
        remove_if_present(&copy)?;
        let source = backup.path.join(file);
        // Listed before the copy, so Drop removes a partial one too.
        staged.files.push((copy.clone(), target));
        let copied = match fsutil::copy_hashed(&source, &copy, 0o600, pace) {
            Ok(copied) => copied,
            Err(CopyError::Read(e)) => return Err(io_at(&source)(e)),
            Err(CopyError::Write(e)) => return Err(io_at(&copy)(e)),
        };
        if copied.sha256 != *sha {
            return Err(RestoreError::Damaged {
                file: file.to_string(),
            });
        }
    }
    fold_staged(dir, &mut staged);
    if let Some(sha) = backup.manifest.files.get(CONFIG_FILE) {
        let path = backup.path.join(CONFIG_FILE);
        if sha256_file(&path).map_err(io_at(&path))? != *sha {
            return Err(RestoreError::Damaged {
                file: CONFIG_FILE.to_string(),
            });
        }
    }
    Ok(staged)
}

/// Folds a staged live backup's WAL into its staged main file, while the
/// daemon still serves: the restored database then has no log for the
/// downtime to read. Only a speed-up: a log that could not be folded is put
/// back with the main file, as it was.
fn fold_staged(dir: &DataDir, staged: &mut Staged) {
    let (main, log) = (staged_path(dir, DB_FILE), staged_path(dir, WAL_FILE));
    if !staged.files.iter().any(|(copy, _)| *copy == log) {
        return;
    }
    match backup::fold_copy(&main) {
        Ok(true) => staged.files.retain(|(copy, _)| *copy != log),
        Ok(false) => tracing::warn!("{} is in use: its WAL is restored as it is", main.display()),
        Err(e) => tracing::warn!(
            "cannot fold the WAL of {}: {e}; restoring it as it is",
            main.display()
        ),
    }
}

/// Where [`stage`] copies a backup's `file`: its WAL beside its main file
/// as SQLite pairs them (`-wal`), so that it can be folded there.
fn staged_path(dir: &DataDir, file: &str) -> PathBuf {
    let main = dir.data().join(format!(".{DB_FILE}.restore"));
    match file.strip_prefix(DB_FILE) {
        Some(suffix) => PathBuf::from(format!("{}{suffix}", main.display())),
        None => dir.data().join(format!(".{file}.restore")),
    }
}

/// Removes the copies a restore interrupted by a crash left staged.
pub fn discard_staged(dir: &DataDir) {
    let index = staged_path(dir, &format!("{DB_FILE}-shm"));
    for path in [staged_path(dir, DB_FILE), staged_path(dir, WAL_FILE), index] {
        let _ = remove_if_present(&path);
    }
}

/// Folders of `data/` where [`put_back`] sets a replaced database aside
/// (renames on the database's own file system, so it is quick), each until
/// [`keep_replaced`] makes it a backup.
const ASIDE_PREFIX: &str = ".rolled-back-";
/// In such a folder: the [`Request`] its backup is to be made for.
const ASIDE_REQUEST: &str = "request.json";

/// The folders [`put_back`] set databases aside in.
fn asides(dir: &DataDir) -> Vec<PathBuf> {
    let mut folders: Vec<PathBuf> = std::fs::read_dir(dir.data())
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(ASIDE_PREFIX))
        .map(|e| e.path())
        .collect();
    folders.sort();
    folders
}

/// Moves the database in use, then its WAL (which holds writes not yet in
/// the main file), into a new folder of [`asides`]. A crash between the two
/// renames leaves a WAL without its main file in `data/`: run again, this
/// moves it in beside the main file it belongs to.
fn set_aside(dir: &DataDir, replaced: &Request) -> Result<(), RestoreError> {
    use std::os::unix::fs::DirBuilderExt;
    let (data, database, wal) = (dir.data(), dir.database(), dir.wal());
    let wal_written = wal.metadata().is_ok_and(|m| m.len() > 0);
    let folder = if database.exists() {
        let folder = (1..)
            .map(|n| data.join(format!("{ASIDE_PREFIX}{n}")))
            .find(|f| !f.exists())
            .expect("an unused name exists");
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&folder)
            .map_err(io_at(&folder))?;
        let request = serde_json::to_vec(replaced).expect("a request serialises");
        write_synced(&folder.join(ASIDE_REQUEST), &request)?;
        let target = folder.join(DB_FILE);
        std::fs::rename(&database, &target).map_err(io_at(&target))?;
        folder
    } else {
        let interrupted = asides(dir)
            .into_iter()
            .find(|f| f.join(DB_FILE).exists() && !f.join(WAL_FILE).exists());
        match interrupted {
            Some(folder) if wal_written => folder,
            _ => return Ok(()),
        }
    };
    if wal_written {
        let target = folder.join(WAL_FILE);
        std::fs::rename(&wal, &target).map_err(io_at(&target))?;
    }
    fsync_dir(&folder).map_err(io_at(&folder))?;
    fsync_dir(&data).map_err(io_at(&data))
}

/// Makes each database [`put_back`] set aside a `rolled-back-…` backup
/// ([`backup::adopt`]); returns their folders. Hashing a large database
/// takes seconds: call it once the daemon serves. One that cannot be made a
/// backup stays where it is, and is tried again next time.
pub fn keep_replaced(dir: &DataDir) -> Vec<PathBuf> {
    let mut kept = Vec::new();
    for folder in asides(dir) {
        if !folder.join(DB_FILE).exists() {
            // Made, but a crash came before anything was moved in.
            let _ = std::fs::remove_dir_all(&folder);
            continue;
        }
        let request = std::fs::read(folder.join(ASIDE_REQUEST))
            .ok()
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
            .unwrap_or_else(|| Request {
                kind: Kind::RolledBack,
                from_version: "unknown".into(),
                to_version: "unknown".into(),
                schema_version: 0,
            });
        match backup::adopt(dir, &folder, &request) {
            Ok(made) => {
                let _ = std::fs::remove_file(made.path.join(ASIDE_REQUEST));
                kept.push(made.path);
            }
            Err(e) => tracing::warn!(
                "the database a rollback replaced stays in {} (not yet a backup: {e})",
                folder.display()
            ),
        }
    }
    kept
}

/// Puts a staged backup in place of the database and config in use; the
/// database in use is set aside as `replaced` (see [`keep_replaced`]).
pub fn put_back(
    dir: &DataDir,
    mut staged: Staged,
    replaced: &Request,
) -> Result<Restored, RestoreError> {
    let mut restored = Restored::default();
    let database = dir.database();
    let data = dir.data();
    // Set aside with its WAL before anything else: a leftover WAL would be
    // replayed over the restored database. A backup without a database
    // (taken before the first start) records "no database", so any database
    // goes too. A crash from here on has the journal put the backup back again.
    set_aside(dir, replaced)?;
    remove_database_sidecars(&database)?;
    // The main file before its WAL: a crash between leaves an older but
    // whole database, and the journal has the restore run again.
    for (copy, target) in std::mem::take(&mut staged.files) {
        std::fs::rename(&copy, &target).map_err(io_at(&target))?;
    }
    if data.exists() {
        fsync_dir(&data).map_err(io_at(&data))?;
    }
    if staged.backup.manifest.files.contains_key(CONFIG_FILE) {
        let target = dir.config();
        let copy = dir.root().join(format!(".{CONFIG_FILE}.restore"));
        let source = staged.backup.path.join(CONFIG_FILE);
        let saved = std::fs::read_to_string(&source).map_err(io_at(&source))?;
        let in_use = std::fs::read_to_string(&target).ok();
        let (text, kept) = keep_trust_settings(&saved, in_use.as_deref());
        restored.kept = kept;
        write_synced(&copy, text.as_bytes())?;
        std::fs::rename(&copy, &target).map_err(io_at(&target))?;
        fsync_dir(dir.root()).map_err(io_at(dir.root()))?;
    }
    Ok(restored)
}

fn write_synced(path: &Path, bytes: &[u8]) -> Result<(), RestoreError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(io_at(path))?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(io_at(path))
}

/// The backup's config with [`TRUST_SETTINGS`] as the config in use has
/// them, and which of them that changed. Unchanged (byte for byte) when they
/// agree, or when either file does not parse (a broken config in use is what
/// a rollback is for; a backup's own text is then restored as it was).
fn keep_trust_settings(saved: &str, in_use: Option<&str>) -> (String, Vec<&'static str>) {
    let parse = |text: &str| text.parse::<toml::Table>().ok();
    let (Some(mut table), Some(current)) = (parse(saved), in_use.and_then(parse)) else {
        return (saved.to_string(), Vec::new());
    };
    let update = |t: &toml::Table, key: &str| {
        t.get("update")
            .and_then(toml::Value::as_table)
            .and_then(|u| u.get(key))
            .cloned()
    };
    let kept: Vec<&'static str> = TRUST_SETTINGS
        .into_iter()
        .filter(|key| update(&table, key) != update(&current, key))
        .collect();
    if kept.is_empty() {
        return (saved.to_string(), kept);
    }
    let section = table
        .entry("update")
        .or_insert_with(|| toml::Value::Table(toml::Table::new()));
    if let Some(section) = section.as_table_mut() {
        for key in &kept {
            match update(&current, key) {
                Some(value) => section.insert((*key).to_string(), value),
                None => section.remove(*key),
            };
        }
    }
    let text = format!(
        "# Restored from a backup by a rollback; [update] {} kept from the config in use.\n{}",
        kept.join(", "),
        toml::to_string(&table).unwrap_or_else(|_| saved.to_string())
    );
    (text, kept)
}

/// Removes the database's `-wal`, `-shm` and `-journal` files.
fn remove_database_sidecars(database: &Path) -> Result<(), RestoreError> {
    for suffix in ["-wal", "-shm", "-journal"] {
        remove_if_present(&PathBuf::from(format!("{}{suffix}", database.display())))?;
    }
    Ok(())
}

fn remove_if_present(path: &Path) -> Result<(), RestoreError> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_at(path)(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn replaced() -> Request {
        Request {
            kind: Kind::RolledBack,
            from_version: "1.9.0".into(),
            to_version: "1.8.1".into(),
            schema_version: 17,
        }
    }

    fn rows(db: &Path) -> i64 {
        rusqlite::Connection::open(db)
            .unwrap()
            .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
            .unwrap()
    }

    #[test]
    fn a_live_backup_is_restored_with_its_wal_over_a_newer_database_and_wal() {
        use rusqlite::Connection;
        use waiaas_shared::backup::{Database, Kind, Request};
        let tmp = tempfile::tempdir().unwrap();
        let dir = DataDir::new(tmp.path());
        std::fs::create_dir_all(dir.data()).unwrap();
        let daemon = Connection::open(dir.database()).unwrap();
        daemon.pragma_update(None, "journal_mode", "WAL").unwrap();
        daemon
            .execute_batch("CREATE TABLE t(x); INSERT INTO t VALUES (1);")
            .unwrap();
        daemon
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
            .unwrap();
        daemon.pragma_update(None, "wal_autocheckpoint", 0).unwrap();
        daemon
            .set_db_config(
                rusqlite::config::DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE,
                true,
            )
            .unwrap();
        let request = Request {
            kind: Kind::PreUpgrade,
            from_version: "1.8.1".into(),
            to_version: "1.9.0".into(),
            schema_version: 16,
        };
        let pending = backup::begin(&dir, &request, Database::Held).unwrap();
        daemon.execute("INSERT INTO t VALUES (2)", []).unwrap();
        drop(daemon);
        let made = pending.finish().unwrap();
        assert!(made.manifest.files.contains_key(WAL_FILE));
        // What an upgrade leaves: a migrated database with a WAL of its own.
        let newer = Connection::open(dir.database()).unwrap();
        newer
            .execute_batch("INSERT INTO t VALUES (3), (4); CREATE TABLE u(y);")
            .unwrap();
        newer.pragma_update(None, "wal_autocheckpoint", 0).unwrap();
        newer
            .set_db_config(
                rusqlite::config::DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE,
                true,
            )
            .unwrap();
        drop(newer);
        let staged = stage(&dir, &open(&made.path).unwrap(), fsutil::Pace::Alone).unwrap();
        // Its WAL folded into the staged main file, while a daemon would
        // still serve: the downtime has no log to read.
        assert_eq!(staged.files.len(), 1, "{:?}", staged.files);
        assert!(!staged_path(&dir, WAL_FILE).exists());
        put_back(&dir, staged, &replaced()).unwrap();
        assert!(!dir.wal().exists(), "no log restored");
        assert_eq!(
            rows(&dir.database()),
            2,
            "the write in the backup's WAL is back"
        );
        let tables: i64 = rusqlite::Connection::open(dir.database())
            .unwrap()
            .query_row(
                "SELECT count(*) FROM sqlite_master WHERE name = 'u'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(
            tables, 0,
            "nothing of the newer database's WAL was replayed"
        );
    }

    /// A database whose last writes are in its WAL (a daemon killed, or
    /// one that held its checkpoints): `x` = 1..=`rows`.
    fn database_with_wal(path: &Path, rows: i64) {
        let conn = rusqlite::Connection::open(path).unwrap();
        conn.pragma_update(None, "journal_mode", "WAL").unwrap();
        conn.execute_batch("CREATE TABLE t(x);").unwrap();
        conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
            .unwrap();
        conn.pragma_update(None, "wal_autocheckpoint", 0).unwrap();
        conn.set_db_config(
            rusqlite::config::DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE,
            true,
        )
        .unwrap();
        for x in 1..=rows {
            conn.execute("INSERT INTO t VALUES (?1)", [x]).unwrap();
        }
    }

    /// What a restore replaces, WAL included, becomes a `rolled-back-…`
    /// backup whose files match its manifest and hold every row; a crash
    /// between setting aside the main file and its WAL loses neither.
    #[test]
    fn the_replaced_database_and_its_wal_are_kept_as_a_backup() {
        use waiaas_shared::backup::{Database, Request};
        let tmp = tempfile::tempdir().unwrap();
        let dir = DataDir::new(tmp.path());
        std::fs::create_dir_all(dir.data()).unwrap();
        rusqlite::Connection::open(dir.database())
            .unwrap()
            .execute_batch("CREATE TABLE t(x); INSERT INTO t VALUES (0);")
            .unwrap();
        let request = Request {
            kind: Kind::PreUpgrade,
            from_version: "1.8.1".into(),
            to_version: "1.9.0".into(),
            schema_version: 16,
        };
        let made = backup::begin(&dir, &request, Database::Idle)
            .unwrap()
            .finish()
            .unwrap();
        let chosen = open(&made.path).unwrap();
        for file in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{file}", dir.database().display()));
        }
        database_with_wal(&dir.database(), 30);
        assert!(dir.wal().metadata().unwrap().len() > 0);

        // A crash after the main file was set aside, before its WAL was.
        set_aside(&dir, &replaced()).unwrap_or_else(|e| panic!("{e}"));
        let folder = asides(&dir).pop().unwrap();
        std::fs::rename(folder.join(WAL_FILE), dir.wal()).unwrap();
        // The journal has the restore run again.
        restore(&dir, &chosen, &replaced()).unwrap();
        assert_eq!(rows(&dir.database()), 1, "the backup is restored");
        assert_eq!(asides(&dir).len(), 1, "{:?}", asides(&dir));

        let kept = keep_replaced(&dir);
        assert_eq!(kept.len(), 1, "{kept:?}");
        assert!(asides(&dir).is_empty());
        let name = kept[0].file_name().unwrap().to_string_lossy().into_owned();
        assert!(name.starts_with("rolled-back-1.9.0-"), "{name}");
        let listed = backup::list(&dir).unwrap();
        let backup = listed.iter().find(|b| b.path == kept[0]).expect("listed");
        assert_eq!(backup.manifest.kind, Kind::RolledBack);
        assert_eq!(backup.manifest.to_version, "1.8.1");
        let files: Vec<&str> = backup.manifest.files.keys().map(String::as_str).collect();
        assert_eq!(files, [DB_FILE, WAL_FILE]);
        // It restores like any backup: the 30 rows, from its WAL too.
        let other = DataDir::new(tmp.path().join("other"));
        restore(&other, backup, &replaced()).unwrap();
        assert_eq!(rows(&other.database()), 30);
    }

    #[test]
    fn a_damaged_backup_changes_nothing_and_leaves_no_staged_copy() {
        use waiaas_shared::backup::{Kind, Request};
        let tmp = tempfile::tempdir().unwrap();
        let dir = DataDir::new(tmp.path());
        std::fs::create_dir_all(dir.data()).unwrap();
        let conn = rusqlite::Connection::open(dir.database()).unwrap();
        conn.execute_batch("CREATE TABLE t(x); INSERT INTO t VALUES (1);")
            .unwrap();
        drop(conn);
        let request = Request {
            kind: Kind::PreUpgrade,
            from_version: "1.8.1".into(),
            to_version: "1.9.0".into(),
            schema_version: 16,
        };
        let made = backup::create(&dir, &request).unwrap();
        let copy = made.path.join(DB_FILE);
        let mut bytes = std::fs::read(&copy).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        std::fs::write(&copy, bytes).unwrap();
        let before = std::fs::read(dir.database()).unwrap();
        let e = restore(&dir, &open(&made.path).unwrap(), &replaced()).unwrap_err();
        assert!(matches!(e, RestoreError::Damaged { .. }), "{e}");
        assert_eq!(std::fs::read(dir.database()).unwrap(), before);
        let names: Vec<String> = std::fs::read_dir(dir.data())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["waiaas.db"], "no staged copy is left");
    }

    /// A backup of a database and config, made by `backup::create`.
    fn backed_up(dir: &DataDir) -> Backup {
        use waiaas_shared::backup::Request;
        std::fs::create_dir_all(dir.data()).unwrap();
        rusqlite::Connection::open(dir.database())
            .unwrap()
            .execute_batch("CREATE TABLE t(x); INSERT INTO t VALUES (1);")
            .unwrap();
        std::fs::write(dir.config(), "[daemon]\nport = 3100\n").unwrap();
        let request = Request {
            kind: Kind::PreUpgrade,
            from_version: "1.8.1".into(),
            to_version: "1.9.0".into(),
            schema_version: 16,
        };
        backup::create(dir, &request).unwrap()
    }

    #[test]
    fn a_backup_s_config_is_checked_before_anything_is_put_back() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = DataDir::new(tmp.path());
        let made = backed_up(&dir);
        drop(stage(&dir, &open(&made.path).unwrap(), fsutil::Pace::Alone).unwrap());
        std::fs::write(made.path.join(CONFIG_FILE), "[daemon]\nport = 1\n").unwrap();
        let e = stage(&dir, &open(&made.path).unwrap(), fsutil::Pace::Alone).unwrap_err();
        assert!(
            matches!(&e, RestoreError::Damaged { file } if file == CONFIG_FILE),
            "{e}"
        );
    }

    /// A restore interrupted by a crash leaves its staged copies: they are
    /// removed before anything else.
    #[test]
    fn staged_copies_a_crash_left_are_discarded() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = DataDir::new(tmp.path());
        let made = backed_up(&dir);
        let staged = stage(&dir, &open(&made.path).unwrap(), fsutil::Pace::Alone).unwrap();
        assert!(
            !dir.data().join(waiaas_shared::trash::FOLDER).exists(),
            "a backup without a WAL has no log to fold"
        );
        std::mem::forget(staged);
        assert!(staged_path(&dir, DB_FILE).exists());
        std::fs::write(staged_path(&dir, WAL_FILE), "frames").unwrap();
        discard_staged(&dir);
        assert!(!staged_path(&dir, DB_FILE).exists());
        assert!(!staged_path(&dir, WAL_FILE).exists());
    }

    /// An empty WAL holds no write: it is removed with the sidecars, not
    /// kept with the replaced database.
    #[test]
    fn an_empty_wal_is_not_kept_with_the_replaced_database() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = DataDir::new(tmp.path());
        let made = backed_up(&dir);
        std::fs::write(dir.wal(), "").unwrap();
        restore(&dir, &open(&made.path).unwrap(), &replaced()).unwrap();
        let folder = asides(&dir)
            .pop()
            .expect("the replaced database is set aside");
        assert!(folder.join(DB_FILE).exists());
        assert!(!folder.join(WAL_FILE).exists());
        assert!(!dir.wal().exists());
        // A sidecar that cannot be removed fails the restore (it would be
        // read with the restored database).
        let shm = dir.data().join(format!("{DB_FILE}-shm"));
        std::fs::create_dir(&shm).unwrap();
        let e = restore(&dir, &open(&made.path).unwrap(), &replaced()).unwrap_err();
        assert!(
            matches!(&e, RestoreError::Io { path, .. } if *path == shm),
            "{e}"
        );
    }

    /// Run again after a crash between its two renames, `set_aside` moves the
    /// WAL in beside the main file it belongs to: the folder holding a main
    /// file and no WAL, never an earlier complete one.
    #[test]
    fn a_wal_left_behind_joins_the_folder_missing_it() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = DataDir::new(tmp.path());
        let (complete, interrupted) = (
            dir.data().join(format!("{ASIDE_PREFIX}1")),
            dir.data().join(format!("{ASIDE_PREFIX}2")),
        );
        for folder in [&complete, &interrupted] {
            std::fs::create_dir_all(folder).unwrap();
            std::fs::write(folder.join(DB_FILE), "main").unwrap();
        }
        std::fs::write(complete.join(WAL_FILE), "earlier frames").unwrap();
        std::fs::write(dir.wal(), "frames").unwrap();
        set_aside(&dir, &replaced()).unwrap();
        assert_eq!(
            std::fs::read(interrupted.join(WAL_FILE)).unwrap(),
            b"frames"
        );
        assert_eq!(
            std::fs::read(complete.join(WAL_FILE)).unwrap(),
            b"earlier frames"
        );
        assert!(!dir.wal().exists());
    }

    #[test]
    fn a_backup_listing_a_path_is_refused_before_anything_is_read() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = DataDir::new(tmp.path().join("data"));
        let mut files = std::collections::BTreeMap::new();
        files.insert("../../etc/passwd".to_string(), "00".to_string());
        let backup = Backup {
            path: tmp.path().join("backups/pre-upgrade-1.8.1-x"),
            manifest: Manifest {
                kind: waiaas_shared::backup::Kind::PreUpgrade,
                from_version: "1.8.1".into(),
                to_version: "1.9.0".into(),
                schema_version: 16,
                sequence: None,
                created_at: "2026-01-01T00:00:00.000Z".into(),
                files,
                sizes: Default::default(),
                wal_copied_live: None,
            },
        };
        let e = restore(&dir, &backup, &replaced()).unwrap_err();
        assert!(matches!(e, RestoreError::Unknown { .. }), "{e}");
    }

    #[test]
    fn a_rollback_never_brings_back_a_removed_key_or_registry() {
        let saved = "[daemon]\nport = 3100\n\n[update]\nregistry = \"https://old.example/\"\n\
                     trusted_keys = [\"RWOLD\", \"RWNEW\"]\nkeep_backups = 3\n";
        let in_use = "[daemon]\nport = 4000\n\n[update]\ntrusted_keys = [\"RWNEW\"]\n";
        let (text, kept) = keep_trust_settings(saved, Some(in_use));
        assert_eq!(kept, ["trusted_keys", "registry"]);
        let table: toml::Table = text.parse().unwrap();
        assert_eq!(
            table["daemon"]["port"].as_integer(),
            Some(3100),
            "the rest is the backup's"
        );
        assert_eq!(table["update"]["keep_backups"].as_integer(), Some(3));
        assert_eq!(table["update"]["trusted_keys"].as_array().unwrap().len(), 1);
        assert!(
            table["update"].get("registry").is_none(),
            "the removed registry stays removed"
        );
        // Agreeing settings, or a config that does not parse: restored byte for byte.
        assert_eq!(
            keep_trust_settings(saved, Some(saved)),
            (saved.to_string(), vec![])
        );
        assert_eq!(
            keep_trust_settings(saved, Some("[[[")),
            (saved.to_string(), vec![])
        );
    }
}
