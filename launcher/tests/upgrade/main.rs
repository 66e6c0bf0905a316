//! `waiaas-launcher upgrade` end to end (SPEC §6, §7, §10 scenarios 7–11):
//! two real builds (A = this build, B = 1.9.0 with a 17th migration, see
//! `testkit/src/builds.rs`), packed and signed like releases with a throwaway key,
//! served by a real HTTP registry on 127.0.0.1, installed with the real
//! `init`, with real data written through the real API. Every test ends by
//! checking that the installation is fully old or fully new, healthy, and
//! that nothing was lost.
//!
//! One module a capability: [`steps`], [`rollback`], [`kills`] (kill -9 and
//! power cuts), [`live_backup`], [`fold`] (kill -9 and power cuts in the live
//! backup's fold of the WAL), [`handover`] (with the readiness gate) and
//! [`refusals`]; [`releases`] (what is packed once per process) and [`site`]
//! (an installation under test) are what they share.

mod fold;
mod handover;
mod kills;
mod live_backup;
mod refusals;
mod releases;
mod rollback;
mod site;
mod steps;
