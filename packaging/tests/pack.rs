//! Packs the real workspace binaries with a throwaway key and checks the
//! result the way npm and the launcher will read it: real files, real
//! signatures, a real `node` (and `npm`, offline) when installed.
//!
//! Needs the workspace binaries: `cargo build --workspace` first.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use sha2::{Digest as _, Sha256};
use waiaas_packaging::{
    Entry, EntryKind, NPM_MTIME, PackError, PackOptions, Packed, ReleaseManifest, generate_keypair,
    pack, read_package_tarball, sri_sha512,
};
use waiaas_shared::release::this_target;

const ALSO: [&str; 3] = ["linux-arm64", "darwin-arm64", "linux-arm64"];

struct Fixture {
    _tmp: tempfile::TempDir,
    /// A snapshot of the workspace binaries (others may rebuild target/ meanwhile).
    bins: PathBuf,
    key: PathBuf,
    public: String,
    packed: Packed,
    target: String,
    version: String,
}

fn target() -> String {
    this_target()
        .expect("tests run on a shipped target")
        .to_string()
}

/// `target/<profile>/`, where cargo puts the workspace binaries.
fn workspace_bin_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().unwrap().parent().unwrap().to_path_buf(); // …/deps/.. → …/debug
    for name in ["waiaas-daemon", "waiaas-launcher"] {
        if !dir.join(name).is_file() {
            panic!(
                "{} is missing: build the workspace first: cargo build --workspace",
                dir.join(name).display()
            );
        }
    }
    dir
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let tmp = tempfile::tempdir().unwrap();
        let bins = tmp.path().join("bins");
        fs::create_dir(&bins).unwrap();
        let from = workspace_bin_dir();
        for name in ["waiaas-daemon", "waiaas-launcher"] {
            fs::copy(from.join(name), bins.join(name)).unwrap();
        }
        let (key, public) = generate_keypair(&tmp.path().join("key")).unwrap();
        let started = Instant::now();
        let packed = pack(&PackOptions {
            bin_dir: bins.clone(),
            out_dir: tmp.path().join("out"),
            sign_key: key.clone(),
            target: target(),
            also_targets: ALSO.iter().map(|s| s.to_string()).collect(),
            rollout_seconds: None,
        })
        .unwrap();
        eprintln!(
            "one pack of the debug binaries took {:?}",
            started.elapsed()
        );
        let version = daemon_json(&bins)["version"].as_str().unwrap().to_string();
        Fixture {
            _tmp: tmp,
            bins,
            key,
            public,
            packed,
            target: target(),
            version,
        }
    })
}

fn daemon_json(bins: &Path) -> serde_json::Value {
    let out = Command::new(bins.join("waiaas-daemon"))
        .args(["--version", "--json"])
        .output()
        .unwrap();
    assert!(out.status.success());
    serde_json::from_slice(&out.stdout).unwrap()
}

fn entries(path: &Path) -> BTreeMap<String, Entry> {
    read_package_tarball(path)
        .unwrap()
        .into_iter()
        .map(|e| (e.path.clone(), e))
        .collect()
}

fn contents<'a>(entries: &'a BTreeMap<String, Entry>, path: &str) -> &'a [u8] {
    match &entries[path].kind {
        EntryKind::File { contents, .. } => contents,
        other => panic!("{path} is not a regular file: {other:?}"),
    }
}

