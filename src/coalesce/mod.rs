//! Coalescing: identical in-flight requests share one upstream request.
//!
//! - [`key`] decides which requests are identical; [`canonical`] is the
//!   canonical form of a JSON body it hashes.
//! - [`registry`] finds the open flight for a key, or makes the caller its leader.
//! - [`flight`] is one upstream response as a shared append-only log (`log.rs`)
//!   that any number of [`flight::Subscriber`] bodies read at their own pace.
//! - [`pump`] is the one task per flight that reads the upstream into the log,
//!   cancels it when nobody is left, and lingers or removes the flight at the end.

pub mod canonical;
pub mod flight;
pub mod key;
mod log;
pub mod pump;
pub mod registry;

/// Who answered a request, as told in `x-chorus-role` and in metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// Its request started the flight that answered it.
    Leader,
    /// It joined a flight another request started (live, replayed or lingering).
    Follower,
    /// It was proxied on its own, or answered by the gateway itself.
    Bypass,
}

impl Role {
    /// The label and header value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Leader => "leader",
            Self::Follower => "follower",
            Self::Bypass => "bypass",
        }
    }
}
