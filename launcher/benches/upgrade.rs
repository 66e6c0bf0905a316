//! What an upgrade costs the people using WAIaaS, measured on two real builds
//! (A = this workspace, 1.8.1; B = the same sources as 1.9.0 with a 17th
//! migration, see `testkit/src/builds.rs`), packed and signed like releases
//! with a throwaway key, served by a registry on 127.0.0.1, installed with the
//! real `init`, on a database of realistic size:
//!
//! 1. upgrade under load — `waiaas-launcher upgrade` (A → B, through a running
//!    supervisor) while 32 keep-alive clients send `GET /health` without pause
//!    and one more creates wallets one after another: requests, failures,
//!    latency, the command's time, the window without a serving daemon (seen
//!    from the supervisor's log and from the clients) — the supervisor
//!    becoming B's launcher in place included, and the exec handover itself
//!    timed (the old launcher's "handing over" line to the new one's "took
//!    over") — the backup's live part (copied while the old daemon serves)
//!    and the part inside the window, and whether every acknowledged write is
//!    kept;
//! 2. `--rollback` under load — the same for B → A: the writes acknowledged
//!    by A before the upgrade's stop are back, the later ones not;
//!
//!    both at each database size (default 10 MiB, 1 GiB, 4 GiB: wallets and
//!    `audit_log` rows inserted through the schema), with a summary that
//!    compares across sizes the window and the worst wait of any request
//!    (a read or a write) that overlapped the `upgrade` command, each against
//!    1.3× the smallest size's + 50 ms; `WAIAAS_BENCH_RUNS` repeats 1 and 2
//!    and counts the runs within both bounds;
//! 3. backup vs `cp` — `waiaas_shared::backup::create` (checkpoint, a kernel
//!    copy hashed right behind it, fsync, `quick_check`, manifest) against `cp` +
//!    `sync` of the same 1 GiB database on the same disk, 5 runs each (the median compared), and the
//!    backup's parts; then the copy a live backup makes beside the daemon,
//!    on a quiet machine and with every CPU kept busy by other work.
//!
//! Run it:
//!
//! ```text
//! cargo build --release --workspace
//! cargo bench -p waiaas-launcher --bench upgrade
//! ```
//!
//! Builds. By default both builds are release builds: A is `target/release`
//! (the launcher `cargo bench` built, the daemon beside it), and B is built in
//! release from the 1.9.0 source copy `builds.rs` keeps in `target/e2e/`
//! (`CARGO_TARGET_DIR=target/e2e/target`, under the same `build.lock`; the
//! first build takes minutes, later ones are incremental), its programs
//! linked out to `target/e2e/bin-1.9.0/release/`.
//! `WAIAAS_BENCH_PAIR=debug` uses debug builds for both instead: A is
//! `target/debug` (run `cargo build --workspace` first) and B is `builds.rs`'s
//! own debug build. The supervisor and every command are A's launcher.
//!
//! Settings: `WAIAAS_BENCH_PAIR` (`release` or `debug`), `WAIAAS_BENCH_SIZES_MB`
//! (default `10,1024,4096`; `none` runs section 3 alone) the database sizes of sections 1 and 2,
//! `WAIAAS_BENCH_RUNS` (default 1, at most 10) how many times sections 1
//! and 2 run at every size,
//! `WAIAAS_BENCH_DB_MB` (default 1024) the database size of section 3,
//! `WAIAAS_BENCH_READERS` (default 32, at most 256) how many clients send
//! `GET /health`, `WAIAAS_BENCH_CONNECT` how they connect (`keep-alive`, the
//! default, or `each`: a new connection for every request),
//! `WAIAAS_BENCH_WRITES_PER_S` the writing client's pace (default: as fast
//! as the daemon answers; `0`: no writing client; every write during the
//! live copy lands in the WAL the new daemon's migration then reads). The
//! largest size needs about four times its size free on disk (the database,
//! the pre-upgrade and pre-rollback backups, the migration's WAL).
//!
//! Prints readable lines, then one line of JSON with every figure. Every wait
//! is bounded; the supervisor, its daemon and the registry are stopped and
//! every file is removed when their owners are dropped, also on a panic.

use std::collections::BTreeMap;
use std::fs;
use std::io::{BufRead, BufReader, Read};
use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rusqlite::{Connection, OpenFlags};
use serde_json::{Value, json};

use testkit::bench::{Stats, after_section, cpus, loadavg, micros, print_machine, round1, round3};
use testkit::builds::{A_SCHEMA, B_SCHEMA, B_VERSION, Key, pack_release, release_files};
use testkit::load::{Connect, Load, Writer, Written, longest_gap, overlaps, percentile};
use testkit::registry::Registry;
use testkit::supervisor::{LogFile, Supervisor};
use testkit::{free_port, hermetic, run};
use waiaas_packaging::Packed;
use waiaas_shared::backup::{self, Kind};
use waiaas_shared::fsutil::{Pace, copy_hashed};
use waiaas_shared::layout::DataDir;
use waiaas_shared::release::{CLI_PACKAGE, platform_package, this_target};

/// The installation's database for sections 1 and 2.
const WALLETS: usize = 10_000;
const READERS_DEFAULT: usize = 32;
const READERS_MAX: usize = 256;
/// Load before the command and after it.
const LOAD_PAUSE: Duration = Duration::from_secs(2);
/// A hard end for the load clients, whatever happens to the command.
const LOAD_DEADLINE: Duration = Duration::from_secs(600);
/// Each client's timeout per request: generous, so a request that waits in
/// the listen backlog while no daemon runs counts as slow, not failed.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(60);
/// Longest one `upgrade` command may take before it is killed.
const UPGRADE_TIMEOUT: Duration = Duration::from_secs(300);
const HEALTHY_TIMEOUT: Duration = Duration::from_secs(60);
/// Section 3.
const BACKUP_RUNS: usize = 5;
const DB_MB_DEFAULT: u64 = 1024;
const SIZES_MB_DEFAULT: [u64; 3] = [10, 1024, 4096];
const DB_MB_MAX: u64 = 32 * 1024;
/// The most runs of sections 1 and 2 one sitting makes.
const RUNS_MAX: usize = 10;
/// Rows added to `audit_log` per statement while filling section 3's database.
const FILL_BATCH_ROWS: u64 = 32_768;
/// The longest B's release build may take (a first build on a busy machine).
const RELEASE_BUILD_TIMEOUT: Duration = Duration::from_secs(2400);

fn main() {
    let began = Instant::now();
    let profile = profile();
    let db_mb = db_mb();
    println!("waiaas-launcher upgrade bench");
    print_machine();
    let pair = Pair::prepare(profile);
    println!(
        "  build pair: {} — A {} (schema {A_SCHEMA}) in {}, B {B_VERSION} (schema {B_SCHEMA}) in {}",
        profile.name(),
        testkit::builds::a_version(),
        pair.a_bin.display(),
        pair.b_bin.display()
    );
    if let Some(took) = pair.b_build {
        println!("  B's {} build took {:.1} s", profile.name(), took);
    }

    println!(
        "  load: {} clients on GET /health ({})",
        readers(),
        connect_name(connect())
    );
    let work = tempfile::tempdir().expect("a temp dir");
    let releases = Releases::pack(work.path(), &pair);
    let mut loads = vec![loadavg()];
    let (sizes_mb, runs) = (sizes_mb(), runs());
    let mut sitting = Vec::new();
    for run in 1..=runs {
        if sizes_mb.is_empty() {
            break;
        }
        if runs > 1 {
            println!("==== run {run} of {runs} ====");
        }
        let sizes: Vec<Value> = sizes_mb
            .iter()
            .map(|&mb| at_size(work.path(), &releases, mb, &mut loads))
            .collect();
        let summary = summarize(&sizes);
        println!();
        sitting.push(json!({"run": run, "sizes": sizes, "summary": summary}));
    }
    if sitting.len() > 1 {
        for (what, key) in [
            ("the upgrade window", "window"),
            (
                "the worst request overlapping the upgrade",
                "worst_in_command",
            ),
        ] {
            let within = sitting
                .iter()
                .filter(|r| r["summary"][key]["within"] == true)
                .count();
            println!(
                "== {what}: within its bound at every size in {within} of {} runs ==",
                sitting.len()
            );
        }
        println!();
    }

    let backup = backup_vs_cp(work.path(), &pair.a_bin.join("waiaas-daemon"), db_mb);
    after_section(&mut loads);

    drop(releases);
    drop(work);
    let total = began.elapsed();
    println!("total bench time {:.1} s", total.as_secs_f64());
    let summary = json!({
        "bench": "waiaas-launcher upgrade",
        "pair": profile.name(),
        "a": {"version": testkit::builds::a_version(), "bin": pair.a_bin, "schema": A_SCHEMA},
        "b": {"version": B_VERSION, "bin": pair.b_bin, "schema": B_SCHEMA, "build_s": pair.b_build.map(round1)},
        "cpus": cpus(),
        "loadavg_before_and_after_each_section": loads,
        "runs": sitting,
        "backup_vs_cp": backup,
        "total_s": round1(total.as_secs_f64()),
    });
    println!("{summary}");
}

