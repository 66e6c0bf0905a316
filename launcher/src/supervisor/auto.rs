//! Automatic upgrades in the supervisor (`[update] auto`): the planner
//! ([`crate::auto::Planner`]) decides; this part gives it its wake-ups, runs
//! its registry checks and the notifications off the loop (futures the loop
//! polls beside everything else), and records each attempt in the data
//! dir, where it survives a restart and the exec of a handover. The upgrade
//! itself is the one an operator's `upgrade --to` runs
//! ([`super::upgrading::Upgrade::auto`]).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use semver::Version;
use tracing::{info, warn};

use waiaas_shared::admin::{self as protocol, AutoStatus, Outcome, UpgradeReport};
use waiaas_shared::config::{AutoLevel, Config};
use waiaas_shared::layout::DataDir;

use super::mode::{Mode, Refusal};
use super::{Slot, Supervisor, Upgrade};
use crate::auto::fleet::{self, Duty, FleetLock, LockError};
use crate::auto::notify::{self, Outbox};
use crate::auto::state::{AttemptOutcome, AutoState};
use crate::auto::{Clock, Found, Planner, Release, choose};
use waiaas_shared::control::FromLauncher;

/// Longest sleep between two looks at the clock: a clock that jumps (or a
/// machine that slept) is noticed within this.
const MAX_SLEEP: Duration = Duration::from_secs(30);

type Check = Pin<Box<dyn Future<Output = Result<Found, String>>>>;
type Delivery = Pin<Box<dyn Future<Output = (String, bool)>>>;
type FleetCall = Pin<Box<dyn Future<Output = (FleetAsk, Result<(), LockError>)>>>;

/// What was asked of the fleet lock.
#[derive(Debug)]
pub enum FleetAsk {
    /// A slot, to upgrade to this version.
    Take(Version),
    GiveBack,
}

pub struct Auto {
    pub planner: Planner,
    clock: Arc<dyn Clock>,
    dir: DataDir,
    config: Config,
    install_id: String,
    /// A registry check in flight.
    pub check: Option<Check>,
    /// A notification POST in flight, or the pause before the next.
    pub delivery: Option<Delivery>,
    delivery_at: Option<tokio::time::Instant>,
    /// An attempt a previous process left open has been settled.
    leftover_settled: bool,
    /// The fleet lock (`[update] fleet_lock`), if set.
    fleet: Option<FleetLock>,
    /// A call to the fleet lock in flight.
    pub fleet_call: Option<FleetCall>,
    /// That call asks for a slot (recorded already).
    asking: bool,
    /// A give-back that failed: try again at this time.
    give_back_at: Option<Timestamp>,
    give_back_failures: u32,
    /// The daemon serving now (its pid), and since when: the settle time
    /// counts from its start, again after a crash.
    serving: Option<(u32, Timestamp)>,
    /// When the fleet's duty is due next (the end of the settle time).
    fleet_due: Option<Timestamp>,
    /// The last hold reported, so it is logged once.
    hold_logged: Option<Version>,
    /// The fleet's part of `status`.
    fleet_line: Option<String>,
}

/// Creates the automatic upgrades of this supervisor: none when the policy
/// is "off" (then no request is ever made for them).
pub fn new(dir: &DataDir, config: &Config, clock: Arc<dyn Clock>) -> Result<Option<Auto>, String> {
    if config.update.auto == AutoLevel::Off {
        return Ok(None);
    }
    let install_id = crate::auto::state::install_id(dir).map_err(|e| e.to_string())?;
    // A quarantine that cannot be read must not be taken for an empty one.
    AutoState::load(dir).map_err(|e| e.to_string())?;
    let planner = Planner::new(
        config.update.clone(),
        install_id.clone(),
        clock.zone(),
        clock.now(),
    );
    let fleet = FleetLock::configured(&config.update, &install_id);
    Ok(Some(Auto {
        planner,
        fleet,
        fleet_call: None,
        asking: false,
        give_back_at: None,
        give_back_failures: 0,
        serving: None,
        fleet_due: None,
        hold_logged: None,
        fleet_line: None,
        clock,
        dir: dir.clone(),
        config: config.clone(),
        install_id,
        check: None,
        delivery: None,
        // Anything a previous process left in the outbox goes first.
        delivery_at: config
            .update
            .notify_url
            .as_ref()
            .map(|_| tokio::time::Instant::now()),
        leftover_settled: false,
    }))
}

