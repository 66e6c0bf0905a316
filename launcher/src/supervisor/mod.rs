//! `waiaas-launcher run`: the long-lived supervisor.
//!
//! It binds the HTTP listener once (or takes systemd's) and hands it to every
//! daemon it starts, so while a daemon is replaced clients wait in the kernel's
//! backlog instead of being refused. Each daemon gets one end of a socketpair
//! as its control channel (`waiaas_shared::control`); readiness is the daemon's
//! `ready` frame followed by a healthy `/health`.
//!
//! The supervisor is a state machine driven by one event loop
//! ([`Supervisor::next_event`]) that never waits on one thing alone: the
//! daemon's exit and frames, signals, admin requests, a health probe, the
//! nearest deadline (hello, ready, healthy, stop, backoff) and a hosted
//! upgrade ([`upgrading`]) are all raced in one `select!`. A probe of a daemon
//! that has exited is dropped the moment its exit is seen.
//!
//! Everything runs on one thread: the daemon's parent-death signal
//! (`PR_SET_PDEATHSIG`) fires when the *thread* that forked it exits, so the
//! forking thread must live as long as the process.

mod admin;
mod auto;
mod backoff;
mod daemon;
pub mod handover;
pub mod sdnotify;
mod upgrading;

use std::future::Future;
use std::net::{SocketAddr, TcpListener};
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::path::PathBuf;
use std::pin::Pin;
use std::process::ExitStatus;
use std::time::Duration;

use tokio::net::unix::OwnedWriteHalf;
use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tracing::{error, info, warn};

use waiaas_shared::admin::{
    self as protocol, DaemonStatus, Outcome, Request, Response, UpgradeReport,
};
use waiaas_shared::config::{AutoLevel, Config};
use waiaas_shared::control::{self, FromDaemon, FromLauncher};
use waiaas_shared::failpoint;
use waiaas_shared::handover::{HANDOVER_ENV, Handover};
use waiaas_shared::health::HealthResponse;
use waiaas_shared::layout::DataDir;
use waiaas_shared::listen_fds;
use waiaas_shared::version::VERSION;

use crate::daemon_binary::{self, describe_exit};
use crate::failure::Failure;
use crate::pidfile::PidFile;
use crate::probe;
use crate::supervisor::sdnotify::Notifier;
use crate::upgrade::HostError;
use admin::AdminCall;
use daemon::{Daemon, DaemonEvent, Listening};
use upgrading::{HostCall, Upgrade, Work};

/// How long a new daemon has to say hello on its control channel.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest single health probe while starting; probes repeat until the deadline.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// Pause between failed probes.
const PROBE_PAUSE: Duration = Duration::from_millis(20);
/// How long `status` waits for `/health`.
const STATUS_PROBE_TIMEOUT: Duration = Duration::from_millis(500);
/// How long the last answer (to `stop`) may take to write.
const REPLY_TIMEOUT: Duration = Duration::from_secs(1);
/// Extra time after the shutdown deadline before the daemon is killed.
const KILL_GRACE: Duration = Duration::from_secs(2);

/// Runs the supervisor until SIGTERM/SIGINT or an admin `stop`.
pub fn run(dir: &DataDir, config: &Config) -> Result<(), Failure> {
    if std::env::var_os(HANDOVER_ENV).is_some() {
        failpoint::hit("handover-after-exec");
    }
    // Before any thread exists: both read and clear environment variables.
    let notifier = Notifier::from_env();
    let handover = Handover::take();
    crate::logging::init(&config.daemon.log_level);
    let handover = handover.unwrap_or_else(|e| {
        warn!("{e}");
        None
    });
    let inherited = listen_fds::take_listener().map_err(|e| Failure::new(e.to_string()))?;

    if daemon_binary::in_container() && config.update.auto != AutoLevel::Off {
        return Err(Failure {
            code: waiaas_shared::exit::daemon::CONFIG_INVALID as u8,
            message: format!(
                "[update] auto = \"{}\" cannot work in a container, where the image is the unit \
                 of upgrade (SPEC §5): set auto = \"off\" (or unset WAIAAS_UPDATE_AUTO) and \
                 upgrade by pulling the new image and recreating the container",
                config.update.auto
            ),
        });
    }
    let program = daemon_binary::program(dir)?;
    let pidfile = PidFile::acquire(dir)?;
    // A standalone upgrade may be changing the files a daemon would serve:
    // wait for it (its journal, if it left one, is recovered below). After
    // the pid file, so an upgrade that starts meanwhile sees this launcher.
    wait_for_standalone_upgrade(dir, config, &notifier)?;
    dir.make_private().map_err(|e| {
        Failure::new(format!(
            "cannot make {} and its folders private (0700): {e}",
            dir.root().display()
        ))
    })?;
    // A recovery is due, and a daemon whose launcher was killed may still
    // serve (and hold the port): it is stopped before anything is changed.
    if handover.is_none() && dir.upgrade_journal().exists() {
        let grace = Duration::from_secs(config.daemon.shutdown_timeout);
        crate::orphan::stop(dir, grace).map_err(|e| Failure::new(e.to_string()))?;
    }
    // SAFETY (both adoptions): the handover names descriptors this process
    // was given alone, checked open when it was taken.
    let listener = match (&handover, inherited) {
        (Some(h), _) => unsafe { TcpListener::from_raw_fd(h.listener_fd) },
        (None, Some(listener)) => listener,
        (None, None) => TcpListener::bind((config.daemon.hostname.as_str(), config.daemon.port))
            .map_err(|e| {
                Failure::new(format!(
                    "cannot listen on {}:{}: {e} (is another WAIaaS running? change [daemon] port)",
                    config.daemon.hostname, config.daemon.port
                ))
            })?,
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::new(format!("cannot start the runtime: {e}")))?;
    let result = runtime.block_on(async {
        let socket = match &handover {
            Some(h) => admin::adopt(h.admin_fd)?,
            None => admin::bind(dir)?,
        };
        let mut supervisor =
            Supervisor::new(dir.clone(), config.clone(), listener, notifier, program)?;
        if let Some(h) = &handover {
            info!("took over from launcher {}", h.from_launcher);
            supervisor.ready_once = h.ready_sent;
            supervisor.taken_over = true;
        }
        let reply = handover
            .and_then(|h| h.reply_fd)
            .and_then(upgrading::adopt_reply);
        supervisor.serve(socket, reply).await
    });
    // An abandoned preflight may still be unpacking on the blocking pool: its
    // leftovers are cleaned up by the next install, so do not wait for it.
    runtime.shutdown_timeout(Duration::from_millis(200));
    drop(pidfile);
    result
}

