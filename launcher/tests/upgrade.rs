//! `waiaas-launcher upgrade` end to end (SPEC §6, §7, §10 scenarios 7–11):
//! two real builds (A = this build, B = 1.9.0 with a 17th migration, see
//! `support/builds.rs`), packed and signed like releases with a throwaway key,
//! served by a real HTTP registry on 127.0.0.1, installed with the real
//! `init`, with real data written through the real API. Every test ends by
//! checking that the installation is fully old or fully new, healthy, and
//! that nothing was lost.

mod support;

#[path = "support/builds.rs"]
mod builds;

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use rusqlite::{Connection, OpenFlags};
use sha2::{Digest, Sha256};

use builds::{B_SCHEMA, B_VERSION, C_VERSION, D_VERSION, Fault, Key, pack_release, release_files};
use support::load::{Writer, Written};
use support::registry::Registry;
use support::supervisor::{LogFile, Supervisor, daemon_pid, healthy, processes_mentioning, signal};
use support::{LAUNCHER, Outcome as Ran, free_port, hermetic, http, run};
use waiaas_packaging::Packed;
use waiaas_powercut::PowerCut;
use waiaas_shared::admin::{Outcome, UpgradeReport};
use waiaas_shared::backup::{Kind, MANIFEST as BACKUP_MANIFEST, Manifest};
use waiaas_shared::fsutil::sha256_file;
use waiaas_shared::handover::TAKEOVER_GRACE;
use waiaas_shared::health::HealthResponse;
use waiaas_shared::layout::DataDir;
use waiaas_shared::release::{CLI_PACKAGE, platform_package, this_target};
use waiaas_shared::time::UtcTime;

const A_SCHEMA: u32 = builds::A_SCHEMA;

fn a() -> &'static str {
    builds::a_version()
}

// ---------------------------------------------------------------------------
// Releases: A, B and the fault releases, packed once per test process.

/// Everything packed once per process, in `target/e2e/packs-<pid>/`.
struct Releases {
    dir: PathBuf,
    key: Key,
    /// A snapshot of build A's binaries with A's signed `release.json` beside
    /// them, as a release package holds them: `init` is run from here.
    a_bin: PathBuf,
    a: Packed,
    b: Packed,
}

fn releases() -> &'static Releases {
    static RELEASES: OnceLock<Releases> = OnceLock::new();
    RELEASES.get_or_init(|| {
        let e2e = builds::e2e_dir();
        fs::create_dir_all(&e2e).unwrap();
        remove_stale_pack_dirs(&e2e);
        let dir = e2e.join(format!("packs-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        let b_bin = builds::b_bin_dir();
        let key = builds::generate_key(&dir.join("key"));
        let started = Instant::now();
        // A snapshot: target/debug may be rebuilt by another build meanwhile.
        let a_bin = builds::copy_bin_dir(&builds::a_bin_dir(), &dir.join("a-bin"));
        let packed_a = pack_release(&a_bin, &dir.join("a"), &key);
        let packed_b = pack_release(b_bin, &dir.join("b"), &key);
        eprintln!(
            "packed A ({}) and B ({}) in {:.1} s",
            packed_a.manifest.version,
            packed_b.manifest.version,
            started.elapsed().as_secs_f64()
        );
        assert_eq!(packed_a.manifest.version, a());
        assert_eq!(packed_b.manifest.version, B_VERSION);
        assert_eq!(packed_b.manifest.schema_version, B_SCHEMA);
        for (name, contents) in release_files(&packed_a) {
            fs::write(a_bin.join(name), contents).unwrap();
        }
        Releases {
            dir,
            key,
            a_bin,
            a: packed_a,
            b: packed_b,
        }
    })
}

/// A release of B whose daemon fails at `serve` ([`Fault`]), packed and signed.
fn fault_release(fault: Fault) -> &'static Packed {
    static CRASH: OnceLock<Packed> = OnceLock::new();
    static HANG: OnceLock<Packed> = OnceLock::new();
    static HANG_MIGRATE: OnceLock<Packed> = OnceLock::new();
    static LAUNCHER_DIES: OnceLock<Packed> = OnceLock::new();
    static LAUNCHER_HANGS: OnceLock<Packed> = OnceLock::new();
    static UNHEALTHY: OnceLock<Packed> = OnceLock::new();
    static ABORTS: OnceLock<Packed> = OnceLock::new();
    let cell = match fault {
        Fault::Unhealthy => &UNHEALTHY,
        Fault::AbortsAfterFirstRequest => &ABORTS,
        Fault::Crash => &CRASH,
        Fault::Hang => &HANG,
        Fault::HangMigrate => &HANG_MIGRATE,
        Fault::LauncherDiesOnRun => &LAUNCHER_DIES,
        Fault::LauncherHangsOnHandover => &LAUNCHER_HANGS,
    };
    cell.get_or_init(|| {
        let r = releases();
        let name = format!("{fault:?}").to_lowercase();
        let bin = builds::wrapped_release_dir(&r.dir.join(format!("{name}-bin")), fault);
        pack_release(&bin, &r.dir.join(name), &r.key)
    })
}

/// Pack folders of test processes that are gone.
fn remove_stale_pack_dirs(e2e: &Path) {
    for entry in fs::read_dir(e2e).into_iter().flatten().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix("packs-")
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = fs::remove_dir_all(entry.path());
        }
    }
}

/// The releases after B of the automatic-upgrade tests pack and sign as
/// their own versions: C, B's programs behind wrappers whose daemon crashes
/// at start, and D, a real build.
#[test]
fn a_wrapped_release_and_a_third_build_pack_as_their_versions() {
    let e2e = builds::e2e_dir();
    fs::create_dir_all(&e2e).unwrap();
    let packs = tempfile::Builder::new()
        .prefix("cd-packs-")
        .tempdir_in(&e2e)
        .unwrap();
    let key = builds::generate_key(&packs.path().join("key"));
    let c_bin =
        builds::wrapped_release_dir_as(&packs.path().join("c-bin"), Fault::Crash, C_VERSION);
    let d_bin = builds::release_bin_dir(D_VERSION);
    for (bin, version) in [(c_bin.as_path(), C_VERSION), (d_bin, D_VERSION)] {
        let packed = pack_release(bin, &packs.path().join(version), &key);
        assert_eq!(packed.manifest.version, version);
        assert_eq!(packed.manifest.schema_version, B_SCHEMA, "{version}");
    }

    let daemon = |bin: &Path, args: &[&str]| {
        Command::new(bin.join("waiaas-daemon"))
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    };
    let d = daemon(d_bin, &["--version", "--json"]);
    assert!(d.status.success(), "{d:?}");
    let info: serde_json::Value = serde_json::from_slice(&d.stdout).unwrap();
    assert_eq!(info["version"], D_VERSION, "{info}");
    assert_eq!(info["schema_version"], B_SCHEMA, "{info}");
    assert!(
        fs::read(d_bin.join("waiaas-daemon"))
            .unwrap()
            .starts_with(b"\x7fELF"),
        "D is a real build"
    );
    let c = daemon(&c_bin, &["serve"]);
    assert_eq!(
        c.status.code(),
        Some(1),
        "C's daemon crashes at start: {c:?}"
    );
}

/// A 1.8.1 database of about 100 MB (real schema, 150 000 audit rows), made once
/// per process: backups and migrations of it take long enough to be killed
/// inside.
fn big_database() -> &'static Path {
    static DB: OnceLock<PathBuf> = OnceLock::new();
    DB.get_or_init(|| {
        let started = Instant::now();
        let r = releases();
        let home = r.dir.join("big-db-home");
        let _ = fs::remove_dir_all(&home);
        let dir = DataDir::new(home.join("waiaas"));
        fs::create_dir_all(dir.data()).unwrap();
        let migrate = run(hermetic(Command::new(r.a_bin.join("waiaas-daemon")), &home)
            .args(["migrate", "--data-dir"])
            .arg(dir.root()));
        assert!(migrate.status.success(), "{migrate:?}");
        let conn = Connection::open(dir.database()).unwrap();
        conn.execute_batch(
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 150000)
             INSERT INTO audit_log (timestamp, event_type, actor, wallet_id, details)
             SELECT 1700000000 + i, 'TX_SUBMITTED', 'master', NULL,
                    '{\"pad\":\"' || hex(randomblob(300)) || '\"}'
             FROM n;",
        )
        .unwrap();
        conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
            .unwrap();
        drop(conn);
        let path = r.dir.join("big.db");
        fs::copy(dir.database(), &path).unwrap();
        let _ = fs::remove_dir_all(&home);
        eprintln!(
            "made a {} MB database in {:.1} s",
            fs::metadata(&path).unwrap().len() >> 20,
            started.elapsed().as_secs_f64()
        );
        path
    })
}

// ---------------------------------------------------------------------------
// A site: an installation of A, its registry, and its config.

/// Which release the registry offers as 1.9.0.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Offer {
    B,
    Faulty(Fault),
}

struct Setup {
    offer: Offer,
    /// `dist-tags.latest` of `@waiaas/cli` names A instead of B.
    latest_is_a: bool,
    /// Serve B's platform tarball with one byte flipped.
    tamper: bool,
    /// Install here (a folder that exists) instead of in a fresh temp dir.
    home: Option<PathBuf>,
    health_timeout: u64,
    migrate_timeout: u64,
    keep_backups: u32,
    /// Start from [`big_database`].
    big_db: bool,
}

impl Default for Setup {
    fn default() -> Self {
        Self {
            offer: Offer::B,
            latest_is_a: false,
            tamper: false,
            home: None,
            health_timeout: 30,
            migrate_timeout: 600,
            keep_backups: 5,
            big_db: false,
        }
    }
}

struct Site {
    _tmp: Option<tempfile::TempDir>,
    home: PathBuf,
    dir: DataDir,
    port: u16,
    registry: Registry,
    supervisors: AtomicUsize,
}

impl Site {
    fn new() -> Self {
        Self::with(Setup::default())
    }

    fn with(setup: Setup) -> Self {
        let r = releases();
        let (tmp, home) = match setup.home {
            Some(home) => (None, home),
            None => {
                let tmp = tempfile::tempdir().unwrap();
                let home = tmp.path().to_path_buf();
                (Some(tmp), home)
            }
        };
        let dir = DataDir::new(home.join("waiaas"));
        // The real `init`, run by A's launcher from A's release files: it
        // installs them (with the signed release.json) as versions/1.8.1.
        support::init_from(&r.a_bin, &home, &dir);
        assert!(dir.version(a()).join("release.json.minisig").is_file());

        let registry = Registry::start();
        let offered = match setup.offer {
            Offer::B => &r.b,
            Offer::Faulty(fault) => fault_release(fault),
        };
        let target = this_target().unwrap();
        for (packed, version) in [(&r.a, a()), (offered, B_VERSION)] {
            registry.publish(CLI_PACKAGE, version, fs::read(&packed.cli_tarball).unwrap());
            let mut tarball = fs::read(&packed.platform_tarball).unwrap();
            if setup.tamper && version == B_VERSION {
                let middle = tarball.len() / 2;
                tarball[middle] ^= 0x01;
            }
            registry.publish_with_integrity(
                &platform_package(target),
                version,
                tarball,
                &packed.platform_integrity,
            );
        }
        if setup.latest_is_a {
            registry.set_tag(CLI_PACKAGE, "latest", a());
        }

        let port = free_port();
        let config = format!(
            "[daemon]\nport = {port}\nhostname = \"127.0.0.1\"\nupdate_check = false\nshutdown_timeout = 10\n\n\
             [update]\nregistry = \"{}\"\ntrusted_keys = [\"{}\"]\nhealth_timeout = {}\nmigrate_timeout = {}\nkeep_backups = {}\n",
            registry.url(),
            r.key.public,
            setup.health_timeout,
            setup.migrate_timeout,
            setup.keep_backups
        );
        fs::write(dir.config(), config).unwrap();
        if setup.big_db {
            fs::copy(big_database(), dir.database()).unwrap();
        }
        Self {
            _tmp: tmp,
            home,
            dir,
            port,
            registry,
            supervisors: AtomicUsize::new(0),
        }
    }

    /// `waiaas-launcher <args> --data-dir <dir>`, hermetic.
    fn launcher(&self, args: &[&str]) -> Command {
        let mut command = hermetic(Command::new(LAUNCHER), &self.home);
        command.args(args).arg("--data-dir").arg(self.dir.root());
        command
    }

    fn upgrade(&self, args: &[&str]) -> Ran {
        let mut all = vec!["upgrade"];
        all.extend_from_slice(args);
        run(&mut self.launcher(&all))
    }

    /// `upgrade --json <args>`: the outcome and the one JSON report.
    fn upgrade_json(&self, args: &[&str]) -> (Ran, UpgradeReport) {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        let out = self.upgrade(&all);
        let report = parse_report(&out);
        (out, report)
    }

    /// `waiaas-launcher run`, logging to `launcher-<n>.stderr` (a fresh
    /// file per supervisor of this site).
    fn supervisor(&self) -> Supervisor {
        self.supervisor_with(&[])
    }

    /// [`Site::supervisor`] with extra environment variables.
    fn supervisor_with(&self, env: &[(&str, &str)]) -> Supervisor {
        let n = self.supervisors.fetch_add(1, Ordering::SeqCst);
        let mut command = self.launcher(&["run"]);
        command.envs(env.iter().copied());
        Supervisor::spawn(
            command,
            self.home.join(format!("launcher-{n}.stderr")),
            self.dir.launcher_socket(),
            LogFile::Fresh,
        )
        .with_healthy_within(Duration::from_secs(60))
    }

    /// `waiaas-launcher stop`, and `supervisor` gone.
    fn stop(&self, supervisor: Supervisor) {
        supervisor.stop_with(self.launcher(&["stop"]));
    }

    fn current(&self) -> Option<String> {
        fs::read_link(self.dir.current())
            .ok()
            .and_then(|t| t.file_name().map(|n| n.to_string_lossy().into_owned()))
    }

    fn journal(&self) -> Option<serde_json::Value> {
        let bytes = fs::read(self.dir.upgrade_journal()).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    fn token(&self) -> String {
        fs::read_to_string(self.dir.master_token())
            .expect("data/master.token (written at the daemon's first start)")
            .trim()
            .to_string()
    }

    fn health(&self) -> Option<HealthResponse> {
        let (status, body) = http(self.port, "GET", "/health", None, None)?;
        (status == 200).then(|| serde_json::from_str(&body).ok())?
    }

    /// Creates a wallet through the API; returns its id.
    fn create_wallet(&self, name: &str) -> String {
        support::create_wallet(self.port, &self.token(), name)
    }

    /// The wallets the API lists: id → name.
    fn wallets(&self) -> BTreeMap<String, String> {
        support::wallets(self.port, &self.token())
    }

    /// Creates `names` as wallets; returns all wallets the API then lists.
    fn seed(&self, names: &[&str]) -> BTreeMap<String, String> {
        for name in names {
            self.create_wallet(name);
        }
        let wallets = self.wallets();
        assert!(wallets.len() >= names.len());
        wallets
    }

    fn versions(&self) -> BTreeSet<String> {
        names_in(&self.dir.versions())
    }

    fn backups(&self) -> Vec<(PathBuf, Manifest)> {
        let mut list: Vec<(PathBuf, Manifest)> = fs::read_dir(self.dir.backups())
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                let manifest = fs::read(e.path().join(BACKUP_MANIFEST)).ok()?;
                Some((e.path(), serde_json::from_slice(&manifest).ok()?))
            })
            .collect();
        list.sort_by(|a, b| a.0.cmp(&b.0));
        list
    }

    fn snapshot(&self) -> Snapshot {
        Snapshot {
            current: self.current(),
            versions: self.versions(),
            backups: names_in(&self.dir.backups()),
            config: fs::read_to_string(self.dir.config()).unwrap(),
            database: self
                .dir
                .database()
                .exists()
                .then(|| DbDigest::of(&self.dir.database())),
            journal: self.dir.upgrade_journal().exists(),
        }
    }

    /// Fully old: `current` → A, no journal, A serving schema 16, every wallet there.
    fn assert_fully_old(&self, wallets: &BTreeMap<String, String>) {
        self.assert_state(a(), A_SCHEMA, wallets);
    }

    /// Fully new: `current` → B, no journal, B serving schema 17, every wallet there.
    fn assert_fully_new(&self, wallets: &BTreeMap<String, String>) {
        self.assert_state(B_VERSION, B_SCHEMA, wallets);
    }

    fn assert_state(&self, version: &str, schema: u32, wallets: &BTreeMap<String, String>) {
        assert_eq!(self.current().as_deref(), Some(version), "current");
        assert!(
            !self.dir.upgrade_journal().exists(),
            "upgrade.json is left: {:?}",
            self.journal()
        );
        let health = self.health().expect("/health answers");
        assert_eq!(health.status, "ok");
        assert_eq!(health.version, version, "/health version");
        assert_eq!(health.schema_version, schema, "/health schemaVersion");
        assert_eq!(&self.wallets(), wallets, "the wallets written before");
    }
}

