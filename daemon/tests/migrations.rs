//! Migrations against real SQLite files: data survives every path to the
//! latest schema, every path yields the same schema, a failure part-way
//! through leaves the previous version intact, and the compatibility check
//! refuses what it must (SPEC §8, §10 scenarios 13–15).

use std::path::PathBuf;

use rusqlite::Connection;
use rusqlite::types::Value;
use testkit::daemon::seed;
use waiaas_daemon::compat;
use waiaas_daemon::db;
use waiaas_daemon::migrate::{
    self, LATEST_SCHEMA_VERSION, MIGRATIONS, MigrationError, database_version, migrate_to,
};
use waiaas_shared::compat::Verdict;

const ROWS: usize = 6;

/// A database file in its own temp dir, opened as the daemon opens it.
struct TestDb {
    _dir: tempfile::TempDir,
    path: PathBuf,
    conn: Connection,
}

impl TestDb {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("waiaas.db");
        let conn = db::open(&path).unwrap();
        Self {
            _dir: dir,
            path,
            conn,
        }
    }

    fn at(version: u32) -> Self {
        let mut db = Self::new();
        migrate_to(&mut db.conn, version).unwrap();
        assert_eq!(database_version(&db.conn).unwrap(), version);
        db
    }

    fn reopen(&mut self) {
        self.conn = db::open(&self.path).unwrap();
    }
}

/// `sqlite_master` as (type, name, tbl_name, sql with whitespace collapsed).
fn schema(conn: &Connection) -> Vec<(String, String, String, Option<String>)> {
    let mut stmt = conn
        .prepare("SELECT type, name, tbl_name, sql FROM sqlite_master ORDER BY type, name")
        .unwrap();
    stmt.query_map([], |r| {
        let sql: Option<String> = r.get(3)?;
        Ok((
            r.get(0)?,
            r.get(1)?,
            r.get(2)?,
            sql.map(|s| s.split_whitespace().collect::<Vec<_>>().join(" ")),
        ))
    })
    .unwrap()
    .collect::<rusqlite::Result<_>>()
    .unwrap()
}

fn schema_version_rows(conn: &Connection) -> Vec<(u32, String, String)> {
    migrate::applied(conn)
        .unwrap()
        .into_iter()
        .map(|r| (r.version, r.description, r.checksum))
        .collect()
}

