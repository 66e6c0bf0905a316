//! Scenario 17 (SPEC §9, §10) for real: `docker compose pull && docker
//! compose up -d` keeps the volume and migrates it, with podman.
//!
//! The repository's Dockerfile is built as it is (`--format docker`, so the
//! `HEALTHCHECK` is kept) into image A (this build, 1.8.1, schema 16) and
//! image B (the second build, 1.9.0 with migration 17, `testkit/src/builds.rs`),
//! taking the binaries under test through its `--target prebuilt`; its
//! `debian:bookworm-slim` is `.ci/container-images`' debootstrap rootfs. Each
//! container runs as docker-compose.yml runs it: `--init`, the named volume
//! at `/data`, the API published on the host's loopback only. The health
//! check is the image's own (`podman healthcheck run`: podman's timers need a
//! systemd on the host). Skipped, saying why, without the tier's
//! prerequisites — never in CI (`testkit/src/podman.rs`).

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use rusqlite::{Connection, OpenFlags};
use waiaas_shared::backup::{Kind, MANIFEST as BACKUP_MANIFEST, Manifest};

use testkit::builds::{A_SCHEMA, B_SCHEMA, B_VERSION};
use testkit::free_port;
use testkit::images::Binaries;
use testkit::podman::{Api, Cleanup, Podman, podman};

/// How long a container may take to report healthy (a migration included).
const HEALTHY_WITHIN: Duration = Duration::from_secs(90);
/// `docker stop`'s wait before SIGKILL, as docker-compose.yml sets it.
const STOP_GRACE: Duration = Duration::from_secs(40);

// ---------------------------------------------------------------------------
// Images

/// Images A and B (`--target prebuilt`), built once per test process.
fn images(podman: &Podman) -> &'static (String, String) {
    static IMAGES: OnceLock<(String, String)> = OnceLock::new();
    IMAGES.get_or_init(|| {
        (
            testkit::images::build(
                podman,
                "localhost/waiaas-test:a",
                Binaries::Prebuilt(&testkit::builds::a_bin_dir()),
                testkit::builds::a_version(),
            ),
            testkit::images::build(
                podman,
                "localhost/waiaas-test:b",
                Binaries::Prebuilt(testkit::builds::b_bin_dir()),
                B_VERSION,
            ),
        )
    })
}

// ---------------------------------------------------------------------------
// Containers

struct Site {
    podman: Podman,
    cleanup: Cleanup,
    volume: String,
    /// The API published on the host's loopback (to the container's 3100),
    /// and the volume's folder on the host.
    api: Api,
}

impl Site {
    /// A new named volume `volume`; the API published on loopback `port`.
    fn new(podman: Podman, volume: &str, port: u16) -> Self {
        let mut cleanup = podman.cleanup();
        let volume = volume.to_string();
        let _ = podman.run(&["volume", "rm", "--force", &volume]);
        podman.ok(&["volume", "create", &volume]);
        cleanup.volumes.push(volume.clone());
        let mountpoint = PathBuf::from(podman.ok(&[
            "volume",
            "inspect",
            "--format",
            "{{.Mountpoint}}",
            &volume,
        ]));
        Self {
            podman,
            cleanup,
            volume,
            api: Api {
                port,
                volume: mountpoint,
            },
        }
    }

    /// `docker run -d` as docker-compose.yml does it; the container's name.
    fn start(&mut self, image: &str, name: &str) -> String {
        let container = format!("{}-{name}", self.volume);
        let _ = self.podman.run(&["rm", "--force", &container]);
        self.cleanup.containers.push(container.clone());
        let publish = format!("127.0.0.1:{}:3100", self.api.port);
        let mount = format!("{}:/data", self.volume);
        self.podman.ok(&[
            "run",
            "--detach",
            "--name",
            &container,
            "--init",
            "--publish",
            &publish,
            "--volume",
            &mount,
            // No registry in a test.
            "--env",
            "WAIAAS_DAEMON_UPDATE_CHECK=false",
            image,
        ]);
        container
    }

    fn healthcheck(&self, container: &str) -> bool {
        self.podman
            .run(&["healthcheck", "run", container])
            .status
            .success()
    }

