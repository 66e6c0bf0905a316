//! kill -9 and power cuts at every step and every instant of the handover:
//! the installation ends fully old or fully new.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

use testkit::builds::{B_SCHEMA, B_VERSION};
use testkit::launcher_binary;
use testkit::load::Writer;
use testkit::supervisor::{healthy, processes_mentioning, signal};
use waiaas_powercut::PowerCut;
use waiaas_shared::admin::Outcome;
use waiaas_shared::handover::TAKEOVER_GRACE;
use waiaas_shared::layout::DataDir;

use crate::handover::{Seeded, answered_by, assert_acknowledged_kept, pre_rollback_names};
use crate::releases::{A_SCHEMA, a};
use crate::site::{DbDigest, Setup, Site, assert_no_leftovers, names_in, spawn_logged, wait_child};

// ---------------------------------------------------------------------------
// kill -9 of the upgrading process.

/// Given the journal's step and the data dir: kill now?
type KillWhen = Box<dyn Fn(u8, &DataDir) -> bool>;

/// Where to kill the upgrading process.
pub(crate) struct KillPoint {
    pub(crate) what: String,
    pub(crate) now: KillWhen,
    /// Wait this long after `now` held.
    pub(crate) delay: Duration,
    /// A [`Writer`] creates wallets from the start of the upgrade to the kill.
    pub(crate) writes: bool,
}

/// Who runs the upgrade that is killed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Upgrader {
    /// A running supervisor, asked by the command: the supervisor is killed.
    Supervisor,
    /// The command itself (no supervisor runs): the command is killed.
    Standalone,
}

