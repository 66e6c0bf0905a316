//! The handover: the supervisor becoming the new release's launcher, the
//! new launcher's probation, and the readiness gate (SPEC §13).

use std::collections::BTreeSet;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use testkit::builds::{B_VERSION, Fault};
use testkit::load::{Writer, Written};
use testkit::supervisor::{LogFile, Supervisor, processes_mentioning};
use testkit::{Outcome as Ran, hermetic, launcher_binary, run};
use waiaas_shared::admin::Outcome;
use waiaas_shared::backup::Kind;

use crate::kills::{Handing, KillPoint, Stop, Upgrader, kill_during_upgrade, stop_in_handover};
use crate::releases::{a, releases};
use crate::site::{
    DbDigest, Offer, Setup, Site, names_in, spawn_logged, wait_child, written_names,
};

/// The supervisor replaces itself in place (same PID) with the new release's
/// launcher, which starts its own daemon and sends the report.
#[test]
fn the_supervisor_becomes_the_new_releases_launcher_in_place() {
    let site = Site::new();
    let mut supervisor = site.supervisor();
    let before = supervisor.wait_healthy();
    assert_eq!(before.launcher_version, a());
    let wallets = site.seed(&["treasury", "payroll"]);

    let ((out, report), ok, failed) = under_load(site.port, 32, || site.upgrade_json(&[]));
    assert!(out.status.success(), "{out:?}\n{}", supervisor.log());
    assert_eq!(report.outcome, Outcome::Upgraded, "{report:?}");
    eprintln!("32 clients across the upgrade and handover: {ok} answered, {failed} failed");
    assert!(ok > 100, "only {ok} requests answered");
    assert_eq!(failed, 0, "requests failed across the handover");
    let after = supervisor.wait_healthy();
    assert_eq!(after.launcher_pid, before.launcher_pid, "the same process");
    assert_eq!(after.launcher_version, B_VERSION, "running B's launcher");
    let exe = fs::read_link(format!("/proc/{}/exe", after.launcher_pid)).unwrap();
    assert_eq!(exe, site.dir.version(B_VERSION).join("waiaas-launcher"));
    let log = supervisor.log();
    assert!(
        log.contains(&format!("took over from launcher {}", a())),
        "{log}"
    );
    site.assert_fully_new(&wallets);
    // One entry point: A's launcher binary hands every command to B's.
    let version = run(&mut site.launcher(&["--version"]));
    assert!(version.stdout.contains(B_VERSION), "{version:?}");
    let check = site.upgrade(&["--check"]);
    assert!(
        check.stdout.contains(&format!("Up to date ({B_VERSION}")),
        "{check:?}"
    );

    // `--rollback` moves the launcher back too, in place.
    let ((out, report), ok, failed) =
        under_load(site.port, 32, || site.upgrade_json(&["--rollback"]));
    eprintln!("32 clients across the rollback and handover: {ok} answered, {failed} failed");
    assert_eq!(failed, 0, "requests failed across the rollback's handover");
    assert!(out.status.success(), "{out:?}\n{}", supervisor.log());
    assert_eq!(report.outcome, Outcome::Restored, "{report:?}");
    let back = supervisor.wait_healthy();
    assert_eq!(back.launcher_pid, before.launcher_pid);
    assert_eq!(back.launcher_version, a());
    assert_eq!(back.daemon.as_ref().unwrap().version, a());
    site.assert_fully_old(&wallets);
    let (out, report) = site.upgrade_json(&[]);
    assert!(out.status.success(), "{out:?}\n{}", supervisor.log());
    assert_eq!(report.outcome, Outcome::Upgraded, "{report:?}");

    // The service started again by the old launcher binary (systemd's
    // ExecStart, the PATH) hands itself to the installation's newer one.
    site.stop(supervisor);
    let mut again = site.supervisor();
    let status = again.wait_healthy();
    assert_eq!(status.launcher_version, B_VERSION);
    let exe = fs::read_link(format!("/proc/{}/exe", status.launcher_pid)).unwrap();
    assert_eq!(exe, site.dir.version(B_VERSION).join("waiaas-launcher"));
}

