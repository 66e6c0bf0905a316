//! Staged rollout without a server: a signed `release.json` may carry a
//! rollout duration (`packaging/pack --rollout 48h`); each installation
//! becomes eligible at publish time + f × duration, where f in [0, 1) is a
//! stable hash of its install id and the version. About half of a fleet has
//! a 48 h rollout's release by 24 h, and the same installations are not
//! always first: f depends on the version too.

use std::time::Duration;

use jiff::Timestamp;
use semver::Version;
use sha2::{Digest, Sha256};

/// The first 8 bytes of SHA-256 over a domain-separated string.
pub(super) fn hash64(domain: &str, install_id: &str, version: &Version) -> u64 {
    let digest = Sha256::digest(format!("waiaas-{domain}\0{install_id}\0{version}"));
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    u64::from_be_bytes(first)
}

/// This installation's place in `version`'s rollout, in [0, 1).
pub fn fraction(install_id: &str, version: &Version) -> f64 {
    // 53 bits: every value is exact in an f64, and below 1.
    (hash64("rollout", install_id, version) >> 11) as f64 / (1u64 << 53) as f64
}

/// When an installation at `fraction` gets a release published at
/// `published` and rolled out over `rollout`.
pub fn turn(published: Timestamp, rollout: Duration, fraction: f64) -> Timestamp {
    published
        .checked_add(rollout.mul_f64(fraction.clamp(0.0, 1.0)))
        .unwrap_or(Timestamp::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auto::clock::{Clock, FakeClock};

    #[test]
    fn fractions_spread_evenly_and_half_a_fleet_has_it_by_half_the_rollout() {
        let version = Version::parse("1.9.0").unwrap();
        let ids: Vec<String> = (0..1000).map(|i| format!("{i:032x}")).collect();
        let fractions: Vec<f64> = ids.iter().map(|id| fraction(id, &version)).collect();
        assert!(fractions.iter().all(|f| (0.0..1.0).contains(f)));
        let mut deciles = [0usize; 10];
        for f in &fractions {
            deciles[(f * 10.0) as usize] += 1;
        }
        assert!(
            deciles.iter().all(|&n| (60..=140).contains(&n)),
            "{deciles:?}"
        );

        let published: Timestamp = "2026-12-06T00:00:00Z".parse().unwrap();
        let clock = FakeClock::at(published, jiff::tz::TimeZone::UTC);
        let rollout = Duration::from_secs(48 * 3600);
        let eligible = |clock: &FakeClock| {
            fractions
                .iter()
                .filter(|&&f| turn(published, rollout, f) <= clock.now())
                .count()
        };
        assert!(
            eligible(&clock) <= 5,
            "at publish time: {}",
            eligible(&clock)
        );
        clock.advance(Duration::from_secs(24 * 3600));
        let half = eligible(&clock);
        assert!((400..=600).contains(&half), "by 24 h: {half}");
        clock.advance(Duration::from_secs(24 * 3600));
        assert_eq!(eligible(&clock), 1000, "by 48 h");
        eprintln!("deciles {deciles:?}; eligible by 24 h of 48 h: {half} of 1000");
    }

    #[test]
    fn a_fraction_is_stable_and_differs_by_version() {
        let (a, b) = (
            Version::parse("1.9.0").unwrap(),
            Version::parse("1.9.1").unwrap(),
        );
        assert_eq!(fraction("x", &a), fraction("x", &a));
        assert_ne!(fraction("x", &a), fraction("x", &b));
        assert_ne!(fraction("x", &a), fraction("y", &a));
        let at: Timestamp = "2026-12-06T00:00:00Z".parse().unwrap();
        assert_eq!(
            turn(at, Duration::from_secs(100), 0.5),
            "2026-12-06T00:00:50Z".parse().unwrap()
        );
    }
}
