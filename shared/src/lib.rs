//! Contracts spoken by both the WAIaaS launcher and the daemon: one definition
//! of each, so the two processes cannot disagree.

pub mod admin;
pub mod background;
pub mod backup;
pub mod compat;
pub mod config;
pub mod container;
pub mod control;
pub mod exit;
pub mod failpoint;
pub mod fsutil;
pub mod handover;
pub mod health;
pub mod kv;
pub mod layout;
pub mod listen_fds;
pub mod registry;
pub mod release;
pub mod runlock;
pub mod time;
pub mod trash;
pub mod version;
pub mod window;
