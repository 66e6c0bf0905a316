//! Commands that talk to a running supervisor over its admin socket:
//! `start`, `stop`, `restart`, `status`.

use std::fs::OpenOptions;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use waiaas_shared::admin::{Request, Response, Status, client};
use waiaas_shared::config::Config;
use waiaas_shared::layout::DataDir;

use crate::failure::{Failure, load_config};
use crate::pidfile::PidFile;

/// Exit code of `status` when no supervisor runs (the LSB convention).
const NOT_RUNNING: u8 = 3;

fn not_running(dir: &DataDir) -> Failure {
    Failure {
        code: NOT_RUNNING,
        message: format!(
            "not running (no supervisor for {}); start it with `waiaas-launcher start`",
            dir.root().display()
        ),
    }
}

fn require_initialised(dir: &DataDir) -> Result<(), Failure> {
    if crate::daemon_binary::in_container() || dir.current().join("waiaas-daemon").exists() {
        Ok(())
    } else {
        Err(Failure::new(format!(
            "not initialised: {} has no installed daemon; run `waiaas-launcher init`",
            dir.root().display()
        )))
    }
}

/// Sends one request and reads one response. `Ok(None)` when no supervisor
/// listens on the socket.
fn call(dir: &DataDir, request: Request, timeout: Duration) -> Result<Option<Response>, Failure> {
    client::call(&dir.launcher_socket(), request, timeout).map_err(|e| misunderstood(dir, e))
}

/// A failure to talk to the supervisor; when it answered in a way this
/// command cannot read (another release's protocol), it names the program
/// the supervisor runs, which speaks it.
pub fn misunderstood(dir: &DataDir, error: client::ClientError) -> Failure {
    let message = error.to_string();
    match error {
        client::ClientError::Malformed(_) => Failure::new(with_program_hint(dir, message)),
        _ => Failure::new(message),
    }
}

/// `message`, and which program to run the command with instead: the
/// supervisor's own (from `run/launcher.pid` and `/proc/<pid>/exe`).
fn with_program_hint(dir: &DataDir, message: String) -> String {
    let program = std::fs::read_to_string(dir.launcher_pid())
        .ok()
        .and_then(|pid| std::fs::read_link(format!("/proc/{}/exe", pid.trim())).ok());
    match program {
        Some(program) => format!(
            "{message}; the supervisor runs {} (waiaas-launcher {} is this command): run the \
             command with that program",
            program.display(),
            waiaas_shared::version::VERSION
        ),
        None => format!(
            "{message}; run the command with the waiaas-launcher the supervisor runs \
             (this one is {})",
            waiaas_shared::version::VERSION
        ),
    }
}

/// Long enough for a graceful stop plus a start.
fn lifecycle_timeout(config: &Config) -> Duration {
    Duration::from_secs(config.daemon.shutdown_timeout + config.update.health_timeout + 30)
}

fn done(response: Response) -> Result<String, Failure> {
    match response {
        Response::Done { message } => Ok(message),
        Response::Error { message } => Err(Failure::new(message)),
        _ => Err(Failure::new("the supervisor answered out of turn")),
    }
}

fn query_status(dir: &DataDir) -> Result<Option<Status>, Failure> {
    match call(dir, Request::Status, Duration::from_secs(10))? {
        None => Ok(None),
        Some(Response::Status(status)) => Ok(Some(status)),
        Some(other) => done(other).and(Err(Failure::new("the supervisor did not report a status"))),
    }
}

pub fn status(dir: &DataDir, json: bool) -> Result<(), Failure> {
    require_initialised(dir)?;
    let status = query_status(dir)?.ok_or_else(|| not_running(dir))?;
    // Exit 0 only for a healthy service, so `status` can serve as a health check.
    let healthy = status.state == "running" && status.daemon.as_ref().is_some_and(|d| d.healthy);
    let verdict = if healthy {
        Ok(())
    } else {
        Err(Failure::new(format!(
            "the daemon is not healthy (state: {})",
            status.state
        )))
    };
    if json {
        println!(
            "{}",
            serde_json::to_string(&status).expect("a status serialises")
        );
        return verdict;
    }
    println!(
        "launcher: {} (pid {}, version {})",
        status.state, status.launcher_pid, status.launcher_version
    );
    match &status.daemon {
        Some(d) => println!(
            "daemon:   pid {}, version {}, schema {}, up {}, {}",
            d.pid,
            d.version,
            d.schema_version,
            human_duration(d.uptime),
            if d.healthy { "healthy" } else { "NOT healthy" }
        ),
        None => println!("daemon:   not running"),
    }
    if let Some(refused) = &status.refused {
        println!("refused:  {refused}");
    }
    if let Some(last) = &status.last_exit {
        println!("last exit: daemon {last}");
    }
    if status.restarts > 0 {
        println!("restarts: {}", status.restarts);
    }
    if let Some(auto) = &status.auto {
        print_auto(auto);
    }
    verdict
}

