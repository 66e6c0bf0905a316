//! Benchmarks of the daemon as a process and of its migrations:
//!
//! 1. start-to-ready on a fresh data dir (spawn → first 200 on `/health`);
//! 2. start-to-ready on a database of about 1 GiB (`WAIAAS_BENCH_DB_MB`);
//! 3. `/health` throughput and latency with 32 keep-alive clients
//!    (`WAIAAS_BENCH_SECONDS`);
//! 4. migration from `MIN_COMPATIBLE_SCHEMA_VERSION` to the latest schema on
//!    1,000,000 rows (`WAIAAS_BENCH_MIGRATION_ROWS`), with the row counts
//!    verified afterwards;
//! 5. writers: `POST /v1/wallets` back to back from 1, 8 and 32 keep-alive
//!    clients (`WAIAAS_BENCH_WRITE_SECONDS` each), writes/s and p99 latency
//!    of the daemon as it ships (`synchronous=FULL`, group commit) beside
//!    one fsync per write (its `one-fsync-per-write` test fault) and
//!    `NORMAL` (its `synchronous-normal` test fault), every 201 found in the
//!    database after; the data dir on this machine's disk, then (root and
//!    `/dev/fuse` only) on a power-loss FUSE mount answering each fsync at
//!    once (what FUSE itself costs) and after `WAIAAS_BENCH_FSYNC_MS`
//!    (default 2: a consumer SSD's cache flush).
//!
//! Run with `cargo bench -p waiaas-daemon --bench daemon`; `WAIAAS_BENCH_ONLY=5`
//! (a comma-separated list) runs only those sections. Prints readable
//! lines, then one line of JSON; exits non-zero when the row counts differ
//! after the migration or a written wallet is missing. Every daemon listens
//! on a 127.0.0.1 socket handed over through `LISTEN_FDS`; every file lives
//! in a temp dir removed at the end.
//!
//! The HTTP clients are hand-rolled HTTP/1.1 over `TcpStream` (blocking for
//! the readiness probe, tokio for the load), so the client's own cost stays
//! small next to the daemon's on a machine the two share.

use std::collections::{BTreeMap, HashMap};
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rusqlite::Connection;
use rusqlite::types::Value;
use serde_json::{Value as Json, json};
use testkit::daemon::seed::{self, Allowed, Column};
use testkit::daemon::{Daemon, Install};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use waiaas_daemon::failpoint::FAULT_ENV;
use waiaas_daemon::migrate::{self, LATEST_SCHEMA_VERSION};
use waiaas_daemon::{compat, db};
use waiaas_powercut::PowerCut;

/// Start-to-ready runs on a fresh data dir.
const FRESH_RUNS: usize = 10;
/// Start-to-ready runs on the large database.
const BIG_RUNS: usize = 5;
/// How often a failed readiness probe is retried.
const PROBE_INTERVAL: Duration = Duration::from_millis(2);
/// Longest one readiness probe may wait for its answer.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest a daemon may take to become ready before the bench gives up.
const READY_DEADLINE: Duration = Duration::from_secs(120);
/// Rows per transaction while filling the large database.
const FILL_BATCH: u64 = 50_000;
/// Longest the large database may take to fill; it stops short after that.
const FILL_DEADLINE: Duration = Duration::from_secs(30 * 60);
/// Concurrent keep-alive clients of the load test.
const CLIENTS: usize = 32;
/// Longest one request of the load test may take before it counts as failed.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest response head the load client accepts.
const HEAD_CAP: usize = 64 * 1024;
/// Rows per transaction while seeding the migration database.
const SEED_CHUNK: u64 = 100_000;
/// How the migration rows are spread over the tables (per mille; a table not
/// listed gets 1). Most rows go where the migrations do work: audit_log
/// (severity backfill) and transactions (chain/network backfill).
const SPREAD: &[(&str, u64)] = &[
    ("audit_log", 500),
    ("transactions", 350),
    ("notification_logs", 60),
    ("pending_approvals", 50),
    ("sessions", 30),
    ("policies", 5),
    ("wallets", 2),
    ("token_registry", 2),
    ("key_value_store", 1),
];

