//! Lock files in `run/` (SPEC §2): a file `flock`ed for as long as its holder
//! lives, with the holder's pid written inside. The kernel drops the lock
//! when the holder dies, so a stale file never blocks and a live holder is
//! always found. The launcher's `launcher.pid` and `upgrade.lock` and the
//! daemon's `daemon.pid` ([`DataDir::daemon_pid`]) are such files.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::Path;

use nix::fcntl::{Flock, FlockArg};

use crate::layout::DataDir;

/// Why a lock file in `run/` could not be taken.
#[derive(Debug)]
pub enum LockError {
    /// The file or folder could not be created, opened or written.
    Io(String),
    /// Another process holds it; its pid as written in the file.
    Held(String),
}

/// Opens `path`, a file in `run/` (creating `run/` 0700 and the file 0600),
/// takes an exclusive flock without waiting, and writes our pid into it.
pub fn lock_run_file(dir: &DataDir, path: &Path) -> Result<Flock<File>, LockError> {
    let run = dir.run();
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&run)
        .map_err(|e| LockError::Io(format!("cannot create {}: {e}", run.display())))?;
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(path)
        .map_err(|e| LockError::Io(format!("cannot open {}: {e}", path.display())))?;
    let mut lock = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(lock) => lock,
        Err((mut file, _)) => {
            let mut pid = String::new();
            let _ = file.read_to_string(&mut pid);
            return Err(LockError::Held(pid.trim().to_string()));
        }
    };
    lock.set_len(0)
        .and_then(|()| lock.rewind())
        .and_then(|()| writeln!(lock, "{}", std::process::id()))
        .and_then(|()| lock.sync_all())
        .map_err(|e| LockError::Io(format!("cannot write {}: {e}", path.display())))?;
    Ok(lock)
}

/// The pid written in the lock file at `path` while a process holds it;
/// `None` when nobody does (or the file is missing or names no pid).
pub fn holder(path: &Path) -> Option<u32> {
    let mut file = File::open(path).ok()?;
    let mut pid = String::new();
    file.read_to_string(&mut pid).ok()?;
    match Flock::lock(file, FlockArg::LockSharedNonblock) {
        Ok(_unlocked_on_drop) => None,
        Err(_) => pid.trim().parse().ok(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_held_lock_names_its_holder_and_is_free_once_dropped() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = DataDir::new(tmp.path());
        let path = dir.daemon_pid();
        assert_eq!(holder(&path), None);
        let lock = lock_run_file(&dir, &path).unwrap();
        assert_eq!(holder(&path), Some(std::process::id()));
        // A second open file description does not get it (flock is per description).
        assert!(matches!(
            lock_run_file(&dir, &path),
            Err(LockError::Held(_))
        ));
        drop(lock);
        assert_eq!(holder(&path), None);
    }
}
