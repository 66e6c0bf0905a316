//! Schema migrations: the numbered SQL files of `../migrations`, embedded at
//! build time (see `build.rs`), applied in order, each in its own transaction
//! and recorded with a checksum in `schema_version` (SPEC §8).

use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};
use sha2::{Digest, Sha256};

/// One embedded migration file.
#[derive(Debug, Clone, Copy)]
pub struct Migration {
    /// The file's number: the schema version it produces.
    pub version: u32,
    /// The snake_case part of the file name, e.g. `create_wallets`.
    pub description: &'static str,
    /// The file's SQL, verbatim.
    pub sql: &'static str,
}

// Defines `MIGRATIONS` and `LATEST_SCHEMA_VERSION` from the files themselves.
include!(concat!(env!("OUT_DIR"), "/migrations.rs"));

/// Created (if missing) inside each migration's transaction, so a database
/// whose first migration failed has no trace of the attempt.
const CREATE_SCHEMA_VERSION: &str = "CREATE TABLE IF NOT EXISTS schema_version (
    version     INTEGER PRIMARY KEY,
    applied_at  INTEGER NOT NULL,
    description TEXT NOT NULL,
    checksum    TEXT NOT NULL
)";

/// Why the schema could not be brought to the version asked for. Every message
/// names the migration concerned and says what state the database is left in.
#[derive(Debug, thiserror::Error)]
pub enum MigrationError {
    #[error(
        "migration {version} ({description}) failed and was rolled back, \
         leaving the database at schema {previous}; SQLite said: {error}"
    )]
    Failed {
        version: u32,
        description: &'static str,
        previous: u32,
        error: rusqlite::Error,
    },
    #[error(
        "migration {version} ({description}) would leave rows whose foreign keys point \
         nowhere ({violations}); it was rolled back, leaving the database at schema {previous}"
    )]
    ForeignKeyViolation {
        version: u32,
        description: &'static str,
        previous: u32,
        /// e.g. `sessions → wallets (3 rows)`.
        violations: String,
    },
    #[error(
        "the database is at schema {database}, newer than this daemon (schema {latest}); \
         {} to move to a daemon that knows it",
        waiaas_shared::container::how_to_upgrade()
    )]
    TooNew { database: u32, latest: u32 },
    #[error(
        "migration {version} ({description}) recorded in the database is not the one this daemon \
         carries (checksum {recorded}, expected {expected}); refusing to migrate — restore a \
         backup taken by a released version"
    )]
    ChecksumMismatch {
        version: u32,
        description: &'static str,
        recorded: String,
        expected: String,
    },
    #[error("the database is at schema {database}; migrations never go back to {target}")]
    Downgrade { database: u32, target: u32 },
    #[error("there is no schema {target}: this daemon knows schemas 1 to {latest}")]
    UnknownTarget { target: u32, latest: u32 },
    #[error(
        "schema {found} appeared while migrating to {expected}: another process is migrating \
         this database; nothing was changed by this one"
    )]
    Concurrent { expected: u32, found: u32 },
    #[error("migrations must not run inside an open transaction")]
    InTransaction,
    #[error("could not read or prepare the database for migration: {0}")]
    Database(#[from] rusqlite::Error),
}

/// One row of `schema_version`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppliedMigration {
    pub version: u32,
    pub applied_at: i64,
    pub description: String,
    pub checksum: String,
}

/// The SHA-256 of a migration's SQL, as lower-case hex.
pub fn checksum(sql: &str) -> String {
    hex::encode(Sha256::digest(sql.as_bytes()))
}

fn has_schema_version_table(conn: &Connection) -> rusqlite::Result<bool> {
    conn.query_row(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_version'",
        [],
        |_| Ok(()),
    )
    .optional()
    .map(|found| found.is_some())
}

