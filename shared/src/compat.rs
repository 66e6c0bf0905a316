//! The verdict of the daemon's schema-compatibility check (SPEC §8), as
//! `waiaas-daemon check --json` prints it and the launcher reads it.

use serde::{Deserialize, Serialize};

use crate::exit;

/// What the daemon will do with a database.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "verdict", rename_all = "snake_case")]
pub enum Verdict {
    /// No schema yet: a fresh install, created at start.
    Fresh,
    /// The database is at this daemon's latest schema.
    Current,
    /// Within the supported window: back up, then migrate at start.
    Migrate,
    /// Newer than this daemon: refuse.
    TooNew,
    /// Older than the supported window: refuse, naming a release to go through.
    TooOld { upgrade_through: Option<String> },
    /// An applied migration's SQL is not the one this daemon carries: refuse.
    ChecksumMismatch { version: u32 },
}

/// The full report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CompatReport {
    /// The database's schema version (0 when it has none).
    pub database_version: u32,
    /// `LATEST_SCHEMA_VERSION` of the daemon that checked.
    pub latest: u32,
    /// `MIN_COMPATIBLE_SCHEMA_VERSION` of the daemon that checked.
    pub min_compatible: u32,
    #[serde(flatten)]
    pub verdict: Verdict,
    /// One operator-facing sentence.
    pub message: String,
}

impl CompatReport {
    /// The permanent exit code for a refusal; `None` when the daemon may start.
    pub fn refusal_code(&self) -> Option<i32> {
        match self.verdict {
            Verdict::Fresh | Verdict::Current | Verdict::Migrate => None,
            Verdict::TooNew => Some(exit::daemon::SCHEMA_TOO_NEW),
            Verdict::TooOld { .. } => Some(exit::daemon::SCHEMA_TOO_OLD),
            Verdict::ChecksumMismatch { .. } => Some(exit::daemon::SCHEMA_CHECKSUM_MISMATCH),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_is_flat_and_tagged() {
        let report = CompatReport {
            database_version: 9,
            latest: 16,
            min_compatible: 12,
            verdict: Verdict::TooOld {
                upgrade_through: Some("1.5.2".into()),
            },
            message: "too old".into(),
        };
        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(json["verdict"], "too_old");
        assert_eq!(json["upgrade_through"], "1.5.2");
        assert_eq!(json["database_version"], 9);
        let back: CompatReport = serde_json::from_value(json).unwrap();
        assert_eq!(back, report);
        assert_eq!(back.refusal_code(), Some(exit::daemon::SCHEMA_TOO_OLD));
    }
}
