//! Work done beside a serving daemon gives way to it. A live backup's copy
//! and `quick_check` are seconds of CPU each, and the daemon's commits wait
//! on kernel workers (a new extent's conversion to written, a cache flush
//! requeued) that run only when a CPU lets them. Traced here under load on
//! 2 CPUs: the daemon's serving thread busy on one, the copy and check on
//! the other, a commit waited 243 ms for the conversion worker and 110 ms
//! for the flush, both runnable the whole time.
//!
//! At `SCHED_IDLE` a thread runs only on CPU time no other thread wants, and
//! the kernel counts a CPU running nothing else as idle when it places a
//! thread that wakes: those workers and the daemon's threads go there and
//! run at once.
//!
//! But on CPUs that other programs keep busy, such a thread hardly runs: a
//! hash of 2 MiB steps went from 200 steps in 0.46 s to 67 steps in 20 s,
//! one step waiting 2.1 s, with three busy loops on 2 CPUs. A live copy held
//! that long keeps the daemon's log growing. So the work is watched: if it
//! goes [`STARVED`] without finishing a step, it stops at its next step and
//! the rest runs at the caller's priority, from where it stopped. An
//! unprivileged thread cannot raise itself back from `SCHED_IDLE`, hence the
//! hand-over rather than a change of policy.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::Duration;

/// How long work at idle priority may go without finishing a step before it
/// is taken as starved. A step is a few milliseconds of CPU and one write
/// of a few MiB; a disk too slow for one in a second gains nothing from the
/// lower priority either.
pub const STARVED: Duration = Duration::from_secs(1);

/// What work beside the daemon tells its watcher, and hears from it.
#[derive(Clone, Default)]
pub struct Watch {
    steps: Arc<AtomicU64>,
    taken_over: Arc<AtomicBool>,
}

impl Watch {
    /// A step is done.
    pub fn step(&self) {
        self.steps.fetch_add(1, Ordering::Relaxed);
    }

    /// How many steps are done.
    pub(crate) fn steps(&self) -> u64 {
        self.steps.load(Ordering::Relaxed)
    }

    /// A watch that has taken the work over already.
    #[cfg(test)]
    pub(crate) fn taken() -> Self {
        let watch = Self::default();
        watch.taken_over.store(true, Ordering::Relaxed);
        watch
    }

    /// Whether the caller takes the rest over: the work then returns `None`
    /// at once, its state left where the next step begins.
    pub fn taken_over(&self) -> bool {
        self.taken_over.load(Ordering::Relaxed)
    }

    /// Runs `step` until it gives a result, counting each step that does
    /// not; `None` once the work is taken over, between two steps.
    pub fn until_done<T>(&self, mut step: impl FnMut() -> Option<T>) -> Option<T> {
        loop {
            if self.taken_over() {
                return None;
            }
            if let Some(done) = step() {
                return Some(done);
            }
            self.step();
        }
    }
}