/// Probation: a new launcher that dies instead of taking over leaves the
/// journal unconfirmed; the next start (by whatever launcher the service
/// names) rolls the whole release back and serves the old version.
#[test]
fn a_new_launcher_that_dies_at_once_is_rolled_back_at_the_next_start() {
    let site = Site::with(Setup {
        offer: Offer::Faulty(Fault::LauncherDiesOnRun),
        ..Setup::default()
    });
    let mut supervisor = site.supervisor();
    supervisor.wait_healthy();
    let wallets = site.seed(&["treasury", "payroll"]);

    let out = site.upgrade(&[]);
    assert!(!out.status.success(), "{out:?}");
    assert!(out.stderr.contains("lost the connection"), "{}", out.stderr);
    let exit = supervisor.wait_exit(Duration::from_secs(30));
    assert!(!exit.success(), "{exit}");
    let journal = site.journal().expect("an unconfirmed handover");
    assert_eq!(journal["handed_over"], true, "{journal}");

    // What systemd's restart does: the service's launcher runs again.
    let mut again = site.supervisor();
    let status = again.wait_healthy();
    assert_eq!(status.daemon.as_ref().unwrap().version, a());
    assert_eq!(status.launcher_version, a());
    assert!(site.journal().is_none());
    site.assert_fully_old(&wallets);
}

/// Probation with a deadline: a new launcher that hangs in the handover
/// (blocks forever, serving nothing, holding the listener, the admin socket
/// and the command's connection) is ended by the deadline the old launcher
/// armed before the exec (SIGALRM, `[update] health_timeout` + 10 s) — with
/// no systemd watchdog and nobody watching — and the next start (as
/// systemd's `Restart=` would make it, or `run` again by hand) finds the
/// unconfirmed handover, says so, and rolls the whole release back: A's
/// launcher, A's daemon, `current`, the database.
#[test]
fn a_new_launcher_that_hangs_in_the_handover_is_ended_and_rolled_back_at_the_next_start() {
    use std::os::unix::process::ExitStatusExt;
    let health_timeout = 5;
    let site = Site::with(Setup {
        offer: Offer::Faulty(Fault::LauncherHangsOnHandover),
        health_timeout,
        ..Setup::default()
    });
    let mut supervisor = site.supervisor();
    let pid = supervisor.wait_healthy().launcher_pid;
    let wallets = site.seed(&["treasury", "payroll"]);
    let before = DbDigest::of(&site.dir.database());
    let config = fs::read(site.dir.config()).unwrap();

    let started = Instant::now();
    let (mut command, out, err) = spawn_logged(site.launcher(&["upgrade"]), &site.home, "upgrade");
    // The hung launcher holds the command's connection: the command waits
    // until the deadline ends that process, then says the connection is lost.
    let status = wait_child(
        &mut command,
        Duration::from_secs(120),
        "the upgrade command",
    );
    let took = started.elapsed();
    let stderr = fs::read_to_string(&err).unwrap();
    assert!(
        !status.success(),
        "{}{stderr}",
        fs::read_to_string(&out).unwrap()
    );
    assert!(stderr.contains("lost the connection"), "{stderr}");
    let exit = supervisor.wait_exit(Duration::from_secs(60));
    assert_eq!(
        exit.signal(),
        Some(libc::SIGALRM),
        "ended by its deadline: {exit}\n{}",
        supervisor.log()
    );
    let deadline = Duration::from_secs(health_timeout + 10);
    eprintln!("the hung launcher (pid {pid}) was ended {took:?} after the upgrade began");
    assert!(
        took >= deadline && took < deadline + Duration::from_secs(60),
        "ended after {took:?}, the deadline is {deadline:?}"
    );
    let log = supervisor.log();
    assert!(
        log.contains(&format!("must confirm within {} s", deadline.as_secs()))
            && log.contains("hanging in the handover"),
        "{log}"
    );
    let journal = site.journal().expect("an unconfirmed handover");
    assert_eq!(journal["handed_over"], true, "{journal}");
    assert!(
        processes_mentioning(site.dir.root()).is_empty(),
        "nothing of the hung release runs"
    );

    // What systemd's restart does: the service's launcher (A's) runs again.
    let mut again = site.supervisor();
    let status = again.wait_healthy();
    assert_eq!(status.launcher_version, a());
    assert_eq!(status.daemon.as_ref().unwrap().version, a());
    let exe = fs::read_link(format!("/proc/{}/exe", status.launcher_pid)).unwrap();
    assert_eq!(
        exe,
        fs::canonicalize(launcher_binary()).unwrap(),
        "A's launcher"
    );
    site.assert_fully_old(&wallets);
    assert_eq!(DbDigest::of(&site.dir.database()), before, "the database");
    assert_eq!(fs::read(site.dir.config()).unwrap(), config);
    let log = again.log();
    assert!(
        log.contains(&format!("handover to {B_VERSION}'s launcher"))
            && log.contains("was never confirmed")
            && log.contains("rolled back"),
        "the reason is in the log:\n{log}"
    );
}

