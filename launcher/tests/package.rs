//! Release packages (SPEC §7): download, verify and install, against a real
//! HTTP registry on 127.0.0.1 ([`testkit::registry`]) serving packages made
//! by `waiaas-packaging` and signed with throwaway keys — the real binaries of
//! this build, and small hostile variants. Every refusal must name the check
//! that failed and leave the data dir exactly as it was: nothing new under
//! `versions/` (no `.partial`, no download), `current` unchanged.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use semver::Version;
use sha2::{Digest as _, Sha256};
use testkit::registry::{Registry, Reply};
use waiaas_launcher::package::{self, Downloaded, Installed, Limits, PackageError};
use waiaas_packaging::{Entry, EntryKind, PackOptions};
use waiaas_shared::config::Config;
use waiaas_shared::layout::DataDir;
use waiaas_shared::release::{
    CLI_PACKAGE, MANIFEST, ReleaseManifest, SIGNATURE, platform_package, this_target,
};
use waiaas_shared::version::VERSION;

// ---------------------------------------------------------------------------
// Fixtures.

fn target() -> &'static str {
    this_target().expect("tests run on a shipped target")
}

fn version() -> Version {
    Version::parse(VERSION).unwrap()
}

/// Keys and the real package, made once per test process.
struct Fixture {
    /// The trusted key pair (the secret key's file, the public key).
    secret: PathBuf,
    public: String,
    /// A key pair nobody trusts.
    other_secret: PathBuf,
    /// The real, signed platform package of this build, and its manifest.
    real: Vec<u8>,
    real_manifest: ReleaseManifest,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let base = Path::new(env!("CARGO_TARGET_TMPDIR"));
        remove_stale_fixtures(base);
        let root = base.join(format!("package-tests-{}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        let (secret, public) = waiaas_packaging::generate_keypair(&root.join("keys")).unwrap();
        let (other_secret, _) =
            waiaas_packaging::generate_keypair(&root.join("other-keys")).unwrap();
        let bin_dir = testkit::daemon_binary()
            .parent()
            .expect("the binaries' folder")
            .to_path_buf();
        let out = root.join("out");
        let packed = waiaas_packaging::pack(&PackOptions {
            bin_dir,
            out_dir: out.clone(),
            sign_key: secret.clone(),
            target: target().to_string(),
            also_targets: Vec::new(),
            rollout_seconds: None,
        })
        .expect("pack this build");
        let real = fs::read(&packed.platform_tarball).unwrap();
        let _ = fs::remove_dir_all(&out);
        assert_eq!(packed.public_key, public);
        Fixture {
            secret,
            public,
            other_secret,
            real,
            real_manifest: packed.manifest,
        }
    })
}

/// Removes the fixture folders of test processes that are gone.
fn remove_stale_fixtures(base: &Path) {
    let Ok(entries) = fs::read_dir(base) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some(pid) = name.strip_prefix("package-tests-")
            && !Path::new("/proc").join(pid).exists()
        {
            let _ = fs::remove_dir_all(entry.path());
        }
    }
}

/// Incompressible bytes, so a small package still has some size.
fn noise(seed: u32, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(2_654_435_761).max(1);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// The payload of a small release: package.json and two fake programs.
fn payload() -> Vec<(String, Vec<u8>)> {
    let script = |name: &str, seed| {
        let mut bytes = format!("#!/bin/sh\necho {name} {VERSION}\nexit 0\n# ").into_bytes();
        bytes.extend(noise(seed, 4096).iter().map(|b| b'a' + b % 26));
        bytes.push(b'\n');
        bytes
    };
    vec![
        (
            "package.json".to_string(),
            format!(
                "{{\"name\":\"{}\",\"version\":\"{VERSION}\"}}\n",
                platform_package(target())
            )
            .into_bytes(),
        ),
        (
            "bin/waiaas-launcher".to_string(),
            script("waiaas-launcher", 1),
        ),
        ("bin/waiaas-daemon".to_string(), script("waiaas-daemon", 2)),
    ]
}

/// The manifest describing `files` (all but package.json), for this version
/// and target.
fn manifest_of(files: &[(String, Vec<u8>)]) -> ReleaseManifest {
    ReleaseManifest {
        name: platform_package(target()),
        version: VERSION.to_string(),
        target: target().to_string(),
        schema_version: 16,
        min_compatible_schema_version: 10,
        files: files
            .iter()
            .filter(|(path, _)| path != "package.json")
            .map(|(path, bytes)| (path.clone(), sha256_hex(bytes)))
            .collect::<BTreeMap<_, _>>(),
        rollout_seconds: None,
    }
}

/// How `release.json` is signed.
enum Signed {
    /// By the trusted key.
    Trusted,
    /// By a key nobody trusts.
    Unknown,
    /// By the trusted key, but over other bytes.
    OtherBytes,
    /// Not at all: no `.minisig` in the package.
    Unsigned,
}

/// The tar entries of a package holding `files` and `manifest`.
fn package_entries(
    files: &[(String, Vec<u8>)],
    manifest: &ReleaseManifest,
    signed: Signed,
) -> Vec<Entry> {
    let fx = fixture();
    let manifest_bytes = serde_json::to_vec_pretty(manifest).unwrap();
    let signature = match signed {
        Signed::Trusted => Some(waiaas_packaging::sign(&fx.secret, &manifest_bytes).unwrap()),
        Signed::Unknown => Some(waiaas_packaging::sign(&fx.other_secret, &manifest_bytes).unwrap()),
        Signed::OtherBytes => Some(waiaas_packaging::sign(&fx.secret, b"{\"other\":1}").unwrap()),
        Signed::Unsigned => None,
    };
    let mut entries: Vec<Entry> = files
        .iter()
        .map(|(path, bytes)| {
            let mode = if path.starts_with("bin/") {
                0o755
            } else {
                0o644
            };
            Entry::file(format!("package/{path}"), bytes.clone(), mode)
        })
        .collect();
    entries.push(Entry::file(
        format!("package/{MANIFEST}"),
        manifest_bytes,
        0o644,
    ));
    if let Some(signature) = signature {
        entries.push(Entry::file(
            format!("package/{SIGNATURE}"),
            signature,
            0o644,
        ));
    }
    entries
}

fn tgz(entries: &[Entry]) -> Vec<u8> {
    waiaas_packaging::tarball_bytes(entries).unwrap()
}

/// A good small release package.
fn good_small() -> Vec<u8> {
    let files = payload();
    tgz(&package_entries(
        &files,
        &manifest_of(&files),
        Signed::Trusted,
    ))
}

/// A good small package with `extra` entries appended.
fn small_with(extra: Vec<Entry>) -> Vec<u8> {
    let files = payload();
    let mut entries = package_entries(&files, &manifest_of(&files), Signed::Trusted);
    entries.extend(extra);
    tgz(&entries)
}

/// Everything in a folder tree: path, kind and size (or a link's target).
type Snapshot = Vec<(String, String)>;

fn snapshot(root: &Path) -> Snapshot {
    fn walk(root: &Path, dir: &Path, out: &mut Snapshot) {
        let Ok(entries) = fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let rel = path
                .strip_prefix(root)
                .unwrap()
                .to_string_lossy()
                .into_owned();
            let Ok(meta) = fs::symlink_metadata(&path) else {
                // Listed, then gone (a download removed after a refusal):
                // it was there all the same.
                out.push((rel, "gone".into()));
                continue;
            };
            if meta.file_type().is_symlink() {
                let link = fs::read_link(&path).unwrap_or_default();
                out.push((rel, format!("-> {}", link.display())));
            } else if meta.is_dir() {
                out.push((rel, "dir".into()));
                walk(root, &path, out);
            } else {
                out.push((rel, format!("{} bytes", meta.len())));
            }
        }
    }
    let mut out = Vec::new();
    walk(root, root, &mut out);
    out.sort();
    out
}

