//! The upgrade engine (SPEC §6). One engine for both ways in: the supervisor
//! runs it for `waiaas-launcher upgrade` when it is up, and the command runs
//! it itself when it is not. The difference is only in the [`Host`] — who
//! stops and starts the daemon.
//!
//! An upgrade is a preflight that may fail without any downtime
//! ([`preflight`]), then seven journaled steps ([`Engine::upgrade`], top to
//! bottom), committed only once the new daemon answers `/health`. Any failure
//! after the preflight rolls back from the journal; so does the next launcher
//! start after a crash ([`Engine::recover`]). The installation always ends
//! fully old or fully new. [`report`] builds the one result; [`standalone`]
//! is the host when no supervisor runs.
//!
//! The engine is a future polled on the launcher's one thread: the supervisor
//! races it against signals and its daemon, and drops it to abandon a
//! preflight. Blocking work (copies, hashing) runs on tokio's blocking pool,
//! child processes under deadlines ([`crate::daemon_binary`]).

mod error;
pub mod journal;
pub mod lock;
mod preflight;
pub mod report;
pub mod restore;
mod standalone;

use std::path::PathBuf;
use std::time::Duration;

use waiaas_shared::admin::{Bytes, Progress, UpgradeAction, UpgradeReport, UpgradeRequest};
use waiaas_shared::backup::{self, Kind};
use waiaas_shared::compat::Verdict;
use waiaas_shared::config::Config;
use waiaas_shared::layout::DataDir;
use waiaas_shared::trash;

pub use error::{HostError, Refusal, StepError};
pub use standalone::{Standalone, health_addr};

use crate::daemon_binary;
use crate::orphan;
use crate::swap;
use journal::{Journal, Operation, Phase};
use lock::UpgradeLock;
use preflight::{Preflight, check_free_space, usable_version};

/// An operator's `--rollback` away from `from` said no to it: automatic
/// upgrades never bring it back by themselves (SPEC §13). Recorded before the
/// change, so a rollback handed to an older launcher keeps it too; a failure
/// to record it is logged and does not hold the rollback.
fn quarantine_rolled_back(dir: &DataDir, from: &str) {
    let Ok(version) = semver::Version::parse(from) else {
        return;
    };
    let reason = "rolled back by an operator's `upgrade --rollback`".to_string();
    let now = jiff::Timestamp::now();
    if let Err(e) =
        crate::auto::state::AutoState::update(dir, |s| s.quarantine(version, reason, now))
    {
        tracing::warn!("cannot quarantine {from} for automatic upgrades: {e}");
    }
}

/// Who stops and starts the daemon: the supervisor, or nobody (standalone).
/// A lifecycle with a null implementation ([`Standalone`]) in the manner of
/// shellflip's; tests drive the engine with a fake one.
// The engine is polled on the launcher's one thread, never sent to another.
#[allow(async_fn_in_trait)]
pub trait Host {
    /// Whether a daemon runs now (a rollback starts one again only if so).
    async fn daemon_running(&mut self) -> bool;
    /// Stops the daemon gracefully; returns once it has exited.
    async fn stop_daemon(&mut self) -> Result<(), HostError>;
    /// Starts the daemon `current` points at on probation — it serves no
    /// client yet — and waits until its probes pass (`/health` reports
    /// `version`, a write goes through).
    async fn start_daemon(&mut self, version: &str) -> Result<(), HostError>;
    /// Once the change is committed: the daemon [`Host::start_daemon`]
    /// started serves clients. Never before the commit, so a rollback never
    /// drops a write a client was told is kept (SPEC §13).
    async fn open(&mut self) {}
    /// Asks the running daemon to hold its checkpoints until it exits, so the
    /// database's main file is copied while it serves; `false` when there is
    /// no such daemon or it cannot (then the whole copy waits for the stop).
    async fn hold_checkpoints(&mut self) -> bool {
        false
    }
    /// Whether release `version` brings a launcher other than this one, to
    /// which step 7 is handed over ([`Host::hand_over`]).
    async fn hands_over_to(&mut self, _version: &str) -> bool {
        false
    }
    /// Replaces this launcher by release `version`'s own, which finishes
    /// step 7 ([`Engine::resume`]). Returns only if that could not happen,
    /// with why.
    async fn hand_over(&mut self, version: &str) -> HostError {
        HostError::NoHandOver {
            version: version.to_string(),
        }
    }
}

