//! The upgrade engine in-process (SPEC §6), step by step: a fake [`Host`]
//! that records and fails on request, against real files, real signed
//! packages and this build's real `waiaas-daemon` — no second cargo build.
//!
//! The release "1.9.0" is this build's daemon under another version number:
//! two `#!/bin/sh` wrappers, packed and signed once per process. Its daemon
//! fails on purpose while a flag file sits beside the data dir, so each step
//! can be made to fail for a real reason; the rest is the real daemon
//! (`check`, `migrate`) and the real launcher library (package verification,
//! backups, `current`, the journal). Each test then checks the report *and*
//! what is on disk.

use std::collections::HashSet;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;
use std::time::Instant;

use waiaas_launcher::swap;
use waiaas_launcher::upgrade::{Engine, Host, HostError, UPGRADE_STEPS};
use waiaas_packaging::PackOptions;
use waiaas_shared::admin::{Outcome, Progress, UpgradeAction, UpgradeReport, UpgradeRequest};
use waiaas_shared::backup::{self, Kind};
use waiaas_shared::compat::{CompatReport, Verdict};
use waiaas_shared::config::Config;
use waiaas_shared::version::DaemonVersion;

use testkit::{Install, daemon_binary, launcher_binary};

/// This build's version: the installation's `current` before an upgrade.
const OLD: &str = env!("CARGO_PKG_VERSION");
/// The fake release's version.
const NEW: &str = "1.9.0";
/// A fake release older than this build, for the anti-rollback rules.
const OLDER: &str = "1.8.0";

/// Flag files beside the data dir (in `Install::home`) that make the fake
/// daemon fail: read by its script on every run, so a test can raise one
/// part-way through an upgrade.
const FAIL_MIGRATE: &str = "fail-migrate";
const HANG_MIGRATE: &str = "hang-migrate";
const FAIL_CHECK: &str = "fail-check";
/// What the fake `migrate` prints when it fails.
const MIGRATE_FAULT: &str = "test fault: migration failed";
/// What the fake `check` says when it reports a wrong schema.
const CHECK_FAULT: &str = "test fault: the schema did not move";

/// A key-value entry written before the upgrade, and overwritten at step 5
/// (as a migration would change data): after a rollback it must read "before".
const MARKER: &str = "engine-test-marker";

// ---------------------------------------------------------------------------
// The fake release, packed once per process.

struct Release {
    /// The platform tarball's file name and bytes (tiny: two scripts); each
    /// test writes its own copy, so nothing outlives the process.
    file_name: String,
    bytes: Vec<u8>,
    /// The CLI package's bytes, for a registry that offers the release.
    cli_bytes: Vec<u8>,
}

/// The fake release `version` ([`NEW`] or [`OLDER`]), packed once.
fn release(version: &'static str) -> &'static Release {
    static NEWER: OnceLock<Release> = OnceLock::new();
    static OLDER_ONE: OnceLock<Release> = OnceLock::new();
    let cell = if version == NEW { &NEWER } else { &OLDER_ONE };
    cell.get_or_init(|| pack_release(version))
}

/// The one signing key of the fake releases: (secret key file, public key).
fn key() -> &'static (tempfile::TempDir, PathBuf, String) {
    static KEY: OnceLock<(tempfile::TempDir, PathBuf, String)> = OnceLock::new();
    KEY.get_or_init(|| {
        let tmp = tempfile::tempdir().unwrap();
        let (secret, public) = waiaas_packaging::generate_keypair(tmp.path()).unwrap();
        (tmp, secret, public)
    })
}

fn pack_release(version: &'static str) -> Release {
    assert_ne!(OLD, version, "a fake release must differ from this build");
    let started = Instant::now();
    let real = daemon_binary();
    let out = Command::new(&real)
        .args(["--version", "--json"])
        .output()
        .unwrap();
    let old = DaemonVersion::parse(&String::from_utf8_lossy(&out.stdout)).unwrap();
    // The same schema as this build: the real `migrate` and `check` then
    // agree with what the release claims.
    let new = DaemonVersion {
        version: version.into(),
        ..old.clone()
    };
    let wrong_schema = CompatReport {
        database_version: old.schema_version - 1,
        latest: old.schema_version,
        min_compatible: old.min_compatible_schema_version,
        verdict: Verdict::Migrate,
        message: CHECK_FAULT.into(),
    };
    let daemon = format!(
        r#"#!/bin/sh
# waiaas-daemon {version} of tests/engine.rs: this build's daemon under another
# version, failing on purpose while a flag file sits beside the data dir.
flags=/nonexistent
prev=
for arg in "$@"; do
  if [ "$prev" = --data-dir ]; then flags=$(dirname "$arg"); fi
  prev=$arg
done
case "$1" in
--version) echo '{claims}'; exit 0 ;;
migrate)
  if [ -e "$flags/{FAIL_MIGRATE}" ]; then echo '{MIGRATE_FAULT}' >&2; exit 1; fi
  if [ -e "$flags/{HANG_MIGRATE}" ]; then exec sleep 600; fi ;;
