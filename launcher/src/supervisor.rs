//! `waiaas-launcher run`: the long-lived supervisor.
//!
//! It binds the HTTP listener once (or takes systemd's) and hands it to every
//! daemon it starts, so while a daemon is replaced clients wait in the kernel's
//! backlog instead of being refused. Each daemon gets one end of a socketpair
//! as its control channel (`waiaas_shared::control`); readiness is the daemon's
//! `ready` frame followed by a healthy `/health`. A crash is restarted with
//! exponential backoff; a permanent refusal (`exit::daemon::PERMANENT`) is not.
//!
//! Everything runs on one thread: the daemon's parent-death signal
//! (`PR_SET_PDEATHSIG`) fires when the *thread* that forked it exits, so the
//! forking thread must live as long as the process.

use std::net::{SocketAddr, TcpListener};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream as StdUnixStream;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tokio::io::BufReader;
use tokio::net::unix::OwnedWriteHalf;
use tokio::net::{UnixListener, UnixStream};
use tokio::process::Child;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc;
use tracing::{error, info, warn};

use waiaas_shared::admin::{self, DaemonStatus, Envelope, Request, Response, UpgradeRequest};
use waiaas_shared::config::Config;
use waiaas_shared::control::{
    self, CONTROL_FD, CONTROL_FD_ENV, FromDaemon, FromLauncher, read_frame, write_frame,
};
use waiaas_shared::exit;
use waiaas_shared::layout::DataDir;
use waiaas_shared::listen_fds;
use waiaas_shared::version::VERSION;

use crate::daemon_binary::{self, describe_exit};
use crate::failure::Failure;
use crate::pidfile::PidFile;
use crate::probe;
use crate::sdnotify::Notifier;
use crate::upgrade::{self, Engine, Host};

/// First restart delay after a crash; doubled per crash up to [`BACKOFF_CAP`].
const BACKOFF_FIRST: Duration = Duration::from_millis(100);
const BACKOFF_CAP: Duration = Duration::from_secs(30);
/// A daemon that ran this long before crashing resets the backoff.
const STABLE_AFTER: Duration = Duration::from_secs(60);
/// How long a new daemon has to say hello on its control channel.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// How long `status` waits for `/health`.
const STATUS_PROBE_TIMEOUT: Duration = Duration::from_millis(500);
/// Extra time after the shutdown deadline before the daemon is killed.
const KILL_GRACE: Duration = Duration::from_secs(2);

/// Runs the supervisor until SIGTERM/SIGINT or an admin `stop`.
pub fn run(dir: &DataDir, config: &Config) -> Result<(), Failure> {
    // Before any thread exists: both read and clear environment variables.
    let notifier = Notifier::from_env();
    init_logging(&config.daemon.log_level);
    let inherited = listen_fds::take_listener().map_err(|e| Failure::new(e.to_string()))?;

    let daemon = daemon_binary::program(dir)?;
    let pidfile = PidFile::acquire(dir)?;
    let listener = match inherited {
        Some(listener) => listener,
        None => TcpListener::bind((config.daemon.hostname.as_str(), config.daemon.port)).map_err(
            |e| {
                Failure::new(format!(
                    "cannot listen on {}:{}: {e} (is another WAIaaS running? change [daemon] port)",
                    config.daemon.hostname, config.daemon.port
                ))
            },
        )?,
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::new(format!("cannot start the runtime: {e}")))?;
    let result = runtime.block_on(async {
        let admin = bind_admin_socket(dir)?;
        let mut supervisor =
            Supervisor::new(dir.clone(), config.clone(), listener, notifier, daemon)?;
        supervisor.serve(admin).await
    });
    drop(pidfile);
    result
}

fn init_logging(level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("WAIAAS_LOG").unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new(format!("waiaas_launcher={level},warn"))
    });
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

fn bind_admin_socket(dir: &DataDir) -> Result<UnixListener, Failure> {
    let path = dir.launcher_socket();
    // We hold the pid lock, so a socket file left here belongs to a dead launcher.
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path)
        .map_err(|e| Failure::new(format!("cannot create {}: {e}", path.display())))?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| Failure::new(format!("cannot restrict {}: {e}", path.display())))?;
    Ok(listener)
}

