//! A small npm-registry-like HTTP server on 127.0.0.1 for tests: it serves
//! packuments (`GET /@scope%2fname`), dist-tags
//! (`GET /-/package/@scope%2fname/dist-tags`) and tarballs
//! (`GET /@scope/name/-/name-<v>.tgz`), counts every request by path, and
//! records each request's `User-Agent`.
//!
//! [`Registry::publish`] adds a version with the tarball's real
//! `dist.integrity` and its publish time in `time`;
//! [`Registry::publish_with_integrity`] lets a test lie, and
//! [`Registry::deprecate`] does what `npm deprecate` does. Like a real
//! registry, a packument asked for with npm's abbreviated `Accept`
//! (`application/vnd.npm.install-v1+json`) comes without `time`.
//! [`Registry::serve`] overrides any path with a canned [`Reply`]: an HTTP
//! status, garbage, a body cut short, one sent without a Content-Length, or
//! one sent a byte at a time.
//!
//! One thread accepts connections and one thread answers each; every answer
//! closes its connection, so no client keeps state between requests.
//!
//! [`Registry::with_dist_tags`] answers only `@waiaas/cli`'s dist-tags, the
//! one request the daemon's version check makes, the way a [`Behaviour`]
//! says; [`Registry::connections`], [`Registry::last_path`] and
//! [`Registry::last_headers`] say what arrived.
//!
//! [`Registry::start_tls`] serves the same over HTTPS with a certificate for
//! 127.0.0.1 issued by a throwaway [`TestCa`]: the binaries' one TLS stack
//! (rustls on `ring`) checked against a real handshake.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{Value, json};
use sha2::{Digest as _, Sha512};

/// A canned answer for one path.
#[derive(Debug, Clone)]
pub enum Reply {
    /// `200` with this body and content type.
    Body(Vec<u8>, &'static str),
    /// This status with a short text body.
    Status(u16),
    /// `200` declaring `declared` bytes of Content-Length, sending only `body`.
    Truncated { body: Vec<u8>, declared: usize },
    /// `200` without Content-Length: the body ends when the connection closes.
    NoLength(Vec<u8>),
    /// `200` declaring `body.len() * 2` bytes, sending `body`, then nothing
    /// for `silence` before the connection closes.
    Stall { body: Vec<u8>, silence: Duration },
    /// `302` to this location.
    Redirect(String),
    /// `200` declaring `body.len()` bytes, then `chunk` bytes per `every`
    /// until the body is sent or the client hangs up.
    Trickle {
        body: Vec<u8>,
        chunk: usize,
        every: Duration,
    },
    /// Not a byte: the connection is held open until the registry stops.
    Silent,
    /// This reply after this long; nothing if the registry stops first.
    Late(Duration, Box<Reply>),
}

/// The dist-tags path of `@waiaas/cli`, as the daemon's version check asks it.
pub const DIST_TAGS_PATH: &str = "/-/package/@waiaas%2fcli/dist-tags";

/// How [`Registry::with_dist_tags`] answers `@waiaas/cli`'s dist-tags.
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

