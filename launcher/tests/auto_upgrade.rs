//! Automatic upgrades end to end (SPEC §13, `[update] auto`): real builds
//! packed and signed like releases (A = this build, B = 1.9.0, a bad C =
//! 1.9.1 whose daemon fails at start, D = 1.10.0; see `testkit/src/builds.rs`),
//! published one after another on a real HTTP registry on 127.0.0.1, while
//! 32 clients use the service — 31 reading, one writing — and a receiver on
//! 127.0.0.1 takes the `notify_url` events. Nobody types `upgrade`.

use std::collections::BTreeSet;
use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use testkit::builds::{B_VERSION, C_VERSION, D_VERSION, E_VERSION, Fault, Key, pack_release};
use testkit::fleetlock::FleetLockServer;
use testkit::load::{Load, Writer};
use testkit::registry::Registry;
use testkit::supervisor::{LogFile, Supervisor};
use testkit::{free_port, hermetic, launcher_binary, run};
use waiaas_packaging::Packed;
use waiaas_shared::admin::Status;
use waiaas_shared::layout::DataDir;
use waiaas_shared::release::{CLI_PACKAGE, platform_package, this_target};

/// A receiver of `notify_url` POSTs: every body, in order.
struct Receiver {
    url: String,
    bodies: Arc<Mutex<Vec<serde_json::Value>>>,
}

impl Receiver {
    fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/events", listener.local_addr().unwrap());
        let bodies = Arc::new(Mutex::new(Vec::new()));
        let store = bodies.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
                let mut reader = BufReader::new(&stream);
                let mut length = 0usize;
                let mut line = String::new();
                while reader.read_line(&mut line).is_ok_and(|n| n > 0) && line != "\r\n" {
                    if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                        length = v.trim().parse().unwrap_or(0);
                    }
                    line.clear();
                }
                let mut body = vec![0; length];
                if reader.read_exact(&mut body).is_ok()
                    && let Ok(json) = serde_json::from_slice(&body)
                {
                    store.lock().unwrap().push(json);
                }
                let _ =
                    (&stream).write_all(b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n");
            }
        });
        Self { url, bodies }
    }

    fn events(&self) -> Vec<serde_json::Value> {
        self.bodies.lock().unwrap().clone()
    }

    /// Events about `to`, as `event` names.
    fn about(&self, to: &str) -> Vec<String> {
        self.events()
            .iter()
            .filter(|e| e["to"] == to)
            .map(|e| e["event"].as_str().unwrap_or_default().to_string())
            .collect()
    }
}

/// Every release of the scenario, packed once with one throwaway key.
struct Releases {
    key: Key,
    a_bin: PathBuf,
    a: Packed,
    b: Packed,
    c: Packed,
    d: Packed,
    e: Packed,
}

fn pack_all(dir: &Path) -> Releases {
    let key = testkit::builds::generate_key(&dir.join("key"));
    let a_bin = testkit::builds::copy_bin_dir(&testkit::builds::a_bin_dir(), &dir.join("a-bin"));
    let a = pack_release(&a_bin, &dir.join("a"), &key);
    let b = pack_release(testkit::builds::b_bin_dir(), &dir.join("b"), &key);
    let c_bin =
        testkit::builds::wrapped_release_dir_as(&dir.join("c-bin"), Fault::Crash, C_VERSION);
    let c = pack_release(&c_bin, &dir.join("c"), &key);
    let d = pack_release(
        testkit::builds::release_bin_dir(D_VERSION),
        &dir.join("d"),
        &key,
    );
    let e = pack_release(
        testkit::builds::release_bin_dir(E_VERSION),
        &dir.join("e"),
        &key,
    );
    for (name, contents) in testkit::builds::release_files(&a) {
        fs::write(a_bin.join(name), contents).unwrap();
    }
    assert_eq!(c.manifest.version, C_VERSION);
    assert_eq!(d.manifest.version, D_VERSION);
    Releases {
        key,
        a_bin,
        a,
        b,
        c,
        d,
        e,
    }
}