/// `upgrade --no-start` commits with the daemon left stopped, and the old
/// launcher keeps running (there is no daemon to hand over yet): the next
/// start — `restart` here (SIGHUP is the same), or the service started
/// again — is the new release's launcher, in place.
#[test]
fn no_start_leaves_the_old_launcher_running_until_the_next_start() {
    let site = Site::new();
    let mut supervisor = site.supervisor();
    let pid = supervisor.wait_healthy().launcher_pid;
    let wallets = site.seed(&["treasury", "payroll"]);

    let (out, report) = site.upgrade_json(&["--no-start"]);
    assert!(out.status.success(), "{out:?}\n{}", supervisor.log());
    assert_eq!(report.outcome, Outcome::Upgraded, "{report:?}");
    let status = supervisor.wait_for(Duration::from_secs(30), "stopped", |s| s.state == "stopped");
    assert_eq!(
        (status.launcher_pid, status.launcher_version.as_str()),
        (pid, a())
    );
    assert!(status.daemon.is_none(), "{status:?}");
    let exe = fs::read_link(format!("/proc/{pid}/exe")).unwrap();
    assert_eq!(
        exe,
        fs::canonicalize(launcher_binary()).unwrap(),
        "still A's launcher"
    );
    assert_eq!(site.current().as_deref(), Some(B_VERSION));
    assert!(site.journal().is_none(), "committed");
    assert!(site.health().is_none(), "no daemon serves");

    // The next start: `restart` (A's binary hands the command to B's; the
    // old supervisor hands the service to B's launcher, which starts B).
    let restart = run(&mut site.launcher(&["restart"]));
    assert!(
        restart.status.success(),
        "{restart:?}\n{}",
        supervisor.log()
    );
    assert!(
        restart.stdout.contains("handing the service to"),
        "{restart:?}"
    );
    let status = supervisor.wait_healthy();
    assert_eq!(status.launcher_pid, pid, "the same process");
    assert_eq!(status.launcher_version, B_VERSION);
    assert_eq!(status.daemon.as_ref().unwrap().version, B_VERSION);
    let exe = fs::read_link(format!("/proc/{pid}/exe")).unwrap();
    assert_eq!(exe, site.dir.version(B_VERSION).join("waiaas-launcher"));
    site.assert_fully_new(&wallets);

    // Left stopped again, the service started afresh by A's binary: B too.
    let (out, _) = site.upgrade_json(&["--rollback", "--no-start"]);
    assert!(out.status.success(), "{out:?}\n{}", supervisor.log());
    site.stop(supervisor);
    let mut again = site.supervisor();
    let status = again.wait_healthy();
    assert_eq!(
        status.launcher_version,
        a(),
        "rolled back to A: A's launcher"
    );
    site.assert_fully_old(&wallets);
}

