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
//!    paths, `..`, links, devices, fifos and duplicate paths are refused.
//!
//! The archive is read entry by entry and every file is written by this
//! module (never by `tar`'s own unpacking) into a fresh
//! `versions/<v>.partial/`: `package/bin/<name>` becomes `<name>` (mode 0755)
//! and any other `package/<path>` keeps its path (mode 0644), so the folder
//! holds `waiaas-launcher`, `waiaas-daemon`, `release.json` and
//! `release.json.minisig` at its top (SPEC §2). `package.json` is hashed but
//! not installed. Only after every check passed is the folder fsynced and
//! renamed to `versions/<v>`. Any failure removes the partial folder and the
//! downloaded file.

use std::cell::Cell;
use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::Duration;

use base64::Engine as _;
use minisign_verify::{PublicKey, Signature};
use semver::Version;
use sha2::{Digest, Sha256, Sha512};
use waiaas_shared::config::Config;
use waiaas_shared::fsutil::{fsync_dir, sha256_file};
use waiaas_shared::layout::DataDir;
use waiaas_shared::registry::{self, CheckError, Packument, PackumentError};
use waiaas_shared::release::{
    BINARIES, CLI_PACKAGE, MANIFEST, ReleaseManifest, SIGNATURE, platform_package, this_target,
};
use waiaas_shared::version::VERSION;

/// The release keys this launcher was built with: comma-separated minisign
/// public keys (two at a time while a key is rotated), set by the release
/// build from a repository variable. Nothing is written in the repository.
const BUILT_IN_KEYS: Option<&str> = option_env!("WAIAAS_RELEASE_PUBKEYS");

/// The folder every npm tarball keeps its files in.
const PACKAGE_ROOT: &str = "package";
/// npm's own file: hashed (if listed) but never installed.
const PACKAGE_JSON: &str = "package.json";
/// The programs' folder inside the package; flattened on install.
const BIN_PREFIX: &str = "bin/";
/// `release.json` and its signature are read into memory: far below this.
const MANIFEST_CAP: u64 = 1 << 20;

const KIB: u64 = 1 << 10;
const MIB: u64 = 1 << 20;

/// Sizes and timeouts of a fetch. [`Limits::default`] is what `upgrade` uses;
/// tests pass smaller caps to [`fetch_with_limits`] and [`install_file_with_limits`].
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest packument read.
    pub packument_bytes: u64,
    /// Largest tarball downloaded (also refused early on a larger Content-Length).
    pub tarball_bytes: u64,
    /// Largest total of the unpacked files (a small gzip can unpack to a lot).
    pub unpacked_bytes: u64,
    /// Time to establish a connection.
    pub connect_timeout: Duration,
    /// Longest wait for the next bytes of an answer.
    pub read_timeout: Duration,
    /// A packument request in all, connection to last byte.
    pub packument_timeout: Duration,
    /// The tarball download in all, connection to last byte.
    pub download_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            packument_bytes: registry::PACKUMENT_BODY_CAP,
            tarball_bytes: 512 * MIB,
            unpacked_bytes: 2048 * MIB,
            connect_timeout: Duration::from_secs(10),
            read_timeout: Duration::from_secs(60),
            packument_timeout: Duration::from_secs(120),
            download_timeout: Duration::from_secs(600),
        }
    }
}

/// A verified release in `versions/<version>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Installed {
    pub version: Version,
    /// `versions/<version>`.
    pub path: PathBuf,
    /// Its verified `release.json`.
    pub manifest: ReleaseManifest,
}

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

