//! The built-in mock OpenAI-compatible LLM upstream (`chorus mock-upstream`).
//!
//! This module owns the fake backend that the demo, the integration tests and the
//! benchmarks put behind the gateway. It speaks HTTP/1.1 and h2c on one port and
//! serves:
//!
//! - `POST /v1/chat/completions` and `POST /v1/completions`: OpenAI completions,
//!   streamed as Server-Sent Events (`"stream": true`) or as one JSON object. Streamed
//!   events are written `interval` apart; plain responses are sent whole after
//!   `first_byte_delay`, with no per-token pause.
//! - `GET /v1/models`: a one-model list, enough for SDKs.
//! - `GET /stats`: the [`MockStats`] counters as JSON.
//! - any method on `/echo...`: what the request looked like on arrival, as JSON.
//! - `OPTIONS` anywhere: a CORS preflight that allows any origin; every other
//!   answer carries `Access-Control-Allow-Origin: *` too.
//!
//! A completion request may carry a top-level `"mock"` object that overrides the
//! options for that request and injects faults:
//! `{"tokens": N, "interval_ms": M, "first_byte_delay_ms": D, "status": S,
//! "break_after": K, "stall_after": K}`. `status` (400–599) answers with an
//! OpenAI-style error; `break_after` aborts the body after K events (HTTP/1.1: no
//! final chunk; HTTP/2: RST_STREAM); `stall_after` sends nothing after K events until
//! the peer leaves. A plain (non-stream) body counts as one event.
//!
//! For benchmarks, `"stamp": true` in that object (or `--stamp` for every request)
//! adds `"chorus_sent_ns":N` as the first field of every streamed JSON event: the
//! wall-clock time (nanoseconds since the Unix epoch) at which the mock produced
//! it, so that a client on the same machine can tell how long the event took to
//! reach it. Off by default, so the output stays in OpenAI's exact format.
//!
//! Content is deterministic: identical requests get identical tokens and differ only
//! in `id` and `created`.
//!
//! # Layout
//!
//! - this file: [`MockOptions`], [`serve`] and the connections it accepts.
//! - `routes.rs`: which method and path does what; `/echo`, `/stats`,
//!   `/v1/models`, errors, and the completion response head.
//! - `request.rs`: parsing a completion request and its `"mock"` overrides
//!   into a `Plan`.
//! - `stream.rs`: what a completion says: the SSE events and the plain JSON.
//! - `body.rs`: `MockBody`, the response body that paces, breaks or stalls.
//! - `stats.rs`: [`MockStats`], its wait helper, and the `Tracker` that
//!   counts each request's outcome.
//! - `json.rs`: JSON string literals, written by hand.

mod body;
mod json;
mod request;
mod routes;
mod stats;
mod stream;
#[cfg(test)]
mod tests;

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

pub use self::stats::MockStats;

/// Knobs of the mock, also the flags of `chorus mock-upstream`.
#[derive(Debug, Clone, clap::Args)]
pub struct MockOptions {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:9000")]
    pub listen: SocketAddr,
    /// Content tokens per streamed completion.
    #[arg(long, default_value_t = 20)]
    pub tokens: usize,
    /// Pause between streamed events, e.g. "50ms" (humantime syntax).
    #[arg(long, default_value = "50ms", value_parser = humantime::parse_duration)]
    pub interval: Duration,
    /// Pause before the response head, e.g. "0ms".
    #[arg(long, default_value = "0ms", value_parser = humantime::parse_duration)]
    pub first_byte_delay: Duration,
    /// Stamps every streamed JSON event with `"chorus_sent_ns"`, the wall-clock
    /// nanoseconds at which it was sent (for delivery-latency benchmarks).
    #[arg(long)]
    pub stamp: bool,
}

impl Default for MockOptions {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 9000)),
            tokens: 20,
            interval: Duration::from_millis(50),
            first_byte_delay: Duration::ZERO,
            stamp: false,
        }
    }
}

/// h2c streams per connection: high, so a gateway multiplexing on one connection
/// is not throttled by the mock (hyper's default is 200).
const H2_MAX_CONCURRENT_STREAMS: u32 = 100_000;
/// Pause after an accept error such as EMFILE, instead of spinning on it.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// Serves until `shutdown` resolves. Accepts from an already-bound listener (tests
/// bind 127.0.0.1:0). Connections still open when it returns are closed.
pub async fn serve(
    listener: TcpListener,
    options: MockOptions,
    stats: Arc<MockStats>,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    let local = listener.local_addr()?;
    tracing::info!(%local, tokens = options.tokens, interval = ?options.interval, "mock upstream listening");
    let shared = Arc::new(Shared {
        options,
        stats,
        next_id: AtomicU64::new(1),
    });
    let builder = Arc::new(connection_builder());
    let closing = CancellationToken::new();
    // Also closes the connections if this future is dropped instead of shut down.
    let _close_connections = closing.clone().drop_guard();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            biased;
            () = &mut shutdown => break,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, peer)) => spawn_connection(stream, peer, &shared, &builder, &closing),
            Err(error) if is_connection_error(&error) => {
                tracing::debug!(%error, "mock upstream: connection failed during accept");
            }
            Err(error) => {
                tracing::warn!(%error, "mock upstream: accept failed, pausing");
                tokio::select! {
                    biased;
                    () = &mut shutdown => break,
                    () = tokio::time::sleep(ACCEPT_ERROR_PAUSE) => {}
                }
            }
        }
    }
    tracing::info!(%local, "mock upstream stopped");
    Ok(())
}

/// State shared by every connection of one [`serve`] call.
struct Shared {
    options: MockOptions,
    stats: Arc<MockStats>,
    next_id: AtomicU64,
}

fn connection_builder() -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http2()
        .max_concurrent_streams(H2_MAX_CONCURRENT_STREAMS);
    builder
}

/// Errors that concern one would-be connection, not the listener.
fn is_connection_error(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::Interrupted
    )
}

fn spawn_connection(
    stream: TcpStream,
    peer: SocketAddr,
    shared: &Arc<Shared>,
    builder: &Arc<auto::Builder<TokioExecutor>>,
    closing: &CancellationToken,
) {
    if let Err(error) = stream.set_nodelay(true) {
        tracing::debug!(%peer, %error, "mock upstream: cannot set TCP_NODELAY");
    }
    shared.stats.count_connection();
    let shared = Arc::clone(shared);
    let builder = Arc::clone(builder);
    let closing = closing.clone();
    tokio::spawn(async move {
        let service = service_fn(move |request| {
            let shared = Arc::clone(&shared);
            async move { Ok::<_, Infallible>(routes::handle(request, shared).await) }
        });
        let connection = builder.serve_connection(TokioIo::new(stream), service);
        tokio::select! {
            result = connection => {
                if let Err(error) = result {
                    tracing::debug!(%peer, %error, "mock upstream: connection ended with an error");
                }
            }
            () = closing.cancelled() => {}
        }
    });
}

/// Wall-clock seconds since the Unix epoch (the `created` of a completion).
fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs())
}

/// Wall-clock nanoseconds since the Unix epoch (u64 lasts until 2554).
fn unix_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| {
            u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX)
        })
}
