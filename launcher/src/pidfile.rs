//! `run/launcher.pid`: one supervisor per data dir. The file is locked
//! (`flock`) for the supervisor's lifetime, so a stale file left by a killed
//! launcher never blocks the next one, and a live one always does.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};

use nix::fcntl::{Flock, FlockArg};

use waiaas_shared::layout::DataDir;

use crate::cli::Failure;

/// The held lock; released (and the file emptied) on drop.
pub struct PidFile {
    lock: Flock<File>,
}

impl PidFile {
    /// Takes the lock and writes our pid, or says which launcher holds it.
    pub fn acquire(dir: &DataDir) -> Result<Self, Failure> {
        let run = dir.run();
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&run)
            .map_err(|e| Failure::new(format!("cannot create {}: {e}", run.display())))?;
        let path = dir.launcher_pid();
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
            .map_err(|e| Failure::new(format!("cannot open {}: {e}", path.display())))?;
        let mut lock = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => lock,
            Err((mut file, _)) => {
                let mut pid = String::new();
                let _ = file.read_to_string(&mut pid);
                return Err(Failure::new(format!(
                    "already running (pid {}) for {}",
                    pid.trim(),
                    dir.root().display()
                )));
            }
        };
        let written = lock
            .set_len(0)
            .and_then(|()| lock.rewind())
            .and_then(|()| writeln!(lock, "{}", std::process::id()))
            .and_then(|()| lock.sync_all());
        written.map_err(|e| Failure::new(format!("cannot write {}: {e}", path.display())))?;
        Ok(Self { lock })
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