fn io_error(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> PackageError + use<> {
    let path = path.to_path_buf();
    move |source| PackageError::Io {
        action,
        path,
        source,
    }
}

/// `512 MiB`, `1 KiB`, `1000 bytes`.
fn human(bytes: u64) -> String {
    if bytes >= MIB && bytes % MIB == 0 {
        format!("{} MiB", bytes / MIB)
    } else if bytes >= KIB && bytes % KIB == 0 {
        format!("{} KiB", bytes / KIB)
    } else {
        format!("{bytes} bytes")
    }
}

// ---------------------------------------------------------------------------
// The public entry points.

/// The version `dist-tags.<channel>` of `@waiaas/cli` names (a prerelease
/// under `latest` is refused, as in the daemon's version check).
pub async fn latest(config: &Config) -> Result<Version, PackageError> {
    let (url, _) =
        registry::resolve(config.update.registry.as_deref()).ok_or(PackageError::NoRegistry)?;
    registry::latest_version(&url, &config.update.channel)
        .await
        .map_err(PackageError::Latest)
}

/// Downloads, verifies and installs `version` as `versions/<version>`, with
/// the default [`Limits`]. An existing good `versions/<version>` is reused
/// without a download; a bad one is replaced. `progress` draws a bar on stderr.
pub async fn fetch(
    dir: &DataDir,
    config: &Config,
    version: &Version,
    progress: bool,
) -> Result<Installed, PackageError> {
    fetch_with_limits(dir, config, version, progress, &Limits::default()).await
}

/// [`fetch`] with explicit sizes and timeouts.
pub async fn fetch_with_limits(
    dir: &DataDir,
    config: &Config,
    version: &Version,
    progress: bool,
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

    let (registry_url, _) =
        registry::resolve(config.update.registry.as_deref()).ok_or(PackageError::NoRegistry)?;
    let client = http_client(limits)?;
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

    let actual = download_to(&client, &dist.tarball, &download, limits, progress, &name).await?;
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

/// The trusted minisign public keys: the built-in release keys, then
/// `[update] trusted_keys`.
pub fn trusted_keys(config: &Config) -> Vec<String> {
    let mut keys = built_in_keys();
    keys.extend(configured_keys(config));
    keys
}

/// The built-in release keys.
pub fn built_in_keys() -> Vec<String> {
    BUILT_IN_KEYS.map(parse_key_list).unwrap_or_default()
}

/// A comma-separated list of keys, as `WAIAAS_RELEASE_PUBKEYS` holds them.
pub fn parse_key_list(list: &str) -> Vec<String> {
    list.split(',')
        .map(str::trim)
        .filter(|key| !key.is_empty())
        .map(str::to_string)
        .collect()
}

fn configured_keys(config: &Config) -> Vec<String> {
    config
        .update
        .trusted_keys
        .iter()
        .map(|key| key.trim())
        .filter(|key| !key.is_empty())
        .map(str::to_string)
        .collect()
}

fn target() -> Result<&'static str, PackageError> {
    this_target().ok_or(PackageError::UnsupportedPlatform {
        os: std::env::consts::OS,
        arch: std::env::consts::ARCH,
    })
}

// ---------------------------------------------------------------------------
// Trusted keys and signatures.

/// The decoded trusted keys, and how many came from where (for messages).
#[derive(Debug, Clone)]
struct KeyRing {
    keys: Vec<PublicKey>,
    built_in: usize,
    configured: usize,
}

impl KeyRing {
    fn from_config(config: &Config) -> Result<Self, PackageError> {
        let keys = trusted_keys(config);
        let (built_in, configured) = keys.split_at(built_in_keys().len());
        Self::new(built_in, configured)
    }

    fn new(built_in: &[String], configured: &[String]) -> Result<Self, PackageError> {
        if built_in.is_empty() && configured.is_empty() {
            return Err(PackageError::NoTrustedKey);
        }
        let mut keys = Vec::new();
        for (i, text) in built_in.iter().enumerate() {
            keys.push(
                decode_key(text).map_err(|reason| PackageError::BadTrustedKey {
                    which: format!("#{} built into this launcher", i + 1),
                    reason,
                })?,
            );
        }
        for (i, text) in configured.iter().enumerate() {
            keys.push(
                decode_key(text).map_err(|reason| PackageError::BadTrustedKey {
                    which: format!("#{} of [update] trusted_keys (`{text}`)", i + 1),
                    reason,
                })?,
            );
        }
        Ok(Self {
            keys,
            built_in: built_in.len(),
            configured: configured.len(),
        })
    }

    /// Whether `signature` is a good signature of `manifest` by one of the keys.
    fn verify(&self, manifest: &[u8], signature: Option<&[u8]>) -> Result<(), PackageError> {
        let Some(signature) = signature else {
            return Err(PackageError::Signature(format!(
                "the package has no {SIGNATURE}: {MANIFEST} is unsigned"
            )));
        };
        let signature = std::str::from_utf8(signature)
            .ok()
            .and_then(|text| Signature::decode(text).ok())
            .ok_or_else(|| {
                PackageError::Signature(format!("{SIGNATURE} is not a minisign signature"))
            })?;
        let mut key_matched = false;
        let mut legacy = false;
        for key in &self.keys {
            match key.verify(manifest, &signature, false) {
                Ok(()) => return Ok(()),
                Err(minisign_verify::Error::UnexpectedKeyId) => {}
                Err(minisign_verify::Error::UnexpectedAlgorithm) => legacy = true,
                Err(_) => key_matched = true,
            }
        }
        let trusted = format!(
            "trusted: {} built-in, {} configured",
            self.built_in, self.configured
        );
        Err(PackageError::Signature(if legacy {
            format!(
                "{SIGNATURE} is a legacy (non-prehashed) minisign signature, which is not accepted ({trusted})"
            )
        } else if key_matched {
            format!(
                "{MANIFEST} does not match its signature by a trusted key: it was altered after signing ({trusted})"
            )
        } else {
            format!("{MANIFEST} is not signed by a trusted key ({trusted})")
        }))
    }
}

/// A minisign public key: its base64 line (`RW…`), or a whole `.pub` file.
fn decode_key(text: &str) -> Result<PublicKey, String> {
    let text = text.trim();
    let key = if text.contains('\n') {
        PublicKey::decode(text)
    } else {
        PublicKey::from_base64(text)
    };
    key.map_err(|e| e.to_string())
}

// ---------------------------------------------------------------------------
// Registry and download.

fn http_client(limits: &Limits) -> Result<reqwest::Client, PackageError> {
    reqwest::Client::builder()
        .connect_timeout(limits.connect_timeout)
        .read_timeout(limits.read_timeout)
        // A registry or its CDN may redirect once or twice; more is a loop.
        .redirect(reqwest::redirect::Policy::limited(5))
        .user_agent(format!("waiaas/{VERSION}"))
        .build()
        .map_err(|e| PackageError::Internal(format!("cannot set up HTTP: {}", describe(&e))))
}

/// A reqwest error with its causes ("… : connection refused"), without URLs
/// (which may carry credentials; the caller names what was fetched).
fn describe(error: &reqwest::Error) -> String {
    use std::error::Error as _;
    if error.is_timeout() {
        return "timed out".to_string();
    }
    let mut text = String::new();
    let mut next: Option<&dyn std::error::Error> = error.source();
    text.push_str(&strip_url(error));
    while let Some(cause) = next {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        next = cause.source();
    }
    text
}

fn strip_url(error: &reqwest::Error) -> String {
    let text = error.to_string();
    match text.find(" for url (") {
        Some(at) => text[..at].to_string(),
        None => text,
    }
}

/// A URL fit for messages: without user name or password.
fn shown_url(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(mut parsed) => {
            let _ = parsed.set_username("");
            let _ = parsed.set_password(None);
            parsed.to_string()
        }
        Err(_) => url.to_string(),
    }
}

