//! A FleetLock server on 127.0.0.1, as Zincati's protocol document
//! describes one: `POST /v1/pre-reboot` is a recursive lock of a counting
//! semaphore per group (one slot here), `POST /v1/steady-state` an
//! unlock-if-held; both require the `fleet-lock-protocol: true` header and
//! a `{"client_params": {"id", "group"}}` body; errors are non-200 answers
//! with a `{"kind", "value"}` body. Every grant and release is recorded
//! with its time, so a test can check that no two nodes held a slot at
//! once; an operator's release is [`FleetLockServer::release`].

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// One grant of the slot: who, and from when to when (`None` while held).
#[derive(Debug, Clone)]
pub struct Hold {
    pub id: String,
    pub taken: Instant,
    pub given_back: Option<Instant>,
}

#[derive(Default)]
struct Books {
    /// The holder of each group's one slot.
    holders: BTreeMap<String, String>,
    holds: Vec<Hold>,
    refusals: usize,
    /// How long a granted slot's answer is held back (a client killed while
    /// it waits holds a slot it never heard of).
    grant_delay: Duration,
}

pub struct FleetLockServer {
    pub url: String,
    books: Arc<Mutex<Books>>,
}

impl FleetLockServer {
    pub fn start() -> Self {
        Self::start_on(0)
    }

    /// On a chosen port (a test may name it in a config before the server
    /// is up).
    pub fn start_on(port: u16) -> Self {
        let listener = TcpListener::bind(("127.0.0.1", port)).unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let books = Arc::new(Mutex::new(Books::default()));
        let shared = books.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let books = shared.clone();
                std::thread::spawn(move || serve(stream, &books));
            }
        });
        Self { url, books }
    }

    /// Every grant so far, in order.
    pub fn holds(&self) -> Vec<Hold> {
        self.books.lock().unwrap().holds.clone()
    }

    /// Who holds `group`'s slot now.
    pub fn holder(&self, group: &str) -> Option<String> {
        self.books.lock().unwrap().holders.get(group).cloned()
    }

    pub fn delay_grants(&self, delay: Duration) {
        self.books.lock().unwrap().grant_delay = delay;
    }

    pub fn refusals(&self) -> usize {
        self.books.lock().unwrap().refusals
    }

    /// An operator frees `group`'s slot on the server (as `airlock` or a
    /// lease deletion would), whoever holds it.
    pub fn release(&self, group: &str) {
        let mut books = self.books.lock().unwrap();
        if let Some(id) = books.holders.remove(group) {
            end_hold(&mut books, &id);
        }
    }
}

fn end_hold(books: &mut Books, id: &str) {
    if let Some(hold) = books
        .holds
        .iter_mut()
        .rev()
        .find(|h| h.id == id && h.given_back.is_none())
    {
        hold.given_back = Some(Instant::now());
    }
}

fn serve(stream: std::net::TcpStream, books: &Mutex<Books>) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let mut reader = BufReader::new(&stream);
    let mut request_line = String::new();
    if reader.read_line(&mut request_line).is_err() {
        return;
    }
    let (mut length, mut protocol) = (0usize, false);
    let mut line = String::new();
    while reader.read_line(&mut line).is_ok_and(|n| n > 0) && line != "\r\n" {
        let lower = line.to_ascii_lowercase();
        if let Some(v) = lower.strip_prefix("content-length:") {
            length = v.trim().parse().unwrap_or(0);
        }
        if lower.trim() == "fleet-lock-protocol: true" {
            protocol = true;
        }
        line.clear();
    }
    let mut body = vec![0; length.min(1 << 16)];
    if reader.read_exact(&mut body).is_err() {
        return;
    }
    let (status, answer) = answer(&request_line, protocol, &body, books);
    let delay = books.lock().unwrap().grant_delay;
    if request_line.contains("/v1/pre-reboot") && status.starts_with("200") {
        std::thread::sleep(delay);
    }
    let text = format!(
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{answer}",
        answer.len()
    );
    let _ = (&stream).write_all(text.as_bytes());
}

fn refusal(status: &str, kind: &str, value: &str) -> (String, String) {
    (
        status.to_string(),
        serde_json::json!({ "kind": kind, "value": value }).to_string(),
    )
}

fn answer(
    request_line: &str,
    protocol: bool,
    body: &[u8],
    books: &Mutex<Books>,
) -> (String, String) {
    let mut words = request_line.split_whitespace();
    let (method, path) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
    if method != "POST" {
        return refusal("405 Method Not Allowed", "method", method);
    }
    if !protocol {
        return refusal("400 Bad Request", "missing_header", "fleet-lock-protocol");
    }
    let params = serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .map(|v| v["client_params"].clone());
    let (Some(id), Some(group)) = (
        params.as_ref().and_then(|p| p["id"].as_str()),
        params.as_ref().and_then(|p| p["group"].as_str()),
    ) else {
        return refusal("400 Bad Request", "invalid_client_params", "id and group");
    };
    let mut books = books.lock().unwrap();
    match path {
        "/v1/pre-reboot" => match books.holders.get(group).cloned() {
            Some(holder) if holder == id => ("200 OK".into(), String::new()),
            Some(holder) => {
                books.refusals += 1;
                refusal(
                    "409 Conflict",
                    "failed_lock",
                    &format!("all 1 slots of group {group} are taken (by {holder})"),
                )
            }
            None => {
                books.holders.insert(group.to_string(), id.to_string());
                books.holds.push(Hold {
                    id: id.to_string(),
                    taken: Instant::now(),
                    given_back: None,
                });
                ("200 OK".into(), String::new())
            }
        },
        "/v1/steady-state" => {
            if books.holders.get(group).is_some_and(|h| h == id) {
                books.holders.remove(group);
                end_hold(&mut books, id);
            }
            ("200 OK".into(), String::new())
        }
        _ => refusal("404 Not Found", "unknown_path", path),
    }
}
