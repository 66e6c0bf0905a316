//! Scenario 17 (SPEC §9, §10): `docker compose pull && docker compose up -d`
//! keeps the volume and migrates it — simulated without a Docker engine.
//!
//! The image's contract is read from the repository's Dockerfile: its `ENV`,
//! its `ENTRYPOINT`, its `HEALTHCHECK` command, and the one folder both
//! binaries are copied to. An "image" is that folder holding a build's two
//! binaries (release A = this build, schema 16; release B = the real second
//! build 1.9.0 with migration 17, from `support/builds.rs`); a "container" is
//! the entrypoint run from there with the image's environment and a "volume"
//! folder as its data dir; `docker exec` is a command run the same way.
//! Only what Docker itself provides is stood in for: the loopback address
//! and a free port instead of the published 3100, and no registry.

mod support;

#[path = "support/builds.rs"]
mod builds;

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use rusqlite::{Connection, OpenFlags};
use waiaas_shared::backup::{Kind, MANIFEST as BACKUP_MANIFEST, Manifest};
use waiaas_shared::health::HealthResponse;

use builds::{A_SCHEMA, B_SCHEMA, B_VERSION};
use support::{Outcome, free_port, hermetic, http, run};

/// How long a container may take to report healthy (a migration included).
const HEALTHY_WITHIN: Duration = Duration::from_secs(90);
/// `docker stop`'s wait before SIGKILL, as docker-compose.yml sets it.
const STOP_GRACE: Duration = Duration::from_secs(40);

// ---------------------------------------------------------------------------
// The image's contract, from the Dockerfile

struct ImageSpec {
    /// The final stage's `ENV`, in order.
    env: Vec<(String, String)>,
    entrypoint: Vec<String>,
    healthcheck: Vec<String>,
    /// Where `COPY --from=…` puts `waiaas-launcher` and `waiaas-daemon`.
    bin_dir: String,
}

fn image_spec() -> ImageSpec {
    let path = builds::repo_root().join("Dockerfile");
    let text = fs::read_to_string(&path).expect("read the Dockerfile");
    // Logical lines: comments dropped, continuations joined.
    let mut lines = Vec::new();
    let mut current = String::new();
    for line in text.lines().map(str::trim) {
        if line.starts_with('#') || (line.is_empty() && current.is_empty()) {
            continue;
        }
        match line.strip_suffix('\\') {
            Some(head) => {
                current.push_str(head);
                current.push(' ');
            }
            None => {
                current.push_str(line);
                lines.push(std::mem::take(&mut current));
            }
        }
    }
    let last_from = lines
        .iter()
        .rposition(|l| l.starts_with("FROM "))
        .expect("a FROM");
    let stage = &lines[last_from..];
    let args = |keyword: &str| {
        stage
            .iter()
            .filter_map(move |l| l.strip_prefix(keyword).map(str::trim))
            .collect::<Vec<_>>()
    };
    let exec_form = |text: &str| -> Vec<String> {
        serde_json::from_str(text).unwrap_or_else(|e| panic!("`{text}` is not exec form: {e}"))
    };
    let env = args("ENV ")
        .into_iter()
        .flat_map(|l| {
            l.split_whitespace()
                .map(|pair| {
                    let (k, v) = pair.split_once('=').expect("ENV key=value");
                    (k.to_string(), v.trim_matches('"').to_string())
                })
                .collect::<Vec<_>>()
        })
        .collect();
    let entrypoint = exec_form(args("ENTRYPOINT ").last().expect("ENTRYPOINT"));
    let healthcheck = args("HEALTHCHECK ")
        .last()
        .and_then(|l| l.split_once("CMD "))
        .map(|(_, cmd)| exec_form(cmd.trim()))
        .expect("HEALTHCHECK … CMD [...]");
    let copy = args("COPY ")
        .into_iter()
        .find(|l| l.contains("--from=") && l.contains("/waiaas-daemon"))
        .expect("COPY --from=… waiaas-daemon");
    assert!(
        copy.contains("/waiaas-launcher"),
        "both binaries are copied into one folder: {copy}"
    );
    let bin_dir = copy
        .split_whitespace()
        .last()
        .unwrap()
        .trim_end_matches('/')
        .to_string();
    ImageSpec {
        env,
        entrypoint,
        healthcheck,
        bin_dir,
    }
}

// ---------------------------------------------------------------------------
// Images and containers

/// An image: `root/<bin_dir>/` holding copies of a build's two binaries
/// (copies, as in an image layer: the launcher finds the daemon beside its
/// own path).
fn build_image(root: &Path, spec: &ImageSpec, build: &Path) -> PathBuf {
    let bin = root.join(spec.bin_dir.trim_start_matches('/'));
    fs::create_dir_all(&bin).unwrap();
    for name in ["waiaas-launcher", "waiaas-daemon"] {
        let target = bin.join(name);
        fs::copy(build.join(name), &target)
            .unwrap_or_else(|e| panic!("copy {name} from {}: {e}", build.display()));
        fs::set_permissions(&target, fs::Permissions::from_mode(0o755)).unwrap();
    }
    bin
}

