//! The launcher beside the process supervisors a user might pick instead, and
//! the launcher alone in each of its states, on real release builds in temp
//! installations made by the real `init`:
//!
//! 1. crash-to-healthy after `kill -9` of a daemon that has run ≥ 3 s, side
//!    by side: `waiaas-launcher run`, pm2 and supervisord (under those two the
//!    daemon binds the port itself, as `waiaas-daemon serve` does without
//!    `LISTEN_FDS`);
//! 2. crash-to-healthy when the daemon is killed at its first healthy answer
//!    (launcher only);
//! 3. SIGTERM-to-exit of `waiaas-launcher run` in each supervisor state it can
//!    reach without an upgrade: running, starting, backing-off, refused;
//! 4. idle RSS and CPU ticks of `run` over 10 s.
//!
//! pm2 and supervisord are installed by the bench itself under
//! `<target>/bench-tools/` (`npm install --prefix …/pm2 pm2`; a venv with
//! `pip install supervisor`) unless already there, through the machine's own
//! npm and pip configuration. If one cannot be installed the bench says why
//! and goes on without it (its figures are `null` in the JSON).
//!
//! Run it (`cargo bench -p waiaas-launcher` builds only the launcher; the
//! daemon must already sit beside it in `target/release`):
//!
//! ```text
//! cargo build --release --workspace
//! cargo bench -p waiaas-launcher --bench supervisors
//! ```
//!
//! Settings: `WAIAAS_BENCH_LAUNCHER_LOG`, if set, is passed to the launcher as
//! `WAIAAS_LOG` (its log is `<temp home>/launcher.stderr`).
//!
//! Prints readable lines, then one line of JSON with every figure. Every wait
//! is bounded; every process started (launchers, pm2's daemon, supervisord
//! and the daemons under them) is stopped when its owner is dropped, also on
//! a panic. Only 127.0.0.1 is ever contacted.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use testkit::bench::{
    Stats, after_section, clock_ticks_per_second, cpu_ticks, cpus, http_health, idle, loadavg, ms,
    print_machine, round1, round3, run_bounded, status_kib,
};
use testkit::supervisor::{Supervisor, children, process_gone, signal};
use testkit::{Install, hermetic};

/// Crash samples per supervisor (section 1) and runs of section 2.
const CRASH_SAMPLES: usize = 20;
/// How long a daemon runs before it is killed (section 1).
const RAN_FOR: Duration = Duration::from_secs(3);
/// Longest a killed daemon may take to be replaced before the sample fails.
const CRASH_TIMEOUT: Duration = Duration::from_secs(15);
/// A series stops after this many failures in a row (the rest count as failed).
const GIVE_UP_AFTER: usize = 3;
/// Poll interval after a kill (section 1).
const POLL_AFTER_KILL: Duration = Duration::from_millis(1);
/// Poll interval from the start (section 2).
const POLL_FIRST_HEALTHY: Duration = Duration::from_millis(2);
/// Targets of section 2.
const FIRST_HEALTHY_MEDIAN_MS: f64 = 150.0;
const FIRST_HEALTHY_MAX_MS: f64 = 1000.0;
/// One `GET /health` at most (it may wait in the launcher's backlog).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
const HEALTHY_TIMEOUT: Duration = Duration::from_secs(30);
/// SIGTERM samples per state.
const SIGTERM_SAMPLES: usize = 5;
/// `[daemon] shutdown_timeout` of every install here (the smallest allowed).
const SHUTDOWN_TIMEOUT_S: u64 = 5;
/// The launcher's extra time after the shutdown deadline before it kills.
const KILL_GRACE_S: u64 = 2;
/// Longest a SIGTERM may take before the sample fails (and SIGKILL follows).
const SIGTERM_TIMEOUT: Duration = Duration::from_secs(30);
/// Token files of the backing-off series: that many daemons die after ready.
const BACKOFF_TOKENS: usize = 12;
const IDLE_WINDOW: Duration = Duration::from_secs(10);
/// The previous figures of section 4.
const PREVIOUS_RSS_MIB: f64 = 6.1;
const PREVIOUS_CPU_TICKS: u64 = 0;
/// `npm install` / `pip install` at most.
const INSTALL_TIMEOUT: Duration = Duration::from_secs(300);
/// Any other pm2 / supervisorctl command at most.
const TOOL_TIMEOUT: Duration = Duration::from_secs(60);

fn main() {
    let began = Instant::now();
    let daemon =
        testkit::bench::daemon_beside_launcher("waiaas-launcher supervisors bench", "supervisors");
    let launcher_log = std::env::var("WAIAAS_BENCH_LAUNCHER_LOG").ok();
    let tools = target_dir().join("bench-tools");
    println!("waiaas-launcher supervisors bench");
    println!("  launcher {}", testkit::launcher_binary().display());
    println!("  daemon   {}", daemon.display());
    println!("  tools    {}", tools.display());
    println!(
        "  WAIAAS_LOG for the launcher: {}",
        launcher_log.as_deref().unwrap_or("(unset)")
    );
    print_machine();
    println!();

    let log = launcher_log.as_deref();
    let mut loads = vec![loadavg()];
    let crash = crash_after_running(&tools, log);
    after_section(&mut loads);
    let first = killed_at_first_healthy(log);
    after_section(&mut loads);
    let sigterm = sigterm_per_state(log);
    after_section(&mut loads);
    let idle = idle_cost(log);
    after_section(&mut loads);

    let total = began.elapsed();
    println!("total bench time {:.1} s", total.as_secs_f64());
    let summary = json!({
        "bench": "waiaas-launcher supervisors",
        "launcher_log": launcher_log,
        "cpus": cpus(),
        "loadavg_before_and_after_each_section": loads,
        "crash_after_running": crash,
        "crash_at_first_healthy_answer": first,
        "sigterm_to_exit": sigterm,
        "idle": idle,
        "total_s": round1(total.as_secs_f64()),
    });
    println!("{summary}");
}

