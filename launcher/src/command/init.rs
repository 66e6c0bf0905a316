//! `waiaas-launcher init` (SPEC §2): create the data dir and install the
//! daemon that ships beside this launcher, together with the launcher itself,
//! as `versions/<VERSION>/`, with `current -> versions/<VERSION>`.
//!
//! Installing is atomic: the files are copied into `versions/<v>.partial/`,
//! fsynced and checked (the copied daemon must report this launcher's version)
//! before a rename makes them `versions/<v>/`; `current` is then switched by a
//! new symlink renamed over the old name. A crash at any instant leaves either
//! no installation or a complete one, and running `init` again finishes the
//! job. An existing `config.toml` is never overwritten, and an installation of
//! another version is left alone: moving it is `upgrade`'s work.

use std::fs::{self, DirBuilder};
use std::io::{self, ErrorKind, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use semver::Version;
use waiaas_shared::config::Config;
use waiaas_shared::control::CONTROL_FD_ENV;
use waiaas_shared::fsutil::fsync_dir;
use waiaas_shared::layout::DataDir;
use waiaas_shared::version::VERSION;

use crate::failure::Failure;

const DAEMON_BIN: &str = "waiaas-daemon";
const LAUNCHER_BIN: &str = "waiaas-launcher";
/// Copied when they sit beside the binaries, or one folder up (an npm release
/// package keeps them at its root, the binaries in `bin/`).
const RELEASE_FILES: [&str; 2] = ["release.json", "release.json.minisig"];
/// A `--version` that takes longer than this is not a working daemon.
const VERSION_TIMEOUT: Duration = Duration::from_secs(10);
/// The data dir and every folder init creates in it: the database, the API
/// token and the admin socket must not be reachable by other users.
const PRIVATE_DIR: u32 = 0o700;

pub fn run(dir: &DataDir) -> Result<(), Failure> {
    let root = dir.root();
    let installed = installed_version(dir)?;

    // An installation of another version is `upgrade`'s business: touch nothing.
    if let Some(other) = installed.as_deref().filter(|v| *v != VERSION) {
        println!(
            "{} already holds WAIaaS {other}; this launcher is {VERSION}.",
            root.display()
        );
        if older(VERSION, other) {
            println!(
                "Nothing changed. Use the installed launcher instead: {}",
                dir.current().join(LAUNCHER_BIN).display()
            );
        } else {
            println!(
                "Nothing changed. To move this installation to {VERSION}, run `waiaas-launcher upgrade`."
            );
        }
        return Ok(());
    }

    let target = dir.version(VERSION);
    let linked = installed.is_some() && target.join(DAEMON_BIN).is_file();
    // Checked before anything is created, so a wrong setup leaves no trace.
    let source = if linked { None } else { Some(source_dir()?) };

    let mut changed = create_private_dir(root)?;
    changed |= write_config_if_absent(dir)?;
    for sub in [dir.data(), dir.logs(), dir.run()] {
        changed |= create_private_dir(&sub)?;
    }
    // The admin socket's only protection is its folder's mode (SPEC §2).
    set_mode(&dir.run(), PRIVATE_DIR)?;

    let Some(source) = source else {
        if changed {
            println!(
                "{} was already initialised at WAIaaS {VERSION}; restored what was missing.",
                root.display()
            );
        } else {
            println!(
                "{} is already initialised at WAIaaS {VERSION}; nothing changed.",
                root.display()
            );
        }
        return Ok(());
    };

    remove_leftover_partial(dir)?;
    if target.exists() {
        // Left by an earlier `init` stopped before `current` was switched.
        check_daemon_version(&target.join(DAEMON_BIN)).map_err(|problem| {
            Failure::new(format!(
                "{} exists but is not usable ({problem}); move it away and run init again",
                target.display()
            ))
        })?;
        println!("Found the complete {}/", target.display());
    } else {
        install_version(dir, &source)?;
        println!(
            "Installed WAIaaS {VERSION} in {}/ (from {})",
            target.display(),
            source.display()
        );
    }
    crate::swap::point_current(dir, VERSION)
        .map_err(|e| io_failure("point at the new version", &dir.current(), e))?;
    println!("Linked {} -> versions/{VERSION}", dir.current().display());
    println!(
        "Initialised WAIaaS {VERSION} in {}. Start it with `waiaas-launcher start` (or `run` in the foreground).",
        root.display()
    );
    Ok(())
}

/// The folder holding the running launcher, which must also hold the daemon.
fn source_dir() -> Result<PathBuf, Failure> {
    let exe = std::env::current_exe()
        .map_err(|e| Failure::new(format!("cannot find this launcher's own file: {e}")))?;
    let folder = exe
        .parent()
        .ok_or_else(|| Failure::new(format!("{} has no parent folder", exe.display())))?
        .to_path_buf();
    if !folder.join(DAEMON_BIN).is_file() {
        return Err(Failure::new(format!(
            "no {DAEMON_BIN} beside this launcher in {}: init installs the daemon that ships with \
             the launcher; put both binaries of the same release in one folder and run init again",
            folder.display()
        )));
    }
    Ok(folder)
}

/// The version `current` points at, if there is an installation.
fn installed_version(dir: &DataDir) -> Result<Option<String>, Failure> {
    let current = dir.current();
    let target = match fs::read_link(&current) {
        Ok(target) => target,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
        Err(e) if e.kind() == ErrorKind::InvalidInput => {
            return Err(Failure::new(format!(
                "{} exists but is not a symlink; move it away and run init again",
                current.display()
            )));
        }
        Err(e) => {
            return Err(Failure::new(format!(
                "cannot read {}: {e}",
                current.display()
            )));
        }
    };
    match target.file_name().and_then(|name| name.to_str()) {
        Some(name) => Ok(Some(name.to_string())),
        None => Err(Failure::new(format!(
            "{} points at {}, which is not a versions/<version> folder",
            current.display(),
            target.display()
        ))),
    }
}

/// Whether `a` is a strictly older semver than `b` (false when either is not semver).
fn older(a: &str, b: &str) -> bool {
    matches!((Version::parse(a), Version::parse(b)), (Ok(a), Ok(b)) if a < b)
}

/// Creates `path` with mode 0700 unless it exists; whether it created it.
fn create_private_dir(path: &Path) -> Result<bool, Failure> {
    if path.is_dir() {
        return Ok(false);
    }
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).map_err(|e| io_failure("create", parent, e))?;
    }
    DirBuilder::new()
        .mode(PRIVATE_DIR)
        .create(path)
        .map_err(|e| io_failure("create", path, e))?;
    // The umask may have removed bits; say exactly what is wanted.
    set_mode(path, PRIVATE_DIR)?;
    println!("Created {}/", path.display());
    Ok(true)
}

