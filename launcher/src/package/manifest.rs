//! `release.json`: what it must say before anything it lists is trusted, and
//! where each file of the package goes in `versions/<v>/`.

use std::collections::BTreeSet;

use semver::Version;
use waiaas_shared::release::{BINARIES, MANIFEST, ReleaseManifest, SIGNATURE, platform_package};

use super::error::PackageError;

/// npm's own file: hashed (if listed) but never installed.
pub(super) const PACKAGE_JSON: &str = "package.json";
/// The programs' folder inside the package; flattened on install.
const BIN_PREFIX: &str = "bin/";
/// `release.json` and its signature are read into memory: far below this.
pub(super) const MANIFEST_CAP: u64 = 1 << 20;

/// A file's sha256 (hex) against the one `release.json` gives; hex case
/// does not matter.
pub(super) fn compare_hash(path: &str, actual: &str, expected: &str) -> Result<(), PackageError> {
    if actual.eq_ignore_ascii_case(expected) {
        Ok(())
    } else {
        Err(PackageError::Files(format!(
            "{path} has sha256 {actual}, but {MANIFEST} says {expected}"
        )))
    }
}

/// Parses a signature-checked `release.json` and checks what it names: the
/// version `asked` (any, without), this `target` and its package. Returns the
/// version it names, and the manifest.
pub(super) fn check_manifest(
    bytes: &[u8],
    asked: Option<&Version>,
    target: &str,
) -> Result<(Version, ReleaseManifest), PackageError> {
    let manifest: ReleaseManifest =
        serde_json::from_slice(bytes).map_err(|e| PackageError::Manifest(e.to_string()))?;
    let found = Version::parse(&manifest.version).map_err(|_| {
        PackageError::Manifest(format!("version `{}` is not semver", manifest.version))
    })?;
    if let Some(asked) = asked
        && found != *asked
    {
        return Err(PackageError::WrongVersion {
            found: manifest.version,
            asked: asked.to_string(),
        });
    }
    if manifest.target != target {
        return Err(PackageError::WrongTarget {
            found: manifest.target,
            expected: target.to_string(),
        });
    }
    let expected_name = platform_package(target);
    if manifest.name != expected_name {
        return Err(PackageError::WrongName {
            found: manifest.name,
            expected: expected_name,
        });
    }
    for binary in BINARIES {
        let path = format!("{BIN_PREFIX}{binary}");
        if !manifest.files.contains_key(&path) {
            return Err(PackageError::Manifest(format!(
                "it does not list {path}; a release carries both programs"
            )));
        }
    }
    let mut destinations = BTreeSet::new();
    for path in manifest.files.keys() {
        let clean = !path.is_empty()
            && path
                .split('/')
                .all(|part| !part.is_empty() && part != "." && part != "..");
        if !clean || path == MANIFEST || path == SIGNATURE {
            return Err(PackageError::Manifest(format!(
                "it lists `{path}`, which cannot be a file of the package"
            )));
        }
        if let Some(dest) = installed_path(path)
            && !destinations.insert(dest.clone())
        {
            return Err(PackageError::Manifest(format!(
                "two of its files would be installed as {dest}"
            )));
        }
    }
    Ok((found, manifest))
}

/// The sha256 `manifest` gives for the package file `path`, `None` for an
/// unlisted `package.json` (npm's own); any other unlisted file is refused.
pub(super) fn listed_hash<'m>(
    manifest: &'m ReleaseManifest,
    path: &str,
) -> Result<Option<&'m str>, PackageError> {
    match manifest.files.get(path) {
        Some(hash) => Ok(Some(hash)),
        None if path == PACKAGE_JSON => Ok(None),
        None => Err(PackageError::Files(format!(
            "the package holds {path}, which {MANIFEST} does not list"
        ))),
    }
}

/// Refuses unless the package files `found` are exactly those `manifest`
/// lists (`package.json` may be there unlisted).
pub(super) fn check_listing(
    manifest: &ReleaseManifest,
    found: &BTreeSet<String>,
) -> Result<(), PackageError> {
    if let Some(missing) = manifest.files.keys().find(|path| !found.contains(*path)) {
        return Err(PackageError::Files(format!(
            "{MANIFEST} lists {missing}, which is not in the package"
        )));
    }
    for path in found {
        listed_hash(manifest, path)?;
    }
    Ok(())
}

/// Where a package file goes in `versions/<v>/`: `bin/<name>` → `<name>`,
/// other paths unchanged, `package.json` nowhere.
pub(super) fn installed_path(package_path: &str) -> Option<String> {
    if package_path == PACKAGE_JSON {
        return None;
    }
    match package_path.strip_prefix(BIN_PREFIX) {
        Some(name) if !name.contains('/') => Some(name.to_string()),
        _ => Some(package_path.to_string()),
    }
}

