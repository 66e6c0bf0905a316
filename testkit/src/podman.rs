//! The container tier's podman (launcher/tests/container.rs, systemd.rs):
//! root's podman with the `runc` runtime and the settings
//! `.ci/container-images` writes, and the base images it imports.
//!
//! [`podman`] is `None` (the test is skipped, saying why) when a prerequisite
//! is missing — except in CI (`CI` set), where that fails the test unless the
//! job turns the tier off by name (`WAIAAS_CONTAINER_TIER=off`).

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use waiaas_shared::health::HealthResponse;
use waiaas_shared::layout::DataDir;

use super::{Outcome, http, run};

/// `.ci/container-images`' Debian bookworm minbase; the Dockerfile's
/// `debian:bookworm-slim` is tagged to it.
pub const BASE_IMAGE: &str = "localhost/waiaas-ci/bookworm:latest";
/// The same rootfs with systemd 252 as `/sbin/init`.
pub const SYSTEMD_IMAGE: &str = "localhost/waiaas-ci/bookworm-systemd:latest";

/// The Dockerfile's build stage image (`FROM rust:X.Y-bookworm`), which
/// `.ci/container-images` makes locally from this machine's toolchain.
fn rust_image() -> String {
    let dockerfile = Path::new(env!("CARGO_MANIFEST_DIR")).join("../Dockerfile");
    let text = fs::read_to_string(&dockerfile).expect("the repository's Dockerfile");
    let image = text
        .lines()
        .find_map(|l| l.strip_prefix("FROM rust:"))
        .and_then(|rest| rest.split_whitespace().next())
        .expect("the Dockerfile's build stage starts FROM rust:…");
    format!("localhost/rust:{image}")
}

#[derive(Clone)]
pub struct Podman {
    /// `.ci/container-images`' cache: containers.conf and podman-compose.
    cache: PathBuf,
}

/// The tier's podman, or `None` with a message saying what is missing.
pub fn podman() -> Option<Podman> {
    // Where .ci/container-images puts it, by the same rules.
    let env = |name| std::env::var_os(name).map(PathBuf::from);
    let cache = env("WAIAAS_CI_CACHE").unwrap_or_else(|| {
        env("XDG_CACHE_HOME")
            .unwrap_or_else(|| env("HOME").unwrap_or_else(|| "/tmp".into()).join(".cache"))
            .join("waiaas-ci")
    });
    let podman = Podman { cache };
    let missing = if !nix::unistd::geteuid().is_root() {
        Some("root (the tier runs root's podman and systemd in containers)".to_string())
    } else if let Some(file) = [podman.conf(), podman.compose_program()]
        .into_iter()
        .find(|f| !f.is_file())
    {
        Some(file.display().to_string())
    } else {
        [
            BASE_IMAGE.to_string(),
            SYSTEMD_IMAGE.to_string(),
            rust_image(),
        ]
        .into_iter()
        .find(|image| {
            !podman
                .command(&["image", "exists", image.as_str()])
                .status()
                .is_ok_and(|s| s.success())
        })
        .map(|image| format!("the image {image}"))
    };
    let Some(missing) = missing else {
        return Some(podman);
    };
    skip(&format!(
        "the container tier needs {missing}: run `bash .ci/container-images` as root (it installs podman, runc and debootstrap and builds the base images)"
    ));
    None
}

/// Skips a test of the tier, saying why — a failure in CI (`CI` set) unless
/// the job turns the tier off by name (`WAIAAS_CONTAINER_TIER=off`).
pub fn skip(message: &str) {
    let turned_off = std::env::var_os("WAIAAS_CONTAINER_TIER").is_some_and(|v| v == "off");
    assert!(std::env::var_os("CI").is_none() || turned_off, "{message}");
    eprintln!("SKIPPED: {message}");
}

impl Podman {
    fn conf(&self) -> PathBuf {
        self.cache.join("containers.conf")
    }

    fn compose_program(&self) -> PathBuf {
        self.cache.join("venv/bin/podman-compose")
    }

