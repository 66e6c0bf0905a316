//! Fault injection for the launcher's start-race tests, which must kill or
//! freeze a real daemon at an exact instant of its start:
//! `WAIAAS_FAILPOINT=<point>:<kill|pause>:<token file>` makes the daemon
//! SIGKILL or SIGSTOP itself at `<point>` (`before-hello`, `after-hello`,
//! `after-ready`) — only the one daemon that manages to remove the token file,
//! so a test arms exactly one fault per file it creates (a folder of token
//! files arms one fault per file in it). Without the variable this is one
//! environment lookup.

/// Acts if the armed fault is at `point`.
pub fn hit(point: &str) {
    let Some(spec) = std::env::var_os("WAIAAS_FAILPOINT") else {
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
