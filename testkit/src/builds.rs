//! Real builds for the upgrade tests, and real signed release packages of them.
//!
//! - **A** is this build: the binaries beside the test executable ([`a_bin_dir`]).
//! - **B** ([`B_VERSION`]), and any newer release such as **D** ([`D_VERSION`]),
//!   is this workspace with the version bumped and a 17th migration
//!   ([`B_MIGRATION`]): a copy of the sources in `target/e2e/src-<version>/`,
//!   patched, built with the shared `CARGO_TARGET_DIR=target/e2e/target`
//!   (kept across runs, so incremental; the versions share every dependency
//!   and cargo keeps each version's own crates apart), its two programs
//!   hard-linked out to `target/e2e/bin-<version>/<profile>/` right after its
//!   build, before another version's build replaces the uplifted ones.
//!   [`release_bin_dir`] builds a version once per test process and guards
//!   the builds across concurrently running test binaries with an `flock` on
//!   `target/e2e/build.lock`; [`b_bin_dir`] is B's.
//! - [`pack_release`] packs and signs a bin dir like CI does
//!   (`waiaas_packaging::pack`); [`wrapped_release_dir`] makes the bin dir of a
//!   release whose daemon fails at start (a `#!/bin/sh` wrapper around B's real
//!   daemon), so that fault releases are real, verified packages too;
//!   [`wrapped_release_dir_as`] makes it a release of another version, such
//!   as **C** ([`C_VERSION`]), without building it.
//!
//! The migration 17 adds a unique index on `wallets(name)`: a database with two
//! wallets of the same name makes B's migration fail for a real, data-driven
//! reason.

// Each test file uses a different part of this module.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use nix::fcntl::{Flock, FlockArg};
use waiaas_packaging::{PackOptions, Packed};

/// The version of build B.
pub const B_VERSION: &str = "1.9.0";
/// A bad release after B, never built: B's programs behind wrappers
/// reporting this version ([`wrapped_release_dir_as`]).
pub const C_VERSION: &str = "1.9.1";
/// A good release after C: a real build like B's ([`release_bin_dir`]).
pub const D_VERSION: &str = "1.10.0";
/// A good patch release after D, a real build too (the fleet's last round).
pub const E_VERSION: &str = "1.10.1";
/// The releases after A the tests publish: each patched build's
/// `compat.toml` lists those up to its own version, as a real release's
/// table lists the releases before it.
const PUBLISHED: [&str; 4] = [B_VERSION, C_VERSION, D_VERSION, E_VERSION];
/// The `LATEST_SCHEMA_VERSION` of B and of every patched build.
pub const B_SCHEMA: u32 = 17;
/// A's `LATEST_SCHEMA_VERSION`.
pub const A_SCHEMA: u32 = 16;
/// The migration B (and every patched build) adds.
pub const B_MIGRATION_FILE: &str = "0017_add_wallet_labels.sql";
pub const B_MIGRATION: &str = "\
-- 1.9.0: a free-text label per wallet, and wallet names become unique (the
-- admin UI addresses wallets by name). A database holding two wallets of the
-- same name cannot take the index: the migration fails and is rolled back.
ALTER TABLE wallets ADD COLUMN label TEXT NOT NULL DEFAULT '';

CREATE UNIQUE INDEX idx_wallets_name_unique ON wallets (name);
";

/// The version of build A (this build).
pub fn a_version() -> &'static str {
    env!("CARGO_PKG_VERSION")
}

/// The workspace root (`launcher/..`).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the launcher crate sits in the workspace")
        .to_path_buf()
}

/// `target/e2e/` of this workspace: B's sources, B's target dir, the build lock.
pub fn e2e_dir() -> PathBuf {
    repo_root().join("target").join("e2e")
}

