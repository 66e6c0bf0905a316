//! STUB — being written (migrations runner). Interface only.
use rusqlite::Connection;

pub const LATEST_SCHEMA_VERSION: u32 = 16;

#[derive(Debug, thiserror::Error)]
#[error("migration failed")]
pub struct MigrationError;

/// The database's schema version (0 when it has no schema yet).
pub fn database_version(_conn: &Connection) -> rusqlite::Result<u32> {
    todo!()
}

/// Applies every pending migration, each in its own transaction; returns the versions applied.
pub fn migrate(_conn: &mut Connection) -> Result<Vec<u32>, MigrationError> {
    todo!()
}