/// [`crate::upgrade::lock::wait_for_upgrade`] with its progress logged, and told to
/// systemd (its start timeout extended while the wait lasts).
fn wait_for_standalone_upgrade(
    dir: &DataDir,
    config: &Config,
    notifier: &Notifier,
) -> Result<(), Failure> {
    let limit = crate::upgrade::lock::wait_limit(config);
    let tell = |pid: u32, waited: Duration| {
        info!(
            "an upgrade without a supervisor (pid {pid}) is changing {}; starting once it has \
             finished (waited {} s, at most {} s)",
            dir.root().display(),
            waited.as_secs(),
            limit.as_secs()
        );
        let extend = 3 * crate::upgrade::lock::WAIT_TELL_EVERY;
        notifier.notify(&format!(
            "STATUS=waiting for the upgrade in progress (pid {pid})\nEXTEND_TIMEOUT_USEC={}",
            extend.as_micros()
        ));
        if notifier.watchdog_interval().is_some() {
            notifier.notify("WATCHDOG=1");
        }
    };
    crate::upgrade::lock::wait_for_upgrade(dir, limit, &crate::upgrade::lock::SystemClock, tell)
        .map_err(|e| Failure::new(e.to_string()))?;
    Ok(())
}

/// What the supervisor is doing, as `status` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Starting,
    Running,
    BackingOff,
    /// The daemon exited with a permanent code: not restarted.
    Refused,
    /// Left stopped on purpose (`upgrade --no-start`, an upgrade's step 2).
    Stopped,
    Stopping,
}

impl State {
    fn name(self) -> &'static str {
        match self {
            State::Starting => "starting",
            State::Running => "running",
            State::BackingOff => "backing-off",
            State::Refused => "refused",
            State::Stopped => "stopped",
            State::Stopping => "stopping",
        }
    }
}

/// Who a start is for, and so what its failure means.
enum Purpose {
    /// The service: a failure is retried on the backoff schedule.
    Service,
    /// An upgrade's host call: a failure is reported to the engine, which
    /// rolls back; the daemon must report `version`. With `probation` it
    /// serves only a probe listener until the engine has committed and
    /// opens it ([`HostCall::Open`]).
    Engine {
        version: String,
        done: oneshot::Sender<Result<(), HostError>>,
        probation: bool,
    },
}

/// How far a start has got.
enum Stage {
    /// Waiting for hello, due by `by`.
    Hello {
        by: Instant,
    },
    Ready,
    /// Probing `/health`: a probe in flight, or the next one due at `next`.
    Healthy {
        next: Instant,
        last_error: Option<String>,
    },
}

/// What to do once a stopping daemon has exited.
enum AfterStop {
    Restart,
    Exit,
    Engine(oneshot::Sender<Result<(), HostError>>),
    /// It was killed because its start failed for `reason`.
    StartFailed {
        reason: String,
        purpose: Purpose,
    },
}

/// The daemon slot.
enum Slot {
    Empty,
    Starting {
        daemon: Daemon,
        stage: Stage,
        deadline: Instant,
        purpose: Purpose,
    },
    Running(Daemon),
    Stopping {
        daemon: Daemon,
        kill_at: Instant,
        killed: bool,
        then: AfterStop,
    },
}

impl Slot {
    fn daemon(&mut self) -> Option<&mut Daemon> {
        match self {
            Slot::Empty => None,
            Slot::Starting { daemon, .. }
            | Slot::Running(daemon)
            | Slot::Stopping { daemon, .. } => Some(daemon),
        }
    }
}

type Probe = Pin<Box<dyn Future<Output = Result<HealthResponse, String>>>>;

/// Why the event loop woke up.
enum Event {
    Terminate(&'static str),
    Hangup,
    Admin(AdminCall),
    Daemon(DaemonEvent),
    Probed(Result<HealthResponse, String>),
    Deadline,
    Watchdog,
    Host(HostCall),
    Progress(protocol::Progress),
    Upgraded(Option<UpgradeReport>),
    /// The automatic-upgrade planner has something due.
    AutoDue,
    /// Its registry check ended.
    AutoChecked(Result<crate::auto::Found, String>),
    /// The fleet lock answered.
    FleetAnswered(auto::FleetAsk, Result<(), crate::auto::fleet::LockError>),
    /// A notification POST ended: its event, delivered or not.
    Notified(String, bool),
}

struct Signals {
    term: Signal,
    int: Signal,
    hup: Signal,
}

struct Supervisor {
    dir: DataDir,
    /// The daemon binary started (see [`daemon_binary::program`]).
    program: PathBuf,
    config: Config,
    listener: TcpListener,
    health_addr: SocketAddr,
    notifier: Notifier,
    slot: Slot,
    /// A health probe of the starting daemon, in flight.
    probe: Option<Probe>,
    /// When the next service start is due (backing off).
    retry_at: Option<Instant>,
    /// Starts that failed or crashed within the stability window.
    /// The restart policy's count.
    backoff: backoff::Backoff,
    last_exit: Option<String>,
    ready_once: bool,
    /// The permanent exit code of the last refused start.
    refused_code: Option<i32>,
    /// No automatic starts: stopped on purpose, refused, or held by an upgrade.
    held: Option<State>,
    /// Refused because a journal says a change is unfinished: why, and what to do.
    uncommitted: Option<String>,
    upgrade: Option<Upgrade>,
    /// A stop was asked for while an upgrade could not be abandoned.
    stop_after_upgrade: bool,
    /// Connections waiting for a restart (or stop) to finish.
    restart_replies: Vec<OwnedWriteHalf>,
    stop_replies: Vec<OwnedWriteHalf>,
    calls: mpsc::UnboundedReceiver<AdminCall>,
    calls_tx: mpsc::UnboundedSender<AdminCall>,
    watchdog: Option<tokio::time::Interval>,
    /// Set when the loop should end, with how.
    exit: Option<Result<(), Failure>>,
    /// The admin socket's descriptor, for a handover.
    admin_fd: RawFd,
    /// This process was handed the service by another launcher (an exec).
    taken_over: bool,
    /// A recovery restored a release whose launcher is another one: its
    /// daemon is left for that launcher to start, at the first start.
    start_deferred: bool,
    /// Automatic upgrades; `None` when `[update] auto = "off"`.
    auto: Option<auto::Auto>,
}

impl Supervisor {
    fn new(
        dir: DataDir,
        config: Config,
        listener: TcpListener,
        notifier: Notifier,
        program: PathBuf,
    ) -> Result<Self, Failure> {
        let local = listener
            .local_addr()
            .map_err(|e| Failure::new(format!("cannot read the listener's address: {e}")))?;
        // A wildcard listener is probed on loopback.
        let ip = if local.ip().is_unspecified() {
            std::net::Ipv4Addr::LOCALHOST.into()
        } else {
            local.ip()
        };
        let (calls_tx, calls) = mpsc::unbounded_channel();
        let watchdog = notifier.watchdog_interval().map(tokio::time::interval);
        let auto = auto::new(&dir, &config, std::sync::Arc::new(crate::auto::SystemClock))
            .map_err(|e| Failure::new(format!("automatic upgrades cannot start: {e}")))?;
        Ok(Self {
            dir,
            program,
            config,
            listener,
            health_addr: SocketAddr::new(ip, local.port()),
            notifier,
            slot: Slot::Empty,
            probe: None,
            retry_at: None,
            backoff: backoff::Backoff::default(),
            last_exit: None,
            ready_once: false,
            refused_code: None,
            held: None,
            uncommitted: None,
            upgrade: None,
            stop_after_upgrade: false,
            restart_replies: Vec::new(),
            stop_replies: Vec::new(),
            calls,
            calls_tx,
            watchdog,
            exit: None,
            admin_fd: -1,
            taken_over: false,
            start_deferred: false,
            auto,
        })
    }

