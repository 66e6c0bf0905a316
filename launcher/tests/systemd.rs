//! packaging/systemd for real: systemd 252 as PID 1 in a podman container
//! (`.ci/container-images`' bookworm rootfs with systemd, run with
//! `--systemd=always --network host`), one container per test, the units
//! and the binaries under test installed with the README's commands. The only
//! local changes are drop-ins, as the README says to make them: a free
//! loopback port per test (the host's network is shared), no version check,
//! the upgrade test's registry (on 127.0.0.1, served by the test) and release
//! key, and what a test says it shortens (WatchdogSec, and TimeoutStopSec on
//! a cgroup v1 host). Load is 32 keep-alive clients plus a prober opening a
//! connection per request (a refused connection shows there). Each test
//! prints its figures (start to active, kill to healthy, failed requests,
//! worst latency, which hardening applied) with `--nocapture`. Skipped,
//! saying why, without the tier's prerequisites — never in CI
//! (`testkit/src/podman.rs`).

use std::fs;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use testkit::builds::{A_SCHEMA, B_SCHEMA, B_VERSION};
use testkit::load::{Load as Clients, Tally, percentile};
use testkit::podman::{Cleanup, Podman, SYSTEMD_IMAGE, podman};
use testkit::registry::Registry;
use testkit::{Outcome, daemon_binary, free_port, http, launcher_binary};
use waiaas_shared::admin::{Outcome as Ended, Status, UpgradeReport};
use waiaas_shared::health::HealthResponse;
use waiaas_shared::release::{CLI_PACKAGE, platform_package, this_target};

/// systemd's boot in the container, and a service's start or restart.
const WITHIN: Duration = Duration::from_secs(60);
/// `RestartSec=` as shipped (in whole seconds, `RestartSec=5s`).
fn restart_sec() -> Duration {
    let unit =
        fs::read_to_string(testkit::builds::repo_root().join("packaging/systemd/waiaas.service"))
            .expect("packaging/systemd/waiaas.service");
    let value = unit
        .lines()
        .find_map(|l| l.strip_prefix("RestartSec="))
        .expect("RestartSec= in the unit");
    let seconds = value.trim().trim_end_matches('s');
    Duration::from_secs(
        seconds
            .parse()
            .unwrap_or_else(|_| panic!("RestartSec={value}")),
    )
}

struct Machine {
    podman: Podman,
    _cleanup: Cleanup,
    name: String,
    /// The daemon's loopback port (the container shares the host's network).
    port: u16,
}

impl Machine {
    /// Boots systemd in a new container and installs the launcher, the
    /// daemon and both units as the README's "Running under systemd" does.
    fn boot(podman: Podman, test: &str) -> Self {
        let name = format!("waiaas-systemd-{test}-{}", std::process::id());
        let mut cleanup = podman.cleanup();
        let _ = podman.run(&["rm", "--force", "--time", "0", &name]);
        cleanup.containers.push(name.clone());
        podman.ok(&[
            "run",
            "--detach",
            "--name",
            &name,
            "--systemd=always",
            // What PID 1 has on a real host: without it systemd silently
            // skips every mount namespace option (ProtectSystem= and others).
            "--cap-add",
            "SYS_ADMIN",
            "--network",
            "host",
            SYSTEMD_IMAGE,
            "/sbin/init",
        ]);
        let machine = Self {
            podman,
            _cleanup: cleanup,
            name,
            port: free_port(),
        };
        let booted = machine.podman.wait("systemd running", WITHIN, || {
            let state = machine.sh("systemctl is-system-running").stdout;
            state.trim() == "running" || state.trim() == "degraded"
        });
        eprintln!("{}: systemd up in {booted:?}", machine.name);

        for program in [&launcher_binary(), &daemon_binary()] {
            let to = format!(
                "{}:/root/{}",
                machine.name,
                program.file_name().unwrap().to_str().unwrap()
            );
            machine.podman.ok(&["cp", program.to_str().unwrap(), &to]);
        }
        let units = testkit::builds::repo_root().join("packaging/systemd");
        for unit in ["waiaas.service", "waiaas.socket"] {
            let to = format!("{}:/root/{unit}", machine.name);
            machine
                .podman
                .ok(&["cp", units.join(unit).to_str().unwrap(), &to]);
        }
        machine.ok(
            "cd /root && install -m 0755 waiaas-launcher waiaas-daemon /usr/local/bin/ \
             && useradd --system --home-dir /var/lib/waiaas --no-create-home --shell /usr/sbin/nologin waiaas \
             && cp waiaas.service waiaas.socket /etc/systemd/system/",
        );
        machine.drop_in(
            "waiaas.service",
            "test",
            &format!(
                "[Service]\nEnvironment=WAIAAS_DAEMON_PORT={} WAIAAS_DAEMON_UPDATE_CHECK=false\n",
                machine.port
            ),
        );
        if !Path::new("/sys/fs/cgroup/cgroup.controllers").exists() {
            // A cgroup v1 host: systemd in a container gets no cgroup-empty
            // events, and when the daemon exits just as systemd kills the
            // rest of the unit it waits out TimeoutStopSec (330 s) before a
            // restart. Bounded here; a cgroup v2 host runs the unit as shipped.
            eprintln!("cgroup v1 host: TimeoutStopSec=3s");
            machine.drop_in(
                "waiaas.service",
                "cgroup-v1",
                "[Service]\nTimeoutStopSec=3s\n",
            );
        }
        machine
    }

