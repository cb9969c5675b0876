//! End-to-end tests: a real gateway and the built-in mock upstream on
//! ephemeral loopback ports, talked to over sockets.

#![allow(unreachable_pub)]

mod support;

mod attack;

mod cli;
mod coalesce;
mod deploy;
mod faults;
mod h2_abuse;
mod hostile;
mod limits;
mod memory;
mod proxy;
mod redaction;
mod tls;
mod tunnel;
mod tunnel_h2;