/// A data dir with an installed `1.8.0` that `current` points at, a registry,
/// and a config that trusts the fixture's key and uses that registry.
struct Scenario {
    tmp: tempfile::TempDir,
    dir: DataDir,
    registry: Registry,
    config: Config,
    before: Snapshot,
}

impl Scenario {
    fn new() -> Self {
        let fx = fixture();
        let tmp = tempfile::tempdir().unwrap();
        let dir = DataDir::new(tmp.path().join("waiaas"));
        let old = dir.version("1.8.0");
        fs::create_dir_all(&old).unwrap();
        fs::write(old.join("waiaas-daemon"), b"#!/bin/sh\necho old\n").unwrap();
        std::os::unix::fs::symlink("versions/1.8.0", dir.current()).unwrap();
        let registry = Registry::start();
        let mut config = Config::default();
        config.update.registry = Some(registry.url().to_string());
        config.update.trusted_keys = vec![fx.public.clone()];
        let before = snapshot(tmp.path());
        Self {
            tmp,
            dir,
            registry,
            config,
            before,
        }
    }

    /// Publishes `@waiaas/cli@<VERSION>` and the platform package with `tarball`.
    fn publish(&self, tarball: Vec<u8>) {
        self.registry
            .publish(CLI_PACKAGE, VERSION, b"the cli package".to_vec());
        self.registry
            .publish(&platform_package(target()), VERSION, tarball);
    }

    fn tarball_path(&self) -> String {
        Registry::tarball_path(&platform_package(target()), VERSION)
    }

    async fn fetch(&self) -> Result<Installed, PackageError> {
        package::fetch(&self.dir, &self.config, &version(), &mut |_| {}).await
    }

    async fn fetch_with(&self, limits: &Limits) -> Result<Installed, PackageError> {
        package::fetch_with_limits(&self.dir, &self.config, &version(), &mut |_| {}, limits).await
    }

    /// Writes `bytes` outside the data dir and returns the file's path.
    fn file(&self, name: &str, bytes: &[u8]) -> PathBuf {
        let path = self.tmp.path().join(name);
        fs::write(&path, bytes).unwrap();
        path
    }

    /// Asserts the data dir is exactly as it was (files written outside it
    /// by the test itself aside).
    fn assert_unchanged(&self) {
        let now: Snapshot = snapshot(self.tmp.path())
            .into_iter()
            .filter(|(path, _)| path.starts_with("waiaas"))
            .collect();
        let before: Snapshot = self
            .before
            .iter()
            .filter(|(path, _)| path.starts_with("waiaas"))
            .cloned()
            .collect();
        assert_eq!(now, before, "the data dir changed");
    }

    /// Asserts `result` is a refusal whose message contains `expected`, and
    /// that nothing changed.
    fn assert_refused<T: std::fmt::Debug>(
        &self,
        result: Result<T, PackageError>,
        expected: &str,
    ) -> String {
        let message = result.expect_err("must be refused").to_string();
        assert!(
            message.contains(expected),
            "expected {expected:?} in: {message}"
        );
        self.assert_unchanged();
        message
    }
}

/// Records every path that appears under a folder while it runs, to show
/// what a refusal wrote before it was refused (a failed install removes it).
struct Watcher {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<BTreeSet<String>>,
}

impl Watcher {
    fn start(root: PathBuf) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let thread = std::thread::spawn({
            let stop = stop.clone();
            move || {
                let mut seen = BTreeSet::new();
                while !stop.load(Ordering::Relaxed) {
                    seen.extend(snapshot(&root).into_iter().map(|(path, _)| path));
                    std::thread::sleep(Duration::from_millis(1));
                }
                seen
            }
        });
        Self { stop, thread }
    }

    /// Every path seen below the folder, relative to it.
    fn seen(self) -> BTreeSet<String> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap()
    }
}

/// The unsigned bomb of issue 10 (no `.minisig`, 256 MiB of zeros, 20,000
/// empty files; about 250 KB), made once per test process.
fn bomb() -> &'static [u8] {
    static BOMB: OnceLock<Vec<u8>> = OnceLock::new();
    BOMB.get_or_init(|| {
        let files = payload();
        let manifest = serde_json::to_vec_pretty(&manifest_of(&files)).unwrap();
        let path = fixture().secret.with_file_name("bomb.tgz");
        testkit::hostile::unsigned_bomb(&path, &manifest, 256 << 20, 20_000);
        fs::read(&path).unwrap()
    })
}

// ---------------------------------------------------------------------------
// The good path.

