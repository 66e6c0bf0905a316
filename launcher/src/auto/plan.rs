//! The planner: when to look at the registry, which release to take, when to
//! start it, and why it waits. Pure: the supervisor feeds it `now` (from its
//! [`Clock`](super::Clock)), what a check found and the daemon's write count,
//! and carries out the [`Action`] it returns. Every wait it reports has a
//! name ([`Wait`]), which `status` and systemd's STATUS= line show.
//!
//! Busy ([`super::busy`]): while the daemon's write rate is above
//! `busy_write_rate` a due start is deferred. A deferral ends with the
//! window: the start moves to the next opening. A window of "always" never
//! ends, so there a busy daemon defers at most [`BUSY_LIMIT`], then the
//! upgrade goes ahead (clients wait in the backlog; none fail).

use std::collections::BTreeMap;
use std::time::Duration;

use jiff::Timestamp;
use jiff::tz::TimeZone;
use semver::Version;
use waiaas_shared::admin::AutoStatus;
use waiaas_shared::config::{UpdateConfig, format_duration};

use super::busy::{SAMPLE_EVERY, WriteRate};
use super::choose::Choice;
use super::{fleet, rollout, schedule};

/// Longest deferral for a busy daemon when the window never closes.
pub const BUSY_LIMIT: Duration = Duration::from_secs(24 * 3600);
/// Pause before a blocked start (an operation in progress, a refusal) is
/// looked at again.
pub const BLOCKED_RETRY: Duration = Duration::from_secs(5);

/// Why the candidate has not started yet.
#[derive(Debug, Clone, PartialEq)]
pub enum Wait {
    /// `min_release_age`: the release is too young.
    Soak { until: Timestamp },
    /// The signed release's staged rollout: this installation's turn.
    Rollout { until: Timestamp },
    /// Outside the window.
    Window { opens: Timestamp },
    /// The random delay inside the window.
    Jitter { until: Timestamp },
    /// Measuring the write rate before the start.
    Measuring,
    /// The write rate is above the threshold.
    Busy { writes_per_sec: f64, limit: u32 },
    /// The fleet lock: asking for a slot, or refused one.
    Fleet(String),
    /// Something else holds the installation (an operation, a refusal).
    Blocked(String),
}

impl std::fmt::Display for Wait {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Wait::Soak { until } => write!(f, "soak: the release is too young until {until}"),
            Wait::Rollout { until } => {
                write!(f, "staged rollout: this installation's turn is at {until}")
            }
            Wait::Window { opens } => write!(f, "window: opens at {opens}"),
            Wait::Jitter { until } => write!(f, "jitter: starts at {until}"),
            Wait::Measuring => write!(f, "busy?: measuring the write rate"),
            Wait::Busy {
                writes_per_sec,
                limit,
            } => write!(
                f,
                "busy: {writes_per_sec:.1} writes/s, above busy_write_rate = {limit}"
            ),
            Wait::Fleet(why) => write!(f, "fleet lock: {why}"),
            Wait::Blocked(why) => write!(f, "blocked: {why}"),
        }
    }
}

/// What the supervisor is to do now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Idle,
    /// Look at the registry (and, for a new candidate, its signed release).
    Check,
    /// Ask the daemon for its write count.
    Sample,
    /// Ask the fleet lock for a slot for this version (`[update] fleet_lock`).
    Lock(Version),
    /// Run the upgrade to this version, as an operator's would run.
    Start(Version),
}

/// What a check found: the policy's choice, and the staged rollout the
/// candidate's signed release asks for (`None`: none, or not known).
#[derive(Debug, Clone)]
pub struct Found {
    pub choice: Choice,
    pub rollout: Option<Duration>,
}

/// A candidate on its way to a start.
#[derive(Debug, Clone)]
struct Plan {
    to: Version,
    /// Not before this: soak, then rollout.
    not_before: Timestamp,
    not_before_why: Option<Wait>,
    start: schedule::Start,
    /// When a busy daemon first deferred the start.
    busy_since: Option<Timestamp>,
}