/// What the supervisor is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Starting,
    Running,
    BackingOff,
    Refused,
    /// Left stopped on purpose (`upgrade --no-start`).
    Stopped,
    Upgrading,
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
            State::Upgrading => "upgrading",
            State::Stopping => "stopping",
        }
    }
}

/// A daemon process and its control channel.
struct Daemon {
    child: Child,
    pid: u32,
    version: String,
    schema_version: u32,
    started: Instant,
    control: OwnedWriteHalf,
    frames: mpsc::UnboundedReceiver<FromDaemon>,
}

/// Why a daemon did not become ready.
struct StartFailure {
    reason: String,
    /// It exited with a permanent refusal: starting it again would fail the same way.
    permanent: bool,
    /// The daemon's exit code, if it exited on its own.
    code: Option<i32>,
}

impl StartFailure {
    fn transient(reason: String) -> Self {
        Self {
            reason,
            permanent: false,
            code: None,
        }
    }
}

/// An admin request with the connection to answer on.
struct AdminCall {
    request: Request,
    reply: OwnedWriteHalf,
}

struct Supervisor {
    dir: DataDir,
    /// The daemon binary started (see [`daemon_program`]).
    program: PathBuf,
    config: Config,
    listener: TcpListener,
    health_addr: SocketAddr,
    notifier: Notifier,
    state: State,
    daemon: Option<Daemon>,
    restarts: u32,
    last_exit: Option<String>,
    backoff: Duration,
    ready_once: bool,
    /// The permanent exit code of the last refused start.
    refused_code: Option<i32>,
}

/// Why the event loop woke up.
enum Event {
    Signal(&'static str),
    Admin(AdminCall),
    Exited(std::io::Result<ExitStatus>),
    Frame(FromDaemon),
    BackoffOver,
    Watchdog,
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
        Ok(Self {
            dir,
            config,
            listener,
            health_addr: SocketAddr::new(ip, local.port()),
            program,
            notifier,
            state: State::Starting,
            daemon: None,
            restarts: 0,
            last_exit: None,
            backoff: BACKOFF_FIRST,
            ready_once: false,
            refused_code: None,
        })
    }

