//! The commands an operator types, beside `run` (the [`crate::supervisor`]):
//! each turns its arguments into work and its outcome into a
//! [`crate::failure::Failure`] or success.
//!
//! - [`init`]: the data dir and the first install;
//! - [`service`]: `start`, `stop`, `restart`, `status`, over the admin socket;
//! - [`upgrade`]: `upgrade`, handed to a running supervisor (its progress
//!   rendered) or run standalone;
//! - [`notice`]: the update notice after a command.

pub mod init;
pub mod notice;
pub mod service;
pub mod upgrade;
