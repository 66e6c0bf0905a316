//! A minimal `GET /health` over plain HTTP/1.1, so the supervisor can judge
//! readiness without carrying an HTTP client stack in its resident memory;
//! and, for a daemon on probation, its write probe (`POST /probe/write`).

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use waiaas_shared::health::HealthResponse;

/// Largest answer read.
const CAP: u64 = 64 * 1024;

/// Asks `addr` for `/health`; an error says what was wrong, for log lines.
pub async fn health(addr: SocketAddr, timeout: Duration) -> Result<HealthResponse, String> {
    tokio::time::timeout(timeout, ask(addr))
        .await
        .map_err(|_| format!("no answer from http://{addr}/health within {timeout:?}"))?
}

/// Asks a daemon on probation, at its probe listener `addr`, for `/health`
/// and then to write (in a transaction it rolls back): healthy only if both
/// answer right.
pub async fn on_probation(addr: SocketAddr, timeout: Duration) -> Result<HealthResponse, String> {
    tokio::time::timeout(timeout, async {
        let health = ask(addr).await?;
        let answer = exchange(addr, "POST /probe/write", "Content-Length: 0\r\n").await?;
        match status_line(&answer) {
            Some(status) if status.starts_with("HTTP/1.1 204") => Ok(health),
            status => Err(format!(
                "the write probe answered `{}`",
                status.unwrap_or("garbage")
            )),
        }
    })
    .await
    .map_err(|_| format!("no answer from the probes at http://{addr} within {timeout:?}"))?
}

async fn ask(addr: SocketAddr) -> Result<HealthResponse, String> {
    parse(&exchange(addr, "GET /health", "").await?)
}

/// Sends one request (`line`: method and path) and reads the whole answer.
async fn exchange(addr: SocketAddr, line: &str, headers: &str) -> Result<Vec<u8>, String> {
    let mut stream = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("cannot connect to {addr}: {e}"))?;
    let request = format!("{line} HTTP/1.1\r\nHost: {addr}\r\n{headers}Connection: close\r\n\r\n");
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| format!("cannot send to {addr}: {e}"))?;
    let mut answer = Vec::new();
    stream
        .take(CAP)
        .read_to_end(&mut answer)
        .await
        .map_err(|e| format!("cannot read from {addr}: {e}"))?;
    Ok(answer)
}

fn status_line(answer: &[u8]) -> Option<&str> {
    let head = std::str::from_utf8(answer.split(|&b| b == b'\r').next()?).ok()?;
    head.starts_with("HTTP/").then_some(head)
}

fn parse(answer: &[u8]) -> Result<HealthResponse, String> {
    let text = String::from_utf8_lossy(answer);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or("health answer is not HTTP")?;
    let status = head.lines().next().unwrap_or_default();
    if !status.starts_with("HTTP/1.1 200") {
        return Err(format!("health answered `{status}`"));
    }
    serde_json::from_str(body).map_err(|e| format!("health answer is not a HealthResponse: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_good_answer_and_rejects_others() {
        let body = r#"{"status":"ok","version":"1.8.1","latestVersion":null,"updateAvailable":false,"schemaVersion":16,"uptime":1,"timestamp":2}"#;
        let ok = format!("HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\r\n{body}");
        assert_eq!(parse(ok.as_bytes()).unwrap().schema_version, 16);
        assert!(
            parse(b"HTTP/1.1 503 Service Unavailable\r\n\r\n{}")
                .unwrap_err()
                .contains("503")
        );
        assert!(parse(b"garbage").is_err());
        assert!(parse(b"HTTP/1.1 200 OK\r\n\r\n{\"status\":1}").is_err());
    }
}
