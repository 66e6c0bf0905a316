//! The supervisor's log: tracing to stderr, in colour only when stderr is a
//! terminal — a log file or a pipe (`run > file`, journald) gets plain text.

use std::io::IsTerminal;

/// Installs the subscriber; `WAIAAS_LOG` overrides the configured level.
pub fn init(level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("WAIAAS_LOG").unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new(format!("waiaas_launcher={level},warn"))
    });
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .init();
}