fn publish(registry: &Registry, packed: &Packed) {
    let version = &packed.manifest.version;
    registry.publish(CLI_PACKAGE, version, fs::read(&packed.cli_tarball).unwrap());
    registry.publish_with_integrity(
        &platform_package(this_target().unwrap()),
        version,
        fs::read(&packed.platform_tarball).unwrap(),
        &packed.platform_integrity,
    );
    registry.set_tag(CLI_PACKAGE, "latest", version);
}

fn platform_tarball_hits(registry: &Registry, version: &str) -> usize {
    let name = platform_package(this_target().unwrap());
    registry.hits(&Registry::tarball_path(&name, version))
}

/// An installation of A configured for `registry`; derefs to the installation.
struct Site {
    _tmp: tempfile::TempDir,
    site: testkit::Site,
}

impl Deref for Site {
    type Target = testkit::Site;

    fn deref(&self) -> &testkit::Site {
        &self.site
    }
}

impl Site {
    /// A's real `init`, then `config` appended to a config for `registry`.
    fn new(r: &Releases, registry: &Registry, update: &str) -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let home = tmp.path().to_path_buf();
        let dir = DataDir::new(home.join("waiaas"));
        testkit::init_from(&r.a_bin, &home, &dir);
        let port = free_port();
        let config = format!(
            "[daemon]\nport = {port}\nhostname = \"127.0.0.1\"\nupdate_check = false\n\
             shutdown_timeout = 10\n\n[update]\nregistry = \"{}\"\ntrusted_keys = [\"{}\"]\n{update}",
            registry.url(),
            r.key.public,
        );
        fs::write(dir.config(), config).unwrap();
        Self {
            _tmp: tmp,
            site: testkit::Site::new(home, dir, port),
        }
    }

    fn supervisor(&self, n: usize) -> Supervisor {
        let log = self.home.join(format!("launcher-{n}.stderr"));
        let mut s = Supervisor::spawn(
            self.launcher(&["run"]),
            log,
            self.dir.launcher_socket(),
            LogFile::Fresh,
        )
        .with_healthy_within(Duration::from_secs(60));
        s.wait_healthy();
        s
    }

    /// Made by the supervisor's start when automatic upgrades are on.
    fn install_id(&self) -> String {
        fs::read_to_string(self.dir.install_id())
            .unwrap()
            .trim()
            .to_string()
    }

    fn health_version(&self) -> Option<String> {
        self.health().map(|health| health.version)
    }

    /// Every acknowledged write is in the database.
    fn assert_kept(&self, acknowledged: &[String]) {
        let stored = self.stored_names();
        let lost: Vec<&String> = acknowledged
            .iter()
            .filter(|n| !stored.contains(*n))
            .collect();
        assert!(
            lost.is_empty(),
            "{} acknowledged writes lost: {lost:?}",
            lost.len()
        );
    }

    fn stored_names(&self) -> BTreeSet<String> {
        let db = rusqlite::Connection::open_with_flags(
            self.dir.database(),
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
        )
        .unwrap();
        let mut stmt = db.prepare("SELECT name FROM wallets").unwrap();
        stmt.query_map([], |row| row.get::<_, String>(0))
            .unwrap()
            .map(Result::unwrap)
            .collect()
    }
}