impl Auto {
    pub fn now(&self) -> Timestamp {
        self.clock.now()
    }

    /// When the loop must wake for the planner or a delivery.
    pub fn wake_at(&self) -> tokio::time::Instant {
        let now = self.clock.now();
        let mut at = self.planner.wake_at(now);
        for due in [self.fleet_due, self.give_back_at].into_iter().flatten() {
            at = at.min(due);
        }
        let wait = now.duration_until(at).try_into().unwrap_or(Duration::ZERO);
        let at = tokio::time::Instant::now() + wait.min(MAX_SLEEP);
        match self.delivery_at {
            Some(d) if self.delivery.is_none() => at.min(d),
            _ => at,
        }
    }

    /// Starts a registry check of the releases the policy allows.
    pub fn start_check(&mut self, current: Version) {
        let (dir, config) = (self.dir.clone(), self.config.clone());
        let now = self.clock.now();
        let known = self.planner.known_rollouts();
        self.check = Some(Box::pin(async move {
            let listing = crate::package::releases(&config)
                .await
                .map_err(|e| e.to_string())?;
            let state = AutoState::load(&dir).map_err(|e| e.to_string())?;
            let releases: Vec<Release> = listing
                .releases
                .into_iter()
                .map(|p| Release {
                    version: p.version,
                    published: p
                        .published_unix_ms
                        .and_then(|ms| Timestamp::from_millisecond(ms).ok()),
                    deprecated: p.deprecated,
                })
                .collect();
            let u = &config.update;
            let choice = choose(
                &current,
                &u.channel,
                &listing.tag,
                &releases,
                u.auto,
                u.min_release_age,
                &state,
                now,
            );
            let rollout = match &choice.candidate {
                None => None,
                Some(c) => match known.get(&c.version) {
                    Some(known) => *known,
                    // The signed release says whether it is rolled out in stages.
                    None => crate::package::signed_release(&dir, &config, &c.version)
                        .await
                        .map_err(|e| format!("{}: {e}", c.version))?
                        .rollout_seconds
                        .map(Duration::from_secs),
                },
            };
            Ok(Found { choice, rollout })
        }));
    }

    pub fn checked(&mut self, result: Result<Found, String>) {
        self.check = None;
        if let Err(e) = &result {
            warn!("automatic upgrades: the registry check failed: {e}");
        }
        let now = self.clock.now();
        self.planner.checked(now, result);
        if let Some(candidate) = self.planner.candidate() {
            info!(
                "automatic upgrades: {candidate} is the candidate; {}",
                self.planner
                    .waiting()
                    .map(|w| w.to_string())
                    .unwrap_or_else(|| "due now".into())
            );
        }
    }

    /// Records an automatic attempt's start (with the fleet lock's slot
    /// taken for it, if any): if this process dies, the next one finds it
    /// open. `false` (and logged) if it cannot be recorded or `to` was
    /// quarantined meanwhile: then it does not start (and a slot taken goes
    /// back: see [`Auto::fleet_duty`]).
    pub fn begin(&mut self, from: &Version, to: &Version, slot: Option<fleet::FleetSlot>) -> bool {
        let result = AutoState::update(&self.dir, |state| {
            if slot.is_some() {
                state.fleet = slot;
            }
            if state.is_quarantined(to) {
                return false;
            }
            state.begin(from.clone(), to.clone(), self.clock.now());
            true
        });
        match result {
            Ok(true) => {
                info!(
                    "automatic upgrade: {from} → {to} starts (policy: {})",
                    self.config.update.auto
                );
                true
            }
            Ok(false) => {
                info!("automatic upgrades: {to} was quarantined meanwhile; not started");
                self.planner.forget_plan();
                false
            }
            Err(e) => {
                warn!("automatic upgrades: cannot record the attempt ({e}); not started");
                false
            }
        }
    }

    // ---- the fleet lock -------------------------------------------------

    /// Asks the fleet lock for a slot to upgrade to `to`. The slot is
    /// recorded first: a launcher killed while the server says yes leaves a
    /// record, and the next one gives the slot back (an unlock-if-held,
    /// harmless if the answer was no).
    pub fn take_slot(&mut self, to: Version) {
        let Some(lock) = self.fleet.clone() else {
            return;
        };
        let now = self.clock.now();
        if self.fleet_call.is_some() {
            let why = "another call to the fleet lock is in flight".to_string();
            self.planner.locked(now, Err(why));
            return;
        }
        let slot = lock.slot(to.clone(), now.to_string());
        if let Err(e) = AutoState::update(&self.dir, |s| s.fleet = Some(slot)) {
            let why = format!("cannot record the slot before asking for it ({e})");
            self.planner.locked(now, Err(why));
            return;
        }
        self.asking = true;
        self.fleet_call = Some(Box::pin(async move {
            let result = lock.take().await;
            (FleetAsk::Take(to), result)
        }));
    }

