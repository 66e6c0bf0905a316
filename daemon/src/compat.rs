//! Whether this daemon may open a database, and what it must do first
//! (SPEC §8): start, migrate, or refuse with directions for the operator.
//!
//! The supported window comes from `migrations/compat.toml` (release → schema,
//! embedded by `build.rs`): a release migrates databases made by the last
//! three minor lines up to and including itself.

use rusqlite::Connection;
use semver::Version;
use waiaas_shared::compat::{CompatReport, Verdict};

use crate::migrate::{self, LATEST_SCHEMA_VERSION};

/// A published release and the schema version it ships.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Release {
    pub version: Version,
    pub schema: u32,
}

// Defines `RELEASES` (compat.toml, in semver order) and `THIS_RELEASE`.
include!(concat!(env!("OUT_DIR"), "/compat_table.rs"));

/// How many minor lines, its own included, a release migrates from directly.
pub const SUPPORTED_MINOR_LINES: usize = 3;

/// The oldest schema `release` migrates directly: the schema of the first
/// release of the oldest of the last [`SUPPORTED_MINOR_LINES`] minor lines up
/// to and including `release`'s own. `None` when the table cannot tell.
pub fn min_compatible_for(releases: &[Release], release: &Version) -> Option<u32> {
    let mut known: Vec<&Release> = releases.iter().filter(|r| r.version <= *release).collect();
    // semver order, never text order: 1.10.0 comes after 1.9.0.
    known.sort_by(|a, b| a.version.cmp(&b.version));
    // Each minor line with the schema of its first release.
    let mut lines: Vec<((u64, u64), Option<u32>)> = Vec::new();
    for r in known {
        let line = (r.version.major, r.version.minor);
        if lines.last().is_none_or(|(last, _)| *last != line) {
            lines.push((line, Some(r.schema)));
        }
    }
    // The release's own line counts even when the table does not list it yet.
    let own = (release.major, release.minor);
    if lines.last().is_none_or(|(last, _)| *last != own) {
        lines.push((own, None));
    }
    let oldest = lines.len().saturating_sub(SUPPORTED_MINOR_LINES);
    lines.get(oldest).and_then(|(_, schema)| *schema)
}

/// The releases to go through, in order, to bring a database at schema `db`
/// within `current`'s window; each is the newest release (older than
/// `current`) that migrates the schema reached so far directly. Empty when no
/// detour is needed; `None` when no release in the table can help.
pub fn upgrade_path(releases: &[Release], current: &Version, db: u32) -> Option<Vec<Version>> {
    let goal = min_compatible_for(releases, current)?;
    let mut at = db;
    let mut path = Vec::new();
    while at < goal {
        let next = releases
            .iter()
            .filter(|r| r.version < *current && r.schema > at)
            .filter(|r| min_compatible_for(releases, &r.version).is_some_and(|min| min <= at))
            .max_by(|a, b| a.version.cmp(&b.version))?;
        path.push(next.version.clone());
        at = next.schema;
    }
    Some(path)
}

/// `MIN_COMPATIBLE_SCHEMA_VERSION`: the oldest schema this daemon migrates.
pub fn min_compatible_schema_version() -> u32 {
    // Without a table entry to go by, only the current schema is known to be safe.
    min_compatible_for(RELEASES, &THIS_RELEASE).unwrap_or(LATEST_SCHEMA_VERSION)
}

