//! The supervisor as a process: readiness, crash restarts with backoff,
//! permanent refusals, zero-failure restarts, clean exits, and an admin socket
//! that holds up against strangers and garbage.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use testkit::Install;
use testkit::load::Load;
use testkit::supervisor::{LogFile, Supervisor, daemon_pid, healthy, signal, wait_gone};

#[test]
fn status_reports_both_processes_and_the_http_port_serves() {
    let install = Install::new();
    let mut supervisor = Supervisor::start(&install);
    let status = supervisor.wait_healthy();
    let daemon = status.daemon.as_ref().unwrap();
    assert_eq!(status.launcher_pid as i32, supervisor.pid());
    assert_eq!(daemon.version, env!("CARGO_PKG_VERSION"));
    assert_eq!(daemon.schema_version, 16);
    let out = testkit::run(&mut install.launcher(&["status"]));
    assert!(out.status.success(), "{out:?}");
    assert!(
        out.stdout.contains(&format!("pid {}", daemon.pid)),
        "{}",
        out.stdout
    );
    assert!(out.stdout.contains("healthy"), "{}", out.stdout);

    let second = testkit::run(&mut install.launcher(&["run"]));
    assert!(!second.status.success());
    assert!(
        second.stderr.contains("already running"),
        "{}",
        second.stderr
    );
}

#[test]
fn messages_for_not_running_and_not_initialised() {
    let install = Install::new();
    for command in ["status", "stop", "restart"] {
        let out = testkit::run(&mut install.launcher(&[command]));
        assert!(!out.status.success(), "{command}");
        assert!(
            out.stderr.contains("not running"),
            "{command}: {}",
            out.stderr
        );
    }
    std::fs::remove_file(install.dir.current()).unwrap();
    for command in ["run", "start", "status"] {
        let out = testkit::run(&mut install.launcher(&[command]));
        assert!(!out.status.success(), "{command}");
        assert!(
            out.stderr.contains("not initialised"),
            "{command}: {}",
            out.stderr
        );
    }
}

#[test]
fn killed_daemon_is_healthy_again_within_one_second() {
    let install = Install::new();
    let mut supervisor = Supervisor::start(&install);
    let before = daemon_pid(&supervisor.wait_healthy());
    let killed = Instant::now();
    signal(before, libc::SIGKILL);
    let after = supervisor.wait_for(Duration::from_secs(5), "replacement daemon", |s| {
        healthy(s) && daemon_pid(s) != before
    });
    let took = killed.elapsed();
    assert!(
        took < Duration::from_secs(1),
        "healthy again after {took:?}"
    );
    assert_eq!(after.restarts, 1);
    assert!(after.last_exit.unwrap().contains("signal 9"));
}

#[test]
fn a_daemon_crashing_at_start_is_retried_with_growing_delays() {
    let install = Install::new();
    // An empty token file is a start-up failure the daemon cannot fix by itself.
    install.ensure_database();
    std::fs::write(install.dir.master_token(), "").unwrap();
    let mut supervisor = Supervisor::start(&install);
    std::thread::sleep(Duration::from_secs(3));
    let status = supervisor.status().expect("the supervisor keeps answering");
    assert_eq!(status.state, "backing-off", "{status:?}");
    assert!(
        status
            .last_exit
            .as_deref()
            .unwrap_or_default()
            .contains("exited with 1"),
        "{status:?}"
    );
    // 100 ms doubling: 0.1+0.2+0.4+0.8+1.6 s fits in 3 s; a fixed short delay would give dozens.
    assert!(
        (3..=6).contains(&status.restarts),
        "{} restarts in 3 s",
        status.restarts
    );
    let delays: Vec<f64> = supervisor
        .log()
        .lines()
        .filter_map(|l| l.split("retrying in ").nth(1))
        .filter_map(|d| {
            d.trim_end_matches("ms").parse::<f64>().ok().or_else(|| {
                d.trim_end_matches('s')
                    .parse::<f64>()
                    .ok()
                    .map(|s| s * 1000.0)
            })
        })
        .collect();
    assert!(delays.len() >= 3, "{}", supervisor.log());
    assert!(
        delays.windows(2).all(|w| w[1] > w[0]),
        "delays grow: {delays:?}"
    );

    // Once the cause is fixed, the next retry brings it up.
    std::fs::remove_file(install.dir.master_token()).unwrap();
    supervisor.wait_for(Duration::from_secs(10), "recovery", healthy);
}

