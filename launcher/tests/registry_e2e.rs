//! The whole release path through a real npm registry server (SPEC §7, §10
//! scenarios 1, 8, 10, 12; the end-to-end tier of "a local registry").
//!
//! Verdaccio (pinned in `e2e/verdaccio/`, installed by `npm ci` there, which
//! `.ci/run` does) runs on a free 127.0.0.1 port with its storage in a temp
//! folder and **no uplinks**: it holds only what this test publishes. Two real
//! builds (A = this build, B = 1.9.0 with a 17th migration, see
//! `testkit/src/builds.rs`) are packed and signed by `packaging/` with a throwaway
//! key and published with the real `npm publish`; the real `npm install -g`
//! installs A's `@waiaas/cli` into a temp prefix, and everything after that
//! runs the launcher npm installed — through its Node shim, as a user would:
//! `init`, `run`, the version check against Verdaccio, data through the API,
//! `upgrade` (the platform package downloaded from Verdaccio) and
//! `upgrade --rollback`.
//!
//! npm runs with `HOME`, its user and global config files, its cache and its
//! global prefix all in the temp folder: nothing touches the real npm setup.
//! Every wait is bounded; every phase prints how long it took.

use std::collections::BTreeMap;
use std::fs;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::ops::Deref;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use testkit::builds::{B_SCHEMA, B_VERSION, Key, pack_release};
use testkit::{Outcome, free_port, hermetic};
use waiaas_packaging::{EntryKind, Packed};
use waiaas_shared::backup::{Kind, MANIFEST as BACKUP_MANIFEST, Manifest};
use waiaas_shared::health::HealthResponse;
use waiaas_shared::layout::DataDir;
use waiaas_shared::release::{CLI_PACKAGE, platform_package, this_target};

/// The npm user the test creates on its Verdaccio.
const NPM_USER: &str = "waiaas-e2e";

/// How long the version check may take to show in `/health` after readiness.
const VERSION_CHECK_WITHIN: Duration = Duration::from_secs(20);

fn verdaccio_dir() -> PathBuf {
    testkit::builds::repo_root().join("e2e").join("verdaccio")
}

// ---------------------------------------------------------------------------
// Timings.

/// Phase timings, printed as each phase ends and once more at the end.
struct Phases {
    started: Instant,
    last: Instant,
    done: Vec<(&'static str, Duration)>,
}

impl Phases {
    fn new() -> Self {
        let now = Instant::now();
        Self {
            started: now,
            last: now,
            done: Vec::new(),
        }
    }

    fn end(&mut self, name: &'static str) {
        let now = Instant::now();
        let took = now - self.last;
        self.last = now;
        eprintln!("[registry_e2e] {name}: {:.1} s", took.as_secs_f64());
        self.done.push((name, took));
    }

    fn summary(&self) {
        eprintln!("[registry_e2e] phase timings:");
        for (name, took) in &self.done {
            eprintln!(
                "[registry_e2e]   {:<44} {:>7.1} s",
                name,
                took.as_secs_f64()
            );
        }
        eprintln!(
            "[registry_e2e]   {:<44} {:>7.1} s",
            "total",
            self.started.elapsed().as_secs_f64()
        );
    }
}

// ---------------------------------------------------------------------------
// Processes.

/// A background process in its own process group, with stdout and stderr in
/// a log file; the whole group is killed on drop.
struct Background {
    name: &'static str,
    child: Child,
    log: PathBuf,
}

impl Background {
    fn spawn(name: &'static str, mut command: Command, log: &Path) -> Self {
        let file = fs::File::create(log).unwrap();
        let child = command
            .stdin(Stdio::null())
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name} ({command:?}): {e}"));
        Self {
            name,
            child,
            log: log.to_path_buf(),
        }
    }

    /// The last lines of the log.
    fn log_tail(&self) -> String {
        let text = fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let from = lines.len().saturating_sub(80);
        format!(
            "--- last lines of {} ({}) ---\n{}",
            self.name,
            self.log.display(),
            lines[from..].join("\n")
        )
    }

    /// Panics (with the log) if the process has exited.
    fn assert_alive(&mut self, while_doing: &str) {
        if let Some(status) = self.child.try_wait().unwrap() {
            panic!(
                "{} exited ({status}) while {while_doing}\n{}",
                self.name,
                self.log_tail()
            );
        }
    }

    fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        testkit::wait_exit(&mut self.child, timeout)
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        kill_group(self.child.id());
        let _ = self.child.wait();
    }
}

/// SIGKILL to the process group this test started with `pgid` as its leader
/// (a Node shim, the launcher under it and the daemon under that).
fn kill_group(pgid: u32) {
    // SAFETY: kill(2) on a process group this test created (process_group(0)).
    unsafe { libc::kill(-(pgid as libc::pid_t), libc::SIGKILL) };
}

