//! The WAIaaS launcher: a thin, long-lived supervisor for the versioned
//! `waiaas-daemon`, and the engine that upgrades it. `main.rs` only calls
//! [`entry::delegate_to_newer`] and [`cli::run`]`(`[`cli::parse`]`())`.
//!
//! A tour, from the command line down:
//!
//! - [`entry`] first hands the command to the installation's newer launcher,
//!   if there is one; [`cli`] parses and dispatches; [`failure::Failure`] is
//!   what every command returns, turned into an exit code in one place.
//! - Commands: [`init`] (data dir and first install), [`client`] (`start`,
//!   `stop`, `restart`, `status` over the admin socket), [`upgrade_command`]
//!   (`upgrade`, through a running supervisor or standalone), [`notice`]
//!   (the update notice).
//! - [`supervisor`]: `run`, the long-lived process — a state machine with
//!   one event loop; [`logging`] sets up its log.
//! - [`upgrade`]: the engine — preflight and seven journaled steps, rollback,
//!   recovery after a crash — and the [`upgrade::Host`] that stops and starts
//!   the daemon for it.
//! - [`auto`]: automatic upgrades' decisions — which release, when, and the
//!   quarantine — which the supervisor carries out with the engine.
//! - [`package`]: release packages — keys, registry download, archive safety,
//!   install into `versions/<v>`.
//! - Low-level pieces both sides use: [`daemon_binary`] (running
//!   `waiaas-daemon`), [`probe`] (`GET /health`), [`sdnotify`], [`pidfile`]
//!   and [`lock`], [`orphan`] (a daemon no launcher supervises), [`journal`], [`swap`] (`current`), [`restore`],
//!   [`install_record`] (what `init` installed from a local build).
//!
//! Contracts spoken with the daemon and between commands and the supervisor
//! live in `waiaas-shared`.

pub mod auto;
pub mod cli;
pub mod client;
pub mod daemon_binary;
pub mod entry;
pub mod failure;
pub mod init;
pub mod install_record;
pub mod journal;
pub mod lock;
pub mod logging;
pub mod notice;
pub mod orphan;
pub mod package;
pub mod pidfile;
pub mod probe;
pub mod restore;
pub mod sdnotify;
pub mod supervisor;
pub mod swap;
pub mod upgrade;
pub mod upgrade_command;