    /// Waits for the image's health check to pass; how long it took.
    fn wait_healthy(&self, container: &str) -> Duration {
        let started = Instant::now();
        while !self.healthcheck(container) {
            let running = self
                .podman
                .ok(&["inspect", "--format", "{{.State.Running}}", container]);
            assert!(
                running == "true" && started.elapsed() < HEALTHY_WITHIN,
                "{container} not healthy within {HEALTHY_WITHIN:?} (running: {running}):\n{}",
                self.podman.logs(container)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        started.elapsed()
    }

    /// `docker stop -t 40` then `docker rm`: the exit code and how long the stop took.
    fn stop(&self, container: &str) -> (i32, Duration) {
        let started = Instant::now();
        self.podman.ok(&[
            "stop",
            "--time",
            &STOP_GRACE.as_secs().to_string(),
            container,
        ]);
        let took = started.elapsed();
        let code = self
            .podman
            .ok(&["inspect", "--format", "{{.State.ExitCode}}", container]);
        let logs = self.podman.logs(container);
        self.podman.ok(&["rm", container]);
        let code = code.parse().unwrap();
        assert!(
            code == 0 && took < STOP_GRACE,
            "{container} stopped with {code} after {took:?}:\n{logs}"
        );
        (code, took)
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
    let Some(podman) = podman() else { return };
    let (image_a, image_b) = images(&podman);
    let volume = format!("waiaas-test-s17-{}", std::process::id());
    let mut site = Site::new(podman, &volume, free_port());

    // Release A's image on a new volume; data written through the real API.
    let started = Instant::now();
    let a = site.start(image_a, "a");
    let took = site.wait_healthy(&a);
    eprintln!(
        "A: `podman run` to healthy in {:?} ({took:?} after it returned)",
        started.elapsed()
    );
    let health = site.api.health();
    assert_eq!(
        (health.version.as_str(), health.schema_version),
        (testkit::builds::a_version(), A_SCHEMA),
        "release A serves from the volume"
    );
    for name in ["treasury", "payroll", "cold-storage"] {
        site.api.create_wallet(name);
    }
    let written = site.api.wallets();
    assert_eq!(written.len(), 3);
    site.stop(&a);
    assert!(
        !site.api.volume.join("current").exists() && !site.api.volume.join("versions").exists(),
        "in a container the image holds the programs, the volume only data"
    );

    // `docker compose pull && docker compose up -d`: B on the same volume.
    let started = Instant::now();
    let b = site.start(image_b, "b");
    let took = site.wait_healthy(&b);
    eprintln!(
        "B: `podman run` to healthy (migration included) in {:?} ({took:?} after it returned)",
        started.elapsed()
    );
    let health = site.api.health();
    assert_eq!(
        (health.version.as_str(), health.schema_version),
        (B_VERSION, B_SCHEMA),
        "release B migrated the volume's database at start:\n{}",
        site.podman.logs(&b)
    );

    // The daemon's own backup, taken before it migrated: A's database.
    let backups = pre_migrate_backups(&site.api.volume);
    assert_eq!(backups.len(), 1, "one pre-migrate backup: {backups:?}");
    let manifest: Manifest =
        serde_json::from_slice(&fs::read(backups[0].join(BACKUP_MANIFEST)).unwrap()).unwrap();
    assert_eq!(manifest.kind, Kind::PreMigrate);
    assert_eq!(manifest.schema_version, A_SCHEMA);
    assert_eq!(manifest.to_version, B_VERSION);
    assert_eq!(
        database(&backups[0].join("waiaas.db")),
        (A_SCHEMA, written.clone()),
        "the backup holds A's database as it was"
    );
    assert_eq!(
        site.api.wallets(),
        written,
        "the wallets A wrote, through B's API"
    );
    assert_eq!(
        database(&site.api.volume.join("data/waiaas.db")),
        (B_SCHEMA, written.clone())
    );

    // Every process of the container runs as the image's user.
    let users = site.podman.ok(&["top", &b, "huser", "args"]);
    let users: Vec<&str> = users.lines().skip(1).collect();
    assert!(
        users.len() >= 3 && users.iter().all(|l| l.starts_with("10001 ")),
        "init, launcher and daemon run as uid 10001: {users:?}"
    );

    // `docker exec … waiaas-launcher upgrade`: the image is the unit of upgrade.
    let refused = site.podman.exec(&b, &["waiaas-launcher", "upgrade"]);
    assert_eq!(
        refused.status.code(),
        Some(2),
        "upgrade in a container: {refused:?}"
    );
    let said = refused.stderr.to_lowercase();
    assert!(
        said.contains("pull") && said.contains("image"),
        "it says to pull the new image: {}",
        refused.stderr
    );
    let (_, took) = site.stop(&b);
    eprintln!("B: graceful stop in {took:?}");

    // Back to A on the migrated volume: refused with the permanent code (20);
    // the launcher stays up, the container is unhealthy, the logs say why.
    let back = site.start(image_a, "back");
    let logs = site
        .podman
        .wait_for_log(&back, "not restarting", HEALTHY_WITHIN);
    assert!(
        logs.contains("exited with 20") && logs.contains("newer than this daemon"),
        "A refuses B's schema with exit 20 and says why:\n{logs}"
    );
    // What to do, in the image's terms (`upgrade` refuses in a container).
    assert!(
        logs.contains("newer release's image") && !logs.contains("run `waiaas-launcher upgrade`"),
        "{logs}"
    );
    assert!(!site.healthcheck(&back), "the container reports unhealthy");
    site.stop(&back);

    // The README's way back: restore the pre-migrate backup with A's image.
    let backup = format!(
        "/data/backups/{}",
        backups[0].file_name().unwrap().to_str().unwrap()
    );
    let mount = format!("{}:/data", site.volume);
    let listed = site.podman.ok(&[
        "run",
        "--rm",
        "--volume",
        &mount,
        "--entrypoint",
        "sh",
        image_a,
        "-c",
        "grep -H created_at /data/backups/*/backup.json",
    ]);
    assert!(
        listed.contains(&backup),
        "the README's listing shows the backup: {listed}"
    );
    site.podman.ok(&[
        "run", "--rm", "--volume", &mount, "--entrypoint", "sh", image_a, "-c",
        &format!(
            "b={backup}; rm -f /data/data/waiaas.db-wal /data/data/waiaas.db-shm && cp \"$b/waiaas.db\" /data/data/waiaas.db"
        ),
    ]);
    let restored = site.start(image_a, "restored");
    site.wait_healthy(&restored);
    assert_eq!(
        site.api.health().schema_version,
        A_SCHEMA,
        "A serves the restored database"
    );
    assert_eq!(site.api.wallets(), written, "with the wallets it had");
    site.stop(&restored);
}

/// docker-compose.yml, unmodified, run by podman-compose (installed by
/// `.ci/container-images`): up, healthy, published on the host's loopback
/// only (its fixed port 3100), and the data survives `down` and `up`.
#[test]
fn the_compose_file_runs_and_keeps_data_across_down_and_up() {
    let Some(podman) = podman() else { return };
    let (image_a, _) = images(&podman);
    let (image, tag) = image_a.rsplit_once(':').unwrap();
    let project = format!("waiaas-test-compose-{}", std::process::id());
    let mut site = Site::new(podman, &format!("{project}_waiaas-data"), 3100);
    let container = format!("{project}_waiaas_1");
    site.cleanup.containers.push(container.clone());
    let compose = |args: &[&str]| {
        let mut command = site.podman.compose();
        command
            .args(["--project-name", &project, "--file"])
            .arg(testkit::builds::repo_root().join("docker-compose.yml"))
            .args(args)
            .env("WAIAAS_IMAGE", image)
            .env("WAIAAS_TAG", tag);
        let outcome = testkit::run(&mut command);
        assert!(
            outcome.status.success(),
            "podman-compose {args:?}: {outcome:?}"
        );
    };

    let started = Instant::now();
    compose(&["up", "--detach"]);
    let took = site.wait_healthy(&container);
    eprintln!(
        "compose up to healthy: {:?} ({took:?} after it returned)",
        started.elapsed()
    );
    assert_eq!(
        site.podman.ok(&["port", &container]),
        "3100/tcp -> 127.0.0.1:3100",
        "published on the host's loopback only"
    );
    assert_eq!(site.api.health().version, testkit::builds::a_version());
    site.api.create_wallet("treasury");
    let written = site.api.wallets();

    compose(&["down"]);
    compose(&["up", "--detach"]);
    site.wait_healthy(&container);
    assert_eq!(site.api.wallets(), written, "the volume outlived `down`");
    compose(&["down"]);
}

fn pre_migrate_backups(volume: &Path) -> Vec<PathBuf> {
    fs::read_dir(volume.join("backups"))
        .expect("backups/ in the volume")
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("pre-migrate-"))
        })
        .collect()
}