/// Build A's bin dir: where `waiaas-launcher` and `waiaas-daemon` of this build are.
pub fn a_bin_dir() -> PathBuf {
    let dir = crate::launcher_binary()
        .parent()
        .expect("the launcher has a folder")
        .to_path_buf();
    crate::daemon_binary();
    dir
}

/// Copies `waiaas-launcher` and `waiaas-daemon` of `from` into `to` (created),
/// executable; returns `to`.
pub fn copy_bin_dir(from: &Path, to: &Path) -> PathBuf {
    fs::create_dir_all(to).unwrap();
    for name in ["waiaas-launcher", "waiaas-daemon"] {
        fs::copy(from.join(name), to.join(name))
            .unwrap_or_else(|e| panic!("copy {}: {e}", from.join(name).display()));
        fs::set_permissions(to.join(name), fs::Permissions::from_mode(0o755)).unwrap();
    }
    to.to_path_buf()
}

/// Build B's bin dir, built on first use (once per test process).
pub fn b_bin_dir() -> &'static Path {
    release_bin_dir(B_VERSION)
}

/// The bin dir of a release of `version` with B's patch (schema [`B_SCHEMA`],
/// migration [`B_MIGRATION`]): built on first use, once per test process and
/// version. `version` must be newer than A.
pub fn release_bin_dir(version: &'static str) -> &'static Path {
    // Held across the build: one version at a time, as the flock would anyway.
    let mut built = BUILT.lock().unwrap_or_else(|e| e.into_inner());
    // A failed build is not retried: every test that needs it fails at once.
    let build = built
        .entry(version)
        .or_insert_with(|| build_release(version))
        .clone();
    drop(built);
    match build {
        Ok(build) => build.bin,
        Err(e) => panic!("build {version} failed: {e}"),
    }
}

/// How long the build of `version` took in this process (`None` if it was
/// not built here).
pub fn build_time(version: &str) -> Option<Duration> {
    let built = BUILT.lock().unwrap_or_else(|e| e.into_inner());
    built.get(version)?.as_ref().ok().map(|build| build.took)
}

/// A version built in this process.
#[derive(Clone, Copy)]
struct Built {
    bin: &'static Path,
    took: Duration,
}

static BUILT: Mutex<BTreeMap<&'static str, Result<Built, String>>> = Mutex::new(BTreeMap::new());

/// The longest one version's build may take (a first build on a busy 2-core
/// machine included); beyond it the build is killed and the tests fail.
const BUILD_TIMEOUT: Duration = Duration::from_secs(1200);

/// Which cargo profile a release is built in.
#[derive(Clone, Copy)]
pub enum Profile {
    Debug,
    Release,
}

/// Takes the e2e build lock: one build at a time across test and bench
/// processes; the kernel drops it with its holder.
pub fn lock_builds() -> Result<Flock<fs::File>, String> {
    let e2e = e2e_dir();
    fs::create_dir_all(&e2e).map_err(|e| format!("cannot create {}: {e}", e2e.display()))?;
    let lock_path = e2e.join("build.lock");
    let lock_file = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|e| format!("cannot open {}: {e}", lock_path.display()))?;
    Flock::lock(lock_file, FlockArg::LockExclusive)
        .map_err(|(_, e)| format!("cannot lock {}: {e}", lock_path.display()))
}