async fn get_packument(
    client: &reqwest::Client,
    registry_url: &str,
    name: &str,
    limits: &Limits,
) -> Result<Packument, PackageError> {
    let url = registry::packument_url(registry_url, name);
    let what = format!("the packument of {name}");
    let request_failed = |e: reqwest::Error| PackageError::Request {
        what: what.clone(),
        reason: describe(&e),
    };
    let mut response = client
        .get(&url)
        .header(reqwest::header::ACCEPT, registry::PACKUMENT_ACCEPT)
        .timeout(limits.packument_timeout)
        .send()
        .await
        .map_err(request_failed)?;
    if !response.status().is_success() {
        return Err(PackageError::Status {
            what,
            url: shown_url(&url),
            status: response.status().as_u16(),
        });
    }
    let too_large = || PackageError::PackumentTooLarge {
        what: what.clone(),
        cap: limits.packument_bytes,
    };
    if response
        .content_length()
        .is_some_and(|len| len > limits.packument_bytes)
    {
        return Err(too_large());
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(request_failed)? {
        if (body.len() + chunk.len()) as u64 > limits.packument_bytes {
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
    Packument::parse(&body, name).map_err(|source| PackageError::Packument {
        what: what.clone(),
        source,
    })
}

/// The sha512 digests an SRI string allows (any one may match).
fn sri_sha512(
    integrity: Option<&str>,
    package: &str,
    version: &str,
) -> Result<Vec<Vec<u8>>, PackageError> {
    let Some(integrity) = integrity.filter(|i| !i.trim().is_empty()) else {
        return Err(PackageError::Integrity(format!(
            "the registry gives no dist.integrity for {package}@{version}; a package without a sha512 integrity is not accepted"
        )));
    };
    let hashes: Vec<Vec<u8>> = integrity
        .split_whitespace()
        .filter_map(|token| token.strip_prefix("sha512-"))
        .filter_map(|b64| {
            let b64 = b64.split('?').next().unwrap_or_default();
            base64::engine::general_purpose::STANDARD.decode(b64).ok()
        })
        .filter(|hash| hash.len() == 64)
        .collect();
    if hashes.is_empty() {
        return Err(PackageError::Integrity(format!(
            "dist.integrity of {package}@{version} has no sha512 hash (`{integrity}`); only sha512 is accepted"
        )));
    }
    Ok(hashes)
}

/// Streams `url` into the new file `dest`, within the size cap, and returns
/// the sha512 of what was written.
async fn download_to(
    client: &reqwest::Client,
    url: &str,
    dest: &Path,
    limits: &Limits,
    progress: bool,
    version: &str,
) -> Result<Vec<u8>, PackageError> {
    use tokio::io::AsyncWriteExt as _;
    let shown = shown_url(url);
    let failed = |reason: String| PackageError::Download {
        url: shown.clone(),
        reason,
    };
    let mut response = client
        .get(url)
        .timeout(limits.download_timeout)
        .send()
        .await
        .map_err(|e| failed(describe(&e)))?;
    if !response.status().is_success() {
        return Err(failed(format!("HTTP {}", response.status().as_u16())));
    }
    let cap = limits.tarball_bytes;
    let declared = response.content_length();
    if declared.is_some_and(|len| len > cap) {
        return Err(PackageError::TooLarge { cap });
    }
    let mut file = tokio::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(dest)
        .await
        .map_err(io_error("create", dest))?;
    let bar = progress.then(|| progress_bar(declared, version));
    let mut hasher = Sha512::new();
    let mut total: u64 = 0;
    let result = loop {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                total += chunk.len() as u64;
                if total > cap {
                    break Err(PackageError::TooLarge { cap });
                }
                hasher.update(&chunk);
                if let Err(e) = file.write_all(&chunk).await {
                    break Err(io_error("write", dest)(e));
                }
                if let Some(bar) = &bar {
                    bar.inc(chunk.len() as u64);
                }
            }
            Ok(None) => break Ok(()),
            Err(e) => break Err(failed(describe(&e))),
        }
    };
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    result?;
    if let Some(len) = declared.filter(|len| *len != total) {
        return Err(failed(format!(
            "the download ended after {total} of {len} bytes"
        )));
    }
    file.flush().await.map_err(io_error("write", dest))?;
    Ok(hasher.finalize().to_vec())
}

fn progress_bar(len: Option<u64>, version: &str) -> indicatif::ProgressBar {
    use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
    let bar = ProgressBar::with_draw_target(len, ProgressDrawTarget::stderr());
    let template = if len.is_some() {
        "{msg} [{bar:30}] {bytes}/{total_bytes} ({bytes_per_sec}, {eta})"
    } else {
        "{msg} {spinner} {bytes} ({bytes_per_sec})"
    };
    if let Ok(style) = ProgressStyle::with_template(template) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_message(format!("Downloading WAIaaS {version}"));
    bar
}

// ---------------------------------------------------------------------------
// Installing: unpack into `<v>.partial`, verify, rename.

/// Paths removed when dropped, unless disarmed: every way out of a failed
/// install (errors, panics, a cancelled future) leaves nothing behind.
#[derive(Default)]
struct Leftovers(Vec<PathBuf>);

impl Leftovers {
    fn add(&mut self, path: PathBuf) {
        self.0.push(path);
    }
}

impl Drop for Leftovers {
    fn drop(&mut self) {
        for path in &self.0 {
            let _ = remove_path(path);
        }
    }
}

/// Removes a file or folder tree if it exists (never following a link).
fn remove_path(path: &Path) -> Result<(), PackageError> {
    let result = match fs::symlink_metadata(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => Err(e),
        Ok(meta) if meta.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
    };
    result.map_err(io_error("remove", path))
}

fn ensure_versions_dir(dir: &DataDir) -> Result<PathBuf, PackageError> {
    let versions = dir.versions();
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(&versions)
        .map_err(io_error("create", &versions))?;
    Ok(versions)
}

/// What `versions/<v>` holds now.
enum Existing {
    Absent,
    Good(Installed),
    Bad(String),
}

fn existing(
    dir: &DataDir,
    ring: &KeyRing,
    version: &Version,
    target: &str,
) -> Result<Existing, PackageError> {
    let path = dir.version(&version.to_string());
    match fs::symlink_metadata(&path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Existing::Absent),
        Err(e) => return Err(io_error("read", &path)(e)),
        Ok(meta) if !meta.is_dir() => {
            return bad_unless_current(dir, &path, "not a folder".into());
        }
        Ok(_) => {}
    }
    match verify_dir(&path, ring, version, target) {
        Ok(installed) => Ok(Existing::Good(installed)),
        Err(problem) => bad_unless_current(dir, &path, problem.to_string()),
    }
}