    fn reply(self) -> Reply {
        let json = |body: String| Reply::Body(body.into_bytes(), "application/json");
        match self {
            Behaviour::DistTags(body) => json(body),
            Behaviour::Status(code) => Reply::Status(code),
            Behaviour::Garbage => json("<html>not json</html>".into()),
            Behaviour::TooLarge => {
                // Valid JSON with a valid `latest`: only its size may reject it.
                let pad = "x".repeat((1 << 20) + 1024);
                json(format!(r#"{{"latest":"1.9.0","pad":"{pad}"}}"#))
            }
            Behaviour::NotSemver => json(r#"{"latest":"1.x"}"#.into()),
            Behaviour::PrereleaseUnderLatest => json(r#"{"latest":"9.0.0-rc.1"}"#.into()),
            Behaviour::NeverAnswers => Reply::Silent,
            Behaviour::Slow(delay) => {
                Reply::Late(delay, Box::new(Behaviour::latest("1.9.0").reply()))
            }
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

/// One request as it arrived.
struct Seen {
    /// The request target, as sent (path and query, still encoded).
    target: String,
    /// Its headers, names lower-cased, in arrival order.
    headers: Vec<(String, String)>,
}

#[derive(Default)]
struct State {
    /// Packuments by package name (`@waiaas/cli`).
    packuments: HashMap<String, Value>,
    /// Replies by decoded path (`/@waiaas/cli-linux-x64/-/…tgz`).
    files: HashMap<String, Reply>,
    /// Overrides by decoded path; win over everything else.
    overrides: HashMap<String, Reply>,
    hits: HashMap<String, usize>,
    seen: Vec<Seen>,
}

/// A running registry; stopped when dropped.
pub struct Registry {
    url: String,
    state: Arc<Mutex<State>>,
    stop: Arc<AtomicBool>,
    accept: Option<JoinHandle<()>>,
    port: u16,
    connections: Arc<AtomicUsize>,
}

impl Registry {
    /// Starts a registry on a free loopback port.
    pub fn start() -> Self {
        Self::start_with(None)
    }

    /// Starts a registry on a free loopback port that speaks HTTPS only,
    /// with `ca`'s certificate for 127.0.0.1.
    pub fn start_tls(ca: &TestCa) -> Self {
        Self::start_with(Some(ca.server.clone()))
    }

    /// Starts a registry whose only answer is to `@waiaas/cli`'s dist-tags
    /// ([`DIST_TAGS_PATH`]), as `behaviour` says; any other path is a 404.
    pub fn with_dist_tags(behaviour: Behaviour) -> Self {
        let registry = Self::start();
        registry.serve(&decode(DIST_TAGS_PATH), behaviour.reply());
        registry
    }

    fn start_with(tls: Option<Arc<rustls::ServerConfig>>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
        let port = listener.local_addr().expect("local address").port();
        let state = Arc::new(Mutex::new(State::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let scheme = if tls.is_some() { "https" } else { "http" };
        let connections = Arc::new(AtomicUsize::new(0));
        let accept = {
            let (state, stop, connections) = (state.clone(), stop.clone(), connections.clone());
            std::thread::spawn(move || {
                for stream in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(stream) = stream else { continue };
                    connections.fetch_add(1, Ordering::SeqCst);
                    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
                    let state = state.clone();
                    let stop = stop.clone();
                    let tls = tls.clone();
                    std::thread::spawn(move || match tls {
                        None => answer(stream, &state, &stop),
                        Some(config) => {
                            let Ok(connection) = rustls::ServerConnection::new(config) else {
                                return;
                            };
                            let mut stream = rustls::StreamOwned::new(connection, stream);
                            answer(&mut stream, &state, &stop);
                            stream.conn.send_close_notify();
                            let _ = stream.flush();
                        }
                    });
                }
            })
        };
        Self {
            url: format!("{scheme}://127.0.0.1:{port}"),
            state,
            stop,
            accept: Some(accept),
            port,
            connections,
        }
    }

    /// The base URL, `http://127.0.0.1:<port>` (`https://` from
    /// [`Registry::start_tls`]), for `[update] registry`.
    pub fn url(&self) -> &str {
        &self.url
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The path a package's tarball is served at, npm style.
    pub fn tarball_path(name: &str, version: &str) -> String {
        let short = name.rsplit('/').next().unwrap_or(name);
        format!("/{name}/-/{short}-{version}.tgz")
    }

    /// The (decoded) path of a package's packument.
    pub fn packument_path(name: &str) -> String {
        format!("/{name}")
    }

    /// Publishes `name@version` with `tarball`, its real integrity, and the
    /// `latest` tag pointing at it.
    pub fn publish(&self, name: &str, version: &str, tarball: Vec<u8>) {
        let integrity = sri_sha512(&tarball);
        self.publish_with_integrity(name, version, tarball, &integrity);
    }

    /// Publishes `name@version` with `tarball`, claiming `integrity` for it.
    pub fn publish_with_integrity(
        &self,
        name: &str,
        version: &str,
        tarball: Vec<u8>,
        integrity: &str,
    ) {
        let path = Self::tarball_path(name, version);
        let entry = json!({
            "name": name,
            "version": version,
            "dist": {
                "tarball": format!("{}{path}", self.url),
                "integrity": integrity,
            },
        });
        let mut state = self.state();
        let packument = state
            .packuments
            .entry(name.to_string())
            .or_insert_with(|| json!({"name": name, "dist-tags": {}, "versions": {}}));
        packument["versions"][version] = entry;
        packument["dist-tags"]["latest"] = json!(version);
        packument["time"][version] = json!(waiaas_shared::time::UtcTime::now().rfc3339());
        state
            .files
            .insert(path, Reply::Body(tarball, "application/octet-stream"));
    }

    /// Points `name`'s dist-tag `tag` at `version`.
    pub fn set_tag(&self, name: &str, tag: &str, version: &str) {
        let mut state = self.state();
        let packument = state
            .packuments
            .entry(name.to_string())
            .or_insert_with(|| json!({"name": name, "dist-tags": {}, "versions": {}}));
        packument["dist-tags"][tag] = json!(version);
    }

    /// Marks a published `name@version` deprecated with `message`, as
    /// `npm deprecate` does (`""` lifts it).
    pub fn deprecate(&self, name: &str, version: &str, message: &str) {
        let mut state = self.state();
        let entry = state
            .packuments
            .get_mut(name)
            .and_then(|packument| packument["versions"].get_mut(version))
            .unwrap_or_else(|| panic!("{name}@{version} is not published"));
        entry["deprecated"] = json!(message);
    }

    /// Answers `path` (decoded: `/@waiaas/cli`) with `reply` from now on.
    pub fn serve(&self, path: &str, reply: Reply) {
        self.state().overrides.insert(path.to_string(), reply);
    }

    /// How many requests `path` (decoded) has had.
    pub fn hits(&self, path: &str) -> usize {
        self.state().hits.get(path).copied().unwrap_or(0)
    }

    /// How many requests there have been in all.
    pub fn total_hits(&self) -> usize {
        self.state().hits.values().sum()
    }

    /// The `User-Agent` of every request so far (empty string if none).
    pub fn user_agents(&self) -> Vec<String> {
        let state = self.state();
        state
            .seen
            .iter()
            .map(|seen| header(&seen.headers, "user-agent"))
            .collect()
    }

    /// TCP connections accepted so far, whether or not a request followed.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    /// The last request's target, as sent (path and query, still encoded).
    pub fn last_path(&self) -> Option<String> {
        self.state().seen.last().map(|seen| seen.target.clone())
    }

    /// The last request's headers, names lower-cased, in arrival order.
    pub fn last_headers(&self) -> Vec<(String, String)> {
        let state = self.state();
        state
            .seen
            .last()
            .map(|seen| seen.headers.clone())
            .unwrap_or_default()
    }

    /// The last request's `User-Agent`.
    pub fn last_user_agent(&self) -> Option<String> {
        let state = self.state();
        let seen = state.seen.last()?;
        seen.headers
            .iter()
            .find(|(name, _)| name == "user-agent")
            .map(|(_, value)| value.clone())
    }
}

/// The value of header `name` (lower-case), or `""`.
fn header(headers: &[(String, String)], name: &str) -> String {
    headers
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, value)| value.clone())
        .unwrap_or_default()
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(accept) = self.accept.take() {
            let _ = accept.join();
        }
    }
}

/// A throwaway certificate authority and the server certificate it issued
/// for 127.0.0.1, both on rustls's `ring` provider (the one the binaries link).
pub struct TestCa {
    /// The CA certificate, PEM: what a client given `SSL_CERT_FILE` trusts.
    pub cert_pem: String,
    server: Arc<rustls::ServerConfig>,
}

impl TestCa {
    pub fn new() -> Self {
        let ca_key = rcgen::KeyPair::generate().expect("a CA key");
        let mut ca_params = rcgen::CertificateParams::new(Vec::new()).expect("CA parameters");
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "waiaas test CA");
        let ca_cert = ca_params.self_signed(&ca_key).expect("self-sign the CA");
        let issuer = rcgen::Issuer::new(ca_params, ca_key);

        let server_key = rcgen::KeyPair::generate().expect("a server key");
        let server_params = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()])
            .expect("server parameters");
        let server_cert = server_params
            .signed_by(&server_key, &issuer)
            .expect("issue the server certificate");

        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let server = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .with_no_client_auth()
            .with_single_cert(
                vec![server_cert.der().clone(), ca_cert.der().clone()],
                rustls::pki_types::PrivateKeyDer::Pkcs8(server_key.serialize_der().into()),
            )
            .expect("the server certificate");
        Self {
            cert_pem: ca_cert.pem(),
            server: Arc::new(server),
        }
    }
}

/// `sha512-<base64>`, as npm records `dist.integrity`.
pub fn sri_sha512(bytes: &[u8]) -> String {
    let digest = Sha512::digest(bytes);
    format!(
        "sha512-{}",
        base64::engine::general_purpose::STANDARD.encode(digest)
    )
}

/// `%2f` / `%2F` → `/`, so `@scope%2fname` and `@scope/name` are one path.
fn decode(path: &str) -> String {
    path.replace("%2f", "/").replace("%2F", "/")
}

fn answer(mut stream: impl Read + Write, state: &Mutex<State>, stop: &AtomicBool) {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
        if head.len() > 64 * 1024 {
            return;
        }
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    let mut lines = head.split("\r\n");
    let request_line = lines.next().unwrap_or_default();
    let mut parts = request_line.split_whitespace();
    let method = parts.next().unwrap_or_default().to_string();
    let raw_path = parts.next().unwrap_or("/").to_string();
    let headers: Vec<(String, String)> = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(name, value)| (name.trim().to_ascii_lowercase(), value.trim().to_string()))
        .collect();
    let abbreviated = header(&headers, "accept").starts_with(ABBREVIATED);
    let path = decode(raw_path.split('?').next().unwrap_or_default());

    let reply = {
        let mut state = state.lock().unwrap_or_else(|e| e.into_inner());
        *state.hits.entry(path.clone()).or_insert(0) += 1;
        state.seen.push(Seen {
            target: raw_path,
            headers,
        });
        route(&state, &method, &path, abbreviated)
    };
    let _ = send(&mut stream, reply, stop);
}

/// How often a reply that waits looks at the stop flag.
const POLL: Duration = Duration::from_millis(20);

/// Sleeps `total`, or less if the registry stops meanwhile; whether it stopped.
fn wait(total: Duration, stop: &AtomicBool) -> bool {
    // `None`: past what an `Instant` holds, i.e. until the registry stops.
    let until = Instant::now().checked_add(total);
    while !stop.load(Ordering::SeqCst) {
        let left = until.map_or(POLL, |until| {
            until.saturating_duration_since(Instant::now())
        });
        if left.is_zero() {
            break;
        }
        std::thread::sleep(POLL.min(left));
    }
    stop.load(Ordering::SeqCst)
}

/// npm's abbreviated packument form (what a client prefers first).
const ABBREVIATED: &str = "application/vnd.npm.install-v1+json";

fn route(state: &State, method: &str, path: &str, abbreviated: bool) -> Reply {
    if method != "GET" {
        return Reply::Status(405);
    }
    if let Some(reply) = state.overrides.get(path) {
        return reply.clone();
    }
    if let Some(reply) = state.files.get(path) {
        return reply.clone();
    }
    if let Some(name) = path
        .strip_prefix("/-/package/")
        .and_then(|rest| rest.strip_suffix("/dist-tags"))
    {
        return match state.packuments.get(name) {
            Some(packument) => json_reply(&packument["dist-tags"]),
            None => Reply::Status(404),
        };
    }
    match path
        .strip_prefix('/')
        .and_then(|name| state.packuments.get(name))
    {
        Some(packument) if abbreviated => {
            let mut short = packument.clone();
            if let Some(fields) = short.as_object_mut() {
                fields.remove("time");
            }
            Reply::Body(serde_json::to_vec(&short).unwrap_or_default(), ABBREVIATED)
        }
        Some(packument) => json_reply(packument),
        None => Reply::Status(404),
    }
}

fn json_reply(value: &Value) -> Reply {
    Reply::Body(
        serde_json::to_vec(value).unwrap_or_default(),
        "application/json",
    )
}

fn send(stream: &mut impl Write, reply: Reply, stop: &AtomicBool) -> std::io::Result<()> {
    match reply {
        Reply::Silent => {
            wait(Duration::MAX, stop);
            Ok(())
        }
        Reply::Late(delay, reply) => {
            if wait(delay, stop) {
                return Ok(());
            }
            return send(stream, *reply, stop);
        }
        Reply::Body(body, content_type) => {
            write!(
                stream,
                "HTTP/1.1 200 OK\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            )?;
            stream.write_all(&body)
        }
        Reply::Status(status) => {
            let body = format!("status {status}\n");
            write!(
                stream,
                "HTTP/1.1 {status} Canned\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            )
        }
        Reply::Truncated { body, declared } => {
            write!(
                stream,
                "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: {declared}\r\nConnection: close\r\n\r\n"
            )?;
            stream.write_all(&body)
        }
        Reply::NoLength(body) => {
            write!(
                stream,
                "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nConnection: close\r\n\r\n"
            )?;
            // The client may hang up once it has seen enough.
            for chunk in body.chunks(16 * 1024) {
                stream.write_all(chunk)?;
            }
            Ok(())
        }
        Reply::Stall { body, silence } => {
            write!(
                stream,
                "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len() * 2
            )?;
            stream.write_all(&body)?;
            stream.flush()?;
            std::thread::sleep(silence);
            Ok(())
        }
        Reply::Redirect(location) => write!(
            stream,
            "HTTP/1.1 302 Found\r\nLocation: {location}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        ),
        Reply::Trickle { body, chunk, every } => {
            write!(
                stream,
                "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            )?;
            for piece in body.chunks(chunk.max(1)) {
                stream.write_all(piece)?;
                stream.flush()?;
                std::thread::sleep(every);
            }
            Ok(())
        }
    }?;
    stream.flush()
}
