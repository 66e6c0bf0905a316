//! The upgrade's steps from the command line: `check`, the seven journaled
//! steps, standalone and offline upgrades, and the watchdog fed meanwhile.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use rusqlite::{Connection, OpenFlags};

use testkit::builds::{B_SCHEMA, B_VERSION};
use testkit::registry::Registry;
use testkit::supervisor::{LogFile, Supervisor, daemon_pid, processes_mentioning};
use testkit::{hermetic, run};
use waiaas_shared::admin::Outcome;
use waiaas_shared::backup::Kind;
use waiaas_shared::release::{CLI_PACKAGE, platform_package, this_target};

use crate::releases::{A_SCHEMA, a, releases};
use crate::site::{DbDigest, Setup, Site, rendered_steps};

// ---------------------------------------------------------------------------
// Scenarios 7–11.

#[test]
fn scenario_07_check_reports_versions() {
    let site = Site::new();
    let before = site.snapshot();
    let out = site.upgrade(&["--check"]);
    assert!(out.status.success(), "{out:?}");
    assert!(
        out.stdout
            .contains(&format!("Update available: {} → {B_VERSION}", a())),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains("waiaas-launcher upgrade"),
        "{}",
        out.stdout
    );

    let out = site.upgrade(&["--check", "--json"]);
    assert!(out.status.success(), "{out:?}");
    let json: serde_json::Value = serde_json::from_str(out.stdout.trim()).unwrap();
    assert_eq!(
        json,
        serde_json::json!({"current": a(), "latest": B_VERSION, "updateAvailable": true,
            "deprecated": null})
    );
    // Only the packument was read: nothing downloaded, nothing changed.
    let tarball = Registry::tarball_path(&platform_package(this_target().unwrap()), B_VERSION);
    assert_eq!(site.registry.hits(&tarball), 0);
    assert_eq!(site.snapshot(), before);
}

/// A release withdrawn with `npm deprecate` is named as such by `--check`:
/// automatic upgrades skip it, a manual `--to` still installs it.
#[test]
fn check_says_why_a_deprecated_release_is_withheld() {
    let site = Site::new();
    let before = site.snapshot();
    site.registry
        .deprecate(CLI_PACKAGE, B_VERSION, "loses \"writes\" on ARM; use 1.9.1");
    let out = site.upgrade(&["--check"]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        out.stdout.trim(),
        format!(
            "Update available: {} → {B_VERSION}, but {B_VERSION} is deprecated on the registry \
             (\"loses \\\"writes\\\" on ARM; use 1.9.1\"): automatic upgrades skip it; \
             `waiaas-launcher upgrade --to {B_VERSION}` still installs it if you mean to",
            a()
        ),
    );
    let out = site.upgrade(&["--check", "--json"]);
    let json: serde_json::Value = serde_json::from_str(out.stdout.trim()).unwrap();
    assert_eq!(json["deprecated"], "loses \"writes\" on ARM; use 1.9.1");
    assert_eq!(json["updateAvailable"], true);

    // The running release withdrawn: up to date, and told so.
    site.registry.set_tag(CLI_PACKAGE, "latest", a());
    site.registry.deprecate(CLI_PACKAGE, a(), "superseded");
    let out = site.upgrade(&["--check"]);
    assert!(out.status.success(), "{out:?}");
    assert!(out.stdout.contains("Up to date"), "{}", out.stdout);
    assert!(
        out.stdout.contains(&format!(
            "{} is deprecated on the registry (\"superseded\")",
            a()
        )),
        "{}",
        out.stdout
    );
    assert_eq!(site.snapshot(), before, "a check changes nothing");
}