fn main() -> ExitCode {
    let started = Instant::now();
    let db_mb = env_number("WAIAAS_BENCH_DB_MB", 1024);
    let seconds = env_number("WAIAAS_BENCH_SECONDS", 10);
    let migration_rows = env_number("WAIAAS_BENCH_MIGRATION_ROWS", 1_000_000);
    println!(
        "waiaas-daemon bench: {} (schema {LATEST_SCHEMA_VERSION}), {} CPUs",
        testkit::daemon_binary().display(),
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );

    let write_seconds = env_number("WAIAAS_BENCH_WRITE_SECONDS", 10);
    let only = std::env::var("WAIAAS_BENCH_ONLY").unwrap_or_default();
    let runs = |section: &str| only.is_empty() || only.split(',').any(|s| s.trim() == section);
    let section = |n: &str, bench: &dyn Fn() -> Json| {
        if runs(n) { bench() } else { Json::Null }
    };
    let fresh = section("1", &bench_fresh_start);
    let big = section("2", &|| bench_big_start(db_mb));
    let load = section("3", &|| bench_health_load(seconds));
    let migration = section("4", &|| bench_migration(migration_rows));
    let fsync_ms = env_number("WAIAAS_BENCH_FSYNC_MS", 2);
    let writers = section("5", &|| bench_writers(write_seconds, fsync_ms));
    let ok = (migration.is_null() || migration["counts"] == "OK")
        && (writers.is_null() || writers["all_stored"] == true);

    let total = started.elapsed().as_secs_f64();
    println!();
    println!("total: {total:.1} s");
    let summary = json!({
        "bench": "waiaas-daemon",
        "schema": LATEST_SCHEMA_VERSION,
        "start_fresh_ms": fresh,
        "start_big_db": big,
        "health_load": load,
        "migration": migration,
        "writers": writers,
        "total_s": round(total, 1),
    });
    println!("{summary}");
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

// ---------------------------------------------------------------- 1 and 2 --

/// Section 1: a new data dir per run, so each start creates the database and
/// applies every migration.
fn bench_fresh_start() -> Json {
    heading(&format!(
        "1. start-to-ready, fresh data dir (N={FRESH_RUNS}; spawn → first 200 on /health)"
    ));
    let mut runs = Vec::with_capacity(FRESH_RUNS);
    for _ in 0..FRESH_RUNS {
        let install = Install::new();
        runs.push(start_to_ready_ms(&install));
    }
    print_stats("ms", &runs)
}

/// Section 2: one install whose audit_log is filled until the file is at least
/// `target_mb` MiB, then started `BIG_RUNS` times.
fn bench_big_start(target_mb: u64) -> Json {
    heading(&format!(
        "2. start-to-ready, large database (target {target_mb} MiB, N={BIG_RUNS})"
    ));
    let install = Install::new();
    let output = install.daemon_command(&["migrate"]);
    assert!(
        output.status.success(),
        "waiaas-daemon migrate failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let path = install.dir.database();
    let fill = fill_audit_log(&path, target_mb * 1024 * 1024);
    let size = std::fs::metadata(&path).expect("database file").len();
    println!(
        "database: {:.1} MiB ({size} bytes), audit_log rows: {}, fill: {:.1} s ({:.0} rows/s)",
        mib(size),
        fill.rows,
        fill.seconds,
        fill.rows as f64 / fill.seconds
    );
    if fill.stopped_early {
        println!("note: the fill hit its time limit before reaching the target size");
    }
    let mut runs = Vec::with_capacity(BIG_RUNS);
    for _ in 0..BIG_RUNS {
        runs.push(start_to_ready_ms(&install));
    }
    let stats = print_stats("ms", &runs);
    json!({
        "target_mb": target_mb,
        "size_bytes": size,
        "rows": fill.rows,
        "fill_s": round(fill.seconds, 2),
        "start_ms": stats,
    })
}

/// Spawns the daemon, measures spawn → first 200 on `/health`, stops it.
fn start_to_ready_ms(install: &Install) -> f64 {
    let t0 = Instant::now();
    let mut daemon = Daemon::start(install);
    let ready = wait_ready(&mut daemon, t0);
    let status = daemon.stop();
    if !status.success() {
        println!("warning: the daemon exited with {status} after SIGTERM");
    }
    ready.as_secs_f64() * 1e3
}

/// Probes `/health` until it answers 200; a failed probe is retried after
/// `PROBE_INTERVAL`. The listener exists before the spawn, so a probe made
/// early waits in the kernel's backlog and is answered as soon as the daemon
/// accepts. Returns the time since `t0`.
fn wait_ready(daemon: &mut Daemon, t0: Instant) -> Duration {
    loop {
        let remaining = READY_DEADLINE.saturating_sub(t0.elapsed());
        if let Ok(200) = probe_health(daemon.addr, remaining.min(PROBE_TIMEOUT)) {
            return t0.elapsed();
        }
        if let Some(status) = daemon.wait_exit(Duration::ZERO) {
            panic!(
                "daemon exited with {status} before it was ready:\n{}",
                daemon.stderr()
            );
        }
        assert!(
            t0.elapsed() < READY_DEADLINE,
            "daemon not ready in {READY_DEADLINE:?}:\n{}",
            daemon.stderr()
        );
        std::thread::sleep(PROBE_INTERVAL);
    }
}

/// One `GET /health` on a new connection; the status code.
fn probe_health(addr: SocketAddr, timeout: Duration) -> io::Result<u16> {
    let timeout = timeout.max(Duration::from_millis(1));
    let mut stream = TcpStream::connect_timeout(&addr, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    stream.set_nodelay(true)?;
    stream.write_all(
        format!("GET /health HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
    )?;
    let mut response = Vec::new();
    stream.take(HEAD_CAP as u64).read_to_end(&mut response)?;
    status_code(&response).ok_or_else(|| io::Error::other("no HTTP status line"))
}

fn status_code(response: &[u8]) -> Option<u16> {
    let line = response.split(|&b| b == b'\r').next()?;
    let line = std::str::from_utf8(line).ok()?;
    let mut parts = line.split(' ');
    parts.next().filter(|v| v.starts_with("HTTP/"))?;
    parts.next()?.parse().ok()
}

struct Fill {
    rows: u64,
    seconds: f64,
    stopped_early: bool,
}

/// Appends ~1 KiB audit entries, `FILL_BATCH` per transaction with
/// `synchronous = OFF`, until the database is at least `target_bytes`; then
/// checkpoints the WAL into the file. Bounded by a row cap (as if every row
/// took only 512 bytes) and by `FILL_DEADLINE`.
fn fill_audit_log(path: &Path, target_bytes: u64) -> Fill {
    let conn = db::open(path).expect("open the database");
    conn.pragma_update(None, "synchronous", "OFF").unwrap();
    let page_size: i64 = conn
        .query_row("PRAGMA page_size", [], |r| r.get(0))
        .unwrap();
    let page_size = page_size as u64;
    let size = |conn: &Connection| -> u64 {
        let pages: i64 = conn
            .query_row("PRAGMA page_count", [], |r| r.get(0))
            .unwrap();
        pages as u64 * page_size
    };
    // ~1 KiB of JSON per row: a fixed filler plus the row number.
    let filler: String = (0..980)
        .map(|i| char::from(b'a' + (i % 26) as u8))
        .collect();
    let max_batches = target_bytes / (FILL_BATCH * 512) + 2;
    let started = Instant::now();
    let mut rows = 0u64;
    let mut stopped_early = false;
    for _ in 0..max_batches {
        if size(&conn) >= target_bytes {
            break;
        }
        if started.elapsed() > FILL_DEADLINE {
            stopped_early = true;
            break;
        }
        let tx = conn.unchecked_transaction().unwrap();
        {
            let mut insert = tx
                .prepare_cached(
                    "INSERT INTO audit_log (timestamp, event_type, actor, wallet_id, details, severity)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                )
                .unwrap();
            for n in rows..rows + FILL_BATCH {
                let event = seed::EVENT_TYPES[(n % seed::EVENT_TYPES.len() as u64) as usize];
                let wallet = (n % 3 != 2).then(|| format!("wallet-{}", n % 1000));
                insert
                    .execute(rusqlite::params![
                        1_700_000_000 + n as i64,
                        event,
                        format!("session:{}", n % 5000),
                        wallet,
                        format!("{{\"n\":{n},\"note\":\"{filler}\"}}"),
                        severity(event),
                    ])
                    .unwrap();
            }
        }
        tx.commit().unwrap();
        rows += FILL_BATCH;
    }
    db::checkpoint(&conn).unwrap();
    let seconds = started.elapsed().as_secs_f64();
    Fill {
        rows,
        seconds,
        stopped_early,
    }
}

/// The severity the daemon gives an event type (as migration 13 classifies).
fn severity(event_type: &str) -> &'static str {
    match event_type {
        "TX_FAILED" | "POLICY_DENIED" | "SESSION_REVOKED" | "WALLET_SUSPENDED" => "warning",
        "KILL_SWITCH_ACTIVATED" | "WALLET_TERMINATED" | "AUTH_FAILED" => "critical",
        _ => "info",
    }
}

// --------------------------------------------------------------------- 3 --

/// Section 3: `CLIENTS` tokio tasks, each with its own keep-alive connection,
/// requesting `/health` back to back for `seconds`.
fn bench_health_load(seconds: u64) -> Json {
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get());
    heading(&format!(
        "3. /health load: {CLIENTS} keep-alive clients for {seconds} s \
         (hand-rolled HTTP/1.1 on a {workers}-worker tokio runtime)"
    ));
    let install = Install::new();
    let mut daemon = Daemon::start(&install);
    wait_ready(&mut daemon, Instant::now());
    let addr = daemon.addr;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let result = runtime.block_on(load(addr, Duration::from_secs(seconds)));
    runtime.shutdown_timeout(Duration::from_secs(5));
    let status = daemon.stop();
    if !status.success() {
        println!("warning: the daemon exited with {status} after SIGTERM");
    }

    let mut latencies = result.latencies;
    latencies.sort_unstable();
    let requests = latencies.len() as u64;
    let rps = requests as f64 / result.elapsed.as_secs_f64();
    let ms = |nanos: u64| nanos as f64 / 1e6;
    let (p50, p99, max) = if latencies.is_empty() {
        (0.0, 0.0, 0.0)
    } else {
        (
            ms(percentile(&latencies, 0.50)),
            ms(percentile(&latencies, 0.99)),
            ms(*latencies.last().unwrap()),
        )
    };
    println!(
        "requests: {requests} ok, {} failures in {:.2} s",
        result.failures,
        result.elapsed.as_secs_f64()
    );
    println!("throughput: {rps:.0} req/s");
    println!("latency: p50 {p50:.3} ms, p99 {p99:.3} ms, max {max:.3} ms");
    json!({
        "clients": CLIENTS,
        "seconds": round(result.elapsed.as_secs_f64(), 2),
        "requests": requests,
        "failures": result.failures,
        "rps": round(rps, 0),
        "p50_ms": round(p50, 3),
        "p99_ms": round(p99, 3),
        "max_ms": round(max, 3),
    })
}

struct LoadResult {
    /// Nanoseconds per successful request.
    latencies: Vec<u64>,
    failures: u64,
    elapsed: Duration,
}

async fn load(addr: SocketAddr, duration: Duration) -> LoadResult {
    // Every client connects and makes one request before the clock starts.
    let barrier = Arc::new(tokio::sync::Barrier::new(CLIENTS + 1));
    let tasks: Vec<_> = (0..CLIENTS)
        .map(|_| tokio::spawn(client_task(addr, duration, Arc::clone(&barrier))))
        .collect();
    barrier.wait().await;
    let started = Instant::now();
    let mut latencies = Vec::new();
    let mut failures = 0;
    for task in tasks {
        let (mut lat, failed) = task.await.expect("load task panicked");
        latencies.append(&mut lat);
        failures += failed;
    }
    LoadResult {
        latencies,
        failures,
        elapsed: started.elapsed(),
    }
}

async fn client_task(
    addr: SocketAddr,
    duration: Duration,
    barrier: Arc<tokio::sync::Barrier>,
) -> (Vec<u64>, u64) {
    let mut client = tokio::time::timeout(REQUEST_TIMEOUT, Client::connect(addr))
        .await
        .ok()
        .and_then(Result::ok);
    let request = format!("GET /health HTTP/1.1\r\nHost: {addr}\r\n\r\n").into_bytes();
    if let Some(c) = client.as_mut() {
        let warm = tokio::time::timeout(REQUEST_TIMEOUT, c.call(&request)).await;
        if !matches!(warm, Ok(Ok(_))) {
            client = None;
        }
    }
    barrier.wait().await;
    let deadline = Instant::now() + duration;
    let mut latencies = Vec::with_capacity(64 * 1024);
    let mut failures = 0u64;
    while Instant::now() < deadline {
        let c = match client.as_mut() {
            Some(c) => c,
            None => match tokio::time::timeout(REQUEST_TIMEOUT, Client::connect(addr)).await {
                Ok(Ok(c)) => client.insert(c),
                _ => {
                    failures += 1;
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
        };
        let sent = Instant::now();
        match tokio::time::timeout(REQUEST_TIMEOUT, c.call(&request)).await {
            Ok(Ok(answer)) => {
                if answer.status == 200 {
                    latencies.push(sent.elapsed().as_nanos() as u64);
                } else {
                    failures += 1;
                }
                if !answer.keep_alive {
                    client = None;
                }
            }
            _ => {
                failures += 1;
                client = None;
            }
        }
    }
    (latencies, failures)
}

/// A minimal HTTP/1.1 keep-alive client: bodies must carry `Content-Length`
/// (warp's JSON replies do).
struct Client {
    stream: tokio::net::TcpStream,
    buf: Vec<u8>,
}

struct Answer {
    status: u16,
    keep_alive: bool,
}

impl Client {
    async fn connect(addr: SocketAddr) -> io::Result<Self> {
        let stream = tokio::net::TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(Self {
            stream,
            buf: Vec::with_capacity(4096),
        })
    }

    /// Sends one whole request and reads its answer.
    async fn call(&mut self, request: &[u8]) -> io::Result<Answer> {
        self.stream.write_all(request).await?;
        let mut chunk = [0u8; 4096];
        let head_end = loop {
            if let Some(at) = find(&self.buf, b"\r\n\r\n") {
                break at + 4;
            }
            if self.buf.len() > HEAD_CAP {
                return Err(io::Error::other("response head too large"));
            }
            self.fill(&mut chunk).await?;
        };
        let head = std::str::from_utf8(&self.buf[..head_end])
            .map_err(|_| io::Error::other("response head is not UTF-8"))?;
        let status =
            status_code(head.as_bytes()).ok_or_else(|| io::Error::other("no HTTP status line"))?;
        let mut keep_alive = head.starts_with("HTTP/1.1");
        let mut length = None;
        for line in head.split("\r\n").skip(1) {
            let Some((name, value)) = line.split_once(':') else {
                continue;
            };
            let value = value.trim();
            if name.eq_ignore_ascii_case("content-length") {
                length = value.parse::<usize>().ok();
            } else if name.eq_ignore_ascii_case("connection") {
                keep_alive = !value.eq_ignore_ascii_case("close");
            } else if name.eq_ignore_ascii_case("transfer-encoding") {
                return Err(io::Error::other("chunked bodies are not supported"));
            }
        }
        let length = length.ok_or_else(|| io::Error::other("no Content-Length"))?;
        let end = head_end + length;
        while self.buf.len() < end {
            self.fill(&mut chunk).await?;
        }
        self.buf.drain(..end);
        Ok(Answer { status, keep_alive })
    }

    async fn fill(&mut self, chunk: &mut [u8]) -> io::Result<()> {
        let n = self.stream.read(chunk).await?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(())
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

// --------------------------------------------------------------------- 4 --

/// Section 4: a database at the oldest schema this daemon migrates, holding
/// `total` rows, migrated to the latest schema; the row counts must survive.
fn bench_migration(total: u64) -> Json {
    let min = compat::min_compatible_schema_version();
    heading(&format!(
        "4. migration {min} → {LATEST_SCHEMA_VERSION} on {total} rows"
    ));
    let tmp = tempfile::tempdir().expect("temp dir");
    let path = tmp.path().join("waiaas.db");
    let copy_path = tmp.path().join("steps.db");

    seed_fill_rate(min);

    let mut conn = db::open(&path).unwrap();
    migrate::migrate_to(&mut conn, min).unwrap();
    conn.pragma_update(None, "synchronous", "OFF").unwrap();
    let tables = seed::tables(&conn);
    let plan = spread(&tables, total);
    let started = Instant::now();
    let planner = Planner::new(&conn, &plan);
    for table in planner.parents_first() {
        planner.fill(table, plan[table]);
    }
    let seed_seconds = started.elapsed().as_secs_f64();
    db::checkpoint(&conn).unwrap();
    drop(conn);
    std::fs::copy(&path, &copy_path).expect("copy the database");
    let size = std::fs::metadata(&path).unwrap().len();
    let plan_text: Vec<String> = plan.iter().map(|(t, n)| format!("{t} {n}")).collect();
    println!(
        "seeded schema {min}: {} rows in {seed_seconds:.1} s ({:.1} MiB): {}",
        plan.values().sum::<u64>(),
        mib(size),
        plan_text.join(", ")
    );

    // The headline figure: one `migrate` call, as the daemon makes it.
    let mut conn = db::open(&path).unwrap();
    let before = counts(&conn, &tables);
    let started = Instant::now();
    let applied = migrate::migrate(&mut conn).expect("migrate");
    let seconds = started.elapsed().as_secs_f64();
    let after = counts(&conn, &tables);
    let version = migrate::database_version(&conn).unwrap();
    drop(conn);
    let rows: u64 = before.values().sum();
    println!(
        "migrate(): {rows} rows, schema {min} → {version} ({} migrations) in {seconds:.2} s",
        applied.len()
    );

    // The same path step by step on a copy, for the breakdown.
    let mut copy = db::open(&copy_path).unwrap();
    let mut steps = Vec::new();
    let mut step_text = Vec::new();
    for target in min + 1..=LATEST_SCHEMA_VERSION {
        let started = Instant::now();
        migrate::migrate_to(&mut copy, target).expect("migrate_to");
        let s = started.elapsed().as_secs_f64();
        let description = migrate::embedded(target).map_or("", |m| m.description);
        step_text.push(format!("  {target:>2} {description:<40} {s:>7.3} s"));
        steps.push(json!({"version": target, "description": description, "seconds": round(s, 3)}));
    }
    let copy_after = counts(&copy, &tables);
    drop(copy);
    println!("per migration (on a copy):");
    for line in &step_text {
        println!("{line}");
    }

    let ok = before == after && before == copy_after && version == LATEST_SCHEMA_VERSION;
    if ok {
        println!(
            "row counts after migration: OK ({rows} rows in {} tables)",
            tables.len()
        );
    } else {
        println!("row counts after migration: MISMATCH");
        for table in &tables {
            println!(
                "  {table}: before {}, after {}, after steps {}",
                before[table], after[table], copy_after[table]
            );
        }
    }
    json!({
        "from": min,
        "to": version,
        "rows": rows,
        "seed_s": round(seed_seconds, 2),
        "db_bytes": size,
        "seconds": round(seconds, 3),
        "steps": steps,
        "counts": if ok { "OK" } else { "MISMATCH" },
    })
}

/// How fast the generic test seeder is, to show why the big fill is SQL: its
/// foreign-key values read every parent key for every row.
fn seed_fill_rate(min: u32) {
    let mut conn = Connection::open_in_memory().unwrap();
    migrate::migrate_to(&mut conn, min).unwrap();
    let per_table = 1000;
    let started = Instant::now();
    seed::fill(&conn, per_table);
    let seconds = started.elapsed().as_secs_f64();
    let rows = per_table * seed::tables(&conn).len();
    println!(
        "tests' seed::fill: {rows} rows ({per_table}/table) in {seconds:.2} s = {:.0} rows/s, \
         quadratic in parent rows; the bench seeds with INSERT … SELECT instead",
        rows as f64 / seconds
    );
}

/// Rows per table for `total`, by `SPREAD`.
fn spread(tables: &[String], total: u64) -> BTreeMap<String, u64> {
    let weight = |t: &str| SPREAD.iter().find(|(n, _)| *n == t).map_or(1, |(_, w)| *w);
    let sum: u64 = tables.iter().map(|t| weight(t)).sum();
    let mut plan: BTreeMap<String, u64> = tables
        .iter()
        .map(|t| (t.clone(), total * weight(t) / sum))
        .collect();
    let short = total - plan.values().sum::<u64>();
    if let Some(biggest) = tables.iter().max_by_key(|t| weight(t)) {
        *plan.get_mut(biggest).unwrap() += short;
    }
    plan
}

fn counts(conn: &Connection, tables: &[String]) -> BTreeMap<String, u64> {
    tables
        .iter()
        .map(|t| {
            let n: i64 = conn
                .query_row(&format!("SELECT count(*) FROM \"{t}\""), [], |r| r.get(0))
                .unwrap();
            (t.clone(), n as u64)
        })
        .collect()
}

struct TableInfo {
    columns: Vec<Column>,
    /// column → (parent table, parent column).
    foreign_keys: HashMap<String, (String, String)>,
    checks: HashMap<String, Allowed>,
}

/// Builds, from the schema on disk, one `INSERT … SELECT` over a recursive
/// counter per table whose rows satisfy its CHECK constraints, UNIQUE columns
/// and foreign keys (each row references parent row `n % parent rows`, whose
/// key is the same function of the counter the parent was filled with).
struct Planner<'a> {
    conn: &'a Connection,
    rows: &'a BTreeMap<String, u64>,
    info: BTreeMap<String, TableInfo>,
}

impl<'a> Planner<'a> {
    fn new(conn: &'a Connection, rows: &'a BTreeMap<String, u64>) -> Self {
        let info = rows
            .keys()
            .map(|table| (table.clone(), table_info(conn, table)))
            .collect();
        for table in rows.keys() {
            let n: i64 = conn
                .query_row(&format!("SELECT count(*) FROM \"{table}\""), [], |r| {
                    r.get(0)
                })
                .unwrap();
            assert_eq!(n, 0, "{table} must start empty");
        }
        Self { conn, rows, info }
    }

    fn parents_first(&self) -> Vec<&'a String> {
        let mut placed: Vec<&String> = Vec::new();
        let mut pending: Vec<&String> = self.rows.keys().collect();
        for _ in 0..=self.rows.len() {
            pending.retain(|table| {
                let ready = self.info[*table]
                    .foreign_keys
                    .values()
                    .all(|(parent, _)| parent == *table || placed.contains(&parent));
                if ready {
                    placed.push(table);
                }
                !ready
            });
        }
        assert!(pending.is_empty(), "foreign-key cycle among {pending:?}");
        placed
    }

    fn fill(&self, table: &str, count: u64) {
        let info = &self.info[table];
        let inserted: Vec<(usize, &Column)> = info
            .columns
            .iter()
            .enumerate()
            .filter(|(_, c)| !is_rowid(info, c))
            .collect();
        let names: Vec<String> = inserted.iter().map(|(_, c)| quote_id(&c.name)).collect();
        let values: Vec<String> = inserted
            .iter()
            .map(|(position, c)| {
                let value = self.value(table, c, *position, "n");
                if !c.not_null && c.pk == 0 {
                    format!("CASE WHEN n % 3 = 2 THEN NULL ELSE {value} END")
                } else {
                    value
                }
            })
            .collect();
        let sql = format!(
            "WITH RECURSIVE c(n) AS (SELECT ?1 UNION ALL SELECT n + 1 FROM c WHERE n + 1 < ?2)
             INSERT INTO {} ({}) SELECT {} FROM c",
            quote_id(table),
            names.join(", "),
            values.join(", ")
        );
        let mut from = 0;
        while from < count {
            let to = (from + SEED_CHUNK).min(count);
            let tx = self.conn.unchecked_transaction().unwrap();
            let inserted = tx
                .execute(&sql, [from as i64, to as i64])
                .unwrap_or_else(|e| panic!("seeding {table}: {e}\n{sql}"));
            assert_eq!(inserted as u64, to - from, "{table}: rows inserted");
            tx.commit().unwrap();
            from = to;
        }
    }

    /// A non-NULL SQL expression for `column` of `table` in row `n` (an SQL
    /// expression for the 0-based row number).
    fn value(&self, table: &str, column: &Column, position: usize, n: &str) -> String {
        let info = &self.info[table];
        let name = column.name.to_lowercase();
        if is_rowid(info, column) {
            return format!("(1 + {n})");
        }
        if let Some((parent, to)) = info.foreign_keys.get(&column.name) {
            return self.reference(parent, to, column, n);
        }
        match info.checks.get(&name) {
            Some(Allowed::OneOf(values)) => {
                let values: Vec<String> = values.iter().map(literal).collect();
                return one_of(&values, n);
            }
            Some(Allowed::Between(lo, hi)) => return format!("({lo} + {n} % {})", hi - lo + 1),
            None => {}
        }
        // `wallet_id` without a foreign key (audit_log) still names a wallet.
        if let Some(stem) = name.strip_suffix("_id") {
            let target = format!("{stem}s");
            if let Some(parent) = self.info.get(&target) {
                let pk: Vec<&Column> = parent.columns.iter().filter(|c| c.pk > 0).collect();
                if let [key] = pk.as_slice() {
                    return self.reference(&target, &key.name, column, n);
                }
            }
        }
        match name.as_str() {
            "timestamp" => return format!("(1700000000 + {n} * 60)"),
            _ if name.ends_with("_at") => {
                return format!("(1700000000 + {n} * 60 + {position})");
            }
            "event_type" => {
                let values: Vec<String> = seed::EVENT_TYPES.iter().map(|e| quote(e)).collect();
                return one_of(&values, n);
            }
            "details" | "rules" => return format!("('{{\"seed\":' || {n} || '}}')"),
            "scopes" => return quote("[\"wallets:read\"]"),
            _ => {}
        }
        let decl = &column.decl_type;
        if decl.contains("INT") {
            format!("({n} + 1)")
        } else if decl.contains("REAL") || decl.contains("FLOA") {
            format!("({n} + 0.5)")
        } else {
            // Unique per table, column and row: satisfies every UNIQUE constraint.
            format!("({} || {n})", quote(&format!("{table}.{name}.")))
        }
    }

    /// The key of parent row `n % rows(parent)`.
    fn reference(&self, parent: &str, to: &str, column: &Column, n: &str) -> String {
        let rows = self.rows.get(parent).copied().unwrap_or(0);
        if rows == 0 {
            assert!(!column.not_null, "{}: no {parent} rows", column.name);
            return "NULL".to_string();
        }
        let info = &self.info[parent];
        let (position, key) = info
            .columns
            .iter()
            .enumerate()
            .find(|(_, c)| c.name == to)
            .unwrap_or_else(|| panic!("{parent}.{to} does not exist"));
        self.value(parent, key, position, &format!("({n} % {rows})"))
    }
}

/// An `INTEGER PRIMARY KEY`: the rowid, assigned by SQLite from 1.
fn is_rowid(info: &TableInfo, column: &Column) -> bool {
    column.pk == 1
        && column.decl_type.eq_ignore_ascii_case("INTEGER")
        && info.columns.iter().filter(|c| c.pk > 0).count() == 1
}

fn one_of(values: &[String], n: &str) -> String {
    let arms: Vec<String> = values
        .iter()
        .enumerate()
        .map(|(i, v)| format!("WHEN {i} THEN {v}"))
        .collect();
    format!("(CASE {n} % {} {} END)", values.len(), arms.join(" "))
}

fn quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

fn quote_id(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

fn table_info(conn: &Connection, table: &str) -> TableInfo {
    TableInfo {
        columns: seed::columns(conn, table),
        foreign_keys: seed::foreign_keys(conn, table),
        checks: seed::checks(&seed::table_sql(conn, table)),
    }
}

/// A CHECK constraint's value as an SQL literal.
fn literal(value: &Value) -> String {
    match value {
        Value::Text(text) => quote(text),
        Value::Integer(n) => n.to_string(),
        other => panic!("a CHECK value of an unexpected kind: {other:?}"),
    }
}

// --------------------------------------------------------------------- 5 --

/// Concurrent writers of each run of section 5.
const WRITERS: [usize; 3] = [1, 8, 32];

/// The daemons section 5 compares: a name and the test fault that makes
/// it. Group commit runs first: a run finds the disk busier than the one
/// before it left it, which would favour the baselines.
const COMMITS: [(&str, Option<&str>); 3] = [
    ("FULL, group commit", None),
    ("FULL, fsync per write", Some(db::FAULT_ONE_FSYNC_PER_WRITE)),
    ("NORMAL", Some(db::FAULT_SYNCHRONOUS_NORMAL)),
];

/// Where a daemon of section 5 keeps its data dir.
#[derive(Clone, Copy, PartialEq)]
enum Disk {
    /// This machine's disk (a temp dir).
    Local,
    /// A power-loss FUSE mount over a temp dir, each fsync taking this long.
    Fuse(Duration),
}

impl Disk {
    fn describe(self) -> String {
        match self {
            Disk::Local => "this machine's disk".into(),
            Disk::Fuse(Duration::ZERO) => {
                "a power-loss FUSE mount, fsync at once (the FUSE cost itself)".into()
            }
            Disk::Fuse(latency) => format!(
                "a power-loss FUSE mount, each fsync taking {} ms",
                latency.as_millis()
            ),
        }
    }

    fn json(self) -> Json {
        match self {
            Disk::Local => json!({ "kind": "local" }),
            Disk::Fuse(latency) => {
                json!({ "kind": "fuse", "fsync_ms": latency.as_millis() as u64 })
            }
        }
    }
}

/// A fresh install whose data dir is on a [`Disk`].
struct Placed {
    /// The FUSE mount over its backing folder, if the disk is one. Before
    /// the install: dropped first (on a panic), it unmounts before the
    /// install's temp dir, which holds the mount point, goes.
    mount: Option<(PowerCut, tempfile::TempDir)>,
    install: Install,
}

impl Placed {
    fn new(disk: Disk) -> Self {
        let Disk::Fuse(fsync_latency) = disk else {
            return Self {
                install: Install::new(),
                mount: None,
            };
        };
        let backing = tempfile::tempdir().expect("temp dir");
        let options = waiaas_powercut::Options { fsync_latency };
        let (install, mount) =
            Install::mounted(|dir| PowerCut::mount_with(backing.path(), dir, &options));
        let mount = mount.expect("mount the power-loss filesystem");
        Self {
            install,
            mount: Some((mount, backing)),
        }
    }

    /// Unmounts, saying if the mount would not go.
    fn remove(self) {
        if let Some((mount, _backing)) = self.mount
            && let Err(e) = mount.unmount()
        {
            println!("warning: the FUSE mount would not go: {e}");
        }
    }
}

/// Section 5: [`writer_runs`] on this machine's disk, then on a FUSE mount
/// answering fsyncs at once and one taking `fsync_ms` each, if this machine
/// can mount one.
fn bench_writers(seconds: u64, fsync_ms: u64) -> Json {
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get());
    heading(&format!(
        "5. writers: POST /v1/wallets back to back for {seconds} s; NORMAL, FULL with an fsync \
         per write, FULL with group commit (as shipped) (hand-rolled HTTP/1.1 on a {workers}-worker tokio runtime)"
    ));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let mut disks = vec![Disk::Local];
    let fuse_skipped = match waiaas_powercut::available() {
        Ok(()) => {
            disks.push(Disk::Fuse(Duration::ZERO));
            if fsync_ms > 0 {
                disks.push(Disk::Fuse(Duration::from_millis(fsync_ms)));
            }
            None
        }
        Err(missing) => Some(format!("a FUSE mount needs {missing}")),
    };
    let mut runs = Vec::new();
    let mut all_stored = true;
    for disk in disks {
        println!("-- on {}", disk.describe());
        all_stored &= writer_runs(&runtime, disk, seconds, &mut runs);
    }
    if let Some(why) = &fuse_skipped {
        println!("-- the FUSE runs are skipped: {why}");
    }
    runtime.shutdown_timeout(Duration::from_secs(5));
    json!({ "runs": runs, "fuse_skipped": fuse_skipped, "all_stored": all_stored })
}

/// For each count of writers, a fresh daemon of each of [`COMMITS`] with its
/// data dir on `disk`, each writer creating wallets back to back on its own
/// keep-alive connection. Every 201 is recorded and looked up in the
/// database afterwards. Adds each run to `runs`; whether every acknowledged
/// write was stored.
fn writer_runs(
    runtime: &tokio::runtime::Runtime,
    disk: Disk,
    seconds: u64,
    runs: &mut Vec<Json>,
) -> bool {
    let mut all_stored = true;
    for writers in WRITERS {
        let mut rates = BTreeMap::new();
        for (commit, fault) in COMMITS {
            let placed = Placed::new(disk);
            let install = &placed.install;
            let env: Vec<(&str, &str)> = fault.map(|f| (FAULT_ENV, f)).into_iter().collect();
            let mut daemon = Daemon::start_with_env(install, &env);
            wait_ready(&mut daemon, Instant::now());
            assert_eq!(
                daemon.stderr().contains("test fault"),
                fault.is_some(),
                "the daemon did not take {commit}:\n{}",
                daemon.stderr()
            );
            let token = install.token();
            let result = runtime.block_on(write_load(
                daemon.addr,
                &token,
                writers,
                Duration::from_secs(seconds),
            ));
            let status = daemon.stop();
            if !status.success() {
                println!("warning: the daemon exited with {status} after SIGTERM");
            }
            let missing = missing_wallets(&install.dir.database(), &result.acknowledged);
            placed.remove();
            all_stored &= missing == 0;
            let mut run = print_writes(commit, writers, result, missing);
            run["disk"] = disk.json();
            rates.insert(commit, run["writes_per_s"].as_f64().unwrap_or(0.0));
            runs.push(run);
        }
        let (group, per_write) = (rates[COMMITS[0].0], rates[COMMITS[1].0]);
        println!(
            "  {writers} writer(s): group commit = {:.1}x one fsync per write; load average {}",
            group / per_write.max(1.0),
            load_average()
        );
    }
    all_stored
}

/// `/proc/loadavg`'s first three figures: the machine is shared.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

/// Prints one run of section 5; returns it as JSON.
fn print_writes(commit: &str, writers: usize, result: WriteResult, missing: usize) -> Json {
    let mut latencies = result.latencies;
    latencies.sort_unstable();
    let writes = latencies.len() as u64;
    let wps = writes as f64 / result.elapsed.as_secs_f64();
    let ms = |nanos: u64| nanos as f64 / 1e6;
    let (p50, p99, max) = match latencies.last() {
        None => (0.0, 0.0, 0.0),
        Some(&max) => (
            ms(percentile(&latencies, 0.50)),
            ms(percentile(&latencies, 0.99)),
            ms(max),
        ),
    };
    println!(
        "{commit:<21} {writers:>2} writer(s): {writes} writes in {:.2} s = {wps:.0} writes/s; \
         latency p50 {p50:.3} ms, p99 {p99:.3} ms, max {max:.3} ms; {} failures; {missing} acknowledged but not stored",
        result.elapsed.as_secs_f64(),
        result.failures,
    );
    json!({
        "commit": commit,
        "writers": writers,
        "writes": writes,
        "failures": result.failures,
        "writes_per_s": round(wps, 0),
        "p50_ms": round(p50, 3),
        "p99_ms": round(p99, 3),
        "max_ms": round(max, 3),
        "missing": missing,
    })
}

struct WriteResult {
    /// Nanoseconds per acknowledged (201) write.
    latencies: Vec<u64>,
    /// The public key of every acknowledged wallet.
    acknowledged: Vec<String>,
    failures: u64,
    elapsed: Duration,
}

async fn write_load(
    addr: SocketAddr,
    token: &str,
    writers: usize,
    duration: Duration,
) -> WriteResult {
    // Every writer connects before the clock starts.
    let barrier = Arc::new(tokio::sync::Barrier::new(writers + 1));
    let tasks: Vec<_> = (0..writers)
        .map(|writer| {
            let (barrier, token) = (Arc::clone(&barrier), token.to_string());
            tokio::spawn(writer_task(addr, token, writer, duration, barrier))
        })
        .collect();
    barrier.wait().await;
    let started = Instant::now();
    let mut result = WriteResult {
        latencies: Vec::new(),
        acknowledged: Vec::new(),
        failures: 0,
        elapsed: Duration::ZERO,
    };
    for task in tasks {
        let (mut latencies, mut acknowledged, failures) = task.await.expect("writer task panicked");
        result.latencies.append(&mut latencies);
        result.acknowledged.append(&mut acknowledged);
        result.failures += failures;
    }
    result.elapsed = started.elapsed();
    result
}

/// One writer: a wallet with a unique public key per request until `duration`
/// has passed; its latencies, the keys acknowledged, and its failures.
async fn writer_task(
    addr: SocketAddr,
    token: String,
    writer: usize,
    duration: Duration,
    barrier: Arc<tokio::sync::Barrier>,
) -> (Vec<u64>, Vec<String>, u64) {
    let mut client = tokio::time::timeout(REQUEST_TIMEOUT, Client::connect(addr))
        .await
        .ok()
        .and_then(Result::ok);
    barrier.wait().await;
    let deadline = Instant::now() + duration;
    let (mut latencies, mut acknowledged, mut failures) = (Vec::new(), Vec::new(), 0u64);
    for n in 0u64.. {
        if Instant::now() >= deadline {
            break;
        }
        let c = match client.as_mut() {
            Some(c) => c,
            None => match tokio::time::timeout(REQUEST_TIMEOUT, Client::connect(addr)).await {
                Ok(Ok(c)) => client.insert(c),
                _ => {
                    failures += 1;
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
        };
        let key = format!("bench-{writer}-{n}");
        let body = json!({ "name": key, "chain": "solana", "network": "bench", "publicKey": key })
            .to_string();
        let request = format!(
            "POST /v1/wallets HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        let sent = Instant::now();
        match tokio::time::timeout(REQUEST_TIMEOUT, c.call(request.as_bytes())).await {
            Ok(Ok(answer)) => {
                if answer.status == 201 {
                    latencies.push(sent.elapsed().as_nanos() as u64);
                    acknowledged.push(key);
                } else {
                    failures += 1;
                }
                if !answer.keep_alive {
                    client = None;
                }
            }
            _ => {
                failures += 1;
                client = None;
            }
        }
    }
    (latencies, acknowledged, failures)
}

/// How many of the `acknowledged` public keys have no wallet in `db`.
fn missing_wallets(db: &Path, acknowledged: &[String]) -> usize {
    let conn = Connection::open(db).expect("open the database");
    let mut select = conn
        .prepare("SELECT public_key FROM wallets")
        .expect("select the wallets");
    let stored: std::collections::HashSet<String> = select
        .query_map([], |row| row.get(0))
        .expect("read the wallets")
        .collect::<Result<_, _>>()
        .expect("read a wallet");
    acknowledged.iter().filter(|k| !stored.contains(*k)).count()
}

// ---------------------------------------------------------------- helpers --

fn heading(title: &str) {
    println!();
    println!("== {title}");
}

/// Prints the runs and min/median/max; returns them as JSON.
fn print_stats(unit: &str, runs: &[f64]) -> Json {
    let mut sorted = runs.to_vec();
    sorted.sort_by(f64::total_cmp);
    let mid = sorted.len() / 2;
    let median = if sorted.len() % 2 == 0 {
        (sorted[mid - 1] + sorted[mid]) / 2.0
    } else {
        sorted[mid]
    };
    let (min, max) = (sorted[0], sorted[sorted.len() - 1]);
    let each: Vec<String> = runs.iter().map(|r| format!("{r:.1}")).collect();
    println!("runs ({unit}): {}", each.join(" "));
    println!("min {min:.2} {unit}, median {median:.2} {unit}, max {max:.2} {unit}");
    json!({
        "n": runs.len(),
        "min": round(min, 2),
        "median": round(median, 2),
        "max": round(max, 2),
    })
}

/// Nearest-rank percentile of sorted values.
fn percentile(sorted: &[u64], q: f64) -> u64 {
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn round(value: f64, digits: i32) -> f64 {
    let scale = 10f64.powi(digits);
    (value * scale).round() / scale
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

fn env_number(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(text) => text
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name}={text:?} is not a whole number")),
        Err(_) => default,
    }
}
