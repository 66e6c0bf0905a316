//! The handover: one launcher becoming another release's launcher in the
//! same process (`execve`, same PID — systemd's MainPID and a container's
//! PID 1 stay). Every decision of *whether* and *to whom* is here; what
//! travels and the deadline's mechanics are `waiaas_shared::handover`.
//!
//! **Its life.**
//! 1. *Who.* The launcher of `current`'s release (`versions/<v>/waiaas-launcher`,
//!    [`DataDir::launcher_of`]), decided by [`current_launcher`] from
//!    `current`'s link alone: *newer* than this launcher at a first start
//!    (and for every command, in `entry`, which asks here); *another*
//!    version after a recovery restored another release, or when an operator
//!    starts a service that `upgrade --no-start` left on another release.
//!    Never in the image (the image is the unit of upgrade), never twice in
//!    a row (a launcher that was handed the service does not hand it on at
//!    its first start), and — but for a recovery — never while a journal
//!    says a change is unfinished. During an upgrade the engine asks
//!    [`launcher_differs`], which runs the new release's launcher.
//! 2. *Exec.* [`Supervisor::hand_over`] detaches an `upgrade` command's
//!    connection, answers waiting `restart`s, arms the confirmation deadline
//!    (`health_timeout` + a grace) and execs with the listener, the admin
//!    socket and that connection as open descriptors. A failed exec returns,
//!    and all is as before.
//! 3. *Probation.* In an upgrade's step 7 the new launcher starts its own
//!    daemon on probation (a private probe listener), checks its health and
//!    a rolled-back probe write, and only then commits and passes it the
//!    public listener: clients wait in the backlog meanwhile.
//! 4. *Confirmation.* The new launcher cancels the deadline once that start
//!    has an outcome (or at once, for a takeover that resumes nothing). A
//!    launcher that exits, hangs or is killed before it confirms is ended by
//!    `SIGALRM`; the next start finds the journal's handover unconfirmed
//!    ([`Supervisor::say_if_unconfirmed`]) and rolls the whole release back.
//! 5. *Hand-back.* A new daemon that fails its probation is rolled back by the
//!    new launcher itself, which then hands the service back to the old
//!    release's launcher, which starts the old daemon.

use std::os::fd::{AsRawFd, RawFd};
use std::path::{Path, PathBuf};
use std::time::Duration;

use semver::Version;
use tracing::{error, info, warn};

use waiaas_shared::admin::Response;
use waiaas_shared::failpoint;
use waiaas_shared::handover::{self, HANDOVER_VERSION, Handover, TAKEOVER_GRACE};
// The confirmation, for the launcher that takes over and for the upgrade
// it resumes.
pub use waiaas_shared::handover::{confirm, deadline_left};
use waiaas_shared::layout::DataDir;
use waiaas_shared::version::{self, VERSION};

use super::{Purpose, REPLY_TIMEOUT, Supervisor, admin};
use crate::daemon_binary;

/// Which of `current`'s launchers a handover goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wanted {
    /// A newer release's only (a first start, a command).
    Newer,
    /// Any other version (a recovery restored it, or `--no-start` left it).
    Other,
}

/// Which launcher a first start is for: this process's mode for handovers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FirstStart {
    /// A newer release's, if `current` names one.
    Newer,
    /// Another version's, once: a recovery restored a release whose launcher
    /// is another one, and left its daemon for that launcher to start.
    Other,
    /// This launcher's own, always: it was handed the service, and never
    /// hands it on at a first start (no exec loop).
    Own,
}

impl FirstStart {
    /// A recovery restored another launcher's release.
    pub fn defer(&mut self) {
        if *self == FirstStart::Newer {
            *self = FirstStart::Other;
        }
    }

    /// Which of `current`'s launchers this first start hands over to, if any
    /// (a deferral is used up).
    pub fn wanted(&mut self) -> Option<Wanted> {
        match *self {
            FirstStart::Own => None,
            FirstStart::Other => {
                *self = FirstStart::Newer;
                Some(Wanted::Other)
            }
            FirstStart::Newer => Some(Wanted::Newer),
        }
    }
}

/// `current`'s launcher, when its release is `wanted` relative to this
/// launcher; read from `current`'s link alone (no process is run, nothing
/// is waited for). Never in the image.
pub fn current_launcher(dir: &DataDir, wanted: Wanted) -> Option<PathBuf> {
    if daemon_binary::in_container() {
        return None;
    }
    let current = crate::swap::current_version(dir).ok().flatten()?;
    let theirs = Version::parse(&current).ok()?;
    let program = dir.launcher_of(&current);
    let differs = match wanted {
        Wanted::Newer => theirs > version::current(),
        Wanted::Other => theirs != version::current(),
    };
    (differs && program.is_file()).then_some(program)
}

/// [`current_launcher`], unless a journal says a change is unfinished (a
/// change in progress, or a handover never confirmed, is not a release to
/// hand anything to: recovery decides first).
pub fn committed_current_launcher(dir: &DataDir, wanted: Wanted) -> Option<PathBuf> {
    if dir.upgrade_journal().exists() {
        return None;
    }
    current_launcher(dir, wanted)
}