/// Starts an upgrade, kills the upgrading process with SIGKILL at `point`,
/// starts a new supervisor (which must finish the change first), and checks
/// that the installation is fully old or fully new — old if the kill left a
/// journal (the upgrade was not committed), new if not. Returns what went
/// wrong (empty if nothing), so that every kill point is tried.
pub(crate) fn kill_during_upgrade(
    site: &Site,
    point: &KillPoint,
    upgrader: Upgrader,
) -> Vec<String> {
    let mut problems = Vec::new();
    let what = format!("{} ({upgrader:?})", point.what);
    let mut supervisor = site.supervisor();
    supervisor.wait_healthy();
    let wallets = site.seed(&["treasury", "payroll"]);
    let before = DbDigest::of(&site.dir.database());
    let mut supervisor = match upgrader {
        Upgrader::Supervisor => Some(supervisor),
        Upgrader::Standalone => {
            site.stop(supervisor);
            None
        }
    };

    let writer = point
        .writes
        .then(|| Writer::start(site.port, &site.token(), "w"));
    let (mut client, out, err) =
        spawn_logged(site.launcher(&["upgrade", "--json"]), &site.home, "upgrade");
    let deadline = Instant::now() + Duration::from_secs(180);
    let mut missed = false;
    let step = loop {
        let step = site
            .journal()
            .and_then(|j| j["step"].as_u64())
            .map(|s| s as u8);
        if let Some(step) = step
            && (point.now)(step, &site.dir)
        {
            break step;
        }
        if let Some(status) = client.try_wait().unwrap() {
            // A point inside a short step can be missed: kill after the end instead.
            eprintln!(
                "{what}: the upgrade ended ({status}) before the kill point; killing after it:\n{}{}",
                fs::read_to_string(&out).unwrap_or_default(),
                fs::read_to_string(&err).unwrap_or_default(),
            );
            missed = true;
            break 0;
        }
        assert!(Instant::now() < deadline, "{what}: never reached");
        std::thread::sleep(Duration::from_millis(1));
    };
    std::thread::sleep(point.delay);
    let journal_at_kill = site.journal();
    match supervisor.as_mut() {
        Some(supervisor) => supervisor.kill9(),
        // (A reaped child's pid may belong to another process by now.)
        None if !missed => {
            signal(client.id() as i32, libc::SIGKILL);
        }
        None => {}
    }
    let written = writer.map(Writer::stop);
    let uncommitted = site.dir.upgrade_journal().exists();
    let at_kill = processes_mentioning(site.dir.root());
    let killed_at = journal_at_kill.as_ref().map_or("none".to_string(), |j| {
        format!("step {} ({})", j["step"], j["step_name"])
    });
    eprintln!(
        "{what}: seen step {step}, killed at {killed_at}; journal left: {uncommitted}; running then: {:?}",
        at_kill.values().collect::<Vec<_>>()
    );
    let ended = wait_child(&mut client, Duration::from_secs(30), "the upgrade command");
    assert!(
        !ended.success() || !uncommitted,
        "the command cannot report success for an uncommitted upgrade"
    );
    drop(supervisor);

    // Whatever the killed launcher had started must die with it: a `migrate`
    // or `check` left running writes to the database the next launcher is
    // about to restore. (A daemon gets SIGTERM and shuts down gracefully.)
    std::thread::sleep(Duration::from_millis(50));
    let orphans: BTreeMap<i32, String> = processes_mentioning(site.dir.root())
        .into_iter()
        .filter(|(_, cmd)| !cmd.contains(" serve "))
        .collect();
    if !orphans.is_empty() {
        problems.push(format!(
            "{what} (killed at {killed_at}): processes of the killed launcher still running 50 ms after the kill: {orphans:?}"
        ));
    }
    // The next launcher starts as soon as the port is free, as systemd's
    // Restart= would start it; a daemon holds the port until it is gone.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let serving: Vec<String> = processes_mentioning(site.dir.root())
            .into_values()
            .filter(|cmd| cmd.contains(" serve "))
            .collect();
        if serving.is_empty() {
            break;
        }
        if Instant::now() > deadline {
            problems.push(format!(
                "{what} (killed at {killed_at}): a daemon outlived the killed launcher by 20 s: {serving:?}"
            ));
            for pid in processes_mentioning(site.dir.root()).into_keys() {
                signal(pid, libc::SIGKILL);
            }
            std::thread::sleep(Duration::from_millis(200));
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }

    let mut next = site.supervisor();
    let status = next.wait_for(Duration::from_secs(120), "recovery", |s| {
        healthy(s) || s.state == "refused"
    });
    if !healthy(&status) {
        problems.push(format!(
            "{what} (killed at {killed_at}): the next supervisor did not recover: {status:?}\n{}",
            next.log()
        ));
        return problems;
    }
    let check = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        if let Some(written) = &written {
            let now = site.wallets();
            let names: BTreeSet<&String> = now.values().collect();
            let sent: BTreeSet<&String> = wallets
                .values()
                .chain(&written.acknowledged)
                .chain(&written.unknown)
                .collect();
            // Wherever the kill landed, every acknowledged write is kept: a
            // new daemon serves clients only after the commit (SPEC §13).
            for name in wallets.values().chain(&written.acknowledged) {
                assert!(names.contains(name), "{name} was acknowledged and is lost");
            }
            if uncommitted {
                assert_eq!(
                    answered_by(written, B_VERSION),
                    0,
                    "the new release answered clients, and the change was never committed"
                );
            }
            assert!(names.is_subset(&sent), "wallets nobody wrote: {names:?}");
            eprintln!(
                "{what}: {} writes acknowledged before the kill, all kept",
                written.acknowledged.len()
            );
            match uncommitted {
                true => site.assert_fully_old(&now),
                false => site.assert_fully_new(&now),
            }
        } else if uncommitted {
            site.assert_fully_old(&wallets);
            assert_eq!(
                DbDigest::of(&site.dir.database()),
                before,
                "the database is as before"
            );
        } else {
            site.assert_fully_new(&wallets);
        }
    }));
    if let Err(panic) = check {
        let message = panic_message(panic.as_ref());
        problems.push(format!(
            "{what} (killed at {killed_at}, journal left: {uncommitted}): {message}\nrecovering supervisor:\n{}",
            next.log()
        ));
    }
    let log = next.log();
    if uncommitted && !log.contains("rolled back") {
        problems.push(format!("{what}: the recovery is not in the log:\n{log}"));
    }
    // Each daemon logs this once it serves (its stderr is the supervisor's).
    let launches =
        log.matches("ready: listening on").count() + log.matches("committed: serving").count();
    if launches > 1 {
        problems.push(format!(
            "{what} (killed at {killed_at}): the recovering supervisor started {launches} daemons:\n{}",
            log.lines()
                .filter(|l| l.contains("ready") || l.contains("rolled back") || l.contains("daemon"))
                .collect::<Vec<_>>()
                .join("\n")
        ));
    }
    problems
}

/// What a caught panic said.
pub(crate) fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_default()
}

