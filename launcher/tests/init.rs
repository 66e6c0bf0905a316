//! `waiaas-launcher init` (SPEC §2), run as a real process on temp folders.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use testkit::{Outcome, daemon_binary, hermetic, launcher_binary, run};
use waiaas_shared::config::Config;
use waiaas_shared::layout::DataDir;
use waiaas_shared::version::VERSION;

/// A temp folder to hold a data dir (`<tmp>/waiaas`) and anything else.
struct Scratch {
    tmp: tempfile::TempDir,
    dir: DataDir,
}

impl Scratch {
    fn new() -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let dir = DataDir::new(tmp.path().join("waiaas"));
        Self { tmp, dir }
    }

    /// Runs `<launcher> init --data-dir <dir>`.
    fn init_with(&self, launcher: &Path) -> Outcome {
        let mut command = hermetic(Command::new(launcher), self.tmp.path());
        run(command.arg("init").arg("--data-dir").arg(self.dir.root()))
    }

    fn init(&self) -> Outcome {
        daemon_binary();
        self.init_with(&launcher_binary())
    }

    /// A folder `bin/` holding a copy of the launcher, as if unpacked alone.
    fn launcher_alone(&self) -> PathBuf {
        let bin = self.tmp.path().join("bin");
        fs::create_dir(&bin).unwrap();
        let launcher = bin.join("waiaas-launcher");
        link_or_copy(&launcher_binary(), &launcher);
        launcher
    }

    /// No `versions/*.partial` and no `current` remain.
    fn assert_nothing_installed(&self) {
        assert!(
            fs::symlink_metadata(self.dir.current()).is_err(),
            "no current"
        );
        if let Ok(entries) = fs::read_dir(self.dir.versions()) {
            let names: Vec<_> = entries.map(|e| e.unwrap().file_name()).collect();
            assert!(names.is_empty(), "versions/ holds {names:?}");
        }
    }
}

/// Hard links save copying a large debug binary; a copy works everywhere.
fn link_or_copy(from: &Path, to: &Path) {
    if fs::hard_link(from, to).is_err() {
        fs::copy(from, to).unwrap();
    }
}

fn mode(path: &Path) -> u32 {
    fs::metadata(path).unwrap().permissions().mode() & 0o777
}

fn write_executable(path: &Path, text: &str) {
    fs::write(path, text).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(0o755)).unwrap();
}

#[test]
fn init_creates_the_layout() {
    let s = Scratch::new();
    let outcome = s.init();
    assert!(outcome.status.success(), "{outcome:?}");
    assert!(
        outcome.stdout.contains("Created"),
        "says what it created: {}",
        outcome.stdout
    );
    assert!(
        outcome.stdout.contains(&format!("versions/{VERSION}")),
        "{}",
        outcome.stdout
    );

    assert_eq!(mode(s.dir.root()), 0o700);
    assert_eq!(mode(&s.dir.run()), 0o700);
    assert!(s.dir.data().is_dir() && s.dir.logs().is_dir());
    assert_eq!(
        fs::read_to_string(s.dir.config()).unwrap(),
        Config::default_file()
    );

    let link = fs::read_link(s.dir.current()).expect("current is a symlink");
    assert_eq!(link, Path::new("versions").join(VERSION), "relative target");
    for binary in ["waiaas-daemon", "waiaas-launcher"] {
        let path = s.dir.version(VERSION).join(binary);
        assert!(mode(&path) & 0o111 == 0o111, "{binary} is executable");
    }
    let versions: Vec<_> = fs::read_dir(s.dir.versions())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(versions, [VERSION], "no partial folder left");

    let version = Command::new(s.dir.current().join("waiaas-daemon"))
        .arg("--version")
        .output()
        .unwrap();
    assert!(version.status.success());
    let text = String::from_utf8_lossy(&version.stdout);
    assert!(
        text.starts_with(&format!("waiaas-daemon {VERSION} ")),
        "{text}"
    );
    let launcher = Command::new(s.dir.current().join("waiaas-launcher"))
        .arg("--version")
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&launcher.stdout).contains(VERSION));
}