/// An installation of A on [`big_database`] with a supervisor, upgraded to
/// `offer` while a [`Writer`] creates wallets from before the command to
/// after it.
fn upgrade_while_writing(offer: Offer) -> (Site, Supervisor, Ran, UpgradeReport, Written) {
    let site = Site::with(Setup {
        offer,
        big_db: true,
        ..Setup::default()
    });
    let mut supervisor = site.supervisor();
    supervisor.wait_healthy();
    let writer = Writer::start(site.port, &site.token(), "w");
    std::thread::sleep(Duration::from_millis(300));
    let (out, report) = site.upgrade_json(&[]);
    std::thread::sleep(Duration::from_millis(300));
    let written = writer.stop();
    (site, supervisor, out, report, written)
}

/// Nothing a restore staged or set aside is left in `data/` once it is done.
fn assert_no_leftovers(site: &Site) {
    let left: Vec<String> = names_in(&site.dir.data())
        .into_iter()
        .filter(|n| n.ends_with(".restore") || n.starts_with(".rolled-back-"))
        .collect();
    assert!(left.is_empty(), "left in data/: {left:?}");
}

/// The `w-…` wallet names in the database at `db` (with its WAL, if any,
/// beside it), read from a copy so that nothing is changed.
fn written_names(db: &Path, wal: Option<&Path>) -> BTreeSet<String> {
    let tmp = tempfile::tempdir().unwrap();
    let copy = tmp.path().join("x.db");
    fs::copy(db, &copy).unwrap();
    if let Some(wal) = wal {
        fs::copy(wal, tmp.path().join("x.db-wal")).unwrap();
    }
    let conn = Connection::open(&copy).unwrap();
    let mut statement = conn
        .prepare("SELECT name FROM wallets WHERE name LIKE 'w-%'")
        .unwrap();
    statement
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

fn names_in(dir: &Path) -> BTreeSet<String> {
    fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect()
}

fn parse_report(out: &Ran) -> UpgradeReport {
    serde_json::from_str(out.stdout.trim())
        .unwrap_or_else(|e| panic!("no JSON report ({e}) in {out:?}"))
}

/// Everything an upgrade may change, for "nothing changed".
#[derive(Debug, PartialEq)]
struct Snapshot {
    current: Option<String>,
    versions: BTreeSet<String>,
    backups: BTreeSet<String>,
    config: String,
    database: Option<DbDigest>,
    journal: bool,
}

/// The database by content: its schema, and every table's rows (hashed; the
/// key-value store without its `updated_at`, which a daemon start rewrites).
#[derive(Debug, PartialEq)]
struct DbDigest {
    schema_version: u32,
    schema: Vec<String>,
    tables: BTreeMap<String, (usize, String)>,
}

impl DbDigest {
    fn of(path: &Path) -> Self {
        let conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY)
            .unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
        conn.busy_timeout(Duration::from_secs(10)).unwrap();
        let schema: Vec<String> = conn
            .prepare("SELECT type || ' ' || name || ': ' || coalesce(sql, '') FROM sqlite_master ORDER BY type, name")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        let names: Vec<String> = conn
            .prepare("SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        let mut tables = BTreeMap::new();
        for name in names {
            let query = if name == "key_value_store" {
                "SELECT key, value FROM key_value_store ORDER BY key".to_string()
            } else {
                format!("SELECT * FROM \"{name}\" ORDER BY rowid")
            };
            let mut stmt = conn.prepare(&query).unwrap();
            let columns = stmt.column_count();
            let mut rows = stmt.query([]).unwrap();
            let (mut count, mut hash) = (0usize, Sha256::new());
            while let Some(row) = rows.next().unwrap() {
                count += 1;
                for i in 0..columns {
                    let value = row.get_ref(i).unwrap();
                    hash.update(format!("{value:?}\u{1f}").as_bytes());
                }
                hash.update(b"\x1e");
            }
            tables.insert(name, (count, hex::encode(hash.finalize())));
        }
        let schema_version = conn
            .query_row(
                "SELECT coalesce(max(version), 0) FROM schema_version",
                [],
                |r| r.get(0),
            )
            .unwrap();
        Self {
            schema_version,
            schema,
            tables,
        }
    }
}

/// Spawns `command` with stdout and stderr into files under `home`.
fn spawn_logged(mut command: Command, home: &Path, name: &str) -> (Child, PathBuf, PathBuf) {
    let (out, err) = (
        home.join(format!("{name}.stdout")),
        home.join(format!("{name}.stderr")),
    );
    let child = command
        .stdin(Stdio::null())
        .stdout(fs::File::create(&out).unwrap())
        .stderr(fs::File::create(&err).unwrap())
        .spawn()
        .unwrap();
    (child, out, err)
}

fn wait_child(child: &mut Child, timeout: Duration, what: &str) -> std::process::ExitStatus {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("{what} did not finish within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// `[n/7] name: message` lines of a rendered upgrade: the step numbers in order.
fn rendered_steps(stderr: &str) -> Vec<u8> {
    stderr
        .lines()
        .filter_map(|l| l.strip_prefix('['))
        .filter_map(|l| l.split_once('/'))
        .filter_map(|(n, _)| n.parse().ok())
        .collect()
}

// ---------------------------------------------------------------------------
// Scenarios 7–11.

#[test]
fn scenario_07_check_reports_versions() {
    let site = Site::new();
    let before = site.snapshot();
    let out = site.upgrade(&["--check"]);
    assert!(out.status.success(), "{out:?}");
    assert!(
        out.stdout
            .contains(&format!("Update available: {} → {B_VERSION}", a())),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains("waiaas-launcher upgrade"),
        "{}",
        out.stdout
    );

    let out = site.upgrade(&["--check", "--json"]);
    assert!(out.status.success(), "{out:?}");
    let json: serde_json::Value = serde_json::from_str(out.stdout.trim()).unwrap();
    assert_eq!(
        json,
        serde_json::json!({"current": a(), "latest": B_VERSION, "updateAvailable": true,
            "deprecated": null})
    );
    // Only the packument was read: nothing downloaded, nothing changed.
    let tarball = Registry::tarball_path(&platform_package(this_target().unwrap()), B_VERSION);
    assert_eq!(site.registry.hits(&tarball), 0);
    assert_eq!(site.snapshot(), before);
}

/// A release withdrawn with `npm deprecate` is named as such by `--check`:
/// automatic upgrades skip it, a manual `--to` still installs it.
#[test]
fn check_says_why_a_deprecated_release_is_withheld() {
    let site = Site::new();
    let before = site.snapshot();
    site.registry
        .deprecate(CLI_PACKAGE, B_VERSION, "loses \"writes\" on ARM; use 1.9.1");
    let out = site.upgrade(&["--check"]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        out.stdout.trim(),
        format!(
            "Update available: {} → {B_VERSION}, but {B_VERSION} is deprecated on the registry \
             (\"loses \\\"writes\\\" on ARM; use 1.9.1\"): automatic upgrades skip it; \
             `waiaas-launcher upgrade --to {B_VERSION}` still installs it if you mean to",
            a()
        ),
    );
    let out = site.upgrade(&["--check", "--json"]);
    let json: serde_json::Value = serde_json::from_str(out.stdout.trim()).unwrap();
    assert_eq!(json["deprecated"], "loses \"writes\" on ARM; use 1.9.1");
    assert_eq!(json["updateAvailable"], true);

    // The running release withdrawn: up to date, and told so.
    site.registry.set_tag(CLI_PACKAGE, "latest", a());
    site.registry.deprecate(CLI_PACKAGE, a(), "superseded");
    let out = site.upgrade(&["--check"]);
    assert!(out.status.success(), "{out:?}");
    assert!(out.stdout.contains("Up to date"), "{}", out.stdout);
    assert!(
        out.stdout.contains(&format!(
            "{} is deprecated on the registry (\"superseded\")",
            a()
        )),
        "{}",
        out.stdout
    );
    assert_eq!(site.snapshot(), before, "a check changes nothing");
}

#[test]
fn scenario_08_upgrade_runs_all_seven_steps() {
    let site = Site::new();
    let mut supervisor = site.supervisor();
    supervisor.wait_healthy();
    let wallets = site.seed(&["treasury", "payroll", "ops"]);
    site.assert_fully_old(&wallets);

    let out = site.upgrade(&[]);
    assert!(out.status.success(), "{out:?}\n{}", supervisor.log());
    let steps = rendered_steps(&out.stderr);
    let mut distinct = steps.clone();
    distinct.dedup();
    assert_eq!(
        distinct,
        (1..=7).collect::<Vec<u8>>(),
        "progress:\n{}",
        out.stderr
    );
    assert!(out.stderr.contains("[7/7]"), "{}", out.stderr);
    assert!(
        out.stdout
            .contains(&format!("Upgraded {} → {B_VERSION}", a())),
        "{}",
        out.stdout
    );

    site.assert_fully_new(&wallets);
    assert_eq!(
        fs::read_link(site.dir.current()).unwrap(),
        Path::new("versions").join(B_VERSION)
    );
    let status = supervisor.wait_healthy();
    assert_eq!(status.daemon.as_ref().unwrap().version, B_VERSION);
    assert_eq!(status.daemon.as_ref().unwrap().schema_version, B_SCHEMA);
    // B's schema is really in the database: the new column and index.
    let conn =
        Connection::open_with_flags(site.dir.database(), OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
    let labels: i64 = conn
        .query_row("SELECT count(*) FROM wallets WHERE label = ''", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(labels as usize, wallets.len());
    // And the new version keeps working: a write through B's API.
    site.create_wallet("after-upgrade");
    assert_eq!(site.wallets().len(), wallets.len() + 1);
}

/// The supervisor replaces itself in place (same PID) with the new release's
/// launcher, which starts its own daemon and sends the report.
#[test]
fn the_supervisor_becomes_the_new_releases_launcher_in_place() {
    let site = Site::new();
    let mut supervisor = site.supervisor();
    let before = supervisor.wait_healthy();
    assert_eq!(before.launcher_version, a());
    let wallets = site.seed(&["treasury", "payroll"]);

    let ((out, report), ok, failed) = under_load(site.port, 32, || site.upgrade_json(&[]));
    assert!(out.status.success(), "{out:?}\n{}", supervisor.log());
    assert_eq!(report.outcome, Outcome::Upgraded, "{report:?}");
    eprintln!("32 clients across the upgrade and handover: {ok} answered, {failed} failed");
    assert!(ok > 100, "only {ok} requests answered");
    assert_eq!(failed, 0, "requests failed across the handover");
    let after = supervisor.wait_healthy();
    assert_eq!(after.launcher_pid, before.launcher_pid, "the same process");
    assert_eq!(after.launcher_version, B_VERSION, "running B's launcher");
    let exe = fs::read_link(format!("/proc/{}/exe", after.launcher_pid)).unwrap();
    assert_eq!(exe, site.dir.version(B_VERSION).join("waiaas-launcher"));
    let log = supervisor.log();
    assert!(
        log.contains(&format!("took over from launcher {}", a())),
        "{log}"
    );
    site.assert_fully_new(&wallets);
    // One entry point: A's launcher binary hands every command to B's.
    let version = run(&mut site.launcher(&["--version"]));
    assert!(version.stdout.contains(B_VERSION), "{version:?}");
    let check = site.upgrade(&["--check"]);
    assert!(
        check.stdout.contains(&format!("Up to date ({B_VERSION}")),
        "{check:?}"
    );

    // `--rollback` moves the launcher back too, in place.
    let ((out, report), ok, failed) =
        under_load(site.port, 32, || site.upgrade_json(&["--rollback"]));
    eprintln!("32 clients across the rollback and handover: {ok} answered, {failed} failed");
    assert_eq!(failed, 0, "requests failed across the rollback's handover");
    assert!(out.status.success(), "{out:?}\n{}", supervisor.log());
    assert_eq!(report.outcome, Outcome::Restored, "{report:?}");
    let back = supervisor.wait_healthy();
    assert_eq!(back.launcher_pid, before.launcher_pid);
    assert_eq!(back.launcher_version, a());
    assert_eq!(back.daemon.as_ref().unwrap().version, a());
    site.assert_fully_old(&wallets);
    let (out, report) = site.upgrade_json(&[]);
    assert!(out.status.success(), "{out:?}\n{}", supervisor.log());
    assert_eq!(report.outcome, Outcome::Upgraded, "{report:?}");

    // The service started again by the old launcher binary (systemd's
    // ExecStart, the PATH) hands itself to the installation's newer one.
    site.stop(supervisor);
    let mut again = site.supervisor();
    let status = again.wait_healthy();
    assert_eq!(status.launcher_version, B_VERSION);
    let exe = fs::read_link(format!("/proc/{}/exe", status.launcher_pid)).unwrap();
    assert_eq!(exe, site.dir.version(B_VERSION).join("waiaas-launcher"));
}

/// Probation: a new launcher that dies instead of taking over leaves the
/// journal unconfirmed; the next start (by whatever launcher the service
/// names) rolls the whole release back and serves the old version.
#[test]
fn a_new_launcher_that_dies_at_once_is_rolled_back_at_the_next_start() {
    let site = Site::with(Setup {
        offer: Offer::Faulty(Fault::LauncherDiesOnRun),
        ..Setup::default()
    });
    let mut supervisor = site.supervisor();
    supervisor.wait_healthy();
    let wallets = site.seed(&["treasury", "payroll"]);

    let out = site.upgrade(&[]);
    assert!(!out.status.success(), "{out:?}");
    assert!(out.stderr.contains("lost the connection"), "{}", out.stderr);
    let exit = supervisor.wait_exit(Duration::from_secs(30));
    assert!(!exit.success(), "{exit}");
    let journal = site.journal().expect("an unconfirmed handover");
    assert_eq!(journal["handed_over"], true, "{journal}");

    // What systemd's restart does: the service's launcher runs again.
    let mut again = site.supervisor();
    let status = again.wait_healthy();
    assert_eq!(status.daemon.as_ref().unwrap().version, a());
    assert_eq!(status.launcher_version, a());
    assert!(site.journal().is_none());
    site.assert_fully_old(&wallets);
}

/// Probation with a deadline: a new launcher that hangs in the handover
/// (blocks forever, serving nothing, holding the listener, the admin socket
/// and the command's connection) is ended by the deadline the old launcher
/// armed before the exec (SIGALRM, `[update] health_timeout` + 10 s) — with
/// no systemd watchdog and nobody watching — and the next start (as
/// systemd's `Restart=` would make it, or `run` again by hand) finds the
/// unconfirmed handover, says so, and rolls the whole release back: A's
/// launcher, A's daemon, `current`, the database.
#[test]
fn a_new_launcher_that_hangs_in_the_handover_is_ended_and_rolled_back_at_the_next_start() {
    use std::os::unix::process::ExitStatusExt;
    let health_timeout = 5;
    let site = Site::with(Setup {
        offer: Offer::Faulty(Fault::LauncherHangsOnHandover),
        health_timeout,
        ..Setup::default()
    });
    let mut supervisor = site.supervisor();
    let pid = supervisor.wait_healthy().launcher_pid;
    let wallets = site.seed(&["treasury", "payroll"]);
    let before = DbDigest::of(&site.dir.database());
    let config = fs::read(site.dir.config()).unwrap();

    let started = Instant::now();
    let (mut command, out, err) = spawn_logged(site.launcher(&["upgrade"]), &site.home, "upgrade");
    // The hung launcher holds the command's connection: the command waits
    // until the deadline ends that process, then says the connection is lost.
    let status = wait_child(
        &mut command,
        Duration::from_secs(120),
        "the upgrade command",
    );
    let took = started.elapsed();
    let stderr = fs::read_to_string(&err).unwrap();
    assert!(
        !status.success(),
        "{}{stderr}",
        fs::read_to_string(&out).unwrap()
    );
    assert!(stderr.contains("lost the connection"), "{stderr}");
    let exit = supervisor.wait_exit(Duration::from_secs(60));
    assert_eq!(
        exit.signal(),
        Some(libc::SIGALRM),
        "ended by its deadline: {exit}\n{}",
        supervisor.log()
    );
    let deadline = Duration::from_secs(health_timeout + 10);
    eprintln!("the hung launcher (pid {pid}) was ended {took:?} after the upgrade began");
    assert!(
        took >= deadline && took < deadline + Duration::from_secs(60),
        "ended after {took:?}, the deadline is {deadline:?}"
    );
    let log = supervisor.log();
    assert!(
        log.contains(&format!("must confirm within {} s", deadline.as_secs()))
            && log.contains("hanging in the handover"),
        "{log}"
    );
    let journal = site.journal().expect("an unconfirmed handover");
    assert_eq!(journal["handed_over"], true, "{journal}");
    assert!(
        processes_mentioning(site.dir.root()).is_empty(),
        "nothing of the hung release runs"
    );

    // What systemd's restart does: the service's launcher (A's) runs again.
    let mut again = site.supervisor();
    let status = again.wait_healthy();
    assert_eq!(status.launcher_version, a());
    assert_eq!(status.daemon.as_ref().unwrap().version, a());
    let exe = fs::read_link(format!("/proc/{}/exe", status.launcher_pid)).unwrap();
    assert_eq!(exe, fs::canonicalize(LAUNCHER).unwrap(), "A's launcher");
    site.assert_fully_old(&wallets);
    assert_eq!(DbDigest::of(&site.dir.database()), before, "the database");
    assert_eq!(fs::read(site.dir.config()).unwrap(), config);
    let log = again.log();
    assert!(
        log.contains(&format!("handover to {B_VERSION}'s launcher"))
            && log.contains("was never confirmed")
            && log.contains("rolled back"),
        "the reason is in the log:\n{log}"
    );
}

/// `upgrade --no-start` commits with the daemon left stopped, and the old
/// launcher keeps running (there is no daemon to hand over yet): the next
/// start — `restart` here (SIGHUP is the same), or the service started
/// again — is the new release's launcher, in place.
#[test]
fn no_start_leaves_the_old_launcher_running_until_the_next_start() {
    let site = Site::new();
    let mut supervisor = site.supervisor();
    let pid = supervisor.wait_healthy().launcher_pid;
    let wallets = site.seed(&["treasury", "payroll"]);

    let (out, report) = site.upgrade_json(&["--no-start"]);
    assert!(out.status.success(), "{out:?}\n{}", supervisor.log());
    assert_eq!(report.outcome, Outcome::Upgraded, "{report:?}");
    let status = supervisor.wait_for(Duration::from_secs(30), "stopped", |s| s.state == "stopped");
    assert_eq!(
        (status.launcher_pid, status.launcher_version.as_str()),
        (pid, a())
    );
    assert!(status.daemon.is_none(), "{status:?}");
    let exe = fs::read_link(format!("/proc/{pid}/exe")).unwrap();
    assert_eq!(
        exe,
        fs::canonicalize(LAUNCHER).unwrap(),
        "still A's launcher"
    );
    assert_eq!(site.current().as_deref(), Some(B_VERSION));
    assert!(site.journal().is_none(), "committed");
    assert!(site.health().is_none(), "no daemon serves");

    // The next start: `restart` (A's binary hands the command to B's; the
    // old supervisor hands the service to B's launcher, which starts B).
    let restart = run(&mut site.launcher(&["restart"]));
    assert!(
        restart.status.success(),
        "{restart:?}\n{}",
        supervisor.log()
    );
    assert!(
        restart.stdout.contains("handing the service to"),
        "{restart:?}"
    );
    let status = supervisor.wait_healthy();
    assert_eq!(status.launcher_pid, pid, "the same process");
    assert_eq!(status.launcher_version, B_VERSION);
    assert_eq!(status.daemon.as_ref().unwrap().version, B_VERSION);
    let exe = fs::read_link(format!("/proc/{pid}/exe")).unwrap();
    assert_eq!(exe, site.dir.version(B_VERSION).join("waiaas-launcher"));
    site.assert_fully_new(&wallets);

    // Left stopped again, the service started afresh by A's binary: B too.
    let (out, _) = site.upgrade_json(&["--rollback", "--no-start"]);
    assert!(out.status.success(), "{out:?}\n{}", supervisor.log());
    site.stop(supervisor);
    let mut again = site.supervisor();
    let status = again.wait_healthy();
    assert_eq!(
        status.launcher_version,
        a(),
        "rolled back to A: A's launcher"
    );
    site.assert_fully_old(&wallets);
}

/// An old CLI against a new supervisor and a new CLI against an old one:
/// each works (A's and B's speak one admin protocol; A's binary hands its
/// commands to B's when it can, and talks to B's supervisor itself when it
/// cannot) — and when a supervisor and a command do not understand each
/// other, both say exactly which program to run the command with.
#[test]
fn old_and_new_clis_work_with_either_supervisor_or_name_the_program_to_use() {
    let site = Site::new();
    let b_launcher = builds::b_bin_dir().join("waiaas-launcher");
    let b_cli = |args: &[&str]| {
        let mut command = hermetic(Command::new(&b_launcher), &site.home);
        command.args(args).arg("--data-dir").arg(site.dir.root());
        run(&mut command)
    };
    let status_of = |out: &Ran| -> serde_json::Value {
        assert!(out.status.success(), "{out:?}");
        serde_json::from_str(out.stdout.trim()).unwrap()
    };

    // A new CLI (B's) against an old supervisor (A's).
    let mut supervisor = site.supervisor();
    supervisor.wait_healthy();
    let wallets = site.seed(&["treasury"]);
    let status = status_of(&b_cli(&["status", "--json"]));
    assert_eq!(status["launcher_version"], a(), "{status}");
    let check = b_cli(&["upgrade", "--check"]);
    assert!(check.status.success(), "{check:?}");

    // An old CLI (A's) against a new supervisor (B's, after the upgrade):
    // handed to B's binary, or — as a CLI that cannot hand over (one from
    // before the entry point) — talking to B's supervisor itself.
    let (out, _) = site.upgrade_json(&[]);
    assert!(out.status.success(), "{out:?}\n{}", supervisor.log());
    let status = status_of(&run(&mut site.launcher(&["status", "--json"])));
    assert_eq!(status["launcher_version"], B_VERSION, "{status}");
    let status = status_of(&run(site
        .launcher(&["status", "--json"])
        .env("WAIAAS_DELEGATED_FROM", "0.0.0")));
    assert_eq!(status["launcher_version"], B_VERSION, "{status}");
    site.assert_fully_new(&wallets);

    // A command of another admin protocol: the supervisor names its program.
    let program = site.dir.version(B_VERSION).join("waiaas-launcher");
    let answer = {
        use std::io::{BufRead, BufReader};
        let mut stream =
            std::os::unix::net::UnixStream::connect(site.dir.launcher_socket()).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        stream
            .write_all(b"{\"protocol\":99,\"request\":{\"type\":\"status\"}}\n")
            .unwrap();
        let mut line = String::new();
        BufReader::new(stream).read_line(&mut line).unwrap();
        line
    };
    assert!(
        answer.contains(&format!("run the command with {}", program.display())),
        "{answer}"
    );
    site.stop(supervisor);

    // A supervisor whose answers this command cannot read (a stand-in
    // speaking a later protocol): the command names the supervisor's program.
    let _ = fs::remove_file(site.dir.launcher_socket());
    let listener = std::os::unix::net::UnixListener::bind(site.dir.launcher_socket()).unwrap();
    fs::write(site.dir.launcher_pid(), format!("{}\n", std::process::id())).unwrap();
    let stand_in = std::thread::spawn(move || {
        use std::io::{BufRead, BufReader};
        let (stream, _) = listener.accept().unwrap();
        let mut line = String::new();
        BufReader::new(&stream).read_line(&mut line).unwrap();
        (&stream)
            .write_all(b"{\"type\":\"status_v9\",\"launcher\":{}}\n")
            .unwrap();
    });
    let out = run(site
        .launcher(&["status"])
        .env("WAIAAS_DELEGATED_FROM", "0.0.0"));
    stand_in.join().unwrap();
    let ours = std::env::current_exe().unwrap();
    assert!(!out.status.success(), "{out:?}");
    assert!(
        out.stderr
            .contains(&format!("the supervisor runs {}", ours.display()))
            && out.stderr.contains("run the command with that program"),
        "{}",
        out.stderr
    );
}

/// A newer launcher that is a source build — B's own `cargo build` output,
/// no `release.json` beside it — is the operator's own binary: `upgrade` run
/// from it moves the installation to it (through the running old supervisor,
/// which then becomes it), unsigned, saying so, recording its files' hashes
/// (`installed.json`) — journaled, backed up, with no download; and `run`
/// from it does the same before it serves.
#[test]
fn a_newer_source_build_without_release_json_is_accepted_saying_so() {
    let b_launcher = builds::b_bin_dir().join("waiaas-launcher");
    assert!(!builds::b_bin_dir().join("release.json").exists());
    let b_command = |site: &Site, args: &[&str]| {
        let mut command = hermetic(Command::new(&b_launcher), &site.home);
        command.args(args).arg("--data-dir").arg(site.dir.root());
        command
    };

    // `upgrade`, through the old supervisor.
    let site = Site::new();
    let mut supervisor = site.supervisor();
    supervisor.wait_healthy();
    let wallets = site.seed(&["treasury", "payroll"]);
    let out = run(&mut b_command(&site, &["upgrade"]));
    assert!(out.status.success(), "{out:?}\n{}", supervisor.log());
    assert!(
        out.stderr
            .contains("without a signed release.json, accepted as your own")
            && out.stderr.contains("accepting it as your own build"),
        "{}",
        out.stderr
    );
    let status = supervisor.wait_healthy();
    assert_eq!(status.launcher_version, B_VERSION);
    let exe = fs::read_link(format!("/proc/{}/exe", status.launcher_pid)).unwrap();
    assert_eq!(exe, site.dir.version(B_VERSION).join("waiaas-launcher"));
    site.assert_fully_new(&wallets);
    let installed = site.dir.version(B_VERSION);
    assert!(installed.join("installed.json").is_file());
    assert!(!installed.join("release.json").exists());
    assert_eq!(site.registry.total_hits(), 0, "nothing was downloaded");
    assert!(
        site.backups()
            .iter()
            .any(|(_, m)| m.kind == Kind::PreUpgrade),
        "a pre-upgrade backup"
    );
    // The way back checks the recorded hashes and works.
    let (out, report) = site.upgrade_json(&["--rollback"]);
    assert!(out.status.success(), "{out:?}\n{}", supervisor.log());
    assert_eq!(report.outcome, Outcome::Restored, "{report:?}");
    site.assert_fully_old(&wallets);
    drop(supervisor);

    // `run` from the source build: it moves the installation before it serves.
    let site = Site::new();
    let mut supervisor = site.supervisor();
    supervisor.wait_healthy();
    let wallets = site.seed(&["treasury"]);
    site.stop(supervisor);
    let mut supervisor = Supervisor::spawn(
        b_command(&site, &["run"]),
        site.home.join("source-build.stderr"),
        site.dir.launcher_socket(),
        LogFile::Fresh,
    );
    let status = supervisor.wait_healthy();
    assert_eq!(status.launcher_version, B_VERSION);
    assert_eq!(status.daemon.as_ref().unwrap().version, B_VERSION);
    let log = supervisor.log();
    assert!(
        log.contains("accepted as the operator's own") && log.contains("installed.json"),
        "{log}"
    );
    // /health answers just before the commit.
    let deadline = Instant::now() + Duration::from_secs(30);
    while site.dir.upgrade_journal().exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    site.assert_fully_new(&wallets);
    assert_eq!(site.registry.total_hits(), 0, "nothing was downloaded");
}

/// Runs `work` while `clients` send `GET /health` to `port` without pause
/// (bounded: 5 minutes at most); returns its result and the requests that
/// were answered and that failed.
fn under_load<T>(port: u16, clients: usize, work: impl FnOnce() -> T) -> (T, u64, u64) {
    let url = format!("http://127.0.0.1:{port}/health");
    let load = support::load::Load::start(
        &url,
        clients,
        Duration::from_secs(60),
        Duration::from_secs(300),
    );
    std::thread::sleep(Duration::from_millis(300));
    let result = work();
    std::thread::sleep(Duration::from_millis(300));
    let tally = load.finish();
    for (_, _, error) in &tally.errors {
        eprintln!("failed: {error}");
    }
    (result, tally.sent() - tally.failed, tally.failed)
}

/// Unpacks a platform tarball as npm would (`package/…` → `<folder>/…`).
fn unpack_like_npm(tarball: &Path, folder: &Path) {
    for entry in waiaas_packaging::read_package_tarball(tarball).unwrap() {
        if let waiaas_packaging::EntryKind::File { contents, mode } = entry.kind {
            let rel = entry.path.strip_prefix("package/").unwrap();
            let path = folder.join(rel);
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            fs::write(&path, contents).unwrap();
            use std::os::unix::fs::PermissionsExt;
            fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
        }
    }
}

/// After `npm install -g` of a newer release, the launcher on the PATH and
/// the installation agree: `run` from that launcher moves the data dir to the
/// release beside it — verified, backed up, journaled — with no download.
#[test]
fn a_newer_launcher_moves_the_installation_to_the_release_beside_it() {
    let site = Site::new();
    let mut supervisor = site.supervisor();
    supervisor.wait_healthy();
    let wallets = site.seed(&["treasury"]);
    site.stop(supervisor);

    let npm = site.home.join("npm-global/@waiaas/cli-platform");
    unpack_like_npm(&releases().b.platform_tarball, &npm);
    let launcher = npm.join("bin/waiaas-launcher");
    let mut command = hermetic(Command::new(&launcher), &site.home);
    command.args(["run", "--data-dir"]).arg(site.dir.root());
    let mut supervisor = Supervisor::spawn(
        command,
        site.home.join("npm-launcher.stderr"),
        site.dir.launcher_socket(),
        LogFile::Fresh,
    );
    let status = supervisor.wait_healthy();
    assert_eq!(status.launcher_version, B_VERSION);
    assert_eq!(status.daemon.as_ref().unwrap().version, B_VERSION);
    assert_eq!(site.current().as_deref(), Some(B_VERSION));
    assert!(site.journal().is_none());
    assert_eq!(site.registry.total_hits(), 0, "nothing was downloaded");
    assert!(
        site.backups()
            .iter()
            .any(|(_, m)| m.kind == Kind::PreUpgrade),
        "a pre-upgrade backup was taken"
    );
    site.assert_fully_new(&wallets);
}

#[test]
fn standalone_upgrade_without_a_supervisor() {
    let site = Site::new();
    let mut supervisor = site.supervisor();
    supervisor.wait_healthy();
    let wallets = site.seed(&["treasury", "payroll"]);
    site.stop(supervisor);
    assert!(site.health().is_none(), "nothing serves");

    let (out, report) = site.upgrade_json(&[]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(report.outcome, Outcome::Upgraded, "{report:?}");
    assert_eq!(report.from.as_deref(), Some(a()));
    assert_eq!(report.to.as_deref(), Some(B_VERSION));
    assert!(
        report.message.contains("left stopped"),
        "{}",
        report.message
    );
    assert_eq!(site.current().as_deref(), Some(B_VERSION));
    assert!(!site.dir.upgrade_journal().exists());
    assert_eq!(DbDigest::of(&site.dir.database()).schema_version, B_SCHEMA);
    assert!(site.health().is_none(), "the daemon is left stopped");
    assert!(
        processes_mentioning(site.dir.root()).is_empty(),
        "the new daemon the engine started for its health check is gone"
    );

    let mut supervisor = site.supervisor();
    supervisor.wait_healthy();
    site.assert_fully_new(&wallets);
}

#[test]
fn an_installation_never_started_is_upgraded_and_rolled_back() {
    let site = Site::new();
    assert!(!site.dir.database().exists(), "init makes no database");

    let (out, report) = site.upgrade_json(&[]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(report.outcome, Outcome::Upgraded, "{report:?}");
    assert!(
        report.message.contains("never been started")
            && report.message.contains("config.toml alone"),
        "{}",
        report.message
    );
    let backup = PathBuf::from(report.backup.expect("a backup"));
    assert!(backup.join("config.toml").is_file());
    assert!(
        !backup.join("waiaas.db").exists(),
        "there was no database to copy"
    );
    assert_eq!(site.current().as_deref(), Some(B_VERSION));
    assert_eq!(DbDigest::of(&site.dir.database()).schema_version, B_SCHEMA);

    // Back to the state before: A, and no database (as before the upgrade).
    let (out, report) = site.upgrade_json(&["--rollback"]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(report.outcome, Outcome::Restored, "{report:?}");
    assert_eq!(site.current().as_deref(), Some(a()));
    // "No database" was restored; the check start of A made a fresh one.
    assert_eq!(DbDigest::of(&site.dir.database()).schema_version, A_SCHEMA);
    let mut supervisor = site.supervisor();
    let status = supervisor.wait_healthy();
    assert_eq!(status.daemon.unwrap().version, a());
    assert!(site.wallets().is_empty());
}

#[test]
fn scenario_09_backup_holds_database_and_config() {
    let site = Site::new();
    let mut supervisor = site.supervisor();
    supervisor.wait_healthy();
    let wallets = site.seed(&["treasury", "payroll"]);
    let before = DbDigest::of(&site.dir.database());
    let config = fs::read(site.dir.config()).unwrap();
    let started = UtcTime::now();

    let (out, report) = site.upgrade_json(&[]);
    assert!(out.status.success(), "{out:?}\n{}", supervisor.log());
    assert_eq!(report.outcome, Outcome::Upgraded);
    let backup = PathBuf::from(report.backup.expect("the report names the backup"));

    // backups/pre-upgrade-1.8.1-<yyyymmddThhmmssZ>/
    assert_eq!(backup.parent().unwrap(), site.dir.backups());
    let name = backup.file_name().unwrap().to_string_lossy().into_owned();
    let stamp = name
        .strip_prefix(&format!("pre-upgrade-{}-", a()))
        .unwrap_or_else(|| panic!("{name}"));
    assert!(
        stamp.len() == 16 && stamp.as_bytes()[8] == b'T' && stamp.ends_with('Z'),
        "{name}"
    );
    assert_eq!(
        names_in(&backup),
        ["backup.json", "config.toml", "waiaas.db"]
            .map(String::from)
            .into()
    );

    let manifest: Manifest =
        serde_json::from_slice(&fs::read(backup.join("backup.json")).unwrap()).unwrap();
    assert_eq!(manifest.kind, Kind::PreUpgrade);
    assert_eq!(manifest.from_version, a());
    assert_eq!(manifest.to_version, B_VERSION);
    assert_eq!(manifest.schema_version, A_SCHEMA);
    let created = UtcTime::parse_rfc3339(&manifest.created_at).expect("created_at is RFC 3339");
    assert!(
        created >= UtcTime::from_unix_ms(started.unix_seconds() * 1000)
            && created <= UtcTime::now()
    );
    assert_eq!(stamp, created.compact());
    assert_eq!(manifest.files.len(), 2);
    for (file, sha) in &manifest.files {
        assert_eq!(&sha256_file(&backup.join(file)).unwrap(), sha, "{file}");
    }
    // The copies are the state before: the config byte for byte, the database
    // at schema 16 with every row, and sound.
    assert_eq!(fs::read(backup.join("config.toml")).unwrap(), config);
    assert_eq!(DbDigest::of(&backup.join("waiaas.db")), before);
    let copy = Connection::open_with_flags(
        format!("file:{}?immutable=1", backup.join("waiaas.db").display()),
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_URI,
    )
    .unwrap();
    let check: String = copy
        .query_row("PRAGMA quick_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(check, "ok");
    site.assert_fully_new(&wallets);
}

#[test]
fn scenario_10_rollback_restores_the_previous_state() {
    let site = Site::new();
    let mut supervisor = site.supervisor();
    supervisor.wait_healthy();
    let wallets = site.seed(&["treasury", "payroll"]);
    let (out, report) = site.upgrade_json(&[]);
    assert!(out.status.success(), "{out:?}\n{}", supervisor.log());
    let backup = PathBuf::from(report.backup.unwrap());
    site.assert_fully_new(&wallets);
    // A change made on the new version, after the backup.
    let later = site.create_wallet("made-on-1.9.0");

    let out = site.upgrade(&["--rollback"]);
    assert!(out.status.success(), "{out:?}\n{}", supervisor.log());
    assert!(out.stdout.contains("not in it"), "{}", out.stdout);
    assert!(
        out.stdout.contains(&format!("{B_VERSION} → {}", a())),
        "{}",
        out.stdout
    );

    site.assert_fully_old(&wallets);
    assert!(!site.wallets().contains_key(&later));
    // The restored files are the backup's, byte for byte (the daemon's writes
    // since its start sit in the WAL, beside the main file).
    assert_eq!(
        fs::read(site.dir.database()).unwrap(),
        fs::read(backup.join("waiaas.db")).unwrap(),
        "data/waiaas.db is the backup's"
    );
    assert_eq!(
        fs::read(site.dir.config()).unwrap(),
        fs::read(backup.join("config.toml")).unwrap()
    );
    // The state just before the rollback is saved.
    let saved: Vec<_> = site
        .backups()
        .into_iter()
        .filter(|(_, m)| m.kind == Kind::PreRollback)
        .collect();
    assert_eq!(saved.len(), 1, "{:?}", site.backups());
    let (path, manifest) = &saved[0];
    assert!(
        path.file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with(&format!("pre-rollback-{B_VERSION}-"))
    );
    assert_eq!(manifest.schema_version, B_SCHEMA);
    let conn = Connection::open_with_flags(
        format!("file:{}?immutable=1", path.join("waiaas.db").display()),
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_URI,
    )
    .unwrap();
    let kept: i64 = conn
        .query_row(
            "SELECT count(*) FROM wallets WHERE id = ?1",
            [&later],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(kept, 1, "the later change is in the pre-rollback backup");
    let status = supervisor.wait_healthy();
    assert_eq!(status.daemon.unwrap().version, a());
}

/// `--rollback` run twice (finding 6 of issue 16): the second would restore
/// again the backup the first restored, dropping every write since. It is
/// refused, naming that backup, and every write acknowledged (201) since the
/// first rollback is still stored and served.
#[test]
fn a_second_rollback_is_refused_and_drops_no_write() {
    let site = Site::new();
    let mut supervisor = site.supervisor();
    supervisor.wait_healthy();
    let wallets = site.seed(&["treasury"]);
    let (out, report) = site.upgrade_json(&[]);
    assert!(out.status.success(), "{out:?}\n{}", supervisor.log());
    let backup = report.backup.expect("a pre-upgrade backup");
    let (out, report) = site.upgrade_json(&["--rollback"]);
    assert!(out.status.success(), "{out:?}\n{}", supervisor.log());
    assert_eq!(report.outcome, Outcome::Restored, "{report:?}");
    site.assert_fully_old(&wallets);

    let token = site.token();
    let acknowledged: BTreeSet<String> = (0..25)
        .map(|i| {
            let name = format!("after-the-rollback-{i}");
            support::create_wallet(site.port, &token, &name);
            name
        })
        .collect();
    let (out, report) = site.upgrade_json(&["--rollback"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}\n{}", supervisor.log());
    assert_eq!(report.outcome, Outcome::Refused, "{report:?}");
    assert!(report.message.contains(&backup), "{report:?}");
    let stored: BTreeSet<String> = site.wallets().into_values().collect();
    let lost: Vec<&String> = acknowledged.difference(&stored).collect();
    assert!(lost.is_empty(), "acknowledged, then lost: {lost:?}");
    assert_eq!(site.current().as_deref(), Some(a()));
    let status = supervisor.wait_healthy();
    assert_eq!(status.daemon.unwrap().version, a());

    // The operator said no to B: automatic upgrades skip it from now on
    // (SPEC §13), `status` says so, and `--forget` lifts it, once.
    let auto = status.auto.expect("status names the automatic upgrades");
    assert_eq!(auto.policy, "off");
    assert!(
        auto.quarantined
            .iter()
            .any(|q| q.version == B_VERSION && q.reason.contains("--rollback")),
        "{auto:?}"
    );
    let out = site.upgrade(&["--forget", B_VERSION]);
    assert!(out.status.success(), "{out:?}");
    assert!(out.stdout.contains("no longer quarantined"), "{out:?}");
    let out = site.upgrade(&["--forget", B_VERSION]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(out.stderr.contains("is not quarantined"), "{out:?}");
    let status = supervisor.status().unwrap();
    assert!(status.auto.unwrap().quarantined.is_empty());
}

#[test]
fn scenario_11_already_latest_says_so() {
    let site = Site::with(Setup {
        latest_is_a: true,
        ..Setup::default()
    });
    let mut supervisor = site.supervisor();
    let pid = daemon_pid(&supervisor.wait_healthy());
    let wallets = site.seed(&["treasury"]);
    let before = site.snapshot();

    let out = site.upgrade(&[]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(out.stdout.trim(), format!("Already up to date ({})", a()));
    let (out, report) = site.upgrade_json(&[]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(report.outcome, Outcome::UpToDate);

    assert_eq!(site.snapshot(), before);
    assert_eq!(
        daemon_pid(&supervisor.wait_healthy()),
        pid,
        "the daemon was not touched"
    );
    site.assert_fully_old(&wallets);
}

// ---------------------------------------------------------------------------
// Failures after the preflight roll back.

/// Upgrades through a supervisor and expects a clean rollback at `step`.
fn expect_rollback(
    setup: Setup,
    step: u8,
    wallets_named: &[&str],
) -> (Site, UpgradeReport, Duration) {
    let site = Site::with(setup);
    let mut supervisor = site.supervisor();
    supervisor.wait_healthy();
    let wallets = site.seed(wallets_named);
    let before = DbDigest::of(&site.dir.database());
    let config = fs::read(site.dir.config()).unwrap();

    let started = Instant::now();
    let (out, report) = site.upgrade_json(&[]);
    let took = started.elapsed();
    assert_eq!(out.status.code(), Some(1), "{out:?}\n{}", supervisor.log());
    assert_eq!(report.outcome, Outcome::RolledBack, "{report:?}");
    let failed = report.failed_step.clone().unwrap_or_default();
    assert!(
        failed.starts_with(&format!("{step} ")),
        "failed step {failed:?}, expected {step}"
    );
    assert!(report.manual_steps.is_empty());

    site.assert_fully_old(&wallets);
    assert_eq!(
        DbDigest::of(&site.dir.database()),
        before,
        "the database is as before"
    );
    assert_eq!(fs::read(site.dir.config()).unwrap(), config);
    let status = supervisor.wait_healthy();
    assert_eq!(status.daemon.as_ref().unwrap().version, a());
    drop(supervisor);
    (site, report, took)
}

#[test]
fn a_failing_migration_rolls_back() {
    // Two wallets named alike: B's unique index on wallets(name) cannot be made.
    let (_site, report, _) = expect_rollback(Setup::default(), 5, &["treasury", "treasury", "ops"]);
    assert!(
        report.message.contains("migration 17"),
        "{}",
        report.message
    );
    assert!(report.message.contains("UNIQUE"), "{}", report.message);
}

#[test]
fn a_new_daemon_that_crashes_on_start_rolls_back() {
    let setup = Setup {
        offer: Offer::Faulty(Fault::Crash),
        ..Setup::default()
    };
    let (_site, report, _) = expect_rollback(setup, 7, &["treasury", "payroll"]);
    assert!(
        report.message.contains("exited with 1"),
        "{}",
        report.message
    );
}

/// An automatic rollback puts the live backup back whole: the writes made
/// while its main file was copied are in its WAL, and all are there again.
#[test]
fn an_automatic_rollback_restores_the_writes_in_the_backups_wal() {
    let (site, mut supervisor, out, report, written) =
        upgrade_while_writing(Offer::Faulty(Fault::Crash));
    assert_eq!(out.status.code(), Some(1), "{out:?}\n{}", supervisor.log());
    assert_eq!(report.outcome, Outcome::RolledBack, "{report:?}");
    let backup = PathBuf::from(report.backup.expect("a backup"));
    let manifest: Manifest =
        serde_json::from_slice(&fs::read(backup.join(BACKUP_MANIFEST)).unwrap()).unwrap();
    assert!(
        manifest.files.contains_key("waiaas.db-wal"),
        "the backup holds a WAL of recent writes: {manifest:?}"
    );
    let in_wal = written_names(
        &backup.join("waiaas.db"),
        Some(&backup.join("waiaas.db-wal")),
    )
    .difference(&written_names(&backup.join("waiaas.db"), None))
    .count();
    supervisor.wait_healthy();
    let now = site.wallets();
    let names: BTreeSet<&String> = now.values().collect();
    let lost: Vec<&String> = written
        .acknowledged
        .iter()
        .filter(|n| !names.contains(n))
        .collect();
    assert!(lost.is_empty(), "acknowledged, then lost: {lost:?}");
    eprintln!(
        "{} writes acknowledged, {in_wal} of them only in the backup's WAL, all back after the rollback",
        written.acknowledged.len()
    );
    assert!(
        in_wal > 0,
        "no write reached the backup's WAL: the test proves nothing"
    );
    site.assert_fully_old(&now);
    assert_no_leftovers(&site);
}

#[test]
fn a_new_daemon_that_never_becomes_healthy_rolls_back() {
    let setup = Setup {
        offer: Offer::Faulty(Fault::Hang),
        health_timeout: 3,
        ..Setup::default()
    };
    let (_site, report, took) = expect_rollback(setup, 7, &["treasury", "payroll"]);
    eprintln!(
        "a hanging daemon was given up on and rolled back in {took:?}: {}",
        report.message
    );
    // `health_timeout` is the time the new daemon has (SPEC §3): it is given
    // up on after about 3 s, not after the supervisor's own 10 s hello timeout.
    assert!(took < Duration::from_secs(3 + 6), "took {took:?}");
}

#[test]
fn a_hung_migration_fails_step_5_at_its_deadline_and_rolls_back() {
    let setup = Setup {
        offer: Offer::Faulty(Fault::HangMigrate),
        migrate_timeout: 3,
        ..Setup::default()
    };
    let (_site, report, took) = expect_rollback(setup, 5, &["treasury", "payroll"]);
    eprintln!("a hung migrate was killed and rolled back in {took:?}");
    assert!(
        report.message.contains("did not finish within 3s"),
        "{}",
        report.message
    );
    assert!(took < Duration::from_secs(3 + 10), "took {took:?}");
}

#[test]
fn a_tampered_package_changes_nothing() {
    let site = Site::with(Setup {
        tamper: true,
        ..Setup::default()
    });
    let mut supervisor = site.supervisor();
    let pid = daemon_pid(&supervisor.wait_healthy());
    let wallets = site.seed(&["treasury"]);
    let before = site.snapshot();

    let (out, report) = site.upgrade_json(&[]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert_eq!(report.outcome, Outcome::Refused, "{report:?}");
    assert!(report.message.contains("integrity"), "{}", report.message);
    let versions = names_in(&site.dir.versions());
    assert_eq!(
        versions,
        BTreeSet::from([a().to_string()]),
        "no 1.9.0, no leftovers"
    );
    assert_eq!(site.snapshot(), before);
    let status = supervisor.wait_healthy();
    assert_eq!(daemon_pid(&status), pid, "the daemon was never stopped");
    assert_eq!(status.restarts, 0);
    site.assert_fully_old(&wallets);
}

// ---------------------------------------------------------------------------
// kill -9 of the upgrading process.

/// Given the journal's step and the data dir: kill now?
type KillWhen = Box<dyn Fn(u8, &DataDir) -> bool>;

/// Where to kill the upgrading process.
struct KillPoint {
    what: String,
    now: KillWhen,
    /// Wait this long after `now` held.
    delay: Duration,
    /// A [`Writer`] creates wallets from the start of the upgrade to the kill.
    writes: bool,
}

/// Who runs the upgrade that is killed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Upgrader {
    /// A running supervisor, asked by the command: the supervisor is killed.
    Supervisor,
    /// The command itself (no supervisor runs): the command is killed.
    Standalone,
}

/// Starts an upgrade, kills the upgrading process with SIGKILL at `point`,
/// starts a new supervisor (which must finish the change first), and checks
/// that the installation is fully old or fully new — old if the kill left a
/// journal (the upgrade was not committed), new if not. Returns what went
/// wrong (empty if nothing), so that every kill point is tried.
fn kill_during_upgrade(site: &Site, point: &KillPoint, upgrader: Upgrader) -> Vec<String> {
    let mut problems = Vec::new();
    let what = format!("{} ({upgrader:?})", point.what);
    let mut supervisor = site.supervisor();
    supervisor.wait_healthy();
    let wallets = site.seed(&["treasury", "payroll"]);
    let before = DbDigest::of(&site.dir.database());
    let mut supervisor = match upgrader {
        Upgrader::Supervisor => Some(supervisor),
        Upgrader::Standalone => {
            site.stop(supervisor);
            None
        }
    };

    let writer = point
        .writes
        .then(|| Writer::start(site.port, &site.token(), "w"));
    let (mut client, out, err) =
        spawn_logged(site.launcher(&["upgrade", "--json"]), &site.home, "upgrade");
    let deadline = Instant::now() + Duration::from_secs(180);
    let mut missed = false;
    let step = loop {
        let step = site
            .journal()
            .and_then(|j| j["step"].as_u64())
            .map(|s| s as u8);
        if let Some(step) = step
            && (point.now)(step, &site.dir)
        {
            break step;
        }
        if let Some(status) = client.try_wait().unwrap() {
            // A point inside a short step can be missed: kill after the end instead.
            eprintln!(
                "{what}: the upgrade ended ({status}) before the kill point; killing after it:\n{}{}",
                fs::read_to_string(&out).unwrap_or_default(),
                fs::read_to_string(&err).unwrap_or_default(),
            );
            missed = true;
            break 0;
        }
        assert!(Instant::now() < deadline, "{what}: never reached");
        std::thread::sleep(Duration::from_millis(1));
    };
    std::thread::sleep(point.delay);
    let journal_at_kill = site.journal();
    match supervisor.as_mut() {
        Some(supervisor) => supervisor.kill9(),
        // (A reaped child's pid may belong to another process by now.)
        None if !missed => {
            signal(client.id() as i32, libc::SIGKILL);
        }
        None => {}
    }
    let written = writer.map(Writer::stop);
    let uncommitted = site.dir.upgrade_journal().exists();
    let at_kill = processes_mentioning(site.dir.root());
    let killed_at = journal_at_kill.as_ref().map_or("none".to_string(), |j| {
        format!("step {} ({})", j["step"], j["step_name"])
    });
    eprintln!(
        "{what}: seen step {step}, killed at {killed_at}; journal left: {uncommitted}; running then: {:?}",
        at_kill.values().collect::<Vec<_>>()
    );
    let ended = wait_child(&mut client, Duration::from_secs(30), "the upgrade command");
    assert!(
        !ended.success() || !uncommitted,
        "the command cannot report success for an uncommitted upgrade"
    );
    drop(supervisor);

    // Whatever the killed launcher had started must die with it: a `migrate`
    // or `check` left running writes to the database the next launcher is
    // about to restore. (A daemon gets SIGTERM and shuts down gracefully.)
    std::thread::sleep(Duration::from_millis(50));
    let orphans: BTreeMap<i32, String> = processes_mentioning(site.dir.root())
        .into_iter()
        .filter(|(_, cmd)| !cmd.contains(" serve "))
        .collect();
    if !orphans.is_empty() {
        problems.push(format!(
            "{what} (killed at {killed_at}): processes of the killed launcher still running 50 ms after the kill: {orphans:?}"
        ));
    }
    // The next launcher starts as soon as the port is free, as systemd's
    // Restart= would start it; a daemon holds the port until it is gone.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let serving: Vec<String> = processes_mentioning(site.dir.root())
            .into_values()
            .filter(|cmd| cmd.contains(" serve "))
            .collect();
        if serving.is_empty() {
            break;
        }
        if Instant::now() > deadline {
            problems.push(format!(
                "{what} (killed at {killed_at}): a daemon outlived the killed launcher by 20 s: {serving:?}"
            ));
            for pid in processes_mentioning(site.dir.root()).into_keys() {
                signal(pid, libc::SIGKILL);
            }
            std::thread::sleep(Duration::from_millis(200));
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }

    let mut next = site.supervisor();
    let status = next.wait_for(Duration::from_secs(120), "recovery", |s| {
        healthy(s) || s.state == "refused"
    });
    if !healthy(&status) {
        problems.push(format!(
            "{what} (killed at {killed_at}): the next supervisor did not recover: {status:?}\n{}",
            next.log()
        ));
        return problems;
    }
    let check = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        if let Some(written) = &written {
            let now = site.wallets();
            let names: BTreeSet<&String> = now.values().collect();
            let sent: BTreeSet<&String> = wallets
                .values()
                .chain(&written.acknowledged)
                .chain(&written.unknown)
                .collect();
            // Wherever the kill landed, every acknowledged write is kept: a
            // new daemon serves clients only after the commit (SPEC §13).
            for name in wallets.values().chain(&written.acknowledged) {
                assert!(names.contains(name), "{name} was acknowledged and is lost");
            }
            if uncommitted {
                assert_eq!(
                    answered_by(written, B_VERSION),
                    0,
                    "the new release answered clients, and the change was never committed"
                );
            }
            assert!(names.is_subset(&sent), "wallets nobody wrote: {names:?}");
            eprintln!(
                "{what}: {} writes acknowledged before the kill, all kept",
                written.acknowledged.len()
            );
            match uncommitted {
                true => site.assert_fully_old(&now),
                false => site.assert_fully_new(&now),
            }
        } else if uncommitted {
            site.assert_fully_old(&wallets);
            assert_eq!(
                DbDigest::of(&site.dir.database()),
                before,
                "the database is as before"
            );
        } else {
            site.assert_fully_new(&wallets);
        }
    }));
    if let Err(panic) = check {
        let message = panic_message(panic.as_ref());
        problems.push(format!(
            "{what} (killed at {killed_at}, journal left: {uncommitted}): {message}\nrecovering supervisor:\n{}",
            next.log()
        ));
    }
    let log = next.log();
    if uncommitted && !log.contains("rolled back") {
        problems.push(format!("{what}: the recovery is not in the log:\n{log}"));
    }
    // Each daemon logs this once it serves (its stderr is the supervisor's).
    let launches =
        log.matches("ready: listening on").count() + log.matches("committed: serving").count();
    if launches > 1 {
        problems.push(format!(
            "{what} (killed at {killed_at}): the recovering supervisor started {launches} daemons:\n{}",
            log.lines()
                .filter(|l| l.contains("ready") || l.contains("rolled back") || l.contains("daemon"))
                .collect::<Vec<_>>()
                .join("\n")
        ));
    }
    problems
}

/// What a caught panic said.
fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_default()
}

fn boundary(step: u8) -> KillPoint {
    KillPoint {
        what: format!("kill at the start of step {step}"),
        now: Box::new(move |s, _| s >= step),
        delay: Duration::ZERO,
        writes: false,
    }
}

#[test]
fn kill_9_at_every_step_boundary_ends_fully_old_or_new() {
    let mut problems = Vec::new();
    for step in 2..=7 {
        let site = Site::new();
        problems.extend(kill_during_upgrade(
            &site,
            &boundary(step),
            Upgrader::Supervisor,
        ));
    }
    // A standalone upgrade is the command itself: kill it where it runs
    // other processes (the new daemon's migrate, then the new daemon it
    // starts for the health check).
    let daemon_started = KillPoint {
        what: "kill once the new daemon runs (step 7)".into(),
        now: Box::new(|s, d| {
            s == 7
                && processes_mentioning(d.root())
                    .values()
                    .any(|cmd| cmd.contains(" serve "))
        }),
        delay: Duration::ZERO,
        writes: false,
    };
    for point in [boundary(5), boundary(7), daemon_started] {
        let site = Site::new();
        problems.extend(kill_during_upgrade(&site, &point, Upgrader::Standalone));
    }
    assert!(problems.is_empty(), "{}", problems.join("\n\n"));
}

/// The instants of a handover where a launcher kills itself with SIGKILL
/// (`WAIAAS_FAILPOINT`, see `shared/src/failpoint.rs`), and whether the
/// change is committed by then.
const HANDOVER_INSTANTS: [(&str, bool); 5] = [
    // The old launcher: journal saved as handed over, right before execve.
    ("handover-before-exec", false),
    // The new launcher: right after execve, before it reads the handover.
    ("handover-after-exec", false),
    // The new launcher: its daemon for the handed-over step just spawned.
    ("handover-daemon-spawned", false),
    // The new launcher: its daemon healthy, the commit not yet made.
    ("handover-daemon-ready", false),
    // The new launcher: committed, the report not yet sent.
    ("handover-committed", true),
];

/// Which handover is killed: the upgrade's (A → B) or the rollback's (B → A).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Handing {
    Upgrade,
    Rollback,
}

/// A → B (`upgrade`) or, after an upgrade, B → A (`--rollback`), with the
/// launcher killing itself (SIGKILL) at `point` of the handover; then the
/// service's launcher (A's binary) is started again, as systemd's
/// `Restart=` would, and the installation must be fully old — or fully new
/// if the kill came after the commit: the launcher that serves (its version
/// and `/proc/<pid>/exe`), the daemon, `current`, no journal, and the
/// database row for row. Returns what went wrong (empty if nothing).
fn kill_in_handover(point: &str, committed: bool, handing: Handing) -> Vec<String> {
    stop_in_handover(point, committed, handing, Stop::Kill)
}

/// How the launcher at a handover's instant is ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    /// It kills itself (SIGKILL).
    Kill,
    /// It freezes itself (SIGSTOP); once its handover deadline has passed it
    /// is thawed, and the pending SIGALRM ends it.
    Freeze,
}

/// [`kill_in_handover`], with a writer posting wallets throughout: every
/// acknowledged write is kept, and a change never committed answered nobody.
fn stop_in_handover(point: &str, committed: bool, handing: Handing, stop: Stop) -> Vec<String> {
    use std::os::unix::process::ExitStatusExt;
    let what = format!("{stop:?} at {point} ({handing:?})");
    let mut problems = Vec::new();
    let health_timeout = 3;
    let site = Site::with(Setup {
        health_timeout,
        ..Setup::default()
    });
    let token = site.home.join("failpoint.token");
    let action = match stop {
        Stop::Kill => "kill",
        Stop::Freeze => "pause",
    };
    let armed = format!("{point}:{action}:{}", token.display());
    let mut supervisor = site.supervisor_with(&[("WAIAAS_FAILPOINT", &armed)]);
    let pid = supervisor.wait_healthy().launcher_pid;
    let wallets = site.seed(&["treasury", "payroll"]);
    let (args, old, new): (&[&str], &str, &str) = match handing {
        Handing::Upgrade => (&["upgrade", "--json"], a(), B_VERSION),
        Handing::Rollback => {
            // The token does not exist yet: this upgrade's handover goes through.
            let (out, report) = site.upgrade_json(&[]);
            assert!(
                out.status.success(),
                "{what}: {out:?}\n{}",
                supervisor.log()
            );
            assert_eq!(report.outcome, Outcome::Upgraded, "{report:?}");
            assert_eq!(supervisor.wait_healthy().launcher_version, B_VERSION);
            (&["upgrade", "--rollback", "--json"], B_VERSION, a())
        }
    };
    fs::write(&token, b"").unwrap();

    let writer = Writer::start(site.port, &site.token(), "w");
    let (mut command, _, _) = spawn_logged(site.launcher(args), &site.home, "handover");
    if stop == Stop::Freeze {
        let deadline = Instant::now() + Duration::from_secs(120);
        while token.exists() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        // Frozen past its handover deadline (health_timeout + the grace):
        // the alarm is pending, and ends it as soon as it runs again.
        std::thread::sleep(Duration::from_secs(health_timeout) + TAKEOVER_GRACE);
        signal(pid as i32, libc::SIGCONT);
    }
    let exit = supervisor.wait_exit(Duration::from_secs(120));
    let written = writer.stop();
    let ended = wait_child(&mut command, Duration::from_secs(60), "the command");
    let expected_signal = match stop {
        Stop::Kill => libc::SIGKILL,
        Stop::Freeze => libc::SIGALRM,
    };
    if exit.signal() != Some(expected_signal) || token.exists() {
        problems.push(format!(
            "{what}: the launcher (pid {pid}) did not kill itself there: {exit}\n{}",
            supervisor.log()
        ));
        return problems;
    }
    if ended.success() {
        problems.push(format!(
            "{what}: the command reported success for a launcher killed before its report"
        ));
    }
    let journal = site.journal();
    if journal.is_some() == committed {
        problems.push(format!("{what}: journal after the kill: {journal:?}"));
    }
    if let Some(journal) = &journal
        && journal["handed_over"] != true
    {
        problems.push(format!(
            "{what}: the journal does not record the handover: {journal}"
        ));
    }
    // The killed launcher's daemon (if any) dies with it; the next launcher
    // starts once the port is free, as systemd's restart would.
    let deadline = Instant::now() + Duration::from_secs(20);
    while !processes_mentioning(site.dir.root()).is_empty() {
        if Instant::now() > deadline {
            problems.push(format!(
                "{what}: processes outlived the killed launcher by 20 s: {:?}",
                processes_mentioning(site.dir.root())
            ));
            for pid in processes_mentioning(site.dir.root()).into_keys() {
                signal(pid, libc::SIGKILL);
            }
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let killed_log = supervisor.log();
    drop(supervisor);

    let mut next = site.supervisor();
    let status = next.wait_for(Duration::from_secs(120), "recovery", |s| {
        healthy(s) || s.state == "refused"
    });
    let expect = if committed { new } else { old };
    let check = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        assert_eq!(status.launcher_version, expect, "the launcher that serves");
        assert_eq!(
            status.daemon.as_ref().unwrap().version,
            expect,
            "the daemon"
        );
        let exe = fs::read_link(format!("/proc/{}/exe", status.launcher_pid)).unwrap();
        let launcher = if expect == a() {
            fs::canonicalize(LAUNCHER).unwrap()
        } else {
            site.dir.version(B_VERSION).join("waiaas-launcher")
        };
        assert_eq!(exe, launcher, "the launcher's program");
        let now = site.wallets();
        for (id, name) in &wallets {
            assert_eq!(now.get(id), Some(name), "a wallet written before");
        }
        let mut stored: BTreeSet<String> = now
            .values()
            .filter(|n| n.starts_with("w-"))
            .cloned()
            .collect();
        if handing == Handing::Rollback && committed {
            stored.extend(pre_rollback_names(&site));
        }
        assert_acknowledged_kept(&written, &stored, &what);
        if !committed {
            assert_eq!(
                answered_by(&written, new),
                0,
                "{new} answered clients, and the change was never committed"
            );
        }
        eprintln!(
            "{what}: {} writes acknowledged ({} by {new}), all kept",
            written.acknowledged.len(),
            answered_by(&written, new)
        );
        if expect == a() {
            site.assert_fully_old(&now);
        } else {
            site.assert_fully_new(&now);
        }
    }));
    if let Err(panic) = check {
        let message = panic_message(panic.as_ref());
        problems.push(format!(
            "{what}: not fully {expect}: {message}\nkilled launcher:\n{killed_log}\nnext:\n{}",
            next.log()
        ));
    }
    let log = next.log();
    let reason_logged = log.contains("was never confirmed") && log.contains("rolled back");
    if !committed && !reason_logged {
        problems.push(format!(
            "{what}: the rollback and its reason are not in the log:\n{log}"
        ));
    }
    eprintln!(
        "{what}: journal left {}, fully {expect} after the restart ({})",
        !committed,
        if problems.is_empty() {
            "ok"
        } else {
            "PROBLEMS"
        }
    );
    problems
}

#[test]
fn kill_9_at_every_instant_of_the_upgrades_handover_ends_fully_old_or_new() {
    let problems: Vec<String> = HANDOVER_INSTANTS
        .iter()
        .flat_map(|&(point, committed)| kill_in_handover(point, committed, Handing::Upgrade))
        .collect();
    assert!(problems.is_empty(), "{}", problems.join("\n\n"));
}

#[test]
fn kill_9_at_every_instant_of_the_rollbacks_handover_ends_fully_old_or_new() {
    let problems: Vec<String> = HANDOVER_INSTANTS
        .iter()
        .flat_map(|&(point, committed)| kill_in_handover(point, committed, Handing::Rollback))
        .collect();
    assert!(problems.is_empty(), "{}", problems.join("\n\n"));
}

fn exists_with_prefix(dir: &Path, prefix: &str) -> bool {
    names_in(dir).iter().any(|n| n.starts_with(prefix))
}

#[test]
fn kill_9_inside_steps_3_to_7() {
    let points = [
        KillPoint {
            what: "kill while the backup is being written (step 3)".into(),
            now: Box::new(|s, d| {
                s == 3 && exists_with_prefix(&d.backups(), ".partial-pre-upgrade")
            }),
            delay: Duration::from_millis(20),
            writes: false,
        },
        KillPoint {
            what: "kill just after the switch (step 4)".into(),
            now: Box::new(|s, d| {
                s >= 4 && fs::read_link(d.current()).is_ok_and(|t| t.ends_with(B_VERSION))
            }),
            delay: Duration::ZERO,
            writes: false,
        },
        KillPoint {
            what: "kill while the new daemon backs up before migrating (step 5)".into(),
            now: Box::new(|s, d| {
                s == 5 && exists_with_prefix(&d.backups(), ".partial-pre-migrate")
            }),
            delay: Duration::from_millis(20),
            writes: false,
        },
        KillPoint {
            what: "kill while the new daemon migrates (step 5)".into(),
            now: Box::new(|s, d| s == 5 && exists_with_prefix(&d.backups(), "pre-migrate-")),
            delay: Duration::from_millis(5),
            writes: false,
        },
        KillPoint {
            what: "kill while the schema is verified (step 6)".into(),
            now: Box::new(|s, _| s == 6),
            delay: Duration::ZERO,
            writes: false,
        },
        KillPoint {
            what: "kill while the new daemon starts (step 7)".into(),
            now: Box::new(|s, d| {
                s == 7
                    && processes_mentioning(d.root())
                        .values()
                        .any(|cmd| cmd.contains(" serve "))
            }),
            delay: Duration::ZERO,
            writes: false,
        },
    ];
    let mut problems = Vec::new();
    for point in &points {
        let site = Site::with(Setup {
            big_db: true,
            ..Setup::default()
        });
        problems.extend(kill_during_upgrade(&site, point, Upgrader::Supervisor));
    }
    assert!(problems.is_empty(), "{}", problems.join("\n\n"));
}

/// The backup is taken while the old daemon serves (SPEC §12): its main file
/// copied with checkpoints held, its WAL once it has stopped. Every write the
/// old daemon acknowledged is in the backup, and `--rollback` brings back
/// exactly that, WAL included.
#[test]
fn a_live_backup_holds_every_write_acknowledged_before_the_stop() {
    let (site, supervisor, out, report, written) = upgrade_while_writing(Offer::B);
    assert!(out.status.success(), "{out:?}\n{}", supervisor.log());
    let log = supervisor.log();
    assert!(
        log.contains("checkpoints held until exit"),
        "the daemon held its checkpoints:\n{log}"
    );
    let backup = PathBuf::from(report.backup.expect("a backup"));
    let manifest: Manifest =
        serde_json::from_slice(&fs::read(backup.join(BACKUP_MANIFEST)).unwrap()).unwrap();
    assert!(
        manifest.files.contains_key("waiaas.db-wal"),
        "writes during the copy are in the backup's WAL: {manifest:?}"
    );
    for (file, sha) in &manifest.files {
        let path = backup.join(file);
        assert_eq!(&sha256_file(&path).unwrap(), sha, "{file}");
        assert_eq!(manifest.sizes[file], fs::metadata(&path).unwrap().len());
    }
    let in_main = written_names(&backup.join("waiaas.db"), None);
    let in_backup = written_names(
        &backup.join("waiaas.db"),
        Some(&backup.join("waiaas.db-wal")),
    );
    let now = site.wallets().into_values().collect::<BTreeSet<_>>();
    // The old daemon acknowledged a prefix of the writes, the new one the
    // rest: the backup holds that whole prefix, the new daemon everything.
    let by_old = written
        .acknowledged
        .iter()
        .take_while(|name| in_backup.contains(*name))
        .count();
    let missing: Vec<&String> = written.acknowledged[by_old..]
        .iter()
        .filter(|name| in_backup.contains(*name) || !now.contains(*name))
        .collect();
    assert!(
        missing.is_empty(),
        "acknowledged but in neither the backup's prefix nor the new database: {missing:?}"
    );
    let during_copy = in_backup.len() - in_main.len();
    eprintln!(
        "{} writes acknowledged ({} by {}, {} unanswered); {during_copy} of them made while the main file was copied, all in the backup",
        written.acknowledged.len(),
        by_old,
        a(),
        written.unknown.len()
    );
    assert!(
        during_copy > 0,
        "no write happened during the live copy: the test proves nothing"
    );
    // Those writes were copied while the daemon served, not in the downtime
    // (the point of the live backup): the backup's own report says so.
    let live = manifest
        .wal_copied_live
        .expect("a live backup reports its WAL copy");
    let total = manifest.sizes["waiaas.db-wal"];
    eprintln!("{live} of the WAL's {total} bytes copied while the daemon served");
    assert!(
        live > 0,
        "the WAL was copied only once the daemon had stopped"
    );
    assert!(
        in_backup
            .difference(&in_main)
            .all(|n| written.acknowledged.contains(n) || written.unknown.contains(n)),
        "the WAL holds only what was written"
    );

    let (out, report) = site.upgrade_json(&["--rollback"]);
    assert!(out.status.success(), "{out:?}\n{}", supervisor.log());
    assert_eq!(report.outcome, Outcome::Restored);
    let restored: BTreeSet<String> = site
        .wallets()
        .into_values()
        .filter(|n| n.starts_with("w-"))
        .collect();
    assert_eq!(
        restored, in_backup,
        "--rollback restores the backup, WAL included"
    );
    assert_no_leftovers(&site);
}

/// kill -9 at random instants of the live copy (step 2, the daemon serving
/// and writing) and of the WAL's copy (step 3): fully old or fully new, and
/// no acknowledged write lost. The instants are printed with their seed.
#[test]
fn kill_9_during_the_live_copy_and_the_wal_copy_loses_nothing() {
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    eprintln!("kill instants from seed {seed}");
    let mut random = seed | 1;
    let mut next_ms = |below: u64| {
        // xorshift64: enough to spread instants, reproducible from the seed.
        random ^= random << 13;
        random ^= random >> 7;
        random ^= random << 17;
        random % below
    };
    let runs = std::env::var("WAIAAS_LIVE_KILL_RUNS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(10u64)
        .min(50);
    let mut problems = Vec::new();
    for run in 0..runs * 2 {
        let in_copy = run % 2 == 0;
        let delay = Duration::from_millis(if in_copy { next_ms(250) } else { next_ms(15) });
        let point = if in_copy {
            KillPoint {
                what: format!("kill {delay:?} into the live copy (run {run})"),
                now: Box::new(|s, d| {
                    s == 2 && exists_with_prefix(&d.backups(), ".partial-pre-upgrade")
                }),
                delay,
                writes: true,
            }
        } else {
            KillPoint {
                what: format!("kill {delay:?} into the WAL's copy (run {run})"),
                now: Box::new(|s, _| s == 3),
                delay,
                writes: true,
            }
        };
        let site = Site::with(Setup {
            big_db: true,
            ..Setup::default()
        });
        problems.extend(kill_during_upgrade(&site, &point, Upgrader::Supervisor));
    }
    assert!(
        problems.is_empty(),
        "seed {seed}:\n{}",
        problems.join("\n\n")
    );
}

/// kill -9 while `--rollback` stages its backup's copy beside the database
/// (step 2, the daemon still serving): the next start discards the staged
/// copy and the installation stays at the upgraded release, whole.
#[test]
fn kill_9_while_a_rollback_stages_its_backup_leaves_the_upgrade_in_place() {
    let site = Site::with(Setup {
        big_db: true,
        ..Setup::default()
    });
    let mut supervisor = site.supervisor();
    supervisor.wait_healthy();
    let wallets = site.seed(&["treasury", "payroll"]);
    let (out, _) = site.upgrade_json(&[]);
    assert!(out.status.success(), "{out:?}\n{}", supervisor.log());
    supervisor.wait_healthy();

    let (mut client, _, _) = spawn_logged(
        site.launcher(&["upgrade", "--rollback", "--json"]),
        &site.home,
        "rollback",
    );
    let staged = site.dir.data().join(".waiaas.db.restore");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !staged.exists() {
        assert!(
            client.try_wait().unwrap().is_none(),
            "the rollback ended before it staged its backup"
        );
        assert!(Instant::now() < deadline, "the backup was never staged");
        std::thread::sleep(Duration::from_millis(1));
    }
    supervisor.kill9();
    wait_child(&mut client, Duration::from_secs(30), "the rollback command");
    drop(supervisor);
    // The next start waits for the killed launcher's daemon to let go of the port.
    let deadline = Instant::now() + Duration::from_secs(20);
    while processes_mentioning(site.dir.root())
        .values()
        .any(|cmd| cmd.contains(" serve "))
    {
        assert!(Instant::now() < deadline, "a daemon outlived its launcher");
        std::thread::sleep(Duration::from_millis(5));
    }

    let mut next = site.supervisor();
    next.wait_healthy();
    site.assert_fully_new(&wallets);
    assert_no_leftovers(&site);
}

// ---------------------------------------------------------------------------
// Refusals before any downtime.

/// A tmpfs mounted for one test, unmounted on drop.
struct Tmpfs {
    path: PathBuf,
    _dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(megabytes: u64) -> Result<Self, String> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().to_path_buf();
        let out = run(Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={megabytes}m,mode=0700"),
                "tmpfs",
            ])
            .arg(&path));
        if out.status.success() {
            Ok(Self { path, _dir: dir })
        } else {
            Err(format!("mount -t tmpfs failed: {}", out.stderr.trim()))
        }
    }

    fn free(&self) -> u64 {
        let stat = nix::sys::statvfs::statvfs(&self.path).unwrap();
        stat.blocks_available() as u64 * stat.fragment_size() as u64
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let out = run(Command::new("umount").arg(&self.path));
        if !out.status.success() {
            let _ = run(Command::new("umount").arg("-l").arg(&self.path));
        }
    }
}

#[test]
fn a_disk_too_full_for_the_backup_is_caught_before_the_daemon_stops() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: mounting a small tmpfs needs root");
        return;
    }
    let r = releases();
    let big = big_database();
    let disk = match Tmpfs::mount(512) {
        Ok(disk) => disk,
        Err(e) => {
            eprintln!("skipped: {e}");
            return;
        }
    };
    let site = Site::with(Setup {
        home: Some(disk.path.clone()),
        big_db: true,
        ..Setup::default()
    });
    let mut supervisor = site.supervisor();
    let status = supervisor.wait_healthy();
    let pid = daemon_pid(&status);
    let wallets = site.seed(&["treasury", "payroll"]);

    // Leave room for the download and the unpacked release (the preflight
    // fetches before it measures), but less than the database needs.
    let tarball = fs::metadata(&r.b.platform_tarball).unwrap().len();
    let unpacked: u64 = ["waiaas-launcher", "waiaas-daemon"]
        .iter()
        .map(|b| fs::metadata(builds::b_bin_dir().join(b)).unwrap().len())
        .sum();
    let database = fs::metadata(big).unwrap().len();
    let leave = tarball + unpacked + (6 << 20);
    let free = disk.free();
    assert!(
        free > leave,
        "the tmpfs is too small: {free} free, {leave} wanted"
    );
    let mut filler = fs::File::create(disk.path.join("filler")).unwrap();
    let chunk = vec![0u8; 1 << 20];
    let mut left = free - leave;
    while left > 0 {
        let n = left.min(chunk.len() as u64) as usize;
        filler.write_all(&chunk[..n]).unwrap();
        left -= n as u64;
    }
    filler.sync_all().unwrap();
    drop(filler);
    let free_after_fetch = disk.free().saturating_sub(unpacked);
    assert!(
        free_after_fetch < database,
        "{free_after_fetch} bytes will be free, the database is {database}"
    );
    let before = site.snapshot();

    let (out, report) = site.upgrade_json(&[]);
    assert_eq!(out.status.code(), Some(1), "{out:?}\n{}", supervisor.log());
    assert_eq!(report.outcome, Outcome::Refused, "{report:?}");
    assert!(
        report.message.contains("not enough free disk"),
        "{}",
        report.message
    );

    let status = supervisor.wait_healthy();
    assert_eq!(daemon_pid(&status), pid, "the daemon was never stopped");
    assert_eq!(status.restarts, 0);
    let log = supervisor.log();
    assert!(
        !log.contains("upgrade step 2"),
        "step 2 never started:\n{log}"
    );
    let mut after = site.snapshot();
    // The verified download may stay in versions/ for the next attempt; nothing else changed.
    after.versions.remove(B_VERSION);
    assert_eq!(after, before);
    assert!(
        names_in(&site.dir.backups()).is_empty(),
        "no backup was started"
    );
    site.assert_fully_old(&wallets);
    drop(supervisor);
    drop(site);
}

#[test]
fn upgrade_refuses_in_a_container() {
    let site = Site::new();
    let before = site.snapshot();
    for args in [
        &["upgrade"][..],
        &["upgrade", "--rollback"],
        &["upgrade", "--json"],
    ] {
        let out = run(site.launcher(args).env("WAIAAS_CONTAINER", "1"));
        assert_eq!(out.status.code(), Some(2), "{args:?}: {out:?}");
        assert!(out.stderr.contains("pull the new image"), "{}", out.stderr);
    }
    assert_eq!(site.snapshot(), before);
    assert_eq!(
        site.registry.total_hits(),
        0,
        "not even the registry was asked"
    );
}

#[test]
fn two_concurrent_upgrades_the_second_is_refused() {
    // Through the supervisor: the second request is answered at once.
    let site = Site::with(Setup {
        big_db: true,
        ..Setup::default()
    });
    let mut supervisor = site.supervisor();
    supervisor.wait_healthy();
    let wallets = site.seed(&["treasury"]);
    let (mut first, out, err) =
        spawn_logged(site.launcher(&["upgrade", "--json"]), &site.home, "first");
    wait_for_journal(&site, 2, &mut first);
    let second = site.upgrade(&["--json"]);
    assert_eq!(second.status.code(), Some(1), "{second:?}");
    assert!(
        second
            .stderr
            .contains("another upgrade or rollback is in progress"),
        "{second:?}"
    );
    let status = wait_child(&mut first, Duration::from_secs(180), "the first upgrade");
    let report: UpgradeReport = serde_json::from_str(fs::read_to_string(&out).unwrap().trim())
        .unwrap_or_else(|e| panic!("{e}: {}", fs::read_to_string(&err).unwrap_or_default()));
    assert!(status.success(), "{report:?}");
    assert_eq!(report.outcome, Outcome::Upgraded);
    site.assert_fully_new(&wallets);
    drop(supervisor);

    // Standalone: the upgrade lock refuses the second, naming the first.
    let site = Site::with(Setup {
        big_db: true,
        ..Setup::default()
    });
    let mut supervisor = site.supervisor();
    supervisor.wait_healthy();
    let wallets = site.seed(&["treasury"]);
    site.stop(supervisor);
    let (mut first, out, err) =
        spawn_logged(site.launcher(&["upgrade", "--json"]), &site.home, "first");
    // Step 3 (backing up 100 MB) leaves time; no daemon answers then.
    wait_for_journal(&site, 3, &mut first);
    let (second, report) = site.upgrade_json(&[]);
    assert_eq!(second.status.code(), Some(1), "{second:?}");
    assert_eq!(report.outcome, Outcome::Refused);
    assert!(
        report
            .message
            .contains("another upgrade or rollback is in progress")
            && report.message.contains(&format!("pid {}", first.id())),
        "{}",
        report.message
    );
    let status = wait_child(&mut first, Duration::from_secs(180), "the first upgrade");
    let report: UpgradeReport = serde_json::from_str(fs::read_to_string(&out).unwrap().trim())
        .unwrap_or_else(|e| panic!("{e}: {}", fs::read_to_string(&err).unwrap_or_default()));
    assert!(status.success(), "{report:?}");
    let mut supervisor = site.supervisor();
    supervisor.wait_healthy();
    site.assert_fully_new(&wallets);
}

/// Waits until the journal records `step` (or later) while `child` runs.
fn wait_for_journal(site: &Site, step: u64, child: &mut Child) {
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        if site
            .journal()
            .and_then(|j| j["step"].as_u64())
            .is_some_and(|s| s >= step)
        {
            return;
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "the upgrade ended before step {step}"
        );
        assert!(Instant::now() < deadline, "step {step} never came");
        std::thread::sleep(Duration::from_millis(1));
    }
}

// ---------------------------------------------------------------------------
// Backups in order.

/// A backup folder as the engine writes it: real copies, a real manifest;
/// without a `sequence`, as releases before it wrote them.
fn fabricate_backup(
    site: &Site,
    from: &str,
    (created, sequence): (UtcTime, Option<u64>),
    database: &Path,
    schema: u32,
) -> PathBuf {
    let path = site
        .dir
        .backups()
        .join(format!("pre-upgrade-{from}-{}", created.compact()));
    fs::create_dir_all(&path).unwrap();
    fs::copy(database, path.join("waiaas.db")).unwrap();
    fs::copy(site.dir.config(), path.join("config.toml")).unwrap();
    let files = ["waiaas.db", "config.toml"]
        .map(|f| (f.to_string(), sha256_file(&path.join(f)).unwrap()))
        .into();
    let manifest = Manifest {
        kind: Kind::PreUpgrade,
        from_version: from.to_string(),
        to_version: "9.9.9".to_string(),
        schema_version: schema,
        sequence,
        created_at: created.rfc3339(),
        files,
        sizes: Default::default(),
        wal_copied_live: None,
    };
    fs::write(
        path.join(BACKUP_MANIFEST),
        serde_json::to_vec_pretty(&manifest).unwrap(),
    )
    .unwrap();
    path
}

/// A consistent copy of the live database, with one more wallet named `marker`.
fn copy_with_marker(site: &Site, to: &Path, marker: &str) {
    let _ = fs::remove_file(to);
    let conn = Connection::open(site.dir.database()).unwrap();
    conn.busy_timeout(Duration::from_secs(10)).unwrap();
    conn.execute("VACUUM INTO ?1", [to.to_string_lossy()])
        .unwrap();
    drop(conn);
    let copy = Connection::open(to).unwrap();
    copy.execute(
        "INSERT INTO wallets (id, name, chain, network, public_key, status, created_at, updated_at)
         VALUES (?1, ?1, 'solana', 'devnet', ?1, 'ACTIVE', 1700000000, 1700000000)",
        [marker],
    )
    .unwrap();
}

#[test]
fn backups_are_chosen_by_sequence_not_time_or_name() {
    let day = 86_400_000;
    let site = Site::with(Setup {
        keep_backups: 2,
        ..Setup::default()
    });
    let mut supervisor = site.supervisor();
    supervisor.wait_healthy();
    let wallets = site.seed(&["treasury"]);
    let scratch = site.home.join("scratch");
    fs::create_dir_all(&scratch).unwrap();

    // Retention: three backups of older releases (no sequence) whose name
    // order is not their time order.
    let now = UtcTime::now().unix_seconds() * 1000;
    let db16 = scratch.join("16.db");
    copy_with_marker(&site, &db16, "from-an-old-backup");
    let rc = fabricate_backup(
        &site,
        "2.0.0-rc.1",
        (UtcTime::from_unix_ms(now - 3 * day), None),
        &db16,
        A_SCHEMA,
    );
    let ten = fabricate_backup(
        &site,
        "1.10.0",
        (UtcTime::from_unix_ms(now - 2 * day), None),
        &db16,
        A_SCHEMA,
    );
    let nine = fabricate_backup(
        &site,
        "1.9.0",
        (UtcTime::from_unix_ms(now - day), None),
        &db16,
        A_SCHEMA,
    );
    // The upgrade adds pre-upgrade-1.8.1 (step 3) and prunes to 2: the two
    // oldest by time go (2.0.0-rc.1 and 1.10.0), though 1.10.0 sorts first by
    // name. Step 5 migrates with --no-backup, so no pre-migrate backup joins.
    let (out, report) = site.upgrade_json(&[]);
    assert!(out.status.success(), "{out:?}\n{}", supervisor.log());
    site.assert_fully_new(&wallets);
    let left: BTreeSet<PathBuf> = site.backups().into_iter().map(|(p, _)| p).collect();
    assert!(
        !left.contains(&rc) && !left.contains(&ten),
        "the oldest by time are pruned: {left:?}"
    );
    assert!(left.contains(&nine), "{left:?}");
    assert!(
        left.contains(&PathBuf::from(report.backup.unwrap())),
        "{left:?}"
    );
    assert_eq!(left.len(), 2, "{left:?}");

    // Rollback: the newest by sequence wins, though its created_at is the
    // oldest (a clock that stepped back), 2.0.0-rc.1 sorts last by name and is
    // the highest version, and 1.10.0 is above 1.9.0. (It is of A: a backup
    // of the version running is one already restored, refused.)
    std::thread::sleep(Duration::from_millis(1100));
    let db17 = scratch.join("17.db");
    copy_with_marker(&site, &db17, "from-an-older-backup");
    let newest_db = scratch.join("16-newest.db");
    fs::copy(&db16, &newest_db).unwrap();
    Connection::open(&newest_db)
        .unwrap()
        .execute(
            "INSERT INTO wallets (id, name, chain, network, public_key, status, created_at, updated_at)
             VALUES (?1, ?1, 'solana', 'devnet', ?1, 'ACTIVE', 1700000000, 1700000000)",
            ["from-the-newest-backup"],
        )
        .unwrap();
    let now = UtcTime::now().unix_seconds() * 1000;
    fabricate_backup(
        &site,
        "2.0.0-rc.1",
        (UtcTime::from_unix_ms(now), Some(1000)),
        &db17,
        B_SCHEMA,
    );
    fabricate_backup(
        &site,
        "1.10.0",
        (UtcTime::from_unix_ms(now + day), Some(1001)),
        &db17,
        B_SCHEMA,
    );
    let stepped_back = UtcTime::from_unix_ms(now - 3 * day);
    let newest = fabricate_backup(&site, a(), (stepped_back, Some(1002)), &newest_db, A_SCHEMA);
    let (out, report) = site.upgrade_json(&["--rollback"]);
    assert!(out.status.success(), "{out:?}\n{}", supervisor.log());
    assert_eq!(report.outcome, Outcome::Restored);
    assert_eq!(
        report.backup.as_deref(),
        Some(newest.to_string_lossy().as_ref())
    );
    let mut expected = wallets.clone();
    for marker in ["from-an-old-backup", "from-the-newest-backup"] {
        expected.insert(marker.into(), marker.into());
    }
    site.assert_fully_old(&expected);
}

// ---------------------------------------------------------------------------
// systemd's watchdog during an upgrade.

/// The unit runs the launcher with `WatchdogSec=` (packaging/systemd): if the
/// pings stop for that long, systemd kills the launcher — mid-upgrade, which
/// the recovery then rolls back, so an upgrade longer than the watchdog could
/// never succeed. The pings must go on while the engine works.
#[test]
fn systemd_watchdog_is_fed_during_an_upgrade() {
    let site = Site::with(Setup {
        big_db: true,
        ..Setup::default()
    });
    let path = site.home.join("notify.sock");
    let socket = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    // Pings every 250 ms are due; systemd would act after 500 ms of silence
    // (the unit's 300 s scaled down to an upgrade of about a second).
    let watchdog = Duration::from_millis(500);
    let usec = watchdog.as_micros().to_string();
    let mut supervisor = site.supervisor_with(&[
        ("NOTIFY_SOCKET", path.to_str().unwrap()),
        ("WATCHDOG_USEC", &usec),
    ]);
    supervisor.wait_healthy();
    let wallets = site.seed(&["treasury"]);

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let pings = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut pings = Vec::new();
            let mut buf = [0u8; 4096];
            let deadline = Instant::now() + Duration::from_secs(300);
            while !stop.load(Ordering::SeqCst) && Instant::now() < deadline {
                if let Ok(n) = socket.recv(&mut buf)
                    && String::from_utf8_lossy(&buf[..n])
                        .lines()
                        .any(|l| l == "WATCHDOG=1")
                {
                    pings.push(Instant::now());
                }
            }
            pings
        })
    };
    std::thread::sleep(Duration::from_millis(1500));
    let started = Instant::now();
    let (out, report) = site.upgrade_json(&[]);
    let ended = Instant::now();
    std::thread::sleep(Duration::from_millis(1500));
    stop.store(true, Ordering::SeqCst);
    let pings = pings.join().unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(report.outcome, Outcome::Upgraded);
    site.assert_fully_new(&wallets);

    let mut times = vec![started];
    times.extend(pings.iter().copied().filter(|t| *t > started && *t < ended));
    times.push(ended);
    let longest = times
        .windows(2)
        .map(|w| w[1] - w[0])
        .max()
        .unwrap_or_default();
    eprintln!(
        "upgrade took {:?}; {} pings during it; longest silence {longest:?}",
        ended - started,
        times.len() - 2
    );
    assert!(
        longest < watchdog,
        "no WATCHDOG=1 for {longest:?} during a {:?} upgrade (WATCHDOG_USEC = {watchdog:?}): \
         systemd would have killed the launcher mid-upgrade",
        ended - started
    );
}

