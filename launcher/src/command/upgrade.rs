//! `waiaas-launcher upgrade`: the operator's side. It hands the request to a
//! running supervisor (and renders the progress it streams back), or runs
//! the engine itself when no supervisor is up. Exit codes: SPEC §6.

use std::io::IsTerminal;
use std::path::PathBuf;

use clap::Args;

use waiaas_shared::admin::{
    Outcome, Progress, Request, Response, UpgradeAction, UpgradeReport, UpgradeRequest, client,
};
use waiaas_shared::config::Config;
use waiaas_shared::exit;
use waiaas_shared::layout::DataDir;
use waiaas_shared::version;

use crate::auto::fleet::{self, Duty, FleetLock};
use crate::auto::state::AutoState;
use crate::failure::{Failure, load_config};
use crate::pidfile::PidFile;
use crate::upgrade::lock::UpgradeLock;
use crate::upgrade::{Engine, Refusal, Standalone, health_addr, report};
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
    /// Let --to or --from install a release older than the installed one,
    /// on the present data (the new binary's schema check still applies).
    #[arg(long, conflicts_with = "rollback")]
    allow_downgrade: bool,
    /// Print one machine-readable JSON result on stdout.
    #[arg(long)]
    json: bool,
    /// Lift the quarantine of VERSION: automatic upgrades may install it again.
    #[arg(
        long,
        value_name = "VERSION",
        conflicts_with_all = ["check", "to", "rollback", "from", "no_start", "allow_downgrade"]
    )]
    forget: Option<String>,
    /// Give back the fleet lock's slot this installation holds (after an
    /// automatic upgrade rolled back, the fleet waits for this).
    #[arg(
        long,
        conflicts_with_all = ["check", "to", "rollback", "from", "no_start", "allow_downgrade", "forget"]
    )]
    fleet_release: bool,
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
    if let Some(version) = &args.forget {
        return forget(dir, version);
    }
    let config = load_config(dir)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::new(format!("cannot start the runtime: {e}")))?;
    if args.fleet_release {
        return runtime.block_on(fleet_release(dir));
    }
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
        say_if_quarantined(dir, to);
        UpgradeAction::To(to.clone())
    } else if let Some(folder) = package::newer_release_beside(dir) {
        // `npm install -g` brought a newer release with this launcher: that
        // one, verified as any, with no download (and so also offline).
        eprintln!(
            "Using the release beside this launcher ({}), newer than the installed one{}",
            folder.display(),
            if package::is_local_build(&folder) {
                ": a build without a signed release.json, accepted as your own"
            } else {
                ""
            }
        );
        UpgradeAction::FromFile(folder)
    } else {
        UpgradeAction::Latest
    };
    let request = UpgradeRequest {
        action,
        no_start: args.no_start,
        allow_downgrade: args.allow_downgrade,
    };
    let mut render = Render::new(args.json);
    let report = match through_supervisor(dir, &request, &mut |p| render.show(p))? {
        Some(report) => report,
        None => runtime.block_on(standalone(dir, &config, &request, &mut |p| render.show(p)))?,
    };
    render.finish();
    finish(report, args.json)
}

/// `--forget VERSION`: lifts a quarantine (SPEC §13). The supervisor reads
/// the quarantine at each check, so a running one follows without a restart.
fn forget(dir: &DataDir, version: &str) -> Result<(), Failure> {
    let usage = |message: String| Failure {
        code: exit::upgrade::USAGE as u8,
        message,
    };
    let version = semver::Version::parse(version)
        .map_err(|_| usage(format!("`{version}` is not a version (semver, e.g. 1.9.0)")))?;
    let listed = AutoState::update(dir, |state| {
        let lifted = state.forget(&version);
        (
            lifted,
            state
                .quarantined
                .iter()
                .map(|q| q.version.to_string())
                .collect::<Vec<_>>(),
        )
    })
    .map_err(|e| Failure::new(e.to_string()))?;
    match listed {
        (true, _) => {
            println!("{version} is no longer quarantined: automatic upgrades may install it again");
            Ok(())
        }
        (false, left) if left.is_empty() => Err(usage(format!(
            "{version} is not quarantined (no version is)"
        ))),
        (false, left) => Err(usage(format!(
            "{version} is not quarantined (quarantined: {})",
            left.join(", ")
        ))),
    }
}

