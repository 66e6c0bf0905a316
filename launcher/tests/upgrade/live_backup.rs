//! The backup taken while the old daemon serves (SPEC §12), and what it holds.

use std::collections::BTreeSet;
use std::fs;
use std::path::PathBuf;
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};

use testkit::builds::B_VERSION;
use waiaas_shared::admin::Outcome;
use waiaas_shared::backup::{Kind, MANIFEST as BACKUP_MANIFEST, Manifest};
use waiaas_shared::fsutil::sha256_file;
use waiaas_shared::time::UtcTime;

use crate::kills::{KillPoint, Upgrader, exists_with_prefix, kill_during_upgrade};
use crate::releases::{A_SCHEMA, a};
use crate::site::{
    DbDigest, Offer, Setup, Site, assert_no_leftovers, names_in, upgrade_while_writing,
    written_names,
};

#[test]
fn scenario_09_backup_holds_database_and_config() {
    let site = Site::new();
    let mut supervisor = site.supervisor();
    supervisor.wait_healthy();
    let wallets = site.seed(&["treasury", "payroll"]);
    let before = DbDigest::of(&site.dir.database());
    let config = fs::read(site.dir.config()).unwrap();
    let started = UtcTime::now();

    let (out, report) = site.upgrade_json(&[]);
    assert!(out.status.success(), "{out:?}\n{}", supervisor.log());
    assert_eq!(report.outcome, Outcome::Upgraded);
    let backup = PathBuf::from(report.backup.expect("the report names the backup"));

    // backups/pre-upgrade-1.8.1-<yyyymmddThhmmssZ>/
    assert_eq!(backup.parent().unwrap(), site.dir.backups());
    let name = backup.file_name().unwrap().to_string_lossy().into_owned();
    let stamp = name
        .strip_prefix(&format!("pre-upgrade-{}-", a()))
        .unwrap_or_else(|| panic!("{name}"));
    assert!(
        stamp.len() == 16 && stamp.as_bytes()[8] == b'T' && stamp.ends_with('Z'),
        "{name}"
    );
    assert_eq!(
        names_in(&backup),
        ["backup.json", "config.toml", "waiaas.db"]
            .map(String::from)
            .into()
    );

    let manifest: Manifest =
        serde_json::from_slice(&fs::read(backup.join("backup.json")).unwrap()).unwrap();
    assert_eq!(manifest.kind, Kind::PreUpgrade);
    assert_eq!(manifest.from_version, a());
    assert_eq!(manifest.to_version, B_VERSION);
    assert_eq!(manifest.schema_version, A_SCHEMA);
    let created = UtcTime::parse_rfc3339(&manifest.created_at).expect("created_at is RFC 3339");
    assert!(
        created >= UtcTime::from_unix_ms(started.unix_seconds() * 1000)
            && created <= UtcTime::now()
    );
    assert_eq!(stamp, created.compact());
    assert_eq!(manifest.files.len(), 2);
    for (file, sha) in &manifest.files {
        assert_eq!(&sha256_file(&backup.join(file)).unwrap(), sha, "{file}");
    }
    // The copies are the state before: the config byte for byte, the database
    // at schema 16 with every row, and sound.
    assert_eq!(fs::read(backup.join("config.toml")).unwrap(), config);
    assert_eq!(DbDigest::of(&backup.join("waiaas.db")), before);
    let copy = Connection::open_with_flags(
        format!("file:{}?immutable=1", backup.join("waiaas.db").display()),
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_URI,
    )
    .unwrap();
    let check: String = copy
        .query_row("PRAGMA quick_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(check, "ok");
    site.assert_fully_new(&wallets);
}

/// The backup is taken while the old daemon serves (SPEC §12): its main file
/// copied with checkpoints held, its WAL once it has stopped. Every write the
/// old daemon acknowledged is in the backup, and `--rollback` brings back
/// exactly that, WAL included.
#[test]
fn a_live_backup_holds_every_write_acknowledged_before_the_stop() {
    let (site, supervisor, out, report, written) = upgrade_while_writing(Offer::B);
    assert!(out.status.success(), "{out:?}\n{}", supervisor.log());
    let log = supervisor.log();
    assert!(
        log.contains("checkpoints held until exit"),
        "the daemon held its checkpoints:\n{log}"
    );
    // The live log, folded, was deleted in the downtime with a second name
    // kept, whose blocks were freed once the new daemon served: only a log
    // SQLite deleted frees any.
    let trash = site.dir.data().join(waiaas_shared::trash::FOLDER);
    assert!(
        log.contains(&format!("set aside in {}", trash.display())),
        "the log's blocks freed after the downtime:\n{log}"
    );
    assert!(!trash.exists(), "the trash emptied");
    let backup = PathBuf::from(report.backup.expect("a backup"));
    let manifest: Manifest =
        serde_json::from_slice(&fs::read(backup.join(BACKUP_MANIFEST)).unwrap()).unwrap();
    assert!(
        manifest.files.contains_key("waiaas.db-wal"),
        "writes during the copy are in the backup's WAL: {manifest:?}"
    );
    for (file, sha) in &manifest.files {
        let path = backup.join(file);
        assert_eq!(&sha256_file(&path).unwrap(), sha, "{file}");
        assert_eq!(manifest.sizes[file], fs::metadata(&path).unwrap().len());
    }
    let in_main = written_names(&backup.join("waiaas.db"), None);
    let in_backup = written_names(
        &backup.join("waiaas.db"),
        Some(&backup.join("waiaas.db-wal")),
    );
    let now = site.wallets().into_values().collect::<BTreeSet<_>>();
    // The old daemon acknowledged a prefix of the writes, the new one the
    // rest: the backup holds that whole prefix, the new daemon everything.
    let by_old = written
        .acknowledged
        .iter()
        .take_while(|name| in_backup.contains(*name))
        .count();
    let missing: Vec<&String> = written.acknowledged[by_old..]
        .iter()
        .filter(|name| in_backup.contains(*name) || !now.contains(*name))
        .collect();
    assert!(
        missing.is_empty(),
        "acknowledged but in neither the backup's prefix nor the new database: {missing:?}"
    );
    let during_copy = in_backup.len() - in_main.len();
    eprintln!(
        "{} writes acknowledged ({} by {}, {} unanswered); {during_copy} of them made while the main file was copied, all in the backup",
        written.acknowledged.len(),
        by_old,
        a(),
        written.unknown.len()
    );
    assert!(
        during_copy > 0,
        "no write happened during the live copy: the test proves nothing"
    );
    // Those writes were copied while the daemon served, not in the downtime
    // (the point of the live backup): the backup's own report says so.
    let live = manifest
        .wal_copied_live
        .expect("a live backup reports its WAL copy");
    let total = manifest.sizes["waiaas.db-wal"];
    eprintln!("{live} of the WAL's {total} bytes copied while the daemon served");
    assert!(
        live > 0,
        "the WAL was copied only once the daemon had stopped"
    );
    assert!(
        in_backup
            .difference(&in_main)
            .all(|n| written.acknowledged.contains(n) || written.unknown.contains(n)),
        "the WAL holds only what was written"
    );

    let (out, report) = site.upgrade_json(&["--rollback"]);
    assert!(out.status.success(), "{out:?}\n{}", supervisor.log());
    assert_eq!(report.outcome, Outcome::Restored);
    let restored: BTreeSet<String> = site
        .wallets()
        .into_values()
        .filter(|n| n.starts_with("w-"))
        .collect();
    assert_eq!(
        restored, in_backup,
        "--rollback restores the backup, WAL included"
    );
    assert_no_leftovers(&site);
}

/// kill -9 at random instants of the live copy (step 2, the daemon serving
/// and writing) and of the WAL's copy (step 3): fully old or fully new, and
/// no acknowledged write lost. The instants are printed with their seed.
#[test]
fn kill_9_during_the_live_copy_and_the_wal_copy_loses_nothing() {
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    eprintln!("kill instants from seed {seed}");
    let mut random = seed | 1;
    let mut next_ms = |below: u64| {
        // xorshift64: enough to spread instants, reproducible from the seed.
        random ^= random << 13;
        random ^= random >> 7;
        random ^= random << 17;
        random % below
    };
    let runs = std::env::var("WAIAAS_LIVE_KILL_RUNS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(10u64)
        .min(50);
    let mut problems = Vec::new();
    for run in 0..runs * 2 {
        let in_copy = run % 2 == 0;
        let delay = Duration::from_millis(if in_copy { next_ms(250) } else { next_ms(15) });
        let point = if in_copy {
            KillPoint {
                what: format!("kill {delay:?} into the live copy (run {run})"),
                now: Box::new(|s, d| {
                    s == 2 && exists_with_prefix(&d.backups(), ".partial-pre-upgrade")
                }),
                delay,
                writes: true,
            }
        } else {
            KillPoint {
                what: format!("kill {delay:?} into the WAL's copy (run {run})"),
                now: Box::new(|s, _| s == 3),
                delay,
                writes: true,
            }
        };
        let site = Site::with(Setup {
            big_db: true,
            ..Setup::default()
        });
        problems.extend(kill_during_upgrade(&site, &point, Upgrader::Supervisor));
    }
    assert!(
        problems.is_empty(),
        "seed {seed}:\n{}",
        problems.join("\n\n")
    );
}
