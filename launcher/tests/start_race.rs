//! The supervisor's start, under fault injection at its worst instants,
//! against the real binaries. The daemon's failpoint
//! (`WAIAAS_FAILPOINT=<point>:<action>:<token>`, see `daemon/src/failpoint.rs`)
//! kills or freezes exactly one daemon per token file at `before-hello`,
//! `after-hello` or `after-ready`; the fourth instant, the daemon's first
//! healthy answer, is hit from outside by polling `/health` every 2 ms.
//!
//! Each instant is tried [`RUNS`] times, each run with a fresh supervisor (so
//! the backoff starts over): a replacement must be healthy within a second,
//! and a SIGTERM sent at the instant must end the launcher within
//! `shutdown_timeout` + 2 s with no daemon left.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use testkit::Install;
use testkit::supervisor::{
    LogFile, Supervisor, children, daemon_pid, healthy, processes_mentioning, signal,
};

const RUNS: usize = 20;
/// `shutdown_timeout` of these installs (the smallest allowed).
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);
/// A replacement's bound: no backoff for a first failure, plus a start.
const REPLACED_WITHIN: Duration = Duration::from_secs(1);

/// `run` with one fault armed: `token` is created, and the daemon that
/// removes it acts.
fn armed(install: &Install, point: &str, action: &str) -> (Supervisor, PathBuf) {
    let token = install.home().join(format!("failpoint-{point}"));
    fs::write(&token, b"").unwrap();
    let mut command = install.launcher(&["run"]);
    command.env(
        "WAIAAS_FAILPOINT",
        format!("{point}:{action}:{}", token.display()),
    );
    let supervisor = Supervisor::spawn(
        command,
        install.home().join("launcher.stderr"),
        install.dir.launcher_socket(),
        LogFile::Fresh,
    );
    (supervisor, token)
}

/// Waits (bounded) for the token to be taken: the instant the fault fires.
fn wait_taken(token: &Path, supervisor: &Supervisor) -> Instant {
    let deadline = Instant::now() + Duration::from_secs(30);
    while token.exists() {
        assert!(
            Instant::now() < deadline,
            "the fault never fired:\n{}",
            supervisor.log()
        );
        std::thread::sleep(Duration::from_micros(500));
    }
    Instant::now()
}