/// `target/`: the launcher under test is `target/release/waiaas-launcher`.
fn target_dir() -> PathBuf {
    let launcher = testkit::launcher_binary();
    launcher
        .parent()
        .and_then(Path::parent)
        .unwrap_or_else(|| Path::new("target"))
        .to_path_buf()
}

/// An install whose daemon stops within [`SHUTDOWN_TIMEOUT_S`].
fn bench_install() -> Install {
    Install::with_shutdown_timeout(SHUTDOWN_TIMEOUT_S)
}

/// `command` without what a service manager around the bench could have set.
fn unmanaged(mut command: Command) -> Command {
    for name in [
        "NOTIFY_SOCKET",
        "LISTEN_FDS",
        "LISTEN_PID",
        "LISTEN_FDNAMES",
    ] {
        command.env_remove(name);
    }
    command
}

/// A `waiaas-launcher run` for `install` (with `failpoint` as the daemons'
/// `WAIAAS_FAILPOINT`), its stderr appended to `<home>/launcher.stderr`;
/// stopped gracefully on drop.
fn start_supervisor(
    install: &Install,
    launcher_log: Option<&str>,
    failpoint: Option<&str>,
) -> Supervisor {
    let mut command = unmanaged(install.launcher(&["run"]));
    if let Some(failpoint) = failpoint {
        command.env("WAIAAS_FAILPOINT", failpoint);
    }
    testkit::bench::supervisor(
        install,
        command,
        launcher_log,
        HEALTHY_TIMEOUT,
        Duration::from_secs(SHUTDOWN_TIMEOUT_S + KILL_GRACE_S + 5),
    )
}

// ---------------------------------------------------------------------------
// Processes

/// Live (not zombie) `waiaas-daemon serve` processes of the data dir `dir`,
/// whoever started them, found by their command line.
fn daemons_of(dir: &Path) -> Vec<i32> {
    let dir = dir.to_string_lossy().into_owned();
    let mut found = Vec::new();
    for entry in fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(cmdline) = fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<String> = cmdline
            .split(|&b| b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        let is_daemon = args
            .first()
            .and_then(|a| Path::new(a).file_name())
            .is_some_and(|n| n == "waiaas-daemon");
        if is_daemon
            && args.iter().any(|a| a == "serve")
            && args.contains(&dir)
            && !process_gone(pid)
        {
            found.push(pid);
        }
    }
    found.sort_unstable();
    found
}

/// Waits (spinning) until `pid` is dead: gone or a zombie.
fn wait_dead(pid: i32, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while !process_gone(pid) {
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_micros(50));
    }
    true
}

/// SIGKILLs every daemon of `dir` still running when dropped: the last
/// safety net for daemons that pm2 or supervisord left behind.
struct Leftovers(PathBuf);

impl Drop for Leftovers {
    fn drop(&mut self) {
        for pid in daemons_of(&self.0) {
            signal(pid, libc::SIGKILL);
        }
    }
}

/// Like [`run_bounded`], but only a success counts; its output on success.
fn run_ok(command: Command, timeout: Duration) -> Result<String, String> {
    let what = format!("{command:?}");
    match run_bounded(command, timeout)? {
        (status, out) if status.success() => Ok(out),
        (status, out) => Err(format!("{what} {status}: {}", last_lines(&out, 8))),
    }
}

fn last_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join(" | ")
}

// ---------------------------------------------------------------------------
// 1. Crash-to-healthy after running, side by side

/// One crash, timed from the kill (milliseconds).
struct CrashSample {
    before: i32,
    after: i32,
    /// The killed daemon is dead (a zombie or gone).
    dead_ms: f64,
    /// `GET /health` answered 200, and another daemon of the install runs.
    answered_ms: f64,
    polls: u64,
}

type Series = Vec<Result<CrashSample, String>>;

/// Waits for the install's one daemon to answer `/health`; its pid.
fn wait_one_daemon(install: &Install, alive: &dyn Fn() -> bool) -> Result<i32, String> {
    let deadline = Instant::now() + HEALTHY_TIMEOUT;
    loop {
        if http_health(install.port, REQUEST_TIMEOUT) == Some(200)
            && let [pid] = daemons_of(install.data_dir())[..]
        {
            return Ok(pid);
        }
        if !alive() {
            return Err("the supervisor is gone".into());
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "no single healthy daemon within {HEALTHY_TIMEOUT:?} (daemons: {:?})",
                daemons_of(install.data_dir())
            ));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Lets the install's daemon run [`RAN_FOR`], kills it with SIGKILL and
/// times until `/health` answers 200 with another daemon running.
fn crash_once(install: &Install, alive: &dyn Fn() -> bool) -> Result<CrashSample, String> {
    let before = wait_one_daemon(install, alive)?;
    std::thread::sleep(RAN_FOR);
    let running = daemons_of(install.data_dir());
    if running != [before] {
        return Err(format!(
            "the daemon changed while it ran: {before} → {running:?}"
        ));
    }
    let killed = Instant::now();
    signal(before, libc::SIGKILL);
    if !wait_dead(before, Duration::from_secs(2)) {
        return Err(format!("daemon {before} survived SIGKILL"));
    }
    let dead_ms = ms(killed.elapsed());
    let deadline = killed + CRASH_TIMEOUT;
    let mut polls = 0;
    loop {
        polls += 1;
        if http_health(install.port, REQUEST_TIMEOUT) == Some(200) {
            let answered_ms = ms(killed.elapsed());
            if let Some(after) = daemons_of(install.data_dir())
                .into_iter()
                .find(|&p| p != before)
            {
                return Ok(CrashSample {
                    before,
                    after,
                    dead_ms,
                    answered_ms,
                    polls,
                });
            }
        }
        if !alive() {
            return Err("the supervisor is gone".into());
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "no other daemon answered 200 within {CRASH_TIMEOUT:?} ({polls} polls)"
            ));
        }
        std::thread::sleep(POLL_AFTER_KILL);
    }
}

