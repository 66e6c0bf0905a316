//! Release packages (SPEC §7): find a release on the registry, download its
//! platform tarball, verify it, and install it as `versions/<v>/` — or refuse
//! and leave `versions/`, `current` and the database exactly as they were.
//!
//! A package is accepted only if **all** of these hold:
//! 1. the tarball's sha512 matches the packument's `dist.integrity` (SRI;
//!    skipped for a tarball given on disk with `--from`);
//! 2. `release.json.minisig` verifies `release.json` against a trusted key
//!    (the built-in release keys plus `[update] trusted_keys`);
//! 3. `release.json` names the version asked for, this machine's target and
//!    this target's platform package;
//! 4. every file `release.json` lists is in the package with that sha256, and
//!    the package holds no other file (besides `package.json`, `release.json`
//!    and `release.json.minisig`);
//! 5. every tar entry is a plain file or folder under `package/`: absolute
//!    paths, `..`, links, devices, fifos and duplicate paths are refused, and
//!    the entry count, entry name length and unpacked size are capped.
//!
//! 2, 3, 5 and the listing of 4 hold before any file of the package is
//! written; each file is then hashed as it is written.
//!
//! The parts, in the order a fetch meets them:
//! - `keys`: the trusted keys, and the signature check (2);
//! - `download`: packuments, `dist.integrity` and the capped, hashed
//!   download (1), reported through [`Downloaded`] for the caller to draw;
//! - `archive`: the two passes over the tarball — the first reads only
//!   `release.json` and its signature and writes nothing, the second writes
//!   only the files the verified `release.json` lists (4, 5);
//! - `manifest`: what `release.json` must say (3), and where each file it
//!   lists is installed;
//! - `install`: the order of the checks, `versions/<v>.partial`, and only
//!   then `versions/<v>`; any failure removes the partial folder and the
//!   download. Also the re-check of an installed version;
//! - `limits` and `error`: the caps and timeouts ([`Limits`]), and every
//!   refusal ([`PackageError`]).
//!
//! This file holds the entry points, which put the parts together: besides
//! installing ([`fetch`], [`install_file`], [`install_folder`]), what the
//! registry lists ([`latest`], [`releases`]: publish times and deprecations,
//! from the full packument) and a release's verified `release.json` without
//! installing it ([`signed_release`]: its rollout).

mod archive;
mod download;
mod error;
#[cfg(test)]
mod fixture;
mod install;
mod keys;
mod limits;
mod manifest;

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use semver::Version;
use waiaas_shared::config::Config;
use waiaas_shared::layout::DataDir;
use waiaas_shared::registry::{self, PackumentError};
use waiaas_shared::release::{CLI_PACKAGE, ReleaseManifest, platform_package, this_target};

pub use download::Downloaded;
pub use error::PackageError;
pub use install::Installed;
pub use keys::{built_in_keys, parse_key_list, trusted_keys};
pub use limits::Limits;
pub use waiaas_shared::registry::Published;

use download::{Form, download_to, get_packument, http_client, sri_sha512};
use error::io_error;
use install::{
    Existing, Leftovers, check_tarball, ensure_versions_dir, existing, install_tarball,
    remove_path, verify_dir,
};
use keys::KeyRing;

/// The version `dist-tags.<channel>` of `@waiaas/cli` names (a prerelease
/// under `latest` is refused, as in the daemon's version check).
pub async fn latest(config: &Config) -> Result<Version, PackageError> {
    let url = source(config)?;
    let insecure = config.update.allow_insecure_registry;
    registry::latest_version(&url, &config.update.channel, insecure)
        .await
        .map_err(PackageError::Latest)
}

/// The registry to fetch releases from, if it is one that may be (see
/// [`registry::check_source`]): decided before any lookup or connection.
fn source(config: &Config) -> Result<String, PackageError> {
    let (url, _) =
        registry::resolve(config.update.registry.as_deref()).ok_or(PackageError::NoRegistry)?;
    registry::check_source(&url, config.update.allow_insecure_registry)?;
    Ok(url)
}

