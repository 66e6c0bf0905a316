//! The launcher handing itself over to another release's launcher in the
//! same process (`execve`, same PID: systemd's MainPID and a container's
//! PID 1 do not change). What must survive travels as open descriptors named
//! in one environment variable, [`HANDOVER_ENV`], as JSON ([`Handover`]):
//! the HTTP listener, the admin socket, and the connection of an `upgrade`
//! command still waiting for its report. systemd's notify settings travel
//! in their own variables, as systemd set them.
//!
//! The format is versioned ([`HANDOVER_VERSION`]); a launcher that cannot
//! read a handover says so, and starts as if freshly run (it binds its own
//! listener and socket: the service still comes back).

use std::os::fd::RawFd;
use std::path::Path;

use serde::{Deserialize, Serialize};

/// The variable carrying a [`Handover`].
pub const HANDOVER_ENV: &str = "WAIAAS_HANDOVER";
/// The format version this build writes and reads.
pub const HANDOVER_VERSION: u32 = 1;

/// What a launcher hands to the next one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Handover {
    pub version: u32,
    /// The launcher version handing over.
    pub from_launcher: String,
    /// The bound HTTP listener.
    pub listener_fd: RawFd,
    /// The bound admin socket (`run/launcher.sock`).
    pub admin_fd: RawFd,
    /// An `upgrade` command's connection, waiting for its report.
    pub reply_fd: Option<RawFd>,
    /// READY=1 was already sent to systemd.
    pub ready_sent: bool,
}

/// Why a handover in the environment cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum HandoverError {
    #[error("{HANDOVER_ENV} is not a handover this launcher reads ({0}): starting afresh")]
    Unreadable(String),
    #[error(
        "{HANDOVER_ENV} is format {0}, this launcher reads {HANDOVER_VERSION}: starting afresh"
    )]
    Version(u64),
    #[error("{HANDOVER_ENV} names descriptor {0}, which is not open")]
    Closed(RawFd),
}

impl Handover {
    /// Takes the handover from the environment (and removes it, so the
    /// daemon never sees it). Call before any thread exists.
    pub fn take() -> Result<Option<Self>, HandoverError> {
        let Some(text) = std::env::var_os(HANDOVER_ENV) else {
            return Ok(None);
        };
        // SAFETY: documented precondition: no other thread exists yet.
        unsafe { std::env::remove_var(HANDOVER_ENV) };
        let text = text.to_string_lossy();
        // The version first: a later format may have other fields.
        let version = serde_json::from_str::<serde_json::Value>(&text)
            .ok()
            .and_then(|v| v.get("version")?.as_u64());
        let parsed = match version {
            Some(v) if v == u64::from(HANDOVER_VERSION) => serde_json::from_str::<Self>(&text)
                .map_err(|e| HandoverError::Unreadable(e.to_string())),
            Some(v) => Err(HandoverError::Version(v)),
            None => Err(HandoverError::Unreadable("no format version".into())),
        };
        let handover = match parsed {
            Ok(handover) => handover,
            Err(e) => {
                // Starting afresh means binding the port and the socket again:
                // the descriptors this launcher cannot use must be closed first.
                close_named_fds(&text);
                return Err(e);
            }
        };
        for fd in handover.fds() {
            // SAFETY: F_GETFD only inspects a descriptor number.
            if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
                return Err(HandoverError::Closed(fd));
            }
            // Ours now: not to be inherited by the daemon.
            // SAFETY: sets close-on-exec on a descriptor handed to us.
            unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
        }
        Ok(Some(handover))
    }

    fn fds(&self) -> impl Iterator<Item = RawFd> {
        [Some(self.listener_fd), Some(self.admin_fd), self.reply_fd]
            .into_iter()
            .flatten()
    }

    /// Replaces this process with `program args…`, handing this over (and
    /// `env`, e.g. systemd's notify variables). Returns only if the exec
    /// failed (the descriptors are then as before).
    pub fn exec(&self, program: &Path, args: &[&str], env: &[(&str, String)]) -> std::io::Error {
        use std::os::unix::process::CommandExt;
        let json = serde_json::to_string(self).expect("a handover serialises");
        for fd in self.fds() {
            // SAFETY: clears close-on-exec on descriptors this process owns.
            unsafe { libc::fcntl(fd, libc::F_SETFD, 0) };
        }
        let error = std::process::Command::new(program)
            .args(args)
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .env(HANDOVER_ENV, json)
            .exec();
        for fd in self.fds() {
            // SAFETY: as above; the exec failed, so they are ours again.
            unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
        }
        error
    }
}

/// Closes every descriptor a handover of any format names (`…_fd` keys).
fn close_named_fds(text: &str) {
    let Ok(serde_json::Value::Object(fields)) = serde_json::from_str(text) else {
        return;
    };
    for (key, value) in fields {
        if let (true, Some(fd)) = (key.ends_with("_fd"), value.as_i64())
            && fd > 2
        {
            // SAFETY: closes a descriptor the handover gave to this process.
            unsafe { libc::close(fd as RawFd) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_format_round_trips_and_names_its_version() {
        let h = Handover {
            version: HANDOVER_VERSION,
            from_launcher: "1.8.1".into(),
            listener_fd: 5,
            admin_fd: 6,
            reply_fd: Some(9),
            ready_sent: true,
        };
        let json = serde_json::to_string(&h).unwrap();
        assert!(json.contains("\"version\":1"), "{json}");
        assert_eq!(serde_json::from_str::<Handover>(&json).unwrap(), h);
        assert_eq!(h.fds().collect::<Vec<_>>(), [5, 6, 9]);
    }
}
