//! What the supervisor costs and how fast it recovers, measured on real
//! release builds in a temp installation made by the real `init`:
//!
//! 1. idle cost — the launcher's RSS and CPU time while a healthy daemon idles;
//! 2. crash-to-healthy — `kill -9` of the daemon until a new one answers;
//! 3. restart under load — `waiaas-launcher restart` while 32 clients send
//!    `GET /health` without pause.
//!
//! Run it (`cargo bench -p waiaas-launcher` builds only the launcher; the
//! daemon must already sit beside it in `target/release`):
//!
//! ```text
//! cargo build --release --workspace
//! cargo bench -p waiaas-launcher --bench launcher
//! ```
//!
//! Settings: `WAIAAS_BENCH_IDLE_SECONDS` (default 60) is the idle window;
//! `WAIAAS_BENCH_LAUNCHER_LOG`, if set, is passed to the launcher as
//! `WAIAAS_LOG` (the launcher otherwise runs with no `WAIAAS_*` variable).
//!
//! Prints readable lines, then one line of JSON with every figure. Every wait
//! is bounded; every process started is stopped (SIGTERM, then SIGKILL) when
//! its owner is dropped, also on a panic.

#[path = "../tests/support/mod.rs"]
mod support;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::Install;
use support::supervisor::{LogFile, Supervisor, daemon_pid, healthy, process_state, signal};

/// The idle window unless `WAIAAS_BENCH_IDLE_SECONDS` says otherwise.
const IDLE_DEFAULT_SECS: u64 = 60;
const IDLE_MAX_SECS: u64 = 3600;
/// Target for the launcher's resident memory.
const RSS_TARGET_KIB: u64 = 8 * 1024;
/// Crash samples, each on a fresh supervisor.
const CRASH_SAMPLES: usize = 10;
/// Longest a crashed daemon may take to be replaced before the sample fails.
const CRASH_TIMEOUT: Duration = Duration::from_secs(10);
const LOAD_CLIENTS: usize = 32;
const RESTARTS: usize = 5;
/// Load before the first restart, between restarts, and after the last.
const LOAD_PAUSE: Duration = Duration::from_secs(1);
/// A hard end for the load clients, whatever happens to the restarts.
const LOAD_DEADLINE: Duration = Duration::from_secs(180);
/// Requests recorded per client at most (memory bound).
const PER_CLIENT_CAP: usize = 2_000_000;
/// Longest one `restart` command may take before it is killed.
const RESTART_TIMEOUT: Duration = Duration::from_secs(90);
const HEALTHY_TIMEOUT: Duration = Duration::from_secs(30);

fn main() {
    let began = Instant::now();
    let daemon = Path::new(support::LAUNCHER).with_file_name("waiaas-daemon");
    if !daemon.is_file() {
        eprintln!(
            "waiaas-launcher bench: {} is missing.\n\
             `cargo bench -p waiaas-launcher` builds only the launcher; build the daemon beside it first:\n\
             \n    cargo build --release --workspace\n    cargo bench -p waiaas-launcher --bench launcher\n",
            daemon.display()
        );
        std::process::exit(2);
    }
    let idle_secs = idle_seconds();
    let launcher_log = std::env::var("WAIAAS_BENCH_LAUNCHER_LOG").ok();
    println!("waiaas-launcher bench");
    println!("  launcher {}", support::LAUNCHER);
    println!("  daemon   {}", daemon.display());
    println!(
        "  WAIAAS_LOG for the launcher: {}",
        launcher_log.as_deref().unwrap_or("(unset)")
    );
    println!(
        "  cpus {}, load average {} (other work on the machine skews every figure)",
        cpus(),
        loadavg()
    );

    let install = Install::new();
    println!(
        "  install {} (port {})",
        install.data_dir().display(),
        install.port
    );
    println!();

    let mut loads = vec![loadavg()];
    let idle = idle_cost(&install, idle_secs, launcher_log.as_deref());
    loads.push(loadavg());
    println!("  load average {}\n", loads[1]);
    let crash = crash_to_healthy(&install, launcher_log.as_deref());
    loads.push(loadavg());
    println!("  load average {}\n", loads[2]);
    let load = restart_under_load(&install, launcher_log.as_deref());
    loads.push(loadavg());
    println!("  load average {}\n", loads[3]);

    let total = began.elapsed();
    println!("total bench time {:.1} s", total.as_secs_f64());
    let summary = json!({
        "bench": "waiaas-launcher",
        "launcher_log": launcher_log,
        "cpus": cpus(),
        "loadavg_before_and_after_each_section": loads,
        "idle": idle,
        "crash_to_healthy": crash,
        "restart_under_load": load,
        "total_s": round1(total.as_secs_f64()),
    });
    println!("{summary}");
}

