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
