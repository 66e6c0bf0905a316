//! Busy: the daemon counts the client writes it commits; the planner samples
//! the count every [`SAMPLE_EVERY`] near and past a due start, and defers
//! while the rate over the last samples is above `busy_write_rate`. Writes
//! are what an upgrade's downtime costs most (a write waits in the backlog,
//! and the live backup's WAL grows with them); reads only wait the window.
//!
//! Here: the samples and the rate they give. The deferral itself (until the
//! window ends, or [`super::plan::BUSY_LIMIT`]) is the planner's.

use std::collections::VecDeque;
use std::time::Duration;

use jiff::{SignedDuration, Timestamp};

/// Pause between two samples of the daemon's write count.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(5);
/// A rate needs samples this far apart at least.
const RATE_SPAN: Duration = Duration::from_millis(4500);
/// Samples kept: enough for one rate over [`RATE_SPAN`] at [`SAMPLE_EVERY`].
const KEPT: usize = 4;

/// The daemon's write counts, a few samples back, and the next one due.
#[derive(Debug, Clone)]
pub struct WriteRate {
    /// Oldest first.
    samples: VecDeque<(Timestamp, u64)>,
    next_sample: Option<Timestamp>,
    /// The daemon counts its writes (older daemons do not).
    measurable: bool,
}

impl Default for WriteRate {
    fn default() -> Self {
        Self {
            samples: VecDeque::new(),
            next_sample: None,
            measurable: true,
        }
    }
}

impl WriteRate {
    /// Whether the daemon's writes can be measured at all.
    pub fn measurable(&self) -> bool {
        self.measurable
    }

    /// When the next sample is due, while sampling.
    pub fn next_sample(&self) -> Option<Timestamp> {
        self.next_sample
    }

    /// Whether a sample is to be asked for at `now` (then the next is due
    /// [`SAMPLE_EVERY`] later).
    pub fn sample_due(&mut self, now: Timestamp) -> bool {
        match self.next_sample {
            Some(at) if now < at => false,
            _ => {
                self.next_sample = Some(now.checked_add(SAMPLE_EVERY).unwrap_or(Timestamp::MAX));
                true
            }
        }
    }

    /// No sampling until asked again.
    pub fn pause(&mut self) {
        self.next_sample = None;
    }

    /// The start happened: what was sampled is for no other.
    pub fn reset(&mut self) {
        self.samples.clear();
        self.next_sample = None;
    }

    /// The daemon's write count at `now`; `None` from a daemon too old to
    /// count its writes, which is then never taken for busy.
    pub fn sampled(&mut self, now: Timestamp, writes: Option<u64>) {
        let Some(writes) = writes else {
            self.measurable = false;
            return;
        };
        if self.samples.back().is_some_and(|&(_, w)| writes < w) {
            self.samples.clear();
        }
        self.samples.push_back((now, writes));
        while self.samples.len() > KEPT {
            self.samples.pop_front();
        }
    }

    /// Writes per second between the newest sample and the oldest at least
    /// [`RATE_SPAN`] before it, if the newest is fresh.
    pub fn rate(&self, now: Timestamp) -> Option<f64> {
        let &(newest_at, newest) = self.samples.back()?;
        if now.duration_since(newest_at) > SignedDuration::try_from(SAMPLE_EVERY * 2).ok()? {
            return None;
        }
        let &(oldest_at, oldest) = self.samples.iter().rev().find(|(at, _)| {
            newest_at.duration_since(*at).as_secs_f64() >= RATE_SPAN.as_secs_f64()
        })?;
        let secs = newest_at.duration_since(oldest_at).as_secs_f64();
        // A restarted daemon counts from 0 again: no rate across it.
        (newest >= oldest).then(|| (newest - oldest) as f64 / secs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + secs).unwrap()
    }

    #[test]
    fn the_rate_spans_at_least_four_and_a_half_seconds_and_needs_a_fresh_sample() {
        let mut r = WriteRate::default();
        r.sampled(at(0), Some(100));
        assert_eq!(r.rate(at(0)), None, "one sample is no rate");
        r.sampled(at(4), Some(140));
        assert_eq!(r.rate(at(4)), None, "4 s apart is too short");
        r.sampled(at(5), Some(150));
        assert_eq!(r.rate(at(5)), Some(10.0));
        assert_eq!(r.rate(at(15)), Some(10.0), "10 s old is still fresh");
        assert_eq!(r.rate(at(16)), None, "older is stale");
    }

    #[test]
    fn a_restarted_daemon_counts_from_zero_and_gives_no_rate_across_it() {
        let mut r = WriteRate::default();
        r.sampled(at(0), Some(1_000));
        r.sampled(at(5), Some(3));
        assert_eq!(r.rate(at(5)), None);
        r.sampled(at(10), Some(53));
        assert_eq!(r.rate(at(10)), Some(10.0));
    }

    #[test]
    fn only_the_last_samples_count() {
        let mut r = WriteRate::default();
        r.sampled(at(0), Some(0));
        for i in 1..=4 {
            r.sampled(at(5 * i), Some(1_000 + 10 * i as u64));
        }
        // The first sample (and its burst) is gone: 10 writes per 5 s.
        assert_eq!(r.rate(at(20)), Some(2.0));
    }

    #[test]
    fn a_daemon_that_does_not_count_is_never_measured() {
        let mut r = WriteRate::default();
        assert!(r.measurable());
        r.sampled(at(0), None);
        assert!(!r.measurable());
        assert_eq!(r.rate(at(0)), None);
    }

    #[test]
    fn samples_are_asked_for_every_five_seconds_until_paused() {
        let mut r = WriteRate::default();
        assert!(r.sample_due(at(0)));
        assert!(!r.sample_due(at(4)));
        assert_eq!(r.next_sample(), Some(at(5)));
        assert!(r.sample_due(at(5)));
        r.pause();
        assert_eq!(r.next_sample(), None);
        assert!(r.sample_due(at(6)));
        r.sampled(at(6), Some(1));
        r.reset();
        assert_eq!((r.next_sample(), r.rate(at(6))), (None, None));
    }
}