/// The mode a package file is installed with: programs run, the rest is read.
pub(super) fn mode_for(package_path: &str) -> u32 {
    if package_path.starts_with(BIN_PREFIX) {
        0o755
    } else {
        0o644
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    #[test]
    fn package_files_map_to_the_version_folder() {
        assert_eq!(
            installed_path("bin/waiaas-daemon").unwrap(),
            "waiaas-daemon"
        );
        assert_eq!(installed_path("release.json").unwrap(), "release.json");
        assert_eq!(installed_path("bin/sub/x").unwrap(), "bin/sub/x");
        assert_eq!(installed_path("package.json"), None);
        assert_eq!(mode_for("bin/waiaas-daemon"), 0o755);
        assert_eq!(mode_for("LICENSE"), 0o644);
    }

    fn manifest(version: &str, target: &str, name: &str, files: &[(&str, &str)]) -> Vec<u8> {
        let files: BTreeMap<String, String> = files
            .iter()
            .map(|(p, h)| (p.to_string(), h.to_string()))
            .collect();
        serde_json::to_vec(&ReleaseManifest {
            name: name.into(),
            version: version.into(),
            target: target.into(),
            schema_version: 16,
            min_compatible_schema_version: 10,
            files,
            rollout_seconds: None,
        })
        .unwrap()
    }

    #[test]
    fn the_package_must_hold_exactly_what_the_manifest_lists() {
        let bytes = manifest(
            "1.9.0",
            "linux-x64",
            "x",
            &[("bin/a", "aa"), ("LICENSE", "bb")],
        );
        let listed: ReleaseManifest = serde_json::from_slice(&bytes).unwrap();
        let found = |paths: &[&str]| paths.iter().map(|p| p.to_string()).collect();
        check_listing(&listed, &found(&["bin/a", "LICENSE", PACKAGE_JSON])).unwrap();
        let missing = check_listing(&listed, &found(&["bin/a"]))
            .unwrap_err()
            .to_string();
        assert!(
            missing.contains("lists LICENSE, which is not in the package"),
            "{missing}"
        );
        let extra = check_listing(&listed, &found(&["bin/a", "LICENSE", "bin/b"]))
            .unwrap_err()
            .to_string();
        assert!(
            extra.contains("holds bin/b, which release.json does not list"),
            "{extra}"
        );
    }

    #[test]
    fn the_manifest_must_name_what_was_asked() {
        let v = Version::parse("1.9.0").unwrap();
        let name = platform_package("linux-x64");
        let bins = [("bin/waiaas-launcher", "aa"), ("bin/waiaas-daemon", "bb")];
        let good = manifest("1.9.0", "linux-x64", &name, &bins);
        assert_eq!(check_manifest(&good, Some(&v), "linux-x64").unwrap().0, v);
        assert_eq!(check_manifest(&good, None, "linux-x64").unwrap().0, v);

        let cases = [
            (
                manifest("1.9.1", "linux-x64", &name, &bins),
                "release.json names version 1.9.1, but 1.9.0 was asked for",
            ),
            (
                manifest("1.9.0", "linux-arm64", &name, &bins),
                "release.json names target linux-arm64, but this machine is linux-x64",
            ),
            (
                manifest("1.9.0", "linux-x64", "@waiaas/cli", &bins),
                "release.json names package @waiaas/cli",
            ),
            (
                manifest("1.9.0", "linux-x64", &name, &bins[..1]),
                "does not list bin/waiaas-daemon",
            ),
            (
                manifest(
                    "1.9.0",
                    "linux-x64",
                    &name,
                    &[bins[0], bins[1], ("bin/../x", "cc")],
                ),
                "cannot be a file of the package",
            ),
            (
                manifest(
                    "1.9.0",
                    "linux-x64",
                    &name,
                    &[bins[0], bins[1], ("waiaas-daemon", "cc")],
                ),
                "two of its files would be installed as waiaas-daemon",
            ),
            (
                manifest(
                    "1.9.0",
                    "linux-x64",
                    &name,
                    &[bins[0], bins[1], (MANIFEST, "cc")],
                ),
                "it lists `release.json`, which cannot be a file of the package",
            ),
            (
                manifest(
                    "1.9.0",
                    "linux-x64",
                    &name,
                    &[bins[0], bins[1], (SIGNATURE, "cc")],
                ),
                "it lists `release.json.minisig`, which cannot be a file of the package",
            ),
            (b"{\"name\":1}".to_vec(), "not a valid release manifest"),
        ];
        for (bytes, expected) in cases {
            let msg = check_manifest(&bytes, Some(&v), "linux-x64")
                .unwrap_err()
                .to_string();
            assert!(msg.contains(expected), "{msg}");
        }
    }
}
