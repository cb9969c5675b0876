//! The binary's own parts, beside `main.rs`: what the process sets up for
//! itself, the signals it acts on, and `chorus health`.

pub(crate) mod health;
pub(crate) mod process;
pub(crate) mod signals;