check)
  if [ -e "$flags/{FAIL_CHECK}" ]; then echo '{check}'; exit 0; fi ;;
esac
exec '{real}' "$@"
"#,
        version = version,
        claims = serde_json::to_string(&new).unwrap(),
        check = serde_json::to_string(&wrong_schema).unwrap(),
        real = real.display(),
    );
    let launcher = format!(
        "#!/bin/sh\nif [ \"$1\" = --version ]; then echo 'waiaas-launcher {version}'; exit 0; fi\n\
         exec '{}' \"$@\"\n",
        launcher_binary().display()
    );

    let tmp = tempfile::tempdir().unwrap();
    let bin = tmp.path().join("bin");
    fs::create_dir(&bin).unwrap();
    for (name, script) in [("waiaas-daemon", daemon), ("waiaas-launcher", launcher)] {
        fs::write(bin.join(name), script).unwrap();
        fs::set_permissions(bin.join(name), fs::Permissions::from_mode(0o755)).unwrap();
    }
    let packed = waiaas_packaging::pack(&PackOptions {
        bin_dir: bin,
        out_dir: tmp.path().join("out"),
        sign_key: key().1.clone(),
        target: waiaas_shared::release::this_target().unwrap().into(),
        also_targets: Vec::new(),
        rollout_seconds: None,
    })
    .unwrap();
    let tarball = &packed.platform_tarball;
    eprintln!(
        "packed the fake {version} release in {:.0} ms",
        started.elapsed().as_secs_f64() * 1000.0
    );
    Release {
        file_name: tarball.file_name().unwrap().to_string_lossy().into(),
        bytes: fs::read(tarball).unwrap(),
        cli_bytes: fs::read(&packed.cli_tarball).unwrap(),
    }
}

// ---------------------------------------------------------------------------
// The fake host.

/// Stops and starts nothing; records what it was asked and fails on request.
#[derive(Default)]
struct FakeHost {
    running: bool,
    /// "stop", "start <version>", in order.
    calls: Vec<String>,
    /// How many stops fail before one works.
    failing_stops: u32,
    /// Versions whose start fails.
    failing_starts: HashSet<&'static str>,
}

impl FakeHost {
    fn running() -> Self {
        Self {
            running: true,
            ..Self::default()
        }
    }

    fn failing_start(mut self, versions: &[&'static str]) -> Self {
        self.failing_starts.extend(versions);
        self
    }
}

impl Host for FakeHost {
    async fn daemon_running(&mut self) -> bool {
        self.running
    }

    async fn stop_daemon(&mut self) -> Result<(), HostError> {
        self.calls.push("stop".into());
        if self.failing_stops > 0 {
            self.failing_stops -= 1;
            return Err(HostError::Spawn("fake host: the stop failed".into()));
        }
        self.running = false;
        Ok(())
    }

    async fn start_daemon(&mut self, version: &str) -> Result<(), HostError> {
        self.calls.push(format!("start {version}"));
        if self.failing_starts.contains(version) {
            return Err(HostError::NotReady(format!("fake host: {version} failed")));
        }
        self.running = true;
        Ok(())
    }
}

fn calls(list: &[&str]) -> Vec<String> {
    list.iter().map(|c| c.to_string()).collect()
}

// ---------------------------------------------------------------------------
// One installation under test.

struct Setup {
    install: Install,
    config: Config,
    tarball: PathBuf,
    /// Sent with every request (`--allow-downgrade`).
    allow_downgrade: bool,
}

impl Setup {
    /// A real `init` of this build that trusts the fake release's key; with
    /// `started`, also a database holding [`MARKER`] = "before".
    fn new(started: bool) -> Self {
        Self::offering(NEW, started, "")
    }

    /// [`Setup::new`] offering the fake release `version`, with `more` lines
    /// in `[update]`.
    fn offering(version: &'static str, started: bool, more: &str) -> Self {
        let release = release(version);
        let install = Install::new();
        let text = format!(
            "[daemon]\nport = {}\nhostname = \"127.0.0.1\"\nupdate_check = false\n\
             [update]\ntrusted_keys = [\"{}\"]\n{more}",
            install.port,
            key().2
        );
        install.write_config(&text);
        // Parsed without the environment, like the rest of the test is hermetic.
        let config = Config::parse(Some(&text), &install.dir.config(), []).unwrap();
        let tarball = install.home().join(&release.file_name);
        fs::write(&tarball, &release.bytes).unwrap();
        if started {
            install.set_kv(MARKER, "before");
        }
        Self {
            install,
            config,
            tarball,
            allow_downgrade: false,
        }
    }

    fn raise(&self, flag: &str) {
        fs::write(self.install.home().join(flag), b"").unwrap();
    }

    fn current(&self) -> String {
        swap::current_version(&self.install.dir).unwrap().unwrap()
    }

    fn journal_left(&self) -> bool {
        self.install.dir.upgrade_journal().exists()
    }

