//! What the launcher's benches share besides the load ([`super::load`]): the
//! preamble's checks and machine facts, figures and units, and the process
//! helpers.
//!
//! - [`daemon_beside_launcher`], [`print_machine`], [`after_section`],
//!   [`loadavg`], [`cpus`].
//! - [`Stats`] (min, median, max), [`ms`], [`micros`], [`round1`], [`round3`].
//! - [`supervisor`] — a bench's `run`, logging to `<home>/launcher.stderr`;
//!   [`idle`] — a window it idles through.
//! - [`run_bounded`], [`http_health`], [`status_kib`], [`cpu_ticks`],
//!   [`clock_ticks_per_second`].

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use super::supervisor::{LogFile, Supervisor, signal};
use super::{Install, daemon_binary};

/// The `waiaas-daemon` beside the launcher under test; exits (2) with how to
/// build it when it is missing (`cargo bench -p waiaas-launcher` builds only
/// the launcher). `title` names the bench, `bench` its `--bench` name.
pub fn daemon_beside_launcher(title: &str, bench: &str) -> PathBuf {
    let daemon = daemon_binary();
    if !daemon.is_file() {
        eprintln!(
            "{title}: {} is missing.\n\
             `cargo bench -p waiaas-launcher` builds only the launcher; build the daemon beside it first:\n\
             \n    cargo build --release --workspace\n    cargo bench -p waiaas-launcher --bench {bench}\n",
            daemon.display()
        );
        std::process::exit(2);
    }
    daemon
}

/// Prints the machine's CPUs and load average.
pub fn print_machine() {
    println!(
        "  cpus {}, load average {} (other work on the machine skews every figure)",
        cpus(),
        loadavg()
    );
}

/// Adds the load average after a section to `loads` and prints it.
pub fn after_section(loads: &mut Vec<String>) {
    loads.push(loadavg());
    println!("  load average {}\n", loads[loads.len() - 1]);
}

/// The first three fields of /proc/loadavg (1, 5 and 15 minutes).
pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

pub fn cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// `command` (a `waiaas-launcher … run` of `install`) with `launcher_log` as
/// its `WAIAAS_LOG`, its stderr appended to `<home>/launcher.stderr`, healthy
/// within `healthy_within`, stopped gracefully (`stop_grace`) on drop.
pub fn supervisor(
    install: &Install,
    mut command: Command,
    launcher_log: Option<&str>,
    healthy_within: Duration,
    stop_grace: Duration,
) -> Supervisor {
    if let Some(filter) = launcher_log {
        command.env("WAIAAS_LOG", filter);
    }
    Supervisor::spawn(
        command,
        install.home().join("launcher.stderr"),
        install.dir.launcher_socket(),
        LogFile::Append,
    )
    .with_healthy_within(healthy_within)
    .with_stop_grace(stop_grace)
}

/// Lets `supervisor` idle for `window`, checking every second that it is
/// alive; how long it idled.
pub fn idle(supervisor: &mut Supervisor, window: Duration) -> Duration {
    let started = Instant::now();
    let end = started + window;
    while Instant::now() < end {
        supervisor.assert_alive("the idle window");
        std::thread::sleep(
            end.saturating_duration_since(Instant::now())
                .min(Duration::from_secs(1)),
        );
    }
    started.elapsed()
}

/// Runs `command` to completion or kills it after `timeout`: its status and
/// output, or why it could not run or finish.
pub fn run_bounded(
    mut command: Command,
    timeout: Duration,
) -> Result<(ExitStatus, String), String> {
    let program = format!("{:?}", command.get_program());
    let child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run {program}: {e}"))?;
    let pid = child.id() as i32;
    let (tx, rx) = std::sync::mpsc::channel();
    let waiter = std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let result = match rx.recv_timeout(timeout) {
        Ok(Ok(out)) => Ok((
            out.status,
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )),
        Ok(Err(e)) => Err(format!("cannot wait for {program}: {e}")),
        Err(_) => {
            // Not reaped yet (the waiter holds it), so the pid is still ours.
            signal(pid, libc::SIGKILL);
            Err(format!("{program} did not finish within {timeout:?}"))
        }
    };
    let _ = waiter.join();
    result
}

/// The status code of a direct `GET /health` on 127.0.0.1:`port`.
pub fn http_health(port: u16, timeout: Duration) -> Option<u16> {
    let mut stream = TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), timeout).ok()?;
    stream.set_read_timeout(Some(timeout)).ok()?;
    stream.set_write_timeout(Some(timeout)).ok()?;
    stream
        .write_all(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        .ok()?;
    let mut answer = Vec::new();
    stream.take(64 * 1024).read_to_end(&mut answer).ok()?;
    let text = String::from_utf8_lossy(&answer);
    text.lines()
        .next()?
        .strip_prefix("HTTP/1.1 ")?
        .get(..3)?
        .parse()
        .ok()
}

/// A numeric field of `/proc/<pid>/status` (`kB` ones in KiB); 0 if unreadable.
pub fn status_kib(pid: i32, name: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// utime + stime of `pid`, in clock ticks; 0 if unreadable.
pub fn cpu_ticks(pid: i32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // After the command name: state is field 3, utime 14, stime 15.
    let Some((_, rest)) = stat.rsplit_once(") ") else {
        return 0;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    [11, 12]
        .iter()
        .filter_map(|&i| fields.get(i)?.parse::<u64>().ok())
        .sum()
}

/// Clock ticks per second (`_SC_CLK_TCK`).
pub fn clock_ticks_per_second() -> i64 {
    // SAFETY: sysconf has no preconditions.
    unsafe { libc::sysconf(libc::_SC_CLK_TCK) }
}

/// Min, median and max of some figures (all 0 for none).
#[derive(Debug, Default, Clone, Copy)]
pub struct Stats {
    pub min: f64,
    pub median: f64,
    pub max: f64,
}

impl Stats {
    pub fn of(values: &[f64]) -> Self {
        if values.is_empty() {
            return Self::default();
        }
        let mut sorted = values.to_vec();
        sorted.sort_by(f64::total_cmp);
        let n = sorted.len();
        let median = if n % 2 == 1 {
            sorted[n / 2]
        } else {
            (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0
        };
        Self {
            min: sorted[0],
            median,
            max: sorted[n - 1],
        }
    }
}

pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

pub fn micros(d: Duration) -> u64 {
    d.as_micros() as u64
}

pub fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

pub fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}