#[tokio::test]
async fn a_good_release_is_fetched_verified_and_installed() {
    let fx = fixture();
    let s = Scenario::new();
    s.publish(fx.real.clone());

    let installed = s.fetch().await.expect("a good release installs");
    let path = s.dir.version(VERSION);
    assert_eq!(installed.version, version());
    assert_eq!(installed.path, path);
    assert_eq!(installed.manifest, fx.real_manifest);

    // Flat, with our modes, and nothing else (SPEC §2).
    let mut names: Vec<String> = fs::read_dir(&path)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(
        names,
        [MANIFEST, SIGNATURE, "waiaas-daemon", "waiaas-launcher"]
    );
    let mode = |name: &str| fs::metadata(path.join(name)).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode("waiaas-daemon"), 0o755);
    assert_eq!(mode("waiaas-launcher"), 0o755);
    assert_eq!(mode(MANIFEST), 0o644);
    assert_eq!(
        fs::read(path.join("waiaas-daemon")).unwrap(),
        fs::read(testkit::daemon_binary()).unwrap()
    );
    // The installed daemon runs and is this build.
    let out = Command::new(path.join("waiaas-daemon"))
        .arg("--version")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains(VERSION));

    // Nothing left behind; `current` untouched; the registry asked politely.
    let versions: Vec<String> = fs::read_dir(s.dir.versions())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(versions.len(), 2, "{versions:?}");
    assert_eq!(
        fs::read_link(s.dir.current()).unwrap(),
        Path::new("versions/1.8.0")
    );
    assert_eq!(s.registry.hits(&Registry::packument_path(CLI_PACKAGE)), 1);
    assert_eq!(
        s.registry
            .hits(&Registry::packument_path(&platform_package(target()))),
        1
    );
    assert_eq!(s.registry.hits(&s.tarball_path()), 1);
    let agent = format!("waiaas/{VERSION}");
    assert!(
        s.registry.user_agents().iter().all(|ua| *ua == agent),
        "{:?}",
        s.registry.user_agents()
    );

    // It verifies as installed.
    let again = package::verify_installed(&s.dir, &s.config, &version()).unwrap();
    assert_eq!(again, installed);
}

#[tokio::test]
async fn download_progress_counts_every_byte() {
    let fx = fixture();
    // The real package: large enough to arrive in many chunks.
    let size = fx.real.len() as u64;
    let fetch_counting = |s: Scenario| async move {
        let mut calls: Vec<Downloaded> = Vec::new();
        package::fetch(&s.dir, &s.config, &version(), &mut |d| calls.push(d))
            .await
            .expect("a good release installs");
        (s, calls)
    };
    let assert_counted = |calls: &[Downloaded], total: Option<u64>| {
        assert!(calls.len() > 2, "{} calls", calls.len());
        assert_eq!(calls[0], Downloaded { done: 0, total });
        assert!(
            calls.windows(2).all(|w| w[0].done <= w[1].done),
            "done went backwards"
        );
        assert_eq!(calls.last().unwrap().done, size);
        assert!(calls.iter().all(|c| c.total == total), "total changed");
    };

    // With a Content-Length, `total` is the tarball's size from the start.
    let s = Scenario::new();
    s.publish(fx.real.clone());
    let (s, calls) = fetch_counting(s).await;
    assert_counted(&calls, Some(size));
    // A good installed version is reused: nothing downloaded, nothing reported.
    let (_, calls) = fetch_counting(s).await;
    assert!(calls.is_empty(), "{calls:?}");

    // Without one, every byte is counted all the same.
    let s = Scenario::new();
    s.publish(fx.real.clone());
    s.registry
        .serve(&s.tarball_path(), Reply::NoLength(fx.real.clone()));
    let (_, calls) = fetch_counting(s).await;
    assert_counted(&calls, None);
}

#[tokio::test]
async fn latest_follows_the_channel() {
    let s = Scenario::new();
    s.registry.publish(CLI_PACKAGE, "1.9.0", b"x".to_vec());
    s.registry.set_tag(CLI_PACKAGE, "rc", "2.0.0-rc.1");
    assert_eq!(
        package::latest(&s.config).await.unwrap().to_string(),
        "1.9.0"
    );
    let mut rc = s.config.clone();
    rc.update.channel = "rc".into();
    assert_eq!(
        package::latest(&rc).await.unwrap().to_string(),
        "2.0.0-rc.1"
    );

    s.registry.set_tag(CLI_PACKAGE, "latest", "2.0.0-rc.1");
    let msg = package::latest(&s.config).await.unwrap_err().to_string();
    assert!(msg.contains("prerelease"), "{msg}");
}

#[tokio::test]
async fn releases_list_publish_times_deprecations_and_the_tag() {
    let s = Scenario::new();
    let before = now_unix_ms();
    for v in ["1.9.0", "1.9.1", "not-semver", "2.0.0-rc.1"] {
        s.registry.publish(CLI_PACKAGE, v, b"x".to_vec());
    }
    let after = now_unix_ms();
    s.registry.set_tag(CLI_PACKAGE, "latest", "1.9.1");
    s.registry.set_tag(CLI_PACKAGE, "rc", "2.0.0-rc.1");
    s.registry
        .deprecate(CLI_PACKAGE, "1.9.1", "corrupts the ledger; use 1.9.2");

    let listing = package::releases(&s.config).await.unwrap();
    assert_eq!(listing.tag.to_string(), "1.9.1");
    let shown: Vec<(String, Option<String>)> = listing
        .releases
        .iter()
        .map(|r| (r.version.to_string(), r.deprecated.clone()))
        .collect();
    assert_eq!(
        shown,
        [
            ("1.9.0".into(), None),
            (
                "1.9.1".into(),
                Some("corrupts the ledger; use 1.9.2".into())
            ),
            ("2.0.0-rc.1".into(), None),
        ],
        "not-semver is skipped"
    );
    for release in &listing.releases {
        let at = release.published_unix_ms.expect("a publish time");
        // The registry writes milliseconds; allow for its rounding.
        assert!((before - 1..=after + 1).contains(&at), "{release:?}");
    }
    let v191 = Version::parse("1.9.1").unwrap();
    assert_eq!(listing.release(&v191), Some(&listing.releases[1]));
    // One full packument: nothing else asked, not the abbreviated form.
    assert_eq!(s.registry.total_hits(), 1);

    let mut rc = s.config.clone();
    rc.update.channel = "rc".into();
    let listing = package::releases(&rc).await.unwrap();
    assert_eq!(listing.tag.to_string(), "2.0.0-rc.1");
    s.registry.set_tag(CLI_PACKAGE, "latest", "2.0.0-rc.1");
    let message = package::releases(&s.config).await.unwrap_err().to_string();
    assert!(message.contains("prerelease"), "{message}");
    s.registry.serve(
        &Registry::packument_path(CLI_PACKAGE),
        Reply::Body(b"<html>".to_vec(), "text/html"),
    );
    let message = package::releases(&s.config).await.unwrap_err().to_string();
    assert!(
        message.contains("the packument of @waiaas/cli"),
        "{message}"
    );
}

