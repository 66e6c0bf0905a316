//! Versions: the one the workspace was built as, and how releases compare.

use semver::Version;

/// This build's version (one version for the whole workspace).
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

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
    fn the_build_version_parses() {
        assert_eq!(current().to_string(), VERSION);
    }
}
