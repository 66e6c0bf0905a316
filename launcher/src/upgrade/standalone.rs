//! The host when no supervisor runs: no daemon is ours to stop, and step 7
//! starts the new daemon on its own, on probation (a private probe listener,
//! never the public port), waits for its probes, and stops it again, so the
//! upgrade is still only committed once the new version has answered — and
//! no client was ever answered by a release that may yet be rolled back.

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;

use waiaas_shared::config::Config;
use waiaas_shared::layout::DataDir;

use super::{Host, HostError};
use crate::daemon_binary::{self, Probation, describe_exit};
use crate::probe;

pub struct Standalone<'a> {
    pub dir: &'a DataDir,
    pub config: &'a Config,
}

impl Host for Standalone<'_> {
    async fn daemon_running(&mut self) -> bool {
        false
    }

    async fn stop_daemon(&mut self) -> Result<(), HostError> {
        Ok(())
    }

    async fn start_daemon(&mut self, version: &str) -> Result<(), HostError> {
        let program = self.dir.current().join("waiaas-daemon");
        let mut probation = if daemon_binary::starts_on_probation(&self.dir.current()).await {
            let probation = Probation::new()
                .map_err(|e| HostError::Spawn(format!("cannot create the probe listener: {e}")))?;
            Some(probation)
        } else {
            None
        };
        // A daemon started for the health check must not outlive a killed
        // upgrade: it gets SIGTERM and shuts down gracefully.
        let mut command = daemon_binary::command(&program, libc::SIGTERM);
        if let Some(probation) = &probation {
            probation.pass(&mut command, &[]);
        }
        let mut child = tokio::process::Command::from(command)
            .kill_on_drop(true)
            .arg("serve")
            .arg("--data-dir")
            .arg(self.dir.root())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .map_err(|e| HostError::Spawn(format!("cannot start {}: {e}", program.display())))?;
        let probe = match &mut probation {
            Some(probation) => {
                probation.spawned();
                Probe::OnProbation(probation.probe_addr)
            }
            None => Probe::Public(health_addr(self.config).map_err(HostError::NotReady)?),
        };
        let timeout = Duration::from_secs(self.config.update.health_timeout);
        let outcome = tokio::select! {
            status = child.wait() => Err(HostError::Exited(describe_exit(&status))),
            healthy = healthy(probe, version, timeout) => healthy,
        };
        if let Some(pid) = child.id() {
            // SAFETY: kill(2) on our own, not yet reaped, child.
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) };
        }
        let grace = Duration::from_secs(self.config.daemon.shutdown_timeout + 2);
        if tokio::time::timeout(grace, child.wait()).await.is_err() {
            let _ = child.kill().await;
        }
        outcome
    }
}

/// Where a daemon the standalone host started is probed.
enum Probe {
    /// Its probe listener: `/health` and the write probe.
    OnProbation(SocketAddr),
    /// An older daemon on the public port: `/health`.
    Public(SocketAddr),
}

/// Polls the probes until `/health` reports `version`, for at most `timeout`.
async fn healthy(probe: Probe, version: &str, timeout: Duration) -> Result<(), HostError> {
    let deadline = tokio::time::Instant::now() + timeout;
    let each = Duration::from_millis(500);
    loop {
        let answer = match probe {
            Probe::OnProbation(addr) => probe::on_probation(addr, each).await,
            Probe::Public(addr) => probe::health(addr, each).await,
        };
        match answer {
            Ok(h) if h.version == version => return Ok(()),
            Ok(h) => {
                return Err(HostError::WrongVersion {
                    started: h.version,
                    expected: version.to_string(),
                });
            }
            Err(e) if tokio::time::Instant::now() >= deadline => {
                return Err(HostError::NotReady(format!("never became healthy: {e}")));
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

/// The configured HTTP address, on loopback when it is a wildcard.
pub fn health_addr(config: &Config) -> Result<SocketAddr, String> {
    use std::net::ToSocketAddrs;
    let mut addr = (config.daemon.hostname.as_str(), config.daemon.port)
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {}: {e}", config.daemon.hostname))?
        .next()
        .ok_or_else(|| format!("{} resolves to no address", config.daemon.hostname))?;
    if addr.ip().is_unspecified() {
        addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    Ok(addr)
}