/// One installation with a database of `mb` MiB: upgrade and rollback under load.
fn at_size(work: &Path, releases: &Releases, mb: u64, loads: &mut Vec<String>) -> Value {
    let site = Site::new(&work.join(format!("site-{mb}")), releases);
    println!(
        "== a {mb} MiB database: install {} (port {}), registry {} ==",
        site.dir.root().display(),
        site.port,
        site.registry.url()
    );
    let database = site.seed(mb << 20);
    println!(
        "  database: {WALLETS} wallets, {} audit_log rows: {} after a WAL checkpoint, made in {:.1} s",
        database.audit_rows,
        mib(database.bytes),
        database.seconds
    );
    let mut supervisor = start_supervisor(&site);
    let status = supervisor.wait_healthy();
    println!(
        "  supervisor pid {}, daemon {} pid {} healthy",
        supervisor.pid(),
        status.daemon.as_ref().map_or("?", |d| d.version.as_str()),
        status.daemon.as_ref().map_or(0, |d| d.pid)
    );
    let before = site.rows();
    let (upgrade, written) = under_load(
        &site,
        &mut supervisor,
        &format!("1. upgrade under load, {mb} MiB"),
        &["upgrade"],
        B_VERSION,
    );
    after_section(loads);
    let after_upgrade = site.rows();
    let (rollback, _) = under_load(
        &site,
        &mut supervisor,
        &format!("2. --rollback under load, {mb} MiB"),
        &["upgrade", "--rollback"],
        testkit::builds::a_version(),
    );
    after_section(loads);
    let after_rollback = site.rows();
    supervisor.stop();
    drop(supervisor);
    let kept = Kept::check(&before, &written, &after_upgrade, &after_rollback);
    println!(
        "  rows: {} wallets and {} audit entries before; {} writes acknowledged during the upgrade ({} unanswered): after it {} lost; after --rollback {} lost, the first {} of them back (A's, in the backup), the rest not (B's){}",
        before.wallets.len(),
        before.audit,
        written.acknowledged.len(),
        written.unknown.len(),
        kept.lost_after_upgrade,
        kept.lost_after_rollback,
        kept.by_old,
        if kept.ok() { "" } else { " — ROWS LOST" }
    );
    println!();
    // Gone before the next size or run: the largest needs about four times
    // its size on disk.
    let home = site.home.clone();
    drop(site);
    fs::remove_dir_all(&home).expect("remove the site");
    json!({
        "db_mib": mb,
        "database": {
            "wallets": WALLETS,
            "audit_rows": database.audit_rows,
            "bytes": database.bytes,
            "made_s": round1(database.seconds),
        },
        "upgrade_under_load": upgrade,
        "rollback_under_load": rollback,
        "rows": {
            "wallets_before": before.wallets.len(),
            "audit_before": before.audit,
            "acknowledged_during_upgrade": written.acknowledged.len(),
            "unanswered_during_upgrade": written.unknown.len(),
            "lost_after_upgrade": kept.lost_after_upgrade,
            "lost_after_rollback": kept.lost_after_rollback,
            "acknowledged_by_old_back_after_rollback": kept.by_old,
            "ok": kept.ok(),
        },
    })
}

/// The rows of a database, as far as the bench checks them.
struct Rows {
    wallets: std::collections::BTreeSet<String>,
    audit: u64,
}

/// Whether every write acknowledged before a stop survived.
struct Kept {
    /// Rows there before the upgrade, or acknowledged during it, missing after it.
    lost_after_upgrade: usize,
    /// Rows there before the upgrade, or acknowledged by A during it, missing
    /// after the rollback to the pre-upgrade backup.
    lost_after_rollback: usize,
    /// How many of the upgrade's acknowledged writes A made (in the backup).
    by_old: usize,
}

impl Kept {
    fn check(before: &Rows, written: &Written, upgraded: &Rows, restored: &Rows) -> Self {
        let lost = |rows: &Rows, names: &mut dyn Iterator<Item = &String>| {
            names.filter(|n| !rows.wallets.contains(*n)).count()
                + usize::from(rows.audit < before.audit)
        };
        let lost_after_upgrade = lost(
            upgraded,
            &mut before.wallets.iter().chain(&written.acknowledged),
        );
        // A acknowledged a prefix of the writes, B the rest; the backup holds
        // A's, so the rollback brings back exactly a prefix.
        let by_old = written
            .acknowledged
            .iter()
            .take_while(|n| restored.wallets.contains(*n))
            .count();
        let holes = written.acknowledged[by_old..]
            .iter()
            .filter(|n| restored.wallets.contains(*n))
            .count();
        let lost_after_rollback = lost(restored, &mut before.wallets.iter()) + holes;
        Self {
            lost_after_upgrade,
            lost_after_rollback,
            by_old,
        }
    }

    fn ok(&self) -> bool {
        self.lost_after_upgrade == 0 && self.lost_after_rollback == 0
    }
}

/// The windows at each size side by side, and two bounds (issues 12 and 20):
/// the upgrade's window, and the worst request overlapping the upgrade
/// command, at every larger size within 1.3× the smallest size's, plus 50 ms.
fn summarize(sizes: &[Value]) -> Value {
    println!("== summary: what a bigger database costs ==");
    println!(
        "  {:>9} | {:>22} | {:>19} | {:>20} | {:>6} | {:>17} | rows",
        "database",
        "live copy (A serving)",
        "backup in window",
        "old stop → new ready",
        "failed",
        "worst in command"
    );
    let ms = |v: &Value, key: &str| v[key].as_f64();
    let (mut windows, mut worst) = (Vec::new(), Vec::new());
    for size in sizes {
        for (what, run) in [
            ("upgrade", &size["upgrade_under_load"]),
            ("rollback", &size["rollback_under_load"]),
        ] {
            let window = ms(run, "old_stopping_to_new_listening_ms");
            let in_command = run["worst_in_command"]["ms"].as_f64();
            println!(
                "  {:>5} MiB | {:>19} ms | {:>16} ms | {:>17} ms | {:>6} | {:>14} ms | {} ({what})",
                size["db_mib"],
                ms(run, "live_copy_ms").map_or("n/a".into(), |v| format!("{v:.1}")),
                ms(run, "backup_in_window_ms").map_or("n/a".into(), |v| format!("{v:.1}")),
                window.map_or("n/a".into(), |v| format!("{v:.1}")),
                run["failed"],
                in_command.map_or("n/a".into(), |v| format!("{v:.1}")),
                if size["rows"]["ok"].as_bool() == Some(true) {
                    "all kept"
                } else {
                    "LOST"
                },
            );
            if what == "upgrade" {
                let mb = size["db_mib"].as_u64().unwrap_or(0);
                windows.push((mb, window));
                worst.push((mb, in_command));
            }
        }
    }
    json!({
        "window": against_smallest("upgrade window", &windows),
        "worst_in_command": against_smallest("worst request overlapping the upgrade", &worst),
    })
}