/// A bad `versions/<v>` may be replaced, unless it is the one running.
fn bad_unless_current(
    dir: &DataDir,
    path: &Path,
    problem: String,
) -> Result<Existing, PackageError> {
    let current = fs::canonicalize(dir.current()).ok();
    if current.is_some() && current == fs::canonicalize(path).ok() {
        return Err(PackageError::CurrentIsBad {
            path: path.to_path_buf(),
            problem,
        });
    }
    Ok(Existing::Bad(problem))
}

/// Unpacks `tarball` into `versions/<v>.partial`, verifies it, and renames it
/// to `versions/<v>` (replacing a bad one, reusing a good one).
fn install_tarball(
    dir: &DataDir,
    ring: &KeyRing,
    tarball: &Path,
    asked: Option<&Version>,
    target: &str,
    limits: &Limits,
) -> Result<Installed, PackageError> {
    let version = match asked {
        Some(version) => version.clone(),
        None => peek_version(tarball, limits)?,
    };
    let name = version.to_string();
    let versions = ensure_versions_dir(dir)?;
    let partial = versions.join(format!("{name}.partial"));
    let aside = versions.join(format!("{name}.replaced"));
    remove_path(&partial)?;
    remove_path(&aside)?;
    let mut leftovers = Leftovers::default();
    leftovers.add(partial.clone());

    let unpacked = unpack(tarball, &partial, limits)?;
    let manifest = unpacked.verify(ring, &version, target)?;

    let final_dir = dir.version(&name);
    match existing(dir, ring, &version, target)? {
        // Verified already (a second run, or `--from` of what is installed).
        Existing::Good(installed) => return Ok(installed),
        Existing::Absent => {
            fs::rename(&partial, &final_dir).map_err(io_error("rename", &partial))?;
        }
        Existing::Bad(problem) => {
            tracing::warn!(
                "{} fails verification ({problem}); replacing it with the verified package",
                final_dir.display()
            );
            leftovers.add(aside.clone());
            fs::rename(&final_dir, &aside).map_err(io_error("move aside", &final_dir))?;
            if let Err(e) = fs::rename(&partial, &final_dir) {
                let _ = fs::rename(&aside, &final_dir);
                return Err(io_error("rename", &partial)(e));
            }
        }
    }
    leftovers.0.retain(|path| *path != partial);
    fsync_dir(&versions).map_err(io_error("sync", &versions))?;
    Ok(Installed {
        version,
        path: final_dir,
        manifest,
    })
}

/// What the archive held: the hash of every file (by package-relative path),
/// and the manifest and signature bytes.
#[derive(Debug, Default)]
struct Unpacked {
    files: BTreeMap<String, String>,
    manifest: Option<Vec<u8>>,
    signature: Option<Vec<u8>>,
}

impl Unpacked {
    fn verify(
        &self,
        ring: &KeyRing,
        version: &Version,
        target: &str,
    ) -> Result<ReleaseManifest, PackageError> {
        let manifest_bytes = self
            .manifest
            .as_deref()
            .ok_or_else(|| PackageError::NoManifest {
                place: "the package".into(),
            })?;
        ring.verify(manifest_bytes, self.signature.as_deref())?;
        let manifest = check_manifest(manifest_bytes, version, target)?;
        for (path, expected) in &manifest.files {
            let actual = self.files.get(path).ok_or_else(|| {
                PackageError::Files(format!(
                    "{MANIFEST} lists {path}, which is not in the package"
                ))
            })?;
            compare_hash(path, actual, expected)?;
        }
        if let Some(extra) = self
            .files
            .keys()
            .find(|path| *path != PACKAGE_JSON && !manifest.files.contains_key(*path))
        {
            return Err(PackageError::Files(format!(
                "the package holds {extra}, which {MANIFEST} does not list"
            )));
        }
        Ok(manifest)
    }
}

fn compare_hash(path: &str, actual: &str, expected: &str) -> Result<(), PackageError> {
    if actual.eq_ignore_ascii_case(expected) {
        Ok(())
    } else {
        Err(PackageError::Files(format!(
            "{path} has sha256 {actual}, but {MANIFEST} says {expected}"
        )))
    }
}

