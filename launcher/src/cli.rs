//! The command line: parse, dispatch, and show the update notice afterwards.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};

use waiaas_shared::layout::DataDir;

use crate::command::upgrade::UpgradeArgs;
use crate::command::{init, notice, service, upgrade};
use crate::failure::{Failure, load_config};
use crate::supervisor;

#[derive(Parser)]
#[command(
    name = "waiaas-launcher",
    version,
    about = "Supervises and upgrades the WAIaaS daemon"
)]
pub struct Cli {
    /// Data dir (default: $WAIAAS_DATA_DIR, else ~/.waiaas).
    #[arg(long, global = true, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// No update notice.
    #[arg(long, short, global = true)]
    pub quiet: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Create the data dir and config, and install the daemon beside this launcher.
    Init,
    /// Supervise the daemon in the foreground (what systemd and the image run).
    Run,
    /// Start the supervisor in the background.
    Start,
    /// Stop the daemon and the supervisor.
    Stop,
    /// Restart the daemon without dropping connections.
    Restart,
    /// Show the supervisor's and the daemon's state.
    Status {
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Move to a new version safely, or back to the state before the last upgrade.
    Upgrade(UpgradeArgs),
    /// Print a shell completion script.
    Completions { shell: clap_complete::Shell },
}

/// The command line as given.
pub fn parse() -> Cli {
    Cli::parse()
}

/// Runs a parsed command line; the one place a [`Failure`] becomes an exit code.
pub fn run(cli: Cli) -> ExitCode {
    let dir = match DataDir::resolve(cli.data_dir.as_deref()) {
        Ok(dir) => dir,
        Err(e) => return report(Err(Failure::new(e))),
    };
    let shows_notice = !matches!(cli.command, Command::Run | Command::Upgrade(_));
    let result = dispatch(cli.command, &dir);
    if shows_notice {
        notice::maybe_show(&dir, cli.quiet);
    }
    report(result)
}

fn dispatch(command: Command, dir: &DataDir) -> Result<(), Failure> {
    match command {
        Command::Init => init::run(dir),
        Command::Run => supervisor::run(dir, &load_config(dir)?),
        Command::Start => service::start(dir, &load_config(dir)?),
        Command::Stop => service::stop(dir),
        Command::Restart => service::restart(dir),
        Command::Status { json } => service::status(dir, json),
        Command::Upgrade(args) => upgrade::run(dir, args),
        Command::Completions { shell } => {
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "waiaas-launcher",
                &mut std::io::stdout(),
            );
            Ok(())
        }
    }
}

fn report(result: Result<(), Failure>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            eprintln!("waiaas-launcher: {}", failure.message);
            ExitCode::from(failure.code)
        }
    }
}
