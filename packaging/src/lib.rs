//! Builds the WAIaaS release packages (SPEC §7) from a built tree.
//!
//! [`pack`] reads `waiaas-launcher` and `waiaas-daemon` from a folder, asks
//! them their version and schema, and writes the two npm tarballs `npm pack`
//! would name `waiaas-cli-<v>.tgz` and `waiaas-cli-<target>-<v>.tgz`:
//!
//! - `@waiaas/cli-<target>@v`: `package/package.json`, `package/bin/waiaas-launcher`,
//!   `package/bin/waiaas-daemon`, `package/release.json` (a
//!   [`ReleaseManifest`] with the binaries' SHA-256) and
//!   `package/release.json.minisig` (its minisign signature);
//! - `@waiaas/cli@v`: `package/package.json` (a `bin` and `optionalDependencies`
//!   on each platform package at exactly `v`), `package/README.md` and
//!   `package/bin/waiaas-launcher.js` (the Node shim that starts the platform binary).
//!
//! Output is reproducible: fixed entry order, owner and mtime, and
//! deterministic signatures, so packing the same binaries with the same key
//! twice gives byte-identical tarballs (and the same `dist.integrity`).
//!
//! The rest of the API ([`generate_keypair`], [`sign`], [`Entry`],
//! [`write_package_tarball`], [`read_package_tarball`],
//! [`reference_minisign`]) is for tests and tooling: throwaway keys,
//! deliberately bad packages for the launcher's verification tests, and the
//! reference `minisign` tool for interop tests.

mod error;
mod npm;
mod probe;
mod reference;
mod rollout;
mod sign;
mod tarball;

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256};
use waiaas_shared::release::{BINARIES, CLI_PACKAGE, MANIFEST, SIGNATURE, platform_package};

pub use crate::error::PackError;
pub use crate::npm::{CLI_README, CLI_SHIM, CLI_SHIM_PATH, NODE_ENGINES};
pub use crate::probe::SUPPORTED_TARGETS;
pub use crate::reference::reference_minisign;
pub use crate::rollout::parse_rollout;
pub use crate::sign::{
    PUBLIC_KEY_FILE, SECRET_KEY_FILE, generate_keypair, public_key, sign, sign_with_comment,
};
pub use crate::tarball::{
    Entry, EntryKind, NPM_MTIME, sri_sha512, tarball_bytes, write_package_tarball,
};
pub use waiaas_shared::release::ReleaseManifest;

/// What to pack.
#[derive(Debug, Clone)]
pub struct PackOptions {
    /// Folder holding `waiaas-launcher` and `waiaas-daemon` (e.g. `target/dist`).
    pub bin_dir: PathBuf,
    /// Where the two tarballs go (created if missing; same-named files are replaced).
    pub out_dir: PathBuf,
    /// An unencrypted minisign secret key file.
    pub sign_key: PathBuf,
    /// The binaries' platform in npm's words, e.g. `linux-x64` ([`SUPPORTED_TARGETS`]).
    pub target: String,
    /// Further platforms whose packages are built elsewhere but which
    /// `@waiaas/cli` lists in `optionalDependencies`.
    pub also_targets: Vec<String>,
    /// Staged rollout: written into the signed `release.json` as
    /// `rollout_seconds` (see [`ReleaseManifest::rollout_seconds`]); `None`
    /// leaves it out, and every installation may take the release at once.
    pub rollout_seconds: Option<u64>,
}

/// What [`pack`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packed {
    /// `OUT/waiaas-cli-<v>.tgz`.
    pub cli_tarball: PathBuf,
    /// `OUT/waiaas-cli-<target>-<v>.tgz`.
    pub platform_tarball: PathBuf,
    /// The `release.json` inside the platform tarball.
    pub manifest: ReleaseManifest,
    /// The public key the signature verifies with (minisign one-line base64).
    pub public_key: String,
    /// `sha512-…` of the `@waiaas/cli` tarball, as npm's `dist.integrity`.
    pub cli_integrity: String,
    /// `sha512-…` of the platform tarball.
    pub platform_integrity: String,
}