/// Parses a signature-checked `release.json` and checks what it names.
fn check_manifest(
    bytes: &[u8],
    version: &Version,
    target: &str,
) -> Result<ReleaseManifest, PackageError> {
    let manifest: ReleaseManifest =
        serde_json::from_slice(bytes).map_err(|e| PackageError::Manifest(e.to_string()))?;
    let found = Version::parse(&manifest.version).map_err(|_| {
        PackageError::Manifest(format!("version `{}` is not semver", manifest.version))
    })?;
    if found != *version {
        return Err(PackageError::WrongVersion {
            found: manifest.version,
            asked: version.to_string(),
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
    Ok(manifest)
}

/// Where a package file goes in `versions/<v>/`: `bin/<name>` → `<name>`,
/// other paths unchanged, `package.json` nowhere.
fn installed_path(package_path: &str) -> Option<String> {
    if package_path == PACKAGE_JSON {
        return None;
    }
    match package_path.strip_prefix(BIN_PREFIX) {
        Some(name) if !name.contains('/') => Some(name.to_string()),
        _ => Some(package_path.to_string()),
    }
}

fn mode_for(package_path: &str) -> u32 {
    if package_path.starts_with(BIN_PREFIX) {
        0o755
    } else {
        0o644
    }
}

/// A tar entry's path relative to `package/`, or why it is unsafe.
fn package_relative(raw: &str) -> Result<String, PackageError> {
    let unsafe_entry = |why: &str| PackageError::UnsafeEntry {
        path: raw.to_string(),
        why: why.to_string(),
    };
    if raw.starts_with('/') {
        return Err(unsafe_entry("absolute path"));
    }
    let parts: Vec<&str> = raw
        .split('/')
        .filter(|part| !part.is_empty() && *part != ".")
        .collect();
    if parts.contains(&"..") {
        return Err(unsafe_entry("path escapes the package"));
    }
    if parts.first() != Some(&PACKAGE_ROOT) {
        return Err(unsafe_entry("outside the package/ folder"));
    }
    Ok(parts[1..].join("/"))
}

/// Counts what the decompressor yields and fails past the cap, so a small
/// gzip cannot unpack into an endless stream.
struct Capped<R> {
    inner: R,
    left: u64,
    hit: Rc<Cell<bool>>,
}

impl<R: Read> Read for Capped<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n as u64 > self.left {
            self.hit.set(true);
            return Err(io::Error::other("the unpacked size cap was reached"));
        }
        self.left -= n as u64;
        Ok(n)
    }
}

fn open_archive(
    tarball: &Path,
    limits: &Limits,
) -> Result<(tar::Archive<impl Read + use<>>, Rc<Cell<bool>>), PackageError> {
    let file = File::open(tarball).map_err(io_error("open", tarball))?;
    let hit = Rc::new(Cell::new(false));
    let reader = Capped {
        inner: flate2::read::GzDecoder::new(BufReader::new(file)),
        // The tar stream also holds headers and padding.
        left: limits.unpacked_bytes.saturating_add(4 * MIB),
        hit: hit.clone(),
    };
    Ok((tar::Archive::new(reader), hit))
}

/// The version a tarball's `release.json` names (for `--from` without a
/// version): only to name the partial folder; everything is checked later.
fn peek_version(tarball: &Path, limits: &Limits) -> Result<Version, PackageError> {
    let (mut archive, hit) = open_archive(tarball, limits)?;
    let archive_error = |e: io::Error| {
        if hit.get() {
            PackageError::UnpackedTooLarge {
                cap: limits.unpacked_bytes,
            }
        } else {
            PackageError::Archive(e.to_string())
        }
    };
    for entry in archive.entries().map_err(archive_error)? {
        let entry = entry.map_err(archive_error)?;
        let raw = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        if package_relative(&raw).ok().as_deref() != Some(MANIFEST)
            || entry.header().entry_type() != tar::EntryType::Regular
        {
            continue;
        }
        let mut bytes = Vec::new();
        entry
            .take(MANIFEST_CAP + 1)
            .read_to_end(&mut bytes)
            .map_err(archive_error)?;
        #[derive(serde::Deserialize)]
        struct VersionOnly {
            version: String,
        }
        let named: VersionOnly =
            serde_json::from_slice(&bytes).map_err(|e| PackageError::Manifest(e.to_string()))?;
        return Version::parse(&named.version).map_err(|_| {
            PackageError::Manifest(format!("version `{}` is not semver", named.version))
        });
    }
    Err(PackageError::NoManifest {
        place: "the package".into(),
    })
}

/// Writes every file of the archive into the new folder `partial`, checking
/// each entry first; returns what was found. Nothing is verified yet.
fn unpack(tarball: &Path, partial: &Path, limits: &Limits) -> Result<Unpacked, PackageError> {
    let (mut archive, hit) = open_archive(tarball, limits)?;
    let archive_error = |e: io::Error| {
        if hit.get() {
            PackageError::UnpackedTooLarge {
                cap: limits.unpacked_bytes,
            }
        } else {
            PackageError::Archive(e.to_string())
        }
    };
    fs::DirBuilder::new()
        .mode(0o755)
        .create(partial)
        .map_err(io_error("create", partial))?;

    let mut unpacked = Unpacked::default();
    let mut seen = BTreeSet::new();
    let mut destinations = BTreeSet::new();
    let mut dirs = BTreeSet::from([partial.to_path_buf()]);
    let mut total: u64 = 0;
    for entry in archive.entries().map_err(archive_error)? {
        let mut entry = entry.map_err(archive_error)?;
        let raw = match String::from_utf8(entry.path_bytes().into_owned()) {
            Ok(raw) => raw,
            Err(e) => {
                return Err(PackageError::UnsafeEntry {
                    path: String::from_utf8_lossy(e.as_bytes()).into_owned(),
                    why: "the path is not UTF-8".into(),
                });
            }
        };
        let unsafe_entry = |why: &str| PackageError::UnsafeEntry {
            path: raw.clone(),
            why: why.to_string(),
        };
        let rel = package_relative(&raw)?;
        if !seen.insert(rel.clone()) {
            return Err(unsafe_entry("the path appears twice in the archive"));
        }
        use tar::EntryType;
        match entry.header().entry_type() {
            EntryType::Directory => continue,
            EntryType::Regular => {}
            EntryType::Symlink | EntryType::Link => {
                return Err(unsafe_entry("links are not allowed"));
            }
            EntryType::Char | EntryType::Block | EntryType::Fifo => {
                return Err(unsafe_entry("special files are not allowed"));
            }
            other => {
                return Err(unsafe_entry(&format!(
                    "tar entry type {:?} is not allowed",
                    other.as_byte() as char
                )));
            }
        }
        if rel.is_empty() {
            return Err(unsafe_entry("a file in place of the package/ folder"));
        }
        let size = entry.header().size().map_err(archive_error)?;
        total = total.saturating_add(size);
        if total > limits.unpacked_bytes {
            return Err(PackageError::UnpackedTooLarge {
                cap: limits.unpacked_bytes,
            });
        }

        let memorised = rel == MANIFEST || rel == SIGNATURE;
        if memorised && size > MANIFEST_CAP {
            return Err(PackageError::Manifest(format!(
                "{rel} is larger than {}",
                human(MANIFEST_CAP)
            )));
        }
        let Some(dest_rel) = installed_path(&rel) else {
            // package.json: hashed for the file check, not installed.
            let hash = hash_reader(&mut entry, io::sink()).map_err(archive_error)?;
            unpacked.files.insert(rel, hash);
            continue;
        };
        if !destinations.insert(dest_rel.clone()) {
            return Err(unsafe_entry(&format!("it would overwrite {dest_rel}")));
        }
        let dest = partial.join(&dest_rel);
        if let Some(parent) = dest.parent().filter(|p| *p != partial) {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o755)
                .create(parent)
                .map_err(io_error("create", parent))?;
            let mut dir = parent;
            while dir != partial {
                dirs.insert(dir.to_path_buf());
                match dir.parent() {
                    Some(up) => dir = up,
                    None => break,
                }
            }
        }
        let mode = mode_for(&rel);
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&dest)
            .map_err(io_error("create", &dest))?;
        let mut kept = Vec::new();
        let hash = if memorised {
            entry.read_to_end(&mut kept).map_err(archive_error)?;
            file.write_all(&kept).map_err(io_error("write", &dest))?;
            sha256_hex(&kept)
        } else {
            hash_reader(&mut entry, Tee(&mut file)).map_err(|e| {
                let ours = e.get_ref().is_some_and(|inner| inner.is::<WriteFailed>());
                if ours && !hit.get() {
                    io_error("write", &dest)(e)
                } else {
                    archive_error(e)
                }
            })?
        };
        // Not what the archive says, nor what the umask allows: what we decide.
        file.set_permissions(fs::Permissions::from_mode(mode))
            .map_err(io_error("set the mode of", &dest))?;
        file.sync_all().map_err(io_error("sync", &dest))?;
        match rel.as_str() {
            MANIFEST => unpacked.manifest = Some(kept),
            SIGNATURE => unpacked.signature = Some(kept),
            _ => {}
        }
        unpacked.files.insert(rel, hash);
    }
    // Deepest first, so each folder's entry is durable in its parent.
    for dir in dirs.iter().rev() {
        fsync_dir(dir).map_err(io_error("sync", dir))?;
    }
    unpacked.files.remove(MANIFEST);
    unpacked.files.remove(SIGNATURE);
    Ok(unpacked)
}

