//! STUB — being written (version-check worker). Interface only.
use waiaas_shared::config::Config;

use crate::db::Db;

/// Starts the worker; call once the daemon is ready.
pub fn spawn(_config: &Config, _db: Db) -> tokio::task::JoinHandle<()> {
    todo!()
}