/// A run whose checks panicked, as a problem to report: what panicked, the
/// `upgrade` command's output (`out`, `err`) and a process's log.
pub(crate) fn failed_run(
    what: &str,
    panic: &(dyn std::any::Any + Send),
    (out, err): (&Path, &Path),
    whose: &str,
    log: &str,
) -> String {
    format!(
        "{what}: {}\nupgrade: {}{}\n{whose}:\n{log}",
        panic_message(panic),
        fs::read_to_string(out).unwrap_or_default(),
        fs::read_to_string(err).unwrap_or_default(),
    )
}

pub(crate) fn boundary(step: u8) -> KillPoint {
    KillPoint {
        what: format!("kill at the start of step {step}"),
        now: Box::new(move |s, _| s >= step),
        delay: Duration::ZERO,
        writes: false,
    }
}

#[test]
fn kill_9_at_every_step_boundary_ends_fully_old_or_new() {
    let mut problems = Vec::new();
    for step in 2..=7 {
        let site = Site::new();
        problems.extend(kill_during_upgrade(
            &site,
            &boundary(step),
            Upgrader::Supervisor,
        ));
    }
    // A standalone upgrade is the command itself: kill it where it runs
    // other processes (the new daemon's migrate, then the new daemon it
    // starts for the health check).
    let daemon_started = KillPoint {
        what: "kill once the new daemon runs (step 7)".into(),
        now: Box::new(|s, d| {
            s == 7
                && processes_mentioning(d.root())
                    .values()
                    .any(|cmd| cmd.contains(" serve "))
        }),
        delay: Duration::ZERO,
        writes: false,
    };
    for point in [boundary(5), boundary(7), daemon_started] {
        let site = Site::new();
        problems.extend(kill_during_upgrade(&site, &point, Upgrader::Standalone));
    }
    assert!(problems.is_empty(), "{}", problems.join("\n\n"));
}

/// The instants of a handover where a launcher kills itself with SIGKILL
/// (`WAIAAS_FAILPOINT`, see `shared/src/failpoint.rs`), and whether the
/// change is committed by then.
pub(crate) const HANDOVER_INSTANTS: [(&str, bool); 5] = [
    // The old launcher: journal saved as handed over, right before execve.
    ("handover-before-exec", false),
    // The new launcher: right after execve, before it reads the handover.
    ("handover-after-exec", false),
    // The new launcher: its daemon for the handed-over step just spawned.
    ("handover-daemon-spawned", false),
    // The new launcher: its daemon healthy, the commit not yet made.
    ("handover-daemon-ready", false),
    // The new launcher: committed, the report not yet sent.
    ("handover-committed", true),
];

/// Which handover is killed: the upgrade's (A → B) or the rollback's (B → A).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Handing {
    Upgrade,
    Rollback,
}

/// A → B (`upgrade`) or, after an upgrade, B → A (`--rollback`), with the
/// launcher killing itself (SIGKILL) at `point` of the handover; then the
/// service's launcher (A's binary) is started again, as systemd's
/// `Restart=` would, and the installation must be fully old — or fully new
/// if the kill came after the commit: the launcher that serves (its version
/// and `/proc/<pid>/exe`), the daemon, `current`, no journal, and the
/// database row for row. Returns what went wrong (empty if nothing).
pub(crate) fn kill_in_handover(point: &str, committed: bool, handing: Handing) -> Vec<String> {
    stop_in_handover(point, committed, handing, Stop::Kill)
}

/// How the launcher at a handover's instant is ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stop {
    /// It kills itself (SIGKILL).
    Kill,
    /// It freezes itself (SIGSTOP); once its handover deadline has passed it
    /// is thawed, and the pending SIGALRM ends it.
    Freeze,
}