/// An old CLI against a new supervisor and a new CLI against an old one:
/// each works (A's and B's speak one admin protocol; A's binary hands its
/// commands to B's when it can, and talks to B's supervisor itself when it
/// cannot) — and when a supervisor and a command do not understand each
/// other, both say exactly which program to run the command with.
#[test]
fn old_and_new_clis_work_with_either_supervisor_or_name_the_program_to_use() {
    let site = Site::new();
    let b_launcher = testkit::builds::b_bin_dir().join("waiaas-launcher");
    let b_cli = |args: &[&str]| {
        let mut command = hermetic(Command::new(&b_launcher), &site.home);
        command.args(args).arg("--data-dir").arg(site.dir.root());
        run(&mut command)
    };
    let status_of = |out: &Ran| -> serde_json::Value {
        assert!(out.status.success(), "{out:?}");
        serde_json::from_str(out.stdout.trim()).unwrap()
    };

    // A new CLI (B's) against an old supervisor (A's).
    let mut supervisor = site.supervisor();
    supervisor.wait_healthy();
    let wallets = site.seed(&["treasury"]);
    let status = status_of(&b_cli(&["status", "--json"]));
    assert_eq!(status["launcher_version"], a(), "{status}");
    let check = b_cli(&["upgrade", "--check"]);
    assert!(check.status.success(), "{check:?}");

    // An old CLI (A's) against a new supervisor (B's, after the upgrade):
    // handed to B's binary, or — as a CLI that cannot hand over (one from
    // before the entry point) — talking to B's supervisor itself.
    let (out, _) = site.upgrade_json(&[]);
    assert!(out.status.success(), "{out:?}\n{}", supervisor.log());
    let status = status_of(&run(&mut site.launcher(&["status", "--json"])));
    assert_eq!(status["launcher_version"], B_VERSION, "{status}");
    let status = status_of(&run(site
        .launcher(&["status", "--json"])
        .env("WAIAAS_DELEGATED_FROM", "0.0.0")));
    assert_eq!(status["launcher_version"], B_VERSION, "{status}");
    site.assert_fully_new(&wallets);

    // A command of another admin protocol: the supervisor names its program.
    let program = site.dir.version(B_VERSION).join("waiaas-launcher");
    let answer = {
        use std::io::{BufRead, BufReader};
        let mut stream =
            std::os::unix::net::UnixStream::connect(site.dir.launcher_socket()).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        stream
            .write_all(b"{\"protocol\":99,\"request\":{\"type\":\"status\"}}\n")
            .unwrap();
        let mut line = String::new();
        BufReader::new(stream).read_line(&mut line).unwrap();
        line
    };
    assert!(
        answer.contains(&format!("run the command with {}", program.display())),
        "{answer}"
    );
    site.stop(supervisor);

    // A supervisor whose answers this command cannot read (a stand-in
    // speaking a later protocol): the command names the supervisor's program.
    let _ = fs::remove_file(site.dir.launcher_socket());
    let listener = std::os::unix::net::UnixListener::bind(site.dir.launcher_socket()).unwrap();
    fs::write(site.dir.launcher_pid(), format!("{}\n", std::process::id())).unwrap();
    let stand_in = std::thread::spawn(move || {
        use std::io::{BufRead, BufReader};
        let (stream, _) = listener.accept().unwrap();
        let mut line = String::new();
        BufReader::new(&stream).read_line(&mut line).unwrap();
        (&stream)
            .write_all(b"{\"type\":\"status_v9\",\"launcher\":{}}\n")
            .unwrap();
    });
    let out = run(site
        .launcher(&["status"])
        .env("WAIAAS_DELEGATED_FROM", "0.0.0"));
    stand_in.join().unwrap();
    let ours = std::env::current_exe().unwrap();
    assert!(!out.status.success(), "{out:?}");
    assert!(
        out.stderr
            .contains(&format!("the supervisor runs {}", ours.display()))
            && out.stderr.contains("run the command with that program"),
        "{}",
        out.stderr
    );
}

/// Runs `work` while `clients` send `GET /health` to `port` without pause
/// (bounded: 5 minutes at most); returns its result and the requests that
/// were answered and that failed.
pub(crate) fn under_load<T>(port: u16, clients: usize, work: impl FnOnce() -> T) -> (T, u64, u64) {
    let url = format!("http://127.0.0.1:{port}/health");
    let load = testkit::load::Load::start(
        &url,
        clients,
        Duration::from_secs(60),
        Duration::from_secs(300),
    );
    std::thread::sleep(Duration::from_millis(300));
    let result = work();
    std::thread::sleep(Duration::from_millis(300));
    let tally = load.finish();
    for (_, _, error) in &tally.errors {
        eprintln!("failed: {error}");
    }
    (result, tally.sent() - tally.failed, tally.failed)
}

