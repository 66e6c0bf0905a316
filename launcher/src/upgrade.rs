//! The upgrade engine (SPEC §6). One engine for both ways in: the supervisor
//! runs it for `waiaas-launcher upgrade` when it is up, and the command runs
//! it itself when it is not. The difference is only in the [`Host`] — who
//! stops and starts the daemon.
//!
//! An upgrade is a preflight that may fail without any downtime, then seven
//! journaled steps, committed only once the new daemon answers `/health`.
//! Any failure after the preflight rolls back from the journal; so does the
//! next launcher start after a crash ([`recover`]). The installation always
//! ends fully old or fully new.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use semver::Version;

use waiaas_shared::admin::{Outcome, Progress, UpgradeAction, UpgradeReport, UpgradeRequest};
use waiaas_shared::backup::{self, Kind};
use waiaas_shared::compat::{CompatReport, Verdict};
use waiaas_shared::config::Config;
use waiaas_shared::layout::DataDir;

use crate::journal::{Journal, Operation, Phase};
use crate::lock::UpgradeLock;
use crate::package::{self, Installed};
use crate::restore;
use crate::swap;

/// Who stops and starts the daemon: the supervisor, or nobody (standalone).
// The engine is polled on the launcher's one thread, never sent to another.
#[allow(async_fn_in_trait)]
pub trait Host {
    /// Whether a daemon runs now (a rollback starts one again only if so).
    fn daemon_running(&self) -> bool;
    /// Stops the daemon gracefully; returns once it has exited.
    async fn stop_daemon(&mut self) -> Result<(), String>;
    /// Starts the daemon `current` points at and waits until `/health`
    /// reports `version`.
    async fn start_daemon(&mut self, version: &str) -> Result<(), String>;
}

/// Steps of an upgrade, in order (SPEC §6); step 1 is the preflight.
const UPGRADE_STEPS: [&str; 7] = [
    "check the registry and verify the release",
    "stop the daemon",
    "back up the database and config",
    "switch to the new version",
    "migrate the database",
    "verify the schema",
    "start the daemon",
];

/// Steps of `--rollback`.
const ROLLBACK_STEPS: [&str; 6] = [
    "choose the backup",
    "stop the daemon",
    "back up the present state",
    "restore the database and config",
    "switch to the backup's version",
    "start the daemon",
];

/// Everything the engine works with.
pub struct Engine<'a, H: Host> {
    pub dir: &'a DataDir,
    pub config: &'a Config,
    pub host: &'a mut H,
    /// Called as each step starts.
    pub progress: &'a mut dyn FnMut(Progress),
    /// Draw a download progress bar (a terminal, not `--json`).
    pub progress_bar: bool,
}

/// Why a step failed.
type StepResult<T> = Result<T, String>;