    async fn serve(&mut self, admin: UnixListener) -> Result<(), Failure> {
        let (calls_tx, mut calls) = mpsc::unbounded_channel();
        let upgrading = Arc::new(AtomicBool::new(false));
        tokio::spawn(accept_admin(admin, calls_tx, upgrading.clone()));
        let mut term = signal(SignalKind::terminate()).map_err(signal_failure)?;
        let mut int = signal(SignalKind::interrupt()).map_err(signal_failure)?;
        let mut hup = signal(SignalKind::hangup()).map_err(signal_failure)?;
        let mut watchdog = self.notifier.watchdog_interval().map(tokio::time::interval);
        info!(version = VERSION, addr = %self.health_addr, "supervisor started");

        // A change a crash left half-done is rolled back before anything else.
        if let Err(report) = upgrade::recover(&self.dir.clone(), &self.config.clone(), self).await {
            error!(
                "{} Manual steps: {}",
                report.message,
                report.manual_steps.join(" ")
            );
            self.state = State::Refused;
            self.last_exit = Some(report.message);
        }
        let mut backoff_until = match self.state {
            State::Refused => None,
            _ => self.launch_daemon().await,
        };
        // Under systemd a service whose first start is refused must fail, with
        // the daemon's code, so `RestartPreventExitStatus=` applies; elsewhere
        // (a container) the supervisor stays up and reports the refusal.
        if let (State::Refused, Some(code), true) =
            (self.state, self.refused_code, self.notifier.is_active())
        {
            return Err(Failure {
                code: u8::try_from(code).unwrap_or(1),
                message: format!(
                    "the daemon refused to start: {}",
                    self.last_exit.clone().unwrap_or_default()
                ),
            });
        }
        loop {
            let event = tokio::select! {
                _ = term.recv() => Event::Signal("SIGTERM"),
                _ = int.recv() => Event::Signal("SIGINT"),
                _ = hup.recv() => Event::Signal("SIGHUP"),
                Some(call) = calls.recv() => Event::Admin(call),
                event = daemon_event(self.daemon.as_mut()) => event,
                _ = sleep_until(backoff_until) => Event::BackoffOver,
                _ = tick(watchdog.as_mut()) => Event::Watchdog,
            };
            match event {
                Event::Signal("SIGHUP") => {
                    info!("SIGHUP: restarting the daemon");
                    backoff_until = self.restart().await;
                }
                Event::Signal(name) => {
                    info!("{name}: stopping");
                    self.shutdown().await;
                    return Ok(());
                }
                Event::Admin(call) => match call.request {
                    Request::Status => {
                        // The health probe runs on its own task: a daemon that just
                        // died (its port held by us, so the probe waits) must not
                        // hold up the loop that restarts it.
                        let (mut status, alive) = self.status();
                        let addr = self.health_addr;
                        tokio::spawn(async move {
                            if let Some(daemon) = status.daemon.as_mut() {
                                daemon.healthy = alive
                                    && probe::health(addr, STATUS_PROBE_TIMEOUT).await.is_ok();
                            }
                            answer(call.reply, &Response::Status(status)).await;
                        });
                    }
                    Request::Restart => {
                        backoff_until = self.restart().await;
                        let response = match self.state {
                            State::Running => Response::Done {
                                message: "daemon restarted".into(),
                            },
                            _ => Response::Error {
                                message: format!(
                                    "the daemon did not come back: {}",
                                    self.last_exit.as_deref().unwrap_or("unknown reason")
                                ),
                            },
                        };
                        answer(call.reply, &response).await;
                    }
                    Request::Upgrade(request) => {
                        self.upgrade(&request, call.reply).await;
                        upgrading.store(false, Ordering::SeqCst);
                        backoff_until = None;
                    }
                    Request::Stop => {
                        self.shutdown().await;
                        let done = Response::Done {
                            message: "stopped".into(),
                        };
                        answer(call.reply, &done).await;
                        return Ok(());
                    }
                },
                Event::Exited(status) => {
                    let daemon = self.daemon.take().expect("an exit comes from a daemon");
                    let ran = daemon.started.elapsed();
                    if self.crashed(status, ran) {
                        backoff_until = Some(self.schedule_retry());
                    }
                }
                Event::Frame(FromDaemon::Stopping { reason }) => {
                    info!("daemon is stopping: {reason}");
                }
                Event::Frame(_) => {}
                Event::BackoffOver => backoff_until = self.launch_daemon().await,
                Event::Watchdog => self.notifier.notify("WATCHDOG=1"),
            }
        }
    }

    /// Records how a daemon ended on its own; returns whether to restart it.
    fn crashed(&mut self, status: std::io::Result<ExitStatus>, ran: Duration) -> bool {
        let description = describe_exit(&status);
        if ran >= STABLE_AFTER {
            self.backoff = BACKOFF_FIRST;
        }
        let permanent =
            matches!(&status, Ok(s) if s.code().is_some_and(exit::daemon::is_permanent));
        self.last_exit = Some(description.clone());
        if permanent {
            error!(
                "daemon {description}; not restarting (fix the cause, then `waiaas-launcher restart`)"
            );
            self.state = State::Refused;
            self.notifier
                .notify(&format!("STATUS=daemon {description}"));
            return false;
        }
        warn!("daemon {description}; restarting in {:?}", self.backoff);
        self.state = State::BackingOff;
        self.restarts += 1;
        self.notifier
            .notify(&format!("STATUS=daemon {description}; restarting"));
        true
    }

    /// When the next start may happen: now plus the current delay, which then
    /// doubles up to the cap, so a daemon that keeps crashing is retried a
    /// bounded number of times per minute.
    fn schedule_retry(&mut self) -> tokio::time::Instant {
        let at = tokio::time::Instant::now() + self.backoff;
        self.backoff = (self.backoff * 2).min(BACKOFF_CAP);
        at
    }

