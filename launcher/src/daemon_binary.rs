//! Running `waiaas-daemon` binaries: which one to supervise, spawning one so
//! it cannot outlive the launcher, and the short-lived subcommands the
//! upgrade engine asks (`--version --json`, `check --json`, `migrate`), each
//! with a deadline after which it is killed. The supervisor and the engine
//! both go through here.

use std::io;
use std::net::{SocketAddr, TcpListener};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use tokio::process::Command;

use waiaas_shared::compat::CompatReport;
use waiaas_shared::control::PUBLIC_CHANNEL_FD_ENV;
use waiaas_shared::exit;
use waiaas_shared::layout::DataDir;
use waiaas_shared::listen_fds;
use waiaas_shared::version::DaemonVersion;

use crate::failure::Failure;

/// How long `--version` and `check` may take: they read a few pages.
pub const QUERY_DEADLINE: Duration = Duration::from_secs(30);

pub use waiaas_shared::container::in_container;

/// The daemon to supervise: `current/waiaas-daemon`, or in the container image
/// the one beside this launcher — there a new image brings a new daemon, which
/// backs up and migrates the volume's database itself at start (SPEC §9).
pub fn program(dir: &DataDir) -> Result<PathBuf, Failure> {
    if in_container() {
        let exe = std::env::current_exe()
            .map_err(|e| Failure::new(format!("cannot find this program's path: {e}")))?;
        let beside = exe.with_file_name("waiaas-daemon");
        return if beside.is_file() {
            Ok(beside)
        } else {
            Err(Failure::new(format!(
                "the image has no {}",
                beside.display()
            )))
        };
    }
    let current = dir.current().join("waiaas-daemon");
    if current.exists() {
        Ok(current)
    } else {
        Err(Failure::new(format!(
            "not initialised: {} is missing; run `waiaas-launcher init` first",
            current.display()
        )))
    }
}

/// A daemon started on probation (SPEC §13): it serves a private probe
/// listener on loopback, which only the launcher probes, and gets the public
/// listener over a socket only once the change is committed — so a release
/// that is then rolled back never acknowledged anything to a client.
pub struct Probation {
    /// Where the launcher probes it.
    pub probe_addr: SocketAddr,
    /// Until the spawn: the probe listener and the daemon's end of the channel.
    theirs: Option<(TcpListener, UnixStream)>,
    ours: UnixStream,
}

impl Probation {
    pub fn new() -> io::Result<Self> {
        let probe = TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, 0))?;
        let probe_addr = probe.local_addr()?;
        let (ours, theirs) = UnixStream::pair()?;
        Ok(Self {
            probe_addr,
            theirs: Some((probe, theirs)),
            ours,
        })
    }

    /// Arranges `command`'s descriptors: the probe listener at 3, then
    /// `others` (the control channel), then the public listener's channel.
    pub fn pass(&self, command: &mut std::process::Command, others: &[RawFd]) {
        let (probe, theirs) = self.theirs.as_ref().expect("passed before the spawn");
        let mut fds = vec![probe.as_raw_fd()];
        fds.extend_from_slice(others);
        fds.push(theirs.as_raw_fd());
        let at = listen_fds::FIRST_FD + fds.len() as RawFd - 1;
        command.env(PUBLIC_CHANNEL_FD_ENV, at.to_string());
        listen_fds::pass(command, &fds);
    }

    /// After the spawn: the child holds its descriptors; ours are closed.
    pub fn spawned(&mut self) {
        self.theirs = None;
    }

    /// Hands the daemon the public `listener`: from now on it serves clients.
    pub fn open(&self, listener: &TcpListener) -> io::Result<()> {
        listen_fds::send_listener(&self.ours, listener)
    }
}

/// Whether the daemon in `version_dir` can start on probation; a daemon that
/// cannot (an older release) serves the public port from its start, said in
/// a warning.
pub async fn starts_on_probation(version_dir: &Path) -> bool {
    match version_of(version_dir).await {
        Ok(info) if info.probation => true,
        Ok(info) => {
            tracing::warn!(
                "{}'s daemon predates the readiness gate: it serves clients from its start, \
                 before the change is committed, so a rollback now would drop what it acknowledged",
                info.version
            );
            false
        }
        Err(e) => {
            tracing::warn!(
                "cannot ask the daemon whether it starts on probation ({e}); assuming not"
            );
            false
        }
    }
}

/// Why running a daemon binary did not give an answer.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("cannot run {program}: {source}")]
    Spawn {
        program: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("`waiaas-daemon {args}` did not finish within {after:?} and was killed")]
    Deadline { args: String, after: Duration },
    #[error("`waiaas-daemon {args}` {exit}: {stderr}")]
    Failed {
        args: String,
        exit: String,
        stderr: String,
    },
    #[error("`waiaas-daemon check` gave no verdict: {stderr}")]
    NoVerdict { stderr: String },
    #[error("{program} --version --json printed no usable version: {detail}")]
    NoVersion { program: PathBuf, detail: String },
}

