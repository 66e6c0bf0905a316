//! The daemon as a process: health, the data API, configuration errors,
//! listener hand-over and graceful shutdown.

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use testkit::daemon::{Daemon, Install, api, client};
use waiaas_daemon::migrate::LATEST_SCHEMA_VERSION;
use waiaas_shared::exit::daemon as code;

const READY: Duration = Duration::from_secs(20);

#[tokio::test]
async fn health_has_exactly_the_spec_fields() {
    let install = Install::new();
    let mut daemon = Daemon::start(&install);
    daemon.wait_healthy(READY).await;
    let body: serde_json::Value = client()
        .get(format!("{}/health", daemon.base_url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let mut keys: Vec<_> = body.as_object().unwrap().keys().cloned().collect();
    keys.sort();
    assert_eq!(
        keys,
        [
            "latestVersion",
            "schemaVersion",
            "status",
            "timestamp",
            "updateAvailable",
            "uptime",
            "version"
        ]
    );
    assert_eq!(body["status"], "ok");
    assert_eq!(body["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(body["schemaVersion"], LATEST_SCHEMA_VERSION);
    assert!(body["timestamp"].as_u64().unwrap() > 1_700_000_000);
    assert!(body["uptime"].is_u64());
    assert!(daemon.stop().success());
}

#[tokio::test]
async fn wallets_need_the_token_and_are_written_with_an_audit_entry() {
    let install = Install::new();
    let mut daemon = Daemon::start(&install);
    daemon.wait_healthy(READY).await;

    let mode = std::fs::metadata(install.dir.master_token())
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "master.token must be owner-only");

    let url = format!("{}/v1/wallets", daemon.base_url);
    let anonymous = client().get(&url).send().await.unwrap();
    assert_eq!(anonymous.status(), 401);
    let wrong = api("not-the-token").get(&url).send().await.unwrap();
    assert_eq!(wrong.status(), 401);

    let client = api(&install.token());
    let created = client
        .post(&url)
        .json(&serde_json::json!({"name": "treasury", "chain": "solana", "network": "devnet"}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    let wallet: serde_json::Value = created.json().await.unwrap();
    assert_eq!(wallet["name"], "treasury");

    let bad = client
        .post(&url)
        .json(&serde_json::json!({"name": "x", "chain": "dogecoin", "network": "main"}))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
    let error: serde_json::Value = bad.json().await.unwrap();
    assert!(
        error["error"]["message"]
            .as_str()
            .unwrap()
            .contains("chain")
    );

    let list: serde_json::Value = client.get(&url).send().await.unwrap().json().await.unwrap();
    assert_eq!(list["wallets"].as_array().unwrap().len(), 1);
    assert_eq!(list["wallets"][0]["id"], wallet["id"]);
    assert!(daemon.stop().success());

    let conn = rusqlite::Connection::open(install.dir.database()).unwrap();
    let audited: i64 = conn
        .query_row(
            "SELECT count(*) FROM audit_log WHERE event_type = 'WALLET_CREATED' AND wallet_id = ?1",
            [wallet["id"].as_str().unwrap()],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(audited, 1);
}

#[tokio::test]
async fn sigterm_drains_checkpoints_and_exits_zero() {
    let install = Install::new();
    let mut daemon = Daemon::start(&install);
    daemon.wait_healthy(READY).await;
    let client = api(&install.token());
    for i in 0..20 {
        let response = client
            .post(format!("{}/v1/wallets", daemon.base_url))
            .json(&serde_json::json!({"name": format!("w{i}"), "chain": "ethereum", "network": "sepolia"}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 201);
    }
    let status = daemon.stop();
    assert_eq!(status.code(), Some(code::OK), "exit status {status}");
    // The WAL was folded into the main file: the database file alone holds everything.
    let wal = format!("{}-wal", install.dir.database().display());
    let wal_len = std::fs::metadata(&wal).map(|m| m.len()).unwrap_or(0);
    assert_eq!(wal_len, 0, "WAL left with {wal_len} bytes");
    let conn = rusqlite::Connection::open(install.dir.database()).unwrap();
    let n: i64 = conn
        .query_row("SELECT count(*) FROM wallets", [], |r| r.get(0))
        .unwrap();
    assert_eq!(n, 20);
}

#[tokio::test]
async fn sigterm_waits_for_an_in_flight_request() {
    let install = Install::new();
    let mut daemon = Daemon::start(&install);
    daemon.wait_healthy(READY).await;
    // A request whose body arrives slowly is in flight when SIGTERM lands.
    let mut stream = tokio::net::TcpStream::connect(daemon.addr).await.unwrap();
    let body = br#"{"name":"late","chain":"solana","network":"devnet"}"#;
    let head = format!(
        "POST /v1/wallets HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        install.token(),
        body.len()
    );
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(&body[..10]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    daemon.signal(libc::SIGTERM);
    tokio::time::sleep(Duration::from_millis(300)).await;
    stream.write_all(&body[10..]).await.unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 201"), "{answer}");
    let status = daemon
        .wait_exit(Duration::from_secs(30))
        .expect("daemon exits");
    assert_eq!(status.code(), Some(code::OK));
}

#[test]
fn malformed_config_exits_with_the_config_code_and_names_the_key() {
    let install = Install::new();
    for (text, key) in [
        (
            "[daemon]\nshutdown_timeout = 1\n",
            "daemon.shutdown_timeout",
        ),
        ("[daemon]\nprot = 3100\n", "daemon.prot"),
        ("[update]\nkeep_backups = -1\n", "update.keep_backups"),
        ("[daemon\n", "config.toml"),
    ] {
        install.write_config(text);
        let out = install.daemon_command(&["serve"]);
        assert_eq!(out.status.code(), Some(code::CONFIG_INVALID), "{text}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(key), "{text}: {stderr}");
    }
    assert!(
        !install.dir.database().exists(),
        "a refused start touches no data"
    );
}

#[tokio::test]
async fn an_invalid_environment_override_is_refused() {
    let install = Install::new();
    // An invalid override must be refused even when the file is fine.
    let out = {
        let mut cmd = std::process::Command::new(testkit::daemon_binary());
        cmd.args(["serve", "--data-dir"])
            .arg(install.data_dir())
            .env("WAIAAS_DAEMON_SHUTDOWN_TIMEOUT", "999");
        cmd.output().unwrap()
    };
    assert_eq!(out.status.code(), Some(code::CONFIG_INVALID));
    assert!(String::from_utf8_lossy(&out.stderr).contains("WAIAAS_DAEMON_SHUTDOWN_TIMEOUT"));
}

#[test]
fn version_prints_version_and_schema() {
    let out = std::process::Command::new(testkit::daemon_binary())
        .arg("--version")
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert_eq!(
        text.trim(),
        format!(
            "waiaas-daemon {} (schema {LATEST_SCHEMA_VERSION})",
            env!("CARGO_PKG_VERSION")
        )
    );
}

#[tokio::test]
async fn binds_its_own_port_without_a_handed_over_listener() {
    let install = Install::new();
    let port = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        probe.local_addr().unwrap().port()
    };
    install.write_config(&format!("[daemon]\nupdate_check = false\nport = {port}\n"));
    let mut child = std::process::Command::new(testkit::daemon_binary())
        .args(["serve", "--data-dir"])
        .arg(install.data_dir())
        .env_remove("LISTEN_FDS")
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let url = format!("http://127.0.0.1:{port}/health");
    let mut healthy = false;
    for _ in 0..500 {
        if client()
            .get(&url)
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            healthy = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = child.wait().unwrap();
    assert!(healthy, "daemon did not answer on its configured port");
    assert_eq!(status.code(), Some(0));
}

/// Concurrent writers while the daemon is killed (SIGKILL) mid-burst: every
/// wallet it acknowledged — answered from a shared, group-committed
/// transaction — is in the database after, which passes its integrity check.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_kill_during_a_burst_of_concurrent_writes_loses_nothing_acknowledged() {
    const WRITERS: usize = 32;
    /// Acknowledged writes before the kill: enough that it lands mid-burst.
    const BEFORE_KILL: usize = 300;
    let install = Install::new();
    let mut daemon = Daemon::start(&install);
    daemon.wait_healthy(READY).await;
    let acknowledged = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let url = format!("{}/v1/wallets", daemon.base_url);
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let (client, url, acknowledged) =
                (api(&install.token()), url.clone(), acknowledged.clone());
            tokio::spawn(async move {
                for i in 0.. {
                    let name = format!("w{w}-{i}");
                    let body =
                        serde_json::json!({"name": name, "chain": "solana", "network": "devnet"});
                    match client.post(&url).json(&body).send().await {
                        Ok(r) if r.status() == 201 => acknowledged.lock().unwrap().push(name),
                        Ok(r) => panic!("{name}: HTTP {} before the kill", r.status()),
                        // The daemon is gone.
                        Err(_) => return,
                    }
                }
            })
        })
        .collect();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while acknowledged.lock().unwrap().len() < BEFORE_KILL {
        assert!(
            std::time::Instant::now() < deadline,
            "too few writes acknowledged in 60 s"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    daemon.signal(libc::SIGKILL);
    daemon
        .wait_exit(Duration::from_secs(10))
        .expect("the daemon ends on SIGKILL");
    drop(daemon);
    for writer in writers {
        tokio::time::timeout(Duration::from_secs(30), writer)
            .await
            .expect("a writer ends once the daemon is gone")
            .unwrap();
    }
    let conn = rusqlite::Connection::open(install.dir.database()).unwrap();
    let integrity: String = conn
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(integrity, "ok");
    let mut select = conn.prepare("SELECT name FROM wallets").unwrap();
    let stored: std::collections::HashSet<String> = select
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let acknowledged = acknowledged.lock().unwrap();
    let lost: Vec<_> = acknowledged
        .iter()
        .filter(|n| !stored.contains(*n))
        .collect();
    assert!(
        lost.is_empty(),
        "{} of {} acknowledged wallets are gone, e.g. {:?}",
        lost.len(),
        acknowledged.len(),
        &lost[..lost.len().min(5)]
    );
    println!(
        "{} acknowledged, {} stored, all acknowledged kept",
        acknowledged.len(),
        stored.len()
    );
}