impl<H: Host> Engine<'_, H> {
    fn announce(&mut self, steps: &[&str], step: u8, message: impl Into<String>) {
        (self.progress)(Progress {
            step,
            of: steps.len() as u8,
            name: steps[usize::from(step) - 1].to_string(),
            message: message.into(),
        });
    }

    /// Runs `request` under the upgrade lock, after finishing any change a
    /// crash left half-done.
    pub async fn run(&mut self, request: &UpgradeRequest) -> UpgradeReport {
        let _lock = match UpgradeLock::acquire(self.dir) {
            Ok(lock) => lock,
            Err(message) => return refused(None, None, message),
        };
        if let Err(report) = self.recover_locked().await {
            return report;
        }
        match &request.action {
            UpgradeAction::Rollback => self.rollback(request.no_start).await,
            action => self.upgrade(action, request.no_start).await,
        }
    }

    /// [`recover`] for callers that already hold the lock.
    async fn recover_locked(&mut self) -> Result<(), UpgradeReport> {
        let journal = match Journal::load(self.dir) {
            Ok(Some(journal)) => journal,
            Ok(None) => return Ok(()),
            Err(e) => return Err(refused(None, None, e.to_string())),
        };
        let failed = format!(
            "an interrupted {:?} from {} to {} (at step {}: {})",
            journal.operation, journal.from, journal.to, journal.step, journal.step_name
        );
        match self.roll_back(journal).await {
            Ok(()) => {
                tracing::warn!("rolled back {failed}");
                Ok(())
            }
            Err(report) => Err(report),
        }
    }

    async fn upgrade(&mut self, action: &UpgradeAction, no_start: bool) -> UpgradeReport {
        let steps = &UPGRADE_STEPS;
        // 1. Preflight: everything that can fail without downtime.
        self.announce(steps, 1, "resolving the target version");
        let plan = match self.preflight(action).await {
            Ok(Preflight::UpToDate(version)) => {
                return UpgradeReport {
                    outcome: Outcome::UpToDate,
                    message: format!("Already up to date ({version})"),
                    from: Some(version.clone()),
                    to: Some(version),
                    failed_step: None,
                    backup: None,
                    manual_steps: Vec::new(),
                };
            }
            Ok(Preflight::Go(plan)) => plan,
            Err((from, message)) => return refused(from, None, message),
        };
        let (from, to) = (plan.from.clone(), plan.target.version.to_string());
        let mut journal = Journal::new(Operation::Upgrade, &from, &to, self.host.daemon_running());

        let result: StepResult<()> = async {
            // 2. Stop the daemon: graceful, waited for, killed after the timeout.
            self.enter(&mut journal, steps, 2, format!("stopping {from}"))?;
            self.host.stop_daemon().await?;

            // 3. Back up the database and config, verified, then prune.
            self.enter(
                &mut journal,
                steps,
                3,
                "backing up data/waiaas.db and config.toml",
            )?;
            let made =
                backup_off_thread(self.dir, Kind::PreUpgrade, &from, &to, plan.database_schema)
                    .await?;
            journal.backup = Some(made);
            prune_backups(self.dir, self.config);

            // 4. Switch `current` to the new version, atomically.
            self.enter(&mut journal, steps, 4, format!("pointing current at {to}"))?;
            swap::point_current(self.dir, &to)
                .map_err(|e| format!("cannot switch current: {e}"))?;

            // 5. Migrate, with the new version's own binary.
            self.enter(
                &mut journal,
                steps,
                5,
                format!("migrating with {to}'s waiaas-daemon"),
            )?;
            // The backup of step 3 is the one to roll back to: no second one.
            let (bin, dir) = (plan.target.path.clone(), self.dir.clone());
            blocking(move || daemon_command(&bin, &dir, &["migrate", "--no-backup"])).await?;

            // 6. Verify: the database is at the new binary's latest schema.
            self.enter(&mut journal, steps, 6, "checking the schema")?;
            let (bin, dir) = (plan.target.path.clone(), self.dir.clone());
            let report = blocking(move || check(&bin, &dir)).await?;
            if report.verdict != Verdict::Current
                || report.database_version != plan.target.manifest.schema_version
            {
                return Err(format!(
                    "after migrating, the database is at schema {} but {to} expects {}: {}",
                    report.database_version, plan.target.manifest.schema_version, report.message
                ));
            }

            // 7. Start the new daemon and wait for a healthy /health.
            if no_start {
                self.enter(&mut journal, steps, 7, "left stopped (--no-start)")?;
            } else {
                self.enter(&mut journal, steps, 7, format!("starting {to}"))?;
                self.host.start_daemon(&to).await?;
            }
            Ok(())
        }
        .await;

        match result {
            // Health-check-then-commit: only now is the old state let go of.
            Ok(()) => match Journal::remove(self.dir) {
                Ok(()) => UpgradeReport {
                    outcome: Outcome::Upgraded,
                    message: format!("Upgraded {from} → {to}"),
                    from: Some(from),
                    to: Some(to),
                    failed_step: None,
                    backup: journal.backup.map(|p| p.display().to_string()),
                    manual_steps: Vec::new(),
                },
                Err(e) => {
                    self.fail(
                        journal,
                        format!(
                            "cannot commit (remove {}): {e}",
                            self.dir.upgrade_journal().display()
                        ),
                    )
                    .await
                }
            },
            Err(error) => self.fail(journal, error).await,
        }
    }

    /// Records the step in the journal (durably) and announces it.
    fn enter(
        &mut self,
        journal: &mut Journal,
        steps: &[&str],
        step: u8,
        message: impl Into<String>,
    ) -> StepResult<()> {
        journal
            .enter(self.dir, step, steps[usize::from(step) - 1])
            .map_err(|e| format!("cannot write the journal: {e}"))?;
        self.announce(steps, step, message);
        Ok(())
    }

    async fn preflight(
        &mut self,
        action: &UpgradeAction,
    ) -> Result<Preflight, (Option<String>, String)> {
        let from = match swap::current_version(self.dir) {
            Ok(Some(v)) => v,
            Ok(None) => {
                return Err((
                    None,
                    format!(
                        "not initialised: {} has no current version; run `waiaas-launcher init`",
                        self.dir.root().display()
                    ),
                ));
            }
            Err(e) => {
                return Err((
                    None,
                    format!("cannot read {}: {e}", self.dir.current().display()),
                ));
            }
        };
        let fail = |message: String| (Some(from.clone()), message);
        let target = match action {
            UpgradeAction::Latest => package::latest(self.config)
                .await
                .map_err(|e| fail(e.to_string()))?,
            UpgradeAction::To(text) => Version::parse(text.trim_start_matches('v'))
                .map_err(|e| fail(format!("--to {text}: not a version ({e})")))?,
            UpgradeAction::FromFile(path) => {
                // Unpacking and hashing a release is blocking work.
                let (dir, config, path) = (self.dir.clone(), self.config.clone(), path.clone());
                blocking(move || package::install_file(&dir, &config, &path, None))
                    .await
                    .map_err(|e| fail(e.to_string()))?
                    .version
            }
            UpgradeAction::Rollback => unreachable!("rollback has its own path"),
        };
        if target.to_string() == from {
            return Ok(Preflight::UpToDate(from));
        }
        let installed = match action {
            UpgradeAction::FromFile(_) => {
                let (dir, config, target) = (self.dir.clone(), self.config.clone(), target.clone());
                blocking(move || package::verify_installed(&dir, &config, &target)).await
            }
            _ => package::fetch(self.dir, self.config, &target, &mut |_| {}).await,
        }
        .map_err(|e| fail(e.to_string()))?;
        let reported = version_of(&installed.path).map_err(&fail)?;
        if reported != installed.version.to_string() {
            return Err(fail(format!(
                "{}/waiaas-daemon reports version {reported}, not {}",
                installed.path.display(),
                installed.version
            )));
        }
        // The new binary judges the database: a downgrade below its schema is refused here.
        let database_schema = if self.dir.database().exists() {
            let report = check(&installed.path, self.dir).map_err(&fail)?;
            match report.verdict {
                Verdict::TooNew => {
                    return Err(fail(format!(
                        "{} cannot run on this database (schema {} is newer than its {}); \
                         to go back to the state before the last upgrade use `waiaas-launcher upgrade --rollback`",
                        installed.version, report.database_version, report.latest
                    )));
                }
                Verdict::TooOld { .. } | Verdict::ChecksumMismatch { .. } => {
                    return Err(fail(report.message));
                }
                _ => report.database_version,
            }
        } else {
            0
        };
        check_free_space(self.dir).map_err(&fail)?;
        Ok(Preflight::Go(Plan {
            from,
            target: installed,
            database_schema,
        }))
    }

    /// Undoes a failed change and reports how that went.
    async fn fail(&mut self, journal: Journal, error: String) -> UpgradeReport {
        let failed_step = format!("{} ({})", journal.step, journal.step_name);
        let (from, to) = (journal.from.clone(), journal.to.clone());
        let backup = journal.backup.as_ref().map(|p| p.display().to_string());
        tracing::error!("step {failed_step} failed: {error}; rolling back");
        match self.roll_back(journal).await {
            Ok(()) => UpgradeReport {
                outcome: Outcome::RolledBack,
                message: format!(
                    "Step {failed_step} failed: {error}. Rolled back: {from} is in place{}.",
                    if self.host.daemon_running() {
                        " and running"
                    } else {
                        ""
                    }
                ),
                from: Some(from),
                to: Some(to),
                failed_step: Some(failed_step),
                backup,
                manual_steps: Vec::new(),
            },
            Err(mut report) => {
                report.message = format!("Step {failed_step} failed: {error}. {}", report.message);
                report.failed_step = Some(failed_step);
                report
            }
        }
    }

    /// Puts the installation back to the state before the journaled change:
    /// the backup (if one was completed), `current`, and the daemon (if it ran).
    async fn roll_back(&mut self, mut journal: Journal) -> Result<(), UpgradeReport> {
        let from = journal.from.clone();
        let manual = |journal: &Journal, error: String| UpgradeReport {
            outcome: Outcome::RollbackFailed,
            message: format!("The rollback failed too: {error}"),
            from: Some(journal.from.clone()),
            to: Some(journal.to.clone()),
            failed_step: None,
            backup: journal.backup.as_ref().map(|p| p.display().to_string()),
            manual_steps: manual_steps(self.dir, journal),
        };
        journal.phase = Phase::RollingBack;
        if let Err(e) = journal.save(self.dir) {
            return Err(manual(&journal, format!("cannot write the journal: {e}")));
        }
        if let Err(e) = self.host.stop_daemon().await {
            return Err(manual(&journal, format!("cannot stop the daemon: {e}")));
        }
        if let Some(path) = journal.backup.clone() {
            let dir = self.dir.clone();
            let restored =
                blocking(move || restore::open(&path).and_then(|b| restore::restore(&dir, &b)))
                    .await;
            if let Err(e) = restored {
                return Err(manual(&journal, e.to_string()));
            }
        }
        if swap::current_version(self.dir).ok().flatten().as_deref() != Some(from.as_str())
            && let Err(e) = swap::point_current(self.dir, &from)
        {
            return Err(manual(
                &journal,
                format!("cannot point current back at {from}: {e}"),
            ));
        }
        if journal.daemon_was_running
            && let Err(e) = self.host.start_daemon(&from).await
        {
            return Err(manual(
                &journal,
                format!("{from} is restored but does not start: {e}"),
            ));
        }
        Journal::remove(self.dir)
            .map_err(|e| manual(&journal, format!("cannot remove the journal: {e}")))
    }

    /// `--rollback`: back to the state before the last upgrade.
    async fn rollback(&mut self, no_start: bool) -> UpgradeReport {
        let steps = &ROLLBACK_STEPS;
        self.announce(steps, 1, "finding the newest pre-upgrade backup");
        let from = swap::current_version(self.dir).ok().flatten();
        let Some(from) = from else {
            return refused(
                None,
                None,
                "not initialised: no current version; run `waiaas-launcher init`".into(),
            );
        };
        let chosen = match backup::list(self.dir) {
            Ok(list) => list
                .into_iter()
                .rev()
                .find(|b| b.manifest.kind == Kind::PreUpgrade),
            Err(e) => return refused(Some(from), None, format!("cannot list backups: {e}")),
        };
        let Some(chosen) = chosen else {
            return refused(
                Some(from),
                None,
                "there is no pre-upgrade backup to roll back to".into(),
            );
        };
        let to = chosen.manifest.from_version.clone();
        if let Err(e) = usable_version(self.dir, self.config, &to) {
            return refused(
                Some(from),
                Some(to.clone()),
                format!(
                    "the backup is from {to}, but {} cannot be used ({e}); put the files of {to} \
                     back there (for example from its @waiaas/cli-<platform> package) and run \
                     `waiaas-launcher upgrade --rollback` again",
                    self.dir.version(&to).display()
                ),
            );
        }
        if let Err(e) = check_free_space(self.dir) {
            return refused(Some(from), Some(to), e);
        }
        let mut journal = Journal::new(Operation::Rollback, &from, &to, self.host.daemon_running());
        let result: StepResult<()> = async {
            self.enter(&mut journal, steps, 2, format!("stopping {from}"))?;
            self.host.stop_daemon().await?;

            self.enter(
                &mut journal,
                steps,
                3,
                "saving the present state as a pre-rollback backup",
            )?;
            let schema = database_schema(self.dir);
            let safety = backup_off_thread(self.dir, Kind::PreRollback, &from, &to, schema).await?;
            journal.backup = Some(safety);

            self.enter(
                &mut journal,
                steps,
                4,
                format!("restoring {}", chosen.path.display()),
            )?;
            let (dir, backup) = (self.dir.clone(), chosen.clone());
            blocking(move || restore::restore(&dir, &backup))
                .await
                .map_err(|e| e.to_string())?;

            self.enter(&mut journal, steps, 5, format!("pointing current at {to}"))?;
            swap::point_current(self.dir, &to)
                .map_err(|e| format!("cannot switch current: {e}"))?;
            let (bin, dir) = (self.dir.version(&to), self.dir.clone());
            let report = blocking(move || check(&bin, &dir)).await?;
            if report.refusal_code().is_some() {
                return Err(format!(
                    "{to} refuses the restored database: {}",
                    report.message
                ));
            }

            if no_start {
                self.enter(&mut journal, steps, 6, "left stopped (--no-start)")?;
            } else {
                self.enter(&mut journal, steps, 6, format!("starting {to}"))?;
                self.host.start_daemon(&to).await?;
            }
            Ok(())
        }
        .await;
        match result
            .and_then(|()| Journal::remove(self.dir).map_err(|e| format!("cannot commit: {e}")))
        {
            Ok(()) => UpgradeReport {
                outcome: Outcome::Restored,
                message: format!(
                    "Rolled back {from} → {to} from the backup taken {}. Changes made after that \
                     moment are not in it; the state just before this rollback is saved in {}.",
                    chosen.manifest.created_at,
                    journal
                        .backup
                        .as_ref()
                        .map_or("(none)".into(), |p| p.display().to_string())
                ),
                from: Some(from),
                to: Some(to),
                failed_step: None,
                backup: Some(chosen.path.display().to_string()),
                manual_steps: Vec::new(),
            },
            Err(error) => self.fail(journal, error).await,
        }
    }
}