/// Downloads, verifies and installs `version` as `versions/<version>`, with
/// the default [`Limits`]. An existing good `versions/<version>` is reused
/// without a download; a bad one is replaced. `on_bytes` hears how far the
/// download has got (see [`Downloaded`]); it is not called for a reused one.
pub async fn fetch(
    dir: &DataDir,
    config: &Config,
    version: &Version,
    on_bytes: &mut (dyn FnMut(Downloaded) + Send),
) -> Result<Installed, PackageError> {
    fetch_with_limits(dir, config, version, on_bytes, &Limits::default()).await
}

/// [`fetch`] with explicit sizes and timeouts.
pub async fn fetch_with_limits(
    dir: &DataDir,
    config: &Config,
    version: &Version,
    on_bytes: &mut (dyn FnMut(Downloaded) + Send),
    limits: &Limits,
) -> Result<Installed, PackageError> {
    let target = target()?;
    // Refuse before any request if nothing could ever be verified.
    let ring = KeyRing::from_config(config)?;
    if let Existing::Good(installed) = installed(dir, &ring, version, target).await? {
        return Ok(installed);
    }

    let (download, _leftovers) =
        download_platform_package(dir, config, version, target, "download", on_bytes, limits)
            .await?;
    let (dir, version, limits) = (dir.clone(), version.clone(), limits.clone());
    tokio::task::spawn_blocking(move || {
        install_tarball(&dir, &ring, &download, Some(&version), target, &limits)
    })
    .await
    .map_err(|e| PackageError::Internal(format!("the verification task failed: {e}")))?
    // `_leftovers` removes the download on every path out.
}

/// Downloads `version`'s platform package, checks it exactly as [`fetch`]
/// would (integrity, signature, the version and target it names, its
/// listing) but installs nothing, and returns its signed `release.json` —
/// so that the supervisor can read a release's rollout before it upgrades.
/// An installed `versions/<version>` that verifies is read instead; the
/// download (`versions/.<v>.check.tgz`) is removed on every path out.
pub async fn signed_release(
    dir: &DataDir,
    config: &Config,
    version: &Version,
) -> Result<ReleaseManifest, PackageError> {
    let target = target()?;
    let ring = KeyRing::from_config(config)?;
    // Anything but a good installed copy (absent, bad, unreadable) is
    // answered from the registry: this reads, it repairs nothing.
    if let Ok(Existing::Good(installed)) = installed(dir, &ring, version, target).await {
        return Ok(installed.manifest);
    }
    let limits = Limits::default();
    let (download, _leftovers) =
        download_platform_package(dir, config, version, target, "check", &mut |_| {}, &limits)
            .await?;
    let version = version.clone();
    tokio::task::spawn_blocking(move || {
        check_tarball(&ring, &download, Some(&version), target, &limits)
            .map(|checked| checked.manifest)
    })
    .await
    .map_err(|e| PackageError::Internal(format!("the verification task failed: {e}")))?
    // `_leftovers` removes the download on every path out.
}

/// What `versions/<version>` holds ([`existing`]), checked off the async
/// threads: hashing an installed release takes a moment.
async fn installed(
    dir: &DataDir,
    ring: &KeyRing,
    version: &Version,
    target: &'static str,
) -> Result<Existing, PackageError> {
    let (dir, ring, version) = (dir.clone(), ring.clone(), version.clone());
    tokio::task::spawn_blocking(move || existing(&dir, &ring, &version, target))
        .await
        .map_err(|e| PackageError::Internal(format!("the verification task failed: {e}")))?
}