/// Runs `cargo build` of the daemon and launcher of `version` in its synced
/// source copy (`target/e2e/src-<version>/`), into the shared e2e target dir,
/// killed after `timeout`, and links the two programs out to
/// `target/e2e/bin-<version>/<profile>/`. Call it holding [`lock_builds`].
/// Returns that bin dir and how long the build took.
pub fn cargo_build(
    version: &str,
    profile: Profile,
    timeout: Duration,
) -> Result<(PathBuf, Duration), String> {
    let e2e = e2e_dir();
    let src = e2e.join(format!("src-{version}"));
    let target = e2e.join("target");
    let (flag, folder) = match profile {
        Profile::Debug => (None, "debug"),
        Profile::Release => (Some("--release"), "release"),
    };
    let log_path = e2e.join(format!("build-{folder}-{version}.log"));
    let log = fs::File::create(&log_path)
        .map_err(|e| format!("cannot create {}: {e}", log_path.display()))?;
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut command = Command::new(cargo);
    // Tests and benches run under cargo, which sets variables describing
    // *this* package; none of them may leak into the release's build.
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy().into_owned();
        let inherited_from_cargo = name.starts_with("CARGO_PKG_")
            || name.starts_with("CARGO_MANIFEST_")
            || name.starts_with("CARGO_CRATE_")
            || name.starts_with("CARGO_BIN_")
            || matches!(
                name.as_str(),
                "CARGO_PRIMARY_PACKAGE" | "CARGO_TARGET_TMPDIR" | "OUT_DIR" | "CARGO_TARGET_DIR"
            );
        if inherited_from_cargo {
            command.env_remove(&name);
        }
    }
    let started = Instant::now();
    let mut child = command
        .arg("build")
        .args(flag)
        .args(["-p", "waiaas-daemon", "-p", "waiaas-launcher"])
        .current_dir(&src)
        .env("CARGO_TARGET_DIR", &target)
        .env("CARGO_TERM_COLOR", "never")
        .stdin(Stdio::null())
        .stdout(log.try_clone().map_err(|e| e.to_string())?)
        .stderr(log)
        .spawn()
        .map_err(|e| format!("cannot run cargo: {e}"))?;
    let status = loop {
        if let Some(status) = child.try_wait().map_err(|e| e.to_string())? {
            break status;
        }
        if started.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!(
                "cargo build of {version} did not finish within {timeout:?}; see {}",
                log_path.display()
            ));
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let took = started.elapsed();
    if !status.success() {
        let output = fs::read_to_string(&log_path).unwrap_or_default();
        let lines: Vec<&str> = output.lines().collect();
        return Err(format!(
            "`cargo build` in {} {status}:\n{}",
            src.display(),
            lines[lines.len().saturating_sub(60)..].join("\n")
        ));
    }
    let bin = e2e.join(format!("bin-{version}")).join(folder);
    link_programs(&target.join(folder), &bin)?;
    Ok((bin, took))
}

/// Makes `to` (created) hold the two programs of `from` as hard links, each
/// replaced by a rename (a test running the old one is never left without a
/// file). Cargo replaces an uplifted program by a new file at each build, so
/// the links keep this version's programs when another version is built.
fn link_programs(from: &Path, to: &Path) -> Result<(), String> {
    use std::os::unix::fs::MetadataExt;
    fs::create_dir_all(to).map_err(|e| format!("cannot create {}: {e}", to.display()))?;
    for name in ["waiaas-launcher", "waiaas-daemon"] {
        let (source, dest) = (from.join(name), to.join(name));
        let meta = fs::metadata(&source)
            .map_err(|e| format!("the build made no {}: {e}", source.display()))?;
        let same = |m: fs::Metadata| m.dev() == meta.dev() && m.ino() == meta.ino();
        if fs::metadata(&dest).is_ok_and(same) {
            continue;
        }
        let staged = to.join(format!(".{name}.new"));
        let _ = fs::remove_file(&staged);
        fs::hard_link(&source, &staged).map_err(|e| {
            format!(
                "cannot link {} to {}: {e}",
                source.display(),
                staged.display()
            )
        })?;
        fs::rename(&staged, &dest).map_err(|e| {
            format!(
                "cannot rename {} to {}: {e}",
                staged.display(),
                dest.display()
            )
        })?;
    }
    Ok(())
}

