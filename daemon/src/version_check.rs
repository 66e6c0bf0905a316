//! The version-check worker (SPEC §4): asks the registry which version the
//! configured dist-tag names, once right after the daemon is ready and then
//! every `update_check_interval`, and stores the answer in `key_value_store`
//! for `/health` and the launcher's CLI notice. It is fail-soft: whatever goes
//! wrong is one warning, and nothing stored changes.

use std::error::Error;
use std::future::Future;
use std::time::Duration;

use semver::Version;
use tokio::time::MissedTickBehavior;
use waiaas_shared::config::Config;
use waiaas_shared::registry::{self, CheckError, Source};
use waiaas_shared::time::UtcTime;
use waiaas_shared::{kv, version};

use crate::db::Db;

/// Starts the worker; call once the daemon is ready (readiness must never wait
/// on the network, so nothing here blocks the caller).
pub fn spawn(config: &Config, db: Db) -> tokio::task::JoinHandle<()> {
    if !config.daemon.update_check {
        // Not even the registry is resolved: `npm config get` is a request of a kind.
        tracing::info!("version check disabled (update_check = false)");
        return tokio::spawn(async {});
    }
    let configured = config.update.registry.clone();
    let insecure = config.update.allow_insecure_registry;
    let channel = config.update.channel.clone();
    let period = Duration::from_secs(config.daemon.update_check_interval);
    tokio::spawn(work(
        move || registry::resolve(configured.as_deref()),
        channel,
        insecure,
        period,
        db,
    ))
}

/// Resolves the registry, then checks on schedule forever.
async fn work<R>(resolve: R, channel: String, insecure: bool, period: Duration, db: Db)
where
    R: FnOnce() -> Option<(String, Source)> + Send + 'static,
{
    // `resolve` may run `npm config get registry`: keep it off the reactor.
    let (url, source) = match tokio::task::spawn_blocking(resolve).await {
        Ok(Some(found)) => found,
        Ok(None) => {
            tracing::warn!(
                "version check skipped: no npm registry configured; {}",
                registry::HOW_TO_CONFIGURE
            );
            return;
        }
        Err(e) => {
            tracing::warn!("version check skipped: finding the registry failed: {e}");
            return;
        }
    };
    if let Err(e) = registry::check_source(&url, insecure) {
        tracing::warn!("version check skipped: {e}");
        return;
    }
    tracing::info!(
        registry = %redacted(&url),
        ?source,
        "version check: following dist-tag `{channel}` every {} s",
        period.as_secs()
    );
    every(period, || check_and_log(&url, &channel, insecure, &db)).await;
}

/// Runs `run` now and then every `period`, forever. A tick that comes due
/// while the previous run is still going is skipped, not queued: the run
/// after a slow one starts on the next regular tick.
async fn every<F, Fut>(period: Duration, mut run: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = ()>,
{
    let mut ticks = tokio::time::interval(period);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Skip);
    loop {
        // The first tick completes at once: the check right after readiness.
        ticks.tick().await;
        let current = run();
        tokio::pin!(current);
        // Ticks are consumed while the run goes on, so none fires late after it.
        loop {
            tokio::select! {
                () = &mut current => break,
                _ = ticks.tick() => {
                    tracing::debug!("version check still running; tick skipped");
                }
            }
        }
    }
}

/// One check, logged: info when a newer version is known, one warning on failure.
async fn check_and_log(url: &str, channel: &str, insecure: bool, db: &Db) {
    match check(url, channel, insecure, db).await {
        Ok(latest) if version::is_newer(&latest.to_string(), version::VERSION) => {
            tracing::info!(
                "version check: {latest} is available (running {}); {}",
                version::VERSION,
                waiaas_shared::container::how_to_upgrade()
            );
        }
        Ok(latest) => {
            tracing::debug!("version check: up to date ({latest} is the newest)");
        }
        Err(e) => tracing::warn!(registry = %redacted(url), "version check failed: {e}"),
    }
}

/// Why one check changed nothing.
#[derive(Debug, thiserror::Error)]
enum Failure {
    #[error("{}", chain(.0))]
    Registry(CheckError),
    #[error("storing the result failed: {0}")]
    Store(rusqlite::Error),
}

/// Asks the registry and stores the answer; on any failure nothing is written.
async fn check(url: &str, channel: &str, insecure: bool, db: &Db) -> Result<Version, Failure> {
    let latest = registry::latest_version(url, channel, insecure)
        .await
        .map_err(Failure::Registry)?;
    let text = latest.to_string();
    let checked_at = UtcTime::now().unix_seconds().to_string();
    db.write(move |conn| {
        // Both keys or neither (one savepoint): a reader never sees a new
        // version with an old time.
        kv::set(conn, kv::LATEST, &text)?;
        kv::set(conn, kv::CHECKED_AT, &checked_at)
    })
    .await
    .map_err(Failure::Store)?;
    Ok(latest)
}

