//! `run/launcher.pid`: one supervisor per data dir. The file is locked
//! (`flock`) for the supervisor's lifetime, so a stale file left by a killed
//! launcher never blocks the next one, and a live one always does.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::Path;

use nix::fcntl::{Flock, FlockArg};

use waiaas_shared::layout::DataDir;

use crate::failure::Failure;

/// The held lock; released (and the file emptied) on drop.
pub struct PidFile {
    lock: Flock<File>,
}

/// Why a lock file in `run/` could not be taken.
pub enum LockError {
    /// The file or folder could not be created, opened or written.
    Io(String),
    /// Another process holds it; its pid as written in the file.
    Held(String),
}

/// Opens `path`, a file in `run/` (creating `run/` 0700 and the file 0600), takes an
/// exclusive flock without waiting, and writes our pid into it. The kernel
/// drops the lock when the process dies, so a stale file never blocks.
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

impl PidFile {
    /// Takes the lock and writes our pid, or says which launcher holds it.
    pub fn acquire(dir: &DataDir) -> Result<Self, Failure> {
        match lock_run_file(dir, &dir.launcher_pid()) {
            Ok(lock) => Ok(Self { lock }),
            Err(LockError::Io(message)) => Err(Failure::new(message)),
            Err(LockError::Held(pid)) => Err(Failure::new(format!(
                "already running (pid {pid}) for {}",
                dir.root().display()
            ))),
        }
    }

    /// The pid of the supervisor holding `dir`'s lock, if one does.
    pub fn holder(dir: &DataDir) -> Option<u32> {
        let mut file = File::open(dir.launcher_pid()).ok()?;
        let mut pid = String::new();
        file.read_to_string(&mut pid).ok()?;
        match Flock::lock(file, FlockArg::LockSharedNonblock) {
            Ok(_unlocked_on_drop) => None,
            Err(_) => pid.trim().parse().ok(),
        }
    }
}

impl Drop for PidFile {
    fn drop(&mut self) {
        let _ = self.lock.set_len(0);
    }
}