/// The automatic-upgrade lines of `status`.
fn print_auto(auto: &waiaas_shared::admin::AutoStatus) {
    println!("automatic upgrades: {}", auto.policy);
    let lines = [
        ("next check", auto.next_check.clone()),
        ("last check", auto.last_check.clone()),
        ("candidate", auto.candidate.clone()),
        ("starts at", auto.starts_at.clone()),
        ("waiting", auto.waiting.clone()),
    ];
    for (name, value) in lines {
        if let Some(value) = value {
            println!("  {name}: {value}");
        }
    }
    for q in &auto.quarantined {
        println!("  quarantined: {} since {} ({})", q.version, q.at, q.reason);
    }
    if let Some(a) = &auto.last_attempt {
        println!(
            "  last attempt: {} → {} at {}: {}{}",
            a.from,
            a.to,
            a.started_at,
            a.outcome.as_deref().unwrap_or("in progress"),
            a.message
                .as_deref()
                .map(|m| format!(" ({m})"))
                .unwrap_or_default()
        );
    }
}

pub fn stop(dir: &DataDir) -> Result<(), Failure> {
    let config = load_config(dir)?;
    let response =
        call(dir, Request::Stop, lifecycle_timeout(&config))?.ok_or_else(|| not_running(dir))?;
    let message = done(response)?;
    // The supervisor answers just before it exits; wait for its lock to go.
    let deadline = Instant::now() + Duration::from_secs(10);
    while PidFile::holder(dir).is_some() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    println!("{message}");
    Ok(())
}

pub fn restart(dir: &DataDir) -> Result<(), Failure> {
    let config = load_config(dir)?;
    let response =
        call(dir, Request::Restart, lifecycle_timeout(&config))?.ok_or_else(|| not_running(dir))?;
    println!("{}", done(response)?);
    Ok(())
}

/// Starts `waiaas-launcher run` detached (its own session, output in
/// `logs/launcher.log`) and waits until the daemon is healthy.
pub fn start(dir: &DataDir, config: &Config) -> Result<(), Failure> {
    require_initialised(dir)?;
    if let Some(pid) = PidFile::holder(dir) {
        return Err(Failure::new(format!("already running (pid {pid})")));
    }
    // Not beside a standalone upgrade: after it (`run` would wait too, but
    // with no admin socket to say so meanwhile).
    let limit = crate::upgrade::lock::wait_limit(config);
    crate::upgrade::lock::wait_for_upgrade(
        dir,
        limit,
        &crate::upgrade::lock::SystemClock,
        |pid, waited| {
            eprintln!(
                "waiting for the upgrade in progress (pid {pid}) to finish before starting \
             ({} s so far, at most {} s)",
                waited.as_secs(),
                limit.as_secs()
            )
        },
    )
    .map_err(|e| Failure::new(e.to_string()))?;
    let logs = dir.logs();
    std::fs::create_dir_all(&logs)
        .map_err(|e| Failure::new(format!("cannot create {}: {e}", logs.display())))?;
    let log_path = logs.join("launcher.log");
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .map_err(|e| Failure::new(format!("cannot open {}: {e}", log_path.display())))?;
    let err_log = log
        .try_clone()
        .map_err(|e| Failure::new(format!("cannot open {}: {e}", log_path.display())))?;
    let exe = std::env::current_exe()
        .map_err(|e| Failure::new(format!("cannot find this program's path: {e}")))?;
    let mut command = Command::new(exe);
    command
        .arg("run")
        .arg("--data-dir")
        .arg(dir.root())
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(err_log);
    // SAFETY: setsid is async-signal-safe; a new session detaches the
    // supervisor from this terminal, so closing it does not stop the service.
    unsafe {
        command.pre_exec(|| {
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = command
        .spawn()
        .map_err(|e| Failure::new(format!("cannot start the supervisor: {e}")))?;
    let deadline = Instant::now() + Duration::from_secs(config.update.health_timeout + 15);
    loop {
        if let Some(exit) = child.try_wait().ok().flatten() {
            return Err(Failure::new(format!(
                "the supervisor exited ({exit}) before the daemon was ready; see {}",
                log_path.display()
            )));
        }
        if let Some(status) = query_status(dir)? {
            match (status.state.as_str(), &status.daemon) {
                ("running", Some(d)) if d.healthy => {
                    println!(
                        "started: launcher pid {}, daemon pid {} (version {}, schema {})",
                        status.launcher_pid, d.pid, d.version, d.schema_version
                    );
                    return Ok(());
                }
                ("refused", _) if status.refused.is_some() => {
                    return Err(Failure::new(status.refused.unwrap_or_default()));
                }
                ("refused", _) => {
                    return Err(Failure::new(format!(
                        "the daemon refused to start: {}; the supervisor keeps running — fix the cause, then `waiaas-launcher restart`",
                        status.last_exit.unwrap_or_default()
                    )));
                }
                _ => {}
            }
        }
        if Instant::now() >= deadline {
            return Err(Failure::new(format!(
                "the daemon was not healthy in time; see {}",
                log_path.display()
            )));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn human_duration(seconds: u64) -> String {
    match seconds {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m {}s", s / 60, s % 60),
        s if s < 86_400 => format!("{}h {}m", s / 3600, s % 3600 / 60),
        s => format!("{}d {}h", s / 86_400, s % 86_400 / 3600),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_like_a_person_wrote_them() {
        assert_eq!(human_duration(5), "5s");
        assert_eq!(human_duration(125), "2m 5s");
        assert_eq!(human_duration(7322), "2h 2m");
        assert_eq!(human_duration(90_000), "1d 1h");
    }
}
