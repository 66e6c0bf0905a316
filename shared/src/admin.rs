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
    /// `--to`/`--from` may name a release older than the installed one.
    #[serde(default)]
    pub allow_downgrade: bool,
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

/// One step of an upgrade or rollback, as it starts; during a download,
/// repeated with the bytes received so far.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Progress {
    pub step: u8,
    pub of: u8,
    pub name: String,
    pub message: String,
    /// Set on the frames that report a download's progress.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes: Option<Bytes>,
}

/// How much of a download has arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bytes {
    pub done: u64,
    /// The size the registry declared, if it did.
    pub total: Option<u64>,
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
    /// `starting`, `running`, `backing-off`, `refused`, `stopped`,
    /// `upgrading`, `stopping`.
    pub state: String,
    /// The step an upgrade or rollback in progress is at.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upgrade: Option<Progress>,
    pub daemon: Option<DaemonStatus>,
    /// Daemon restarts after crashes since the supervisor started.
    pub restarts: u32,
    /// How the last daemon ended, in words, if one has ended.
    pub last_exit: Option<String>,
    /// While the state is `refused` for an unfinished upgrade: why nothing
    /// is served, and what to do.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refused: Option<String>,
    /// Automatic upgrades (`[update] auto`): absent from older launchers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auto: Option<Box<AutoStatus>>,
}

/// Automatic upgrades as the supervisor sees them. Times are RFC 3339, UTC.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AutoStatus {
    /// The policy in force: "off", or the level and its settings.
    pub policy: String,
    pub next_check: Option<String>,
    /// When the registry was last asked, and what it gave.
    pub last_check: Option<String>,
    /// The release the policy chose, waiting to start.
    pub candidate: Option<String>,
    /// When the candidate is due to start, as planned.
    pub starts_at: Option<String>,
    /// Why it waits: window, soak, rollout, jitter, busy, blocked.
    pub waiting: Option<String>,
    /// Versions never tried again by themselves.
    pub quarantined: Vec<Quarantined>,
    /// The last automatic attempt.
    pub last_attempt: Option<Attempt>,
    /// The fleet lock (`[update] fleet_lock`): the slot held and what it
    /// waits for; absent without one (and from older launchers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fleet: Option<String>,
}

/// A version automatic upgrades skip (`upgrade --forget VERSION` lifts it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Quarantined {
    pub version: String,
    pub reason: String,
    pub at: String,
}

/// An automatic upgrade, as recorded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attempt {
    pub from: String,
    pub to: String,
    pub started_at: String,
    /// `upgraded`, `rolled-back`, `rollback-failed`, `failed`, `interrupted`;
    /// absent while it runs.
    pub outcome: Option<String>,
    pub message: Option<String>,
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

/// The one client of the admin socket, for the commands (blocking: they
/// have nothing else to do meanwhile). One request per connection; the
/// answers are read one frame at a time ([`Connection::next`]), so an upgrade's
/// progress can be rendered as it streams.
pub mod client {
    use std::io::{self, BufRead, BufReader, Read, Write};
    use std::os::unix::net::UnixStream;
    use std::path::Path;
    use std::time::Duration;

    use super::{Envelope, Request, Response};
    use crate::control::{MAX_FRAME, PROTOCOL_VERSION};

    /// Why talking to the supervisor failed.
    #[derive(Debug, thiserror::Error)]
    pub enum ClientError {
        #[error("cannot reach {path}: {source}")]
        Connect {
            path: String,
            #[source]
            source: io::Error,
        },
        #[error(
            "the supervisor closed the connection without answering \
             (it only answers its own user and root; see its log)"
        )]
        Closed,
        #[error("talking to the supervisor failed: {0}")]
        Io(#[source] io::Error),
        #[error("the supervisor's answer is malformed: {0}")]
        Malformed(#[source] serde_json::Error),
        #[error("{path} belongs to uid {owner}, not to this user or root: refusing to talk to it")]
        NotOurs { path: String, owner: u32 },
    }

    /// A connection that has sent its request.
    pub struct Connection {
        reader: BufReader<UnixStream>,
    }

    /// Sends `request` to the supervisor listening on `socket`. `Ok(None)`
    /// when none listens there. `timeout` bounds each read (`None`: the
    /// supervisor's own deadlines bound the answer, and its death ends it).
    pub fn send(
        socket: &Path,
        request: Request,
        timeout: Option<Duration>,
    ) -> Result<Option<Connection>, ClientError> {
        check_owner(socket)?;
        let mut stream = match UnixStream::connect(socket) {
            Ok(stream) => stream,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused
                ) =>
            {
                return Ok(None);
            }
            Err(source) => {
                return Err(ClientError::Connect {
                    path: socket.display().to_string(),
                    source,
                });
            }
        };
        stream.set_read_timeout(timeout).map_err(io_error)?;
        let envelope = Envelope {
            protocol: PROTOCOL_VERSION,
            request,
        };
        let mut frame = serde_json::to_vec(&envelope).expect("a request serialises");
        frame.push(b'\n');
        stream.write_all(&frame).map_err(io_error)?;
        Ok(Some(Connection {
            reader: BufReader::new(stream),
        }))
    }

    /// [`send`], then the first answer.
    pub fn call(
        socket: &Path,
        request: Request,
        timeout: Duration,
    ) -> Result<Option<Response>, ClientError> {
        match send(socket, request, Some(timeout))? {
            Some(mut connection) => connection.next().map(Some),
            None => Ok(None),
        }
    }

    impl Connection {
        /// The next answer frame (at most `MAX_FRAME` bytes are read for it).
        #[allow(clippy::should_implement_trait)]
        pub fn next(&mut self) -> Result<Response, ClientError> {
            let mut line = String::new();
            (&mut self.reader)
                .take(MAX_FRAME as u64)
                .read_line(&mut line)
                .map_err(io_error)?;
            if line.is_empty() {
                return Err(ClientError::Closed);
            }
            serde_json::from_str(&line).map_err(ClientError::Malformed)
        }
    }

    /// A socket someone else made (another user, in a folder made wider)
    /// is not our supervisor: nothing is sent to it.
    fn check_owner(socket: &Path) -> Result<(), ClientError> {
        use std::os::unix::fs::MetadataExt;
        let Ok(meta) = std::fs::symlink_metadata(socket) else {
            return Ok(()); // connect says "not running"
        };
        // SAFETY: geteuid cannot fail and touches no memory.
        let ours = unsafe { libc::geteuid() };
        if meta.uid() == ours || meta.uid() == 0 {
            Ok(())
        } else {
            Err(ClientError::NotOurs {
                path: socket.display().to_string(),
                owner: meta.uid(),
            })
        }
    }

    fn io_error(e: io::Error) -> ClientError {
        match e.kind() {
            io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe => ClientError::Closed,
            _ => ClientError::Io(e),
        }
    }
}
