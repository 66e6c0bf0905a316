//! Which release the policy allows. The registry's publish times and
//! deprecations are unsigned: here they can only hold a release back, never
//! bring one in — what is installed is verified against the release keys.

use std::fmt;
use std::time::Duration;

use jiff::Timestamp;
use semver::Version;
use waiaas_shared::config::AutoLevel;
use waiaas_shared::version::allowed_on_channel;

use super::state::AutoState;

/// A release as the registry lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Release {
    pub version: Version,
    pub published: Option<Timestamp>,
    /// `npm deprecate`'s message.
    pub deprecated: Option<String>,
}

/// Why a newer release was passed over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Skip {
    /// Above the channel's dist-tag.
    AboveTag,
    /// A prerelease on the `latest` channel.
    NotOnChannel,
    /// A new major (for 0.x, a new minor).
    NewMajor,
    /// A new minor under `auto = "patch"`.
    BeyondLevel,
    Deprecated(String),
    Quarantined,
    /// The registry gives no publish time: its soak cannot be judged.
    NoPublishTime,
}

impl fmt::Display for Skip {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Skip::AboveTag => f.write_str("above the channel's dist-tag"),
            Skip::NotOnChannel => f.write_str("a prerelease, not on this channel"),
            Skip::NewMajor => f.write_str("a new major version: never automatic"),
            Skip::BeyondLevel => f.write_str("a new minor version, beyond auto = \"patch\""),
            Skip::Deprecated(message) => write!(f, "deprecated on the registry ({message:?})"),
            Skip::Quarantined => f.write_str("quarantined"),
            Skip::NoPublishTime => f.write_str("the registry gives no publish time"),
        }
    }
}

/// The release to take, and when its soak ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub version: Version,
    pub published: Timestamp,
    /// `published` + `min_release_age`.
    pub ready_at: Timestamp,
}

/// What the policy makes of the newer releases.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Choice {
    pub candidate: Option<Candidate>,
    /// Newest first.
    pub passed_over: Vec<(Version, Skip)>,
}

/// The major line a version belongs to: for 0.x, the minor is the major
/// (semver: anything may break there).
fn line(v: &Version) -> (u64, u64) {
    if v.major == 0 {
        (0, v.minor)
    } else {
        (v.major, u64::MAX)
    }
}