/// Runs `sample` [`CRASH_SAMPLES`] times (giving up after
/// [`GIVE_UP_AFTER`] failures in a row), printing each.
fn crash_series(mut sample: impl FnMut() -> Result<CrashSample, String>) -> Series {
    let mut series: Series = Vec::new();
    let mut in_a_row = 0;
    for n in 1..=CRASH_SAMPLES {
        let result = if in_a_row >= GIVE_UP_AFTER {
            Err(format!("skipped after {GIVE_UP_AFTER} failures in a row"))
        } else {
            sample()
        };
        match &result {
            Ok(s) => {
                in_a_row = 0;
                println!(
                    "    sample {n:2}: daemon {} → {}: dead at {:.2} ms, GET /health 200 at {:.1} ms ({} polls)",
                    s.before, s.after, s.dead_ms, s.answered_ms, s.polls
                );
            }
            Err(e) => {
                in_a_row += 1;
                println!("    sample {n:2}: FAILED: {e}");
            }
        }
        series.push(result);
    }
    series
}

/// Prints min/median/max/failed of a series; returns them as JSON.
fn series_summary(name: &str, series: &Series) -> (Value, Stats) {
    let good: Vec<f64> = series.iter().flatten().map(|s| s.answered_ms).collect();
    let failed = series.len() - good.len();
    let stats = Stats::of(&good);
    println!(
        "  {name:<12} min {:7.1} ms   median {:7.1} ms   max {:7.1} ms   failed {failed} of {}",
        stats.min,
        stats.median,
        stats.max,
        series.len()
    );
    let errors: Vec<&String> = series
        .iter()
        .filter_map(|s| s.as_ref().err())
        .take(3)
        .collect();
    let value = json!({
        "samples": series.len(),
        "failed": failed,
        "min_ms": round1(stats.min),
        "median_ms": round1(stats.median),
        "max_ms": round1(stats.max),
        "series_ms": series.iter().map(|s| s.as_ref().ok().map(|s| round1(s.answered_ms))).collect::<Vec<_>>(),
        "dead_series_ms": series.iter().map(|s| s.as_ref().ok().map(|s| round3(s.dead_ms))).collect::<Vec<_>>(),
        "errors": errors,
    });
    (value, stats)
}

fn crash_after_running(tools: &Path, launcher_log: Option<&str>) -> Value {
    println!(
        "== 1. crash-to-healthy after kill -9 of a daemon that has run {RAN_FOR:?} ({CRASH_SAMPLES} samples each) =="
    );
    println!(
        "  (timed from the kill until GET /health answers 200 with another daemon of the install running, found in /proc by its command line; polled every {POLL_AFTER_KILL:?})"
    );

    println!(
        "  -- waiaas-launcher run (a fresh supervisor per sample: each kill is its first crash, restarted at once) --"
    );
    let install = bench_install();
    let launcher = crash_series(|| {
        let mut supervisor = start_supervisor(&install, launcher_log, None);
        supervisor.wait_healthy();
        let pid = supervisor.pid();
        let result = crash_once(&install, &|| !process_gone(pid));
        if result.is_err() {
            println!("{}", supervisor.log_tail(20));
        }
        supervisor.stop();
        result
    });
    drop(install);

    println!("  -- pm2 (one pm2 for all samples, default restart settings) --");
    let pm2 = pm2_tool(tools).and_then(|(bin, version)| {
        println!("  pm2 {version} ({})", bin.display());
        let install = bench_install();
        let pm2 = Pm2::start(&bin, &install)?;
        let series = crash_series(|| crash_once(&install, &|| pm2.alive()));
        let restarts = pm2.restarts();
        println!("  pm2 counted {restarts:?} restarts");
        let log_tail = last_lines(&fs::read_to_string(pm2.log()).unwrap_or_default(), 5);
        drop(pm2);
        Ok((version, series, restarts, log_tail))
    });

    println!("  -- supervisord (one supervisord for all samples) --");
    let supervisord = supervisord_tool(tools).and_then(|(venv, version)| {
        println!("  supervisord {version} ({})", venv.display());
        let install = bench_install();
        let supervisord = Supervisord::start(&venv, &install)?;
        let series = crash_series(|| crash_once(&install, &|| supervisord.alive()));
        let log_tail = last_lines(
            &fs::read_to_string(supervisord.log()).unwrap_or_default(),
            5,
        );
        drop(supervisord);
        Ok((version, series, log_tail))
    });

    println!("  -- summary --");
    let (launcher_json, launcher_stats) = series_summary("launcher", &launcher);
    let pm2_json = match &pm2 {
        Ok((version, series, restarts, log_tail)) => {
            let (mut value, stats) = series_summary("pm2", series);
            value["version"] = json!(version);
            value["pm2_restart_count"] = json!(restarts);
            value["log_tail"] = json!(log_tail);
            Some((value, stats))
        }
        Err(why) => {
            println!("  pm2          not measured: {why}");
            None
        }
    };
    let supervisord_json = match &supervisord {
        Ok((version, series, log_tail)) => {
            let (mut value, stats) = series_summary("supervisord", series);
            value["version"] = json!(version);
            value["log_tail"] = json!(log_tail);
            Some((value, stats))
        }
        Err(why) => {
            println!("  supervisord  not measured: {why}");
            None
        }
    };
    let ratio = |other: &Option<(Value, Stats)>| -> Option<f64> {
        let (_, stats) = other.as_ref()?;
        (stats.median > 0.0 && launcher_stats.median > 0.0)
            .then(|| round3(launcher_stats.median / stats.median))
    };
    let to_pm2 = ratio(&pm2_json);
    let to_supervisord = ratio(&supervisord_json);
    match to_pm2 {
        Some(r) => println!(
            "  median ratio launcher/pm2: {r:.3} ({})",
            if r < 1.0 {
                "the launcher is faster"
            } else {
                "the launcher is SLOWER"
            }
        ),
        None => println!("  median ratio launcher/pm2: n/a"),
    }
    if let Some(r) = to_supervisord {
        println!("  median ratio launcher/supervisord: {r:.3}");
    }
    println!("  raw series (ms): launcher {}", raw(&launcher));
    if let Ok((_, series, _, _)) = &pm2 {
        println!("  raw series (ms): pm2 {}", raw(series));
    }
    if let Ok((_, series, _)) = &supervisord {
        println!("  raw series (ms): supervisord {}", raw(series));
    }

    json!({
        "method": "SIGKILL of the one daemon after it ran 3 s; until GET /health answers 200 with another daemon (by /proc command line) running; polled every 1 ms. The launcher: a fresh supervisor per sample (first crash, restarted at once). pm2, supervisord: one instance for all samples, the daemon binding the port itself.",
        "launcher": launcher_json,
        "pm2": pm2_json.map(|(v, _)| v),
        "pm2_unavailable": pm2.as_ref().err(),
        "supervisord": supervisord_json.map(|(v, _)| v),
        "supervisord_unavailable": supervisord.as_ref().err(),
        "ratio_launcher_to_pm2": to_pm2,
        "ratio_launcher_to_supervisord": to_supervisord,
    })
}

