//! An upgrade (or rollback, or crash recovery) hosted by the supervisor. The
//! engine runs as a future the event loop polls beside everything else; it
//! reaches the supervisor's daemon only through [`ChannelHost`], whose calls
//! the loop answers when the daemon has actually stopped or become healthy.
//! Progress streams to the requesting connection from a task of its own; for
//! a handover to another launcher the connection is detached, flushed, and
//! passed on by its descriptor.

use std::future::Future;
use std::os::fd::{AsRawFd, RawFd};
use std::pin::Pin;
use std::time::Duration;

use tokio::net::unix::OwnedWriteHalf;
use tokio::sync::{mpsc, oneshot};
use tracing::info;

use waiaas_shared::admin::{Progress, Response, UpgradeReport, UpgradeRequest};
use waiaas_shared::config::Config;
use waiaas_shared::control::write_frame;
use waiaas_shared::layout::DataDir;

use crate::daemon_binary;
use crate::upgrade::{Engine, Host, HostError};

/// What the engine asks of the supervisor.
pub enum HostCall {
    Running(oneshot::Sender<bool>),
    /// Hold the running daemon's checkpoints; dropped unanswered if it cannot.
    HoldCheckpoints(oneshot::Sender<bool>),
    Stop(oneshot::Sender<Result<(), HostError>>),
    /// The change is committed: the daemon started on probation serves clients.
    Open,
    Start {
        version: String,
        /// Its daemon can start on probation (asked off the loop).
        probation: bool,
        done: oneshot::Sender<Result<(), HostError>>,
    },
    /// Whether release `version`'s launcher is another one than this.
    HandsOver {
        version: String,
        answer: oneshot::Sender<bool>,
    },
    /// Become release `version`'s launcher; answered only if that failed.
    HandOver {
        version: String,
        failed: oneshot::Sender<HostError>,
    },
}

/// The engine's side: every call is a message to the loop and a wait for
/// its answer (a loop that went away answers "shutting down").
struct ChannelHost {
    calls: mpsc::UnboundedSender<HostCall>,
    /// `current`'s folder, whose daemon a start runs.
    current: std::path::PathBuf,
    /// Finishing a handed-over step: the first start's outcome confirms the
    /// handover (`waiaas_shared::handover::confirm`).
    confirms_handover: bool,
    /// A daemon this host started waits, on probation, to be opened.
    started: bool,
}

impl Host for ChannelHost {
    async fn daemon_running(&mut self) -> bool {
        let (tx, rx) = oneshot::channel();
        let _ = self.calls.send(HostCall::Running(tx));
        rx.await.unwrap_or(false)
    }

    async fn hold_checkpoints(&mut self) -> bool {
        let (tx, rx) = oneshot::channel();
        let _ = self.calls.send(HostCall::HoldCheckpoints(tx));
        // A folded WAL is small; a daemon that does not answer in time is
        // backed up after it stops, as if it could not hold them.
        matches!(tokio::time::timeout(HOLD_TIMEOUT, rx).await, Ok(Ok(true)))
    }

    async fn stop_daemon(&mut self) -> Result<(), HostError> {
        let (tx, rx) = oneshot::channel();
        let _ = self.calls.send(HostCall::Stop(tx));
        rx.await.unwrap_or(Err(HostError::ShuttingDown))
    }

    async fn start_daemon(&mut self, version: &str) -> Result<(), HostError> {
        let (done, rx) = oneshot::channel();
        let version = version.to_string();
        // Asked here, not on the loop: running a binary takes a moment.
        let probation = daemon_binary::starts_on_probation(&self.current).await;
        let _ = self.calls.send(HostCall::Start {
            version,
            probation,
            done,
        });
        let started = rx.await.unwrap_or(Err(HostError::ShuttingDown));
        self.started = started.is_ok();
        if std::mem::take(&mut self.confirms_handover) {
            // Healthy, or failed and rolled back by this launcher: either
            // way it is alive and in charge, within its own step deadlines.
            if let Some(left) = super::handover::confirm() {
                info!(
                    "confirmed the handover ({:.1} s of its deadline left)",
                    left.as_secs_f64()
                );
            }
        }
        started
    }

    async fn open(&mut self) {
        if std::mem::take(&mut self.started) {
            let _ = self.calls.send(HostCall::Open);
        }
    }

    async fn hands_over_to(&mut self, version: &str) -> bool {
        let (answer, rx) = oneshot::channel();
        let version = version.to_string();
        let _ = self.calls.send(HostCall::HandsOver { version, answer });
        rx.await.unwrap_or(false)
    }