/// The verdict for `conn`'s database (SPEC §8 table). A changed migration is
/// judged first: no other answer can be trusted for such a database.
pub fn check(conn: &Connection) -> rusqlite::Result<CompatReport> {
    let database_version = migrate::database_version(conn)?;
    let latest = LATEST_SCHEMA_VERSION;
    let min_compatible = min_compatible_schema_version();
    let this = env!("CARGO_PKG_VERSION");
    let db = database_version;

    let (verdict, message) = if let Some(version) = migrate::checksum_mismatch(conn)? {
        let description = migrate::embedded(version).map_or("", |m| m.description);
        (
            Verdict::ChecksumMismatch { version },
            format!(
                "Migration {version} ({description}) recorded in the database differs from the one \
                 this daemon carries, so the schema cannot be trusted; restore the database from a \
                 backup taken by a released version."
            ),
        )
    } else if db == 0 {
        (
            Verdict::Fresh,
            format!("The database has no schema yet; the daemon creates schema {latest} at start."),
        )
    } else if db > latest {
        (
            Verdict::TooNew,
            format!(
                "The database is at schema {db}, newer than this daemon ({this}, schema {latest}); \
                 {} to move to the release that wrote it.",
                waiaas_shared::container::how_to_upgrade()
            ),
        )
    } else if db == latest {
        (
            Verdict::Current,
            format!("The database is at schema {db}, the latest this daemon knows."),
        )
    } else if db >= min_compatible {
        (
            Verdict::Migrate,
            format!(
                "The database is at schema {db}; the daemon backs it up and migrates it to \
                 schema {latest} at start."
            ),
        )
    } else {
        let path = upgrade_path(RELEASES, &THIS_RELEASE, db).unwrap_or_default();
        let (verdict, message) = match path.split_first() {
            Some((first, later)) => {
                let later = if later.is_empty() {
                    String::new()
                } else {
                    let names: Vec<String> = later.iter().map(Version::to_string).collect();
                    format!(" (then {})", names.join(", "))
                };
                (
                    Verdict::TooOld {
                        upgrade_through: Some(first.to_string()),
                    },
                    format!(
                        "The database is at schema {db}, too old for {this} (which migrates \
                         schema {min_compatible} and later); upgrade through {first} \
                         first{later}, then to {this}."
                    ),
                )
            }
            None => (
                Verdict::TooOld {
                    upgrade_through: None,
                },
                format!(
                    "The database is at schema {db}, older than any release known to {this} \
                     can migrate; restore a newer backup or start from an empty data directory."
                ),
            ),
        };
        (verdict, message)
    };
    Ok(CompatReport {
        database_version,
        latest,
        min_compatible,
        verdict,
        message,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(entries: &[(&str, u32)]) -> Vec<Release> {
        entries
            .iter()
            .map(|(v, schema)| Release {
                version: Version::parse(v).unwrap(),
                schema: *schema,
            })
            .collect()
    }

    fn v(text: &str) -> Version {
        Version::parse(text).unwrap()
    }

    #[test]
    fn this_release_has_an_entry_equal_to_the_newest_migration() {
        // A version bump without a compat.toml line fails here.
        let mut this = v(env!("CARGO_PKG_VERSION"));
        this.pre = semver::Prerelease::EMPTY;
        this.build = semver::BuildMetadata::EMPTY;
        assert_eq!(this, THIS_RELEASE);
        let entry = RELEASES.iter().find(|r| r.version == this);
        assert_eq!(
            entry.map(|r| r.schema),
            Some(LATEST_SCHEMA_VERSION),
            "migrations/compat.toml must map {this} to schema {LATEST_SCHEMA_VERSION}"
        );
    }

    #[test]
    fn the_embedded_table_is_in_semver_order_with_rising_schemas() {
        for pair in RELEASES.windows(2) {
            assert!(pair[0].version < pair[1].version);
            assert!(pair[0].schema <= pair[1].schema);
        }
    }

    #[test]
    fn min_compatible_for_1_8_1_is_the_schema_of_1_6_0() {
        let schema_1_6_0 = RELEASES
            .iter()
            .find(|r| r.version == v("1.6.0"))
            .map(|r| r.schema);
        assert_eq!(Some(min_compatible_schema_version()), schema_1_6_0);
        assert_eq!(min_compatible_schema_version(), 12);
    }

    #[test]
    fn the_rule_takes_the_first_release_of_the_oldest_of_three_lines() {
        let releases = table(&[
            ("1.0.0", 1),
            ("1.1.0", 2),
            ("1.1.3", 3),
            ("1.2.0", 4),
            ("1.3.0", 5),
            ("1.3.1", 6),
        ]);
        assert_eq!(min_compatible_for(&releases, &v("1.0.0")), Some(1));
        assert_eq!(min_compatible_for(&releases, &v("1.2.0")), Some(1));
        // Lines 1.1, 1.2, 1.3: the first 1.1 release, not 1.1.3.
        assert_eq!(min_compatible_for(&releases, &v("1.3.1")), Some(2));
        // Releases after the one asked about do not count.
        assert_eq!(min_compatible_for(&releases, &v("1.1.3")), Some(1));
        // A release missing from the table still opens its own line.
        assert_eq!(min_compatible_for(&releases, &v("1.4.0")), Some(4));
        // Lines run across majors: 1.2, 1.3, 2.0.
        assert_eq!(min_compatible_for(&releases, &v("2.0.0")), Some(4));
        assert_eq!(min_compatible_for(&[], &v("1.0.0")), None);
    }

    #[test]
    fn minor_lines_sort_as_semver_not_text() {
        // As text "1.10.0" < "1.8.0" < "1.9.0"; listed shuffled on purpose.
        let releases = table(&[
            ("1.10.0", 30),
            ("1.8.0", 10),
            ("1.9.0", 20),
            ("1.10.1", 31),
            ("1.11.0", 40),
        ]);
        assert_eq!(min_compatible_for(&releases, &v("1.10.1")), Some(10));
        assert_eq!(min_compatible_for(&releases, &v("1.11.0")), Some(20));
        // As text 1.9.0 would look newest; by semver it is 1.10.1 (migrates from 10).
        assert_eq!(
            upgrade_path(&releases, &v("1.12.0"), 10),
            Some(vec![v("1.10.1")])
        );
    }

    #[test]
    fn upgrade_path_names_the_newest_release_that_migrates_directly() {
        let this = &THIS_RELEASE;
        // 1.7.0 (lines 1.5–1.7) migrates from 1.5.0's schema 10.
        assert_eq!(upgrade_path(RELEASES, this, 11), Some(vec![v("1.7.0")]));
        assert_eq!(upgrade_path(RELEASES, this, 10), Some(vec![v("1.7.0")]));
        // 1.6.x (lines 1.4–1.6) migrates from 1.4.0's schema 9.
        assert_eq!(upgrade_path(RELEASES, this, 9), Some(vec![v("1.6.1")]));
        assert_eq!(
            upgrade_path(RELEASES, this, 8),
            Some(vec![v("1.5.2"), v("1.7.0")])
        );
        let from_one = upgrade_path(RELEASES, this, 1).unwrap();
        assert_eq!(from_one.first(), Some(&v("0.11.0")));
        assert_eq!(upgrade_path(RELEASES, this, 12), Some(vec![]));
    }

    fn check_at(version: u32) -> CompatReport {
        let mut conn = Connection::open_in_memory().unwrap();
        migrate::migrate_to(&mut conn, version).unwrap();
        check(&conn).unwrap()
    }

    #[test]
    fn verdicts_follow_the_spec_table() {
        assert_eq!(check_at(0).verdict, Verdict::Fresh);
        assert_eq!(check_at(LATEST_SCHEMA_VERSION).verdict, Verdict::Current);
        let migrate = check_at(12);
        assert_eq!(migrate.verdict, Verdict::Migrate);
        assert_eq!(
            (
                migrate.database_version,
                migrate.latest,
                migrate.min_compatible
            ),
            (12, LATEST_SCHEMA_VERSION, 12)
        );
        let old = check_at(9);
        assert_eq!(
            old.verdict,
            Verdict::TooOld {
                upgrade_through: Some("1.6.1".into())
            }
        );
        assert!(
            old.message.contains("upgrade through 1.6.1 first"),
            "{}",
            old.message
        );
        assert!(old.refusal_code().is_some());
    }
}
