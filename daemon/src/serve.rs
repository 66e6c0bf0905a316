//! `waiaas-daemon serve`: check and migrate the database, then serve HTTP until
//! SIGTERM/SIGINT, then drain, checkpoint and exit 0.
//!
//! Readiness never waits on the network: the version check starts only after
//! the listener is serving.

use std::net::TcpListener;
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rusqlite::Connection;
use tracing::{error, info, warn};

use waiaas_shared::backup::{self, Kind, Request};
use waiaas_shared::compat::Verdict;
use waiaas_shared::config::Config;
use waiaas_shared::control::FromDaemon;
use waiaas_shared::exit::daemon as code;
use waiaas_shared::layout::DataDir;
use waiaas_shared::{kv, listen_fds, version};

use crate::control::{self, Control};
use crate::db::{self, Db};
use crate::refusal::Refusal;
use crate::{compat, http, migrate, server, token, version_check};

/// What the process inherited from whoever started it.
pub struct Inherited {
    /// A listening socket (`LISTEN_FDS`), served instead of binding one.
    pub listener: Option<TcpListener>,
    /// The launcher's control channel, already greeted.
    pub control: Option<UnixStream>,
    /// On probation: the socket the public listener arrives on, after the
    /// launcher's commit; `listener` is then its private probe listener.
    pub public: Option<UnixStream>,
}

/// Runs the daemon; returns the process exit code.
pub fn run(dir: &DataDir, config: &Config, inherited: Inherited) -> i32 {
    match start(dir, config, inherited) {
        Ok(code) => code,
        Err(refusal) => {
            error!("{}", refusal.message);
            refusal.code
        }
    }
}

fn start(dir: &DataDir, config: &Config, inherited: Inherited) -> Result<i32, Refusal> {
    // Declared first, so dropped last: released only once the database is closed.
    let _lock = crate::lock::hold(dir)?;
    let conn = prepare_database(dir, config, true)?;
    let token = token::load_or_create(&dir.master_token()).map_err(|e| {
        Refusal::new(
            code::FAILURE,
            format!("cannot create {}: {e}", dir.master_token().display()),
        )
    })?;
    let listener = match inherited.listener {
        Some(listener) => listener,
        None if inherited.public.is_some() => {
            return Err(Refusal::new(
                code::FAILURE,
                "started on probation without a probe listener (fd 3)",
            ));
        }
        None => {
            let addr = (config.daemon.hostname.as_str(), config.daemon.port);
            TcpListener::bind(addr).map_err(|e| {
                Refusal::new(
                    code::FAILURE,
                    format!(
                        "cannot listen on {}:{}: {e} (is another daemon running? change [daemon] port)",
                        addr.0, addr.1
                    ),
                )
            })?
        }
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Refusal::new(code::FAILURE, format!("cannot start the runtime: {e}")))?;
    let channels = Channels {
        control: inherited.control,
        public: inherited.public,
    };
    runtime.block_on(serve(config, conn, token, listener, channels))
}

/// The database and its `-wal`/`-shm` are the owner's alone (0600): created
/// so, and narrowed if an older release left them wider. SQLite gives new
/// `-wal`/`-shm` files the main file's mode.
fn private_database(path: &std::path::Path) -> std::io::Result<()> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)?;
    for file in ["", "-wal", "-shm"] {
        let file = std::path::PathBuf::from(format!("{}{file}", path.display()));
        match std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
    }
    Ok(())
}

