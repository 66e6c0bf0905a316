//! Why an upgrade did not go ahead, or a step of it failed. Every message is
//! written for the operator reading the report; callers match on variants.

use std::io;
use std::path::PathBuf;

use waiaas_shared::backup::BackupError;

use crate::daemon_binary::RunError;
use crate::orphan::OrphanError;
use crate::package::PackageError;
use crate::upgrade::restore::RestoreError;

/// Why the host could not stop or start a daemon.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    /// It could not be spawned (the message names the program).
    #[error("{0}")]
    Spawn(String),
    /// It ended on its own: "exited with 1 (…)", "was killed by signal 9".
    #[error("the daemon {0}")]
    Exited(String),
    #[error("the daemon did not become ready: {0}")]
    NotReady(String),
    /// A start was asked for while another daemon still runs.
    #[error("cannot start a daemon: another daemon is still running")]
    AlreadyRunning,
    /// The exec of another release's launcher failed (all is as before).
    #[error("cannot hand over to {program}: {reason}")]
    HandOver { program: PathBuf, reason: String },
    /// A host that has no launcher to become (the standalone command).
    #[error("this host cannot hand over to {version}'s launcher")]
    NoHandOver { version: String },
    #[error("the daemon that started is {started}, not {expected}")]
    WrongVersion { started: String, expected: String },
    #[error("the supervisor is shutting down")]
    ShuttingDown,
}

/// Why an upgrade or rollback was refused before anything changed.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    #[error(transparent)]
    Locked(#[from] super::lock::NotLocked),
    #[error(
        "a supervisor (pid {pid}) is starting for {dir}; run the upgrade again once it is up \
         (`waiaas-launcher status`): it does the upgrade then"
    )]
    SupervisorStarting { pid: u32, dir: PathBuf },
    #[error("{path} is unreadable ({source}); inspect it, fix or remove it by hand")]
    Journal {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("not initialised: {0} has no current version; run `waiaas-launcher init`")]
    NotInitialised(PathBuf),
    #[error("cannot read {path}: {source}")]
    Current {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("--to {given}: not a version ({source})")]
    NotAVersion {
        given: String,
        #[source]
        source: semver::Error,
    },
    #[error(transparent)]
    Package(#[from] PackageError),
    #[error(transparent)]
    Daemon(#[from] RunError),
    #[error(
        "{to} is older than the installed {from}: an upgrade never moves back by itself. To return \
         to the state before the last upgrade use `waiaas-launcher upgrade --rollback`; to install \
         {to} on the present data anyway, add --allow-downgrade"
    )]
    Downgrade { from: String, to: String },
    #[error("{path}/waiaas-daemon reports version {reported}, not {expected}")]
    VersionMismatch {
        path: PathBuf,
        reported: String,
        expected: String,
    },
    #[error(
        "{version} cannot run on this database (schema {database} is newer than its {latest}); \
         to go back to the state before the last upgrade use `waiaas-launcher upgrade --rollback`"
    )]
    DatabaseTooNew {
        version: String,
        database: u32,
        latest: u32,
    },
    /// The new binary's own verdict (too old to migrate, a changed migration).
    #[error("{0}")]
    Incompatible(String),
    #[error(
        "not enough free disk for the backup: {free_mib} MiB free in {path}, {needed_mib} MiB \
         needed; free some space and try again (nothing was changed)"
    )]
    NoSpace {
        path: PathBuf,
        free_mib: u64,
        needed_mib: u64,
    },
    #[error("cannot check the free space of {path}: {reason}")]
    FreeSpace { path: PathBuf, reason: String },
    #[error("cannot list backups: {0}")]
    ListBackups(#[source] io::Error),
    #[error("there is no pre-upgrade backup to roll back to")]
    NoBackup,
    #[error(
        "the newest pre-upgrade backup, {path}, is of {version}, which is already running: it \
         was restored already (by a rollback, or by an upgrade that rolled back), and restoring \
         it again would drop every change made since. Nothing was changed; to go back further, \
         move {path} out of the backups folder and run `waiaas-launcher upgrade --rollback` again"
    )]
    AlreadyRestored { path: PathBuf, version: String },
    #[error(
        "the newest pre-upgrade backup, {path}, is unusable: {source}; move it away to use an older one"
    )]
    BadBackup {
        path: PathBuf,
        #[source]
        source: waiaas_shared::version::NotAVersion,
    },
    #[error(
        "the backup is from {version}, but {path} cannot be used ({reason}); put the files of \
         {version} back there (for example from its @waiaas/cli-<platform> package) and run \
         `waiaas-launcher upgrade --rollback` again"
    )]
    UnusableVersion {
        version: String,
        path: PathBuf,
        reason: String,
    },
}

/// Why a step of a started upgrade or rollback failed (it is then rolled back).
#[derive(Debug, thiserror::Error)]
pub enum StepError {
    #[error("cannot write the journal: {0}")]
    Journal(#[source] io::Error),
    #[error(transparent)]
    Host(#[from] HostError),
    #[error(transparent)]
    Backup(#[from] BackupError),
    #[error("cannot point current at {version}: {source}")]
    Swap {
        version: String,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    Daemon(#[from] RunError),
    #[error(
        "after migrating, the database is at schema {found} but {version} expects {expected}: {detail}"
    )]
    Schema {
        version: String,
        found: u32,
        expected: u32,
        detail: String,
    },
    #[error("{version} refuses the restored database: {detail}")]
    RestoredRefused { version: String, detail: String },
    #[error(transparent)]
    Restore(#[from] RestoreError),
    #[error(transparent)]
    Orphan(#[from] OrphanError),
    #[error("cannot commit (remove {path}): {source}")]
    Commit {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}
