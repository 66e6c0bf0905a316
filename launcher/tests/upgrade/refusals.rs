//! Refusals before any downtime, and one upgrade lock for every path.

use std::collections::BTreeSet;
use std::fs;
use std::io::Write;
use std::path::PathBuf;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use testkit::builds::B_VERSION;
use testkit::load::Writer;
use testkit::registry::Registry;
use testkit::run;
use testkit::supervisor::daemon_pid;
use waiaas_shared::admin::{Outcome, UpgradeReport};
use waiaas_shared::release::{platform_package, this_target};

use crate::handover::{answered_by, assert_acknowledged_kept};
use crate::releases::{a, big_database, releases};
use crate::site::{Setup, Site, names_in, spawn_logged, wait_child};

// ---------------------------------------------------------------------------
// Refusals before any downtime.

/// A tmpfs mounted for one test, unmounted on drop.
pub(crate) struct Tmpfs {
    pub(crate) path: PathBuf,
    pub(crate) _dir: tempfile::TempDir,
}

impl Tmpfs {
    pub(crate) fn mount(megabytes: u64) -> Result<Self, String> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().to_path_buf();
        let out = run(Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={megabytes}m,mode=0700"),
                "tmpfs",
            ])
            .arg(&path));
        if out.status.success() {
            Ok(Self { path, _dir: dir })
        } else {
            Err(format!("mount -t tmpfs failed: {}", out.stderr.trim()))
        }
    }

    pub(crate) fn free(&self) -> u64 {
        let stat = nix::sys::statvfs::statvfs(&self.path).unwrap();
        stat.blocks_available() as u64 * stat.fragment_size() as u64
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let out = run(Command::new("umount").arg(&self.path));
        if !out.status.success() {
            let _ = run(Command::new("umount").arg("-l").arg(&self.path));
        }
    }
}

#[test]
fn a_disk_too_full_for_the_backup_is_caught_before_the_daemon_stops() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: mounting a small tmpfs needs root");
        return;
    }
    let r = releases();
    let big = big_database();
    let disk = match Tmpfs::mount(512) {
        Ok(disk) => disk,
        Err(e) => {
            eprintln!("skipped: {e}");
            return;
        }
    };
    let site = Site::with(Setup {
        home: Some(disk.path.clone()),
        big_db: true,
        ..Setup::default()
    });
    let mut supervisor = site.supervisor();
    let status = supervisor.wait_healthy();
    let pid = daemon_pid(&status);
    let wallets = site.seed(&["treasury", "payroll"]);

    // Leave room for the download and the unpacked release (the preflight
    // fetches before it measures), but less than the database needs.
    let tarball = fs::metadata(&r.b.platform_tarball).unwrap().len();
    let unpacked: u64 = ["waiaas-launcher", "waiaas-daemon"]
        .iter()
        .map(|b| {
            fs::metadata(testkit::builds::b_bin_dir().join(b))
                .unwrap()
                .len()
        })
        .sum();
    let database = fs::metadata(big).unwrap().len();
    let leave = tarball + unpacked + (6 << 20);
    let free = disk.free();
    assert!(
        free > leave,
        "the tmpfs is too small: {free} free, {leave} wanted"
    );
    let mut filler = fs::File::create(disk.path.join("filler")).unwrap();
    let chunk = vec![0u8; 1 << 20];
    let mut left = free - leave;
    while left > 0 {
        let n = left.min(chunk.len() as u64) as usize;
        filler.write_all(&chunk[..n]).unwrap();
        left -= n as u64;
    }
    filler.sync_all().unwrap();
    drop(filler);
    let free_after_fetch = disk.free().saturating_sub(unpacked);
    assert!(
        free_after_fetch < database,
        "{free_after_fetch} bytes will be free, the database is {database}"
    );
    let before = site.snapshot();

    let (out, report) = site.upgrade_json(&[]);
    assert_eq!(out.status.code(), Some(1), "{out:?}\n{}", supervisor.log());
    assert_eq!(report.outcome, Outcome::Refused, "{report:?}");
    assert!(
        report.message.contains("not enough free disk"),
        "{}",
        report.message
    );

    let status = supervisor.wait_healthy();
    assert_eq!(daemon_pid(&status), pid, "the daemon was never stopped");
    assert_eq!(status.restarts, 0);
    let log = supervisor.log();
    assert!(
        !log.contains("upgrade step 2"),
        "step 2 never started:\n{log}"
    );
    let mut after = site.snapshot();
    // The verified download may stay in versions/ for the next attempt; nothing else changed.
    after.versions.remove(B_VERSION);
    assert_eq!(after, before);
    assert!(
        names_in(&site.dir.backups()).is_empty(),
        "no backup was started"
    );
    site.assert_fully_old(&wallets);
    drop(supervisor);
    drop(site);
}

