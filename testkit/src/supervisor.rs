//! The supervisor as a process: a `waiaas-launcher run` in the background,
//! asked over its admin socket, and the process helpers the tests and benches
//! around it share.
//!
//! - [`Supervisor::start`] — `run` for an [`Install`]; [`Supervisor::spawn`]
//!   for any `run` command (another environment, log file or data dir).
//! - [`Supervisor::status`] / [`Supervisor::ask`] — admin requests;
//!   [`Supervisor::wait_for`], [`Supervisor::wait_healthy`],
//!   [`Supervisor::wait_exit`] poll until something holds.
//! - Stopping: [`Supervisor::kill9`], [`Supervisor::stop`] (SIGTERM, then
//!   SIGKILL after the stop grace), [`Supervisor::stop_with`] (a
//!   `waiaas-launcher stop`). On drop the supervisor is killed at once, or
//!   stopped with [`Supervisor::with_stop_grace`]'s grace if one was set.
//! - [`healthy`], [`daemon_pid`], [`signal`], [`process_state`],
//!   [`process_gone`], [`children`], [`wait_gone`], [`processes_mentioning`]
//!   — free helpers.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use waiaas_shared::admin::{Request, Response, Status, client};

use super::{Install, run};

/// How [`Supervisor::spawn`] opens the file the launcher's stderr goes to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFile {
    /// Emptied first: the log holds this supervisor's run only.
    Fresh,
    /// Appended to: successive supervisors of one install share one log.
    Append,
}

/// A `waiaas-launcher run` in the background; killed on drop (or stopped
/// gracefully, see [`Supervisor::with_stop_grace`]).
pub struct Supervisor {
    child: Option<Child>,
    log: PathBuf,
    socket: PathBuf,
    healthy_within: Duration,
    stop_grace: Duration,
}

impl Supervisor {
    /// `waiaas-launcher run` for `install`, stderr into a fresh
    /// `<home>/launcher.stderr`.
    pub fn start(install: &Install) -> Self {
        Self::spawn(
            install.launcher(&["run"]),
            install.home().join("launcher.stderr"),
            install.dir.launcher_socket(),
            LogFile::Fresh,
        )
    }

    /// Spawns `command` (a `waiaas-launcher … run`) with stdin and stdout on
    /// `/dev/null` and stderr into `log`; `socket` is its admin socket.
    pub fn spawn(mut command: Command, log: PathBuf, socket: PathBuf, mode: LogFile) -> Self {
        let stderr = match mode {
            LogFile::Fresh => File::create(&log),
            LogFile::Append => File::options().create(true).append(true).open(&log),
        }
        .unwrap_or_else(|e| panic!("cannot open the launcher's log {}: {e}", log.display()));
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("spawn waiaas-launcher run");
        Self {
            child: Some(child),
            log,
            socket,
            healthy_within: Duration::from_secs(30),
            stop_grace: Duration::ZERO,
        }
    }

    /// How long [`Supervisor::wait_healthy`] waits (30 s unless set).
    pub fn with_healthy_within(mut self, timeout: Duration) -> Self {
        self.healthy_within = timeout;
        self
    }

    /// Makes [`Supervisor::stop`] and drop send SIGTERM and wait up to `grace`
    /// before SIGKILL. Without it, drop kills at once.
    pub fn with_stop_grace(mut self, grace: Duration) -> Self {
        self.stop_grace = grace;
        self
    }

    /// The launcher's pid; 0 once it has been stopped.
    pub fn pid(&self) -> i32 {
        self.child.as_ref().map_or(0, |c| c.id() as i32)
    }

    fn child(&mut self) -> &mut Child {
        self.child
            .as_mut()
            .expect("the supervisor was already stopped")
    }

    /// The whole log.
    pub fn log(&self) -> String {
        self.log_since(0)
    }

    /// The log's length in bytes, an offset for [`Supervisor::log_since`].
    pub fn log_len(&self) -> u64 {
        std::fs::metadata(&self.log).map_or(0, |m| m.len())
    }

    /// The log from byte `offset` on.
    pub fn log_since(&self, offset: u64) -> String {
        let bytes = std::fs::read(&self.log).unwrap_or_default();
        let from = (offset as usize).min(bytes.len());
        String::from_utf8_lossy(&bytes[from..]).into_owned()
    }