/// A `waiaas-daemon` command that dies with this launcher: on Linux the
/// parent-death signal (`signal` when the launcher dies, even by SIGKILL),
/// so no `migrate`, `check` or daemon outlives it and races the next
/// launcher's recovery. The signal follows the *thread* that forks: call from
/// the thread that lives as long as the process (the runtime's, which is
/// current-thread). Elsewhere (macOS) a supervised daemon stops when its
/// control channel closes, and a short-lived subcommand finishes on its own.
pub fn command(program: &Path, signal: libc::c_int) -> std::process::Command {
    let mut command = std::process::Command::new(program);
    die_with_launcher(&mut command, signal);
    command
}

#[cfg(target_os = "linux")]
fn die_with_launcher(command: &mut std::process::Command, signal: libc::c_int) {
    use std::os::unix::process::CommandExt;
    let parent = std::process::id() as libc::pid_t;
    // SAFETY: prctl and getppid are async-signal-safe.
    unsafe {
        command.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, signal) != 0 {
                return Err(io::Error::last_os_error());
            }
            if libc::getppid() != parent {
                return Err(io::Error::other("the launcher died while starting it"));
            }
            Ok(())
        });
    }
}

#[cfg(not(target_os = "linux"))]
fn die_with_launcher(_command: &mut std::process::Command, _signal: libc::c_int) {}

/// Runs `program <args>` (`--data-dir` last, with one) to completion within
/// `deadline` (killed after it), and returns its stdout and stderr.
async fn output(
    program: &Path,
    args: &[&str],
    data_dir: Option<&DataDir>,
    deadline: Duration,
) -> Result<std::process::Output, RunError> {
    let mut command = Command::from(command(program, libc::SIGKILL));
    command
        .kill_on_drop(true)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(dir) = data_dir {
        command.arg("--data-dir").arg(dir.root());
    }
    let spawn_failed = |source| RunError::Spawn {
        program: program.to_path_buf(),
        source,
    };
    let child = command.spawn().map_err(spawn_failed)?;
    // Dropping the child on the deadline kills it (`kill_on_drop`).
    tokio::time::timeout(deadline, child.wait_with_output())
        .await
        .map_err(|_| RunError::Deadline {
            args: args.join(" "),
            after: deadline,
        })?
        .map_err(spawn_failed)
}

fn daemon(version_dir: &Path) -> PathBuf {
    version_dir.join("waiaas-daemon")
}

/// `waiaas-daemon migrate --no-backup`: the caller has just made a verified
/// backup, and a second one would only add downtime.
pub async fn migrate(
    version_dir: &Path,
    dir: &DataDir,
    deadline: Duration,
) -> Result<(), RunError> {
    let args = ["migrate", "--no-backup"];
    let out = output(&daemon(version_dir), &args, Some(dir), deadline).await?;
    if out.status.success() {
        Ok(())
    } else {
        Err(RunError::Failed {
            args: args.join(" "),
            exit: describe_exit(&Ok(out.status)),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }
}

/// The binary's verdict on the database (`check --json`).
pub async fn check(version_dir: &Path, dir: &DataDir) -> Result<CompatReport, RunError> {
    let out = output(
        &daemon(version_dir),
        &["check", "--json"],
        Some(dir),
        QUERY_DEADLINE,
    )
    .await?;
    serde_json::from_slice(&out.stdout).map_err(|_| RunError::NoVerdict {
        stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
    })
}

/// What `<version dir>/waiaas-daemon --version --json` says about itself.
pub async fn version_of(version_dir: &Path) -> Result<DaemonVersion, RunError> {
    let out = output(
        &daemon(version_dir),
        &["--version", "--json"],
        None,
        QUERY_DEADLINE,
    )
    .await?;
    DaemonVersion::parse(&String::from_utf8_lossy(&out.stdout)).map_err(|detail| {
        RunError::NoVersion {
            program: version_dir.join("waiaas-daemon"),
            detail,
        }
    })
}

/// What `program --version` (a release's `waiaas-launcher`) says its
/// version is (`waiaas-launcher 1.9.0`), for the supervisor handing over to it.
pub async fn launcher_version(program: &Path) -> Result<String, RunError> {
    let program = program.to_path_buf();
    let out = output(&program, &["--version"], None, QUERY_DEADLINE).await?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.split_whitespace()
        .last()
        .filter(|v| semver::Version::parse(v).is_ok())
        .map(str::to_string)
        .ok_or_else(|| RunError::NoVersion {
            program,
            detail: format!("--version printed `{}`", text.trim()),
        })
}

/// "exited with 20 (refused: …)" / "was killed by signal 9".
pub fn describe_exit(status: &io::Result<ExitStatus>) -> String {
    match status {
        Ok(s) => match (s.code(), s.signal()) {
            (Some(code), _) => format!("exited with {code} ({})", exit::daemon::describe(code)),
            (None, Some(sig)) => format!("was killed by signal {sig}"),
            _ => "ended".to_string(),
        },
        Err(e) => format!("could not be waited for: {e}"),
    }
}
