//! Files deleted later, away from any downtime. Freeing a large file's
//! blocks takes time: about 0.3 ms per MiB on this project's machines, whose
//! file system is mounted with `discard` and trims each block as it is freed.
//! A window that emptied a 470 MB log (the writes made during a 4 GiB live
//! copy) waited 140–190 ms for it, and one that pruned a 4 GiB backup would
//! wait over a second.
//!
//! So a file or folder is renamed (quick) into the `.trash` folder beside it,
//! on the same file system, and [`empty`] deletes what is there once the
//! daemon serves again, shrinking each large file a step at a time so that
//! the daemon's own writes are never queued behind one long trim. A file
//! SQLite deletes itself (a log at its last close) gets a second link there
//! first ([`link`]): SQLite's unlink then frees nothing.

use std::fs::{self, OpenOptions};
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The folder, in each folder that has one.
pub const FOLDER: &str = ".trash";

/// How much one step of [`empty`] frees of a file: about 10 ms of trimming.
const STEP: u64 = 32 << 20;
/// The pause between steps, for the daemon's writes to reach the disk.
const PAUSE: Duration = Duration::from_millis(10);
/// The most folders [`put`] tries for a free name.
const NAMES: u32 = 1000;

/// Moves `path` (a file or a folder) into the `.trash` folder beside it.
pub fn put(path: &Path) -> io::Result<PathBuf> {
    let name = name(path)?;
    let target = slot(path)?.join(name);
    fs::rename(path, &target)?;
    Ok(target)
}

/// Gives the file at `path` a second name in the `.trash` folder beside it,
/// so that deleting `path` frees no block until [`empty`] deletes that one.
pub fn link(path: &Path) -> io::Result<PathBuf> {
    let name = name(path)?;
    let target = slot(path)?.join(name);
    fs::hard_link(path, &target)?;
    Ok(target)
}

fn name(path: &Path) -> io::Result<&std::ffi::OsStr> {
    path.file_name().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} names no file", path.display()),
        )
    })
}

/// A new empty folder in the trash beside `path`: what is put there never
/// meets another name.
fn slot(path: &Path) -> io::Result<PathBuf> {
    let parent = path.parent().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} has no folder", path.display()),
        )
    })?;
    let trash = parent.join(FOLDER);
    // Made if missing; any other failure shows in the slot's own creation.
    let _ = fs::create_dir(&trash);
    for n in 0..NAMES {
        let slot = trash.join(n.to_string());
        match fs::create_dir(&slot) {
            Ok(()) => return Ok(slot),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
    Err(io::Error::new(
        io::ErrorKind::StorageFull,
        format!("{} holds {NAMES} folders already", trash.display()),
    ))
}

/// Deletes everything in `folder`'s `.trash`, a step at a time; returns the
/// bytes freed. A missing trash is empty.
pub fn empty(folder: &Path) -> io::Result<u64> {
    let trash = folder.join(FOLDER);
    match fs::symlink_metadata(&trash) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e),
        Ok(_) => {}
    }
    let freed = delete(&trash)?;
    crate::fsutil::fsync_dir(folder)?;
    Ok(freed)
}

fn delete(path: &Path) -> io::Result<u64> {
    let meta = fs::symlink_metadata(path)?;
    if !meta.is_dir() {
        let freed = if meta.is_file() {
            shrink(path, &meta)
        } else {
            0
        };
        fs::remove_file(path)?;
        return Ok(freed);
    }
    let mut freed = 0;
    for entry in fs::read_dir(path)? {
        freed += delete(&entry?.path())?;
    }
    fs::remove_dir(path)?;
    Ok(freed)
}

/// Frees a file's blocks from its end, [`STEP`] at a time; returns its size
/// (freed by its unlink, what this did not). Only a file with no other name:
/// truncating one would change it under that name too (a log [`link`]ed
/// here that SQLite then kept, in use by another process). A file it cannot
/// open to write (read-only) is left to its unlink.
fn shrink(path: &Path, meta: &fs::Metadata) -> u64 {
    if meta.nlink() > 1 {
        return 0;
    }
    if let Ok(file) = OpenOptions::new().write(true).open(path) {
        for len in steps_down(meta.len()) {
            if file.set_len(len).is_err() {
                break;
            }
            std::thread::sleep(PAUSE);
        }
    }
    meta.len()
}