/// Kills the daemon at its first healthy answer (polled every 2 ms); returns
/// the instant of the kill.
fn kill_at_first_healthy_answer(install: &Install, supervisor: &Supervisor) -> Instant {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        assert!(
            Instant::now() < deadline,
            "no healthy answer:\n{}",
            supervisor.log()
        );
        if let Some((200, _)) = testkit::http(install.port, "GET", "/health", None, None) {
            for pid in children(supervisor.pid()) {
                signal(pid, libc::SIGKILL);
            }
            return Instant::now();
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Starts `run` and kills its first daemon at `point`; returns the instant.
fn fault_at(install: &Install, point: &str) -> (Supervisor, Instant) {
    if point == "first-healthy-answer" {
        let supervisor = Supervisor::start(install);
        let at = kill_at_first_healthy_answer(install, &supervisor);
        return (supervisor, at);
    }
    let (supervisor, token) = armed(install, point, "kill");
    let at = wait_taken(&token, &supervisor);
    (supervisor, at)
}

/// One run: the fault fires, and a replacement is healthy within the bound.
fn replaced_after(point: &str) -> Duration {
    let install = Install::with_shutdown_timeout(SHUTDOWN_TIMEOUT.as_secs());
    let (supervisor, killed_at) = fault_at(&install, point);
    let mut supervisor = supervisor.with_healthy_within(REPLACED_WITHIN * 10);
    let status = supervisor.wait_healthy();
    let took = killed_at.elapsed();
    assert!(
        took <= REPLACED_WITHIN,
        "{point}: the replacement (pid {}) was healthy only after {took:?}:\n{}",
        daemon_pid(&status),
        supervisor.log()
    );
    assert!(
        !supervisor.log().contains("never became healthy"),
        "{point}: a probe waited on a dead daemon:\n{}",
        supervisor.log()
    );
    took
}

/// One run: SIGTERM at the instant the fault fires; the launcher must exit
/// in time and leave no daemon.
fn sigterm_at(point: &str) -> Duration {
    let install = Install::with_shutdown_timeout(SHUTDOWN_TIMEOUT.as_secs());
    let (mut supervisor, at) = fault_at(&install, point);
    signal(supervisor.pid(), libc::SIGTERM);
    let bound = SHUTDOWN_TIMEOUT + Duration::from_secs(2);
    let status = supervisor.wait_exit(bound + Duration::from_secs(10));
    let took = at.elapsed();
    assert!(
        took <= bound,
        "{point}: SIGTERM took {took:?} ({status}):\n{}",
        supervisor.log()
    );
    assert!(status.success(), "{point}: {status}\n{}", supervisor.log());
    let left = processes_mentioning(install.data_dir());
    assert!(left.is_empty(), "{point}: left running: {left:?}");
    took
}

fn summary(what: &str, mut times: Vec<Duration>) {
    times.sort();
    eprintln!(
        "{what}: min {:?}, median {:?}, max {:?} over {} runs",
        times[0],
        times[times.len() / 2],
        times[times.len() - 1],
        times.len()
    );
}

fn replaced(point: &str) {
    let times = (0..RUNS).map(|_| replaced_after(point)).collect();
    summary(&format!("killed {point} → replacement healthy"), times);
}

fn sigterm(point: &str) {
    let times = (0..RUNS).map(|_| sigterm_at(point)).collect();
    summary(&format!("SIGTERM {point} → launcher exited"), times);
}

#[test]
fn killed_before_hello_is_replaced_at_once() {
    replaced("before-hello");
}

#[test]
fn killed_between_hello_and_ready_is_replaced_at_once() {
    replaced("after-hello");
}

#[test]
fn killed_right_after_ready_is_replaced_at_once() {
    replaced("after-ready");
}

#[test]
fn killed_at_its_first_healthy_answer_is_replaced_at_once() {
    replaced("first-healthy-answer");
}

#[test]
fn sigterm_when_killed_before_hello_ends_the_launcher() {
    sigterm("before-hello");
}

#[test]
fn sigterm_when_killed_between_hello_and_ready_ends_the_launcher() {
    sigterm("after-hello");
}

#[test]
fn sigterm_when_killed_right_after_ready_ends_the_launcher() {
    sigterm("after-ready");
}

#[test]
fn sigterm_when_killed_at_its_first_healthy_answer_ends_the_launcher() {
    sigterm("first-healthy-answer");
}

/// A daemon frozen (SIGSTOP) at each point of its start: SIGTERM still ends
/// the launcher within `shutdown_timeout` + 2 s, the frozen daemon killed.
#[test]
fn sigterm_with_a_daemon_frozen_mid_start_ends_the_launcher() {
    for point in ["before-hello", "after-hello", "after-ready"] {
        let install = Install::with_shutdown_timeout(SHUTDOWN_TIMEOUT.as_secs());
        let (mut supervisor, token) = armed(&install, point, "pause");
        wait_taken(&token, &supervisor);
        std::thread::sleep(Duration::from_millis(50));
        let at = Instant::now();
        signal(supervisor.pid(), libc::SIGTERM);
        let bound = SHUTDOWN_TIMEOUT + Duration::from_secs(2);
        let status = supervisor.wait_exit(bound + Duration::from_secs(10));
        let took = at.elapsed();
        eprintln!("SIGTERM with a daemon frozen {point}: exited in {took:?}");
        assert!(
            took <= bound + Duration::from_millis(500),
            "{point}: {took:?}\n{}",
            supervisor.log()
        );
        assert!(status.success(), "{point}: {status}\n{}", supervisor.log());
        let left = processes_mentioning(install.data_dir());
        assert!(left.is_empty(), "{point}: left running: {left:?}");
    }
}

/// A daemon that dies right after `ready`, every time: retried at once, then
/// on the backoff schedule, and never waited on by a probe.
#[test]
fn a_daemon_that_dies_after_ready_every_time_is_retried_on_the_backoff_schedule() {
    let install = Install::with_shutdown_timeout(SHUTDOWN_TIMEOUT.as_secs());
    // A folder of six tokens: six daemons die, the seventh lives.
    let tokens = install.home().join("tokens");
    fs::create_dir_all(&tokens).unwrap();
    for i in 0..6 {
        fs::write(tokens.join(i.to_string()), b"").unwrap();
    }
    let mut command = install.launcher(&["run"]);
    let armed = format!("after-ready:kill:{}", tokens.display());
    command.env("WAIAAS_FAILPOINT", armed);
    let mut supervisor = Supervisor::spawn(
        command,
        install.home().join("launcher.stderr"),
        install.dir.launcher_socket(),
        LogFile::Fresh,
    );
    let started = Instant::now();
    // Six deaths: delays 0, 100, 200, 400, 800, 1600 ms; the seventh daemon lives.
    let status = supervisor.wait_for(Duration::from_secs(30), "a daemon that lives", |s| {
        healthy(s) && s.restarts >= 6
    });
    let took = started.elapsed();
    let log = supervisor.log();
    let delays: Vec<&str> = log
        .lines()
        .filter_map(|l| l.split("retrying in ").nth(1))
        .collect();
    assert_eq!(
        delays,
        ["0ns", "100ms", "200ms", "400ms", "800ms", "1.6s"],
        "{log}"
    );
    assert!(!log.contains("never became healthy"), "{log}");
    assert!(!log.contains('\x1b'), "colour codes in a log file:\n{log}");
    // 3.1 s of backoff plus seven starts.
    assert!(took < Duration::from_secs(3 + 5), "took {took:?}\n{log}");
    assert_eq!(status.restarts, 6);
}
