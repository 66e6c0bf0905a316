//! What the built binaries say about themselves: version and schema (by
//! running them), and the machine they are built for (from their headers).

use std::fs;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::PackError;

/// How long a binary gets to answer `--version`.
const VERSION_TIMEOUT: Duration = Duration::from_secs(30);

/// The targets we ship, in npm's `<os>-<cpu>` words.
pub const SUPPORTED_TARGETS: [&str; 4] = ["linux-x64", "linux-arm64", "darwin-x64", "darwin-arm64"];

pub use waiaas_shared::version::DaemonVersion;

pub(crate) fn check_target(target: &str) -> Result<(), PackError> {
    if SUPPORTED_TARGETS.contains(&target) {
        Ok(())
    } else {
        Err(PackError::BadTarget {
            target: target.to_string(),
            supported: SUPPORTED_TARGETS.join(", "),
        })
    }
}

/// Reads a binary from `dir`, refusing anything but an executable regular file.
pub(crate) fn read_binary(dir: &Path, name: &str) -> Result<(PathBuf, Vec<u8>), PackError> {
    let path = dir.join(name);
    let meta = match fs::metadata(&path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(PackError::MissingBinary { path });
        }
        Err(e) => return Err(PackError::io(path)(e)),
    };
    if !meta.is_file() {
        return Err(PackError::NotExecutable {
            path,
            reason: "not a regular file".into(),
        });
    }
    if meta.permissions().mode() & 0o111 == 0 {
        return Err(PackError::NotExecutable {
            path,
            reason: "not executable (chmod +x it, or point --bin-dir at the build output)".into(),
        });
    }
    let bytes = fs::read(&path).map_err(PackError::io(&path))?;
    Ok((path, bytes))
}

/// Refuses a binary whose header names another OS or CPU than `target`.
/// A `#!` script runs anywhere and passes (tests package fake programs).
pub(crate) fn check_architecture(path: &Path, bytes: &[u8], target: &str) -> Result<(), PackError> {
    let found = identify(bytes);
    let ok = match target {
        _ if found == "a script" => true,
        "linux-x64" => found == "linux-x64",
        "linux-arm64" => found == "linux-arm64",
        "darwin-x64" => found == "darwin-x64" || found == "darwin-universal",
        "darwin-arm64" => found == "darwin-arm64" || found == "darwin-universal",
        _ => false,
    };
    if ok {
        Ok(())
    } else {
        Err(PackError::WrongArchitecture {
            path: path.to_path_buf(),
            target: target.to_string(),
            found: found.to_string(),
        })
    }
}

fn identify(bytes: &[u8]) -> &'static str {
    let u16le = |at: usize| {
        bytes
            .get(at..at + 2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]))
    };
    let u32le = |at: usize| {
        bytes
            .get(at..at + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    };
    if bytes.starts_with(b"\x7fELF") {
        // 64-bit little-endian ELF; e_machine at offset 18.
        return match (bytes.get(4), bytes.get(5), u16le(18)) {
            (Some(2), Some(1), Some(0x3e)) => "linux-x64",
            (Some(2), Some(1), Some(0xb7)) => "linux-arm64",
            _ => "an ELF binary for another machine",
        };
    }
    match (u32le(0), u32le(4)) {
        (Some(0xfeed_facf), Some(0x0100_0007)) => "darwin-x64",
        (Some(0xfeed_facf), Some(0x0100_000c)) => "darwin-arm64",
        (Some(0xfeed_facf), _) => "a Mach-O binary for another machine",
        (Some(0xbeba_feca), _) => "darwin-universal",
        _ if bytes.starts_with(b"#!") => "a script",
        _ => "not a recognised executable",
    }
}

/// Runs `waiaas-daemon --version --json`.
pub(crate) fn daemon_version(path: &Path) -> Result<DaemonVersion, PackError> {
    let output = run(path, &["--version", "--json"])?;
    let bad = |detail: String| PackError::BadVersionOutput {
        path: path.to_path_buf(),
        output: output.clone(),
        detail,
    };
    DaemonVersion::parse(&output).map_err(bad)
}

/// Runs `waiaas-launcher --version` (`waiaas-launcher 1.8.1`) and returns the version.
pub(crate) fn launcher_version(path: &Path) -> Result<String, PackError> {
    let output = run(path, &["--version"])?;
    let last = output.split_whitespace().last().unwrap_or_default();
    let version = last.strip_prefix('v').unwrap_or(last);
    semver::Version::parse(version).map_err(|e| PackError::BadVersionOutput {
        path: path.to_path_buf(),
        output: output.clone(),
        detail: format!("expected `waiaas-launcher <semver>`: {e}"),
    })?;
    Ok(version.to_string())
}

/// Runs `path args…` with no input and a timeout; its stdout on success.
fn run(path: &Path, args: &[&str]) -> Result<String, PackError> {
    let failed = |detail: String| PackError::BinaryFailed {
        path: path.to_path_buf(),
        detail,
    };
    let mut child = Command::new(path)
        .args(args)
        // Asking a version must not print or record an update notice.
        .env("WAIAAS_NO_UPDATE_NOTIFY", "1")
        .env("NO_UPDATE_NOTIFIER", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| {
            failed(format!(
                "{e} (is it built for this machine? packing runs the binaries to read their versions)"
            ))
        })?;
    let mut stdout = child.stdout.take().expect("piped");
    let mut stderr = child.stderr.take().expect("piped");
    let out = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = stdout.read_to_end(&mut s);
        s
    });
    let err = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = stderr.read_to_end(&mut s);
        s
    });
    let deadline = Instant::now() + VERSION_TIMEOUT;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(5)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(failed(format!(
                    "`{}` did not answer within {} s",
                    args.join(" "),
                    VERSION_TIMEOUT.as_secs()
                )));
            }
            Err(e) => return Err(failed(e.to_string())),
        }
    };
    let out = String::from_utf8_lossy(&out.join().unwrap_or_default()).into_owned();
    let err = String::from_utf8_lossy(&err.join().unwrap_or_default()).into_owned();
    if !status.success() {
        return Err(failed(format!(
            "`{}` exited with {status}: {}",
            args.join(" "),
            err.trim()
        )));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_name_the_machine() {
        let mut elf = vec![0u8; 64];
        elf[..4].copy_from_slice(b"\x7fELF");
        elf[4] = 2;
        elf[5] = 1;
        elf[18] = 0x3e;
        assert_eq!(identify(&elf), "linux-x64");
        elf[18] = 0xb7;
        assert_eq!(identify(&elf), "linux-arm64");
        let mut macho = vec![0u8; 64];
        macho[..4].copy_from_slice(&0xfeed_facf_u32.to_le_bytes());
        macho[4..8].copy_from_slice(&0x0100_000c_u32.to_le_bytes());
        assert_eq!(identify(&macho), "darwin-arm64");
        assert_eq!(identify(b"#!/bin/sh\n"), "a script");
        assert!(check_architecture(Path::new("x"), &elf, "linux-x64").is_err());
        assert!(check_architecture(Path::new("x"), &elf, "linux-arm64").is_ok());
        assert!(check_architecture(Path::new("x"), b"#!/bin/sh\n", "darwin-arm64").is_ok());
        assert!(check_target("windows-x64").is_err());
    }
}