/// `--fleet-release`: gives back the fleet lock's slot this installation
/// holds (SPEC §13) — on the server that gave it, then in the data dir,
/// where a running supervisor reads it at its next wake-up.
async fn fleet_release(dir: &DataDir) -> Result<(), Failure> {
    let usage = |message: String| Failure {
        code: exit::upgrade::USAGE as u8,
        message,
    };
    let state = AutoState::load(dir).map_err(|e| Failure::new(e.to_string()))?;
    let Some(slot) = state.fleet.clone() else {
        return Err(usage(
            "this installation holds no fleet lock slot: nothing to give back".into(),
        ));
    };
    let current = swap::current_version(dir)
        .ok()
        .flatten()
        .and_then(|v| semver::Version::parse(&v).ok());
    if let Some(current) = &current
        && let Duty::Upgrading(version) = fleet::duty(&state, current)
    {
        return Err(usage(format!(
            "the slot is held for the automatic upgrade to {version}, which has not ended: \
             wait for it (`waiaas-launcher status`)"
        )));
    }
    let id = crate::auto::state::install_id(dir).map_err(|e| Failure::new(e.to_string()))?;
    let lock = FleetLock::new(&slot.url, &slot.group, &id);
    lock.give_back().await.map_err(|e| {
        Failure::new(format!(
            "{e}; the slot (group {} at {}) is still held",
            slot.group,
            lock.shown()
        ))
    })?;
    AutoState::update(dir, |s| {
        if s.fleet.as_ref() == Some(&slot) {
            s.fleet = None;
        }
    })
    .map_err(|e| Failure::new(e.to_string()))?;
    println!(
        "Gave back the fleet lock's slot (group {} at {}), held since {} for {}: the fleet's \
         automatic upgrades go on.",
        slot.group,
        lock.shown(),
        slot.taken_at,
        slot.version
    );
    if state.is_quarantined(&slot.version) {
        println!(
            "{} stays quarantined here; the other nodes never tried it: make sure the registry \
             no longer offers it to them (deprecate it, or publish a fixed release).",
            slot.version
        );
    }
    Ok(())
}

/// A manual `--to` is always allowed, quarantined or not; it says so.
fn say_if_quarantined(dir: &DataDir, to: &str) {
    let (Ok(state), Ok(version)) = (AutoState::load(dir), semver::Version::parse(to)) else {
        return;
    };
    if let Some(q) = state.quarantined.iter().find(|q| q.version == version) {
        eprintln!(
            "{version} is quarantined for automatic upgrades ({}); installing it as you asked: \
             a manual upgrade is always allowed. Automatic upgrades still skip it until \
             `waiaas-launcher upgrade --forget {version}`.",
            q.reason
        );
    }
}

async fn check(dir: &DataDir, config: &Config, json: bool) -> Result<(), Failure> {
    let running = swap::current_version(dir)
        .ok()
        .flatten()
        .unwrap_or_else(|| version::VERSION.to_string());
    // The full packument: the dist-tag and, for the version it names,
    // whether the publisher withdrew it.
    let listing = package::releases(config)
        .await
        .map_err(|e| Failure::new(e.to_string()))?;
    let latest = listing.tag.to_string();
    // Deprecation is unsigned (anyone who can answer for the registry can set
    // it), so it may only hold an automatic install back, never cause one:
    // it is reported here, and a manual upgrade still installs the release.
    let deprecated = listing
        .release(&listing.tag)
        .and_then(|release| release.deprecated.clone());
    let available = version::is_newer(&latest, &running);
    if json {
        let out = serde_json::json!({
            "current": running, "latest": latest, "updateAvailable": available,
            "deprecated": deprecated,
        });
        println!("{out}");
        return Ok(());
    }
    let withdrawn = |message: &str| {
        format!("{latest} is deprecated on the registry ({message:?}): automatic upgrades skip it")
    };
    match (available, &deprecated) {
        (true, None) => {
            println!("Update available: {running} → {latest}\nRun: waiaas-launcher upgrade");
        }
        (true, Some(message)) => println!(
            "Update available: {running} → {latest}, but {}; \
             `waiaas-launcher upgrade --to {latest}` still installs it if you mean to",
            withdrawn(message)
        ),
        (false, _) => {
            println!(
                "Up to date ({running}; the newest on `{}` is {latest})",
                config.update.channel
            );
            if let Some(message) = &deprecated {
                println!("{}", withdrawn(message));
            }
        }
    }
    Ok(())
}

