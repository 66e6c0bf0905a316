//! HTTP load: clients sending `GET` without pause until stopped ([`Load`]),
//! on one kept-alive connection each or a new one per request ([`Connect`]),
//! what they saw ([`Tally`]), and its statistics
//! ([`percentile`], [`longest_gap`], [`overlaps`]). Times are µs since the
//! load began. And one client that writes ([`Writer`]), to show which
//! acknowledged writes an upgrade keeps.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tokio::runtime::Runtime;
use tokio::task::JoinHandle;

use super::bench::micros;
use super::http_answer;

/// Requests recorded per client at most (memory bound).
const PER_CLIENT_CAP: usize = 2_000_000;
/// Failures recorded per client at most.
const ERRORS_PER_CLIENT: usize = 3;

/// How a load client reaches the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Connect {
    /// One connection, kept alive across requests.
    KeepAlive,
    /// A new connection for every request, closed after its answer: each
    /// request then also waits for `accept`, as a script or `curl` in a loop does.
    EachRequest,
}

/// Clients on a runtime of their own, until [`Load::finish`].
pub struct Load {
    runtime: Runtime,
    stop: Arc<AtomicBool>,
    clients: Vec<JoinHandle<ClientLog>>,
    /// When the load began: time zero of every figure.
    pub origin: Instant,
}

impl Load {
    /// Starts `clients` keep-alive clients sending `GET url`; a request fails
    /// after `timeout`; every client stops by itself `deadline` after the start.
    pub fn start(url: &str, clients: usize, timeout: Duration, deadline: Duration) -> Self {
        Self::connecting(url, clients, Connect::KeepAlive, timeout, deadline)
    }

    /// [`Load::start`], the clients reaching the server as `connect` says.
    pub fn connecting(
        url: &str,
        clients: usize,
        connect: Connect,
        timeout: Duration,
        deadline: Duration,
    ) -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .expect("a tokio runtime");
        let stop = Arc::new(AtomicBool::new(false));
        let origin = Instant::now();
        let deadline = origin + deadline;
        let clients = (0..clients)
            .map(|_| {
                runtime.spawn(client(
                    url.to_string(),
                    connect,
                    stop.clone(),
                    origin,
                    deadline,
                    timeout,
                ))
            })
            .collect();
        Self {
            runtime,
            stop,
            clients,
            origin,
        }
    }

    /// µs since the load began.
    pub fn now_us(&self) -> u64 {
        micros(self.origin.elapsed())
    }

    /// Stops the clients; what they saw.
    pub fn finish(self) -> Tally {
        self.stop.store(true, Ordering::Relaxed);
        let logs: Vec<ClientLog> = self.runtime.block_on(async {
            let mut logs = Vec::new();
            for client in self.clients {
                logs.push(client.await.unwrap_or_default());
            }
            logs
        });
        self.runtime.shutdown_timeout(Duration::from_secs(5));
        let ran = self.origin.elapsed();
        let requests: Vec<(u64, u64)> = logs
            .iter()
            .flat_map(|l| l.requests.iter().copied())
            .collect();
        let mut latencies: Vec<u64> = requests.iter().map(|&(_, took)| took).collect();
        latencies.sort_unstable();
        let mut done: Vec<u64> = logs
            .iter()
            .flat_map(|l| l.done_us.iter().copied())
            .collect();
        done.sort_unstable();
        Tally {
            requests,
            latencies,
            done,
            failed: logs.iter().map(|l| l.failed).sum(),
            errors: logs.into_iter().flat_map(|l| l.errors).collect(),
            ran,
        }
    }
}

/// What one client saw.
#[derive(Default)]
struct ClientLog {
    /// When each successful request completed.
    done_us: Vec<u64>,
    /// Every request, successful or not: (completed at, took).
    requests: Vec<(u64, u64)>,
    failed: u64,
    /// The first failures: (completed at, took, error).
    errors: Vec<(u64, u64, String)>,
}

/// Sends `GET url` until told to stop.
async fn client(
    url: String,
    connect: Connect,
    stop: Arc<AtomicBool>,
    origin: Instant,
    deadline: Instant,
    timeout: Duration,
) -> ClientLog {
    let mut log = ClientLog::default();
    let builder = waiaas_shared::registry::client_builder().timeout(timeout);
    let builder = match connect {
        Connect::KeepAlive => builder,
        // No idle connection is kept, so each request dials anew.
        Connect::EachRequest => builder.pool_max_idle_per_host(0),
    };
    let client = builder.build().expect("an HTTP client");
    while !stop.load(Ordering::Relaxed)
        && Instant::now() < deadline
        && log.requests.len() < PER_CLIENT_CAP
    {
        let sent = Instant::now();
        let outcome = match client.get(&url).send().await {
            Ok(r) if r.status().is_success() => {
                r.bytes().await.map(drop).map_err(|e| format!("{e:?}"))
            }
            Ok(r) => Err(format!("HTTP {}", r.status())),
            Err(e) => Err(format!("{e:?}")),
        };
        let now = Instant::now();
        let (at, took) = (micros(now - origin), micros(now - sent));
        log.requests.push((at, took));
        match outcome {
            Ok(()) => log.done_us.push(at),
            Err(e) => {
                log.failed += 1;
                if log.errors.len() < ERRORS_PER_CLIENT {
                    log.errors.push((at, took, e));
                }
            }
        }
    }
    log
}