pub struct Planner {
    policy: UpdateConfig,
    install_id: String,
    zone: TimeZone,
    next_check: Timestamp,
    checking: bool,
    last_check: Option<(Timestamp, Result<String, String>)>,
    plan: Option<Plan>,
    writes: WriteRate,
    /// Blocked: look again at this time.
    retry_at: Option<Timestamp>,
    waiting: Option<Wait>,
    /// Rollouts already read from signed releases: not downloaded again.
    rollouts: BTreeMap<Version, Option<Duration>>,
    /// A slot asked for, no answer yet.
    locking: bool,
    /// Refused: ask again at this time; refusals in a row.
    lock_retry_at: Option<Timestamp>,
    lock_refusals: u32,
}

fn add(at: Timestamp, d: Duration) -> Timestamp {
    at.checked_add(d).unwrap_or(Timestamp::MAX)
}

impl Planner {
    /// A planner whose first check is due at once (the supervisor asks only
    /// once its daemon serves: readiness never waits on the network).
    pub fn new(policy: UpdateConfig, install_id: String, zone: TimeZone, now: Timestamp) -> Self {
        Self {
            policy,
            install_id,
            zone,
            next_check: now,
            checking: false,
            last_check: None,
            plan: None,
            writes: WriteRate::default(),
            retry_at: None,
            waiting: None,
            rollouts: BTreeMap::new(),
            locking: false,
            lock_retry_at: None,
            lock_refusals: 0,
        }
    }

    /// What is due at `now`. `blocked` says why no upgrade may start now
    /// (an operation holds the installation, a refusal stands), if so.
    pub fn poll(&mut self, now: Timestamp, blocked: Option<String>) -> Action {
        // Nothing while blocked, not even a check: the first one waits for
        // the daemon to serve (readiness never waits on the network).
        if let Some(why) = blocked {
            if self.plan.is_some() {
                self.waiting = Some(Wait::Blocked(why));
            }
            self.retry_at = Some(add(now, BLOCKED_RETRY));
            return Action::Idle;
        }
        self.retry_at = None;
        if !self.checking && now >= self.next_check {
            self.checking = true;
            return Action::Check;
        }
        let measuring = self.policy.busy_write_rate > 0 && self.writes.measurable();
        let rate = self.writes.rate(now);
        let Some(plan) = &mut self.plan else {
            return Action::Idle;
        };
        let due = plan.not_before.max(plan.start.at);
        // The rate is measured ahead of the start, so a due start need not
        // wait for it.
        let presample = measuring
            && now < due
            && now.duration_until(due).as_secs_f64() <= 2.0 * SAMPLE_EVERY.as_secs_f64();
        if now < plan.not_before {
            self.waiting = plan.not_before_why.clone();
            return self.presample(now, presample);
        }
        if now < plan.start.at {
            let opening = self.policy.window.opening(now, &self.zone);
            self.waiting = Some(if opening.start > now {
                Wait::Window {
                    opens: opening.start,
                }
            } else {
                Wait::Jitter {
                    until: plan.start.at,
                }
            });
            return self.presample(now, presample);
        }
        if plan.start.window_end.is_some_and(|end| now >= end) {
            // The opening passed (busy, blocked, or the machine slept): the next.
            plan.start = schedule::start_at(
                now,
                &self.policy.window,
                &self.zone,
                self.policy.jitter,
                schedule::seed(&self.install_id, &plan.to),
            );
            plan.busy_since = None;
            return self.poll(now, blocked);
        }
        if measuring {
            match rate {
                None => {
                    self.waiting = Some(Wait::Measuring);
                    return self.sample_if_due(now);
                }
                Some(rate) if rate > f64::from(self.policy.busy_write_rate) => {
                    let since = *plan.busy_since.get_or_insert(now);
                    let limit_passed =
                        plan.start.window_end.is_none() && now >= add(since, BUSY_LIMIT);
                    if !limit_passed {
                        self.waiting = Some(Wait::Busy {
                            writes_per_sec: rate,
                            limit: self.policy.busy_write_rate,
                        });
                        return self.sample_if_due(now);
                    }
                }
                Some(_) => {}
            }
        }
        let to = plan.to.clone();
        // With a fleet lock, the start waits for a slot: the supervisor
        // starts when it is given ([`Planner::started`]).
        if self.policy.fleet_lock.is_some() {
            if self.locking || self.lock_retry_at.is_some_and(|at| now < at) {
                return Action::Idle;
            }
            self.locking = true;
            self.waiting = Some(Wait::Fleet("asking for a slot".into()));
            return Action::Lock(to);
        }
        self.started();
        Action::Start(to)
    }