/// `url` for a log line, without credentials: a private registry's URL may
/// carry `user:password@` (reqwest already leaves them out of its errors).
fn redacted(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => format!("{scheme}://***@{}", &rest[at + 1..]),
        None => url.to_string(),
    }
}

/// An error and its causes on one line: reqwest keeps the reason ("connection
/// refused", "operation timed out") in the source chain, not in the top message.
fn chain(error: &dyn Error) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(e) = cause {
        let part = e.to_string();
        // Wrappers often repeat their source's text; say each thing once.
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        cause = e.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};

    use tokio::time::Instant;

    use super::*;

    // The same real HTTP registry the process-level tests use.
    use testkit::registry::{Behaviour, DIST_TAGS_PATH, Registry, closed_port_url};

    /// A temp database with the migrations' `key_value_store` shape.
    fn temp_db() -> (tempfile::TempDir, Db) {
        let dir = tempfile::tempdir().unwrap();
        let conn = crate::db::open(&dir.path().join("waiaas.db")).unwrap();
        conn.execute_batch(
            "CREATE TABLE key_value_store (
                 key TEXT PRIMARY KEY NOT NULL,
                 value TEXT NOT NULL,
                 updated_at INTEGER NOT NULL)",
        )
        .unwrap();
        (dir, Db::new(conn).unwrap())
    }

    async fn stored(db: &Db) -> (Option<String>, Option<String>) {
        db.read(|conn| Ok((kv::get(conn, kv::LATEST)?, kv::get(conn, kv::CHECKED_AT)?)))
            .await
            .unwrap()
    }

    /// Log lines at WARN and above from this module, captured for the
    /// current thread (the tests run on a current-thread runtime).
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl Captured {
        fn install(&self) -> tracing::subscriber::DefaultGuard {
            let subscriber = tracing_subscriber::fmt()
                .with_writer(self.clone())
                .with_max_level(tracing::Level::WARN)
                .with_ansi(false)
                .finish();
            tracing::subscriber::set_default(subscriber)
        }

        fn lines(&self) -> Vec<String> {
            let bytes = self.0.lock().unwrap();
            String::from_utf8_lossy(&bytes)
                .lines()
                .filter(|l| l.contains("version_check"))
                .map(str::to_string)
                .collect()
        }
    }

    impl Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Captured {
        type Writer = Captured;
        fn make_writer(&'a self) -> Self::Writer {
            self.clone()
        }
    }

    #[tokio::test]
    async fn a_check_stores_latest_and_checked_at_as_plain_text() {
        let reg = Registry::with_dist_tags(Behaviour::latest("1.9.0"));
        let (_dir, db) = temp_db();
        let before = UtcTime::now().unix_seconds();
        let latest = check(reg.url(), "latest", false, &db).await.unwrap();
        assert_eq!(latest.to_string(), "1.9.0");
        let (stored_latest, checked_at) = stored(&db).await;
        assert_eq!(stored_latest.as_deref(), Some("1.9.0"));
        let checked_at: u64 = checked_at.unwrap().parse().unwrap();
        assert!((before..=before + 5).contains(&checked_at), "{checked_at}");
        assert_eq!(reg.total_hits(), 1);
        assert_eq!(
            reg.last_user_agent().as_deref(),
            Some(format!("waiaas/{}", version::VERSION).as_str())
        );
        assert_eq!(reg.last_path().as_deref(), Some(DIST_TAGS_PATH));
    }

    #[tokio::test]
    async fn a_newer_check_replaces_the_older_answer() {
        let (_dir, db) = temp_db();
        let first = Registry::with_dist_tags(Behaviour::latest("1.9.0"));
        check(first.url(), "latest", false, &db).await.unwrap();
        let second = Registry::with_dist_tags(Behaviour::latest("1.10.0"));
        check(second.url(), "latest", false, &db).await.unwrap();
        assert_eq!(stored(&db).await.0.as_deref(), Some("1.10.0"));
    }

    #[tokio::test]
    async fn a_prerelease_channel_accepts_its_prerelease() {
        let reg = Registry::with_dist_tags(Behaviour::DistTags(r#"{"rc":"2.0.0-rc.1"}"#.into()));
        let (_dir, db) = temp_db();
        check(reg.url(), "rc", false, &db).await.unwrap();
        assert_eq!(stored(&db).await.0.as_deref(), Some("2.0.0-rc.1"));
    }

    /// Every kind of failure is exactly one warning naming the reason, and the
    /// previously stored answer is left as it was. Cases run concurrently so
    /// the two 5 s timeouts overlap.
    #[tokio::test]
    async fn every_failure_is_one_warning_and_changes_nothing() {
        let cases: Vec<(&str, Option<Behaviour>, &str)> = vec![
            ("garbage", Some(Behaviour::Garbage), "not a JSON object"),
            ("http 500", Some(Behaviour::Status(500)), "HTTP 500"),
            ("http 404", Some(Behaviour::Status(404)), "HTTP 404"),
            ("too large", Some(Behaviour::TooLarge), "larger than"),
            ("not semver", Some(Behaviour::NotSemver), "not a semver"),
            (
                "prerelease",
                Some(Behaviour::PrereleaseUnderLatest),
                "prerelease",
            ),
            (
                "no such tag",
                Some(Behaviour::DistTags("{}".into())),
                "no dist-tag",
            ),
            ("never answers", Some(Behaviour::NeverAnswers), "timed out"),
            (
                "slow",
                Some(Behaviour::Slow(Duration::from_secs(8))),
                "timed out",
            ),
            ("refused", None, "onnection refused"),
        ];
        let log = Captured::default();
        let _guard = log.install();
        let started = std::time::Instant::now();
        let runs = cases
            .into_iter()
            .map(|(name, behaviour, reason)| async move {
                let reg = behaviour.map(Registry::with_dist_tags);
                let url = reg
                    .as_ref()
                    .map_or_else(closed_port_url, |r| r.url().to_string());
                let (_dir, db) = temp_db();
                db.write(|conn| {
                    kv::set(conn, kv::LATEST, "1.8.5")?;
                    kv::set(conn, kv::CHECKED_AT, "123")
                })
                .await
                .unwrap();
                check_and_log(&url, "latest", false, &db).await;
                let after = stored(&db).await;
                (name, url, reason, after)
            });
        let results = futures_util::future::join_all(runs).await;
        // The client's 5 s limit, not the slow registry's 8 s, ended those cases.
        assert!(
            started.elapsed() < Duration::from_secs(8),
            "{:?}",
            started.elapsed()
        );
        let lines = log.lines();
        for (name, url, reason, after) in results {
            assert_eq!(
                after,
                (Some("1.8.5".into()), Some("123".into())),
                "{name}: stored values changed"
            );
            let mine: Vec<_> = lines.iter().filter(|l| l.contains(&url)).collect();
            assert_eq!(mine.len(), 1, "{name}: expected one warning, got {mine:?}");
            assert!(mine[0].contains("WARN"), "{name}: {}", mine[0]);
            assert!(
                mine[0].contains(reason),
                "{name}: no `{reason}` in {}",
                mine[0]
            );
        }
    }

    #[tokio::test]
    async fn a_database_error_is_one_warning_not_a_panic() {
        let reg = Registry::with_dist_tags(Behaviour::latest("1.9.0"));
        let dir = tempfile::tempdir().unwrap();
        // No key_value_store table: the store step fails.
        let db = Db::new(crate::db::open(&dir.path().join("empty.db")).unwrap()).unwrap();
        let log = Captured::default();
        let _guard = log.install();
        check_and_log(reg.url(), "latest", false, &db).await;
        let lines = log.lines();
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert!(
            lines[0].contains("storing the result failed"),
            "{}",
            lines[0]
        );
        assert!(lines[0].contains("key_value_store"), "{}", lines[0]);
    }

    #[tokio::test]
    async fn no_registry_found_is_one_line_saying_how_to_configure() {
        let (_dir, db) = temp_db();
        let log = Captured::default();
        let _guard = log.install();
        // `work` returns (the worker stops) instead of looping.
        tokio::time::timeout(
            Duration::from_secs(5),
            work(
                || None,
                "latest".into(),
                false,
                Duration::from_secs(3600),
                db.clone(),
            ),
        )
        .await
        .expect("the worker stops when there is no registry");
        let lines = log.lines();
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert!(
            lines[0].contains(registry::HOW_TO_CONFIGURE),
            "{}",
            lines[0]
        );
        assert_eq!(stored(&db).await, (None, None));
    }

    #[tokio::test]
    async fn a_plain_http_registry_off_loopback_is_refused_before_any_connection() {
        let (_dir, db) = temp_db();
        let log = Captured::default();
        let _guard = log.install();
        // A non-loopback address: the worker must return without connecting.
        tokio::time::timeout(
            Duration::from_secs(5),
            work(
                || Some(("http://192.0.2.1:9/".to_string(), Source::Config)),
                "latest".into(),
                false,
                Duration::from_secs(3600),
                db.clone(),
            ),
        )
        .await
        .expect("the worker stops at once");
        let lines = log.lines();
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert!(lines[0].contains("allow_insecure_registry"), "{}", lines[0]);
        assert_eq!(stored(&db).await, (None, None));
    }

    #[tokio::test]
    async fn update_check_false_makes_no_request_at_all() {
        let reg = Registry::with_dist_tags(Behaviour::latest("1.9.0"));
        let (_dir, db) = temp_db();
        let mut config = Config::default();
        config.daemon.update_check = false;
        config.update.registry = Some(reg.url().to_string());
        tokio::time::timeout(Duration::from_secs(5), spawn(&config, db.clone()))
            .await
            .expect("the disabled worker ends at once")
            .unwrap();
        assert_eq!(reg.connections(), 0);
        assert_eq!(stored(&db).await, (None, None));
    }

    #[tokio::test]
    async fn the_worker_checks_right_away_against_the_configured_registry() {
        let reg = Registry::with_dist_tags(Behaviour::latest("1.9.0"));
        let (_dir, db) = temp_db();
        let mut config = Config::default();
        config.update.registry = Some(reg.url().to_string());
        let worker = spawn(&config, db.clone());
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while stored(&db).await.0.is_none() && std::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(stored(&db).await.0.as_deref(), Some("1.9.0"));
        // The next check is an interval (≥ 1 h) away.
        assert_eq!(reg.total_hits(), 1);
        worker.abort();
    }

    /// Paused time: runs start at 0, P, 2P, … (the first without waiting).
    #[tokio::test(start_paused = true)]
    async fn checks_repeat_every_interval() {
        let period = Duration::from_secs(3600);
        let origin = Instant::now();
        let starts = Arc::new(Mutex::new(Vec::new()));
        let recorder = Arc::clone(&starts);
        let schedule = every(period, move || {
            recorder.lock().unwrap().push(origin.elapsed());
            async {}
        });
        // 3.5 periods of (virtual) time.
        let _ = tokio::time::timeout(period * 7 / 2, schedule).await;
        let starts = starts.lock().unwrap().clone();
        assert_eq!(starts, [Duration::ZERO, period, period * 2, period * 3]);
    }

    /// Paused time: a run that lasts 2.5 periods swallows the two ticks that
    /// came due meanwhile; the next run waits for the next regular tick (3P),
    /// and runs never overlap.
    #[tokio::test(start_paused = true)]
    async fn a_tick_is_skipped_while_the_previous_run_is_still_going() {
        let period = Duration::from_secs(3600);
        let origin = Instant::now();
        let starts = Arc::new(Mutex::new(Vec::new()));
        let running = Arc::new(AtomicUsize::new(0));
        let most = Arc::new(AtomicUsize::new(0));
        let (recorder, now_running, peak) =
            (Arc::clone(&starts), Arc::clone(&running), Arc::clone(&most));
        let schedule = every(period, move || {
            recorder.lock().unwrap().push(origin.elapsed());
            let (now_running, peak) = (Arc::clone(&now_running), Arc::clone(&peak));
            async move {
                let n = now_running.fetch_add(1, Ordering::SeqCst) + 1;
                peak.fetch_max(n, Ordering::SeqCst);
                tokio::time::sleep(period * 5 / 2).await;
                now_running.fetch_sub(1, Ordering::SeqCst);
            }
        });
        let _ = tokio::time::timeout(period * 7, schedule).await;
        let starts = starts.lock().unwrap().clone();
        assert_eq!(starts, [Duration::ZERO, period * 3, period * 6]);
        assert_eq!(most.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn credentials_never_reach_the_log() {
        assert_eq!(
            redacted("https://ci:s3cret@127.0.0.1:4873/npm/"),
            "https://***@127.0.0.1:4873/npm/"
        );
        assert_eq!(
            redacted("http://127.0.0.1:4873/a@b"),
            "http://127.0.0.1:4873/a@b"
        );
        assert_eq!(redacted("http://127.0.0.1:4873"), "http://127.0.0.1:4873");
    }

    #[test]
    fn causes_are_joined_once() {
        #[derive(Debug)]
        struct Inner;
        impl std::fmt::Display for Inner {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("connection refused")
            }
        }
        impl Error for Inner {}
        #[derive(Debug)]
        struct Outer(Inner);
        impl std::fmt::Display for Outer {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("request failed")
            }
        }
        impl Error for Outer {
            fn source(&self) -> Option<&(dyn Error + 'static)> {
                Some(&self.0)
            }
        }
        assert_eq!(chain(&Outer(Inner)), "request failed: connection refused");
        let wrapped = std::io::Error::other(Outer(Inner));
        // io::Error repeats its inner error's text; it is said once.
        assert_eq!(chain(&wrapped), "request failed: connection refused");
    }
}