#[test]
fn upgrade_refuses_in_a_container() {
    let site = Site::new();
    let before = site.snapshot();
    for args in [
        &["upgrade"][..],
        &["upgrade", "--rollback"],
        &["upgrade", "--json"],
    ] {
        let out = run(site.launcher(args).env("WAIAAS_CONTAINER", "1"));
        assert_eq!(out.status.code(), Some(2), "{args:?}: {out:?}");
        assert!(out.stderr.contains("pull the new image"), "{}", out.stderr);
    }
    assert_eq!(site.snapshot(), before);
    assert_eq!(
        site.registry.total_hits(),
        0,
        "not even the registry was asked"
    );
}

#[test]
fn two_concurrent_upgrades_the_second_is_refused() {
    // Through the supervisor: the second request is answered at once.
    let site = Site::with(Setup {
        big_db: true,
        ..Setup::default()
    });
    let mut supervisor = site.supervisor();
    supervisor.wait_healthy();
    let wallets = site.seed(&["treasury"]);
    let (mut first, out, err) =
        spawn_logged(site.launcher(&["upgrade", "--json"]), &site.home, "first");
    wait_for_journal(&site, 2, &mut first);
    let second = site.upgrade(&["--json"]);
    assert_eq!(second.status.code(), Some(1), "{second:?}");
    assert!(
        second
            .stderr
            .contains("another upgrade or rollback is in progress"),
        "{second:?}"
    );
    let status = wait_child(&mut first, Duration::from_secs(180), "the first upgrade");
    let report: UpgradeReport = serde_json::from_str(fs::read_to_string(&out).unwrap().trim())
        .unwrap_or_else(|e| panic!("{e}: {}", fs::read_to_string(&err).unwrap_or_default()));
    assert!(status.success(), "{report:?}");
    assert_eq!(report.outcome, Outcome::Upgraded);
    site.assert_fully_new(&wallets);
    drop(supervisor);

    // Standalone: the upgrade lock refuses the second, naming the first.
    let site = Site::with(Setup {
        big_db: true,
        ..Setup::default()
    });
    let mut supervisor = site.supervisor();
    supervisor.wait_healthy();
    let wallets = site.seed(&["treasury"]);
    site.stop(supervisor);
    let (mut first, out, err) =
        spawn_logged(site.launcher(&["upgrade", "--json"]), &site.home, "first");
    // Step 3 (backing up 100 MB) leaves time; no daemon answers then.
    wait_for_journal(&site, 3, &mut first);
    let (second, report) = site.upgrade_json(&[]);
    assert_eq!(second.status.code(), Some(1), "{second:?}");
    assert_eq!(report.outcome, Outcome::Refused);
    assert!(
        report
            .message
            .contains("another upgrade or rollback is in progress")
            && report.message.contains(&format!("pid {}", first.id())),
        "{}",
        report.message
    );
    let status = wait_child(&mut first, Duration::from_secs(180), "the first upgrade");
    let report: UpgradeReport = serde_json::from_str(fs::read_to_string(&out).unwrap().trim())
        .unwrap_or_else(|e| panic!("{e}: {}", fs::read_to_string(&err).unwrap_or_default()));
    assert!(status.success(), "{report:?}");
    let mut supervisor = site.supervisor();
    supervisor.wait_healthy();
    site.assert_fully_new(&wallets);
}

/// Waits until the journal records `step` (or later) while `child` runs.
pub(crate) fn wait_for_journal(site: &Site, step: u64, child: &mut Child) {
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        if site
            .journal()
            .and_then(|j| j["step"].as_u64())
            .is_some_and(|s| s >= step)
        {
            return;
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "the upgrade ended before step {step}"
        );
        assert!(Instant::now() < deadline, "step {step} never came");
        std::thread::sleep(Duration::from_millis(1));
    }
}

// One upgrade lock for every path; nothing served while a change is
// unfinished (SPEC §13).

