//! [`PackageError`]: every way a release is refused.

use std::io;
use std::path::{Path, PathBuf};

use waiaas_shared::registry::{self, CheckError, PackumentError};

use super::limits::human;

/// Why a release was not installed. Each message names the check that failed
/// and is written for the operator reading it.
#[derive(Debug, thiserror::Error)]
pub enum PackageError {
    #[error("this platform ({os}-{arch}) has no WAIaaS release packages")]
    UnsupportedPlatform {
        os: &'static str,
        arch: &'static str,
    },
    #[error("no package registry is configured: {}", registry::HOW_TO_CONFIGURE)]
    NoRegistry,
    #[error(transparent)]
    InsecureRegistry(#[from] registry::InsecureSource),
    #[error("cannot learn the latest version from the registry: {0}")]
    Latest(#[source] CheckError),
    #[error("registry request for {what} failed: {reason}")]
    Request { what: String, reason: String },
    #[error("the registry answered HTTP {status} for {what} ({url})")]
    Status {
        what: String,
        url: String,
        status: u16,
    },
    #[error("the registry's answer for {what} is larger than the {} cap", human(*cap))]
    PackumentTooLarge { what: String, cap: u64 },
    #[error("the registry's answer for {what} is unusable: {source}")]
    Packument {
        what: String,
        #[source]
        source: PackumentError,
    },
    #[error("WAIaaS {version} is not on the registry ({package} has no version {version})")]
    NoSuchRelease { package: String, version: String },
    #[error(
        "WAIaaS {version} has no package for this platform ({package} has no version {version} on the registry)"
    )]
    NoPlatformPackage { package: String, version: String },
    #[error("downloading {url} failed: {reason}")]
    Download { url: String, reason: String },
    #[error("the download is larger than the {} cap", human(*cap))]
    TooLarge { cap: u64 },
    #[error("integrity check failed: {0}")]
    Integrity(String),
    #[error(
        "no trusted release key: this launcher was built without release keys and `trusted_keys` \
         in the [update] section of config.toml is empty; add the minisign public key the releases \
         are signed with there (trusted_keys = [\"RW...\"]) or in WAIAAS_UPDATE_TRUSTED_KEYS"
    )]
    NoTrustedKey,
    #[error("trusted key {which} is not a minisign public key: {reason}")]
    BadTrustedKey { which: String, reason: String },
    #[error("signature check failed: {0}")]
    Signature(String),
    #[error("{place} has no release.json, so it cannot be verified")]
    NoManifest { place: String },
    #[error("{folder} (a build without release.json) cannot be installed: {reason}")]
    LocalBuild { folder: PathBuf, reason: String },
    #[error("release.json is not a valid release manifest: {0}")]
    Manifest(String),
    #[error("release.json names version {found}, but {asked} was asked for")]
    WrongVersion { found: String, asked: String },
    #[error("release.json names target {found}, but this machine is {expected}")]
    WrongTarget { found: String, expected: String },
    #[error("release.json names package {found}, but this machine needs {expected}")]
    WrongName { found: String, expected: String },
    #[error("file check failed: {0}")]
    Files(String),
    #[error("unsafe entry in the package: {path} ({why})")]
    UnsafeEntry { path: String, why: String },
    #[error("the package is not a readable .tgz (gzip-compressed tar) archive: {0}")]
    Archive(String),
    #[error("the unpacked package is larger than the {} cap", human(*cap))]
    UnpackedTooLarge { cap: u64 },
    #[error("the package has more than {cap} entries (the cap on the number of entries)")]
    TooManyEntries { cap: u64 },
    #[error("an entry's name is longer than the {cap}-byte cap on entry names: {start}…")]
    EntryNameTooLong { cap: usize, start: String },
    #[error("{} does not exist: WAIaaS {version} is not installed", path.display())]
    NotInstalled { version: String, path: PathBuf },
    #[error(
        "{} fails verification ({problem}), but `current` points at it, so it is left alone; \
         reinstall the running version by hand",
        path.display()
    )]
    CurrentIsBad { path: PathBuf, problem: String },
    #[error("cannot {action} {}: {source}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{0}")]
    Internal(String),
}

/// Maps an I/O error on `path` to [`PackageError::Io`].
pub(super) fn io_error(
    action: &'static str,
    path: &Path,
) -> impl FnOnce(io::Error) -> PackageError + use<> {
    let path = path.to_path_buf();
    move |source| PackageError::Io {
        action,
        path,
        source,
    }
}