    /// The fleet lock answered. `Some(slot)` when the upgrade to the slot's
    /// version may start now (`blocked` is `None`); a slot given while
    /// something else started meanwhile is recorded, and so given back.
    pub fn fleet_answered(
        &mut self,
        ask: FleetAsk,
        result: Result<(), LockError>,
        blocked: Option<String>,
    ) -> Option<fleet::FleetSlot> {
        self.fleet_call = None;
        self.asking = false;
        let now = self.clock.now();
        match (ask, result) {
            (FleetAsk::Take(to), Ok(())) => {
                self.planner.locked(now, Ok(()));
                let lock = self.fleet.clone()?;
                info!(
                    "automatic upgrades: the fleet lock ({} group {}) gave a slot for {to}",
                    lock.shown(),
                    lock.group()
                );
                let slot = lock.slot(to, now.to_string());
                if let Some(why) = blocked {
                    // Recorded when asked for: given back by the next duty.
                    info!("automatic upgrades: not started ({why}); the slot goes back");
                    return None;
                }
                self.planner.started();
                Some(slot)
            }
            (FleetAsk::Take(to), Err(e)) => {
                info!("automatic upgrades: no fleet slot for {to} yet: {e}");
                self.planner.locked(now, Err(e.to_string()));
                let forgot = AutoState::update(&self.dir, |s| {
                    if s.fleet.as_ref().is_some_and(|slot| slot.version == to) {
                        s.fleet = None;
                    }
                });
                if let Err(e) = forgot {
                    warn!("automatic upgrades: cannot update the fleet slot's record ({e})");
                }
                None
            }
            (FleetAsk::GiveBack, Ok(())) => {
                self.give_back_at = None;
                self.give_back_failures = 0;
                match AutoState::update(&self.dir, |s| s.fleet.take()) {
                    Ok(Some(slot)) => info!(
                        "automatic upgrades: gave the fleet slot (taken for {}) back",
                        slot.version
                    ),
                    Ok(None) => {}
                    Err(e) => warn!("automatic upgrades: cannot record the slot's return ({e})"),
                }
                None
            }
            (FleetAsk::GiveBack, Err(e)) => {
                self.give_back_failures = self.give_back_failures.saturating_add(1);
                let pause =
                    fleet::retry_after(self.give_back_failures, self.config.update.check_interval);
                warn!(
                    "automatic upgrades: cannot give the fleet slot back ({e}); again in {pause:?}"
                );
                self.give_back_at = now.checked_add(pause).ok();
                None
            }
        }
    }

    /// What a slot held asks now, with `current` installed and `serving`
    /// the pid of the daemon that serves (none while it starts or is
    /// stopped): a give-back when due. Says why no automatic upgrade may
    /// start while a slot is held.
    pub fn fleet_duty(&mut self, current: &Version, serving: Option<u32>) -> Option<String> {
        let why = self.owed(current, serving);
        self.fleet_line = match (&why, &self.fleet) {
            (Some(why), _) => Some(why.clone()),
            (None, Some(lock)) => Some(format!(
                "group {} at {}: no slot held",
                lock.group(),
                lock.shown()
            )),
            (None, None) => None,
        };
        why
    }