/// The database's schema version (0 when it has no schema yet).
pub fn database_version(conn: &Connection) -> rusqlite::Result<u32> {
    if !has_schema_version_table(conn)? {
        return Ok(0);
    }
    conn.query_row(
        "SELECT COALESCE(MAX(version), 0) FROM schema_version",
        [],
        |row| row.get(0),
    )
}

/// Every recorded migration, oldest first (empty when there is no schema).
pub fn applied(conn: &Connection) -> rusqlite::Result<Vec<AppliedMigration>> {
    if !has_schema_version_table(conn)? {
        return Ok(Vec::new());
    }
    let mut stmt = conn.prepare(
        "SELECT version, applied_at, description, checksum FROM schema_version ORDER BY version",
    )?;
    let rows = stmt.query_map([], |row| {
        Ok(AppliedMigration {
            version: row.get(0)?,
            applied_at: row.get(1)?,
            description: row.get(2)?,
            checksum: row.get(3)?,
        })
    })?;
    rows.collect()
}

/// The embedded migration that produces `version`, if this daemon has one.
pub fn embedded(version: u32) -> Option<&'static Migration> {
    let index = usize::try_from(version.checked_sub(1)?).ok()?;
    MIGRATIONS.get(index)
}

/// The first applied migration whose recorded checksum differs from the SQL
/// this daemon carries. Versions newer than this daemon are not judged here.
pub fn checksum_mismatch(conn: &Connection) -> rusqlite::Result<Option<u32>> {
    Ok(first_mismatch(&applied(conn)?).map(|(row, _)| row.version))
}

fn first_mismatch(applied: &[AppliedMigration]) -> Option<(&AppliedMigration, &'static Migration)> {
    applied.iter().find_map(|row| {
        let migration = embedded(row.version)?;
        (checksum(migration.sql) != row.checksum).then_some((row, migration))
    })
}

/// Applies every pending migration; returns the versions applied. Callers
/// decide first, with `compat::check`, whether the database may be migrated.
pub fn migrate(conn: &mut Connection) -> Result<Vec<u32>, MigrationError> {
    migrate_to(conn, LATEST_SCHEMA_VERSION)
}

/// Applies the pending migrations up to and including `target` (tests and
/// benchmarks use it to build databases at old versions).
pub fn migrate_to(conn: &mut Connection, target: u32) -> Result<Vec<u32>, MigrationError> {
    if target > LATEST_SCHEMA_VERSION {
        return Err(MigrationError::UnknownTarget {
            target,
            latest: LATEST_SCHEMA_VERSION,
        });
    }
    if !conn.is_autocommit() {
        // PRAGMA foreign_keys is silently ignored inside a transaction, and our
        // per-migration transactions could not be committed on their own.
        return Err(MigrationError::InTransaction);
    }
    let current = database_version(conn)?;
    if current > LATEST_SCHEMA_VERSION {
        return Err(MigrationError::TooNew {
            database: current,
            latest: LATEST_SCHEMA_VERSION,
        });
    }
    let applied_rows = applied(conn)?;
    if let Some((row, migration)) = first_mismatch(&applied_rows) {
        return Err(MigrationError::ChecksumMismatch {
            version: row.version,
            description: migration.description,
            recorded: row.checksum.clone(),
            expected: checksum(migration.sql),
        });
    }
    if target < current {
        return Err(MigrationError::Downgrade {
            database: current,
            target,
        });
    }
    if target == current {
        return Ok(Vec::new());
    }

    // A table rebuild drops a table other tables reference; with enforcement on,
    // that would cascade or fail. Integrity is checked per migration instead.
    let foreign_keys: bool = conn.query_row("PRAGMA foreign_keys", [], |row| row.get(0))?;
    conn.pragma_update(None, "foreign_keys", false)?;
    let result = apply_range(conn, current, target);
    let restored = conn.pragma_update(None, "foreign_keys", foreign_keys);
    let applied_versions = result?;
    restored?;
    Ok(applied_versions)
}