/// Each larger size's figure against the smallest size's, bound 1.3× + 50 ms.
fn against_smallest(what: &str, figures: &[(u64, Option<f64>)]) -> Value {
    let Some(&(small_mb, Some(small))) = figures.first() else {
        return Value::Null;
    };
    let bound = small * 1.3 + 50.0;
    let larger: Vec<Value> = figures[1..]
        .iter()
        .map(|&(mb, figure)| {
            let within = figure.is_some_and(|f| f <= bound);
            println!(
                "  {what} at {mb} MiB {} against {small_mb} MiB's {small:.1} ms: bound 1.3× + 50 ms = {bound:.1} ms — {}",
                figure.map_or("n/a".into(), |f| format!("{f:.1} ms")),
                if within { "within" } else { "OVER" }
            );
            json!({"mib": mb, "ms": figure, "within": within})
        })
        .collect();
    let within = larger.iter().all(|l| l["within"] == true);
    json!({"small_mib": small_mb, "small_ms": small, "bound_ms": round1(bound), "larger": larger, "within": !larger.is_empty() && within})
}

fn sizes_mb() -> Vec<u64> {
    let Ok(text) = std::env::var("WAIAAS_BENCH_SIZES_MB") else {
        return SIZES_MB_DEFAULT.to_vec();
    };
    if text.trim() == "none" {
        return Vec::new();
    }
    let sizes: Option<Vec<u64>> = text
        .split(',')
        .map(|t| {
            t.trim()
                .parse()
                .ok()
                .filter(|mb| (1..=DB_MB_MAX).contains(mb))
        })
        .collect();
    match sizes {
        Some(sizes) if !sizes.is_empty() => sizes,
        _ => {
            eprintln!(
                "WAIAAS_BENCH_SIZES_MB must be whole MiB, 1..={DB_MB_MAX}, separated by commas (or `none`), not {text:?}"
            );
            std::process::exit(2);
        }
    }
}

/// The writing client's pace (`WAIAAS_BENCH_WRITES_PER_S`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Writes {
    /// Unset: as fast as the daemon answers.
    Unpaced,
    /// `0`: no writing client, only the readers.
    Off,
    PerSecond(u32),
}

fn writes() -> Writes {
    match std::env::var("WAIAAS_BENCH_WRITES_PER_S") {
        Err(_) => Writes::Unpaced,
        Ok(text) => match text.trim().parse::<u32>() {
            Ok(0) => Writes::Off,
            Ok(n) => Writes::PerSecond(n),
            Err(_) => {
                eprintln!(
                    "WAIAAS_BENCH_WRITES_PER_S must be a whole number (0: no writer), not {text:?}"
                );
                std::process::exit(2);
            }
        },
    }
}

/// How many times sections 1 and 2 run at every size (`WAIAAS_BENCH_RUNS`).
fn runs() -> usize {
    match std::env::var("WAIAAS_BENCH_RUNS") {
        Err(_) => 1,
        Ok(text) => match text.trim().parse::<usize>() {
            Ok(n) if (1..=RUNS_MAX).contains(&n) => n,
            _ => {
                eprintln!("WAIAAS_BENCH_RUNS must be a whole number, 1..={RUNS_MAX}, not {text:?}");
                std::process::exit(2);
            }
        },
    }
}

/// How many clients send `GET /health` (`WAIAAS_BENCH_READERS`).
fn readers() -> usize {
    match std::env::var("WAIAAS_BENCH_READERS") {
        Err(_) => READERS_DEFAULT,
        Ok(text) => match text.trim().parse::<usize>() {
            Ok(n) if (1..=READERS_MAX).contains(&n) => n,
            _ => {
                eprintln!(
                    "WAIAAS_BENCH_READERS must be a whole number, 1..={READERS_MAX}, not {text:?}"
                );
                std::process::exit(2);
            }
        },
    }
}

/// How the readers connect (`WAIAAS_BENCH_CONNECT`).
fn connect() -> Connect {
    match std::env::var("WAIAAS_BENCH_CONNECT").as_deref() {
        Err(_) | Ok("keep-alive") => Connect::KeepAlive,
        Ok("each") => Connect::EachRequest,
        Ok(other) => {
            eprintln!("WAIAAS_BENCH_CONNECT must be `keep-alive` or `each`, not {other:?}");
            std::process::exit(2);
        }
    }
}

fn connect_name(connect: Connect) -> &'static str {
    match connect {
        Connect::KeepAlive => "keep-alive",
        Connect::EachRequest => "a connection per request",
    }
}

fn db_mb() -> u64 {
    match std::env::var("WAIAAS_BENCH_DB_MB") {
        Err(_) => DB_MB_DEFAULT,
        Ok(text) => match text.trim().parse::<u64>() {
            Ok(mb) if (1..=DB_MB_MAX).contains(&mb) => mb,
            _ => {
                eprintln!("WAIAAS_BENCH_DB_MB must be whole MiB, 1..={DB_MB_MAX}, not {text:?}");
                std::process::exit(2);
            }
        },
    }
}

// ---------------------------------------------------------------------------
// The two builds

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Profile {
    Release,
    Debug,
}

impl Profile {
    fn name(self) -> &'static str {
        match self {
            Profile::Release => "release",
            Profile::Debug => "debug",
        }
    }
}

fn profile() -> Profile {
    match std::env::var("WAIAAS_BENCH_PAIR").as_deref() {
        Err(_) | Ok("release") => Profile::Release,
        Ok("debug") => Profile::Debug,
        Ok(other) => {
            eprintln!("WAIAAS_BENCH_PAIR must be `release` or `debug`, not {other:?}");
            std::process::exit(2);
        }
    }
}

/// Where the binaries of A and B are.
struct Pair {
    a_bin: PathBuf,
    b_bin: PathBuf,
    /// Seconds B's build took in this process.
    b_build: Option<f64>,
}

impl Pair {
    fn prepare(profile: Profile) -> Self {
        let a_bin = match profile {
            Profile::Release => testkit::launcher_binary()
                .parent()
                .expect("the launcher has a folder")
                .to_path_buf(),
            Profile::Debug => testkit::builds::repo_root().join("target").join("debug"),
        };
        for name in ["waiaas-launcher", "waiaas-daemon"] {
            if !a_bin.join(name).is_file() {
                eprintln!(
                    "waiaas-launcher upgrade bench: {} is missing. Build A first:\n\n    {}\n    cargo bench -p waiaas-launcher --bench upgrade\n",
                    a_bin.join(name).display(),
                    match profile {
                        Profile::Release => "cargo build --release --workspace",
                        Profile::Debug => "cargo build --workspace",
                    }
                );
                std::process::exit(2);
            }
        }
        expect_version(&a_bin, testkit::builds::a_version(), A_SCHEMA).unwrap_or_else(|e| {
            eprintln!("waiaas-launcher upgrade bench: build A: {e}");
            std::process::exit(2);
        });
        println!(
            "  building B ({B_VERSION}, {}); the debug build also syncs its source copy",
            profile.name()
        );
        // The debug build syncs target/e2e/src-1.9.0 with this workspace.
        let debug_b = testkit::builds::b_bin_dir().to_path_buf();
        let (b_bin, b_build) = match profile {
            Profile::Debug => (
                debug_b,
                testkit::builds::build_time(B_VERSION).map(|d| d.as_secs_f64()),
            ),
            Profile::Release => {
                let started = Instant::now();
                let bin = build_b_release().unwrap_or_else(|e| panic!("B's release build: {e}"));
                (bin, Some(started.elapsed().as_secs_f64()))
            }
        };
        Self {
            a_bin,
            b_bin,
            b_build,
        }
    }
}

/// `bin/waiaas-daemon --version --json` reports `version` and `schema`.
fn expect_version(bin: &Path, version: &str, schema: u32) -> Result<(), String> {
    let daemon = bin.join("waiaas-daemon");
    let out = Command::new(&daemon)
        .args(["--version", "--json"])
        .output()
        .map_err(|e| format!("cannot run {}: {e}", daemon.display()))?;
    let info: Value = serde_json::from_slice(&out.stdout)
        .map_err(|e| format!("{} --version --json: {e}", daemon.display()))?;
    if info["version"] != version || info["schema_version"] != schema {
        return Err(format!(
            "{} reports {info}, expected {version} with schema {schema}",
            daemon.display()
        ));
    }
    Ok(())
}