    fn owed(&mut self, current: &Version, serving: Option<u32>) -> Option<String> {
        let now = self.clock.now();
        self.serving = match (serving, self.serving) {
            (Some(pid), Some((was, since))) if pid == was => Some((pid, since)),
            (Some(pid), _) => Some((pid, now)),
            (None, _) => None,
        };
        self.fleet_due = None;
        if self.asking {
            // The slot recorded for the question is not one to give back.
            return Some("asking the fleet lock for a slot".into());
        }
        let state = match AutoState::load(&self.dir) {
            Ok(state) => state,
            Err(e) => return Some(format!("cannot read automatic upgrades' state: {e}")),
        };
        let Some(slot) = state.fleet.clone() else {
            self.hold_logged = None;
            return None;
        };
        let place = format!(
            "group {} at {}",
            slot.group,
            waiaas_shared::registry::redact(&slot.url)
        );
        match fleet::duty(&state, current) {
            Duty::Nothing => None,
            Duty::Upgrading(version) => Some(format!(
                "the fleet slot ({place}) is held for the upgrade to {version}"
            )),
            Duty::Settle(version) => {
                let settle = self.config.update.fleet_settle;
                let Some((_, since)) = self.serving else {
                    return Some(format!(
                        "{version} must serve before the fleet slot ({place}) goes back"
                    ));
                };
                let due = since.checked_add(settle).unwrap_or(Timestamp::MAX);
                if now < due {
                    self.fleet_due = Some(due);
                    return Some(format!(
                        "{version} serves for {} before the fleet slot ({place}) goes back, at {due}",
                        waiaas_shared::config::format_duration(settle)
                    ));
                }
                self.give_back(&slot, now);
                Some(format!(
                    "{version} has settled; giving the fleet slot ({place}) back"
                ))
            }
            Duty::Release => {
                self.give_back(&slot, now);
                Some(format!("giving the fleet slot ({place}) back"))
            }
            Duty::Hold { version, why } => {
                let message = format!(
                    "holding the fleet slot ({place}): {why}. The fleet waits at this node until \
                     an operator acts: fix or deprecate {version} on the registry (or publish a \
                     newer release), then `waiaas-launcher upgrade --fleet-release`"
                );
                if self.hold_logged.as_ref() != Some(&version) {
                    warn!("automatic upgrades: {message}");
                    self.hold_logged = Some(version);
                }
                Some(message)
            }
        }
    }

    /// Starts a give-back of `slot`, unless one is in flight or paused.
    fn give_back(&mut self, slot: &fleet::FleetSlot, now: Timestamp) {
        if self.fleet_call.is_some() || self.give_back_at.is_some_and(|at| now < at) {
            return;
        }
        // The slot's own server and group: the config may have changed since.
        let lock = FleetLock::new(&slot.url, &slot.group, &self.install_id);
        self.fleet_call = Some(Box::pin(async move {
            let result = lock.give_back().await;
            (FleetAsk::GiveBack, result)
        }));
    }

    /// Settles the open attempt with an upgrade's report, if the report is
    /// about it: one log line, a quarantine if it rolled back, a notice.
    pub fn settle(&mut self, report: &UpgradeReport) {
        let outcome = match report.outcome {
            Outcome::Upgraded | Outcome::UpToDate => AttemptOutcome::Upgraded,
            Outcome::RolledBack => AttemptOutcome::RolledBack,
            Outcome::RollbackFailed => AttemptOutcome::RollbackFailed,
            Outcome::Refused => AttemptOutcome::Failed,
            Outcome::Restored => return,
        };
        let to = report.to.as_deref().and_then(|v| Version::parse(v).ok());
        self.close(to.as_ref(), outcome, &report.message);
    }

    /// An attempt left open by a process that did not see its end: it was
    /// committed if `current` is its version, else the start's recovery
    /// rolled it back.
    pub fn settle_leftover(&mut self, current: &Version) {
        if std::mem::replace(&mut self.leftover_settled, true) {
            return;
        }
        let open = match AutoState::load(&self.dir) {
            Ok(state) => state.attempt.filter(|a| a.outcome.is_none()),
            Err(_) => None,
        };
        let Some(attempt) = open else { return };
        if attempt.to == *current {
            self.close(Some(current), AttemptOutcome::Upgraded, "committed");
        } else {
            let message = "the launcher ended during the upgrade; the next start rolled it back";
            self.close(Some(&attempt.to), AttemptOutcome::Interrupted, message);
        }
    }

