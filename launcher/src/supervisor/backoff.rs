//! The restart policy, apart from the processes it restarts (README, "The
//! launcher"): a crashed daemon is restarted at once — clients already wait
//! in the backlog —; a second failure within [`STABLE_AFTER`] of stable
//! running waits [`FIRST`], doubling per failure up to [`CAP`]; a daemon that
//! ran [`STABLE_AFTER`] before it crashed starts the count again, as does an
//! operator's restart; a permanent refusal (exit 20–24) is never retried.

use std::io;
use std::process::ExitStatus;
use std::time::Duration;

use waiaas_shared::exit;

/// The delay before the second start within the stability window.
pub const FIRST: Duration = Duration::from_millis(100);
/// The longest delay between two starts.
pub const CAP: Duration = Duration::from_secs(30);
/// A daemon that ran this long before crashing resets the backoff.
pub const STABLE_AFTER: Duration = Duration::from_secs(60);

/// What to do about a daemon that did not come back or ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Start it again after this delay (zero: at once).
    RetryIn(Duration),
    /// Never again by itself: it would fail the same way.
    Refuse,
}

/// Failures in a row and restarts so far.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Backoff {
    failures: u32,
    restarts: u32,
}

impl Backoff {
    /// A daemon that ran `ran_for` ended on its own: long enough, and the
    /// count starts again.
    pub fn ran(&mut self, ran_for: Duration) {
        if ran_for >= STABLE_AFTER {
            self.failures = 0;
        }
    }

    /// A start that did not reach ready, or a daemon that ended on its own
    /// (after [`Backoff::ran`]), with its exit status if it has one: how it
    /// goes on.
    pub fn failed(&mut self, status: Option<&io::Result<ExitStatus>>) -> Next {
        if status.is_some_and(is_permanent) {
            return Next::Refuse;
        }
        let n = self.failures;
        self.failures = n.saturating_add(1);
        self.restarts = self.restarts.saturating_add(1);
        Next::RetryIn(match n {
            0 => Duration::ZERO,
            n => FIRST.saturating_mul(1 << (n - 1).min(16)).min(CAP),
        })
    }

    /// An operator's restart: the count starts again.
    pub fn reset(&mut self) {
        self.failures = 0;
    }

    /// Restarts after a failure, for `status`.
    pub fn restarts(&self) -> u32 {
        self.restarts
    }
}

/// Whether the daemon exited with a permanent refusal: starting it again
/// would fail the same way.
pub fn is_permanent(status: &io::Result<ExitStatus>) -> bool {
    matches!(status, Ok(s) if s.code().is_some_and(exit::daemon::is_permanent))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::ExitStatusExt;

    fn exit(code: i32) -> io::Result<ExitStatus> {
        Ok(ExitStatus::from_raw(code << 8))
    }

    fn killed(signal: i32) -> io::Result<ExitStatus> {
        Ok(ExitStatus::from_raw(signal))
    }

    const BRIEF: Duration = Duration::from_secs(1);

    /// A daemon that ran `ran_for`, then exited with `status`.
    fn crash(b: &mut Backoff, status: io::Result<ExitStatus>, ran_for: Duration) -> Next {
        b.ran(ran_for);
        b.failed(Some(&status))
    }

    #[test]
    fn a_crash_restarts_at_once_then_waits_doubling_up_to_the_cap() {
        let mut b = Backoff::default();
        let delays: Vec<Next> = (0..12).map(|_| crash(&mut b, exit(1), BRIEF)).collect();
        let ms = |ms| Next::RetryIn(Duration::from_millis(ms));
        assert_eq!(
            delays,
            [
                ms(0),
                ms(100),
                ms(200),
                ms(400),
                ms(800),
                ms(1600),
                ms(3200),
                ms(6400),
                ms(12_800),
                ms(25_600),
                ms(30_000),
                ms(30_000)
            ]
        );
        assert_eq!(b.restarts(), 12);
        // Never past the cap, however long it goes on.
        for _ in 0..100 {
            assert_eq!(crash(&mut b, killed(9), BRIEF), Next::RetryIn(CAP));
        }
    }

    #[test]
    fn a_failed_start_counts_like_a_crash() {
        let mut b = Backoff::default();
        assert_eq!(b.failed(None), Next::RetryIn(Duration::ZERO));
        assert_eq!(b.failed(Some(&killed(9))), Next::RetryIn(FIRST));
    }

    #[test]
    fn stable_running_or_an_operators_restart_starts_the_count_again() {
        let mut b = Backoff::default();
        for _ in 0..5 {
            crash(&mut b, exit(1), BRIEF);
        }
        let just_short = STABLE_AFTER - Duration::from_millis(1);
        assert_eq!(
            crash(&mut b, exit(1), just_short),
            Next::RetryIn(FIRST * 16)
        );
        assert_eq!(
            crash(&mut b, exit(1), STABLE_AFTER),
            Next::RetryIn(Duration::ZERO)
        );
        crash(&mut b, exit(1), BRIEF);
        b.reset();
        assert_eq!(crash(&mut b, exit(1), BRIEF), Next::RetryIn(Duration::ZERO));
        assert_eq!(b.restarts(), 9, "restarts are never reset");
    }

    #[test]
    fn a_permanent_refusal_is_never_retried_and_not_counted() {
        let mut b = Backoff::default();
        for code in 20..=24 {
            assert_eq!(
                crash(&mut b, exit(code), BRIEF),
                Next::Refuse,
                "exit {code}"
            );
            assert_eq!(b.failed(Some(&exit(code))), Next::Refuse, "exit {code}");
        }
        assert_eq!(b.restarts(), 0);
        assert_eq!(crash(&mut b, exit(1), BRIEF), Next::RetryIn(Duration::ZERO));
        for code in [0, 1, 2, 19, 25] {
            assert!(!is_permanent(&exit(code)), "exit {code}");
        }
        assert!(!is_permanent(&Err(io::Error::other("wait failed"))));
    }
}
