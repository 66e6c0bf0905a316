//! A daemon's start and its end: spawn, hello, readiness (health and the
//! probation probe), a start that fails, an exit or a crash — and the
//! restart policy ([`super::backoff`]) applied to them.

use super::mode::Then;
use super::*;

impl Supervisor {
    /// Spawns a daemon for `purpose`; its readiness is then driven by events.
    pub(super) fn start(&mut self, purpose: Purpose) {
        debug_assert!(matches!(self.slot, Slot::Empty));
        self.service.cancel_retry();
        if matches!(purpose, Purpose::Service) {
            // Only the engine starts a daemon while a change is unfinished:
            // the service would serve an installation not committed.
            if self.dir.upgrade_journal().exists() {
                return self.refuse_uncommitted(None);
            }
            self.service.start();
        }
        let listening = match &purpose {
            Purpose::Engine {
                probation: true, ..
            } => Listening::Probation,
            _ => Listening::Public(&self.listener),
        };
        match Daemon::spawn(&self.program, &self.dir, listening) {
            Ok(daemon) => {
                if matches!(purpose, Purpose::Engine { .. }) && self.resuming() {
                    failpoint::hit("handover-daemon-spawned");
                }
                let health_timeout = Duration::from_secs(self.config.update.health_timeout);
                // `health_timeout` bounds the whole start (hello, ready,
                // healthy): the time a new daemon has to become healthy (SPEC §3).
                let now = Instant::now();
                self.slot = Slot::Starting {
                    daemon,
                    stage: Stage::Hello {
                        by: now + HELLO_TIMEOUT.min(health_timeout),
                    },
                    deadline: now + health_timeout,
                    purpose,
                };
            }
            Err(reason) => self.start_failed(purpose, NotReady::Spawn(reason)),
        }
    }

    pub(super) fn frame(&mut self, frame: FromDaemon) {
        if let FromDaemon::CheckpointsHeld | FromDaemon::CheckpointsNotHeld { .. } = frame {
            return self.checkpoints_answer(frame);
        }
        if let FromDaemon::Status { writes, .. } = frame {
            if let Some(auto) = &mut self.auto {
                let now = auto.now();
                auto.planner.sampled(now, writes);
                // The rate may now be known: decide at once.
                self.auto_due();
            }
            return;
        }
        let Slot::Starting { daemon, stage, .. } = &mut self.slot else {
            if let FromDaemon::Stopping { reason } = frame {
                info!("daemon is stopping: {reason}");
            }
            return;
        };
        match (&*stage, frame) {
            (
                Stage::Hello { .. },
                FromDaemon::Hello {
                    protocol,
                    version,
                    holds_checkpoints,
                    probation,
                    ..
                },
            ) if protocol == control::PROTOCOL_VERSION => {
                if probation != daemon.probe_addr().is_some() {
                    return self.fail_start(format!(
                        "the daemon {} on probation, but was started {}",
                        if probation { "says it is" } else { "is not" },
                        if probation { "serving" } else { "on probation" },
                    ));
                }
                daemon.version = version;
                daemon.holds_checkpoints = holds_checkpoints;
                *stage = Stage::Ready;
            }
            (Stage::Hello { .. }, FromDaemon::Hello { protocol, .. }) => self.fail_start(format!(
                "the daemon speaks control protocol {protocol}, this launcher {}",
                control::PROTOCOL_VERSION
            )),
            (Stage::Hello { .. }, other) => self.fail_start(format!(
                "the daemon's first message was {other:?}, not hello"
            )),
            (Stage::Ready, FromDaemon::Ready { schema_version }) => {
                daemon.schema_version = schema_version;
                *stage = Stage::Healthy {
                    next: Instant::now(),
                    last_error: None,
                };
            }
            (_, FromDaemon::Stopping { reason }) => {
                self.fail_start(format!("the daemon stopped: {reason}"))
            }
            _ => {}
        }
    }