/// Finishes the rollback of a change a crash left half-done, before anything
/// else runs. Without a journal this does nothing.
pub async fn recover<H: Host>(
    dir: &DataDir,
    config: &Config,
    host: &mut H,
) -> Result<(), UpgradeReport> {
    if !dir.upgrade_journal().exists() {
        return Ok(());
    }
    let _lock = UpgradeLock::acquire(dir).map_err(|e| refused(None, None, e))?;
    let mut progress = |_: Progress| {};
    let mut engine = Engine {
        dir,
        config,
        host,
        progress: &mut progress,
        progress_bar: false,
    };
    engine.recover_locked().await
}

enum Preflight {
    UpToDate(String),
    Go(Plan),
}

struct Plan {
    from: String,
    target: Installed,
    database_schema: u32,
}

fn refused(from: Option<String>, to: Option<String>, message: String) -> UpgradeReport {
    UpgradeReport {
        outcome: Outcome::Refused,
        from,
        to,
        message,
        failed_step: None,
        backup: None,
        manual_steps: Vec::new(),
    }
}

/// Whether `versions/<version>` can be gone back to: a signed release is
/// verified again; a folder `init` installed from a local build (no
/// `release.json`) must at least be the version it claims.
fn usable_version(dir: &DataDir, config: &Config, version: &str) -> StepResult<()> {
    let path = dir.version(version);
    if path.join(waiaas_shared::release::MANIFEST).exists() {
        let parsed =
            Version::parse(version).map_err(|e| format!("{version} is not a version: {e}"))?;
        package::verify_installed(dir, config, &parsed).map_err(|e| e.to_string())?;
        return Ok(());
    }
    match version_of(&path)? {
        reported if reported == version => Ok(()),
        reported => Err(format!(
            "{}/waiaas-daemon reports {reported}",
            path.display()
        )),
    }
}

