//! The admin socket (`run/launcher.sock`): how `waiaas-launcher` commands talk
//! to a running supervisor. Framing is the control channel's (newline-delimited
//! JSON, at most `control::MAX_FRAME` bytes); each connection carries one
//! request and its response frames.

use serde::{Deserialize, Serialize};

/// A request, stamped with the protocol version of the client that sent it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    pub protocol: u32,
    pub request: Request,
}

/// What a command asks of the supervisor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Request {
    Status,
    /// Stop the daemon gracefully, then the supervisor itself.
    Stop,
    /// Stop the daemon gracefully and start it again on the same listener.
    Restart,
    /// Run the upgrade engine in the supervisor; progress frames stream back,
    /// then one [`Response::Upgrade`].
    Upgrade(UpgradeRequest),
}

/// What `waiaas-launcher upgrade` asks for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpgradeRequest {
    pub action: UpgradeAction,
    /// Leave the daemon stopped afterwards.
    pub no_start: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", content = "value", rename_all = "snake_case")]
pub enum UpgradeAction {
    /// The newest version on the configured channel.
    Latest,
    /// A specific version from the registry.
    To(String),
    /// A release tarball on disk (air-gapped sites).
    FromFile(std::path::PathBuf),
    /// Back to the state before the last upgrade.
    Rollback,
}

/// One step of an upgrade or rollback, as it starts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Progress {
    pub step: u8,
    pub of: u8,
    pub name: String,
    pub message: String,
}

/// How an upgrade or rollback ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Moved to the new version and committed.
    Upgraded,
    /// Nothing to do.
    UpToDate,
    /// `--rollback` restored the state before the last upgrade.
    Restored,
    /// Refused before anything changed (preflight).
    Refused,
    /// Failed, and the installation is back where it was.
    RolledBack,
    /// Failed, and putting it back failed too: manual steps are listed.
    RollbackFailed,
}

impl Outcome {
    /// The command's exit code (SPEC §6).
    pub fn exit_code(self) -> i32 {
        use crate::exit::upgrade::*;
        match self {
            Outcome::Upgraded | Outcome::UpToDate | Outcome::Restored => OK,
            Outcome::Refused | Outcome::RolledBack => ROLLED_BACK,
            Outcome::RollbackFailed => ROLLBACK_FAILED,
        }
    }
}

/// The one machine-readable result of `upgrade` (`--json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpgradeReport {
    pub outcome: Outcome,
    /// The version before.
    pub from: Option<String>,
    /// The version aimed at.
    pub to: Option<String>,
    /// One operator-facing paragraph.
    pub message: String,
    /// The step that failed, if one did.
    pub failed_step: Option<String>,
    /// The backup taken before the change, if one was.
    pub backup: Option<String>,
    /// What to do by hand when the rollback failed too.
    pub manual_steps: Vec<String>,
}

/// What the supervisor answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Response {
    Status(Status),
    /// The request was carried out.
    Done {
        message: String,
    },
    /// The request was refused or failed.
    Error {
        message: String,
    },
    /// A step of a running upgrade.
    Progress(Progress),
    /// The end of an upgrade.
    Upgrade(UpgradeReport),
}

/// The supervisor's view of itself and its daemon.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    pub launcher_pid: u32,
    pub launcher_version: String,
    /// `starting`, `running`, `backing-off`, `refused`, `stopping`.
    pub state: String,
    pub daemon: Option<DaemonStatus>,
    /// Daemon restarts after crashes since the supervisor started.
    pub restarts: u32,
    /// How the last daemon ended, in words, if one has ended.
    pub last_exit: Option<String>,
}

/// The running daemon, as its control channel and `/health` describe it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DaemonStatus {
    pub pid: u32,
    pub version: String,
    pub schema_version: u32,
    pub uptime: u64,
    pub healthy: bool,
}