/// `run` started while a standalone upgrade downloads (throttled here): it
/// waits for the upgrade's lock, saying so, and starts only once the upgrade
/// is done — the two never act at once, and every acknowledged write is kept.
#[test]
fn a_supervisor_started_during_a_standalone_upgrade_waits_for_it() {
    let r = releases();
    let site = Site::new();
    let mut supervisor = site.supervisor();
    supervisor.wait_healthy();
    let wallets = site.seed(&["treasury", "payroll"]);
    site.stop(supervisor);
    let token = site.token();
    // The download takes about 4 s.
    let tarball = fs::read(&r.b.platform_tarball).unwrap();
    let path = Registry::tarball_path(&platform_package(this_target().unwrap()), B_VERSION);
    let chunk = tarball.len() / 40 + 1;
    site.registry.serve(
        &path,
        testkit::registry::Reply::Trickle {
            body: tarball,
            chunk,
            every: Duration::from_millis(100),
        },
    );
    let (mut upgrade, out, err) =
        spawn_logged(site.launcher(&["upgrade", "--json"]), &site.home, "upgrade");
    let deadline = Instant::now() + Duration::from_secs(60);
    while site.registry.hits(&path) == 0 {
        assert!(upgrade.try_wait().unwrap().is_none(), "the upgrade ended");
        assert!(Instant::now() < deadline, "the download never began");
        std::thread::sleep(Duration::from_millis(10));
    }
    let mut supervisor = site.supervisor();
    let run_started = Instant::now();
    let writer = Writer::start(site.port, &token, "w");
    let status = wait_child(&mut upgrade, Duration::from_secs(180), "the upgrade");
    let waited = run_started.elapsed();
    let report: UpgradeReport = serde_json::from_str(fs::read_to_string(&out).unwrap().trim())
        .unwrap_or_else(|e| panic!("{e}: {}", fs::read_to_string(&err).unwrap_or_default()));
    assert!(status.success(), "{report:?}\n{}", supervisor.log());
    assert_eq!(report.outcome, Outcome::Upgraded, "{report:?}");
    supervisor.wait_healthy();
    std::thread::sleep(Duration::from_millis(300));
    let written = writer.stop();
    let log = supervisor.log();
    assert!(
        log.contains(&format!(
            "an upgrade without a supervisor (pid {}) is changing",
            upgrade.id()
        )),
        "the supervisor said it waited:\n{log}"
    );
    assert_eq!(
        answered_by(&written, a()),
        0,
        "the old release served while the upgrade ran:\n{log}"
    );
    assert!(
        answered_by(&written, B_VERSION) > 0,
        "nothing was written after the upgrade: the test proves nothing"
    );
    let stored: BTreeSet<String> = site
        .wallets()
        .into_values()
        .filter(|n| n.starts_with("w-"))
        .collect();
    assert_acknowledged_kept(&written, &stored, "a supervisor started mid-upgrade");
    eprintln!(
        "run waited {:.1} s for the standalone upgrade; then {} writes acknowledged, all by \
         {B_VERSION}, all kept",
        waited.as_secs_f64(),
        written.acknowledged.len()
    );
    let mut expected = wallets;
    expected.retain(|_, name| !name.starts_with("w-"));
    let mut after = site.wallets();
    after.retain(|_, name| !name.starts_with("w-"));
    assert_eq!(after, expected, "the wallets written before");
    assert_eq!(site.current().as_deref(), Some(B_VERSION));
    assert!(!site.dir.upgrade_journal().exists());
}

/// A standalone upgrade that finds a supervisor starting (its pid file held,
/// no admin socket yet) does not go ahead on its own, and says why.
#[test]
fn a_standalone_upgrade_refuses_while_a_supervisor_starts() {
    let site = Site::new();
    let before = site.snapshot();
    let starting =
        waiaas_shared::runlock::lock_run_file(&site.dir, &site.dir.launcher_pid()).unwrap();
    let (out, report) = site.upgrade_json(&[]);
    drop(starting);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert_eq!(report.outcome, Outcome::Refused, "{report:?}");
    assert!(
        report.message.contains(&format!(
            "a supervisor (pid {}) is starting",
            std::process::id()
        )),
        "{}",
        report.message
    );
    assert_eq!(site.snapshot(), before, "nothing changed");
    assert_eq!(
        site.registry.total_hits(),
        0,
        "not even the registry was asked"
    );
}