fn prune_backups(dir: &DataDir, config: &Config) {
    if let Err(e) = backup::prune(dir, config.update.keep_backups as usize) {
        tracing::warn!("could not prune old backups: {e}");
    }
}

/// Runs blocking work (copying, hashing, child processes) on tokio's blocking
/// pool, so a supervisor hosting the upgrade keeps streaming progress and
/// answering its admin socket meanwhile.
async fn blocking<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(work)
        .await
        .expect("a blocking upgrade step panicked")
}

/// [`backup::create`] on the blocking pool; returns the backup's folder.
async fn backup_off_thread(
    dir: &DataDir,
    kind: Kind,
    from: &str,
    to: &str,
    schema_version: u32,
) -> StepResult<PathBuf> {
    let (dir, from, to) = (dir.clone(), from.to_string(), to.to_string());
    blocking(move || {
        let request = backup::Request {
            kind,
            from_version: &from,
            to_version: &to,
            schema_version,
        };
        backup::create(&dir, &request)
            .map(|b| b.path)
            .map_err(|e| e.to_string())
    })
    .await
}

/// Runs `<version dir>/waiaas-daemon <args> --data-dir <dir>`; its stderr is the error.
fn daemon_command(version_dir: &Path, dir: &DataDir, args: &[&str]) -> StepResult<String> {
    let program = version_dir.join("waiaas-daemon");
    let out = die_with_launcher(&mut Command::new(&program), libc::SIGKILL)
        .args(args)
        .arg("--data-dir")
        .arg(dir.root())
        .output()
        .map_err(|e| format!("cannot run {}: {e}", program.display()))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "`waiaas-daemon {}` {}: {}",
            args.join(" "),
            crate::daemon_binary::describe_exit(&Ok(out.status)),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Makes the process `command` starts get `signal` when this launcher dies,
/// even by SIGKILL, so that no `migrate`, `check` or daemon started by an
/// upgrade outlives it and races the next launcher's recovery (which restores
/// the database under it). PR_SET_PDEATHSIG follows the *thread* that forks:
/// the main thread, or a blocking-pool thread that stays parked in `output()`
/// until the child has exited.
fn die_with_launcher(command: &mut Command, signal: libc::c_int) -> &mut Command {
    use std::os::unix::process::CommandExt;
    let parent = std::process::id() as libc::pid_t;
    // SAFETY: prctl and getppid are async-signal-safe.
    unsafe {
        command.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, signal) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            if libc::getppid() != parent {
                return Err(std::io::Error::other("the launcher died while starting it"));
            }
            Ok(())
        })
    }
}