fn now_unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// A small signed package whose `release.json` carries a 48 h rollout.
fn with_rollout(signed: Signed) -> Vec<u8> {
    let files = payload();
    let mut manifest = manifest_of(&files);
    manifest.rollout_seconds = Some(48 * 3600);
    tgz(&package_entries(&files, &manifest, signed))
}

#[tokio::test]
async fn signed_release_reads_the_rollout_and_installs_nothing() {
    let s = Scenario::new();
    s.publish(with_rollout(Signed::Trusted));
    let manifest = package::signed_release(&s.dir, &s.config, &version())
        .await
        .expect("a good package is read");
    assert_eq!(manifest.rollout_seconds, Some(48 * 3600));
    assert_eq!(manifest.version, VERSION);
    s.assert_unchanged();

    // Once installed, it is read from versions/<v>: no download.
    s.fetch().await.expect("it installs");
    let downloads = s.registry.hits(&s.tarball_path());
    let again = package::signed_release(&s.dir, &s.config, &version())
        .await
        .unwrap();
    assert_eq!(again, manifest);
    assert_eq!(s.registry.hits(&s.tarball_path()), downloads);
}

#[tokio::test]
async fn signed_release_refuses_a_tampered_package_and_leaves_nothing() {
    let s = Scenario::new();
    s.publish(with_rollout(Signed::OtherBytes));
    s.assert_refused(
        package::signed_release(&s.dir, &s.config, &version()).await,
        "signature check failed",
    );

    // A rollout edited after signing: the signature no longer holds.
    let s = Scenario::new();
    let files = payload();
    let mut manifest = manifest_of(&files);
    manifest.rollout_seconds = Some(48 * 3600);
    let mut entries = package_entries(&files, &manifest, Signed::Trusted);
    manifest.rollout_seconds = Some(0);
    let name = format!("package/{MANIFEST}");
    let at = entries.iter().position(|e| e.path == name).unwrap();
    entries[at] = Entry::file(name, serde_json::to_vec_pretty(&manifest).unwrap(), 0o644);
    s.publish(tgz(&entries));
    s.assert_refused(
        package::signed_release(&s.dir, &s.config, &version()).await,
        "signature check failed",
    );

    // Bytes that are not what the registry promised.
    let s = Scenario::new();
    let good = with_rollout(Signed::Trusted);
    let integrity = testkit::registry::sri_sha512(&good);
    let mut bad = good;
    let last = bad.len() - 1;
    bad[last] ^= 1;
    s.registry.publish(CLI_PACKAGE, VERSION, b"x".to_vec());
    s.registry
        .publish_with_integrity(&platform_package(target()), VERSION, bad, &integrity);
    s.assert_refused(
        package::signed_release(&s.dir, &s.config, &version()).await,
        "integrity check failed",
    );
}

// ---------------------------------------------------------------------------
// Refusals: integrity, signature, manifest, files, entries, size.

#[tokio::test]
async fn one_flipped_byte_fails_integrity() {
    let s = Scenario::new();
    let good = good_small();
    let integrity = testkit::registry::sri_sha512(&good);
    let mut bad = good;
    let middle = bad.len() / 2;
    bad[middle] ^= 0x01;
    s.registry
        .publish(CLI_PACKAGE, VERSION, b"the cli package".to_vec());
    s.registry
        .publish_with_integrity(&platform_package(target()), VERSION, bad, &integrity);
    s.assert_refused(
        s.fetch().await,
        "integrity check failed: the downloaded tarball's sha512 does not match dist.integrity",
    );
    assert_eq!(s.registry.hits(&s.tarball_path()), 1);
}

#[tokio::test]
async fn unsigned_release_json_is_refused() {
    let s = Scenario::new();
    let files = payload();
    s.publish(tgz(&package_entries(
        &files,
        &manifest_of(&files),
        Signed::Unsigned,
    )));
    let msg = s.assert_refused(s.fetch().await, "signature check failed");
    assert!(msg.contains("unsigned"), "{msg}");
}

#[tokio::test]
async fn wrongly_signed_release_json_is_refused() {
    let s = Scenario::new();
    let files = payload();
    s.publish(tgz(&package_entries(
        &files,
        &manifest_of(&files),
        Signed::OtherBytes,
    )));
    let msg = s.assert_refused(s.fetch().await, "signature check failed");
    assert!(msg.contains("does not match its signature"), "{msg}");
}

#[tokio::test]
async fn signature_by_an_unknown_key_is_refused() {
    let s = Scenario::new();
    let files = payload();
    s.publish(tgz(&package_entries(
        &files,
        &manifest_of(&files),
        Signed::Unknown,
    )));
    s.assert_refused(
        s.fetch().await,
        "signature check failed: release.json is not signed by a trusted key (trusted: 0 built-in, 1 configured)",
    );
}

#[tokio::test]
async fn release_json_naming_another_version_is_refused() {
    let s = Scenario::new();
    let files = payload();
    let mut manifest = manifest_of(&files);
    manifest.version = "1.9.0".into();
    s.publish(tgz(&package_entries(&files, &manifest, Signed::Trusted)));
    s.assert_refused(
        s.fetch().await,
        &format!("release.json names version 1.9.0, but {VERSION} was asked for"),
    );
}

#[tokio::test]
async fn release_json_naming_another_target_is_refused() {
    let s = Scenario::new();
    let other = if target() == "linux-arm64" {
        "linux-x64"
    } else {
        "linux-arm64"
    };
    let files = payload();
    let mut manifest = manifest_of(&files);
    manifest.target = other.into();
    manifest.name = platform_package(other);
    s.publish(tgz(&package_entries(&files, &manifest, Signed::Trusted)));
    s.assert_refused(
        s.fetch().await,
        &format!(
            "release.json names target {other}, but this machine is {}",
            target()
        ),
    );
}