    async fn hand_over(&mut self, version: &str) -> HostError {
        let (failed, rx) = oneshot::channel();
        let version = version.to_string();
        let _ = self.calls.send(HostCall::HandOver { version, failed });
        rx.await.unwrap_or(HostError::ShuttingDown)
    }
}

/// What the upgrade is doing, for the event loop.
pub enum Work {
    /// An operator's `upgrade`: its report goes to the requesting connection.
    Request,
    /// Rolling back what a crash left half-done, before the first start.
    Recovery,
    /// Finishing the step 7 another launcher handed to this one.
    Resume,
    /// Moving the installation to the newer release beside this launcher
    /// (after `npm install -g`), before the first start.
    Local,
    /// An automatic upgrade (`[update] auto`): its report is logged.
    Auto,
}

/// A running upgrade, as the event loop sees it.
pub struct Upgrade {
    pub work: Work,
    /// The engine: a report for a request; for a recovery, the report of a
    /// failed one (`None` when it succeeded or had nothing to do).
    pub engine: Pin<Box<dyn Future<Output = Option<UpgradeReport>>>>,
    pub calls: mpsc::UnboundedReceiver<HostCall>,
    pub progress: mpsc::UnboundedReceiver<Progress>,
    /// The last step announced (step 1 is the preflight, which may be abandoned).
    pub step: Option<Progress>,
    /// What the supervisor does once it has ended.
    pub then: Afterwards,
    reply: Option<Reply>,
}

/// What the supervisor does once an upgrade has ended, besides its report.
#[derive(Debug, Default, Clone, Copy)]
pub struct Afterwards {
    /// Stop: a stop was asked for while the change could not be abandoned.
    pub stop: bool,
    /// Start the service: the upgrade retries the rollback of a change that
    /// refused it.
    pub start_service: bool,
}

/// The requesting connection, written by a task of its own.
struct Reply {
    frames: mpsc::UnboundedSender<Response>,
    /// Gives the connection back once `frames` is closed and all is written.
    writer: tokio::task::JoinHandle<Option<OwnedWriteHalf>>,
}

/// How long a daemon may take to hold its checkpoints (a checkpoint of its WAL).
const HOLD_TIMEOUT: Duration = Duration::from_secs(10);

/// How long the last frames may take to reach a command before a handover.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(1);

impl Upgrade {
    /// Starts `request`; its progress and report stream to `reply`.
    pub fn request(
        dir: DataDir,
        config: Config,
        request: UpgradeRequest,
        reply: OwnedWriteHalf,
    ) -> Self {
        Self::new(Work::Request, dir, config, Some(request), Some(reply))
    }

    /// Upgrades from the release folder beside this launcher, before the
    /// first start; its report is logged.
    pub fn local(dir: DataDir, config: Config, folder: std::path::PathBuf) -> Self {
        let request = UpgradeRequest {
            action: waiaas_shared::admin::UpgradeAction::FromFile(folder),
            no_start: false,
            allow_downgrade: false,
        };
        Self::new(Work::Local, dir, config, Some(request), None)
    }

    /// The upgrade to `version` an operator's `upgrade --to` would run,
    /// started by the supervisor's policy.
    pub fn auto(dir: DataDir, config: Config, version: &semver::Version) -> Self {
        let request = UpgradeRequest {
            action: waiaas_shared::admin::UpgradeAction::To(version.to_string()),
            no_start: false,
            allow_downgrade: false,
        };
        Self::new(Work::Auto, dir, config, Some(request), None)
    }

    /// Finishes the rollback of a change a crash interrupted.
    pub fn recovery(dir: DataDir, config: Config) -> Self {
        Self::new(Work::Recovery, dir, config, None, None)
    }

    /// Finishes a handed-over step 7 (or rolls back); the report goes to the
    /// command whose connection was handed over too.
    pub fn resume(dir: DataDir, config: Config, reply: Option<OwnedWriteHalf>) -> Self {
        Self::new(Work::Resume, dir, config, None, reply)
    }

    fn new(
        work: Work,
        dir: DataDir,
        config: Config,
        request: Option<UpgradeRequest>,
        reply: Option<OwnedWriteHalf>,
    ) -> Self {
        let (calls_tx, calls) = mpsc::unbounded_channel();
        let (progress_tx, progress) = mpsc::unbounded_channel();
        let resume = matches!(work, Work::Resume);
        let host = ChannelHost {
            calls: calls_tx,
            current: dir.current(),
            confirms_handover: resume,
            started: false,
        };
        Self {
            work,
            engine: Box::pin(drive(dir, config, host, progress_tx, request, resume)),
            calls,
            progress,
            step: None,
            then: Afterwards::default(),
            reply: reply.map(stream_to),
        }
    }