/// The lengths a file of `len` bytes is cut to, [`STEP`] by [`STEP`], down
/// to what its unlink frees at once.
fn steps_down(len: u64) -> impl Iterator<Item = u64> {
    (1..=len.saturating_sub(1) / STEP).map(move |n| len - n * STEP)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_put_in_the_trash_is_gone_from_its_place_and_deleted_by_empty() {
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("big");
        fs::write(&file, vec![7u8; 3 * STEP as usize + 5]).unwrap();
        let folder = tmp.path().join("folder");
        fs::create_dir_all(folder.join("inner")).unwrap();
        fs::write(folder.join("inner/x"), b"x").unwrap();

        let put_file = put(&file).unwrap();
        let put_folder = put(&folder).unwrap();
        assert!(!file.exists() && !folder.exists());
        assert_ne!(
            put_file.parent(),
            put_folder.parent(),
            "each in a slot of its own"
        );
        assert_eq!(fs::read(put_folder.join("inner/x")).unwrap(), b"x");
        // The same name again finds a slot of its own.
        fs::write(&file, b"again").unwrap();
        let again = put(&file).unwrap();
        assert_eq!(fs::read(&again).unwrap(), b"again");

        assert_eq!(empty(tmp.path()).unwrap(), 3 * STEP + 5 + 1 + 5);
        assert!(!tmp.path().join(FOLDER).exists());
        assert_eq!(empty(tmp.path()).unwrap(), 0, "a missing trash is empty");
    }

    #[test]
    fn a_linked_file_still_in_use_under_its_name_is_left_whole() {
        let tmp = tempfile::tempdir().unwrap();
        let log = tmp.path().join("waiaas.db-wal");
        let bytes = vec![3u8; 2 * STEP as usize + 1];
        fs::write(&log, &bytes).unwrap();
        link(&log).unwrap();
        // Emptied while the file keeps its name: only the trash's name goes.
        assert_eq!(empty(tmp.path()).unwrap(), 0);
        assert_eq!(
            fs::read(&log).unwrap(),
            bytes,
            "not truncated under its name"
        );

        // Its name deleted first (as SQLite deletes a log): freed by empty.
        link(&log).unwrap();
        fs::remove_file(&log).unwrap();
        assert_eq!(empty(tmp.path()).unwrap(), bytes.len() as u64);
    }

    #[test]
    fn a_file_is_cut_a_step_at_a_time_down_to_at_most_one_step() {
        let cut = |len| steps_down(len).collect::<Vec<_>>();
        assert_eq!(cut(3 * STEP + 5), [2 * STEP + 5, STEP + 5, 5]);
        assert_eq!(cut(2 * STEP), [STEP]);
        assert_eq!(cut(STEP + 1), [1]);
        assert!(cut(STEP).is_empty());
        assert!(cut(0).is_empty());
    }

    /// A trash that cannot hold a folder says why, at once.
    #[test]
    fn a_trash_that_cannot_be_used_is_an_error_of_its_own() {
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("f");
        fs::write(&file, b"x").unwrap();
        // A `.trash` that resolves to itself: no folder can be made in it.
        std::os::unix::fs::symlink(FOLDER, tmp.path().join(FOLDER)).unwrap();
        let error = put(&file).unwrap_err();
        assert_eq!(error.raw_os_error(), Some(libc::ELOOP), "{error}");
        assert!(file.exists(), "left where it was");
        // Emptying the trash of a file (no folder) is an error, not "empty".
        assert!(empty(&file).is_err());
    }

    #[test]
    fn a_path_without_a_name_is_refused() {
        let error = put(Path::new("/")).unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::InvalidInput);
    }
}