#[tokio::test]
async fn release_json_naming_another_package_is_refused() {
    let s = Scenario::new();
    let files = payload();
    let mut manifest = manifest_of(&files);
    manifest.name = CLI_PACKAGE.into();
    s.publish(tgz(&package_entries(&files, &manifest, Signed::Trusted)));
    s.assert_refused(s.fetch().await, "release.json names package @waiaas/cli,");
}

#[tokio::test]
async fn a_file_whose_hash_differs_is_refused() {
    let s = Scenario::new();
    let files = payload();
    let manifest = manifest_of(&files);
    let mut tampered = files.clone();
    tampered[2].1[20] ^= 0x20;
    s.publish(tgz(&package_entries(&tampered, &manifest, Signed::Trusted)));
    s.assert_refused(
        s.fetch().await,
        "file check failed: bin/waiaas-daemon has sha256",
    );
}

#[tokio::test]
async fn an_extra_file_is_refused_without_being_written() {
    // Whether it comes before or after release.json in the archive.
    let files = payload();
    let extra = || Entry::file("package/bin/helper.sh", b"#!/bin/sh\n".to_vec(), 0o755);
    let signed = package_entries(&files, &manifest_of(&files), Signed::Trusted);
    let mut first = vec![extra()];
    first.extend(signed.iter().cloned());
    for entries in [first, [signed.clone(), vec![extra()]].concat()] {
        let s = Scenario::new();
        s.publish(tgz(&entries));
        let watcher = Watcher::start(s.dir.versions());
        let result = s.fetch().await;
        let seen = watcher.seen();
        s.assert_refused(
            result,
            "file check failed: the package holds bin/helper.sh, which release.json does not list",
        );
        // Only the download itself: no partial folder, no file of the package.
        assert!(
            seen.iter()
                .all(|p| p.starts_with("1.8.0") || p.ends_with(".download.tgz")),
            "{seen:?}"
        );
    }
}

#[tokio::test]
async fn a_listed_file_missing_from_the_package_is_refused() {
    let s = Scenario::new();
    let files = payload();
    let manifest = manifest_of(&files);
    s.publish(tgz(&package_entries(
        &files[..2],
        &manifest,
        Signed::Trusted,
    )));
    s.assert_refused(
        s.fetch().await,
        "file check failed: release.json lists bin/waiaas-daemon, which is not in the package",
    );
}

#[tokio::test]
async fn path_traversal_entry_is_refused() {
    for path in ["../evil", "package/../../evil", "package/bin/../../../evil"] {
        let s = Scenario::new();
        s.publish(small_with(vec![Entry::file(
            path,
            b"owned".to_vec(),
            0o755,
        )]));
        s.assert_refused(
            s.fetch().await,
            &format!("unsafe entry in the package: {path} (path escapes the package)"),
        );
        let everything = snapshot(s.tmp.path());
        assert!(
            everything.iter().all(|(p, _)| !p.ends_with("evil")),
            "{everything:?}"
        );
    }
}

#[tokio::test]
async fn absolute_path_entry_is_refused() {
    let s = Scenario::new();
    let victim = s.tmp.path().join("victim");
    let path = victim.to_string_lossy().into_owned();
    s.publish(small_with(vec![Entry::file(
        &path,
        b"owned".to_vec(),
        0o644,
    )]));
    s.assert_refused(
        s.fetch().await,
        &format!("unsafe entry in the package: {path} (absolute path)"),
    );
    assert!(!victim.exists());
}

#[tokio::test]
async fn symlink_entry_is_refused() {
    let s = Scenario::new();
    let files = payload();
    let manifest = manifest_of(&files);
    let mut entries = package_entries(&files, &manifest, Signed::Trusted);
    // The daemon, replaced by a link to a shell.
    let daemon = entries
        .iter_mut()
        .find(|e| e.path == "package/bin/waiaas-daemon")
        .unwrap();
    *daemon = Entry::symlink("package/bin/waiaas-daemon", "/bin/sh");
    s.publish(tgz(&entries));
    s.assert_refused(
        s.fetch().await,
        "unsafe entry in the package: package/bin/waiaas-daemon (links are not allowed)",
    );

    // Hard links and FIFOs are refused as well.
    for entry in [
        Entry::hardlink("package/bin/h", "package/bin/waiaas-daemon"),
        Entry::fifo("package/bin/p"),
    ] {
        let s = Scenario::new();
        let expected = match entry.kind {
            EntryKind::Fifo => "(special files are not allowed)",
            _ => "(links are not allowed)",
        };
        s.publish(small_with(vec![entry]));
        s.assert_refused(s.fetch().await, expected);
    }
}

#[tokio::test]
async fn a_duplicate_path_is_refused() {
    let s = Scenario::new();
    s.publish(small_with(vec![Entry::file(
        "package/bin/waiaas-daemon",
        b"#!/bin/sh\necho evil\n".to_vec(),
        0o755,
    )]));
    s.assert_refused(
        s.fetch().await,
        "unsafe entry in the package: package/bin/waiaas-daemon (the path appears twice in the archive)",
    );
}

#[tokio::test]
async fn oversized_download_is_refused() {
    let limits = Limits {
        tarball_bytes: 1024,
        ..Limits::default()
    };
    let package = good_small();
    assert!(package.len() > 1024);

    // Refused on the announced Content-Length.
    let s = Scenario::new();
    s.publish(package.clone());
    s.assert_refused(
        s.fetch_with(&limits).await,
        "the download is larger than the 1 KiB cap",
    );

    // And while streaming, when no length is announced.
    let s = Scenario::new();
    s.publish(package.clone());
    s.registry
        .serve(&s.tarball_path(), Reply::NoLength(package));
    s.assert_refused(
        s.fetch_with(&limits).await,
        "the download is larger than the 1 KiB cap",
    );

    // The default cap is 512 MiB.
    assert_eq!(Limits::default().tarball_bytes, 512 << 20);
    let msg = PackageError::TooLarge {
        cap: Limits::default().tarball_bytes,
    }
    .to_string();
    assert_eq!(msg, "the download is larger than the 512 MiB cap");
}

#[tokio::test]
async fn an_oversized_packument_is_refused() {
    let s = Scenario::new();
    s.publish(good_small());
    let limits = Limits {
        packument_bytes: 64,
        ..Limits::default()
    };
    s.assert_refused(
        s.fetch_with(&limits).await,
        "the registry's answer for the packument of @waiaas/cli is larger than the 64 bytes cap",
    );
}

