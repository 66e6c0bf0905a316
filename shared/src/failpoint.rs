//! Fault injection for tests that must kill or freeze a real process at an
//! exact instant: `WAIAAS_FAILPOINT=<point>:<kill|pause>:<token file>` makes
//! the process SIGKILL or SIGSTOP itself at `<point>` — only the one process
//! that manages to remove the token file, so a test arms exactly one fault
//! per file it creates (a folder of token files arms one fault per file in
//! it). Without the variable this is one environment lookup.
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
//! One variable serves both programs (the daemon inherits the launcher's
//! environment); each acts only at its own points.

/// The variable arming a fault.
pub const FAILPOINT_ENV: &str = "WAIAAS_FAILPOINT";

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
        "kill" => libc::SIGKILL,
        "pause" => libc::SIGSTOP,
        _ => return,
    };
    if at != point || !take(std::path::Path::new(token)) {
        return;
    }
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
