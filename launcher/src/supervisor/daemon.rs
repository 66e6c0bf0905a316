//! One supervised daemon process: spawned with the listener at fd 3 and its
//! control channel at fd 4, its frames read into a channel (so the event loop
//! never holds a half-read frame when another event wins), its exit awaited.

use std::net::TcpListener;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream as StdUnixStream;
use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::time::Instant;

use tokio::io::BufReader;
use tokio::net::UnixStream;
use tokio::net::unix::OwnedWriteHalf;
use tokio::process::Child;
use tokio::sync::{mpsc, oneshot};
use tracing::warn;

use waiaas_shared::control::{
    self, CONTROL_FD, CONTROL_FD_ENV, FromDaemon, FromLauncher, read_frame,
};
use waiaas_shared::layout::DataDir;
use waiaas_shared::listen_fds;

use crate::daemon_binary::{self, Probation};

/// A daemon process and its control channel.
pub struct Daemon {
    pub child: Child,
    pub pid: u32,
    /// From its hello; empty before.
    pub version: String,
    /// From its ready; 0 before.
    pub schema_version: u32,
    /// From its hello: it can hold its checkpoints for a live backup.
    pub holds_checkpoints: bool,
    /// The engine waiting for the answer to [`FromLauncher::HoldCheckpoints`]
    /// (dropped — an answer of no — if the daemon exits first).
    pub hold_answer: Option<oneshot::Sender<bool>>,
    pub started: Instant,
    /// Started on probation: serving only a probe listener until [`Daemon::open`].
    probation: Option<Probation>,
    control: OwnedWriteHalf,
    frames: mpsc::UnboundedReceiver<FromDaemon>,
    /// The daemon closed its channel: no more frames, its exit follows.
    frames_closed: bool,
}

/// What a daemon did next.
pub enum DaemonEvent {
    Exited(std::io::Result<ExitStatus>),
    Frame(FromDaemon),
}

/// Which listener a daemon starts with.
pub enum Listening<'a> {
    /// The public one: it serves clients from its start.
    Public(&'a TcpListener),
    /// A private probe listener; the public one only after [`Daemon::open`].
    Probation,
}

impl Daemon {
    /// Spawns `program serve` for `dir`, listening as `listening` says. It
    /// gets SIGTERM if the launcher dies (Linux), and its channel's end otherwise.
    pub fn spawn(program: &Path, dir: &DataDir, listening: Listening<'_>) -> Result<Self, String> {
        let (ours, theirs) =
            StdUnixStream::pair().map_err(|e| format!("cannot create the control channel: {e}"))?;
        let mut probation = match listening {
            Listening::Public(_) => None,
            Listening::Probation => Some(
                Probation::new().map_err(|e| format!("cannot create the probe listener: {e}"))?,
            ),
        };
        let mut command = daemon_binary::command(program, libc::SIGTERM);
        command
            .arg("serve")
            .arg("--data-dir")
            .arg(dir.root())
            .env(CONTROL_FD_ENV, CONTROL_FD.to_string())
            .stdin(Stdio::null());
        match (&listening, &probation) {
            (Listening::Public(listener), _) => {
                listen_fds::pass(&mut command, &[listener.as_raw_fd(), theirs.as_raw_fd()])
            }
            (Listening::Probation, Some(probation)) => {
                probation.pass(&mut command, &[theirs.as_raw_fd()])
            }
            (Listening::Probation, None) => unreachable!("made above"),
        }
        let child = tokio::process::Command::from(command)
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", program.display()))?;
        drop(theirs);
        if let Some(probation) = &mut probation {
            probation.spawned();
        }
        let pid = child.id().unwrap_or_default();
        let stream = ours
            .set_nonblocking(true)
            .and_then(|()| UnixStream::from_std(ours))
            .map_err(|e| format!("control channel: {e}"))?;
        let (read, control) = stream.into_split();
        let (frames_tx, frames) = mpsc::unbounded_channel();
        tokio::spawn(forward_frames(BufReader::new(read), frames_tx));
        Ok(Self {
            child,
            pid,
            version: String::new(),
            schema_version: 0,
            holds_checkpoints: false,
            hold_answer: None,
            started: Instant::now(),
            probation,
            control,
            frames,
            frames_closed: false,
        })
    }

    /// Where its readiness is probed while on probation; `None` once it
    /// serves the public listener (or never was on probation).
    pub fn probe_addr(&self) -> Option<std::net::SocketAddr> {
        self.probation.as_ref().map(|p| p.probe_addr)
    }

    /// Ends its probation: hands it the public `listener` (once).
    pub fn open(&mut self, listener: &TcpListener) -> std::io::Result<()> {
        match self.probation.take() {
            Some(probation) => probation.open(listener),
            None => Ok(()),
        }
    }

    /// The next exit or frame. A daemon that closed its channel only exits.
    pub async fn next_event(&mut self) -> DaemonEvent {
        loop {
            tokio::select! {
                status = self.child.wait() => return DaemonEvent::Exited(status),
                frame = self.frames.recv(), if !self.frames_closed => match frame {
                    Some(frame) => return DaemonEvent::Frame(frame),
                    None => self.frames_closed = true,
                },
            }
        }
    }

    /// Orders a graceful shutdown within `deadline_secs`, without waiting:
    /// the frame goes into the socket's buffer, or SIGTERM is sent instead
    /// (a daemon that does not drain its channel must not stall the loop).
    pub fn order_stop(&mut self, deadline_secs: u64) {
        if let Err(e) = self.send(&FromLauncher::Shutdown { deadline_secs }) {
            warn!("cannot order the daemon to stop ({e}); sending SIGTERM");
            self.signal(libc::SIGTERM);
        }
    }

    /// Sends `message` without waiting: it goes whole into the socket's
    /// buffer, or not at all.
    pub fn send(&mut self, message: &FromLauncher) -> std::io::Result<()> {
        let frame = control::encode(message)?;
        let n = self.control.try_write(&frame)?;
        if n == frame.len() {
            Ok(())
        } else {
            Err(std::io::Error::other("the frame did not fit"))
        }
    }

    pub fn kill(&mut self) {
        let _ = self.child.start_kill();
    }

    /// Whether the process is still there (not yet exited).
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    pub fn signal(&self, signal: libc::c_int) {
        // SAFETY: kill(2) on our own child's pid, which we have not reaped yet
        // (the child is reaped only through `self.child`).
        unsafe { libc::kill(self.pid as libc::pid_t, signal) };
    }
}

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
            Ok(None) | Err(control::FrameError::Io(_)) => return,
            Err(e) => warn!("ignoring a bad frame from the daemon: {e}"),
        }
    }
}