#[tokio::test]
async fn the_unsigned_bomb_is_refused_before_anything_is_written() {
    // As it is, the entry-count cap stops it; with that cap raised out of the
    // way, the missing signature does — in both cases before any write.
    let roomy = Limits {
        entries: 30_000,
        ..Limits::default()
    };
    let cases = [
        (
            Limits::default(),
            "the package has more than 1024 entries (the cap on the number of entries)",
        ),
        (
            roomy,
            "signature check failed: the package has no release.json.minisig: release.json is unsigned",
        ),
    ];
    for (limits, expected) in cases {
        // Through the registry: only the download is ever written.
        let s = Scenario::new();
        s.publish(bomb().to_vec());
        let watcher = Watcher::start(s.dir.versions());
        let result = s.fetch_with(&limits).await;
        let seen = watcher.seen();
        s.assert_refused(result, expected);
        assert!(
            seen.iter()
                .all(|p| p.starts_with("1.8.0") || p.ends_with(".download.tgz")),
            "{seen:?}"
        );

        // From a file (`upgrade --from`): nothing at all.
        let s = Scenario::new();
        let file = s.file("bomb.tgz", bomb());
        let watcher = Watcher::start(s.dir.versions());
        let result = package::install_file_with_limits(&s.dir, &s.config, &file, None, &limits);
        let seen = watcher.seen();
        s.assert_refused(result, expected);
        assert!(seen.iter().all(|p| p.starts_with("1.8.0")), "{seen:?}");
    }
}

#[tokio::test]
async fn each_cap_on_the_archive_is_named() {
    // A good small package: five entries, names up to 28 bytes, ~8 KiB.
    let cases = [
        (
            Limits {
                entries: 4,
                ..Limits::default()
            },
            "the package has more than 4 entries (the cap on the number of entries)",
        ),
        (
            Limits {
                entry_name_bytes: 20,
                ..Limits::default()
            },
            "an entry's name is longer than the 20-byte cap on entry names: package/",
        ),
        (
            Limits {
                unpacked_bytes: 4096,
                ..Limits::default()
            },
            "the unpacked package is larger than the 4 KiB cap",
        ),
    ];
    for (limits, expected) in cases {
        let s = Scenario::new();
        s.publish(good_small());
        s.assert_refused(s.fetch_with(&limits).await, expected);
    }
    // The defaults.
    let limits = Limits::default();
    assert_eq!(
        (
            limits.entries,
            limits.entry_name_bytes,
            limits.unpacked_bytes
        ),
        (1024, 256, 2048 << 20)
    );
}

// ---------------------------------------------------------------------------
// `--from FILE`, reuse and replacement, keys, registry failures.

#[tokio::test]
async fn install_file_checks_everything_but_integrity() {
    // A good file installs with no registry involved at all.
    let s = Scenario::new();
    let file = s.file("release.tgz", &good_small());
    let installed = package::install_file(&s.dir, &s.config, &file, None).unwrap();
    assert_eq!(installed.version, version());
    assert!(s.dir.version(VERSION).join("waiaas-daemon").is_file());
    assert_eq!(s.registry.total_hits(), 0);
    // Again, with the version given: the installed one is reused.
    let again = package::install_file(&s.dir, &s.config, &file, Some(&version())).unwrap();
    assert_eq!(again, installed);

    // Every other check still applies.
    let files = payload();
    let manifest = manifest_of(&files);
    let mut tampered = files.clone();
    tampered[1].1[30] ^= 0x01;
    let mut other_version = manifest.clone();
    other_version.version = "1.9.0".into();
    let cases: Vec<(Vec<u8>, Option<Version>, String)> = vec![
        (
            tgz(&package_entries(&tampered, &manifest, Signed::Trusted)),
            None,
            "file check failed: bin/waiaas-launcher has sha256".into(),
        ),
        (
            tgz(&package_entries(&files, &manifest, Signed::Unknown)),
            None,
            "signature check failed".into(),
        ),
        (
            tgz(&package_entries(&files, &manifest, Signed::Unsigned)),
            None,
            "signature check failed".into(),
        ),
        (
            tgz(&package_entries(&files, &other_version, Signed::Trusted)),
            Some(version()),
            format!("release.json names version 1.9.0, but {VERSION} was asked for"),
        ),
        (
            good_small(),
            Some(Version::parse("1.9.0").unwrap()),
            format!("release.json names version {VERSION}, but 1.9.0 was asked for"),
        ),
        (
            small_with(vec![Entry::file("../evil", b"x".to_vec(), 0o644)]),
            None,
            "unsafe entry in the package: ../evil (path escapes the package)".into(),
        ),
        (
            b"<html>not a package</html>".to_vec(),
            None,
            "not a readable .tgz".into(),
        ),
    ];
    for (bytes, expected_version, expected) in cases {
        let s = Scenario::new();
        let file = s.file("release.tgz", &bytes);
        s.assert_refused(
            package::install_file(&s.dir, &s.config, &file, expected_version.as_ref()),
            &expected,
        );
        assert_eq!(s.registry.total_hits(), 0);
    }

    // The size cap holds for files too.
    let s = Scenario::new();
    let file = s.file("release.tgz", &good_small());
    let limits = Limits {
        tarball_bytes: 1024,
        ..Limits::default()
    };
    s.assert_refused(
        package::install_file_with_limits(&s.dir, &s.config, &file, None, &limits),
        "larger than the 1 KiB cap",
    );
}

