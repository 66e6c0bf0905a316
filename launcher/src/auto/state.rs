//! What automatic upgrades remember across restarts and handovers, in
//! `<data dir>/auto-upgrade.json`: the quarantined versions, the last
//! attempt and the fleet lock's slot held. A file that cannot be read is an
//! error, never an empty state: an empty quarantine would try a bad release
//! again. Changes go through [`AutoState::update`], under a lock, so
//! `upgrade --forget` and the supervisor never lose each other's writes.

use std::fmt;
use std::fs::OpenOptions;
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use jiff::Timestamp;
use nix::fcntl::{Flock, FlockArg};
use semver::Version;
use serde::{Deserialize, Serialize};
use waiaas_shared::fsutil::write_atomic;
use waiaas_shared::layout::DataDir;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AutoState {
    #[serde(default)]
    pub quarantined: Vec<Quarantined>,
    #[serde(default)]
    pub attempt: Option<Attempt>,
    /// The fleet lock's slot, while this installation holds one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fleet: Option<FleetSlot>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Quarantined {
    pub version: Version,
    pub reason: String,
    /// RFC 3339.
    pub at: String,
}

/// The fleet lock's slot this installation holds (see `super::fleet`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FleetSlot {
    /// The lock server (its base URL) and group that gave it.
    pub url: String,
    pub group: String,
    /// The release it was taken for.
    pub version: Version,
    /// RFC 3339.
    pub taken_at: String,
}

/// An automatic upgrade: open (`outcome` absent) while it runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attempt {
    pub from: Version,
    pub to: Version,
    pub started_at: String,
    pub outcome: Option<AttemptOutcome>,
    pub message: Option<String>,
    pub ended_at: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AttemptOutcome {
    Upgraded,
    RolledBack,
    RollbackFailed,
    /// Refused before anything changed (download, signature, lock…).
    Failed,
    /// The launcher ended during it; the next start rolled it back.
    Interrupted,
}

impl fmt::Display for AttemptOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AttemptOutcome::Upgraded => "upgraded",
            AttemptOutcome::RolledBack => "rolled-back",
            AttemptOutcome::RollbackFailed => "rollback-failed",
            AttemptOutcome::Failed => "failed",
            AttemptOutcome::Interrupted => "interrupted",
        })
    }
}

/// Why the state could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error(
        "{path} is not automatic upgrades' state ({reason}); fix or remove it — removing it \
         lifts every quarantine"
    )]
    Corrupt { path: PathBuf, reason: String },
    #[error("cannot write {path}: {source}")]
    Write { path: PathBuf, source: io::Error },
    #[error("{path} is locked by another process for more than {LOCK_WAIT:?}")]
    Locked { path: PathBuf },
    #[error(
        "{path} holds `{found}`, not an install id (32 hex digits); remove it to make a new one"
    )]
    BadInstallId { path: PathBuf, found: String },
}

/// Longest wait for another process's change of the state.
const LOCK_WAIT: Duration = Duration::from_secs(5);

impl AutoState {
    pub fn load(dir: &DataDir) -> Result<AutoState, StateError> {
        let path = dir.auto_state();
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| StateError::Corrupt {
                path,
                reason: e.to_string(),
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(AutoState::default()),
            Err(source) => Err(StateError::Read { path, source }),
        }
    }

    fn save(&self, dir: &DataDir) -> Result<(), StateError> {
        let path = dir.auto_state();
        let bytes = serde_json::to_vec_pretty(self).expect("the state serialises");
        write_atomic(&path, &bytes, 0o600).map_err(|source| StateError::Write { path, source })
    }

    /// Loads, changes with `change`, and saves, holding the state's lock.
    pub fn update<T>(
        dir: &DataDir,
        change: impl FnOnce(&mut AutoState) -> T,
    ) -> Result<T, StateError> {
        let _lock = lock(dir)?;
        let mut state = AutoState::load(dir)?;
        let before = state.clone();
        let result = change(&mut state);
        if state != before {
            state.save(dir)?;
        }
        Ok(result)
    }

    pub fn is_quarantined(&self, version: &Version) -> bool {
        self.quarantined.iter().any(|q| q.version == *version)
    }

    /// Quarantines `version` (once; the first reason stays).
    pub fn quarantine(&mut self, version: Version, reason: String, at: Timestamp) {
        if !self.is_quarantined(&version) {
            self.quarantined.push(Quarantined {
                version,
                reason,
                at: at.to_string(),
            });
        }
    }

    /// Lifts `version`'s quarantine; `false` if it had none.
    pub fn forget(&mut self, version: &Version) -> bool {
        let before = self.quarantined.len();
        self.quarantined.retain(|q| q.version != *version);
        self.quarantined.len() != before
    }