/// Runs `command` to completion within `timeout` (else kills its process
/// group and panics), capturing stdout and stderr.
fn run_bounded(command: &mut Command, timeout: Duration, what: &str) -> Outcome {
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {what} ({command:?}): {e}"));
    let reader = |mut pipe: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            let _ = pipe.read_to_end(&mut bytes);
            String::from_utf8_lossy(&bytes).into_owned()
        })
    };
    let stdout = reader(Box::new(child.stdout.take().unwrap()));
    let stderr = reader(Box::new(child.stderr.take().unwrap()));
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() >= deadline {
            kill_group(child.id());
            let _ = child.wait();
            let (out, err) = (stdout.join().unwrap(), stderr.join().unwrap());
            panic!("{what} did not finish within {timeout:?}\nstdout:\n{out}\nstderr:\n{err}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Outcome {
        status,
        stdout: stdout.join().unwrap(),
        stderr: stderr.join().unwrap(),
    }
}

fn assert_ok(out: &Outcome, what: &str) {
    assert!(
        out.status.success(),
        "{what} failed ({}):\nstdout:\n{}\nstderr:\n{}",
        out.status,
        out.stdout,
        out.stderr
    );
}

// ---------------------------------------------------------------------------
// HTTP on loopback.

/// One HTTP/1.1 request to 127.0.0.1:`port`: `(status, body)`, or `None` if
/// nothing answered. Understands Content-Length, chunked and close-delimited
/// bodies.
fn http(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> Option<(u16, String)> {
    let mut stream =
        TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_secs(2)).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(15)))
        .ok()?;
    let mut request =
        format!("{method} {path} HTTP/1.1\r\nhost: 127.0.0.1:{port}\r\nconnection: close\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    if let Some(body) = body {
        request.push_str(&format!(
            "content-type: application/json\r\ncontent-length: {}\r\n",
            body.len()
        ));
    }
    request.push_str("\r\n");
    request.push_str(body.unwrap_or_default());
    stream.write_all(request.as_bytes()).ok()?;
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).ok()?;
    let split = answer.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = String::from_utf8_lossy(&answer[..split]).to_ascii_lowercase();
    let raw = &answer[split + 4..];
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    let body = if head.contains("transfer-encoding: chunked") {
        dechunk(raw)?
    } else {
        raw.to_vec()
    };
    Some((status, String::from_utf8_lossy(&body).into_owned()))
}

fn dechunk(mut raw: &[u8]) -> Option<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let line_end = raw.windows(2).position(|w| w == b"\r\n")?;
        let size_text = String::from_utf8_lossy(&raw[..line_end]);
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        raw = &raw[line_end + 2..];
        if size == 0 {
            return Some(body);
        }
        body.extend_from_slice(raw.get(..size)?);
        raw = raw.get(size + 2..)?;
    }
}

fn json(text: &str, what: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("{what} is not JSON ({e}): {text}"))
}

// ---------------------------------------------------------------------------
// Verdaccio.

struct Verdaccio {
    process: Background,
    port: u16,
    /// Its folder in the temp dir: config.yaml, storage/, htpasswd, the log.
    dir: PathBuf,
}