    /// Spawns a daemon and waits until it is ready and healthy (admin calls
    /// queue meanwhile). On failure the daemon is gone, the state says why, and
    /// the retry time is returned.
    async fn launch_daemon(&mut self) -> Option<tokio::time::Instant> {
        self.state = State::Starting;
        // A daemon already running is adopted, not replaced: at start, the
        // recovery of an interrupted upgrade may have started the old one.
        let spawned = match self.daemon.take() {
            Some(daemon) => Ok(daemon),
            None => self.spawn_daemon().await,
        };
        match spawned {
            Ok(daemon) => {
                self.daemon = Some(daemon);
                self.state = State::Running;
                let d = self.daemon.as_ref().expect("just set");
                info!(pid = d.pid, version = %d.version, schema = d.schema_version, "daemon ready");
                let status = format!("STATUS=serving {} (schema {})", d.version, d.schema_version);
                if self.ready_once {
                    self.notifier.notify(&status);
                } else {
                    self.ready_once = true;
                    self.notifier.notify(&format!("READY=1\n{status}"));
                }
                None
            }
            Err(failure) if failure.permanent => {
                self.refused_code = failure.code;
                error!(
                    "daemon did not start: {}; not restarting (fix the cause, then `waiaas-launcher restart`)",
                    failure.reason
                );
                self.state = State::Refused;
                self.notifier
                    .notify(&format!("STATUS=daemon did not start: {}", failure.reason));
                self.last_exit = Some(failure.reason);
                None
            }
            Err(failure) => {
                self.state = State::BackingOff;
                self.restarts += 1;
                warn!(
                    "daemon did not start: {}; retrying in {:?}",
                    failure.reason, self.backoff
                );
                self.last_exit = Some(failure.reason);
                Some(self.schedule_retry())
            }
        }
    }