#[tokio::test]
async fn an_existing_good_version_is_reused_and_a_tampered_one_replaced() {
    let s = Scenario::new();
    s.publish(good_small());
    let first = s.fetch().await.unwrap();
    assert_eq!(s.registry.hits(&s.tarball_path()), 1);

    // Good: reused without asking the registry anything.
    let before = s.registry.total_hits();
    let second = s.fetch().await.unwrap();
    assert_eq!(second, first);
    assert_eq!(s.registry.total_hits(), before);

    // Tampered: verification names the file, and a fetch installs afresh.
    let daemon = first.path.join("waiaas-daemon");
    let mut bytes = fs::read(&daemon).unwrap();
    bytes.extend_from_slice(b"\necho tampered\n");
    fs::write(&daemon, &bytes).unwrap();
    let msg = package::verify_installed(&s.dir, &s.config, &version())
        .unwrap_err()
        .to_string();
    assert!(
        msg.starts_with("file check failed: waiaas-daemon has sha256"),
        "{msg}"
    );
    let third = s.fetch().await.unwrap();
    assert_eq!(third, first);
    assert_eq!(s.registry.hits(&s.tarball_path()), 2);
    package::verify_installed(&s.dir, &s.config, &version()).unwrap();
    assert!(!fs::read(&daemon).unwrap().ends_with(b"tampered\n"));

    // An extra file in the folder is a failed verification too.
    fs::write(first.path.join("stowaway"), b"x").unwrap();
    let msg = package::verify_installed(&s.dir, &s.config, &version())
        .unwrap_err()
        .to_string();
    assert!(msg.contains("holds stowaway"), "{msg}");
    // As is a missing release.json (e.g. a local build installed by `init`).
    let msg = package::verify_installed(&s.dir, &s.config, &Version::parse("1.8.0").unwrap())
        .unwrap_err()
        .to_string();
    assert!(
        msg.ends_with("1.8.0 has no release.json, so it cannot be verified"),
        "{msg}"
    );
    let msg = package::verify_installed(&s.dir, &s.config, &Version::parse("9.9.9").unwrap())
        .unwrap_err()
        .to_string();
    assert!(msg.ends_with("WAIaaS 9.9.9 is not installed"), "{msg}");
    s.fetch().await.unwrap();
    assert!(!first.path.join("stowaway").exists());

    // Nothing but the two versions under versions/.
    let mut names: Vec<String> = fs::read_dir(s.dir.versions())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["1.8.0", VERSION]);

    // A bad replacement download leaves the bad installed version as it was.
    fs::write(&daemon, b"tampered again").unwrap();
    s.registry.serve(
        &s.tarball_path(),
        Reply::Body(b"garbage".to_vec(), "application/octet-stream"),
    );
    let before = snapshot(s.tmp.path());
    let msg = s.fetch().await.unwrap_err().to_string();
    assert!(msg.starts_with("integrity check failed"), "{msg}");
    assert_eq!(snapshot(s.tmp.path()), before);
}

#[tokio::test]
async fn leftovers_of_an_interrupted_install_are_cleared() {
    let s = Scenario::new();
    s.publish(good_small());
    let versions = s.dir.versions();
    let partial = versions.join(format!("{VERSION}.partial"));
    fs::create_dir_all(partial.join("bin")).unwrap();
    fs::write(partial.join("bin/junk"), b"junk").unwrap();
    fs::write(versions.join(format!(".{VERSION}.download.tgz")), b"half").unwrap();
    s.fetch().await.unwrap();
    let mut names: Vec<String> = fs::read_dir(&versions)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["1.8.0", VERSION]);
}

#[tokio::test]
async fn a_stalled_or_cancelled_download_leaves_nothing_behind() {
    let stall = |s: &Scenario| {
        s.publish(good_small());
        s.registry.serve(
            &s.tarball_path(),
            Reply::Stall {
                body: good_small()[..512].to_vec(),
                silence: Duration::from_secs(3),
            },
        );
    };

    // The per-read timeout ends a download that stops moving.
    let s = Scenario::new();
    stall(&s);
    let limits = Limits {
        read_timeout: Duration::from_millis(300),
        ..Limits::default()
    };
    s.assert_refused(s.fetch_with(&limits).await, "failed: timed out");

    // A caller that gives up (the future is dropped mid-download) leaves no
    // temp file either.
    let s = Scenario::new();
    stall(&s);
    let gave_up = tokio::time::timeout(Duration::from_millis(500), s.fetch()).await;
    assert!(gave_up.is_err(), "the download should still be waiting");
    s.assert_unchanged();
}

#[tokio::test]
async fn a_bad_version_that_current_points_at_is_left_alone() {
    let s = Scenario::new();
    s.publish(good_small());
    s.fetch().await.unwrap();
    let current = s.dir.current();
    fs::remove_file(&current).unwrap();
    std::os::unix::fs::symlink(format!("versions/{VERSION}"), &current).unwrap();
    fs::write(s.dir.version(VERSION).join("waiaas-daemon"), b"tampered").unwrap();
    let before = snapshot(s.tmp.path());
    let hits = s.registry.total_hits();
    let msg = s.fetch().await.unwrap_err().to_string();
    assert!(msg.contains("`current` points at it"), "{msg}");
    assert_eq!(snapshot(s.tmp.path()), before);
    assert_eq!(s.registry.total_hits(), hits);
}

#[tokio::test]
async fn no_trusted_key_is_a_clear_refusal() {
    if !package::built_in_keys().is_empty() {
        eprintln!("skipped: this build has built-in release keys (WAIAAS_RELEASE_PUBKEYS)");
        return;
    }
    let mut s = Scenario::new();
    s.publish(good_small());
    s.config.update.trusted_keys.clear();
    assert!(package::trusted_keys(&s.config).is_empty());
    let expected = "no trusted release key";
    let msg = s.assert_refused(s.fetch().await, expected);
    assert!(
        msg.contains("trusted_keys") && msg.contains("[update]"),
        "{msg}"
    );
    let file = s.file("release.tgz", &good_small());
    s.assert_refused(
        package::install_file(&s.dir, &s.config, &file, None),
        expected,
    );
    assert_eq!(s.registry.total_hits(), 0, "nothing is fetched");

    // A configured key that is not a key is named.
    s.config.update.trusted_keys = vec!["RWQnot-a-key".into()];
    s.assert_refused(
        s.fetch().await,
        "trusted key #1 of [update] trusted_keys (`RWQnot-a-key`) is not a minisign public key",
    );
}