/// Builds B in release from the source copy `testkit::builds::b_bin_dir` has just
/// synced, in the same target dir and under the same lock.
fn build_b_release() -> Result<PathBuf, String> {
    let _lock = testkit::builds::lock_builds()?;
    let (bin, _) = testkit::builds::cargo_build(
        B_VERSION,
        testkit::builds::Profile::Release,
        RELEASE_BUILD_TIMEOUT,
    )?;
    expect_version(&bin, B_VERSION, B_SCHEMA)?;
    Ok(bin)
}

// ---------------------------------------------------------------------------
// Releases and the installation

/// A and B packed and signed with a throwaway key.
struct Releases {
    key: Key,
    /// A snapshot of A's binaries with A's signed `release.json` beside them,
    /// as a release package holds them: `init`, the supervisor and every
    /// command run from here.
    a_bin: PathBuf,
    a: Packed,
    b: Packed,
}

impl Releases {
    fn pack(work: &Path, pair: &Pair) -> Self {
        let started = Instant::now();
        let dir = work.join("packs");
        fs::create_dir_all(&dir).unwrap();
        let key = testkit::builds::generate_key(&dir.join("key"));
        let a_bin = testkit::builds::copy_bin_dir(&pair.a_bin, &dir.join("a-bin"));
        let b_bin = testkit::builds::copy_bin_dir(&pair.b_bin, &dir.join("b-bin"));
        let a = pack_release(&a_bin, &dir.join("a"), &key);
        let b = pack_release(&b_bin, &dir.join("b"), &key);
        assert_eq!(a.manifest.version, testkit::builds::a_version());
        assert_eq!(b.manifest.version, B_VERSION);
        for (name, contents) in release_files(&a) {
            fs::write(a_bin.join(name), contents).unwrap();
        }
        println!(
            "  packed and signed A and B in {:.1} s (platform packages {} and {})",
            started.elapsed().as_secs_f64(),
            mib(file_len(&a.platform_tarball)),
            mib(file_len(&b.platform_tarball))
        );
        Self { key, a_bin, a, b }
    }

    fn launcher(&self) -> PathBuf {
        self.a_bin.join("waiaas-launcher")
    }
}

/// An installation of A, initialised by A's `init`, whose config points at a
/// registry on 127.0.0.1 offering A and B.
/// Derefs to the installation.
struct Site {
    site: testkit::Site,
    registry: Registry,
}

impl Deref for Site {
    type Target = testkit::Site;

    fn deref(&self) -> &testkit::Site {
        &self.site
    }
}

struct Database {
    audit_rows: u64,
    bytes: u64,
    seconds: f64,
}

impl Site {
    fn new(home: &Path, r: &Releases) -> Self {
        let home = home.to_path_buf();
        fs::create_dir_all(&home).unwrap();
        let dir = DataDir::new(home.join("waiaas"));
        let init = run(hermetic(Command::new(r.launcher()), &home)
            .arg("init")
            .arg("--data-dir")
            .arg(dir.root()));
        assert!(init.status.success(), "init failed: {init:?}");

        let registry = Registry::start();
        let target = this_target().expect("a shipped target");
        for (packed, version) in [(&r.a, testkit::builds::a_version()), (&r.b, B_VERSION)] {
            registry.publish(CLI_PACKAGE, version, fs::read(&packed.cli_tarball).unwrap());
            registry.publish_with_integrity(
                &platform_package(target),
                version,
                fs::read(&packed.platform_tarball).unwrap(),
                &packed.platform_integrity,
            );
        }
        let port = free_port();
        fs::write(
            dir.config(),
            format!(
                "[daemon]\nport = {port}\nhostname = \"127.0.0.1\"\nupdate_check = false\n\n\
                 [update]\nregistry = \"{}\"\ntrusted_keys = [\"{}\"]\n",
                registry.url(),
                r.key.public
            ),
        )
        .unwrap();
        Self {
            site: testkit::Site {
                home,
                dir,
                port,
                launcher: r.launcher(),
            },
            registry,
        }
    }

    fn current(&self) -> Option<String> {
        fs::read_link(self.dir.current())
            .ok()
            .and_then(|t| t.file_name().map(|n| n.to_string_lossy().into_owned()))
    }

    /// The folders in `backups/`, by name.
    fn backups(&self) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(self.dir.backups())
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    /// Creates the database with the installed daemon's `migrate`, then fills
    /// it with [`WALLETS`] wallets and ~1 KiB audit entries up to `target` bytes.
    fn seed(&self, target: u64) -> Database {
        let started = Instant::now();
        let migrate = run(hermetic(
            Command::new(self.dir.current().join("waiaas-daemon")),
            &self.home,
        )
        .args(["migrate", "--data-dir"])
        .arg(self.dir.root()));
        assert!(migrate.status.success(), "migrate: {migrate:?}");
        let conn = Connection::open(self.dir.database()).unwrap();
        conn.execute_batch(&format!(
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {WALLETS})
             INSERT INTO wallets (id, name, chain, network, public_key, owner_address, status,
                                  created_at, updated_at)
             SELECT lower(hex(randomblob(16))), printf('wallet-%05d', i),
                    CASE i % 3 WHEN 0 THEN 'ethereum' ELSE 'solana' END,
                    CASE i % 3 WHEN 0 THEN 'sepolia' ELSE 'devnet' END,
                    lower(hex(randomblob(32))),
                    CASE WHEN i % 4 = 0 THEN '0x' || lower(hex(randomblob(20))) END,
                    CASE WHEN i % 50 = 0 THEN 'SUSPENDED' ELSE 'ACTIVE' END,
                    1700000000 + i, 1700000000 + i
             FROM n;"
        ))
        .expect("add wallets");
        drop(conn);
        let (audit_rows, _) = fill_database(&self.dir.database(), target);
        Database {
            audit_rows,
            bytes: file_len(&self.dir.database()),
            seconds: started.elapsed().as_secs_f64(),
        }
    }

    /// The wallets' names and the audit log's length, read while the daemon
    /// serves (WAL readers do not block it).
    fn rows(&self) -> Rows {
        let conn =
            Connection::open_with_flags(self.dir.database(), OpenFlags::SQLITE_OPEN_READ_ONLY)
                .expect("open the database");
        conn.busy_timeout(Duration::from_secs(10)).unwrap();
        let mut names = conn.prepare("SELECT name FROM wallets").unwrap();
        let wallets = names
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        let audit: i64 = conn
            .query_row("SELECT count(*) FROM audit_log", [], |r| r.get(0))
            .unwrap();
        Rows {
            wallets,
            audit: audit as u64,
        }
    }
}

// ---------------------------------------------------------------------------
// The supervisor as a process

/// A `waiaas-launcher run` for `site`, its stderr appended to
/// `<home>/launcher.stderr`; stopped gracefully (30 s) on drop.
fn start_supervisor(site: &Site) -> Supervisor {
    Supervisor::spawn(
        site.launcher(&["run"]),
        site.home.join("launcher.stderr"),
        site.dir.launcher_socket(),
        LogFile::Append,
    )
    .with_healthy_within(HEALTHY_TIMEOUT)
    .with_stop_grace(Duration::from_secs(30))
}

// ---------------------------------------------------------------------------
// 1 and 2. A command under load

/// A line some process wrote, with when the bench saw it (µs since origin).
#[derive(Debug, Clone)]
struct Seen {
    at_us: i64,
    line: String,
}

/// The supervisor's (and its daemons') log lines of one command, on the
/// bench's clock.
struct LogEvents {
    /// `upgrade step N/M` lines: (N, at).
    steps: Vec<(u8, i64, String)>,
    /// The old daemon was told to stop ("…: stopping; finishing in-flight requests").
    old_stopping: Option<i64>,
    /// The supervisor reaped the old daemon ("daemon exited …").
    old_exited: Option<i64>,
    /// The new daemon serves clients: "ready: listening …", or for a daemon
    /// started on probation "committed: serving …" (after the commit).
    new_listening: Option<i64>,
    /// The supervisor has the new daemon healthy ("daemon ready …").
    new_ready: Option<i64>,
    /// The old launcher is about to exec the new one ("handing over to …").
    handing_over: Option<i64>,
    /// The new launcher, same pid, has taken over ("took over from launcher …").
    took_over: Option<i64>,
    /// The engine's report ("upgrade: Upgraded: …"): step 7 done.
    done: Option<i64>,
    lines: Vec<String>,
}

