//! The WAIaaS daemon: HTTP API over SQLite, schema migrations and the
//! compatibility check, and the background version check.

pub mod compat;
pub mod db;
pub mod migrate;
pub mod version_check;
