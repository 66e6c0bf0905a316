//! Fault injection for tests that must kill or freeze a real process at an
//! exact instant: `WAIAAS_FAILPOINT=<point>:<kill|pause|hold>:<token file>`
//! makes the process SIGKILL or SIGSTOP itself at `<point>` — only the one
//! process that manages to remove the token file, so a test arms exactly one
//! fault per file it creates (a folder of token files arms one fault per file
//! in it). `hold` stops only the thread at `<point>`, until the test creates
//! `<token file>.release` and at most [`HOLD_LIMIT`]: the rest of the process
//! runs on, as it would were that thread slow, while the test acts (kills
//! another process, or this one). Without the variable this is one
//! environment lookup.
//!
//! The daemon's points: `before-hello`, `after-hello`, `after-ready` (the
//! start-race tests). The launcher's, all around a handover (the kill -9
//! tests of `launcher/tests/upgrade/kills.rs`):
//!
//! | point | where |
//! |---|---|
//! | `handover-before-exec` | the old launcher, journal saved as handed over, right before `execve` |
//! | `handover-after-exec` | the new launcher, first thing in `run`, before it reads the handover |
//! | `handover-daemon-spawned` | the new launcher, its daemon for the handed-over step just spawned |
//! | `handover-daemon-ready` | the new launcher, its daemon healthy, before the commit |
//! | `handover-committed` | the new launcher, committed, before the report is sent |
//!
//! And in a live backup's fold of the WAL into the live database
//! (`backup::fold`, the kill tests of `launcher/tests/upgrade/fold.rs`):
//! `fold-pass` (the daemon serving, before the snapshot moves to the log's
//! end and the checkpoint beside the daemon folds up to it) and
//! `fold-finish` (the daemon stopped, before the last checkpoint folds the rest of
//! the log).
//!
//! One variable serves both programs (the daemon inherits the launcher's
//! environment); each acts only at its own points.

/// The variable arming a fault.
pub const FAILPOINT_ENV: &str = "WAIAAS_FAILPOINT";

/// The longest a `hold` lasts: a test that never releases it (it failed)
/// leaves a slow thread, never a hung one.
pub const HOLD_LIMIT: std::time::Duration = std::time::Duration::from_secs(10);

/// Acts if the armed fault is at `point`.
pub fn hit(point: &str) {
    let Some(spec) = std::env::var_os(FAILPOINT_ENV) else {
        return;
    };
    let spec = spec.to_string_lossy();
    let mut parts = spec.splitn(3, ':');
    let (Some(at), Some(action), Some(token)) = (parts.next(), parts.next(), parts.next()) else {
        return;
    };
    let signal = match action {
        "kill" => Some(libc::SIGKILL),
        "pause" => Some(libc::SIGSTOP),
        "hold" => None,
        _ => return,
    };
    if at != point || !take(std::path::Path::new(token)) {
        return;
    }
    let Some(signal) = signal else {
        let release = std::path::PathBuf::from(format!("{token}.release"));
        let until = std::time::Instant::now() + HOLD_LIMIT;
        while !release.exists() && std::time::Instant::now() < until {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        return;
    };
    // SAFETY: kill(2) on our own pid: the whole process, not just this thread.
    unsafe { libc::kill(libc::getpid(), signal) };
}

/// Removes the token (or one token of a folder); whether this process got it.
fn take(token: &std::path::Path) -> bool {
    if token.is_dir() {
        let entries = std::fs::read_dir(token).into_iter().flatten().flatten();
        return entries
            .into_iter()
            .any(|entry| std::fs::remove_file(entry.path()).is_ok());
    }
    std::fs::remove_file(token).is_ok()
}