/// Waits (bounded) until `version` answers `/health`, noticing the
/// supervisor's death; returns how long it took.
fn wait_serving(
    site: &Site,
    supervisor: &mut Supervisor,
    version: &str,
    within: Duration,
) -> Duration {
    let started = Instant::now();
    loop {
        if site.health_version().as_deref() == Some(version) {
            return started.elapsed();
        }
        supervisor.assert_alive(&format!("waiting for {version}"));
        assert!(
            started.elapsed() < within,
            "{version} was not serving within {within:?}:\n{}",
            supervisor.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// 31 readers and one writer (10 writes/s, below the default busy
/// threshold of 20 writes/s): 32 clients.
struct Clients {
    load: Load,
    writer: Writer,
}

impl Clients {
    fn start(site: &Site, prefix: &str) -> Self {
        Self::with_readers(site, prefix, 31, Duration::from_secs(300))
    }

    fn with_readers(site: &Site, prefix: &str, readers: usize, deadline: Duration) -> Self {
        let url = format!("http://127.0.0.1:{}/health", site.port);
        Self {
            load: Load::start(&url, readers, Duration::from_secs(30), deadline),
            writer: Writer::paced(site.port, &site.token(), prefix, Some(10)),
        }
    }

    /// Stops them: no request failed, and every acknowledged write is stored.
    fn finish_keeping_everything(self, site: &Site) {
        let written = self.writer.stop();
        let tally = self.load.finish();
        site.assert_kept(&written.acknowledged);
        // The load ran (a phase lasts as long as the launcher takes, at 10
        // writes/s: a second at least), so "all kept" says something.
        assert!(
            written.acknowledged.len() >= 10,
            "the writer wrote: {}",
            written.acknowledged.len()
        );
        assert_eq!(written.refused, 0, "writes refused");
        assert_eq!(tally.failed, 0, "failed reads: {:?}", tally.errors);
        eprintln!(
            "{} writes acknowledged and kept, {} reads, 0 failed, longest write wait {:.3} s",
            written.acknowledged.len(),
            tally.latencies.len(),
            written.longest_wait.as_secs_f64()
        );
    }
}

fn auto_status(supervisor: &Supervisor) -> waiaas_shared::admin::AutoStatus {
    let status: Status = supervisor.status().expect("status");
    *status.auto.expect("status names the automatic upgrades")
}

#[test]
fn an_installation_upgrades_itself_quarantines_a_bad_release_and_takes_the_next_good_one() {
    let packs = tempfile::tempdir().unwrap();
    let r = pack_all(packs.path());
    let registry = Registry::start();
    publish(&registry, &r.a);
    let receiver = Receiver::start();
    let site = Site::new(
        &r,
        &registry,
        &format!(
            "auto = \"minor\"\ncheck_interval = \"5s\"\nmin_release_age = \"0s\"\n\
             window = \"always\"\njitter = \"0s\"\nnotify_url = \"{}\"\n",
            receiver.url
        ),
    );
    let mut supervisor = site.supervisor(0);
    let pid = supervisor.pid();
    let clients = Clients::start(&site, "before");

    // B: applied by itself, in place.
    publish(&registry, &r.b);
    let took = wait_serving(&site, &mut supervisor, B_VERSION, Duration::from_secs(20));
    eprintln!(
        "on {B_VERSION} {:.1} s after it was published",
        took.as_secs_f64()
    );
    assert_eq!(supervisor.pid(), pid, "the same supervisor process");
    let backups: Vec<String> = fs::read_dir(site.dir.backups())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    let pre_upgrade = format!("pre-upgrade-{}-", testkit::builds::a_version());
    assert!(
        backups.iter().any(|b| b.starts_with(&pre_upgrade)),
        "a pre-upgrade backup: {backups:?}"
    );
    let status = supervisor.wait_for(Duration::from_secs(10), "the attempt recorded", |s| {
        s.auto
            .as_ref()
            .and_then(|a| a.last_attempt.as_ref())
            .is_some_and(|a| a.to == B_VERSION && a.outcome.as_deref() == Some("upgraded"))
    });
    eprintln!("status after B: {:?}", status.auto);

    // C: tried once, rolled back, quarantined.
    publish(&registry, &r.c);
    supervisor.wait_for(
        Duration::from_secs(60),
        "C rolled back and quarantined",
        |s| {
            s.auto.as_ref().is_some_and(|a| {
                a.quarantined.iter().any(|q| q.version == C_VERSION)
                    && a.last_attempt
                        .as_ref()
                        .is_some_and(|t| t.to == C_VERSION && t.outcome.is_some())
            })
        },
    );
    let attempt = auto_status(&supervisor).last_attempt.unwrap();
    assert_eq!(
        attempt.outcome.as_deref(),
        Some("rolled-back"),
        "{attempt:?}"
    );
    assert_eq!(site.health_version().as_deref(), Some(B_VERSION));
    assert_eq!(supervisor.pid(), pid, "the same supervisor process");
    clients.finish_keeping_everything(&site);
    let c_downloads = platform_tarball_hits(&registry, C_VERSION);

    // A minute on (twelve checks), across a kill -9 and a new `run`: never
    // tried again.
    let watch = Instant::now();
    let ticks = || testkit::bench::cpu_ticks(supervisor.pid());
    let before = ticks();
    std::thread::sleep(Duration::from_secs(30));
    // Waiting for the next check costs nothing: a loop that spins would
    // burn most of a core here.
    let cpu = (ticks() - before) as f64 / testkit::bench::clock_ticks_per_second() as f64;
    eprintln!("the supervisor's CPU over 30 s of waiting: {cpu:.2} s");
    assert!(
        cpu < 3.0,
        "the supervisor used {cpu:.1} s of CPU in 30 s of waiting"
    );
    supervisor.kill9();
    let mut supervisor = site.supervisor(1);
    while watch.elapsed() < Duration::from_secs(60) {
        supervisor.assert_alive("watching C stay quarantined");
        assert!(
            !site.dir.upgrade_journal().exists(),
            "an upgrade started:\n{}",
            supervisor.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(
        platform_tarball_hits(&registry, C_VERSION),
        c_downloads,
        "C was fetched again after its quarantine"
    );
    let a = auto_status(&supervisor);
    assert!(
        a.quarantined.iter().any(|q| q.version == C_VERSION),
        "{a:?}"
    );
    assert_eq!(site.health_version().as_deref(), Some(B_VERSION));
    let starts = |log: &str| log.matches(&format!("→ {C_VERSION} starts")).count();
    let logs: String = (0..2)
        .map(|n| {
            fs::read_to_string(site.home.join(format!("launcher-{n}.stderr"))).unwrap_or_default()
        })
        .collect();
    assert_eq!(starts(&logs), 1, "C was started exactly once:\n{logs}");

    // D: applied.
    let clients = Clients::start(&site, "after");
    publish(&registry, &r.d);
    let took = wait_serving(&site, &mut supervisor, D_VERSION, Duration::from_secs(20));
    eprintln!(
        "on {D_VERSION} {:.1} s after it was published",
        took.as_secs_f64()
    );
    clients.finish_keeping_everything(&site);

    // The receiver heard each outcome once; the bad release exactly once.
    let deadline = Instant::now() + Duration::from_secs(10);
    while receiver.about(D_VERSION).is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(receiver.about(B_VERSION), ["upgraded"]);
    assert_eq!(receiver.about(C_VERSION), ["rolled-back"]);
    assert_eq!(receiver.about(D_VERSION), ["upgraded"]);
    let events = receiver.events();
    let c_event = events.iter().find(|e| e["to"] == C_VERSION).unwrap();
    assert_eq!(c_event["quarantined"], true);
    assert_eq!(c_event["from"], B_VERSION);
    drop(supervisor);
}

#[test]
fn with_auto_off_the_launcher_asks_the_registry_nothing() {
    let packs = tempfile::tempdir().unwrap();
    let r = pack_all(packs.path());
    let registry = Registry::start();
    publish(&registry, &r.a);
    publish(&registry, &r.b);
    // The daemon's own version check stays on: the one request expected.
    let site = Site::new(&r, &registry, "check_interval = \"5s\"\n");
    let config = fs::read_to_string(site.dir.config())
        .unwrap()
        .replace("update_check = false", "update_check = true");
    fs::write(site.dir.config(), config).unwrap();
    let mut supervisor = site.supervisor(0);
    std::thread::sleep(Duration::from_secs(12));
    supervisor.assert_alive("idle with auto off");
    let dist_tags = format!("/-/package/{CLI_PACKAGE}/dist-tags");
    assert_eq!(
        (registry.total_hits(), registry.hits(&dist_tags)),
        (1, 1),
        "only the daemon's version check asked the registry, once:\n{}",
        supervisor.log()
    );
    assert_eq!(
        site.health_version().as_deref(),
        Some(testkit::builds::a_version())
    );
    let status = auto_status(&supervisor);
    assert_eq!(status.policy, "off");
    assert!(status.next_check.is_none());
}

#[test]
fn a_container_refuses_automatic_upgrades_at_start() {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path();
    let out = run(hermetic(Command::new(launcher_binary()), home)
        .args(["run", "--data-dir"])
        .arg(home.join("waiaas"))
        .env("WAIAAS_CONTAINER", "1")
        .env("WAIAAS_UPDATE_AUTO", "minor"));
    assert_eq!(
        out.status.code(),
        Some(i32::from(waiaas_shared::exit::daemon::CONFIG_INVALID as u8)),
        "{out:?}"
    );
    assert!(out.stderr.contains("auto = \"minor\""), "{}", out.stderr);
    assert!(out.stderr.contains("image"), "{}", out.stderr);
}

/// When each version first answered `/health` on a site, polled every
/// 100 ms until stopped.
struct Versions {
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<Vec<(Instant, String)>>,
}

impl Versions {
    fn watch(port: u16) -> Self {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut seen: Vec<(Instant, String)> = Vec::new();
            // Bounded: the test ends long before.
            let until = Instant::now() + Duration::from_secs(900);
            while !flag.load(std::sync::atomic::Ordering::Relaxed) && Instant::now() < until {
                let version = testkit::http(port, "GET", "/health", None, None)
                    .filter(|(status, _)| *status == 200)
                    .and_then(|(_, body)| serde_json::from_str::<serde_json::Value>(&body).ok())
                    .and_then(|h| h["version"].as_str().map(str::to_string));
                if let Some(version) = version
                    && seen.last().is_none_or(|(_, v)| *v != version)
                {
                    seen.push((Instant::now(), version));
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            seen
        });
        Self { stop, thread }
    }

    fn finish(self) -> Vec<(Instant, String)> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.thread.join().unwrap()
    }
}

/// The policy of the fleet tests: every release due at once, checked every
/// 5 s, through the fleet lock at `url`; `more` adds keys.
fn fleet_policy(url: &str, more: &str) -> String {
    format!(
        "auto = \"minor\"\ncheck_interval = \"5s\"\nmin_release_age = \"0s\"\n\
         window = \"always\"\njitter = \"0s\"\nbusy_write_rate = 0\nfleet_lock = \"{url}\"\n{more}"
    )
}

/// Releases packed, and a registry offering A.
struct Published {
    _packs: tempfile::TempDir,
    r: Releases,
    registry: Registry,
}

fn published_a() -> Published {
    let packs = tempfile::tempdir().unwrap();
    let r = pack_all(packs.path());
    let registry = Registry::start();
    publish(&registry, &r.a);
    Published {
        _packs: packs,
        r,
        registry,
    }
}

/// One installation of A in the fleet of `lock` (group "default", settle
/// 1 s), supervised: with its install id.
fn one_node(
    r: &Releases,
    registry: &Registry,
    lock: &FleetLockServer,
) -> (Site, Supervisor, String) {
    let site = Site::new(
        r,
        registry,
        &fleet_policy(&lock.url, "fleet_settle = \"1s\"\n"),
    );
    let supervisor = site.supervisor(0);
    let id = site.install_id();
    (site, supervisor, id)
}

/// Waits (bounded) until nobody holds `group`'s slot.
fn wait_slot_free(lock: &FleetLockServer, group: &str, supervisor: &Supervisor) {
    let started = Instant::now();
    while lock.holder(group).is_some() {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the slot was never given back:\n{}",
            supervisor.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_fleet_upgrades_one_node_at_a_time_and_a_bad_release_stops_at_one_node() {
    let Published { r, registry, .. } = &published_a();
    let lock = FleetLockServer::start();
    let policy = fleet_policy(
        &lock.url,
        "fleet_group = \"tenants\"\nfleet_settle = \"2s\"\n",
    );
    let sites: Vec<Site> = (0..3).map(|_| Site::new(r, registry, &policy)).collect();
    let mut supervisors: Vec<Supervisor> = sites.iter().map(|s| s.supervisor(0)).collect();
    let ids: Vec<String> = sites.iter().map(Site::install_id).collect();
    let watches: Vec<Versions> = sites.iter().map(|s| Versions::watch(s.port)).collect();
    let clients: Vec<Clients> = sites
        .iter()
        .enumerate()
        .map(|(n, s)| Clients::with_readers(s, &format!("node{n}-"), 3, Duration::from_secs(600)))
        .collect();
    let all_on = |supervisors: &mut [Supervisor], version: &str, within: Duration| {
        let started = Instant::now();
        for (site, supervisor) in sites.iter().zip(supervisors.iter_mut()) {
            let left = within.saturating_sub(started.elapsed());
            wait_serving(site, supervisor, version, left);
        }
        eprintln!(
            "all three on {version} {:.1} s after it was published",
            started.elapsed().as_secs_f64()
        );
    };

    // B: every node, one after another.
    publish(registry, &r.b);
    all_on(&mut supervisors, B_VERSION, Duration::from_secs(120));

    // C: one node tries it, rolls back, and keeps the slot; the fleet stops.
    publish(registry, &r.c);
    let started = Instant::now();
    let bad = loop {
        let bad = supervisors.iter().position(|s| {
            s.status()
                .and_then(|s| s.auto)
                .is_some_and(|a| a.quarantined.iter().any(|q| q.version == C_VERSION))
        });
        if let Some(bad) = bad {
            break bad;
        }
        for s in supervisors.iter_mut() {
            s.assert_alive("waiting for C's rollback");
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "no node tried C within 60 s"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    publish(registry, &r.d);
    // Long enough for every other node to look twice and ask for a slot.
    std::thread::sleep(Duration::from_secs(15));
    assert_eq!(lock.holder("tenants").as_deref(), Some(ids[bad].as_str()));
    for (n, (site, supervisor)) in sites.iter().zip(&supervisors).enumerate() {
        assert_eq!(
            site.health_version().as_deref(),
            Some(B_VERSION),
            "node {n} stays on B while the fleet is stopped"
        );
        let auto = auto_status(supervisor);
        if n == bad {
            let fleet = auto.fleet.clone().unwrap_or_default();
            assert!(
                fleet.contains("holding the fleet slot") && fleet.contains(C_VERSION),
                "the bad node says it holds the slot: {auto:?}"
            );
        } else {
            let waiting = auto.waiting.clone().unwrap_or_default();
            assert!(
                waiting.starts_with("fleet lock:") && waiting.contains(&ids[bad]),
                "node {n} says it waits for the slot the bad node holds: {auto:?}"
            );
            assert!(auto.quarantined.is_empty(), "{auto:?}");
            assert!(
                auto.last_attempt
                    .as_ref()
                    .is_some_and(|a| a.to == B_VERSION),
                "node {n} never started C: {auto:?}"
            );
            let log = fs::read_to_string(site.home.join("launcher-0.stderr")).unwrap();
            assert!(!log.contains(&format!("→ {C_VERSION} starts")), "{log}");
        }
    }
    eprintln!(
        "status of a waiting node: {:?}",
        auto_status(&supervisors[(bad + 1) % 3]).waiting
    );

    // An operator acts: D (published) is the fix; the bad node gives the slot back.
    let out = run(&mut sites[bad].launcher(&["upgrade", "--fleet-release"]));
    assert!(out.status.success(), "{out:?}");
    assert!(out.stdout.contains("Gave back"), "{}", out.stdout);
    all_on(&mut supervisors, D_VERSION, Duration::from_secs(120));
    publish(registry, &r.e);
    all_on(&mut supervisors, E_VERSION, Duration::from_secs(120));
    // The last node's slot goes back after its settle time.
    wait_slot_free(&lock, "tenants", &supervisors[0]);

    for (site, clients) in sites.iter().zip(clients) {
        clients.finish_keeping_everything(site);
    }
    let seen: Vec<Vec<(Instant, String)>> = watches.into_iter().map(Versions::finish).collect();

    // Ten automatic upgrades (B ×3, C ×1, D ×3, E ×3), one slot at a time.
    let holds = lock.holds();
    assert_eq!(holds.len(), 10, "{holds:#?}");
    for pair in holds.windows(2) {
        let given_back = pair[0].given_back.expect("every slot came back");
        assert!(
            given_back <= pair[1].taken,
            "two nodes held a slot at once: {pair:#?}"
        );
    }
    // Every switch a node's clients saw happened while that node held a slot.
    for (n, switches) in seen.iter().enumerate() {
        let versions: Vec<&str> = switches.iter().map(|(_, v)| v.as_str()).collect();
        assert_eq!(
            versions,
            [
                testkit::builds::a_version(),
                B_VERSION,
                D_VERSION,
                E_VERSION
            ],
            "node {n}"
        );
        for (at, version) in &switches[1..] {
            assert!(
                holds.iter().any(|h| h.id == ids[n]
                    && h.taken <= *at
                    && h.given_back.is_none_or(|back| *at <= back)),
                "node {n} switched to {version} outside its slots"
            );
        }
    }
    eprintln!(
        "10 upgrades through one slot; {} refusals answered to waiting nodes",
        lock.refusals()
    );
}

#[test]
fn a_fleet_lock_out_of_reach_defers_the_upgrade_and_the_supervisor_keeps_answering() {
    let Published { r, registry, .. } = &published_a();
    publish(registry, &r.b);
    // Nothing listens there yet.
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let site = Site::new(r, registry, &fleet_policy(&url, "fleet_settle = \"1s\"\n"));
    let mut supervisor = site.supervisor(0);
    let status = supervisor.wait_for(Duration::from_secs(30), "the lock out of reach", |s| {
        s.auto
            .as_ref()
            .and_then(|a| a.waiting.as_deref())
            .is_some_and(|w| w.contains("cannot be reached"))
    });
    eprintln!("waiting: {:?}", status.auto.and_then(|a| a.waiting));
    // Deferred, not stuck: the supervisor answers at once and serves A.
    for _ in 0..5 {
        let asked = Instant::now();
        supervisor.status().expect("status");
        assert!(
            asked.elapsed() < Duration::from_secs(2),
            "{:?}",
            asked.elapsed()
        );
        std::thread::sleep(Duration::from_secs(1));
    }
    assert_eq!(
        site.health_version().as_deref(),
        Some(testkit::builds::a_version())
    );
    assert!(!site.dir.upgrade_journal().exists());

    let lock = FleetLockServer::start_on(port);
    let took = wait_serving(&site, &mut supervisor, B_VERSION, Duration::from_secs(60));
    eprintln!(
        "on {B_VERSION} {:.1} s after the lock came up",
        took.as_secs_f64()
    );
    wait_slot_free(&lock, "default", &supervisor);
    assert_eq!(lock.holds().len(), 1);
    // The lock frees the slot when the give-back reaches it, a moment before
    // the launcher, answered, says so in its status.
    supervisor.wait_for(Duration::from_secs(10), "no slot held in the status", |s| {
        s.auto
            .as_ref()
            .and_then(|a| a.fleet.as_deref())
            .is_some_and(|fleet| fleet.contains("no slot held"))
    });
}

#[test]
fn a_launcher_killed_while_the_lock_grants_its_slot_gives_it_back_at_the_next_start() {
    let Published { r, registry, .. } = &published_a();
    let lock = FleetLockServer::start();
    let (site, mut supervisor, id) = one_node(r, registry, &lock);
    let clients = Clients::with_readers(&site, "kill", 3, Duration::from_secs(300));
    // The server grants the slot, then holds its answer back: the launcher
    // dies with a slot it never heard of.
    lock.delay_grants(Duration::from_secs(30));
    publish(registry, &r.b);
    let started = Instant::now();
    while lock.holder("default").as_deref() != Some(id.as_str()) {
        supervisor.assert_alive("waiting for the grant");
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "no slot asked for"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // The listening socket dies with the launcher (without systemd's
    // socket activation): the clients stop first.
    clients.finish_keeping_everything(&site);
    supervisor.kill9();
    lock.delay_grants(Duration::ZERO);

    // The next start gives it back, then asks again and upgrades.
    let mut supervisor = site.supervisor(1);
    assert_eq!(
        site.health_version().as_deref(),
        Some(testkit::builds::a_version())
    );
    let clients = Clients::with_readers(&site, "again", 3, Duration::from_secs(300));
    wait_serving(&site, &mut supervisor, B_VERSION, Duration::from_secs(60));
    wait_slot_free(&lock, "default", &supervisor);
    let holds = lock.holds();
    assert_eq!(
        holds.len(),
        2,
        "the lost grant, then the upgrade's: {holds:#?}"
    );
    assert!(
        holds[0]
            .given_back
            .is_some_and(|back| back <= holds[1].taken),
        "given back before the next ask: {holds:#?}"
    );
    assert!(holds[1].given_back.is_some());
    let auto = auto_status(&supervisor);
    assert!(auto.quarantined.is_empty(), "nothing had started: {auto:?}");
    clients.finish_keeping_everything(&site);
}

#[test]
fn a_launcher_killed_during_its_automatic_upgrade_keeps_the_fleet_slot_after_the_rollback() {
    let Published { r, registry, .. } = &published_a();
    let lock = FleetLockServer::start();
    let (site, mut supervisor, id) = one_node(r, registry, &lock);
    let writer = Writer::paced(site.port, &site.token(), "before", Some(20));
    publish(registry, &r.b);
    // Killed once the change has begun (its journal is written).
    let started = Instant::now();
    while !site.dir.upgrade_journal().exists() {
        supervisor.assert_alive("waiting for the automatic upgrade to begin");
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "no upgrade began"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    supervisor.kill9();
    let written = writer.stop();

    // The next start rolls the change back, quarantines B, and keeps the slot.
    let mut supervisor = site.supervisor(1);
    let status = supervisor.wait_for(Duration::from_secs(30), "the slot held", |s| {
        s.auto
            .as_ref()
            .and_then(|a| a.fleet.as_deref())
            .is_some_and(|f| f.contains("holding the fleet slot") && f.contains("interrupted"))
    });
    let auto = status.auto.unwrap();
    assert!(
        auto.quarantined.iter().any(|q| q.version == B_VERSION),
        "{auto:?}"
    );
    assert_eq!(lock.holder("default").as_deref(), Some(id.as_str()));
    assert_eq!(
        site.health_version().as_deref(),
        Some(testkit::builds::a_version())
    );
    site.assert_kept(&written.acknowledged);
    eprintln!(
        "{} writes acknowledged before the kill, all kept",
        written.acknowledged.len()
    );

    // The operator gives the slot back; B stays quarantined here.
    let out = run(&mut site.launcher(&["upgrade", "--fleet-release"]));
    assert!(out.status.success(), "{out:?}");
    assert!(out.stdout.contains("stays quarantined"), "{}", out.stdout);
    assert_eq!(lock.holder("default"), None);
    std::thread::sleep(Duration::from_secs(12));
    assert_eq!(lock.holds().len(), 1, "B is never asked for again");
    assert_eq!(
        site.health_version().as_deref(),
        Some(testkit::builds::a_version())
    );
    let fleet = auto_status(&supervisor).fleet.unwrap_or_default();
    assert!(fleet.contains("no slot held"), "{fleet}");
}
