//! kill -9 and power cuts while a live backup folds the live WAL into the
//! live database behind its copy (`waiaas_shared::backup`'s fold, step 2 of
//! an upgrade on [`crate::releases::big_database`], the old daemon writing).
//!
//! The fold is held by a failpoint's `hold` (`shared/src/failpoint.rs`): in
//! a pass (`fold-pass`, before its snapshot moves and its checkpoint beside
//! the daemon) or at its last fold (`fold-finish`, the daemon stopped). The
//! kill lands at a seeded instant of it: there, inside the checkpoint that
//! follows (the launcher caught holding SQLite's checkpoint lock and frozen
//! there), or up to 30 ms on. Whatever is killed, every acknowledged write
//! is kept, and a backup that completed holds every write the old daemon
//! acknowledged.

use std::collections::BTreeSet;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rusqlite::Connection;

use testkit::builds::B_VERSION;
use testkit::load::Writer;
use testkit::supervisor::{healthy, processes_mentioning, signal};
use waiaas_shared::admin::Outcome;
use waiaas_shared::backup::Kind;

use crate::handover::{Seeded, answered_by, assert_acknowledged_kept, pre_rollback_names};
use crate::kills::{
    Handing, KillPoint, Upgrader, cut_power_during_upgrade, failed_run, kill_during_upgrade,
};
use crate::releases::a;
use crate::site::{Setup, Site, spawn_logged, wait_child, written_names};

/// Kills per test in the fold's passes: each kind of instant twice.
const RUNS: u64 = 6;

/// Where in the fold the kill (or the cut) lands.
#[derive(Debug, Clone, Copy)]
enum At {
    /// Held where the failpoint is: a pass before its snapshot moves to
    /// the log's end and it checkpoints, or the last fold before it does.
    Held,
    /// Inside a checkpoint: held this long first (the daemon writing, so
    /// there is more to fold), then the launcher frozen while it holds the
    /// checkpoint lock.
    MidCheckpoint(Duration),
    /// This long after the fold was let go on.
    After(Duration),
}

impl At {
    /// Run `run`'s instant: the three kinds in turn, seeded delays.
    fn of_run(run: u64, random: &mut Seeded) -> Self {
        match run % 3 {
            0 => At::Held,
            1 => At::MidCheckpoint(Duration::from_millis(100 + random.below(300))),
            _ => At::After(Duration::from_micros(random.below(30_000))),
        }
    }
}

/// A fold to be held at failpoint `point` (`fold-pass`, `fold-finish`):
/// the token arming it, outside the installation (a power cut must not
/// take it back).
struct HeldFold {
    _tmp: tempfile::TempDir,
    point: &'static str,
    token: PathBuf,
}

impl HeldFold {
    /// Armed: the next fold to reach `point` is held there.
    fn new(point: &'static str) -> Self {
        let held = Self::unarmed(point);
        held.arm();
        held
    }

    /// Armed only once [`HeldFold::arm`] is called.
    fn unarmed(point: &'static str) -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let token = tmp.path().join("fold.token");
        Self {
            _tmp: tmp,
            point,
            token,
        }
    }

    fn arm(&self) {
        fs::write(&self.token, b"").unwrap();
    }

    /// A site on the big database whose supervisors hold the fold.
    fn setup(&self) -> Setup {
        Setup {
            big_db: true,
            failpoint: Some(format!("{}:hold:{}", self.point, self.token.display())),
            ..Setup::default()
        }
    }

    /// Whether a launcher holds the fold (it took the token).
    fn reached(&self) -> bool {
        !self.token.exists()
    }
}

/// Lets the fold held by `token` go on.
fn release(token: &Path) {
    fs::write(format!("{}.release", token.display()), b"").unwrap();
}

/// Leads the fold held by `token` to `at`; says where that is, and which
/// launcher is left frozen there (to be let go of once the kill is done).
fn lead_to(token: &Path, at: At, db: &Path) -> (String, Option<i32>) {
    match at {
        At::Held => ("held".into(), None),
        At::MidCheckpoint(held) => {
            std::thread::sleep(held);
            release(token);
            match freeze_mid_checkpoint(db, Duration::from_secs(2)) {
                Some(pid) => (
                    "mid-checkpoint (the launcher frozen holding its lock)".into(),
                    Some(pid),
                ),
                None => (
                    "after the fold (no checkpoint caught within 2 s)".into(),
                    None,
                ),
            }
        }
        At::After(after) => {
            release(token);
            std::thread::sleep(after);
            let mid = folding_launcher(db).is_some_and(|pid| checkpointing(db, pid));
            (format!("{after:?} on (mid-checkpoint: {mid})"), None)
        }
    }
}