/// [`kill_in_handover`], with a writer posting wallets throughout: every
/// acknowledged write is kept, and a change never committed answered nobody.
pub(crate) fn stop_in_handover(
    point: &str,
    committed: bool,
    handing: Handing,
    stop: Stop,
) -> Vec<String> {
    use std::os::unix::process::ExitStatusExt;
    let what = format!("{stop:?} at {point} ({handing:?})");
    let mut problems = Vec::new();
    let health_timeout = 3;
    let site = Site::with(Setup {
        health_timeout,
        ..Setup::default()
    });
    let token = site.home.join("failpoint.token");
    let action = match stop {
        Stop::Kill => "kill",
        Stop::Freeze => "pause",
    };
    let armed = format!("{point}:{action}:{}", token.display());
    let mut supervisor = site.supervisor_with(&[("WAIAAS_FAILPOINT", &armed)]);
    let pid = supervisor.wait_healthy().launcher_pid;
    let wallets = site.seed(&["treasury", "payroll"]);
    let (args, old, new): (&[&str], &str, &str) = match handing {
        Handing::Upgrade => (&["upgrade", "--json"], a(), B_VERSION),
        Handing::Rollback => {
            // The token does not exist yet: this upgrade's handover goes through.
            let (out, report) = site.upgrade_json(&[]);
            assert!(
                out.status.success(),
                "{what}: {out:?}\n{}",
                supervisor.log()
            );
            assert_eq!(report.outcome, Outcome::Upgraded, "{report:?}");
            assert_eq!(supervisor.wait_healthy().launcher_version, B_VERSION);
            (&["upgrade", "--rollback", "--json"], B_VERSION, a())
        }
    };
    fs::write(&token, b"").unwrap();

    let writer = Writer::start(site.port, &site.token(), "w");
    let (mut command, _, _) = spawn_logged(site.launcher(args), &site.home, "handover");
    if stop == Stop::Freeze {
        let deadline = Instant::now() + Duration::from_secs(120);
        while token.exists() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        // Frozen past its handover deadline (health_timeout + the grace):
        // the alarm is pending, and ends it as soon as it runs again.
        std::thread::sleep(Duration::from_secs(health_timeout) + TAKEOVER_GRACE);
        signal(pid as i32, libc::SIGCONT);
    }
    let exit = supervisor.wait_exit(Duration::from_secs(120));
    let written = writer.stop();
    let ended = wait_child(&mut command, Duration::from_secs(60), "the command");
    let expected_signal = match stop {
        Stop::Kill => libc::SIGKILL,
        Stop::Freeze => libc::SIGALRM,
    };
    if exit.signal() != Some(expected_signal) || token.exists() {
        problems.push(format!(
            "{what}: the launcher (pid {pid}) did not kill itself there: {exit}\n{}",
            supervisor.log()
        ));
        return problems;
    }
    if ended.success() {
        problems.push(format!(
            "{what}: the command reported success for a launcher killed before its report"
        ));
    }
    let journal = site.journal();
    if journal.is_some() == committed {
        problems.push(format!("{what}: journal after the kill: {journal:?}"));
    }
    if let Some(journal) = &journal
        && journal["handed_over"] != true
    {
        problems.push(format!(
            "{what}: the journal does not record the handover: {journal}"
        ));
    }
    // The killed launcher's daemon (if any) dies with it; the next launcher
    // starts once the port is free, as systemd's restart would.
    let deadline = Instant::now() + Duration::from_secs(20);
    while !processes_mentioning(site.dir.root()).is_empty() {
        if Instant::now() > deadline {
            problems.push(format!(
                "{what}: processes outlived the killed launcher by 20 s: {:?}",
                processes_mentioning(site.dir.root())
            ));
            for pid in processes_mentioning(site.dir.root()).into_keys() {
                signal(pid, libc::SIGKILL);
            }
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let killed_log = supervisor.log();
    drop(supervisor);

    let mut next = site.supervisor();
    let status = next.wait_for(Duration::from_secs(120), "recovery", |s| {
        healthy(s) || s.state == "refused"
    });
    let expect = if committed { new } else { old };
    let check = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        assert_eq!(status.launcher_version, expect, "the launcher that serves");
        assert_eq!(
            status.daemon.as_ref().unwrap().version,
            expect,
            "the daemon"
        );
        let exe = fs::read_link(format!("/proc/{}/exe", status.launcher_pid)).unwrap();
        let launcher = if expect == a() {
            fs::canonicalize(launcher_binary()).unwrap()
        } else {
            site.dir.version(B_VERSION).join("waiaas-launcher")
        };
        assert_eq!(exe, launcher, "the launcher's program");
        let now = site.wallets();
        for (id, name) in &wallets {
            assert_eq!(now.get(id), Some(name), "a wallet written before");
        }
        let mut stored: BTreeSet<String> = now
            .values()
            .filter(|n| n.starts_with("w-"))
            .cloned()
            .collect();
        if handing == Handing::Rollback && committed {
            stored.extend(pre_rollback_names(&site));
        }
        assert_acknowledged_kept(&written, &stored, &what);
        if !committed {
            assert_eq!(
                answered_by(&written, new),
                0,
                "{new} answered clients, and the change was never committed"
            );
        }
        eprintln!(
            "{what}: {} writes acknowledged ({} by {new}), all kept",
            written.acknowledged.len(),
            answered_by(&written, new)
        );
        if expect == a() {
            site.assert_fully_old(&now);
        } else {
            site.assert_fully_new(&now);
        }
    }));
    if let Err(panic) = check {
        let message = panic_message(panic.as_ref());
        problems.push(format!(
            "{what}: not fully {expect}: {message}\nkilled launcher:\n{killed_log}\nnext:\n{}",
            next.log()
        ));
    }
    let log = next.log();
    let reason_logged = log.contains("was never confirmed") && log.contains("rolled back");
    if !committed && !reason_logged {
        problems.push(format!(
            "{what}: the rollback and its reason are not in the log:\n{log}"
        ));
    }
    eprintln!(
        "{what}: journal left {}, fully {expect} after the restart ({})",
        !committed,
        if problems.is_empty() {
            "ok"
        } else {
            "PROBLEMS"
        }
    );
    problems
}

