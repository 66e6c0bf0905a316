//! `waiaas-launcher upgrade`: the operator's side. It hands the request to a
//! running supervisor (and renders the progress it streams back), or runs
//! the engine itself when no supervisor is up. Exit codes: SPEC §6.

use std::io::{BufRead, BufReader, IsTerminal, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;

use clap::Args;

use waiaas_shared::admin::{
    Envelope, Outcome, Progress, Request, Response, UpgradeAction, UpgradeReport, UpgradeRequest,
};
use waiaas_shared::config::Config;
use waiaas_shared::control::{MAX_FRAME, PROTOCOL_VERSION};
use waiaas_shared::exit;
use waiaas_shared::layout::DataDir;
use waiaas_shared::version;

use crate::failure::{Failure, load_config};
use crate::upgrade::{Engine, Standalone, health_addr};
use crate::{package, probe, swap};

#[derive(Args, Debug)]
pub struct UpgradeArgs {
    /// Only say whether a newer version is available.
    #[arg(long, conflicts_with_all = ["to", "rollback", "from", "no_start"])]
    check: bool,
    /// Upgrade to this version instead of the newest.
    #[arg(long, value_name = "VERSION", conflicts_with_all = ["rollback", "from"])]
    to: Option<String>,
    /// Go back to the state before the last upgrade.
    #[arg(long, conflicts_with = "from")]
    rollback: bool,
    /// Leave the daemon stopped afterwards.
    #[arg(long)]
    no_start: bool,
    /// Upgrade from a release tarball on disk (offline).
    #[arg(long, value_name = "FILE")]
    from: Option<PathBuf>,
    /// Print one machine-readable JSON result on stdout.
    #[arg(long)]
    json: bool,
}

/// The container image is the unit of upgrade there (SPEC §9).
const CONTAINER_MESSAGE: &str = "this WAIaaS runs in a container, where the image is the unit of \
     upgrade: pull the new image and recreate the container (`docker compose pull && docker compose up -d`); \
     the daemon backs up and migrates its database at start";

pub fn run(dir: &DataDir, args: UpgradeArgs) -> Result<(), Failure> {
    if crate::daemon_binary::in_container() {
        return Err(Failure {
            code: exit::upgrade::USAGE as u8,
            message: CONTAINER_MESSAGE.into(),
        });
    }
    let config = load_config(dir)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::new(format!("cannot start the runtime: {e}")))?;
    if args.check {
        return runtime.block_on(check(dir, &config, args.json));
    }
    let action = if args.rollback {
        UpgradeAction::Rollback
    } else if let Some(file) = &args.from {
        let file = std::path::absolute(file)
            .map_err(|e| Failure::new(format!("{}: {e}", file.display())))?;
        UpgradeAction::FromFile(file)
    } else if let Some(to) = &args.to {
        UpgradeAction::To(to.clone())
    } else {
        UpgradeAction::Latest
    };
    let request = UpgradeRequest {
        action,
        no_start: args.no_start,
    };
    let mut render = |p: Progress| {
        if !args.json {
            eprintln!("[{}/{}] {}: {}", p.step, p.of, p.name, p.message);
        }
    };
    let report = match through_supervisor(dir, &request, &mut render)? {
        Some(report) => report,
        None => runtime.block_on(standalone(dir, &config, &request, &mut render, !args.json))?,
    };
    finish(report, args.json)
}

async fn check(dir: &DataDir, config: &Config, json: bool) -> Result<(), Failure> {
    let running = swap::current_version(dir)
        .ok()
        .flatten()
        .unwrap_or_else(|| version::VERSION.to_string());
    let latest = package::latest(config)
        .await
        .map_err(|e| Failure::new(e.to_string()))?
        .to_string();
    let available = version::is_newer(&latest, &running);
    if json {
        let out = serde_json::json!({
            "current": running, "latest": latest, "updateAvailable": available,
        });
        println!("{out}");
    } else if available {
        println!("Update available: {running} → {latest}\nRun: waiaas-launcher upgrade");
    } else {
        println!(
            "Up to date ({running}; the newest on `{}` is {latest})",
            config.update.channel
        );
    }
    Ok(())
}

