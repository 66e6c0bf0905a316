//! A daemon this launcher did not start: one whose launcher was killed
//! (kill -9, no systemd `KillMode` to take it along) and that still serves.
//! It is found by the lock it holds for its whole life (`run/daemon.pid`,
//! [`waiaas_shared::runlock`]) and stopped before the engine renames the
//! database's files: left running, it would answer from a file a restore
//! replaced, and when it closes it unlinks `waiaas.db-wal` and `-shm` by
//! path — by then the restored ones.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use waiaas_shared::layout::DataDir;
use waiaas_shared::runlock;

use crate::pidfile::PidFile;

/// After SIGKILL, how long the kernel gets to end the process and drop its lock.
const KILL_WAIT: Duration = Duration::from_secs(5);
const POLL: Duration = Duration::from_millis(20);

/// Why a daemon holding the data dir could not be stopped.
#[derive(Debug, thiserror::Error)]
pub enum OrphanError {
    #[error(
        "a daemon (pid {pid}) serves {dir} under another launcher (pid {launcher}); upgrade or \
         roll back through that launcher, or stop it first (`waiaas-launcher stop`)"
    )]
    Supervised {
        pid: u32,
        launcher: u32,
        dir: PathBuf,
    },
    #[error(
        "a daemon (pid {pid}) that no launcher supervises holds {path}, but no such process \
         holds it open here (another pid namespace?); stop that daemon by hand and try again"
    )]
    NotFound { pid: u32, path: PathBuf },
    #[error(
        "a daemon (pid {pid}) that no launcher supervises still holds {path} after SIGTERM and \
         SIGKILL; stop it by hand (kill -9 {pid}) and try again"
    )]
    Unstoppable { pid: u32, path: PathBuf },
}

/// Stops the daemon holding `dir`'s daemon lock, if any: SIGTERM, `grace`
/// to shut down, then SIGKILL and [`KILL_WAIT`]. Returns its pid when there
/// was one. A daemon another live launcher supervises is not ours to stop.
/// Blocks while it waits.
pub fn stop(dir: &DataDir, grace: Duration) -> Result<Option<u32>, OrphanError> {
    let path = dir.daemon_pid();
    let Some(pid) = runlock::holder(&path) else {
        return Ok(None);
    };
    if let Some(launcher) = PidFile::holder(dir).filter(|&l| l != std::process::id()) {
        return Err(OrphanError::Supervised {
            pid,
            launcher,
            dir: dir.root().to_path_buf(),
        });
    }
    // The pid as written is only trusted if that process holds the file.
    if !holds_open(pid, &path) {
        return Err(OrphanError::NotFound { pid, path });
    }
    tracing::warn!(
        "a daemon this launcher did not start (pid {pid}) still serves {}; stopping it before \
         its files are changed",
        dir.root().display()
    );
    for (signal, wait) in [(libc::SIGTERM, grace), (libc::SIGKILL, KILL_WAIT)] {
        // SAFETY: kill(2) with a pid shown above to hold our lock file open.
        unsafe { libc::kill(pid as libc::pid_t, signal) };
        let deadline = Instant::now() + wait;
        while runlock::holder(&path).is_some() && Instant::now() < deadline {
            std::thread::sleep(POLL);
        }
        if runlock::holder(&path).is_none() {
            tracing::warn!("stopped the daemon (pid {pid}) this launcher did not start");
            return Ok(Some(pid));
        }
    }
    Err(OrphanError::Unstoppable { pid, path })
}

/// Whether process `pid` has `path` open (one of its `/proc/<pid>/fd` links).
fn holds_open(pid: u32, path: &std::path::Path) -> bool {
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return false;
    };
    let wanted = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    fds.flatten()
        .any(|fd| std::fs::read_link(fd.path()).is_ok_and(|target| target == wanted))
}