    async fn spawn_daemon(&mut self) -> Result<Daemon, StartFailure> {
        let (ours, theirs) = StdUnixStream::pair().map_err(|e| {
            StartFailure::transient(format!("cannot create the control channel: {e}"))
        })?;
        let program = self.program.clone();
        let mut command = std::process::Command::new(&program);
        command
            .arg("serve")
            .arg("--data-dir")
            .arg(self.dir.root())
            .env(CONTROL_FD_ENV, CONTROL_FD.to_string())
            .stdin(Stdio::null());
        listen_fds::pass(
            &mut command,
            &[self.listener.as_raw_fd(), theirs.as_raw_fd()],
        );
        let parent = std::process::id() as libc::pid_t;
        // SAFETY: prctl and getppid are async-signal-safe.
        unsafe {
            command.pre_exec(move || {
                // The daemon must not outlive us, even after a kill -9.
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                if libc::getppid() != parent {
                    return Err(std::io::Error::other(
                        "the launcher died while starting the daemon",
                    ));
                }
                Ok(())
            });
        }
        let child = tokio::process::Command::from(command)
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| {
                StartFailure::transient(format!("cannot start {}: {e}", program.display()))
            })?;
        drop(theirs);
        let pid = child.id().unwrap_or_default();
        let stream = ours
            .set_nonblocking(true)
            .and_then(|()| UnixStream::from_std(ours))
            .map_err(|e| StartFailure::transient(format!("control channel: {e}")))?;
        let (read, control) = stream.into_split();
        let (frames_tx, frames) = mpsc::unbounded_channel();
        tokio::spawn(forward_frames(BufReader::new(read), frames_tx));
        let mut daemon = Daemon {
            child,
            pid,
            version: String::new(),
            schema_version: 0,
            started: Instant::now(),
            control,
            frames,
        };
        match self.await_ready(&mut daemon).await {
            Ok(()) => Ok(daemon),
            Err(reason) => {
                let status = kill(&mut daemon).await;
                let code = status.as_ref().ok().and_then(ExitStatus::code);
                let permanent = code.is_some_and(exit::daemon::is_permanent);
                let reason = if reason.starts_with("the daemon exited")
                    || reason.starts_with("the daemon was killed")
                {
                    reason
                } else {
                    format!("{reason}; the daemon {}", describe_exit(&status))
                };
                Err(StartFailure {
                    reason,
                    permanent,
                    code,
                })
            }
        }
    }

    /// Hello, then ready, then a healthy `/health` reporting the same version.
    async fn await_ready(&self, daemon: &mut Daemon) -> Result<(), String> {
        let health_timeout = Duration::from_secs(self.config.update.health_timeout);
        // `health_timeout` bounds the whole start (hello, ready, healthy): it
        // is the time a new daemon has to become healthy (SPEC §3).
        let deadline = Instant::now() + health_timeout;
        match recv_or_exit(daemon, HELLO_TIMEOUT.min(health_timeout)).await? {
            FromDaemon::Hello {
                protocol, version, ..
            } if protocol == control::PROTOCOL_VERSION => {
                daemon.version = version;
            }
            FromDaemon::Hello { protocol, .. } => {
                return Err(format!(
                    "the daemon speaks control protocol {protocol}, this launcher {}",
                    control::PROTOCOL_VERSION
                ));
            }
            other => {
                return Err(format!(
                    "the daemon's first message was {other:?}, not hello"
                ));
            }
        }
        // Readiness can include a migration at start; it is bounded by the health timeout.
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match recv_or_exit(daemon, left).await? {
                FromDaemon::Ready { schema_version } => {
                    daemon.schema_version = schema_version;
                    break;
                }
                FromDaemon::Stopping { reason } => {
                    return Err(format!("the daemon stopped: {reason}"));
                }
                _ => {}
            }
        }
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match probe::health(self.health_addr, left.min(Duration::from_secs(2))).await {
                Ok(health) if health.version == daemon.version => return Ok(()),
                Ok(health) => {
                    return Err(format!(
                        "/health reports version {}, but the daemon said {}",
                        health.version, daemon.version
                    ));
                }
                Err(e) if left.is_zero() => return Err(format!("never became healthy: {e}")),
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    }

    /// Stops the daemon gracefully (if one runs) and starts a new one at once.
    async fn restart(&mut self) -> Option<tokio::time::Instant> {
        self.halt_daemon().await;
        self.backoff = BACKOFF_FIRST;
        self.launch_daemon().await
    }

    async fn shutdown(&mut self) {
        self.state = State::Stopping;
        self.notifier.notify("STOPPING=1");
        self.halt_daemon().await;
    }

    /// Orders a graceful shutdown, waits for the exit, kills after the deadline.
    async fn halt_daemon(&mut self) {
        let Some(mut daemon) = self.daemon.take() else {
            return;
        };
        let deadline = Duration::from_secs(self.config.daemon.shutdown_timeout);
        let order = FromLauncher::Shutdown {
            deadline_secs: deadline.as_secs(),
        };
        if let Err(e) = write_frame(&mut daemon.control, &order).await {
            warn!("cannot order the daemon to stop ({e}); sending SIGTERM");
            signal_pid(daemon.pid, libc::SIGTERM);
        }
        let status = match tokio::time::timeout(deadline + KILL_GRACE, daemon.child.wait()).await {
            Ok(status) => status,
            Err(_) => {
                warn!("daemon did not stop within {deadline:?}; killing it");
                kill(&mut daemon).await
            }
        };
        let description = describe_exit(&status);
        info!("daemon {description}");
        self.last_exit = Some(description);
    }

    /// The status as known now (health not yet probed), and whether the
    /// daemon process is still alive.
    fn status(&mut self) -> (admin::Status, bool) {
        let mut alive = false;
        let daemon = self.daemon.as_mut().map(|d| {
            alive = matches!(d.child.try_wait(), Ok(None));
            DaemonStatus {
                pid: d.pid,
                version: d.version.clone(),
                schema_version: d.schema_version,
                uptime: d.started.elapsed().as_secs(),
                healthy: false,
            }
        });
        let status = admin::Status {
            launcher_pid: std::process::id(),
            launcher_version: VERSION.to_string(),
            state: self.state.name().to_string(),
            daemon,
            restarts: self.restarts,
            last_exit: self.last_exit.clone(),
        };
        (status, alive)
    }
}