fn apply_range(conn: &mut Connection, from: u32, to: u32) -> Result<Vec<u32>, MigrationError> {
    let mut done = Vec::new();
    for migration in MIGRATIONS
        .iter()
        .filter(|m| m.version > from && m.version <= to)
    {
        apply_one(conn, migration)?;
        done.push(migration.version);
    }
    Ok(done)
}

fn apply_one(conn: &mut Connection, migration: &Migration) -> Result<(), MigrationError> {
    let previous = migration.version - 1;
    let failed = |error| MigrationError::Failed {
        version: migration.version,
        description: migration.description,
        previous,
        error,
    };
    // IMMEDIATE takes the write lock up front, so no other writer can slip in
    // between our version check and the schema change. Dropping `tx` on any
    // early return rolls the whole migration back.
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(failed)?;
    let found = database_version(&tx).map_err(failed)?;
    if found != previous {
        return Err(MigrationError::Concurrent {
            expected: previous,
            found,
        });
    }
    tx.execute_batch(CREATE_SCHEMA_VERSION).map_err(failed)?;
    tx.execute_batch(migration.sql).map_err(failed)?;

    let violations = foreign_key_violations(&tx).map_err(failed)?;
    if !violations.is_empty() {
        return Err(MigrationError::ForeignKeyViolation {
            version: migration.version,
            description: migration.description,
            previous,
            violations,
        });
    }
    tx.execute(
        "INSERT INTO schema_version (version, applied_at, description, checksum)
         VALUES (?1, unixepoch(), ?2, ?3)",
        params![
            migration.version,
            migration.description,
            checksum(migration.sql)
        ],
    )
    .map_err(failed)?;
    tx.commit().map_err(failed)
}