fn idle_seconds() -> u64 {
    match std::env::var("WAIAAS_BENCH_IDLE_SECONDS") {
        Err(_) => IDLE_DEFAULT_SECS,
        Ok(text) => match text.trim().parse::<u64>() {
            Ok(secs) if secs <= IDLE_MAX_SECS => secs,
            _ => {
                eprintln!(
                    "WAIAAS_BENCH_IDLE_SECONDS must be whole seconds, 0..={IDLE_MAX_SECS}, not {text:?}"
                );
                std::process::exit(2);
            }
        },
    }
}

/// The first three fields of /proc/loadavg (1, 5 and 15 minutes).
fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

fn cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

// ---------------------------------------------------------------------------
// 1. Idle cost

fn idle_cost(install: &Install, secs: u64, launcher_log: Option<&str>) -> Value {
    println!("== 1. idle cost ({secs} s with a healthy daemon) ==");
    let started = Instant::now();
    let mut supervisor = start_supervisor(install, launcher_log);
    let status = supervisor.wait_healthy();
    let to_healthy = started.elapsed();
    let launcher = supervisor.pid();
    let daemon = daemon_pid(&status);
    println!(
        "  launcher pid {launcher}, daemon pid {daemon}; healthy {:.0} ms after spawn",
        ms(to_healthy)
    );

    let cpu_before = (cpu_ms(launcher), cpu_ms(daemon));
    let window = Instant::now();
    let end = window + Duration::from_secs(secs);
    while Instant::now() < end {
        supervisor.assert_alive("the idle window");
        std::thread::sleep(
            end.saturating_duration_since(Instant::now())
                .min(Duration::from_secs(1)),
        );
    }
    let idled = window.elapsed();
    let cpu_after = (cpu_ms(launcher), cpu_ms(daemon));
    let launcher_cpu = cpu_after.0 - cpu_before.0;
    let daemon_cpu = cpu_after.1 - cpu_before.1;
    let l = Memory::of(launcher);
    let d = Memory::of(daemon);
    let still = supervisor
        .status()
        .expect("the supervisor answers after idling");
    let still_healthy = healthy(&still) && daemon_pid(&still) == daemon;

    let verdict = if l.rss_kib <= RSS_TARGET_KIB {
        "within"
    } else {
        "ABOVE"
    };
    println!(
        "  launcher VmRSS {} VmHWM {} (RssAnon {}, RssFile {}), {} thread(s): {verdict} the 8 MiB target",
        mib(l.rss_kib),
        mib(l.hwm_kib),
        mib(l.anon_kib),
        mib(l.file_kib),
        l.threads
    );
    println!(
        "  launcher CPU (utime+stime) over {:.1} s idle: {launcher_cpu:.0} ms (total since start {:.0} ms; target ~0)",
        idled.as_secs_f64(),
        cpu_after.0
    );
    println!(
        "  daemon   VmRSS {} VmHWM {} (RssAnon {}, RssFile {}), {} threads; CPU over the window {daemon_cpu:.0} ms",
        mib(d.rss_kib),
        mib(d.hwm_kib),
        mib(d.anon_kib),
        mib(d.file_kib),
        d.threads
    );
    println!("  daemon still the same and healthy after the window: {still_healthy}");
    let rollup = smaps_rollup(launcher);
    let shown: Vec<String> = rollup
        .iter()
        .filter(|(k, _)| {
            [
                "Rss",
                "Pss",
                "Pss_Anon",
                "Pss_File",
                "Shared_Clean",
                "Private_Clean",
                "Private_Dirty",
                "Anonymous",
            ]
            .contains(&k.as_str())
        })
        .map(|(k, v)| format!("{k} {v} kB"))
        .collect();
    println!("  launcher smaps_rollup: {}", shown.join(", "));
    let top = top_mappings(launcher, 6);
    println!(
        "  launcher Rss by mapping: {}",
        top.iter()
            .map(|(name, kib)| format!("{name} {kib} kB"))
            .collect::<Vec<_>>()
            .join(", ")
    );

    json!({
        "seconds": round1(idled.as_secs_f64()),
        "launcher": {
            "pid": launcher,
            "vm_rss_kib": l.rss_kib,
            "vm_hwm_kib": l.hwm_kib,
            "rss_anon_kib": l.anon_kib,
            "rss_file_kib": l.file_kib,
            "threads": l.threads,
            "cpu_ms_idle": round1(launcher_cpu),
            "cpu_ms_total": round1(cpu_after.0),
            "within_8_mib": l.rss_kib <= RSS_TARGET_KIB,
            "smaps_rollup_kib": rollup.into_iter().collect::<HashMap<_, _>>(),
            "top_mappings_kib": top,
        },
        "daemon": {
            "pid": daemon,
            "vm_rss_kib": d.rss_kib,
            "vm_hwm_kib": d.hwm_kib,
            "threads": d.threads,
            "cpu_ms_idle": round1(daemon_cpu),
        },
        "healthy_after_spawn_ms": round1(ms(to_healthy)),
        "still_healthy": still_healthy,
    })
}

