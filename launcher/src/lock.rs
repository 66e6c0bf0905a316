//! The upgrade lock (`run/upgrade.lock`): one upgrade or rollback at a time,
//! whichever process runs it (the supervisor or a standalone command).

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};

use nix::fcntl::{Flock, FlockArg};

use waiaas_shared::layout::DataDir;

/// Held for the whole upgrade; released on drop (and by the kernel if we die).
pub struct UpgradeLock {
    _lock: Flock<File>,
}

impl UpgradeLock {
    /// Takes the lock, or says who holds it.
    pub fn acquire(dir: &DataDir) -> Result<Self, String> {
        let run = dir.run();
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&run)
            .map_err(|e| format!("cannot create {}: {e}", run.display()))?;
        let path = run.join("upgrade.lock");
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
            .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(mut lock) => {
                // The holder's pid, for the message a second upgrade gets.
                let _ = lock
                    .set_len(0)
                    .and_then(|()| lock.rewind())
                    .and_then(|()| write!(lock, "{}", std::process::id()));
                Ok(Self { _lock: lock })
            }
            Err((mut file, _)) => {
                let mut pid = String::new();
                let _ = file.read_to_string(&mut pid);
                Err(format!(
                    "another upgrade or rollback is in progress (pid {}); wait for it to finish",
                    pid.trim()
                ))
            }
        }
    }
}