/// Finds `version`'s platform package on the registry and downloads it to
/// `versions/.<version>.<purpose>.tgz`, checked against `dist.integrity`.
/// The [`Leftovers`] returned with its path removes it when dropped.
async fn download_platform_package(
    dir: &DataDir,
    config: &Config,
    version: &Version,
    target: &str,
    purpose: &str,
    on_bytes: &mut (dyn FnMut(Downloaded) + Send),
    limits: &Limits,
) -> Result<(PathBuf, Leftovers), PackageError> {
    let name = version.to_string();
    let registry_url = source(config)?;
    let client = http_client(&registry_url, limits, config.update.allow_insecure_registry)?;
    let cli = get_packument(
        &client,
        &registry_url,
        CLI_PACKAGE,
        Form::Abbreviated,
        limits,
    )
    .await?;
    if !cli.has_version(&name) {
        return Err(PackageError::NoSuchRelease {
            package: CLI_PACKAGE.to_string(),
            version: name,
        });
    }
    let platform_name = platform_package(target);
    let platform = get_packument(
        &client,
        &registry_url,
        &platform_name,
        Form::Abbreviated,
        limits,
    )
    .await?;
    let dist = platform.dist(&name).map_err(|source| match source {
        PackumentError::NoSuchVersion { package, version } => {
            PackageError::NoPlatformPackage { package, version }
        }
        source => PackageError::Packument {
            what: format!("the packument of {platform_name}"),
            source,
        },
    })?;
    let expected = sri_sha512(dist.integrity.as_deref(), &platform_name, &name)?;

    let versions = ensure_versions_dir(dir)?;
    let download = versions.join(format!(".{name}.{purpose}.tgz"));
    remove_path(&download)?;
    let mut leftovers = Leftovers::default();
    leftovers.add(download.clone());

    let actual = download_to(&client, &dist.tarball, &download, limits, on_bytes).await?;
    if !expected.iter().any(|hash| hash[..] == actual[..]) {
        return Err(PackageError::Integrity(
            "the downloaded tarball's sha512 does not match dist.integrity".to_string(),
        ));
    }
    Ok((download, leftovers))
}

/// Every release of [`CLI_PACKAGE`] the registry lists, and the version the
/// channel's dist-tag names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listing {
    /// `dist-tags.<channel>` (a prerelease under `latest` is refused, as in
    /// [`latest`]).
    pub tag: Version,
    /// Oldest version first.
    pub releases: Vec<Published>,
}

impl Listing {
    /// The entry for `version`, if the registry lists it.
    pub fn release(&self, version: &Version) -> Option<&Published> {
        self.releases.iter().find(|r| &r.version == version)
    }
}

/// Every release of [`CLI_PACKAGE`] the registry lists, with its publish
/// time and deprecation, and the channel's dist-tag: the full packument
/// (the abbreviated one has neither), fetched under the rules of [`fetch`].
pub async fn releases(config: &Config) -> Result<Listing, PackageError> {
    let limits = Limits::default();
    let registry_url = source(config)?;
    let client = http_client(
        &registry_url,
        &limits,
        config.update.allow_insecure_registry,
    )?;
    let cli = get_packument(&client, &registry_url, CLI_PACKAGE, Form::Full, &limits).await?;
    let tag = registry::pick_tag_from(&cli.dist_tags, &config.update.channel)
        .map_err(PackageError::Latest)?;
    Ok(Listing {
        tag,
        releases: cli.releases(),
    })
}

/// Installs a release tarball from disk (`upgrade --from FILE`): every check
/// of [`fetch`] except the registry's integrity field. With `expected`, the
/// package must be that version; without, it is the version it names.
pub fn install_file(
    dir: &DataDir,
    config: &Config,
    tarball: &Path,
    expected: Option<&Version>,
) -> Result<Installed, PackageError> {
    install_file_with_limits(dir, config, tarball, expected, &Limits::default())
}

