//! What a release is on the registry and on disk (SPEC §7): package names,
//! the platform target, and `release.json`, the signed manifest inside every
//! platform package. `packaging/` writes these; the launcher verifies them.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The package users install; its dist-tags announce releases.
pub const CLI_PACKAGE: &str = "@waiaas/cli";

/// The manifest's file name, inside the package and in `versions/<v>/`.
pub const MANIFEST: &str = "release.json";

/// The manifest's minisign signature.
pub const SIGNATURE: &str = "release.json.minisig";

/// The two programs every platform package carries, under `bin/`.
pub const BINARIES: [&str; 2] = ["waiaas-launcher", "waiaas-daemon"];

/// `release.json`. Unknown fields are tolerated (the file is signed): a later
/// release may add one without locking older launchers out of upgrading to it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReleaseManifest {
    /// The platform package's name, e.g. `@waiaas/cli-linux-x64`.
    pub name: String,
    pub version: String,
    /// `<os>-<arch>` in npm's words, e.g. `linux-x64`.
    pub target: String,
    /// `LATEST_SCHEMA_VERSION` of the daemon inside.
    pub schema_version: u32,
    /// `MIN_COMPATIBLE_SCHEMA_VERSION` of the daemon inside.
    pub min_compatible_schema_version: u32,
    /// SHA-256 (hex) of every other file of the package, by path relative to
    /// the package root (`bin/waiaas-daemon`, …).
    pub files: BTreeMap<String, String>,
    /// Staged rollout (SPEC §13): installations upgrading by themselves take
    /// this release at publish time + f × this many seconds, f being each
    /// installation's stable fraction in [0, 1). Absent: all at once. Signed
    /// with the rest, so a registry cannot shorten it; older launchers ignore it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout_seconds: Option<u64>,
}

/// The platform package for `target`.
pub fn platform_package(target: &str) -> String {
    format!("{CLI_PACKAGE}-{target}")
}

/// This build's target in npm's `<os>-<arch>` words, if it is one we ship.
pub fn this_target() -> Option<&'static str> {
    match (std::env::consts::OS, std::env::consts::ARCH) {
        ("linux", "x86_64") => Some("linux-x64"),
        ("linux", "aarch64") => Some("linux-arm64"),
        ("macos", "aarch64") => Some("darwin-arm64"),
        ("macos", "x86_64") => Some("darwin-x64"),
        _ => None,
    }
}

/// npm's `os` and `cpu` values for a target (`linux-x64` → `linux`, `x64`).
pub fn npm_os_cpu(target: &str) -> Option<(&str, &str)> {
    target.split_once('-')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_spec() {
        assert_eq!(platform_package("linux-x64"), "@waiaas/cli-linux-x64");
        assert_eq!(npm_os_cpu("darwin-arm64"), Some(("darwin", "arm64")));
        assert!(
            this_target().is_some(),
            "the machines we build on are shipped targets"
        );
    }

    #[test]
    fn unknown_fields_from_a_later_release_are_tolerated() {
        let json = r#"{"name":"n","version":"1.0.0","target":"linux-x64","schema_version":1,
            "min_compatible_schema_version":1,"files":{},"extra":1}"#;
        assert_eq!(
            serde_json::from_str::<ReleaseManifest>(json)
                .unwrap()
                .version,
            "1.0.0"
        );
    }

    #[test]
    fn the_rollout_is_optional_and_omitted_when_absent() {
        let base = r#"{"name":"n","version":"1.0.0","target":"linux-x64","schema_version":1,
            "min_compatible_schema_version":1,"files":{}"#;
        let without: ReleaseManifest = serde_json::from_str(&format!("{base}}}")).unwrap();
        assert_eq!(without.rollout_seconds, None);
        assert!(!serde_json::to_string(&without).unwrap().contains("rollout"));
        let with: ReleaseManifest =
            serde_json::from_str(&format!(r#"{base},"rollout_seconds":172800}}"#)).unwrap();
        assert_eq!(with.rollout_seconds, Some(172_800));
        let again: ReleaseManifest =
            serde_json::from_str(&serde_json::to_string(&with).unwrap()).unwrap();
        assert_eq!(again, with);
        for bad in [r#""48h""#, "-1", "1.5"] {
            let json = format!(r#"{base},"rollout_seconds":{bad}}}"#);
            assert!(
                serde_json::from_str::<ReleaseManifest>(&json).is_err(),
                "{bad}"
            );
        }
    }
}
