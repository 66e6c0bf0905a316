//! Versions: the one the workspace was built as, and how releases compare.

use semver::Version;
use serde::{Deserialize, Serialize};

/// This build's version (one version for the whole workspace).
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// A version read from local state (`upgrade.json`, `backup.json`, a folder
/// or link name) that is not one. Such state is refused, never used as a path.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is not a version")]
pub struct NotAVersion(pub String);

/// Parses a version from local state. Semver has no `/` and no empty
/// identifiers, so `versions/<v>` made from it stays inside `versions/`.
pub fn parse_local(text: &str) -> Result<Version, NotAVersion> {
    Version::parse(text).map_err(|_| NotAVersion(text.to_string()))
}

/// This build's version, parsed.
pub fn current() -> Version {
    Version::parse(VERSION).expect("the workspace version is semver")
}

/// Whether `candidate` is acceptable on `channel`: a prerelease found under
/// `latest` is ignored (an rc must never reach everyone by accident).
pub fn allowed_on_channel(candidate: &Version, channel: &str) -> bool {
    channel != "latest" || candidate.pre.is_empty()
}

/// Whether `latest` is a strictly newer release than `running`, by semver.
pub fn is_newer(latest: &str, running: &str) -> bool {
    match (Version::parse(latest), Version::parse(running)) {
        (Ok(latest), Ok(running)) => latest > running,
        _ => false,
    }
}

/// What `waiaas-daemon --version --json` prints: one JSON object, read by
/// the launcher (is this folder the version it claims?) and by packaging
/// (which schema does this release migrate to?).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DaemonVersion {
    pub version: String,
    /// The schema this build migrates to.
    pub schema_version: u32,
    /// The oldest schema this build still runs on without migrating.
    pub min_compatible_schema_version: u32,
    /// Starts on probation when asked (SPEC §13): it serves a private probe
    /// listener only, and the public one once the launcher hands it over
    /// after the commit. Older daemons omit it and serve the public port
    /// from their start.
    #[serde(default)]
    pub probation: bool,
}

impl DaemonVersion {
    /// Parses the printed line, checking that it is sane: a semver version and
    /// `0 < min_compatible_schema_version <= schema_version`.
    pub fn parse(printed: &str) -> Result<Self, String> {
        let info: Self = serde_json::from_str(printed.trim()).map_err(|e| {
            format!(
                "expected {{\"version\",\"schema_version\",\"min_compatible_schema_version\"}}: {e}"
            )
        })?;
        Version::parse(&info.version).map_err(|e| format!("version is not semver: {e}"))?;
        if info.min_compatible_schema_version > info.schema_version || info.schema_version == 0 {
            return Err("need 0 < min_compatible_schema_version <= schema_version".into());
        }
        Ok(info)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn semver_order_not_text_order() {
        assert!(is_newer("1.10.0", "1.9.0"));
        assert!(!is_newer("1.9.0", "1.10.0"));
        assert!(is_newer("2.0.0", "2.0.0-rc.1"));
        assert!(!is_newer("2.0.0-rc.1", "2.0.0"));
        assert!(!is_newer("garbage", "1.0.0"));
        assert!(!is_newer("1.8.1", "1.8.1"));
    }

    #[test]
    fn prereleases_only_on_prerelease_channels() {
        let rc = Version::parse("1.9.0-rc.1").unwrap();
        let fin = Version::parse("1.9.0").unwrap();
        assert!(!allowed_on_channel(&rc, "latest"));
        assert!(allowed_on_channel(&rc, "rc"));
        assert!(allowed_on_channel(&fin, "latest"));
    }

    #[test]
    fn daemon_version_round_trips_and_rejects_nonsense() {
        let info = DaemonVersion {
            version: "1.9.0".into(),
            schema_version: 17,
            min_compatible_schema_version: 12,
            probation: true,
        };
        let printed = serde_json::to_string(&info).unwrap();
        assert_eq!(DaemonVersion::parse(&printed).unwrap(), info);
        for bad in [
            "",
            "1.9.0",
            r#"{"version":"x","schema_version":17,"min_compatible_schema_version":12}"#,
            r#"{"version":"1.9.0","schema_version":11,"min_compatible_schema_version":12}"#,
            r#"{"version":"1.9.0","schema_version":0,"min_compatible_schema_version":0}"#,
        ] {
            assert!(DaemonVersion::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn local_versions_are_semver_or_refused() {
        assert!(parse_local("1.9.0-rc.1").is_ok());
        for bad in ["../../evil", "1.9.0/..", "", "1.9", "1.9.0-..", "/abs"] {
            assert_eq!(parse_local(bad), Err(NotAVersion(bad.into())), "{bad}");
        }
    }

    #[test]
    fn the_build_version_parses() {
        assert_eq!(current().to_string(), VERSION);
    }
}
