//! The upgrade lock (`run/upgrade.lock`): one upgrade or rollback at a time,
//! whichever process runs it (the supervisor or a standalone command).

use std::fs::File;

use nix::fcntl::Flock;

use waiaas_shared::layout::DataDir;

use crate::pidfile::{LockError, lock_run_file};

/// Held for the whole upgrade; released on drop (and by the kernel if we die).
pub struct UpgradeLock {
    _lock: Flock<File>,
}

impl UpgradeLock {
    /// Takes the lock, or says who holds it.
    pub fn acquire(dir: &DataDir) -> Result<Self, String> {
        match lock_run_file(dir, &dir.run().join("upgrade.lock")) {
            Ok(lock) => Ok(Self { _lock: lock }),
            Err(LockError::Io(message)) => Err(message),
            Err(LockError::Held(pid)) => Err(format!(
                "another upgrade or rollback is in progress (pid {pid}); wait for it to finish"
            )),
        }
    }
}