    /// Whether the change has begun (step 2 on): from then on it is finished
    /// or rolled back, never abandoned.
    pub fn past_preflight(&self) -> bool {
        self.step.as_ref().is_some_and(|p| p.step >= 2)
    }

    /// Records and forwards a progress frame.
    pub fn progressed(&mut self, p: Progress) {
        if p.bytes.is_none() {
            info!(
                "upgrade step {}/{}: {} — {}",
                p.step, p.of, p.name, p.message
            );
            self.step = Some(p.clone());
        }
        self.send(Response::Progress(p));
    }

    /// Sends the final answer; the writer task ends after it.
    pub fn finish(mut self, report: UpgradeReport) {
        info!("upgrade: {:?}: {}", report.outcome, report.message);
        self.send(Response::Upgrade(report));
    }

    /// Sends the final answer and waits (bounded) until it is written: this
    /// process may become another launcher right after.
    pub async fn finish_flushed(mut self, report: UpgradeReport) {
        info!("upgrade: {:?}: {}", report.outcome, report.message);
        self.send(Response::Upgrade(report));
        let _ = self.detach_reply().await;
    }

    fn send(&mut self, response: Response) {
        if let Some(reply) = &self.reply {
            let _ = reply.frames.send(response);
        }
    }

    /// Detaches the requesting connection for a handover: what was sent is
    /// written (bounded), and its descriptor stays open for the next
    /// launcher. `None` without one (or if it could not be flushed).
    pub async fn detach_reply(&mut self) -> Option<RawFd> {
        let Reply { frames, writer } = self.reply.take()?;
        drop(frames);
        let half = tokio::time::timeout(FLUSH_TIMEOUT, writer)
            .await
            .ok()?
            .ok()??;
        let fd = half.as_ref().as_raw_fd();
        // Dropping the half would shut the connection down for writing.
        std::mem::forget(half);
        Some(fd)
    }

    /// Takes the connection back after a handover that did not happen.
    pub fn reattach_reply(&mut self, fd: RawFd) {
        self.reply = adopt_reply(fd).map(stream_to);
    }
}

/// Runs the engine over owned copies: `request`; without one, a resume of a
/// handed-over step 7 or else a recovery (whose report is `None` when it
/// succeeded or had nothing to do).
async fn drive(
    dir: DataDir,
    config: Config,
    mut host: ChannelHost,
    progress: mpsc::UnboundedSender<Progress>,
    request: Option<UpgradeRequest>,
    resume: bool,
) -> Option<UpgradeReport> {
    let mut progress = move |p: Progress| drop(progress.send(p));
    let mut engine = Engine {
        dir: &dir,
        config: &config,
        host: &mut host,
        progress: &mut progress,
    };
    match request {
        Some(request) => Some(engine.run(&request).await),
        None if resume => match engine.resume().await {
            Some(report) => Some(report),
            None => {
                // Nothing handed over to finish: taken over, now recover.
                super::handover::confirm();
                engine.recover().await.err()
            }
        },
        None => engine.recover().await.err(),
    }
}

/// Writes responses to the connection from a task of its own; a command that
/// went away does not stop the upgrade. The connection is given back at the end.
fn stream_to(mut reply: OwnedWriteHalf) -> Reply {
    let (frames, mut rx) = mpsc::unbounded_channel::<Response>();
    let writer = tokio::spawn(async move {
        while let Some(frame) = rx.recv().await {
            if write_frame(&mut reply, &frame).await.is_err() {
                while rx.recv().await.is_some() {}
                return None;
            }
        }
        Some(reply)
    });
    Reply { frames, writer }
}

/// A connection handed over by descriptor, as the write half the writer takes.
pub fn adopt_reply(fd: RawFd) -> Option<OwnedWriteHalf> {
    use std::os::fd::FromRawFd;
    // SAFETY: the descriptor was handed to this process alone, open.
    let stream = unsafe { std::os::unix::net::UnixStream::from_raw_fd(fd) };
    stream.set_nonblocking(true).ok()?;
    let stream = tokio::net::UnixStream::from_std(stream).ok()?;
    Some(stream.into_split().1)
}