fn under_load(
    site: &Site,
    supervisor: &mut Supervisor,
    title: &str,
    args: &[&str],
    expect: &str,
) -> (Value, Written) {
    println!(
        "== {title}: `waiaas-launcher {}` ({} → {expect}) with {} clients on GET /health ({}) and {} ==",
        args.join(" "),
        site.current().unwrap_or_default(),
        readers(),
        connect_name(connect()),
        match writes() {
            Writes::Off => "none writing".to_string(),
            Writes::Unpaced => "one writing".to_string(),
            Writes::PerSecond(n) => format!("one writing {n} a second"),
        }
    );
    let before = supervisor.status();
    let before_pid = before
        .as_ref()
        .and_then(|s| s.daemon.as_ref())
        .map(|d| d.pid);
    // Nothing the bench wrote before (a database filled, a trace or a build
    // beside it) is left dirty for the kernel's periodic writeback to send
    // in the middle of the command, where a commit's inode write would queue
    // behind it: the command's own I/O is what is measured.
    // SAFETY: sync(2) has no preconditions.
    unsafe { libc::sync() };
    let url = format!("http://127.0.0.1:{}/health", site.port);
    let load = Load::connecting(&url, readers(), connect(), CLIENT_TIMEOUT, LOAD_DEADLINE);
    let load_origin = load.origin;
    let token = site.token();
    let prefix = if expect == B_VERSION { "u" } else { "r" };
    let writer = match writes() {
        Writes::Off => None,
        Writes::Unpaced => Some(Writer::paced(site.port, &token, prefix, None)),
        Writes::PerSecond(n) => Some(Writer::paced(site.port, &token, prefix, Some(n))),
    };
    let origin_unix_us = unix_us(SystemTime::now()) - load.now_us() as i64;
    std::thread::sleep(LOAD_PAUSE);

    let log_offset = supervisor.log_len();
    let start_us = load.now_us();
    let outcome = run_timed(site.launcher(args), load.origin, UPGRADE_TIMEOUT);
    let end_us = outcome.end_us;
    supervisor.assert_alive(title);
    std::thread::sleep(LOAD_PAUSE);
    let tally = load.finish();
    let written = writer.map(Writer::stop).unwrap_or_default();
    let ran = tally.ran;
    let after = supervisor.status();
    let after_daemon = after.as_ref().and_then(|s| s.daemon.clone());
    let events = log_events(&supervisor.log_since(log_offset), origin_unix_us);

    // The clients' figures.
    let sent = tally.sent();
    let failed = tally.failed;
    let mut errors: Vec<&(u64, u64, String)> = tally.errors.iter().collect();
    errors.sort_by_key(|e| e.0);
    let p50 = percentile(&tally.latencies, 0.50);
    let p99 = percentile(&tally.latencies, 0.99);
    let p999 = percentile(&tally.latencies, 0.999);
    let worst = tally.worst();
    let worst_request = tally.worst_request();
    let steady = tally.outside(&[(start_us, end_us)]);
    let during = tally.requests.len() - steady.len();
    let (gap, gap_from, gap_to) = longest_gap(&tally.done, start_us, end_us);

    // The command's own view: when each `[n/M]` progress line arrived.
    let progress: Vec<(u8, i64)> = outcome
        .stderr
        .iter()
        .filter_map(|s| {
            let rest = s.line.strip_prefix('[')?;
            let (n, _) = rest.split_once('/')?;
            Some((n.parse().ok()?, s.at_us))
        })
        .collect();
    let of = outcome
        .stderr
        .iter()
        .find_map(|s| {
            let rest = s.line.strip_prefix('[')?;
            let (_, rest) = rest.split_once('/')?;
            rest.split_once(']')?.0.parse::<u8>().ok()
        })
        .unwrap_or(0);
    let command_step2 = progress.iter().find(|(n, _)| *n == 2).map(|&(_, t)| t);
    let command_window = command_step2.map(|t| end_us as i64 - t);

    let ok = outcome.status.as_ref().is_some_and(|s| s.success());
    println!(
        "  command: {:.0} ms in all{}, {}, begun at Unix time {:.3} s (to line it up with system traces); its output, timed as it arrived:",
        (end_us - start_us) as f64 / 1000.0,
        if ok { "" } else { " — FAILED" },
        outcome
            .status
            .map_or("killed (timeout)".to_string(), |s| s.to_string()),
        (origin_unix_us + start_us as i64) as f64 / 1e6
    );
    let mut output: Vec<&Seen> = outcome.stdout.iter().chain(outcome.stderr.iter()).collect();
    output.sort_by_key(|s| s.at_us);
    for s in output {
        println!(
            "    +{:>7.1} ms  {}",
            (s.at_us - start_us as i64) as f64 / 1000.0,
            s.line
        );
    }

    // Step durations, from the supervisor's log (its own clock).
    let mut step_ms = BTreeMap::new();
    for (i, (n, at, _)) in events.steps.iter().enumerate() {
        let next = events
            .steps
            .get(i + 1)
            .map(|s| s.1)
            .or(events.done)
            .unwrap_or(*at);
        step_ms.insert(n.to_string(), round1((next - at) as f64 / 1000.0));
    }
    let step2 = events.steps.iter().find(|s| s.0 == 2).map(|s| s.1);
    let window = match (step2, events.done) {
        (Some(from), Some(to)) => Some(to - from),
        _ => None,
    };
    let no_daemon = match (events.old_exited, events.new_listening) {
        (Some(from), Some(to)) => Some(to - from),
        _ => None,
    };
    let not_accepting = match (events.old_stopping, events.new_listening) {
        (Some(from), Some(to)) => Some(to - from),
        _ => None,
    };
    // The backup: its live part (step 2 until the old daemon is told to
    // stop), and step 3 (the WAL and config, inside the window).
    let live_copy = match (step2, events.old_stopping) {
        (Some(from), Some(to)) => Some(to - from),
        _ => None,
    };
    // The worst wait of a request answered during the live copy: what the
    // hold's checkpoint and the copy's I/O cost, not the downtime after it.
    let live = match (step2, events.old_stopping) {
        (Some(from), Some(to)) => Some((from.max(0) as u64, to.max(0) as u64)),
        _ => None,
    };
    let answered_in = |(from, to): (u64, u64), done: u64| done >= from && done <= to;
    // (took, answered at), both in µs.
    let worst_live_read = live.and_then(|w| {
        tally
            .requests
            .iter()
            .filter(|&&(done, _)| answered_in(w, done))
            .map(|&(done, took)| (took, done))
            .max()
    });
    let worst_live_write = live.and_then(|w| {
        written
            .requests
            .iter()
            .map(|(sent, took)| {
                (
                    micros(sent.duration_since(load_origin) + *took),
                    micros(*took),
                )
            })
            .filter(|&(done, _)| answered_in(w, done))
            .map(|(done, took)| (took, done))
            .max()
    });
    // The worst wait of any request that overlapped the command, a read or
    // a write: what the whole command costs a client, not only its window.
    let command = [(start_us, end_us)];
    let worst_in_command = tally
        .requests
        .iter()
        .filter(|r| overlaps(&command, r))
        .map(|&(done, took)| (took, done, "GET /health"))
        .chain(
            written
                .requests
                .iter()
                .map(|(sent, took)| {
                    (
                        micros(*took),
                        micros(sent.duration_since(load_origin) + *took),
                        "a write",
                    )
                })
                .filter(|&(took, done, _)| overlaps(&command, &(done, took))),
        )
        .max();
    let step3 = events.steps.iter().find(|s| s.0 == 3).map(|s| s.1);
    let step4 = events.steps.iter().find(|s| s.0 == 4).map(|s| s.1);
    let backup_in_window = match (step3, step4) {
        (Some(from), Some(to)) => Some(to - from),
        _ => None,
    };
    let stopped_to_ready = match (events.old_exited, events.new_ready) {
        (Some(from), Some(to)) => Some(to - from),
        _ => None,
    };
    // The exec handover itself: the old launcher's last line before execve
    // to the new launcher's first after it (the same pid).
    let handover = match (events.handing_over, events.took_over) {
        (Some(from), Some(to)) => Some(to - from),
        _ => None,
    };
    println!(
        "  steps (supervisor log): {}",
        events
            .steps
            .iter()
            .map(|(n, _, name)| format!("{n}/{of} {name} {} ms", step_ms[&n.to_string()]))
            .collect::<Vec<_>>()
            .join(", ")
    );
    // How late each progress line reached the command, against the
    // supervisor's log line for the same step.
    let lag = progress
        .iter()
        .filter_map(|&(n, seen)| {
            let logged = events.steps.iter().find(|s| s.0 == n)?.1;
            Some((seen - logged, n))
        })
        .max();
    if let Some((lag, n)) = lag {
        println!(
            "  progress lag (the command's [n/{of}] line vs the supervisor's log line): worst {:.1} ms, at step {n}",
            lag as f64 / 1000.0
        );
    }
    println!(
        "  window step 2 start → step {of} done: {} (supervisor log); {} (as the command saw its progress: [2/{of}] line → exit)",
        fmt_ms(window),
        fmt_ms(command_window)
    );
    println!(
        "  old daemon exited → new daemon listening: {}; old daemon stopped accepting → new listening: {}",
        fmt_ms(no_daemon),
        fmt_ms(not_accepting)
    );
    println!(
        "  old daemon exited → new daemon ready (healthy, supervisor log): {}; the exec handover (old launcher's \"handing over\" → new launcher's \"took over\"): {}",
        fmt_ms(stopped_to_ready),
        fmt_ms(handover)
    );
    println!(
        "  backup: {} copied while the old daemon served (step 2 until it was told to stop), {} inside the window (step 3)",
        fmt_ms(live_copy),
        fmt_ms(backup_in_window)
    );
    let worst_live = |worst: Option<(u64, u64)>| {
        worst.map_or("n/a".to_string(), |(took, done)| {
            let since_step2 = done as i64 - step2.unwrap_or_default();
            format!(
                "{:.1} ms (answered {:.1} ms into step 2)",
                took as f64 / 1000.0,
                since_step2 as f64 / 1000.0
            )
        })
    };
    println!(
        "  answered during the live copy (the hold's checkpoint included): worst GET /health {}, worst write {}",
        worst_live(worst_live_read),
        worst_live(worst_live_write)
    );
    println!(
        "  writer: {} wallets acknowledged, {} unanswered",
        written.acknowledged.len(),
        written.unknown.len()
    );
    println!(
        "  clients: longest interval with no completed request during the command: {:.1} ms (t={:.1}..{:.1} ms after the command began)",
        gap as f64 / 1000.0,
        gap_from.saturating_sub(start_us) as f64 / 1000.0,
        gap_to.saturating_sub(start_us) as f64 / 1000.0
    );
    println!(
        "  {sent} requests in {:.1} s ({:.0}/s), {failed} failed (target 0)",
        ran.as_secs_f64(),
        sent as f64 / ran.as_secs_f64()
    );
    for (at, took, e) in errors.iter().take(8) {
        println!(
            "    failure at t={:.1} ms after the command began, after {:.1} ms: {e}",
            (*at as i64 - start_us as i64) as f64 / 1000.0,
            *took as f64 / 1000.0
        );
    }
    println!(
        "  latency: p50 {:.2} ms, p99 {:.2} ms, p99.9 {:.1} ms, worst {:.1} ms",
        p50 as f64 / 1000.0,
        p99 as f64 / 1000.0,
        p999 as f64 / 1000.0,
        worst as f64 / 1000.0
    );
    if let Some((done_at, took)) = worst_request {
        println!(
            "  the worst request ran from t={:.1} to t={:.1} ms after the command began",
            (done_at as i64 - took as i64 - start_us as i64) as f64 / 1000.0,
            (done_at as i64 - start_us as i64) as f64 / 1000.0
        );
    }
    if let Some((took, done, what)) = worst_in_command {
        println!(
            "  worst request overlapping the command: {:.1} ms ({what}, answered t={:.1} ms after the command began)",
            took as f64 / 1000.0,
            (done as i64 - start_us as i64) as f64 / 1000.0
        );
    }
    println!(
        "  {during} requests overlapped the command; the other {}: p99 {:.2} ms, worst {:.1} ms",
        steady.len(),
        percentile(&steady, 0.99) as f64 / 1000.0,
        steady.last().copied().unwrap_or(0) as f64 / 1000.0
    );
    let replaced = after_daemon
        .as_ref()
        .is_some_and(|d| d.version == expect && d.healthy && Some(d.pid) != before_pid);
    println!(
        "  after: current → {}, supervisor {} with daemon {} pid {} healthy {}{}",
        site.current().unwrap_or_default(),
        after.as_ref().map_or("?", |s| s.state.as_str()),
        after_daemon.as_ref().map_or("?", |d| d.version.as_str()),
        after_daemon.as_ref().map_or(0, |d| d.pid),
        after_daemon.as_ref().is_some_and(|d| d.healthy),
        if replaced {
            ""
        } else {
            " — NOT the expected state"
        }
    );
    let backups = site.backups();
    println!("  backups/ afterwards: {}", backups.join(", "));
    if !ok || !replaced {
        println!("  supervisor log of the command:");
        for line in &events.lines {
            println!("    {line}");
        }
    }
    let to_ms = |t: Option<i64>| t.map(|t| round1((t - start_us as i64) as f64 / 1000.0));

    let figures = json!({
        "command": args.join(" "),
        "ok": ok,
        "expected_state": replaced,
        "command_ms": round1((end_us - start_us) as f64 / 1000.0),
        "window_step2_to_done_ms": window.map(|w| round1(w as f64 / 1000.0)),
        "window_step2_to_done_command_view_ms": command_window.map(|w| round1(w as f64 / 1000.0)),
        "old_exited_to_new_listening_ms": no_daemon.map(|w| round1(w as f64 / 1000.0)),
        "old_stopping_to_new_listening_ms": not_accepting.map(|w| round1(w as f64 / 1000.0)),
        "live_copy_ms": live_copy.map(|w| round1(w as f64 / 1000.0)),
        "live_copy_worst_read_ms": worst_live_read.map(|(us, _)| round1(us as f64 / 1000.0)),
        "live_copy_worst_write_ms": worst_live_write.map(|(us, _)| round1(us as f64 / 1000.0)),
        "backup_in_window_ms": backup_in_window.map(|w| round1(w as f64 / 1000.0)),
        "writes_acknowledged": written.acknowledged.len(),
        "writes_unanswered": written.unknown.len(),
        "old_exited_to_new_ready_ms": stopped_to_ready.map(|w| round1(w as f64 / 1000.0)),
        "exec_handover_ms": handover.map(|w| round1(w as f64 / 1000.0)),
        "client_longest_no_completion_ms": round1(gap as f64 / 1000.0),
        "step_ms": step_ms,
        "progress_lag_worst_ms": lag.map(|(lag, _)| round1(lag as f64 / 1000.0)),
        "progress_lag_worst_step": lag.map(|(_, n)| n),
        "events_ms_after_command_start": {
            "step2": to_ms(step2),
            "old_stopping": to_ms(events.old_stopping),
            "old_exited": to_ms(events.old_exited),
            "new_listening": to_ms(events.new_listening),
            "new_ready": to_ms(events.new_ready),
            "handing_over": to_ms(events.handing_over),
            "took_over": to_ms(events.took_over),
            "done": to_ms(events.done),
        },
        "clients": readers(),
        "connect": connect_name(connect()),
        "seconds": round1(ran.as_secs_f64()),
        "sent": sent,
        "failed": failed,
        "errors": errors.iter().take(8).map(|(at, took, e)| json!({
            "at_ms": round1((*at as i64 - start_us as i64) as f64 / 1000.0),
            "took_ms": round1(*took as f64 / 1000.0),
            "error": e,
        })).collect::<Vec<_>>(),
        "p50_ms": round3(p50 as f64 / 1000.0),
        "p99_ms": round3(p99 as f64 / 1000.0),
        "p999_ms": round1(p999 as f64 / 1000.0),
        "worst_ms": round1(worst as f64 / 1000.0),
        "overlapping_the_command": during,
        "worst_in_command": worst_in_command.map(|(took, done, what)| json!({
            "ms": round1(took as f64 / 1000.0),
            "request": what,
            "at_ms": round1((done as i64 - start_us as i64) as f64 / 1000.0),
        })),
        "outside_the_command": {
            "requests": steady.len(),
            "p99_ms": round3(percentile(&steady, 0.99) as f64 / 1000.0),
            "worst_ms": round1(steady.last().copied().unwrap_or(0) as f64 / 1000.0),
        },
        "after": {
            "backups": backups,
            "current": site.current(),
            "daemon_version": after_daemon.as_ref().map(|d| d.version.clone()),
            "daemon_schema": after_daemon.as_ref().map(|d| d.schema_version),
            "healthy": after_daemon.as_ref().is_some_and(|d| d.healthy),
        },
    });
    (figures, written)
}

