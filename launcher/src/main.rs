//! `waiaas-launcher`: supervises the versioned WAIaaS daemon and upgrades it.
//! Thin entry point; each command lives in its own module.

mod cli;
mod client;
mod init;
mod notice;
mod pidfile;
mod probe;
mod sdnotify;
mod supervisor;

fn main() -> std::process::ExitCode {
    cli::main()
}