#[tokio::test]
async fn registry_garbage_is_a_clear_error() {
    let platform = platform_package(target());
    let cli_path = Registry::packument_path(CLI_PACKAGE);
    let platform_path = Registry::packument_path(&platform);

    // Each case: how the registry (otherwise serving a good release)
    // misbehaves, and what the message must say.
    type Setup = Box<dyn Fn(&Scenario)>;
    let publish_cli_only = |version: &'static str| -> Setup {
        Box::new(move |s: &Scenario| {
            s.registry.publish(CLI_PACKAGE, version, b"x".to_vec());
            s.registry
                .publish(&platform_package(target()), "1.0.0", good_small());
        })
    };
    let cases: Vec<(Setup, String)> = vec![
        (
            Box::new({
                let cli_path = cli_path.clone();
                move |s| {
                    s.publish(good_small());
                    s.registry
                        .serve(&cli_path, Reply::Body(b"<html>".to_vec(), "text/html"));
                }
            }),
            "the registry's answer for the packument of @waiaas/cli is unusable: not a packument"
                .into(),
        ),
        (
            Box::new({
                let cli_path = cli_path.clone();
                move |s| {
                    s.publish(good_small());
                    s.registry.serve(&cli_path, Reply::Status(500));
                }
            }),
            "the registry answered HTTP 500 for the packument of @waiaas/cli".into(),
        ),
        (
            Box::new(move |s| {
                s.publish(good_small());
                s.registry.serve(
                    &platform_path,
                    Reply::Body(
                        br#"{"name":"left-pad","versions":{}}"#.to_vec(),
                        "application/json",
                    ),
                );
            }),
            format!("the registry answered with the packument of left-pad, not {platform}"),
        ),
        (
            publish_cli_only("1.0.0"),
            format!("WAIaaS {VERSION} is not on the registry"),
        ),
        (
            publish_cli_only(VERSION),
            format!("WAIaaS {VERSION} has no package for this platform"),
        ),
        (
            Box::new(|s| {
                s.publish(good_small());
                s.registry.serve(
                    &s.tarball_path(),
                    Reply::Truncated {
                        body: good_small()[..100].to_vec(),
                        declared: 5000,
                    },
                );
            }),
            "downloading http://127.0.0.1:".into(),
        ),
        (
            Box::new(|s| {
                s.publish(good_small());
                s.registry.serve(&s.tarball_path(), Reply::Status(404));
            }),
            "failed: HTTP 404".into(),
        ),
        (
            Box::new(|s| s.publish(b"<html>not a tarball</html>".to_vec())),
            "the package is not a readable .tgz".into(),
        ),
        (
            Box::new(|s| {
                s.registry.publish(CLI_PACKAGE, VERSION, b"x".to_vec());
                s.registry.publish_with_integrity(
                    &platform_package(target()),
                    VERSION,
                    good_small(),
                    "sha1-AAAAAAAAAAAAAAAAAAAAAAAAAAA=",
                );
            }),
            "integrity check failed: dist.integrity of".into(),
        ),
    ];
    for (setup, expected) in cases {
        let s = Scenario::new();
        setup(&s);
        s.assert_refused(s.fetch().await, &expected);
    }

    // Nobody listening.
    let mut s = Scenario::new();
    s.config.update.registry = Some(format!("http://127.0.0.1:{}", testkit::free_port()));
    s.assert_refused(
        s.fetch().await,
        "registry request for the packument of @waiaas/cli failed",
    );
}

// ---------------------------------------------------------------------------
// Interop with the reference `minisign` tool (Debian's package, installed by
// `reference_minisign` when missing).

/// A scenario that trusts only a key pair made by `minisign -G -W`: the
/// tool, the scenario, the secret key's file and the public key (`RW…`).
/// `None` when the tool cannot be had (see `reference_minisign`).
fn reference_scenario() -> Option<(PathBuf, Scenario, PathBuf, String)> {
    let minisign = waiaas_packaging::reference_minisign()?;
    let mut s = Scenario::new();
    let (secret, public) = (s.tmp.path().join("ref.key"), s.tmp.path().join("ref.pub"));
    let made = Command::new(&minisign)
        .args(["-G", "-W", "-s"])
        .arg(&secret)
        .arg("-p")
        .arg(&public)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert!(made.status.success(), "{made:?}");
    let public = fs::read_to_string(&public).unwrap();
    let public = public.lines().nth(1).unwrap().to_string();
    s.config.update.trusted_keys = vec![public.clone()];
    Some((minisign, s, secret, public))
}

#[tokio::test]
async fn a_key_made_by_the_reference_minisign_packs_a_release_the_launcher_accepts() {
    let Some((_, s, secret, public)) = reference_scenario() else {
        return;
    };
    let bin_dir = testkit::daemon_binary().parent().unwrap().to_path_buf();
    let packed = waiaas_packaging::pack(&PackOptions {
        bin_dir,
        out_dir: s.tmp.path().join("out"),
        sign_key: secret,
        target: target().to_string(),
        also_targets: Vec::new(),
        rollout_seconds: None,
    })
    .expect("the reference tool's key packs");
    assert_eq!(packed.public_key, public);
    let installed =
        package::install_file(&s.dir, &s.config, &packed.platform_tarball, None).unwrap();
    assert_eq!(installed.manifest, packed.manifest);
}

#[tokio::test]
async fn a_signature_made_by_the_reference_minisign_verifies_with_the_launchers_keys() {
    let Some((minisign, s, secret, _)) = reference_scenario() else {
        return;
    };
    let files = payload();
    let manifest = manifest_of(&files);
    let entries = package_entries(&files, &manifest, Signed::Unsigned);
    let manifest = s.file(MANIFEST, &serde_json::to_vec_pretty(&manifest).unwrap());
    // Prehashed (minisign's default), then legacy (`-l`), which is refused.
    for (legacy, outcome) in [(false, None), (true, Some("legacy (non-prehashed)"))] {
        let mut sign = Command::new(&minisign);
        sign.arg("-S")
            .arg("-s")
            .arg(&secret)
            .arg("-m")
            .arg(&manifest);
        if legacy {
            sign.arg("-l");
        }
        let signed = sign.stdin(std::process::Stdio::null()).output().unwrap();
        assert!(signed.status.success(), "{signed:?}");
        let signature = fs::read(manifest.with_file_name(SIGNATURE)).unwrap();
        let mut package = entries.clone();
        package.push(Entry::file(
            format!("package/{SIGNATURE}"),
            signature,
            0o644,
        ));
        let file = s.file("release.tgz", &tgz(&package));
        let result = package::install_file(&s.dir, &s.config, &file, None);
        match outcome {
            None => assert_eq!(result.unwrap().version, version()),
            Some(expected) => {
                let msg = result.unwrap_err().to_string();
                assert!(msg.contains(expected), "{msg}");
            }
        }
        fs::remove_dir_all(s.dir.version(VERSION)).ok();
    }
}
