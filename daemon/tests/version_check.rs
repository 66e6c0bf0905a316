//! The version check as operators meet it (SPEC §4, §8, §10 scenarios 1, 2, 3,
//! 12, 16): real `waiaas-daemon serve` processes against a real HTTP registry
//! on 127.0.0.1. Every wait is bounded; a failing test names what it saw.

use std::time::{Duration, Instant};

use futures_util::future::join_all;
use testkit::daemon::{Daemon, Install};
use testkit::registry::{Behaviour, DIST_TAGS_PATH, Registry, closed_port_url};
use waiaas_shared::health::HealthResponse;
use waiaas_shared::kv;

const READY: Duration = Duration::from_secs(20);
/// How long a check may take to show up (the client gives up after 5 s).
const CHECK_SEEN: Duration = Duration::from_secs(10);
const RUNNING: &str = env!("CARGO_PKG_VERSION");
/// What a failed check writes to the daemon's log, once per failure.
const FAILED_LINE: &str = "version check failed";

/// A config that turns the check on and points it at `registry`.
fn checking(registry: &str) -> String {
    format!("[daemon]\nupdate_check = true\n[update]\nregistry = \"{registry}\"\n")
}

/// An install whose daemon checks against `registry`.
fn install_checking(registry: &str) -> Install {
    let install = Install::new();
    install.write_config(&checking(registry));
    install
}