    /// Runs `action` through the engine; `at_step` is called as each step of
    /// it starts (after the journal records it), before the engine's own
    /// work. Returns the report and the step numbers announced (a step that
    /// says more as it goes counts once).
    async fn run(
        &self,
        host: &mut FakeHost,
        action: UpgradeAction,
        mut at_step: impl FnMut(u8) + Send,
    ) -> (UpgradeReport, Vec<u8>) {
        let mut steps = Vec::new();
        let mut progress = |p: Progress| {
            if steps.last() == Some(&p.step) {
                return;
            }
            steps.push(p.step);
            // A migration changes data: a rollback must undo it.
            let database = self.install.dir.database().exists();
            if p.of == UPGRADE_STEPS.len() as u8 && p.step == 5 && database {
                self.install.set_kv(MARKER, "written during the upgrade");
            }
            at_step(p.step);
        };
        let mut engine = Engine {
            dir: &self.install.dir,
            config: &self.config,
            host,
            progress: &mut progress,
        };
        let request = UpgradeRequest {
            action,
            no_start: false,
            allow_downgrade: self.allow_downgrade,
        };
        let report = engine.run(&request).await;
        (report, steps)
    }

    async fn upgrade(
        &self,
        host: &mut FakeHost,
        at_step: impl FnMut(u8) + Send,
    ) -> (UpgradeReport, Vec<u8>) {
        let action = UpgradeAction::FromFile(self.tarball.clone());
        self.run(host, action, at_step).await
    }

    async fn recover(&self, host: &mut FakeHost) -> Result<(), UpgradeReport> {
        let mut engine = Engine {
            dir: &self.install.dir,
            config: &self.config,
            host,
            progress: &mut |_| {},
        };
        engine.recover().await
    }

    /// The next launcher start's recovery finishes the rollback: the old
    /// version runs again and the old state is back.
    async fn assert_recovered_to_the_old_version(&self) {
        let mut host = FakeHost::default();
        self.recover(&mut host).await.unwrap();
        assert_eq!(host.calls, calls(&["stop", &format!("start {OLD}")]));
        self.assert_old_state();
    }

    /// The state before the upgrade: `current` is the old version, the
    /// database as it was, and no journal.
    fn assert_old_state(&self) {
        assert_eq!(self.current(), OLD);
        assert_eq!(self.install.kv(MARKER).as_deref(), Some("before"));
        assert!(!self.journal_left(), "the journal was left behind");
    }