/// `PRAGMA foreign_key_check`, summarised per child → parent table; empty when clean.
fn foreign_key_violations(conn: &Connection) -> rusqlite::Result<String> {
    let mut stmt = conn.prepare(
        "SELECT \"table\", parent, count(*) FROM pragma_foreign_key_check
         GROUP BY \"table\", parent ORDER BY \"table\", parent",
    )?;
    let rows = stmt.query_map([], |row| {
        let (table, parent, count): (String, String, i64) = (row.get(0)?, row.get(1)?, row.get(2)?);
        Ok(format!("{table} → {parent} ({count} rows)"))
    })?;
    Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrations_are_numbered_one_to_latest() {
        assert!(!MIGRATIONS.is_empty());
        for (index, migration) in MIGRATIONS.iter().enumerate() {
            assert_eq!(migration.version as usize, index + 1);
            assert!(!migration.description.is_empty());
            assert!(!migration.sql.trim().is_empty());
        }
        assert_eq!(
            MIGRATIONS.last().map(|m| m.version),
            Some(LATEST_SCHEMA_VERSION)
        );
        assert_eq!(embedded(0).map(|m| m.version), None);
        assert_eq!(embedded(1).map(|m| m.version), Some(1));
        assert!(embedded(LATEST_SCHEMA_VERSION + 1).is_none());
    }

    /// The SQL without `--` comments, lower-cased, whitespace collapsed.
    fn normalized(sql: &str) -> String {
        sql.lines()
            .map(|line| line.split("--").next().unwrap_or(""))
            .collect::<Vec<_>>()
            .join(" ")
            .to_lowercase()
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
    }

    #[test]
    fn no_migration_copies_with_select_star_or_controls_its_own_transaction() {
        for m in MIGRATIONS {
            let sql = normalized(m.sql);
            // SPEC §11: `INSERT … SELECT *` met a different column order in the field.
            assert!(
                !sql.contains("select *") && !sql.contains("select all *"),
                "migration {} uses SELECT *; name the columns",
                m.version
            );
            // Inserts must name their columns, so a reordered table cannot shift data.
            for insert in sql.split("insert into ").skip(1) {
                let head: String = insert.chars().take_while(|c| *c != '(').collect();
                assert!(
                    head.split_whitespace().count() == 1,
                    "migration {}: INSERT INTO without a column list",
                    m.version
                );
            }
            for word in ["begin", "commit", "rollback", "pragma", "vacuum"] {
                assert!(
                    !sql.split(|c: char| !c.is_ascii_alphanumeric() && c != '_')
                        .any(|w| w == word),
                    "migration {} contains {word}; the runner owns transactions and pragmas",
                    m.version
                );
            }
        }
    }

    #[test]
    fn checksum_is_sha256_hex() {
        assert_eq!(
            checksum("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn migrates_in_memory_and_records_every_step() {
        let mut conn = Connection::open_in_memory().unwrap();
        assert_eq!(database_version(&conn).unwrap(), 0);
        assert!(applied(&conn).unwrap().is_empty());
        assert_eq!(migrate_to(&mut conn, 3).unwrap(), vec![1, 2, 3]);
        assert_eq!(database_version(&conn).unwrap(), 3);
        let applied_versions: Vec<u32> = migrate(&mut conn).unwrap();
        assert_eq!(
            applied_versions,
            (4..=LATEST_SCHEMA_VERSION).collect::<Vec<_>>()
        );
        let rows = applied(&conn).unwrap();
        assert_eq!(rows.len(), LATEST_SCHEMA_VERSION as usize);
        for (row, m) in rows.iter().zip(MIGRATIONS) {
            assert_eq!(row.version, m.version);
            assert_eq!(row.description, m.description);
            assert_eq!(row.checksum, checksum(m.sql));
            assert!(row.applied_at > 1_700_000_000);
        }
        assert!(migrate(&mut conn).unwrap().is_empty());
        assert_eq!(checksum_mismatch(&conn).unwrap(), None);
        assert!(matches!(
            migrate_to(&mut conn, 2),
            Err(MigrationError::Downgrade { database, target: 2 }) if database == LATEST_SCHEMA_VERSION
        ));
        assert!(matches!(
            migrate_to(&mut conn, LATEST_SCHEMA_VERSION + 1),
            Err(MigrationError::UnknownTarget { .. })
        ));
    }

    #[test]
    fn foreign_keys_setting_is_restored() {
        let mut conn = Connection::open_in_memory().unwrap();
        conn.pragma_update(None, "foreign_keys", true).unwrap();
        migrate(&mut conn).unwrap();
        let on: bool = conn
            .query_row("PRAGMA foreign_keys", [], |r| r.get(0))
            .unwrap();
        assert!(on);
    }

    #[test]
    fn a_dangling_reference_rolls_the_migration_back_and_names_the_tables() {
        let mut conn = Connection::open_in_memory().unwrap();
        migrate_to(&mut conn, 2).unwrap();
        // Written with enforcement off, as an old buggy build might have left it.
        conn.execute_batch(
            "PRAGMA foreign_keys = OFF;
             INSERT INTO sessions (id, wallet_id, token_hash, expires_at, created_at)
             VALUES ('s1', 'no-such-wallet', 'h', 0, 0)",
        )
        .unwrap();
        let err = migrate_to(&mut conn, 3).unwrap_err();
        let message = err.to_string();
        assert!(
            matches!(err, MigrationError::ForeignKeyViolation { version: 3, .. }),
            "{message}"
        );
        assert!(message.contains("sessions → wallets (1 rows)"), "{message}");
        assert!(message.contains("create_transactions"), "{message}");
        assert_eq!(database_version(&conn).unwrap(), 2);
        let transactions: i64 = conn
            .query_row(
                "SELECT count(*) FROM sqlite_master WHERE name = 'transactions'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(transactions, 0);
    }

    #[test]
    fn refuses_inside_an_open_transaction() {
        let mut conn = Connection::open_in_memory().unwrap();
        conn.execute_batch("BEGIN").unwrap();
        assert!(matches!(
            migrate(&mut conn),
            Err(MigrationError::InTransaction)
        ));
    }
}
