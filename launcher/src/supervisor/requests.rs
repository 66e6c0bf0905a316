//! What the supervisor is asked: admin requests (`status`, `start`, `stop`,
//! `restart`, `upgrade`) and the hosted upgrade's calls on its host (stop,
//! start, open, hand over), and that upgrade's end.

use super::mode::Mode;
use super::*;

impl Supervisor {
    pub(super) fn admin(&mut self, call: AdminCall) {
        let AdminCall { request, reply } = call;
        let refuse = |reply, message: &str| {
            let message = message.to_string();
            admin::answer_later(reply, Response::Error { message });
        };
        let stopping = self.service.stopping();
        match request {
            Request::Status => {
                // The probe runs on its own task: a daemon that just died (its
                // port held by us, so the probe waits) must not hold up the loop.
                let mut status = self.status();
                let addr = self.health_addr;
                tokio::spawn(async move {
                    if let Some(daemon) = status.daemon.as_mut().filter(|d| d.healthy) {
                        daemon.healthy = probe::health(addr, STATUS_PROBE_TIMEOUT).await.is_ok();
                    }
                    admin::answer(reply, &Response::Status(status)).await;
                });
            }
            Request::Stop => self.terminate("stop requested", Some(reply)),
            _ if stopping => refuse(reply, "the supervisor is stopping"),
            Request::Restart if self.upgrade.is_some() => refuse(
                reply,
                "an upgrade or rollback is in progress; wait for it to finish",
            ),
            Request::Restart => {
                self.restart_replies.push(reply);
                self.restart_or_recover();
            }
            Request::Upgrade(_) if self.upgrade.is_some() => refuse(
                reply,
                "another upgrade or rollback is in progress; wait for it to finish",
            ),
            Request::Upgrade(request) => {
                let (dir, config) = (self.dir.clone(), self.config.clone());
                self.upgrade = Some(Upgrade::request(dir, config, request, reply));
            }
        }
    }

    pub(super) async fn host_call(&mut self, call: HostCall) {
        match call {
            HostCall::Running(answer) => {
                let _ = answer.send(self.wants_daemon());
            }
            HostCall::HoldCheckpoints(answer) => match &mut self.slot {
                Slot::Running(daemon) if daemon.holds_checkpoints => {
                    match daemon.send(&FromLauncher::HoldCheckpoints) {
                        Ok(()) => daemon.hold_answer = Some(answer),
                        Err(e) => warn!("cannot ask the daemon to hold its checkpoints: {e}"),
                    }
                }
                // Dropped: no daemon that could hold them.
                _ => drop(answer),
            },
            HostCall::Open => self.open(),
            HostCall::Stop(done) => {
                // From here the upgrade decides when a daemon runs.
                self.service.hold();
                self.stop_daemon(AfterStop::Engine(done));
            }
            HostCall::HandsOver { version, answer } => {
                // Asked off the loop: running a binary takes a moment.
                let dir = self.dir.clone();
                tokio::spawn(async move {
                    let _ = answer.send(handover::launcher_differs(&dir, &version).await);
                });
            }
            HostCall::HandOver { version, failed } => {
                let program = self.dir.launcher_of(&version);
                let error = self.hand_over(&program).await;
                let _ = failed.send(HostError::HandOver {
                    program,
                    reason: error.to_string(),
                });
            }
            HostCall::Start {
                version,
                probation,
                done,
            } => {
                let recovering =
                    matches!(self.upgrade.as_ref().map(|u| &u.work), Some(Work::Recovery));
                if recovering
                    && handover::current_launcher(&self.dir, handover::Wanted::Other).is_some()
                {
                    // The release a recovery restored brings its own launcher:
                    // this process becomes it, and it starts its own daemon.
                    info!(
                        "{version} is restored; its own launcher starts its daemon \
                         (one installation, one version)"
                    );
                    self.first_start.defer();
                    let _ = done.send(Ok(()));
                } else if matches!(self.slot, Slot::Empty) {
                    self.start(Purpose::Engine {
                        version,
                        done,
                        probation,
                    });
                } else {
                    let _ = done.send(Err(HostError::AlreadyRunning));
                }
            }
        }
    }

