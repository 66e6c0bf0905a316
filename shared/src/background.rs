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

use std::thread::{Scope, ScopedJoinHandle};

/// Runs `work` on a thread of its own in `scope`, lowered to `SCHED_IDLE`
/// for its whole life: an unprivileged thread cannot raise itself back,
/// so the thread ends with the work. Where the kernel refuses, the work
/// runs at the usual priority, with a warning.
pub fn spawn<'scope, T: Send + 'scope>(
    scope: &'scope Scope<'scope, '_>,
    work: impl FnOnce() -> T + Send + 'scope,
) -> ScopedJoinHandle<'scope, T> {
    scope.spawn(|| {
        if let Err(e) = lower() {
            tracing::warn!(
                "cannot run beside the daemon at idle priority, so it runs as usual: {e}"
            );
        }
        work()
    })
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

    fn policy() -> i32 {
        // SAFETY: pid 0 is the calling thread.
        unsafe { libc::sched_getscheduler(0) }
    }

    #[test]
    fn work_beside_the_daemon_runs_at_idle_priority_and_leaves_its_caller_as_it_was() {
        let before = policy();
        assert_ne!(before, libc::SCHED_IDLE);
        let (inside, thread) = std::thread::scope(|scope| {
            spawn(scope, || (policy(), std::thread::current().id()))
                .join()
                .unwrap()
        });
        assert_eq!(inside, libc::SCHED_IDLE);
        assert_ne!(
            thread,
            std::thread::current().id(),
            "the work has a thread of its own"
        );
        assert_eq!(policy(), before);
    }
}
