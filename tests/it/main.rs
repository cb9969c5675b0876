//! End-to-end tests: a real gateway and the built-in mock upstream on
//! ephemeral loopback ports, talked to over sockets.

#![allow(unreachable_pub)]

mod support;

mod cli;
mod coalesce;
mod deploy;
mod limits;
mod proxy;
mod tls;
