//! A randomized test of the real launcher: for a bounded time, random events
//! — kill -9 of the daemon, SIGHUP, `restart`, `stop`, `start`, `status`,
//! `upgrade --check` — from the operator's side, while a sampler watches the
//! process table. Never two daemons, never a command slower than its
//! documented bound, and at the end one healthy daemon (or a `status` that
//! says why not). The seed is printed; `WAIAAS_CHAOS_SEED` replays a run and
//! `WAIAAS_CHAOS_SECONDS` sets its length (20 s by default, 120 s at most).

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use testkit::Install;
use testkit::registry::Registry;
use testkit::supervisor::{processes_mentioning, signal};
use waiaas_shared::admin::Status;
use waiaas_shared::release::CLI_PACKAGE;

/// xorshift64*: a dependency-free, replayable choice of events.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Live `waiaas-daemon serve` processes of this data dir.
fn daemons(dir: &Path) -> Vec<i32> {
    processes_mentioning(dir)
        .into_iter()
        .filter(|(_, cmdline)| cmdline.contains("waiaas-daemon serve"))
        .map(|(pid, _)| pid)
        .collect()
}

fn status(install: &Install) -> Option<Status> {
    let out = testkit::run(&mut install.launcher(&["status", "--json"]));
    serde_json::from_str(out.stdout.trim()).ok()
}

/// Runs a command and checks it ended within `bound`.
fn timed(what: &str, mut command: Command, bound: Duration, log: &mut Vec<String>) {
    let started = Instant::now();
    let out = testkit::run(&mut command);
    let took = started.elapsed();
    log.push(format!(
        "{what}: {:?} in {took:?} {}",
        out.status.code(),
        out.stderr.lines().last().unwrap_or_default()
    ));
    assert!(
        took <= bound,
        "`{what}` took {took:?} (bound {bound:?}):\n{}",
        log.join("\n")
    );
}

/// Kills a supervisor left running (its daemon dies with it), even when an
/// assertion failed: `start` detaches it from the test.
struct KillOnDrop<'a>(&'a Install);

impl Drop for KillOnDrop<'_> {
    fn drop(&mut self) {
        if let Some(s) = status(self.0) {
            signal(s.launcher_pid as i32, libc::SIGKILL);
        }
    }
}

#[test]
fn random_events_never_make_two_daemons_or_an_unbounded_wait() {
    let seconds: u64 = std::env::var("WAIAAS_CHAOS_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20)
        .min(120);
    let seed: u64 = std::env::var("WAIAAS_CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .subsec_nanos();
            u64::from(nanos) | 1
        });
    eprintln!("chaos: seed {seed}, {seconds} s (replay with WAIAAS_CHAOS_SEED={seed})");
    let mut rng = Rng(seed);

    let install = Install::new();
    let registry = Registry::start();
    registry.publish(
        CLI_PACKAGE,
        waiaas_shared::version::VERSION,
        b"cli".to_vec(),
    );
    install.write_config(&format!(
        "[daemon]\nport = {}\nhostname = \"127.0.0.1\"\nupdate_check = false\nshutdown_timeout = 5\n\n\
         [update]\nregistry = \"{}\"\nhealth_timeout = 10\n",
        install.port,
        registry.url()
    ));
    // Bounds: SPEC §12 and the commands' own timeouts.
    let stop_bound = Duration::from_secs(5 + 2 + 3);
    let start_bound = Duration::from_secs(10 + 15);
    let restart_bound = stop_bound + Duration::from_secs(10);
    let quick = Duration::from_secs(3);

    // The sampler: at most one daemon at any instant.
    let done = Arc::new(AtomicBool::new(false));
    let most = Arc::new(AtomicUsize::new(0));
    let sampler = {
        let (done, most, dir) = (done.clone(), most.clone(), install.data_dir().to_path_buf());
        std::thread::spawn(move || {
            while !done.load(Ordering::SeqCst) {
                let seen = daemons(&dir);
                most.fetch_max(seen.len(), Ordering::SeqCst);
                if seen.len() > 1 {
                    return Some(seen);
                }
                std::thread::sleep(Duration::from_millis(3));
            }
            None
        })
    };

    let _cleanup = KillOnDrop(&install);
    let mut log = Vec::new();
    timed("start", install.launcher(&["start"]), start_bound, &mut log);
    let end = Instant::now() + Duration::from_secs(seconds);
    let mut events = 0;
    while Instant::now() < end && events < 2_000 {
        events += 1;
        match rng.below(8) {
            0 | 1 => {
                let pids = daemons(install.data_dir());
                log.push(format!("kill -9 {pids:?}"));
                for pid in pids {
                    signal(pid, libc::SIGKILL);
                }
            }
            2 => {
                if let Some(s) = status(&install) {
                    log.push(format!("SIGHUP {}", s.launcher_pid));
                    signal(s.launcher_pid as i32, libc::SIGHUP);
                }
            }
            3 => timed(
                "restart",
                install.launcher(&["restart"]),
                restart_bound,
                &mut log,
            ),
            4 => timed("stop", install.launcher(&["stop"]), stop_bound, &mut log),
            5 => timed("start", install.launcher(&["start"]), start_bound, &mut log),
            6 => timed("status", install.launcher(&["status"]), quick, &mut log),
            _ => timed(
                "upgrade --check",
                install.launcher(&["upgrade", "--check"]),
                quick,
                &mut log,
            ),
        }
        std::thread::sleep(Duration::from_millis(rng.below(60)));
    }

    // The end: started if stopped, then healthy within the start bound.
    if status(&install).is_none() {
        timed("start", install.launcher(&["start"]), start_bound, &mut log);
    }
    let deadline = Instant::now() + start_bound;
    let last = loop {
        let s = status(&install);
        if s.as_ref().is_some_and(testkit::supervisor::healthy) || Instant::now() >= deadline {
            break s;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    done.store(true, Ordering::SeqCst);
    let two = sampler.join().unwrap();
    let _ = testkit::run(&mut install.launcher(&["stop"]));
    eprintln!(
        "chaos: {events} events, at most {} daemon(s) at once",
        most.load(Ordering::SeqCst)
    );
    assert_eq!(two, None, "two daemons at once:\n{}", log.join("\n"));
    let last = last.unwrap_or_else(|| panic!("no supervisor at the end:\n{}", log.join("\n")));
    assert!(
        testkit::supervisor::healthy(&last),
        "not healthy at the end ({:?}, last exit {:?}):\n{}",
        last.state,
        last.last_exit,
        log.join("\n")
    );
}
