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
mod tests;
