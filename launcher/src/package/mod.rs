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
//! This file holds the entry points, which put the parts together.

mod archive;
mod download;
mod error;
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
use waiaas_shared::release::{CLI_PACKAGE, platform_package, this_target};

pub use download::Downloaded;
pub use error::PackageError;
pub use install::Installed;
pub use keys::{built_in_keys, parse_key_list, trusted_keys};
pub use limits::Limits;

use download::{download_to, get_packument, http_client, sri_sha512};
use error::io_error;
use install::{
    Existing, Leftovers, ensure_versions_dir, existing, install_tarball, remove_path, verify_dir,
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
    let name = version.to_string();
    // Hashing an installed release takes a moment: off the async threads.
    let found = {
        let (dir, ring, version) = (dir.clone(), ring.clone(), version.clone());
        tokio::task::spawn_blocking(move || existing(&dir, &ring, &version, target))
            .await
            .map_err(|e| PackageError::Internal(format!("the verification task failed: {e}")))??
    };
    if let Existing::Good(installed) = found {
        return Ok(installed);
    }

    let registry_url = source(config)?;
    let client = http_client(limits, config.update.allow_insecure_registry)?;
    let cli = get_packument(&client, &registry_url, CLI_PACKAGE, limits).await?;
    if !cli.has_version(&name) {
        return Err(PackageError::NoSuchRelease {
            package: CLI_PACKAGE.to_string(),
            version: name,
        });
    }
    let platform_name = platform_package(target);
    let platform = get_packument(&client, &registry_url, &platform_name, limits).await?;
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
    let download = versions.join(format!(".{name}.download.tgz"));
    remove_path(&download)?;
    let mut leftovers = Leftovers::default();
    leftovers.add(download.clone());

    let actual = download_to(&client, &dist.tarball, &download, limits, on_bytes).await?;
    if !expected.iter().any(|hash| hash[..] == actual[..]) {
        return Err(PackageError::Integrity(
            "the downloaded tarball's sha512 does not match dist.integrity".to_string(),
        ));
    }

    let (dir, version, limits) = (dir.clone(), version.clone(), limits.clone());
    let tarball = download.clone();
    tokio::task::spawn_blocking(move || {
        install_tarball(&dir, &ring, &tarball, Some(&version), target, &limits)
    })
    .await
    .map_err(|e| PackageError::Internal(format!("the verification task failed: {e}")))?
    // `leftovers` removes the download on every path out.
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
/// says; installing it verifies that.
pub fn newer_release_beside(dir: &DataDir) -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let bin = exe.parent()?;
    let folder = [Some(bin), bin.parent()]
        .into_iter()
        .flatten()
        .find(|folder| folder.join(waiaas_shared::release::MANIFEST).is_file())?;
    let bytes = fs::read(folder.join(waiaas_shared::release::MANIFEST)).ok()?;
    let manifest: waiaas_shared::release::ReleaseManifest = serde_json::from_slice(&bytes).ok()?;
    let beside = Version::parse(&manifest.version).ok()?;
    let current = crate::swap::current_version(dir).ok().flatten()?;
    (beside > Version::parse(&current).ok()?).then(|| folder.to_path_buf())
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