impl Verdaccio {
    /// Starts Verdaccio from `bin` on a free loopback port with the checked-in
    /// config template copied into `dir`; waits (bounded) until it answers.
    fn start(bin: &Path, dir: &Path, home: &Path) -> Self {
        let template = fs::read_to_string(verdaccio_dir().join("config.yaml"))
            .expect("e2e/verdaccio/config.yaml");
        assert_no_uplinks(&template);
        fs::create_dir_all(dir).unwrap();
        let config = dir.join("config.yaml");
        fs::write(&config, &template).unwrap();

        let port = free_port();
        let mut command = hermetic(Command::new(bin), home);
        command
            .arg("--config")
            .arg(&config)
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .current_dir(dir);
        let mut process = Background::spawn("verdaccio", command, &dir.join("verdaccio.log"));
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            if let Some((200, _)) = http(port, "GET", "/-/ping", &[], None) {
                break;
            }
            process.assert_alive("starting");
            assert!(
                Instant::now() < deadline,
                "Verdaccio did not answer on 127.0.0.1:{port} within 90 s\n{}",
                process.log_tail()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        Self {
            process,
            port,
            dir: dir.to_path_buf(),
        }
    }

    /// `http://127.0.0.1:PORT/`
    fn url(&self) -> String {
        format!("http://127.0.0.1:{}/", self.port)
    }

    /// Creates the npm user; returns its token.
    fn add_user(&self, name: &str, password: &str) -> String {
        let body = serde_json::json!({"name": name, "password": password}).to_string();
        let (status, answer) = http(
            self.port,
            "PUT",
            &format!("/-/user/org.couchdb.user:{name}"),
            &[],
            Some(&body),
        )
        .expect("Verdaccio answers");
        assert_eq!(status, 201, "creating the user: {answer}");
        json(&answer, "the user answer")["token"]
            .as_str()
            .unwrap_or_else(|| panic!("no token in {answer}"))
            .to_string()
    }

    /// A package's full packument.
    fn packument(&self, name: &str) -> serde_json::Value {
        let path = format!("/{}", name.replace('/', "%2f"));
        let (status, answer) = http(self.port, "GET", &path, &[], None).expect("Verdaccio answers");
        assert_eq!(status, 200, "GET {path}: {answer}");
        json(&answer, &path)
    }

    /// Verdaccio's request log (`log: {format: json, level: http}`): one
    /// object per line; other lines (Node's warnings) are skipped.
    fn log_entries(&self) -> Vec<serde_json::Value> {
        fs::read_to_string(&self.process.log)
            .unwrap_or_default()
            .lines()
            .filter_map(|line| serde_json::from_str(line).ok())
            .collect()
    }

    /// The `GET`s of a URL ending in `file` that Verdaccio answered with 200,
    /// and the User-Agents of the `GET`s it received for it.
    fn downloads_of(&self, file: &str) -> (usize, Vec<String>) {
        let mut ok = 0;
        let mut agents = Vec::new();
        for entry in self.log_entries() {
            if let Some(request) = entry.get("request")
                && request["method"] == "GET"
                && request["url"].as_str().is_some_and(|u| u.ends_with(file))
                && entry["status"] == 200
            {
                ok += 1;
            }
            if let Some(req) = entry.get("req")
                && req["method"] == "GET"
                && req["url"].as_str().is_some_and(|u| u.ends_with(file))
            {
                agents.push(req["headers"]["user-agent"].as_str().unwrap_or("").into());
            }
        }
        (ok, agents)
    }

    /// The file Verdaccio stored for a published tarball, found by name.
    fn stored_tarball(&self, file: &str) -> PathBuf {
        let mut stack = vec![self.dir.join("storage")];
        while let Some(dir) = stack.pop() {
            for entry in fs::read_dir(&dir).into_iter().flatten().flatten() {
                let path = entry.path();
                if path.is_dir() {
                    stack.push(path);
                } else if entry.file_name().to_string_lossy() == file {
                    return path;
                }
            }
        }
        panic!(
            "{file} is not in Verdaccio's storage {}",
            self.dir.display()
        );
    }
}

/// The template must never make Verdaccio proxy to another registry.
fn assert_no_uplinks(template: &str) {
    for line in template.lines() {
        let code = line.split('#').next().unwrap_or_default().trim();
        assert!(
            !code.starts_with("uplinks") && !code.starts_with("proxy"),
            "e2e/verdaccio/config.yaml must have no uplinks and no proxy rule: {line:?}"
        );
    }
    assert!(
        template.contains("'@waiaas/*'"),
        "e2e/verdaccio/config.yaml must allow @waiaas/*"
    );
}

// ---------------------------------------------------------------------------
// npm, isolated in the temp folder.

struct Npm {
    home: PathBuf,
    userconfig: PathBuf,
    globalconfig: PathBuf,
    cache: PathBuf,
    registry: String,
}

impl Npm {
    /// Writes the user `.npmrc` (registry and token) in `dir`.
    fn new(dir: &Path, home: &Path, registry: &Verdaccio, token: &str) -> Self {
        fs::create_dir_all(dir).unwrap();
        let userconfig = dir.join("npmrc");
        fs::write(
            &userconfig,
            format!(
                "registry={}\n//127.0.0.1:{}/:_authToken={token}\n",
                registry.url(),
                registry.port
            ),
        )
        .unwrap();
        let globalconfig = dir.join("global-npmrc");
        fs::write(&globalconfig, "").unwrap();
        Self {
            home: home.to_path_buf(),
            userconfig,
            globalconfig,
            cache: dir.join("cache"),
            registry: registry.url(),
        }
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut command = hermetic(Command::new("npm"), &self.home);
        command
            .args(args)
            .env("npm_config_userconfig", &self.userconfig)
            .env("npm_config_globalconfig", &self.globalconfig)
            .env("npm_config_cache", &self.cache)
            .env("npm_config_registry", &self.registry)
            .env("npm_config_update_notifier", "false")
            .env("npm_config_audit", "false")
            .env("npm_config_fund", "false")
            .env("npm_config_loglevel", "warn")
            .current_dir(&self.home);
        command
    }

    fn run(&self, args: &[&str], timeout: Duration) -> Outcome {
        let what = format!("npm {}", args.join(" "));
        let out = run_bounded(&mut self.command(args), timeout, &what);
        assert_ok(&out, &what);
        out
    }
}

// ---------------------------------------------------------------------------
// The installation the npm-installed launcher manages.

/// An installation whose launcher is `<prefix>/bin/waiaas-launcher`, npm's
/// link to the `@waiaas/cli` shim; derefs to the installation.
struct Site(testkit::Site);

impl Deref for Site {
    type Target = testkit::Site;

    fn deref(&self) -> &testkit::Site {
        &self.0
    }
}

impl Site {
    fn run(&self, args: &[&str], timeout: Duration) -> Outcome {
        let what = format!("waiaas-launcher {}", args.join(" "));
        run_bounded(&mut self.launcher(args), timeout, &what)
    }

    /// The pid in `run/launcher.pid` (written by `run`).
    fn supervisor_pid(&self) -> u32 {
        let text = fs::read_to_string(self.dir.launcher_pid()).expect("run/launcher.pid");
        text.trim()
            .parse()
            .unwrap_or_else(|e| panic!("run/launcher.pid holds {text:?}: {e}"))
    }