    /// A booted machine with the service started; `None` if the tier is skipped.
    fn started(test: &str) -> Option<Self> {
        let machine = Self::boot(podman()?, test);
        machine.start();
        Some(machine)
    }

    /// `sh -c script` in the container.
    fn sh(&self, script: &str) -> Outcome {
        self.podman.exec(&self.name, &["sh", "-c", script])
    }

    /// `sh -c script`, which must succeed; its stdout, trimmed.
    fn ok(&self, script: &str) -> String {
        let outcome = self.sh(script);
        assert!(
            outcome.status.success(),
            "`{script}` in {}: {outcome:?}",
            self.name
        );
        outcome.stdout.trim().to_string()
    }

    /// A drop-in for `unit` (what `systemctl edit` writes), then daemon-reload.
    fn drop_in(&self, unit: &str, name: &str, text: &str) {
        self.ok(&format!(
            "mkdir -p /etc/systemd/system/{unit}.d && printf '%s' '{text}' > /etc/systemd/system/{unit}.d/{name}.conf && systemctl daemon-reload"
        ));
    }

    /// `systemctl show -p property --value waiaas.service`.
    fn show(&self, property: &str) -> String {
        self.ok(&format!(
            "systemctl show -p {property} --value waiaas.service"
        ))
    }

    fn main_pid(&self) -> u32 {
        self.show("MainPID").parse().unwrap()
    }

    /// The launcher's child: the daemon.
    fn daemon_pid(&self) -> Option<u32> {
        let pid = self.main_pid();
        let children = self.sh(&format!("cat /proc/{pid}/task/*/children")).stdout;
        children
            .split_whitespace()
            .next()
            .map(|c| c.parse().unwrap())
    }

    /// Waits for a launcher other than `old` to be the main process.
    fn wait_new_launcher(&self, old: u32) {
        self.podman.wait("a new launcher", WITHIN, || {
            let pid = self.main_pid();
            pid != old && pid != 0
        });
    }

    /// Waits for a daemon other than `old`; how long it took.
    fn wait_new_daemon(&self, old: u32) -> Duration {
        self.podman.wait("a new daemon", WITHIN, || {
            self.daemon_pid().is_some_and(|p| p != old) && self.healthy()
        })
    }

    fn healthy(&self) -> bool {
        matches!(
            http(self.port, "GET", "/health", None, None),
            Some((200, _))
        )
    }

    /// Waits for `/health` to answer; how long it took.
    fn wait_healthy(&self) -> Duration {
        self.podman
            .wait("/health answers", WITHIN, || self.healthy())
    }

    fn journal(&self) -> String {
        self.sh("journalctl --no-pager -u waiaas.service -u waiaas.socket")
            .stdout
    }

    /// `systemctl start` fails with the permanent exit `code` and systemd
    /// does not restart the service.
    fn assert_refused(&self, code: u8) {
        let failed = self.sh("systemctl start waiaas.service");
        assert!(!failed.status.success(), "the start fails: {failed:?}");
        assert_eq!(
            self.show("ExecMainStatus"),
            code.to_string(),
            "{}",
            self.journal()
        );
        // Longer than RestartSec: a restart would have happened by now.
        std::thread::sleep(restart_sec() * 2);
        assert_eq!(self.show("ActiveState"), "failed");
        assert_eq!(
            self.show("NRestarts"),
            "0",
            "no restart loop:\n{}",
            self.journal()
        );
    }

    fn journal_has(&self, needle: &str, what: &str) {
        let journal = self.journal();
        assert!(journal.contains(needle), "{what}:\n{journal}");
    }

    /// `systemctl start waiaas.service`, which must succeed; how long it took.
    fn start(&self) -> Duration {
        let started = Instant::now();
        let outcome = self.sh("systemctl start waiaas.service");
        assert!(
            outcome.status.success(),
            "start: {outcome:?}\n{}",
            self.journal()
        );
        started.elapsed()
    }

    /// `podman exec --privileged`: for what a plain exec's capabilities do
    /// not allow (nsenter, another user's `/proc/<pid>/exe`).
    fn privileged(&self, argv: &[&str]) -> Outcome {
        let mut args = vec!["exec", "--privileged", &self.name];
        args.extend_from_slice(argv);
        self.podman.run(&args)
    }

    /// The program `pid` runs (`/proc/<pid>/exe`).
    fn exe(&self, pid: u32) -> String {
        let outcome = self.privileged(&["readlink", &format!("/proc/{pid}/exe")]);
        assert!(outcome.status.success(), "readlink: {outcome:?}");
        outcome.stdout.trim().to_string()
    }