#[test]
fn second_init_is_a_no_op() {
    let s = Scratch::new();
    assert!(s.init().status.success());
    let snapshot = |path: PathBuf| {
        let m = fs::symlink_metadata(&path).unwrap();
        (path, m.ino(), m.mtime_nsec(), m.mtime())
    };
    let paths = || {
        [
            s.dir.current(),
            s.dir.config(),
            s.dir.version(VERSION).join("waiaas-daemon"),
            s.dir.version(VERSION).join("waiaas-launcher"),
        ]
    };
    let before: Vec<_> = paths().into_iter().map(snapshot).collect();

    let again = s.init();
    assert!(again.status.success(), "{again:?}");
    assert!(
        again.stdout.contains("already initialised"),
        "{}",
        again.stdout
    );
    assert!(!again.stdout.contains("Created"), "{}", again.stdout);
    let after: Vec<_> = paths().into_iter().map(snapshot).collect();
    assert_eq!(before, after, "nothing replaced");
}

#[test]
fn existing_config_is_kept_byte_for_byte() {
    let s = Scratch::new();
    fs::create_dir(s.dir.root()).unwrap();
    let mine = "# mine, hands off\n[daemon]\nport = 4111   # odd spacing kept\n\n";
    fs::write(s.dir.config(), mine).unwrap();
    let outcome = s.init();
    assert!(outcome.status.success(), "{outcome:?}");
    assert!(outcome.stdout.contains("Kept"), "{}", outcome.stdout);
    assert_eq!(fs::read_to_string(s.dir.config()).unwrap(), mine);
}

#[test]
fn missing_daemon_fails_clearly_and_installs_nothing() {
    let s = Scratch::new();
    let launcher = s.launcher_alone();
    let outcome = s.init_with(&launcher);
    assert!(!outcome.status.success(), "{outcome:?}");
    assert!(
        outcome
            .stderr
            .contains("no waiaas-daemon beside this launcher"),
        "{}",
        outcome.stderr
    );
    s.assert_nothing_installed();
}

#[test]
fn daemon_of_another_version_is_refused() {
    let s = Scratch::new();
    let launcher = s.launcher_alone();
    write_executable(
        &launcher.with_file_name("waiaas-daemon"),
        "#!/bin/sh\necho 'waiaas-daemon 0.0.1 (schema 1)'\n",
    );
    let outcome = s.init_with(&launcher);
    assert!(!outcome.status.success(), "{outcome:?}");
    assert!(
        outcome
            .stderr
            .contains(&format!("version 0.0.1, but this launcher is {VERSION}")),
        "{}",
        outcome.stderr
    );
    s.assert_nothing_installed();
}

#[test]
fn release_files_beside_the_binaries_are_installed() {
    let s = Scratch::new();
    let launcher = s.launcher_alone();
    link_or_copy(&daemon_binary(), &launcher.with_file_name("waiaas-daemon"));
    fs::write(
        launcher.with_file_name("release.json"),
        "{\"name\":\"test\"}",
    )
    .unwrap();
    fs::write(launcher.with_file_name("release.json.minisig"), "sig").unwrap();
    let outcome = s.init_with(&launcher);
    assert!(outcome.status.success(), "{outcome:?}");
    let installed = s.dir.version(VERSION);
    assert_eq!(
        fs::read_to_string(installed.join("release.json")).unwrap(),
        "{\"name\":\"test\"}"
    );
    assert_eq!(
        fs::read_to_string(installed.join("release.json.minisig")).unwrap(),
        "sig"
    );
}

#[test]
fn another_installed_version_is_left_alone() {
    let s = Scratch::new();
    assert!(s.init().status.success());
    fs::create_dir(s.dir.version("1.0.0")).unwrap();
    fs::remove_file(s.dir.current()).unwrap();
    std::os::unix::fs::symlink("versions/1.0.0", s.dir.current()).unwrap();

    let outcome = s.init();
    assert!(outcome.status.success(), "{outcome:?}");
    assert!(
        outcome.stdout.contains("waiaas-launcher upgrade"),
        "{}",
        outcome.stdout
    );
    assert_eq!(
        fs::read_link(s.dir.current()).unwrap(),
        Path::new("versions/1.0.0")
    );
}

#[test]
fn interrupted_install_is_finished() {
    let s = Scratch::new();
    assert!(s.init().status.success());
    // As if the last run stopped after the rename but before `current`, and
    // an even earlier one left a partial folder.
    fs::remove_file(s.dir.current()).unwrap();
    fs::create_dir(s.dir.versions().join(format!("{VERSION}.partial"))).unwrap();
    let outcome = s.init();
    assert!(outcome.status.success(), "{outcome:?}");
    assert_eq!(
        fs::read_link(s.dir.current()).unwrap(),
        Path::new("versions").join(VERSION)
    );
    assert!(
        !s.dir.versions().join(format!("{VERSION}.partial")).exists(),
        "leftover removed"
    );
}