/// [`install_file`] with explicit sizes.
pub fn install_file_with_limits(
    dir: &DataDir,
    config: &Config,
    tarball: &Path,
    expected: Option<&Version>,
    limits: &Limits,
) -> Result<Installed, PackageError> {
    let target = target()?;
    let ring = KeyRing::from_config(config)?;
    let metadata = fs::metadata(tarball).map_err(io_error("read", tarball))?;
    if metadata.len() > limits.tarball_bytes {
        return Err(PackageError::TooLarge {
            cap: limits.tarball_bytes,
        });
    }
    install_tarball(dir, &ring, tarball, expected, target, limits)
}

/// Installs an unpacked release folder (`upgrade --from DIR`, or the npm
/// package beside this launcher): every check of [`install_file`].
pub fn install_folder(
    dir: &DataDir,
    config: &Config,
    folder: &Path,
) -> Result<Installed, PackageError> {
    let target = target()?;
    let ring = KeyRing::from_config(config)?;
    install::install_folder(dir, &ring, folder, target)
}

/// The release this launcher was installed with, when it sits beside it (an
/// npm package: `bin/waiaas-launcher` under a folder with `release.json`) and
/// is newer than the installation's current version — as its `release.json`
/// says; installing it verifies that. Without a `release.json`, a
/// `waiaas-daemon` beside this launcher is the operator's own build of this
/// launcher's version ([`is_local_build`], [`install_local_build`]).
pub fn newer_release_beside(dir: &DataDir) -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    newer_release_at(exe.parent()?, dir)
}

/// [`newer_release_beside`] a launcher in `bin`.
fn newer_release_at(bin: &Path, dir: &DataDir) -> Option<PathBuf> {
    let current = crate::swap::current_version(dir).ok().flatten()?;
    let current = Version::parse(&current).ok()?;
    let folder = [Some(bin), bin.parent()]
        .into_iter()
        .flatten()
        .find(|folder| folder.join(waiaas_shared::release::MANIFEST).is_file());
    let Some(folder) = folder else {
        let beside = waiaas_shared::version::current();
        return (is_local_build(bin) && beside > current).then(|| bin.to_path_buf());
    };
    let bytes = fs::read(folder.join(waiaas_shared::release::MANIFEST)).ok()?;
    let manifest: waiaas_shared::release::ReleaseManifest = serde_json::from_slice(&bytes).ok()?;
    let beside = Version::parse(&manifest.version).ok()?;
    (beside > current).then(|| folder.to_path_buf())
}

/// A folder holding both programs and no `release.json`: the operator's own
/// build (from source), not a release package.
pub fn is_local_build(folder: &Path) -> bool {
    !folder.join(waiaas_shared::release::MANIFEST).exists()
        && waiaas_shared::release::BINARIES
            .iter()
            .all(|name| folder.join(name).is_file())
}

/// Installs the operator's own build ([`is_local_build`]) as `versions/<v>`.
/// There is nothing signed to check, so it is accepted as the operator's
/// binary: both programs must report one version, and their hashes are
/// recorded in `installed.json` (as `init` does for a local build) for a
/// later rollback to check. An existing `versions/<v>` is reused only if it
/// still holds what was recorded.
pub async fn install_local_build(dir: &DataDir, folder: &Path) -> Result<Installed, PackageError> {
    let refused = |reason: String| PackageError::LocalBuild {
        folder: folder.to_path_buf(),
        reason,
    };
    let daemon = crate::daemon_binary::version_of(folder)
        .await
        .map_err(|e| refused(e.to_string()))?;
    let launcher = crate::daemon_binary::launcher_version(&folder.join("waiaas-launcher"))
        .await
        .map_err(|e| refused(e.to_string()))?;
    if launcher != daemon.version {
        return Err(refused(format!(
            "its waiaas-launcher is {launcher}, its waiaas-daemon {}",
            daemon.version
        )));
    }
    let version = Version::parse(&daemon.version).map_err(|e| refused(e.to_string()))?;
    let name = version.to_string();
    let path = dir.version(&name);
    let (folder_owned, dir_owned) = (folder.to_path_buf(), dir.clone());
    let recorded =
        tokio::task::spawn_blocking(move || install_local_files(&dir_owned, &folder_owned, &name))
            .await
            .map_err(|e| PackageError::Internal(format!("the install task failed: {e}")))?
            .map_err(refused)?;
    let manifest = waiaas_shared::release::ReleaseManifest {
        name: platform_package(target()?),
        version: version.to_string(),
        target: target()?.to_string(),
        schema_version: daemon.schema_version,
        min_compatible_schema_version: daemon.min_compatible_schema_version,
        files: recorded,
        rollout_seconds: None,
    };
    Ok(Installed {
        version,
        path,
        manifest,
    })
}

