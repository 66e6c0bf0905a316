//! Support for the workspace's tests and benches (a dev-dependency only):
//! real installations in temp dirs, made by the real `waiaas-launcher init`,
//! and real processes run with a hermetic environment.
//!
//! - [`Site`] — an installation under test, with the one set of HTTP helpers
//!   (token, `/health`, wallets) every test file and bench uses.
//! - [`Install::new`] — a data dir in a temp folder, initialised and
//!   configured so that nothing reaches a registry or a busy port.
//! - [`Site::launcher`] — a `waiaas-launcher … --data-dir <dir>` command.
//! - [`Install::set_kv`] / [`Install::kv`] — the daemon's key-value store,
//!   read and written directly (the database is created on first use by the
//!   installed daemon's `migrate`).
//! - [`run`] — runs a command to completion and returns its [`Outcome`].
//! - [`hermetic`], [`daemon_binary`], [`free_port`] — the building blocks.
//! - [`load`] and [`bench`](mod@bench) — the benches' HTTP load, figures and facts.
//! - [`builds`] (the second build, B, and signed releases), [`registry`]
//!   (the test registry), [`supervisor`], [`fleetlock`], [`podman`] and
//!   [`images`], [`hostile`] archives; [`daemon`]: a daemon with no launcher.

// `new` here makes real things (an initialised installation, a CA, a
// registry on a port): `Default` would hide that behind `..Default::default()`.
#![allow(clippy::new_without_default)]

use std::fs;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::time::Duration;

use rusqlite::Connection;
use waiaas_shared::kv;
use waiaas_shared::layout::DataDir;

pub mod bench;
pub mod builds;
pub mod daemon;
pub mod fleetlock;
pub mod hostile;
pub mod images;
pub mod load;
pub mod podman;
pub mod registry;
pub mod site;
pub mod supervisor;

pub use site::Site;

/// Where Cargo put the workspace's binaries for the test or bench running:
/// `target/<profile>/`, above the `deps/` that holds the test itself. (Only
/// a test of the binary's own package is told the path by `env!`; this
/// library is told none, so they are found by location.)
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("the running test's own path");
    let dir = exe.parent().expect("the running test has a folder");
    if dir.ends_with("deps") {
        dir.parent().expect("deps/ has a parent").to_path_buf()
    } else {
        dir.to_path_buf()
    }
}

/// `name` in [`bin_dir`], which must exist.
fn built(name: &str) -> PathBuf {
    let path = bin_dir().join(name);
    assert!(
        path.is_file(),
        "{} is missing: build the workspace first: cargo build --workspace",
        path.display()
    );
    path
}

/// The `waiaas-launcher` under test.
pub fn launcher_binary() -> PathBuf {
    built("waiaas-launcher")
}

/// The `waiaas-daemon` built beside the launcher under test.
pub fn daemon_binary() -> PathBuf {
    built("waiaas-daemon")
}

/// The real `init` of `dir`, run by the launcher in `bin_dir` (a release's
/// files: it installs them, with their signed release.json if there is one).
pub fn init_from(bin_dir: &Path, home: &Path, dir: &DataDir) {
    let init = run(
        hermetic(Command::new(bin_dir.join("waiaas-launcher")), home)
            .arg("init")
            .arg("--data-dir")
            .arg(dir.root()),
    );
    assert!(init.status.success(), "init failed: {init:?}");
}

/// `command` without inherited settings that could change what it does: no
/// `WAIAAS_*`, no `npm_config_*`, no `CI` or `NO_UPDATE_NOTIFIER`, and `HOME`
/// set to `home` so no real `~/.waiaas` or `.npmrc` is ever read.
pub fn hermetic(mut command: Command, home: &Path) -> Command {
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy();
        if name.starts_with("WAIAAS_") || name.to_ascii_lowercase().starts_with("npm_config_") {
            command.env_remove(name.as_ref());
        }
    }
    command
        .env_remove("CI")
        .env_remove("NO_UPDATE_NOTIFIER")
        .env("HOME", home)
        // A safety net: a daemon a test forgot to configure reaches a closed
        // loopback port, never the registry npm is configured for.
        .env("npm_config_registry", "http://127.0.0.1:9/");
    command
}

