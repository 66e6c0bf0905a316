//! `waiaas-daemon`: thin entry point; the work is in the library's modules.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use waiaas_daemon::serve::Inherited;
use waiaas_daemon::{compat, control, migrate, serve};
use waiaas_shared::config::Config;
use waiaas_shared::exit::daemon as code;
use waiaas_shared::layout::DataDir;
use waiaas_shared::listen_fds;
use waiaas_shared::version::{DaemonVersion, VERSION};

#[derive(Parser)]
#[command(
    name = "waiaas-daemon",
    about = "The WAIaaS service",
    disable_version_flag = true
)]
struct Cli {
    /// Data dir (default: $WAIAAS_DATA_DIR, else ~/.waiaas).
    #[arg(long, global = true, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Print the version and the schema version this build migrates to.
    #[arg(long)]
    version: bool,
    /// With --version: print one JSON object (version, schema_version,
    /// min_compatible_schema_version), as packaging and the launcher read it.
    #[arg(long, requires = "version")]
    json: bool,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the HTTP API (the default).
    Serve,
    /// Migrate the database to this build's schema, then exit.
    Migrate {
        /// Skip the pre-migrate backup: the caller (the launcher's upgrade)
        /// has just made and verified one, and a second would only add downtime.
        #[arg(long)]
        no_backup: bool,
    },
    /// Say whether this build can run on the database, then exit.
    Check {
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
    },
}

fn main() -> ExitCode {
    // Before anything can start a thread: taking these edits the environment.
    let inherited = listen_fds::take_listener()
        .map_err(|e| e.to_string())
        .and_then(|listener| {
            let public = control::take_public_channel()?;
            let control = control::take_and_greet(public.is_some())?;
            Ok(Inherited {
                listener,
                control,
                public,
            })
        });
    let cli = Cli::parse();
    if cli.version {
        if cli.json {
            let info = DaemonVersion {
                version: VERSION.to_string(),
                schema_version: migrate::LATEST_SCHEMA_VERSION,
                min_compatible_schema_version: compat::min_compatible_schema_version(),
                probation: true,
            };
            println!(
                "{}",
                serde_json::to_string(&info).expect("a version serialises")
            );
        } else {
            println!(
                "waiaas-daemon {VERSION} (schema {})",
                migrate::LATEST_SCHEMA_VERSION
            );
        }
        return ExitCode::SUCCESS;
    }
    let code = run(cli, inherited);
    ExitCode::from(u8::try_from(code).unwrap_or(1))
}

fn run(cli: Cli, inherited: Result<Inherited, String>) -> i32 {
    let dir = match DataDir::resolve(cli.data_dir.as_deref()) {
        Ok(dir) => dir,
        Err(e) => return fail(code::FAILURE, &e),
    };
    let config = match Config::load(&dir.config()) {
        Ok(config) => config,
        Err(e) => return fail(code::CONFIG_INVALID, &e.to_string()),
    };
    init_logging(&config.daemon.log_level);
    match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => match inherited {
            Ok(inherited) => serve::run(&dir, &config, inherited),
            Err(e) => fail(code::FAILURE, &e),
        },
        Command::Migrate { no_backup } => {
            match serve::prepare_database(&dir, &config, !no_backup) {
                Ok(conn) => {
                    let version = migrate::database_version(&conn).unwrap_or_default();
                    println!("database at schema {version}");
                    code::OK
                }
                Err(refusal) => fail(refusal.code, &refusal.message),
            }
        }
        Command::Check { json } => check(&dir, json),
    }
}

fn check(dir: &DataDir, json: bool) -> i32 {
    let path = dir.database();
    if !path.exists() {
        return fail(code::FAILURE, &format!("no database at {}", path.display()));
    }
    let report =
        rusqlite::Connection::open_with_flags(&path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .and_then(|conn| compat::check(&conn));
    match report {
        Ok(report) => {
            if json {
                println!(
                    "{}",
                    serde_json::to_string(&report).expect("a report serialises")
                );
            } else {
                println!("{}", report.message);
            }
            report.refusal_code().unwrap_or(code::OK)
        }
        Err(e) => fail(
            code::FAILURE,
            &format!("cannot read {}: {e}", path.display()),
        ),
    }
}

fn fail(code: i32, message: &str) -> i32 {
    eprintln!("waiaas-daemon: {message}");
    code
}

fn init_logging(level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("WAIAAS_LOG").unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new(format!(
            "waiaas_daemon={level},waiaas_shared={level},warn"
        ))
    });
    // Colour only on a terminal: a log file or journald gets plain text.
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();
}