    pub fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new("podman");
        command
            .env("CONTAINERS_CONF", self.conf())
            .args(["--runtime", "runc"])
            .args(args);
        command
    }

    /// `podman-compose` with this podman's settings (the runtime is set in
    /// containers.conf).
    pub fn compose(&self) -> Command {
        let mut command = Command::new(self.compose_program());
        command.env("CONTAINERS_CONF", self.conf());
        command
    }

    /// `podman args…` to completion.
    pub fn run(&self, args: &[&str]) -> Outcome {
        run(&mut self.command(args))
    }

    /// `podman args…`, which must succeed; its stdout, trimmed.
    pub fn ok(&self, args: &[&str]) -> String {
        let outcome = self.run(args);
        assert!(outcome.status.success(), "podman {args:?}: {outcome:?}");
        outcome.stdout.trim().to_string()
    }

    /// `podman exec container argv…`.
    pub fn exec(&self, container: &str, argv: &[&str]) -> Outcome {
        let mut args = vec!["exec", container];
        args.extend_from_slice(argv);
        self.run(&args)
    }

    /// `podman logs container`, both streams.
    pub fn logs(&self, container: &str) -> String {
        let outcome = self.run(&["logs", container]);
        format!("{}{}", outcome.stdout, outcome.stderr)
    }

    /// Waits until `podman logs container` contains `needle`; the logs.
    pub fn wait_for_log(&self, container: &str, needle: &str, within: Duration) -> String {
        let mut logs = String::new();
        self.wait(&format!("`{needle}` in {container}'s logs"), within, || {
            logs = self.logs(container);
            logs.contains(needle)
        });
        logs
    }

    /// Polls `check` every 100 ms until it holds; how long that took, or a
    /// panic after `within` naming `what`.
    pub fn wait(&self, what: &str, within: Duration, mut check: impl FnMut() -> bool) -> Duration {
        let started = Instant::now();
        while !check() {
            assert!(started.elapsed() < within, "{what}: not within {within:?}");
            std::thread::sleep(Duration::from_millis(100));
        }
        started.elapsed()
    }
}

/// Removes the named pods, containers and volumes on drop (a failed test included).
pub struct Cleanup {
    podman: Podman,
    pub pods: Vec<String>,
    pub containers: Vec<String>,
    pub volumes: Vec<String>,
}

impl Podman {
    pub fn cleanup(&self) -> Cleanup {
        Cleanup {
            podman: self.clone(),
            pods: Vec::new(),
            containers: Vec::new(),
            volumes: Vec::new(),
        }
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        for pod in &self.pods {
            let _ = self
                .podman
                .run(&["pod", "rm", "--force", "--time", "0", pod]);
        }
        for container in &self.containers {
            let _ = self
                .podman
                .run(&["rm", "--force", "--time", "0", container]);
        }
        for volume in &self.volumes {
            let _ = self.podman.run(&["volume", "rm", "--force", volume]);
        }
    }
}

/// The API of a daemon in a container: published on the host's loopback
/// `port`, its data dir on a volume whose folder on the host is `volume`.
pub struct Api {
    pub port: u16,
    pub volume: PathBuf,
}

impl Api {
    /// `/health`'s answer, if it is a 200.
    pub fn ready(&self) -> Option<HealthResponse> {
        let (status, body) = http(self.port, "GET", "/health", None, None)?;
        (status == 200).then(|| serde_json::from_str(&body).expect("a HealthResponse"))
    }

    pub fn health(&self) -> HealthResponse {
        crate::site::expect_health(self.port)
    }

    /// The master token the daemon wrote on the volume (its data dir).
    pub fn token(&self) -> String {
        crate::site::token(&DataDir::new(&self.volume))
    }

    /// A wallet through the API (asserting the 201); its id.
    pub fn create_wallet(&self, name: &str) -> String {
        super::create_wallet(self.port, &self.token(), name)
    }

    /// id → name, as the API lists them.
    pub fn wallets(&self) -> BTreeMap<String, String> {
        super::wallets(self.port, &self.token())
    }
}