    async fn serve(
        mut self,
        socket: tokio::net::UnixListener,
        reply: Option<OwnedWriteHalf>,
    ) -> Result<(), Failure> {
        self.admin_fd = socket.as_raw_fd();
        tokio::spawn(admin::accept(socket, self.calls_tx.clone()));
        let failure =
            |e: std::io::Error| Failure::new(format!("cannot install signal handlers: {e}"));
        let mut signals = Signals {
            term: signal(SignalKind::terminate()).map_err(failure)?,
            int: signal(SignalKind::interrupt()).map_err(failure)?,
            hup: signal(SignalKind::hangup()).map_err(failure)?,
        };
        info!(version = VERSION, addr = %self.health_addr, "supervisor started");

        // A step 7 handed to this launcher is finished first; any other change
        // a crash left half-done is rolled back before anything else.
        let (dir, config) = (self.dir.clone(), self.config.clone());
        let journal = self.dir.upgrade_journal().exists();
        if self.taken_over && journal {
            // Confirmed (the handover's deadline cancelled) once the start
            // of this release's daemon has an outcome: see `upgrading`.
            if let Some(left) = handover::deadline_left() {
                info!(
                    "finishing the handed-over step; confirming within {:.1} s \
                     (else SIGALRM ends this launcher and the next start rolls back)",
                    left.as_secs_f64()
                );
            }
        } else if let Some(left) = handover::confirm() {
            info!(
                "confirmed the takeover ({:.1} s of its deadline left)",
                left.as_secs_f64()
            );
        }
        if journal {
            self.held = Some(State::Stopped);
            self.upgrade = Some(if self.taken_over {
                Upgrade::resume(dir, config, reply)
            } else {
                self.say_if_unconfirmed();
                Upgrade::recovery(dir, config)
            });
        } else if let Some(folder) = crate::package::newer_release_beside(&self.dir) {
            info!(
                "moving to the newer release beside this launcher ({}){}",
                folder.display(),
                if crate::package::is_local_build(&folder) {
                    ", a build without a signed release.json: accepted as the operator's own"
                } else {
                    ""
                }
            );
            self.held = Some(State::Stopped);
            self.upgrade = Some(Upgrade::local(dir, config, folder));
        } else {
            self.first_start().await;
        }
        loop {
            if let Some(result) = self.exit.take() {
                for reply in self.stop_replies.drain(..) {
                    let done = Response::Done {
                        message: "stopped".into(),
                    };
                    // Bounded: a client that does not read must not hold the exit.
                    let _ = tokio::time::timeout(REPLY_TIMEOUT, admin::answer(reply, &done)).await;
                }
                return result;
            }
            let event = self.next_event(&mut signals).await;
            self.handle(event).await;
        }
    }

    /// The one place the supervisor waits.
    async fn next_event(&mut self, signals: &mut Signals) -> Event {
        let deadline = self.next_deadline();
        let upgrade = self.upgrade.as_mut();
        let (engine, host_calls, progress) = match upgrade {
            Some(u) => (
                Some(&mut u.engine),
                Some(&mut u.calls),
                Some(&mut u.progress),
            ),
            None => (None, None, None),
        };
        let (auto_wake, auto_check, notification, fleet) = match self.auto.as_mut() {
            Some(a) => (
                Some(a.wake_at()),
                a.check.as_mut(),
                a.delivery.as_mut(),
                a.fleet_call.as_mut(),
            ),
            None => (None, None, None, None),
        };
        tokio::select! {
            // Progress first, so every frame is forwarded before the report.
            Some(p) = recv(progress) => Event::Progress(p),
            Some(call) = recv(host_calls) => Event::Host(call),
            report = poll(engine) => Event::Upgraded(report),
            _ = signals.term.recv() => Event::Terminate("SIGTERM"),
            _ = signals.int.recv() => Event::Terminate("SIGINT"),
            _ = signals.hup.recv() => Event::Hangup,
            Some(call) = self.calls.recv() => Event::Admin(call),
            event = daemon_event(self.slot.daemon()) => Event::Daemon(event),
            result = poll(self.probe.as_mut()) => Event::Probed(result),
            _ = sleep_until(deadline) => Event::Deadline,
            _ = tick(self.watchdog.as_mut()) => Event::Watchdog,
            result = poll(auto_check) => Event::AutoChecked(result),
            (id, ok) = poll(notification) => Event::Notified(id, ok),
            (ask, result) = poll(fleet) => Event::FleetAnswered(ask, result),
            _ = sleep_until(auto_wake) => Event::AutoDue,
        }
    }