/// What all the clients saw.
pub struct Tally {
    /// Every request: (completed at, took).
    pub requests: Vec<(u64, u64)>,
    /// Every request's time, sorted.
    pub latencies: Vec<u64>,
    /// When each successful request completed, sorted.
    pub done: Vec<u64>,
    pub failed: u64,
    /// Each client's first failures, client by client: (completed at, took, error).
    pub errors: Vec<(u64, u64, String)>,
    /// From the start until the clients were stopped.
    pub ran: Duration,
}

impl Tally {
    pub fn sent(&self) -> u64 {
        self.latencies.len() as u64
    }

    /// The longest request's time.
    pub fn worst(&self) -> u64 {
        self.latencies.last().copied().unwrap_or(0)
    }

    /// The longest request: (completed at, took).
    pub fn worst_request(&self) -> Option<(u64, u64)> {
        self.requests.iter().max_by_key(|&&(_, took)| took).copied()
    }

    /// The times, sorted, of the requests that overlapped none of `windows`.
    pub fn outside(&self, windows: &[(u64, u64)]) -> Vec<u64> {
        let mut steady: Vec<u64> = self
            .requests
            .iter()
            .filter(|r| !overlaps(windows, r))
            .map(|&(_, took)| took)
            .collect();
        steady.sort_unstable();
        steady
    }
}

/// Whether `request` (completed at, took) overlapped one of `windows` ([from, to]).
pub fn overlaps(windows: &[(u64, u64)], &(done, took): &(u64, u64)) -> bool {
    windows
        .iter()
        .any(|&(from, to)| done >= from && done.saturating_sub(took) <= to)
}

/// The longest interval between consecutive completions (`done` sorted)
/// that overlaps `[from, to]`: (length, start, end).
pub fn longest_gap(done: &[u64], from: u64, to: u64) -> (u64, u64, u64) {
    done.windows(2)
        .filter(|w| w[1] >= from && w[0] <= to)
        .map(|w| (w[1] - w[0], w[0], w[1]))
        .max()
        .unwrap_or((0, 0, 0))
}

/// Nearest-rank percentile of `sorted` (0 for none).
pub fn percentile(sorted: &[u64], q: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// One client creating wallets `<prefix>-0`, `<prefix>-1`, … one after
/// another through the API until stopped (or for 10 minutes at most).
pub struct Writer {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<Written>,
}

/// What a [`Writer`] sent.
#[derive(Debug, Default)]
pub struct Written {
    /// Answered 201, in order.
    pub acknowledged: Vec<String>,
    /// No answer (the daemon went away mid-request): written or not.
    pub unknown: std::collections::BTreeSet<String>,
    /// For each acknowledged write, the daemon version that answered.
    pub answered_by: Vec<String>,
    /// Answers other than 201.
    pub refused: usize,
    /// The longest a request waited for its answer.
    pub longest_wait: Duration,
    /// Every request: when it was sent and how long it waited.
    pub requests: Vec<(Instant, Duration)>,
}

impl Writer {
    pub fn start(port: u16, token: &str, prefix: &str) -> Self {
        Self::paced(port, token, prefix, None)
    }

    /// [`Writer::start`], at most `per_second` writes a second when given.
    pub fn paced(port: u16, token: &str, prefix: &str, per_second: Option<u32>) -> Self {
        let (token, prefix) = (token.to_string(), prefix.to_string());
        let interval = per_second.map(|n| Duration::from_secs(1) / n.max(1));
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut written = Written::default();
            let deadline = Instant::now() + Duration::from_secs(600);
            for n in 0.. {
                if stopped.load(Ordering::SeqCst) || Instant::now() > deadline {
                    break;
                }
                let sent = Instant::now();
                let name = format!("{prefix}-{n}");
                let body = format!(r#"{{"name":"{name}","chain":"solana","network":"devnet"}}"#);
                let answer = http_answer(port, "POST", "/v1/wallets", Some(&token), Some(&body));
                written.longest_wait = written.longest_wait.max(sent.elapsed());
                written.requests.push((sent, sent.elapsed()));
                match answer {
                    Some(answer) if answer.status == 201 => {
                        written.acknowledged.push(name);
                        written.answered_by.push(answer.version.unwrap_or_default());
                    }
                    Some(_) => written.refused += 1,
                    None => {
                        written.unknown.insert(name);
                        std::thread::sleep(Duration::from_millis(2));
                    }
                }
                if let Some(rest) = interval.and_then(|i| i.checked_sub(sent.elapsed())) {
                    std::thread::sleep(rest);
                }
            }
            written
        });
        Self { stop, thread }
    }

    pub fn stop(self) -> Written {
        self.stop.store(true, Ordering::SeqCst);
        self.thread.join().expect("the writer")
    }
}