/// Runs `work` on `state`, on a thread of its own lowered to `SCHED_IDLE`
/// for its whole life (an unprivileged thread cannot raise itself back, so
/// the thread ends with the work). If it goes `starved` without a step,
/// it is taken over: once it has stopped, `work` runs again on the calling
/// thread, at its priority, from the state it left. Where the kernel
/// refuses the lower priority, the work runs at the usual one, with a
/// warning.
///
/// `work` returns `None` only when [`Watch::taken_over`] says so.
pub fn run<S: Send, T: Send>(
    mut state: S,
    starved: Duration,
    work: impl Fn(&mut S, &Watch) -> Option<T> + Sync,
) -> T {
    let watch = Watch::default();
    let (ended, stopped) = mpsc::channel::<()>();
    let (done, mut state) = std::thread::scope(|scope| {
        let idle = scope.spawn(|| {
            // Dropped when the work returns (or panics): the watcher wakes.
            let _ended = ended;
            if let Err(e) = lower() {
                tracing::warn!(
                    "cannot run beside the daemon at idle priority, so it runs as usual: {e}"
                );
            }
            let done = work(&mut state, &watch);
            (done, state)
        });
        let mut seen = 0;
        while let Err(RecvTimeoutError::Timeout) = stopped.recv_timeout(starved) {
            let steps = watch.steps();
            if steps == seen {
                watch.taken_over.store(true, Ordering::Relaxed);
                break;
            }
            seen = steps;
        }
        match idle.join() {
            Ok(ended) => ended,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    });
    if let Some(done) = done {
        return done;
    }
    tracing::warn!(
        "work beside the daemon had no CPU time at idle priority for {} ms; it goes on at the usual priority",
        starved.as_millis()
    );
    work(&mut state, &Watch::default()).expect("work that is not taken over finishes")
}

/// Puts the calling thread under `SCHED_IDLE`.
fn lower() -> std::io::Result<()> {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: pid 0 is the calling thread; `param` lives across the call.
    if unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::thread::ThreadId;
    use std::time::Instant;

    fn policy() -> i32 {
        // SAFETY: pid 0 is the calling thread.
        unsafe { libc::sched_getscheduler(0) }
    }

    /// The CPU time the calling thread has had.
    fn cpu_time() -> Duration {
        let mut t = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: `t` is a valid timespec to write to.
        assert_eq!(
            unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut t) },
            0
        );
        Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
    }

    /// Each step's (thread, policy), for `steps` steps, each running `step`.
    fn stepped(
        steps: usize,
        starved: Duration,
        step: impl Fn(usize) + Sync,
    ) -> Vec<(ThreadId, i32)> {
        run(
            Vec::new(),
            starved,
            |ran: &mut Vec<(ThreadId, i32)>, watch| {
                watch.until_done(|| {
                    if ran.len() == steps {
                        return Some(std::mem::take(ran));
                    }
                    step(ran.len());
                    ran.push((std::thread::current().id(), policy()));
                    None
                })
            },
        )
    }

    #[test]
    fn work_beside_the_daemon_runs_at_idle_priority_and_leaves_its_caller_as_it_was() {
        let before = policy();
        assert_ne!(before, libc::SCHED_IDLE);
        let ran = stepped(3, Duration::from_secs(30), |_| {});
        assert_eq!(ran.len(), 3);
        for (thread, policy) in ran {
            assert_eq!(policy, libc::SCHED_IDLE);
            assert_ne!(
                thread,
                std::thread::current().id(),
                "the work has a thread of its own"
            );
        }
        assert_eq!(policy(), before);
    }

    #[test]
    fn a_step_that_does_not_end_in_time_hands_the_rest_to_the_caller_from_where_it_stopped() {
        let before = policy();
        // The second step outlasts the watch: the third runs on the caller.
        let ran = stepped(4, Duration::from_millis(50), |n| {
            if n == 1 {
                std::thread::sleep(Duration::from_millis(400));
            }
        });
        let me = std::thread::current().id();
        assert_eq!(ran.len(), 4, "each step ran once: {ran:?}");
        assert!(
            ran[..2]
                .iter()
                .all(|&(t, p)| t != me && p == libc::SCHED_IDLE)
        );
        assert!(ran[2..].iter().all(|&(t, p)| t == me && p == before));
        assert_eq!(policy(), before);
    }

    #[test]
    fn a_panic_in_the_work_reaches_the_caller() {
        let caught = std::panic::catch_unwind(|| {
            stepped(2, Duration::from_secs(30), |n| {
                assert!(n < 1, "step {n} fails")
            })
        });
        let message = caught.expect_err("the panic is passed on");
        let message = message
            .downcast_ref::<String>()
            .map(String::as_str)
            .unwrap_or_default();
        assert!(message.contains("step 1 fails"), "{message}");
    }

    /// Every CPU kept busy at the usual priority, as other programs on the
    /// machine may: the work at idle priority would crawl (2 MiB steps at
    /// about 3 a second, see the module); watched, it ends in seconds.
    #[test]
    fn work_starved_by_busy_cpus_still_ends_in_bounded_time() {
        let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
        let stop = Arc::new(AtomicBool::new(false));
        let spinners: Vec<_> = (0..cpus + 1)
            .map(|_| {
                let stop = stop.clone();
                let until = Instant::now() + Duration::from_secs(60);
                std::thread::spawn(move || {
                    while !stop.load(Ordering::Relaxed) && Instant::now() < until {
                        std::hint::spin_loop();
                    }
                })
            })
            .collect();
        let began = Instant::now();
        // 200 steps of 1 ms of CPU each.
        let ran = stepped(200, Duration::from_millis(200), |_| {
            let until = cpu_time() + Duration::from_millis(1);
            while cpu_time() < until {
                std::hint::spin_loop();
            }
        });
        let took = began.elapsed();
        stop.store(true, Ordering::Relaxed);
        for spinner in spinners {
            spinner.join().unwrap();
        }
        assert_eq!(ran.len(), 200);
        assert!(
            ran.last().is_some_and(|&(_, p)| p != libc::SCHED_IDLE),
            "the caller took the starved work over"
        );
        assert!(took < Duration::from_secs(20), "took {took:?}");
    }
}