/// A finished command with every line it wrote, timestamped as it arrived.
struct Timed {
    status: Option<std::process::ExitStatus>,
    end_us: u64,
    stdout: Vec<Seen>,
    stderr: Vec<Seen>,
}

/// Runs `command`, reading its stdout and stderr line by line as they come;
/// kills it after `timeout`.
fn run_timed(mut command: Command, origin: Instant, timeout: Duration) -> Timed {
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {command:?}: {e}"));
    let reader = |pipe: Box<dyn Read + Send>| {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let sink = seen.clone();
        let thread = std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                let at_us = micros(origin.elapsed()) as i64;
                sink.lock().unwrap().push(Seen { at_us, line });
            }
        });
        (seen, thread)
    };
    let (stdout, out_thread) = reader(Box::new(child.stdout.take().expect("piped stdout")));
    let (stderr, err_thread) = reader(Box::new(child.stderr.take().expect("piped stderr")));
    let started = Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) if started.elapsed() > timeout => {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            Ok(None) => std::thread::sleep(Duration::from_micros(500)),
            Err(e) => panic!("cannot wait for {command:?}: {e}"),
        }
    };
    let end_us = micros(origin.elapsed());
    let _ = out_thread.join();
    let _ = err_thread.join();
    let take = |seen: Arc<Mutex<Vec<Seen>>>| std::mem::take(&mut *seen.lock().unwrap());
    Timed {
        status,
        end_us,
        stdout: take(stdout),
        stderr: take(stderr),
    }
}