fn raw(series: &Series) -> String {
    series
        .iter()
        .map(|s| {
            s.as_ref()
                .map_or("failed".to_string(), |s| format!("{:.1}", s.answered_ms))
        })
        .collect::<Vec<_>>()
        .join(", ")
}

// ---- pm2 ------------------------------------------------------------------

/// `<target>/bench-tools/pm2/node_modules/.bin/pm2`, installed with npm
/// unless there; with its version.
fn pm2_tool(tools: &Path) -> Result<(PathBuf, String), String> {
    let prefix = tools.join("pm2");
    let bin = prefix.join("node_modules").join(".bin").join("pm2");
    if !bin.is_file() {
        println!(
            "  installing pm2: npm install --prefix {} pm2",
            prefix.display()
        );
        fs::create_dir_all(&prefix)
            .map_err(|e| format!("cannot create {}: {e}", prefix.display()))?;
        let mut npm = Command::new("npm");
        npm.arg("install").arg("--prefix").arg(&prefix).args([
            "--no-audit",
            "--no-fund",
            "--loglevel=error",
            "pm2",
        ]);
        run_ok(npm, INSTALL_TIMEOUT).map_err(|e| format!("npm install pm2 failed: {e}"))?;
        if !bin.is_file() {
            return Err(format!(
                "npm install pm2 succeeded but {} is missing",
                bin.display()
            ));
        }
    }
    let manifest = prefix.join("node_modules").join("pm2").join("package.json");
    let version = fs::read_to_string(&manifest)
        .ok()
        .and_then(|text| serde_json::from_str::<Value>(&text).ok())
        .and_then(|v| v["version"].as_str().map(str::to_string))
        .unwrap_or_else(|| "(unknown version)".into());
    Ok((bin, version))
}

/// A pm2 daemon (`PM2_HOME` in the install's temp home) running the install's
/// daemon as app `waiaas`; `pm2 kill` on drop.
struct Pm2 {
    bin: PathBuf,
    home: PathBuf,
    pm2_home: PathBuf,
    _leftovers: Leftovers,
}

impl Pm2 {
    fn start(bin: &Path, install: &Install) -> Result<Self, String> {
        let pm2_home = install.home().join("pm2");
        fs::create_dir_all(&pm2_home).map_err(|e| format!("cannot create PM2_HOME: {e}"))?;
        let pm2 = Self {
            bin: bin.to_path_buf(),
            home: install.home().to_path_buf(),
            pm2_home,
            _leftovers: Leftovers(install.data_dir().to_path_buf()),
        };
        let daemon = install.installed_daemon();
        println!(
            "  PM2_HOME={} pm2 start {} --name waiaas -- serve --data-dir {}",
            pm2.pm2_home.display(),
            daemon.display(),
            install.data_dir().display()
        );
        let mut start = pm2.command();
        start
            .arg("start")
            .arg(&daemon)
            .args(["--name", "waiaas", "--", "serve", "--data-dir"])
            .arg(install.data_dir());
        run_ok(start, TOOL_TIMEOUT).map_err(|e| format!("pm2 start failed: {e}"))?;
        Ok(pm2)
    }