    /// The planned upgrade has started: the plan is done.
    pub fn started(&mut self) {
        self.plan = None;
        self.waiting = None;
        self.writes.reset();
    }

    /// Before the start: a sample when it is near, else none pending.
    fn presample(&mut self, now: Timestamp, near: bool) -> Action {
        if near {
            self.sample_if_due(now)
        } else {
            self.writes.pause();
            Action::Idle
        }
    }

    fn sample_if_due(&mut self, now: Timestamp) -> Action {
        if self.writes.sample_due(now) {
            Action::Sample
        } else {
            Action::Idle
        }
    }

    /// The daemon's write count at `now` (see [`WriteRate::sampled`]).
    pub fn sampled(&mut self, now: Timestamp, writes: Option<u64>) {
        self.writes.sampled(now, writes);
    }

    /// The fleet lock's answer to [`Action::Lock`]: on a refusal (or no
    /// answer) the start waits, and asks again later (see
    /// [`fleet::retry_after`]); given, [`Planner::started`] follows.
    pub fn locked(&mut self, now: Timestamp, result: Result<(), String>) {
        self.locking = false;
        match result {
            Ok(()) => {
                self.lock_refusals = 0;
                self.lock_retry_at = None;
            }
            Err(why) => {
                self.lock_refusals = self.lock_refusals.saturating_add(1);
                let at = add(
                    now,
                    fleet::retry_after(self.lock_refusals, self.policy.check_interval),
                );
                self.lock_retry_at = Some(at);
                self.waiting = Some(Wait::Fleet(format!("{why}; asking again at {at}")));
            }
        }
    }

    /// When [`Planner::poll`] has something to do next, at the latest.
    pub fn wake_at(&self, now: Timestamp) -> Timestamp {
        if let Some(retry) = self.retry_at {
            return retry;
        }
        let mut at = if self.checking {
            Timestamp::MAX
        } else {
            self.next_check
        };
        if let Some(plan) = &self.plan {
            let due = plan.not_before.max(plan.start.at);
            if now < due {
                // Sampling ahead of the start (see `poll`).
                let ahead = jiff::SignedDuration::try_from(SAMPLE_EVERY * 2).unwrap_or_default();
                let presample_from = due.checked_sub(ahead).unwrap_or(due);
                let sampling = self.policy.busy_write_rate > 0 && self.writes.measurable();
                at = at.min(if sampling && now < presample_from {
                    presample_from
                } else {
                    due
                });
            }
            // Past due: `poll` acts at once, or waits on a sample (below),
            // the fleet lock's answer, or the time to ask it again.
            if now >= due && self.writes.next_sample().is_none() && !self.locking {
                at = at.min(self.lock_retry_at.unwrap_or(now).max(now));
            }
            if let Some(end) = plan.start.window_end.filter(|&end| end > now) {
                at = at.min(end);
            }
        }
        if let Some(sample) = self.writes.next_sample() {
            at = at.min(sample);
        }
        at
    }

    /// Rollouts known already, so a check does not download them again.
    pub fn known_rollouts(&self) -> BTreeMap<Version, Option<Duration>> {
        self.rollouts.clone()
    }

