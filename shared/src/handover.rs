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
//!
//! **The confirmation deadline.** A launcher that is handed the service must
//! confirm it within a bound, or it is killed — also when nobody watches it
//! (`run` by hand, without systemd's watchdog). Before `execve` the old
//! launcher arms a real-time interval timer ([`arm_deadline`]:
//! `setitimer(ITIMER_REAL)`, with `SIGALRM` set to its default action and
//! unblocked). The kernel keeps that timer across `execve` (and across any
//! further exec, e.g. a shell wrapper), so it runs in the new program from
//! its first instruction, whatever that program is; a launcher that has
//! taken over cancels it ([`confirm`]). If it is never cancelled the kernel
//! sends `SIGALRM`, whose default action ends the process; the daemon it may
//! have started dies with it (parent-death signal), and the next start of the
//! service — systemd's `Restart=`, or `run` again by hand, by whatever
//! launcher — finds the journal's handover unconfirmed and rolls the whole
//! release back (launcher and daemon), saying why.
//!
//! What "confirmed" means: a launcher resuming a handed-over step (the last
//! step of an upgrade or rollback: start its own daemon, commit) cancels the
//! timer once that start has an outcome — healthy, or failed and about to be
//! rolled back by that launcher itself. Any other launcher handed the service
//! (a handback after such a rollback, a first start handed to the newer
//! current launcher) cancels it as soon as it has taken over. The deadline is
//! `[update] health_timeout` (the time a new daemon has to become healthy)
//! plus [`TAKEOVER_GRACE`] for the exec and the takeover themselves, so a
//! working launcher always meets it. A launcher that ignores or catches
//! `SIGALRM` before confirming escapes it; no WAIaaS launcher does, and
//! under systemd the watchdog (`WatchdogSec=`) remains.

use std::os::fd::RawFd;
use std::path::Path;
use std::time::Duration;

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

/// What the confirmation deadline adds to `[update] health_timeout`: the
/// exec and the takeover (milliseconds when all is well).
pub const TAKEOVER_GRACE: Duration = Duration::from_secs(10);

/// Arms the confirmation deadline (see the module's documentation): in
/// `after`, `SIGALRM` ends this process — or the program it execs next —
/// unless [`confirm`] is called first. Replaces any deadline armed before.
pub fn arm_deadline(after: Duration) -> std::io::Result<()> {
    // SAFETY: plain system calls on this process's own signal state and
    // timer; the sigset is initialised by sigemptyset before use.
    unsafe {
        // An inherited "ignore" would survive the exec and defeat the timer.
        if libc::signal(libc::SIGALRM, libc::SIG_DFL) == libc::SIG_ERR {
            return Err(std::io::Error::last_os_error());
        }
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGALRM);
        // The mask of the thread that calls execve is the new program's.
        let error = libc::pthread_sigmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
        if error != 0 {
            return Err(std::io::Error::from_raw_os_error(error));
        }
    }
    set_timer(after.max(Duration::from_millis(1))).map(drop)
}

/// Cancels the confirmation deadline; returns how long was left, if one was
/// armed (`None` also when it cannot be read).
pub fn confirm() -> Option<Duration> {
    set_timer(Duration::ZERO).ok().flatten()
}

/// How long is left of an armed deadline, without changing it.
pub fn deadline_left() -> Option<Duration> {
    // SAFETY: getitimer writes into the struct it is given.
    let mut now: libc::itimerval = unsafe { std::mem::zeroed() };
    (unsafe { libc::getitimer(libc::ITIMER_REAL, &mut now) } == 0)
        .then(|| duration(now.it_value))
        .filter(|left| !left.is_zero())
}

/// Sets the one-shot real-time timer (zero cancels it); the time that was left.
fn set_timer(after: Duration) -> std::io::Result<Option<Duration>> {
    let value = libc::timeval {
        tv_sec: after.as_secs() as libc::time_t,
        tv_usec: after.subsec_micros() as libc::suseconds_t,
    };
    let zero = libc::timeval {
        tv_sec: 0,
        tv_usec: 0,
    };
    let new = libc::itimerval {
        it_interval: zero,
        it_value: value,
    };
    // SAFETY: setitimer reads `new` and writes `old`, both valid.
    let mut old: libc::itimerval = unsafe { std::mem::zeroed() };
    if unsafe { libc::setitimer(libc::ITIMER_REAL, &new, &mut old) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let left = duration(old.it_value);
    Ok((!left.is_zero()).then_some(left))
}

fn duration(value: libc::timeval) -> Duration {
    Duration::from_secs(value.tv_sec.max(0) as u64)
        + Duration::from_micros(value.tv_usec.max(0) as u64)
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

    #[test]
    fn the_deadline_is_armed_read_and_cancelled() {
        // Far enough away never to fire in this test process.
        arm_deadline(Duration::from_secs(3600)).unwrap();
        let left = deadline_left().expect("armed");
        assert!(left > Duration::from_secs(3590) && left <= Duration::from_secs(3600));
        let left = confirm().expect("it was armed");
        assert!(left > Duration::from_secs(3590), "{left:?}");
        assert_eq!(deadline_left(), None);
        assert_eq!(confirm(), None, "nothing left to cancel");
    }
}