#[test]
fn a_permanent_refusal_is_not_restarted_and_status_says_why() {
    let install = Install::new();
    install.ensure_database();
    rusqlite::Connection::open(install.dir.database())
        .unwrap()
        .execute(
            "INSERT INTO schema_version (version, applied_at, description, checksum) VALUES (99, 0, 'future', 'x')",
            [],
        )
        .unwrap();
    let mut supervisor = Supervisor::start(&install);
    let status = supervisor.wait_for(Duration::from_secs(10), "refused state", |s| {
        s.state == "refused"
    });
    std::thread::sleep(Duration::from_secs(1));
    let status_later = supervisor.status().unwrap();
    assert_eq!(
        status_later.restarts, status.restarts,
        "no restarts after a refusal"
    );
    assert!(status_later.daemon.is_none());
    let out = testkit::run(&mut install.launcher(&["status"]));
    assert!(out.stdout.contains("exited with 20"), "{}", out.stdout);
    assert!(out.stdout.contains("newer"), "{}", out.stdout);
}

/// Clients hammering `/health` while the daemon restarts: every request answered.
#[test]
fn restart_under_load_fails_no_request() {
    let install = Install::new();
    let mut supervisor = Supervisor::start(&install);
    supervisor.wait_healthy();
    let url = format!("http://127.0.0.1:{}/health", install.port);
    let load = Load::start(&url, 8, Duration::from_secs(30), Duration::from_secs(60));
    std::thread::sleep(Duration::from_millis(300));
    for _ in 0..3 {
        let before = daemon_pid(&supervisor.status().unwrap());
        let out = testkit::run(&mut install.launcher(&["restart"]));
        assert!(out.status.success(), "{out:?}");
        assert_ne!(daemon_pid(&supervisor.status().unwrap()), before);
        std::thread::sleep(Duration::from_millis(200));
    }
    let tally = load.finish();
    let (sent, failed) = (tally.sent(), tally.failed);
    let ok = sent - failed;
    assert!(ok > 100, "only {ok} requests answered");
    assert_eq!(
        failed, 0,
        "{failed} of {sent} requests failed across 3 restarts: {:?}",
        tally.errors
    );
}

#[test]
fn sigterm_to_the_launcher_leaves_no_process_behind() {
    let install = Install::new();
    let mut supervisor = Supervisor::start(&install);
    let daemon = daemon_pid(&supervisor.wait_healthy());
    signal(supervisor.pid(), libc::SIGTERM);
    let status = supervisor.wait_exit(Duration::from_secs(40));
    assert_eq!(status.code(), Some(0), "{}", supervisor.log());
    assert!(
        wait_gone(daemon, Duration::from_secs(1)),
        "daemon {daemon} survived"
    );
    assert!(
        !install.dir.launcher_socket().exists()
            || UnixStream::connect(install.dir.launcher_socket()).is_err()
    );
}

#[test]
fn kill_9_of_the_launcher_leaves_no_daemon_behind() {
    let install = Install::new();
    let mut supervisor = Supervisor::start(&install);
    let daemon = daemon_pid(&supervisor.wait_healthy());
    signal(supervisor.pid(), libc::SIGKILL);
    supervisor.wait_exit(Duration::from_secs(5));
    assert!(
        wait_gone(daemon, Duration::from_secs(10)),
        "daemon {daemon} outlived its launcher"
    );
    // And a new launcher can take over at once.
    let mut next = Supervisor::start(&install);
    next.wait_healthy();
}

#[test]
fn stop_command_stops_both() {
    let install = Install::new();
    let mut supervisor = Supervisor::start(&install);
    let daemon = daemon_pid(&supervisor.wait_healthy());
    let out = testkit::run(&mut install.launcher(&["stop"]));
    assert!(out.status.success(), "{out:?}");
    assert_eq!(supervisor.wait_exit(Duration::from_secs(5)).code(), Some(0));
    assert!(wait_gone(daemon, Duration::from_secs(1)));
}