    fn close(&mut self, to: Option<&Version>, outcome: AttemptOutcome, message: &str) {
        let now = self.clock.now();
        let closed = AutoState::update(&self.dir, |state| {
            let attempt = state.attempt.as_ref().filter(|a| a.outcome.is_none())?;
            if to.is_some_and(|to| *to != attempt.to) {
                return None;
            }
            let (from, to) = (attempt.from.clone(), attempt.to.clone());
            state.end(outcome, message.to_string(), now);
            let quarantined =
                outcome != AttemptOutcome::Upgraded && outcome != AttemptOutcome::Failed;
            if quarantined {
                state.quarantine(
                    to.clone(),
                    format!("automatic upgrade {outcome}: {message}"),
                    now,
                );
            }
            Some((from, to, quarantined))
        });
        let (from, to, quarantined) = match closed {
            Ok(Some(closed)) => closed,
            Ok(None) => return,
            Err(e) => {
                warn!("automatic upgrades: cannot record the attempt's end ({e})");
                return;
            }
        };
        if quarantined {
            warn!(
                "automatic upgrade {from} → {to}: {outcome} ({message}); {to} is quarantined: \
                 never tried again by itself (`waiaas-launcher upgrade --forget {to}` lifts it)"
            );
        } else {
            info!("automatic upgrade {from} → {to}: {outcome} ({message})");
        }
        let kind = match outcome {
            AttemptOutcome::Upgraded => notify::Kind::Upgraded,
            AttemptOutcome::RolledBack => notify::Kind::RolledBack,
            AttemptOutcome::RollbackFailed => notify::Kind::RollbackFailed,
            AttemptOutcome::Interrupted => notify::Kind::Interrupted,
            // Nothing changed (refused before the change): no word.
            AttemptOutcome::Failed => return,
        };
        if self.config.update.notify_url.is_none() {
            return;
        }
        let event = notify::Event {
            id: format!("{}-{}-{}", self.install_id, to, now.as_millisecond()),
            event: kind,
            from: from.to_string(),
            to: to.to_string(),
            message: message.to_string(),
            quarantined,
            at: now.to_string(),
            install_id: self.install_id.clone(),
        };
        if let Err(e) = Outbox::push(&self.dir, event) {
            warn!("automatic upgrades: cannot queue the notification ({e})");
        }
        // Delivered from the next loop turn: a handover that follows at once
        // leaves it to the next launcher, which finds it in the outbox.
        self.delivery_at = Some(tokio::time::Instant::now());
    }

    /// Starts the next delivery, if one is due and none is in flight.
    pub fn deliver_if_due(&mut self) {
        let Some(url) = self.config.update.notify_url.clone() else {
            self.delivery_at = None;
            return;
        };
        let due = self
            .delivery_at
            .is_some_and(|at| at <= tokio::time::Instant::now());
        if self.delivery.is_some() || !due {
            return;
        }
        self.delivery_at = None;
        let Some(pending) = Outbox::load(&self.dir).pending.into_iter().next() else {
            return;
        };
        self.delivery = Some(Box::pin(async move {
            let id = pending.event.id.clone();
            match notify::post(&url, &pending.event).await {
                Ok(()) => (id, true),
                Err(e) => {
                    warn!(
                        "automatic upgrades: cannot notify {} ({e})",
                        waiaas_shared::registry::redact(&url)
                    );
                    (id, false)
                }
            }
        }));
    }

    pub fn delivered(&mut self, id: String, ok: bool) {
        self.delivery = None;
        match Outbox::settle(&self.dir, &id, ok) {
            Ok(Some(pause)) => self.delivery_at = Some(tokio::time::Instant::now() + pause),
            Ok(None) => {}
            Err(e) => warn!("automatic upgrades: cannot update the notification outbox ({e})"),
        }
    }

    /// The `status` part.
    pub fn status(&self) -> AutoStatus {
        let mut status = self.planner.status(self.clock.now());
        add_state(&self.dir, &mut status);
        status.fleet = self.fleet_line.clone();
        status
    }

    /// systemd's STATUS= suffix while an automatic upgrade is pending.
    pub fn pending_line(&self) -> Option<String> {
        let candidate = self.planner.candidate()?;
        Some(match self.planner.waiting() {
            Some(wait) => format!("automatic upgrade to {candidate} pending ({wait})"),
            None => format!("automatic upgrade to {candidate} due"),
        })
    }
}

/// The `status` of a supervisor whose policy is "off": what a quarantine
/// holds still shows (an operator's `--rollback` makes one).
pub fn off_status(dir: &DataDir) -> AutoStatus {
    let mut status = AutoStatus {
        policy: "off".into(),
        ..AutoStatus::default()
    };
    add_state(dir, &mut status);
    status
}

/// The quarantine and the last attempt, from the data dir.
fn add_state(dir: &DataDir, status: &mut AutoStatus) {
    let Ok(state) = AutoState::load(dir) else {
        return;
    };
    status.quarantined = state
        .quarantined
        .iter()
        .map(|q| protocol::Quarantined {
            version: q.version.to_string(),
            reason: q.reason.clone(),
            at: q.at.clone(),
        })
        .collect();
    status.last_attempt = state.attempt.as_ref().map(|a| protocol::Attempt {
        from: a.from.to_string(),
        to: a.to.to_string(),
        started_at: a.started_at.clone(),
        outcome: a.outcome.map(|o| o.to_string()),
        message: a.message.clone(),
    });
}