struct Site {
    spec: ImageSpec,
    home: tempfile::TempDir,
    volume: PathBuf,
}

impl Site {
    fn new() -> Self {
        let spec = image_spec();
        let home = tempfile::tempdir().unwrap();
        // A fresh named volume is a copy of the image's /data: empty, 0700.
        let volume = home.path().join("volume");
        fs::create_dir(&volume).unwrap();
        fs::set_permissions(&volume, fs::Permissions::from_mode(0o700)).unwrap();
        Self { spec, home, volume }
    }

    /// `program args…` as the container runs it: the image's environment
    /// (plus what compose or `-e` would set), the image's bin folder first
    /// on the PATH, the volume as the data dir.
    fn command(&self, image_bin: &Path, port: u16, argv: &[String]) -> Command {
        let mut command = hermetic(Command::new(image_bin.join(&argv[0])), self.home.path());
        command.args(&argv[1..]);
        for (key, value) in &self.spec.env {
            command.env(key, value);
        }
        let path = std::env::var("PATH").unwrap_or_default();
        command
            .env("PATH", format!("{}:{path}", image_bin.display()))
            // The volume's mount point, and what Docker's port publishing does.
            .env("WAIAAS_DATA_DIR", &self.volume)
            .env("WAIAAS_DAEMON_HOSTNAME", "127.0.0.1")
            .env("WAIAAS_DAEMON_PORT", port.to_string())
            // No registry in a test.
            .env("WAIAAS_DAEMON_UPDATE_CHECK", "false")
            .stdin(Stdio::null());
        command
    }

    /// `docker run`: the entrypoint in the background.
    fn start(&self, image_bin: &Path, name: &str) -> Container {
        let port = free_port();
        let log = self.home.path().join(format!("{name}.log"));
        let child = self
            .command(image_bin, port, &self.spec.entrypoint)
            .stdout(fs::File::create(&log).unwrap())
            .stderr(fs::File::create(log.with_extension("err")).unwrap())
            .spawn()
            .expect("start the entrypoint");
        Container {
            child: Some(child),
            log,
            port,
            image_bin: image_bin.to_path_buf(),
        }
    }

    /// `docker exec container argv…`.
    fn exec(&self, container: &Container, argv: &[&str]) -> Outcome {
        let argv: Vec<String> = argv.iter().map(|a| a.to_string()).collect();
        run(&mut self.command(&container.image_bin, container.port, &argv))
    }