/// Finds the events of one command in the supervisor's log (which holds the
/// daemons' lines too); timestamps are converted to the bench's clock.
fn log_events(text: &str, origin_unix_us: i64) -> LogEvents {
    let mut events = LogEvents {
        steps: Vec::new(),
        old_stopping: None,
        old_exited: None,
        new_listening: None,
        new_ready: None,
        handing_over: None,
        took_over: None,
        done: None,
        lines: Vec::new(),
    };
    for raw in text.lines() {
        let line = strip_ansi(raw);
        let Some(at) = line
            .split_whitespace()
            .next()
            .and_then(parse_rfc3339_us)
            .map(|t| t - origin_unix_us)
        else {
            events.lines.push(line);
            continue;
        };
        if let Some(rest) = line.split("upgrade step ").nth(1) {
            let n = rest.split('/').next().and_then(|n| n.parse::<u8>().ok());
            let name = rest
                .split_once(": ")
                .map(|(_, r)| r.split(" — ").next().unwrap_or(r).to_string())
                .unwrap_or_default();
            if let Some(n) = n {
                events.steps.push((n, at, name));
            }
        } else if line.contains("stopping; finishing in-flight requests") {
            events.old_stopping.get_or_insert(at);
        } else if line.contains("daemon exited") || line.contains("daemon was killed") {
            events.old_exited.get_or_insert(at);
        } else if (line.contains("ready: listening") || line.contains("committed: serving"))
            && events.old_exited.is_some()
        {
            events.new_listening.get_or_insert(at);
        } else if line.contains("daemon ready") && events.old_exited.is_some() {
            events.new_ready.get_or_insert(at);
        } else if line.contains("handing over to ") {
            events.handing_over.get_or_insert(at);
        } else if line.contains("took over from launcher") {
            events.took_over.get_or_insert(at);
        } else if line.contains(": upgrade: ") {
            events.done.get_or_insert(at);
        }
        events.lines.push(line);
    }
    // A handed-over step is announced by both launchers: one step, from the first.
    events.steps.dedup_by_key(|s| s.0);
    events
}

/// Removes `ESC [ … m` colour sequences.
fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// `2025-11-26T07:19:53.123456Z` (any number of fraction digits) → µs since the epoch.
fn parse_rfc3339_us(text: &str) -> Option<i64> {
    let text = text.strip_suffix('Z')?;
    let (date, time) = text.split_once('T')?;
    let mut date = date.splitn(3, '-').map(|p| p.parse::<i64>().ok());
    let (y, m, d) = (date.next()??, date.next()??, date.next()??);
    let (hms, frac) = time.split_once('.').unwrap_or((time, ""));
    let mut hms = hms.splitn(3, ':').map(|p| p.parse::<i64>().ok());
    let (h, mi, s) = (hms.next()??, hms.next()??, hms.next()??);
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) {
        return None;
    }
    let digits: String = frac.chars().take(6).collect();
    let micros = if digits.is_empty() {
        0
    } else {
        digits.parse::<i64>().ok()? * 10_i64.pow(6 - digits.len() as u32)
    };
    // Howard Hinnant's days_from_civil.
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let days = era * 146_097 + yoe * 365 + yoe / 4 - yoe / 100 + doy - 719_468;
    Some(((days * 86_400 + h * 3600 + mi * 60 + s) * 1_000_000) + micros)
}

// ---------------------------------------------------------------------------
// 3. Backup vs cp