    fn command(&self) -> Command {
        let mut command = unmanaged(hermetic(Command::new(&self.bin), &self.home));
        command.env("PM2_HOME", &self.pm2_home);
        command
    }

    /// pm2's own daemon (God), from its pid file, if it runs.
    fn god(&self) -> Option<i32> {
        let pid: i32 = fs::read_to_string(self.pm2_home.join("pm2.pid"))
            .ok()?
            .trim()
            .parse()
            .ok()?;
        let cmdline = fs::read(format!("/proc/{pid}/cmdline")).ok()?;
        let ours = String::from_utf8_lossy(&cmdline).contains(&*self.pm2_home.to_string_lossy());
        (ours && !process_gone(pid)).then_some(pid)
    }

    fn alive(&self) -> bool {
        self.god().is_some()
    }

    /// The app's restart count as pm2 reports it.
    fn restarts(&self) -> Option<u64> {
        let mut jlist = self.command();
        jlist.arg("jlist");
        let out = run_ok(jlist, TOOL_TIMEOUT).ok()?;
        let start = out.find('[')?;
        let apps: Value = serde_json::from_str(out[start..].trim()).ok()?;
        apps.as_array()?
            .iter()
            .find(|a| a["name"] == "waiaas")?
            .get("pm2_env")?
            .get("restart_time")?
            .as_u64()
    }

    fn log(&self) -> PathBuf {
        self.pm2_home.join("pm2.log")
    }
}

impl Drop for Pm2 {
    fn drop(&mut self) {
        let mut kill = self.command();
        kill.arg("kill");
        if let Err(e) = run_ok(kill, TOOL_TIMEOUT) {
            println!("  pm2 kill: {e}");
        }
        if let Some(god) = self.god() {
            signal(god, libc::SIGKILL);
        }
    }
}

// ---- supervisord ----------------------------------------------------------

/// A venv at `<target>/bench-tools/supervisor` with supervisor installed by
/// pip unless there; with supervisord's version.
fn supervisord_tool(tools: &Path) -> Result<(PathBuf, String), String> {
    let venv = tools.join("supervisor");
    let bin = venv.join("bin");
    if !bin.join("supervisord").is_file() {
        if !bin.join("pip").is_file() {
            println!("  creating a venv: python3 -m venv {}", venv.display());
            let mut python = Command::new("python3");
            python.args(["-m", "venv"]).arg(&venv);
            run_ok(python, INSTALL_TIMEOUT).map_err(|e| format!("python3 -m venv failed: {e}"))?;
        }
        println!(
            "  installing supervisor: {}/pip install supervisor",
            bin.display()
        );
        let mut pip = Command::new(bin.join("pip"));
        pip.args([
            "install",
            "--disable-pip-version-check",
            "--quiet",
            "supervisor",
        ]);
        run_ok(pip, INSTALL_TIMEOUT).map_err(|e| format!("pip install supervisor failed: {e}"))?;
        if !bin.join("supervisord").is_file() {
            return Err(format!(
                "pip install supervisor succeeded but {}/supervisord is missing",
                bin.display()
            ));
        }
    }
    let mut version = Command::new(bin.join("supervisord"));
    version.arg("--version");
    let version = run_ok(version, TOOL_TIMEOUT)
        .map(|out| out.trim().to_string())
        .map_err(|e| format!("supervisord --version failed: {e}"))?;
    Ok((venv, version))
}

/// supervisord in the foreground (our child), running the install's daemon
/// as program `waiaas`; `supervisorctl shutdown` on drop.
struct Supervisord {
    child: Option<Child>,
    venv: PathBuf,
    home: PathBuf,
    dir: PathBuf,
    conf: PathBuf,
    _leftovers: Leftovers,
}

impl Supervisord {
    fn start(venv: &Path, install: &Install) -> Result<Self, String> {
        let dir = install.home().join("supervisord");
        fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        let conf = dir.join("supervisord.conf");
        let socket = dir.join("supervisor.sock");
        let command = format!(
            "{} serve --data-dir {}",
            install.installed_daemon().display(),
            install.data_dir().display()
        );
        let text = format!(
            "[unix_http_server]\nfile={socket}\n\n\
             [supervisord]\nnodaemon=true\nlogfile={dir}/supervisord.log\npidfile={dir}/supervisord.pid\nchildlogdir={dir}\n\n\
             [rpcinterface:supervisor]\nsupervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface\n\n\
             [supervisorctl]\nserverurl=unix://{socket}\n\n\
             [program:waiaas]\ncommand={command}\nautorestart=true\nstartsecs=0\nstartretries=100\n\
             stdout_logfile={dir}/waiaas.log\nredirect_stderr=true\n",
            socket = socket.display(),
            dir = dir.display(),
        );
        fs::write(&conf, &text).map_err(|e| format!("cannot write {}: {e}", conf.display()))?;
        println!(
            "  supervisord -c {} with [program:waiaas] command={command} autorestart=true startsecs=0 startretries=100",
            conf.display()
        );
        let output = fs::File::create(dir.join("supervisord.out"))
            .map_err(|e| format!("cannot create supervisord.out: {e}"))?;
        let stderr = output
            .try_clone()
            .map_err(|e| format!("cannot clone a file handle: {e}"))?;
        let mut command = unmanaged(hermetic(
            Command::new(venv.join("bin").join("supervisord")),
            install.home(),
        ));
        command
            .arg("-c")
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(output)
            .stderr(stderr);
        let child = command
            .spawn()
            .map_err(|e| format!("cannot start supervisord: {e}"))?;
        Ok(Self {
            child: Some(child),
            venv: venv.to_path_buf(),
            home: install.home().to_path_buf(),
            dir,
            conf,
            _leftovers: Leftovers(install.data_dir().to_path_buf()),
        })
    }

