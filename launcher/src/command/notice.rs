//! The update notice (SPEC §5): after every command except `run` and
//! `upgrade`, a framed box on stderr (stdout stays clean for scripts) when the
//! daemon's version check has stored a newer release than the one installed,
//! at most once every 24 hours.
//!
//! The key-value store is read straight from `data/waiaas.db`, so the notice
//! works whether or not the daemon runs; showing it records
//! `version_check_notified_at` (Unix seconds) there. No database, no table, no
//! key, a busy or unreadable file: no notice and no message — a notice must
//! never break the command it follows.
//!
//! The running version is the one `current` points at (its target folder's
//! name, when that is semver), else this launcher's own.
//!
//! # When it is not shown
//!
//! | switch | effect |
//! |---|---|
//! | `--quiet` | never shown |
//! | `WAIAAS_NO_UPDATE_NOTIFY=1` | never shown (any value but empty, `0` and `false`) |
//! | `NO_UPDATE_NOTIFIER` | never shown, with any non-empty value (the convention npm tools share) |
//! | `CI` | not shown, with any non-empty value but `0` and `false` |
//! | stderr not a terminal | not shown |
//! | `WAIAAS_FORCE_UPDATE_NOTIFY=1` | shown despite `CI` and a non-terminal stderr (for tests); never overrides the three above |
//!
//! When suppressed, the database is not opened and `notified_at` is not written.

use std::ffi::OsString;
use std::io::{IsTerminal, Write};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};

use waiaas_shared::kv;
use waiaas_shared::layout::DataDir;
use waiaas_shared::time::UtcTime;
use waiaas_shared::version::{VERSION, is_newer};

const NO_NOTIFY_ENV: &str = "WAIAAS_NO_UPDATE_NOTIFY";
const NO_UPDATE_NOTIFIER_ENV: &str = "NO_UPDATE_NOTIFIER";
const CI_ENV: &str = "CI";
const FORCE_ENV: &str = "WAIAAS_FORCE_UPDATE_NOTIFY";

/// The notice is shown at most once in this many seconds.
const INTERVAL_SECS: u64 = 24 * 60 * 60;
/// How long to wait for a daemon's write lock before giving up silently.
const BUSY_TIMEOUT: Duration = Duration::from_secs(2);
/// The box's inner width in SPEC §5; longer versions widen it.
const MIN_INNER_WIDTH: usize = 43;

/// Prints the framed update notice on stderr when it is due (SPEC §5).
pub fn maybe_show(dir: &DataDir, quiet: bool) {
    if allowed(quiet, std::io::stderr().is_terminal(), |name| {
        std::env::var_os(name)
    }) {
        // Every failure on the way means "no notice"; there is nothing to report.
        let _ = show_if_due(dir);
    }
}