/// Opens the database and brings it to this daemon's schema, or refuses;
/// with `backup`, a migration is preceded by a `pre-migrate-…` backup.
pub fn prepare_database(
    dir: &DataDir,
    config: &Config,
    backup: bool,
) -> Result<Connection, Refusal> {
    let data = dir.data();
    std::fs::create_dir_all(&data)
        .and_then(|()| dir.make_private())
        .map_err(|e| {
            Refusal::new(
                code::FAILURE,
                format!("cannot create {} as a private folder: {e}", data.display()),
            )
        })?;
    let open_failed = |e: rusqlite::Error| {
        Refusal::new(
            code::FAILURE,
            format!("cannot open {}: {e}", dir.database().display()),
        )
    };
    private_database(&dir.database()).map_err(|e| {
        Refusal::new(
            code::FAILURE,
            format!("cannot make {} private: {e}", dir.database().display()),
        )
    })?;
    let mut conn = db::open(&dir.database()).map_err(open_failed)?;
    let report = compat::check(&conn).map_err(open_failed)?;
    if let Some(refusal) = report.refusal_code() {
        return Err(Refusal::new(refusal, report.message));
    }
    let backup = match report.verdict {
        Verdict::Migrate if backup => {
            let from = kv::get(&conn, kv::LAST_RUN_VERSION)
                .ok()
                .flatten()
                .unwrap_or_else(|| format!("schema{}", report.database_version));
            let made = backup::create(
                dir,
                &Request {
                    kind: Kind::PreMigrate,
                    from_version: from,
                    to_version: version::VERSION.to_string(),
                    schema_version: report.database_version,
                },
            )
            .map_err(|e| {
                Refusal::new(
                    code::FAILURE,
                    format!("not migrating: the backup before migrating failed: {e}"),
                )
            })?;
            info!(path = %made.path.display(), "backed up the database before migrating");
            // Deleted now: this daemon migrates before it serves anyway.
            let pruned = backup::prune(dir, config.update.keep_backups as usize)
                .and_then(|_| waiaas_shared::trash::empty(&dir.backups()));
            if let Err(e) = pruned {
                warn!("could not prune old backups: {e}");
            }
            Some(made.path)
        }
        _ => None,
    };
    let applied = migrate::migrate(&mut conn).map_err(|e| {
        let restore = backup.as_ref().map_or(String::new(), |path| {
            format!(
                "; the database is unchanged, and a copy is in {}",
                path.display()
            )
        });
        Refusal::new(code::MIGRATION_FAILED, format!("{e}{restore}"))
    })?;
    if let (Some(first), Some(last)) = (applied.first(), applied.last()) {
        info!("migrated the database from schema {} to {last}", first - 1);
    }
    kv::set(&conn, kv::LAST_RUN_VERSION, version::VERSION).map_err(open_failed)?;
    Ok(conn)
}

/// What the launcher gave besides the listener.
struct Channels {
    control: Option<UnixStream>,
    public: Option<UnixStream>,
}

/// One HTTP server task and the order that stops it.
struct Server {
    task: tokio::task::JoinHandle<()>,
    stop: Option<tokio::sync::oneshot::Sender<Duration>>,
}

impl Server {
    fn spawn<F>(listener: tokio::net::TcpListener, routes: F, draining: server::Draining) -> Self
    where
        F: warp::Filter<Extract = (warp::reply::Response,), Error = std::convert::Infallible>
            + Clone
            + Send
            + Sync
            + 'static,
    {
        let (stop, stop_rx) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(server::serve(listener, routes, draining, stop_rx));
        Self {
            task,
            stop: Some(stop),
        }
    }

    /// Orders the drain within `grace` (once).
    fn stop(&mut self, grace: Duration) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(grace);
        }
    }

    /// Waits for the drain, bounded by `grace` plus a second; aborts after.
    async fn finish(&mut self, grace: Duration) {
        if tokio::time::timeout(grace + Duration::from_secs(1), &mut self.task)
            .await
            .is_err()
        {
            warn!(
                "the server did not stop within {} s; closing it",
                grace.as_secs()
            );
            self.task.abort();
        }
    }
}