#[test]
fn scenario_08_upgrade_runs_all_seven_steps() {
    let site = Site::new();
    let mut supervisor = site.supervisor();
    supervisor.wait_healthy();
    let wallets = site.seed(&["treasury", "payroll", "ops"]);
    site.assert_fully_old(&wallets);

    let out = site.upgrade(&[]);
    assert!(out.status.success(), "{out:?}\n{}", supervisor.log());
    let steps = rendered_steps(&out.stderr);
    let mut distinct = steps.clone();
    distinct.dedup();
    assert_eq!(
        distinct,
        (1..=7).collect::<Vec<u8>>(),
        "progress:\n{}",
        out.stderr
    );
    assert!(out.stderr.contains("[7/7]"), "{}", out.stderr);
    assert!(
        out.stdout
            .contains(&format!("Upgraded {} → {B_VERSION}", a())),
        "{}",
        out.stdout
    );

    site.assert_fully_new(&wallets);
    assert_eq!(
        fs::read_link(site.dir.current()).unwrap(),
        Path::new("versions").join(B_VERSION)
    );
    let status = supervisor.wait_healthy();
    assert_eq!(status.daemon.as_ref().unwrap().version, B_VERSION);
    assert_eq!(status.daemon.as_ref().unwrap().schema_version, B_SCHEMA);
    // B's schema is really in the database: the new column and index.
    let conn =
        Connection::open_with_flags(site.dir.database(), OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
    let labels: i64 = conn
        .query_row("SELECT count(*) FROM wallets WHERE label = ''", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(labels as usize, wallets.len());
    // And the new version keeps working: a write through B's API.
    site.create_wallet("after-upgrade");
    assert_eq!(site.wallets().len(), wallets.len() + 1);
}

/// A newer launcher that is a source build — B's own `cargo build` output,
/// no `release.json` beside it — is the operator's own binary: `upgrade` run
/// from it moves the installation to it (through the running old supervisor,
/// which then becomes it), unsigned, saying so, recording its files' hashes
/// (`installed.json`) — journaled, backed up, with no download; and `run`
/// from it does the same before it serves.
#[test]
fn a_newer_source_build_without_release_json_is_accepted_saying_so() {
    let b_launcher = testkit::builds::b_bin_dir().join("waiaas-launcher");
    assert!(!testkit::builds::b_bin_dir().join("release.json").exists());
    let b_command = |site: &Site, args: &[&str]| {
        let mut command = hermetic(Command::new(&b_launcher), &site.home);
        command.args(args).arg("--data-dir").arg(site.dir.root());
        command
    };

    // `upgrade`, through the old supervisor.
    let site = Site::new();
    let mut supervisor = site.supervisor();
    supervisor.wait_healthy();
    let wallets = site.seed(&["treasury", "payroll"]);
    let out = run(&mut b_command(&site, &["upgrade"]));
    assert!(out.status.success(), "{out:?}\n{}", supervisor.log());
    assert!(
        out.stderr
            .contains("without a signed release.json, accepted as your own")
            && out.stderr.contains("accepting it as your own build"),
        "{}",
        out.stderr
    );
    let status = supervisor.wait_healthy();
    assert_eq!(status.launcher_version, B_VERSION);
    let exe = fs::read_link(format!("/proc/{}/exe", status.launcher_pid)).unwrap();
    assert_eq!(exe, site.dir.version(B_VERSION).join("waiaas-launcher"));
    site.assert_fully_new(&wallets);
    let installed = site.dir.version(B_VERSION);
    assert!(installed.join("installed.json").is_file());
    assert!(!installed.join("release.json").exists());
    assert_eq!(site.registry.total_hits(), 0, "nothing was downloaded");
    assert!(
        site.backups()
            .iter()
            .any(|(_, m)| m.kind == Kind::PreUpgrade),
        "a pre-upgrade backup"
    );
    // The way back checks the recorded hashes and works.
    let (out, report) = site.upgrade_json(&["--rollback"]);
    assert!(out.status.success(), "{out:?}\n{}", supervisor.log());
    assert_eq!(report.outcome, Outcome::Restored, "{report:?}");
    site.assert_fully_old(&wallets);
    drop(supervisor);

    // `run` from the source build: it moves the installation before it serves.
    let site = Site::new();
    let mut supervisor = site.supervisor();
    supervisor.wait_healthy();
    let wallets = site.seed(&["treasury"]);
    site.stop(supervisor);
    let mut supervisor = Supervisor::spawn(
        b_command(&site, &["run"]),
        site.home.join("source-build.stderr"),
        site.dir.launcher_socket(),
        LogFile::Fresh,
    );
    let status = supervisor.wait_healthy();
    assert_eq!(status.launcher_version, B_VERSION);
    assert_eq!(status.daemon.as_ref().unwrap().version, B_VERSION);
    let log = supervisor.log();
    assert!(
        log.contains("accepted as the operator's own") && log.contains("installed.json"),
        "{log}"
    );
    // /health answers just before the commit.
    let deadline = Instant::now() + Duration::from_secs(30);
    while site.dir.upgrade_journal().exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    site.assert_fully_new(&wallets);
    assert_eq!(site.registry.total_hits(), 0, "nothing was downloaded");
}

#[test]
fn standalone_upgrade_without_a_supervisor() {
    let site = Site::new();
    let mut supervisor = site.supervisor();
    supervisor.wait_healthy();
    let wallets = site.seed(&["treasury", "payroll"]);
    site.stop(supervisor);
    assert!(site.health().is_none(), "nothing serves");

    let (out, report) = site.upgrade_json(&[]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(report.outcome, Outcome::Upgraded, "{report:?}");
    assert_eq!(report.from.as_deref(), Some(a()));
    assert_eq!(report.to.as_deref(), Some(B_VERSION));
    assert!(
        report.message.contains("left stopped"),
        "{}",
        report.message
    );
    assert_eq!(site.current().as_deref(), Some(B_VERSION));
    assert!(!site.dir.upgrade_journal().exists());
    assert_eq!(DbDigest::of(&site.dir.database()).schema_version, B_SCHEMA);
    assert!(site.health().is_none(), "the daemon is left stopped");
    assert!(
        processes_mentioning(site.dir.root()).is_empty(),
        "the new daemon the engine started for its health check is gone"
    );

    let mut supervisor = site.supervisor();
    supervisor.wait_healthy();
    site.assert_fully_new(&wallets);
}

#[test]
fn an_installation_never_started_is_upgraded_and_rolled_back() {
    let site = Site::new();
    assert!(!site.dir.database().exists(), "init makes no database");

    let (out, report) = site.upgrade_json(&[]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(report.outcome, Outcome::Upgraded, "{report:?}");
    assert!(
        report.message.contains("never been started")
            && report.message.contains("config.toml alone"),
        "{}",
        report.message
    );
    let backup = PathBuf::from(report.backup.expect("a backup"));
    assert!(backup.join("config.toml").is_file());
    assert!(
        !backup.join("waiaas.db").exists(),
        "there was no database to copy"
    );
    assert_eq!(site.current().as_deref(), Some(B_VERSION));
    assert_eq!(DbDigest::of(&site.dir.database()).schema_version, B_SCHEMA);

    // Back to the state before: A, and no database (as before the upgrade).
    let (out, report) = site.upgrade_json(&["--rollback"]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(report.outcome, Outcome::Restored, "{report:?}");
    assert_eq!(site.current().as_deref(), Some(a()));
    // "No database" was restored; the check start of A made a fresh one.
    assert_eq!(DbDigest::of(&site.dir.database()).schema_version, A_SCHEMA);
    let mut supervisor = site.supervisor();
    let status = supervisor.wait_healthy();
    assert_eq!(status.daemon.unwrap().version, a());
    assert!(site.wallets().is_empty());
}

#[test]
fn scenario_11_already_latest_says_so() {
    let site = Site::with(Setup {
        latest_is_a: true,
        ..Setup::default()
    });
    let mut supervisor = site.supervisor();
    let pid = daemon_pid(&supervisor.wait_healthy());
    let wallets = site.seed(&["treasury"]);
    let before = site.snapshot();

    let out = site.upgrade(&[]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(out.stdout.trim(), format!("Already up to date ({})", a()));
    let (out, report) = site.upgrade_json(&[]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(report.outcome, Outcome::UpToDate);

    assert_eq!(site.snapshot(), before);
    assert_eq!(
        daemon_pid(&supervisor.wait_healthy()),
        pid,
        "the daemon was not touched"
    );
    site.assert_fully_old(&wallets);
}

// systemd's watchdog during an upgrade.

/// The unit runs the launcher with `WatchdogSec=` (packaging/systemd): if the
/// pings stop for that long, systemd kills the launcher — mid-upgrade, which
/// the recovery then rolls back, so an upgrade longer than the watchdog could
/// never succeed. The pings must go on while the engine works.
#[test]
fn systemd_watchdog_is_fed_during_an_upgrade() {
    let site = Site::with(Setup {
        big_db: true,
        ..Setup::default()
    });
    let path = site.home.join("notify.sock");
    let socket = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    // Pings every 250 ms are due; systemd would act after 500 ms of silence
    // (the unit's 300 s scaled down to an upgrade of about a second).
    let watchdog = Duration::from_millis(500);
    let usec = watchdog.as_micros().to_string();
    let mut supervisor = site.supervisor_with(&[
        ("NOTIFY_SOCKET", path.to_str().unwrap()),
        ("WATCHDOG_USEC", &usec),
    ]);
    supervisor.wait_healthy();
    let wallets = site.seed(&["treasury"]);

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let pings = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut pings = Vec::new();
            let mut buf = [0u8; 4096];
            let deadline = Instant::now() + Duration::from_secs(300);
            while !stop.load(Ordering::SeqCst) && Instant::now() < deadline {
                if let Ok(n) = socket.recv(&mut buf)
                    && String::from_utf8_lossy(&buf[..n])
                        .lines()
                        .any(|l| l == "WATCHDOG=1")
                {
                    pings.push(Instant::now());
                }
            }
            pings
        })
    };
    std::thread::sleep(Duration::from_millis(1500));
    let started = Instant::now();
    let (out, report) = site.upgrade_json(&[]);
    let ended = Instant::now();
    std::thread::sleep(Duration::from_millis(1500));
    stop.store(true, Ordering::SeqCst);
    let pings = pings.join().unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(report.outcome, Outcome::Upgraded);
    site.assert_fully_new(&wallets);

    let mut times = vec![started];
    times.extend(pings.iter().copied().filter(|t| *t > started && *t < ended));
    times.push(ended);
    let longest = times
        .windows(2)
        .map(|w| w[1] - w[0])
        .max()
        .unwrap_or_default();
    eprintln!(
        "upgrade took {:?}; {} pings during it; longest silence {longest:?}",
        ended - started,
        times.len() - 2
    );
    assert!(
        longest < watchdog,
        "no WATCHDOG=1 for {longest:?} during a {:?} upgrade (WATCHDOG_USEC = {watchdog:?}): \
         systemd would have killed the launcher mid-upgrade",
        ended - started
    );
}

/// `--from FILE`: an air-gapped site upgrades from the platform tarball on
/// disk, with every check but the registry's integrity field, and no registry.
#[test]
fn offline_upgrade_from_a_tarball_on_disk() {
    let site = Site::new();
    let mut supervisor = site.supervisor();
    supervisor.wait_healthy();
    let wallets = site.seed(&["treasury"]);
    site.stop(supervisor);
    // No registry at all: a closed loopback port.
    let config = fs::read_to_string(site.dir.config()).unwrap();
    let offline: String = config
        .lines()
        .map(|line| {
            if line.trim_start().starts_with("registry") {
                "registry = \"http://127.0.0.1:9/\"".to_string()
            } else {
                line.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    fs::write(site.dir.config(), offline).unwrap();

    let tarball = releases().b.platform_tarball.to_string_lossy().into_owned();
    let (out, report) = site.upgrade_json(&["--from", &tarball]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(report.outcome, Outcome::Upgraded, "{report:?}");
    assert_eq!(site.current().as_deref(), Some(B_VERSION));

    let mut supervisor = site.supervisor();
    supervisor.wait_healthy();
    site.assert_fully_new(&wallets);
}