/// The new binary's verdict on the database (`check --json`).
fn check(version_dir: &Path, dir: &DataDir) -> StepResult<CompatReport> {
    let program = version_dir.join("waiaas-daemon");
    let out = die_with_launcher(&mut Command::new(&program), libc::SIGKILL)
        .args(["check", "--json", "--data-dir"])
        .arg(dir.root())
        .output()
        .map_err(|e| format!("cannot run {}: {e}", program.display()))?;
    serde_json::from_slice(&out.stdout).map_err(|_| {
        format!(
            "`waiaas-daemon check` gave no verdict: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )
    })
}

/// What `<version dir>/waiaas-daemon --version --json` says its version is.
fn version_of(version_dir: &Path) -> StepResult<String> {
    let program = version_dir.join("waiaas-daemon");
    let out = die_with_launcher(&mut Command::new(&program), libc::SIGKILL)
        .args(["--version", "--json"])
        .output()
        .map_err(|e| format!("cannot run {}: {e}", program.display()))?;
    let info: serde_json::Value = serde_json::from_slice(&out.stdout)
        .map_err(|_| format!("{} --version --json printed no version", program.display()))?;
    info["version"]
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| format!("{} --version --json printed no version", program.display()))
}

/// The database's schema version as the installed daemon reports it (0 if unknown).
fn database_schema(dir: &DataDir) -> u32 {
    check(&dir.current(), dir).map_or(0, |r| r.database_version)
}