/// Chooses among `releases` for an installation on `current` following
/// `channel`, whose dist-tag names `tag`. The candidate is the newest allowed
/// release whose soak has ended by `now`; if none has yet, the newest
/// allowed one, with its `ready_at` still ahead.
#[allow(clippy::too_many_arguments)]
pub fn choose(
    current: &Version,
    channel: &str,
    tag: &Version,
    releases: &[Release],
    level: AutoLevel,
    min_release_age: Duration,
    state: &AutoState,
    now: Timestamp,
) -> Choice {
    let mut newer: Vec<&Release> = releases.iter().filter(|r| r.version > *current).collect();
    newer.sort_by(|a, b| b.version.cmp(&a.version));
    newer.dedup_by(|a, b| a.version == b.version);
    let mut choice = Choice::default();
    let mut allowed = Vec::new();
    for release in newer {
        let v = &release.version;
        let skip = if v > tag {
            Some(Skip::AboveTag)
        } else if !allowed_on_channel(v, channel) {
            Some(Skip::NotOnChannel)
        } else if level == AutoLevel::Off || line(v) != line(current) {
            Some(Skip::NewMajor)
        } else if level == AutoLevel::Patch && v.minor != current.minor {
            Some(Skip::BeyondLevel)
        } else if let Some(message) = &release.deprecated {
            Some(Skip::Deprecated(message.clone()))
        } else if state.is_quarantined(v) {
            Some(Skip::Quarantined)
        } else if release.published.is_none() {
            Some(Skip::NoPublishTime)
        } else {
            None
        };
        match (skip, release.published) {
            (Some(skip), _) => choice.passed_over.push((v.clone(), skip)),
            (None, Some(published)) => {
                let ready_at = published
                    .checked_add(min_release_age)
                    .unwrap_or(Timestamp::MAX);
                allowed.push(Candidate {
                    version: v.clone(),
                    published,
                    ready_at,
                });
            }
            (None, None) => unreachable!("skipped above"),
        }
    }
    choice.candidate = allowed
        .iter()
        .find(|c| c.ready_at <= now)
        .or(allowed.first())
        .cloned();
    choice
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(text: &str) -> Version {
        Version::parse(text).unwrap()
    }

    fn ts(text: &str) -> Timestamp {
        text.parse().unwrap()
    }

    const NOW: &str = "2026-12-06T12:00:00Z";
    const DAY: Duration = Duration::from_secs(86_400);

    fn release(version: &str, published: &str) -> Release {
        Release {
            version: v(version),
            published: Some(ts(published)),
            deprecated: None,
        }
    }

    fn pick(current: &str, tag: &str, releases: &[Release], level: AutoLevel) -> Choice {
        let state = AutoState::default();
        choose(
            &v(current),
            "latest",
            &v(tag),
            releases,
            level,
            DAY,
            &state,
            ts(NOW),
        )
    }

    #[test]
    fn the_newest_allowed_and_soaked_release_is_taken() {
        let releases = [
            release("1.8.2", "2026-12-01T00:00:00Z"),
            release("1.9.0", "2026-12-02T00:00:00Z"),
            release("1.9.1", "2026-12-03T00:00:00Z"),
            release("1.8.0", "2026-11-01T00:00:00Z"),
        ];
        let c = pick("1.8.1", "1.9.1", &releases, AutoLevel::Minor);
        assert_eq!(c.candidate.unwrap().version, v("1.9.1"));
        let c = pick("1.8.1", "1.9.1", &releases, AutoLevel::Patch);
        assert_eq!(c.candidate.unwrap().version, v("1.8.2"));
        assert!(c.passed_over.contains(&(v("1.9.1"), Skip::BeyondLevel)));
        let c = pick("1.8.1", "1.9.1", &releases, AutoLevel::Off);
        assert_eq!(c.candidate, None);
    }

    #[test]
    fn a_new_major_is_never_crossed_also_on_0_x() {
        let releases = [
            release("2.0.0", "2026-12-01T00:00:00Z"),
            release("1.9.0", "2026-12-01T00:00:00Z"),
        ];
        let c = pick("1.8.1", "2.0.0", &releases, AutoLevel::Minor);
        assert_eq!(c.candidate.unwrap().version, v("1.9.0"));
        assert_eq!(c.passed_over, [(v("2.0.0"), Skip::NewMajor)]);
        // 0.3 → 0.4 is a major step in semver's words.
        let releases = [
            release("0.4.0", "2026-12-01T00:00:00Z"),
            release("0.3.7", "2026-12-01T00:00:00Z"),
        ];
        let c = pick("0.3.1", "0.4.0", &releases, AutoLevel::Minor);
        assert_eq!(c.candidate.unwrap().version, v("0.3.7"));
        assert_eq!(c.passed_over, [(v("0.4.0"), Skip::NewMajor)]);
    }

    #[test]
    fn soak_a_young_release_waits_and_an_older_one_goes_first() {
        // Only a young one: the candidate, ready a day after publishing.
        let young = [release("1.9.0", "2026-12-06T06:00:00Z")];
        let c = pick("1.8.1", "1.9.0", &young, AutoLevel::Minor)
            .candidate
            .unwrap();
        assert_eq!(c.ready_at, ts("2026-12-07T06:00:00Z"));
        assert!(c.ready_at > ts(NOW));
        // A soaked older one with it: the older one now.
        let both = [young[0].clone(), release("1.8.5", "2026-12-01T00:00:00Z")];
        let c = pick("1.8.1", "1.9.0", &both, AutoLevel::Minor)
            .candidate
            .unwrap();
        assert_eq!(c.version, v("1.8.5"));
        assert!(c.ready_at <= ts(NOW));
    }

    #[test]
    fn deprecated_quarantined_prerelease_above_tag_and_undated_are_skipped() {
        let mut deprecated = release("1.9.3", "2026-12-01T00:00:00Z");
        deprecated.deprecated = Some("data loss on import".into());
        let undated = Release {
            version: v("1.9.2"),
            published: None,
            deprecated: None,
        };
        let releases = [
            release("1.9.5", "2026-12-01T00:00:00Z"),
            release("1.9.4-rc.1", "2026-12-01T00:00:00Z"),
            deprecated,
            undated,
            release("1.9.1", "2026-12-01T00:00:00Z"),
            release("1.9.0", "2026-12-01T00:00:00Z"),
        ];
        let mut state = AutoState::default();
        state.quarantine(v("1.9.1"), "rolled back".into(), ts(NOW));
        let c = choose(
            &v("1.8.1"),
            "latest",
            &v("1.9.4"),
            &releases,
            AutoLevel::Minor,
            DAY,
            &state,
            ts(NOW),
        );
        assert_eq!(c.candidate.unwrap().version, v("1.9.0"));
        assert_eq!(
            c.passed_over,
            [
                (v("1.9.5"), Skip::AboveTag),
                (v("1.9.4-rc.1"), Skip::NotOnChannel),
                (v("1.9.3"), Skip::Deprecated("data loss on import".into())),
                (v("1.9.2"), Skip::NoPublishTime),
                (v("1.9.1"), Skip::Quarantined),
            ]
        );
    }
}