    fn alive(&self) -> bool {
        self.child
            .as_ref()
            .is_some_and(|c| !process_gone(c.id() as i32))
    }

    fn log(&self) -> PathBuf {
        self.dir.join("supervisord.log")
    }
}

impl Drop for Supervisord {
    fn drop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if let Ok(None) = child.try_wait() {
            let mut shutdown = unmanaged(hermetic(
                Command::new(self.venv.join("bin").join("supervisorctl")),
                &self.home,
            ));
            shutdown.arg("-c").arg(&self.conf).arg("shutdown");
            if let Err(e) = run_ok(shutdown, TOOL_TIMEOUT) {
                println!("  supervisorctl shutdown: {e}");
            }
            let deadline = Instant::now() + Duration::from_secs(20);
            while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

// ---------------------------------------------------------------------------
// 2. Killed at its first healthy answer

struct FirstHealthy {
    /// From the spawn of `run` to the first 200.
    first_ms: f64,
    killed: Vec<i32>,
    after: i32,
    /// From the kill to the next 200 with another daemon running.
    replaced_ms: f64,
}

fn killed_at_first_healthy(launcher_log: Option<&str>) -> Value {
    println!(
        "== 2. crash-to-healthy when the daemon is killed at its first healthy answer ({CRASH_SAMPLES} runs, a fresh supervisor each) =="
    );
    println!(
        "  (GET /health every {POLL_FIRST_HEALTHY:?} from the spawn of `run`; SIGKILL to the launcher's daemon at the first 200; until a 200 with another daemon running)"
    );
    let install = bench_install();
    let mut series: Vec<Result<FirstHealthy, String>> = Vec::new();
    for n in 1..=CRASH_SAMPLES {
        let started = Instant::now();
        let mut supervisor = start_supervisor(&install, launcher_log, None);
        let result = first_healthy_once(&install, &supervisor, started);
        match &result {
            Ok(r) => println!(
                "    run {n:2}: first 200 at {:.1} ms; killed {:?}; daemon {} answered {:.1} ms after the kill",
                r.first_ms, r.killed, r.after, r.replaced_ms
            ),
            Err(e) => println!("    run {n:2}: FAILED: {e}\n{}", supervisor.log_tail(20)),
        }
        supervisor.stop();
        series.push(result);
    }
    let good: Vec<f64> = series.iter().flatten().map(|r| r.replaced_ms).collect();
    let failed = series.len() - good.len();
    let stats = Stats::of(&good);
    let median_pass = !good.is_empty() && stats.median <= FIRST_HEALTHY_MEDIAN_MS;
    let max_pass = !good.is_empty() && failed == 0 && stats.max <= FIRST_HEALTHY_MAX_MS;
    let verdict = |pass: bool| if pass { "PASS" } else { "MISS" };
    println!(
        "  min {:.1} ms   median {:.1} ms (target ≤ {FIRST_HEALTHY_MEDIAN_MS:.0} ms: {})   max {:.1} ms (target ≤ {FIRST_HEALTHY_MAX_MS:.0} ms: {})   failed {failed} of {}",
        stats.min,
        stats.median,
        verdict(median_pass),
        stats.max,
        verdict(max_pass),
        series.len()
    );
    println!(
        "  raw series (ms): {}",
        series
            .iter()
            .map(|r| r
                .as_ref()
                .map_or("failed".to_string(), |r| format!("{:.1}", r.replaced_ms)))
            .collect::<Vec<_>>()
            .join(", ")
    );
    json!({
        "runs": series.len(),
        "failed": failed,
        "min_ms": round1(stats.min),
        "median_ms": round1(stats.median),
        "max_ms": round1(stats.max),
        "median_target_ms": FIRST_HEALTHY_MEDIAN_MS,
        "max_target_ms": FIRST_HEALTHY_MAX_MS,
        "median_pass": median_pass,
        "max_pass": max_pass,
        "series_ms": series.iter().map(|r| r.as_ref().ok().map(|r| round1(r.replaced_ms))).collect::<Vec<_>>(),
        "first_healthy_series_ms": series.iter().map(|r| r.as_ref().ok().map(|r| round1(r.first_ms))).collect::<Vec<_>>(),
        "errors": series.iter().filter_map(|r| r.as_ref().err()).take(3).collect::<Vec<_>>(),
    })
}

fn first_healthy_once(
    install: &Install,
    supervisor: &Supervisor,
    started: Instant,
) -> Result<FirstHealthy, String> {
    let launcher = supervisor.pid();
    let deadline = started + HEALTHY_TIMEOUT;
    while http_health(install.port, REQUEST_TIMEOUT) != Some(200) {
        if process_gone(launcher) {
            return Err("the launcher exited".into());
        }
        if Instant::now() >= deadline {
            return Err(format!("no healthy answer within {HEALTHY_TIMEOUT:?}"));
        }
        std::thread::sleep(POLL_FIRST_HEALTHY);
    }
    let killed = children(launcher);
    for &pid in &killed {
        signal(pid, libc::SIGKILL);
    }
    let at = Instant::now();
    let first_ms = ms(at - started);
    if killed.is_empty() {
        return Err("a 200, but the launcher has no child".into());
    }
    for &pid in &killed {
        if !wait_dead(pid, Duration::from_secs(2)) {
            return Err(format!("daemon {pid} survived SIGKILL"));
        }
    }
    let deadline = at + CRASH_TIMEOUT;
    loop {
        if http_health(install.port, REQUEST_TIMEOUT) == Some(200) {
            let replaced_ms = ms(at.elapsed());
            if let Some(after) = children(launcher)
                .into_iter()
                .find(|p| !killed.contains(p) && !process_gone(*p))
            {
                return Ok(FirstHealthy {
                    first_ms,
                    killed,
                    after,
                    replaced_ms,
                });
            }
        }
        if process_gone(launcher) {
            return Err("the launcher exited".into());
        }
        if Instant::now() >= deadline {
            return Err(format!("not replaced within {CRASH_TIMEOUT:?}"));
        }
        std::thread::sleep(POLL_FIRST_HEALTHY);
    }
}

// ---------------------------------------------------------------------------
// 3. SIGTERM-to-exit in each state

struct TermSample {
    ms: f64,
    exit: String,
    /// Daemons of the install still running once the launcher exited.
    left: Vec<i32>,
}

fn sigterm_per_state(launcher_log: Option<&str>) -> Value {
    println!(
        "== 3. SIGTERM-to-exit of `waiaas-launcher run` in each state ({SIGTERM_SAMPLES} samples each; shutdown_timeout = {SHUTDOWN_TIMEOUT_S}) =="
    );
    let install = bench_install();

    // running
    let running = term_series("running", "a few ms: the daemon drains and exits", || {
        let mut supervisor = start_supervisor(&install, launcher_log, None);
        supervisor.wait_healthy();
        sigterm_sample(&mut supervisor, &install, "running")
    });

    // starting: the daemon froze itself (SIGSTOP) after its hello.
    let expected = format!(
        "≈ {} s: shutdown_timeout {SHUTDOWN_TIMEOUT_S} s + {KILL_GRACE_S} s grace, then SIGKILL",
        SHUTDOWN_TIMEOUT_S + KILL_GRACE_S
    );
    let starting = term_series("starting", &expected, || {
        let token = install.home().join("failpoint-after-hello");
        fs::write(&token, b"").map_err(|e| format!("cannot write the token: {e}"))?;
        let failpoint = format!("after-hello:pause:{}", token.display());
        let mut supervisor = start_supervisor(&install, launcher_log, Some(&failpoint));
        let deadline = Instant::now() + HEALTHY_TIMEOUT;
        while token.exists() {
            if Instant::now() >= deadline {
                let _ = fs::remove_file(&token);
                return Err("the after-hello failpoint never fired".into());
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        supervisor.wait_for(Duration::from_secs(10), "state starting", |s| {
            s.state == "starting"
        });
        sigterm_sample(&mut supervisor, &install, "starting")
    });

    // backing-off: every daemon dies right after ready (a folder of tokens).
    let backing_off = term_series(
        "backing-off",
        "a few ms: no daemon to stop, the retry is cancelled",
        || {
            let tokens = install.home().join("failpoint-tokens");
            let _ = fs::remove_dir_all(&tokens);
            fs::create_dir_all(&tokens).map_err(|e| format!("cannot create tokens: {e}"))?;
            for i in 0..BACKOFF_TOKENS {
                fs::write(tokens.join(i.to_string()), b"")
                    .map_err(|e| format!("cannot write a token: {e}"))?;
            }
            let failpoint = format!("after-ready:kill:{}", tokens.display());
            let mut supervisor = start_supervisor(&install, launcher_log, Some(&failpoint));
            // From the third death on the backoff is ≥ 200 ms: room to signal in it.
            let status = supervisor.wait_for(Duration::from_secs(30), "state backing-off", |s| {
                s.state == "backing-off" && s.restarts >= 3
            });
            let result = sigterm_sample(&mut supervisor, &install, "backing-off");
            let _ = fs::remove_dir_all(&tokens);
            result.map(|mut s| {
                s.exit = format!("{} (after {} restarts)", s.exit, status.restarts);
                s
            })
        },
    );

    // refused: `current/waiaas-daemon` exits 20 (a permanent code) on `serve`.
    let refusing = bench_install();
    let refused = match refuse_on_serve(&refusing) {
        Err(e) => {
            println!("  refused: cannot set it up: {e}");
            vec![Err(e)]
        }
        Ok(()) => term_series("refused", "a few ms: no daemon to stop", || {
            let mut supervisor = start_supervisor(&refusing, launcher_log, None);
            supervisor.wait_for(Duration::from_secs(10), "state refused", |s| {
                s.state == "refused"
            });
            sigterm_sample(&mut supervisor, &refusing, "refused")
        }),
    };
    println!(
        "  stopped      not measured: only an upgrade (`upgrade --no-start`, or its step 2) leaves the supervisor stopped"
    );

    json!({
        "method": "SIGTERM to `waiaas-launcher run` until it has exited (polled every 1 ms); a fresh supervisor per sample",
        "shutdown_timeout_s": SHUTDOWN_TIMEOUT_S,
        "running": term_json(&running),
        "starting": term_json(&starting),
        "starting_expected_s": SHUTDOWN_TIMEOUT_S + KILL_GRACE_S,
        "backing_off": term_json(&backing_off),
        "refused": term_json(&refused),
        "stopped": Value::Null,
        "stopped_note": "not reachable without an upgrade (`upgrade --no-start`); not measured",
    })
}

/// Makes `current/waiaas-daemon` a script that exits 20 on `serve` and runs
/// the real daemon otherwise.
fn refuse_on_serve(install: &Install) -> Result<(), String> {
    let daemon = install.installed_daemon();
    let real = daemon.with_file_name("waiaas-daemon.real");
    fs::rename(&daemon, &real).map_err(|e| format!("cannot move the daemon: {e}"))?;
    let script = format!(
        "#!/bin/sh\nif [ \"$1\" = serve ]; then\n  echo 'refusing to serve (bench)' >&2\n  exit 20\nfi\nexec '{}' \"$@\"\n",
        real.display()
    );
    fs::write(&daemon, script).map_err(|e| format!("cannot write the script: {e}"))?;
    fs::set_permissions(&daemon, fs::Permissions::from_mode(0o755))
        .map_err(|e| format!("cannot make the script executable: {e}"))
}

fn term_series(
    state: &str,
    expected: &str,
    mut sample: impl FnMut() -> Result<TermSample, String>,
) -> Vec<Result<TermSample, String>> {
    println!("  -- {state} (expected: {expected}) --");
    let series: Vec<Result<TermSample, String>> = (0..SIGTERM_SAMPLES).map(|_| sample()).collect();
    for (n, s) in series.iter().enumerate() {
        match s {
            Ok(s) => println!(
                "    sample {}: exited {:.1} ms after SIGTERM, {}{}",
                n + 1,
                s.ms,
                s.exit,
                if s.left.is_empty() {
                    String::new()
                } else {
                    format!(", daemons LEFT RUNNING: {:?}", s.left)
                }
            ),
            Err(e) => println!("    sample {}: FAILED: {e}", n + 1),
        }
    }
    let good: Vec<f64> = series.iter().flatten().map(|s| s.ms).collect();
    let stats = Stats::of(&good);
    println!(
        "  {state:<12} min {:8.1} ms   median {:8.1} ms   max {:8.1} ms   failed {}",
        stats.min,
        stats.median,
        stats.max,
        series.len() - good.len()
    );
    series
}

fn term_json(series: &[Result<TermSample, String>]) -> Value {
    let good: Vec<f64> = series.iter().flatten().map(|s| s.ms).collect();
    let stats = Stats::of(&good);
    json!({
        "samples": series.len(),
        "failed": series.len() - good.len(),
        "min_ms": round1(stats.min),
        "median_ms": round1(stats.median),
        "max_ms": round1(stats.max),
        "series_ms": series.iter().map(|s| s.as_ref().ok().map(|s| round1(s.ms))).collect::<Vec<_>>(),
        "exits": series.iter().map(|s| s.as_ref().map_or_else(|e| e.clone(), |s| s.exit.clone())).collect::<Vec<_>>(),
        "daemons_left": series.iter().flatten().map(|s| s.left.len()).sum::<usize>(),
    })
}

/// SIGTERM to the supervisor, timed until it has exited.
fn sigterm_sample(
    supervisor: &mut Supervisor,
    install: &Install,
    state: &str,
) -> Result<TermSample, String> {
    let pid = supervisor.pid();
    let at = Instant::now();
    signal(pid, libc::SIGTERM);
    while !process_gone(pid) {
        if at.elapsed() >= SIGTERM_TIMEOUT {
            let tail = supervisor.log_tail(20);
            supervisor.stop();
            return Err(format!(
                "{state}: still running {SIGTERM_TIMEOUT:?} after SIGTERM:\n{tail}"
            ));
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    let took = ms(at.elapsed());
    let status = supervisor.wait_exit(Duration::from_secs(5));
    let left = daemons_of(install.data_dir());
    for &pid in &left {
        signal(pid, libc::SIGKILL);
    }
    Ok(TermSample {
        ms: took,
        exit: format!("{status}"),
        left,
    })
}

// ---------------------------------------------------------------------------
// 4. Idle cost

fn idle_cost(launcher_log: Option<&str>) -> Value {
    println!(
        "== 4. idle RSS and CPU of `run` ({:?} with a healthy daemon) ==",
        IDLE_WINDOW
    );
    let install = bench_install();
    let mut supervisor = start_supervisor(&install, launcher_log, None);
    supervisor.wait_healthy();
    // Let the start's last probe and log lines settle.
    std::thread::sleep(Duration::from_secs(1));
    let pid = supervisor.pid();
    let before = cpu_ticks(pid);
    let idled = idle(&mut supervisor, IDLE_WINDOW);
    let after = cpu_ticks(pid);
    let (rss_kib, hwm_kib) = (status_kib(pid, "VmRSS"), status_kib(pid, "VmHWM"));
    let ticks = after.saturating_sub(before);
    let per_second = clock_ticks_per_second();
    println!(
        "  launcher VmRSS {:.2} MiB (VmHWM {:.2} MiB); previous {PREVIOUS_RSS_MIB} MiB",
        rss_kib as f64 / 1024.0,
        hwm_kib as f64 / 1024.0
    );
    println!(
        "  launcher CPU (utime+stime) {ticks} ticks in {:.1} s (1 tick = 1/{per_second} s); previous {PREVIOUS_CPU_TICKS} ticks",
        idled.as_secs_f64()
    );
    supervisor.stop();
    json!({
        "seconds": round1(idled.as_secs_f64()),
        "vm_rss_kib": rss_kib,
        "vm_rss_mib": round3(rss_kib as f64 / 1024.0),
        "vm_hwm_kib": hwm_kib,
        "cpu_ticks": ticks,
        "clock_ticks_per_second": per_second,
        "previous": {"vm_rss_mib": PREVIOUS_RSS_MIB, "cpu_ticks": PREVIOUS_CPU_TICKS},
    })
}