/// Steps of an upgrade, in order (SPEC §6); step 1 is the preflight.
pub const UPGRADE_STEPS: [&str; 7] = [
    "check the registry and verify the release",
    "stop the daemon",
    "back up the database and config",
    "switch to the new version",
    "migrate the database",
    "verify the schema",
    "start the daemon",
];

/// Steps of `--rollback`.
pub const ROLLBACK_STEPS: [&str; 6] = [
    "choose the backup",
    "stop the daemon",
    "back up the present state",
    "restore the database and config",
    "switch to the backup's version",
    "start the daemon",
];

/// A progress frame for step `step` of `steps`.
fn progress(steps: &[&str], step: u8, message: String, bytes: Option<Bytes>) -> Progress {
    Progress {
        step,
        of: steps.len() as u8,
        name: steps[usize::from(step) - 1].to_string(),
        message,
        bytes,
    }
}

/// Everything the engine works with.
pub struct Engine<'a, H: Host> {
    pub dir: &'a DataDir,
    pub config: &'a Config,
    pub host: &'a mut H,
    /// Called as each step starts, and with the bytes of a download.
    pub progress: &'a mut (dyn FnMut(Progress) + Send),
}

impl<H: Host> Engine<'_, H> {
    fn announce(&mut self, steps: &[&str], step: u8, message: impl Into<String>) {
        (self.progress)(progress(steps, step, message.into(), None));
    }

    /// Runs `request` under the upgrade lock, after finishing any change a
    /// crash left half-done.
    pub async fn run(&mut self, request: &UpgradeRequest) -> UpgradeReport {
        match UpgradeLock::acquire(self.dir) {
            Ok(lock) => self.run_holding(&lock, request).await,
            Err(message) => report::refused(None, None, &Refusal::Locked(message)),
        }
    }

    /// [`Engine::run`] for a caller that took the upgrade lock itself (the
    /// standalone command, which holds it from before its checks).
    pub async fn run_holding(
        &mut self,
        _lock: &UpgradeLock,
        request: &UpgradeRequest,
    ) -> UpgradeReport {
        if let Err(report) = self.recover_locked().await {
            return report;
        }
        // What an earlier rollback set aside and did not keep yet (it handed
        // over first, or was killed) is kept before any new copy is made.
        settle(self.dir, self.config).await;
        match &request.action {
            UpgradeAction::Rollback => self.rollback(request.no_start).await,
            action => {
                self.upgrade(action, request.allow_downgrade, request.no_start)
                    .await
            }
        }
    }

    /// Finishes the rollback of a change a crash left half-done, before
    /// anything else runs. Without a journal this does nothing.
    pub async fn recover(&mut self) -> Result<(), UpgradeReport> {
        if !self.dir.upgrade_journal().exists() {
            return Ok(());
        }
        let _lock = UpgradeLock::acquire(self.dir)
            .map_err(|e| report::refused(None, None, &Refusal::Locked(e)))?;
        self.recover_locked().await
    }

    /// In a launcher started by a handover: finishes the step 7 handed to it
    /// (start the daemon, commit), or rolls back — leaving the old daemon to
    /// the old launcher, which this process is to become next. `None` when
    /// no handed-over step waits (then [`Engine::recover`] applies).
    pub async fn resume(&mut self) -> Option<UpgradeReport> {
        let journal = match Journal::load(self.dir) {
            Ok(Some(journal)) if journal.handed_over && journal.step == last_step(&journal) => {
                journal
            }
            _ => return None,
        };
        let _lock = match UpgradeLock::acquire(self.dir) {
            Ok(lock) => lock,
            Err(message) => return Some(report::refused(None, None, &Refusal::Locked(message))),
        };
        let to = journal.to.clone();
        let steps: &[&str] = match journal.operation {
            Operation::Upgrade => &UPGRADE_STEPS,
            Operation::Rollback => &ROLLBACK_STEPS,
        };
        let message = format!("starting {to} under its own launcher");
        self.announce(steps, journal.step, message);
        let started = self.host.start_daemon(&to).await.map_err(StepError::from);
        Some(match started.and_then(|()| commit(self.dir)) {
            Ok(()) => {
                self.host.open().await;
                let replaced = settle(self.dir, self.config).await;
                report::resumed(&journal, &replaced)
            }
            Err(error) => {
                // The old launcher starts the old daemon once this process is it.
                let mut journal = journal;
                journal.daemon_was_running = false;
                self.fail(journal, error).await
            }
        })
    }

    /// [`Engine::recover`] for callers that already hold the lock.
    async fn recover_locked(&mut self) -> Result<(), UpgradeReport> {
        let journal = match Journal::load(self.dir) {
            Ok(Some(journal)) => journal,
            Ok(None) => return Ok(()),
            Err(source) => {
                let error = Refusal::Journal {
                    path: self.dir.upgrade_journal(),
                    source,
                };
                return Err(report::refused(None, None, &error));
            }
        };
        let failed = format!(
            "an interrupted {:?} from {} to {} (at step {}: {})",
            journal.operation, journal.from, journal.to, journal.step, journal.step_name
        );
        self.roll_back(journal).await?;
        tracing::warn!("rolled back {failed}");
        for kept in settle(self.dir, self.config).await {
            tracing::warn!("the database it replaced is kept in {}", kept.display());
        }
        Ok(())
    }

    /// The seven steps of an upgrade, top to bottom.
    async fn upgrade(
        &mut self,
        action: &UpgradeAction,
        allow_downgrade: bool,
        no_start: bool,
    ) -> UpgradeReport {
        let steps = &UPGRADE_STEPS;
        // 1. Preflight: everything that can fail without downtime.
        self.announce(steps, 1, "resolving the target version");
        let from = match self.current_version() {
            Ok(from) => from,
            Err(e) => return report::refused(None, None, &e),
        };
        let plan = match self.preflight(action, allow_downgrade, &from).await {
            Ok(Preflight::UpToDate {
                installed,
                channel_older,
            }) => return report::up_to_date(&installed, channel_older.as_deref()),
            Ok(Preflight::Go(plan)) => plan,
            Err(e) => return report::refused(Some(&from), None, &e),
        };
        let to = plan.target.version.to_string();
        let running = self.host.daemon_running().await;
        let mut journal = Journal::new(Operation::Upgrade, &from, &to, running);

        let result: Result<(), StepError> = async {
            // 2. Stop the daemon: graceful, waited for, killed after the timeout —
            //    once the database's main file is copied while it still serves.
            let request = backup_request(Kind::PreUpgrade, &from, &to, plan.database_schema);
            self.enter(&mut journal, steps, 2, format!("stopping {from}"))?;
            let live = self.copy_while_serving(steps, &request).await?;
            self.stop_daemons().await?;

            // 3. Back up the database (if there is one yet) and config, verified, then prune.
            let what = match plan.database_schema {
                Some(_) => "backing up data/waiaas.db and config.toml",
                None => "no database yet (never started): backing up config.toml",
            };
            self.enter(&mut journal, steps, 3, what)?;
            journal.backup = Some(finish_backup(self.dir, live, request).await?);
            prune_backups(self.dir, self.config);

            // 4. Switch `current` to the new version, atomically.
            self.enter(&mut journal, steps, 4, format!("pointing current at {to}"))?;
            point_current(self.dir, &to)?;

            // 5. Migrate, with the new version's own binary, within its deadline.
            let message = format!("migrating with {to}'s waiaas-daemon");
            self.enter(&mut journal, steps, 5, message)?;
            let deadline = Duration::from_secs(self.config.update.migrate_timeout);
            daemon_binary::migrate(&plan.target.path, self.dir, deadline).await?;

            // 6. Verify: the database is at the new binary's latest schema.
            self.enter(&mut journal, steps, 6, "checking the schema")?;
            let report = daemon_binary::check(&plan.target.path, self.dir).await?;
            let expected = plan.target.manifest.schema_version;
            if report.verdict != Verdict::Current || report.database_version != expected {
                return Err(StepError::Schema {
                    version: to.clone(),
                    found: report.database_version,
                    expected,
                    detail: report.message,
                });
            }

            // 7. Start the new daemon and wait for a healthy /health — under
            //    the new release's own launcher when it brings one.
            self.start_last(&mut journal, steps, &to, no_start).await?;

            // Health-check-then-commit: only now is the old state let go of.
            commit(self.dir)
        }
        .await;

        match result {
            Ok(()) => {
                self.host.open().await;
                settle(self.dir, self.config).await;
                report::upgraded(
                    &from,
                    &to,
                    journal.backup.as_deref(),
                    plan.database_schema.is_some(),
                )
            }
            Err(error) => self.fail(journal, error).await,
        }
    }

    /// The last step of a change: start `to`'s daemon — or leave it stopped,
    /// or hand over to `to`'s own launcher when it brings another one: this
    /// process becomes it, and it finishes from here ([`Engine::resume`]).
    async fn start_last(
        &mut self,
        journal: &mut Journal,
        steps: &[&str],
        to: &str,
        no_start: bool,
    ) -> Result<(), StepError> {
        let last = steps.len() as u8;
        if no_start {
            return self.enter(journal, steps, last, "left stopped (--no-start)");
        }
        if self.host.hands_over_to(to).await {
            let message = format!("handing over to {to}'s launcher");
            self.enter(journal, steps, last, message)?;
            journal.handed_over = true;
            journal.save(self.dir).map_err(StepError::Journal)?;
            return Err(self.host.hand_over(to).await.into());
        }
        self.enter(journal, steps, last, format!("starting {to}"))?;
        Ok(self.host.start_daemon(to).await?)
    }

    /// Stops the host's daemon, then any daemon it did not start that still
    /// serves the data dir ([`orphan`]): nothing may use the database files
    /// the next steps copy and rename.
    async fn stop_daemons(&mut self) -> Result<(), StepError> {
        self.host.stop_daemon().await?;
        let (dir, grace) = (self.dir.clone(), self.config.daemon.shutdown_timeout);
        blocking(move || orphan::stop(&dir, Duration::from_secs(grace))).await?;
        Ok(())
    }

    /// The long part of step 3, in step 2 before the daemon stops: its
    /// database's main file copied, hashed and checked, and its WAL's
    /// committed frames, while it serves with checkpoints held. `None` when
    /// no daemon holds them (then [`finish_backup`] copies everything after
    /// the stop).
    async fn copy_while_serving(
        &mut self,
        steps: &[&str],
        request: &backup::Request,
    ) -> Result<Option<backup::Pending>, StepError> {
        if !self.dir.database().exists() || !self.host.hold_checkpoints().await {
            return Ok(None);
        }
        let from = &request.from_version;
        let message = format!("copying data/waiaas.db while {from} serves (checkpoints held)");
        self.announce(steps, 2, message);
        let (dir, request) = (self.dir.clone(), request.clone());
        let pending = blocking(move || backup::begin(&dir, &request, backup::Database::Held));
        Ok(Some(pending.await?))
    }

    /// Announces the step and records it in the journal (durably) before it
    /// runs; a journal that cannot be written fails the step it announced.
    fn enter(
        &mut self,
        journal: &mut Journal,
        steps: &[&str],
        step: u8,
        message: impl Into<String>,
    ) -> Result<(), StepError> {
        self.announce(steps, step, message);
        journal
            .enter(self.dir, step, steps[usize::from(step) - 1])
            .map_err(StepError::Journal)
    }

    /// Undoes a failed change and reports how that went.
    async fn fail(&mut self, journal: Journal, error: StepError) -> UpgradeReport {
        let failed_step = format!("{} ({})", journal.step, journal.step_name);
        tracing::error!("step {failed_step} failed: {error}; rolling back");
        match self.roll_back(journal.clone()).await {
            Ok(()) => {
                let replaced = settle(self.dir, self.config).await;
                let running = self.host.daemon_running().await;
                report::rolled_back(&journal, failed_step, error.to_string(), running, &replaced)
            }
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
        let dir = self.dir;
        let failed =
            |journal: &Journal, error: String| report::rollback_failed(dir, journal, error);
        journal.phase = Phase::RollingBack;
        // Only a record: the entry already on disk (if any) lets a crash be
        // recovered, so an unwritable journal (a full disk) must not stop the undo.
        if let Err(e) = journal.save(self.dir) {
            tracing::warn!("cannot record the rollback in the journal ({e}); rolling back anyway");
        }
        // A crash while a backup was staged for `--rollback` left its copy.
        restore::discard_staged(self.dir);
        if let Err(e) = self.stop_daemons().await {
            return Err(failed(&journal, format!("cannot stop the daemon: {e}")));
        }
        if let Some(path) = journal.backup.clone() {
            let dir = self.dir.clone();
            // What is replaced is the state `to` had reached.
            let replaced = backup_request(Kind::RolledBack, &journal.to, &from, None);
            let restored = blocking(move || {
                restore::open(&path).and_then(|b| restore::restore(&dir, &b, &replaced))
            })
            .await;
            match restored {
                Ok(restored) if !restored.kept.is_empty() => tracing::warn!(
                    "kept [update] {} of the config in use",
                    restored.kept.join(", ")
                ),
                Ok(_) => {}
                Err(e) => return Err(failed(&journal, e.to_string())),
            }
        }
        if swap::current_version(self.dir).ok().flatten().as_deref() != Some(from.as_str())
            && let Err(e) = point_current(self.dir, &from)
        {
            return Err(failed(&journal, e.to_string()));
        }
        if journal.daemon_was_running
            && let Err(e) = self.host.start_daemon(&from).await
        {
            return Err(failed(
                &journal,
                format!("{from} is restored but does not start: {e}"),
            ));
        }
        Journal::remove(self.dir)
            .map_err(|e| failed(&journal, format!("cannot remove the journal: {e}")))?;
        self.host.open().await;
        Ok(())
    }

    /// `--rollback`: back to the state before the last upgrade.
    async fn rollback(&mut self, no_start: bool) -> UpgradeReport {
        let steps = &ROLLBACK_STEPS;
        self.announce(steps, 1, "finding the newest pre-upgrade backup");
        let from = match self.current_version() {
            Ok(from) => from,
            Err(e) => return report::refused(None, None, &e),
        };
        let chosen = match backup::list(self.dir) {
            Ok(list) => list
                .into_iter()
                .rev()
                .find(|b| b.manifest.kind == Kind::PreUpgrade),
            Err(e) => return report::refused(Some(&from), None, &Refusal::ListBackups(e)),
        };
        let Some(chosen) = chosen else {
            return report::refused(Some(&from), None, &Refusal::NoBackup);
        };
        let to = chosen.manifest.from_version.clone();
        // A backup's manifest is local state, not a path: it must name a version.
        if let Err(source) = waiaas_shared::version::parse_local(&to) {
            let path = chosen.path.clone();
            return report::refused(Some(&from), None, &Refusal::BadBackup { path, source });
        }
        // Its version runs already: a rollback (or an upgrade that rolled
        // back) restored it, and restoring it again would drop every write since.
        if to == from {
            let error = Refusal::AlreadyRestored {
                path: chosen.path.clone(),
                version: to.clone(),
            };
            return report::refused(Some(&from), Some(&to), &error);
        }
        if let Err(reason) = usable_version(self.dir, self.config, &to).await {
            let error = Refusal::UnusableVersion {
                path: self.dir.version(&to),
                version: to.clone(),
                reason,
            };
            return report::refused(Some(&from), Some(&to), &error);
        }
        if let Err(e) = check_free_space(self.dir) {
            return report::refused(Some(&from), Some(&to), &e);
        }
        quarantine_rolled_back(self.dir, &from);
        let running = self.host.daemon_running().await;
        let mut journal = Journal::new(Operation::Rollback, &from, &to, running);
        journal.restoring = Some(chosen.path.clone());
        let mut kept = Vec::new();
        let result: Result<(PathBuf, Vec<PathBuf>), StepError> = async {
            let schema = database_schema(self.dir).await;
            let request = backup_request(Kind::PreRollback, &from, &to, Some(schema));
            self.enter(&mut journal, steps, 2, format!("stopping {from}"))?;
            // The backup's copy is made beside the database while the daemon
            // serves: step 4 is then renames.
            let message = format!("staging {} while {from} serves", chosen.path.display());
            self.announce(steps, 2, message);
            let (dir, backup) = (self.dir.clone(), chosen.clone());
            let pace = waiaas_shared::fsutil::Pace::Beside;
            let staged = blocking(move || restore::stage(&dir, &backup, pace)).await?;
            let live = self.copy_while_serving(steps, &request).await?;
            self.stop_daemons().await?;

            let message = "saving the present state as a pre-rollback backup";
            self.enter(&mut journal, steps, 3, message)?;
            let safety = finish_backup(self.dir, live, request).await?;
            journal.backup = Some(safety.clone());

            let message = format!("restoring {}", chosen.path.display());
            self.enter(&mut journal, steps, 4, message)?;
            let dir = self.dir.clone();
            let replaced = backup_request(Kind::RolledBack, &from, &to, Some(schema));
            let restored = blocking(move || restore::put_back(&dir, staged, &replaced)).await?;
            kept = restored.kept;

            self.enter(&mut journal, steps, 5, format!("pointing current at {to}"))?;
            point_current(self.dir, &to)?;
            // A backup from before the first start restores "no database":
            // there is nothing for the old version to judge.
            if self.dir.database().exists() {
                let report = daemon_binary::check(&self.dir.version(&to), self.dir).await?;
                if report.refusal_code().is_some() {
                    return Err(StepError::RestoredRefused {
                        version: to.clone(),
                        detail: report.message,
                    });
                }
            }

            self.start_last(&mut journal, steps, &to, no_start).await?;
            commit(self.dir)?;
            self.host.open().await;
            Ok((safety, settle(self.dir, self.config).await))
        }
        .await;
        match result {
            Ok((safety, replaced)) => report::restored(
                &from,
                &to,
                &chosen.path,
                &chosen.manifest.created_at,
                &safety,
                &kept,
                &replaced,
            ),
            Err(error) => self.fail(journal, error).await,
        }
    }
}

