//! Rollbacks: `--rollback`, automatic ones after a failure past the
//! preflight, which backup is chosen, and a rollback that fails.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rusqlite::{Connection, OpenFlags};

use testkit::builds::{B_SCHEMA, B_VERSION, Fault};
use testkit::load::Writer;
use testkit::run;
use testkit::supervisor::daemon_pid;
use waiaas_shared::admin::{Outcome, UpgradeReport};
use waiaas_shared::backup::{Kind, MANIFEST as BACKUP_MANIFEST, Manifest};
use waiaas_shared::fsutil::sha256_file;
use waiaas_shared::time::UtcTime;

use crate::handover::{answered_by, assert_acknowledged_kept};
use crate::refusals::wait_for_journal;
use crate::releases::{A_SCHEMA, a};
use crate::site::{
    DbDigest, Offer, Setup, Site, assert_no_leftovers, names_in, spawn_logged,
    upgrade_while_writing, wait_child, written_names,
};

#[test]
fn scenario_10_rollback_restores_the_previous_state() {
    let site = Site::new();
    let mut supervisor = site.supervisor();
    supervisor.wait_healthy();
    let wallets = site.seed(&["treasury", "payroll"]);
    let (out, report) = site.upgrade_json(&[]);
    assert!(out.status.success(), "{out:?}\n{}", supervisor.log());
    let backup = PathBuf::from(report.backup.unwrap());
    site.assert_fully_new(&wallets);
    // A change made on the new version, after the backup.
    let later = site.create_wallet("made-on-1.9.0");

    let out = site.upgrade(&["--rollback"]);
    assert!(out.status.success(), "{out:?}\n{}", supervisor.log());
    assert!(out.stdout.contains("not in it"), "{}", out.stdout);
    assert!(
        out.stdout.contains(&format!("{B_VERSION} → {}", a())),
        "{}",
        out.stdout
    );

    site.assert_fully_old(&wallets);
    assert!(!site.wallets().contains_key(&later));
    // The restored files are the backup's, byte for byte (the daemon's writes
    // since its start sit in the WAL, beside the main file).
    assert_eq!(
        fs::read(site.dir.database()).unwrap(),
        fs::read(backup.join("waiaas.db")).unwrap(),
        "data/waiaas.db is the backup's"
    );
    assert_eq!(
        fs::read(site.dir.config()).unwrap(),
        fs::read(backup.join("config.toml")).unwrap()
    );
    // The state just before the rollback is saved.
    let saved: Vec<_> = site
        .backups()
        .into_iter()
        .filter(|(_, m)| m.kind == Kind::PreRollback)
        .collect();
    assert_eq!(saved.len(), 1, "{:?}", site.backups());
    let (path, manifest) = &saved[0];
    assert!(
        path.file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with(&format!("pre-rollback-{B_VERSION}-"))
    );
    assert_eq!(manifest.schema_version, B_SCHEMA);
    let conn = Connection::open_with_flags(
        format!("file:{}?immutable=1", path.join("waiaas.db").display()),
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_URI,
    )
    .unwrap();
    let kept: i64 = conn
        .query_row(
            "SELECT count(*) FROM wallets WHERE id = ?1",
            [&later],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(kept, 1, "the later change is in the pre-rollback backup");
    let status = supervisor.wait_healthy();
    assert_eq!(status.daemon.unwrap().version, a());
}

/// `--rollback` run twice (finding 6 of issue 16): the second would restore
/// again the backup the first restored, dropping every write since. It is
/// refused, naming that backup, and every write acknowledged (201) since the
/// first rollback is still stored and served.
#[test]
fn a_second_rollback_is_refused_and_drops_no_write() {
    let site = Site::new();
    let mut supervisor = site.supervisor();
    supervisor.wait_healthy();
    let wallets = site.seed(&["treasury"]);
    let (out, report) = site.upgrade_json(&[]);
    assert!(out.status.success(), "{out:?}\n{}", supervisor.log());
    let backup = report.backup.expect("a pre-upgrade backup");
    let (out, report) = site.upgrade_json(&["--rollback"]);
    assert!(out.status.success(), "{out:?}\n{}", supervisor.log());
    assert_eq!(report.outcome, Outcome::Restored, "{report:?}");
    site.assert_fully_old(&wallets);

    let token = site.token();
    let acknowledged: BTreeSet<String> = (0..25)
        .map(|i| {
            let name = format!("after-the-rollback-{i}");
            testkit::create_wallet(site.port, &token, &name);
            name
        })
        .collect();
    let (out, report) = site.upgrade_json(&["--rollback"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}\n{}", supervisor.log());
    assert_eq!(report.outcome, Outcome::Refused, "{report:?}");
    assert!(report.message.contains(&backup), "{report:?}");
    let stored: BTreeSet<String> = site.wallets().into_values().collect();
    let lost: Vec<&String> = acknowledged.difference(&stored).collect();
    assert!(lost.is_empty(), "acknowledged, then lost: {lost:?}");
    assert_eq!(site.current().as_deref(), Some(a()));
    let status = supervisor.wait_healthy();
    assert_eq!(status.daemon.unwrap().version, a());

    // The operator said no to B: automatic upgrades skip it from now on
    // (SPEC §13), `status` says so, and `--forget` lifts it, once.
    let auto = status.auto.expect("status names the automatic upgrades");
    assert_eq!(auto.policy, "off");
    assert!(
        auto.quarantined
            .iter()
            .any(|q| q.version == B_VERSION && q.reason.contains("--rollback")),
        "{auto:?}"
    );
    let out = site.upgrade(&["--forget", B_VERSION]);
    assert!(out.status.success(), "{out:?}");
    assert!(out.stdout.contains("no longer quarantined"), "{out:?}");
    let out = site.upgrade(&["--forget", B_VERSION]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(out.stderr.contains("is not quarantined"), "{out:?}");
    let status = supervisor.status().unwrap();
    assert!(status.auto.unwrap().quarantined.is_empty());
}

// Failures after the preflight roll back.

/// Upgrades through a supervisor and expects a clean rollback at `step`.
pub(crate) fn expect_rollback(
    setup: Setup,
    step: u8,
    wallets_named: &[&str],
) -> (Site, UpgradeReport, Duration) {
    let site = Site::with(setup);
    let mut supervisor = site.supervisor();
    supervisor.wait_healthy();
    let wallets = site.seed(wallets_named);
    let before = DbDigest::of(&site.dir.database());
    let config = fs::read(site.dir.config()).unwrap();

    let started = Instant::now();
    let (out, report) = site.upgrade_json(&[]);
    let took = started.elapsed();
    assert_eq!(out.status.code(), Some(1), "{out:?}\n{}", supervisor.log());
    assert_eq!(report.outcome, Outcome::RolledBack, "{report:?}");
    let failed = report.failed_step.clone().unwrap_or_default();
    assert!(
        failed.starts_with(&format!("{step} ")),
        "failed step {failed:?}, expected {step}"
    );
    assert!(report.manual_steps.is_empty());

    site.assert_fully_old(&wallets);
    assert_eq!(
        DbDigest::of(&site.dir.database()),
        before,
        "the database is as before"
    );
    assert_eq!(fs::read(site.dir.config()).unwrap(), config);
    let status = supervisor.wait_healthy();
    assert_eq!(status.daemon.as_ref().unwrap().version, a());
    drop(supervisor);
    (site, report, took)
}

#[test]
fn a_failing_migration_rolls_back() {
    // Two wallets named alike: B's unique index on wallets(name) cannot be made.
    let (_site, report, _) = expect_rollback(Setup::default(), 5, &["treasury", "treasury", "ops"]);
    assert!(
        report.message.contains("migration 17"),
        "{}",
        report.message
    );
    assert!(report.message.contains("UNIQUE"), "{}", report.message);
}

#[test]
fn a_new_daemon_that_crashes_on_start_rolls_back() {
    let setup = Setup {
        offer: Offer::Faulty(Fault::Crash),
        ..Setup::default()
    };
    let (_site, report, _) = expect_rollback(setup, 7, &["treasury", "payroll"]);
    assert!(
        report.message.contains("exited with 1"),
        "{}",
        report.message
    );
}

/// An automatic rollback puts the live backup back whole: the writes made
/// while its main file was copied are in its WAL, and all are there again.
#[test]
fn an_automatic_rollback_restores_the_writes_in_the_backups_wal() {
    let (site, mut supervisor, out, report, written) =
        upgrade_while_writing(Offer::Faulty(Fault::Crash));
    assert_eq!(out.status.code(), Some(1), "{out:?}\n{}", supervisor.log());
    assert_eq!(report.outcome, Outcome::RolledBack, "{report:?}");
    let backup = PathBuf::from(report.backup.expect("a backup"));
    let manifest: Manifest =
        serde_json::from_slice(&fs::read(backup.join(BACKUP_MANIFEST)).unwrap()).unwrap();
    assert!(
        manifest.files.contains_key("waiaas.db-wal"),
        "the backup holds a WAL of recent writes: {manifest:?}"
    );
    let in_wal = written_names(
        &backup.join("waiaas.db"),
        Some(&backup.join("waiaas.db-wal")),
    )
    .difference(&written_names(&backup.join("waiaas.db"), None))
    .count();
    supervisor.wait_healthy();
    let now = site.wallets();
    let names: BTreeSet<&String> = now.values().collect();
    let lost: Vec<&String> = written
        .acknowledged
        .iter()
        .filter(|n| !names.contains(n))
        .collect();
    assert!(lost.is_empty(), "acknowledged, then lost: {lost:?}");
    eprintln!(
        "{} writes acknowledged, {in_wal} of them only in the backup's WAL, all back after the rollback",
        written.acknowledged.len()
    );
    assert!(
        in_wal > 0,
        "no write reached the backup's WAL: the test proves nothing"
    );
    site.assert_fully_old(&now);
    assert_no_leftovers(&site);
}

#[test]
fn a_new_daemon_that_never_becomes_healthy_rolls_back() {
    let setup = Setup {
        offer: Offer::Faulty(Fault::Hang),
        health_timeout: 3,
        ..Setup::default()
    };
    let (_site, report, took) = expect_rollback(setup, 7, &["treasury", "payroll"]);
    eprintln!(
        "a hanging daemon was given up on and rolled back in {took:?}: {}",
        report.message
    );
    // `health_timeout` is the time the new daemon has (SPEC §3): it is given
    // up on after about 3 s, not after the supervisor's own 10 s hello timeout.
    assert!(took < Duration::from_secs(3 + 6), "took {took:?}");
}

#[test]
fn a_hung_migration_fails_step_5_at_its_deadline_and_rolls_back() {
    let setup = Setup {
        offer: Offer::Faulty(Fault::HangMigrate),
        migrate_timeout: 3,
        ..Setup::default()
    };
    let (_site, report, took) = expect_rollback(setup, 5, &["treasury", "payroll"]);
    eprintln!("a hung migrate was killed and rolled back in {took:?}");
    assert!(
        report.message.contains("did not finish within 3s"),
        "{}",
        report.message
    );
    assert!(took < Duration::from_secs(3 + 10), "took {took:?}");
}

#[test]
fn a_tampered_package_changes_nothing() {
    let site = Site::with(Setup {
        tamper: true,
        ..Setup::default()
    });
    let mut supervisor = site.supervisor();
    let pid = daemon_pid(&supervisor.wait_healthy());
    let wallets = site.seed(&["treasury"]);
    let before = site.snapshot();

    let (out, report) = site.upgrade_json(&[]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert_eq!(report.outcome, Outcome::Refused, "{report:?}");
    assert!(report.message.contains("integrity"), "{}", report.message);
    let versions = names_in(&site.dir.versions());
    assert_eq!(
        versions,
        BTreeSet::from([a().to_string()]),
        "no 1.9.0, no leftovers"
    );
    assert_eq!(site.snapshot(), before);
    let status = supervisor.wait_healthy();
    assert_eq!(daemon_pid(&status), pid, "the daemon was never stopped");
    assert_eq!(status.restarts, 0);
    site.assert_fully_old(&wallets);
}

// Backups in order.

/// A backup folder as the engine writes it: real copies, a real manifest;
/// without a `sequence`, as releases before it wrote them.
pub(crate) fn fabricate_backup(
    site: &Site,
    from: &str,
    (created, sequence): (UtcTime, Option<u64>),
    database: &Path,
    schema: u32,
) -> PathBuf {
    let path = site
        .dir
        .backups()
        .join(format!("pre-upgrade-{from}-{}", created.compact()));
    fs::create_dir_all(&path).unwrap();
    fs::copy(database, path.join("waiaas.db")).unwrap();
    fs::copy(site.dir.config(), path.join("config.toml")).unwrap();
    let files = ["waiaas.db", "config.toml"]
        .map(|f| (f.to_string(), sha256_file(&path.join(f)).unwrap()))
        .into();
    let manifest = Manifest {
        kind: Kind::PreUpgrade,
        from_version: from.to_string(),
        to_version: "9.9.9".to_string(),
        schema_version: schema,
        sequence,
        created_at: created.rfc3339(),
        files,
        sizes: Default::default(),
        wal_copied_live: None,
    };
    fs::write(
        path.join(BACKUP_MANIFEST),
        serde_json::to_vec_pretty(&manifest).unwrap(),
    )
    .unwrap();
    path
}

/// A consistent copy of the live database, with one more wallet named `marker`.
pub(crate) fn copy_with_marker(site: &Site, to: &Path, marker: &str) {
    let _ = fs::remove_file(to);
    let conn = Connection::open(site.dir.database()).unwrap();
    conn.busy_timeout(Duration::from_secs(10)).unwrap();
    conn.execute("VACUUM INTO ?1", [to.to_string_lossy()])
        .unwrap();
    drop(conn);
    let copy = Connection::open(to).unwrap();
    copy.execute(
        "INSERT INTO wallets (id, name, chain, network, public_key, status, created_at, updated_at)
         VALUES (?1, ?1, 'solana', 'devnet', ?1, 'ACTIVE', 1700000000, 1700000000)",
        [marker],
    )
    .unwrap();
}

#[test]
fn backups_are_chosen_by_sequence_not_time_or_name() {
    let day = 86_400_000;
    let site = Site::with(Setup {
        keep_backups: 2,
        ..Setup::default()
    });
    let mut supervisor = site.supervisor();
    supervisor.wait_healthy();
    let wallets = site.seed(&["treasury"]);
    let scratch = site.home.join("scratch");
    fs::create_dir_all(&scratch).unwrap();

    // Retention: three backups of older releases (no sequence) whose name
    // order is not their time order.
    let now = UtcTime::now().unix_seconds() * 1000;
    let db16 = scratch.join("16.db");
    copy_with_marker(&site, &db16, "from-an-old-backup");
    let rc = fabricate_backup(
        &site,
        "2.0.0-rc.1",
        (UtcTime::from_unix_ms(now - 3 * day), None),
        &db16,
        A_SCHEMA,
    );
    let ten = fabricate_backup(
        &site,
        "1.10.0",
        (UtcTime::from_unix_ms(now - 2 * day), None),
        &db16,
        A_SCHEMA,
    );
    let nine = fabricate_backup(
        &site,
        "1.9.0",
        (UtcTime::from_unix_ms(now - day), None),
        &db16,
        A_SCHEMA,
    );
    // The upgrade adds pre-upgrade-1.8.1 (step 3) and prunes to 2: the two
    // oldest by time go (2.0.0-rc.1 and 1.10.0), though 1.10.0 sorts first by
    // name. Step 5 migrates with --no-backup, so no pre-migrate backup joins.
    let (out, report) = site.upgrade_json(&[]);
    assert!(out.status.success(), "{out:?}\n{}", supervisor.log());
    site.assert_fully_new(&wallets);
    let left: BTreeSet<PathBuf> = site.backups().into_iter().map(|(p, _)| p).collect();
    assert!(
        !left.contains(&rc) && !left.contains(&ten),
        "the oldest by time are pruned: {left:?}"
    );
    assert!(left.contains(&nine), "{left:?}");
    assert!(
        left.contains(&PathBuf::from(report.backup.unwrap())),
        "{left:?}"
    );
    assert_eq!(left.len(), 2, "{left:?}");

    // Rollback: the newest by sequence wins, though its created_at is the
    // oldest (a clock that stepped back), 2.0.0-rc.1 sorts last by name and is
    // the highest version, and 1.10.0 is above 1.9.0. (It is of A: a backup
    // of the version running is one already restored, refused.)
    std::thread::sleep(Duration::from_millis(1100));
    let db17 = scratch.join("17.db");
    copy_with_marker(&site, &db17, "from-an-older-backup");
    let newest_db = scratch.join("16-newest.db");
    fs::copy(&db16, &newest_db).unwrap();
    Connection::open(&newest_db)
        .unwrap()
        .execute(
            "INSERT INTO wallets (id, name, chain, network, public_key, status, created_at, updated_at)
             VALUES (?1, ?1, 'solana', 'devnet', ?1, 'ACTIVE', 1700000000, 1700000000)",
            ["from-the-newest-backup"],
        )
        .unwrap();
    let now = UtcTime::now().unix_seconds() * 1000;
    fabricate_backup(
        &site,
        "2.0.0-rc.1",
        (UtcTime::from_unix_ms(now), Some(1000)),
        &db17,
        B_SCHEMA,
    );
    fabricate_backup(
        &site,
        "1.10.0",
        (UtcTime::from_unix_ms(now + day), Some(1001)),
        &db17,
        B_SCHEMA,
    );
    let stepped_back = UtcTime::from_unix_ms(now - 3 * day);
    let newest = fabricate_backup(&site, a(), (stepped_back, Some(1002)), &newest_db, A_SCHEMA);
    let (out, report) = site.upgrade_json(&["--rollback"]);
    assert!(out.status.success(), "{out:?}\n{}", supervisor.log());
    assert_eq!(report.outcome, Outcome::Restored);
    assert_eq!(
        report.backup.as_deref(),
        Some(newest.to_string_lossy().as_ref())
    );
    let mut expected = wallets.clone();
    for marker in ["from-an-old-backup", "from-the-newest-backup"] {
        expected.insert(marker.into(), marker.into());
    }
    site.assert_fully_old(&expected);
}

/// A rollback that fails (the backup found damaged when it is restored)
/// leaves the service refused: no daemon serves the migrated database while
/// the journal exists, `status` says why and what to do, and once the cause
/// is fixed `restart` retries the rollback — every acknowledged write kept.
#[test]
fn a_failed_rollback_leaves_the_service_refused_until_it_is_retried() {
    let site = Site::with(Setup {
        offer: Offer::Faulty(Fault::Unhealthy),
        health_timeout: 3,
        ..Setup::default()
    });
    let mut supervisor = site.supervisor();
    supervisor.wait_healthy();
    site.seed(&["treasury", "payroll"]);
    let writer = Writer::start(site.port, &site.token(), "w");
    let (mut upgrade, out, err) =
        spawn_logged(site.launcher(&["upgrade", "--json"]), &site.home, "upgrade");
    wait_for_journal(&site, 4, &mut upgrade);
    let backup = PathBuf::from(
        site.journal().unwrap()["backup"]
            .as_str()
            .expect("step 4 names the backup"),
    );
    let db = backup.join("waiaas.db");
    let original = fs::read(&db).unwrap();
    let mut damaged = original.clone();
    let middle = damaged.len() / 2;
    damaged[middle] ^= 0x01;
    fs::write(&db, &damaged).unwrap();

    wait_child(&mut upgrade, Duration::from_secs(180), "the upgrade");
    let report: UpgradeReport = serde_json::from_str(fs::read_to_string(&out).unwrap().trim())
        .unwrap_or_else(|e| panic!("{e}: {}", fs::read_to_string(&err).unwrap_or_default()));
    assert_eq!(report.outcome, Outcome::RollbackFailed, "{report:?}");
    // For a while: nothing serves, the service is refused and says why.
    let until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < until {
        let status = supervisor.status().expect("the supervisor answers");
        assert!(site.dir.upgrade_journal().exists(), "the journal is kept");
        assert_eq!(status.state, "refused", "{status:?}\n{}", supervisor.log());
        assert!(status.daemon.is_none(), "a daemon runs: {status:?}");
        let refused = status.refused.unwrap_or_default();
        assert!(
            refused.contains("is unfinished")
                && refused.contains("damaged")
                && refused.contains("waiaas-launcher restart"),
            "{refused}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let shown = run(&mut site.launcher(&["status"]));
    assert!(
        shown.stdout.contains("refused") && shown.stdout.contains("retries the rollback"),
        "{shown:?}"
    );

    // The cause fixed, `restart` retries the rollback; the old release serves.
    fs::write(&db, &original).unwrap();
    let restarted = run(&mut site.launcher(&["restart"]));
    assert!(
        restarted.status.success(),
        "{restarted:?}\n{}",
        supervisor.log()
    );
    supervisor.wait_healthy();
    std::thread::sleep(Duration::from_millis(300));
    let written = writer.stop();
    assert_eq!(
        answered_by(&written, B_VERSION),
        0,
        "the unfinished release answered clients"
    );
    let stored: BTreeSet<String> = site
        .wallets()
        .into_values()
        .filter(|n| n.starts_with("w-"))
        .collect();
    assert_acknowledged_kept(&written, &stored, "a failed rollback, retried");
    eprintln!(
        "a failed rollback, retried: {} writes acknowledged (all by {}), all kept; {} unanswered",
        written.acknowledged.len(),
        a(),
        written.unknown.len()
    );
    site.assert_fully_old(&site.wallets());
}