/// The byte of a WAL's `-shm` file a checkpoint locks (SQLite's lock bytes
/// start at 120; `WAL_CKPT_LOCK` is the second).
const CHECKPOINT_LOCK: u64 = 121;

/// How long the launcher runs between two looks while it is strobed.
const SLICE: Duration = Duration::from_micros(100);

/// A lock held on a byte range of a database's WAL index.
struct IndexLock {
    pid: i32,
    bytes: std::ops::RangeInclusive<u64>,
    exclusive: bool,
}

/// The locks held on `db`'s WAL index (its `-shm` file), from `/proc/locks`
/// (which shows a process's adjacent locks of one kind as one range).
fn index_locks(db: &Path) -> Vec<IndexLock> {
    let Ok(shm) = fs::metadata(format!("{}-shm", db.display())) else {
        return Vec::new();
    };
    let inode = format!(":{}", shm.ino());
    let locks = fs::read_to_string("/proc/locks").unwrap_or_default();
    locks
        .lines()
        .filter_map(|line| {
            // `1: POSIX  ADVISORY  WRITE 4242 fd:00:1234 120 121` (waiters have `->`).
            let f: Vec<&str> = line.split_whitespace().collect();
            let ours = f.len() == 8 && f[1] == "POSIX" && f[5].ends_with(&inode);
            let pid = f.get(4).filter(|_| ours)?.parse().ok()?;
            Some(IndexLock {
                pid,
                bytes: f[6].parse().ok()?..=f[7].parse().ok()?,
                exclusive: f[3] == "WRITE",
            })
        })
        .collect()
}

/// The launcher whose fold uses `db`: the one with `db` open (found by
/// its descriptors: between two checkpoints it may hold no lock on it).
fn folding_launcher(db: &Path) -> Option<i32> {
    let pids = fs::read_dir("/proc").into_iter().flatten().flatten();
    pids.filter_map(|e| e.file_name().to_string_lossy().parse::<i32>().ok())
        .find(|pid| {
            let cmdline = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let fds = fs::read_dir(format!("/proc/{pid}/fd"))
                .into_iter()
                .flatten();
            String::from_utf8_lossy(&cmdline).contains("waiaas-launcher")
                && fds
                    .flatten()
                    .any(|fd| fs::read_link(fd.path()).is_ok_and(|file| file == db))
        })
}

/// Whether `pid` is checkpointing `db` now.
fn checkpointing(db: &Path, pid: i32) -> bool {
    index_locks(db)
        .iter()
        .any(|lock| lock.pid == pid && lock.exclusive && lock.bytes.contains(&CHECKPOINT_LOCK))
}

/// Every thread of `pid` stopped (within a second).
fn stopped(pid: i32) -> bool {
    let until = Instant::now() + Duration::from_secs(1);
    while Instant::now() < until {
        let tasks = fs::read_dir(format!("/proc/{pid}/task"))
            .into_iter()
            .flatten()
            .flatten();
        let all = tasks
            .filter_map(|t| t.file_name().to_string_lossy().parse::<i32>().ok())
            .all(|tid| {
                let stat = fs::read_to_string(format!("/proc/{pid}/task/{tid}/stat"));
                stat.ok()
                    .and_then(|s| s.rsplit_once(") ").map(|(_, r)| r.starts_with(['T', 't'])))
                    .unwrap_or(true)
            });
        if all {
            return true;
        }
        std::thread::yield_now();
    }
    false
}

/// Catches the launcher folding `db` inside a checkpoint: strobes it
/// (SIGSTOP, a look at its locks, SIGCONT for [`SLICE`]) and leaves it
/// stopped at the first look that finds it holding the checkpoint lock.
/// `None` if none was caught within `within`.
fn freeze_mid_checkpoint(db: &Path, within: Duration) -> Option<i32> {
    let until = Instant::now() + within;
    let launcher = loop {
        match folding_launcher(db) {
            Some(pid) => break pid,
            None if Instant::now() < until => std::thread::yield_now(),
            None => return None,
        }
    };
    signal(launcher, libc::SIGSTOP);
    while stopped(launcher) && Instant::now() < until {
        if checkpointing(db, launcher) {
            return Some(launcher);
        }
        signal(launcher, libc::SIGCONT);
        std::thread::sleep(SLICE);
        signal(launcher, libc::SIGSTOP);
    }
    signal(launcher, libc::SIGCONT);
    None
}

/// `PRAGMA quick_check` of the live database.
fn quick_check(db: &Path) -> String {
    Connection::open(db)
        .unwrap()
        .query_row("PRAGMA quick_check", [], |r| r.get(0))
        .unwrap()
}

