//! Process exit codes: one table both processes read, so the supervisor (and
//! systemd's `RestartPreventExitStatus=`) can tell a crash from a refusal that
//! a restart cannot cure.

/// Daemon exit codes.
pub mod daemon {
    /// Clean shutdown.
    pub const OK: i32 = 0;
    /// A runtime failure; a restart may help.
    pub const FAILURE: i32 = 1;
    /// The command line was malformed (clap's own code).
    pub const USAGE: i32 = 2;
    /// The database schema is newer than this daemon knows.
    pub const SCHEMA_TOO_NEW: i32 = 20;
    /// The database schema is older than this daemon can migrate directly.
    pub const SCHEMA_TOO_OLD: i32 = 21;
    /// An applied migration's SQL differs from the one this daemon carries.
    pub const SCHEMA_CHECKSUM_MISMATCH: i32 = 22;
    /// A migration failed; the database was left at the version before it.
    pub const MIGRATION_FAILED: i32 = 23;
    /// config.toml (or an override) is invalid.
    pub const CONFIG_INVALID: i32 = 24;

    /// Codes a supervisor must not restart on: the same start would fail the same way.
    pub const PERMANENT: [i32; 5] = [
        SCHEMA_TOO_NEW,
        SCHEMA_TOO_OLD,
        SCHEMA_CHECKSUM_MISMATCH,
        MIGRATION_FAILED,
        CONFIG_INVALID,
    ];

    /// Whether `code` is one of the [`PERMANENT`] refusals.
    pub fn is_permanent(code: i32) -> bool {
        PERMANENT.contains(&code)
    }

    /// An operator-facing name for an exit code.
    pub fn describe(code: i32) -> &'static str {
        match code {
            OK => "exited cleanly",
            FAILURE => "failed",
            USAGE => "was started with a malformed command line",
            SCHEMA_TOO_NEW => "refused: the database is newer than this daemon",
            SCHEMA_TOO_OLD => "refused: the database is too old for a direct upgrade",
            SCHEMA_CHECKSUM_MISMATCH => "refused: an applied migration was changed",
            MIGRATION_FAILED => "refused: a migration failed",
            CONFIG_INVALID => "refused: the configuration is invalid",
            _ => "exited with an unexpected code",
        }
    }
}

/// `waiaas-launcher upgrade` exit codes (SPEC §6).
pub mod upgrade {
    /// Upgraded, or already up to date.
    pub const OK: i32 = 0;
    /// Failed and rolled back cleanly.
    pub const ROLLED_BACK: i32 = 1;
    /// Usage error.
    pub const USAGE: i32 = 2;
    /// Failed, and the rollback failed too: manual steps were printed.
    pub const ROLLBACK_FAILED: i32 = 3;
}

#[cfg(test)]
mod tests {
    use super::daemon::*;

    #[test]
    fn permanent_codes_are_distinct_from_ordinary_ones() {
        assert!(!is_permanent(OK));
        assert!(!is_permanent(FAILURE));
        assert!(!is_permanent(USAGE));
        for code in PERMANENT {
            assert!(is_permanent(code));
            assert_ne!(describe(code), describe(FAILURE));
        }
    }
}
