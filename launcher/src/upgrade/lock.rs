//! The upgrade lock (`run/upgrade.lock`): one upgrade or rollback at a time,
//! whichever process runs it (the supervisor or a standalone command) — and
//! no supervisor starts beside a standalone one ([`wait_for_upgrade`]).

use std::fs::File;
use std::time::{Duration, Instant};

use nix::fcntl::Flock;

use waiaas_shared::config::Config;
use waiaas_shared::layout::DataDir;

use crate::pidfile::{LockError, lock_run_file};

/// Held for the whole upgrade; released on drop (and by the kernel if we die).
pub struct UpgradeLock {
    _lock: Flock<File>,
}

/// Why the upgrade lock was not taken.
#[derive(Debug, thiserror::Error)]
pub enum NotLocked {
    #[error("another upgrade or rollback is in progress (pid {0}); wait for it to finish")]
    /// By this pid (as its lock file says).
    Held(String),
    #[error("{0}")]
    Io(String),
}

impl UpgradeLock {
    /// Takes the lock, or says who holds it.
    pub fn acquire(dir: &DataDir) -> Result<Self, NotLocked> {
        match lock_run_file(dir, &dir.run().join("upgrade.lock")) {
            Ok(lock) => Ok(Self { _lock: lock }),
            Err(LockError::Io(message)) => Err(NotLocked::Io(message)),
            Err(LockError::Held(pid)) => Err(NotLocked::Held(pid)),
        }
    }

    /// The pid of the process holding `dir`'s upgrade lock, if one does.
    pub fn holder(dir: &DataDir) -> Option<u32> {
        waiaas_shared::runlock::holder(&dir.run().join("upgrade.lock"))
    }
}

/// Why a start did not wait any longer for an upgrade to finish.
#[derive(Debug, thiserror::Error)]
#[error(
    "an upgrade or rollback without a supervisor (pid {pid}) still holds {dir} after {waited} s; \
     not starting beside it. Wait for it to finish (its deadlines end it), or stop it \
     (kill {pid}: the next start rolls it back), then start again"
)]
pub struct UpgradeRunning {
    pub pid: u32,
    pub dir: String,
    pub waited: u64,
}

/// Time as a wait sees it; tests pass one that does not sleep.
pub trait Clock {
    fn now(&self) -> Instant;
    fn sleep(&self, duration: Duration);
}

/// The real clock.
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Instant {
        Instant::now()
    }
    fn sleep(&self, duration: Duration) {
        std::thread::sleep(duration);
    }
}

/// How often a wait for an upgrade says it is still waiting.
pub const WAIT_TELL_EVERY: Duration = Duration::from_secs(5);
const WAIT_POLL: Duration = Duration::from_millis(100);

/// The longest a start waits for an upgrade another process runs: what
/// that upgrade's own deadlines add up to (the download, two stops, the
/// migration, two starts) and 5 minutes for its copies — so only a stuck
/// holder outlasts it.
pub fn wait_limit(config: &Config) -> Duration {
    let download = crate::package::Limits::default();
    let stop = config.daemon.shutdown_timeout + 2;
    Duration::from_secs(
        2 * stop + config.update.migrate_timeout + 2 * config.update.health_timeout + 300,
    ) + download.packument_timeout
        + download.download_timeout
}

/// Waits (blocking) until no process holds `dir`'s upgrade lock: a
/// supervisor must not start while a standalone upgrade changes the files
/// its daemon would serve. `told(pid, waited)` is called at once when one
/// holds it, then every [`WAIT_TELL_EVERY`]; after `limit` the wait gives up.
pub fn wait_for_upgrade(
    dir: &DataDir,
    limit: Duration,
    clock: &impl Clock,
    mut told: impl FnMut(u32, Duration),
) -> Result<(), UpgradeRunning> {
    let started = clock.now();
    let mut next_tell = started;
    while let Some(pid) = UpgradeLock::holder(dir) {
        let now = clock.now();
        let waited = now.duration_since(started);
        if waited >= limit {
            return Err(UpgradeRunning {
                pid,
                dir: dir.root().display().to_string(),
                waited: waited.as_secs(),
            });
        }
        if now >= next_tell {
            told(pid, waited);
            next_tell = now + WAIT_TELL_EVERY;
        }
        clock.sleep(WAIT_POLL);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use super::*;

    /// A clock whose sleeps only move it forward.
    struct Fake(Cell<Instant>);

    impl Clock for Fake {
        fn now(&self) -> Instant {
            self.0.get()
        }
        fn sleep(&self, duration: Duration) {
            self.0.set(self.0.get() + duration);
        }
    }

    #[test]
    fn a_wait_for_a_held_lock_tells_every_few_seconds_and_gives_up_at_its_limit() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = DataDir::new(tmp.path());
        let clock = Fake(Cell::new(Instant::now()));
        assert!(wait_for_upgrade(&dir, Duration::ZERO, &clock, |_, _| panic!()).is_ok());

        let _held = UpgradeLock::acquire(&dir).unwrap();
        let mut told = Vec::new();
        let error = wait_for_upgrade(&dir, Duration::from_secs(12), &clock, |pid, waited| {
            told.push((pid, waited.as_secs()))
        })
        .unwrap_err();
        let me = std::process::id();
        assert_eq!(told, [(me, 0), (me, 5), (me, 10)]);
        assert_eq!((error.pid, error.waited), (me, 12));
        assert!(error.to_string().contains(&format!("kill {me}")), "{error}");
    }
}