/// An upgrade (or, after one, its rollback) whose fold is held in a pass;
/// the old daemon killed (SIGKILL) at `at` while a writer writes. The change
/// goes on without it (a crash while the service is held leaves it stopped)
/// or rolls back; either way every acknowledged write is kept (a committed
/// rollback keeps the upgraded release's in its pre-rollback backup), the
/// backup the change completed holds every write the old daemon
/// acknowledged, and the database is sound. Returns what went wrong.
fn kill_the_daemon_during_a_fold(handing: Handing, at: At, run: u64) -> Vec<String> {
    let what = format!("the daemon killed at {at:?} ({handing:?}, run {run})");
    let held = HeldFold::unarmed("fold-pass");
    let site = Site::with(held.setup());
    let mut supervisor = site.supervisor();
    supervisor.wait_healthy();
    let wallets = site.seed(&["treasury", "payroll"]);
    let (args, old, kind): (&[&str], &str, Kind) = match handing {
        Handing::Upgrade => (&["upgrade", "--json"], a(), Kind::PreUpgrade),
        Handing::Rollback => {
            let (out, report) = site.upgrade_json(&[]);
            assert!(
                out.status.success(),
                "{what}: {out:?}\n{}",
                supervisor.log()
            );
            assert_eq!(report.outcome, Outcome::Upgraded, "{report:?}");
            supervisor.wait_healthy();
            (
                &["upgrade", "--rollback", "--json"],
                B_VERSION,
                Kind::PreRollback,
            )
        }
    };
    held.arm();
    let writer = Writer::start(site.port, &site.token(), "w");
    let (mut client, out, err) = spawn_logged(site.launcher(args), &site.home, "change");
    let deadline = Instant::now() + Duration::from_secs(120);
    while !held.reached() && client.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "{what}: never folded");
        std::thread::sleep(Duration::from_millis(1));
    }
    if !held.reached() {
        writer.stop();
        return vec![format!(
            "{what}: the upgrade ended without folding:\n{}{}",
            fs::read_to_string(&out).unwrap_or_default(),
            fs::read_to_string(&err).unwrap_or_default()
        )];
    }
    let daemons: Vec<i32> = processes_mentioning(site.dir.root())
        .into_iter()
        .filter(|(_, cmd)| cmd.contains(" serve "))
        .map(|(pid, _)| pid)
        .collect();
    assert_eq!(daemons.len(), 1, "{what}: one daemon serves: {daemons:?}");
    let (landed, frozen) = lead_to(&held.token, at, &site.dir.database());
    signal(daemons[0], libc::SIGKILL);
    release(&held.token);
    if let Some(launcher) = frozen {
        signal(launcher, libc::SIGCONT);
    }
    let ended = wait_child(&mut client, Duration::from_secs(120), "the command");
    let status = supervisor.wait_for(Duration::from_secs(120), "the end", |s| {
        healthy(s) || s.state == "refused"
    });
    let written = writer.stop();
    eprintln!(
        "{what}: killed {landed}; the command {ended}; {} writes acknowledged ({} by {B_VERSION})",
        written.acknowledged.len(),
        answered_by(&written, B_VERSION)
    );
    let check = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        assert!(healthy(&status), "the service is back: {status:?}");
        let now = site.wallets();
        let mut stored: BTreeSet<String> = now
            .values()
            .filter(|n| n.starts_with("w-"))
            .cloned()
            .collect();
        let current = site.current();
        if handing == Handing::Rollback && current.as_deref() == Some(a()) {
            stored.extend(pre_rollback_names(&site));
        }
        assert_acknowledged_kept(&written, &stored, &what);
        for name in wallets.values() {
            assert!(
                now.values().any(|n| n == name),
                "{name} was seeded and is lost"
            );
        }
        // What the old daemon acknowledged was all before its kill: a
        // backup that completed holds all of it.
        let by_old: Vec<&String> = written
            .acknowledged
            .iter()
            .zip(&written.answered_by)
            .filter(|(_, v)| *v == old)
            .map(|(n, _)| n)
            .collect();
        for (path, manifest) in site.backups() {
            if manifest.kind != kind || manifest.from_version != old {
                continue;
            }
            let wal = path.join("waiaas.db-wal");
            let in_backup = written_names(
                &path.join("waiaas.db"),
                wal.exists().then_some(wal.as_path()),
            );
            let missing: Vec<&&String> =
                by_old.iter().filter(|n| !in_backup.contains(**n)).collect();
            assert!(
                missing.is_empty(),
                "acknowledged by {old} and not in {}: {missing:?}",
                path.display()
            );
        }
        assert_eq!(quick_check(&site.dir.database()), "ok");
        match current.as_deref() {
            Some(B_VERSION) => site.assert_fully_new(&now),
            _ => site.assert_fully_old(&now),
        }
    }));
    let mut problems = Vec::new();
    if let Err(panic) = check {
        problems.push(failed_run(
            &format!("{what} (killed {landed})"),
            panic.as_ref(),
            (&out, &err),
            "supervisor",
            &supervisor.log(),
        ));
    }
    site.stop(supervisor);
    problems
}

