//! What the gateway's dependencies may log: targets whose lines can carry
//! parts of a request as received are held to `info`, whatever `RUST_LOG`
//! asks, because logs never carry queries, bodies or the values of key
//! headers.

use tracing::level_filters::LevelFilter;
use tracing_subscriber::filter::Targets;

/// Passes every target at every level but those below `info` of:
/// - `h2`: at `debug` it prints the pseudo-headers of a malformed request
///   (its path with the query, its authority with any user information, its
///   `:protocol`), and at `trace` the values of headers it refuses.
pub fn dependency_cap() -> Targets {
    Targets::new()
        .with_default(LevelFilter::TRACE)
        .with_target("h2", LevelFilter::INFO)
}