fn set_mode(path: &Path, mode: u32) -> Result<(), Failure> {
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .map_err(|e| io_failure("set the mode of", path, e))
}

/// Writes the default config unless one exists. The text goes to a temp file
/// first and is hard-linked into place: the link fails rather than replace an
/// operator's file, and a crash never leaves a half-written config. Whether it
/// wrote one.
fn write_config_if_absent(dir: &DataDir) -> Result<bool, Failure> {
    let path = dir.config();
    if fs::symlink_metadata(&path).is_ok() {
        println!("Kept the existing {}", path.display());
        if let Err(e) = Config::load(&path) {
            eprintln!("warning: {} is not valid: {e}", path.display());
        }
        return Ok(false);
    }
    let tmp = dir.root().join(".config.toml.init");
    let result = write_synced(&tmp, Config::default_file().as_bytes(), 0o600)
        .and_then(|()| fs::hard_link(&tmp, &path));
    let _ = fs::remove_file(&tmp);
    match result {
        Ok(()) => {}
        Err(e) if e.kind() == ErrorKind::AlreadyExists => {
            println!("Kept the existing {}", path.display());
            return Ok(false);
        }
        Err(e) => return Err(io_failure("write", &path, e)),
    }
    fsync_dir(dir.root()).map_err(|e| io_failure("sync", dir.root(), e))?;
    println!("Created {}", path.display());
    Ok(true)
}