    /// Records the start of an automatic upgrade.
    pub fn begin(&mut self, from: Version, to: Version, at: Timestamp) {
        self.attempt = Some(Attempt {
            from,
            to,
            started_at: at.to_string(),
            outcome: None,
            message: None,
            ended_at: None,
        });
    }

    /// Records how the open attempt ended.
    pub fn end(&mut self, outcome: AttemptOutcome, message: String, at: Timestamp) {
        if let Some(attempt) = self.attempt.as_mut().filter(|a| a.outcome.is_none()) {
            attempt.outcome = Some(outcome);
            attempt.message = Some(message);
            attempt.ended_at = Some(at.to_string());
        }
    }
}

fn lock(dir: &DataDir) -> Result<Flock<std::fs::File>, StateError> {
    let path = dir.root().join("auto-upgrade.lock");
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(&path)
        .map_err(|source| StateError::Write {
            path: path.clone(),
            source,
        })?;
    let deadline = Instant::now() + LOCK_WAIT;
    let mut file = file;
    loop {
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => return Ok(lock),
            Err((back, _)) if Instant::now() < deadline => {
                file = back;
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(_) => return Err(StateError::Locked { path }),
        }
    }
}

/// This installation's id: read, or made once (32 hex digits from the OS's
/// random source, written with `create_new` so two first starts agree).
pub fn install_id(dir: &DataDir) -> Result<String, StateError> {
    let path = dir.install_id();
    let valid = |s: &str| s.len() == 32 && s.bytes().all(|b| b.is_ascii_hexdigit());
    match std::fs::read_to_string(&path) {
        Ok(text) if valid(text.trim()) => return Ok(text.trim().to_string()),
        Ok(text) => {
            return Err(StateError::BadInstallId {
                path,
                found: text.trim().chars().take(64).collect(),
            });
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(source) => return Err(StateError::Read { path, source }),
    }
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).map_err(|e| StateError::Write {
        path: path.clone(),
        source: io::Error::other(e.to_string()),
    })?;
    let id = hex::encode(bytes);
    let written = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .and_then(|mut f| {
            f.write_all(id.as_bytes())?;
            f.sync_all()
        });
    match written {
        Ok(()) => Ok(id),
        // Another process made it first: theirs.
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => install_id(dir),
        Err(source) => Err(StateError::Write { path, source }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(text: &str) -> Version {
        Version::parse(text).unwrap()
    }

    fn now() -> Timestamp {
        "2026-12-06T12:00:00Z".parse().unwrap()
    }

    #[test]
    fn a_quarantine_outlives_the_process_and_forget_lifts_it() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = DataDir::new(tmp.path());
        assert_eq!(AutoState::load(&dir).unwrap(), AutoState::default());
        AutoState::update(&dir, |s| {
            s.begin(v("1.9.0"), v("1.9.1"), now());
            s.end(AttemptOutcome::RolledBack, "health".into(), now());
            s.quarantine(v("1.9.1"), "rolled back".into(), now());
            s.quarantine(v("1.9.1"), "again".into(), now());
        })
        .unwrap();
        // A "restart": a fresh load from disk.
        let state = AutoState::load(&dir).unwrap();
        assert!(state.is_quarantined(&v("1.9.1")));
        assert_eq!(state.quarantined.len(), 1);
        assert_eq!(state.quarantined[0].reason, "rolled back");
        let attempt = state.attempt.unwrap();
        assert_eq!(attempt.outcome, Some(AttemptOutcome::RolledBack));
        assert!(AutoState::update(&dir, |s| s.forget(&v("1.9.1"))).unwrap());
        assert!(!AutoState::update(&dir, |s| s.forget(&v("1.9.1"))).unwrap());
        assert!(!AutoState::load(&dir).unwrap().is_quarantined(&v("1.9.1")));
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.auto_state())
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn a_corrupt_state_is_an_error_naming_the_file_not_an_empty_quarantine() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = DataDir::new(tmp.path());
        std::fs::write(dir.auto_state(), b"{\"quarantined\": 7}").unwrap();
        let err = AutoState::load(&dir).unwrap_err();
        assert!(matches!(err, StateError::Corrupt { .. }), "{err}");
        assert!(err.to_string().contains("auto-upgrade.json"), "{err}");
        assert!(AutoState::update(&dir, |s| s.forget(&v("1.0.0"))).is_err());
    }

    #[test]
    fn the_install_id_is_made_once_and_checked() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = DataDir::new(tmp.path());
        let id = install_id(&dir).unwrap();
        assert_eq!(id.len(), 32);
        assert_eq!(install_id(&dir).unwrap(), id);
        std::fs::write(dir.install_id(), "not-an-id").unwrap();
        assert!(matches!(
            install_id(&dir),
            Err(StateError::BadInstallId { .. })
        ));
    }
}