    /// `waiaas-launcher args` as the service's user against its data dir:
    /// the README's `sudo -u waiaas WAIAAS_DATA_DIR=/var/lib/waiaas
    /// waiaas-launcher …`, with runuser (the image has no sudo). The program
    /// is the one the unit names, whatever version the installation is at.
    fn admin(&self, args: &str) -> Outcome {
        self.sh(&format!(
            "runuser -u waiaas -- env WAIAAS_DATA_DIR={DATA_DIR} /usr/local/bin/waiaas-launcher {args}"
        ))
    }

    /// `waiaas-launcher status --json`, as the service's user.
    fn status(&self) -> Status {
        let out = self.admin("status --json");
        assert!(out.status.success(), "status: {out:?}");
        serde_json::from_str(out.stdout.trim())
            .unwrap_or_else(|e| panic!("status --json ({e}): {out:?}"))
    }

    /// As the README says for systemd: the registry set explicitly with
    /// `systemctl edit waiaas` (and the key the test releases are signed
    /// with), plus `more` environment settings.
    fn follow_registry(&self, registry: &Registry, public_key: &str, more: &str) {
        self.drop_in(
            "waiaas.service",
            "registry",
            &format!(
                "[Service]\nEnvironment=WAIAAS_UPDATE_REGISTRY={} WAIAAS_UPDATE_TRUSTED_KEYS={public_key} {more}\n",
                registry.url()
            ),
        );
        // A real host has a CA bundle (Debian's ca-certificates); the minbase
        // rootfs does not, and without one the launcher's HTTP client refuses to
        // start at all ("No CA certificates were loaded from the system"), even
        // for a plain-http registry on loopback.
        let to = format!("{}:/etc/ssl/certs/ca-certificates.crt", self.name);
        self.ok("mkdir -p /etc/ssl/certs");
        self.podman
            .ok(&["cp", "/etc/ssl/certs/ca-certificates.crt", &to]);
    }

    fn health(&self) -> HealthResponse {
        testkit::site::expect_health(self.port)
    }

    fn token(&self) -> String {
        self.ok(&format!("cat {DATA_DIR}/data/master.token"))
    }

    /// Creates a wallet through the API; returns its id.
    fn create_wallet(&self, name: &str) -> String {
        testkit::create_wallet(self.port, &self.token(), name)
    }

    /// The ids of the wallets the API lists.
    fn wallets(&self) -> Vec<String> {
        testkit::wallets(self.port, &self.token())
            .into_keys()
            .collect()
    }

    /// Runs `work` while [`CLIENTS`] keep-alive clients and one
    /// connection-per-request [`Prober`] send `GET /health` without pause.
    fn under_load<T>(&self, work: impl FnOnce() -> T) -> (T, Tally, Probed) {
        let url = format!("http://127.0.0.1:{}/health", self.port);
        let clients = Clients::start(&url, CLIENTS, WITHIN, Duration::from_secs(600));
        let probe = Prober::start(self.port);
        std::thread::sleep(Duration::from_millis(500));
        let result = work();
        std::thread::sleep(Duration::from_millis(500));
        let probe = probe.finish();
        let tally = clients.finish();
        for (_, took, error) in tally.errors.iter().take(3) {
            eprintln!("failed after {took} µs: {error}");
        }
        (result, tally, probe)
    }
}

/// The service's data dir (`StateDirectory=waiaas`).
const DATA_DIR: &str = "/var/lib/waiaas";
/// Keep-alive clients of [`Machine::under_load`].
const CLIENTS: usize = 32;

/// A new connection per `GET /health`, on one thread, until stopped: every
/// moment with no listener (a refused connection) shows as a failure.
struct Prober {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Probed>>,
}

/// What a [`Prober`] saw.
#[derive(Debug, Default)]
struct Probed {
    sent: usize,
    failed: usize,
    /// The first and the last failure.
    failures: Option<(Instant, Instant)>,
}

impl Probed {
    /// From the first failure to the last.
    fn outage(&self) -> Duration {
        self.failures
            .map_or(Duration::ZERO, |(first, last)| last - first)
    }
}

impl Prober {
    fn start(port: u16) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut probed = Probed::default();
                while !stop.load(Ordering::Relaxed) {
                    probed.sent += 1;
                    if !matches!(http(port, "GET", "/health", None, None), Some((200, _))) {
                        probed.failed += 1;
                        let now = Instant::now();
                        let first = probed.failures.map_or(now, |(first, _)| first);
                        probed.failures = Some((first, now));
                    }
                }
                probed
            })
        };
        Self {
            stop,
            thread: Some(thread),
        }
    }

    fn finish(mut self) -> Probed {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take().unwrap().join().unwrap()
    }
}

/// One line of figures for what [`Machine::under_load`] saw.
fn figures(tally: &Tally, probed: &Probed) -> String {
    format!(
        "{CLIENTS} keep-alive clients: {} requests, {} failed, p99 {} ms, worst {} ms; \
         a connection per request: {} sent, {} failed (failing for {} ms)",
        tally.sent(),
        tally.failed,
        percentile(&tally.latencies, 0.99) / 1000,
        tally.worst() / 1000,
        probed.sent,
        probed.failed,
        probed.outage().as_millis(),
    )
}

