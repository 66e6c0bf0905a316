//! The releases under test: A, B and the fault releases, packed once per
//! test process, and a big database made once.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::Instant;

use rusqlite::Connection;

use testkit::builds::{
    B_SCHEMA, B_VERSION, C_VERSION, D_VERSION, Fault, Key, pack_release, release_files,
};
use testkit::{hermetic, run};
use waiaas_packaging::Packed;
use waiaas_shared::layout::DataDir;

pub(crate) const A_SCHEMA: u32 = testkit::builds::A_SCHEMA;

pub(crate) fn a() -> &'static str {
    testkit::builds::a_version()
}

// Releases: A, B and the fault releases, packed once per test process.

/// Everything packed once per process, in `target/e2e/packs-<pid>/`.
pub(crate) struct Releases {
    pub(crate) dir: PathBuf,
    pub(crate) key: Key,
    /// A snapshot of build A's binaries with A's signed `release.json` beside
    /// them, as a release package holds them: `init` is run from here.
    pub(crate) a_bin: PathBuf,
    pub(crate) a: Packed,
    pub(crate) b: Packed,
}

pub(crate) fn releases() -> &'static Releases {
    static RELEASES: OnceLock<Releases> = OnceLock::new();
    RELEASES.get_or_init(|| {
        let e2e = testkit::builds::e2e_dir();
        fs::create_dir_all(&e2e).unwrap();
        remove_stale_pack_dirs(&e2e);
        let dir = e2e.join(format!("packs-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        let b_bin = testkit::builds::b_bin_dir();
        let key = testkit::builds::generate_key(&dir.join("key"));
        let started = Instant::now();
        // A snapshot: target/debug may be rebuilt by another build meanwhile.
        let a_bin =
            testkit::builds::copy_bin_dir(&testkit::builds::a_bin_dir(), &dir.join("a-bin"));
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
pub(crate) fn fault_release(fault: Fault) -> &'static Packed {
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
        let bin = testkit::builds::wrapped_release_dir(&r.dir.join(format!("{name}-bin")), fault);
        pack_release(&bin, &r.dir.join(name), &r.key)
    })
}

/// Pack folders of test processes that are gone.
pub(crate) fn remove_stale_pack_dirs(e2e: &Path) {
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
    let e2e = testkit::builds::e2e_dir();
    fs::create_dir_all(&e2e).unwrap();
    let packs = tempfile::Builder::new()
        .prefix("cd-packs-")
        .tempdir_in(&e2e)
        .unwrap();
    let key = testkit::builds::generate_key(&packs.path().join("key"));
    let c_bin = testkit::builds::wrapped_release_dir_as(
        &packs.path().join("c-bin"),
        Fault::Crash,
        C_VERSION,
    );
    let d_bin = testkit::builds::release_bin_dir(D_VERSION);
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
pub(crate) fn big_database() -> &'static Path {
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
