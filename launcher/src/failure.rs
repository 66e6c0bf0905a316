//! What a command failed with: one message for the operator and one exit
//! code. Every module returns it; only `cli::run` turns it into an exit.

use waiaas_shared::config::Config;
use waiaas_shared::layout::DataDir;

/// A failed command: a message for the operator and an exit code.
#[derive(Debug)]
pub struct Failure {
    pub code: u8,
    pub message: String,
}

impl Failure {
    /// A failure with exit code 1.
    pub fn new(message: impl Into<String>) -> Self {
        Self {
            code: 1,
            message: message.into(),
        }
    }
}

/// The config, or a failure naming the bad key. Its exit code is the
/// daemon's `CONFIG_INVALID`, which systemd is told not to restart on.
pub fn load_config(dir: &DataDir) -> Result<Config, Failure> {
    Config::load(&dir.config()).map_err(|e| Failure {
        code: waiaas_shared::exit::daemon::CONFIG_INVALID as u8,
        message: e.to_string(),
    })
}
