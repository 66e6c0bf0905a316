//! The one result of an upgrade or rollback ([`UpgradeReport`]), built here
//! for each way it can end, and the manual steps for when undoing failed too.

use std::path::{Path, PathBuf};

use waiaas_shared::admin::{Outcome, UpgradeReport};
use waiaas_shared::layout::DataDir;

use crate::upgrade::journal::{Journal, Operation};

fn shown(path: Option<&Path>) -> Option<String> {
    path.map(|p| p.display().to_string())
}

fn report(
    outcome: Outcome,
    from: Option<&str>,
    to: Option<&str>,
    message: String,
) -> UpgradeReport {
    UpgradeReport {
        outcome,
        from: from.map(str::to_string),
        to: to.map(str::to_string),
        message,
        failed_step: None,
        backup: None,
        manual_steps: Vec::new(),
    }
}

/// Refused before anything changed.
pub fn refused(
    from: Option<&str>,
    to: Option<&str>,
    error: &dyn std::error::Error,
) -> UpgradeReport {
    report(Outcome::Refused, from, to, error.to_string())
}

/// The supervisor was asked to stop during the preflight: nothing changed.
pub fn abandoned(from: Option<&str>) -> UpgradeReport {
    report(
        Outcome::Refused,
        from,
        None,
        "The supervisor is stopping: the upgrade was abandoned during its preflight, before \
         anything was changed"
            .to_string(),
    )
}

/// Nothing to do; `channel_older` is the channel's newest when it is older
/// than the installed version (which is then kept).
pub fn up_to_date(version: &str, channel_older: Option<&str>) -> UpgradeReport {
    let message = match channel_older {
        None => format!("Already up to date ({version})"),
        Some(older) => format!(
            "Already up to date ({version}); the channel's newest release, {older}, is older and \
             is not installed"
        ),
    };
    report(Outcome::UpToDate, Some(version), Some(version), message)
}

/// Committed. `backup` is `None` only when there was nothing to back up.
pub fn upgraded(from: &str, to: &str, backup: Option<&Path>, database: bool) -> UpgradeReport {
    let mut message = format!("Upgraded {from} → {to}");
    if !database {
        message.push_str(
            " (there was no database yet — WAIaaS had never been started — so the backup holds \
             config.toml alone)",
        );
    }
    UpgradeReport {
        backup: shown(backup),
        ..report(Outcome::Upgraded, Some(from), Some(to), message)
    }
}

/// " The database it replaced is kept in …." (nothing when none was).
fn replaced_kept(replaced: &[PathBuf]) -> String {
    if replaced.is_empty() {
        return String::new();
    }
    let paths: Vec<String> = replaced.iter().map(|p| p.display().to_string()).collect();
    format!(" The database it replaced is kept in {}.", paths.join(", "))
}

/// `--rollback` done.
pub fn restored(
    from: &str,
    to: &str,
    chosen: &Path,
    taken: &str,
    safety: &Path,
    kept: &[&str],
    replaced: &[PathBuf],
) -> UpgradeReport {
    let mut message = format!(
        "Rolled back {from} → {to} from the backup taken {taken}. Changes made after that \
         moment are not in it; the state just before this rollback is saved in {}.{}",
        safety.display(),
        replaced_kept(replaced)
    );
    if !kept.is_empty() {
        message.push_str(&format!(
            " [update] {} kept from the config in use: a rollback never brings back a removed \
             key or registry.",
            kept.join(", ")
        ));
    }
    UpgradeReport {
        backup: shown(Some(chosen)),
        ..report(Outcome::Restored, Some(from), Some(to), message)
    }
}

/// A change finished by the launcher it was handed over to.
pub fn resumed(journal: &Journal, replaced: &[PathBuf]) -> UpgradeReport {
    let (from, to) = (journal.from.as_str(), journal.to.as_str());
    match (&journal.operation, &journal.restoring, &journal.backup) {
        (Operation::Rollback, Some(chosen), Some(safety)) => {
            let taken = crate::upgrade::restore::open(chosen)
                .map(|b| b.manifest.created_at)
                .unwrap_or_else(|_| "earlier".to_string());
            restored(from, to, chosen, &taken, safety, &[], replaced)
        }
        _ => {
            let database = journal
                .backup
                .as_ref()
                .is_none_or(|b| b.join("waiaas.db").exists());
            upgraded(from, to, journal.backup.as_deref(), database)
        }
    }
}

/// A step failed and the installation is back where it was.
pub fn rolled_back(
    journal: &Journal,
    failed_step: String,
    error: String,
    running: bool,
    replaced: &[PathBuf],
) -> UpgradeReport {
    let message = format!(
        "Step {failed_step} failed: {error}. Rolled back: {} is in place{}.{}",
        journal.from,
        if running { " and running" } else { "" },
        replaced_kept(replaced)
    );
    UpgradeReport {
        failed_step: Some(failed_step),
        backup: shown(journal.backup.as_deref()),
        ..report(
            Outcome::RolledBack,
            Some(&journal.from),
            Some(&journal.to),
            message,
        )
    }
}

/// Undoing failed too: what to do by hand.
pub fn rollback_failed(dir: &DataDir, journal: &Journal, error: String) -> UpgradeReport {
    UpgradeReport {
        backup: shown(journal.backup.as_deref()),
        manual_steps: manual_steps(dir, journal),
        ..report(
            Outcome::RollbackFailed,
            Some(&journal.from),
            Some(&journal.to),
            format!("The rollback failed too: {error}"),
        )
    }
}

/// What to do by hand when the automatic rollback failed.
fn manual_steps(dir: &DataDir, journal: &Journal) -> Vec<String> {
    let mut steps =
        vec!["Stop WAIaaS (`waiaas-launcher stop`, or `systemctl stop waiaas`).".to_string()];
    if let Some(backup) = &journal.backup {
        steps.push(restore_step(dir, backup));
    }
    steps.push(format!(
        "Point current back: ln -sfn versions/{} {}",
        journal.from,
        dir.current().display()
    ));
    steps.push(format!(
        "Remove the journal: rm {}",
        dir.upgrade_journal().display()
    ));
    steps.push("Start WAIaaS again and check `waiaas-launcher status`.".to_string());
    steps
}

fn restore_step(dir: &DataDir, backup: &Path) -> String {
    let db = dir.database().display().to_string();
    let database = if backup.join("waiaas.db").exists() {
        format!(
            "Copy {}/waiaas.db over {db} and delete {db}-wal and {db}-shm if present",
            backup.display()
        )
    } else {
        format!("Delete {db}, {db}-wal and {db}-shm (there was no database before)")
    };
    format!(
        "{database}; copy {}/config.toml over {}.",
        backup.display(),
        dir.config().display()
    )
}
