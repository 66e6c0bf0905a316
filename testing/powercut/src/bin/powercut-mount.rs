//! `powercut-mount BACKING MOUNTPOINT`: mounts a [`waiaas_powercut::PowerCut`]
//! for trying things by hand. A line `cut` on stdin loses power and
//! unmounts; end of input unmounts without a cut.

use std::io::BufRead;
use std::path::PathBuf;
use std::process::ExitCode;

use waiaas_powercut::PowerCut;

fn main() -> ExitCode {
    let args: Vec<PathBuf> = std::env::args_os().skip(1).map(PathBuf::from).collect();
    let [backing, mountpoint] = args.as_slice() else {
        eprintln!(
            "usage: powercut-mount BACKING MOUNTPOINT  (stdin: `cut` loses power; EOF unmounts)"
        );
        return ExitCode::from(2);
    };
    let mount = match PowerCut::mount(backing, mountpoint) {
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
    eprintln!("mounted {} at {}", backing.display(), mountpoint.display());
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
