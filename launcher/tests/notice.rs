//! The CLI update notice (SPEC §5, scenarios 4–6) against real installations
//! and the real binary. Output is captured, so stderr is never a terminal:
//! tests that expect a notice set `WAIAAS_FORCE_UPDATE_NOTIFY=1`.
//!
//! The command is `completions bash`: it succeeds and prints to stdout, so each
//! test also checks that stdout stays clean.

use std::time::{SystemTime, UNIX_EPOCH};

use testkit::{Install, Outcome, run};
use waiaas_shared::kv;
use waiaas_shared::version::VERSION;

const FORCE: (&str, &str) = ("WAIAAS_FORCE_UPDATE_NOTIFY", "1");
const BOX_TOP: &str = "╭";
const HEADLINE: &str = "Update available:";

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// An installation whose store says `latest` is the newest release.
fn install_knowing(latest: &str) -> Install {
    let install = Install::new();
    install.set_kv(kv::LATEST, latest);
    install
}

/// `waiaas-launcher completions bash` with extra arguments and environment.
fn completions(install: &Install, args: &[&str], env: &[(&str, &str)]) -> Outcome {
    let mut command = install.launcher(&["completions", "bash"]);
    command.args(args).envs(env.iter().copied());
    let outcome = run(&mut command);
    assert!(
        outcome.status.success(),
        "the command itself must succeed: {outcome:?}"
    );
    assert!(
        outcome.stdout.contains("complete"),
        "completion script on stdout: {outcome:?}"
    );
    assert!(
        !outcome.stdout.contains(BOX_TOP) && !outcome.stdout.contains(HEADLINE),
        "stdout stays clean: {}",
        outcome.stdout
    );
    outcome
}

fn has_notice(outcome: &Outcome) -> bool {
    outcome.stderr.contains(HEADLINE)
}

#[test]
fn scenario_04_newer_version_known_prints_notice_on_stderr() {
    let install = install_knowing("1.9.0");
    let before = now();
    let outcome = completions(&install, &[], &[FORCE]);

    let expected = format!("Update available: {VERSION} → 1.9.0");
    assert!(outcome.stderr.contains(&expected), "{}", outcome.stderr);
    assert!(
        outcome.stderr.contains("Run: waiaas-launcher upgrade"),
        "{}",
        outcome.stderr
    );
    let frame: Vec<&str> = outcome.stderr.lines().filter(|l| !l.is_empty()).collect();
    assert_eq!(frame.len(), 4, "a four-line box: {}", outcome.stderr);
    assert!(frame[0].starts_with('╭') && frame[3].starts_with('╰'));
    let width = frame[0].chars().count();
    assert!(
        frame.iter().all(|l| l.chars().count() == width),
        "aligned:\n{}",
        outcome.stderr
    );

    let notified: u64 = install
        .kv(kv::NOTIFIED_AT)
        .expect("notified_at written")
        .parse()
        .expect("Unix seconds");
    assert!(
        (before..=now()).contains(&notified),
        "notified_at {notified} is now"
    );
}

#[test]
fn scenario_05_rerun_within_24h_no_second_notice() {
    let install = install_knowing("1.9.0");
    assert!(has_notice(&completions(&install, &[], &[FORCE])));
    let second = completions(&install, &[], &[FORCE]);
    assert!(!has_notice(&second), "shown once a day: {}", second.stderr);
    assert!(second.stderr.is_empty(), "{}", second.stderr);

    let day_and_an_hour_ago = now() - 25 * 3600;
    install.set_kv(kv::NOTIFIED_AT, &day_and_an_hour_ago.to_string());
    assert!(
        has_notice(&completions(&install, &[], &[FORCE])),
        "due again after 24 h"
    );
}

#[test]
fn scenario_06_quiet_suppresses_notice() {
    let install = install_knowing("1.9.0");
    let outcome = completions(&install, &["--quiet"], &[FORCE]);
    assert!(!has_notice(&outcome), "{}", outcome.stderr);
    assert_eq!(
        install.kv(kv::NOTIFIED_AT),
        None,
        "nothing recorded when suppressed"
    );
}

#[test]
fn opt_out_variables_win_over_force() {
    let install = install_knowing("1.9.0");
    for opt_out in [
        ("NO_UPDATE_NOTIFIER", "1"),
        ("WAIAAS_NO_UPDATE_NOTIFY", "1"),
    ] {
        let outcome = completions(&install, &[], &[FORCE, opt_out]);
        assert!(!has_notice(&outcome), "{opt_out:?}: {}", outcome.stderr);
    }
    assert_eq!(install.kv(kv::NOTIFIED_AT), None);
}

#[test]
fn ci_suppresses_unless_forced() {
    let install = install_knowing("1.9.0");
    assert!(!has_notice(&completions(&install, &[], &[("CI", "true")])));
    assert_eq!(install.kv(kv::NOTIFIED_AT), None);
    assert!(has_notice(&completions(
        &install,
        &[],
        &[("CI", "true"), FORCE]
    )));
}

#[test]
fn non_terminal_stderr_without_force_suppresses() {
    let install = install_knowing("1.9.0");
    let outcome = completions(&install, &[], &[]);
    assert!(!has_notice(&outcome), "{}", outcome.stderr);
    assert_eq!(install.kv(kv::NOTIFIED_AT), None);
}

#[test]
fn no_notice_when_latest_is_not_newer() {
    for latest in [VERSION, "1.0.0", "0.9.99"] {
        let install = install_knowing(latest);
        let outcome = completions(&install, &[], &[FORCE]);
        assert!(!has_notice(&outcome), "latest {latest}: {}", outcome.stderr);
        assert_eq!(install.kv(kv::NOTIFIED_AT), None);
    }
}

#[test]
fn garbage_latest_is_ignored() {
    for garbage in ["not-a-version", "", "{\"version\":\"9.9.9\"}", "v9.9.9"] {
        let install = install_knowing(garbage);
        let outcome = completions(&install, &[], &[FORCE]);
        assert!(outcome.stderr.is_empty(), "{garbage:?}: {}", outcome.stderr);
    }
}

#[test]
fn no_database_leaves_the_command_alone() {
    let install = Install::new();
    let outcome = completions(&install, &[], &[FORCE]);
    assert!(outcome.stderr.is_empty(), "{}", outcome.stderr);
    assert!(
        !install.dir.database().exists(),
        "the notice must not create a database"
    );
}

#[test]
fn running_version_is_the_one_current_points_at() {
    let install = install_knowing("1.9.0");
    // As after an upgrade to 1.9.0: the launcher binary itself is older.
    std::fs::create_dir(install.dir.version("1.9.0")).unwrap();
    std::fs::remove_file(install.dir.current()).unwrap();
    std::os::unix::fs::symlink("versions/1.9.0", install.dir.current()).unwrap();
    let outcome = completions(&install, &[], &[FORCE]);
    assert!(
        !has_notice(&outcome),
        "1.9.0 is running: {}",
        outcome.stderr
    );

    install.set_kv(kv::LATEST, "1.10.0");
    let outcome = completions(&install, &[], &[FORCE]);
    assert!(
        outcome.stderr.contains("1.9.0 → 1.10.0"),
        "{}",
        outcome.stderr
    );
}
