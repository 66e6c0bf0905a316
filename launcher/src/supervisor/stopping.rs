//! Stopping: a daemon's graceful stop and its deadline, an operator's
//! restart, and SIGTERM/SIGINT or `stop` ending the supervisor.

use super::*;

impl Supervisor {
    /// Orders the daemon to stop (killed after the deadline), then `then`.
    /// Without a daemon, `then` happens at once.
    pub(super) fn stop_daemon(&mut self, then: AfterStop) {
        self.probe = None;
        self.service.cancel_retry();
        match std::mem::replace(&mut self.slot, Slot::Empty) {
            Slot::Empty => self.after_stop_now(then),
            Slot::Starting {
                daemon, purpose, ..
            } => {
                // A start is abandoned: one that was for the engine is told so.
                if let Purpose::Engine { done, .. } = purpose {
                    let _ = done.send(Err(HostError::ShuttingDown));
                }
                self.order_stop(daemon, then);
            }
            Slot::Running(daemon) => self.order_stop(daemon, then),
            Slot::Stopping {
                daemon,
                kill_at,
                killed,
                then: before,
            } => {
                // Already on its way out: an engine's failed start is told so.
                if let AfterStop::StartFailed {
                    purpose: Purpose::Engine { done, .. },
                    reason,
                } = before
                {
                    let _ = done.send(Err(HostError::NotReady(reason)));
                }
                self.slot = Slot::Stopping {
                    daemon,
                    kill_at,
                    killed,
                    then,
                };
            }
        }
    }

    /// Orders `daemon` to stop, to be killed after `shutdown_timeout` + grace.
    pub(super) fn order_stop(&mut self, mut daemon: Daemon, then: AfterStop) {
        let deadline = Duration::from_secs(self.config.daemon.shutdown_timeout);
        daemon.order_stop(deadline.as_secs());
        self.slot = Slot::Stopping {
            daemon,
            kill_at: Instant::now() + deadline + KILL_GRACE,
            killed: false,
            then,
        };
    }

    pub(super) fn after_stop_now(&mut self, then: AfterStop) {
        match then {
            AfterStop::Restart => self.start_service(),
            AfterStop::Exit => self.exit_now(),
            AfterStop::Engine(done) => {
                let _ = done.send(Ok(()));
            }
            AfterStop::StartFailed { .. } => {
                unreachable!("a failed start has a daemon to wait for")
            }
        }
    }

    /// A restart the operator asked for; with an unfinished change, a retry
    /// of its rollback instead (the service starts after it).
    pub(super) fn restart_or_recover(&mut self) {
        if self.dir.upgrade_journal().exists() {
            self.recover();
        } else {
            self.restart();
        }
    }

    pub(super) fn restart(&mut self) {
        self.service.restart();
        self.stop_daemon(AfterStop::Restart);
    }

    /// SIGTERM, SIGINT or an admin `stop`: abandon a preflight, let a begun
    /// upgrade finish or roll back first, then stop the daemon and exit.
    pub(super) fn terminate(&mut self, why: &str, reply: Option<OwnedWriteHalf>) {
        self.stop_replies.extend(reply);
        if let Some(upgrade) = &self.upgrade {
            if upgrade.past_preflight() {
                info!(
                    "{why}: stopping once the upgrade has finished or rolled back \
                     (bounded by its step deadlines)"
                );
                if let Some(upgrade) = &mut self.upgrade {
                    upgrade.then.stop = true;
                }
                return;
            }
            info!("{why}: abandoning the upgrade's preflight; nothing was changed");
            let upgrade = self.upgrade.take().expect("checked above");
            let from = crate::swap::current_version(&self.dir).ok().flatten();
            upgrade.finish(crate::upgrade::report::abandoned(from.as_deref()));
        }
        info!("{why}: stopping");
        self.shutdown();
    }

    pub(super) fn shutdown(&mut self) {
        self.notifier.notify("STOPPING=1");
        self.service.shutdown();
        self.stop_daemon(AfterStop::Exit);
    }

    /// Ends the loop (whoever asked for the stop is answered on the way out).
    pub(super) fn exit_now(&mut self) {
        self.exit.get_or_insert(Ok(()));
    }
}
