//! `run/daemon.pid`, locked by a serving daemon from before it opens the
//! database until after it has closed it: a launcher that did not start this
//! daemon (its own was killed with kill -9) finds it there and stops it
//! before it restores files under it.

use std::time::{Duration, Instant};

use waiaas_shared::exit::daemon as code;
use waiaas_shared::layout::DataDir;
use waiaas_shared::runlock::{LockError, lock_run_file};

use crate::refusal::Refusal;

/// How long a start waits for a daemon that is still exiting to let go.
const WAIT: Duration = Duration::from_secs(5);
const POLL: Duration = Duration::from_millis(20);

/// Takes the lock, waiting at most [`WAIT`]; held until the value is dropped
/// (or the process dies). Refuses while another daemon serves `dir`.
pub fn hold(dir: &DataDir) -> Result<impl Sized, Refusal> {
    let path = dir.daemon_pid();
    let deadline = Instant::now() + WAIT;
    loop {
        match lock_run_file(dir, &path) {
            Ok(lock) => return Ok(lock),
            Err(LockError::Held(pid)) if Instant::now() < deadline => {
                tracing::debug!(
                    "waiting for the daemon (pid {pid}) holding {}",
                    path.display()
                );
                std::thread::sleep(POLL);
            }
            Err(LockError::Held(pid)) => {
                return Err(Refusal {
                    code: code::FAILURE,
                    message: format!(
                        "another waiaas-daemon (pid {pid}, in {}) serves {}; stop it first",
                        path.display(),
                        dir.root().display()
                    ),
                });
            }
            Err(LockError::Io(message)) => {
                return Err(Refusal {
                    code: code::FAILURE,
                    message,
                });
            }
        }
    }
}
