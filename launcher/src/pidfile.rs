//! `run/launcher.pid`: one supervisor per data dir. The file is locked
//! (`flock`) for the supervisor's lifetime, so a stale file left by a killed
//! launcher never blocks the next one, and a live one always does.

use std::fs::File;

use nix::fcntl::Flock;

use waiaas_shared::layout::DataDir;
pub use waiaas_shared::runlock::{LockError, lock_run_file};

use crate::failure::Failure;

/// The held lock; released (and the file emptied) on drop.
pub struct PidFile {
    lock: Flock<File>,
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
        waiaas_shared::runlock::holder(&dir.launcher_pid())
    }
}

impl Drop for PidFile {
    fn drop(&mut self) {
        let _ = self.lock.set_len(0);
    }
}