async fn serve(
    config: &Config,
    conn: Connection,
    token: String,
    listener: TcpListener,
    channels: Channels,
) -> Result<i32, Refusal> {
    let io_failed = |e: std::io::Error| Refusal::new(code::FAILURE, format!("cannot serve: {e}"));
    let schema_version = migrate::database_version(&conn).unwrap_or_default();
    let db = Db::new(conn).map_err(|e| {
        Refusal::new(
            code::FAILURE,
            format!("cannot open the read connections: {e}"),
        )
    })?;
    let started = Instant::now();
    let default_grace = Duration::from_secs(config.daemon.shutdown_timeout);
    let listener = tokio_listener(listener).map_err(io_failed)?;
    let local = listener.local_addr().map_err(io_failed)?;
    let mut control = channels
        .control
        .map(|stream| control::spawn(stream, db.clone(), started, default_grace))
        .transpose()
        .map_err(io_failed)?;
    let mut public_channel = channels
        .public
        .map(|stream| {
            stream.set_nonblocking(true)?;
            tokio::net::UnixStream::from_std(stream)
        })
        .transpose()
        .map_err(io_failed)?;

    let state = http::State {
        db: db.clone(),
        started,
        token: Arc::from(token),
    };
    let draining = server::Draining::default();
    let routes = draining.wrap(http::routes(state.clone()));
    // On probation the inherited listener is the launcher's private one: it
    // alone is served, with the write probe, until the public one arrives.
    let (mut public, mut probe) = match public_channel {
        None => (
            Some(Server::spawn(listener, routes.clone(), draining.clone())),
            None,
        ),
        Some(_) => {
            let draining = server::Draining::default();
            let probe_routes = draining.wrap(http::probe_routes(state));
            (None, Some(Server::spawn(listener, probe_routes, draining)))
        }
    };
    match probe {
        Some(_) => info!(
            version = version::VERSION,
            "ready on probation: serving the launcher's probe listener http://{local}; \
             the public port once the upgrade is committed"
        ),
        None => info!(
            version = version::VERSION,
            "ready: listening on http://{local}"
        ),
    }
    if let Some(control) = &control {
        control.send(FromDaemon::Ready { schema_version });
    }
    let worker = version_check::spawn(config, db.clone());

    let mut signals = Signals::install();
    let (reason, grace) = loop {
        tokio::select! {
            signal = signals.next() => break (signal, default_grace),
            deadline = shutdown_order(control.as_mut()) => {
                break ("shutdown ordered by the launcher", deadline)
            }
            _ = ended(public.as_mut()) => {
                return Err(Refusal::new(code::FAILURE, "the HTTP server stopped unexpectedly"))
            }
            _ = ended(probe.as_mut().filter(|p| p.stop.is_some())) => {
                return Err(Refusal::new(code::FAILURE, "the probe server stopped unexpectedly"))
            }
            received = public_listener(public_channel.as_ref()) => {
                public_channel = None;
                match received.and_then(|l| l.map(tokio_listener).transpose()) {
                    Ok(Some(listener)) => {
                        let addr = listener.local_addr().map_err(io_failed)?;
                        public = Some(Server::spawn(listener, routes.clone(), draining.clone()));
                        if let Some(probe) = &mut probe {
                            probe.stop(Duration::ZERO);
                        }
                        info!("committed: serving http://{addr}");
                    }
                    Ok(None) => info!("no public listener will come: serving the probe listener only"),
                    Err(e) => warn!("cannot take the public listener: {e}"),
                }
            }
        }
    };
    info!("{reason}: stopping; finishing in-flight requests");
    if let Some(control) = &control {
        control.send(FromDaemon::Stopping {
            reason: reason.to_string(),
        });
    }
    // The servers bound their own drains by `grace`; `finish` is only a backstop.
    for server in [&mut public, &mut probe].into_iter().flatten() {
        server.stop(grace);
    }
    for server in [&mut public, &mut probe].into_iter().flatten() {
        server.finish(grace).await;
    }
    worker.abort();
    // Held checkpoints stay held: the launcher copied the main file as it is.
    if let Ok(true) = db.with_writer(|conn| db::checkpoints_held(conn)).await {
        info!("leaving the WAL as it is (checkpoints held for a backup)");
    }
    db.close().await;
    info!("stopped");
    Ok(code::OK)
}

fn tokio_listener(listener: TcpListener) -> std::io::Result<tokio::net::TcpListener> {
    listener.set_nonblocking(true)?;
    tokio::net::TcpListener::from_std(listener)
}

/// Resolves when `server`'s task ends; never without one.
async fn ended(server: Option<&mut Server>) {
    match server {
        Some(server) => {
            let _ = (&mut server.task).await;
        }
        None => std::future::pending().await,
    }
}

/// The public listener the launcher hands over `channel` after its commit
/// (`Ok(None)`: the channel closed without one); never without a channel.
async fn public_listener(
    channel: Option<&tokio::net::UnixStream>,
) -> std::io::Result<Option<TcpListener>> {
    let Some(channel) = channel else {
        return std::future::pending().await;
    };
    loop {
        channel.readable().await?;
        let raw = channel.as_raw_fd();
        // The channel is only borrowed as a std socket for recvmsg.
        let borrowed = std::mem::ManuallyDrop::new(unsafe { UnixStream::from_raw_fd(raw) });
        match channel.try_io(tokio::io::Interest::READABLE, || {
            listen_fds::recv_listener(&borrowed)
        }) {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            result => return result,
        }
    }
}

/// Resolves with the deadline of the launcher's shutdown order; never without a channel.
async fn shutdown_order(control: Option<&mut Control>) -> Duration {
    match control {
        Some(control) => match control.shutdown.recv().await {
            Some(deadline) => deadline,
            None => std::future::pending().await,
        },
        None => std::future::pending().await,
    }
}

/// SIGTERM and SIGINT, installed once for the whole serve loop.
struct Signals {
    term: Option<tokio::signal::unix::Signal>,
    int: Option<tokio::signal::unix::Signal>,
}

impl Signals {
    fn install() -> Self {
        use tokio::signal::unix::{SignalKind, signal};
        Self {
            term: signal(SignalKind::terminate()).ok(),
            int: signal(SignalKind::interrupt()).ok(),
        }
    }

    /// Resolves on SIGTERM or SIGINT, naming which. Without handlers the
    /// default action (terminate) still applies.
    async fn next(&mut self) -> &'static str {
        let (Some(term), Some(int)) = (&mut self.term, &mut self.int) else {
            return std::future::pending().await;
        };
        tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        }
    }
}