fn write_synced(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

fn partial_dir(dir: &DataDir) -> PathBuf {
    dir.versions().join(format!("{VERSION}.partial"))
}

/// A partial folder is the leftover of an interrupted init: never trusted.
fn remove_leftover_partial(dir: &DataDir) -> Result<(), Failure> {
    let partial = partial_dir(dir);
    match fs::remove_dir_all(&partial) {
        Err(e) if e.kind() != ErrorKind::NotFound => {
            Err(io_failure("remove the leftover", &partial, e))
        }
        _ => Ok(()),
    }
}

/// Copies the release beside this launcher into `versions/<VERSION>.partial`,
/// checks it, and renames it to `versions/<VERSION>`. The partial folder is
/// removed on any failure.
fn install_version(dir: &DataDir, source: &Path) -> Result<(), Failure> {
    let versions = dir.versions();
    fs::create_dir_all(&versions).map_err(|e| io_failure("create", &versions, e))?;
    let partial = partial_dir(dir);
    let result = fill_partial(&partial, source);
    if result.is_err() {
        let _ = fs::remove_dir_all(&partial);
        return result;
    }
    let target = dir.version(VERSION);
    fs::rename(&partial, &target).map_err(|e| {
        let _ = fs::remove_dir_all(&partial);
        io_failure("rename into place", &target, e)
    })?;
    fsync_dir(&versions).map_err(|e| io_failure("sync", &versions, e))
}

fn fill_partial(partial: &Path, source: &Path) -> Result<(), Failure> {
    DirBuilder::new()
        .mode(0o755)
        .create(partial)
        .map_err(|e| io_failure("create", partial, e))?;
    let launcher = std::env::current_exe()
        .map_err(|e| Failure::new(format!("cannot find this launcher's own file: {e}")))?;
    copy_synced(&source.join(DAEMON_BIN), &partial.join(DAEMON_BIN), 0o755)?;
    copy_synced(&launcher, &partial.join(LAUNCHER_BIN), 0o755)?;
    let mut signed = false;
    for name in RELEASE_FILES {
        let beside = source.join(name);
        let above = source.parent().map(|p| p.join(name));
        if let Some(from) = [Some(beside), above]
            .into_iter()
            .flatten()
            .find(|p| p.is_file())
        {
            copy_synced(&from, &partial.join(name), 0o644)?;
            signed = true;
        }
    }
    // A local build has no signed release.json: record what was installed,
    // so a rollback can check the folder before running anything from it.
    if !signed {
        crate::install_record::write(partial, VERSION, &[DAEMON_BIN, LAUNCHER_BIN])
            .map_err(|e| io_failure("record what was installed in", partial, e))?;
    }
    fsync_dir(partial).map_err(|e| io_failure("sync", partial, e))?;
    check_daemon_version(&partial.join(DAEMON_BIN)).map_err(|problem| {
        Failure::new(format!(
            "refusing to install the {DAEMON_BIN} beside this launcher: {problem}; \
             put both binaries of the same release in one folder and run init again"
        ))
    })
}

fn copy_synced(from: &Path, to: &Path, mode: u32) -> Result<(), Failure> {
    waiaas_shared::fsutil::copy_synced(from, to, mode).map_err(|e| {
        Failure::new(format!(
            "cannot copy {} to {}: {e}",
            from.display(),
            to.display()
        ))
    })
}

/// Runs `daemon --version` and requires it to report this launcher's version:
/// a launcher must never install a daemon of another release as its own.
/// The error says what is wrong, for the caller to put in context.
fn check_daemon_version(daemon: &Path) -> Result<(), String> {
    let output = version_output(daemon)
        .map_err(|e| format!("`{} --version` failed: {e}", daemon.display()))?;
    match reported_version(&output) {
        Some(v) if v == VERSION => Ok(()),
        Some(v) => Err(format!("it is version {v}, but this launcher is {VERSION}")),
        None => Err(format!(
            "`{} --version` did not report a version (it printed {:?})",
            daemon.display(),
            output.trim()
        )),
    }
}

/// Stdout of `daemon --version`, given [`VERSION_TIMEOUT`] to finish.
fn version_output(daemon: &Path) -> io::Result<String> {
    let mut child = Command::new(daemon)
        .arg("--version")
        // Nothing inherited may make the daemon think it was handed sockets.
        .env_remove("LISTEN_FDS")
        .env_remove("LISTEN_PID")
        .env_remove(CONTROL_FD_ENV)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let deadline = Instant::now() + VERSION_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(io::Error::new(
                ErrorKind::TimedOut,
                "it did not finish within 10 s",
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stdout = String::new();
    if let Some(mut pipe) = child.stdout.take() {
        pipe.read_to_string(&mut stdout)?;
    }
    if !status.success() {
        return Err(io::Error::other(format!("it exited with {status}")));
    }
    Ok(stdout)
}

/// `waiaas-daemon 1.8.1 (schema 16)` → `1.8.1`.
fn reported_version(output: &str) -> Option<&str> {
    let mut words = output.split_whitespace();
    (words.next() == Some(DAEMON_BIN)).then_some(())?;
    words.next()
}

fn io_failure(action: &str, path: &Path, e: io::Error) -> Failure {
    Failure::new(format!("cannot {action} {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_version_the_daemon_reports() {
        assert_eq!(
            reported_version("waiaas-daemon 1.8.1 (schema 16)\n"),
            Some("1.8.1")
        );
        assert_eq!(
            reported_version("waiaas-daemon 2.0.0-rc.1"),
            Some("2.0.0-rc.1")
        );
        assert_eq!(reported_version("something-else 1.8.1"), None);
        assert_eq!(reported_version(""), None);
    }

    #[test]
    fn compares_versions_by_semver() {
        assert!(older("1.9.0", "1.10.0"));
        assert!(!older("1.10.0", "1.9.0"));
        assert!(!older("1.8.1", "not-a-version"));
    }
}