/// Whether the launcher that `version`'s release brings is another version
/// than this one, as it says itself (`--version`); for the engine's handover
/// at step 7. Never in the image.
pub async fn launcher_differs(dir: &DataDir, version: &str) -> bool {
    !daemon_binary::in_container()
        && daemon_binary::launcher_version(&dir.launcher_of(version))
            .await
            .is_ok_and(|theirs| theirs != VERSION)
}

/// What a start says when the journal in `dir` holds a handover that was
/// never confirmed (the recovery then rolls the release back).
fn unconfirmed_handover(dir: &DataDir) -> Option<String> {
    use crate::upgrade::journal::{Journal, Operation, Phase};
    let journal = Journal::load(dir).ok().flatten()?;
    (journal.handed_over && journal.phase == Phase::Forward).then(|| {
        format!(
            "the handover to {}'s launcher (step {} of the {} from {} to {}) was never \
             confirmed: that launcher exited, was killed, or hung past its deadline and \
             was ended by SIGALRM; rolling the whole release back to {} (launcher and daemon)",
            journal.to,
            journal.step,
            match journal.operation {
                Operation::Upgrade => "upgrade",
                Operation::Rollback => "rollback",
            },
            journal.from,
            journal.to,
            journal.from
        )
    })
}

/// How long a launcher handed the service has to confirm it: the time its
/// daemon has to become healthy, and the grace for the exec and takeover.
fn handover_deadline(health_timeout_secs: u64) -> Duration {
    Duration::from_secs(health_timeout_secs) + TAKEOVER_GRACE
}

impl Supervisor {
    /// The first start of a daemon — unless the data dir's current release
    /// brings a newer launcher: then this process becomes that launcher,
    /// which starts its own daemon (one installation, one version).
    pub(super) async fn first_start(&mut self) {
        // A launcher that was handed the service never hands it on at its
        // first start: no exec loop, whatever a release folder holds. After
        // a recovery that restored another release, that release's launcher
        // (older or newer) starts its daemon; otherwise only a newer one does.
        let program = self
            .first_start
            .wanted()
            .and_then(|wanted| committed_current_launcher(&self.dir, wanted));
        if let Some(program) = program {
            self.hand_over(&program).await;
        }
        self.start(Purpose::Service);
    }

    /// A start that finds a journal whose handover was never confirmed says
    /// so before the recovery rolls the release back.
    pub(super) fn say_if_unconfirmed(&self) {
        if let Some(said) = unconfirmed_handover(&self.dir) {
            warn!("{said}");
        }
    }

    /// Becomes `program` (another release's launcher) in this process — same
    /// PID — handing over the listener, the admin socket and an upgrade's
    /// connection. Only with no daemon running. Returns only if the exec
    /// failed, with why (then all is as before).
    pub(super) async fn hand_over(&mut self, program: &Path) -> std::io::Error {
        let reply_fd = match &mut self.upgrade {
            Some(upgrade) => upgrade.detach_reply().await,
            None => None,
        };
        self.exec_handover(program, reply_fd)
    }

    /// [`Supervisor::hand_over`] once the reply (if any) is detached: arms
    /// the confirmation deadline (`waiaas_shared::handover`) and execs.
    pub(super) fn exec_handover(
        &mut self,
        program: &Path,
        reply_fd: Option<RawFd>,
    ) -> std::io::Error {
        let message = format!(
            "handing the service to {} (same pid), which starts its daemon; \
             see `waiaas-launcher status`",
            program.display()
        );
        for reply in self.restart_replies.drain(..) {
            let done = Response::Done {
                message: message.clone(),
            };
            // Written before the exec: the connection does not travel.
            admin::answer_blocking(reply, &done, REPLY_TIMEOUT);
        }
        let handover = Handover {
            version: HANDOVER_VERSION,
            from_launcher: VERSION.to_string(),
            listener_fd: self.listener.as_raw_fd(),
            admin_fd: self.admin_fd,
            reply_fd,
            ready_sent: self.notifier.ready_sent(),
        };
        let deadline = handover_deadline(self.config.update.health_timeout);
        info!(
            "handing over to {} (it must confirm within {} s, or SIGALRM ends it and the next \
             start rolls back)",
            program.display(),
            deadline.as_secs()
        );
        if let Err(e) = handover::arm_deadline(deadline) {
            warn!("cannot arm the handover's deadline ({e}); handing over without one");
        }
        failpoint::hit("handover-before-exec");
        let root = self.dir.root().to_string_lossy().into_owned();
        let error = handover.exec(program, &["run", "--data-dir", &root], self.notifier.env());
        handover::confirm();
        error!("cannot hand over to {}: {error}", program.display());
        if let (Some(fd), Some(upgrade)) = (reply_fd, &mut self.upgrade) {
            upgrade.reattach_reply(fd);
        }
        error
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `current` pointed at a release of `version` with both programs.
    fn current_at(dir: &DataDir, version: &str) {
        std::fs::create_dir_all(dir.version(version)).unwrap();
        std::fs::write(dir.version(version).join("waiaas-daemon"), b"").unwrap();
        std::fs::write(dir.launcher_of(version), b"").unwrap();
        crate::swap::point_current(dir, version).unwrap();
    }

    #[test]
    fn whose_launcher_takes_over_is_decided_from_current_alone() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = DataDir::new(tmp.path());
        let this = version::current();
        let older = Version::new(this.major, this.minor, 0);
        let older = if older < this {
            older
        } else {
            Version::new(0, 0, 1)
        };
        let newer = Version::new(this.major + 1, 0, 0);
        let cases = [
            (older.to_string(), None, true),
            (newer.to_string(), Some(()), true),
            (VERSION.to_string(), None, false),
        ];
        for (version, newer_wanted, other_wanted) in cases {
            current_at(&dir, &version);
            let program = Some(dir.launcher_of(&version));
            assert_eq!(
                current_launcher(&dir, Wanted::Newer),
                newer_wanted.and(program.clone()),
                "newer, current at {version}"
            );
            assert_eq!(
                current_launcher(&dir, Wanted::Other),
                other_wanted.then_some(program).flatten(),
                "other, current at {version}"
            );
        }
        // A release without its launcher is nobody to hand over to.
        current_at(&dir, &newer.to_string());
        std::fs::remove_file(dir.launcher_of(&newer.to_string())).unwrap();
        assert_eq!(current_launcher(&dir, Wanted::Other), None);
        // Unfinished: recovery decides first.
        current_at(&dir, &newer.to_string());
        std::fs::write(dir.upgrade_journal(), b"{}").unwrap();
        assert_eq!(committed_current_launcher(&dir, Wanted::Newer), None);
        assert!(current_launcher(&dir, Wanted::Newer).is_some());
    }