/// A value of the daemon's key-value store, read as another process would.
fn stored(install: &Install, key: &str) -> Option<String> {
    let conn = rusqlite::Connection::open_with_flags(
        install.dir.database(),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .expect("open the daemon's database read-only");
    kv::get(&conn, key).expect("read key_value_store")
}

/// Polls `/health` until `done` holds for it; panics after `timeout`.
async fn health_until(
    daemon: &Daemon,
    timeout: Duration,
    done: impl Fn(&HealthResponse) -> bool,
) -> HealthResponse {
    let deadline = Instant::now() + timeout;
    loop {
        let health = daemon.health().await;
        if let Ok(h) = &health
            && done(h)
        {
            return h.clone();
        }
        assert!(
            Instant::now() < deadline,
            "not seen in {timeout:?}; last /health: {health:?}\n{}",
            daemon.stderr()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until the daemon's log says a check failed; panics after `timeout`.
async fn failure_logged(daemon: &Daemon, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while !daemon.stderr().contains(FAILED_LINE) {
        assert!(
            Instant::now() < deadline,
            "no `{FAILED_LINE}` within {timeout:?}:\n{}",
            daemon.stderr()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until the registry has received `n` requests; panics after `timeout`.
async fn requests_reach(registry: &Registry, n: usize, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while registry.total_hits() < n {
        assert!(
            Instant::now() < deadline,
            "the registry got no request in {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The running version's next minor: newer than this build whatever it is.
fn next_minor() -> String {
    let v = semver::Version::parse(RUNNING).expect("the build version is semver");
    format!("{}.{}.0", v.major, v.minor + 1)
}

#[tokio::test]
async fn scenario_01_start_queries_registry_and_stores_latest() {
    let registry = Registry::with_dist_tags(Behaviour::latest("1.9.0"));
    let install = install_checking(registry.url());
    let before = waiaas_shared::time::UtcTime::now().unix_seconds();
    let mut daemon = Daemon::start(&install);
    daemon.wait_healthy(READY).await;

    let health = health_until(&daemon, CHECK_SEEN, |h| h.latest_version.is_some()).await;
    assert_eq!(health.latest_version.as_deref(), Some("1.9.0"));

    // One check at start; the next is an interval (≥ 1 h) away.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(registry.total_hits(), 1);
    assert_eq!(registry.connections(), 1);
    assert_eq!(registry.last_path().as_deref(), Some(DIST_TAGS_PATH));
    // Only our version identifies us: no token, id, cookie or query string.
    let expected_agent = format!("waiaas/{RUNNING}");
    assert_eq!(
        registry.last_user_agent().as_deref(),
        Some(expected_agent.as_str())
    );
    for (name, value) in registry.last_headers() {
        assert!(
            matches!(name.as_str(), "host" | "user-agent" | "accept"),
            "unexpected request header {name}: {value}"
        );
    }

    // Plain text in the store, as the launcher's notice reads it.
    assert_eq!(stored(&install, kv::LATEST).as_deref(), Some("1.9.0"));
    let checked_at = stored(&install, kv::CHECKED_AT).expect("checked_at stored");
    let checked_at: u64 = checked_at.parse().expect("checked_at is Unix seconds");
    let now = waiaas_shared::time::UtcTime::now().unix_seconds();
    assert!(
        (before..=now).contains(&checked_at),
        "{before} ≤ {checked_at} ≤ {now}"
    );

    assert!(daemon.stop().success());
}

#[tokio::test]
async fn scenario_02_registry_unreachable_daemon_starts() {
    let install = install_checking(&closed_port_url());
    let mut daemon = Daemon::start(&install);
    let health = daemon.wait_healthy(READY).await;
    assert_eq!(health.latest_version, None);

    failure_logged(&daemon, CHECK_SEEN).await;
    for _ in 0..5 {
        let health = daemon.health().await.expect("/health keeps answering");
        assert_eq!(health.latest_version, None);
        assert!(!health.update_available);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let log = daemon.stderr();
    assert_eq!(log.matches(FAILED_LINE).count(), 1, "{log}");
    assert!(
        log.contains("onnection refused"),
        "the reason is logged:\n{log}"
    );
    assert_eq!(stored(&install, kv::LATEST), None);
    assert!(daemon.stop().success());
}

#[tokio::test]
async fn scenario_03_update_check_false_makes_no_request() {
    let registry = Registry::with_dist_tags(Behaviour::latest("1.9.0"));
    let install = Install::new();
    install.write_config(&format!(
        "[daemon]\nupdate_check = false\n[update]\nregistry = \"{}\"\n",
        registry.url()
    ));
    let mut daemon = Daemon::start(&install);
    daemon.wait_healthy(READY).await;
    tokio::time::sleep(Duration::from_secs(2)).await;

    assert_eq!(
        registry.connections(),
        0,
        "a connection reached the registry"
    );
    assert_eq!(registry.total_hits(), 0);
    let health = daemon.health().await.expect("healthy");
    assert_eq!(health.latest_version, None);
    assert_eq!(stored(&install, kv::LATEST), None);
    assert!(daemon.stop().success());
}

#[tokio::test]
async fn scenario_12_health_reports_update_available() {
    let newer = next_minor();
    let cases = [(newer.as_str(), true), (RUNNING, false)];
    // Both daemons run at once; each case is independent.
    let runs = cases.map(|(latest, expected)| async move {
        let registry = Registry::with_dist_tags(Behaviour::latest(latest));
        let install = install_checking(registry.url());
        let mut daemon = Daemon::start(&install);
        daemon.wait_healthy(READY).await;
        let health = health_until(&daemon, CHECK_SEEN, |h| h.latest_version.is_some()).await;
        assert_eq!(health.latest_version.as_deref(), Some(latest));
        assert_eq!(health.version, RUNNING);
        assert_eq!(
            health.update_available, expected,
            "latest {latest}, running {RUNNING}"
        );
        assert!(daemon.stop().success());
    });
    join_all(runs).await;
}

#[tokio::test]
async fn scenario_16_no_check_yet_latest_version_null() {
    let registry = Registry::with_dist_tags(Behaviour::NeverAnswers);
    let install = install_checking(registry.url());
    let mut daemon = Daemon::start(&install);
    let health = daemon.wait_healthy(READY).await;
    assert_eq!(health.latest_version, None);
    assert!(!health.update_available);

    // With the check now provably in flight (the registry holds it), the
    // daemon still answers, still with nothing known.
    requests_reach(&registry, 1, CHECK_SEEN).await;
    let health = daemon
        .health()
        .await
        .expect("healthy while the check hangs");
    assert_eq!(health.latest_version, None);
    assert!(!health.update_available);
    assert!(daemon.stop().success());
}

#[tokio::test]
async fn bad_registry_answers_never_block_or_crash() {
    let cases = [
        ("garbage", Behaviour::Garbage),
        ("http 500", Behaviour::Status(500)),
        ("slow 10 s", Behaviour::Slow(Duration::from_secs(10))),
        ("never answers", Behaviour::NeverAnswers),
        ("over 1 MiB", Behaviour::TooLarge),
        ("not semver", Behaviour::NotSemver),
        ("prerelease under latest", Behaviour::PrereleaseUnderLatest),
    ];
    // All at once: the two 5 s timeouts overlap instead of adding up.
    let runs = cases.map(|(name, behaviour)| async move {
        let registry = Registry::with_dist_tags(behaviour);
        let install = install_checking(registry.url());
        let mut daemon = Daemon::start(&install);
        daemon.wait_healthy(READY).await;
        failure_logged(&daemon, CHECK_SEEN).await;

        for _ in 0..3 {
            let health = daemon
                .health()
                .await
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(health.latest_version, None, "{name}");
            assert!(!health.update_available, "{name}");
        }
        assert!(
            daemon.wait_exit(Duration::ZERO).is_none(),
            "{name}: the daemon exited"
        );
        assert_eq!(registry.total_hits(), 1, "{name}");
        assert_eq!(
            stored(&install, kv::LATEST),
            None,
            "{name}: latest was stored"
        );
        assert_eq!(stored(&install, kv::CHECKED_AT), None, "{name}");
        let log = daemon.stderr();
        assert_eq!(
            log.matches(FAILED_LINE).count(),
            1,
            "{name}: one warning\n{log}"
        );
        assert!(daemon.stop().success(), "{name}");
    });
    join_all(runs).await;
}

/// Readiness must not wait for the check (SPEC §4). If it did, a registry
/// that never answers would delay `/health` by the check's whole 5 s timeout,
/// on every run. The bound here, 250 ms on the difference of medians, is 20×
/// smaller than that effect and far larger than start-up jitter; medians of
/// alternated runs shrug off a single slow start (a busy CI core) and drift.
/// So the test fails only for the bug, not for a loaded machine.
#[tokio::test]
async fn readiness_does_not_wait_for_registry() {
    const RUNS: usize = 5;
    let registry = Registry::with_dist_tags(Behaviour::NeverAnswers);
    let hanging = install_checking(registry.url());
    let disabled = Install::new();

    let mut with_check = Vec::new();
    let mut without = Vec::new();
    for _ in 0..RUNS {
        with_check.push(time_to_healthy(&hanging, Some(&registry)).await);
        without.push(time_to_healthy(&disabled, None).await);
    }
    // Each checking daemon sent its request (and got no answer); no other did.
    assert_eq!(registry.total_hits(), RUNS);

    let (a, b) = (median(&mut with_check), median(&mut without));
    assert!(
        a.saturating_sub(b) < Duration::from_millis(250),
        "median start-to-healthy {a:?} with a hanging registry vs {b:?} without a check \
         ({with_check:?} vs {without:?})"
    );
}

/// Start to first healthy answer of one daemon, which is then stopped — after
/// its check has reached `registry`, if it checks, so each run really had a
/// hanging check in flight.
async fn time_to_healthy(install: &Install, registry: Option<&Registry>) -> Duration {
    let before = registry.map_or(0, Registry::total_hits);
    let started = Instant::now();
    let mut daemon = Daemon::start(install);
    daemon.wait_healthy(READY).await;
    let elapsed = started.elapsed();
    if let Some(registry) = registry {
        requests_reach(registry, before + 1, CHECK_SEEN).await;
    }
    assert!(daemon.stop().success());
    elapsed
}

fn median(samples: &mut [Duration]) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}
