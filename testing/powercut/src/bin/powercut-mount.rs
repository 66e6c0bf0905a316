//! `powercut-mount [--fsync-ms N] BACKING MOUNTPOINT`: mounts a
//! [`waiaas_powercut::PowerCut`] for trying things by hand, each fsync taking
//! N ms (default 0; see [`waiaas_powercut::Options::fsync_latency`]). A line
//! `cut` on stdin loses power and unmounts; end of input unmounts without a
//! cut.

use std::ffi::OsString;
use std::io::BufRead;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use waiaas_powercut::{Options, PowerCut};

const USAGE: &str = "usage: powercut-mount [--fsync-ms N] BACKING MOUNTPOINT  \
    (stdin: `cut` loses power; EOF unmounts)";

/// The options and the two paths, or what is wrong with the arguments.
fn parse(mut args: Vec<OsString>) -> Result<(Options, PathBuf, PathBuf), String> {
    let mut options = Options::default();
    if args.first().is_some_and(|a| a == "--fsync-ms") {
        let ms = args
            .get(1)
            .ok_or("--fsync-ms needs a number of milliseconds")?;
        let ms: u64 = ms
            .to_str()
            .and_then(|ms| ms.parse().ok())
            .ok_or_else(|| format!("--fsync-ms {ms:?} is not a whole number of milliseconds"))?;
        options.fsync_latency = Duration::from_millis(ms);
        args.drain(..2);
    }
    match <[OsString; 2]>::try_from(args) {
        Ok([backing, mountpoint]) => Ok((options, backing.into(), mountpoint.into())),
        Err(args) => Err(format!("expected BACKING MOUNTPOINT, got {args:?}")),
    }
}

fn main() -> ExitCode {
    let (options, backing, mountpoint) = match parse(std::env::args_os().skip(1).collect()) {
        Ok(parsed) => parsed,
        Err(e) => {
            eprintln!("{e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let (backing, mountpoint) = (&backing, &mountpoint);
    let mount = match PowerCut::mount_with(backing, mountpoint, &options) {
        Ok(mount) => mount,
        Err(e) => {
            eprintln!(
                "cannot mount {} at {}: {e}",
                backing.display(),
                mountpoint.display()
            );
            return ExitCode::FAILURE;
        }
    };
    eprintln!(
        "mounted {} at {} (fsync latency {:?})",
        backing.display(),
        mountpoint.display(),
        options.fsync_latency
    );
    for line in std::io::stdin().lock().lines() {
        match line.as_deref().map(str::trim) {
            Ok("cut") => match mount.cut() {
                Ok(report) => {
                    for (path, bytes) in &report.files {
                        eprintln!("power cut: {} lost {bytes} unsynced bytes", path.display());
                    }
                    break;
                }
                Err(e) => {
                    eprintln!("the cut failed: {e}");
                    return ExitCode::FAILURE;
                }
            },
            Ok(other) => eprintln!("unknown command {other:?} (only `cut`)"),
            Err(_) => break,
        }
    }
    match mount.unmount() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}
