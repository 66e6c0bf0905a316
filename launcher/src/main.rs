//! `waiaas-launcher`: supervises the versioned WAIaaS daemon and upgrades it.
//! Thin entry point; each command lives in its own module.

mod cli;
mod client;
mod init;
mod journal;
mod lock;
mod notice;
mod package;
mod pidfile;
mod probe;
mod restore;
mod sdnotify;
mod supervisor;
mod swap;
mod upgrade;
mod upgrade_command;

fn main() -> std::process::ExitCode {
    cli::main()
}