/// Copies the two programs into `versions/<version>.partial`, records them,
/// and renames the folder into place; returns the recorded hashes.
fn install_local_files(
    dir: &DataDir,
    folder: &Path,
    version: &str,
) -> Result<std::collections::BTreeMap<String, String>, String> {
    use waiaas_shared::release::BINARIES;
    let path = dir.version(version);
    let hashes = |at: &Path| -> Result<std::collections::BTreeMap<String, String>, String> {
        BINARIES
            .iter()
            .map(|name| {
                waiaas_shared::fsutil::sha256_file(&at.join(name))
                    .map(|sha| (format!("bin/{name}"), sha))
                    .map_err(|e| format!("{name}: {e}"))
            })
            .collect()
    };
    if path.exists() {
        return match crate::install_record::verify(&path, version) {
            Ok(true) => hashes(&path),
            Ok(false) => Err(format!(
                "{} exists and is not a recorded local build; move it away",
                path.display()
            )),
            Err(problem) => Err(format!("{}: {problem}", path.display())),
        };
    }
    let versions = ensure_versions_dir(dir).map_err(|e| e.to_string())?;
    let partial = versions.join(format!("{version}.partial"));
    remove_path(&partial).map_err(|e| e.to_string())?;
    let mut leftovers = Leftovers::default();
    leftovers.add(partial.clone());
    fs::create_dir(&partial).map_err(|e| format!("{}: {e}", partial.display()))?;
    for name in BINARIES {
        let (from, to) = (folder.join(name), partial.join(name));
        waiaas_shared::fsutil::copy_synced(&from, &to, 0o755)
            .map_err(|e| format!("cannot copy {} to {}: {e}", from.display(), to.display()))?;
    }
    crate::install_record::write(&partial, version, &BINARIES)
        .map_err(|e| format!("cannot record what was installed: {e}"))?;
    let recorded = hashes(&partial)?;
    waiaas_shared::fsutil::fsync_dir(&partial).map_err(|e| e.to_string())?;
    fs::rename(&partial, &path).map_err(|e| format!("{}: {e}", path.display()))?;
    // (`leftovers` names the partial folder, gone by now.)
    waiaas_shared::fsutil::fsync_dir(&versions).map_err(|e| e.to_string())?;
    Ok(recorded)
}

/// Re-checks an installed `versions/<version>`: signature, manifest, the
/// hash of every file, and nothing else in the folder.
pub fn verify_installed(
    dir: &DataDir,
    config: &Config,
    version: &Version,
) -> Result<Installed, PackageError> {
    let target = target()?;
    let ring = KeyRing::from_config(config)?;
    let path = dir.version(&version.to_string());
    match fs::symlink_metadata(&path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(PackageError::NotInstalled {
                version: version.to_string(),
                path,
            });
        }
        Err(e) => return Err(io_error("read", &path)(e)),
        Ok(_) => {}
    }
    verify_dir(&path, &ring, version, target)
}

fn target() -> Result<&'static str, PackageError> {
    this_target().ok_or(PackageError::UnsupportedPlatform {
        os: std::env::consts::OS,
        arch: std::env::consts::ARCH,
    })
}

#[cfg(test)]
mod tests {
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
}