// ---------------------------------------------------------------------------

#[test]
fn start_returns_once_health_answers_and_status_shows_the_status_line() {
    let Some(podman) = podman() else { return };
    let machine = Machine::boot(podman, "start");
    machine.ok("systemctl enable waiaas.service");
    let took = machine.start();
    // READY=1 only after /health: the API answers the moment start returns.
    assert!(
        machine.healthy(),
        "/health answers when `systemctl start` returns"
    );
    eprintln!("systemctl start to active: {took:?}");
    assert_eq!(machine.show("ActiveState"), "active");
    let status = machine
        .sh("systemctl status --no-pager waiaas.service")
        .stdout;
    let line = status
        .lines()
        .find(|l| l.trim_start().starts_with("Status:"))
        .unwrap_or_else(|| panic!("a Status: line in\n{status}"));
    assert!(
        line.contains(env!("CARGO_PKG_VERSION")),
        "the STATUS= line names the version served: {line}"
    );
}

/// One line of `/proc/<pid>/mountinfo`: the mount point, the folder of its
/// file system it shows, and its per-mount options.
struct Mount {
    point: String,
    root: String,
    options: String,
    super_options: String,
}

impl Mount {
    fn read_only(&self) -> bool {
        self.options.split(',').any(|o| o == "ro")
    }
}

/// `/proc/<pid>/mountinfo`, parsed; the visible mount last for each point.
fn mounts(machine: &Machine, pid: u32) -> Vec<Mount> {
    let text = machine.privileged(&["cat", &format!("/proc/{pid}/mountinfo")]);
    assert!(text.status.success(), "{text:?}");
    text.stdout
        .lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let left: Vec<&str> = left.split(' ').collect();
            let right: Vec<&str> = right.split(' ').collect();
            Some(Mount {
                root: left.get(3)?.to_string(),
                point: left.get(4)?.to_string(),
                options: left.get(5)?.to_string(),
                super_options: right.get(2).unwrap_or(&"").to_string(),
            })
        })
        .collect()
}

/// The mount `point` shows to a process: the last one mounted there.
fn mount_at<'a>(mounts: &'a [Mount], point: &str) -> Option<&'a Mount> {
    mounts.iter().rev().find(|m| m.point == point)
}