fn json(entries: &BTreeMap<String, Entry>, path: &str) -> serde_json::Value {
    serde_json::from_slice(contents(entries, path)).unwrap()
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

#[test]
fn tarballs_are_named_like_npm_pack_and_hold_exactly_the_expected_entries() {
    let f = fixture();
    let (v, t) = (&f.version, &f.target);
    assert_eq!(
        f.packed.cli_tarball.file_name().unwrap().to_str().unwrap(),
        format!("waiaas-cli-{v}.tgz")
    );
    assert_eq!(
        f.packed
            .platform_tarball
            .file_name()
            .unwrap()
            .to_str()
            .unwrap(),
        format!("waiaas-cli-{t}-{v}.tgz")
    );

    let expect = |path: &Path, wanted: &[(&str, u32)]| {
        let got: Vec<(String, u32)> = read_package_tarball(path)
            .unwrap()
            .into_iter()
            .map(|e| match e.kind {
                EntryKind::File { mode, .. } => (e.path, mode),
                other => panic!("{}: only regular files expected, got {other:?}", e.path),
            })
            .collect();
        let wanted: Vec<(String, u32)> = wanted.iter().map(|(p, m)| (p.to_string(), *m)).collect();
        assert_eq!(got, wanted, "{}", path.display());
    };
    expect(
        &f.packed.platform_tarball,
        &[
            ("package/release.json", 0o644),
            ("package/release.json.minisig", 0o644),
            ("package/package.json", 0o644),
            ("package/bin/waiaas-launcher", 0o755),
            ("package/bin/waiaas-daemon", 0o755),
        ],
    );
    expect(
        &f.packed.cli_tarball,
        &[
            ("package/package.json", 0o644),
            ("package/README.md", 0o644),
            ("package/bin/waiaas-launcher.js", 0o755),
        ],
    );

    // Headers npm-pack style: owner 0:0, fixed mtime, gzip'd ustar.
    for path in [&f.packed.platform_tarball, &f.packed.cli_tarball] {
        let bytes = fs::read(path).unwrap();
        assert_eq!(&bytes[..2], &[0x1f, 0x8b], "gzip");
        let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(&bytes[..]));
        for entry in archive.entries().unwrap() {
            let entry = entry.unwrap();
            let header = entry.header();
            assert_eq!(header.mtime().unwrap(), NPM_MTIME);
            assert_eq!((header.uid().unwrap(), header.gid().unwrap()), (0, 0));
            assert!(header.as_ustar().is_some());
        }
    }
}

#[test]
fn the_manifest_names_the_release_and_the_binaries_sha256() {
    let f = fixture();
    let e = entries(&f.packed.platform_tarball);
    let manifest: ReleaseManifest =
        serde_json::from_slice(contents(&e, "package/release.json")).unwrap();
    assert_eq!(manifest, f.packed.manifest);

    let daemon = daemon_json(&f.bins);
    assert_eq!(manifest.name, format!("@waiaas/cli-{}", f.target));
    assert_eq!(manifest.version, f.version);
    assert_eq!(manifest.target, f.target);
    assert_eq!(manifest.schema_version as u64, daemon["schema_version"]);
    assert_eq!(
        manifest.min_compatible_schema_version as u64,
        daemon["min_compatible_schema_version"]
    );
    let mut want = BTreeMap::new();
    for name in ["waiaas-launcher", "waiaas-daemon"] {
        let on_disk = fs::read(f.bins.join(name)).unwrap();
        let in_package = contents(&e, &format!("package/bin/{name}"));
        assert!(on_disk == in_package, "{name} is packed byte for byte");
        want.insert(format!("bin/{name}"), sha256_hex(&on_disk));
    }
    assert_eq!(manifest.files, want);
}

#[test]
fn the_signature_verifies_with_the_printed_key_only_and_only_for_the_exact_bytes() {
    let f = fixture();
    assert_eq!(f.packed.public_key, f.public);
    let e = entries(&f.packed.platform_tarball);
    let manifest = contents(&e, "package/release.json");
    let minisig = std::str::from_utf8(contents(&e, "package/release.json.minisig")).unwrap();

    let signature = minisign_verify::Signature::decode(minisig).unwrap();
    let trusted = minisign_verify::PublicKey::from_base64(&f.packed.public_key).unwrap();
    trusted.verify(manifest, &signature, false).unwrap();
    assert!(
        signature
            .trusted_comment()
            .contains(&format!("@waiaas/cli-{}@{}", f.target, f.version)),
        "{}",
        signature.trusted_comment()
    );

    let other_dir = tempfile::tempdir().unwrap();
    let (_, other) = generate_keypair(other_dir.path()).unwrap();
    assert_ne!(other, f.public);
    let other = minisign_verify::PublicKey::from_base64(&other).unwrap();
    assert!(other.verify(manifest, &signature, false).is_err());

    for at in [0, manifest.len() / 2, manifest.len() - 1] {
        let mut tampered = manifest.to_vec();
        tampered[at] ^= 0x01;
        assert!(
            trusted.verify(&tampered, &signature, false).is_err(),
            "flipping byte {at} must break the signature"
        );
    }
    // The signature file itself is covered too: its trusted comment is signed.
    let forged = minisig.replace("trusted comment: ", "trusted comment: x");
    let forged = minisign_verify::Signature::decode(&forged).unwrap();
    assert!(trusted.verify(manifest, &forged, false).is_err());
}