    /// Ends the probation of the daemon the engine started, now that its
    /// change is committed: it serves the public listener from here on. If
    /// it died meanwhile, the committed release is started as the service.
    pub(super) fn open(&mut self) {
        match &mut self.slot {
            Slot::Running(daemon) => match daemon.open(&self.listener) {
                Ok(()) => info!(pid = daemon.pid, version = %daemon.version, "serving clients"),
                Err(e) => {
                    warn!("cannot hand the daemon the public listener ({e}); restarting it");
                    self.restart();
                }
            },
            // An operator's upgrade starts the committed release's daemon
            // again; before the first start, `upgraded` does (or the
            // restored release's own launcher, when a recovery deferred it).
            Slot::Empty
                if matches!(
                    self.upgrade.as_ref().map(|u| &u.work),
                    Some(Work::Request | Work::Auto)
                ) =>
            {
                warn!("the daemon exited before it could serve clients; starting it again");
                self.start(Purpose::Service);
            }
            Slot::Empty => {}
            Slot::Starting { .. } | Slot::Stopping { .. } => {}
        }
    }

    pub(super) async fn upgraded(&mut self, report: Option<UpgradeReport>) {
        // Whatever it was, this launcher saw it to its end: nothing left to confirm.
        handover::confirm();
        let upgrade = self.upgrade.take().expect("an upgrade ended");
        // An automatic attempt ends with its report, whichever launcher
        // sees it (after a handover, the new release's).
        if let (Some(auto), Some(report)) = (&mut self.auto, &report) {
            auto.settle(report);
        }
        let mut back_to = None;
        // Before the first start (not an operator's request): start afterwards.
        let first = !matches!(upgrade.work, Work::Request | Work::Auto);
        let upgrade_then = upgrade.then;
        // Why the change is left unfinished, when its rollback failed.
        let mut failure = None;
        match (&upgrade.work, report) {
            (Work::Request | Work::Local | Work::Auto, Some(report)) => {
                if report.outcome == Outcome::RollbackFailed {
                    failure = Some(report.message.clone());
                }
                upgrade.finish(report);
            }
            (Work::Resume, Some(report)) => {
                // Rolled back: the old release's launcher starts the old daemon.
                if report.outcome == Outcome::RolledBack {
                    back_to = report.from.clone();
                }
                if matches!(report.outcome, Outcome::Upgraded | Outcome::Restored) {
                    failpoint::hit("handover-committed");
                }
                if report.outcome == Outcome::RollbackFailed {
                    failure = Some(report.message.clone());
                }
                upgrade.finish_flushed(report).await;
            }
            (_, Some(report)) => {
                error!(
                    "{} Manual steps: {}",
                    report.message,
                    report.manual_steps.join(" ")
                );
                failure = Some(report.message);
            }
            (Work::Request | Work::Local | Work::Auto, None) => {
                unreachable!("a request always reports")
            }
            (_, None) => {}
        }
        if !matches!(self.slot, Slot::Empty) {
            self.service.release();
        }
        // An engine that ended without opening its daemon (a path that
        // forgot, or a report lost) leaves it on probation only while a
        // journal says the change is not committed.
        if let Slot::Running(daemon) = &self.slot
            && daemon.probe_addr().is_some()
            && !self.dir.upgrade_journal().exists()
        {
            self.open();
        }
        // A change left unfinished (its rollback failed) is never served.
        let unfinished = self.dir.upgrade_journal().exists();
        // The service was refused for a change that a retry (`restart`,
        // SIGHUP) has now rolled back.
        let retried = !unfinished && upgrade_then.start_service;
        if unfinished && matches!(self.slot, Slot::Empty) {
            self.refuse_uncommitted(failure.as_deref());
        }
        if let Some(from) = back_to {
            let program = self.dir.launcher_of(&from);
            self.hand_over(&program).await;
            self.start(Purpose::Service);
        } else if upgrade_then.stop {
            self.shutdown();
        } else if retried && first && matches!(self.slot, Slot::Empty) {
            // Started as a restart is: under `current`'s own launcher.
            info!("the unfinished change is rolled back; starting the service");
            self.start_service();
        } else if first && self.service.mode() == &Mode::Held && matches!(self.slot, Slot::Empty) {
            // Recovered, resumed with nothing to resume, or a local upgrade
            // that did not start a daemon: the first start.
            self.first_start().await;
        }
    }
}