fn build_release(version: &'static str) -> Result<Built, String> {
    if semver::Version::parse(version).map_err(|e| format!("{version:?}: {e}"))?
        <= semver::Version::parse(a_version()).unwrap()
    {
        return Err(format!(
            "build A ({}) must be older than {version}: update the versions in {}",
            a_version(),
            file!()
        ));
    }
    let e2e = e2e_dir();
    let _lock = lock_builds()?;
    let src = e2e.join(format!("src-{version}"));
    let tree = patched_sources(version)?;
    let changed = sync_tree(&src, &tree)?;
    let (bin, took) = cargo_build(version, Profile::Debug, BUILD_TIMEOUT)?;
    eprintln!(
        "build {version}: {changed} source files changed, cargo build took {:.1} s",
        took.as_secs_f64()
    );
    let _ = fs::write(
        e2e.join(format!("build-time-{version}.txt")),
        format!("{:.1} s ({changed} files changed)\n", took.as_secs_f64()),
    );

    let daemon = bin.join("waiaas-daemon");
    let out = Command::new(&daemon)
        .args(["--version", "--json"])
        .output()
        .map_err(|e| format!("cannot run {}: {e}", daemon.display()))?;
    let info: serde_json::Value = serde_json::from_slice(&out.stdout)
        .map_err(|e| format!("{} --version --json: {e}", daemon.display()))?;
    if info["version"] != version || info["schema_version"] != B_SCHEMA {
        return Err(format!(
            "{} reports {info}, expected {version} with schema {B_SCHEMA}",
            daemon.display()
        ));
    }
    Ok(Built {
        bin: Box::leak(bin.into_boxed_path()),
        took,
    })
}

/// The source tree of `version`: relative path → contents, patched like B.
fn patched_sources(version: &str) -> Result<BTreeMap<PathBuf, Vec<u8>>, String> {
    let repo = repo_root();
    let manifest_text = fs::read_to_string(repo.join("Cargo.toml"))
        .map_err(|e| format!("cannot read the workspace Cargo.toml: {e}"))?;
    let manifest: toml::Table = manifest_text
        .parse()
        .map_err(|e| format!("the workspace Cargo.toml does not parse: {e}"))?;
    let members: Vec<String> = manifest
        .get("workspace")
        .and_then(|w| w.get("members"))
        .and_then(|m| m.as_array())
        .ok_or("the workspace Cargo.toml lists no members")?
        .iter()
        .filter_map(|m| m.as_str().map(str::to_string))
        .collect();
    let mut tree = BTreeMap::new();
    for top in members.iter().map(String::as_str).chain(["migrations"]) {
        collect(&repo, Path::new(top), &mut tree)?;
    }
    let lock = fs::read_to_string(repo.join("Cargo.lock"))
        .map_err(|e| format!("cannot read Cargo.lock: {e}"))?;
    tree.insert(
        "Cargo.toml".into(),
        bump_workspace_version(&manifest_text, version)?.into_bytes(),
    );
    tree.insert("Cargo.lock".into(), bump_lock(&lock, version).into_bytes());

    let migrations = Path::new("migrations");
    tree.insert(
        migrations.join(B_MIGRATION_FILE),
        B_MIGRATION.as_bytes().to_vec(),
    );
    let compat = tree
        .get_mut(&migrations.join("compat.toml"))
        .ok_or("migrations/compat.toml is missing")?;
    let mut text = String::from_utf8(std::mem::take(compat)).map_err(|e| e.to_string())?;
    if !text.ends_with('\n') {
        text.push('\n');
    }
    let this = semver::Version::parse(version).map_err(|e| format!("{version:?}: {e}"))?;
    let listed = PUBLISHED
        .iter()
        .filter(|v| semver::Version::parse(v).unwrap() < this)
        .chain([&version]);
    for release in listed {
        text.push_str(&format!("\"{release}\" = {B_SCHEMA}\n"));
    }
    *compat = text.into_bytes();
    Ok(tree)
}