#[test]
fn package_json_fields_follow_the_spec() {
    let f = fixture();
    let (v, t) = (f.version.as_str(), f.target.as_str());
    let (os, cpu) = t.split_once('-').unwrap();

    let platform = json(&entries(&f.packed.platform_tarball), "package/package.json");
    assert_eq!(platform["name"], format!("@waiaas/cli-{t}"));
    assert_eq!(platform["version"], v);
    assert_eq!(platform["os"], serde_json::json!([os]));
    assert_eq!(platform["cpu"], serde_json::json!([cpu]));
    assert_eq!(platform["preferUnplugged"], true);
    assert_eq!(platform["license"], "MIT");
    assert!(platform["description"].as_str().unwrap().contains(t));
    assert_eq!(
        platform["files"],
        serde_json::json!(["bin/", "release.json", "release.json.minisig"])
    );
    assert!(
        platform.get("bin").is_none(),
        "only @waiaas/cli links a command"
    );

    let cli = json(&entries(&f.packed.cli_tarball), "package/package.json");
    assert_eq!(cli["name"], "@waiaas/cli");
    assert_eq!(cli["version"], v);
    assert_eq!(
        cli["bin"],
        serde_json::json!({"waiaas-launcher": "bin/waiaas-launcher.js"})
    );
    let mut deps = serde_json::Map::new();
    for target in [t, "linux-arm64", "darwin-arm64"] {
        deps.insert(format!("@waiaas/cli-{target}"), v.into());
    }
    assert_eq!(cli["optionalDependencies"], serde_json::Value::Object(deps));
    assert!(cli["engines"]["node"].as_str().unwrap().starts_with(">="));
    assert_eq!(cli["license"], "MIT");
    assert!(cli.get("dependencies").is_none());
}

#[test]
fn packing_twice_is_byte_identical_and_the_cli_prints_paths_integrity_and_key() {
    let f = fixture();
    let out = tempfile::tempdir().unwrap();
    let mut args = vec![
        "--bin-dir".into(),
        f.bins.display().to_string(),
        "--out".into(),
        out.path().display().to_string(),
        "--sign-key".into(),
        f.key.display().to_string(),
        "--target".into(),
        f.target.clone(),
    ];
    for t in ALSO {
        args.extend(["--also-target".into(), t.to_string()]);
    }
    let run = Command::new(env!("CARGO_BIN_EXE_waiaas-pack"))
        .args(&args)
        .output()
        .unwrap();
    let stdout = String::from_utf8(run.stdout).unwrap();
    assert!(
        run.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&run.stderr)
    );

    let mut lines = Vec::new();
    for original in [&f.packed.cli_tarball, &f.packed.platform_tarball] {
        let again = out.path().join(original.file_name().unwrap());
        let (a, b) = (fs::read(original).unwrap(), fs::read(&again).unwrap());
        assert!(a == b, "{} differs between two packs", again.display());
        lines.push(format!("{} {}", again.display(), sri_sha512(&b)));
    }
    assert_eq!(
        sri_sha512(&fs::read(&f.packed.cli_tarball).unwrap()),
        f.packed.cli_integrity
    );
    assert_eq!(
        sri_sha512(&fs::read(&f.packed.platform_tarball).unwrap()),
        f.packed.platform_integrity
    );
    lines.push(format!("public key: {}", f.public));
    assert_eq!(stdout.lines().collect::<Vec<_>>(), lines);
}