fn backup_vs_cp(work: &Path, a_daemon: &Path, mb: u64) -> Value {
    println!(
        "== 3. backup vs cp: a {mb} MiB database, {BACKUP_RUNS} runs each, on {} ==",
        filesystem_of(work)
    );
    let home = work.join("backup-bench");
    let dir = DataDir::new(home.join("waiaas"));
    fs::create_dir_all(dir.data()).unwrap();
    fs::write(
        dir.config(),
        "[daemon]\nport = 9\nhostname = \"127.0.0.1\"\nupdate_check = false\n",
    )
    .unwrap();
    let migrate = run(hermetic(Command::new(a_daemon), &home)
        .args(["migrate", "--data-dir"])
        .arg(dir.root()));
    assert!(migrate.status.success(), "migrate: {migrate:?}");
    let db = dir.database();
    let (rows, fill) = fill_database(&db, mb << 20);
    let bytes = file_len(&db);
    println!(
        "  filled audit_log with {rows} rows of ~1 KiB: {} in {:.1} s",
        mib(bytes),
        fill
    );
    let cp_dir = home.join("cp");
    fs::create_dir_all(&cp_dir).unwrap();
    let cp_copy = cp_dir.join("waiaas.db");
    let parts_copy = cp_dir.join("parts.db");

    let mut backup_s = Vec::new();
    let mut cp_s = Vec::new();
    let mut parts: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    for run in 1..=BACKUP_RUNS {
        // Every measurement starts with nothing dirty in the page cache.
        // SAFETY: sync(2) has no preconditions.
        unsafe { libc::sync() };
        let started = Instant::now();
        let made = backup::create(
            &dir,
            &backup::Request {
                kind: Kind::PreUpgrade,
                from_version: testkit::builds::a_version().to_string(),
                to_version: B_VERSION.to_string(),
                schema_version: A_SCHEMA,
            },
        )
        .expect("backup::create");
        let took = started.elapsed().as_secs_f64();
        assert_eq!(file_len(&made.path.join("waiaas.db")), bytes);
        fs::remove_dir_all(&made.path).unwrap();
        backup_s.push(took);

        unsafe { libc::sync() };
        let started = Instant::now();
        let cp = Command::new("cp")
            .arg(&db)
            .arg(&cp_copy)
            .status()
            .expect("run cp");
        assert!(cp.success(), "cp: {cp}");
        let sync = Command::new("sync")
            .arg(&cp_copy)
            .status()
            .expect("run sync");
        assert!(sync.success(), "sync: {sync}");
        let took_cp = started.elapsed().as_secs_f64();
        assert_eq!(file_len(&cp_copy), bytes);
        fs::remove_file(&cp_copy).unwrap();
        cp_s.push(took_cp);

        // The backup's parts, one by one, as backup::create does them.
        unsafe { libc::sync() };
        let (checkpoint, copy, check) = backup_parts(&db, &parts_copy);
        fs::remove_file(&parts_copy).unwrap();
        for (name, s) in [
            ("checkpoint", checkpoint),
            ("copy_hash_fsync", copy),
            ("quick_check", check),
        ] {
            parts.entry(name).or_default().push(s);
        }
        println!(
            "  run {run}: backup::create {took:.2} s, cp + sync {took_cp:.2} s; parts: checkpoint {checkpoint:.3} s, copy + sha256 + fsync {copy:.2} s, quick_check {check:.2} s"
        );
    }
    let backup_median = Stats::of(&backup_s).median;
    let cp_median = Stats::of(&cp_s).median;
    let ratio = backup_median / cp_median;
    println!(
        "  median: backup::create {backup_median:.2} s ({:.0} MiB/s), cp + sync {cp_median:.2} s ({:.0} MiB/s): backup / cp = {ratio:.2}×",
        bytes as f64 / 1048576.0 / backup_median,
        bytes as f64 / 1048576.0 / cp_median
    );
    let part_medians: BTreeMap<&str, f64> = parts
        .iter()
        .map(|(k, v)| (*k, Stats::of(v).median))
        .collect();
    println!(
        "  median parts: copy + sha256 + fsync {:.2} s, quick_check {:.2} s, checkpoint {:.3} s (sum {:.2} s)",
        part_medians["copy_hash_fsync"],
        part_medians["quick_check"],
        part_medians["checkpoint"],
        part_medians.values().sum::<f64>()
    );
    println!(
        "  (the source was just written, so it is read from the page cache in every run; each copy's fsync writes it to the disk)"
    );
    let (quiet, busy, spinners) = copy_beside_busy_cpus(&db, &cp_dir.join("beside.db"));
    println!(
        "  the copy of a live backup (beside a daemon, at idle priority, watched): {quiet:.2} s on a quiet machine, {busy:.2} s with {spinners} busy loops at the usual priority on {} CPUs",
        cpus()
    );
    fs::remove_dir_all(&home).unwrap();
    json!({
        "db_mib_requested": mb,
        "db_bytes": bytes,
        "rows": rows,
        "fill_s": round1(fill),
        "filesystem": filesystem_of(work),
        "runs": BACKUP_RUNS,
        "backup_create_s": backup_s.iter().map(|s| round3(*s)).collect::<Vec<_>>(),
        "cp_sync_s": cp_s.iter().map(|s| round3(*s)).collect::<Vec<_>>(),
        "backup_median_s": round3(backup_median),
        "cp_median_s": round3(cp_median),
        "ratio": round3(ratio),
        "parts_s": parts.iter().map(|(k, v)| (k.to_string(), v.iter().map(|s| round3(*s)).collect::<Vec<_>>())).collect::<BTreeMap<_, _>>(),
        "parts_median_s": part_medians.iter().map(|(k, v)| (k.to_string(), round3(*v))).collect::<BTreeMap<_, _>>(),
        "beside_copy_s": {"quiet": round3(quiet), "busy_cpus": round3(busy), "busy_loops": spinners},
    })
}

/// A copy paced for a serving daemon ([`Pace::Beside`]: at idle priority,
/// handed back to the caller if it starves), once on a quiet machine and
/// once with every CPU kept busy by loops at the usual priority, as other
/// programs may: seconds each, and how many loops.
fn copy_beside_busy_cpus(db: &Path, copy: &Path) -> (f64, f64, usize) {
    let timed = || {
        // SAFETY: sync(2) has no preconditions.
        unsafe { libc::sync() };
        let started = Instant::now();
        copy_hashed(db, copy, 0o600, Pace::Beside).expect("the copy beside");
        let took = started.elapsed().as_secs_f64();
        fs::remove_file(copy).unwrap();
        took
    };
    let quiet = timed();
    let spinners = cpus() + 1;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let loops: Vec<_> = (0..spinners)
        .map(|_| {
            let stop = stop.clone();
            let until = Instant::now() + Duration::from_secs(300);
            std::thread::spawn(move || {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) && Instant::now() < until {
                    std::hint::spin_loop();
                }
            })
        })
        .collect();
    let busy = timed();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for spinner in loops {
        spinner.join().unwrap();
    }
    (quiet, busy, spinners)
}

/// Adds ~1 KiB `audit_log` rows until the database holds `target` bytes;
/// returns the rows added and the seconds it took.
fn fill_database(db: &Path, target: u64) -> (u64, f64) {
    let started = Instant::now();
    let conn = Connection::open(db).unwrap();
    conn.pragma_update(None, "synchronous", "OFF").unwrap();
    let size = |conn: &Connection| -> u64 {
        let pages: i64 = conn
            .query_row("PRAGMA page_count", [], |r| r.get(0))
            .unwrap();
        let page: i64 = conn
            .query_row("PRAGMA page_size", [], |r| r.get(0))
            .unwrap();
        (pages * page) as u64
    };
    let mut rows = 0;
    // Bounded: a batch adds 32 MiB, or all that is missing (at least 256 rows).
    for _ in 0..(target / (32 << 20) + 64) {
        if size(&conn) >= target {
            break;
        }
        // ~1.1 KiB a row: small databases get small batches.
        let batch = ((target - size(&conn)) / 1100).clamp(256, FILL_BATCH_ROWS);
        conn.execute_batch(&format!(
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {batch})
             INSERT INTO audit_log (timestamp, event_type, actor, wallet_id, details, severity)
             SELECT 1700000000 + {rows} + i, 'TX_SUBMITTED', 'master', NULL,
                    json_object('memo', lower(hex(randomblob(480)))), 'info'
             FROM n;"
        ))
        .expect("fill audit_log");
        rows += batch;
    }
    assert!(size(&conn) >= target, "the database did not reach its size");
    conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
        .unwrap();
    drop(conn);
    // On the disk, as a database that has served for a while is: written
    // with `synchronous=OFF`, its pages would otherwise be written back in
    // the middle of the upgrade, where every fsync waits for them (ext4
    // commits a file's newly placed blocks before any later journal commit).
    fs::File::open(db)
        .and_then(|f| f.sync_all())
        .expect("fsync the database");
    (rows, started.elapsed().as_secs_f64())
}

/// checkpoint, copy with its hash + fsync,
/// quick_check of the copy — timed one by one, the way `backup::create`
/// does them (seconds each).
fn backup_parts(db: &Path, copy: &Path) -> (f64, f64, f64) {
    let started = Instant::now();
    let conn = Connection::open_with_flags(db, OpenFlags::SQLITE_OPEN_READ_WRITE).unwrap();
    let busy: i64 = conn
        .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| r.get(0))
        .unwrap();
    assert_eq!(busy, 0);
    drop(conn);
    let checkpoint = started.elapsed().as_secs_f64();

    let started = Instant::now();
    let copied = copy_hashed(db, copy, 0o600, Pace::Alone).unwrap();
    assert_eq!(copied.sha256.len(), 64);
    let copy_hash = started.elapsed().as_secs_f64();

    let started = Instant::now();
    backup::quick_check(copy).expect("the copy passes quick_check");
    let checked = started.elapsed().as_secs_f64();
    (checkpoint, copy_hash, checked)
}

/// The file system type and device `path` is on, from /proc/self/mountinfo.
fn filesystem_of(path: &Path) -> String {
    let path = fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    let text = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    text.lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let mount = *fields.get(4)?;
            let dash = fields.iter().position(|f| *f == "-")?;
            let (fstype, source) = (fields.get(dash + 1)?, fields.get(dash + 2)?);
            path.starts_with(mount)
                .then(|| (mount.len(), format!("{fstype} ({source} at {mount})")))
        })
        .max()
        .map_or("an unknown file system".into(), |(_, fs)| fs)
}

// ---------------------------------------------------------------------------
// Units

fn unix_us(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH).unwrap_or_default().as_micros() as i64
}

fn file_len(path: &Path) -> u64 {
    fs::metadata(path).map_or(0, |m| m.len())
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / 1048576.0)
}

fn fmt_ms(us: Option<i64>) -> String {
    us.map_or("n/a".into(), |us| format!("{:.1} ms", us as f64 / 1000.0))
}
