//! Putting a backup back: the database and config, verified against the
//! backup's manifest first, with the database's stale `-wal`/`-shm` removed
//! *before* the restored file takes its place (a leftover WAL would be
//! replayed over the restored database — SPEC §11).

use std::io;
use std::path::{Path, PathBuf};

use waiaas_shared::backup::{Backup, MANIFEST, Manifest};
use waiaas_shared::fsutil::{fsync_dir, sha256_file};
use waiaas_shared::layout::DataDir;

#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error("the backup {0} has no readable backup.json")]
    NoManifest(PathBuf),
    #[error("the backup's {file} does not match its recorded checksum; the backup is damaged")]
    Damaged { file: String },
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

/// Restores `backup` into `dir`. Idempotent: running it again after a crash
/// part-way gives the same result.
pub fn restore(dir: &DataDir, backup: &Backup) -> Result<(), RestoreError> {
    for (file, sha) in &backup.manifest.files {
        let path = backup.path.join(file);
        if sha256_file(&path).map_err(io_at(&path))? != *sha {
            return Err(RestoreError::Damaged { file: file.clone() });
        }
    }
    for (file, target) in [("waiaas.db", dir.database()), ("config.toml", dir.config())] {
        let parent = target.parent().unwrap_or(dir.root()).to_path_buf();
        if !backup.manifest.files.contains_key(file) {
            // A backup taken before the first start has no database: the
            // state it records is "no database", so any database goes.
            if file == "waiaas.db" {
                remove_database_sidecars(&target)?;
                remove_if_present(&target)?;
                if parent.exists() {
                    fsync_dir(&parent).map_err(io_at(&parent))?;
                }
            }
            continue;
        }
        std::fs::create_dir_all(&parent).map_err(io_at(&parent))?;
        let staged = parent.join(format!(".{file}.restore"));
        std::fs::copy(backup.path.join(file), &staged).map_err(io_at(&staged))?;
        std::fs::File::open(&staged)
            .and_then(|f| f.sync_all())
            .map_err(io_at(&staged))?;
        if file == "waiaas.db" {
            remove_database_sidecars(&target)?;
        }
        std::fs::rename(&staged, &target).map_err(io_at(&target))?;
        fsync_dir(&parent).map_err(io_at(&parent))?;
    }
    Ok(())
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