#[test]
fn the_cli_signs_a_rollout_into_release_json_and_refuses_a_bad_one() {
    let f = fixture();
    let out = tempfile::tempdir().unwrap();
    let pack_with = |rollout: &str| {
        Command::new(env!("CARGO_BIN_EXE_waiaas-pack"))
            .args(["--bin-dir", &f.bins.display().to_string()])
            .args(["--out", &out.path().display().to_string()])
            .args(["--sign-key", &f.key.display().to_string()])
            .args(["--target", &f.target, "--rollout", rollout])
            .output()
            .unwrap()
    };
    let run = pack_with("48h");
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let platform = out
        .path()
        .join(f.packed.platform_tarball.file_name().unwrap());
    let e = entries(&platform);
    let manifest: ReleaseManifest =
        serde_json::from_slice(contents(&e, "package/release.json")).unwrap();
    assert_eq!(manifest.rollout_seconds, Some(48 * 3600));
    assert_eq!(
        f.packed.manifest.rollout_seconds, None,
        "absent unless asked"
    );
    let signature = minisign_verify::Signature::decode(
        std::str::from_utf8(contents(&e, "package/release.json.minisig")).unwrap(),
    )
    .unwrap();
    minisign_verify::PublicKey::from_base64(&f.public)
        .unwrap()
        .verify(contents(&e, "package/release.json"), &signature, false)
        .expect("the rollout is signed with the rest");

    let run = pack_with("2 days");
    assert!(!run.status.success());
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(
        stderr.contains("--rollout") && stderr.contains("48h"),
        "{stderr}"
    );
}

#[test]
fn a_launcher_and_daemon_of_different_versions_are_refused() {
    let f = fixture();
    let tmp = tempfile::tempdir().unwrap();
    let bins = tmp.path().join("bins");
    fs::create_dir(&bins).unwrap();
    fs::copy(f.bins.join("waiaas-daemon"), bins.join("waiaas-daemon")).unwrap();
    let script = bins.join("waiaas-launcher");
    fs::write(&script, "#!/bin/sh\necho 'waiaas-launcher 9.9.9'\n").unwrap();
    fs::set_permissions(&script, fs::Permissions::from_mode(0o755)).unwrap();
    let out = tmp.path().join("out");

    let err = pack(&PackOptions {
        bin_dir: bins.clone(),
        out_dir: out.clone(),
        sign_key: f.key.clone(),
        target: f.target.clone(),
        also_targets: vec![],
        rollout_seconds: None,
    })
    .unwrap_err();
    assert!(matches!(err, PackError::VersionMismatch { .. }), "{err:?}");
    let message = err.to_string();
    assert!(
        message.contains("9.9.9") && message.contains(&f.version),
        "{message}"
    );
    assert!(!out.exists(), "nothing is written for a refused pack");

    // The CLI says the same and exits non-zero.
    let run = Command::new(env!("CARGO_BIN_EXE_waiaas-pack"))
        .arg("--bin-dir")
        .arg(&bins)
        .arg("--out")
        .arg(&out)
        .arg("--sign-key")
        .arg(&f.key)
        .output()
        .unwrap();
    assert_eq!(run.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(
        stderr.contains("version mismatch") && stderr.contains("9.9.9"),
        "{stderr}"
    );
    assert!(run.stdout.is_empty());
}

#[test]
fn missing_binaries_bad_keys_and_unknown_targets_are_refused_clearly() {
    let f = fixture();
    let tmp = tempfile::tempdir().unwrap();
    let opts = |bin_dir: &Path, key: &Path, target: &str| PackOptions {
        bin_dir: bin_dir.to_path_buf(),
        out_dir: tmp.path().join("out"),
        sign_key: key.to_path_buf(),
        target: target.to_string(),
        also_targets: vec![],
        rollout_seconds: None,
    };

    let empty = tmp.path().join("empty");
    fs::create_dir(&empty).unwrap();
    let err = pack(&opts(&empty, &f.key, &f.target)).unwrap_err();
    assert!(matches!(err, PackError::MissingBinary { .. }), "{err:?}");
    assert!(err.to_string().contains("waiaas-launcher"), "{err}");

    let public_not_secret = f.key.with_file_name(waiaas_packaging::PUBLIC_KEY_FILE);
    let err = pack(&opts(&f.bins, &public_not_secret, &f.target)).unwrap_err();
    assert!(matches!(err, PackError::Key { .. }), "{err:?}");
    assert!(
        err.to_string().contains("unencrypted minisign secret key"),
        "{err}"
    );

    let err = pack(&opts(&f.bins, &f.key, "windows-x64")).unwrap_err();
    assert!(err.to_string().contains("linux-x64"), "{err}");

    let other = if f.target == "linux-x64" {
        "linux-arm64"
    } else {
        "linux-x64"
    };
    let err = pack(&opts(&f.bins, &f.key, other)).unwrap_err();
    assert!(
        matches!(err, PackError::WrongArchitecture { .. }),
        "{err:?}"
    );
    assert!(!tmp.path().join("out").exists());
}

#[test]
fn keygen_makes_a_key_the_packer_accepts() {
    let tmp = tempfile::tempdir().unwrap();
    let run = Command::new(env!("CARGO_BIN_EXE_waiaas-pack"))
        .args(["keygen", "--out"])
        .arg(tmp.path())
        .output()
        .unwrap();
    assert!(run.status.success());
    let stdout = String::from_utf8(run.stdout).unwrap();
    let key = tmp.path().join(waiaas_packaging::SECRET_KEY_FILE);
    let public = stdout
        .lines()
        .find_map(|l| l.strip_prefix("public key: "))
        .unwrap();
    assert_eq!(waiaas_packaging::public_key(&key).unwrap(), public);
    let minisig = waiaas_packaging::sign(&key, b"{}").unwrap();
    minisign_verify::PublicKey::from_base64(public)
        .unwrap()
        .verify(
            b"{}",
            &minisign_verify::Signature::decode(&minisig).unwrap(),
            false,
        )
        .unwrap();
    // A second keygen into the same folder is refused rather than replacing the key.
    let again = Command::new(env!("CARGO_BIN_EXE_waiaas-pack"))
        .args(["keygen", "--out"])
        .arg(tmp.path())
        .output()
        .unwrap();
    assert_eq!(again.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&again.stderr).contains("already exists"));
}

