//! Automatic upgrades (SPEC §13, `[update] auto`): the decisions, apart from
//! the supervisor that carries them out (`supervisor/auto.rs`) and the engine
//! that upgrades (`upgrade`). Every decision takes `now` from a [`Clock`], so
//! windows, zones, DST, jitter, soak and rollouts are tested in-process.
//!
//! The parts, in the order a check meets them:
//! - [`choose`]: which release the policy allows (channel, level, soak,
//!   deprecation, quarantine);
//! - [`rollout`]: this installation's turn in a staged rollout;
//! - [`schedule`]: when, inside the window, with the jitter;
//! - [`plan`]: the [`Planner`] that holds these together over time, with the
//!   busy deferral ([`busy`]: the daemon's write rate), and says what is due;
//! - [`fleet`]: one upgrade at a time across a fleet (FleetLock), and what
//!   a node holding a slot owes it;
//! - [`state`]: the quarantine, the last attempt and the slot held, in the
//!   data dir;
//! - [`notify`]: the word to the operator's `notify_url`;
//! - [`clock`]: the system clock and a fake one.

pub mod busy;
pub mod choose;
pub mod clock;
pub mod fleet;
pub mod notify;
pub mod plan;
pub mod rollout;
pub mod schedule;
pub mod state;

pub use choose::{Candidate, Choice, Release, Skip, choose};
pub use clock::{Clock, FakeClock, SystemClock};
pub use plan::{Action, Found, Planner, Wait};
