//! The package's unit tests: fetch, verify, install and reuse, against a
//! throwaway key and a registry on 127.0.0.1 ([`super::fixture`]).

use std::sync::mpsc::Receiver;

use base64::Engine as _;
use sha2::Digest as _;

use super::fixture::{Site, answer, length, ok, package_tarball, serve, site, target};
use super::*;

/// `site`'s config pointed at a registry that lists `listed` releases of
/// `@waiaas/cli` (the dist-tag names the last) and serves `tarball` as
/// the platform package of 1.9.0, whose integrity is that of `promised`.
fn registry(
    site: &mut Site,
    listed: &[&str],
    tarball: Vec<u8>,
    promised: &[u8],
) -> Receiver<String> {
    let versions: serde_json::Map<_, _> = listed
        .iter()
        .map(|v| (v.to_string(), serde_json::json!({ "version": v })))
        .collect();
    let cli = serde_json::json!({
        "name": CLI_PACKAGE,
        "dist-tags": { "latest": listed.last() },
        "versions": versions,
    });
    let integrity = format!(
        "sha512-{}",
        base64::engine::general_purpose::STANDARD.encode(sha2::Sha512::digest(promised))
    );
    let platform = platform_package(target());
    let (url, requests) = serve(|url| {
        let packument = serde_json::json!({
            "name": platform,
            "versions": { "1.9.0": { "dist": {
                "tarball": format!("{url}/platform.tgz"),
                "integrity": integrity,
            } } },
        });
        vec![
            (
                format!("/{}", CLI_PACKAGE.replace('/', "%2f")),
                ok(cli.to_string().as_bytes()),
            ),
            (
                format!("/{}", platform.replace('/', "%2f")),
                ok(packument.to_string().as_bytes()),
            ),
            ("/platform.tgz".into(), ok(&tarball)),
            (
                format!("/-/package/{}/dist-tags", CLI_PACKAGE.replace('/', "%2f")),
                ok(cli["dist-tags"].to_string().as_bytes()),
            ),
        ]
    });
    site.config.update.registry = Some(url);
    requests
}

