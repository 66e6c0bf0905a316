//! The reference `minisign` tool, for interop tests: keys it makes must pack,
//! and signatures it makes must verify.

use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;

/// The reference `minisign` binary (Debian's package `minisign`), installed
/// with `apt-get` when missing (which needs root). Test helper: when it
/// cannot be had, says why on stderr and returns `None` — except under CI
/// (`CI=true`), where it panics, so interop is never silently left untested.
pub fn reference_minisign() -> Option<PathBuf> {
    static FOUND: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    match FOUND.get_or_init(find_or_install) {
        Ok(path) => Some(path.clone()),
        Err(why) if std::env::var("CI").is_ok_and(|ci| ci == "true") => {
            panic!("CI needs the reference minisign tool: {why}")
        }
        Err(why) => {
            eprintln!("skipped: the reference minisign tool is not available: {why}");
            None
        }
    }
}

fn on_path() -> Option<PathBuf> {
    let paths = std::env::var_os("PATH")?;
    std::env::split_paths(&paths)
        .map(|dir| dir.join("minisign"))
        .find(|path| path.is_file())
}

fn apt_get(args: &[&str]) -> Result<Output, String> {
    Command::new("apt-get")
        .args(args)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run apt-get: {e}"))
}

fn find_or_install() -> Result<PathBuf, String> {
    if let Some(path) = on_path() {
        return Ok(path);
    }
    let install = ["install", "-y", "-q", "minisign"];
    if !apt_get(&install).is_ok_and(|out| out.status.success()) {
        // A fresh image has no package lists yet.
        apt_get(&["update", "-q"])?;
        let out = apt_get(&install)?;
        if !out.status.success() {
            let stderr = String::from_utf8_lossy(&out.stderr);
            return Err(format!(
                "`apt-get install -y minisign` failed (as root?): {}",
                stderr.trim()
            ));
        }
    }
    on_path().ok_or_else(|| "apt-get installed minisign, but it is not on PATH".into())
}