/// The step that starts the daemon, the one a launcher hands over.
fn last_step(journal: &Journal) -> u8 {
    match journal.operation {
        Operation::Upgrade => UPGRADE_STEPS.len() as u8,
        Operation::Rollback => ROLLBACK_STEPS.len() as u8,
    }
}

/// Ends the journal: the change is committed.
fn commit(dir: &DataDir) -> Result<(), StepError> {
    Journal::remove(dir).map_err(|source| StepError::Commit {
        path: dir.upgrade_journal(),
        source,
    })
}

/// What waits for the daemon to serve once a change has ended (committed or
/// rolled back): the databases a rollback replaced kept as `rolled-back-…`
/// backups (hashing takes a while), pruned like the others; then the trash
/// of `data/` and `backups/` emptied: what the downtime set aside rather than
/// wait for its blocks to be freed ([`waiaas_shared::trash`]). Returns the
/// kept folders.
async fn settle(dir: &DataDir, config: &Config) -> Vec<PathBuf> {
    let owned = dir.clone();
    let kept = blocking(move || restore::keep_replaced(&owned)).await;
    if !kept.is_empty() {
        prune_backups(dir, config);
    }
    let owned = dir.clone();
    blocking(move || {
        for folder in [owned.data(), owned.backups()] {
            match trash::empty(&folder) {
                Ok(0) => {}
                Ok(freed) => tracing::info!(
                    "deleted {freed} bytes set aside in {}",
                    folder.join(trash::FOLDER).display()
                ),
                Err(e) => tracing::warn!(
                    "could not empty {}: {e}",
                    folder.join(trash::FOLDER).display()
                ),
            }
        }
    })
    .await;
    kept
}