/// Every file under `repo/rel` except build output.
fn collect(repo: &Path, rel: &Path, tree: &mut BTreeMap<PathBuf, Vec<u8>>) -> Result<(), String> {
    let path = repo.join(rel);
    let entries =
        fs::read_dir(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    for entry in entries {
        let entry = entry.map_err(|e| e.to_string())?;
        let name = entry.file_name();
        let name_text = name.to_string_lossy();
        if matches!(name_text.as_ref(), "target" | "node_modules") || name_text.starts_with('.') {
            continue;
        }
        let kind = entry.file_type().map_err(|e| e.to_string())?;
        let child = rel.join(&name);
        if kind.is_dir() {
            collect(repo, &child, tree)?;
        } else if kind.is_file() {
            match fs::read(entry.path()) {
                Ok(bytes) => {
                    tree.insert(child, bytes);
                }
                // Another engineer's editor may have just renamed it away.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(format!("cannot read {}: {e}", entry.path().display())),
            }
        }
    }
    Ok(())
}

/// `[workspace.package] version = "A"` → `version`.
fn bump_workspace_version(manifest: &str, version: &str) -> Result<String, String> {
    let mut out = String::with_capacity(manifest.len());
    let mut section = String::new();
    let mut bumped = false;
    for line in manifest.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with('[') {
            section = trimmed.to_string();
        }
        if section == "[workspace.package]"
            && trimmed.starts_with("version")
            && trimmed.contains('=')
        {
            out.push_str(&format!("version = \"{version}\""));
            bumped = true;
        } else {
            out.push_str(line);
        }
        out.push('\n');
    }
    if bumped {
        Ok(out)
    } else {
        Err("no version in [workspace.package] of Cargo.toml".into())
    }
}

/// The workspace crates' versions in Cargo.lock, as cargo would rewrite them.
fn bump_lock(lock: &str, version: &str) -> String {
    let mut out = String::with_capacity(lock.len());
    let mut ours = false;
    for line in lock.lines() {
        if let Some(name) = line.strip_prefix("name = ") {
            ours = name.trim_matches('"').starts_with("waiaas-");
        }
        if ours && line == format!("version = \"{}\"", a_version()) {
            out.push_str(&format!("version = \"{version}\""));
            ours = false;
        } else {
            out.push_str(line);
        }
        out.push('\n');
    }
    out
}

/// Makes `dest` hold exactly `tree`, writing only files whose contents differ
/// (so cargo's mtime fingerprints see only real changes). Returns how many
/// files were written or removed.
fn sync_tree(dest: &Path, tree: &BTreeMap<PathBuf, Vec<u8>>) -> Result<usize, String> {
    let mut changed = 0;
    for (rel, bytes) in tree {
        let path = dest.join(rel);
        if fs::read(&path).ok().as_deref() == Some(bytes.as_slice()) {
            continue;
        }
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent)
                .map_err(|e| format!("cannot create {}: {e}", parent.display()))?;
        }
        fs::write(&path, bytes).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        changed += 1;
    }
    // Files gone from the workspace go from the copy (a removed migration matters).
    let wanted: BTreeSet<&PathBuf> = tree.keys().collect();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let Ok(entries) = fs::read_dir(dest.join(&rel)) else {
            continue;
        };
        for entry in entries.flatten() {
            let child = rel.join(entry.file_name());
            match entry.file_type() {
                Ok(t) if t.is_dir() => stack.push(child),
                Ok(_) if !wanted.contains(&child) => {
                    let _ = fs::remove_file(entry.path());
                    changed += 1;
                }
                _ => {}
            }
        }
    }
    Ok(changed)
}

/// A throwaway release key: the secret key file and the public key (minisign base64).
pub struct Key {
    pub secret: PathBuf,
    pub public: String,
}

/// Generates a fresh key pair in `dir`.
pub fn generate_key(dir: &Path) -> Key {
    let (secret, public) = waiaas_packaging::generate_keypair(dir).expect("generate a key pair");
    Key { secret, public }
}

