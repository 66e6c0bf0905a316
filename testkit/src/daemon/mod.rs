//! A daemon under test with no launcher: a data dir in a temp folder and
//! real `waiaas-daemon` processes, for the daemon's own tests and bench.

pub mod seed;

use std::fs;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use waiaas_shared::health::HealthResponse;
use waiaas_shared::layout::DataDir;
use waiaas_shared::listen_fds;

use crate::{daemon_binary, hermetic};

/// A data dir in a temp folder. Its default config turns the version check
/// off, so no test can reach a registry it did not start.
pub struct Install {
    tmp: tempfile::TempDir,
    pub dir: DataDir,
}

impl Install {
    pub fn new() -> Self {
        Self::mounted(|_| ()).0
    }

    /// [`Install::new`] with `mount` called on the empty data dir first (to
    /// mount a filesystem there); returns what it returned too.
    pub fn mounted<T>(mount: impl FnOnce(&Path) -> T) -> (Self, T) {
        let tmp = tempfile::tempdir().expect("temp dir");
        let dir = DataDir::new(tmp.path().join("waiaas"));
        fs::create_dir_all(dir.root()).unwrap();
        let mounted = mount(dir.root());
        let install = Self { tmp, dir };
        install.write_config("[daemon]\nupdate_check = false\n");
        (install, mounted)
    }

    /// Writes config.toml, fsynced: the data dir may be on a filesystem that
    /// loses power (tests/powercut.rs).
    pub fn write_config(&self, text: &str) {
        fs::write(self.dir.config(), text).unwrap();
        fs::File::open(self.dir.config())
            .and_then(|f| f.sync_all())
            .unwrap();
    }

    pub fn data_dir(&self) -> &Path {
        self.dir.root()
    }

    /// A file outside the data dir for a daemon's stderr.
    fn log_path(&self) -> PathBuf {
        self.tmp.path().join("daemon.stderr")
    }

    pub fn token(&self) -> String {
        crate::site::token(&self.dir)
    }

    /// Runs `waiaas-daemon <args> --data-dir <dir>` to completion.
    pub fn daemon_command(&self, args: &[&str]) -> std::process::Output {
        hermetic(Command::new(daemon_binary()), self.tmp.path())
            .args(args)
            .arg("--data-dir")
            .arg(self.data_dir())
            .output()
            .expect("run waiaas-daemon")
    }
}

/// A running `waiaas-daemon serve`, listening on a loopback port handed over
/// through `LISTEN_FDS` exactly as the launcher does it.
pub struct Daemon {
    child: Child,
    _listener: TcpListener,
    log: PathBuf,
    pub addr: SocketAddr,
    pub base_url: String,
}

impl Daemon {
    pub fn start(install: &Install) -> Self {
        Self::start_with_env(install, &[])
    }

    pub fn start_with_env(install: &Install, env: &[(&str, &str)]) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let log = install.log_path();
        let stderr = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        let mut command = hermetic(Command::new(daemon_binary()), install.tmp.path());
        command
            .arg("serve")
            .arg("--data-dir")
            .arg(install.data_dir())
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr);
        listen_fds::pass_listener(&mut command, &listener);
        let child = command.spawn().expect("spawn waiaas-daemon");
        Self {
            child,
            _listener: listener,
            log,
            base_url: format!("http://{addr}"),
            addr,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything the daemon wrote to stderr so far.
    pub fn stderr(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub async fn health(&self) -> Result<HealthResponse, String> {
        let response = client()
            .get(format!("{}/health", self.base_url))
            .timeout(Duration::from_secs(5))
            .send()
            .await
            .map_err(|e| e.to_string())?;
        if !response.status().is_success() {
            return Err(format!("HTTP {}", response.status()));
        }
        response.json().await.map_err(|e| e.to_string())
    }

    /// Polls `/health` until it answers; panics with the daemon's stderr if
    /// the daemon exits or `timeout` passes.
    pub async fn wait_healthy(&mut self, timeout: Duration) -> HealthResponse {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(health) = self.health().await {
                return health;
            }
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!(
                    "daemon exited with {status} before it was healthy:\n{}",
                    self.stderr()
                );
            }
            assert!(
                Instant::now() < deadline,
                "daemon not healthy in {timeout:?}:\n{}",
                self.stderr()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Waits up to `timeout` for the process to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        crate::wait_exit(&mut self.child, timeout)
    }

    pub fn signal(&self, signal: libc::c_int) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as libc::pid_t, signal) };
    }

    /// SIGTERM, then waits (up to 30 s) for the exit status.
    pub fn stop(mut self) -> ExitStatus {
        self.signal(libc::SIGTERM);
        self.wait_exit(Duration::from_secs(30))
            .unwrap_or_else(|| panic!("daemon ignored SIGTERM:\n{}", self.stderr()))
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A plain HTTP client. Built through the shared builder, which installs the
/// TLS provider: reqwest is built without one of its own (see Cargo.toml).
pub fn client() -> reqwest::Client {
    waiaas_shared::registry::client_builder().build().unwrap()
}

/// An authenticated client for `/v1`.
pub fn api(token: &str) -> reqwest::Client {
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(
        reqwest::header::AUTHORIZATION,
        format!("Bearer {token}").parse().unwrap(),
    );
    waiaas_shared::registry::client_builder()
        .default_headers(headers)
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}