/// The release workflow builds the image the way this tier does: the
/// Dockerfile's `prebuilt` target, from a context holding only
/// `prebuilt/` — there the package job's Linux binaries, the ones the npm
/// packages carry — never compiled again. (Needs no podman.)
#[test]
fn the_release_workflow_builds_the_image_from_the_package_jobs_binaries() {
    let workflow =
        fs::read_to_string(testkit::builds::repo_root().join(".github/workflows/release.yml"))
            .unwrap();
    // The job: from its header to the next job's (a key indented by two).
    let is_job = |line: &str| {
        line.len() > 3 && line.starts_with("  ") && !line.starts_with("   ") && line.ends_with(':')
    };
    let job: String = workflow
        .lines()
        .skip_while(|l| *l != "  docker:")
        .enumerate()
        .take_while(|(n, l)| *n == 0 || !is_job(l))
        .map(|(_, l)| format!("{l}\n"))
        .collect();
    assert!(!job.is_empty(), "a docker job in release.yml");
    for needle in [
        "needs: [meta, package]",
        "name: bin-${{ matrix.target }}",
        "arch: amd64\n            target: linux-x64",
        "arch: arm64\n            target: linux-arm64",
        "context: ${{ runner.temp }}/context",
        "target: prebuilt",
        "\"$context/prebuilt\"",
        "$context/prebuilt/ca-certificates.crt",
    ] {
        assert!(
            job.contains(needle),
            "the docker job lacks `{needle}`:\n{job}"
        );
    }
    assert!(
        !job.contains("cargo "),
        "the docker job compiles nothing:\n{job}"
    );
    // What the Dockerfile's prebuilt stage copies is what both contexts hold.
    let dockerfile = fs::read_to_string(testkit::builds::repo_root().join("Dockerfile")).unwrap();
    for copy in [
        "COPY prebuilt/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt",
        "COPY prebuilt/waiaas-launcher prebuilt/waiaas-daemon /usr/local/bin/",
    ] {
        assert!(
            dockerfile.contains(copy),
            "the Dockerfile's prebuilt stage: {copy}"
        );
    }
    let deploy = &workflow[workflow.find("\n  deploy:\n").expect("a deploy job")..];
    assert!(
        deploy.contains("The images carry the signed packages' binaries"),
        "deploy checks the images against the signed packages before pushing"
    );
}