/// Free space for a backup: the database (with its WAL) and config, plus a margin.
fn check_free_space(dir: &DataDir) -> StepResult<()> {
    let size = |p: PathBuf| std::fs::metadata(p).map_or(0, |m| m.len());
    let db = dir.database();
    let needed = size(db.clone())
        + size(PathBuf::from(format!("{}-wal", db.display())))
        + size(dir.config())
        + (16 << 20);
    let backups = dir.backups();
    std::fs::create_dir_all(&backups)
        .map_err(|e| format!("cannot create {}: {e}", backups.display()))?;
    let stat = nix::sys::statvfs::statvfs(&backups)
        .map_err(|e| format!("cannot read free space of {}: {e}", backups.display()))?;
    let free = stat.blocks_available() as u64 * stat.fragment_size() as u64;
    if free < needed {
        return Err(format!(
            "not enough free disk for the backup: {} MiB free in {}, {} MiB needed; free some space and try again (nothing was changed)",
            free >> 20,
            backups.display(),
            needed.div_ceil(1 << 20)
        ));
    }
    Ok(())
}

/// What to do by hand when the automatic rollback failed.
fn manual_steps(dir: &DataDir, journal: &Journal) -> Vec<String> {
    let mut steps =
        vec!["Stop WAIaaS (`waiaas-launcher stop`, or `systemctl stop waiaas`).".to_string()];
    if let Some(backup) = &journal.backup {
        steps.push(format!(
            "Copy {}/waiaas.db over {} and delete {}-wal and {}-shm if present; copy {}/config.toml over {}.",
            backup.display(),
            dir.database().display(),
            dir.database().display(),
            dir.database().display(),
            backup.display(),
            dir.config().display()
        ));
    }
    steps.push(format!(
        "Point current back: ln -sfn versions/{} {}",
        journal.from,
        dir.current().display()
    ));
    steps.push(format!(
        "Remove the journal: rm {}",
        dir.upgrade_journal().display()
    ));
    steps.push("Start WAIaaS again and check `waiaas-launcher status`.".to_string());
    steps
}