impl Supervisor {
    /// Runs the upgrade engine with this supervisor as its host, streaming
    /// progress to the requesting connection.
    async fn upgrade(&mut self, request: &UpgradeRequest, reply: OwnedWriteHalf) {
        let before = self.state;
        self.state = State::Upgrading;
        let (frames, mut to_write) = mpsc::unbounded_channel::<Response>();
        let writer = tokio::spawn(async move {
            let mut reply = reply;
            while let Some(frame) = to_write.recv().await {
                if write_frame(&mut reply, &frame).await.is_err() {
                    // The command went away; the upgrade goes on regardless.
                    while to_write.recv().await.is_some() {}
                    return;
                }
            }
        });
        let progress_frames = frames.clone();
        let mut progress = move |p: admin::Progress| {
            info!(
                "upgrade step {}/{}: {} — {}",
                p.step, p.of, p.name, p.message
            );
            let _ = progress_frames.send(Response::Progress(p));
        };
        let (dir, config) = (self.dir.clone(), self.config.clone());
        // The engine blocks this event loop at times (copies, hashing, the
        // new daemon's migrate): systemd's watchdog is fed from a thread
        // meanwhile, or it would kill the launcher mid-upgrade.
        let pinger = WatchdogPinger::start(&self.notifier);
        let report = Engine {
            dir: &dir,
            config: &config,
            host: self,
            progress: &mut progress,
            progress_bar: false,
        }
        .run(request)
        .await;
        drop(pinger);
        info!("upgrade: {:?}: {}", report.outcome, report.message);
        let _ = frames.send(Response::Upgrade(report));
        drop(frames);
        drop(progress);
        let _ = writer.await;
        self.state = match (&self.daemon, self.state) {
            (Some(_), _) => State::Running,
            (None, State::Upgrading) if before == State::Refused => State::Refused,
            (None, _) => State::Stopped,
        };
    }
}

impl Host for Supervisor {
    fn daemon_running(&self) -> bool {
        self.daemon.is_some()
    }

    async fn stop_daemon(&mut self) -> Result<(), String> {
        self.halt_daemon().await;
        Ok(())
    }

    async fn start_daemon(&mut self, version: &str) -> Result<(), String> {
        let mut daemon = self.spawn_daemon().await.map_err(|f| f.reason)?;
        if daemon.version != version {
            let status = kill(&mut daemon).await;
            return Err(format!(
                "the daemon that started is {}, not {version} (it {})",
                daemon.version,
                describe_exit(&status)
            ));
        }
        let status = format!(
            "STATUS=serving {} (schema {})",
            daemon.version, daemon.schema_version
        );
        self.notifier.notify(&status);
        self.daemon = Some(daemon);
        self.state = State::Upgrading;
        Ok(())
    }
}

