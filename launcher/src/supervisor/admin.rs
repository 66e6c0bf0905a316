//! The admin socket's server side: binds `run/launcher.sock` (0600), checks
//! each peer's kernel credentials, reads one request and hands it to the
//! event loop with the connection to answer on.

use std::time::Duration;

use tokio::io::BufReader;
use tokio::net::UnixListener;
use tokio::net::unix::OwnedWriteHalf;
use tokio::sync::mpsc;
use tracing::warn;

use waiaas_shared::admin::{Envelope, Request, Response};
use waiaas_shared::control::{self, read_frame, write_frame};
use waiaas_shared::layout::DataDir;

use crate::failure::Failure;

/// How long a client has to send its request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// An admin request with the connection to answer on.
pub struct AdminCall {
    pub request: Request,
    pub reply: OwnedWriteHalf,
}

pub fn bind(dir: &DataDir) -> Result<UnixListener, Failure> {
    let path = dir.launcher_socket();
    // We hold the pid lock, so a socket file left here belongs to a dead launcher.
    let _ = std::fs::remove_file(&path);
    // 0600 from the moment it exists: the umask is narrowed around `bind`
    // (the process has one thread here), not chmodded after.
    let wider = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o177));
    let bound = UnixListener::bind(&path);
    nix::sys::stat::umask(wider);
    bound.map_err(|e| Failure::new(format!("cannot create {}: {e}", path.display())))
}

/// The admin socket another launcher handed over (already bound, 0600).
pub fn adopt(fd: std::os::fd::RawFd) -> Result<UnixListener, Failure> {
    use std::os::fd::FromRawFd;
    // SAFETY: the handover named this descriptor for this process alone.
    let listener = unsafe { std::os::unix::net::UnixListener::from_raw_fd(fd) };
    listener
        .set_nonblocking(true)
        .and_then(|()| UnixListener::from_std(listener))
        .map_err(|e| Failure::new(format!("cannot take over the admin socket: {e}")))
}

/// Accepts connections until the loop goes away.
pub async fn accept(listener: UnixListener, calls: mpsc::UnboundedSender<AdminCall>) {
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
        tokio::spawn(async move {
            let (read, write) = stream.into_split();
            match read.as_ref().peer_cred().map(|c| c.uid()) {
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
                tokio::time::timeout(REQUEST_TIMEOUT, read_frame::<Envelope, _>(&mut read)).await;
            let request = match frame {
                Ok(Ok(Some(envelope))) if envelope.protocol == control::PROTOCOL_VERSION => {
                    envelope.request
                }
                Ok(Ok(Some(envelope))) => {
                    // Name the exact program: after an upgrade or an npm
                    // install, the one on the PATH may be another release's.
                    let exe = std::env::current_exe()
                        .map_or_else(|_| "waiaas-launcher".into(), |p| p.display().to_string());
                    let message = format!(
                        "this supervisor is waiaas-launcher {} ({exe}) and speaks admin protocol {}; \
                         the command speaks {}: run the command with {exe}",
                        waiaas_shared::version::VERSION,
                        control::PROTOCOL_VERSION,
                        envelope.protocol
                    );
                    answer(write, &Response::Error { message }).await;
                    return;
                }
                Ok(Err(e)) => {
                    let message = e.to_string();
                    answer(write, &Response::Error { message }).await;
                    return;
                }
                Ok(Ok(None)) | Err(_) => return,
            };
            let _ = calls.send(AdminCall {
                request,
                reply: write,
            });
        });
    }
}

/// Writes one answer; a client that went away is only logged.
pub async fn answer(mut reply: OwnedWriteHalf, response: &Response) {
    if let Err(e) = write_frame(&mut reply, response).await {
        warn!("admin socket: could not answer: {e}");
    }
}

/// Writes one answer now, without waiting on the runtime (the process is
/// about to exec): a frame is far smaller than a socket's buffer, so a
/// client that reads gets it whole; one that does not within `timeout` is
/// only logged.
pub fn answer_blocking(reply: OwnedWriteHalf, response: &Response, timeout: Duration) {
    let Ok(frame) = control::encode(response) else {
        return;
    };
    let deadline = std::time::Instant::now() + timeout;
    let mut written = 0;
    while written < frame.len() {
        match reply.try_write(&frame[written..]) {
            Ok(n) => written += n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if std::time::Instant::now() >= deadline {
                    warn!("admin socket: could not answer in time");
                    return;
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            Err(e) => {
                warn!("admin socket: could not answer: {e}");
                return;
            }
        }
    }
}

/// Answers from a task of its own, so a slow client never holds up the loop.
pub fn answer_later(reply: OwnedWriteHalf, response: Response) {
    tokio::spawn(async move { answer(reply, &response).await });
}
