//! A site: an installation of A, its registry and its config, and the
//! checks that it is fully old or fully new.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use rusqlite::{Connection, OpenFlags};
use sha2::{Digest, Sha256};

use testkit::builds::{B_SCHEMA, B_VERSION, Fault};
use testkit::load::{Writer, Written};
use testkit::registry::Registry;
use testkit::supervisor::{LogFile, Supervisor};
use testkit::{Outcome as Ran, free_port, run};
use waiaas_shared::admin::UpgradeReport;
use waiaas_shared::backup::{MANIFEST as BACKUP_MANIFEST, Manifest};
use waiaas_shared::failpoint::FAILPOINT_ENV;
use waiaas_shared::layout::DataDir;
use waiaas_shared::release::{CLI_PACKAGE, platform_package, this_target};

use crate::releases::{A_SCHEMA, a, big_database, fault_release, releases};

// ---------------------------------------------------------------------------
// A site: an installation of A, its registry, and its config.

/// Which release the registry offers as 1.9.0.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Offer {
    B,
    Faulty(Fault),
}

pub(crate) struct Setup {
    pub(crate) offer: Offer,
    /// `dist-tags.latest` of `@waiaas/cli` names A instead of B.
    pub(crate) latest_is_a: bool,
    /// Serve B's platform tarball with one byte flipped.
    pub(crate) tamper: bool,
    /// Install here (a folder that exists) instead of in a fresh temp dir.
    pub(crate) home: Option<PathBuf>,
    pub(crate) health_timeout: u64,
    pub(crate) migrate_timeout: u64,
    pub(crate) keep_backups: u32,
    /// Start from [`big_database`].
    pub(crate) big_db: bool,
    /// `WAIAAS_FAILPOINT` of every supervisor started (a fault fires once
    /// per token, so the one that recovers after it is unharmed).
    pub(crate) failpoint: Option<String>,
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
            failpoint: None,
        }
    }
}

/// An installation of A with its registry; derefs to the installation
/// (`dir`, `port`, `token`, `health`, wallets).
pub(crate) struct Site {
    pub(crate) _tmp: Option<tempfile::TempDir>,
    pub(crate) site: testkit::Site,
    pub(crate) registry: Registry,
    pub(crate) supervisors: AtomicUsize,
    failpoint: Option<String>,
}

impl Deref for Site {
    type Target = testkit::Site;

    fn deref(&self) -> &testkit::Site {
        &self.site
    }
}

impl Site {
    pub(crate) fn new() -> Self {
        Self::with(Setup::default())
    }