#[test]
fn the_daemon_killed_during_a_fold_loses_no_acknowledged_write() {
    let mut random = Seeded::new("the daemon killed during a fold");
    let problems: Vec<String> = (0..RUNS)
        .flat_map(|run| {
            kill_the_daemon_during_a_fold(Handing::Upgrade, At::of_run(run, &mut random), run)
        })
        .collect();
    assert!(problems.is_empty(), "{}", problems.join("\n\n"));
}

/// The same in a rollback's fold (B's daemon killed): each kind of instant
/// once, each run an upgrade first.
#[test]
fn the_daemon_killed_during_a_rollbacks_fold_loses_no_acknowledged_write() {
    let mut random = Seeded::new("the daemon killed during a rollback's fold");
    let problems: Vec<String> = (0..3)
        .flat_map(|run| {
            kill_the_daemon_during_a_fold(Handing::Rollback, At::of_run(run, &mut random), run)
        })
        .collect();
    assert!(problems.is_empty(), "{}", problems.join("\n\n"));
}

/// Where the upgrading launcher is killed (or the power cut): at the held
/// fold, led to `at`.
fn in_the_fold(held: &HeldFold, at: At, what: String) -> KillPoint {
    let token = held.token.clone();
    KillPoint {
        what,
        now: Box::new(move |_, dir| {
            // Asked again only while this returns false: led there once.
            if token.exists() {
                return false;
            }
            let (landed, _frozen) = lead_to(&token, at, &dir.database());
            eprintln!("at the fold: {landed}");
            true
        }),
        delay: Duration::ZERO,
        writes: true,
    }
}

/// The instants of the launcher tests: [`RUNS`] in the fold's passes, and
/// the last fold (the daemon stopped) held and caught mid-checkpoint.
fn launcher_instants(random: &mut Seeded) -> Vec<(&'static str, At)> {
    let passes = (0..RUNS).map(|run| ("fold-pass", At::of_run(run, random)));
    let last = [
        ("fold-finish", At::Held),
        ("fold-finish", At::MidCheckpoint(Duration::ZERO)),
    ];
    passes.chain(last).collect()
}

/// The launcher running the upgrade (the supervisor, holding the fold)
/// killed with SIGKILL at seeded instants of its fold: the next supervisor
/// rolls the upgrade back (step 2 or 3) with every acknowledged write.
#[test]
fn the_launcher_killed_during_a_fold_loses_no_acknowledged_write() {
    let mut random = Seeded::new("the launcher killed during a fold");
    let mut problems = Vec::new();
    for (run, (point, at)) in launcher_instants(&mut random).into_iter().enumerate() {
        let held = HeldFold::new(point);
        let site = Site::with(held.setup());
        let what = format!("kill at {point} {at:?} (run {run})");
        problems.extend(kill_during_upgrade(
            &site,
            &in_the_fold(&held, at, what),
            Upgrader::Supervisor,
        ));
        if !held.reached() {
            problems.push(format!("run {run}: the upgrade never reached {point}"));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n\n"));
}

/// The power cut at seeded instants of a fold: every byte not fsynced is
/// dropped, the main file a checkpoint was writing included; the next
/// supervisor recovers with every acknowledged write.
#[test]
fn a_power_cut_during_a_fold_loses_no_acknowledged_write() {
    if !waiaas_powercut::tier_ready("a_power_cut_during_a_fold_loses_no_acknowledged_write") {
        return;
    }
    let mut random = Seeded::new("power cuts during a fold");
    let mut problems = Vec::new();
    for (run, (point, at)) in launcher_instants(&mut random).into_iter().enumerate() {
        let held = HeldFold::new(point);
        let what = format!("power cut at {point} {at:?} (run {run})");
        problems.extend(cut_power_during_upgrade(
            false,
            held.setup(),
            &in_the_fold(&held, at, what),
        ));
        if !held.reached() {
            problems.push(format!("run {run}: the upgrade never reached {point}"));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n\n"));
}