/// The hardening holds from inside: the service's own processes cannot
/// write outside `/var/lib/waiaas`. A write is tried in the launcher's mount
/// namespace (nsenter into MainPID's) as the service's user, in a folder
/// that user owns — so only the sandbox refuses it, not file permissions —
/// and as root in `/etc` and `/usr/local/bin`. Then each hardening option
/// is checked against what the launcher process has (its status, mounts and
/// namespaces, beside PID 1's) and the test prints which ones applied in
/// this container. With podman's `--cap-add SYS_ADMIN` (as PID 1 has on a
/// real host) systemd 252 applies all of them; without it, it skips every
/// mount-namespace option (ProtectSystem=, ProtectHome=, PrivateTmp=, …).
#[test]
fn the_hardening_holds_from_inside() {
    let Some(machine) = Machine::started("hardening") else {
        return;
    };
    let pid = machine.main_pid();
    let daemon = machine.daemon_pid().expect("the daemon runs");
    let pid_text = pid.to_string();
    let uid = machine.ok("id -u waiaas");
    let gid = machine.ok("id -g waiaas");
    // Outside the sandbox the service's user may write here.
    machine.ok("install -d -o waiaas -g waiaas -m 0700 /srv/waiaas-probe \
         && runuser -u waiaas -- touch /srv/waiaas-probe/outside-the-sandbox");
    let inside = |as_service_user: bool, argv: &[&str]| {
        let mut args = vec!["nsenter", "--target", &pid_text, "--mount"];
        if as_service_user {
            args.extend(["--setuid", &uid, "--setgid", &gid]);
        }
        args.extend_from_slice(argv);
        machine.privileged(&args)
    };
    let refused = |outcome: Outcome, what: &str| {
        assert!(
            !outcome.status.success() && outcome.stderr.contains("Read-only file system"),
            "{what} is refused with EROFS: {outcome:?}"
        );
        eprintln!("refused: {what}: {}", outcome.stderr.trim());
    };
    refused(
        inside(true, &["touch", "/srv/waiaas-probe/inside-the-sandbox"]),
        "the service's user writing into a folder it owns outside the data dir",
    );
    refused(
        inside(false, &["touch", "/etc/waiaas-probe"]),
        "root writing /etc",
    );
    refused(
        inside(false, &["touch", "/usr/local/bin/waiaas-probe"]),
        "root writing /usr/local/bin",
    );
    let written = inside(true, &["touch", "/var/lib/waiaas/probe"]);
    assert!(
        written.status.success(),
        "the data dir is writable: {written:?}"
    );
    // The daemon is in the same sandbox.
    let ns = |pid: u32, kind: &str| {
        let out = machine.privileged(&["readlink", &format!("/proc/{pid}/ns/{kind}")]);
        assert!(out.status.success(), "{out:?}");
        out.stdout.trim().to_string()
    };
    assert_eq!(ns(daemon, "mnt"), ns(pid, "mnt"), "the daemon's mounts");
    assert_ne!(ns(pid, "mnt"), ns(1, "mnt"));

    // Which options applied: the launcher's view beside PID 1's.
    let status = |pid: u32, field: &str| {
        let out = machine.privileged(&[
            "grep",
            &format!("^{field}:"),
            &format!("/proc/{pid}/status"),
        ]);
        out.stdout
            .split_once(':')
            .map(|(_, v)| v.trim().to_string())
            .unwrap_or_default()
    };
    let (ours, init) = (mounts(&machine, pid), mounts(&machine, 1));
    let at = |point: &str| mount_at(&ours, point);
    let private = |point: &str| at(point).is_some_and(|m| m.root.contains("systemd-private"));
    let inaccessible = |point: &str| at(point).is_some_and(|m| m.root.contains("inaccessible"));
    let cgroups_writable = |mounts: &[Mount]| {
        mounts
            .iter()
            .any(|m| m.point.starts_with("/sys/fs/cgroup") && !m.read_only())
    };
    let proc_options = at("/proc")
        .map(|m| m.super_options.clone())
        .unwrap_or_default();
    let filters: u32 = status(pid, "Seccomp_filters").parse().unwrap_or(0);
    let init_filters: u32 = status(1, "Seccomp_filters").parse().unwrap_or(0);
    // (option, applied, evidence); None: not observable in this container.
    let checks: Vec<(&str, Option<bool>, String)> = vec![
        ("NoNewPrivileges=yes", Some(status(pid, "NoNewPrivs") == "1"), format!("NoNewPrivs {}", status(pid, "NoNewPrivs"))),
        (
            "CapabilityBoundingSet= AmbientCapabilities=",
            Some(status(pid, "CapBnd") == "0000000000000000" && status(pid, "CapAmb") == "0000000000000000"),
            format!("CapBnd {} (PID 1: {})", status(pid, "CapBnd"), status(1, "CapBnd")),
        ),
        (
            "SystemCallFilter= SystemCallArchitectures= MemoryDenyWriteExecute= LockPersonality= RestrictAddressFamilies= RestrictNamespaces= RestrictRealtime= RestrictSUIDSGID= (seccomp)",
            Some(status(pid, "Seccomp") == "2" && filters > init_filters),
            format!("{filters} seccomp filters (PID 1, podman's: {init_filters})"),
        ),
        ("ProtectSystem=strict", Some(at("/").is_some_and(Mount::read_only) && at("/usr").is_none_or(Mount::read_only) && at("/etc").is_none_or(Mount::read_only)), "/ mounted read-only".into()),
        ("StateDirectory=waiaas (the one writable path)", Some(at("/var/lib/waiaas").is_some_and(|m| !m.read_only())), "/var/lib/waiaas mounted read-write".into()),
        ("ProtectHome=yes", Some(inaccessible("/home") && inaccessible("/root") && inaccessible("/run/user")), "/home, /root, /run/user inaccessible".into()),
        ("PrivateTmp=yes", Some(private("/tmp") && private("/var/tmp")), "/tmp, /var/tmp private".into()),
        (
            "PrivateDevices=yes",
            Some(at("/dev").is_some_and(Mount::read_only) && mount_at(&init, "/dev").is_some_and(|m| !m.read_only())),
            "its own read-only /dev".into(),
        ),
        (
            "ProtectControlGroups=yes",
            cgroups_writable(&init).then(|| !cgroups_writable(&ours)),
            "every /sys/fs/cgroup mount read-only".into(),
        ),
        ("ProtectHostname=yes", Some(ns(pid, "uts") != ns(1, "uts")), "its own UTS namespace".into()),
        ("ProtectProc=invisible", Some(proc_options.contains("hidepid=invisible")), format!("/proc {proc_options}")),
        ("ProcSubset=pid", Some(proc_options.contains("subset=pid")), "/proc/sys and the kernel's files hidden".into()),
        ("UMask=0077", Some(status(pid, "Umask") == "0077"), format!("Umask {}", status(pid, "Umask"))),
        (
            "ProtectKernelTunables=yes",
            None,
            "podman already mounts /sys and /proc/sys read-only (and ProcSubset=pid hides /proc/sys)".into(),
        ),
        (
            "ProtectKernelModules= ProtectKernelLogs= ProtectClock=",
            None,
            "their seccomp part is in the filters above; the rootfs has no /usr/lib/modules, and PrivateDevices= has no /dev/kmsg".into(),
        ),
    ];
    let mut missing = Vec::new();
    for (option, applied, evidence) in &checks {
        let word = match applied {
            Some(true) => "applied",
            Some(false) => {
                missing.push(*option);
                "NOT APPLIED"
            }
            None => "not observable here",
        };
        eprintln!("hardening: {option}: {word} ({evidence})");
    }
    // What systemd said it skipped (none with SYS_ADMIN).
    let journal = machine.sh("journalctl --no-pager -b").stdout;
    let skipped: Vec<&str> = journal
        .lines()
        .filter(|l| {
            l.contains("waiaas")
                && (l.contains("ignoring")
                    || l.contains("prohibited")
                    || l.contains("not supported"))
        })
        .collect();
    for line in &skipped {
        eprintln!("hardening: systemd skipped: {line}");
    }
    assert!(
        missing.is_empty() && skipped.is_empty(),
        "hardening not applied: {missing:?}; skipped: {skipped:?}"
    );
}