/// Unpacks a platform tarball as npm would (`package/…` → `<folder>/…`).
pub(crate) fn unpack_like_npm(tarball: &Path, folder: &Path) {
    for entry in waiaas_packaging::read_package_tarball(tarball).unwrap() {
        if let waiaas_packaging::EntryKind::File { contents, mode } = entry.kind {
            let rel = entry.path.strip_prefix("package/").unwrap();
            let path = folder.join(rel);
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            fs::write(&path, contents).unwrap();
            use std::os::unix::fs::PermissionsExt;
            fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
        }
    }
}

/// After `npm install -g` of a newer release, the launcher on the PATH and
/// the installation agree: `run` from that launcher moves the data dir to the
/// release beside it — verified, backed up, journaled — with no download.
#[test]
fn a_newer_launcher_moves_the_installation_to_the_release_beside_it() {
    let site = Site::new();
    let mut supervisor = site.supervisor();
    supervisor.wait_healthy();
    let wallets = site.seed(&["treasury"]);
    site.stop(supervisor);

    let npm = site.home.join("npm-global/@waiaas/cli-platform");
    unpack_like_npm(&releases().b.platform_tarball, &npm);
    let launcher = npm.join("bin/waiaas-launcher");
    let mut command = hermetic(Command::new(&launcher), &site.home);
    command.args(["run", "--data-dir"]).arg(site.dir.root());
    let mut supervisor = Supervisor::spawn(
        command,
        site.home.join("npm-launcher.stderr"),
        site.dir.launcher_socket(),
        LogFile::Fresh,
    );
    let status = supervisor.wait_healthy();
    assert_eq!(status.launcher_version, B_VERSION);
    assert_eq!(status.daemon.as_ref().unwrap().version, B_VERSION);
    assert_eq!(site.current().as_deref(), Some(B_VERSION));
    assert!(site.journal().is_none());
    assert_eq!(site.registry.total_hits(), 0, "nothing was downloaded");
    assert!(
        site.backups()
            .iter()
            .any(|(_, m)| m.kind == Kind::PreUpgrade),
        "a pre-upgrade backup was taken"
    );
    site.assert_fully_new(&wallets);
}

// The readiness gate (SPEC §13): a daemon on probation answers no client
// before the commit, so a rollback never drops an acknowledged write.

/// Every write the writer was told is kept is in `stored`, and everything
/// stored was sent.
pub(crate) fn assert_acknowledged_kept(written: &Written, stored: &BTreeSet<String>, what: &str) {
    let lost: Vec<&String> = written
        .acknowledged
        .iter()
        .filter(|n| !stored.contains(*n))
        .collect();
    assert!(lost.is_empty(), "{what}: acknowledged, then lost: {lost:?}");
    let sent: BTreeSet<&String> = written
        .acknowledged
        .iter()
        .chain(&written.unknown)
        .collect();
    let unsent: Vec<&String> = stored.iter().filter(|n| !sent.contains(n)).collect();
    assert!(
        unsent.is_empty(),
        "{what}: stored but never sent: {unsent:?}"
    );
}

/// The `w-…` wallets in the pre-rollback backup: a committed rollback
/// returns to the state before the upgrade on purpose, and what the upgraded
/// release acknowledged is kept in the backup it made first.
pub(crate) fn pre_rollback_names(site: &Site) -> BTreeSet<String> {
    let backup = names_in(&site.dir.backups())
        .into_iter()
        .find(|n| n.starts_with("pre-rollback-"))
        .map(|n| site.dir.backups().join(n))
        .expect("a pre-rollback backup");
    let wal = backup.join("waiaas.db-wal");
    written_names(
        &backup.join("waiaas.db"),
        wal.exists().then_some(wal.as_path()),
    )
}

/// How many of the writer's acknowledgements `version` gave.
pub(crate) fn answered_by(written: &Written, version: &str) -> usize {
    written.answered_by.iter().filter(|v| *v == version).count()
}