fn leftovers(site: &Site) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(site.dir.versions())
        .map(|entries| {
            entries
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

#[tokio::test]
async fn a_release_is_fetched_verified_and_installed_then_reused() {
    let mut site = site();
    let tarball = package_tarball(&site);
    let requests = registry(&mut site, &["1.8.1", "1.9.0"], tarball.clone(), &tarball);
    let mut heard = 0;
    let installed = fetch(&site.dir, &site.config, &site.version, &mut |_| heard += 1)
        .await
        .unwrap();
    assert_eq!(installed.path, site.dir.version("1.9.0"));
    assert!(installed.path.join("waiaas-daemon").is_file());
    assert!(heard > 0, "the download was reported");
    assert_eq!(leftovers(&site), ["1.9.0"], "the download is removed");
    let asked: Vec<String> = requests.try_iter().collect();
    assert_eq!(asked.len(), 3, "{asked:?}");
    assert!(
        asked[0].contains("application/vnd.npm.install-v1+json"),
        "{}",
        asked[0]
    );
    // Installed and good: reused, nothing asked.
    let again = fetch(&site.dir, &site.config, &site.version, &mut |_| {})
        .await
        .unwrap();
    assert_eq!(again, installed);
    assert_eq!(requests.try_iter().count(), 0);
    // Its signed release.json, read from what is installed.
    let manifest = signed_release(&site.dir, &site.config, &site.version)
        .await
        .unwrap();
    assert_eq!(manifest, installed.manifest);
    assert_eq!(requests.try_iter().count(), 0);
    assert_eq!(
        verify_installed(&site.dir, &site.config, &site.version).unwrap(),
        installed
    );
}

#[tokio::test]
async fn a_release_is_checked_from_the_registry_without_installing_it() {
    let mut site = site();
    let tarball = package_tarball(&site);
    registry(&mut site, &["1.9.0"], tarball.clone(), &tarball);
    let manifest = signed_release(&site.dir, &site.config, &site.version)
        .await
        .unwrap();
    assert_eq!(manifest.version, "1.9.0");
    assert_eq!(leftovers(&site), Vec::<String>::new(), "nothing kept");
    let missing = verify_installed(&site.dir, &site.config, &site.version);
    assert!(
        matches!(missing, Err(PackageError::NotInstalled { .. })),
        "{missing:?}"
    );
    // A versions/ that cannot be looked into is an error, not "not installed".
    let _ = fs::remove_dir_all(site.dir.versions());
    fs::create_dir_all(site.dir.root()).unwrap();
    fs::write(site.dir.versions(), "a file").unwrap();
    let unreadable = verify_installed(&site.dir, &site.config, &site.version);
    assert!(
        matches!(unreadable, Err(PackageError::Io { .. })),
        "{unreadable:?}"
    );
}

#[tokio::test]
async fn a_tarball_that_is_not_the_one_promised_is_refused_and_removed() {
    let mut site = site();
    let tarball = package_tarball(&site);
    registry(&mut site, &["1.9.0"], tarball, b"another tarball");
    let refused = fetch(&site.dir, &site.config, &site.version, &mut |_| {}).await;
    assert!(
        matches!(refused, Err(PackageError::Integrity(_))),
        "{refused:?}"
    );
    assert_eq!(leftovers(&site), Vec::<String>::new());
}

#[tokio::test]
async fn a_release_the_registry_does_not_list_is_named() {
    let mut site = site();
    let tarball = package_tarball(&site);
    registry(&mut site, &["1.8.1"], tarball.clone(), &tarball);
    let refused = fetch(&site.dir, &site.config, &site.version, &mut |_| {}).await;
    assert!(
        matches!(refused, Err(PackageError::NoSuchRelease { .. })),
        "{refused:?}"
    );
    // Listed by @waiaas/cli, but with no platform package.
    let mut site = self::site();
    registry(&mut site, &["1.9.0", "2.0.0"], tarball.clone(), &tarball);
    let v2 = Version::parse("2.0.0").unwrap();
    let refused = fetch(&site.dir, &site.config, &v2, &mut |_| {}).await;
    assert!(
        matches!(refused, Err(PackageError::NoPlatformPackage { .. })),
        "{refused:?}"
    );
}

#[tokio::test]
async fn the_releases_and_the_channel_s_tag_are_listed() {
    let mut site = site();
    registry(&mut site, &["1.8.1", "1.9.0"], Vec::new(), b"");
    let listing = releases(&site.config).await.unwrap();
    assert_eq!(listing.tag, site.version);
    let versions: Vec<String> = listing
        .releases
        .iter()
        .map(|r| r.version.to_string())
        .collect();
    assert_eq!(versions, ["1.8.1", "1.9.0"]);
    assert_eq!(listing.release(&site.version), listing.releases.get(1));
    assert_eq!(listing.release(&Version::parse("1.8.0").unwrap()), None);
    assert_eq!(latest(&site.config).await.unwrap(), site.version);
}

#[test]
fn a_release_file_over_its_cap_is_refused_before_it_is_read() {
    let site = site();
    let tarball = package_tarball(&site);
    let path = site.tmp.path().join("release.tgz");
    fs::write(&path, &tarball).unwrap();
    let cap = |tarball_bytes| Limits {
        tarball_bytes,
        ..Limits::default()
    };
    let len = tarball.len() as u64;
    let refused = install_file_with_limits(&site.dir, &site.config, &path, None, &cap(len - 1));
    assert!(
        matches!(refused, Err(PackageError::TooLarge { cap }) if cap == len - 1),
        "{refused:?}"
    );
    let installed =
        install_file_with_limits(&site.dir, &site.config, &path, None, &cap(len)).unwrap();
    assert_eq!(installed.version, site.version);
}

/// `dir` with `current` at `version` (a folder with a daemon file).
fn current_at(dir: &DataDir, version: &str) {
    fs::create_dir_all(dir.version(version)).unwrap();
    fs::write(dir.version(version).join("waiaas-daemon"), "").unwrap();
    crate::swap::point_current(dir, version).unwrap();
}

/// A release package beside the launcher (`release.json` in its folder
/// or the one above, as npm installs it) is offered when it is newer
/// than `current`; the operator's own build (both programs, no
/// `release.json`) when this build is newer.
#[test]
fn a_newer_release_beside_the_launcher_is_found_in_either_layout() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = DataDir::new(tmp.path().join("data"));
    let package = tmp.path().join("package");
    let bin = package.join("bin");
    fs::create_dir_all(&bin).unwrap();
    assert_eq!(newer_release_at(&bin, &dir), None, "no current");
    assert_eq!(newer_release_beside(&dir), None, "no current");
    let manifest = |at: &Path, version: &str| {
        let json = serde_json::json!({
            "name": "x", "version": version, "target": "x", "schema_version": 1,
            "min_compatible_schema_version": 1, "files": {},
        });
        fs::write(at.join(waiaas_shared::release::MANIFEST), json.to_string()).unwrap();
    };
    current_at(&dir, "1.9.0");
    for (at, found) in [(&package, &package), (&bin, &bin)] {
        for (version, newer) in [("1.10.0", true), ("1.9.0", false), ("1.8.0", false)] {
            manifest(at, version);
            let expected = newer.then(|| found.to_path_buf());
            assert_eq!(
                newer_release_at(&bin, &dir),
                expected,
                "{version} in {at:?}"
            );
        }
        fs::remove_file(at.join(waiaas_shared::release::MANIFEST)).unwrap();
    }
    // A local build is this build's version.
    assert!(!is_local_build(&bin));
    for name in waiaas_shared::release::BINARIES {
        fs::write(bin.join(name), "").unwrap();
    }
    assert!(is_local_build(&bin));
    let this = waiaas_shared::version::current();
    let older = Version::new(this.major, this.minor, this.patch.saturating_sub(1));
    let mut newer = this.clone();
    newer.patch += 1;
    for (current, offered) in [(older, true), (this, false), (newer, false)] {
        if current.patch == 0 && offered {
            continue;
        }
        current_at(&dir, &current.to_string());
        let expected = offered.then(|| bin.clone());
        assert_eq!(newer_release_at(&bin, &dir), expected, "current {current}");
    }
    manifest(&bin, "1.0.0");
    assert!(!is_local_build(&bin), "a release.json: a package");
    fs::remove_file(bin.join(waiaas_shared::release::MANIFEST)).unwrap();
    fs::remove_file(bin.join("waiaas-daemon")).unwrap();
    assert!(!is_local_build(&bin), "one program only");
}

/// The operator's own build: two programs (here scripts saying their
/// versions, as the real ones do) and no `release.json`.
fn local_build(folder: &Path, daemon: &str, launcher: &str) {
    use std::os::unix::fs::PermissionsExt;
    fs::create_dir_all(folder).unwrap();
    let json = format!(
        r#"{{"version":"{daemon}","schema_version":16,"min_compatible_schema_version":10}}"#
    );
    for (name, says) in [
        ("waiaas-daemon", json),
        ("waiaas-launcher", format!("waiaas-launcher {launcher}")),
    ] {
        let path = folder.join(name);
        fs::write(&path, format!("#!/bin/sh\necho '{says}'\n")).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
    }
}

#[tokio::test]
async fn a_local_build_is_installed_recorded_and_reused() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = DataDir::new(tmp.path().join("data"));
    let build = tmp.path().join("build");
    local_build(&build, "1.9.0", "1.9.0");
    let installed = install_local_build(&dir, &build).await.unwrap();
    assert_eq!(installed.path, dir.version("1.9.0"));
    assert_eq!(installed.manifest.schema_version, 16);
    assert_eq!(
        installed.manifest.files.keys().collect::<Vec<_>>(),
        ["bin/waiaas-daemon", "bin/waiaas-launcher"]
    );
    assert!(crate::install_record::verify(&installed.path, "1.9.0").unwrap());
    assert!(!dir.versions().join("1.9.0.partial").exists());
    // Installed and recorded: reused.
    assert_eq!(install_local_build(&dir, &build).await.unwrap(), installed);
    // Programs of two versions are not one build.
    local_build(&build, "1.9.0", "1.9.1");
    let refused = install_local_build(&dir, &build)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        refused.contains("its waiaas-launcher is 1.9.1"),
        "{refused}"
    );
    // A folder of that version that is not a recorded build is left alone.
    local_build(&build, "1.9.2", "1.9.2");
    fs::create_dir_all(dir.version("1.9.2")).unwrap();
    let refused = install_local_build(&dir, &build)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        refused.contains("is not a recorded local build"),
        "{refused}"
    );
}

#[test]
fn a_registry_that_is_not_allowed_is_refused_before_any_request() {
    let mut site = site();
    let (url, requests) = serve(|_| vec![("*".into(), answer("200 OK", &length(b""), b""))]);
    // Plain http:// is for loopback only: another host is refused.
    site.config.update.registry = Some(url.replace("127.0.0.1", "example.invalid"));
    assert!(source(&site.config).is_err());
    site.config.update.registry = Some(url.clone());
    assert_eq!(source(&site.config).unwrap(), url);
    assert_eq!(requests.try_iter().count(), 0);
}