#[test]
fn daemon_kill_9_is_restarted_by_the_launcher_not_systemd() {
    let Some(machine) = Machine::started("daemon-kill") else {
        return;
    };
    let launcher = machine.main_pid();
    let daemon = machine.daemon_pid().expect("the daemon runs");
    let restarts = machine.show("NRestarts");
    machine.ok(&format!("kill -9 {daemon}"));
    let took = machine.wait_new_daemon(daemon);
    eprintln!("daemon kill -9 to healthy: {took:?}");
    assert_eq!(machine.show("ActiveState"), "active");
    assert_eq!(machine.main_pid(), launcher, "the same launcher");
    assert_eq!(
        machine.show("NRestarts"),
        restarts,
        "systemd restarted nothing"
    );
}

#[test]
fn launcher_kill_9_is_restarted_by_systemd() {
    let Some(machine) = Machine::started("launcher-kill") else {
        return;
    };
    let launcher = machine.main_pid();
    let (down, tally, probed) = machine.under_load(|| {
        machine.ok(&format!("kill -9 {launcher}"));
        let killed = Instant::now();
        machine
            .podman
            .wait("the API down", WITHIN, || !machine.healthy());
        machine.wait_new_launcher(launcher);
        machine.wait_healthy();
        killed.elapsed()
    });
    let restart_sec = restart_sec();
    eprintln!(
        "launcher kill -9 to healthy without waiaas.socket (RestartSec={restart_sec:?}, as shipped): {down:?}; {}",
        figures(&tally, &probed)
    );
    assert!(
        down >= restart_sec,
        "RestartSec={restart_sec:?} applies: {down:?}"
    );
    assert_eq!(machine.show("NRestarts"), "1");
    assert_eq!(machine.show("ActiveState"), "active");
}

#[test]
fn a_bad_config_exits_24_without_a_restart_loop() {
    let Some(machine) = Machine::started("bad-config") else {
        return;
    };
    machine.ok("systemctl stop waiaas.service \
         && printf '[daemon]\\nshutdown_timeout = 4\\n' > /var/lib/waiaas/config.toml \
         && chown waiaas:waiaas /var/lib/waiaas/config.toml");
    machine.assert_refused(24);
    machine.journal_has("shutdown_timeout", "the journal names the bad key");
}

#[test]
fn a_database_newer_than_the_daemon_exits_20_without_a_restart_loop() {
    let Some(machine) = Machine::started("newer-db") else {
        return;
    };
    // Release B's daemon (schema 17) migrates the service's database.
    let to = format!("{}:/usr/local/lib/waiaas-daemon-b", machine.name);
    let b = testkit::builds::b_bin_dir().join("waiaas-daemon");
    machine.podman.ok(&["cp", b.to_str().unwrap(), &to]);
    machine.ok("systemctl stop waiaas.service && runuser -u waiaas -- \
         /usr/local/lib/waiaas-daemon-b migrate --data-dir /var/lib/waiaas");
    machine.assert_refused(20);
    machine.journal_has("newer than this daemon", "the journal says why");
}

#[test]
fn reload_under_load_refuses_no_connection() {
    let Some(machine) = Machine::started("reload") else {
        return;
    };
    let daemon = machine.daemon_pid().expect("the daemon runs");
    let (took, tally, probed) = machine.under_load(|| {
        machine.ok("systemctl reload waiaas.service");
        machine.wait_new_daemon(daemon)
    });
    eprintln!(
        "systemctl reload to a new healthy daemon: {took:?}; {}",
        figures(&tally, &probed)
    );
    assert!(tally.sent() > 100, "the load ran: {}", tally.sent());
    assert_eq!(tally.failed, 0, "no request failed across the reload");
    assert_eq!(probed.failed, 0, "no connection failed across the reload");
    assert_eq!(machine.show("ActiveState"), "active");
}