/// A release whose writes work but whose `/health` stays 503: it is probed
/// on its private listener for `health_timeout`, never given the public
/// port, and rolled back; clients wait in the backlog and are answered by
/// the old daemon again — none fails, none is lost.
#[test]
fn an_unhealthy_release_answers_no_client_and_its_rollback_keeps_every_write() {
    let health_timeout = 3;
    let site = Site::with(Setup {
        offer: Offer::Faulty(Fault::Unhealthy),
        health_timeout,
        ..Setup::default()
    });
    let mut supervisor = site.supervisor();
    supervisor.wait_healthy();
    let writer = Writer::start(site.port, &site.token(), "w");
    std::thread::sleep(Duration::from_millis(300));
    let (out, report) = site.upgrade_json(&[]);
    std::thread::sleep(Duration::from_millis(300));
    let written = writer.stop();
    assert_eq!(out.status.code(), Some(1), "{out:?}\n{}", supervisor.log());
    assert_eq!(report.outcome, Outcome::RolledBack, "{report:?}");
    supervisor.wait_healthy();
    let stored: BTreeSet<String> = site.wallets().into_values().collect();
    assert_acknowledged_kept(&written, &stored, "unhealthy release");
    assert_eq!(
        answered_by(&written, B_VERSION),
        0,
        "the unhealthy release answered clients before any commit"
    );
    assert_eq!(written.refused, 0, "refused requests");
    assert!(
        written.unknown.is_empty(),
        "failed requests: {:?}",
        written.unknown
    );
    eprintln!(
        "unhealthy release: {} writes acknowledged, all by {}, all kept; longest wait {:.2} s \
         (health_timeout {health_timeout} s + the rollback)",
        written.acknowledged.len(),
        a(),
        written.longest_wait.as_secs_f64()
    );
    assert!(
        written.longest_wait < Duration::from_secs(health_timeout + 5),
        "a client waited {:?}",
        written.longest_wait
    );
    assert!(
        supervisor.log().contains("ready on probation"),
        "the new daemon started on probation:\n{}",
        supervisor.log()
    );
    site.assert_fully_old(&site.wallets());
}

/// A healthy upgrade under a writer: no request fails, the new release
/// answers only after it is committed, and no wait is longer than
/// `health_timeout` + 1 s.
#[test]
fn a_healthy_release_takes_over_with_no_failed_request_and_no_long_wait() {
    let health_timeout = 3;
    let site = Site::with(Setup {
        health_timeout,
        ..Setup::default()
    });
    let mut supervisor = site.supervisor();
    supervisor.wait_healthy();
    let writer = Writer::start(site.port, &site.token(), "w");
    std::thread::sleep(Duration::from_millis(300));
    let (out, report) = site.upgrade_json(&[]);
    std::thread::sleep(Duration::from_millis(300));
    let written = writer.stop();
    assert!(out.status.success(), "{out:?}\n{}", supervisor.log());
    assert_eq!(report.outcome, Outcome::Upgraded, "{report:?}");
    supervisor.wait_healthy();
    let stored: BTreeSet<String> = site.wallets().into_values().collect();
    assert_acknowledged_kept(&written, &stored, "healthy release");
    assert_eq!(written.refused, 0, "refused requests");
    assert!(
        written.unknown.is_empty(),
        "failed requests: {:?}",
        written.unknown
    );
    let by_b = answered_by(&written, B_VERSION);
    assert!(
        by_b > 0,
        "the new release answered nothing: the test proves nothing"
    );
    // Versions answer in one run: the old release's, then only the new one's.
    let first_b = written
        .answered_by
        .iter()
        .position(|v| v == B_VERSION)
        .unwrap();
    assert!(
        written.answered_by[first_b..]
            .iter()
            .all(|v| v == B_VERSION),
        "the old release answered after the new one"
    );
    eprintln!(
        "healthy release: {} writes, {by_b} by {B_VERSION}, none failed; longest wait {:.3} s",
        written.acknowledged.len(),
        written.longest_wait.as_secs_f64()
    );
    assert!(
        written.longest_wait < Duration::from_secs(health_timeout + 1),
        "a client waited {:?}",
        written.longest_wait
    );
}