    /// What a check found (or why it failed); the next check is due
    /// `check_interval` later either way.
    pub fn checked(&mut self, now: Timestamp, result: Result<Found, String>) {
        self.checking = false;
        self.next_check = add(now, self.policy.check_interval);
        let found = match result {
            Ok(found) => found,
            Err(e) => {
                // A failed check changes no plan: what was found stands.
                self.last_check = Some((now, Err(e)));
                return;
            }
        };
        let Some(candidate) = found.choice.candidate.clone() else {
            self.last_check = Some((now, Ok("no release the policy allows".into())));
            self.plan = None;
            self.waiting = None;
            return;
        };
        self.last_check = Some((now, Ok(format!("candidate {}", candidate.version))));
        self.rollouts
            .insert(candidate.version.clone(), found.rollout);
        if self
            .plan
            .as_ref()
            .is_some_and(|p| p.to == candidate.version)
        {
            return;
        }
        let mut not_before = candidate.ready_at;
        let mut why = (candidate.ready_at > now).then_some(Wait::Soak {
            until: candidate.ready_at,
        });
        if let Some(duration) = found.rollout {
            let fraction = rollout::fraction(&self.install_id, &candidate.version);
            let turn = rollout::turn(candidate.published, duration, fraction);
            if turn > not_before {
                not_before = turn;
                why = Some(Wait::Rollout { until: turn });
            }
        }
        let seed = schedule::seed(&self.install_id, &candidate.version);
        let window = &self.policy.window;
        // Planned from `not_before`, not from now: a restart keeps the same
        // start. One that has passed while its opening lasts starts now.
        let mut start =
            schedule::start_at(not_before, window, &self.zone, self.policy.jitter, seed);
        if start.window_end.is_some_and(|end| end <= now) {
            start = schedule::start_at(now, window, &self.zone, self.policy.jitter, seed);
        }
        self.plan = Some(Plan {
            to: candidate.version,
            not_before,
            not_before_why: why,
            start,
            busy_since: None,
        });
    }

    /// Drops the plan for `version` (quarantined meanwhile, or installed by
    /// an operator).
    pub fn forget_plan(&mut self) {
        self.plan = None;
        self.waiting = None;
    }

    /// The planned version, if any.
    pub fn candidate(&self) -> Option<&Version> {
        self.plan.as_ref().map(|p| &p.to)
    }

    /// Why the candidate waits, if it does.
    pub fn waiting(&self) -> Option<&Wait> {
        self.waiting.as_ref()
    }

