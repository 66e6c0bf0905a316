//! Fault injection for the launcher's tests:
//!
//! - `WAIAAS_FAILPOINT=<point>:<kill|pause>:<token file>` kills or freezes a
//!   real daemon at an exact instant of its start (`before-hello`,
//!   `after-hello`, `after-ready`). One implementation for both programs:
//!   `waiaas_shared::failpoint`.
//! - `WAIAAS_FAULT=<fault>` makes a test release's daemon bad for its whole
//!   life — set by that release's wrapper script, so only its daemon has it
//!   (the readiness gate's matrix in `launcher/tests/gate.rs`):
//!   `health-503` (`/health` answers 503 while writes work) and
//!   `abort-after-first-request` (aborts 1 s after its first answer). The
//!   writers' benchmark (`benches/daemon.rs`) sets `synchronous-normal` for
//!   its baseline: commits that do not fsync.

use std::sync::Once;
use std::time::Duration;

pub use waiaas_shared::failpoint::hit;

/// The variable naming a lasting fault.
pub const FAULT_ENV: &str = "WAIAAS_FAULT";

/// Whether lasting fault `name` is armed.
pub fn fault(name: &str) -> bool {
    std::env::var_os(FAULT_ENV).is_some_and(|v| v == name)
}

/// Called with every answer: arms the abort of `abort-after-first-request`.
pub fn answered() {
    static FIRST: Once = Once::new();
    FIRST.call_once(|| {
        if fault("abort-after-first-request") {
            std::thread::spawn(|| {
                std::thread::sleep(Duration::from_secs(1));
                eprintln!("waiaas-daemon (test fault): aborting 1 s after the first request");
                std::process::abort();
            });
        }
    });
}