#[test]
fn kill_9_at_every_instant_of_the_upgrades_handover_ends_fully_old_or_new() {
    let problems: Vec<String> = HANDOVER_INSTANTS
        .iter()
        .flat_map(|&(point, committed)| kill_in_handover(point, committed, Handing::Upgrade))
        .collect();
    assert!(problems.is_empty(), "{}", problems.join("\n\n"));
}

#[test]
fn kill_9_at_every_instant_of_the_rollbacks_handover_ends_fully_old_or_new() {
    let problems: Vec<String> = HANDOVER_INSTANTS
        .iter()
        .flat_map(|&(point, committed)| kill_in_handover(point, committed, Handing::Rollback))
        .collect();
    assert!(problems.is_empty(), "{}", problems.join("\n\n"));
}

pub(crate) fn exists_with_prefix(dir: &Path, prefix: &str) -> bool {
    names_in(dir).iter().any(|n| n.starts_with(prefix))
}

#[test]
fn kill_9_inside_steps_3_to_7() {
    let points = [
        KillPoint {
            what: "kill while the backup is being written (step 3)".into(),
            now: Box::new(|s, d| {
                s == 3 && exists_with_prefix(&d.backups(), ".partial-pre-upgrade")
            }),
            delay: Duration::from_millis(20),
            writes: false,
        },
        KillPoint {
            what: "kill just after the switch (step 4)".into(),
            now: Box::new(|s, d| {
                s >= 4 && fs::read_link(d.current()).is_ok_and(|t| t.ends_with(B_VERSION))
            }),
            delay: Duration::ZERO,
            writes: false,
        },
        KillPoint {
            what: "kill while the new daemon backs up before migrating (step 5)".into(),
            now: Box::new(|s, d| {
                s == 5 && exists_with_prefix(&d.backups(), ".partial-pre-migrate")
            }),
            delay: Duration::from_millis(20),
            writes: false,
        },
        KillPoint {
            what: "kill while the new daemon migrates (step 5)".into(),
            now: Box::new(|s, d| s == 5 && exists_with_prefix(&d.backups(), "pre-migrate-")),
            delay: Duration::from_millis(5),
            writes: false,
        },
        KillPoint {
            what: "kill while the schema is verified (step 6)".into(),
            now: Box::new(|s, _| s == 6),
            delay: Duration::ZERO,
            writes: false,
        },
        KillPoint {
            what: "kill while the new daemon starts (step 7)".into(),
            now: Box::new(|s, d| {
                s == 7
                    && processes_mentioning(d.root())
                        .values()
                        .any(|cmd| cmd.contains(" serve "))
            }),
            delay: Duration::ZERO,
            writes: false,
        },
    ];
    let mut problems = Vec::new();
    for point in &points {
        let site = Site::with(Setup {
            big_db: true,
            ..Setup::default()
        });
        problems.extend(kill_during_upgrade(&site, point, Upgrader::Supervisor));
    }
    assert!(problems.is_empty(), "{}", problems.join("\n\n"));
}

