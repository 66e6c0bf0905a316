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
//!
//! Two parts of the state are apart, pure and unit-tested: the [`mode`]
//! (serving, held for an upgrade, refused, stopping — what happens when the
//! slot is empty, with the [`backoff`] policy) and, in [`handover`], which
//! launcher a first start is for.
//!
//! Here: the state, the loop and what it dispatches. The handlers, by what
//! they are about: [`starting`] (a daemon's start, readiness and exit),
//! [`stopping`], [`requests`] (admin requests and
//! the hosted upgrade's calls), [`handover`], [`auto`] (automatic upgrades);
//! and the parts they drive: [`daemon`] (the child process), [`admin`] (the
//! admin socket's server), [`upgrading`] (the upgrade it hosts),
//! [`sdnotify`].

mod admin;
mod auto;
mod backoff;
mod daemon;
pub mod handover;
mod mode;
mod requests;
pub mod sdnotify;
mod starting;
mod stopping;
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
use handover::FirstStart;
use mode::{Service, State};
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
            supervisor.notifier.handed_over(h.ready_sent);
            supervisor.first_start = FirstStart::Own;
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
    /// What the service is meant to do, and the restart policy's count.
    service: Service,
    last_exit: Option<String>,
    upgrade: Option<Upgrade>,
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
    /// Which launcher the first start is for.
    first_start: FirstStart,
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
            service: Service::default(),
            last_exit: None,
            upgrade: None,
            restart_replies: Vec::new(),
            stop_replies: Vec::new(),
            calls,
            calls_tx,
            watchdog,
            exit: None,
            admin_fd: -1,
            first_start: FirstStart::Newer,
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
        let taken_over = self.first_start == FirstStart::Own;
        if taken_over && journal {
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
            self.service.hold();
            self.upgrade = Some(if taken_over {
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
            self.service.hold();
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
        match (slot, self.service.retry_at()) {
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
        self.service.refuse_uncommitted(message);
    }

    /// `restart` or SIGHUP while a journal records an unfinished change:
    /// retries its rollback, and the service starts once it is done.
    fn recover(&mut self) {
        info!("retrying the rollback of the unfinished change; the service starts after it");
        let refused = self.service.uncommitted().is_some();
        self.service.hold();
        let (dir, config) = (self.dir.clone(), self.config.clone());
        let mut upgrade = Upgrade::recovery(dir, config);
        upgrade.then.start_service = refused;
        self.upgrade = Some(upgrade);
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
            Slot::Empty => self.service.retry_at().is_some(),
        }
    }

    fn state(&self) -> State {
        match &self.slot {
            Slot::Starting { .. } => State::Starting,
            Slot::Running(_) => State::Running,
            Slot::Stopping { .. } => State::Stopping,
            Slot::Empty => self.service.idle_state(),
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
            restarts: self.service.restarts(),
            last_exit: self.last_exit.clone(),
            refused: self
                .service
                .uncommitted()
                .filter(|_| self.state() == State::Refused)
                .map(str::to_string),
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