#[test]
fn restart_with_the_socket_unit_refuses_no_connection() {
    let Some(podman) = podman() else { return };
    let machine = Machine::boot(podman, "socket");
    machine.drop_in(
        "waiaas.socket",
        "test",
        &format!(
            "[Socket]\nListenStream=\nListenStream=127.0.0.1:{}\n",
            machine.port
        ),
    );
    machine.ok("systemctl enable --now waiaas.socket");
    machine.start();
    let (took, tally, probed) = machine.under_load(|| {
        let started = Instant::now();
        machine.ok("systemctl restart waiaas.service");
        started.elapsed()
    });
    eprintln!(
        "systemctl restart with waiaas.socket: {took:?}; {}",
        figures(&tally, &probed)
    );
    assert_eq!(tally.failed, 0, "no request failed across the restart");
    assert_eq!(probed.failed, 0, "no connection failed across the restart");

    // The launcher killed: new connections wait in the socket's backlog
    // (those open to the killed daemon are reset: a figure, not a failure).
    let launcher = machine.main_pid();
    let (down, tally, probed) = machine.under_load(|| {
        machine.ok(&format!("kill -9 {launcher}"));
        let killed = Instant::now();
        machine.wait_new_launcher(launcher);
        machine.wait_healthy();
        killed.elapsed()
    });
    eprintln!(
        "launcher kill -9 to healthy with waiaas.socket (RestartSec={:?}): {down:?}; {}",
        restart_sec(),
        figures(&tally, &probed)
    );
    // A sequential prober has one request in flight when the daemon dies.
    assert!(
        probed.failed <= 1,
        "no new connection is refused while systemd restarts the service: {probed:?}"
    );
}

#[test]
fn restart_without_the_socket_unit_drops_requests() {
    let Some(machine) = Machine::started("no-socket") else {
        return;
    };
    let (took, tally, probed) = machine.under_load(|| {
        let started = Instant::now();
        machine.ok("systemctl restart waiaas.service");
        started.elapsed()
    });
    // A figure, not a requirement: the listener goes with the launcher.
    eprintln!(
        "systemctl restart without waiaas.socket: {took:?}; {}",
        figures(&tally, &probed)
    );
    assert!(machine.healthy());
}

#[test]
fn the_watchdog_kills_and_restarts_a_stopped_launcher() {
    let Some(podman) = podman() else { return };
    let machine = Machine::boot(podman, "watchdog");
    // A stopped process keeps the watchdog's SIGABRT pending: systemd sends
    // SIGKILL after TimeoutAbortSec (by default TimeoutStopSec, 330 s).
    machine.drop_in(
        "waiaas.service",
        "watchdog",
        "[Service]\nWatchdogSec=3s\nTimeoutAbortSec=2s\n",
    );
    machine.start();
    let launcher = machine.main_pid();
    machine.ok(&format!("kill -STOP {launcher}"));
    let stopped = Instant::now();
    machine.wait_new_launcher(launcher);
    machine.wait_healthy();
    eprintln!(
        "SIGSTOP to healthy with WatchdogSec=3s: {:?}",
        stopped.elapsed()
    );
    machine.journal_has("Watchdog timeout", "systemd's watchdog fired");
    assert_eq!(machine.show("NRestarts"), "1");
    assert_eq!(machine.show("ActiveState"), "active");
}

/// Release B (1.9.0, schema 17), packed and signed with a throwaway key as
/// a release is, offered as `latest` by a registry this test serves on
/// 127.0.0.1 (the container shares the host's network): the registry, the
/// key's public half, and the folder of the packages.
fn registry_offering_b() -> (Registry, String, tempfile::TempDir) {
    let e2e = testkit::builds::e2e_dir();
    fs::create_dir_all(&e2e).unwrap();
    let packs = tempfile::Builder::new()
        .prefix("systemd-packs-")
        .tempdir_in(&e2e)
        .unwrap();
    let key = testkit::builds::generate_key(&packs.path().join("key"));
    let b_bin = testkit::builds::b_bin_dir();
    let started = Instant::now();
    let b = testkit::builds::pack_release(b_bin, &packs.path().join("b"), &key);
    eprintln!(
        "packed B ({}) in {:?}",
        b.manifest.version,
        started.elapsed()
    );
    assert_eq!(b.manifest.version, B_VERSION);
    let registry = Registry::start();
    registry.publish(CLI_PACKAGE, B_VERSION, fs::read(&b.cli_tarball).unwrap());
    registry.publish_with_integrity(
        &platform_package(this_target().unwrap()),
        B_VERSION,
        fs::read(&b.platform_tarball).unwrap(),
        &b.platform_integrity,
    );
    (registry, key.public, packs)
}