    /// Polls `/health` until `done` holds, within `timeout`.
    fn wait_health(
        &self,
        supervisor: &mut Background,
        timeout: Duration,
        what: &str,
        done: impl Fn(&HealthResponse) -> bool,
    ) -> HealthResponse {
        let deadline = Instant::now() + timeout;
        let mut last = None;
        loop {
            if let Some(health) = self.health() {
                if done(&health) {
                    return health;
                }
                last = Some(health);
            }
            supervisor.assert_alive(what);
            assert!(
                Instant::now() < deadline,
                "no {what} within {timeout:?}; last /health: {last:?}\n{}",
                supervisor.log_tail()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// `package/<path>` of a package tarball.
fn file_in_tarball(tarball: &Path, path: &str) -> Vec<u8> {
    let entries = waiaas_packaging::read_package_tarball(tarball)
        .unwrap_or_else(|e| panic!("read {}: {e}", tarball.display()));
    entries
        .into_iter()
        .find_map(|e| match e.kind {
            EntryKind::File { contents, .. } if e.path == format!("package/{path}") => {
                Some(contents)
            }
            _ => None,
        })
        .unwrap_or_else(|| panic!("{path} is not in {}", tarball.display()))
}

// ---------------------------------------------------------------------------
// The test.

/// Verdaccio's binary, if `npm ci` in `e2e/verdaccio` installed it; in CI
/// its absence fails the test, elsewhere the test is skipped.
fn verdaccio_bin() -> Option<PathBuf> {
    let bin = verdaccio_dir()
        .join("node_modules")
        .join(".bin")
        .join("verdaccio");
    if bin.exists() {
        return Some(bin);
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "{} is missing, and CI must not skip this test: run `npm ci` in e2e/verdaccio \
         (bash .ci/run does)",
        bin.display()
    );
    println!("skipped: run `npm ci` in e2e/verdaccio (bash .ci/run does)");
    None
}

/// A and B packed and signed, published to a fresh Verdaccio with the real
/// `npm publish`, and the isolated npm that published them.
struct Published {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    home: PathBuf,
    key: Key,
    packed_b: Packed,
    verdaccio: Verdaccio,
    npm: Npm,
}

/// Builds B, packs A and B, starts Verdaccio and publishes both releases
/// (each one's platform package first), timing each phase.
fn publish_a_and_b(verdaccio_bin: &Path, phases: &mut Phases) -> Published {
    let a = testkit::builds::a_version();
    let target = this_target().expect("a shipped target");
    let platform = platform_package(target);

    // -- Two real builds, packed and signed with one throwaway key.
    let b_bin = testkit::builds::b_bin_dir();
    phases.end("build B (1.9.0), incremental");
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().to_path_buf();
    let home = root.join("home");
    fs::create_dir_all(&home).unwrap();
    let key: Key = testkit::builds::generate_key(&root.join("key"));
    // A snapshot: target/debug may be rebuilt by another build meanwhile.
    let a_bin = testkit::builds::copy_bin_dir(&testkit::builds::a_bin_dir(), &root.join("a-bin"));
    let packed_a: Packed = pack_release(&a_bin, &root.join("packs").join("a"), &key);
    let packed_b: Packed = pack_release(b_bin, &root.join("packs").join("b"), &key);
    assert_eq!(packed_a.manifest.version, a);
    assert_eq!(packed_b.manifest.version, B_VERSION);
    assert_eq!(packed_b.manifest.schema_version, B_SCHEMA);
    assert_eq!(packed_a.public_key, key.public);
    phases.end("pack A and B (packaging/)");

    // -- Verdaccio, a user, and an isolated npm.
    let verdaccio = Verdaccio::start(verdaccio_bin, &root.join("verdaccio"), &home);
    phases.end("start Verdaccio");
    let token = verdaccio.add_user(NPM_USER, "e2e-only-password-0f3a");
    let npm = Npm::new(&root.join("npm"), &home, &verdaccio, &token);
    let whoami = npm.run(&["whoami"], Duration::from_secs(60));
    assert_eq!(whoami.stdout.trim(), NPM_USER, "npm whoami");
    phases.end("create the npm user, write .npmrc");

    // -- Publish A, then B: each release's platform package first.
    let publish_timeout = Duration::from_secs(300);
    for packed in [&packed_a, &packed_b] {
        for tarball in [&packed.platform_tarball, &packed.cli_tarball] {
            let path = tarball.to_str().expect("a UTF-8 temp path");
            npm.run(&["publish", path, "--access", "public"], publish_timeout);
        }
    }
    let cli = verdaccio.packument(CLI_PACKAGE);
    assert_eq!(
        cli["dist-tags"]["latest"], B_VERSION,
        "{}",
        cli["dist-tags"]
    );
    for version in [a, B_VERSION] {
        assert_eq!(
            cli["versions"][version]["optionalDependencies"][&platform], version,
            "@waiaas/cli@{version} depends on {platform}@{version}"
        );
    }
    let platform_doc = verdaccio.packument(&platform);
    for (version, packed) in [(a, &packed_a), (B_VERSION, &packed_b)] {
        assert_eq!(
            platform_doc["versions"][version]["dist"]["integrity"],
            packed.platform_integrity.as_str(),
            "{platform}@{version} as published"
        );
    }
    phases.end("1. npm publish A and B (4 packages)");
    Published {
        _tmp: tmp,
        root,
        home,
        key,
        packed_b,
        verdaccio,
        npm,
    }
}

fn unix_ms_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("a clock after 1970")
        .as_millis() as i64
}

/// `package::releases` reads what the real npm and Verdaccio write: each
/// version's publish time, and a deprecation set (then lifted) with the real
/// `npm deprecate`.
fn assert_listed_with_times_and_deprecation(p: &Published, since_ms: i64, phases: &mut Phases) {
    let a = testkit::builds::a_version();
    let mut config = waiaas_shared::config::Config::default();
    config.update.registry = Some(p.verdaccio.url());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let listing = || {
        runtime
            .block_on(waiaas_launcher::package::releases(&config))
            .expect("package::releases against Verdaccio")
    };
    let message = "e2e: withdrawn, use the next release";
    let spec = format!("{CLI_PACKAGE}@{a}");
    let deprecate = |text: &str| {
        p.npm
            .run(&["deprecate", &spec, text], Duration::from_secs(60))
    };
    deprecate(message);

    let listed = listing();
    assert_eq!(listed.tag.to_string(), B_VERSION);
    let shown: Vec<(String, Option<String>)> = listed
        .releases
        .iter()
        .map(|r| (r.version.to_string(), r.deprecated.clone()))
        .collect();
    assert_eq!(
        shown,
        [
            (a.to_string(), Some(message.to_string())),
            (B_VERSION.to_string(), None)
        ]
    );
    let times: Vec<i64> = listed
        .releases
        .iter()
        .map(|r| {
            r.published_unix_ms
                .expect("Verdaccio records a publish time")
        })
        .collect();
    let now = unix_ms_now();
    assert!(
        times.iter().all(|t| (since_ms..=now).contains(t)) && times[0] <= times[1],
        "publish times {times:?} outside {since_ms}..={now} or out of order"
    );

    // `npm deprecate <pkg>@<v> ""` lifts it.
    deprecate("");
    assert!(listing().releases.iter().all(|r| r.deprecated.is_none()));
    phases.end("1b. npm deprecate, package::releases");
}

#[test]
fn npm_registry_end_to_end() {
    let Some(verdaccio_bin) = verdaccio_bin() else {
        return;
    };
    let mut phases = Phases::new();
    let a = testkit::builds::a_version();
    let target = this_target().expect("a shipped target");
    let platform = platform_package(target);
    // `@waiaas/cli-linux-x64` → tarball `cli-linux-x64-1.9.0.tgz`.
    let platform_file = |version: &str| {
        format!(
            "{}-{version}.tgz",
            platform.rsplit('/').next().expect("a scoped name")
        )
    };
    let before_publish = unix_ms_now();
    let published = publish_a_and_b(&verdaccio_bin, &mut phases);
    assert_listed_with_times_and_deprecation(&published, before_publish, &mut phases);
    let Published {
        root,
        home,
        key,
        packed_b,
        verdaccio,
        npm,
        ..
    } = &published;
    let (root, home) = (root.as_path(), home.as_path());

    // -- 2. npm install -g @waiaas/cli@A into a temp prefix, no scripts.
    let prefix = root.join("global");
    npm.run(
        &[
            "install",
            "-g",
            &format!("{CLI_PACKAGE}@{a}"),
            "--prefix",
            prefix.to_str().unwrap(),
            "--ignore-scripts",
        ],
        Duration::from_secs(300),
    );
    // A global install nests the dependencies in the package's own node_modules.
    let installed = prefix
        .join("lib")
        .join("node_modules")
        .join(CLI_PACKAGE)
        .join("node_modules")
        .join(&platform);
    assert!(
        installed.join("bin").join("waiaas-launcher").is_file()
            && installed.join("bin").join("waiaas-daemon").is_file()
            && installed.join("release.json").is_file(),
        "npm did not install {platform} with its binaries and release.json in {}",
        installed.display()
    );
    let launcher = prefix.join("bin").join("waiaas-launcher");
    let site = Site(testkit::Site {
        launcher: launcher.clone(),
        home: home.to_path_buf(),
        dir: DataDir::new(home.join("waiaas")),
        port: free_port(),
    });
    let version = run_bounded(
        hermetic(Command::new(&launcher), home).arg("--version"),
        Duration::from_secs(30),
        "waiaas-launcher --version",
    );
    assert_ok(&version, "waiaas-launcher --version");
    assert_eq!(
        version.stdout.trim(),
        format!("waiaas-launcher {a}"),
        "the npm-installed launcher"
    );
    phases.end("2. npm install -g @waiaas/cli@A");

    // -- 3. init and run, with the npm-installed launcher.
    let init = site.run(&["init"], Duration::from_secs(60));
    assert_ok(&init, "waiaas-launcher init");
    assert!(
        site.dir.version(a).join("release.json.minisig").is_file(),
        "init installed A without its signed release.json: {init:?}"
    );
    fs::write(
        site.dir.config(),
        format!(
            "[daemon]\nport = {}\nhostname = \"127.0.0.1\"\nupdate_check = true\nshutdown_timeout = 10\n\n\
             [update]\nregistry = \"{}\"\ntrusted_keys = [\"{}\"]\nhealth_timeout = 60\n",
            site.port,
            verdaccio.url(),
            key.public
        ),
    )
    .unwrap();
    let mut supervisor = Background::spawn(
        "waiaas-launcher run",
        site.launcher(&["run"]),
        &root.join("launcher-run.log"),
    );
    let ready = Instant::now();
    let health = site.wait_health(
        &mut supervisor,
        Duration::from_secs(90),
        "healthy daemon",
        |h| h.status == "ok",
    );
    assert_eq!(health.version, a, "/health version");
    assert_eq!(
        health.schema_version,
        testkit::builds::A_SCHEMA,
        "/health schemaVersion"
    );
    // The supervisor is the npm-installed binary, started by npm's shim.
    let supervisor_pid = site.supervisor_pid();
    assert_eq!(
        fs::canonicalize(format!("/proc/{supervisor_pid}/exe")).unwrap(),
        fs::canonicalize(installed.join("bin").join("waiaas-launcher")).unwrap(),
        "the supervisor runs the npm-installed launcher"
    );
    phases.end("3. init + run until /health answers");

    // -- 4. The version check, against Verdaccio, right after readiness.
    let health = site.wait_health(
        &mut supervisor,
        VERSION_CHECK_WITHIN,
        "latestVersion 1.9.0 in /health",
        |h| h.latest_version.as_deref() == Some(B_VERSION),
    );
    assert!(health.update_available, "{health:?}");
    assert_eq!(health.version, a);
    eprintln!(
        "[registry_e2e] version check visible {:.1} s after the first healthy answer",
        ready.elapsed().as_secs_f64()
    );
    phases.end("4. version check: latestVersion 1.9.0");

    // -- 5. Data through the real API.
    for name in ["treasury", "payroll", "ops-hot"] {
        site.create_wallet(name);
    }
    let wallets = site.wallets();
    assert_eq!(wallets.len(), 3, "{wallets:?}");
    let b_file = platform_file(B_VERSION);
    let (before, _) = verdaccio.downloads_of(&b_file);
    assert_eq!(before, 0, "{b_file} was downloaded before the upgrade");
    phases.end("5. POST /v1/wallets");

    // -- 6. upgrade, through the running supervisor.
    let upgrade = site.run(&["upgrade"], Duration::from_secs(600));
    assert_ok(&upgrade, "waiaas-launcher upgrade");
    eprintln!(
        "[registry_e2e] upgrade said:\n{}{}",
        upgrade.stdout, upgrade.stderr
    );
    let health = site.wait_health(
        &mut supervisor,
        Duration::from_secs(30),
        "1.9.0 in /health",
        |h| h.version == B_VERSION,
    );
    assert_eq!(health.schema_version, B_SCHEMA, "/health schemaVersion");
    assert_eq!(site.wallets(), wallets, "the wallets after the upgrade");
    assert_eq!(
        site.supervisor_pid(),
        supervisor_pid,
        "the upgrade ran through the supervisor, which stayed up"
    );
    assert_eq!(
        fs::read_link(site.dir.current())
            .unwrap()
            .file_name()
            .unwrap(),
        B_VERSION
    );
    // The platform package came from Verdaccio: it was downloaded (by the
    // launcher, not by npm), and what is installed is what Verdaccio stores.
    let (downloads, agents) = verdaccio.downloads_of(&b_file);
    assert!(
        downloads >= 1,
        "Verdaccio's log shows no download of {b_file}\n{}",
        verdaccio.process.log_tail()
    );
    assert!(
        agents.iter().any(|ua| ua.starts_with("waiaas/")),
        "{b_file} was not downloaded by the launcher: User-Agents {agents:?}"
    );
    let stored = verdaccio.stored_tarball(&b_file);
    assert_eq!(
        fs::read(&stored).unwrap(),
        fs::read(&packed_b.platform_tarball).unwrap(),
        "Verdaccio stores B's platform tarball as packed"
    );
    assert_eq!(
        fs::read(site.dir.version(B_VERSION).join("release.json")).unwrap(),
        file_in_tarball(&stored, "release.json"),
        "versions/1.9.0/release.json is the one in Verdaccio's tarball"
    );
    phases.end("6. upgrade to 1.9.0 (download from Verdaccio)");

    // -- 7. upgrade --rollback.
    let rollback = site.run(&["upgrade", "--rollback"], Duration::from_secs(600));
    assert_ok(&rollback, "waiaas-launcher upgrade --rollback");
    eprintln!(
        "[registry_e2e] upgrade --rollback said:\n{}{}",
        rollback.stdout, rollback.stderr
    );
    let health = site.wait_health(
        &mut supervisor,
        Duration::from_secs(30),
        "1.8.1 in /health",
        |h| h.version == a,
    );
    assert_eq!(
        health.schema_version,
        testkit::builds::A_SCHEMA,
        "/health schemaVersion"
    );
    assert_eq!(site.wallets(), wallets, "the wallets after the rollback");
    assert_eq!(site.supervisor_pid(), supervisor_pid, "the same supervisor");
    phases.end("7. upgrade --rollback to 1.8.1");

    // -- Stop: the supervisor by its own command, then Verdaccio (on drop).
    let stop = site.run(&["stop"], Duration::from_secs(60));
    assert_ok(&stop, "waiaas-launcher stop");
    let exited = supervisor.wait_exit(Duration::from_secs(30));
    assert!(
        exited.is_some(),
        "the supervisor did not exit after stop\n{}",
        supervisor.log_tail()
    );
    drop(supervisor);
    drop(published);
    phases.end("stop everything");
    phases.summary();
}

// ---------------------------------------------------------------------------
// The npm channel converges.

impl Verdaccio {
    /// GETs of any package tarball (`…/-/<name>-<version>.tgz`) Verdaccio has
    /// received so far, whoever sent them (its "requested" line, one per
    /// request; the answer is logged more than once).
    fn tarball_requests(&self) -> usize {
        self.log_entries()
            .iter()
            .filter_map(|entry| entry.get("req"))
            .filter(|request| {
                request["method"] == "GET"
                    && request["url"]
                        .as_str()
                        .is_some_and(|u| u.contains("/-/") && u.ends_with(".tgz"))
            })
            .count()
    }
}

/// One npm-installed installation of A, serving, with data written.
struct NpmSite {
    site: Site,
    supervisor: Background,
    wallets: BTreeMap<String, String>,
    /// The platform package folder npm installed (its `bin/`, `release.json`).
    installed: PathBuf,
}

/// `npm install -g @waiaas/cli@A` into its own prefix, `init`, `run`, wallets
/// through the API.
fn install_a_with_npm(p: &Published, name: &str) -> NpmSite {
    let a = testkit::builds::a_version();
    let prefix = p.root.join(format!("global-{name}"));
    let install = format!("{CLI_PACKAGE}@{a}");
    npm_install(p, &prefix, &install);
    let platform = platform_package(this_target().expect("a shipped target"));
    let installed = prefix
        .join("lib")
        .join("node_modules")
        .join(CLI_PACKAGE)
        .join("node_modules")
        .join(&platform);
    let site = Site(testkit::Site {
        launcher: prefix.join("bin").join("waiaas-launcher"),
        home: p.home.clone(),
        dir: DataDir::new(p.home.join(format!("waiaas-{name}"))),
        port: free_port(),
    });
    assert_ok(&site.run(&["init"], Duration::from_secs(60)), "init");
    fs::write(
        site.dir.config(),
        format!(
            "[daemon]\nport = {}\nhostname = \"127.0.0.1\"\nupdate_check = false\nshutdown_timeout = 10\n\n\
             [update]\nregistry = \"{}\"\ntrusted_keys = [\"{}\"]\nhealth_timeout = 60\n",
            site.port,
            p.verdaccio.url(),
            p.key.public
        ),
    )
    .unwrap();
    let mut supervisor = Background::spawn(
        "waiaas-launcher run",
        site.launcher(&["run"]),
        &p.root.join(format!("launcher-{name}.log")),
    );
    let health = site.wait_health(&mut supervisor, Duration::from_secs(90), "A healthy", |h| {
        h.status == "ok"
    });
    assert_eq!(health.version, a);
    for wallet in ["treasury", "payroll", "ops-hot"] {
        site.create_wallet(wallet);
    }
    let wallets = site.wallets();
    assert_eq!(wallets.len(), 3, "{wallets:?}");
    NpmSite {
        site,
        supervisor,
        wallets,
        installed,
    }
}

fn npm_install(p: &Published, prefix: &Path, package: &str) {
    let prefix = prefix.to_str().expect("a UTF-8 temp path");
    let args = [
        "install",
        "-g",
        package,
        "--prefix",
        prefix,
        "--ignore-scripts",
    ];
    p.npm.run(&args, Duration::from_secs(300));
}

/// At 1.9.0 with B's launcher (`launcher`) serving, a pre-upgrade backup from
/// A, and the wallets written on A.
fn assert_converged(npm_site: &mut NpmSite, launcher: &Path, what: &str) {
    let NpmSite {
        site,
        supervisor,
        wallets,
        ..
    } = npm_site;
    let health = site.wait_health(supervisor, Duration::from_secs(60), "1.9.0", |h| {
        h.version == B_VERSION
    });
    assert_eq!(
        health.schema_version, B_SCHEMA,
        "{what}: /health schemaVersion"
    );
    assert_eq!(
        fs::read_link(site.dir.current())
            .unwrap()
            .file_name()
            .unwrap(),
        B_VERSION,
        "{what}: current"
    );
    // /health answers just before the commit: give the commit its moment.
    let deadline = Instant::now() + Duration::from_secs(30);
    while site.dir.upgrade_journal().exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        !site.dir.upgrade_journal().exists(),
        "{what}: a journal is left"
    );
    assert_eq!(&site.wallets(), wallets, "{what}: the wallets written on A");
    let status = site.run(&["status", "--json"], Duration::from_secs(30));
    assert_ok(&status, "status --json");
    let status = json(&status.stdout, "status --json");
    assert_eq!(status["launcher_version"], B_VERSION, "{what}: {status}");
    assert_eq!(status["daemon"]["version"], B_VERSION, "{what}: {status}");
    let pid = status["launcher_pid"].as_u64().unwrap();
    assert_eq!(
        fs::read_link(format!("/proc/{pid}/exe")).unwrap(),
        launcher,
        "{what}: the supervisor's program"
    );
    let backups: Vec<Manifest> = fs::read_dir(site.dir.backups())
        .unwrap()
        .flatten()
        .filter_map(|e| fs::read(e.path().join(BACKUP_MANIFEST)).ok())
        .filter_map(|bytes| serde_json::from_slice(&bytes).ok())
        .collect();
    assert!(
        backups.iter().any(|m| m.kind == Kind::PreUpgrade
            && m.from_version == testkit::builds::a_version()
            && m.to_version == B_VERSION),
        "{what}: no pre-upgrade backup of A: {backups:?}"
    );
}

/// After `npm install -g @waiaas/cli@1.9.0` over an installation of 1.8.1,
/// both ways in converge on the release npm brought, from its folder, with
/// no download: (a) `waiaas-launcher upgrade` through the running (old)
/// supervisor, and (b) in another installation, `run` started again (what
/// `npm install -g … && systemctl restart waiaas` does). Verdaccio's own log
/// counts the tarball requests it received while the launchers worked.
#[test]
fn npm_install_of_a_newer_release_converges_without_a_download() {
    let Some(verdaccio_bin) = verdaccio_bin() else {
        return;
    };
    let mut phases = Phases::new();
    let p = publish_a_and_b(&verdaccio_bin, &mut phases);
    let mut upgraded = install_a_with_npm(&p, "upgrade");
    let mut restarted = install_a_with_npm(&p, "restart");
    phases.end("2. npm install -g A twice, init, run, wallets");

    let platform = platform_package(this_target().expect("a shipped target"));
    for npm_site in [&upgraded, &restarted] {
        let prefix = npm_site.site.launcher.parent().unwrap().parent().unwrap();
        npm_install(&p, prefix, &format!("{CLI_PACKAGE}@{B_VERSION}"));
        let manifest = fs::read_to_string(npm_site.installed.join("release.json")).unwrap();
        assert!(
            manifest.contains(B_VERSION),
            "npm installed {platform}@{B_VERSION}"
        );
        // The old supervisor still serves A.
        assert_eq!(
            npm_site.site.health().unwrap().version,
            testkit::builds::a_version()
        );
    }
    // npm installs from its cache what `npm publish` put there; the counter
    // is shown to count with one request of the test's own.
    let by_npm = p.verdaccio.tarball_requests();
    let file = format!("/{CLI_PACKAGE}/-/cli-{B_VERSION}.tgz");
    let (status, _) = http(p.verdaccio.port, "GET", &file, &[], None).expect("Verdaccio answers");
    assert_eq!(status, 200, "GET {file}");
    let after_npm = p.verdaccio.tarball_requests();
    assert_eq!(after_npm, by_npm + 1, "the counter sees a tarball request");
    eprintln!("[registry_e2e] tarball requests after npm's installs: {by_npm} (+1 of the test's)");
    phases.end("3. npm install -g B over both");

    // (a) `upgrade`, by the launcher npm just installed, through the old supervisor.
    let pid = upgraded.site.supervisor_pid();
    let upgrade = upgraded.site.run(&["upgrade"], Duration::from_secs(600));
    assert_ok(&upgrade, "waiaas-launcher upgrade");
    eprintln!(
        "[registry_e2e] upgrade said:\n{}{}",
        upgrade.stdout, upgrade.stderr
    );
    assert!(
        upgrade
            .stderr
            .contains("Using the release beside this launcher"),
        "{}",
        upgrade.stderr
    );
    // The supervisor became the installed release's launcher (same pid).
    let installed = upgraded.site.dir.version(B_VERSION).join("waiaas-launcher");
    assert_converged(&mut upgraded, &installed, "upgrade");
    assert_eq!(
        upgraded.site.supervisor_pid(),
        pid,
        "the same supervisor process"
    );
    let after_upgrade = p.verdaccio.tarball_requests();
    phases.end("4a. upgrade from the release npm installed");

    // (b) `run` started again: the service restarted after npm's install.
    let stop = restarted.site.run(&["stop"], Duration::from_secs(60));
    assert_ok(&stop, "waiaas-launcher stop (B's command, A's supervisor)");
    assert!(
        restarted
            .supervisor
            .wait_exit(Duration::from_secs(30))
            .is_some(),
        "{}",
        restarted.supervisor.log_tail()
    );
    let log = p.root.join("launcher-restart-again.log");
    restarted.supervisor = Background::spawn(
        "waiaas-launcher run (again)",
        restarted.site.launcher(&["run"]),
        &log,
    );
    // The service's launcher is npm's B, the installation's version.
    let npm_launcher = restarted.installed.join("bin").join("waiaas-launcher");
    assert_converged(&mut restarted, &npm_launcher, "run again");
    let text = fs::read_to_string(&log).unwrap_or_default();
    assert!(
        text.contains("moving to the newer release beside this launcher"),
        "{text}"
    );
    let after_restart = p.verdaccio.tarball_requests();
    phases.end("4b. run again from the release npm installed");

    eprintln!(
        "[registry_e2e] tarball requests to Verdaccio: {by_npm} by npm's four installs; \
         {} during `upgrade`; {} during the restart of `run`",
        after_upgrade - after_npm,
        after_restart - after_upgrade
    );
    assert_eq!(after_upgrade, after_npm, "`upgrade` requested a tarball");
    assert_eq!(after_restart, after_upgrade, "`run` requested a tarball");
    for npm_site in [&upgraded, &restarted] {
        assert_ok(
            &npm_site.site.run(&["stop"], Duration::from_secs(60)),
            "stop",
        );
    }
    drop(upgraded);
    drop(restarted);
    drop(p);
    phases.end("stop everything");
    phases.summary();
}
