//! Milestone scenarios 13–15 with real old databases and the real daemon
//! process: what `serve` and `check` do with a database of each age.

use std::time::Duration;

use rusqlite::Connection;
use testkit::daemon::{Daemon, Install, seed};
use waiaas_daemon::compat::min_compatible_schema_version;
use waiaas_daemon::db;
use waiaas_daemon::migrate::{LATEST_SCHEMA_VERSION, database_version, migrate_to};
use waiaas_shared::backup;
use waiaas_shared::compat::{CompatReport, Verdict};
use waiaas_shared::exit::daemon as code;

/// Puts a database at `version`, filled with rows, into the install.
fn old_database(install: &Install, version: u32) -> seed::Snapshot {
    std::fs::create_dir_all(install.dir.data()).unwrap();
    let mut conn = db::open(&install.dir.database()).unwrap();
    migrate_to(&mut conn, version).unwrap();
    seed::fill(&conn, 5);
    let snapshot = seed::snapshot(&conn);
    db::checkpoint(&conn).unwrap();
    snapshot
}

fn schema_of(install: &Install) -> u32 {
    database_version(&Connection::open(install.dir.database()).unwrap()).unwrap()
}

fn file_bytes(install: &Install) -> Vec<u8> {
    std::fs::read(install.dir.database()).unwrap()
}

fn check_json(install: &Install) -> (Option<i32>, CompatReport) {
    let out = install.daemon_command(&["check", "--json"]);
    let report = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("check --json printed no report ({e}): {out:?}"));
    (out.status.code(), report)
}

#[tokio::test]
async fn scenario_13_code_newer_than_database_backs_up_and_migrates() {
    let min = min_compatible_schema_version();
    let install = Install::new();
    let before = old_database(&install, min);
    let (status, report) = check_json(&install);
    assert_eq!(status, Some(code::OK));
    assert_eq!(report.verdict, Verdict::Migrate);
    assert_eq!(report.database_version, min);

    let mut daemon = Daemon::start(&install);
    let health = daemon.wait_healthy(Duration::from_secs(30)).await;
    assert_eq!(
        health.schema_version, LATEST_SCHEMA_VERSION,
        "health reads the database"
    );
    assert!(daemon.stop().success());

    // The backup holds the database as it was, verified by its manifest.
    let backups = backup::list(&install.dir).unwrap();
    assert_eq!(backups.len(), 1, "exactly one pre-migrate backup");
    let b = &backups[0];
    assert_eq!(b.manifest.kind, backup::Kind::PreMigrate);
    assert_eq!(b.manifest.schema_version, min);
    let copy = Connection::open(b.path.join("waiaas.db")).unwrap();
    assert_eq!(database_version(&copy).unwrap(), min);
    assert_eq!(
        seed::snapshot(&copy),
        before,
        "the backup is the old database"
    );
    assert!(b.manifest.files.contains_key("config.toml"));

    // Every row survived the migration with every old value (the daemon
    // itself adds one key-value row: the version that last ran).
    let after = seed::snapshot(&Connection::open(install.dir.database()).unwrap());
    for (table, rows) in &before {
        let added = usize::from(table == "key_value_store");
        assert_eq!(after[table].len(), rows.len() + added, "{table} row count");
        for old in rows {
            let kept = after[table].iter().any(|new| {
                old.iter()
                    .all(|(column, value)| new.get(column) == Some(value))
            });
            assert!(kept, "{table}: row {old:?} lost or changed");
        }
    }
}

#[test]
fn scenario_14_code_older_than_database_refuses() {
    let install = Install::new();
    old_database(&install, LATEST_SCHEMA_VERSION);
    // A newer release's migration, applied by a newer daemon.
    Connection::open(install.dir.database())
        .unwrap()
        .execute(
            "INSERT INTO schema_version (version, applied_at, description, checksum)
             VALUES (?1, unixepoch(), 'from_the_future', 'x')",
            [LATEST_SCHEMA_VERSION + 1],
        )
        .unwrap();
    let bytes = file_bytes(&install);

    let (status, report) = check_json(&install);
    assert_eq!(status, Some(code::SCHEMA_TOO_NEW));
    assert_eq!(report.verdict, Verdict::TooNew);

    let out = install.daemon_command(&["serve"]);
    assert_eq!(out.status.code(), Some(code::SCHEMA_TOO_NEW));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("newer"), "{stderr}");
    assert!(stderr.contains("waiaas-launcher upgrade"), "{stderr}");
    assert_eq!(file_bytes(&install), bytes, "a refusal changes nothing");
    assert!(backup::list(&install.dir).unwrap().is_empty());
}

#[test]
fn scenario_15_database_below_minimum_refuses_with_guidance() {
    let install = Install::new();
    let too_old = min_compatible_schema_version() - 4;
    old_database(&install, too_old);
    let bytes = file_bytes(&install);

    let (status, report) = check_json(&install);
    assert_eq!(status, Some(code::SCHEMA_TOO_OLD));
    let Verdict::TooOld {
        upgrade_through: Some(release),
    } = &report.verdict
    else {
        panic!("expected too_old naming a release, got {report:?}");
    };

    let out = install.daemon_command(&["serve"]);
    assert_eq!(out.status.code(), Some(code::SCHEMA_TOO_OLD));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(release.as_str()),
        "names {release}: {stderr}"
    );
    assert!(stderr.contains("too old"), "{stderr}");
    assert_eq!(file_bytes(&install), bytes, "a refusal changes nothing");
    assert_eq!(schema_of(&install), too_old);
}

#[test]
fn a_failing_migration_at_start_refuses_and_leaves_the_database_as_it_was() {
    let install = Install::new();
    let at = LATEST_SCHEMA_VERSION - 1;
    old_database(&install, at);
    // The last migration creates api_keys; a table already there makes it fail part-way.
    let conn = Connection::open(install.dir.database()).unwrap();
    conn.execute_batch("CREATE TABLE api_keys (planted INTEGER);")
        .unwrap();
    let before = seed::snapshot(&conn);
    drop(conn);

    let out = install.daemon_command(&["serve"]);
    assert_eq!(out.status.code(), Some(code::MIGRATION_FAILED));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("migration {LATEST_SCHEMA_VERSION}")),
        "{stderr}"
    );
    assert!(
        stderr.contains("a copy is in"),
        "points at the backup: {stderr}"
    );
    let conn = Connection::open(install.dir.database()).unwrap();
    assert_eq!(database_version(&conn).unwrap(), at);
    assert_eq!(seed::snapshot(&conn), before);
}

#[test]
fn migrate_subcommand_brings_a_fresh_or_old_database_to_latest() {
    let install = Install::new();
    let out = install.daemon_command(&["migrate"]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(schema_of(&install), LATEST_SCHEMA_VERSION);
    let (status, report) = check_json(&install);
    assert_eq!((status, report.verdict), (Some(code::OK), Verdict::Current));
}
