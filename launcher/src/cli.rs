//! The command line: parse, dispatch, and show the update notice afterwards.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};

use waiaas_shared::config::Config;
use waiaas_shared::layout::DataDir;

use crate::upgrade_command::{self, UpgradeArgs};
use crate::{client, init, notice, supervisor};

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

/// What a command failed with: a message for the operator and an exit code.
#[derive(Debug)]
pub struct Failure {
    pub code: u8,
    pub message: String,
}

impl Failure {
    pub fn new(message: impl Into<String>) -> Self {
        Self {
            code: 1,
            message: message.into(),
        }
    }
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
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
        Command::Start => client::start(dir, &load_config(dir)?),
        Command::Stop => client::stop(dir),
        Command::Restart => client::restart(dir),
        Command::Status { json } => client::status(dir, json),
        Command::Upgrade(args) => upgrade_command::run(dir, args),
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

/// The config, or a failure naming the bad key.
/// The config, or a failure naming the bad key. Its exit code is the
/// daemon's `CONFIG_INVALID`, which systemd is told not to restart on.
pub fn load_config(dir: &DataDir) -> Result<Config, Failure> {
    Config::load(&dir.config()).map_err(|e| Failure {
        code: waiaas_shared::exit::daemon::CONFIG_INVALID as u8,
        message: e.to_string(),
    })
}

/// Whether this launcher runs inside the WAIaaS container image
/// (`WAIAAS_CONTAINER=1`), where the image, not `versions/`, holds the programs.
pub fn in_container() -> bool {
    std::env::var_os("WAIAAS_CONTAINER").is_some_and(|v| v == "1")
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
