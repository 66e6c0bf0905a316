//! STUB — being written (schema compatibility). Interface only.
use rusqlite::Connection;
use waiaas_shared::compat::CompatReport;

pub fn min_compatible_schema_version() -> u32 {
    todo!()
}

/// The verdict for `conn`'s database (SPEC §8 table).
pub fn check(_conn: &Connection) -> rusqlite::Result<CompatReport> {
    todo!()
}