#[test]
fn a_key_made_by_the_reference_minisign_packs_and_minisign_verifies_it() {
    let Some(minisign) = waiaas_packaging::reference_minisign() else {
        return;
    };
    let f = fixture();
    let tmp = tempfile::tempdir().unwrap();
    let (key, public_file) = (tmp.path().join("ref.key"), tmp.path().join("ref.pub"));
    let made = Command::new(&minisign)
        .args(["-G", "-W", "-s"])
        .arg(&key)
        .arg("-p")
        .arg(&public_file)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(made.status.success(), "{made:?}");
    let public = fs::read_to_string(&public_file).unwrap();
    let public = public.lines().nth(1).unwrap();

    let packed = pack(&PackOptions {
        bin_dir: f.bins.clone(),
        out_dir: tmp.path().join("out"),
        sign_key: key,
        target: f.target.clone(),
        also_targets: vec![],
        rollout_seconds: None,
    })
    .unwrap();
    assert_eq!(packed.public_key, public);
    let entries = entries(&packed.platform_tarball);
    let manifest = tmp.path().join("release.json");
    fs::write(&manifest, contents(&entries, "package/release.json")).unwrap();
    fs::write(
        tmp.path().join("release.json.minisig"),
        contents(&entries, "package/release.json.minisig"),
    )
    .unwrap();
    let verified = Command::new(&minisign)
        .arg("-Vm")
        .arg(&manifest)
        .args(["-P", public])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(verified.status.success(), "{verified:?}");
}

// --- the Node shim -------------------------------------------------------------

fn node() -> Option<&'static str> {
    let ok = Command::new("node")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        eprintln!("note: `node` is not installed; skipping the shim test");
    }
    ok.then_some("node")
}

/// Unpacks a package tarball the way npm lays it out: `package/` → `dir`.
fn unpack_into(tarball: &Path, dir: &Path) {
    for entry in read_package_tarball(tarball).unwrap() {
        let rel = entry.path.strip_prefix("package/").unwrap();
        let EntryKind::File { contents, mode } = entry.kind else {
            panic!("unexpected entry {}", entry.path);
        };
        let path = dir.join(rel);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(&path, contents).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
    }
}