fn point_current(dir: &DataDir, version: &str) -> Result<(), StepError> {
    swap::point_current(dir, version).map_err(|source| StepError::Swap {
        version: version.to_string(),
        source,
    })
}

fn prune_backups(dir: &DataDir, config: &Config) {
    if let Err(e) = backup::prune(dir, config.update.keep_backups as usize) {
        tracing::warn!("could not prune old backups: {e}");
    }
}

/// Runs blocking work (copying, hashing, unpacking) on tokio's blocking pool,
/// so a supervisor hosting the upgrade keeps answering meanwhile.
async fn blocking<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(work)
        .await
        .expect("a blocking upgrade step panicked")
}

/// What a backup before changing `from` to `to` is of.
fn backup_request(kind: Kind, from: &str, to: &str, schema: Option<u32>) -> backup::Request {
    backup::Request {
        kind,
        from_version: from.to_string(),
        to_version: to.to_string(),
        schema_version: schema.unwrap_or(0),
    }
}

/// Completes the backup [`Engine::copy_while_serving`] began (its WAL and
/// the config), or makes all of it when none was begun; returns its folder.
async fn finish_backup(
    dir: &DataDir,
    live: Option<backup::Pending>,
    request: backup::Request,
) -> Result<PathBuf, StepError> {
    let dir = dir.clone();
    let made = blocking(move || match live {
        Some(pending) => pending.finish(),
        None => backup::create(&dir, &request),
    })
    .await?;
    Ok(made.path)
}

/// The database's schema version as the installed daemon reports it (0 if unknown).
async fn database_schema(dir: &DataDir) -> u32 {
    daemon_binary::check(&dir.current(), dir)
        .await
        .map_or(0, |r| r.database_version)
}