/// The supervisor's side: when automatic upgrades may start, and starting them.
impl Supervisor {
    /// The planner's wake-up: a check, a sample of the daemon's writes, or
    /// the start of an automatic upgrade.
    pub(super) fn auto_due(&mut self) {
        let blocked = self.auto_blocked();
        let current = crate::swap::current_version(&self.dir)
            .ok()
            .flatten()
            .and_then(|v| semver::Version::parse(&v).ok());
        let serving = match &self.slot {
            Slot::Running(daemon) if self.service.serving() && daemon.probe_addr().is_none() => {
                Some(daemon.pid)
            }
            _ => None,
        };
        let Some(auto) = &mut self.auto else { return };
        auto.deliver_if_due();
        let Some(current) = current else { return };
        if blocked.is_none() {
            auto.settle_leftover(&current);
        }
        // A fleet slot held owes the fleet first (and holds starts back).
        let blocked = auto.fleet_duty(&current, serving).or(blocked);
        let now = auto.now();
        match auto.planner.poll(now, blocked) {
            crate::auto::Action::Idle => {}
            crate::auto::Action::Check => auto.start_check(current),
            crate::auto::Action::Sample => {
                if let Slot::Running(daemon) = &mut self.slot
                    && let Err(e) = daemon.send(&FromLauncher::Status)
                {
                    warn!("cannot ask the daemon for its write count: {e}");
                }
            }
            crate::auto::Action::Lock(to) => auto.take_slot(to),
            crate::auto::Action::Start(to) => self.start_auto(&current, &to, None),
        }
        self.say_pending();
    }

    /// The fleet lock's answer: a slot given starts the upgrade it was
    /// asked for, unless something else started meanwhile.
    pub(super) fn fleet_answered(
        &mut self,
        ask: FleetAsk,
        result: Result<(), crate::auto::fleet::LockError>,
    ) {
        let blocked = self.auto_blocked();
        let current = crate::swap::current_version(&self.dir)
            .ok()
            .flatten()
            .and_then(|v| semver::Version::parse(&v).ok());
        let Some(auto) = &mut self.auto else { return };
        if let Some(slot) = auto.fleet_answered(ask, result, blocked)
            && let Some(current) = current
        {
            let to = slot.version.clone();
            self.start_auto(&current, &to, Some(slot));
        }
        self.auto_due();
    }

    /// Starts an automatic upgrade, once it is recorded.
    pub(super) fn start_auto(
        &mut self,
        current: &semver::Version,
        to: &semver::Version,
        slot: Option<crate::auto::fleet::FleetSlot>,
    ) {
        let Some(auto) = &mut self.auto else { return };
        if auto.begin(current, to, slot) {
            let (dir, config) = (self.dir.clone(), self.config.clone());
            self.upgrade = Some(Upgrade::auto(dir, config, to));
        }
    }

    /// Why no automatic upgrade may start now, if so.
    pub(super) fn auto_blocked(&self) -> Option<String> {
        if self.upgrade.is_some() {
            return Some("an upgrade or rollback is in progress".into());
        }
        if let Mode::Refused(Refusal::Exit(code)) = self.service.mode() {
            return Some(format!(
                "the daemon refused to run (exit {code}): {}",
                waiaas_shared::exit::daemon::describe(*code)
            ));
        }
        if self.dir.upgrade_journal().exists() {
            return Some("a change is unfinished (its journal remains)".into());
        }
        if let Some(pid) = crate::upgrade::lock::UpgradeLock::holder(&self.dir) {
            return Some(format!("process {pid} holds the upgrade lock"));
        }
        match (self.service.serving(), &self.slot) {
            (false, _) => Some(format!(
                "the service is {}",
                self.service.idle_state().name()
            )),
            (true, Slot::Running(_)) => None,
            (true, _) => Some("the daemon is not serving yet".into()),
        }
    }

    /// systemd's STATUS= line, with a pending automatic upgrade named.
    pub(super) fn say_pending(&self) {
        let Some(pending) = self.auto.as_ref().and_then(|a| a.pending_line()) else {
            return;
        };
        if let Slot::Running(daemon) = &self.slot {
            self.notifier.notify(&format!(
                "STATUS=serving {} (schema {}); {pending}",
                daemon.version, daemon.schema_version
            ));
        }
    }
}