/// `--from FILE`: an air-gapped site upgrades from the platform tarball on
/// disk, with every check but the registry's integrity field, and no registry.
#[test]
fn offline_upgrade_from_a_tarball_on_disk() {
    let site = Site::new();
    let mut supervisor = site.supervisor();
    supervisor.wait_healthy();
    let wallets = site.seed(&["treasury"]);
    site.stop(supervisor);
    // No registry at all: a closed loopback port.
    let config = fs::read_to_string(site.dir.config()).unwrap();
    let offline: String = config
        .lines()
        .map(|line| {
            if line.trim_start().starts_with("registry") {
                "registry = \"http://127.0.0.1:9/\"".to_string()
            } else {
                line.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    fs::write(site.dir.config(), offline).unwrap();

    let tarball = releases().b.platform_tarball.to_string_lossy().into_owned();
    let (out, report) = site.upgrade_json(&["--from", &tarball]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(report.outcome, Outcome::Upgraded, "{report:?}");
    assert_eq!(site.current().as_deref(), Some(B_VERSION));

    let mut supervisor = site.supervisor();
    supervisor.wait_healthy();
    site.assert_fully_new(&wallets);
}

// ---------------------------------------------------------------------------
// The readiness gate (SPEC §13): a daemon on probation answers no client
// before the commit, so a rollback never drops an acknowledged write.

/// Every write the writer was told is kept is in `stored`, and everything
/// stored was sent.
fn assert_acknowledged_kept(written: &Written, stored: &BTreeSet<String>, what: &str) {
    let lost: Vec<&String> = written
        .acknowledged
        .iter()
        .filter(|n| !stored.contains(*n))
        .collect();
    assert!(lost.is_empty(), "{what}: acknowledged, then lost: {lost:?}");
    let sent: BTreeSet<&String> = written
        .acknowledged
        .iter()
        .chain(&written.unknown)
        .collect();
    let unsent: Vec<&String> = stored.iter().filter(|n| !sent.contains(n)).collect();
    assert!(
        unsent.is_empty(),
        "{what}: stored but never sent: {unsent:?}"
    );
}

/// The `w-…` wallets in the pre-rollback backup: a committed rollback
/// returns to the state before the upgrade on purpose, and what the upgraded
/// release acknowledged is kept in the backup it made first.
fn pre_rollback_names(site: &Site) -> BTreeSet<String> {
    let backup = names_in(&site.dir.backups())
        .into_iter()
        .find(|n| n.starts_with("pre-rollback-"))
        .map(|n| site.dir.backups().join(n))
        .expect("a pre-rollback backup");
    let wal = backup.join("waiaas.db-wal");
    written_names(
        &backup.join("waiaas.db"),
        wal.exists().then_some(wal.as_path()),
    )
}

/// How many of the writer's acknowledgements `version` gave.
fn answered_by(written: &Written, version: &str) -> usize {
    written.answered_by.iter().filter(|v| *v == version).count()
}

/// A release whose writes work but whose `/health` stays 503: it is probed
/// on its private listener for `health_timeout`, never given the public
/// port, and rolled back; clients wait in the backlog and are answered by
/// the old daemon again — none fails, none is lost.
#[test]
fn an_unhealthy_release_answers_no_client_and_its_rollback_keeps_every_write() {
    let health_timeout = 3;
    let site = Site::with(Setup {
        offer: Offer::Faulty(Fault::Unhealthy),
        health_timeout,
        ..Setup::default()
    });
    let mut supervisor = site.supervisor();
    supervisor.wait_healthy();
    let writer = Writer::start(site.port, &site.token(), "w");
    std::thread::sleep(Duration::from_millis(300));
    let (out, report) = site.upgrade_json(&[]);
    std::thread::sleep(Duration::from_millis(300));
    let written = writer.stop();
    assert_eq!(out.status.code(), Some(1), "{out:?}\n{}", supervisor.log());
    assert_eq!(report.outcome, Outcome::RolledBack, "{report:?}");
    supervisor.wait_healthy();
    let stored: BTreeSet<String> = site.wallets().into_values().collect();
    assert_acknowledged_kept(&written, &stored, "unhealthy release");
    assert_eq!(
        answered_by(&written, B_VERSION),
        0,
        "the unhealthy release answered clients before any commit"
    );
    assert_eq!(written.refused, 0, "refused requests");
    assert!(
        written.unknown.is_empty(),
        "failed requests: {:?}",
        written.unknown
    );
    eprintln!(
        "unhealthy release: {} writes acknowledged, all by {}, all kept; longest wait {:.2} s \
         (health_timeout {health_timeout} s + the rollback)",
        written.acknowledged.len(),
        a(),
        written.longest_wait.as_secs_f64()
    );
    assert!(
        written.longest_wait < Duration::from_secs(health_timeout + 5),
        "a client waited {:?}",
        written.longest_wait
    );
    assert!(
        supervisor.log().contains("ready on probation"),
        "the new daemon started on probation:\n{}",
        supervisor.log()
    );
    site.assert_fully_old(&site.wallets());
}

/// A healthy upgrade under a writer: no request fails, the new release
/// answers only after it is committed, and no wait is longer than
/// `health_timeout` + 1 s.
#[test]
fn a_healthy_release_takes_over_with_no_failed_request_and_no_long_wait() {
    let health_timeout = 3;
    let site = Site::with(Setup {
        health_timeout,
        ..Setup::default()
    });
    let mut supervisor = site.supervisor();
    supervisor.wait_healthy();
    let writer = Writer::start(site.port, &site.token(), "w");
    std::thread::sleep(Duration::from_millis(300));
    let (out, report) = site.upgrade_json(&[]);
    std::thread::sleep(Duration::from_millis(300));
    let written = writer.stop();
    assert!(out.status.success(), "{out:?}\n{}", supervisor.log());
    assert_eq!(report.outcome, Outcome::Upgraded, "{report:?}");
    supervisor.wait_healthy();
    let stored: BTreeSet<String> = site.wallets().into_values().collect();
    assert_acknowledged_kept(&written, &stored, "healthy release");
    assert_eq!(written.refused, 0, "refused requests");
    assert!(
        written.unknown.is_empty(),
        "failed requests: {:?}",
        written.unknown
    );
    let by_b = answered_by(&written, B_VERSION);
    assert!(
        by_b > 0,
        "the new release answered nothing: the test proves nothing"
    );
    // Versions answer in one run: the old release's, then only the new one's.
    let first_b = written
        .answered_by
        .iter()
        .position(|v| v == B_VERSION)
        .unwrap();
    assert!(
        written.answered_by[first_b..]
            .iter()
            .all(|v| v == B_VERSION),
        "the old release answered after the new one"
    );
    eprintln!(
        "healthy release: {} writes, {by_b} by {B_VERSION}, none failed; longest wait {:.3} s",
        written.acknowledged.len(),
        written.longest_wait.as_secs_f64()
    );
    assert!(
        written.longest_wait < Duration::from_secs(health_timeout + 1),
        "a client waited {:?}",
        written.longest_wait
    );
}

/// A release that aborts 1 s after its first answer: its probes pass (they
/// are its first answers), it is committed, and from then on it crashes and
/// is restarted. Whatever it acknowledged between crashes is kept.
#[test]
fn a_release_that_crashes_after_its_first_request_loses_nothing() {
    let site = Site::with(Setup {
        offer: Offer::Faulty(Fault::AbortsAfterFirstRequest),
        health_timeout: 3,
        ..Setup::default()
    });
    let mut supervisor = site.supervisor();
    supervisor.wait_healthy();
    let writer = Writer::start(site.port, &site.token(), "w");
    std::thread::sleep(Duration::from_millis(300));
    let (out, report) = site.upgrade_json(&[]);
    // Long enough for the committed release to crash and come back.
    std::thread::sleep(Duration::from_millis(2500));
    let written = writer.stop();
    eprintln!(
        "crashing release: {:?} ({} writes acknowledged, {} by {B_VERSION}, {} unanswered)",
        report.outcome,
        written.acknowledged.len(),
        answered_by(&written, B_VERSION),
        written.unknown.len()
    );
    if report.outcome == Outcome::RolledBack {
        assert_eq!(
            answered_by(&written, B_VERSION),
            0,
            "answered before the commit"
        );
    } else {
        assert!(out.status.success(), "{out:?}\n{}", supervisor.log());
    }
    site.stop(supervisor);
    let wal = PathBuf::from(format!("{}-wal", site.dir.database().display()));
    let stored = written_names(&site.dir.database(), wal.exists().then_some(wal.as_path()));
    assert_acknowledged_kept(&written, &stored, "crashing release");
}

/// The standalone host probes the new daemon on a private listener: the
/// public port stays closed throughout, so nothing but the committed
/// release ever answers there.
#[test]
fn the_standalone_host_never_opens_the_public_port_to_an_uncommitted_release() {
    let site = Site::with(Setup {
        offer: Offer::Faulty(Fault::Unhealthy),
        health_timeout: 3,
        ..Setup::default()
    });
    let mut supervisor = site.supervisor();
    supervisor.wait_healthy();
    site.stop(supervisor);
    let writer = Writer::start(site.port, &site.token(), "w");
    let (out, report) = site.upgrade_json(&[]);
    let written = writer.stop();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert_eq!(report.outcome, Outcome::RolledBack, "{report:?}");
    assert!(
        written.acknowledged.is_empty(),
        "{} writes were answered on the public port, by {:?}",
        written.acknowledged.len(),
        written.answered_by.iter().collect::<BTreeSet<_>>()
    );
}

/// A small seeded generator for kill instants (the seed is printed, and
/// `WAIAAS_TEST_SEED` replays it).
struct Seeded(u64);

impl Seeded {
    fn new(what: &str) -> Self {
        let seed = std::env::var("WAIAAS_TEST_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_nanos() as u64
            });
        eprintln!("{what}: seed {seed} (WAIAAS_TEST_SEED={seed} replays it)");
        Self(seed | 1)
    }

    /// xorshift64*.
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n
    }
}

/// Kill -9 of the supervisor at 50 seeded random instants from step 7's
/// journal entry to well past the commit, while a writer writes: every
/// acknowledged write is kept, and an uncommitted release answered nobody.
#[test]
fn kill_9_at_random_instants_around_the_commit_loses_no_acknowledged_write() {
    let mut random = Seeded::new("kills around the commit");
    let mut problems = Vec::new();
    for round in 0..50 {
        let delay = Duration::from_millis(random.below(700));
        let point = KillPoint {
            what: format!("kill {} ms into step 7 (round {round})", delay.as_millis()),
            now: Box::new(|s, _| s == 7),
            delay,
            writes: true,
        };
        let site = Site::new();
        problems.extend(kill_during_upgrade(&site, &point, Upgrader::Supervisor));
    }
    assert!(problems.is_empty(), "{}", problems.join("\n\n"));
}

/// The new launcher frozen (SIGSTOP) with its daemon healthy on probation,
/// before the commit, until its handover deadline ends it: nothing it
/// started answered a client, and the rollback keeps every acknowledged write.
#[test]
fn a_new_launcher_frozen_past_its_handover_deadline_loses_no_acknowledged_write() {
    let problems: Vec<String> = [Handing::Upgrade, Handing::Rollback]
        .into_iter()
        .flat_map(|handing| stop_in_handover("handover-daemon-ready", false, handing, Stop::Freeze))
        .collect();
    assert!(problems.is_empty(), "{}", problems.join("\n\n"));
}

// ---------------------------------------------------------------------------
// Power cuts (the power-loss tier): the installation on a filesystem that
// drops every byte not fsynced when the power goes (`waiaas-powercut`).

/// The longest a cut waits after the journal appears: a little more than an
/// upgrade's steps 2–7 (or a rollback's) take on a small database, so cuts
/// spread over them and some land after the commit.
const CUT_WITHIN_MS: u64 = 500;

/// Upgrades A → B (or, after an upgrade, rolls B back to A) with a writer
/// running, on a power-loss filesystem (on [`big_database`] if `big_db`);
/// cuts the power at `point` (its `writes` is ignored: the writer always
/// runs), kills every process of the installation, remounts, and starts a new
/// supervisor. The installation must then be fully old or fully new with
/// every acknowledged write. Returns what went wrong.
fn cut_power_during_upgrade(rollback: bool, big_db: bool, point: &KillPoint) -> Vec<String> {
    let what = point.what.as_str();
    let tmp = tempfile::tempdir().unwrap();
    let (backing, home) = (tmp.path().join("backing"), tmp.path().join("home"));
    fs::create_dir(&backing).unwrap();
    fs::create_dir(&home).unwrap();
    let power = PowerCut::mount(&backing, &home).expect("mount the power-loss filesystem");
    let site = Site::with(Setup {
        home: Some(home.clone()),
        big_db,
        ..Setup::default()
    });
    let mut supervisor = site.supervisor();
    supervisor.wait_healthy();
    let (from, to) = if rollback {
        let (out, report) = site.upgrade_json(&[]);
        assert!(
            out.status.success(),
            "{what}: the upgrade before the rollback: {out:?}"
        );
        assert_eq!(report.outcome, Outcome::Upgraded, "{what}");
        (B_VERSION, a())
    } else {
        (a(), B_VERSION)
    };
    // What is there so far has long been on disk.
    power.sync();

    let writer = Writer::start(site.port, &site.token(), "w");
    let args: &[&str] = if rollback {
        &["upgrade", "--rollback", "--json"]
    } else {
        &["upgrade", "--json"]
    };
    let (mut client, out, err) = spawn_logged(site.launcher(args), tmp.path(), "upgrade");
    let deadline = Instant::now() + Duration::from_secs(120);
    let ended_first = loop {
        let step = site.journal().and_then(|j| j["step"].as_u64());
        if let Some(step) = step
            && (point.now)(step as u8, &site.dir)
        {
            break false;
        }
        // A point inside a short step can be missed: cut after the end instead.
        if client.try_wait().unwrap().is_some() {
            break true;
        }
        assert!(Instant::now() < deadline, "{what}: never reached");
        std::thread::sleep(Duration::from_millis(1));
    };
    std::thread::sleep(point.delay);
    let at_cut = site.journal().map_or("no journal".to_string(), |j| {
        format!("step {} ({})", j["step"], j["step_name"])
    });
    let dropped = power.cut().expect("cut the power");
    for pid in processes_mentioning(site.dir.root()).into_keys() {
        signal(pid, libc::SIGKILL);
    }
    supervisor.kill9();
    wait_child(&mut client, Duration::from_secs(30), "the upgrade command");
    let written = writer.stop();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !processes_mentioning(site.dir.root()).is_empty() {
        assert!(
            Instant::now() < deadline,
            "{what}: processes outlived SIGKILL by 20 s"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    power.unmount().expect("unmount after the cut");
    let power = PowerCut::mount(&backing, &home).expect("remount");
    eprintln!(
        "{what}: cut at {at_cut}{}; {} writes acknowledged; unsynced bytes dropped: {:?}",
        if ended_first {
            ", the command had ended"
        } else {
            ""
        },
        written.acknowledged.len(),
        dropped.files
    );

    let mut problems = Vec::new();
    let mut next = site.supervisor();
    let status = next.wait_for(Duration::from_secs(120), "recovery", |s| {
        healthy(s) || s.state == "refused"
    });
    if !healthy(&status) {
        problems.push(format!(
            "{what} (cut at {at_cut}): the next supervisor did not recover: {status:?}\n{}",
            next.log()
        ));
    } else if let Err(panic) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let current = site.current().expect("current names a release");
        assert!(
            current == from || current == to,
            "current is {current}, neither {from} nor {to}"
        );
        let schema = if current == B_VERSION {
            B_SCHEMA
        } else {
            A_SCHEMA
        };
        let now = site.wallets();
        site.assert_state(&current, schema, &now);
        let mut stored: BTreeSet<String> = now.into_values().collect();
        if rollback && current == to {
            stored.extend(pre_rollback_names(&site));
        }
        assert_acknowledged_kept(&written, &stored, what);
        eprintln!("{what}: fully {current}, all acknowledged writes kept");
    })) {
        problems.push(format!(
            "{what} (cut at {at_cut}): {}\nupgrade: {}{}\nrecovering supervisor:\n{}",
            panic_message(panic.as_ref()),
            fs::read_to_string(&out).unwrap_or_default(),
            fs::read_to_string(&err).unwrap_or_default(),
            next.log()
        ));
    }
    site.stop(next);
    power.unmount().expect("unmount");
    problems
}

/// Power cuts at seeded random instants: each round cuts an upgrade and a
/// rollback anywhere from their journal's first entry to just past the
/// commit, and, on a 100 MB database, an upgrade inside its live copy and
/// inside its WAL copy.
#[test]
fn power_cuts_during_an_upgrade_and_its_rollback_end_fully_old_or_new() {
    if !waiaas_powercut::tier_ready(
        "power_cuts_during_an_upgrade_and_its_rollback_end_fully_old_or_new",
    ) {
        return;
    }
    let mut random = Seeded::new("power cuts during an upgrade and its rollback");
    let rounds = std::env::var("WAIAAS_POWERCUT_UPGRADE_RUNS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(2u64)
        .min(50);
    let mut problems = Vec::new();
    for round in 0..rounds {
        for (kind, rollback) in [("an upgrade", false), ("a rollback", true)] {
            let delay = Duration::from_millis(random.below(CUT_WITHIN_MS));
            let point = KillPoint {
                what: format!("power cut {delay:?} into {kind} (round {round})"),
                now: Box::new(|_, _| true),
                delay,
                writes: true,
            };
            problems.extend(cut_power_during_upgrade(rollback, false, &point));
        }
        let delay = Duration::from_millis(random.below(250));
        let live_copy = KillPoint {
            what: format!("power cut {delay:?} into the live copy (round {round})"),
            now: Box::new(|s, d| {
                s == 2 && exists_with_prefix(&d.backups(), ".partial-pre-upgrade")
            }),
            delay,
            writes: true,
        };
        problems.extend(cut_power_during_upgrade(false, true, &live_copy));
        let delay = Duration::from_millis(random.below(15));
        let wal_copy = KillPoint {
            what: format!("power cut {delay:?} into the WAL's copy (round {round})"),
            now: Box::new(|s, _| s == 3),
            delay,
            writes: true,
        };
        problems.extend(cut_power_during_upgrade(false, true, &wal_copy));
    }
    assert!(problems.is_empty(), "{}", problems.join("\n\n"));
}

// ---------------------------------------------------------------------------
// One upgrade lock for every path; nothing served while a change is
// unfinished (SPEC §13).

/// `run` started while a standalone upgrade downloads (throttled here): it
/// waits for the upgrade's lock, saying so, and starts only once the upgrade
/// is done — the two never act at once, and every acknowledged write is kept.
#[test]
fn a_supervisor_started_during_a_standalone_upgrade_waits_for_it() {
    let r = releases();
    let site = Site::new();
    let mut supervisor = site.supervisor();
    supervisor.wait_healthy();
    let wallets = site.seed(&["treasury", "payroll"]);
    site.stop(supervisor);
    let token = site.token();
    // The download takes about 4 s.
    let tarball = fs::read(&r.b.platform_tarball).unwrap();
    let path = Registry::tarball_path(&platform_package(this_target().unwrap()), B_VERSION);
    let chunk = tarball.len() / 40 + 1;
    site.registry.serve(
        &path,
        support::registry::Reply::Trickle {
            body: tarball,
            chunk,
            every: Duration::from_millis(100),
        },
    );
    let (mut upgrade, out, err) =
        spawn_logged(site.launcher(&["upgrade", "--json"]), &site.home, "upgrade");
    let deadline = Instant::now() + Duration::from_secs(60);
    while site.registry.hits(&path) == 0 {
        assert!(upgrade.try_wait().unwrap().is_none(), "the upgrade ended");
        assert!(Instant::now() < deadline, "the download never began");
        std::thread::sleep(Duration::from_millis(10));
    }
    let mut supervisor = site.supervisor();
    let run_started = Instant::now();
    let writer = Writer::start(site.port, &token, "w");
    let status = wait_child(&mut upgrade, Duration::from_secs(180), "the upgrade");
    let waited = run_started.elapsed();
    let report: UpgradeReport = serde_json::from_str(fs::read_to_string(&out).unwrap().trim())
        .unwrap_or_else(|e| panic!("{e}: {}", fs::read_to_string(&err).unwrap_or_default()));
    assert!(status.success(), "{report:?}\n{}", supervisor.log());
    assert_eq!(report.outcome, Outcome::Upgraded, "{report:?}");
    supervisor.wait_healthy();
    std::thread::sleep(Duration::from_millis(300));
    let written = writer.stop();
    let log = supervisor.log();
    assert!(
        log.contains(&format!(
            "an upgrade without a supervisor (pid {}) is changing",
            upgrade.id()
        )),
        "the supervisor said it waited:\n{log}"
    );
    assert_eq!(
        answered_by(&written, a()),
        0,
        "the old release served while the upgrade ran:\n{log}"
    );
    assert!(
        answered_by(&written, B_VERSION) > 0,
        "nothing was written after the upgrade: the test proves nothing"
    );
    let stored: BTreeSet<String> = site
        .wallets()
        .into_values()
        .filter(|n| n.starts_with("w-"))
        .collect();
    assert_acknowledged_kept(&written, &stored, "a supervisor started mid-upgrade");
    eprintln!(
        "run waited {:.1} s for the standalone upgrade; then {} writes acknowledged, all by \
         {B_VERSION}, all kept",
        waited.as_secs_f64(),
        written.acknowledged.len()
    );
    let mut expected = wallets;
    expected.retain(|_, name| !name.starts_with("w-"));
    let mut after = site.wallets();
    after.retain(|_, name| !name.starts_with("w-"));
    assert_eq!(after, expected, "the wallets written before");
    assert_eq!(site.current().as_deref(), Some(B_VERSION));
    assert!(!site.dir.upgrade_journal().exists());
}

/// A standalone upgrade that finds a supervisor starting (its pid file held,
/// no admin socket yet) does not go ahead on its own, and says why.
#[test]
fn a_standalone_upgrade_refuses_while_a_supervisor_starts() {
    let site = Site::new();
    let before = site.snapshot();
    let starting =
        waiaas_shared::runlock::lock_run_file(&site.dir, &site.dir.launcher_pid()).unwrap();
    let (out, report) = site.upgrade_json(&[]);
    drop(starting);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert_eq!(report.outcome, Outcome::Refused, "{report:?}");
    assert!(
        report.message.contains(&format!(
            "a supervisor (pid {}) is starting",
            std::process::id()
        )),
        "{}",
        report.message
    );
    assert_eq!(site.snapshot(), before, "nothing changed");
    assert_eq!(
        site.registry.total_hits(),
        0,
        "not even the registry was asked"
    );
}

/// A rollback that fails (the backup found damaged when it is restored)
/// leaves the service refused: no daemon serves the migrated database while
/// the journal exists, `status` says why and what to do, and once the cause
/// is fixed `restart` retries the rollback — every acknowledged write kept.
#[test]
fn a_failed_rollback_leaves_the_service_refused_until_it_is_retried() {
    let site = Site::with(Setup {
        offer: Offer::Faulty(Fault::Unhealthy),
        health_timeout: 3,
        ..Setup::default()
    });
    let mut supervisor = site.supervisor();
    supervisor.wait_healthy();
    site.seed(&["treasury", "payroll"]);
    let writer = Writer::start(site.port, &site.token(), "w");
    let (mut upgrade, out, err) =
        spawn_logged(site.launcher(&["upgrade", "--json"]), &site.home, "upgrade");
    wait_for_journal(&site, 4, &mut upgrade);
    let backup = PathBuf::from(
        site.journal().unwrap()["backup"]
            .as_str()
            .expect("step 4 names the backup"),
    );
    let db = backup.join("waiaas.db");
    let original = fs::read(&db).unwrap();
    let mut damaged = original.clone();
    let middle = damaged.len() / 2;
    damaged[middle] ^= 0x01;
    fs::write(&db, &damaged).unwrap();

    wait_child(&mut upgrade, Duration::from_secs(180), "the upgrade");
    let report: UpgradeReport = serde_json::from_str(fs::read_to_string(&out).unwrap().trim())
        .unwrap_or_else(|e| panic!("{e}: {}", fs::read_to_string(&err).unwrap_or_default()));
    assert_eq!(report.outcome, Outcome::RollbackFailed, "{report:?}");
    // For a while: nothing serves, the service is refused and says why.
    let until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < until {
        let status = supervisor.status().expect("the supervisor answers");
        assert!(site.dir.upgrade_journal().exists(), "the journal is kept");
        assert_eq!(status.state, "refused", "{status:?}\n{}", supervisor.log());
        assert!(status.daemon.is_none(), "a daemon runs: {status:?}");
        let refused = status.refused.unwrap_or_default();
        assert!(
            refused.contains("is unfinished")
                && refused.contains("damaged")
                && refused.contains("waiaas-launcher restart"),
            "{refused}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let shown = run(&mut site.launcher(&["status"]));
    assert!(
        shown.stdout.contains("refused") && shown.stdout.contains("retries the rollback"),
        "{shown:?}"
    );

    // The cause fixed, `restart` retries the rollback; the old release serves.
    fs::write(&db, &original).unwrap();
    let restarted = run(&mut site.launcher(&["restart"]));
    assert!(
        restarted.status.success(),
        "{restarted:?}\n{}",
        supervisor.log()
    );
    supervisor.wait_healthy();
    std::thread::sleep(Duration::from_millis(300));
    let written = writer.stop();
    assert_eq!(
        answered_by(&written, B_VERSION),
        0,
        "the unfinished release answered clients"
    );
    let stored: BTreeSet<String> = site
        .wallets()
        .into_values()
        .filter(|n| n.starts_with("w-"))
        .collect();
    assert_acknowledged_kept(&written, &stored, "a failed rollback, retried");
    eprintln!(
        "a failed rollback, retried: {} writes acknowledged (all by {}), all kept; {} unanswered",
        written.acknowledged.len(),
        a(),
        written.unknown.len()
    );
    site.assert_fully_old(&site.wallets());
}