    /// A release's launcher as a script saying its version, as the real one
    /// answers `--version`.
    fn launcher_saying(dir: &DataDir, release: &str, says: &str) {
        use std::os::unix::fs::PermissionsExt;
        let program = dir.launcher_of(release);
        std::fs::create_dir_all(program.parent().unwrap()).unwrap();
        std::fs::write(
            &program,
            format!("#!/bin/sh\necho 'waiaas-launcher {says}'\n"),
        )
        .unwrap();
        std::fs::set_permissions(&program, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    #[tokio::test]
    async fn a_release_s_launcher_differs_when_it_says_another_version() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = DataDir::new(tmp.path());
        assert!(!launcher_differs(&dir, "9.9.9").await, "no launcher");
        launcher_saying(&dir, "9.9.9", "9.9.9");
        assert!(launcher_differs(&dir, "9.9.9").await);
        launcher_saying(&dir, "9.9.9", VERSION);
        assert!(
            !launcher_differs(&dir, "9.9.9").await,
            "this launcher's version"
        );
    }

    #[test]
    fn a_handover_never_confirmed_is_said_before_the_rollback() {
        use crate::upgrade::journal::{Journal, Operation, Phase};
        let tmp = tempfile::tempdir().unwrap();
        let dir = DataDir::new(tmp.path());
        assert_eq!(unconfirmed_handover(&dir), None, "no journal");
        let mut journal = Journal::new(Operation::Upgrade, "1.8.1", "1.9.0", true);
        journal.step = 7;
        journal.save(&dir).unwrap();
        assert_eq!(unconfirmed_handover(&dir), None, "not handed over");
        journal.handed_over = true;
        journal.save(&dir).unwrap();
        let said = unconfirmed_handover(&dir).unwrap();
        assert!(
            said.starts_with("the handover to 1.9.0's launcher (step 7 of the upgrade from 1.8.1")
                && said.ends_with("rolling the whole release back to 1.8.1 (launcher and daemon)"),
            "{said}"
        );
        journal.operation = Operation::Rollback;
        journal.save(&dir).unwrap();
        assert!(
            unconfirmed_handover(&dir)
                .unwrap()
                .contains("of the rollback from")
        );
        journal.phase = Phase::RollingBack;
        journal.save(&dir).unwrap();
        assert_eq!(unconfirmed_handover(&dir), None, "already rolling back");
    }

    #[test]
    fn the_handover_deadline_is_the_health_timeout_and_the_grace() {
        assert_eq!(
            handover_deadline(60),
            Duration::from_secs(60) + TAKEOVER_GRACE
        );
        assert_eq!(handover_deadline(0), TAKEOVER_GRACE);
    }

    #[test]
    fn a_first_start_hands_to_a_newer_launcher_to_another_once_deferred_never_when_taken_over() {
        let mut own = FirstStart::Newer;
        assert_eq!(own.wanted(), Some(Wanted::Newer));
        assert_eq!(own.wanted(), Some(Wanted::Newer));
        own.defer();
        assert_eq!(own.wanted(), Some(Wanted::Other));
        assert_eq!(own.wanted(), Some(Wanted::Newer), "a deferral is used once");
        let mut taken_over = FirstStart::Own;
        taken_over.defer();
        assert_eq!(taken_over.wanted(), None);
        assert_eq!(taken_over.wanted(), None);
    }
}