    pub(crate) fn with(setup: Setup) -> Self {
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
        testkit::init_from(&r.a_bin, &home, &dir);
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
            site: testkit::Site::new(home, dir, port),
            registry,
            supervisors: AtomicUsize::new(0),
            failpoint: setup.failpoint,
        }
    }

    pub(crate) fn upgrade(&self, args: &[&str]) -> Ran {
        let mut all = vec!["upgrade"];
        all.extend_from_slice(args);
        run(&mut self.launcher(&all))
    }

    /// `upgrade --json <args>`: the outcome and the one JSON report.
    pub(crate) fn upgrade_json(&self, args: &[&str]) -> (Ran, UpgradeReport) {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        let out = self.upgrade(&all);
        let report = parse_report(&out);
        (out, report)
    }

    /// `waiaas-launcher run`, logging to `launcher-<n>.stderr` (a fresh
    /// file per supervisor of this site).
    pub(crate) fn supervisor(&self) -> Supervisor {
        self.supervisor_with(&[])
    }

    /// [`Site::supervisor`] with extra environment variables.
    pub(crate) fn supervisor_with(&self, env: &[(&str, &str)]) -> Supervisor {
        let n = self.supervisors.fetch_add(1, Ordering::SeqCst);
        let mut command = self.launcher(&["run"]);
        if let Some(failpoint) = &self.failpoint {
            command.env(FAILPOINT_ENV, failpoint);
        }
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
    pub(crate) fn stop(&self, supervisor: Supervisor) {
        supervisor.stop_with(self.launcher(&["stop"]));
    }

    pub(crate) fn current(&self) -> Option<String> {
        fs::read_link(self.dir.current())
            .ok()
            .and_then(|t| t.file_name().map(|n| n.to_string_lossy().into_owned()))
    }

    pub(crate) fn journal(&self) -> Option<serde_json::Value> {
        let bytes = fs::read(self.dir.upgrade_journal()).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    pub(crate) fn versions(&self) -> BTreeSet<String> {
        names_in(&self.dir.versions())
    }

    pub(crate) fn backups(&self) -> Vec<(PathBuf, Manifest)> {
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

    pub(crate) fn snapshot(&self) -> Snapshot {
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
    pub(crate) fn assert_fully_old(&self, wallets: &BTreeMap<String, String>) {
        self.assert_state(a(), A_SCHEMA, wallets);
    }

    /// Fully new: `current` → B, no journal, B serving schema 17, every wallet there.
    pub(crate) fn assert_fully_new(&self, wallets: &BTreeMap<String, String>) {
        self.assert_state(B_VERSION, B_SCHEMA, wallets);
    }

    pub(crate) fn assert_state(
        &self,
        version: &str,
        schema: u32,
        wallets: &BTreeMap<String, String>,
    ) {
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
pub(crate) fn upgrade_while_writing(
    offer: Offer,
) -> (Site, Supervisor, Ran, UpgradeReport, Written) {
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
pub(crate) fn assert_no_leftovers(site: &Site) {
    let left: Vec<String> = names_in(&site.dir.data())
        .into_iter()
        .filter(|n| n.ends_with(".restore") || n.starts_with(".rolled-back-"))
        .collect();
    assert!(left.is_empty(), "left in data/: {left:?}");
}

/// The `w-…` wallet names in the database at `db` (with its WAL, if any,
/// beside it), read from a copy so that nothing is changed.
pub(crate) fn written_names(db: &Path, wal: Option<&Path>) -> BTreeSet<String> {
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

pub(crate) fn names_in(dir: &Path) -> BTreeSet<String> {
    fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect()
}

pub(crate) fn parse_report(out: &Ran) -> UpgradeReport {
    serde_json::from_str(out.stdout.trim())
        .unwrap_or_else(|e| panic!("no JSON report ({e}) in {out:?}"))
}

/// Everything an upgrade may change, for "nothing changed".
#[derive(Debug, PartialEq)]
pub(crate) struct Snapshot {
    pub(crate) current: Option<String>,
    pub(crate) versions: BTreeSet<String>,
    pub(crate) backups: BTreeSet<String>,
    pub(crate) config: String,
    pub(crate) database: Option<DbDigest>,
    pub(crate) journal: bool,
}

/// The database by content: its schema, and every table's rows (hashed; the
/// key-value store without its `updated_at`, which a daemon start rewrites).
#[derive(Debug, PartialEq)]
pub(crate) struct DbDigest {
    pub(crate) schema_version: u32,
    pub(crate) schema: Vec<String>,
    pub(crate) tables: BTreeMap<String, (usize, String)>,
}

impl DbDigest {
    pub(crate) fn of(path: &Path) -> Self {
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
pub(crate) fn spawn_logged(
    mut command: Command,
    home: &Path,
    name: &str,
) -> (Child, PathBuf, PathBuf) {
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

pub(crate) fn wait_child(
    child: &mut Child,
    timeout: Duration,
    what: &str,
) -> std::process::ExitStatus {
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
pub(crate) fn rendered_steps(stderr: &str) -> Vec<u8> {
    stderr
        .lines()
        .filter_map(|l| l.strip_prefix('['))
        .filter_map(|l| l.split_once('/'))
        .filter_map(|(n, _)| n.parse().ok())
        .collect()
}
