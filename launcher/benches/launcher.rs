//! What the supervisor costs and how fast it recovers, measured on real
//! release builds in a temp installation made by the real `init`:
//!
//! 1. idle cost — the launcher's RSS and CPU time while a healthy daemon idles,
//!    with `[update] auto = "off"` and then `"minor"` (a registry on 127.0.0.1
//!    offering nothing newer; at the default `check_interval`, and at 5 s to
//!    show what one check costs), with the registry requests counted;
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

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use testkit::Install;
use testkit::bench::{
    Stats, after_section, clock_ticks_per_second, cpu_ticks, cpus, http_health, idle, loadavg, ms,
    print_machine, round1, round3, run_bounded, status_kib,
};
use testkit::load::{Load, longest_gap, overlaps, percentile};
use testkit::supervisor::{Supervisor, daemon_pid, healthy, process_state, signal};

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
/// Each client's timeout per request.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest one `restart` command may take before it is killed.
const RESTART_TIMEOUT: Duration = Duration::from_secs(90);
const HEALTHY_TIMEOUT: Duration = Duration::from_secs(30);

fn main() {
    let began = Instant::now();
    let daemon = testkit::bench::daemon_beside_launcher("waiaas-launcher bench", "launcher");
    let idle_secs = idle_seconds();
    let launcher_log = std::env::var("WAIAAS_BENCH_LAUNCHER_LOG").ok();
    println!("waiaas-launcher bench");
    println!("  launcher {}", testkit::launcher_binary().display());
    println!("  daemon   {}", daemon.display());
    println!(
        "  WAIAAS_LOG for the launcher: {}",
        launcher_log.as_deref().unwrap_or("(unset)")
    );
    print_machine();

    let install = Install::new();
    println!(
        "  install {} (port {})",
        install.data_dir().display(),
        install.port
    );
    println!();

    let mut loads = vec![loadavg()];
    let idle = idle_cost(&install, idle_secs, launcher_log.as_deref());
    after_section(&mut loads);
    let auto = idle_with_auto(&install, idle_secs, launcher_log.as_deref());
    after_section(&mut loads);
    let crash = crash_to_healthy(&install, launcher_log.as_deref());
    after_section(&mut loads);
    let load = restart_under_load(&install, launcher_log.as_deref());
    after_section(&mut loads);

    let total = began.elapsed();
    println!("total bench time {:.1} s", total.as_secs_f64());
    let summary = json!({
        "bench": "waiaas-launcher",
        "launcher_log": launcher_log,
        "cpus": cpus(),
        "loadavg_before_and_after_each_section": loads,
        "idle": idle,
        "idle_with_auto": auto,
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

// ---------------------------------------------------------------------------
// 1. Idle cost

/// Section 1 again with automatic upgrades on: the launcher's figures and
/// the registry requests, at the default `check_interval` and at 5 s.
fn idle_with_auto(install: &Install, secs: u64, launcher_log: Option<&str>) -> Value {
    use waiaas_shared::config::{Config, format_duration};
    use waiaas_shared::release::CLI_PACKAGE;
    let registry = testkit::registry::Registry::start();
    let current = waiaas_shared::version::VERSION;
    // Only the packument is read when nothing is newer: no tarball is fetched.
    registry.publish(CLI_PACKAGE, current, b"not fetched".to_vec());
    registry.set_tag(CLI_PACKAGE, "latest", current);
    let base = format!(
        "[daemon]\nport = {}\nhostname = \"127.0.0.1\"\nupdate_check = false\n",
        install.port
    );
    let default_interval = Config::default().update.check_interval;
    let mut runs = Vec::new();
    for interval in [default_interval, Duration::from_secs(5)] {
        let interval_text = format_duration(interval);
        install.write_config(&format!(
            "{base}[update]\nregistry = \"{}\"\nauto = \"minor\"\ncheck_interval = \"{interval_text}\"\n",
            registry.url()
        ));
        let before = registry.total_hits();
        let figures = idle_cost(install, secs, launcher_log);
        let requests = registry.total_hits() - before;
        let per_day = 86_400.0 / interval.as_secs_f64();
        println!(
            "  auto = \"minor\", check_interval = {interval_text}: {requests} registry request(s) in \
             the window; {per_day:.0} a day at this interval (one packument each, plus one \
             platform tarball per new candidate)"
        );
        runs.push(json!({
            "check_interval": interval_text,
            "registry_requests_in_window": requests,
            "registry_requests_per_day": round1(per_day),
            "idle": figures,
        }));
    }
    install.write_config(&base);
    Value::Array(runs)
}

fn idle_cost(install: &Install, secs: u64, launcher_log: Option<&str>) -> Value {
    let policy = std::fs::read_to_string(install.dir.config())
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("auto"))
                .map(str::to_string)
        })
        .unwrap_or_else(|| "auto = \"off\"".into());
    println!("== 1. idle cost ({secs} s with a healthy daemon; {policy}) ==");
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
    let idled = idle(&mut supervisor, Duration::from_secs(secs));
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
        let field = |name: &str| status_kib(pid, name);
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
    cpu_ticks(pid) as f64 * 1000.0 / clock_ticks_per_second().max(1) as f64
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

// ---------------------------------------------------------------------------
// 3. Restart under load

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
    let load = Load::start(&url, LOAD_CLIENTS, CLIENT_TIMEOUT, LOAD_DEADLINE);

    std::thread::sleep(LOAD_PAUSE);
    let mut runs = Vec::new();
    for _ in 0..RESTARTS {
        let before = supervisor
            .status()
            .and_then(|s| s.daemon)
            .map(|d| d.pid as i32);
        let start_us = load.now_us();
        let (status, output) = match run_bounded(install.launcher(&["restart"]), RESTART_TIMEOUT) {
            Ok((status, output)) => (Some(status), output),
            Err(why) => (None, why),
        };
        let end_us = load.now_us();
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
    let tally = load.finish();
    let ran = tally.ran;
    let sent = tally.sent();
    let failed = tally.failed;
    let errors: Vec<&String> = tally.errors.iter().map(|(_, _, e)| e).take(5).collect();
    let worst = tally.worst();
    let p99 = percentile(&tally.latencies, 0.99);
    let p50 = percentile(&tally.latencies, 0.50);
    let (overall_gap, _, _) = longest_gap(&tally.done, 0, u64::MAX);
    // Requests that overlapped no restart command: the steady state.
    let windows: Vec<(u64, u64)> = runs.iter().map(|r| (r.start_us, r.end_us)).collect();
    let steady = tally.outside(&windows);
    let during = tally.requests.len() - steady.len();
    let worst_request = tally.worst_request();

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
            if overlaps(&windows, &r) {
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
        let gap = longest_gap(&tally.done, run.start_us, run.end_us).0 as f64 / 1000.0;
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

/// A `waiaas-launcher run` for `install`, its stderr appended to
/// `<home>/launcher.stderr`; stopped gracefully (15 s) on drop.
fn start_supervisor(install: &Install, launcher_log: Option<&str>) -> Supervisor {
    testkit::bench::supervisor(
        install,
        install.launcher(&["run"]),
        launcher_log,
        HEALTHY_TIMEOUT,
        Duration::from_secs(15),
    )
}

// ---------------------------------------------------------------------------
// Units

fn mib(kib: u64) -> String {
    format!("{:.2} MiB", kib as f64 / 1024.0)
}