#[test]
fn the_node_shim_runs_the_platform_launcher() {
    let Some(node) = node() else { return };
    let f = fixture();
    let tmp = tempfile::tempdir().unwrap();
    let modules = tmp.path().join("node_modules/@waiaas");
    unpack_into(&f.packed.cli_tarball, &modules.join("cli"));
    unpack_into(
        &f.packed.platform_tarball,
        &modules.join(format!("cli-{}", f.target)),
    );

    let run = Command::new(node)
        .arg(modules.join("cli/bin/waiaas-launcher.js"))
        .arg("--version")
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert_eq!(
        String::from_utf8(run.stdout).unwrap().trim(),
        format!("waiaas-launcher {}", f.version)
    );

    // Without the platform package: a clear error, not a stack trace.
    fs::remove_dir_all(modules.join(format!("cli-{}", f.target))).unwrap();
    let run = Command::new(node)
        .arg(modules.join("cli/bin/waiaas-launcher.js"))
        .arg("--version")
        .output()
        .unwrap();
    assert_eq!(run.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(
        stderr.contains(&format!("@waiaas/cli-{} is not installed", f.target)),
        "{stderr}"
    );
}

#[test]
fn the_node_shim_passes_arguments_exit_status_and_sigterm_through() {
    let Some(node) = node() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let modules = tmp.path().join("node_modules/@waiaas");
    let cli = modules.join("cli/bin");
    fs::create_dir_all(&cli).unwrap();
    fs::write(cli.join("waiaas-launcher.js"), waiaas_packaging::CLI_SHIM).unwrap();
    // A stand-in launcher: echoes its arguments, exits 7, or waits for SIGTERM.
    let bin = modules.join(format!("cli-{}/bin", target()));
    fs::create_dir_all(&bin).unwrap();
    let fake = bin.join("waiaas-launcher");
    fs::write(
        &fake,
        "#!/bin/sh\n\
         if [ \"$1\" = wait ]; then\n\
           trap 'echo got-term > \"$2\"; exit 3' TERM\n\
           echo ready > \"$2.ready\"\n\
           while :; do sleep 0.05; done\n\
         fi\n\
         printf '%s|' \"$@\"\n\
         exit 7\n",
    )
    .unwrap();
    fs::set_permissions(&fake, fs::Permissions::from_mode(0o755)).unwrap();
    let shim = cli.join("waiaas-launcher.js");

    let run = Command::new(node)
        .arg(&shim)
        .args(["upgrade", "--to", "1.9.0", "a b"])
        .output()
        .unwrap();
    assert_eq!(run.status.code(), Some(7));
    assert_eq!(
        String::from_utf8(run.stdout).unwrap(),
        "upgrade|--to|1.9.0|a b|"
    );

    let mark = tmp.path().join("mark");
    let mut child = Command::new(node)
        .arg(&shim)
        .arg("wait")
        .arg(&mark)
        .spawn()
        .unwrap();
    let ready = mark.with_file_name("mark.ready");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !ready.exists() {
        assert!(Instant::now() < deadline, "the stand-in never started");
        std::thread::sleep(Duration::from_millis(20));
    }
    // SIGTERM to the shim alone (as `kill` or a service manager sends it).
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let status = child.wait().unwrap();
    assert_eq!(
        status.code(),
        Some(3),
        "the launcher's own exit status comes back"
    );
    assert_eq!(fs::read_to_string(&mark).unwrap().trim(), "got-term");
}

#[test]
fn npm_installs_the_two_tarballs_offline_and_links_the_command() {
    let f = fixture();
    let npm_ok = Command::new("npm")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !npm_ok || node().is_none() {
        eprintln!("note: `npm` is not installed; skipping the npm install test");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let userconfig = tmp.path().join("npmrc");
    fs::write(&userconfig, "").unwrap();
    let prefix = tmp.path().join("prefix");
    let run = Command::new("npm")
        .args(["install", "--offline", "--no-audit", "--no-fund"])
        // Nothing may leave the machine even if --offline were ignored.
        .args(["--registry", "http://127.0.0.1:9/"])
        .arg("--cache")
        .arg(tmp.path().join("cache"))
        .arg("--userconfig")
        .arg(&userconfig)
        .arg("--prefix")
        .arg(&prefix)
        .arg(&f.packed.platform_tarball)
        .arg(&f.packed.cli_tarball)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "{}{}",
        String::from_utf8_lossy(&run.stdout),
        String::from_utf8_lossy(&run.stderr)
    );
    let installed = prefix.join(format!(
        "node_modules/@waiaas/cli-{}/bin/waiaas-daemon",
        f.target
    ));
    let mode = fs::metadata(&installed).unwrap().permissions().mode();
    assert_eq!(mode & 0o111, 0o111, "npm keeps the binaries executable");

    let run = Command::new(prefix.join("node_modules/.bin/waiaas-launcher"))
        .arg("--version")
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert_eq!(
        String::from_utf8(run.stdout).unwrap().trim(),
        format!("waiaas-launcher {}", f.version)
    );
}