/// Marks an error as the destination's, not the archive's.
#[derive(Debug)]
struct WriteFailed(io::Error);

impl std::fmt::Display for WriteFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for WriteFailed {}

/// A writer whose errors are wrapped in [`WriteFailed`].
struct Tee<'a>(&'a mut File);

impl Write for Tee<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0
            .write(buf)
            .map_err(|e| io::Error::new(e.kind(), WriteFailed(e)))
    }
    fn flush(&mut self) -> io::Result<()> {
        self.0
            .flush()
            .map_err(|e| io::Error::new(e.kind(), WriteFailed(e)))
    }
}

/// Copies `reader` into `writer`, returning the sha256 (hex) of the bytes.
fn hash_reader(reader: &mut impl Read, mut writer: impl Write) -> io::Result<String> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = reader.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        writer.write_all(&buf[..n])?;
    }
    writer.flush()?;
    Ok(hex::encode(hasher.finalize()))
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Verifies an installed folder: signature, manifest, every file's hash and
/// mode, and no file the manifest does not account for.
fn verify_dir(
    path: &Path,
    ring: &KeyRing,
    version: &Version,
    target: &str,
) -> Result<Installed, PackageError> {
    let manifest_path = path.join(MANIFEST);
    let manifest_bytes = read_small(&manifest_path)?.ok_or_else(|| PackageError::NoManifest {
        place: path.display().to_string(),
    })?;
    let signature = read_small(&path.join(SIGNATURE))?;
    if signature.is_none() {
        return Err(PackageError::Signature(format!(
            "{} has no {SIGNATURE}: its {MANIFEST} is unsigned",
            path.display()
        )));
    }
    ring.verify(&manifest_bytes, signature.as_deref())?;
    let manifest = check_manifest(&manifest_bytes, version, target)?;

    let mut expected: BTreeSet<String> = [MANIFEST.to_string(), SIGNATURE.to_string()].into();
    for (package_path, hash) in &manifest.files {
        let Some(dest_rel) = installed_path(package_path) else {
            continue;
        };
        let dest = path.join(&dest_rel);
        let meta = fs::symlink_metadata(&dest).map_err(|_| {
            PackageError::Files(format!("{dest_rel} is missing from {}", path.display()))
        })?;
        if !meta.is_file() {
            return Err(PackageError::Files(format!(
                "{dest_rel} in {} is not a plain file",
                path.display()
            )));
        }
        if mode_for(package_path) & 0o111 != 0 && meta.permissions().mode() & 0o111 == 0 {
            return Err(PackageError::Files(format!(
                "{dest_rel} in {} is not executable",
                path.display()
            )));
        }
        let actual = sha256_file(&dest).map_err(io_error("read", &dest))?;
        compare_hash(&dest_rel, &actual, hash)?;
        expected.insert(dest_rel);
    }
    let mut found = Vec::new();
    list_files(path, "", &mut found)?;
    for (rel, plain) in found {
        if !plain {
            return Err(PackageError::Files(format!(
                "{rel} in {} is a link or special file",
                path.display()
            )));
        }
        if !expected.contains(&rel) {
            return Err(PackageError::Files(format!(
                "{} holds {rel}, which {MANIFEST} does not list",
                path.display()
            )));
        }
    }
    Ok(Installed {
        version: version.clone(),
        path: path.to_path_buf(),
        manifest,
    })
}

