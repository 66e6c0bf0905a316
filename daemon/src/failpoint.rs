//! Fault injection for the launcher's start-race tests, which must kill or
//! freeze a real daemon at an exact instant of its start:
//! `WAIAAS_FAILPOINT=<point>:<kill|pause>:<token file>` at `before-hello`,
//! `after-hello` or `after-ready`. One implementation for both programs:
//! `waiaas_shared::failpoint`.

pub use waiaas_shared::failpoint::hit;