    /// The daemon's answer to a hold of its checkpoints, for the engine.
    pub(super) fn checkpoints_answer(&mut self, frame: FromDaemon) {
        let Slot::Running(daemon) = &mut self.slot else {
            return;
        };
        let held = match frame {
            FromDaemon::CheckpointsNotHeld { reason } => {
                warn!(
                    "the daemon cannot hold its checkpoints ({reason}); backing up after it stops"
                );
                false
            }
            _ => true,
        };
        if let Some(answer) = daemon.hold_answer.take() {
            let _ = answer.send(held);
        }
    }

    pub(super) fn probed(&mut self, result: Result<HealthResponse, String>) {
        self.probe = None;
        let Slot::Starting { daemon, stage, .. } = &mut self.slot else {
            return;
        };
        match result {
            Ok(health) if health.version == daemon.version => self.became_ready(),
            Ok(health) => {
                let reason = format!(
                    "/health reports version {}, but the daemon said {}",
                    health.version, daemon.version
                );
                self.fail_start(reason);
            }
            Err(e) => {
                *stage = Stage::Healthy {
                    next: Instant::now() + PROBE_PAUSE,
                    last_error: Some(e),
                };
            }
        }
    }

    pub(super) fn became_ready(&mut self) {
        if let Slot::Starting {
            daemon,
            purpose: Purpose::Engine { version, .. },
            ..
        } = &self.slot
            && daemon.version != *version
        {
            let reason = format!(
                "the daemon that started is {}, not {version}",
                daemon.version
            );
            self.fail_start(reason);
            return;
        }
        let Slot::Starting {
            daemon, purpose, ..
        } = std::mem::replace(&mut self.slot, Slot::Empty)
        else {
            return;
        };
        if let Purpose::Engine { done, .. } = purpose {
            if self.resuming() {
                failpoint::hit("handover-daemon-ready");
            }
            let _ = done.send(Ok(()));
        }
        info!(pid = daemon.pid, version = %daemon.version, schema = daemon.schema_version, "daemon ready");
        let status = format!(
            "STATUS=serving {} (schema {})",
            daemon.version, daemon.schema_version
        );
        self.notifier.serving(&status);
        self.slot = Slot::Running(daemon);
        for reply in self.restart_replies.drain(..) {
            let done = Response::Done {
                message: "daemon restarted".into(),
            };
            admin::answer_later(reply, done);
        }
    }

    /// Kills a daemon whose start failed; the exit then says how it ended.
    pub(super) fn fail_start(&mut self, reason: String) {
        self.probe = None;
        let Slot::Starting {
            mut daemon,
            purpose,
            ..
        } = std::mem::replace(&mut self.slot, Slot::Empty)
        else {
            return;
        };
        daemon.kill();
        self.slot = Slot::Stopping {
            daemon,
            kill_at: Instant::now(),
            killed: true,
            then: AfterStop::StartFailed { reason, purpose },
        };
    }

    /// A start did not reach ready: report it, then retry, refuse, or (for
    /// the engine) leave the daemon stopped.
    pub(super) fn start_failed(&mut self, purpose: Purpose, failure: NotReady) {
        let reason = failure.to_string();
        self.last_exit = Some(reason.clone());
        for reply in self.restart_replies.drain(..) {
            let message = format!("the daemon did not come back: {reason}");
            admin::answer_later(reply, Response::Error { message });
        }
        match purpose {
            Purpose::Engine { done, .. } => {
                let _ = done.send(Err(failure.into()));
                self.service.hold();
            }
            Purpose::Service => match self.service.start_failed(Instant::now(), failure.status()) {
                Then::Refuse(code) => {
                    error!(
                        "daemon did not start: {reason}; not restarting (fix the cause, then `waiaas-launcher restart`)"
                    );
                    self.notifier
                        .notify(&format!("STATUS=daemon did not start: {reason}"));
                    // Under systemd a service whose first start is refused must
                    // fail, with the daemon's code, so `RestartPreventExitStatus=`
                    // applies; elsewhere (a container) the supervisor stays up.
                    if !self.notifier.ready_sent()
                        && self.notifier.is_active()
                        && self.upgrade.is_none()
                    {
                        self.exit = Some(Err(Failure {
                            code: u8::try_from(code).unwrap_or(1),
                            message: format!("the daemon refused to start: {reason}"),
                        }));
                    }
                }
                Then::RetryIn(delay) => {
                    warn!("daemon did not start: {reason}; retrying in {delay:?}");
                    self.retry_if_due(delay);
                }
                Then::LeaveStopped => warn!("daemon did not start: {reason}"),
            },
        }
    }