    /// Docker's health check: the image's HEALTHCHECK command, until it passes.
    fn wait_healthy(&self, container: &mut Container) {
        let started = Instant::now();
        loop {
            let check = run(&mut self.command(
                &container.image_bin,
                container.port,
                &self.spec.healthcheck,
            ));
            if check.status.success() {
                return;
            }
            if let Some(exit) = container.child.as_mut().unwrap().try_wait().unwrap() {
                panic!(
                    "the container exited ({exit}) before it was healthy:\n{}",
                    container.logs()
                );
            }
            assert!(
                started.elapsed() < HEALTHY_WITHIN,
                "not healthy within {HEALTHY_WITHIN:?} (last check: {check:?}):\n{}",
                container.logs()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn token(&self) -> String {
        fs::read_to_string(self.volume.join("data/master.token"))
            .expect("data/master.token in the volume")
            .trim()
            .to_string()
    }
}

struct Container {
    child: Option<Child>,
    log: PathBuf,
    port: u16,
    image_bin: PathBuf,
}

impl Container {
    fn logs(&self) -> String {
        format!(
            "{}{}",
            fs::read_to_string(&self.log).unwrap_or_default(),
            fs::read_to_string(self.log.with_extension("err")).unwrap_or_default()
        )
    }

    /// `docker stop`: SIGTERM, then the grace period.
    fn stop(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("running");
        // SAFETY: kill(2) on our own child, not yet reaped.
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
        let deadline = Instant::now() + STOP_GRACE;
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("did not stop within {STOP_GRACE:?}:\n{}", self.logs());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn health(&self) -> HealthResponse {
        let (status, body) =
            http(self.port, "GET", "/health", None, None).expect("/health answers");
        assert_eq!(status, 200, "/health: {body}");
        serde_json::from_str(&body).expect("a HealthResponse")
    }

    fn create_wallet(&self, token: &str, name: &str) {
        let body = serde_json::json!({"name": name, "chain": "solana", "network": "devnet"});
        let (status, answer) = http(
            self.port,
            "POST",
            "/v1/wallets",
            Some(token),
            Some(&body.to_string()),
        )
        .expect("the API answers");
        assert_eq!(status, 201, "POST /v1/wallets: {answer}");
    }

    /// id → name, as the API lists them.
    fn wallets(&self, token: &str) -> BTreeMap<String, String> {
        let (status, answer) =
            http(self.port, "GET", "/v1/wallets", Some(token), None).expect("the API answers");
        assert_eq!(status, 200, "GET /v1/wallets: {answer}");
        let list: serde_json::Value = serde_json::from_str(&answer).unwrap();
        list["wallets"]
            .as_array()
            .unwrap()
            .iter()
            .map(|w| {
                (
                    w["id"].as_str().unwrap().to_string(),
                    w["name"].as_str().unwrap().to_string(),
                )
            })
            .collect()
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A database's schema version and its wallets (id → name), read-only.
fn database(path: &Path) -> (u32, BTreeMap<String, String>) {
    let conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY)
        .unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    let schema: u32 = conn
        .query_row("SELECT MAX(version) FROM schema_version", [], |r| r.get(0))
        .expect("schema_version");
    let mut statement = conn.prepare("SELECT id, name FROM wallets").unwrap();
    let wallets = statement
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    (schema, wallets)
}

// ---------------------------------------------------------------------------

#[test]
fn scenario_17_image_upgrade_keeps_the_volume_and_migrates() {
    let site = Site::new();
    assert!(
        site.spec
            .env
            .iter()
            .any(|(k, v)| k == "WAIAAS_CONTAINER" && v == "1"),
        "the image sets WAIAAS_CONTAINER=1"
    );
    let images = site.home.path().join("images");

    // Release A's image, first start on an empty volume; data written
    // through the real API.
    let image_a = build_image(&images.join("a"), &site.spec, &builds::a_bin_dir());
    let mut a = site.start(&image_a, "a");
    site.wait_healthy(&mut a);
    let health = a.health();
    assert_eq!(
        (health.version.as_str(), health.schema_version),
        (builds::a_version(), A_SCHEMA),
        "release A serves from the volume"
    );
    let token = site.token();
    for name in ["treasury", "payroll", "cold-storage"] {
        a.create_wallet(&token, name);
    }
    let written = a.wallets(&token);
    assert_eq!(written.len(), 3);
    assert!(
        a.stop().success(),
        "release A stops cleanly on SIGTERM:\n{}",
        a.logs()
    );
    assert!(
        !site.volume.join("current").exists() && !site.volume.join("versions").exists(),
        "in a container the image holds the programs, the volume only data"
    );
    let (schema, rows) = database(&site.volume.join("data/waiaas.db"));
    assert_eq!((schema, &rows), (A_SCHEMA, &written), "the volume after A");

    // `docker compose pull && docker compose up -d`: release B's image on
    // the same volume.
    let image_b = build_image(&images.join("b"), &site.spec, builds::b_bin_dir());
    let mut b = site.start(&image_b, "b");
    site.wait_healthy(&mut b);
    let health = b.health();
    assert_eq!(
        (health.version.as_str(), health.schema_version),
        (B_VERSION, B_SCHEMA),
        "release B migrated the volume's database at start:\n{}",
        b.logs()
    );

    // The daemon's own backup, taken before it migrated: A's database.
    let backups: Vec<PathBuf> = fs::read_dir(site.volume.join("backups"))
        .expect("backups/ in the volume")
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("pre-migrate-"))
        })
        .collect();
    assert_eq!(backups.len(), 1, "one pre-migrate backup: {backups:?}");
    let manifest: Manifest =
        serde_json::from_slice(&fs::read(backups[0].join(BACKUP_MANIFEST)).unwrap()).unwrap();
    assert_eq!(manifest.kind, Kind::PreMigrate);
    assert_eq!(manifest.schema_version, A_SCHEMA);
    assert_eq!(manifest.to_version, B_VERSION);
    let (backup_schema, backup_rows) = database(&backups[0].join("waiaas.db"));
    assert_eq!(
        (backup_schema, &backup_rows),
        (A_SCHEMA, &written),
        "the backup holds A's database as it was"
    );

    // The rows are intact, through B's API and in the migrated file.
    assert_eq!(b.wallets(&site.token()), written, "the wallets A wrote");
    let (schema, rows) = database(&site.volume.join("data/waiaas.db"));
    assert_eq!((schema, &rows), (B_SCHEMA, &written));

    // `docker exec … waiaas-launcher upgrade`: the image is the unit of upgrade.
    let refused = site.exec(&b, &["waiaas-launcher", "upgrade"]);
    assert_eq!(
        refused.status.code(),
        Some(2),
        "upgrade in a container is a usage error: {refused:?}"
    );
    let said = refused.stderr.to_lowercase();
    assert!(
        said.contains("pull") && said.contains("image"),
        "it says to pull the new image: {}",
        refused.stderr
    );

    assert!(
        b.stop().success(),
        "release B stops cleanly on SIGTERM:\n{}",
        b.logs()
    );
}