    /// The planner's part of `status`.
    pub fn status(&self, now: Timestamp) -> AutoStatus {
        let p = &self.policy;
        AutoStatus {
            policy: format!(
                "{}; check every {}; window {}; soak {}; jitter {}; busy above {} writes/s",
                p.auto,
                format_duration(p.check_interval),
                p.window,
                format_duration(p.min_release_age),
                format_duration(p.jitter),
                p.busy_write_rate
            ),
            next_check: (!self.checking).then(|| self.next_check.max(now).to_string()),
            last_check: self.last_check.as_ref().map(|(at, r)| match r {
                Ok(what) => format!("{at}: {what}"),
                Err(e) => format!("{at}: failed: {e}"),
            }),
            candidate: self.plan.as_ref().map(|p| p.to.to_string()),
            starts_at: self
                .plan
                .as_ref()
                .map(|p| p.start.at.max(p.not_before).to_string()),
            waiting: self.waiting.as_ref().map(Wait::to_string),
            quarantined: Vec::new(),
            last_attempt: None,
            fleet: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auto::choose::Candidate;
    use crate::auto::clock::{Clock, FakeClock};
    use waiaas_shared::config::{AutoLevel, Config};
    use waiaas_shared::window::Window;

    fn ts(text: &str) -> Timestamp {
        text.parse().unwrap()
    }

    fn v(text: &str) -> Version {
        Version::parse(text).unwrap()
    }

    fn policy(window: &str, jitter: u64, busy: u32) -> UpdateConfig {
        let mut u = Config::default().update;
        u.auto = AutoLevel::Minor;
        u.check_interval = Duration::from_secs(7 * 86_400);
        u.window = Window::parse(window).unwrap();
        u.jitter = Duration::from_secs(jitter);
        u.busy_write_rate = busy;
        u
    }

    fn found(version: &str, published: &str, ready_at: &str, rollout: Option<u64>) -> Found {
        Found {
            choice: Choice {
                candidate: Some(Candidate {
                    version: v(version),
                    published: ts(published),
                    ready_at: ts(ready_at),
                }),
                passed_over: Vec::new(),
            },
            rollout: rollout.map(Duration::from_secs),
        }
    }

    /// A release published and soaked long ago, with no staged rollout.
    fn soaked(version: &str) -> Found {
        found(
            version,
            "2026-12-01T00:00:00Z",
            "2026-12-01T00:00:00Z",
            None,
        )
    }

    /// A planner whose first check found `found`, at the clock's time.
    fn planned(policy: UpdateConfig, clock: &FakeClock, found: Found) -> Planner {
        let mut p = Planner::new(policy, "id".into(), clock.zone(), clock.now());
        assert_eq!(p.poll(clock.now(), None), Action::Check);
        assert_eq!(
            p.poll(clock.now(), None),
            Action::Idle,
            "one check at a time"
        );
        p.checked(clock.now(), Ok(found));
        p
    }

    /// Polls as the supervisor would, up to `until`, jumping to each
    /// wake-up; the daemon's write count grows `per_sec`. Returns the first
    /// start and when it came.
    fn run_until(
        p: &mut Planner,
        clock: &FakeClock,
        until: Timestamp,
        per_sec: u64,
    ) -> Option<(Version, Timestamp)> {
        let origin = clock.now();
        for _ in 0..100_000 {
            let now = clock.now();
            match p.poll(now, None) {
                Action::Start(v) => return Some((v, now)),
                Action::Sample => {
                    let secs = origin.duration_until(now).as_secs().max(0) as u64;
                    p.sampled(now, Some(secs * per_sec));
                    continue;
                }
                Action::Check => {
                    // Nothing new: the plan stands.
                    continue;
                }
                Action::Lock(v) => panic!("no fleet lock is configured, yet a slot for {v}"),
                Action::Idle => {}
            }
            let wake = p.wake_at(now);
            assert!(
                wake > now,
                "the planner would spin at {now}: wakes at {wake}"
            );
            if wake > until {
                return None;
            }
            clock.set(wake);
        }
        panic!("no decision in 100,000 wake-ups");
    }

    #[test]
    fn a_due_release_in_an_always_window_starts_after_one_measurement() {
        let clock = FakeClock::at(ts("2026-12-06T12:00:00Z"), jiff::tz::TimeZone::UTC);
        let mut p = planned(policy("always", 0, 20), &clock, soaked("1.9.0"));
        let (to, at) = run_until(&mut p, &clock, ts("2026-12-06T13:00:00Z"), 1).unwrap();
        assert_eq!(to, v("1.9.0"));
        assert_eq!(at, ts("2026-12-06T12:00:05Z"), "one 5 s measurement");
        assert_eq!(p.candidate(), None);
    }

    #[test]
    fn soak_then_window_then_jitter_each_named_while_it_waits() {
        // Saturday noon; the release soaks until Sunday noon; the window is
        // weekdays 02:00-04:00 UTC, jitter 30 min.
        let clock = FakeClock::at(ts("2026-12-05T12:00:00Z"), jiff::tz::TimeZone::UTC);
        let mut p = planned(
            policy("Mon..Fri 02:00-04:00 UTC", 1800, 20),
            &clock,
            found(
                "1.9.0",
                "2026-12-05T00:00:00Z",
                "2026-12-06T12:00:00Z",
                None,
            ),
        );
        assert_eq!(p.poll(clock.now(), None), Action::Idle);
        assert_eq!(
            p.waiting(),
            Some(&Wait::Soak {
                until: ts("2026-12-06T12:00:00Z")
            })
        );
        clock.set(ts("2026-12-06T13:00:00Z"));
        p.poll(clock.now(), None);
        assert_eq!(
            p.waiting(),
            Some(&Wait::Window {
                opens: ts("2026-12-07T02:00:00Z")
            })
        );
        clock.set(ts("2026-12-07T02:00:00Z"));
        p.poll(clock.now(), None);
        assert!(
            matches!(p.waiting(), Some(Wait::Jitter { .. })),
            "{:?}",
            p.waiting()
        );
        let (_, at) = run_until(&mut p, &clock, ts("2026-12-08T00:00:00Z"), 0).unwrap();
        assert!(
            at >= ts("2026-12-07T02:00:00Z") && at < ts("2026-12-07T02:30:10Z"),
            "{at}"
        );
        let status = p.status(clock.now());
        assert!(
            status
                .policy
                .contains("minor; check every 7d; window Mon..Fri 02:00-04:00 UTC"),
            "{}",
            status.policy
        );
    }

    #[test]
    fn a_busy_daemon_defers_until_the_window_ends_then_the_next_opening() {
        let clock = FakeClock::at(ts("2026-12-07T02:00:00Z"), jiff::tz::TimeZone::UTC);
        let mut p = planned(policy("* 02:00-04:00 UTC", 0, 20), &clock, soaked("1.9.0"));
        // 50 writes/s all through the opening: no start that day.
        assert_eq!(
            run_until(&mut p, &clock, ts("2026-12-07T03:59:59Z"), 50),
            None
        );
        assert!(
            matches!(p.waiting(), Some(Wait::Busy { .. })),
            "{:?}",
            p.waiting()
        );
        let status = p.status(clock.now());
        assert!(status.waiting.unwrap().contains("busy: 50.0 writes/s"));
        // The load stops overnight: the next opening starts it.
        let (_, at) = run_until(&mut p, &clock, ts("2026-12-09T00:00:00Z"), 0).unwrap();
        assert!(
            at >= ts("2026-12-08T02:00:00Z") && at <= ts("2026-12-08T02:00:10Z"),
            "{at}"
        );
    }

    #[test]
    fn a_busy_daemon_with_an_always_window_waits_at_most_a_day() {
        let clock = FakeClock::at(ts("2026-12-07T00:00:00Z"), jiff::tz::TimeZone::UTC);
        let mut p = planned(policy("always", 0, 20), &clock, soaked("1.9.0"));
        let (_, at) = run_until(&mut p, &clock, ts("2026-12-10T00:00:00Z"), 100).unwrap();
        assert!(
            at >= ts("2026-12-08T00:00:00Z") && at <= ts("2026-12-08T00:00:10Z"),
            "{at}"
        );
    }

    #[test]
    fn a_staged_rollout_puts_the_start_at_this_installations_turn() {
        let clock = FakeClock::at(ts("2026-12-06T00:00:00Z"), jiff::tz::TimeZone::UTC);
        let rollout = 48 * 3600;
        let mut p = planned(
            policy("always", 0, 0),
            &clock,
            found(
                "1.9.0",
                "2026-12-06T00:00:00Z",
                "2026-12-06T00:00:00Z",
                Some(rollout),
            ),
        );
        let f = rollout::fraction("id", &v("1.9.0"));
        let turn = rollout::turn(ts("2026-12-06T00:00:00Z"), Duration::from_secs(rollout), f);
        p.poll(clock.now(), None);
        assert_eq!(p.waiting(), Some(&Wait::Rollout { until: turn }));
        let (_, at) = run_until(&mut p, &clock, ts("2026-12-09T00:00:00Z"), 0).unwrap();
        assert_eq!(at, turn);
    }

    #[test]
    fn blocked_waits_without_spinning_and_a_failed_check_keeps_the_plan() {
        let clock = FakeClock::at(ts("2026-12-06T12:00:00Z"), jiff::tz::TimeZone::UTC);
        let mut p = Planner::new(
            policy("always", 0, 0),
            "id".into(),
            clock.zone(),
            clock.now(),
        );
        // Blocked from the start: not even a check.
        assert_eq!(
            p.poll(clock.now(), Some("the daemon is not serving yet".into())),
            Action::Idle
        );
        assert!(p.wake_at(clock.now()) > clock.now());
        assert_eq!(p.poll(clock.now(), None), Action::Check);
        p.checked(clock.now(), Ok(soaked("1.9.0")));
        assert_eq!(
            p.poll(
                clock.now(),
                Some("an upgrade or rollback is in progress".into())
            ),
            Action::Idle
        );
        assert_eq!(
            p.waiting(),
            Some(&Wait::Blocked(
                "an upgrade or rollback is in progress".into()
            ))
        );
        assert_eq!(p.wake_at(clock.now()), add(clock.now(), BLOCKED_RETRY));
        clock.advance(Duration::from_secs(7 * 86_400));
        assert_eq!(p.poll(clock.now(), None), Action::Check);
        p.checked(clock.now(), Err("registry answered HTTP 503".into()));
        assert_eq!(p.candidate(), Some(&v("1.9.0")));
        assert_eq!(p.poll(clock.now(), None), Action::Start(v("1.9.0")));
        // The next check found nothing allowed (say, it was quarantined): no plan.
        clock.advance(Duration::from_secs(7 * 86_400));
        assert_eq!(p.poll(clock.now(), None), Action::Check);
        p.checked(
            clock.now(),
            Ok(Found {
                choice: Choice::default(),
                rollout: None,
            }),
        );
        assert_eq!(p.candidate(), None);
        assert!(
            p.status(clock.now())
                .last_check
                .unwrap()
                .contains("no release the policy allows")
        );
    }

    #[test]
    fn a_clock_that_jumps_back_delays_but_never_starts_early() {
        let clock = FakeClock::at(ts("2026-12-07T01:00:00Z"), jiff::tz::TimeZone::UTC);
        let mut p = planned(policy("* 02:00-04:00 UTC", 0, 0), &clock, soaked("1.9.0"));
        clock.set(ts("2026-12-07T02:30:00Z"));
        assert_eq!(p.poll(clock.now(), None), Action::Start(v("1.9.0")));
        // Again, with the clock set back an hour before the window: it waits.
        let mut p = planned(policy("* 02:00-04:00 UTC", 0, 0), &clock, soaked("1.9.0"));
        clock.set(ts("2026-12-07T01:30:00Z"));
        assert_eq!(p.poll(clock.now(), None), Action::Idle);
        assert!(matches!(
            p.waiting(),
            Some(Wait::Window { .. }) | Some(Wait::Jitter { .. })
        ));
    }

    #[test]
    fn with_a_fleet_lock_a_due_start_asks_for_a_slot_and_waits_doubling_when_refused() {
        let clock = FakeClock::at(ts("2026-12-06T12:00:00Z"), jiff::tz::TimeZone::UTC);
        let mut p = planned(policy_with_lock(), &clock, soaked("1.9.0"));
        assert_eq!(p.poll(clock.now(), None), Action::Lock(v("1.9.0")));
        // One question at a time; the answer wakes the supervisor.
        assert_eq!(p.poll(clock.now(), None), Action::Idle);
        assert!(p.wake_at(clock.now()) > clock.now(), "no spin while asking");
        let mut asked_at = Vec::new();
        for _ in 0..3 {
            p.locked(clock.now(), Err("no slot free".into()));
            assert!(
                matches!(p.waiting(), Some(Wait::Fleet(why)) if why.starts_with("no slot free")),
                "{:?}",
                p.waiting()
            );
            assert_eq!(p.poll(clock.now(), None), Action::Idle);
            clock.set(p.wake_at(clock.now()));
            assert_eq!(p.poll(clock.now(), None), Action::Lock(v("1.9.0")));
            asked_at.push(clock.now());
        }
        assert_eq!(
            asked_at,
            [
                ts("2026-12-06T12:00:05Z"),
                ts("2026-12-06T12:00:15Z"),
                ts("2026-12-06T12:00:35Z")
            ],
            "5, 10, 20 s apart"
        );
        // Given: the supervisor starts it, and the plan is done.
        p.locked(clock.now(), Ok(()));
        p.started();
        assert_eq!(p.candidate(), None);
        assert_eq!(p.waiting(), None);
        // A blocked installation (a slot held after a rollback) asks nothing.
        let mut p = planned(policy_with_lock(), &clock, soaked("1.9.1"));
        assert_eq!(p.poll(clock.now(), Some("holding".into())), Action::Idle);
    }

    fn policy_with_lock() -> UpdateConfig {
        let mut policy = policy("always", 0, 0);
        policy.fleet_lock = Some("http://127.0.0.1:1".into());
        policy
    }
}