    /// A retry without a delay is a start now; others wait for the deadline.
    fn retry_if_due(&mut self, delay: Duration) {
        if delay.is_zero() {
            self.start(Purpose::Service);
        }
    }

    // ---- exits ----

    pub(super) fn exited(&mut self, status: std::io::Result<ExitStatus>) {
        self.probe = None;
        let description = describe_exit(&status);
        match std::mem::replace(&mut self.slot, Slot::Empty) {
            Slot::Empty => {}
            Slot::Starting { purpose, .. } => self.start_failed(purpose, NotReady::Died(status)),
            Slot::Running(daemon) => self.crashed(&daemon, &status),
            Slot::Stopping { then, .. } => {
                info!("daemon {description}");
                match then {
                    AfterStop::StartFailed { reason, purpose } => {
                        self.start_failed(purpose, NotReady::Killed { reason, status });
                    }
                    AfterStop::Restart if self.service.serving() => {
                        self.last_exit = Some(description);
                        self.start_service();
                    }
                    AfterStop::Restart => self.last_exit = Some(description),
                    AfterStop::Engine(done) => {
                        self.last_exit = Some(description);
                        let _ = done.send(Ok(()));
                    }
                    AfterStop::Exit => {
                        self.last_exit = Some(description);
                        self.exit_now();
                    }
                }
            }
        }
    }

    /// A running daemon ended on its own.
    pub(super) fn crashed(&mut self, daemon: &Daemon, status: &std::io::Result<ExitStatus>) {
        let description = describe_exit(status);
        self.last_exit = Some(description.clone());
        let ran_for = daemon.started.elapsed();
        match self.service.crashed(Instant::now(), ran_for, status) {
            Then::LeaveStopped => {
                warn!("daemon {description}; left stopped while an upgrade holds it");
            }
            Then::Refuse(_) => {
                error!(
                    "daemon {description}; not restarting (fix the cause, then `waiaas-launcher restart`)"
                );
                self.notifier
                    .notify(&format!("STATUS=daemon {description}"));
            }
            Then::RetryIn(delay) => {
                warn!("daemon {description}; restarting in {delay:?}");
                self.notifier
                    .notify(&format!("STATUS=daemon {description}; restarting"));
                self.retry_if_due(delay);
            }
        }
    }

    pub(super) fn deadline(&mut self) {
        let now = Instant::now();
        if self.service.retry_due(now) && matches!(self.slot, Slot::Empty) {
            self.start(Purpose::Service);
            return;
        }
        match &mut self.slot {
            Slot::Starting {
                stage: Stage::Hello { by },
                ..
            } if *by <= now => {
                self.fail_start(format!(
                    "no hello from the daemon within {:?}",
                    HELLO_TIMEOUT.min(Duration::from_secs(self.config.update.health_timeout))
                ));
            }
            Slot::Starting {
                stage, deadline, ..
            } if *deadline <= now => {
                let reason = match stage {
                    Stage::Hello { .. } => "no hello from the daemon in time".to_string(),
                    Stage::Ready => "the daemon did not say ready in time".to_string(),
                    Stage::Healthy { last_error, .. } => format!(
                        "never became healthy: {}",
                        last_error.as_deref().unwrap_or("no answer")
                    ),
                };
                self.fail_start(reason);
            }
            Slot::Starting {
                daemon,
                stage: Stage::Healthy { next, .. },
                deadline,
                ..
            } if *next <= now && self.probe.is_none() => {
                let left = deadline.saturating_duration_since(now).min(PROBE_TIMEOUT);
                self.probe = Some(match daemon.probe_addr() {
                    Some(addr) => Box::pin(probe::on_probation(addr, left)),
                    None => Box::pin(probe::health(self.health_addr, left)),
                });
            }
            Slot::Stopping {
                daemon,
                kill_at,
                killed,
                ..
            } if *kill_at <= now && !*killed => {
                warn!("daemon did not stop in time; killing it");
                daemon.kill();
                *killed = true;
            }
            _ => {}
        }
    }
}
