//! A real HTTP/1.1 registry on 127.0.0.1 for version-check tests (SPEC §10: a
//! local registry, never a mock of the client). It serves the one endpoint the
//! daemon asks — `GET <base>/-/package/@waiaas%2fcli/dist-tags` — with a chosen
//! [`Behaviour`], counts what arrives, and stops when dropped.
//!
//! Hand-rolled on `std::net` threads so it runs whatever the test's runtime is
//! doing. Every loop is bounded: by the stop flag (checked at least every
//! [`POLL`]) or by a deadline.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The path the daemon must ask for (the package name escaped as npm does).
pub const DIST_TAGS_PATH: &str = "/-/package/@waiaas%2fcli/dist-tags";

/// How often blocked loops look at the stop flag.
const POLL: Duration = Duration::from_millis(20);
/// Longest a client may take to send its request head.
const HEAD_DEADLINE: Duration = Duration::from_secs(5);
/// Largest request head read.
const HEAD_CAP: usize = 64 * 1024;
/// Longest one write may block (a client that stopped reading).
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);

/// What the registry does with a dist-tags request.
#[derive(Debug, Clone)]
pub enum Behaviour {
    /// 200 with this JSON body, e.g. `{"latest":"1.9.0"}`.
    DistTags(String),
    /// An empty answer with this status, e.g. 500.
    Status(u16),
    /// 200 with a body that is not JSON.
    Garbage,
    /// 200 with valid dist-tags naming 1.9.0, padded to more than 1 MiB.
    TooLarge,
    /// 200 with a `latest` that is not semver.
    NotSemver,
    /// 200 with a prerelease under `latest`.
    PrereleaseUnderLatest,
    /// Accepts, reads the request, and holds the connection without a byte.
    NeverAnswers,
    /// Answers `{"latest":"1.9.0"}` after this long.
    Slow(Duration),
}

impl Behaviour {
    /// `{"latest":"<version>"}`.
    pub fn latest(version: &str) -> Self {
        Behaviour::DistTags(format!(r#"{{"latest":"{version}"}}"#))
    }
}

/// What the registry has seen.
#[derive(Debug, Default)]
struct Seen {
    /// The last request: its target path and headers (names lower-cased).
    last_path: Option<String>,
    last_headers: Vec<(String, String)>,
}

/// A running registry; stops (and joins its threads) when dropped.
pub struct TestRegistry {
    /// `http://127.0.0.1:<port>` — what goes into `[update] registry`.
    pub url: String,
    requests: Arc<AtomicUsize>,
    connections: Arc<AtomicUsize>,
    seen: Arc<Mutex<Seen>>,
    stop: Arc<AtomicBool>,
    acceptor: Option<JoinHandle<()>>,
}

impl TestRegistry {
    /// Binds 127.0.0.1:0 and serves `behaviour` from a background thread.
    pub fn start(behaviour: Behaviour) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the test registry");
        let addr: SocketAddr = listener.local_addr().expect("registry address");
        // Non-blocking, so the accept loop can notice the stop flag.
        listener
            .set_nonblocking(true)
            .expect("non-blocking listener");
        let shared = Shared {
            behaviour: Arc::new(behaviour),
            requests: Arc::new(AtomicUsize::new(0)),
            seen: Arc::new(Mutex::new(Seen::default())),
            stop: Arc::new(AtomicBool::new(false)),
        };
        let connections = Arc::new(AtomicUsize::new(0));
        let acceptor = {
            let shared = shared.clone();
            let connections = Arc::clone(&connections);
            std::thread::spawn(move || accept_loop(&listener, &shared, &connections))
        };
        Self {
            url: format!("http://{addr}"),
            requests: shared.requests,
            connections,
            seen: shared.seen,
            stop: shared.stop,
            acceptor: Some(acceptor),
        }
    }

    /// Requests received so far (a request head was read), on any path.
    pub fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }

    /// TCP connections accepted so far, whether or not a request followed.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    /// The last request's target (path and query).
    pub fn last_path(&self) -> Option<String> {
        self.lock().last_path.clone()
    }

    /// The last request's `User-Agent`.
    pub fn last_user_agent(&self) -> Option<String> {
        self.lock()
            .last_headers
            .iter()
            .find(|(name, _)| name == "user-agent")
            .map(|(_, value)| value.clone())
    }