fn assert_healthy(conn: &Connection) {
    let integrity: String = conn
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(integrity, "ok");
    let dangling: i64 = conn
        .query_row("SELECT count(*) FROM pragma_foreign_key_check", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(dangling, 0, "foreign keys point nowhere after migrating");
    let fk_on: bool = conn
        .query_row("PRAGMA foreign_keys", [], |r| r.get(0))
        .unwrap();
    assert!(
        fk_on,
        "foreign key enforcement must be restored after migrating"
    );
}

fn versions(from: u32, to: u32) -> Vec<u32> {
    (from..=to).collect()
}

#[test]
fn migration_chain_preserves_every_row() {
    for v in 1..LATEST_SCHEMA_VERSION {
        let mut db = TestDb::at(v);
        seed::fill(&db.conn, ROWS);
        let before = seed::snapshot(&db.conn);
        assert!(before.values().all(|rows| rows.len() == ROWS));

        let applied = migrate::migrate(&mut db.conn).unwrap();
        assert_eq!(applied, versions(v + 1, LATEST_SCHEMA_VERSION), "from {v}");
        db.reopen();
        assert_eq!(database_version(&db.conn).unwrap(), LATEST_SCHEMA_VERSION);
        assert_healthy(&db.conn);

        let after = seed::snapshot(&db.conn);
        for (table, old_rows) in &before {
            let new_rows = after
                .get(table)
                .unwrap_or_else(|| panic!("from {v}: table {table} is gone"));
            assert_eq!(
                new_rows.len(),
                old_rows.len(),
                "from {v}: {table} row count"
            );
            // Both are ordered by primary key, which no migration changes.
            for (old, new) in old_rows.iter().zip(new_rows) {
                for (column, value) in old {
                    if let Some(now) = new.get(column) {
                        assert_eq!(now, value, "from {v}: {table}.{column} changed in {old:?}");
                    }
                }
            }
        }
        // The migrated schema takes new rows everywhere, foreign keys enforced.
        seed::fill(&db.conn, 2);
    }
}

#[test]
fn backfills_fill_new_columns_from_existing_data() {
    // 13: audit_log.severity, classified from event_type.
    let mut db = TestDb::at(12);
    seed::fill(&db.conn, 12);
    migrate::migrate(&mut db.conn).unwrap();
    let mut stmt = db
        .conn
        .prepare("SELECT event_type, severity FROM audit_log")
        .unwrap();
    let rows: Vec<(String, String)> = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<rusqlite::Result<_>>()
        .unwrap();
    assert_eq!(rows.len(), 12);
    for (event, severity) in &rows {
        let expected = match event.as_str() {
            "TX_FAILED" | "POLICY_DENIED" => "warning",
            "KILL_SWITCH_ACTIVATED" => "critical",
            _ => "info",
        };
        assert_eq!(severity, expected, "{event}");
    }
    assert!(rows.iter().any(|(_, s)| s == "critical"));

    // 15: transactions.chain / network, from each transaction's wallet.
    let mut db = TestDb::at(14);
    seed::fill(&db.conn, 9);
    migrate::migrate(&mut db.conn).unwrap();
    let mismatched: i64 = db
        .conn
        .query_row(
            "SELECT count(*) FROM transactions t JOIN wallets w ON w.id = t.wallet_id
             WHERE t.chain IS NOT w.chain OR t.network IS NOT w.network",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(mismatched, 0);
    let filled: i64 = db
        .conn
        .query_row(
            "SELECT count(*) FROM transactions WHERE chain IS NOT NULL",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(filled, 9);
}

#[test]
fn fresh_schema_equals_migrated_schema() {
    let mut fresh = TestDb::new();
    assert_eq!(
        migrate::migrate(&mut fresh.conn).unwrap(),
        versions(1, LATEST_SCHEMA_VERSION)
    );
    let expected = schema(&fresh.conn);
    let expected_versions = schema_version_rows(&fresh.conn);
    assert!(
        expected
            .iter()
            .any(|(kind, name, ..)| kind == "index" && name == "idx_transactions_status")
    );

    let mut stepwise = TestDb::new();
    for v in 1..=LATEST_SCHEMA_VERSION {
        assert_eq!(migrate_to(&mut stepwise.conn, v).unwrap(), vec![v]);
    }
    assert_eq!(schema(&stepwise.conn), expected, "one step at a time");
    assert_eq!(schema_version_rows(&stepwise.conn), expected_versions);

    for v in 1..LATEST_SCHEMA_VERSION {
        let mut old = TestDb::at(v);
        seed::fill(&old.conn, 3);
        migrate::migrate(&mut old.conn).unwrap();
        assert_eq!(schema(&old.conn), expected, "migrated from schema {v}");
        assert_eq!(schema_version_rows(&old.conn), expected_versions);
    }
}

#[test]
fn final_schema_has_the_contract_columns() {
    let db = TestDb::at(LATEST_SCHEMA_VERSION);
    let columns = |table: &str| -> Vec<(String, String, bool, Option<String>, i64)> {
        let mut stmt = db
            .conn
            .prepare("SELECT name, type, \"notnull\", dflt_value, pk FROM pragma_table_info(?1)")
            .unwrap();
        stmt.query_map([table], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
        })
        .unwrap()
        .collect::<rusqlite::Result<_>>()
        .unwrap()
    };
    let find = |cols: &[(String, String, bool, Option<String>, i64)], name: &str| {
        cols.iter()
            .find(|c| c.0 == name)
            .cloned()
            .unwrap_or_else(|| panic!("column {name} missing"))
    };
    let wallets = columns("wallets");
    assert_eq!(find(&wallets, "id").4, 1);
    assert_eq!(find(&wallets, "status").3.as_deref(), Some("'ACTIVE'"));
    let audit = columns("audit_log");
    assert!(
        !find(&audit, "wallet_id").2,
        "audit_log.wallet_id is nullable"
    );
    assert_eq!(find(&audit, "details").3.as_deref(), Some("'{}'"));
    let kv = columns("key_value_store");
    assert_eq!(
        kv.iter().map(|c| c.0.as_str()).collect::<Vec<_>>(),
        ["key", "value", "updated_at"]
    );
    let audit_fks: i64 = db
        .conn
        .query_row(
            "SELECT count(*) FROM pragma_foreign_key_list('audit_log')",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(audit_fks, 0, "audit history outlives wallets");

    // The CHECKs of the rebuilt tables accept the new values and refuse others.
    let insert = |chain: &str, status: &str| {
        db.conn.execute(
            "INSERT INTO wallets (id, name, chain, network, public_key, status, created_at, updated_at)
             VALUES (?1, 'w', ?2, 'mainnet', ?1, ?3, 0, 0)",
            [format!("{chain}-{status}").as_str(), chain, status],
        )
    };
    insert("ethereum", "TERMINATED").unwrap();
    insert("dogecoin", "ACTIVE").unwrap_err();
    insert("solana", "DELETED").unwrap_err();
    // Every table of SPEC §8 is there, and a key-value pair round-trips.
    for table in [
        "wallets",
        "sessions",
        "transactions",
        "policies",
        "pending_approvals",
        "audit_log",
        "key_value_store",
        "notification_logs",
        "token_registry",
        "settings",
        "api_keys",
    ] {
        assert!(seed::tables(&db.conn).iter().any(|t| t == table), "{table}");
    }
    waiaas_shared::kv::set(&db.conn, "k", "v").unwrap();
    assert_eq!(
        waiaas_shared::kv::get(&db.conn, "k").unwrap().as_deref(),
        Some("v")
    );
}

#[test]
fn key_value_store_exists_from_the_first_1_x_release() {
    let one_zero = compat::RELEASES
        .iter()
        .find(|r| r.version == semver::Version::new(1, 0, 0))
        .unwrap();
    let db = TestDb::at(one_zero.schema);
    waiaas_shared::kv::set(&db.conn, waiaas_shared::kv::LATEST, "1.0.0").unwrap();
}

/// Plants an object with the name of one migration `version + 1` creates last,
/// so it fails after its earlier statements already ran.
fn half_failed(version: u32, planted: &str) {
    let mut db = TestDb::at(version);
    seed::fill(&db.conn, ROWS);
    db.conn
        .execute_batch(&format!("CREATE TABLE {planted} (x INTEGER)"))
        .unwrap();
    let schema_before = schema(&db.conn);
    let rows_before = seed::snapshot(&db.conn);
    let verdict_before = compat::check(&db.conn).unwrap().verdict;

    let err = migrate::migrate(&mut db.conn).unwrap_err();
    let next = &MIGRATIONS[version as usize];
    let message = err.to_string();
    assert!(
        matches!(err, MigrationError::Failed { version: v, .. } if v == version + 1),
        "{message}"
    );
    assert!(
        message.contains(&format!("migration {}", version + 1)),
        "{message}"
    );
    assert!(message.contains(next.description), "{message}");
    assert!(
        message.contains(&format!("leaving the database at schema {version}")),
        "{message}"
    );
    assert!(
        message.contains(planted),
        "SQLite's own words are kept: {message}"
    );

    // Nothing of the failed migration survives, in this connection or a new one.
    for reopened in [false, true] {
        if reopened {
            db.reopen();
        }
        assert_eq!(database_version(&db.conn).unwrap(), version);
        assert_eq!(schema(&db.conn), schema_before, "schema of {version}");
        assert_eq!(seed::snapshot(&db.conn), rows_before, "rows of {version}");
        assert_healthy(&db.conn);
        let report = compat::check(&db.conn).unwrap();
        assert_eq!(report.verdict, verdict_before);
        if version >= compat::min_compatible_schema_version() {
            // The daemon will try again at start and refuse with `message`.
            assert_eq!(report.verdict, Verdict::Migrate, "{}", report.message);
        }
    }

    // Once the operator removes the obstacle, the same migration goes through.
    db.conn
        .execute_batch(&format!("DROP TABLE {planted}"))
        .unwrap();
    let applied = migrate::migrate(&mut db.conn).unwrap();
    assert_eq!(applied, versions(version + 1, LATEST_SCHEMA_VERSION));
}

#[test]
fn half_failed_migration_leaves_previous_version() {
    // 15 adds two columns and backfills them before creating its index.
    half_failed(14, "idx_transactions_chain_network");
    // 13 adds a column and classifies every row before creating its index.
    half_failed(12, "idx_audit_log_severity");
    // The two table rebuilds: create, copy, drop, rename, then the new index.
    half_failed(11, "idx_wallets_status");
    half_failed(8, "idx_transactions_tx_hash");
}

#[test]
fn checksum_tamper_is_refused() {
    for (at, tampered) in [(LATEST_SCHEMA_VERSION, 5), (13, 12)] {
        let mut db = TestDb::at(at);
        db.conn
            .execute(
                "UPDATE schema_version SET checksum = ?1 WHERE version = ?2",
                rusqlite::params![migrate::checksum("something else"), tampered],
            )
            .unwrap();
        let report = compat::check(&db.conn).unwrap();
        assert_eq!(
            report.verdict,
            Verdict::ChecksumMismatch { version: tampered }
        );
        assert!(report.refusal_code().is_some());
        assert!(
            report.message.contains(&format!("Migration {tampered} (")),
            "{}",
            report.message
        );
        let err = migrate::migrate(&mut db.conn).unwrap_err();
        assert!(
            matches!(err, MigrationError::ChecksumMismatch { version, .. } if version == tampered),
            "{err}"
        );
        assert_eq!(database_version(&db.conn).unwrap(), at);
    }

    // A changed SQL text, not only a changed record, is caught the same way.
    let db = TestDb::at(3);
    db.conn
        .execute(
            "UPDATE schema_version SET checksum = ?1 WHERE version = 2",
            [migrate::checksum(&MIGRATIONS[1].sql.replace("UNIQUE", ""))],
        )
        .unwrap();
    assert_eq!(migrate::checksum_mismatch(&db.conn).unwrap(), Some(2));
}

#[test]
fn database_newer_than_the_daemon_is_refused() {
    let mut db = TestDb::at(LATEST_SCHEMA_VERSION);
    let newer = LATEST_SCHEMA_VERSION + 1;
    db.conn
        .execute(
            "INSERT INTO schema_version (version, applied_at, description, checksum)
             VALUES (?1, unixepoch(), 'from_the_future', 'ffff')",
            [newer],
        )
        .unwrap();
    let report = compat::check(&db.conn).unwrap();
    assert_eq!(report.verdict, Verdict::TooNew);
    assert_eq!(report.database_version, newer);
    assert!(report.refusal_code().is_some());
    assert!(
        report.message.contains(&format!("schema {newer}")),
        "{}",
        report.message
    );
    assert!(
        report.message.contains("waiaas-launcher upgrade"),
        "{}",
        report.message
    );
    let err = migrate::migrate(&mut db.conn).unwrap_err();
    assert!(matches!(err, MigrationError::TooNew { database, .. } if database == newer));
    assert!(err.to_string().contains("waiaas-launcher upgrade"));
}

#[test]
fn database_below_the_minimum_is_refused_naming_a_release() {
    let min = compat::min_compatible_schema_version();
    assert_eq!(min, 12);
    for (v, through) in [(11, "1.7.0"), (9, "1.6.1"), (8, "1.5.2"), (1, "0.11.0")] {
        assert!(v < min);
        let db = TestDb::at(v);
        seed::fill(&db.conn, 2);
        let report = compat::check(&db.conn).unwrap();
        assert_eq!(
            report.verdict,
            Verdict::TooOld {
                upgrade_through: Some(through.to_string())
            },
            "schema {v}"
        );
        assert!(report.refusal_code().is_some());
        assert!(
            report
                .message
                .contains(&format!("upgrade through {through}")),
            "{}",
            report.message
        );
        assert!(
            report.message.contains(&format!("schema {v}")),
            "{}",
            report.message
        );
        // The check itself writes nothing.
        assert_eq!(database_version(&db.conn).unwrap(), v);
    }
}

#[test]
fn fresh_current_and_migratable_databases_are_accepted() {
    let db = TestDb::new();
    let report = compat::check(&db.conn).unwrap();
    assert_eq!(report.verdict, Verdict::Fresh);
    assert_eq!(report.database_version, 0);
    // The check of a fresh file creates no table.
    assert!(schema(&db.conn).is_empty());

    let db = TestDb::at(LATEST_SCHEMA_VERSION);
    assert_eq!(compat::check(&db.conn).unwrap().verdict, Verdict::Current);

    for v in compat::min_compatible_schema_version()..LATEST_SCHEMA_VERSION {
        let db = TestDb::at(v);
        let report = compat::check(&db.conn).unwrap();
        assert_eq!(report.verdict, Verdict::Migrate, "schema {v}");
        assert_eq!(report.refusal_code(), None);
    }
}

#[test]
fn seeded_values_cover_nulls_and_every_table() {
    let db = TestDb::at(LATEST_SCHEMA_VERSION);
    seed::fill(&db.conn, ROWS);
    let snap = seed::snapshot(&db.conn);
    assert_eq!(snap.len(), seed::tables(&db.conn).len());
    assert!(snap.values().all(|rows| rows.len() == ROWS));
    // NULLs must travel through migrations too, so the filler writes some.
    let nulls = snap["audit_log"]
        .iter()
        .filter(|row| row["wallet_id"] == Value::Null)
        .count();
    assert!(nulls > 0);
}