    /// The nearest of: the start's deadline or next probe, the kill of a
    /// stopping daemon, the next retry.
    fn next_deadline(&self) -> Option<Instant> {
        let slot = match &self.slot {
            Slot::Starting {
                stage: Stage::Healthy { next, .. },
                deadline,
                ..
            } if self.probe.is_none() => Some((*next).min(*deadline)),
            Slot::Starting {
                stage: Stage::Hello { by },
                ..
            } => Some(*by),
            Slot::Starting { deadline, .. } => Some(*deadline),
            Slot::Stopping {
                kill_at,
                killed: false,
                ..
            } => Some(*kill_at),
            _ => None,
        };
        match (slot, self.retry_at) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    async fn handle(&mut self, event: Event) {
        match event {
            Event::Terminate(name) => self.terminate(name, None),
            Event::Hangup => {
                if self.upgrade.is_some() {
                    warn!("SIGHUP: ignored while an upgrade runs");
                } else {
                    info!("SIGHUP: restarting the daemon");
                    self.restart_or_recover();
                }
            }
            Event::Admin(call) => self.admin(call),
            Event::Daemon(DaemonEvent::Exited(status)) => self.exited(status),
            Event::Daemon(DaemonEvent::Frame(frame)) => self.frame(frame),
            Event::Probed(result) => self.probed(result),
            Event::Deadline => self.deadline(),
            Event::Watchdog => self.notifier.notify("WATCHDOG=1"),
            Event::Host(call) => self.host_call(call).await,
            Event::Progress(p) => {
                if let Some(upgrade) = &mut self.upgrade {
                    upgrade.progressed(p);
                }
            }
            Event::Upgraded(report) => self.upgraded(report).await,
            Event::AutoDue => self.auto_due(),
            Event::AutoChecked(result) => {
                if let Some(auto) = &mut self.auto {
                    auto.checked(result);
                }
                // A candidate may be due at once.
                self.auto_due();
            }
            Event::Notified(id, ok) => {
                if let Some(auto) = &mut self.auto {
                    auto.delivered(id, ok);
                }
            }
            Event::FleetAnswered(ask, result) => self.fleet_answered(ask, result),
        }
    }

    // ---- starting --------------------------------------------------------

    /// Spawns a daemon for `purpose`; its readiness is then driven by events.
    fn start(&mut self, purpose: Purpose) {
        debug_assert!(matches!(self.slot, Slot::Empty));
        self.retry_at = None;
        if matches!(purpose, Purpose::Service) {
            // Only the engine starts a daemon while a change is unfinished:
            // the service would serve an installation not committed.
            if self.dir.upgrade_journal().exists() {
                return self.refuse_uncommitted(None);
            }
            self.held = None;
            self.uncommitted = None;
        }
        let listening = match &purpose {
            Purpose::Engine {
                probation: true, ..
            } => Listening::Probation,
            _ => Listening::Public(&self.listener),
        };
        match Daemon::spawn(&self.program, &self.dir, listening) {
            Ok(daemon) => {
                if matches!(purpose, Purpose::Engine { .. }) && self.resuming() {
                    failpoint::hit("handover-daemon-spawned");
                }
                let health_timeout = Duration::from_secs(self.config.update.health_timeout);
                // `health_timeout` bounds the whole start (hello, ready,
                // healthy): the time a new daemon has to become healthy (SPEC §3).
                let now = Instant::now();
                self.slot = Slot::Starting {
                    daemon,
                    stage: Stage::Hello {
                        by: now + HELLO_TIMEOUT.min(health_timeout),
                    },
                    deadline: now + health_timeout,
                    purpose,
                };
            }
            Err(reason) => self.start_failed(purpose, NotReady::Spawn(reason)),
        }
    }

    fn frame(&mut self, frame: FromDaemon) {
        if let FromDaemon::CheckpointsHeld | FromDaemon::CheckpointsNotHeld { .. } = frame {
            return self.checkpoints_answer(frame);
        }
        if let FromDaemon::Status { writes, .. } = frame {
            if let Some(auto) = &mut self.auto {
                let now = auto.now();
                auto.planner.sampled(now, writes);
                // The rate may now be known: decide at once.
                self.auto_due();
            }
            return;
        }
        let Slot::Starting { daemon, stage, .. } = &mut self.slot else {
            if let FromDaemon::Stopping { reason } = frame {
                info!("daemon is stopping: {reason}");
            }
            return;
        };
        match (&*stage, frame) {
            (
                Stage::Hello { .. },
                FromDaemon::Hello {
                    protocol,
                    version,
                    holds_checkpoints,
                    probation,
                    ..
                },
            ) if protocol == control::PROTOCOL_VERSION => {
                if probation != daemon.probe_addr().is_some() {
                    return self.fail_start(format!(
                        "the daemon {} on probation, but was started {}",
                        if probation { "says it is" } else { "is not" },
                        if probation { "serving" } else { "on probation" },
                    ));
                }
                daemon.version = version;
                daemon.holds_checkpoints = holds_checkpoints;
                *stage = Stage::Ready;
            }
            (Stage::Hello { .. }, FromDaemon::Hello { protocol, .. }) => self.fail_start(format!(
                "the daemon speaks control protocol {protocol}, this launcher {}",
                control::PROTOCOL_VERSION
            )),
            (Stage::Hello { .. }, other) => self.fail_start(format!(
                "the daemon's first message was {other:?}, not hello"
            )),
            (Stage::Ready, FromDaemon::Ready { schema_version }) => {
                daemon.schema_version = schema_version;
                *stage = Stage::Healthy {
                    next: Instant::now(),
                    last_error: None,
                };
            }
            (_, FromDaemon::Stopping { reason }) => {
                self.fail_start(format!("the daemon stopped: {reason}"))
            }
            _ => {}
        }
    }

    /// The daemon's answer to a hold of its checkpoints, for the engine.
    fn checkpoints_answer(&mut self, frame: FromDaemon) {
        let Slot::Running(daemon) = &mut self.slot else {
            return;
        };
        let held = match frame {
            FromDaemon::CheckpointsNotHeld { reason } => {
                warn!(
                    "the daemon cannot hold its checkpoints ({reason}); backing up after it stops"
                );
                false
            }
            _ => true,
        };
        if let Some(answer) = daemon.hold_answer.take() {
            let _ = answer.send(held);
        }
    }

    fn probed(&mut self, result: Result<HealthResponse, String>) {
        self.probe = None;
        let Slot::Starting { daemon, stage, .. } = &mut self.slot else {
            return;
        };
        match result {
            Ok(health) if health.version == daemon.version => self.became_ready(),
            Ok(health) => {
                let reason = format!(
                    "/health reports version {}, but the daemon said {}",
                    health.version, daemon.version
                );
                self.fail_start(reason);
            }
            Err(e) => {
                *stage = Stage::Healthy {
                    next: Instant::now() + PROBE_PAUSE,
                    last_error: Some(e),
                };
            }
        }
    }

    fn became_ready(&mut self) {
        if let Slot::Starting {
            daemon,
            purpose: Purpose::Engine { version, .. },
            ..
        } = &self.slot
            && daemon.version != *version
        {
            let reason = format!(
                "the daemon that started is {}, not {version}",
                daemon.version
            );
            self.fail_start(reason);
            return;
        }
        let Slot::Starting {
            daemon, purpose, ..
        } = std::mem::replace(&mut self.slot, Slot::Empty)
        else {
            return;
        };
        if let Purpose::Engine { done, .. } = purpose {
            if self.resuming() {
                failpoint::hit("handover-daemon-ready");
            }
            let _ = done.send(Ok(()));
        }
        info!(pid = daemon.pid, version = %daemon.version, schema = daemon.schema_version, "daemon ready");
        let status = format!(
            "STATUS=serving {} (schema {})",
            daemon.version, daemon.schema_version
        );
        if self.ready_once {
            self.notifier.notify(&status);
        } else {
            self.ready_once = true;
            self.notifier.notify(&format!("READY=1\n{status}"));
        }
        self.slot = Slot::Running(daemon);
        for reply in self.restart_replies.drain(..) {
            let done = Response::Done {
                message: "daemon restarted".into(),
            };
            admin::answer_later(reply, done);
        }
    }

    /// Kills a daemon whose start failed; the exit then says how it ended.
    fn fail_start(&mut self, reason: String) {
        self.probe = None;
        let Slot::Starting {
            mut daemon,
            purpose,
            ..
        } = std::mem::replace(&mut self.slot, Slot::Empty)
        else {
            return;
        };
        daemon.kill();
        self.slot = Slot::Stopping {
            daemon,
            kill_at: Instant::now(),
            killed: true,
            then: AfterStop::StartFailed { reason, purpose },
        };
    }

    /// A start did not reach ready: report it, then retry, refuse, or (for
    /// the engine) leave the daemon stopped.
    fn start_failed(&mut self, purpose: Purpose, failure: NotReady) {
        let reason = failure.to_string();
        self.last_exit = Some(reason.clone());
        for reply in self.restart_replies.drain(..) {
            let message = format!("the daemon did not come back: {reason}");
            admin::answer_later(reply, Response::Error { message });
        }
        match purpose {
            Purpose::Engine { done, .. } => {
                let _ = done.send(Err(failure.into()));
                self.held = Some(State::Stopped);
            }
            Purpose::Service => match self.backoff.failed(failure.status()) {
                backoff::Next::Refuse => {
                    self.refused_code = failure.status().and_then(|s| s.as_ref().ok()?.code());
                    error!(
                        "daemon did not start: {reason}; not restarting (fix the cause, then `waiaas-launcher restart`)"
                    );
                    self.notifier
                        .notify(&format!("STATUS=daemon did not start: {reason}"));
                    self.held = Some(State::Refused);
                    // Under systemd a service whose first start is refused must
                    // fail, with the daemon's code, so `RestartPreventExitStatus=`
                    // applies; elsewhere (a container) the supervisor stays up.
                    if !self.ready_once && self.notifier.is_active() && self.upgrade.is_none() {
                        let code = self.refused_code.and_then(|c| u8::try_from(c).ok());
                        self.exit = Some(Err(Failure {
                            code: code.unwrap_or(1),
                            message: format!("the daemon refused to start: {reason}"),
                        }));
                    }
                }
                backoff::Next::RetryIn(delay) => {
                    warn!("daemon did not start: {reason}; retrying in {delay:?}");
                    self.retry_in(delay);
                }
            },
        }
    }

    fn retry_in(&mut self, delay: Duration) {
        if delay.is_zero() {
            self.start(Purpose::Service);
        } else {
            self.retry_at = Some(Instant::now() + delay);
        }
    }

    // ---- exits -----------------------------------------------------------

    fn exited(&mut self, status: std::io::Result<ExitStatus>) {
        self.probe = None;
        let description = describe_exit(&status);
        match std::mem::replace(&mut self.slot, Slot::Empty) {
            Slot::Empty => {}
            Slot::Starting { purpose, .. } => self.start_failed(purpose, NotReady::Died(status)),
            Slot::Running(daemon) => self.crashed(&daemon, &status),
            Slot::Stopping { then, .. } => {
                info!("daemon {description}");
                match then {
                    AfterStop::StartFailed { reason, purpose } => {
                        self.start_failed(purpose, NotReady::Killed { reason, status });
                    }
                    AfterStop::Restart if self.held.is_none() => {
                        self.last_exit = Some(description);
                        self.start_service();
                    }
                    AfterStop::Restart => self.last_exit = Some(description),
                    AfterStop::Engine(done) => {
                        self.last_exit = Some(description);
                        let _ = done.send(Ok(()));
                    }
                    AfterStop::Exit => {
                        self.last_exit = Some(description);
                        self.exit_now();
                    }
                }
            }
        }
    }

    /// A running daemon ended on its own.
    fn crashed(&mut self, daemon: &Daemon, status: &std::io::Result<ExitStatus>) {
        let description = describe_exit(status);
        self.last_exit = Some(description.clone());
        self.backoff.ran(daemon.started.elapsed());
        if self.held.is_some() && !backoff::is_permanent(status) {
            warn!("daemon {description}; left stopped while an upgrade holds it");
            return;
        }
        match self.backoff.failed(Some(status)) {
            backoff::Next::Refuse => {
                error!(
                    "daemon {description}; not restarting (fix the cause, then `waiaas-launcher restart`)"
                );
                self.held = Some(State::Refused);
                self.notifier
                    .notify(&format!("STATUS=daemon {description}"));
            }
            backoff::Next::RetryIn(delay) => {
                warn!("daemon {description}; restarting in {delay:?}");
                self.notifier
                    .notify(&format!("STATUS=daemon {description}; restarting"));
                self.retry_in(delay);
            }
        }
    }

    fn deadline(&mut self) {
        let now = Instant::now();
        if self.retry_at.is_some_and(|at| at <= now) && matches!(self.slot, Slot::Empty) {
            self.start(Purpose::Service);
            return;
        }
        match &mut self.slot {
            Slot::Starting {
                stage: Stage::Hello { by },
                ..
            } if *by <= now => {
                self.fail_start(format!(
                    "no hello from the daemon within {:?}",
                    HELLO_TIMEOUT.min(Duration::from_secs(self.config.update.health_timeout))
                ));
            }
            Slot::Starting {
                stage, deadline, ..
            } if *deadline <= now => {
                let reason = match stage {
                    Stage::Hello { .. } => "no hello from the daemon in time".to_string(),
                    Stage::Ready => "the daemon did not say ready in time".to_string(),
                    Stage::Healthy { last_error, .. } => format!(
                        "never became healthy: {}",
                        last_error.as_deref().unwrap_or("no answer")
                    ),
                };
                self.fail_start(reason);
            }
            Slot::Starting {
                daemon,
                stage: Stage::Healthy { next, .. },
                deadline,
                ..
            } if *next <= now && self.probe.is_none() => {
                let left = deadline.saturating_duration_since(now).min(PROBE_TIMEOUT);
                self.probe = Some(match daemon.probe_addr() {
                    Some(addr) => Box::pin(probe::on_probation(addr, left)),
                    None => Box::pin(probe::health(self.health_addr, left)),
                });
            }
            Slot::Stopping {
                daemon,
                kill_at,
                killed,
                ..
            } if *kill_at <= now && !*killed => {
                warn!("daemon did not stop in time; killing it");
                daemon.kill();
                *killed = true;
            }
            _ => {}
        }
    }

    // ---- stopping --------------------------------------------------------

    /// Orders the daemon to stop (killed after the deadline), then `then`.
    /// Without a daemon, `then` happens at once.
    fn stop_daemon(&mut self, then: AfterStop) {
        self.probe = None;
        self.retry_at = None;
        match std::mem::replace(&mut self.slot, Slot::Empty) {
            Slot::Empty => self.after_stop_now(then),
            Slot::Starting {
                daemon, purpose, ..
            } => {
                // A start is abandoned: one that was for the engine is told so.
                if let Purpose::Engine { done, .. } = purpose {
                    let _ = done.send(Err(HostError::ShuttingDown));
                }
                self.order_stop(daemon, then);
            }
            Slot::Running(daemon) => self.order_stop(daemon, then),
            Slot::Stopping {
                daemon,
                kill_at,
                killed,
                then: before,
            } => {
                // Already on its way out: an engine's failed start is told so.
                if let AfterStop::StartFailed {
                    purpose: Purpose::Engine { done, .. },
                    reason,
                } = before
                {
                    let _ = done.send(Err(HostError::NotReady(reason)));
                }
                self.slot = Slot::Stopping {
                    daemon,
                    kill_at,
                    killed,
                    then,
                };
            }
        }
    }

    /// Orders `daemon` to stop, to be killed after `shutdown_timeout` + grace.
    fn order_stop(&mut self, mut daemon: Daemon, then: AfterStop) {
        let deadline = Duration::from_secs(self.config.daemon.shutdown_timeout);
        daemon.order_stop(deadline.as_secs());
        self.slot = Slot::Stopping {
            daemon,
            kill_at: Instant::now() + deadline + KILL_GRACE,
            killed: false,
            then,
        };
    }

    fn after_stop_now(&mut self, then: AfterStop) {
        match then {
            AfterStop::Restart => self.start_service(),
            AfterStop::Exit => self.exit_now(),
            AfterStop::Engine(done) => {
                let _ = done.send(Ok(()));
            }
            AfterStop::StartFailed { .. } => {
                unreachable!("a failed start has a daemon to wait for")
            }
        }
    }

    /// A restart the operator asked for; with an unfinished change, a retry
    /// of its rollback instead (the service starts after it).
    fn restart_or_recover(&mut self) {
        if self.dir.upgrade_journal().exists() {
            self.recover();
        } else {
            self.restart();
        }
    }

    fn restart(&mut self) {
        self.backoff.reset();
        self.held = None;
        self.stop_daemon(AfterStop::Restart);
    }

    /// SIGTERM, SIGINT or an admin `stop`: abandon a preflight, let a begun
    /// upgrade finish or roll back first, then stop the daemon and exit.
    fn terminate(&mut self, why: &str, reply: Option<OwnedWriteHalf>) {
        self.stop_replies.extend(reply);
        if let Some(upgrade) = &self.upgrade {
            if upgrade.past_preflight() {
                info!(
                    "{why}: stopping once the upgrade has finished or rolled back \
                     (bounded by its step deadlines)"
                );
                self.stop_after_upgrade = true;
                return;
            }
            info!("{why}: abandoning the upgrade's preflight; nothing was changed");
            let upgrade = self.upgrade.take().expect("checked above");
            let from = crate::swap::current_version(&self.dir).ok().flatten();
            upgrade.finish(crate::upgrade::report::abandoned(from.as_deref()));
        }
        info!("{why}: stopping");
        self.shutdown();
    }

    fn shutdown(&mut self) {
        self.notifier.notify("STOPPING=1");
        self.held = Some(State::Stopping);
        self.stop_daemon(AfterStop::Exit);
    }

    /// Ends the loop (whoever asked for the stop is answered on the way out).
    fn exit_now(&mut self) {
        self.exit.get_or_insert(Ok(()));
    }

    // ---- admin requests and the hosted upgrade ---------------------------

    fn admin(&mut self, call: AdminCall) {
        let AdminCall { request, reply } = call;
        let refuse = |reply, message: &str| {
            let message = message.to_string();
            admin::answer_later(reply, Response::Error { message });
        };
        let stopping = self.held == Some(State::Stopping);
        match request {
            Request::Status => {
                // The probe runs on its own task: a daemon that just died (its
                // port held by us, so the probe waits) must not hold up the loop.
                let mut status = self.status();
                let addr = self.health_addr;
                tokio::spawn(async move {
                    if let Some(daemon) = status.daemon.as_mut().filter(|d| d.healthy) {
                        daemon.healthy = probe::health(addr, STATUS_PROBE_TIMEOUT).await.is_ok();
                    }
                    admin::answer(reply, &Response::Status(status)).await;
                });
            }
            Request::Stop => self.terminate("stop requested", Some(reply)),
            _ if stopping => refuse(reply, "the supervisor is stopping"),
            Request::Restart if self.upgrade.is_some() => refuse(
                reply,
                "an upgrade or rollback is in progress; wait for it to finish",
            ),
            Request::Restart => {
                self.restart_replies.push(reply);
                self.restart_or_recover();
            }
            Request::Upgrade(_) if self.upgrade.is_some() => refuse(
                reply,
                "another upgrade or rollback is in progress; wait for it to finish",
            ),
            Request::Upgrade(request) => {
                let (dir, config) = (self.dir.clone(), self.config.clone());
                self.upgrade = Some(Upgrade::request(dir, config, request, reply));
            }
        }
    }

    async fn host_call(&mut self, call: HostCall) {
        match call {
            HostCall::Running(answer) => {
                let _ = answer.send(self.wants_daemon());
            }
            HostCall::HoldCheckpoints(answer) => match &mut self.slot {
                Slot::Running(daemon) if daemon.holds_checkpoints => {
                    match daemon.send(&FromLauncher::HoldCheckpoints) {
                        Ok(()) => daemon.hold_answer = Some(answer),
                        Err(e) => warn!("cannot ask the daemon to hold its checkpoints: {e}"),
                    }
                }
                // Dropped: no daemon that could hold them.
                _ => drop(answer),
            },
            HostCall::Open => self.open(),
            HostCall::Stop(done) => {
                // From here the upgrade decides when a daemon runs.
                self.held = Some(State::Stopped);
                self.stop_daemon(AfterStop::Engine(done));
            }
            HostCall::HandsOver { version, answer } => {
                // Asked off the loop: running a binary takes a moment.
                let dir = self.dir.clone();
                tokio::spawn(async move {
                    let _ = answer.send(handover::launcher_differs(&dir, &version).await);
                });
            }
            HostCall::HandOver { version, failed } => {
                let program = self.dir.launcher_of(&version);
                let error = self.hand_over(&program).await;
                let _ = failed.send(HostError::HandOver {
                    program,
                    reason: error.to_string(),
                });
            }
            HostCall::Start {
                version,
                probation,
                done,
            } => {
                let recovering =
                    matches!(self.upgrade.as_ref().map(|u| &u.work), Some(Work::Recovery));
                if recovering
                    && handover::current_launcher(&self.dir, handover::Wanted::Other).is_some()
                {
                    // The release a recovery restored brings its own launcher:
                    // this process becomes it, and it starts its own daemon.
                    info!(
                        "{version} is restored; its own launcher starts its daemon \
                         (one installation, one version)"
                    );
                    self.start_deferred = true;
                    let _ = done.send(Ok(()));
                } else if matches!(self.slot, Slot::Empty) {
                    self.start(Purpose::Engine {
                        version,
                        done,
                        probation,
                    });
                } else {
                    let _ = done.send(Err(HostError::AlreadyRunning));
                }
            }
        }
    }

    /// Ends the probation of the daemon the engine started, now that its
    /// change is committed: it serves the public listener from here on. If
    /// it died meanwhile, the committed release is started as the service.
    fn open(&mut self) {
        match &mut self.slot {
            Slot::Running(daemon) => match daemon.open(&self.listener) {
                Ok(()) => info!(pid = daemon.pid, version = %daemon.version, "serving clients"),
                Err(e) => {
                    warn!("cannot hand the daemon the public listener ({e}); restarting it");
                    self.restart();
                }
            },
            // An operator's upgrade starts the committed release's daemon
            // again; before the first start, `upgraded` does (or the
            // restored release's own launcher, when a recovery deferred it).
            Slot::Empty
                if matches!(
                    self.upgrade.as_ref().map(|u| &u.work),
                    Some(Work::Request | Work::Auto)
                ) =>
            {
                warn!("the daemon exited before it could serve clients; starting it again");
                self.held = None;
                self.start(Purpose::Service);
            }
            Slot::Empty => {}
            Slot::Starting { .. } | Slot::Stopping { .. } => {}
        }
    }

    async fn upgraded(&mut self, report: Option<UpgradeReport>) {
        // Whatever it was, this launcher saw it to its end: nothing left to confirm.
        handover::confirm();
        let upgrade = self.upgrade.take().expect("an upgrade ended");
        // An automatic attempt ends with its report, whichever launcher
        // sees it (after a handover, the new release's).
        if let (Some(auto), Some(report)) = (&mut self.auto, &report) {
            auto.settle(report);
        }
        let mut back_to = None;
        // Before the first start (not an operator's request): start afterwards.
        let first = !matches!(upgrade.work, Work::Request | Work::Auto);
        // Why the change is left unfinished, when its rollback failed.
        let mut failure = None;
        match (&upgrade.work, report) {
            (Work::Request | Work::Local | Work::Auto, Some(report)) => {
                if report.outcome == Outcome::RollbackFailed {
                    failure = Some(report.message.clone());
                }
                upgrade.finish(report);
            }
            (Work::Resume, Some(report)) => {
                // Rolled back: the old release's launcher starts the old daemon.
                if report.outcome == Outcome::RolledBack {
                    back_to = report.from.clone();
                }
                if matches!(report.outcome, Outcome::Upgraded | Outcome::Restored) {
                    failpoint::hit("handover-committed");
                }
                if report.outcome == Outcome::RollbackFailed {
                    failure = Some(report.message.clone());
                }
                upgrade.finish_flushed(report).await;
            }
            (_, Some(report)) => {
                error!(
                    "{} Manual steps: {}",
                    report.message,
                    report.manual_steps.join(" ")
                );
                failure = Some(report.message);
            }
            (Work::Request | Work::Local | Work::Auto, None) => {
                unreachable!("a request always reports")
            }
            (_, None) => {}
        }
        if !matches!(self.slot, Slot::Empty) {
            self.held = None;
        }
        // An engine that ended without opening its daemon (a path that
        // forgot, or a report lost) leaves it on probation only while a
        // journal says the change is not committed.
        if let Slot::Running(daemon) = &self.slot
            && daemon.probe_addr().is_some()
            && !self.dir.upgrade_journal().exists()
        {
            self.open();
        }
        // A change left unfinished (its rollback failed) is never served.
        let unfinished = self.dir.upgrade_journal().exists();
        // The service was refused for a change that a retry (`restart`,
        // SIGHUP) has now rolled back.
        let retried = !unfinished && self.uncommitted.take().is_some();
        if unfinished && matches!(self.slot, Slot::Empty) {
            self.refuse_uncommitted(failure.as_deref());
        }
        if let Some(from) = back_to {
            let program = self.dir.launcher_of(&from);
            self.hand_over(&program).await;
            self.start(Purpose::Service);
        } else if self.stop_after_upgrade {
            self.shutdown();
        } else if retried && first && matches!(self.slot, Slot::Empty) {
            // Started as a restart is: under `current`'s own launcher.
            info!("the unfinished change is rolled back; starting the service");
            self.start_service();
        } else if first && self.held == Some(State::Stopped) && matches!(self.slot, Slot::Empty) {
            // Recovered, resumed with nothing to resume, or a local upgrade
            // that did not start a daemon: the first start.
            self.first_start().await;
        }
    }

    // ---- automatic upgrades ----------------------------------------------

    /// The planner's wake-up: a check, a sample of the daemon's writes, or
    /// the start of an automatic upgrade.
    fn auto_due(&mut self) {
        let blocked = self.auto_blocked();
        let current = crate::swap::current_version(&self.dir)
            .ok()
            .flatten()
            .and_then(|v| semver::Version::parse(&v).ok());
        let serving = match &self.slot {
            Slot::Running(daemon) if self.held.is_none() && daemon.probe_addr().is_none() => {
                Some(daemon.pid)
            }
            _ => None,
        };
        let Some(auto) = &mut self.auto else { return };
        auto.deliver_if_due();
        let Some(current) = current else { return };
        if blocked.is_none() {
            auto.settle_leftover(&current);
        }
        // A fleet slot held owes the fleet first (and holds starts back).
        let blocked = auto.fleet_duty(&current, serving).or(blocked);
        let now = auto.now();
        match auto.planner.poll(now, blocked) {
            crate::auto::Action::Idle => {}
            crate::auto::Action::Check => auto.start_check(current),
            crate::auto::Action::Sample => {
                if let Slot::Running(daemon) = &mut self.slot
                    && let Err(e) = daemon.send(&FromLauncher::Status)
                {
                    warn!("cannot ask the daemon for its write count: {e}");
                }
            }
            crate::auto::Action::Lock(to) => auto.take_slot(to),
            crate::auto::Action::Start(to) => self.start_auto(&current, &to, None),
        }
        self.say_pending();
    }

    /// The fleet lock's answer: a slot given starts the upgrade it was
    /// asked for, unless something else started meanwhile.
    fn fleet_answered(
        &mut self,
        ask: auto::FleetAsk,
        result: Result<(), crate::auto::fleet::LockError>,
    ) {
        let blocked = self.auto_blocked();
        let current = crate::swap::current_version(&self.dir)
            .ok()
            .flatten()
            .and_then(|v| semver::Version::parse(&v).ok());
        let Some(auto) = &mut self.auto else { return };
        if let Some(slot) = auto.fleet_answered(ask, result, blocked)
            && let Some(current) = current
        {
            let to = slot.version.clone();
            self.start_auto(&current, &to, Some(slot));
        }
        self.auto_due();
    }

    /// Starts an automatic upgrade, once it is recorded.
    fn start_auto(
        &mut self,
        current: &semver::Version,
        to: &semver::Version,
        slot: Option<crate::auto::fleet::FleetSlot>,
    ) {
        let Some(auto) = &mut self.auto else { return };
        if auto.begin(current, to, slot) {
            let (dir, config) = (self.dir.clone(), self.config.clone());
            self.upgrade = Some(Upgrade::auto(dir, config, to));
        }
    }

    /// Why no automatic upgrade may start now, if so.
    fn auto_blocked(&self) -> Option<String> {
        if self.upgrade.is_some() {
            return Some("an upgrade or rollback is in progress".into());
        }
        if let Some(code) = self.refused_code {
            return Some(format!(
                "the daemon's start was refused (exit {code}): {}",
                waiaas_shared::exit::daemon::describe(code)
            ));
        }
        if self.dir.upgrade_journal().exists() {
            return Some("a change is unfinished (its journal remains)".into());
        }
        if let Some(pid) = crate::upgrade::lock::UpgradeLock::holder(&self.dir) {
            return Some(format!("process {pid} holds the upgrade lock"));
        }
        match (&self.held, &self.slot) {
            (Some(state), _) => Some(format!("the service is {}", state.name())),
            (None, Slot::Running(_)) => None,
            (None, _) => Some("the daemon is not serving yet".into()),
        }
    }

    /// systemd's STATUS= line, with a pending automatic upgrade named.
    fn say_pending(&self) {
        let Some(pending) = self.auto.as_ref().and_then(|a| a.pending_line()) else {
            return;
        };
        if let Slot::Running(daemon) = &self.slot {
            self.notifier.notify(&format!(
                "STATUS=serving {} (schema {}); {pending}",
                daemon.version, daemon.schema_version
            ));
        }
    }

    /// Holds the service refused: a journal says a change is unfinished, and
    /// only the engine may start a daemon then (the service would serve an
    /// installation that is not committed, which the next recovery rolls
    /// back, dropping every write since). `failure` is why, when known.
    fn refuse_uncommitted(&mut self, failure: Option<&str>) {
        let change = match crate::upgrade::journal::Journal::load(&self.dir) {
            Ok(Some(j)) => format!(
                "the {} from {} to {}",
                match j.operation {
                    crate::upgrade::journal::Operation::Upgrade => "upgrade",
                    crate::upgrade::journal::Operation::Rollback => "rollback",
                },
                j.from,
                j.to
            ),
            _ => "a change".to_string(),
        };
        let message = format!(
            "{change} is unfinished ({} remains){}; nothing is served until it is rolled back: \
             fix the cause, then `waiaas-launcher restart` retries the rollback and starts the \
             service (as does restarting the service)",
            self.dir.upgrade_journal().display(),
            failure.map(|f| format!(": {f}")).unwrap_or_default()
        );
        error!("{message}");
        self.notifier
            .notify(&format!("STATUS=refused: {change} is unfinished"));
        for reply in self.restart_replies.drain(..) {
            let message = message.clone();
            admin::answer_later(reply, Response::Error { message });
        }
        self.held = Some(State::Refused);
        self.uncommitted = Some(message);
    }

    /// `restart` or SIGHUP while a journal records an unfinished change:
    /// retries its rollback, and the service starts once it is done.
    fn recover(&mut self) {
        info!("retrying the rollback of the unfinished change; the service starts after it");
        self.held = Some(State::Stopped);
        let (dir, config) = (self.dir.clone(), self.config.clone());
        self.upgrade = Some(Upgrade::recovery(dir, config));
    }

    /// A start of the service's daemon asked for by the operator (`restart`,
    /// SIGHUP) — by `current`'s own launcher: when `current` names a release
    /// whose launcher is another version (left so by `upgrade --no-start`),
    /// this process becomes that launcher, which starts its daemon.
    fn start_service(&mut self) {
        if let Some(program) =
            handover::committed_current_launcher(&self.dir, handover::Wanted::Other)
        {
            self.exec_handover(&program, None);
        }
        self.start(Purpose::Service);
    }

    /// Whether the hosted upgrade finishes a step another launcher handed over.
    fn resuming(&self) -> bool {
        matches!(self.upgrade.as_ref().map(|u| &u.work), Some(Work::Resume))
    }

    /// Whether a daemon is meant to be running (a rollback starts it again).
    fn wants_daemon(&self) -> bool {
        match &self.slot {
            Slot::Starting { .. } | Slot::Running(_) => true,
            Slot::Stopping { then, .. } => matches!(then, AfterStop::Restart),
            Slot::Empty => self.retry_at.is_some(),
        }
    }

    fn state(&self) -> State {
        match &self.slot {
            Slot::Starting { .. } => State::Starting,
            Slot::Running(_) => State::Running,
            Slot::Stopping { .. } => State::Stopping,
            Slot::Empty if self.retry_at.is_some() => State::BackingOff,
            Slot::Empty => self.held.unwrap_or(State::Stopped),
        }
    }

    /// The status as known now; `healthy` means "alive and ready", to be
    /// confirmed by a probe.
    fn status(&mut self) -> protocol::Status {
        let state = match &self.upgrade {
            Some(u) if u.past_preflight() => "upgrading",
            _ => self.state().name(),
        };
        let ready = matches!(self.slot, Slot::Running(_));
        let daemon = self.slot.daemon().map(|d| DaemonStatus {
            pid: d.pid,
            version: d.version.clone(),
            schema_version: d.schema_version,
            uptime: d.started.elapsed().as_secs(),
            healthy: ready && d.alive(),
        });
        protocol::Status {
            launcher_pid: std::process::id(),
            launcher_version: VERSION.to_string(),
            state: state.to_string(),
            upgrade: self.upgrade.as_ref().and_then(|u| u.step.clone()),
            daemon,
            restarts: self.backoff.restarts(),
            last_exit: self.last_exit.clone(),
            refused: self
                .uncommitted
                .clone()
                .filter(|_| self.state() == State::Refused),
            auto: Some(Box::new(match &self.auto {
                Some(auto) => auto.status(),
                None => auto::off_status(&self.dir),
            })),
        }
    }
}

/// Why a start did not reach ready.
enum NotReady {
    /// It could not be spawned.
    Spawn(String),
    /// It ended on its own while starting.
    Died(std::io::Result<ExitStatus>),
    /// It was killed for `reason`, and then ended.
    Killed {
        reason: String,
        status: std::io::Result<ExitStatus>,
    },
}

impl NotReady {
    fn status(&self) -> Option<&std::io::Result<ExitStatus>> {
        match self {
            NotReady::Spawn(_) => None,
            NotReady::Died(status) | NotReady::Killed { status, .. } => Some(status),
        }
    }
}

impl std::fmt::Display for NotReady {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NotReady::Spawn(reason) => f.write_str(reason),
            NotReady::Died(status) => write!(f, "the daemon {}", describe_exit(status)),
            NotReady::Killed { reason, status } => {
                write!(f, "{reason}; the daemon {}", describe_exit(status))
            }
        }
    }
}

impl From<NotReady> for HostError {
    fn from(failure: NotReady) -> Self {
        match failure {
            NotReady::Spawn(reason) => HostError::Spawn(reason),
            NotReady::Died(status) => HostError::Exited(describe_exit(&status)),
            killed @ NotReady::Killed { .. } => HostError::NotReady(killed.to_string()),
        }
    }
}

/// The next item of an optional channel; never, without one.
async fn recv<T>(rx: Option<&mut mpsc::UnboundedReceiver<T>>) -> Option<T> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// An optional future's output; never, without one.
async fn poll<T>(future: Option<&mut Pin<Box<dyn Future<Output = T>>>>) -> T {
    match future {
        Some(future) => future.await,
        None => std::future::pending().await,
    }
}

async fn daemon_event(daemon: Option<&mut Daemon>) -> DaemonEvent {
    match daemon {
        Some(daemon) => daemon.next_event().await,
        None => std::future::pending().await,
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

async fn tick(interval: Option<&mut tokio::time::Interval>) {
    match interval {
        Some(i) => {
            i.tick().await;
        }
        None => std::future::pending().await,
    }
}