/// Packs the binaries in `opts.bin_dir` into the two npm tarballs and signs
/// the platform package's `release.json`. Refuses binaries that disagree on
/// their version, or that are built for another platform than `opts.target`.
pub fn pack(opts: &PackOptions) -> Result<Packed, PackError> {
    probe::check_target(&opts.target)?;
    let mut targets = vec![opts.target.clone()];
    for t in &opts.also_targets {
        probe::check_target(t)?;
        if !targets.contains(t) {
            targets.push(t.clone());
        }
    }
    // Load the key first: a bad key should fail before any work is done.
    let key = sign::ReleaseKey::load(&opts.sign_key)?;

    let [launcher_name, daemon_name] = BINARIES;
    let (launcher_path, launcher) = probe::read_binary(&opts.bin_dir, launcher_name)?;
    let (daemon_path, daemon) = probe::read_binary(&opts.bin_dir, daemon_name)?;
    let info = probe::daemon_version(&daemon_path)?;
    let launcher_version = probe::launcher_version(&launcher_path)?;
    if launcher_version != info.version {
        return Err(PackError::VersionMismatch {
            launcher: launcher_version,
            daemon: info.version,
        });
    }
    probe::check_architecture(&launcher_path, &launcher, &opts.target)?;
    probe::check_architecture(&daemon_path, &daemon, &opts.target)?;

    let version = info.version.as_str();
    let launcher_entry = format!("bin/{launcher_name}");
    let daemon_entry = format!("bin/{daemon_name}");
    let manifest = ReleaseManifest {
        name: platform_package(&opts.target),
        version: version.to_string(),
        target: opts.target.clone(),
        schema_version: info.schema_version,
        min_compatible_schema_version: info.min_compatible_schema_version,
        files: BTreeMap::from([
            (launcher_entry.clone(), sha256_hex(&launcher)),
            (daemon_entry.clone(), sha256_hex(&daemon)),
        ]),
        rollout_seconds: opts.rollout_seconds,
    };
    let mut manifest_json = serde_json::to_vec_pretty(&manifest)?;
    manifest_json.push(b'\n');
    let signature = key.sign(
        &manifest_json,
        &format!("file:{MANIFEST}\tpackage:{}@{version}", manifest.name),
    )?;

    // release.json and its signature first, so a reader can verify before
    // the large files (the launcher does not rely on it: hostile packages
    // choose their own order).
    let platform_entries = [
        Entry::file(format!("package/{MANIFEST}"), manifest_json, 0o644),
        Entry::file(format!("package/{SIGNATURE}"), signature, 0o644),
        Entry::file(
            "package/package.json",
            npm::platform_package_json(&opts.target, version)?,
            0o644,
        ),
        Entry::file(format!("package/{launcher_entry}"), launcher, 0o755),
        Entry::file(format!("package/{daemon_entry}"), daemon, 0o755),
    ];
    let cli_entries = [
        Entry::file(
            "package/package.json",
            npm::cli_package_json(&targets, version)?,
            0o644,
        ),
        Entry::file("package/README.md", CLI_README, 0o644),
        Entry::file(format!("package/{CLI_SHIM_PATH}"), CLI_SHIM, 0o755),
    ];

    fs::create_dir_all(&opts.out_dir).map_err(PackError::io(&opts.out_dir))?;
    let platform_tarball = opts.out_dir.join(npm_tarball_name(&manifest.name, version));
    let cli_tarball = opts.out_dir.join(npm_tarball_name(CLI_PACKAGE, version));
    let platform_bytes = tarball_bytes(&platform_entries)?;
    drop(platform_entries);
    tarball::write_atomically(&platform_tarball, &platform_bytes)?;
    let cli_bytes = tarball_bytes(&cli_entries)?;
    tarball::write_atomically(&cli_tarball, &cli_bytes)?;

    Ok(Packed {
        cli_integrity: sri_sha512(&cli_bytes),
        platform_integrity: sri_sha512(&platform_bytes),
        cli_tarball,
        platform_tarball,
        manifest,
        public_key: key.public_base64(),
    })
}

/// The file name `npm pack` gives a package: `@waiaas/cli`, `1.8.1` →
/// `waiaas-cli-1.8.1.tgz`.
pub fn npm_tarball_name(package: &str, version: &str) -> String {
    let flat = package.trim_start_matches('@').replace('/', "-");
    format!("{flat}-{version}.tgz")
}

/// Reads a package tarball back into [`Entry`]s, paths verbatim (nothing is
/// written to disk). Test and tooling helper: take a good package, change one
/// entry, and write it again with [`write_package_tarball`].
pub fn read_package_tarball(path: &Path) -> Result<Vec<Entry>, PackError> {
    let bytes = fs::read(path).map_err(PackError::io(path))?;
    let broken = |e: std::io::Error| PackError::Io {
        path: path.to_path_buf(),
        source: std::io::Error::new(e.kind(), format!("not a readable .tgz: {e}")),
    };
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(&bytes[..]));
    let mut entries = Vec::new();
    for member in archive.entries().map_err(broken)? {
        let mut member = member.map_err(broken)?;
        let name = String::from_utf8_lossy(&member.path_bytes()).into_owned();
        let link = || {
            member
                .link_name_bytes()
                .map(|l| String::from_utf8_lossy(&l).into_owned())
                .unwrap_or_default()
        };
        let mode = member.header().mode().map_err(broken)?;
        let entry = match member.header().entry_type() {
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                let mut contents = Vec::new();
                std::io::Read::read_to_end(&mut member, &mut contents).map_err(broken)?;
                Entry::file(name, contents, mode)
            }
            tar::EntryType::Directory => Entry::dir(name, mode),
            tar::EntryType::Symlink => Entry::symlink(name, link()),
            tar::EntryType::Link => Entry::hardlink(name, link()),
            tar::EntryType::Fifo => Entry::fifo(name),
            other => {
                return Err(PackError::BadEntry {
                    path: name,
                    reason: format!("unsupported entry type {other:?}"),
                });
            }
        };
        entries.push(entry);
    }
    Ok(entries)
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}
