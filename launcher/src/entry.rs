//! One entry point: whatever `waiaas-launcher` the operator or the service
//! runs, a command for a data dir whose current release brings a newer
//! launcher is handed to that launcher (`execve`, the same arguments), as
//! rustup's proxies do — so after an upgrade every command, `--version`
//! included, is the new release's. Not while a change is unfinished (its
//! new launcher is on probation). [`DELEGATED_ENV`] guards against loops.

use std::ffi::OsString;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;

use waiaas_shared::layout::DataDir;
use waiaas_shared::version;

use crate::supervisor::handover::{self, Wanted};

/// Set on a launcher that was handed a command: it never hands it on again.
pub const DELEGATED_ENV: &str = "WAIAAS_DELEGATED_FROM";

/// Hands this command to the data dir's newer current launcher, if there is
/// one; returns if there is none (or the exec failed, which is said).
pub fn delegate_to_newer() {
    if std::env::var_os(DELEGATED_ENV).is_some() || crate::daemon_binary::in_container() {
        return;
    }
    let args: Vec<OsString> = std::env::args_os().skip(1).collect();
    let Some(program) = newer_launcher(&args) else {
        return;
    };
    let error = std::process::Command::new(&program)
        .args(&args)
        .env(DELEGATED_ENV, version::VERSION)
        .exec();
    eprintln!(
        "waiaas-launcher: cannot hand this command to {} ({error}); running it as {}",
        program.display(),
        version::VERSION
    );
}

/// `current/…/waiaas-launcher` of the data dir the arguments name, when its
/// release is newer than this launcher. Read from `current`'s link alone:
/// no process is run.
fn newer_launcher(args: &[OsString]) -> Option<PathBuf> {
    let dir = DataDir::resolve(data_dir_flag(args).as_deref()).ok()?;
    handover::committed_current_launcher(&dir, Wanted::Newer)
}

/// The value of `--data-dir DIR` / `--data-dir=DIR`, wherever it stands.
fn data_dir_flag(args: &[OsString]) -> Option<PathBuf> {
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        let text = arg.to_string_lossy();
        if text == "--data-dir" {
            return args.next().map(PathBuf::from);
        }
        if let Some(value) = text.strip_prefix("--data-dir=") {
            return Some(PathBuf::from(value));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_data_dir_flag_is_found_in_either_form() {
        let args = |list: &[&str]| list.iter().map(OsString::from).collect::<Vec<_>>();
        assert_eq!(
            data_dir_flag(&args(&["status", "--data-dir", "/d"])),
            Some(PathBuf::from("/d"))
        );
        assert_eq!(
            data_dir_flag(&args(&["--data-dir=/e", "run"])),
            Some(PathBuf::from("/e"))
        );
        assert_eq!(data_dir_flag(&args(&["status"])), None);
    }

    #[test]
    fn a_command_goes_to_a_newer_current_launcher_only_with_no_change_unfinished() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = DataDir::new(tmp.path());
        let args = vec![OsString::from("--data-dir"), tmp.path().into()];
        assert_eq!(newer_launcher(&args), None, "no installation");
        let newer = semver::Version::new(version::current().major + 1, 0, 0).to_string();
        std::fs::create_dir_all(dir.version(&newer)).unwrap();
        std::fs::write(dir.version(&newer).join("waiaas-daemon"), b"").unwrap();
        std::fs::write(dir.launcher_of(&newer), b"").unwrap();
        crate::swap::point_current(&dir, &newer).unwrap();
        assert_eq!(newer_launcher(&args), Some(dir.launcher_of(&newer)));
        std::fs::write(dir.upgrade_journal(), b"{}").unwrap();
        assert_eq!(newer_launcher(&args), None, "a change is unfinished");
        std::fs::remove_file(dir.upgrade_journal()).unwrap();
        std::fs::create_dir_all(dir.version(version::VERSION)).unwrap();
        std::fs::write(dir.version(version::VERSION).join("waiaas-daemon"), b"").unwrap();
        crate::swap::point_current(&dir, version::VERSION).unwrap();
        assert_eq!(newer_launcher(&args), None, "the same version");
    }
}