/// Asks a running supervisor to do the upgrade; `None` if none runs.
fn through_supervisor(
    dir: &DataDir,
    request: &UpgradeRequest,
    render: &mut dyn FnMut(Progress),
) -> Result<Option<UpgradeReport>, Failure> {
    let Ok(stream) = UnixStream::connect(dir.launcher_socket()) else {
        return Ok(None);
    };
    let io_failed = |e: std::io::Error| {
        Failure::new(format!(
            "lost the connection to the supervisor during the upgrade ({e}); \
             see `waiaas-launcher status` and its log"
        ))
    };
    let envelope = Envelope {
        protocol: PROTOCOL_VERSION,
        request: Request::Upgrade(request.clone()),
    };
    let mut frame = serde_json::to_vec(&envelope).expect("a request serialises");
    frame.push(b'\n');
    (&stream).write_all(&frame).map_err(io_failed)?;
    let mut reader = BufReader::new(&stream);
    let mut line = String::new();
    // Bounded by the number of steps: each frame is one step or the end.
    for _ in 0..64 {
        line.clear();
        let n = std::io::Read::take(&mut reader, MAX_FRAME as u64)
            .read_line(&mut line)
            .map_err(io_failed)?;
        if n == 0 {
            return Err(io_failed(std::io::ErrorKind::UnexpectedEof.into()));
        }
        match serde_json::from_str::<Response>(&line) {
            Ok(Response::Progress(p)) => render(p),
            Ok(Response::Upgrade(report)) => return Ok(Some(report)),
            Ok(Response::Error { message }) => return Err(Failure::new(message)),
            Ok(other) => return Err(Failure::new(format!("unexpected answer: {other:?}"))),
            Err(e) => {
                return Err(Failure::new(format!(
                    "malformed answer from the supervisor: {e}"
                )));
            }
        }
    }
    Err(Failure::new(
        "the supervisor sent more progress than an upgrade has steps",
    ))
}

/// No supervisor: run the engine here, after making sure no daemon is serving
/// this installation unsupervised (it would be running on the files we change).
async fn standalone(
    dir: &DataDir,
    config: &Config,
    request: &UpgradeRequest,
    render: &mut dyn FnMut(Progress),
    progress_bar: bool,
) -> Result<UpgradeReport, Failure> {
    let addr = health_addr(config).map_err(Failure::new)?;
    if probe::health(addr, std::time::Duration::from_secs(1))
        .await
        .is_ok()
    {
        return Err(Failure::new(format!(
            "a WAIaaS daemon answers on {addr}, but no supervisor runs for {}; \
             stop that daemon, or start the service with `waiaas-launcher start` and upgrade through it",
            dir.root().display()
        )));
    }
    let mut host = Standalone { dir, config };
    let report = Engine {
        dir,
        config,
        host: &mut host,
        progress: render,
        progress_bar: progress_bar && std::io::stderr().is_terminal(),
    }
    .run(request)
    .await;
    let mut report = report;
    if matches!(report.outcome, Outcome::Upgraded | Outcome::Restored) && !request.no_start {
        report.message.push_str(
            ". WAIaaS was not running and is left stopped (the new version was started once and \
             answered /health); start it with `waiaas-launcher start`",
        );
    }
    Ok(report)
}

fn finish(report: UpgradeReport, json: bool) -> Result<(), Failure> {
    let code = report.outcome.exit_code();
    if json {
        println!(
            "{}",
            serde_json::to_string(&report).expect("a report serialises")
        );
    } else {
        if code == exit::upgrade::OK {
            println!("{}", report.message);
        }
        if let Some(backup) = &report.backup {
            eprintln!("backup: {backup}");
        }
        if !report.manual_steps.is_empty() {
            eprintln!("Do this by hand to get back to a working installation:");
            for (i, step) in report.manual_steps.iter().enumerate() {
                eprintln!("  {}. {step}", i + 1);
            }
        }
    }
    if code == exit::upgrade::OK {
        Ok(())
    } else {
        Err(Failure {
            code: code as u8,
            message: report.message,
        })
    }
}