/// Every non-folder below `dir`, by relative path, and whether it is a plain file.
fn list_files(dir: &Path, prefix: &str, out: &mut Vec<(String, bool)>) -> Result<(), PackageError> {
    for entry in fs::read_dir(dir).map_err(io_error("read", dir))? {
        let entry = entry.map_err(io_error("read", dir))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let rel = if prefix.is_empty() {
            name
        } else {
            format!("{prefix}/{name}")
        };
        let kind = entry.file_type().map_err(io_error("read", &entry.path()))?;
        if kind.is_dir() {
            list_files(&entry.path(), &rel, out)?;
        } else {
            out.push((rel, kind.is_file()));
        }
    }
    Ok(())
}

/// A small file's bytes, `None` if it does not exist.
fn read_small(path: &Path) -> Result<Option<Vec<u8>>, PackageError> {
    let file = match File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_error("read", path)(e)),
    };
    let mut bytes = Vec::new();
    file.take(MANIFEST_CAP + 1)
        .read_to_end(&mut bytes)
        .map_err(io_error("read", path))?;
    if bytes.len() as u64 > MANIFEST_CAP {
        return Err(PackageError::Manifest(format!(
            "{} is larger than {}",
            path.display(),
            human(MANIFEST_CAP)
        )));
    }
    Ok(Some(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A syntactically valid minisign public key (its bytes need not be a
    /// usable curve point to be parsed).
    fn key(id: u8) -> String {
        let mut raw = b"Ed".to_vec();
        raw.extend([id; 8]);
        raw.extend([id.wrapping_add(1); 32]);
        base64::engine::general_purpose::STANDARD.encode(raw)
    }

    #[test]
    fn a_list_of_two_release_keys_is_parsed() {
        let (a, b) = (key(1), key(2));
        let list = format!(" {a},{b} ,");
        let keys = parse_key_list(&list);
        assert_eq!(keys, [a.clone(), b.clone()]);
        let ring = KeyRing::new(&keys, &[]).unwrap();
        assert_eq!((ring.keys.len(), ring.built_in, ring.configured), (2, 2, 0));
        assert!(parse_key_list("").is_empty());
        assert!(parse_key_list(" , ").is_empty());

        // A whole `.pub` file is a key too.
        let file = format!("untrusted comment: minisign public key\n{a}\n");
        assert!(decode_key(&file).is_ok());
        assert!(decode_key("untrusted comment: x\nRWnot").is_err());
    }

    #[test]
    fn configured_keys_are_added_and_bad_ones_named() {
        let mut config = Config::default();
        config.update.trusted_keys = vec![key(3), "  ".into(), key(4)];
        let keys = trusted_keys(&config);
        assert!(keys.ends_with(&[key(3), key(4)]), "{keys:?}");

        let err = KeyRing::new(&[key(1)], &[key(2), "RWnotakey".into()]).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("#2 of [update] trusted_keys") && msg.contains("RWnotakey"),
            "{msg}"
        );
    }

    #[test]
    fn no_trusted_key_says_how_to_configure_one() {
        let msg = KeyRing::new(&[], &[]).unwrap_err().to_string();
        assert!(
            msg.contains("no trusted release key") && msg.contains("trusted_keys"),
            "{msg}"
        );
    }

    #[test]
    fn a_missing_or_garbled_signature_is_named() {
        let ring = KeyRing::new(&[key(1)], &[key(2)]).unwrap();
        let msg = ring.verify(b"{}", None).unwrap_err().to_string();
        assert!(msg.starts_with("signature check failed") && msg.contains("unsigned"));
        let msg = ring.verify(b"{}", Some(b"junk")).unwrap_err().to_string();
        assert!(msg.contains("not a minisign signature"), "{msg}");
    }

    #[test]
    fn sri_sha512_is_read() {
        let digest = Sha512::digest(b"abc");
        let b64 = base64::engine::general_purpose::STANDARD.encode(digest);
        let sri = format!("sha1-AAAA sha512-{b64}?opt");
        let hashes = sri_sha512(Some(&sri), "p", "1.0.0").unwrap();
        assert_eq!(hashes, [digest.to_vec()]);
        for bad in [None, Some(""), Some("sha1-AAAA"), Some("sha512-%%%")] {
            let msg = sri_sha512(bad, "p", "1.0.0").unwrap_err().to_string();
            assert!(msg.starts_with("integrity check failed"), "{msg}");
        }
    }

    #[test]
    fn entry_paths_are_checked() {
        assert_eq!(package_relative("package/bin/x").unwrap(), "bin/x");
        assert_eq!(package_relative("./package//bin/./x").unwrap(), "bin/x");
        assert_eq!(package_relative("package/").unwrap(), "");
        for (raw, why) in [
            ("/etc/passwd", "absolute path"),
            ("../evil", "escapes"),
            ("package/../../evil", "escapes"),
            ("package/bin/../../x", "escapes"),
            ("other/x", "outside"),
            ("x", "outside"),
        ] {
            let msg = package_relative(raw).unwrap_err().to_string();
            assert!(
                msg.starts_with("unsafe entry in the package: ") && msg.contains(why),
                "{raw}: {msg}"
            );
        }
    }

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
        assert_eq!(human(512 * MIB), "512 MiB");
        assert_eq!(human(4 * KIB), "4 KiB");
        assert_eq!(human(1000), "1000 bytes");
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
        })
        .unwrap()
    }

    #[test]
    fn the_manifest_must_name_what_was_asked() {
        let v = Version::parse("1.9.0").unwrap();
        let name = platform_package("linux-x64");
        let bins = [("bin/waiaas-launcher", "aa"), ("bin/waiaas-daemon", "bb")];
        let good = manifest("1.9.0", "linux-x64", &name, &bins);
        assert!(check_manifest(&good, &v, "linux-x64").is_ok());

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
            (b"{\"name\":1}".to_vec(), "not a valid release manifest"),
        ];
        for (bytes, expected) in cases {
            let msg = check_manifest(&bytes, &v, "linux-x64")
                .unwrap_err()
                .to_string();
            assert!(msg.contains(expected), "{msg}");
        }
    }

    /// What a test archive holds: a path (written raw, so unsafe ones can be
    /// made), an entry type, and the content.
    struct Raw<'a>(&'a str, tar::EntryType, &'a [u8]);

    fn tarball(dir: &Path, entries: &[Raw<'_>]) -> PathBuf {
        let path = dir.join("t.tgz");
        let gz = flate2::write::GzEncoder::new(
            File::create(&path).unwrap(),
            flate2::Compression::fast(),
        );
        let mut builder = tar::Builder::new(gz);
        for Raw(name, kind, data) in entries {
            let mut header = tar::Header::new_gnu();
            let bytes = name.as_bytes();
            header.as_old_mut().name[..bytes.len()].copy_from_slice(bytes);
            header.set_entry_type(*kind);
            header.set_size(data.len() as u64);
            header.set_mode(0o777);
            if *kind == tar::EntryType::Symlink {
                header.set_link_name("/etc/passwd").unwrap();
            }
            header.set_cksum();
            builder.append(&header, *data).unwrap();
        }
        builder.into_inner().unwrap().finish().unwrap();
        path
    }

    fn unpack_in(
        entries: &[Raw<'_>],
        limits: &Limits,
    ) -> (tempfile::TempDir, Result<Unpacked, PackageError>) {
        let tmp = tempfile::tempdir().unwrap();
        let tgz = tarball(tmp.path(), entries);
        let result = unpack(&tgz, &tmp.path().join("out.partial"), limits);
        (tmp, result)
    }

    use tar::EntryType as T;

    #[test]
    fn a_plain_archive_is_unpacked_flat_with_our_modes() {
        let (tmp, result) = unpack_in(
            &[
                Raw("package/", T::Directory, b""),
                Raw("package/package.json", T::Regular, b"{}"),
                Raw("package/bin/waiaas-daemon", T::Regular, b"d"),
                Raw("package/release.json", T::Regular, b"{\"m\":1}"),
                Raw("package/release.json.minisig", T::Regular, b"sig"),
                Raw("package/LICENSE", T::Regular, b"MIT"),
            ],
            &Limits::default(),
        );
        let unpacked = result.unwrap();
        let out = tmp.path().join("out.partial");
        assert_eq!(unpacked.manifest.as_deref(), Some(&b"{\"m\":1}"[..]));
        assert_eq!(unpacked.signature.as_deref(), Some(&b"sig"[..]));
        assert_eq!(
            unpacked.files.keys().collect::<Vec<_>>(),
            ["LICENSE", "bin/waiaas-daemon", "package.json"]
        );
        assert_eq!(unpacked.files["LICENSE"], sha256_hex(b"MIT"));
        let mode = |name: &str| fs::metadata(out.join(name)).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode("waiaas-daemon"), 0o755);
        assert_eq!(mode("LICENSE"), 0o644);
        assert_eq!(mode("release.json"), 0o644);
        assert!(!out.join("package.json").exists() && !out.join("bin").exists());
    }

    #[test]
    fn unsafe_entries_are_refused() {
        let cases: &[(&[Raw<'_>], &str)] = &[
            (
                &[Raw("../evil", T::Regular, b"x")],
                "../evil (path escapes the package)",
            ),
            (
                &[Raw("/tmp/evil", T::Regular, b"x")],
                "/tmp/evil (absolute path)",
            ),
            (
                &[Raw("package/bin/x", T::Symlink, b"")],
                "links are not allowed",
            ),
            (
                &[Raw("package/bin/x", T::Link, b"")],
                "links are not allowed",
            ),
            (&[Raw("package/bin/x", T::Fifo, b"")], "special files"),
            (&[Raw("package/bin/x", T::Char, b"")], "special files"),
            (&[Raw("package/x", T::Continuous, b"")], "entry type '7'"),
            (
                &[
                    Raw("package/a", T::Regular, b"1"),
                    Raw("package/./a", T::Regular, b"2"),
                ],
                "appears twice",
            ),
            (
                &[
                    Raw("package/release.json", T::Regular, b"1"),
                    Raw("package/bin/release.json", T::Regular, b"2"),
                ],
                "would overwrite release.json",
            ),
        ];
        for (entries, expected) in cases {
            let (_tmp, result) = unpack_in(entries, &Limits::default());
            let msg = result.unwrap_err().to_string();
            assert!(
                msg.starts_with("unsafe entry in the package: ") && msg.contains(expected),
                "{msg}"
            );
        }
    }

    #[test]
    fn a_package_that_unpacks_too_large_is_refused() {
        let big = vec![0u8; 256 * 1024];
        let limits = Limits {
            unpacked_bytes: 64 * 1024,
            ..Limits::default()
        };
        let (_tmp, result) = unpack_in(&[Raw("package/bin/x", T::Regular, &big)], &limits);
        let msg = result.unwrap_err().to_string();
        assert_eq!(msg, "the unpacked package is larger than the 64 KiB cap");
    }

    #[test]
    fn garbage_is_not_an_archive() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("t.tgz");
        fs::write(&path, b"<html>not found</html>").unwrap();
        let msg = unpack(&path, &tmp.path().join("p"), &Limits::default())
            .unwrap_err()
            .to_string();
        assert!(msg.contains("not a readable .tgz"), "{msg}");
    }
}
