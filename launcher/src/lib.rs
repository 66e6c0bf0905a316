//! The WAIaaS launcher: a thin, long-lived supervisor for the versioned
//! `waiaas-daemon`, and the engine that upgrades it. `main.rs` only calls
//! [`entry::delegate_to_newer`] and [`cli::run`]`(`[`cli::parse`]`())`.
//!
//! A tour, from the command line down:
//!
//! - [`entry`] first hands the command to the installation's newer launcher,
//!   if there is one; [`cli`] parses and dispatches; [`failure::Failure`] is
//!   what every command returns, turned into an exit code in one place.
//! - [`command`]: what an operator types beside `run` — `init`, `start`,
//!   `stop`, `restart`, `status`, `upgrade` (through a running supervisor or
//!   standalone) — and the update notice after it.
//! - [`supervisor`]: `run`, the long-lived process — a state machine with
//!   one event loop (with the `sd_notify` protocol beside it); [`logging`]
//!   sets up its log.
//! - [`upgrade`]: the engine — preflight and seven journaled steps, the
//!   journal, the upgrade lock, restoring a backup, rollback, recovery after
//!   a crash — and the [`upgrade::Host`] that stops and starts the daemon
//!   for it.
//! - [`auto`]: automatic upgrades' decisions — which release, when, the
//!   quarantine and the fleet lock — which the supervisor carries out with
//!   the engine.
//! - [`package`]: release packages — keys, registry download, archive safety,
//!   install into `versions/<v>`.
//! - Low-level pieces more than one of the above use: [`daemon_binary`]
//!   (running `waiaas-daemon`), [`probe`] (`GET /health`), [`pidfile`],
//!   [`orphan`] (a daemon no launcher supervises), [`swap`] (`current`),
//!   [`install_record`] (what `init` installed from a local build).
//!
//! Contracts spoken with the daemon and between commands and the supervisor
//! live in `waiaas-shared`.

pub mod auto;
pub mod cli;
pub mod command;
pub mod daemon_binary;
pub mod entry;
pub mod failure;
pub mod install_record;
pub mod logging;
pub mod orphan;
pub mod package;
pub mod pidfile;
pub mod probe;
pub mod supervisor;
pub mod swap;
pub mod upgrade;