/// `sudo -u waiaas … waiaas-launcher upgrade` on the running service, to
/// release B from a registry on loopback, then `upgrade --rollback`, each
/// under load: the launcher replaces itself in place (execve), so systemd
/// sees the same MainPID, no restart, an active unit — and no request fails.
#[test]
fn upgrade_and_rollback_under_load_keep_the_main_pid_and_fail_no_request() {
    let Some(podman) = podman() else { return };
    let (registry, public_key, _packs) = registry_offering_b();
    let machine = Machine::boot(podman, "upgrade");
    machine.follow_registry(&registry, &public_key, "");
    machine.start();
    let a = testkit::builds::a_version();
    let wallet = machine.create_wallet("treasury");
    let pid = machine.main_pid();
    let restarts = machine.show("NRestarts");
    assert_eq!(machine.exe(pid), "/usr/local/bin/waiaas-launcher");
    assert_eq!(machine.health().version, a);

    for (what, args, version, schema, ended) in [
        (
            "upgrade",
            "upgrade --json",
            B_VERSION,
            B_SCHEMA,
            Ended::Upgraded,
        ),
        (
            "rollback",
            "upgrade --rollback --json",
            a,
            A_SCHEMA,
            Ended::Restored,
        ),
    ] {
        let started = Instant::now();
        let (out, tally, probed) = machine.under_load(|| machine.admin(args));
        eprintln!(
            "{what} to {version} under load: the command took {:.1} s; {}",
            started.elapsed().as_secs_f64(),
            figures(&tally, &probed)
        );
        assert!(
            out.status.success(),
            "{what}: {out:?}\n{}",
            machine.journal()
        );
        let report: UpgradeReport = serde_json::from_str(out.stdout.trim())
            .unwrap_or_else(|e| panic!("no JSON report ({e}): {out:?}"));
        assert_eq!(report.outcome, ended, "{report:?}");
        assert_eq!(tally.failed, 0, "requests failed across the {what}");
        assert_eq!(probed.failed, 0, "connections failed across the {what}");
        assert!(tally.sent() > 100, "the load ran: {}", tally.sent());

        // The service: active, the same main process, now running the
        // version's own launcher, and not restarted by systemd.
        assert_eq!(machine.show("ActiveState"), "active");
        assert_eq!(machine.main_pid(), pid, "MainPID after the {what}");
        assert_eq!(
            machine.exe(pid),
            format!("{DATA_DIR}/versions/{version}/waiaas-launcher"),
            "the launcher replaced itself in place"
        );
        assert_eq!(
            machine.show("NRestarts"),
            restarts,
            "systemd restarted nothing"
        );
        let status_line = machine.show("StatusText");
        assert!(status_line.contains(version), "STATUS=: {status_line}");
        let status = machine.status();
        assert_eq!(status.launcher_pid, pid);
        assert_eq!(status.launcher_version, version);
        assert_eq!(status.state, "running", "{status:?}");
        assert_eq!(status.daemon.as_ref().unwrap().version, version);
        let health = machine.health();
        assert_eq!(health.version, version);
        assert_eq!(health.schema_version, schema);
        assert!(machine.wallets().contains(&wallet), "the data is kept");
    }
    assert_eq!(
        machine.ok(&format!("readlink {DATA_DIR}/current")),
        format!("versions/{a}")
    );
}

/// `[update] auto = "minor"` in the service's drop-in, a registry offering B:
/// the service moves to B by itself — the launcher replaces itself in place,
/// so systemd sees the same MainPID and no restart — and its STATUS= line
/// named the pending upgrade on the way.
#[test]
fn an_automatic_upgrade_keeps_the_main_pid() {
    let Some(podman) = podman() else { return };
    let (registry, public_key, _packs) = registry_offering_b();
    let machine = Machine::boot(podman, "auto");
    machine.follow_registry(
        &registry,
        &public_key,
        "WAIAAS_UPDATE_AUTO=minor WAIAAS_UPDATE_CHECK_INTERVAL=5s \
         WAIAAS_UPDATE_MIN_RELEASE_AGE=0s WAIAAS_UPDATE_JITTER=0s",
    );
    machine.start();
    let pid = machine.main_pid();
    let restarts = machine.show("NRestarts");
    let wallet = machine.create_wallet("treasury");
    let mut pending_seen = None;
    let took = machine
        .podman
        .wait("the automatic upgrade to B", WITHIN, || {
            let line = machine.show("StatusText");
            if line.contains(&format!("automatic upgrade to {B_VERSION}")) {
                pending_seen.get_or_insert(line);
            }
            matches!(
                http(machine.port, "GET", "/health", None, None),
                Some((200, body)) if body.contains(&format!("\"version\":\"{B_VERSION}\""))
            )
        });
    eprintln!(
        "on {B_VERSION} {:.1} s after the start; STATUS= said: {pending_seen:?}",
        took.as_secs_f64()
    );
    assert!(
        pending_seen.is_some(),
        "STATUS= never named the pending upgrade:\n{}",
        machine.journal()
    );
    assert_eq!(machine.show("ActiveState"), "active");
    assert_eq!(
        machine.main_pid(),
        pid,
        "MainPID after the automatic upgrade"
    );
    assert_eq!(
        machine.exe(pid),
        format!("{DATA_DIR}/versions/{B_VERSION}/waiaas-launcher"),
        "the launcher replaced itself in place"
    );
    assert_eq!(
        machine.show("NRestarts"),
        restarts,
        "systemd restarted nothing"
    );
    let status = machine.status();
    let attempt = status.auto.as_ref().and_then(|a| a.last_attempt.clone());
    assert!(
        attempt
            .as_ref()
            .is_some_and(|a| a.to == B_VERSION && a.outcome.as_deref() == Some("upgraded")),
        "{:?}",
        status.auto
    );
    assert_eq!(machine.health().schema_version, B_SCHEMA);
    assert!(machine.wallets().contains(&wallet), "the data is kept");
    machine.journal_has(
        "automatic upgrade",
        "the journal names the automatic upgrade",
    );
}