/// Sends `WATCHDOG=1` from its own thread until dropped.
struct WatchdogPinger {
    stop: Option<std::sync::mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl WatchdogPinger {
    fn start(notifier: &Notifier) -> Self {
        let (Some(every), Some(notifier)) = (notifier.watchdog_interval(), notifier.try_clone())
        else {
            return Self {
                stop: None,
                thread: None,
            };
        };
        let (stop, stopped) = std::sync::mpsc::channel::<()>();
        let thread = std::thread::spawn(move || {
            while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(every)
            {
                notifier.notify("WATCHDOG=1");
            }
        });
        Self {
            stop: Some(stop),
            thread: Some(thread),
        }
    }
}

impl Drop for WatchdogPinger {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn signal_failure(e: std::io::Error) -> Failure {
    Failure::new(format!("cannot install signal handlers: {e}"))
}

fn signal_pid(pid: u32, signal: libc::c_int) {
    // SAFETY: kill(2) on our own child's pid, which we have not reaped yet.
    unsafe { libc::kill(pid as libc::pid_t, signal) };
}

async fn kill(daemon: &mut Daemon) -> std::io::Result<ExitStatus> {
    let _ = daemon.child.start_kill();
    daemon.child.wait().await
}

/// How long a daemon that closed its control channel gets to finish exiting,
/// so its own exit code (not our kill) is what gets reported.
const EXIT_GRACE: Duration = Duration::from_secs(5);

/// The next frame, or the exit, whichever comes first, within `timeout`.
async fn recv_or_exit(daemon: &mut Daemon, timeout: Duration) -> Result<FromDaemon, String> {
    tokio::select! {
        frame = daemon.frames.recv() => match frame {
            Some(frame) => Ok(frame),
            None => match tokio::time::timeout(EXIT_GRACE, daemon.child.wait()).await {
                Ok(status) => Err(format!("the daemon {}", describe_exit(&status))),
                Err(_) => Err("the daemon closed its control channel but kept running".to_string()),
            },
        },
        status = daemon.child.wait() => Err(format!("the daemon {}", describe_exit(&status))),
        _ = tokio::time::sleep(timeout) => Err(format!("no message from the daemon within {timeout:?}")),
    }
}

/// The running daemon's next exit or frame; never, without a daemon.
async fn daemon_event(daemon: Option<&mut Daemon>) -> Event {
    let Some(daemon) = daemon else {
        return std::future::pending().await;
    };
    tokio::select! {
        status = daemon.child.wait() => Event::Exited(status),
        // A closed channel disables this branch; the exit then reports what happened.
        Some(frame) = daemon.frames.recv() => Event::Frame(frame),
    }
}

async fn sleep_until(at: Option<tokio::time::Instant>) {
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

/// Reads control frames into a channel, so the event loop never holds a
/// half-read frame when another event wins the race.
async fn forward_frames(
    mut read: BufReader<tokio::net::unix::OwnedReadHalf>,
    tx: mpsc::UnboundedSender<FromDaemon>,
) {
    loop {
        match read_frame::<FromDaemon, _>(&mut read).await {
            Ok(Some(frame)) => {
                if tx.send(frame).is_err() {
                    return;
                }
            }
            Ok(None) => return,
            Err(control::FrameError::Io(_)) => return,
            Err(e) => warn!("ignoring a bad frame from the daemon: {e}"),
        }
    }
}

/// Accepts admin connections: checks the peer's kernel credentials, reads one
/// request, and hands it to the event loop.
async fn accept_admin(
    listener: UnixListener,
    calls: mpsc::UnboundedSender<AdminCall>,
    upgrading: Arc<AtomicBool>,
) {
    let our_uid = nix::unistd::geteuid().as_raw();
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                warn!("admin socket accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let calls = calls.clone();
        let upgrading = upgrading.clone();
        tokio::spawn(async move {
            let (read, mut write) = stream.into_split();
            let uid = read.as_ref().peer_cred().map(|c| c.uid());
            match uid {
                Ok(uid) if uid == our_uid || uid == 0 => {}
                Ok(uid) => {
                    warn!("admin socket: refused a connection from uid {uid}");
                    return;
                }
                Err(e) => {
                    warn!("admin socket: cannot read the peer's credentials ({e}); refused");
                    return;
                }
            }
            let mut read = BufReader::new(read);
            let frame =
                tokio::time::timeout(Duration::from_secs(5), read_frame::<Envelope, _>(&mut read))
                    .await;
            let request = match frame {
                Ok(Ok(Some(envelope))) if envelope.protocol == control::PROTOCOL_VERSION => {
                    envelope.request
                }
                Ok(Ok(Some(envelope))) => {
                    let message = format!(
                        "this launcher speaks admin protocol {}, the command {}; use the matching waiaas-launcher",
                        control::PROTOCOL_VERSION,
                        envelope.protocol
                    );
                    let _ = write_frame(&mut write, &Response::Error { message }).await;
                    return;
                }
                Ok(Ok(None)) => return,
                Ok(Err(e)) => {
                    let _ = write_frame(
                        &mut write,
                        &Response::Error {
                            message: e.to_string(),
                        },
                    )
                    .await;
                    return;
                }
                Err(_) => return,
            };
            // A second upgrade is refused at once, not queued behind the first.
            if matches!(request, Request::Upgrade(_)) && upgrading.swap(true, Ordering::SeqCst) {
                let message =
                    "another upgrade or rollback is in progress; wait for it to finish".to_string();
                let _ = write_frame(&mut write, &Response::Error { message }).await;
                return;
            }
            let _ = calls.send(AdminCall {
                request,
                reply: write,
            });
        });
    }
}

async fn answer(mut reply: OwnedWriteHalf, response: &Response) {
    if let Err(e) = write_frame(&mut reply, response).await {
        warn!("admin socket: could not answer: {e}");
    }
}