    /// The last `lines` lines of the log.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = self.log();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Panics with the log's tail if the supervisor has exited.
    pub fn assert_alive(&mut self, what: &str) {
        let exited = self
            .child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten());
        if let Some(exit) = exited {
            panic!(
                "the supervisor exited ({exit}) during {what}:\n{}",
                self.log_tail(30)
            );
        }
    }

    /// One admin request, through the commands' own client; `None` if
    /// nothing (readable) answered.
    pub fn ask(&self, request: Request) -> Option<Response> {
        client::call(&self.socket, request, Duration::from_secs(60))
            .ok()
            .flatten()
    }

    pub fn status(&self) -> Option<Status> {
        match self.ask(Request::Status)? {
            Response::Status(status) => Some(status),
            _ => None,
        }
    }

    /// Polls status until `done` holds; panics with the log if the
    /// supervisor exits first or after `timeout`.
    pub fn wait_for(
        &mut self,
        timeout: Duration,
        what: &str,
        done: impl Fn(&Status) -> bool,
    ) -> Status {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.status()
                && done(&status)
            {
                return status;
            }
            if let Some(exit) = self.child().try_wait().unwrap() {
                panic!(
                    "supervisor exited ({exit}) while waiting for {what}:\n{}",
                    self.log()
                );
            }
            assert!(
                Instant::now() < deadline,
                "no {what} within {timeout:?}:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// A running supervisor with a healthy daemon, within the
    /// [`Supervisor::with_healthy_within`] timeout.
    pub fn wait_healthy(&mut self) -> Status {
        self.wait_for(self.healthy_within, "healthy daemon", healthy)
    }

    /// Waits for the supervisor to exit; panics with the log after `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        crate::wait_exit(self.child(), timeout)
            .unwrap_or_else(|| panic!("supervisor did not exit:\n{}", self.log()))
    }

    /// SIGKILL, and reaped.
    pub fn kill9(&mut self) {
        signal(self.pid(), libc::SIGKILL);
        let _ = self.child().wait();
    }

    /// SIGTERM (the supervisor stops its daemon gracefully), SIGKILL if it
    /// has not exited within the stop grace; the daemon dies with it either
    /// way. With no grace, SIGKILL at once.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if !self.stop_grace.is_zero()
            && let Ok(None) = child.try_wait()
        {
            signal(child.id() as i32, libc::SIGTERM);
            let deadline = Instant::now() + self.stop_grace;
            while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        let _ = child.kill();
        let _ = child.wait();
    }

    /// Runs `stop` (a `waiaas-launcher stop`), asserts it succeeded and waits
    /// up to 30 s for the supervisor to be gone.
    pub fn stop_with(mut self, mut stop: Command) {
        let out = run(&mut stop);
        assert!(out.status.success(), "stop: {out:?}");
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.child().try_wait().unwrap().is_none() {
            assert!(
                Instant::now() < deadline,
                "the supervisor did not stop:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A running supervisor with a healthy daemon.
pub fn healthy(status: &Status) -> bool {
    status.state == "running" && status.daemon.as_ref().is_some_and(|d| d.healthy)
}

/// The daemon's pid; panics if status names no daemon.
pub fn daemon_pid(status: &Status) -> i32 {
    status.daemon.as_ref().expect("a daemon").pid as i32
}

/// kill(2) `pid` with `signal`; a pid of 0 or less (no process) is ignored.
pub fn signal(pid: i32, signal: libc::c_int) {
    if pid > 0 {
        // SAFETY: kill(2) on a process the caller started (directly or through
        // the launcher).
        unsafe { libc::kill(pid, signal) };
    }
}

/// The state letter of `/proc/<pid>/stat` (`R`, `S`, `Z`, …), `None` if gone.
pub fn process_state(pid: i32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(") ")?.1.chars().next()
}

/// Gone, or a zombie waiting for a reaper that is not us.
pub fn process_gone(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| rest.starts_with(['Z', 'X'])),
    }
}

/// The children of `pid`, from /proc (a launcher's children are its daemons).
pub fn children(pid: i32) -> Vec<i32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

/// Waits up to `timeout` for [`process_gone`].
pub fn wait_gone(pid: i32, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if process_gone(pid) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    false
}

/// Live processes (not zombies) whose command line mentions `needle`: pid → command line.
pub fn processes_mentioning(needle: &Path) -> BTreeMap<i32, String> {
    let needle = needle.to_string_lossy().into_owned();
    let mut found = BTreeMap::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        let zombie = process_state(pid).is_none_or(|state| matches!(state, 'Z' | 'X'));
        if !zombie && cmdline.contains(&needle) {
            found.insert(pid, cmdline.trim().to_string());
        }
    }
    found
}