/// kill -9 while `--rollback` stages its backup's copy beside the database
/// (step 2, the daemon still serving): the next start discards the staged
/// copy and the installation stays at the upgraded release, whole.
#[test]
fn kill_9_while_a_rollback_stages_its_backup_leaves_the_upgrade_in_place() {
    let site = Site::with(Setup {
        big_db: true,
        ..Setup::default()
    });
    let mut supervisor = site.supervisor();
    supervisor.wait_healthy();
    let wallets = site.seed(&["treasury", "payroll"]);
    let (out, _) = site.upgrade_json(&[]);
    assert!(out.status.success(), "{out:?}\n{}", supervisor.log());
    supervisor.wait_healthy();

    let (mut client, _, _) = spawn_logged(
        site.launcher(&["upgrade", "--rollback", "--json"]),
        &site.home,
        "rollback",
    );
    let staged = site.dir.data().join(".waiaas.db.restore");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !staged.exists() {
        assert!(
            client.try_wait().unwrap().is_none(),
            "the rollback ended before it staged its backup"
        );
        assert!(Instant::now() < deadline, "the backup was never staged");
        std::thread::sleep(Duration::from_millis(1));
    }
    supervisor.kill9();
    wait_child(&mut client, Duration::from_secs(30), "the rollback command");
    drop(supervisor);
    // The next start waits for the killed launcher's daemon to let go of the port.
    let deadline = Instant::now() + Duration::from_secs(20);
    while processes_mentioning(site.dir.root())
        .values()
        .any(|cmd| cmd.contains(" serve "))
    {
        assert!(Instant::now() < deadline, "a daemon outlived its launcher");
        std::thread::sleep(Duration::from_millis(5));
    }

    let mut next = site.supervisor();
    next.wait_healthy();
    site.assert_fully_new(&wallets);
    assert_no_leftovers(&site);
}

// Power cuts (the power-loss tier): the installation on a filesystem that
// drops every byte not fsynced when the power goes (`waiaas-powercut`).

/// The longest a cut waits after the journal appears: a little more than an
/// upgrade's steps 2–7 (or a rollback's) take on a small database, so cuts
/// spread over them and some land after the commit.
pub(crate) const CUT_WITHIN_MS: u64 = 500;

/// Upgrades A → B (or, after an upgrade, rolls B back to A) with a writer
/// running, on a power-loss filesystem (a site of `setup` installed there);
/// cuts the power at `point` (its `writes` is ignored: the writer always
/// runs), kills every process of the installation, remounts, and starts a new
/// supervisor. The installation must then be fully old or fully new with
/// every acknowledged write. Returns what went wrong.
pub(crate) fn cut_power_during_upgrade(
    rollback: bool,
    setup: Setup,
    point: &KillPoint,
) -> Vec<String> {
    let what = point.what.as_str();
    let tmp = tempfile::tempdir().unwrap();
    let (backing, home) = (tmp.path().join("backing"), tmp.path().join("home"));
    fs::create_dir(&backing).unwrap();
    fs::create_dir(&home).unwrap();
    let power = PowerCut::mount(&backing, &home).expect("mount the power-loss filesystem");
    let site = Site::with(Setup {
        home: Some(home.clone()),
        ..setup
    });
    let mut supervisor = site.supervisor();
    supervisor.wait_healthy();
    let (from, to) = if rollback {
        let (out, report) = site.upgrade_json(&[]);
        assert!(
            out.status.success(),
            "{what}: the upgrade before the rollback: {out:?}"
        );
        assert_eq!(report.outcome, Outcome::Upgraded, "{what}");
        (B_VERSION, a())
    } else {
        (a(), B_VERSION)
    };
    // What is there so far has long been on disk.
    power.sync();

    let writer = Writer::start(site.port, &site.token(), "w");
    let args: &[&str] = if rollback {
        &["upgrade", "--rollback", "--json"]
    } else {
        &["upgrade", "--json"]
    };
    let (mut client, out, err) = spawn_logged(site.launcher(args), tmp.path(), "upgrade");
    let deadline = Instant::now() + Duration::from_secs(120);
    let ended_first = loop {
        let step = site.journal().and_then(|j| j["step"].as_u64());
        if let Some(step) = step
            && (point.now)(step as u8, &site.dir)
        {
            break false;
        }
        // A point inside a short step can be missed: cut after the end instead.
        if client.try_wait().unwrap().is_some() {
            break true;
        }
        assert!(Instant::now() < deadline, "{what}: never reached");
        std::thread::sleep(Duration::from_millis(1));
    };
    std::thread::sleep(point.delay);
    let at_cut = site.journal().map_or("no journal".to_string(), |j| {
        format!("step {} ({})", j["step"], j["step_name"])
    });
    let dropped = power.cut().expect("cut the power");
    for pid in processes_mentioning(site.dir.root()).into_keys() {
        signal(pid, libc::SIGKILL);
    }
    supervisor.kill9();
    wait_child(&mut client, Duration::from_secs(30), "the upgrade command");
    let written = writer.stop();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !processes_mentioning(site.dir.root()).is_empty() {
        assert!(
            Instant::now() < deadline,
            "{what}: processes outlived SIGKILL by 20 s"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    power.unmount().expect("unmount after the cut");
    let power = PowerCut::mount(&backing, &home).expect("remount");
    eprintln!(
        "{what}: cut at {at_cut}{}; {} writes acknowledged; unsynced bytes dropped: {:?}",
        if ended_first {
            ", the command had ended"
        } else {
            ""
        },
        written.acknowledged.len(),
        dropped.files
    );

    let mut problems = Vec::new();
    let mut next = site.supervisor();
    let status = next.wait_for(Duration::from_secs(120), "recovery", |s| {
        healthy(s) || s.state == "refused"
    });
    if !healthy(&status) {
        problems.push(format!(
            "{what} (cut at {at_cut}): the next supervisor did not recover: {status:?}\n{}",
            next.log()
        ));
    } else if let Err(panic) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let current = site.current().expect("current names a release");
        assert!(
            current == from || current == to,
            "current is {current}, neither {from} nor {to}"
        );
        let schema = if current == B_VERSION {
            B_SCHEMA
        } else {
            A_SCHEMA
        };
        let now = site.wallets();
        site.assert_state(&current, schema, &now);
        let mut stored: BTreeSet<String> = now.into_values().collect();
        if rollback && current == to {
            stored.extend(pre_rollback_names(&site));
        }
        assert_acknowledged_kept(&written, &stored, what);
        eprintln!("{what}: fully {current}, all acknowledged writes kept");
    })) {
        problems.push(failed_run(
            &format!("{what} (cut at {at_cut})"),
            panic.as_ref(),
            (&out, &err),
            "recovering supervisor",
            &next.log(),
        ));
    }
    site.stop(next);
    power.unmount().expect("unmount");
    problems
}