/// What /proc/<pid>/status says about memory, in KiB.
#[derive(Debug, Default)]
struct Memory {
    rss_kib: u64,
    hwm_kib: u64,
    anon_kib: u64,
    file_kib: u64,
    threads: u64,
}

impl Memory {
    fn of(pid: i32) -> Self {
        let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let field = |name: &str| -> u64 {
            text.lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
                .unwrap_or(0)
        };
        Self {
            rss_kib: field("VmRSS"),
            hwm_kib: field("VmHWM"),
            anon_kib: field("RssAnon"),
            file_kib: field("RssFile"),
            threads: field("Threads"),
        }
    }
}

/// utime + stime of `pid`, in milliseconds.
fn cpu_ms(pid: i32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // Fields after the command name: state is field 3, utime 14, stime 15.
    let Some((_, rest)) = stat.rsplit_once(") ") else {
        return 0.0;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = [11, 12]
        .iter()
        .filter_map(|&i| fields.get(i)?.parse::<u64>().ok())
        .sum();
    // SAFETY: sysconf has no preconditions.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    ticks as f64 * 1000.0 / per_second
}

/// The `key: value kB` lines of /proc/<pid>/smaps_rollup.
fn smaps_rollup(pid: i32) -> Vec<(String, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap_or_default();
    text.lines()
        .filter_map(|line| {
            let (key, value) = line.split_once(':')?;
            let kib = value.trim().strip_suffix("kB")?.trim().parse().ok()?;
            Some((key.to_string(), kib))
        })
        .collect()
}

/// Resident memory per mapped object (file name, `[heap]`, `[anon]`, …), largest first.
fn top_mappings(pid: i32, n: usize) -> Vec<(String, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap_or_default();
    let mut by_name: HashMap<String, u64> = HashMap::new();
    let mut current = String::new();
    for line in text.lines() {
        let mut words = line.split_whitespace();
        let first = words.next().unwrap_or_default();
        let is_header =
            first.contains('-') && first.chars().all(|c| c.is_ascii_hexdigit() || c == '-');
        if is_header {
            let path: Vec<&str> = words.skip(4).collect();
            current = match path.join(" ") {
                p if p.is_empty() => "[anon]".to_string(),
                p => Path::new(&p)
                    .file_name()
                    .map_or(p.clone(), |f| f.to_string_lossy().into_owned()),
            };
        } else if let Some(value) = line.strip_prefix("Rss:") {
            let kib: u64 = value
                .trim()
                .trim_end_matches("kB")
                .trim()
                .parse()
                .unwrap_or(0);
            *by_name.entry(current.clone()).or_default() += kib;
        }
    }
    let mut all: Vec<(String, u64)> = by_name.into_iter().filter(|(_, k)| *k > 0).collect();
    all.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    all.truncate(n);
    all
}

// ---------------------------------------------------------------------------
// 2. Crash-to-healthy

fn crash_to_healthy(install: &Install, launcher_log: Option<&str>) -> Value {
    println!(
        "== 2. crash-to-healthy ({CRASH_SAMPLES} × kill -9 of the daemon, a fresh supervisor per sample) =="
    );
    println!(
        "  (the backoff resets only after 60 s of stable running, so each sample is the *first* crash of its supervisor: restarted at once, no backoff)"
    );
    println!(
        "  (the admin status is first asked once the launcher has reaped the killed daemon, so the measuring does not delay the restart; see the second series)"
    );
    let mut series: Vec<Option<CrashSample>> = Vec::new();
    for sample in 1..=CRASH_SAMPLES {
        let result = crash_sample(install, launcher_log, false);
        print_crash_sample(sample, result.as_ref());
        series.push(result);
    }
    let main = crash_summary("crash-to-healthy", &series);

    println!(
        "  -- {EAGER_SAMPLES} more samples with one admin status request sent right after the kill, as a monitor polling `status` might --"
    );
    let mut eager: Vec<Option<CrashSample>> = Vec::new();
    for sample in 1..=EAGER_SAMPLES {
        let result = crash_sample(install, launcher_log, true);
        print_crash_sample(sample, result.as_ref());
        eager.push(result);
    }
    let blocked = eager
        .iter()
        .flatten()
        .filter(|s| s.eager_status.is_some_and(|t| t >= 400.0))
        .count();
    println!(
        "  {blocked} of {EAGER_SAMPLES}: the status request took ≥ 400 ms (the launcher probed /health of a daemon it had not reaped yet, with the event loop waiting)"
    );
    let mut eager = crash_summary("with a status request during the crash", &eager);
    eager["status_blocked_restart"] = json!(blocked);
    json!({
        "method": "fresh supervisor per sample (first crash: restarted at once, no backoff); status first asked once the launcher reaped the killed daemon",
        "samples": CRASH_SAMPLES,
        "failed": main["failed"],
        "min_ms": main["min_ms"],
        "median_ms": main["median_ms"],
        "max_ms": main["max_ms"],
        "series_ms": main["series_ms"],
        "status_healthy_series_ms": main["status_healthy_series_ms"],
        "reaped_series_ms": main["reaped_series_ms"],
        "status_during_crash": eager,
    })
}

/// Samples asking the admin status while the killed daemon is not yet reaped.
const EAGER_SAMPLES: usize = 5;

/// One crash, timed from the kill (milliseconds).
struct CrashSample {
    before: i32,
    after: i32,
    /// How long the status request made during the crash took (eager samples).
    eager_status: Option<f64>,
    /// The killed daemon is gone from /proc: its launcher has reaped it.
    reaped: f64,
    /// The admin status reports another daemon, healthy.
    status: f64,
    /// A direct `GET /health` answered 200 after that.
    answered: f64,
}

/// Starts a supervisor, kills its daemon with SIGKILL and times the
/// replacement. With `eager`, one admin status request is sent right after
/// the kill, racing the launcher's reaping of the daemon. None if no
/// replacement came within the timeout.
fn crash_sample(install: &Install, launcher_log: Option<&str>, eager: bool) -> Option<CrashSample> {
    let mut supervisor = start_supervisor(install, launcher_log);
    let before = daemon_pid(&supervisor.wait_healthy());
    let killed = Instant::now();
    signal(before, libc::SIGKILL);
    let deadline = killed + CRASH_TIMEOUT;
    let mut eager_status = None;
    let mut reaped = None;
    if eager {
        let asked = Instant::now();
        let _ = supervisor.status();
        eager_status = Some(ms(asked.elapsed()));
    }
    while Instant::now() < deadline {
        if process_state(before).is_none() {
            reaped = Some(ms(killed.elapsed()));
            break;
        }
        std::thread::sleep(Duration::from_micros(100));
    }
    let mut replaced: Option<(i32, f64)> = None;
    let mut answered = None;
    while reaped.is_some() && Instant::now() < deadline {
        if replaced.is_none() {
            if let Some(status) = supervisor.status() {
                if healthy(&status) && daemon_pid(&status) != before {
                    replaced = Some((daemon_pid(&status), ms(killed.elapsed())));
                }
            }
        }
        if replaced.is_some() && http_health(install.port, Duration::from_secs(2)) == Some(200) {
            answered = Some(ms(killed.elapsed()));
            break;
        }
        supervisor.assert_alive("a replacement daemon");
        std::thread::sleep(Duration::from_millis(5));
    }
    let result = match (reaped, replaced, answered) {
        (Some(reaped), Some((after, status)), Some(answered)) => Some(CrashSample {
            before,
            after,
            eager_status,
            reaped,
            status,
            answered,
        }),
        _ => {
            println!(
                "  daemon {before} NOT replaced by a healthy one within {CRASH_TIMEOUT:?}:\n{}",
                supervisor.log_tail(20)
            );
            None
        }
    };
    supervisor.stop();
    result
}

fn print_crash_sample(sample: usize, result: Option<&CrashSample>) {
    match result {
        Some(s) => println!(
            "  sample {sample:2}: daemon {} → {}: {}reaped at {:.1} ms, status healthy at {:.1} ms, GET /health 200 at {:.1} ms",
            s.before,
            s.after,
            s.eager_status.map_or(String::new(), |t| format!(
                "status during the crash took {t:.1} ms, "
            )),
            s.reaped,
            s.status,
            s.answered
        ),
        None => println!("  sample {sample:2}: failed"),
    }
}

/// Prints min/median/max and the raw series; returns them as JSON.
fn crash_summary(what: &str, series: &[Option<CrashSample>]) -> Value {
    let good: Vec<f64> = series.iter().flatten().map(|s| s.answered).collect();
    let failed = series.len() - good.len();
    let stats = Stats::of(&good);
    println!(
        "  {what}: min {:.1} ms, median {:.1} ms, max {:.1} ms ({} samples, {failed} failed)",
        stats.min,
        stats.median,
        stats.max,
        good.len()
    );
    println!(
        "  raw series (ms): {}",
        series
            .iter()
            .map(|s| s
                .as_ref()
                .map_or("failed".to_string(), |s| format!("{:.1}", s.answered)))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let field = |f: fn(&CrashSample) -> f64| -> Vec<Option<f64>> {
        series
            .iter()
            .map(|s| s.as_ref().map(|s| round1(f(s))))
            .collect()
    };
    json!({
        "samples": series.len(),
        "failed": failed,
        "min_ms": round1(stats.min),
        "median_ms": round1(stats.median),
        "max_ms": round1(stats.max),
        "series_ms": field(|s| s.answered),
        "status_healthy_series_ms": field(|s| s.status),
        "reaped_series_ms": field(|s| s.reaped),
        "status_request_during_crash_ms": series
            .iter()
            .map(|s| s.as_ref().and_then(|s| s.eager_status).map(round1))
            .collect::<Vec<_>>(),
    })
}

/// The status code of a direct `GET /health` on the install's port.
fn http_health(port: u16, timeout: Duration) -> Option<u16> {
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

#[derive(Debug, Default)]
struct Stats {
    min: f64,
    median: f64,
    max: f64,
}

impl Stats {
    fn of(values: &[f64]) -> Self {
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

// ---------------------------------------------------------------------------
// 3. Restart under load

/// What one load client saw; times are microseconds since the load began.
#[derive(Default)]
struct ClientLog {
    /// When each successful request completed.
    done_us: Vec<u64>,
    /// Every request, successful or not: (completed at, took).
    requests: Vec<(u64, u64)>,
    failed: u64,
    errors: Vec<String>,
}

/// One `restart` command, timed.
struct RestartRun {
    start_us: u64,
    end_us: u64,
    ok: bool,
    output: String,
    before: Option<i32>,
    after: Option<i32>,
}

fn restart_under_load(install: &Install, launcher_log: Option<&str>) -> Value {
    println!(
        "== 3. restart under load ({LOAD_CLIENTS} keep-alive clients, {RESTARTS} restarts {LOAD_PAUSE:?} apart) =="
    );
    let mut supervisor = start_supervisor(install, launcher_log);
    supervisor.wait_healthy();
    let url = format!("http://127.0.0.1:{}/health", install.port);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let stop = Arc::new(AtomicBool::new(false));
    let origin = Instant::now();
    let deadline = origin + LOAD_DEADLINE;
    let clients: Vec<_> = (0..LOAD_CLIENTS)
        .map(|_| runtime.spawn(load_client(url.clone(), stop.clone(), origin, deadline)))
        .collect();

    std::thread::sleep(LOAD_PAUSE);
    let mut runs = Vec::new();
    for _ in 0..RESTARTS {
        let before = supervisor
            .status()
            .and_then(|s| s.daemon)
            .map(|d| d.pid as i32);
        let start_us = micros(origin.elapsed());
        let (status, output) = run_bounded(install.launcher(&["restart"]), RESTART_TIMEOUT);
        let end_us = micros(origin.elapsed());
        let after = supervisor
            .status()
            .and_then(|s| s.daemon)
            .map(|d| d.pid as i32);
        runs.push(RestartRun {
            start_us,
            end_us,
            ok: status.is_some_and(|s| s.success()),
            output,
            before,
            after,
        });
        std::thread::sleep(LOAD_PAUSE);
    }
    stop.store(true, Ordering::Relaxed);
    let logs: Vec<ClientLog> = runtime.block_on(async {
        let mut logs = Vec::new();
        for client in clients {
            logs.push(client.await.unwrap_or_default());
        }
        logs
    });
    runtime.shutdown_timeout(Duration::from_secs(5));
    let ran = origin.elapsed();

    let requests: Vec<(u64, u64)> = logs
        .iter()
        .flat_map(|l| l.requests.iter().copied())
        .collect();
    let mut latencies: Vec<u64> = requests.iter().map(|&(_, took)| took).collect();
    latencies.sort_unstable();
    let mut done: Vec<u64> = logs
        .iter()
        .flat_map(|l| l.done_us.iter().copied())
        .collect();
    done.sort_unstable();
    let sent = latencies.len() as u64;
    let failed: u64 = logs.iter().map(|l| l.failed).sum();
    let errors: Vec<&String> = logs.iter().flat_map(|l| l.errors.iter()).take(5).collect();
    let worst = latencies.last().copied().unwrap_or(0);
    let p99 = percentile(&latencies, 0.99);
    let p50 = percentile(&latencies, 0.50);
    let overall_gap = longest_gap(&done, 0, u64::MAX);
    // Requests that overlapped no restart command: the steady state.
    let windows: Vec<(u64, u64)> = runs.iter().map(|r| (r.start_us, r.end_us)).collect();
    let overlaps = |&(done, took): &(u64, u64)| {
        windows
            .iter()
            .any(|&(from, to)| done >= from && done.saturating_sub(took) <= to)
    };
    let mut steady: Vec<u64> = requests
        .iter()
        .filter(|r| !overlaps(r))
        .map(|&(_, took)| took)
        .collect();
    steady.sort_unstable();
    let during = requests.len() - steady.len();
    let worst_request = requests.iter().max_by_key(|&&(_, took)| took).copied();

    println!(
        "  {sent} requests in {:.1} s ({:.0}/s), {failed} failed (target 0)",
        ran.as_secs_f64(),
        sent as f64 / ran.as_secs_f64()
    );
    for e in &errors {
        println!("    failure: {e}");
    }
    println!(
        "  latency: p50 {:.2} ms, p99 {:.2} ms, worst {:.1} ms",
        p50 as f64 / 1000.0,
        p99 as f64 / 1000.0,
        worst as f64 / 1000.0
    );
    if let Some(r @ (done_at, took)) = worst_request {
        println!(
            "  the worst request ran from t={:.1} ms to t={:.1} ms after the load began ({})",
            done_at.saturating_sub(took) as f64 / 1000.0,
            done_at as f64 / 1000.0,
            if overlaps(&r) {
                "during a restart"
            } else {
                "outside every restart"
            }
        );
    }
    println!(
        "  {during} requests overlapped a restart command; the other {}: p99 {:.2} ms, worst {:.1} ms",
        steady.len(),
        percentile(&steady, 0.99) as f64 / 1000.0,
        steady.last().copied().unwrap_or(0) as f64 / 1000.0
    );
    let mut per_restart = Vec::new();
    for (i, run) in runs.iter().enumerate() {
        let took = (run.end_us - run.start_us) as f64 / 1000.0;
        let gap = longest_gap(&done, run.start_us, run.end_us) as f64 / 1000.0;
        let changed = match (run.before, run.after) {
            (Some(b), Some(a)) if a != b => format!("daemon {b} → {a}"),
            (b, a) => format!("daemon NOT replaced ({b:?} → {a:?})"),
        };
        println!(
            "  restart {}: command {took:.1} ms{}, longest no-completion interval {gap:.1} ms, {changed}",
            i + 1,
            if run.ok { "" } else { " FAILED" }
        );
        if !run.ok {
            println!("    {}", run.output.trim());
        }
        per_restart.push(json!({
            "command_ms": round1(took),
            "longest_no_completion_ms": round1(gap),
            "ok": run.ok,
            "daemon_before": run.before,
            "daemon_after": run.after,
        }));
    }
    println!(
        "  longest interval without a completed request over the whole run: {:.1} ms",
        overall_gap as f64 / 1000.0
    );
    supervisor.stop();

    json!({
        "clients": LOAD_CLIENTS,
        "restarts": RESTARTS,
        "seconds": round1(ran.as_secs_f64()),
        "sent": sent,
        "failed": failed,
        "p50_ms": round3(p50 as f64 / 1000.0),
        "p99_ms": round3(p99 as f64 / 1000.0),
        "worst_ms": round1(worst as f64 / 1000.0),
        "longest_no_completion_ms": round1(overall_gap as f64 / 1000.0),
        "worst_request_end_ms": worst_request.map(|(done, _)| round1(done as f64 / 1000.0)),
        "outside_restarts": {
            "requests": steady.len(),
            "p99_ms": round3(percentile(&steady, 0.99) as f64 / 1000.0),
            "worst_ms": round1(steady.last().copied().unwrap_or(0) as f64 / 1000.0),
        },
        "per_restart": per_restart,
    })
}

/// Sends `GET /health` on one keep-alive client until told to stop.
async fn load_client(
    url: String,
    stop: Arc<AtomicBool>,
    origin: Instant,
    deadline: Instant,
) -> ClientLog {
    let mut log = ClientLog::default();
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("an HTTP client");
    while !stop.load(Ordering::Relaxed)
        && Instant::now() < deadline
        && log.requests.len() < PER_CLIENT_CAP
    {
        let sent = Instant::now();
        let outcome = match client.get(&url).send().await {
            Ok(r) if r.status().is_success() => {
                r.bytes().await.map(drop).map_err(|e| format!("{e:?}"))
            }
            Ok(r) => Err(format!("HTTP {}", r.status())),
            Err(e) => Err(format!("{e:?}")),
        };
        let now = Instant::now();
        log.requests
            .push((micros(now - origin), micros(now - sent)));
        match outcome {
            Ok(()) => log.done_us.push(micros(now - origin)),
            Err(e) => {
                log.failed += 1;
                if log.errors.len() < 3 {
                    log.errors.push(e);
                }
            }
        }
    }
    log
}

/// The longest interval between consecutive completions (`done` sorted)
/// that overlaps `[from, to]`.
fn longest_gap(done: &[u64], from: u64, to: u64) -> u64 {
    done.windows(2)
        .filter(|w| w[1] >= from && w[0] <= to)
        .map(|w| w[1] - w[0])
        .max()
        .unwrap_or(0)
}

fn percentile(sorted: &[u64], q: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Runs `command` to completion or kills it after `timeout`; returns its
/// status (None if killed) and its output.
fn run_bounded(mut command: Command, timeout: Duration) -> (Option<ExitStatus>, String) {
    let child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {command:?}: {e}"));
    let pid = child.id() as i32;
    let (tx, rx) = std::sync::mpsc::channel();
    let waiter = std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let result = match rx.recv_timeout(timeout) {
        Ok(Ok(out)) => (
            Some(out.status),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        ),
        Ok(Err(e)) => (None, format!("cannot wait: {e}")),
        Err(_) => {
            // Not reaped yet (the waiter holds it), so the pid is still ours.
            signal(pid, libc::SIGKILL);
            (None, format!("killed after {timeout:?}"))
        }
    };
    let _ = waiter.join();
    result
}

/// A `waiaas-launcher run` for `install`, its stderr appended to
/// `<home>/launcher.stderr`; stopped gracefully (15 s) on drop.
fn start_supervisor(install: &Install, launcher_log: Option<&str>) -> Supervisor {
    let mut command = install.launcher(&["run"]);
    if let Some(filter) = launcher_log {
        command.env("WAIAAS_LOG", filter);
    }
    Supervisor::spawn(
        command,
        install.home().join("launcher.stderr"),
        install.dir.launcher_socket(),
        LogFile::Append,
    )
    .with_healthy_within(HEALTHY_TIMEOUT)
    .with_stop_grace(Duration::from_secs(15))
}

// ---------------------------------------------------------------------------
// Units

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn micros(d: Duration) -> u64 {
    d.as_micros() as u64
}

fn mib(kib: u64) -> String {
    format!("{:.2} MiB", kib as f64 / 1024.0)
}

fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}
