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
        Self::adopt(&text.to_string_lossy()).map(Some)
    }

    /// Reads a handover's text and makes the descriptors it names this
    /// process's (close-on-exec: not the daemon's); one it cannot read has
    /// the descriptors it names closed, so that they can be bound afresh.
    fn adopt(text: &str) -> Result<Self, HandoverError> {
        // The version first: a later format may have other fields.
        let version = serde_json::from_str::<serde_json::Value>(text)
            .ok()
            .and_then(|v| v.get("version")?.as_u64());
        let parsed = match version {
            Some(v) if v == u64::from(HANDOVER_VERSION) => serde_json::from_str::<Self>(text)
                .map_err(|e| HandoverError::Unreadable(e.to_string())),
            Some(v) => Err(HandoverError::Version(v)),
            None => Err(HandoverError::Unreadable("no format version".into())),
        };
        let handover = match parsed {
            Ok(handover) => handover,
            Err(e) => {
                // Starting afresh means binding the port and the socket again:
                // the descriptors this launcher cannot use must be closed first.
                close_named_fds(text);
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
        Ok(handover)
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

    /// A real descriptor (an open temp file) and what identifies its file:
    /// a number other tests may reuse once closed is told apart by this.
    fn open_file(dir: &Path, name: &str, cloexec: bool) -> (RawFd, (u64, u64)) {
        use std::os::fd::IntoRawFd;
        use std::os::unix::fs::MetadataExt;
        let file = std::fs::File::create(dir.join(name)).unwrap();
        let meta = file.metadata().unwrap();
        let fd = file.into_raw_fd();
        let flags = if cloexec { libc::FD_CLOEXEC } else { 0 };
        // SAFETY: sets the flags of a descriptor this test owns.
        assert_eq!(unsafe { libc::fcntl(fd, libc::F_SETFD, flags) }, 0);
        (fd, (meta.dev(), meta.ino()))
    }

    /// Whether `fd` is open on the file `id` (not closed, nor reused).
    fn still_open(fd: RawFd, id: (u64, u64)) -> bool {
        // SAFETY: fstat writes into the struct it is given.
        let mut stat: libc::stat = unsafe { std::mem::zeroed() };
        (unsafe { libc::fstat(fd, &mut stat) } == 0) && (stat.st_dev, stat.st_ino) == id
    }

    fn cloexec(fd: RawFd) -> bool {
        // SAFETY: F_GETFD only inspects a descriptor number.
        unsafe { libc::fcntl(fd, libc::F_GETFD) & libc::FD_CLOEXEC != 0 }
    }

    fn close(fd: RawFd) {
        // SAFETY: closes a descriptor this test owns.
        unsafe { libc::close(fd) };
    }

    #[test]
    fn a_handover_s_descriptors_become_this_launcher_s_not_the_daemon_s() {
        let tmp = tempfile::tempdir().unwrap();
        // One inherited as a handover leaves it (no close-on-exec), one
        // already close-on-exec: both are open, both end close-on-exec.
        let (listener, listener_id) = open_file(tmp.path(), "listener", false);
        let (admin, admin_id) = open_file(tmp.path(), "admin", true);
        let text = format!(
            r#"{{"version":1,"from_launcher":"1.8.1","listener_fd":{listener},"admin_fd":{admin},"reply_fd":null,"ready_sent":true}}"#
        );
        let handover = Handover::adopt(&text).unwrap();
        assert_eq!((handover.listener_fd, handover.admin_fd), (listener, admin));
        assert_eq!(handover.from_launcher, "1.8.1");
        assert!(cloexec(listener) && cloexec(admin));
        assert!(still_open(listener, listener_id) && still_open(admin, admin_id));
        close(listener);
        close(admin);
    }

    #[test]
    fn a_handover_naming_a_closed_descriptor_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let (listener, _) = open_file(tmp.path(), "listener", false);
        let (admin, _) = open_file(tmp.path(), "admin", true);
        // Far above any descriptor this process has open.
        let closed: RawFd = 2_000_000_000;
        let text = format!(
            r#"{{"version":1,"from_launcher":"1.8.1","listener_fd":{listener},"admin_fd":{admin},"reply_fd":{closed},"ready_sent":false}}"#
        );
        assert!(matches!(Handover::adopt(&text), Err(HandoverError::Closed(fd)) if fd == closed));
        close(listener);
        close(admin);
    }

    /// A handover this launcher cannot read (another format, no version,
    /// fields missing) starts afresh: the descriptors it names (`…_fd`,
    /// above stderr) are closed so that the port and socket can be bound
    /// again; nothing else is.
    #[test]
    fn an_unreadable_handover_closes_the_descriptors_it_names() {
        let tmp = tempfile::tempdir().unwrap();
        for (text, error) in [
            (r#""version":2"#, "Version(2)"),
            (r#""format":"x""#, "Unreadable"),
            (r#""version":1"#, "Unreadable"),
        ] {
            let (listener, listener_id) = open_file(tmp.path(), "listener", false);
            let (other, other_id) = open_file(tmp.path(), "other", false);
            let (unnamed, unnamed_id) = open_file(tmp.path(), "unnamed", false);
            let text = format!(
                r#"{{{text},"listener_fd":{listener},"socket_fd":{other},"kept":{unnamed},"stderr_fd":2}}"#
            );
            let refused = Handover::adopt(&text).unwrap_err();
            assert!(format!("{refused:?}").starts_with(error), "{refused:?}");
            assert!(!still_open(listener, listener_id), "{text}");
            assert!(!still_open(other, other_id), "{text}");
            assert!(still_open(unnamed, unnamed_id), "{text}: not named …_fd");
            // SAFETY: F_GETFD only inspects a descriptor number.
            assert!(
                unsafe { libc::fcntl(2, libc::F_GETFD) } >= 0,
                "stderr is kept"
            );
            close(unnamed);
        }
    }

    /// The environment is the process's: `take` is tried in a process of
    /// its own, this test binary run again on the test below.
    #[test]
    fn the_handover_is_taken_from_the_environment_once() {
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "handover::tests::take_in_a_child_process"])
            .args(["--nocapture", "--test-threads=1"])
            .env(
                HANDOVER_ENV,
                r#"{"version":1,"from_launcher":"1.8.1","listener_fd":1,"admin_fd":2,"reply_fd":null,"ready_sent":false}"#,
            )
            .env(CHILD, "1")
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && stdout.contains("took 1.8.1 from 1 and 2, then none"),
            "{stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    const CHILD: &str = "WAIAAS_HANDOVER_TEST_CHILD";

    /// Run only by the test above, in its child process (a no-op otherwise).
    #[test]
    fn take_in_a_child_process() {
        if std::env::var_os(CHILD).is_none() {
            return;
        }
        let taken = Handover::take()
            .unwrap()
            .expect("a handover in the environment");
        let again = Handover::take().unwrap();
        println!(
            "took {} from {} and {}, then {}",
            taken.from_launcher,
            taken.listener_fd,
            taken.admin_fd,
            if again.is_none() { "none" } else { "another" }
        );
    }

    #[test]
    fn a_timer_value_is_read_to_the_microsecond_and_never_negative() {
        let value = |tv_sec, tv_usec| libc::timeval { tv_sec, tv_usec };
        assert_eq!(
            duration(value(2, 500_000)),
            Duration::from_micros(2_500_000)
        );
        assert_eq!(duration(value(0, 7)), Duration::from_micros(7));
        assert_eq!(duration(value(-1, -1)), Duration::ZERO);
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