/// Asks a running supervisor to do the upgrade; `None` if none runs. The
/// answer streams until the report: the supervisor's step deadlines bound it,
/// and its death ends the connection.
fn through_supervisor(
    dir: &DataDir,
    request: &UpgradeRequest,
    render: &mut dyn FnMut(Progress),
) -> Result<Option<UpgradeReport>, Failure> {
    let lost = |e: client::ClientError| match e {
        client::ClientError::Malformed(_) => super::service::misunderstood(dir, e),
        e => Failure::new(format!(
            "lost the connection to the supervisor during the upgrade ({e}); \
             see `waiaas-launcher status` and its log"
        )),
    };
    let Some(mut connection) = client::send(
        &dir.launcher_socket(),
        Request::Upgrade(request.clone()),
        None,
    )
    .map_err(lost)?
    else {
        return Ok(None);
    };
    loop {
        match connection.next().map_err(lost)? {
            Response::Progress(p) => render(p),
            Response::Upgrade(report) => return Ok(Some(report)),
            Response::Error { message } => return Err(Failure::new(message)),
            other => return Err(Failure::new(format!("unexpected answer: {other:?}"))),
        }
    }
}

/// Shows progress: one line per step, and a byte-counting bar for a
/// download on a terminal; nothing with `--json` (stdout is the report).
struct Render {
    json: bool,
    terminal: bool,
    bar: Option<indicatif::ProgressBar>,
}

impl Render {
    fn new(json: bool) -> Self {
        Self {
            json,
            terminal: std::io::stderr().is_terminal(),
            bar: None,
        }
    }

    fn show(&mut self, p: Progress) {
        if self.json {
            return;
        }
        match p.bytes {
            Some(bytes) if self.terminal => {
                let bar = self
                    .bar
                    .get_or_insert_with(|| download_bar(bytes.total, &p.message));
                if let Some(total) = bytes.total {
                    bar.set_length(total);
                }
                bar.set_position(bytes.done);
            }
            // Plain output gets the total once, not a line per chunk.
            Some(bytes) => {
                if bytes.total == Some(bytes.done) {
                    eprintln!("[{}/{}] {}: {} bytes", p.step, p.of, p.message, bytes.done);
                }
            }
            None => {
                self.finish();
                eprintln!("[{}/{}] {}: {}", p.step, p.of, p.name, p.message);
            }
        }
    }

    fn finish(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
    }
}

fn download_bar(total: Option<u64>, message: &str) -> indicatif::ProgressBar {
    use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
    let bar = ProgressBar::with_draw_target(total, ProgressDrawTarget::stderr());
    let template = if total.is_some() {
        "{msg} [{bar:30}] {bytes}/{total_bytes} ({bytes_per_sec}, {eta})"
    } else {
        "{msg} {spinner} {bytes} ({bytes_per_sec})"
    };
    if let Ok(style) = ProgressStyle::with_template(template) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_message(message.to_string());
    bar
}

/// No supervisor: run the engine here, holding the upgrade lock from before
/// its checks to the end — a supervisor starting meanwhile waits for it
/// (`crate::upgrade::lock::wait_for_upgrade`) — after making sure no supervisor is
/// starting and no daemon serves this installation unsupervised (either
/// would be running on the files we change).
async fn standalone(
    dir: &DataDir,
    config: &Config,
    request: &UpgradeRequest,
    render: &mut (dyn FnMut(Progress) + Send),
) -> Result<UpgradeReport, Failure> {
    let lock = match UpgradeLock::acquire(dir) {
        Ok(lock) => lock,
        Err(message) => return Ok(report::refused(None, None, &Refusal::Locked(message))),
    };
    // Taken after its pid file: a supervisor that is not seen here sees
    // this lock, and waits.
    if let Some(pid) = PidFile::holder(dir) {
        let refusal = Refusal::SupervisorStarting {
            pid,
            dir: dir.root().to_path_buf(),
        };
        return Ok(report::refused(None, None, &refusal));
    }
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
    }
    .run_holding(&lock, request)
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
