//! The WAIaaS daemon: HTTP API over SQLite, schema migrations and the
//! compatibility check, and the background version check.

pub mod compat;
pub mod control;
pub mod db;
pub mod failpoint;
pub mod http;
pub mod lock;
pub mod migrate;
pub mod readers;
pub mod refusal;
pub mod serve;
pub mod server;
pub mod token;
pub mod version_check;
pub mod wal_room;