    /// The last request's headers, names lower-cased, in arrival order.
    pub fn last_headers(&self) -> Vec<(String, String)> {
        self.lock().last_headers.clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Seen> {
        self.seen.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Drop for TestRegistry {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
    }
}

/// A `http://127.0.0.1:<port>` URL where nothing listens: bound, then released.
pub fn closed_port_url() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a port to release");
    let addr = listener.local_addr().expect("address");
    drop(listener);
    format!("http://{addr}")
}

#[derive(Clone)]
struct Shared {
    behaviour: Arc<Behaviour>,
    requests: Arc<AtomicUsize>,
    seen: Arc<Mutex<Seen>>,
    stop: Arc<AtomicBool>,
}

impl Shared {
    fn stopped(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    /// Sleeps `total`, or less if the registry is stopped meanwhile.
    fn sleep(&self, total: Duration) {
        let until = Instant::now() + total;
        while !self.stopped() && Instant::now() < until {
            std::thread::sleep(POLL.min(until.saturating_duration_since(Instant::now())));
        }
    }
}

fn accept_loop(listener: &TcpListener, shared: &Shared, connections: &AtomicUsize) {
    let mut handlers = Vec::new();
    while !shared.stopped() {
        match listener.accept() {
            Ok((stream, _)) => {
                connections.fetch_add(1, Ordering::SeqCst);
                let shared = shared.clone();
                handlers.push(std::thread::spawn(move || {
                    // A client that misbehaves only ends its own connection.
                    let _ = handle(stream, &shared);
                }));
            }
            // Nothing pending (WouldBlock) or a failed accept: try again shortly.
            Err(_) => std::thread::sleep(POLL),
        }
    }
    // Every handler watches the stop flag too, so these joins are short.
    for handler in handlers {
        let _ = handler.join();
    }
}

fn handle(mut stream: TcpStream, shared: &Shared) -> std::io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(POLL))?;
    stream.set_write_timeout(Some(WRITE_TIMEOUT))?;
    let Some(head) = read_head(&mut stream, shared)? else {
        return Ok(());
    };
    let (method, path, headers) = parse_head(&head);
    shared.requests.fetch_add(1, Ordering::SeqCst);
    {
        let mut seen = shared.seen.lock().unwrap_or_else(|p| p.into_inner());
        seen.last_path = Some(path.clone());
        seen.last_headers = headers;
    }
    if method != "GET" || !path.eq_ignore_ascii_case(DIST_TAGS_PATH) {
        return respond(&mut stream, 404, br#"{"error":"not found"}"#);
    }
    match &*shared.behaviour {
        Behaviour::DistTags(body) => respond(&mut stream, 200, body.as_bytes()),
        Behaviour::Status(code) => respond(&mut stream, *code, b""),
        Behaviour::Garbage => respond(&mut stream, 200, b"<html>not json</html>"),
        Behaviour::TooLarge => {
            // Valid JSON with a valid `latest`: only its size may reject it.
            let pad = "x".repeat((1 << 20) + 1024);
            let body = format!(r#"{{"latest":"1.9.0","pad":"{pad}"}}"#);
            respond(&mut stream, 200, body.as_bytes())
        }
        Behaviour::NotSemver => respond(&mut stream, 200, br#"{"latest":"1.x"}"#),
        Behaviour::PrereleaseUnderLatest => {
            respond(&mut stream, 200, br#"{"latest":"9.0.0-rc.1"}"#)
        }
        Behaviour::NeverAnswers => {
            // Hold the connection open, silent, until the registry stops.
            while !shared.stopped() {
                std::thread::sleep(POLL);
            }
            Ok(())
        }
        Behaviour::Slow(delay) => {
            shared.sleep(*delay);
            if shared.stopped() {
                return Ok(());
            }
            respond(&mut stream, 200, br#"{"latest":"1.9.0"}"#)
        }
    }
}

/// Reads up to the blank line ending a request head; `None` if the client
/// closed, went silent past [`HEAD_DEADLINE`], or the registry stopped.
fn read_head(stream: &mut TcpStream, shared: &Shared) -> std::io::Result<Option<String>> {
    let deadline = Instant::now() + HEAD_DEADLINE;
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !shared.stopped() && Instant::now() < deadline && head.len() < HEAD_CAP {
        match stream.read(&mut buf) {
            Ok(0) => return Ok(None),
            Ok(n) => {
                head.extend_from_slice(&buf[..n]);
                if let Some(end) = head.windows(4).position(|w| w == b"\r\n\r\n") {
                    head.truncate(end);
                    return Ok(Some(String::from_utf8_lossy(&head).into_owned()));
                }
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(None)
}

/// `(method, target, headers)`; header names lower-cased.
fn parse_head(head: &str) -> (String, String, Vec<(String, String)>) {
    let mut lines = head.split("\r\n");
    let mut request_line = lines.next().unwrap_or_default().split(' ');
    let method = request_line.next().unwrap_or_default().to_string();
    let path = request_line.next().unwrap_or_default().to_string();
    let headers = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(name, value)| (name.trim().to_ascii_lowercase(), value.trim().to_string()))
        .collect();
    (method, path, headers)
}

fn respond(stream: &mut TcpStream, status: u16, body: &[u8]) -> std::io::Result<()> {
    let reason = match status {
        200 => "OK",
        404 => "Not Found",
        500 => "Internal Server Error",
        _ => "Status",
    };
    let head = format!(
        "HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\n\
         content-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes())?;
    // A client that stops reading (the size cap) makes this fail: fine.
    stream.write_all(body)?;
    stream.flush()
}
