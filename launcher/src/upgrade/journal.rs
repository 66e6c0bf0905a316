//! `upgrade.json`: the journal of an upgrade or rollback in progress.
//!
//! It is written atomically and fsynced *before* each step runs, so a launcher
//! killed at any instant finds on its next start exactly how far the change
//! got, and rolls it back (see `upgrade::recover`). While it exists the
//! installation is mid-change; a committed or rolled-back change removes it.

use std::io;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use waiaas_shared::fsutil::{fsync_dir, write_atomic};
use waiaas_shared::layout::DataDir;
use waiaas_shared::time::UtcTime;
use waiaas_shared::version::parse_local;

/// What the journal is the record of.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Operation {
    Upgrade,
    Rollback,
}

/// Whether the change is going forward or being undone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    Forward,
    RollingBack,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Journal {
    pub operation: Operation,
    pub phase: Phase,
    /// The version `current` pointed at before the change: where a rollback returns.
    pub from: String,
    pub to: String,
    /// The step about to run (or running), and its name.
    pub step: u8,
    pub step_name: String,
    /// The backup of the state before the change, once it is complete.
    pub backup: Option<PathBuf>,
    /// Whether a daemon was running before, so a rollback starts it again.
    pub daemon_was_running: bool,
    /// Step 7 was handed to the target release's own launcher (same
    /// process, after an exec): only that launcher, started with the
    /// handover, may finish it; any other start rolls it back.
    #[serde(default)]
    pub handed_over: bool,
    /// For a rollback: the backup being restored (its report names it).
    #[serde(default)]
    pub restoring: Option<PathBuf>,
    pub started_at: String,
    pub pid: u32,
}

impl Journal {
    pub fn new(operation: Operation, from: &str, to: &str, daemon_was_running: bool) -> Self {
        Self {
            operation,
            phase: Phase::Forward,
            from: from.to_string(),
            to: to.to_string(),
            step: 0,
            step_name: "preflight".into(),
            backup: None,
            daemon_was_running,
            handed_over: false,
            restoring: None,
            started_at: UtcTime::now().rfc3339(),
            pid: std::process::id(),
        }
    }

    /// The journal left in `dir`, if any. A journal that cannot be read is an
    /// error, never "no journal": guessing could leave a half-done change.
    pub fn load(dir: &DataDir) -> io::Result<Option<Self>> {
        let path = dir.upgrade_journal();
        let bytes = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let unusable = |why: String| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "{} is unusable ({why}); inspect it, fix or remove it by hand",
                    path.display()
                ),
            )
        };
        let journal: Self = serde_json::from_slice(&bytes).map_err(|e| unusable(e.to_string()))?;
        journal.check(dir).map_err(unusable)?;
        Ok(Some(journal))
    }

    /// Local state is data, not paths: the versions must be versions and the
    /// backup a folder of `backups/`, or recovery would act elsewhere.
    fn check(&self, dir: &DataDir) -> Result<(), String> {
        for version in [&self.from, &self.to] {
            parse_local(version).map_err(|e| e.to_string())?;
        }
        for backup in [&self.backup, &self.restoring].into_iter().flatten() {
            let name = backup.file_name().map(|n| n.to_string_lossy().into_owned());
            let inside = backup.parent() == Some(dir.backups().as_path())
                && name.is_some_and(|n| !n.starts_with('.'));
            if !inside {
                return Err(format!(
                    "its backup {} is not a folder of {}",
                    backup.display(),
                    dir.backups().display()
                ));
            }
        }
        Ok(())
    }

    /// Writes the journal durably.
    pub fn save(&self, dir: &DataDir) -> io::Result<()> {
        let json = serde_json::to_vec_pretty(self).expect("a journal serialises");
        write_atomic(&dir.upgrade_journal(), &json, 0o600)
    }

    /// Records that step `step` is about to run.
    pub fn enter(&mut self, dir: &DataDir, step: u8, name: &str) -> io::Result<()> {
        self.step = step;
        self.step_name = name.to_string();
        self.save(dir)
    }

    /// Ends the record: the change is committed or fully undone.
    pub fn remove(dir: &DataDir) -> io::Result<()> {
        match std::fs::remove_file(dir.upgrade_journal()) {
            Ok(()) => fsync_dir(dir.root()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn saved_steps_are_read_back_and_removal_is_final() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = DataDir::new(tmp.path());
        assert_eq!(Journal::load(&dir).unwrap(), None);
        let mut journal = Journal::new(Operation::Upgrade, "1.8.1", "1.9.0", true);
        journal.enter(&dir, 3, "backup").unwrap();
        let read = Journal::load(&dir).unwrap().unwrap();
        assert_eq!((read.step, read.step_name.as_str()), (3, "backup"));
        assert_eq!(read, journal);
        Journal::remove(&dir).unwrap();
        assert_eq!(Journal::load(&dir).unwrap(), None);
    }

    #[test]
    fn a_garbled_journal_is_an_error_not_a_fresh_start() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = DataDir::new(tmp.path());
        std::fs::write(dir.upgrade_journal(), b"{\"operation\":").unwrap();
        let err = Journal::load(&dir).unwrap_err();
        assert!(err.to_string().contains("unusable"), "{err}");
    }

    #[test]
    fn a_journal_naming_paths_instead_of_versions_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = DataDir::new(tmp.path());
        let journal = Journal::new(Operation::Upgrade, "../../evil", "1.9.0", true);
        journal.save(&dir).unwrap();
        let err = Journal::load(&dir).unwrap_err();
        assert!(
            err.to_string().contains("`../../evil` is not a version"),
            "{err}"
        );

        let mut journal = Journal::new(Operation::Upgrade, "1.8.1", "1.9.0", true);
        journal.backup = Some(tmp.path().join("elsewhere"));
        journal.save(&dir).unwrap();
        let err = Journal::load(&dir).unwrap_err();
        assert!(err.to_string().contains("is not a folder of"), "{err}");
        journal.backup = Some(dir.backups().join("pre-upgrade-1.8.1-x"));
        journal.save(&dir).unwrap();
        assert_eq!(Journal::load(&dir).unwrap(), Some(journal));
    }

    #[test]
    fn a_journal_that_cannot_be_read_or_removed_is_an_error_not_no_journal() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = DataDir::new(tmp.path());
        Journal::remove(&dir).expect("no journal: nothing to remove");
        // Something that is not a file where the journal belongs.
        std::fs::create_dir(dir.upgrade_journal()).unwrap();
        assert!(Journal::load(&dir).is_err(), "unreadable is not \"none\"");
        assert!(
            Journal::remove(&dir).is_err(),
            "not removed is not \"ended\""
        );
        assert!(dir.upgrade_journal().exists());
    }
}
