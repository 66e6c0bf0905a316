//! A daemon no launcher supervises (finding 8 of issue 16): started here as
//! `waiaas-daemon serve` directly, as one is left running when its launcher
//! is killed with kill -9 outside systemd. The next launcher's recovery
//! finds it by the lock it holds (`run/daemon.pid`) and stops it before it
//! restores anything under it. Real processes, real SQLite files, real HTTP
//! on loopback.

use std::collections::BTreeSet;
use std::fs;
use std::time::{Duration, Instant};

use rusqlite::{Connection, OpenFlags};
use waiaas_shared::backup::{self, Kind, Request};

use testkit::supervisor::{Supervisor, process_gone};
use testkit::{Install, Unsupervised, create_wallet, http};

/// Creates `n` wallets `<prefix>-<i>`; returns the names acknowledged (201).
fn write(install: &Install, prefix: &str, n: usize) -> BTreeSet<String> {
    let token = install.token();
    (0..n)
        .map(|i| {
            let name = format!("{prefix}-{i}");
            create_wallet(install.port, &token, &name);
            name
        })
        .collect()
}

/// The wallet names in the database at `folder/waiaas.db` (with its WAL, if
/// one is beside it), read from a copy after an integrity check.
fn stored(folder: &std::path::Path) -> BTreeSet<String> {
    let tmp = tempfile::tempdir().unwrap();
    for file in ["waiaas.db", "waiaas.db-wal"] {
        if folder.join(file).exists() {
            fs::copy(folder.join(file), tmp.path().join(file)).unwrap();
        }
    }
    let conn = Connection::open_with_flags(
        tmp.path().join("waiaas.db"),
        OpenFlags::SQLITE_OPEN_READ_WRITE,
    )
    .unwrap();
    let check: String = conn
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(check, "ok", "{}", folder.display());
    let mut statement = conn.prepare("SELECT name FROM wallets").unwrap();
    statement
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

/// An upgrade's launcher was killed with kill -9 after step 3 (its backup
/// made), leaving its daemon running; the next `run` recovers. The orphan is
/// stopped before the restore (its writes since the backup are in the main
/// file it leaves, which the restore keeps as a `rolled-back-…` backup), the
/// restored database is whole and served, and every acknowledged write is
/// stored: before the backup in the restored database, after it in the kept one.
#[test]
fn recovery_stops_a_daemon_it_did_not_start_before_restoring() {
    let install = Install::new();
    let mut daemon = Unsupervised::start(&install);
    let before = write(&install, "before", 20);
    let made = backup::create(
        &install.dir,
        &Request {
            kind: Kind::PreUpgrade,
            from_version: env!("CARGO_PKG_VERSION").into(),
            to_version: "1.9.0".into(),
            schema_version: 0,
        },
    )
    .unwrap();
    // The journal a launcher killed during step 5 leaves.
    let journal = serde_json::json!({
        "operation": "upgrade", "phase": "forward",
        "from": env!("CARGO_PKG_VERSION"), "to": "1.9.0",
        "step": 5, "step_name": "migrate the database",
        "backup": made.path, "daemon_was_running": true,
        "started_at": "2026-01-01T00:00:00.000Z", "pid": 1,
    });
    fs::write(install.dir.upgrade_journal(), journal.to_string()).unwrap();
    let after = write(&install, "after", 20);
    let orphan_pid = daemon.child.id();

    let mut supervisor = Supervisor::start(&install);
    let status = supervisor.wait_healthy();
    // Kept once the restored daemon serves: the database it replaced.
    let deadline = Instant::now() + Duration::from_secs(30);
    let kept = loop {
        let kept: Vec<_> = backup::list(&install.dir)
            .unwrap()
            .into_iter()
            .filter(|b| b.manifest.kind == Kind::RolledBack)
            .collect();
        if !kept.is_empty() || Instant::now() > deadline {
            break kept;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let log = supervisor.log();
    let exited = daemon.child.try_wait().unwrap();
    assert!(
        exited.is_some_and(|s| s.success()),
        "the orphan (pid {orphan_pid}) was not stopped gracefully ({exited:?}):\n{log}"
    );
    assert_ne!(status.daemon.as_ref().unwrap().pid, orphan_pid);
    let stopped = log
        .find(&format!("stopped the daemon (pid {orphan_pid})"))
        .unwrap_or_else(|| panic!("no word of stopping the orphan:\n{log}"));
    let rolled_back = log
        .find("rolled back an interrupted")
        .unwrap_or_else(|| panic!("no word of the rollback:\n{log}"));
    assert!(stopped < rolled_back, "{log}");
    assert!(!install.dir.upgrade_journal().exists());

    // Served: the restored database, whole.
    let (code, body) = http(
        install.port,
        "GET",
        "/v1/wallets",
        Some(&install.token()),
        None,
    )
    .unwrap();
    assert_eq!(code, 200, "{body}");
    let served: serde_json::Value = serde_json::from_str(&body).unwrap();
    let served: BTreeSet<String> = served["wallets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(served, before);
    // Kept: what the orphan acknowledged after the backup.
    assert_eq!(kept.len(), 1, "{kept:#?}");
    let all: BTreeSet<String> = before.union(&after).cloned().collect();
    assert_eq!(stored(&kept[0].path), all);
    drop(supervisor);
    assert!(process_gone(orphan_pid as i32));
}