    /// Step `step` failed because of `cause`, and the rollback put the old
    /// state back: reported as such, and true on disk.
    fn assert_rolled_back(
        &self,
        (report, steps): &(UpgradeReport, Vec<u8>),
        step: u8,
        cause: &str,
    ) {
        assert_eq!(report.outcome, Outcome::RolledBack, "{report:#?}");
        assert_failed_at(report, steps, step, cause);
        assert!(report.manual_steps.is_empty(), "{report:#?}");
        assert!(report.message.contains("Rolled back"), "{report:#?}");
        // The backup is reported once step 3 has made it.
        assert_eq!(report.backup.is_some(), step > 3, "{report:#?}");
        self.assert_old_state();
    }
}

/// `report` names step `step` as the failed one, with `cause`, and the steps
/// were announced in order up to it.
fn assert_failed_at(report: &UpgradeReport, steps: &[u8], step: u8, cause: &str) {
    let name = UPGRADE_STEPS[usize::from(step) - 1];
    assert_eq!(
        report.failed_step.as_deref(),
        Some(format!("{step} ({name})").as_str()),
        "{report:#?}"
    );
    assert!(
        report.message.contains(cause),
        "no {cause:?} in {report:#?}"
    );
    assert_eq!(steps, (1..=step).collect::<Vec<_>>(), "steps announced");
}

/// The manual steps name the backup and the version to point `current` back at.
fn assert_manual_steps(report: &UpgradeReport) {
    assert_eq!(report.outcome, Outcome::RollbackFailed, "{report:#?}");
    let steps = report.manual_steps.join("\n");
    let backup = report.backup.as_deref().expect("a backup was taken");
    assert!(steps.contains(backup), "{steps}");
    assert!(steps.contains(&format!("versions/{OLD}")), "{steps}");
}

/// The newest complete backup.
fn newest_backup(setup: &Setup) -> backup::Backup {
    let list = backup::list(&setup.install.dir).unwrap();
    list.last().expect("a backup").clone()
}

fn no_hook(_: u8) {}

// ---------------------------------------------------------------------------
// The way through, and back with --rollback.

#[tokio::test(flavor = "current_thread")]
async fn the_fake_release_upgrades_and_rolls_back_on_request() {
    let setup = Setup::new(true);
    let mut host = FakeHost::running();
    let (report, steps) = setup.upgrade(&mut host, no_hook).await;

    assert_eq!(report.outcome, Outcome::Upgraded, "{report:#?}");
    assert_eq!(
        (report.from.as_deref(), report.to.as_deref()),
        (Some(OLD), Some(NEW))
    );
    assert_eq!(steps, [1, 2, 3, 4, 5, 6, 7]);
    assert_eq!(host.calls, calls(&["stop", &format!("start {NEW}")]));
    assert_eq!(setup.current(), NEW);
    assert!(!setup.journal_left());
    let marker = setup.install.kv(MARKER);
    assert_eq!(marker.as_deref(), Some("written during the upgrade"));
    let pre_upgrade = PathBuf::from(report.backup.expect("a backup"));
    let backups = backup::list(&setup.install.dir).unwrap();
    assert_eq!(backups.len(), 1);
    assert_eq!(backups[0].path, pre_upgrade);
    assert_eq!(backups[0].manifest.kind, Kind::PreUpgrade);
    assert!(backups[0].manifest.files.contains_key("waiaas.db"));
    assert!(backups[0].manifest.files.contains_key("config.toml"));

    // --rollback: back to the backup, the state after the upgrade saved first.
    let (report, steps) = setup.run(&mut host, UpgradeAction::Rollback, no_hook).await;
    assert_eq!(report.outcome, Outcome::Restored, "{report:#?}");
    assert_eq!(
        (report.from.as_deref(), report.to.as_deref()),
        (Some(NEW), Some(OLD))
    );
    assert_eq!(report.backup.as_deref(), pre_upgrade.to_str());
    assert_eq!(steps, [1, 2, 3, 4, 5, 6]);
    let expected = [
        "stop",
        &format!("start {NEW}"),
        "stop",
        &format!("start {OLD}"),
    ];
    assert_eq!(host.calls, calls(&expected));
    setup.assert_old_state();
    let kinds: Vec<Kind> = backup::list(&setup.install.dir)
        .unwrap()
        .iter()
        .map(|b| b.manifest.kind)
        .collect();
    assert_eq!(
        kinds,
        [Kind::PreUpgrade, Kind::PreRollback, Kind::RolledBack]
    );
    // The database the rollback replaced is kept, named in the report.
    let replaced = kept_replaced(&setup, &report);
    assert_eq!(
        (
            replaced.manifest.from_version.as_str(),
            replaced.manifest.to_version.as_str()
        ),
        (NEW, OLD)
    );
    assert_eq!(
        marker_in(&replaced).as_deref(),
        Some("written during the upgrade")
    );
}

/// The one `rolled-back-…` backup: named in `report`'s message, its files as
/// its manifest says, and nothing left set aside in `data/`.
fn kept_replaced(setup: &Setup, report: &UpgradeReport) -> backup::Backup {
    let dir = &setup.install.dir;
    let kept: Vec<backup::Backup> = backup::list(dir)
        .unwrap()
        .into_iter()
        .filter(|b| b.manifest.kind == Kind::RolledBack)
        .collect();
    assert_eq!(kept.len(), 1, "{kept:#?}");
    let kept = kept.into_iter().next().unwrap();
    let name = kept
        .path
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    assert!(name.starts_with(&format!("rolled-back-{NEW}-")), "{name}");
    assert!(
        report.message.contains(&kept.path.display().to_string()),
        "the report names {}: {report:#?}",
        kept.path.display()
    );
    for (file, sha) in &kept.manifest.files {
        let path = kept.path.join(file);
        assert_eq!(
            &waiaas_shared::fsutil::sha256_file(&path).unwrap(),
            sha,
            "{file}"
        );
    }
    let left: Vec<String> = fs::read_dir(dir.data())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(left.is_empty(), "left in data/: {left:?}");
    kept
}

/// [`MARKER`] in a backup's database (with its WAL, if it has one), read
/// from a copy.
fn marker_in(backup: &backup::Backup) -> Option<String> {
    let tmp = tempfile::tempdir().unwrap();
    for file in ["waiaas.db", "waiaas.db-wal"] {
        if backup.manifest.files.contains_key(file) {
            fs::copy(backup.path.join(file), tmp.path().join(file)).unwrap();
        }
    }
    let conn = rusqlite::Connection::open(tmp.path().join("waiaas.db")).unwrap();
    waiaas_shared::kv::get(&conn, MARKER).unwrap()
}

/// A second `--rollback` would restore the backup the first one restored,
/// dropping everything written since (finding 6): it is refused, naming that
/// backup, and nothing is stopped, changed or made.
#[tokio::test(flavor = "current_thread")]
async fn a_second_rollback_is_refused_naming_the_backup_it_would_restore_again() {
    let setup = Setup::new(true);
    let mut host = FakeHost::running();
    let (report, _) = setup.upgrade(&mut host, no_hook).await;
    assert_eq!(report.outcome, Outcome::Upgraded, "{report:#?}");
    let pre_upgrade = report.backup.expect("a backup");
    let (report, _) = setup.run(&mut host, UpgradeAction::Rollback, no_hook).await;
    assert_eq!(report.outcome, Outcome::Restored, "{report:#?}");
    setup.install.set_kv(MARKER, "written after the rollback");
    let backups = backup::list(&setup.install.dir).unwrap();
    let calls_before = host.calls.clone();

    let (report, _) = setup.run(&mut host, UpgradeAction::Rollback, no_hook).await;
    assert_eq!(report.outcome, Outcome::Refused, "{report:#?}");
    assert!(report.message.contains(&pre_upgrade), "{report:#?}");
    assert!(report.message.contains("already running"), "{report:#?}");
    assert_eq!(host.calls, calls_before, "nothing stopped or started");
    assert_eq!(setup.current(), OLD);
    assert_eq!(
        setup.install.kv(MARKER).as_deref(),
        Some("written after the rollback")
    );
    assert_eq!(backup::list(&setup.install.dir).unwrap(), backups);
    assert!(!setup.journal_left());
}

/// Backups a rollback keeps are pruned to `keep_backups` with the others,
/// newest kept.
#[tokio::test(flavor = "current_thread")]
async fn what_a_rollback_replaces_is_pruned_like_the_other_backups() {
    let setup = Setup::offering(NEW, true, "keep_backups = 2\n");
    let mut host = FakeHost::running();
    let (report, _) = setup.upgrade(&mut host, no_hook).await;
    assert_eq!(report.outcome, Outcome::Upgraded, "{report:#?}");
    let (report, _) = setup.run(&mut host, UpgradeAction::Rollback, no_hook).await;
    assert_eq!(report.outcome, Outcome::Restored, "{report:#?}");
    let kinds: Vec<Kind> = backup::list(&setup.install.dir)
        .unwrap()
        .iter()
        .map(|b| b.manifest.kind)
        .collect();
    assert_eq!(kinds, [Kind::PreRollback, Kind::RolledBack]);
}

#[tokio::test(flavor = "current_thread")]
async fn a_never_started_installation_upgrades_with_a_config_only_backup() {
    let setup = Setup::new(false);
    let database = setup.install.dir.database();
    let mut host = FakeHost::default();

    // A failed attempt first: its migration created the database, so the
    // rollback to "no database" must remove it. (The preflight runs no
    // `check` without a database, so the flag can be up from the start.)
    setup.raise(FAIL_CHECK);
    let (report, _) = setup.upgrade(&mut host, no_hook).await;
    assert_eq!(report.outcome, Outcome::RolledBack, "{report:#?}");
    assert!(!database.exists(), "the rollback left the new database");
    assert_eq!(setup.current(), OLD);
    assert!(!setup.journal_left());

    fs::remove_file(setup.install.home().join(FAIL_CHECK)).unwrap();
    host.calls.clear();
    let (report, _) = setup.upgrade(&mut host, no_hook).await;
    assert_eq!(report.outcome, Outcome::Upgraded, "{report:#?}");
    assert!(
        report
            .message
            .contains("the backup holds config.toml alone"),
        "{report:#?}"
    );
    assert_eq!(setup.current(), NEW);
    assert!(database.exists(), "step 5 created the database");
    let backup = newest_backup(&setup);
    let files: Vec<&str> = backup.manifest.files.keys().map(String::as_str).collect();
    assert_eq!(files, ["config.toml"]);
    // Nothing ran before; step 7 still proves the new version serves.
    assert_eq!(host.calls, calls(&["stop", &format!("start {NEW}")]));
}

// ---------------------------------------------------------------------------
// A failure at each step, rolled back.

#[tokio::test(flavor = "current_thread")]
async fn step_2_a_failed_stop_is_rolled_back() {
    let setup = Setup::new(true);
    let mut host = FakeHost {
        failing_stops: 1,
        ..FakeHost::running()
    };
    let result = setup.upgrade(&mut host, no_hook).await;
    setup.assert_rolled_back(&result, 2, "fake host: the stop failed");
    assert!(
        result.0.message.ends_with("is in place and running."),
        "{:#?}",
        result.0
    );
    let expected = ["stop", "stop", &format!("start {OLD}")];
    assert_eq!(host.calls, calls(&expected));
}

#[tokio::test(flavor = "current_thread")]
async fn step_3_a_failed_backup_is_rolled_back() {
    let setup = Setup::new(true);
    let mut host = FakeHost::running();
    // A file where the backups folder should be: no backup can be written.
    // (A database still locked by another process fails here too, but only
    // after rusqlite's 5 s busy timeout: too slow for this suite.)
    let backups = setup.install.dir.backups();
    let result = setup
        .upgrade(&mut host, |step| {
            if step == 3 {
                fs::remove_dir_all(&backups).unwrap();
                fs::write(&backups, b"not a folder").unwrap();
            }
        })
        .await;
    setup.assert_rolled_back(&result, 3, &format!("cannot back up {}", backups.display()));
    assert_eq!(result.0.backup, None);
    let expected = ["stop", "stop", &format!("start {OLD}")];
    assert_eq!(host.calls, calls(&expected));
}

#[tokio::test(flavor = "current_thread")]
async fn step_4_a_release_without_its_daemon_is_not_switched_to() {
    let setup = Setup::new(true);
    let mut host = FakeHost::running();
    let daemon = setup.install.dir.version(NEW).join("waiaas-daemon");
    let result = setup
        .upgrade(&mut host, |step| {
            if step == 4 {
                fs::remove_file(&daemon).unwrap();
            }
        })
        .await;
    setup.assert_rolled_back(&result, 4, "has no waiaas-daemon");
    let expected = ["stop", "stop", &format!("start {OLD}")];
    assert_eq!(host.calls, calls(&expected));
}

#[tokio::test(flavor = "current_thread")]
async fn step_5_a_failed_migration_restores_the_backup() {
    let setup = Setup::new(true);
    setup.raise(FAIL_MIGRATE);
    let mut host = FakeHost::running();
    let result = setup.upgrade(&mut host, no_hook).await;
    setup.assert_rolled_back(&result, 5, MIGRATE_FAULT);
    let expected = ["stop", "stop", &format!("start {OLD}")];
    assert_eq!(host.calls, calls(&expected));
    // What was written during the upgrade is kept beside the restored state.
    let replaced = kept_replaced(&setup, &result.0);
    assert_eq!(
        marker_in(&replaced).as_deref(),
        Some("written during the upgrade")
    );
}

#[tokio::test(flavor = "current_thread")]
async fn step_6_a_wrong_schema_after_migrating_is_rolled_back() {
    let setup = Setup::new(true);
    let mut host = FakeHost::running();
    // Raised after the preflight's own `check`, which must pass.
    let result = setup
        .upgrade(&mut host, |step| {
            if step == 5 {
                setup.raise(FAIL_CHECK);
            }
        })
        .await;
    setup.assert_rolled_back(&result, 6, CHECK_FAULT);
    let expected = ["stop", "stop", &format!("start {OLD}")];
    assert_eq!(host.calls, calls(&expected));
}

#[tokio::test(flavor = "current_thread")]
async fn step_7_a_new_daemon_that_does_not_start_is_rolled_back() {
    let setup = Setup::new(true);
    let mut host = FakeHost::running().failing_start(&[NEW]);
    let result = setup.upgrade(&mut host, no_hook).await;
    setup.assert_rolled_back(&result, 7, &format!("fake host: {NEW} failed"));
    let expected = [
        "stop",
        &format!("start {NEW}"),
        "stop",
        &format!("start {OLD}"),
    ];
    assert_eq!(host.calls, calls(&expected));
}

// ---------------------------------------------------------------------------
// The rollback failing too: manual steps.

#[tokio::test(flavor = "current_thread")]
async fn a_damaged_backup_fails_the_rollback_with_manual_steps() {
    let setup = Setup::new(true);
    setup.raise(FAIL_MIGRATE);
    let mut host = FakeHost::running();
    let (report, steps) = setup
        .upgrade(&mut host, |step| {
            if step == 4 {
                let copy = newest_backup(&setup).path.join("waiaas.db");
                let mut bytes = fs::read(&copy).unwrap();
                bytes.extend_from_slice(b"bit rot");
                fs::write(&copy, bytes).unwrap();
            }
        })
        .await;
    assert_manual_steps(&report);
    assert_failed_at(&report, &steps, 5, MIGRATE_FAULT);
    assert!(
        report.message.contains("the backup is damaged"),
        "{report:#?}"
    );
    // Nothing was guessed: the journal stays for the next start, `current`
    // and the daemon are left as the failed step left them (new, stopped).
    assert!(setup.journal_left());
    assert_eq!(setup.current(), NEW);
    assert_eq!(host.calls, calls(&["stop", "stop"]));
}

#[tokio::test(flavor = "current_thread")]
async fn an_old_version_that_does_not_start_again_fails_the_rollback() {
    let setup = Setup::new(true);
    let mut host = FakeHost::running().failing_start(&[NEW, OLD]);
    let (report, steps) = setup.upgrade(&mut host, no_hook).await;
    assert_manual_steps(&report);
    assert_failed_at(
        &report,
        &steps,
        7,
        &format!("{OLD} is restored but does not start"),
    );
    assert_eq!(setup.current(), OLD);
    assert_eq!(setup.install.kv(MARKER).as_deref(), Some("before"));
    assert!(setup.journal_left());

    // The journal lets the next launcher start finish the rollback.
    setup.assert_recovered_to_the_old_version().await;
}

// ---------------------------------------------------------------------------
// A crash part-way, recovered at the next start.

#[tokio::test(flavor = "current_thread")]
async fn a_crash_during_the_migration_is_rolled_back_by_recover() {
    let setup = Setup::new(true);
    setup.raise(HANG_MIGRATE);
    let mut host = FakeHost::running();
    // The launcher "dies" once step 5 is journaled and its migration runs:
    // the engine's future is dropped (which kills the migration, as the
    // parent-death signal would).
    let (at_5, reached_5) = tokio::sync::oneshot::channel();
    let mut at_5 = Some(at_5);
    let upgrade = setup.upgrade(&mut host, |step| {
        if step == 5 {
            let _ = at_5.take().unwrap().send(());
        }
    });
    tokio::select! {
        biased;
        _ = reached_5 => {}
        (report, _) = upgrade => panic!("the upgrade ended: {report:#?}"),
    }
    assert!(setup.journal_left());
    assert_eq!(setup.current(), NEW, "the crash came after the switch");

    // The daemon ran before the upgrade, so it runs again.
    setup.assert_recovered_to_the_old_version().await;
}

/// A daemon no launcher supervises (its launcher killed with kill -9 outside
/// systemd; here `waiaas-daemon serve` started directly) still serves when
/// the recovery runs (finding 8): the engine stops it gracefully before it
/// restores anything, and what it wrote after the backup is kept in the
/// rolled-back backup.
#[tokio::test(flavor = "current_thread")]
async fn recovery_stops_a_daemon_no_launcher_supervises_before_restoring() {
    let setup = Setup::new(true);
    let dir = &setup.install.dir;
    let made = backup::create(
        dir,
        &backup::Request {
            kind: Kind::PreUpgrade,
            from_version: OLD.into(),
            to_version: NEW.into(),
            schema_version: 0,
        },
    )
    .unwrap();
    let journal = serde_json::json!({
        "operation": "upgrade", "phase": "forward", "from": OLD, "to": NEW,
        "step": 5, "step_name": "migrate the database", "backup": made.path,
        "daemon_was_running": true, "started_at": "2026-01-01T00:00:00.000Z", "pid": 1,
    });
    fs::write(dir.upgrade_journal(), journal.to_string()).unwrap();
    let mut orphan = testkit::Unsupervised::start(&setup.install);
    // Written through the orphan's database after the backup.
    setup
        .install
        .set_kv(MARKER, "written while the orphan served");

    let mut host = FakeHost::default();
    setup.recover(&mut host).await.unwrap();
    let exited = orphan.child.try_wait().unwrap();
    assert!(
        exited.is_some_and(|s| s.success()),
        "the orphan was not stopped gracefully: {exited:?}"
    );
    assert_eq!(host.calls, calls(&["stop", &format!("start {OLD}")]));
    setup.assert_old_state();
    let kept: Vec<backup::Backup> = backup::list(dir)
        .unwrap()
        .into_iter()
        .filter(|b| b.manifest.kind == Kind::RolledBack)
        .collect();
    assert_eq!(kept.len(), 1, "{kept:#?}");
    assert_eq!(
        marker_in(&kept[0]).as_deref(),
        Some("written while the orphan served")
    );
}

/// A journal that cannot be written (a full disk) fails the step, but the
/// rollback still runs: recording it is not a precondition of undoing.
#[tokio::test(flavor = "current_thread")]
async fn an_unwritable_journal_at_step_2_is_rolled_back_not_given_up_on() {
    let setup = Setup::new(true);
    let mut host = FakeHost::running();
    // The data dir stops taking writes once the preflight has passed (a full
    // or read-only file system; a folder where the journal's temp file goes
    // stands in for it): the journal entry of step 2 cannot be written.
    let tmp = setup
        .install
        .data_dir()
        .join(waiaas_shared::fsutil::temp_name("upgrade.json"));
    let result = setup
        .upgrade(&mut host, |step| {
            if step == 1 {
                fs::create_dir(&tmp).unwrap();
            }
        })
        .await;
    // Nothing was changed: the daemon was never stopped.
    assert!(host.running, "the daemon was stopped: {:?}", host.calls);
    setup.assert_rolled_back(&result, 2, "cannot write the journal");
}

// ---------------------------------------------------------------------------
// Anti-rollback: an upgrade never moves back by itself.

/// `--from` an older release is refused with nothing changed, and installed
/// with `--allow-downgrade` (same schema: the new binary's check allows it).
#[tokio::test(flavor = "current_thread")]
async fn an_older_release_needs_allow_downgrade() {
    let mut setup = Setup::offering(OLDER, true, "");
    let mut host = FakeHost::running();
    let (report, _) = setup.upgrade(&mut host, |_| {}).await;
    assert_eq!(report.outcome, Outcome::Refused, "{report:#?}");
    assert!(report.message.contains("--allow-downgrade"), "{report:#?}");
    assert!(host.calls.is_empty(), "nothing stopped: {:?}", host.calls);
    setup.assert_old_state();

    setup.allow_downgrade = true;
    let (report, _) = setup.upgrade(&mut host, |_| {}).await;
    assert_eq!(report.outcome, Outcome::Upgraded, "{report:#?}");
    assert_eq!(setup.current(), OLDER);
}

/// A channel whose newest release is older than the installed one is not
/// followed: "up to date", and nothing is downloaded.
#[tokio::test(flavor = "current_thread")]
async fn a_channel_naming_an_older_release_is_not_followed() {
    let registry = testkit::registry::Registry::start();
    let release = release(OLDER);
    let cli = waiaas_shared::release::CLI_PACKAGE;
    let platform =
        waiaas_shared::release::platform_package(waiaas_shared::release::this_target().unwrap());
    registry.publish(cli, OLDER, release.cli_bytes.clone());
    registry.publish(&platform, OLDER, release.bytes.clone());
    let more = format!("registry = \"{}\"\n", registry.url());
    let setup = Setup::offering(OLDER, true, &more);
    let mut host = FakeHost::running();
    let (report, _) = setup.run(&mut host, UpgradeAction::Latest, |_| {}).await;
    assert_eq!(report.outcome, Outcome::UpToDate, "{report:#?}");
    assert!(report.message.contains("is older"), "{report:#?}");
    assert!(host.calls.is_empty(), "{:?}", host.calls);
    assert!(
        !setup.install.dir.version(OLDER).exists(),
        "nothing installed"
    );
    let tarball = testkit::registry::Registry::tarball_path(&platform, OLDER);
    assert_eq!(registry.hits(&tarball), 0, "nothing downloaded");
    setup.assert_old_state();
}

// ---------------------------------------------------------------------------
// Local state is data, not paths.

/// A journal naming a path instead of a version: recovery refuses it and
/// runs nothing; `current` is untouched.
#[tokio::test(flavor = "current_thread")]
async fn a_journal_naming_a_path_is_refused_and_nothing_runs() {
    let setup = Setup::new(true);
    let evil = serde_json::json!({
        "operation": "upgrade", "phase": "forward", "from": "../../evil", "to": NEW,
        "step": 5, "step_name": "migrate the database", "backup": null,
        "daemon_was_running": true, "started_at": "2026-01-01T00:00:00Z", "pid": 1,
    });
    fs::write(setup.install.dir.upgrade_journal(), evil.to_string()).unwrap();
    let mut host = FakeHost::running();
    let (report, _) = setup.upgrade(&mut host, |_| {}).await;
    assert_eq!(report.outcome, Outcome::Refused, "{report:#?}");
    assert!(report.message.contains("is not a version"), "{report:#?}");
    assert!(host.calls.is_empty(), "{:?}", host.calls);
    assert_eq!(setup.current(), OLD);
    assert!(setup.recover(&mut host).await.is_err());
    assert!(host.calls.is_empty(), "{:?}", host.calls);
}

/// A backup whose `backup.json` names a path: `--rollback` refuses it.
#[tokio::test(flavor = "current_thread")]
async fn a_backup_naming_a_path_is_refused_by_rollback() {
    let setup = Setup::new(true);
    let mut host = FakeHost::running();
    let (report, _) = setup.upgrade(&mut host, |_| {}).await;
    assert_eq!(report.outcome, Outcome::Upgraded, "{report:#?}");
    let newest = newest_backup(&setup);
    let mut manifest = newest.manifest.clone();
    manifest.from_version = "../../evil".into();
    fs::write(
        newest.path.join(backup::MANIFEST),
        serde_json::to_vec(&manifest).unwrap(),
    )
    .unwrap();
    let calls_before = host.calls.len();
    let (report, _) = setup.run(&mut host, UpgradeAction::Rollback, |_| {}).await;
    assert_eq!(report.outcome, Outcome::Refused, "{report:#?}");
    assert!(report.message.contains("unusable"), "{report:#?}");
    assert_eq!(host.calls.len(), calls_before, "nothing stopped");
    assert_eq!(setup.current(), NEW, "current untouched");
}

/// A key removed from the config after the upgrade (a compromise) is not
/// brought back by `--rollback`; the report says what was kept.
#[tokio::test(flavor = "current_thread")]
async fn a_rollback_keeps_the_trust_settings_in_use() {
    let setup = Setup::new(true);
    let mut host = FakeHost::running();
    let (report, _) = setup.upgrade(&mut host, |_| {}).await;
    assert_eq!(report.outcome, Outcome::Upgraded, "{report:#?}");
    let config = setup.install.dir.config();
    let rotated = fs::read_to_string(&config)
        .unwrap()
        .replace(&key().2, "RWQrotatedkey");
    fs::write(&config, &rotated).unwrap();

    let (report, _) = setup.run(&mut host, UpgradeAction::Rollback, |_| {}).await;
    assert_eq!(report.outcome, Outcome::Restored, "{report:#?}");
    assert!(report.message.contains("trusted_keys kept"), "{report:#?}");
    let restored = fs::read_to_string(&config).unwrap();
    assert!(
        !restored.contains(&key().2),
        "the removed key came back:\n{restored}"
    );
    assert!(restored.contains("RWQrotatedkey"), "{restored}");
    assert_eq!(setup.current(), OLD);
}

/// A version folder `init` installed from a local build (no signed
/// release.json) whose daemon changed since: `--rollback` refuses to run it.
#[tokio::test(flavor = "current_thread")]
async fn a_rollback_refuses_an_old_version_whose_files_changed() {
    let setup = Setup::new(true);
    let mut host = FakeHost::running();
    let (report, _) = setup.upgrade(&mut host, |_| {}).await;
    assert_eq!(report.outcome, Outcome::Upgraded, "{report:#?}");
    let daemon = setup.install.dir.version(OLD).join("waiaas-daemon");
    let mut bytes = fs::read(&daemon).unwrap();
    bytes.extend_from_slice(b"tampered");
    fs::write(&daemon, bytes).unwrap();
    let calls_before = host.calls.len();
    let (report, _) = setup.run(&mut host, UpgradeAction::Rollback, |_| {}).await;
    assert_eq!(report.outcome, Outcome::Refused, "{report:#?}");
    assert!(report.message.contains("sha256 changed"), "{report:#?}");
    assert_eq!(host.calls.len(), calls_before, "nothing stopped");
    assert_eq!(setup.current(), NEW);
}