/// Packs and signs the binaries of `bin_dir` into `out_dir`, for this machine's target.
pub fn pack_release(bin_dir: &Path, out_dir: &Path, key: &Key) -> Packed {
    let target = waiaas_shared::release::this_target().expect("a shipped target");
    waiaas_packaging::pack(&PackOptions {
        bin_dir: bin_dir.to_path_buf(),
        out_dir: out_dir.to_path_buf(),
        sign_key: key.secret.clone(),
        target: target.to_string(),
        also_targets: Vec::new(),
        rollout_seconds: None,
    })
    .unwrap_or_else(|e| panic!("packing {} failed: {e}", bin_dir.display()))
}

/// How a wrapped daemon fails at `serve`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// `exit 1` at once.
    Crash,
    /// Never answers: `exec sleep 3600`.
    Hang,
    /// `serve` works, but `migrate` never finishes: `exec sleep 3600`.
    HangMigrate,
    /// The daemon works; the launcher exits at once on `run` (a launcher
    /// that cannot take over).
    LauncherDiesOnRun,
    /// The daemon works; the launcher, when started by a handover
    /// (`WAIAAS_HANDOVER` set), blocks forever without serving: `exec sleep
    /// 3600`, holding every descriptor it was handed. Every other command
    /// (`--version`, `status`, a fresh `run`) is B's real launcher.
    LauncherHangsOnHandover,
    /// The daemon serves and writes, but `/health` answers 503 (`WAIAAS_FAULT=health-503`).
    Unhealthy,
    /// The daemon aborts 1 s after its first answer (`WAIAAS_FAULT=abort-after-first-request`).
    AbortsAfterFirstRequest,
}

/// Makes `dir` (created) the bin dir of a release of B with a fault: one of
/// its two programs is a `#!/bin/sh` script that fails at one command and
/// runs B's real program (by absolute path) for everything else — so
/// `--version`, `migrate`, `check` and `serve` work unless the fault is
/// theirs. Packed with [`pack_release`] it is a real, signed, verifiable
/// package.
pub fn wrapped_release_dir(dir: &Path, fault: Fault) -> PathBuf {
    wrapped_release_dir_as(dir, fault, B_VERSION)
}