fn show_if_due(dir: &DataDir) -> Option<()> {
    let path = dir.database();
    if !path.is_file() {
        return None;
    }
    // Without CREATE: the notice must never create a database. Read-write
    // falls back to read-only on a write-protected file, so reading works.
    let conn = Connection::open_with_flags(
        &path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .ok()?;
    conn.busy_timeout(BUSY_TIMEOUT).ok()?;
    let latest = kv::get(&conn, kv::LATEST).ok()??;
    let latest = latest.trim();
    let notified_at = kv::get(&conn, kv::NOTIFIED_AT).ok()?;
    let running = running_version(dir);
    let now = UtcTime::now().unix_seconds();
    if !due(latest, &running, notified_at.as_deref(), now) {
        return None;
    }
    let mut stderr = std::io::stderr().lock();
    stderr.write_all(render(&running, latest).as_bytes()).ok()?;
    stderr.flush().ok()?;
    kv::set(&conn, kv::NOTIFIED_AT, &now.to_string()).ok()
}

/// Whether the notice may be shown at all, from `--quiet`, whether stderr is a
/// terminal, and the environment (`var` looks a variable up).
fn allowed(quiet: bool, stderr_terminal: bool, var: impl Fn(&str) -> Option<OsString>) -> bool {
    let non_empty = |name: &str| var(name).is_some_and(|v| !v.is_empty());
    let truthy = |name: &str| {
        var(name).is_some_and(|v| {
            let v = v.to_string_lossy().to_ascii_lowercase();
            !v.is_empty() && v != "0" && v != "false"
        })
    };
    if quiet || truthy(NO_NOTIFY_ENV) || non_empty(NO_UPDATE_NOTIFIER_ENV) {
        return false;
    }
    truthy(FORCE_ENV) || (stderr_terminal && !truthy(CI_ENV))
}

/// Whether the notice is due: `latest` is a newer semver than `running`, and it
/// was not shown in the last 24 h. An unreadable `notified_at`, or one in the
/// future (a clock that was wrong), counts as never shown.
fn due(latest: &str, running: &str, notified_at: Option<&str>, now: u64) -> bool {
    if !is_newer(latest, running) {
        return false;
    }
    match notified_at.and_then(|at| at.trim().parse::<u64>().ok()) {
        Some(at) if at <= now => now - at >= INTERVAL_SECS,
        _ => true,
    }
}

/// The version `current` points at, else this launcher's own.
fn running_version(dir: &DataDir) -> String {
    crate::swap::current_version(dir)
        .ok()
        .flatten()
        .unwrap_or_else(|| VERSION.to_string())
}

/// The framed notice, every line the same number of characters (not bytes:
/// `→` and the frame are multi-byte).
fn render(running: &str, latest: &str) -> String {
    let lines = [
        format!("Update available: {running} → {latest}"),
        "Run: waiaas-launcher upgrade".to_string(),
    ];
    // Two spaces of margin on the left, at least two on the right.
    let width = lines
        .iter()
        .map(|line| line.chars().count() + 4)
        .fold(MIN_INNER_WIDTH, usize::max);
    let mut out = format!("╭{}╮\n", "─".repeat(width));
    for line in &lines {
        let pad = width - 2 - line.chars().count();
        out.push_str(&format!("│  {line}{}│\n", " ".repeat(pad)));
    }
    out.push_str(&format!("╰{}╯\n", "─".repeat(width)));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<OsString> + 'a {
        move |name| {
            vars.iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| OsString::from(v))
        }
    }

    #[test]
    fn renders_the_spec_box() {
        // SPEC §5's own drawing has its two text lines one column too wide;
        // this is that box with the right border lined up.
        let expected = "\
╭───────────────────────────────────────────╮
│  Update available: 1.8.1 → 1.9.0          │
│  Run: waiaas-launcher upgrade             │
╰───────────────────────────────────────────╯
";
        assert_eq!(render("1.8.1", "1.9.0"), expected);
    }

    #[test]
    fn long_versions_widen_the_box_and_keep_the_border_aligned() {
        let text = render(
            "1.8.1-rc.12+build.20261126",
            "10.100.1000-beta.7+build.20261127",
        );
        let widths: Vec<usize> = text.lines().map(|l| l.chars().count()).collect();
        assert_eq!(widths.len(), 4);
        assert!(widths.iter().all(|w| *w == widths[0]), "{text}");
        assert!(widths[0] > MIN_INNER_WIDTH + 2);
        assert!(
            text.lines().nth(1).unwrap().ends_with("  │"),
            "a right margin stays: {text}"
        );
    }

    #[test]
    fn terminal_without_opt_outs_shows() {
        assert!(allowed(false, true, env(&[])));
        assert!(!allowed(false, false, env(&[])), "not a terminal");
    }

    #[test]
    fn opt_outs_always_win() {
        let force = ("WAIAAS_FORCE_UPDATE_NOTIFY", "1");
        assert!(!allowed(true, true, env(&[force])), "--quiet");
        for opt_out in [
            ("WAIAAS_NO_UPDATE_NOTIFY", "1"),
            ("WAIAAS_NO_UPDATE_NOTIFY", "true"),
            ("NO_UPDATE_NOTIFIER", "1"),
            ("NO_UPDATE_NOTIFIER", "0"),
            ("NO_UPDATE_NOTIFIER", "yes"),
        ] {
            assert!(!allowed(false, true, env(&[opt_out])), "{opt_out:?}");
            assert!(
                !allowed(false, true, env(&[opt_out, force])),
                "{opt_out:?} with force"
            );
        }
    }

    #[test]
    fn empty_or_false_values_do_not_opt_out() {
        for value in [
            ("WAIAAS_NO_UPDATE_NOTIFY", "0"),
            ("WAIAAS_NO_UPDATE_NOTIFY", ""),
            ("NO_UPDATE_NOTIFIER", ""),
        ] {
            assert!(allowed(false, true, env(&[value])), "{value:?}");
        }
    }

    #[test]
    fn ci_suppresses_unless_false() {
        for ci in ["true", "1", "yes", "github"] {
            assert!(!allowed(false, true, env(&[("CI", ci)])), "CI={ci}");
        }
        for ci in ["", "0", "false", "FALSE"] {
            assert!(allowed(false, true, env(&[("CI", ci)])), "CI={ci:?}");
        }
    }

    #[test]
    fn force_overrides_ci_and_the_terminal_rule_only() {
        let force = ("WAIAAS_FORCE_UPDATE_NOTIFY", "1");
        assert!(allowed(false, false, env(&[force])));
        assert!(allowed(false, false, env(&[force, ("CI", "true")])));
        assert!(!allowed(
            false,
            false,
            env(&[("WAIAAS_FORCE_UPDATE_NOTIFY", "0")])
        ));
    }

    #[test]
    fn due_only_for_a_newer_version_once_a_day() {
        let now = 1_800_000_000;
        assert!(due("1.9.0", "1.8.1", None, now));
        assert!(due("1.10.0", "1.9.0", None, now), "semver, not text order");
        assert!(!due("1.8.1", "1.8.1", None, now));
        assert!(!due("1.8.0", "1.8.1", None, now));
        assert!(!due("garbage", "1.8.1", None, now));
        assert!(!due("", "1.8.1", None, now));

        let recent = (now - 60).to_string();
        let day_ago = (now - INTERVAL_SECS).to_string();
        let future = (now + 3600).to_string();
        assert!(!due("1.9.0", "1.8.1", Some(&recent), now));
        assert!(due("1.9.0", "1.8.1", Some(&day_ago), now));
        assert!(
            due("1.9.0", "1.8.1", Some(&future), now),
            "a clock that was ahead"
        );
        assert!(due("1.9.0", "1.8.1", Some("not a time"), now));
    }

    #[test]
    fn running_version_follows_current() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = DataDir::new(tmp.path());
        assert_eq!(running_version(&dir), VERSION, "no installation");
        std::os::unix::fs::symlink("versions/1.9.3", dir.current()).unwrap();
        assert_eq!(
            running_version(&dir),
            "1.9.3",
            "even while the folder is missing"
        );
        std::fs::remove_file(dir.current()).unwrap();
        std::os::unix::fs::symlink("versions/odd-name", dir.current()).unwrap();
        assert_eq!(running_version(&dir), VERSION);
    }
}
