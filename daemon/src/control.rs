//! The daemon's end of the launcher's control channel (see
//! `waiaas_shared::control`): announce ourselves, say when we are ready,
//! answer pings and status, and turn a shutdown order — or the launcher's end
//! closing — into a graceful stop.

use std::io::Write;
use std::os::fd::FromRawFd;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use tokio::io::BufReader;
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use waiaas_shared::control::{
    CONTROL_FD_ENV, FrameError, FromDaemon, FromLauncher, PROTOCOL_VERSION, PUBLIC_CHANNEL_FD_ENV,
    read_frame, write_frame,
};
use waiaas_shared::version::VERSION;

use crate::db::Db;
use crate::migrate;

/// Takes the socket over which the public listener will arrive, named by
/// `WAIAAS_PUBLIC_CHANNEL_FD`: present when the launcher starts this daemon
/// on probation. Call before any thread is started: it edits the environment.
pub fn take_public_channel() -> Result<Option<UnixStream>, String> {
    take_socket(PUBLIC_CHANNEL_FD_ENV)
}

/// Takes the control socket named by `WAIAAS_CONTROL_FD`, if any, and says
/// hello on it (`probation`: started so, see [`take_public_channel`]). Call
/// before any thread is started: it edits the environment.
pub fn take_and_greet(probation: bool) -> Result<Option<UnixStream>, String> {
    let Some(mut stream) = take_socket(CONTROL_FD_ENV)? else {
        return Ok(None);
    };
    let hello = FromDaemon::Hello {
        protocol: PROTOCOL_VERSION,
        version: VERSION.to_string(),
        pid: std::process::id(),
        holds_checkpoints: true,
        probation,
    };
    let mut frame = serde_json::to_vec(&hello).expect("a message serialises");
    frame.push(b'\n');
    crate::failpoint::hit("before-hello");
    stream
        .write_all(&frame)
        .map_err(|e| format!("cannot greet the launcher on the control channel: {e}"))?;
    crate::failpoint::hit("after-hello");
    Ok(Some(stream))
}

/// The socket whose descriptor the environment variable `name` gives.
fn take_socket(name: &str) -> Result<Option<UnixStream>, String> {
    let Some(value) = std::env::var_os(name) else {
        return Ok(None);
    };
    // SAFETY: documented precondition of the callers: no other thread exists yet.
    unsafe { std::env::remove_var(name) };
    let fd: i32 = value
        .to_str()
        .and_then(|v| v.trim().parse().ok())
        .filter(|fd| *fd > 2)
        .ok_or_else(|| format!("{name}={value:?} is not a descriptor number"))?;
    // SAFETY: fcntl only inspects/flags the descriptor; F_GETFD fails on a closed one.
    let open = unsafe { libc::fcntl(fd, libc::F_GETFD) } >= 0;
    if !open {
        return Err(format!("{name}={fd} is not an open descriptor"));
    }
    // SAFETY: the launcher handed this descriptor to us alone; close-on-exec keeps
    // it out of our own children.
    Ok(Some(unsafe {
        libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC);
        UnixStream::from_raw_fd(fd)
    }))
}

/// A running control channel.
pub struct Control {
    outgoing: mpsc::UnboundedSender<FromDaemon>,
    /// Shutdown orders, with the deadline the launcher gave.
    pub shutdown: mpsc::UnboundedReceiver<Duration>,
}

impl Control {
    /// Sends a message to the launcher (dropped silently if the channel is gone:
    /// the launcher's absence is handled as a shutdown order).
    pub fn send(&self, message: FromDaemon) {
        let _ = self.outgoing.send(message);
    }
}

/// Serves the channel on the runtime: answers pings and status, forwards
/// shutdown orders, and orders a shutdown when the launcher's end closes.
pub fn spawn(
    stream: UnixStream,
    db: Db,
    started: Instant,
    default_deadline: Duration,
) -> std::io::Result<Control> {
    stream.set_nonblocking(true)?;
    let stream = tokio::net::UnixStream::from_std(stream)?;
    let (outgoing, mut to_send) = mpsc::unbounded_channel::<FromDaemon>();
    let (order, shutdown) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let (read, mut write) = stream.into_split();
        let mut read = BufReader::new(read);
        loop {
            tokio::select! {
                message = to_send.recv() => {
                    let Some(message) = message else { break };
                    if let Err(e) = write_frame(&mut write, &message).await {
                        debug!("control channel write failed: {e}");
                    }
                    if matches!(message, FromDaemon::Ready { .. }) {
                        crate::failpoint::hit("after-ready");
                    }
                }
                frame = read_frame::<FromLauncher, _>(&mut read) => match frame {
                    Ok(Some(FromLauncher::Ping { seq })) => {
                        let _ = write_frame(&mut write, &FromDaemon::Pong { seq }).await;
                    }
                    Ok(Some(FromLauncher::Status)) => {
                        let schema_version = db
                            .read(migrate::database_version)
                            .await
                            .unwrap_or_default();
                        let status = FromDaemon::Status {
                            version: VERSION.to_string(),
                            schema_version,
                            uptime: started.elapsed().as_secs(),
                            writes: Some(db.writes()),
                        };
                        let _ = write_frame(&mut write, &status).await;
                    }
                    Ok(Some(FromLauncher::Shutdown { deadline_secs })) => {
                        let _ = order.send(Duration::from_secs(deadline_secs));
                    }
                    Ok(Some(FromLauncher::HoldCheckpoints)) => {
                        let answer = match db.hold_checkpoints().await {
                            Ok(()) => {
                                info!("checkpoints held until exit: the launcher is backing up");
                                FromDaemon::CheckpointsHeld
                            }
                            Err(e) => FromDaemon::CheckpointsNotHeld { reason: e.to_string() },
                        };
                        let _ = write_frame(&mut write, &answer).await;
                    }
                    Ok(None) | Err(FrameError::Io(_)) => {
                        // The launcher is gone: nobody supervises us any more.
                        let _ = order.send(default_deadline);
                        break;
                    }
                    Err(e) => warn!("ignoring a bad control frame: {e}"),
                },
            }
        }
    });
    Ok(Control { outgoing, shutdown })
}