#[test]
fn admin_socket_survives_garbage_and_a_100_mb_frame() {
    let install = Install::new();
    let mut supervisor = Supervisor::start(&install);
    supervisor.wait_healthy();
    let socket = install.dir.launcher_socket();

    let mut stream = UnixStream::connect(&socket).unwrap();
    stream
        .write_all(b"{\"protocol\": 1, \"request\": {\"type\": \"launch_missiles\"}}\n")
        .unwrap();
    let mut line = String::new();
    BufReader::new(&stream).read_line(&mut line).unwrap();
    assert!(line.contains("\"error\""), "{line}");

    let mut stream = UnixStream::connect(&socket).unwrap();
    stream
        .set_write_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let chunk = vec![b'x'; 1 << 20];
    let mut sent = 0;
    for _ in 0..100 {
        if stream.write_all(&chunk).is_err() {
            break;
        }
        sent += 1;
    }
    let _ = stream.write_all(b"\n");
    assert!(sent > 0);
    let mut line = String::new();
    let _ = BufReader::new(&stream).read_line(&mut line);
    if !line.is_empty() {
        assert!(line.contains("larger than"), "{line}");
    }

    let status = supervisor.status().expect("still answering");
    assert!(healthy(&status));
    let rss_kib: u64 = std::fs::read_to_string(format!("/proc/{}/status", supervisor.pid()))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    assert!(
        rss_kib < 64 * 1024,
        "the frame was buffered: RSS {rss_kib} KiB"
    );
}

#[test]
fn admin_socket_refuses_a_peer_with_another_uid() {
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: needs root to act as a second uid");
        return;
    }
    let install = Install::new();
    let mut supervisor = Supervisor::start(&install);
    supervisor.wait_healthy();
    // Open the file-system path to everyone, so only the credential check stands.
    use std::os::unix::fs::PermissionsExt;
    let mut dir = install.dir.launcher_socket();
    while dir.pop() && dir != std::path::Path::new("/") {
        let _ = std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755));
    }
    std::fs::set_permissions(
        install.dir.launcher_socket(),
        std::fs::Permissions::from_mode(0o777),
    )
    .unwrap();
    let nobody = 65534;
    let out = {
        use std::os::unix::process::CommandExt;
        let mut command = install.launcher(&["status", "--quiet"]);
        command.uid(nobody).gid(nobody);
        testkit::run(&mut command)
    };
    assert!(!out.status.success(), "{out:?}");
    assert!(out.stderr.contains("without answering"), "{}", out.stderr);
    let log = supervisor.log();
    assert!(
        log.contains(&format!("refused a connection from uid {nobody}")),
        "{log}"
    );
    assert!(healthy(&supervisor.status().unwrap()));
}

#[test]
fn systemd_notify_ready_status_and_watchdog() {
    let install = Install::new();
    let path = install.home().join("notify.sock");
    let socket = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let log = install.home().join("launcher.stderr");
    let mut command = install.launcher(&["run"]);
    command
        .env("NOTIFY_SOCKET", &path)
        .env("WATCHDOG_USEC", "200000");
    let mut supervisor =
        Supervisor::spawn(command, log, install.dir.launcher_socket(), LogFile::Fresh);
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline
        && !(seen.iter().any(|m: &String| m.contains("READY=1"))
            && seen.iter().filter(|m| *m == "WATCHDOG=1").count() >= 2)
    {
        let n = socket.recv(&mut buf).expect("a notification");
        seen.push(String::from_utf8_lossy(&buf[..n]).into_owned());
    }
    let ready = seen
        .iter()
        .find(|m| m.contains("READY=1"))
        .expect("READY=1 sent");
    assert!(ready.contains("STATUS=serving"), "{ready}");
    assert!(
        healthy(&supervisor.status().unwrap()),
        "READY=1 only once healthy"
    );
    assert!(
        seen.iter().filter(|m| *m == "WATCHDOG=1").count() >= 2,
        "{seen:?}"
    );
    signal(supervisor.pid(), libc::SIGTERM);
    supervisor.wait_exit(Duration::from_secs(30));
    let rest: Vec<String> = (0..50)
        .map_while(|_| {
            socket
                .recv(&mut buf)
                .ok()
                .map(|n| String::from_utf8_lossy(&buf[..n]).into_owned())
        })
        .take_while(|m| !m.contains("STOPPING=1"))
        .collect();
    assert!(rest.len() < 50, "STOPPING=1 was sent");
}

