//! What reading a release package costs (issue 10), through the same entry
//! point as `upgrade --from FILE` (`package::install_file`):
//!
//! 1. refusing the unsigned bomb — `release.json` with no `.minisig`, 1 GiB
//!    of zeros and 20,000 empty files (a ~1 MB tarball) — and the most it
//!    had on disk meanwhile; as it is (the entry cap stops it), and with the
//!    entry cap raised (the whole first pass runs, the signature stops it);
//! 2. the verified install of a real release package: this build's release
//!    binaries, packed and signed with a throwaway key (median of 5).
//!
//! Run it:
//!
//! ```text
//! cargo build --release --workspace
//! cargo bench -p waiaas-launcher --bench package
//! ```
//!
//! Settings: `WAIAAS_BENCH_BOMB_MB` (default 1024) is the size of the bomb's
//! file of zeros. Prints readable lines, then one line of JSON.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::json;
use waiaas_launcher::package::{self, Limits};
use waiaas_packaging::PackOptions;
use waiaas_shared::config::Config;
use waiaas_shared::layout::DataDir;
use waiaas_shared::release::this_target;

const RUNS: usize = 5;
const EMPTIES: usize = 20_000;

/// Files and bytes under `dir` (which an install may be removing meanwhile).
fn written(dir: &Path) -> (u64, u64) {
    let (mut files, mut bytes) = (0, 0);
    for entry in fs::read_dir(dir).into_iter().flatten().flatten() {
        let Ok(meta) = entry.metadata() else {
            continue;
        };
        if meta.is_dir() {
            let (f, b) = written(&entry.path());
            files += f;
            bytes += b;
        } else {
            files += 1;
            bytes += meta.len();
        }
    }
    (files, bytes)
}

/// How a package was refused: the message, the time, and the most files and
/// bytes it had under the data dir while it ran, and what it left.
struct Refused {
    message: String,
    seconds: f64,
    peak: (u64, u64),
    left: (u64, u64),
}

fn refuse(dir: &DataDir, config: &Config, tarball: &Path, limits: &Limits) -> Refused {
    // A failed install removes what it wrote: watch the most it had on disk.
    let done = AtomicBool::new(false);
    std::thread::scope(|scope| {
        let watcher = scope.spawn(|| {
            let mut peak = (0, 0);
            while !done.load(Ordering::Relaxed) {
                let (files, bytes) = written(dir.root());
                peak = (peak.0.max(files), peak.1.max(bytes));
                std::thread::sleep(Duration::from_millis(20));
            }
            peak
        });
        let start = Instant::now();
        let message = package::install_file_with_limits(dir, config, tarball, None, limits)
            .expect_err("the bomb must be refused")
            .to_string();
        let seconds = start.elapsed().as_secs_f64();
        done.store(true, Ordering::Relaxed);
        Refused {
            message,
            seconds,
            peak: watcher.join().unwrap(),
            left: written(dir.root()),
        }
    })
}

fn main() {
    let zeros_mb: u64 = std::env::var("WAIAAS_BENCH_BOMB_MB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1024);
    let tmp = tempfile::tempdir().unwrap();
    let (secret, public) = waiaas_packaging::generate_keypair(&tmp.path().join("keys")).unwrap();
    let mut config = Config::default();
    config.update.trusted_keys = vec![public];

    // The release binaries sit two folders above this bench (target/release/deps/).
    let bin_dir: PathBuf = std::env::current_exe()
        .unwrap()
        .ancestors()
        .nth(2)
        .unwrap()
        .to_path_buf();
    let packed = waiaas_packaging::pack(&PackOptions {
        bin_dir,
        out_dir: tmp.path().join("out"),
        sign_key: secret,
        target: this_target().unwrap().to_string(),
        also_targets: Vec::new(),
        rollout_seconds: None,
    })
    .expect("pack the release build (cargo build --release --workspace first)");
    let release_size = fs::metadata(&packed.platform_tarball).unwrap().len();

    // 1. The bomb.
    let bomb = tmp.path().join("bomb.tgz");
    let manifest = serde_json::to_vec(&packed.manifest).unwrap();
    testkit::hostile::unsigned_bomb(&bomb, &manifest, zeros_mb << 20, EMPTIES);
    let bomb_size = fs::metadata(&bomb).unwrap().len();
    // As it is, and with the entry cap raised out of the way (so the whole
    // first pass runs and the missing signature refuses it).
    let roomy = Limits {
        entries: 2 * EMPTIES as u64,
        ..Limits::default()
    };
    let bombs: Vec<Refused> = [
        ("default caps", Limits::default()),
        ("entry cap 40000", roomy),
    ]
    .into_iter()
    .enumerate()
    .map(|(i, (name, limits))| {
        let dir = DataDir::new(tmp.path().join(format!("bomb-{i}")));
        let refused = refuse(&dir, &config, &bomb, &limits);
        println!(
            "unsigned bomb ({zeros_mb} MiB of zeros + {EMPTIES} empty files, {bomb_size} \
                 bytes), {name}: refused in {:.3} s; at most {} files / {} bytes on disk, {} / {} \
                 left\n  {}",
            refused.seconds,
            refused.peak.0,
            refused.peak.1,
            refused.left.0,
            refused.left.1,
            refused.message
        );
        refused
    })
    .collect();

    // 2. The real release, installed into a fresh data dir each run.
    let mut times: Vec<Duration> = (0..RUNS)
        .map(|run| {
            let dir = DataDir::new(tmp.path().join(format!("install-{run}")));
            let start = Instant::now();
            package::install_file(&dir, &config, &packed.platform_tarball, None)
                .expect("the real release installs");
            start.elapsed()
        })
        .collect();
    times.sort();
    let median = times[RUNS / 2];
    println!(
        "verified install of the real release ({release_size} bytes): median {:.3} s of {RUNS} \
         (min {:.3} s, max {:.3} s)",
        median.as_secs_f64(),
        times[0].as_secs_f64(),
        times[RUNS - 1].as_secs_f64()
    );
    println!(
        "{}",
        json!({
            "bomb_zeros_mib": zeros_mb,
            "bomb_empty_files": EMPTIES,
            "bomb_tarball_bytes": bomb_size,
            "bomb_refusals": bombs.iter().map(|r| json!({
                "seconds": r.seconds,
                "peak_files": r.peak.0,
                "peak_bytes": r.peak.1,
                "files_left": r.left.0,
                "bytes_left": r.left.1,
                "refusal": r.message,
            })).collect::<Vec<_>>(),
            "release_tarball_bytes": release_size,
            "release_install_median_seconds": median.as_secs_f64(),
            "release_install_seconds": times.iter().map(Duration::as_secs_f64).collect::<Vec<_>>(),
        })
    );
}