/// Like [`wrapped_release_dir`], but a release of `version` without a build
/// of it: unless `version` is B's, both programs are wrappers whose
/// `--version` (plain and `--json`) runs B's real program and reports
/// `version` in place of B's, so [`pack_release`] packs and signs it as
/// `version` (with B's schema). Everything else runs B's programs, which
/// report B's version at run time (`status`, `/health`).
pub fn wrapped_release_dir_as(dir: &Path, fault: Fault, version: &str) -> PathBuf {
    if let Err(e) = semver::Version::parse(version) {
        panic!("a wrapped release's version must be semver, not {version:?}: {e}");
    }
    let b = b_bin_dir();
    fs::create_dir_all(dir).unwrap();
    let (program, command, fails) = match fault {
        Fault::Crash => (
            "waiaas-daemon",
            "serve",
            "echo 'waiaas-daemon (test fault): crashing at start' >&2; exit 1",
        ),
        Fault::Hang => ("waiaas-daemon", "serve", "exec sleep 3600"),
        Fault::HangMigrate => ("waiaas-daemon", "migrate", "exec sleep 3600"),
        Fault::Unhealthy => ("waiaas-daemon", "serve", "export WAIAAS_FAULT=health-503"),
        Fault::AbortsAfterFirstRequest => (
            "waiaas-daemon",
            "serve",
            "export WAIAAS_FAULT=abort-after-first-request",
        ),
        Fault::LauncherDiesOnRun => (
            "waiaas-launcher",
            "run",
            "echo 'waiaas-launcher (test fault): dying at start' >&2; exit 1",
        ),
        Fault::LauncherHangsOnHandover => (
            "waiaas-launcher",
            "run",
            "if [ -n \"$WAIAAS_HANDOVER\" ]; then \
             echo 'waiaas-launcher (test fault): hanging in the handover' >&2; \
             exec sleep 3600; fi",
        ),
    };
    let renamed = version != B_VERSION;
    // B's version as a whole word: after a space or a quote, before a space,
    // a quote or the end (`waiaas-daemon 1.9.0 (schema 17)`,
    // `"version":"1.9.0"`), so the JSON stays valid and nothing else changes.
    let b_pattern = B_VERSION.replace('.', "\\.");
    let rename = format!(
        "if [ \"$1\" = --version ]; then\n  \
         out=$(\"$real\" \"$@\") || exit $?\n  \
         printf '%s\\n' \"$out\" | \
         sed 's/\\([ \"]\\){b_pattern}\\([ \"]\\)/\\1{version}\\2/g; s/\\([ \"]\\){b_pattern}$/\\1{version}/'\n  \
         exit\n\
         fi\n"
    );
    for name in ["waiaas-launcher", "waiaas-daemon"] {
        let real = b.join(name);
        let faulty = name == program;
        if !faulty && !renamed {
            fs::copy(&real, dir.join(name)).unwrap();
            continue;
        }
        let what = if faulty {
            format!("whose {name} fails at {command} (test fault: {fault:?})")
        } else {
            format!("whose {name} works")
        };
        let script = format!(
            "#!/bin/sh\n\
             # A release of {version} made of {B_VERSION}'s programs, {what}.\n\
             real='{}'\n\
             {}{}\
             exec \"$real\" \"$@\"\n",
            real.display(),
            if faulty {
                format!("if [ \"$1\" = {command} ]; then {fails}; fi\n")
            } else {
                String::new()
            },
            if renamed { rename.as_str() } else { "" },
        );
        let path = dir.join(name);
        let mut file = fs::File::create(&path).unwrap();
        file.write_all(script.as_bytes()).unwrap();
        file.sync_all().unwrap();
        drop(file);
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
    }
    if renamed {
        expect_reported_version(dir, version);
    }
    dir.to_path_buf()
}

/// Both programs of `dir` report `version` on `--version`, and the daemon
/// valid JSON naming it on `--version --json` (else the rewrite missed a
/// change in their output).
fn expect_reported_version(dir: &Path, version: &str) {
    let run = |name: &str, args: &[&str]| {
        let out = Command::new(dir.join(name)).args(args).output().unwrap();
        assert!(out.status.success(), "{name} {args:?}: {out:?}");
        String::from_utf8(out.stdout).unwrap()
    };
    for name in ["waiaas-launcher", "waiaas-daemon"] {
        let plain = run(name, &["--version"]);
        assert!(
            plain.starts_with(&format!("{name} {version}")),
            "{name} --version in {} says {plain:?}, not {version}",
            dir.display()
        );
    }
    let json = run("waiaas-daemon", &["--version", "--json"]);
    let info: serde_json::Value = serde_json::from_str(&json)
        .unwrap_or_else(|e| panic!("waiaas-daemon --version --json says {json:?}: {e}"));
    assert_eq!(
        info["version"], version,
        "waiaas-daemon --version --json: {info}"
    );
}

/// `release.json` and its signature out of a packed platform tarball:
/// `(file name, contents)`.
pub fn release_files(packed: &Packed) -> Vec<(&'static str, Vec<u8>)> {
    let entries = waiaas_packaging::read_package_tarball(&packed.platform_tarball).unwrap();
    let find = |path: &str| {
        entries
            .iter()
            .find_map(|e| match &e.kind {
                waiaas_packaging::EntryKind::File { contents, .. } if e.path == path => {
                    Some(contents.clone())
                }
                _ => None,
            })
            .unwrap_or_else(|| panic!("{path} is not in the package"))
    };
    vec![
        ("release.json", find("package/release.json")),
        ("release.json.minisig", find("package/release.json.minisig")),
    ]
}
