//! The supervisor's mode: what it does about the service — the daemon it
//! keeps running — whenever no daemon fills the slot. It serves (with a
//! restart due at some time, or not), is held stopped while an upgrade
//! decides, refuses, or stops for good; the restart policy ([`Backoff`])
//! moves it between the first and the third.
//!
//! Pure: the supervisor tells it what happened and does what it answers, so
//! every transition is unit-tested below with synthetic events, no process.

use std::io;
use std::process::ExitStatus;
use std::time::Duration;

use tokio::time::Instant;

use super::backoff::{self, Backoff};

/// What the supervisor is doing, as `status` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Starting,
    Running,
    BackingOff,
    /// The daemon exited with a permanent code: not restarted.
    Refused,
    /// Left stopped on purpose (`upgrade --no-start`, an upgrade's step 2).
    Stopped,
    Stopping,
}

impl State {
    pub fn name(self) -> &'static str {
        match self {
            State::Starting => "starting",
            State::Running => "running",
            State::BackingOff => "backing-off",
            State::Refused => "refused",
            State::Stopped => "stopped",
            State::Stopping => "stopping",
        }
    }
}

/// What the service is meant to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    /// Wanted: a daemon runs or starts, or its next start is due at `retry_at`.
    Serving { retry_at: Option<Instant> },
    /// Left stopped on purpose: an upgrade decides when a daemon runs (from
    /// its step 2, or a recovery), or `upgrade --no-start` left it so.
    Held,
    /// Not started again until an operator's `restart`.
    Refused(Refusal),
    /// The supervisor is ending once its daemon is gone. Final.
    Stopping,
}

/// Why the service is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// The daemon exited with this permanent code (20–24): it would again.
    Exit(i32),
    /// A journal says a change is unfinished: why, and what to do.
    Uncommitted(String),
}

/// What the supervisor does about a daemon that did not come back or ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Then {
    /// Starts it after `delay`: at once when zero, else once
    /// [`Service::retry_due`].
    RetryIn(Duration),
    /// Refused, with the daemon's code.
    Refuse(i32),
    /// Leaves it stopped: the service is not wanted now.
    LeaveStopped,
}

/// The mode and the restart policy's count.
#[derive(Debug)]
pub struct Service {
    mode: Mode,
    backoff: Backoff,
}

impl Default for Service {
    fn default() -> Self {
        Self {
            mode: Mode::Serving { retry_at: None },
            backoff: Backoff::default(),
        }
    }
}

impl Service {
    pub fn mode(&self) -> &Mode {
        &self.mode
    }

    /// Whether the service is wanted (not held, refused or stopping).
    pub fn serving(&self) -> bool {
        matches!(self.mode, Mode::Serving { .. })
    }

    pub fn stopping(&self) -> bool {
        self.mode == Mode::Stopping
    }

    /// When the next start of the service is due, if one waits.
    pub fn retry_at(&self) -> Option<Instant> {
        match self.mode {
            Mode::Serving { retry_at } => retry_at,
            _ => None,
        }
    }

    /// Whether the start a backoff waits for is due at `now`.
    pub fn retry_due(&self, now: Instant) -> bool {
        self.retry_at().is_some_and(|at| at <= now)
    }

    /// Restarts after a failure, for `status`.
    pub fn restarts(&self) -> u32 {
        self.backoff.restarts()
    }

    /// The state when no daemon fills the slot.
    pub fn idle_state(&self) -> State {
        match self.mode {
            Mode::Serving { retry_at: Some(_) } => State::BackingOff,
            Mode::Serving { retry_at: None } | Mode::Held => State::Stopped,
            Mode::Refused(_) => State::Refused,
            Mode::Stopping => State::Stopping,
        }
    }

    /// Why an unfinished change refuses the service, and what to do.
    pub fn uncommitted(&self) -> Option<&str> {
        match &self.mode {
            Mode::Refused(Refusal::Uncommitted(message)) => Some(message),
            _ => None,
        }
    }

    /// The service's daemon is being started: it is wanted from here on,
    /// whatever held or refused it before.
    pub fn start(&mut self) {
        self.unless_stopping(Mode::Serving { retry_at: None });
    }

    /// A daemon is being started or stopped anyway: no retry waits.
    pub fn cancel_retry(&mut self) {
        if let Mode::Serving { retry_at } = &mut self.mode {
            *retry_at = None;
        }
    }