/// A release that aborts 1 s after its first answer: its probes pass (they
/// are its first answers), it is committed, and from then on it crashes and
/// is restarted. Whatever it acknowledged between crashes is kept.
#[test]
fn a_release_that_crashes_after_its_first_request_loses_nothing() {
    let site = Site::with(Setup {
        offer: Offer::Faulty(Fault::AbortsAfterFirstRequest),
        health_timeout: 3,
        ..Setup::default()
    });
    let mut supervisor = site.supervisor();
    supervisor.wait_healthy();
    let writer = Writer::start(site.port, &site.token(), "w");
    std::thread::sleep(Duration::from_millis(300));
    let (out, report) = site.upgrade_json(&[]);
    // Long enough for the committed release to crash and come back.
    std::thread::sleep(Duration::from_millis(2500));
    let written = writer.stop();
    eprintln!(
        "crashing release: {:?} ({} writes acknowledged, {} by {B_VERSION}, {} unanswered)",
        report.outcome,
        written.acknowledged.len(),
        answered_by(&written, B_VERSION),
        written.unknown.len()
    );
    if report.outcome == Outcome::RolledBack {
        assert_eq!(
            answered_by(&written, B_VERSION),
            0,
            "answered before the commit"
        );
    } else {
        assert!(out.status.success(), "{out:?}\n{}", supervisor.log());
    }
    site.stop(supervisor);
    let wal = PathBuf::from(format!("{}-wal", site.dir.database().display()));
    let stored = written_names(&site.dir.database(), wal.exists().then_some(wal.as_path()));
    assert_acknowledged_kept(&written, &stored, "crashing release");
}

/// The standalone host probes the new daemon on a private listener: the
/// public port stays closed throughout, so nothing but the committed
/// release ever answers there.
#[test]
fn the_standalone_host_never_opens_the_public_port_to_an_uncommitted_release() {
    let site = Site::with(Setup {
        offer: Offer::Faulty(Fault::Unhealthy),
        health_timeout: 3,
        ..Setup::default()
    });
    let mut supervisor = site.supervisor();
    supervisor.wait_healthy();
    site.stop(supervisor);
    let writer = Writer::start(site.port, &site.token(), "w");
    let (out, report) = site.upgrade_json(&[]);
    let written = writer.stop();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert_eq!(report.outcome, Outcome::RolledBack, "{report:?}");
    assert!(
        written.acknowledged.is_empty(),
        "{} writes were answered on the public port, by {:?}",
        written.acknowledged.len(),
        written.answered_by.iter().collect::<BTreeSet<_>>()
    );
}

/// A small seeded generator for kill instants (the seed is printed, and
/// `WAIAAS_TEST_SEED` replays it).
pub(crate) struct Seeded(pub(crate) u64);

impl Seeded {
    pub(crate) fn new(what: &str) -> Self {
        let seed = std::env::var("WAIAAS_TEST_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_nanos() as u64
            });
        eprintln!("{what}: seed {seed} (WAIAAS_TEST_SEED={seed} replays it)");
        Self(seed | 1)
    }

    /// xorshift64*.
    pub(crate) fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n
    }
}

/// Kill -9 of the supervisor at 50 seeded random instants from step 7's
/// journal entry to well past the commit, while a writer writes: every
/// acknowledged write is kept, and an uncommitted release answered nobody.
#[test]
fn kill_9_at_random_instants_around_the_commit_loses_no_acknowledged_write() {
    let mut random = Seeded::new("kills around the commit");
    let mut problems = Vec::new();
    for round in 0..50 {
        let delay = Duration::from_millis(random.below(700));
        let point = KillPoint {
            what: format!("kill {} ms into step 7 (round {round})", delay.as_millis()),
            now: Box::new(|s, _| s == 7),
            delay,
            writes: true,
        };
        let site = Site::new();
        problems.extend(kill_during_upgrade(&site, &point, Upgrader::Supervisor));
    }
    assert!(problems.is_empty(), "{}", problems.join("\n\n"));
}

/// The new launcher frozen (SIGSTOP) with its daemon healthy on probation,
/// before the commit, until its handover deadline ends it: nothing it
/// started answered a client, and the rollback keeps every acknowledged write.
#[test]
fn a_new_launcher_frozen_past_its_handover_deadline_loses_no_acknowledged_write() {
    let problems: Vec<String> = [Handing::Upgrade, Handing::Rollback]
        .into_iter()
        .flat_map(|handing| stop_in_handover("handover-daemon-ready", false, handing, Stop::Freeze))
        .collect();
    assert!(problems.is_empty(), "{}", problems.join("\n\n"));
}
