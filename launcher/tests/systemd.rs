//! packaging/systemd for real: systemd 252 as PID 1 in a podman container
//! (`.ci/container-images`' bookworm rootfs with systemd, run with
//! `--systemd=always --network host`), one container per test, the units
//! and the binaries under test installed with the README's commands. The only
//! local changes are drop-ins, as the README says to make them: a free
//! loopback port per test (the host's network is shared), no version check,
//! and what a test says it shortens (WatchdogSec, and TimeoutStopSec on a
//! cgroup v1 host). Each test prints its figures (start to active, kill to
//! healthy, failed requests) with `--nocapture`. Skipped, saying why, without
//! the tier's prerequisites — never in CI (`support/podman.rs`).
mod support;

#[path = "support/builds.rs"]
mod builds;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use support::podman::{Cleanup, Podman, SYSTEMD_IMAGE, podman};
use support::{LAUNCHER, Outcome, daemon_binary, free_port, http};

/// systemd's boot in the container, and a service's start or restart.
const WITHIN: Duration = Duration::from_secs(60);
/// `RestartSec=` as shipped.
const RESTART_SEC: Duration = Duration::from_secs(5);

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

        for program in [Path::new(LAUNCHER), &daemon_binary()] {
            let to = format!(
                "{}:/root/{}",
                machine.name,
                program.file_name().unwrap().to_str().unwrap()
            );
            machine.podman.ok(&["cp", program.to_str().unwrap(), &to]);
        }
        let units = builds::repo_root().join("packaging/systemd");
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
        std::thread::sleep(RESTART_SEC * 2);
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
}

/// Requests to `/health` on one thread until stopped: (sent, failed).
struct Load {
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicUsize>,
    failed: Arc<AtomicUsize>,
    thread: Option<JoinHandle<()>>,
}

impl Load {
    fn start(port: u16) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicUsize::new(0));
        let failed = Arc::new(AtomicUsize::new(0));
        let thread = {
            let (stop, sent, failed) = (stop.clone(), sent.clone(), failed.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    sent.fetch_add(1, Ordering::Relaxed);
                    if !matches!(http(port, "GET", "/health", None, None), Some((200, _))) {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        };
        Self {
            stop,
            sent,
            failed,
            thread: Some(thread),
        }
    }

    /// Stops the load: (sent, failed).
    fn finish(mut self) -> (usize, usize) {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take().unwrap().join().unwrap();
        (
            self.sent.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
        )
    }
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

    // The hardening holds from inside: in the launcher's mount namespace the
    // system is read-only and the data dir writable. (nsenter needs the
    // capabilities a plain `podman exec` lacks.)
    let pid = machine.main_pid().to_string();
    let touch = |path: &str| {
        machine.podman.run(&[
            "exec",
            "--privileged",
            &machine.name,
            "nsenter",
            "--target",
            &pid,
            "--mount",
            "touch",
            path,
        ])
    };
    let refused = touch("/usr/local/bin/x");
    assert!(
        !refused.status.success() && refused.stderr.contains("Read-only file system"),
        "ProtectSystem=strict refuses a write outside the data dir: {refused:?}"
    );
    let written = touch("/var/lib/waiaas/x");
    assert!(
        written.status.success(),
        "the data dir is writable: {written:?}"
    );
    // Which options the container made systemd skip, for the record.
    let journal = machine.journal();
    for line in journal
        .lines()
        .filter(|l| l.contains("ignoring") || l.contains("not supported"))
    {
        eprintln!("skipped in this container: {line}");
    }
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
    machine.ok(&format!("kill -9 {launcher}"));
    let killed = Instant::now();
    machine
        .podman
        .wait("the API down", WITHIN, || !machine.healthy());
    machine.wait_new_launcher(launcher);
    machine.wait_healthy();
    let down = killed.elapsed();
    eprintln!("launcher kill -9 to healthy (RestartSec as shipped): {down:?}");
    assert!(
        down >= RESTART_SEC,
        "RestartSec={RESTART_SEC:?} applies: {down:?}"
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
    let b = builds::b_bin_dir().join("waiaas-daemon");
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
    let load = Load::start(machine.port);
    std::thread::sleep(Duration::from_millis(500));
    machine.ok("systemctl reload waiaas.service");
    machine.wait_new_daemon(daemon);
    std::thread::sleep(Duration::from_millis(500));
    let (sent, failed) = load.finish();
    eprintln!("reload: {sent} requests, {failed} failed");
    assert!(sent > 100, "the load ran: {sent}");
    assert_eq!(failed, 0, "no request failed across the reload");
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
    let load = Load::start(machine.port);
    std::thread::sleep(Duration::from_millis(500));
    let took = Instant::now();
    machine.ok("systemctl restart waiaas.service");
    eprintln!("systemctl restart with the socket: {:?}", took.elapsed());
    std::thread::sleep(Duration::from_millis(500));
    let (sent, failed) = load.finish();
    eprintln!("restart with waiaas.socket: {sent} requests, {failed} failed");
    assert_eq!(failed, 0, "no request failed across the restart");

    // The launcher killed: connections wait in the socket's backlog.
    let launcher = machine.main_pid();
    let load = Load::start(machine.port);
    machine.ok(&format!("kill -9 {launcher}"));
    let killed = Instant::now();
    machine.wait_new_launcher(launcher);
    machine.wait_healthy();
    let (sent, failed) = load.finish();
    eprintln!(
        "launcher kill -9 to healthy with waiaas.socket: {:?}; {sent} requests, {failed} failed",
        killed.elapsed()
    );
}

#[test]
fn restart_without_the_socket_unit_drops_requests() {
    let Some(machine) = Machine::started("no-socket") else {
        return;
    };
    let load = Load::start(machine.port);
    std::thread::sleep(Duration::from_millis(500));
    machine.ok("systemctl restart waiaas.service");
    std::thread::sleep(Duration::from_millis(500));
    let (sent, failed) = load.finish();
    // A figure, not a requirement: the listener goes with the launcher.
    eprintln!("restart without waiaas.socket: {sent} requests, {failed} failed");
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