    /// An upgrade decides from here on when a daemon runs.
    pub fn hold(&mut self) {
        self.unless_stopping(Mode::Held);
    }

    /// An upgrade ended with a daemon in the slot: it is the service's.
    pub fn release(&mut self) {
        self.start();
    }

    /// An operator's `restart` (or SIGHUP): wanted again, and the backoff's
    /// count starts again.
    pub fn restart(&mut self) {
        self.backoff.reset();
        self.start();
    }

    /// SIGTERM, SIGINT or `stop`: the supervisor ends.
    pub fn shutdown(&mut self) {
        self.mode = Mode::Stopping;
    }

    /// A journal says a change is unfinished: nothing is served until its
    /// rollback is retried.
    pub fn refuse_uncommitted(&mut self, message: String) {
        self.unless_stopping(Mode::Refused(Refusal::Uncommitted(message)));
    }

    /// A start of the service did not reach ready at `now`, with the exit
    /// status of its daemon if it has one.
    pub fn start_failed(&mut self, now: Instant, status: Option<&io::Result<ExitStatus>>) -> Then {
        self.failed(now, status)
    }

    /// The service's daemon ended on its own at `now`, after `ran_for`.
    /// While the service is not wanted it is left stopped, unless its code
    /// says it would refuse anyway.
    pub fn crashed(
        &mut self,
        now: Instant,
        ran_for: Duration,
        status: &io::Result<ExitStatus>,
    ) -> Then {
        self.backoff.ran(ran_for);
        if !self.serving() && !backoff::is_permanent(status) {
            return Then::LeaveStopped;
        }
        self.failed(now, Some(status))
    }

    fn failed(&mut self, now: Instant, status: Option<&io::Result<ExitStatus>>) -> Then {
        if self.stopping() {
            return Then::LeaveStopped;
        }
        match self.backoff.failed(status) {
            backoff::Next::Refuse => {
                let code = status
                    .and_then(|s| s.as_ref().ok()?.code())
                    .expect("a permanent refusal has an exit code");
                self.mode = Mode::Refused(Refusal::Exit(code));
                Then::Refuse(code)
            }
            backoff::Next::RetryIn(delay) => {
                let retry_at = Some(now + delay).filter(|_| !delay.is_zero());
                self.mode = Mode::Serving { retry_at };
                Then::RetryIn(delay)
            }
        }
    }