#[test]
fn a_socket_activated_launcher_hands_its_socket_on() {
    let install = Install::new();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    assert_ne!(port, install.port);
    let mut command = install.launcher(&["run"]);
    waiaas_shared::listen_fds::pass_listener(&mut command, &listener);
    let mut supervisor = Supervisor::spawn(
        command,
        install.home().join("launcher.stderr"),
        install.dir.launcher_socket(),
        LogFile::Fresh,
    );
    supervisor.wait_healthy();
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .write_all(b"GET /health HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .unwrap();
    let mut answer = String::new();
    std::io::Read::read_to_string(&mut stream, &mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", install.port)).is_err(),
        "the configured port stays unbound"
    );
}

/// Under systemd a first start that is refused fails the service with the
/// daemon's code, so `RestartPreventExitStatus=` stops the restart loop.
#[test]
fn under_systemd_a_refused_first_start_exits_with_the_daemons_code() {
    let install = Install::new();
    install.ensure_database();
    rusqlite::Connection::open(install.dir.database())
        .unwrap()
        .execute(
            "INSERT INTO schema_version (version, applied_at, description, checksum) VALUES (99, 0, 'future', 'x')",
            [],
        )
        .unwrap();
    let path = install.home().join("notify.sock");
    let _socket = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
    let out = testkit::run(install.launcher(&["run"]).env("NOTIFY_SOCKET", &path));
    assert_eq!(
        out.status.code(),
        Some(waiaas_shared::exit::daemon::SCHEMA_TOO_NEW),
        "{out:?}"
    );
    assert!(out.stderr.contains("refused to start"), "{}", out.stderr);
}

/// A handover this launcher cannot read (a future format) is said so, and
/// the service still comes back: it starts afresh.
#[test]
fn an_unreadable_handover_starts_afresh_and_says_so() {
    let install = Install::new();
    let mut command = install.launcher(&["run"]);
    command.env(
        "WAIAAS_HANDOVER",
        r#"{"version":99,"listener_fd":57,"admin_fd":58}"#,
    );
    let mut supervisor = testkit::supervisor::Supervisor::spawn(
        command,
        install.home().join("launcher.stderr"),
        install.dir.launcher_socket(),
        testkit::supervisor::LogFile::Fresh,
    );
    supervisor.wait_healthy();
    let log = supervisor.log();
    assert!(
        log.contains("format 99") && log.contains("starting afresh"),
        "{log}"
    );
}

/// `start` while an upgrade holds the upgrade lock (held by this test here,
/// as a standalone upgrade holds it): it waits, saying so, starts nothing
/// meanwhile, and starts the service once the lock is free.
#[test]
fn start_waits_for_an_upgrade_in_progress_saying_so() {
    let install = Install::new();
    let held = waiaas_shared::runlock::lock_run_file(
        &install.dir,
        &install.dir.run().join("upgrade.lock"),
    )
    .unwrap();
    let stderr = install.home().join("start.stderr");
    let mut start = install
        .launcher(&["start"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&stderr).unwrap())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    let said = std::fs::read_to_string(&stderr).unwrap();
    assert!(
        start.try_wait().unwrap().is_none(),
        "start did not wait: {said}"
    );
    assert!(
        said.contains(&format!(
            "waiting for the upgrade in progress (pid {})",
            std::process::id()
        )),
        "{said}"
    );
    assert_eq!(
        waiaas_shared::runlock::holder(&install.dir.launcher_pid()),
        None,
        "a supervisor started beside the upgrade"
    );
    assert!(
        testkit::http(install.port, "GET", "/health", None, None).is_none(),
        "something serves beside the upgrade"
    );
    drop(held);
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = start.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "start never finished");
        std::thread::sleep(Duration::from_millis(20));
    };
    let said = std::fs::read_to_string(&stderr).unwrap();
    let stop = testkit::run(&mut install.launcher(&["stop"]));
    assert!(status.success(), "{said}");
    assert!(stop.status.success(), "{stop:?}");
}