/// A site on [`crate::releases::big_database`].
pub(crate) fn big() -> Setup {
    Setup {
        big_db: true,
        ..Setup::default()
    }
}

/// Power cuts at seeded random instants: each round cuts an upgrade and a
/// rollback anywhere from their journal's first entry to just past the
/// commit, and, on a 100 MB database, an upgrade inside its live copy and
/// inside its WAL copy.
#[test]
fn power_cuts_during_an_upgrade_and_its_rollback_end_fully_old_or_new() {
    if !waiaas_powercut::tier_ready(
        "power_cuts_during_an_upgrade_and_its_rollback_end_fully_old_or_new",
    ) {
        return;
    }
    let mut random = Seeded::new("power cuts during an upgrade and its rollback");
    let rounds = std::env::var("WAIAAS_POWERCUT_UPGRADE_RUNS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(2u64)
        .min(50);
    let mut problems = Vec::new();
    for round in 0..rounds {
        for (kind, rollback) in [("an upgrade", false), ("a rollback", true)] {
            let delay = Duration::from_millis(random.below(CUT_WITHIN_MS));
            let point = KillPoint {
                what: format!("power cut {delay:?} into {kind} (round {round})"),
                now: Box::new(|_, _| true),
                delay,
                writes: true,
            };
            problems.extend(cut_power_during_upgrade(rollback, Setup::default(), &point));
        }
        let delay = Duration::from_millis(random.below(250));
        let live_copy = KillPoint {
            what: format!("power cut {delay:?} into the live copy (round {round})"),
            now: Box::new(|s, d| {
                s == 2 && exists_with_prefix(&d.backups(), ".partial-pre-upgrade")
            }),
            delay,
            writes: true,
        };
        problems.extend(cut_power_during_upgrade(false, big(), &live_copy));
        let delay = Duration::from_millis(random.below(15));
        let wal_copy = KillPoint {
            what: format!("power cut {delay:?} into the WAL's copy (round {round})"),
            now: Box::new(|s, _| s == 3),
            delay,
            writes: true,
        };
        problems.extend(cut_power_during_upgrade(false, big(), &wal_copy));
    }
    assert!(problems.is_empty(), "{}", problems.join("\n\n"));
}