/// Standalone: no supervisor runs, so no daemon is ours to stop. Step 7
/// starts the new daemon on its own, waits for `/health`, and stops it again,
/// so the upgrade is still only committed once the new version has served.
pub struct Standalone<'a> {
    pub dir: &'a DataDir,
    pub config: &'a Config,
}

impl Host for Standalone<'_> {
    fn daemon_running(&self) -> bool {
        false
    }

    async fn stop_daemon(&mut self) -> Result<(), String> {
        Ok(())
    }

    async fn start_daemon(&mut self, version: &str) -> Result<(), String> {
        let program = self.dir.current().join("waiaas-daemon");
        let mut command = Command::new(&program);
        // A daemon started for the health check must not outlive a killed
        // upgrade: it gets SIGTERM and shuts down gracefully.
        die_with_launcher(&mut command, libc::SIGTERM);
        let mut child = tokio::process::Command::from(command)
            .arg("serve")
            .arg("--data-dir")
            .arg(self.dir.root())
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", program.display()))?;
        let addr = health_addr(self.config)?;
        let deadline =
            tokio::time::Instant::now() + Duration::from_secs(self.config.update.health_timeout);
        let outcome = loop {
            if let Ok(Some(status)) = child.try_wait() {
                break Err(format!(
                    "the daemon {}",
                    crate::daemon_binary::describe_exit(&Ok(status))
                ));
            }
            match crate::probe::health(addr, Duration::from_millis(500)).await {
                Ok(h) if h.version == version => break Ok(()),
                Ok(h) => break Err(format!("/health reports {}, not {version}", h.version)),
                Err(e) if tokio::time::Instant::now() >= deadline => {
                    break Err(format!("never became healthy: {e}"));
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        };
        if let Some(pid) = child.id() {
            // SAFETY: kill(2) on our own, not yet reaped, child.
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) };
        }
        let grace = Duration::from_secs(self.config.daemon.shutdown_timeout + 2);
        if tokio::time::timeout(grace, child.wait()).await.is_err() {
            let _ = child.kill().await;
        }
        outcome
    }
}

/// The configured HTTP address, on loopback when it is a wildcard.
pub fn health_addr(config: &Config) -> Result<std::net::SocketAddr, String> {
    use std::net::ToSocketAddrs;
    let mut addr = (config.daemon.hostname.as_str(), config.daemon.port)
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {}: {e}", config.daemon.hostname))?
        .next()
        .ok_or_else(|| format!("{} resolves to no address", config.daemon.hostname))?;
    if addr.ip().is_unspecified() {
        addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    Ok(addr)
}
