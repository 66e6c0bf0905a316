//! When inside the window an upgrade starts: the first opening at or after
//! `not_before`, plus a random delay below `jitter` — stable for one
//! installation and version, so a restart does not draw again — and never
//! past the opening's end. A fleet with the same window spreads over its
//! first `jitter`.

use std::time::Duration;

use jiff::Timestamp;
use jiff::tz::TimeZone;
use semver::Version;
use waiaas_shared::window::Window;

use super::rollout::hash64;

/// A planned start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Start {
    pub at: Timestamp,
    /// The end of the opening `at` falls in (`None`: `always`).
    pub window_end: Option<Timestamp>,
}

/// The jitter seed of an installation for a version.
pub fn seed(install_id: &str, version: &Version) -> u64 {
    hash64("jitter", install_id, version)
}

/// How many openings are tried before giving up on finding room (a window
/// never shorter than a minute finds it in the first or second).
const OPENINGS: usize = 16;

/// The start for `not_before` (see the module's doc).
pub fn start_at(
    not_before: Timestamp,
    window: &Window,
    zone: &TimeZone,
    jitter: Duration,
    seed: u64,
) -> Start {
    let share = (seed >> 11) as f64 / (1u64 << 53) as f64;
    let mut from = not_before;
    for _ in 0..OPENINGS {
        let opening = window.opening(from, zone);
        let base = opening.start.max(from);
        let room = match opening.end {
            None => jitter,
            Some(end) => match Duration::try_from(base.duration_until(end)) {
                Ok(left) if !left.is_zero() => jitter.min(left),
                // Over already: the next opening.
                _ => {
                    from = end;
                    continue;
                }
            },
        };
        // Strictly inside the opening: `room` itself is never reached.
        let nanos = (room.as_nanos() as f64 * share) as u128;
        let delay = Duration::from_nanos(nanos.min(room.as_nanos().saturating_sub(1)) as u64);
        return Start {
            at: base.checked_add(delay).unwrap_or(Timestamp::MAX),
            window_end: opening.end,
        };
    }
    Start {
        at: from,
        window_end: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(text: &str) -> Timestamp {
        text.parse().unwrap()
    }

    const HALF_HOUR: Duration = Duration::from_secs(1800);

    #[test]
    fn always_starts_at_not_before_plus_the_jitter() {
        let w = Window::always();
        let s = start_at(
            ts("2026-12-06T10:00:00Z"),
            &w,
            &TimeZone::UTC,
            Duration::ZERO,
            42,
        );
        assert_eq!(
            s,
            Start {
                at: ts("2026-12-06T10:00:00Z"),
                window_end: None
            }
        );
        let s = start_at(
            ts("2026-12-06T10:00:00Z"),
            &w,
            &TimeZone::UTC,
            HALF_HOUR,
            u64::MAX,
        );
        assert!(s.at >= ts("2026-12-06T10:00:00Z") && s.at < ts("2026-12-06T10:30:00Z"));
    }

    #[test]
    fn jitter_stays_within_its_bounds_and_the_opening_over_many_seeds() {
        let w = Window::parse("Mon..Fri 02:00-04:00 UTC").unwrap();
        let version = Version::parse("1.9.0").unwrap();
        let mut delays = Vec::new();
        for i in 0..1000 {
            let seed = seed(&format!("{i:032x}"), &version);
            // Saturday: Monday's opening, 02:00 + [0, 30 m).
            let s = start_at(
                ts("2026-12-05T12:00:00Z"),
                &w,
                &TimeZone::UTC,
                HALF_HOUR,
                seed,
            );
            assert_eq!(s.window_end, Some(ts("2026-12-07T04:00:00Z")));
            let delay = ts("2026-12-07T02:00:00Z").duration_until(s.at);
            assert!(
                delay >= jiff::SignedDuration::ZERO && delay < jiff::SignedDuration::from_mins(30),
                "{delay:?}"
            );
            delays.push(delay.as_secs());
            // Inside the opening with 10 minutes left: within those 10.
            let s = start_at(
                ts("2026-12-07T03:50:00Z"),
                &w,
                &TimeZone::UTC,
                HALF_HOUR,
                seed,
            );
            assert!(
                s.at >= ts("2026-12-07T03:50:00Z") && s.at < ts("2026-12-07T04:00:00Z"),
                "{s:?}"
            );
        }
        // Spread, not bunched: both halves of the jitter are used.
        assert!(delays.iter().filter(|&&d| d < 900).count() > 400);
        assert!(delays.iter().filter(|&&d| d >= 900).count() > 400);
        // Stable: the same seed, the same start.
        let s1 = start_at(ts("2026-12-05T12:00:00Z"), &w, &TimeZone::UTC, HALF_HOUR, 7);
        let s2 = start_at(ts("2026-12-05T12:00:00Z"), &w, &TimeZone::UTC, HALF_HOUR, 7);
        assert_eq!(s1, s2);
    }

    #[test]
    fn a_jitter_longer_than_the_opening_is_clamped_to_it() {
        let w = Window::parse("* 02:00-02:10 UTC").unwrap();
        let s = start_at(
            ts("2026-12-06T00:00:00Z"),
            &w,
            &TimeZone::UTC,
            Duration::from_secs(7200),
            u64::MAX,
        );
        assert!(
            s.at >= ts("2026-12-06T02:00:00Z") && s.at < ts("2026-12-06T02:10:00Z"),
            "{s:?}"
        );
        // At its very end: the next day's.
        let s = start_at(
            ts("2026-12-06T02:10:00Z"),
            &w,
            &TimeZone::UTC,
            Duration::ZERO,
            0,
        );
        assert_eq!(s.at, ts("2026-12-07T02:00:00Z"));
    }
}