    fn unless_stopping(&mut self, mode: Mode) {
        if !self.stopping() {
            self.mode = mode;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::ExitStatusExt;

    fn exit(code: i32) -> io::Result<ExitStatus> {
        Ok(ExitStatus::from_raw(code << 8))
    }

    const BRIEF: Duration = Duration::from_secs(1);
    const REFUSED: i32 = waiaas_shared::exit::daemon::SCHEMA_TOO_NEW;

    fn refused_service(now: Instant) -> Service {
        let mut s = Service::default();
        assert_eq!(
            s.start_failed(now, Some(&exit(REFUSED))),
            Then::Refuse(REFUSED)
        );
        s
    }

    #[test]
    fn a_crash_restarts_at_once_then_backs_off_until_the_retry_is_due() {
        let now = Instant::now();
        let mut s = Service::default();
        assert_eq!(
            s.crashed(now, BRIEF, &exit(1)),
            Then::RetryIn(Duration::ZERO)
        );
        assert_eq!(s.idle_state(), State::Stopped);
        assert_eq!(
            s.crashed(now, BRIEF, &exit(1)),
            Then::RetryIn(backoff::FIRST)
        );
        assert_eq!(s.idle_state(), State::BackingOff);
        assert!(!s.retry_due(now + backoff::FIRST - Duration::from_millis(1)));
        assert!(s.retry_due(now + backoff::FIRST));
        // The start it waited for clears it.
        s.start();
        assert_eq!(s.mode(), &Mode::Serving { retry_at: None });
        assert_eq!(s.restarts(), 2);
    }

    #[test]
    fn a_daemon_being_stopped_or_started_cancels_the_retry() {
        let now = Instant::now();
        let mut s = Service::default();
        s.start_failed(now, None);
        s.start_failed(now, None);
        assert!(s.retry_at().is_some());
        s.cancel_retry();
        assert_eq!(s.retry_at(), None);
        assert!(s.serving(), "still wanted");
        // A held service has no retry to cancel, and stays held.
        s.hold();
        s.cancel_retry();
        assert_eq!(s.mode(), &Mode::Held);
    }

    #[test]
    fn while_an_upgrade_holds_the_service_a_crash_leaves_it_stopped() {
        let now = Instant::now();
        let mut s = Service::default();
        s.hold();
        assert_eq!(s.crashed(now, BRIEF, &exit(1)), Then::LeaveStopped);
        assert_eq!(s.mode(), &Mode::Held);
        assert_eq!(s.idle_state(), State::Stopped);
        // Unless it would refuse anyway.
        assert_eq!(s.crashed(now, BRIEF, &exit(REFUSED)), Then::Refuse(REFUSED));
        assert_eq!(s.mode(), &Mode::Refused(Refusal::Exit(REFUSED)));
        // The upgrade's end with a daemon running makes it the service's.
        s.hold();
        s.release();
        assert!(s.serving());
    }

    #[test]
    fn a_permanent_exit_refuses_until_an_operators_restart() {
        let now = Instant::now();
        let mut s = refused_service(now);
        assert_eq!(s.idle_state(), State::Refused);
        assert!(!s.serving());
        assert_eq!(s.retry_at(), None);
        // A crash of something else meanwhile does not undo it.
        assert_eq!(s.crashed(now, BRIEF, &exit(1)), Then::LeaveStopped);
        assert_eq!(s.mode(), &Mode::Refused(Refusal::Exit(REFUSED)));
        s.restart();
        assert_eq!(s.mode(), &Mode::Serving { retry_at: None });
        assert_eq!(s.restarts(), 0, "a refusal is not a restart");
    }

    #[test]
    fn an_operators_restart_starts_the_backoffs_count_again() {
        let now = Instant::now();
        let mut s = Service::default();
        for _ in 0..5 {
            s.crashed(now, BRIEF, &exit(1));
        }
        assert_eq!(
            s.crashed(now, BRIEF, &exit(1)),
            Then::RetryIn(backoff::FIRST * 16)
        );
        s.restart();
        assert_eq!(s.retry_at(), None);
        assert_eq!(
            s.crashed(now, BRIEF, &exit(1)),
            Then::RetryIn(Duration::ZERO)
        );
    }

    #[test]
    fn an_unfinished_change_refuses_with_its_message_until_a_start() {
        let mut s = Service::default();
        s.refuse_uncommitted("the upgrade from 1 to 2 is unfinished".into());
        assert_eq!(s.idle_state(), State::Refused);
        assert_eq!(
            s.uncommitted(),
            Some("the upgrade from 1 to 2 is unfinished")
        );
        // Its retry (a recovery) holds the service; the message is gone.
        s.hold();
        assert_eq!(s.uncommitted(), None);
        s.refuse_uncommitted("again".into());
        s.start();
        assert_eq!(s.uncommitted(), None);
        assert!(s.serving());
        // A refused exit is no unfinished change.
        assert_eq!(refused_service(Instant::now()).uncommitted(), None);
    }

    /// `status` names them so, for people and scripts alike.
    #[test]
    fn states_have_the_names_status_shows() {
        let names = [
            (State::Starting, "starting"),
            (State::Running, "running"),
            (State::BackingOff, "backing-off"),
            (State::Refused, "refused"),
            (State::Stopped, "stopped"),
            (State::Stopping, "stopping"),
        ];
        for (state, name) in names {
            assert_eq!(state.name(), name);
        }
    }

    #[test]
    fn stopping_is_final() {
        let now = Instant::now();
        let mut s = Service::default();
        s.start_failed(now, None);
        s.start_failed(now, None);
        s.shutdown();
        assert_eq!(s.retry_at(), None, "no start is due while stopping");
        s.start();
        s.hold();
        s.release();
        s.restart();
        s.refuse_uncommitted("late".into());
        assert_eq!(s.start_failed(now, None), Then::LeaveStopped);
        assert_eq!(s.crashed(now, BRIEF, &exit(1)), Then::LeaveStopped);
        assert_eq!(s.crashed(now, BRIEF, &exit(REFUSED)), Then::LeaveStopped);
        assert_eq!(s.mode(), &Mode::Stopping);
        assert_eq!(s.idle_state(), State::Stopping);
    }
}