/// A loopback port that was free a moment ago.
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
    listener.local_addr().expect("local address").port()
}

/// What a finished process left.
#[derive(Debug)]
pub struct Outcome {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

/// `child`'s exit status, waiting `timeout` at most (`None`: still running).
pub fn wait_exit(
    child: &mut std::process::Child,
    timeout: std::time::Duration,
) -> Option<ExitStatus> {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        if std::time::Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

/// Runs `command` to completion, capturing stdout and stderr (so stderr is
/// never a terminal).
pub fn run(command: &mut Command) -> Outcome {
    let output = command
        .output()
        .unwrap_or_else(|e| panic!("cannot run {command:?}: {e}"));
    Outcome {
        status: output.status,
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// An initialised installation in a temp folder, removed on drop. Its config
/// turns the version check off and listens on a free loopback port. It
/// derefs to its [`Site`] (`dir`, `port`, `launcher`, the HTTP helpers).
pub struct Install {
    tmp: tempfile::TempDir,
    site: Site,
}

impl std::ops::Deref for Install {
    type Target = Site;

    fn deref(&self) -> &Site {
        &self.site
    }
}

impl Install {
    pub fn new() -> Self {
        daemon_binary();
        let tmp = tempfile::tempdir().expect("temp dir");
        let dir = DataDir::new(tmp.path().join("waiaas"));
        let init = run(hermetic(Command::new(launcher_binary()), tmp.path())
            .arg("init")
            .arg("--data-dir")
            .arg(dir.root()));
        assert!(init.status.success(), "init failed: {init:?}");
        let port = free_port();
        let site = Site::new(tmp.path().to_path_buf(), dir, port);
        let install = Self { tmp, site };
        install.write_config(&format!(
            "[daemon]\nport = {port}\nhostname = \"127.0.0.1\"\nupdate_check = false\n"
        ));
        install
    }

    /// [`Install::new`] whose daemon is given `secs` to shut down.
    pub fn with_shutdown_timeout(secs: u64) -> Self {
        let install = Self::new();
        install.write_config(&format!(
            "[daemon]\nport = {}\nhostname = \"127.0.0.1\"\nupdate_check = false\nshutdown_timeout = {secs}\n",
            install.port
        ));
        install
    }

    /// The temp folder holding the data dir; also `HOME` for every command.
    pub fn home(&self) -> &Path {
        self.tmp.path()
    }

    pub fn data_dir(&self) -> &Path {
        self.dir.root()
    }

    pub fn write_config(&self, text: &str) {
        fs::write(self.dir.config(), text).expect("write config.toml");
    }

    /// The installed daemon, `current/waiaas-daemon`.
    pub fn installed_daemon(&self) -> PathBuf {
        self.dir.current().join("waiaas-daemon")
    }

    /// Creates the database, as the installed daemon does, unless it exists.
    pub fn ensure_database(&self) {
        if self.dir.database().exists() {
            return;
        }
        let mut command = hermetic(Command::new(self.installed_daemon()), self.home());
        let migrate = run(command
            .arg("migrate")
            .arg("--data-dir")
            .arg(self.data_dir()));
        assert!(
            migrate.status.success(),
            "waiaas-daemon migrate failed: {migrate:?}"
        );
    }

    fn open_database(&self) -> Connection {
        self.ensure_database();
        let conn = Connection::open(self.dir.database()).expect("open the database");
        conn.busy_timeout(Duration::from_secs(5))
            .expect("busy_timeout");
        conn
    }

    /// Stores `value` under `key` in the key-value store.
    pub fn set_kv(&self, key: &str, value: &str) {
        kv::set(&self.open_database(), key, value).expect("write the key-value store");
    }

    /// The value stored under `key`, if any.
    pub fn kv(&self, key: &str) -> Option<String> {
        kv::get(&self.open_database(), key).expect("read the key-value store")
    }
}

/// `waiaas-daemon serve` of `install`, started directly: a daemon no launcher
/// supervises, as one is left running when its launcher is killed with
/// kill -9 outside systemd. Killed on drop if it is still running.
pub struct Unsupervised {
    pub child: std::process::Child,
}

impl Unsupervised {
    /// Starts it (stderr into `<home>/unsupervised.stderr`) and waits up to
    /// 30 s for `/health` to answer.
    pub fn start(install: &Install) -> Self {
        let log = fs::File::create(install.home().join("unsupervised.stderr")).unwrap();
        let child = hermetic(Command::new(install.installed_daemon()), install.home())
            .arg("serve")
            .arg("--data-dir")
            .arg(install.data_dir())
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn waiaas-daemon serve");
        let daemon = Self { child };
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while http(install.port, "GET", "/health", None, None).is_none_or(|(s, _)| s != 200) {
            assert!(
                std::time::Instant::now() < deadline,
                "the daemon never became healthy"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        daemon
    }
}

impl Drop for Unsupervised {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Creates a wallet named `name` through the API of the daemon on `port`;
/// returns its id.
pub fn create_wallet(port: u16, token: &str, name: &str) -> String {
    let body = format!(r#"{{"name":"{name}","chain":"solana","network":"devnet"}}"#);
    let (status, answer) =
        http(port, "POST", "/v1/wallets", Some(token), Some(&body)).expect("the API answers");
    assert_eq!(status, 201, "POST /v1/wallets: {answer}");
    let wallet: serde_json::Value = serde_json::from_str(&answer).unwrap();
    wallet["id"].as_str().unwrap().to_string()
}

/// The wallets the API lists: id → name (asserting the 200).
pub fn wallets(port: u16, token: &str) -> std::collections::BTreeMap<String, String> {
    let (status, answer) =
        http(port, "GET", "/v1/wallets", Some(token), None).expect("the API answers");
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

/// One HTTP/1.1 request on loopback; `(status, body)`, or `None` if nothing answered.
pub fn http(
    port: u16,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&str>,
) -> Option<(u16, String)> {
    http_answer(port, method, path, token, body).map(|a| (a.status, a.body))
}

/// An answer of [`http_answer`].
pub struct Answer {
    pub status: u16,
    pub body: String,
    /// The daemon version that answered (`x-waiaas-version`), if it said.
    pub version: Option<String>,
}

/// [`http`], with the version that answered.
pub fn http_answer(
    port: u16,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&str>,
) -> Option<Answer> {
    let mut stream =
        TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_secs(2)).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .ok()?;
    let mut request =
        format!("{method} {path} HTTP/1.1\r\nhost: 127.0.0.1\r\nconnection: close\r\n");
    if let Some(token) = token {
        request.push_str(&format!("authorization: Bearer {token}\r\n"));
    }
    let body = body.unwrap_or_default();
    if !body.is_empty() {
        request.push_str(&format!(
            "content-type: application/json\r\ncontent-length: {}\r\n",
            body.len()
        ));
    }
    request.push_str("\r\n");
    request.push_str(body);
    stream.write_all(request.as_bytes()).ok()?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer).ok()?;
    let status = answer.split_whitespace().nth(1)?.parse().ok()?;
    let (head, body) = answer.split_once("\r\n\r\n")?;
    let version = head.lines().find_map(|line| {
        let (name, value) = line.split_once(':')?;
        name.eq_ignore_ascii_case(waiaas_shared::health::VERSION_HEADER)
            .then(|| value.trim().to_string())
    });
    Some(Answer {
        status,
        body: body.to_string(),
        version,
    })
}
