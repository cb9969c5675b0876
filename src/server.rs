//! The client-facing listener: accepting connections (plain TCP, or TLS via
//! tokio-rustls), serving HTTP/1.1 and HTTP/2 on the same port with
//! hyper-util's auto builder, the connection cap, and the drain.
//!
//! Drain: on `drain` the listener is closed at once, every connection is
//! told to shut down gracefully (idle keep-alive connections close, HTTP/2
//! clients get GOAWAY, streams in flight go on), and after `shutdown_grace`
//! whatever is left is cut.
//!
//! Each connection is watched too (see [`activity`](crate::activity)): one
//! with no request in progress for `header_read_timeout` is shut down the
//! same graceful way, and one whose client resets most of its streams as
//! soon as it opens them (HTTP/2 rapid reset) is closed.

use std::convert::Infallible;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::activity::{Activity, Tracked};
use crate::config::ServerConfig;
use crate::framing;
use crate::headers::ClientSide;
use crate::metrics::Metrics;
use crate::proxy::Proxy;
use crate::tls::{self, Accepted};

/// A TLS handshake must finish within this, or within `header_read_timeout`
/// if that is shorter.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Pause after an accept error that is not the peer's fault (out of file
/// descriptors, say), so the loop does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);
/// hyper answers a bare 431 itself (no JSON, no `x-chorus-role`) once a head
/// outgrows its read buffer; below that the handler checks `max_header_bytes`
/// and answers with the gateway's JSON. The buffer only grows as a client
/// sends, so it is sized for any plausible over-size head to reach the
/// handler: `HEAD_ALLOWANCE` times the limit, and at least `HEAD_SLACK` over it.
const HEAD_ALLOWANCE: usize = 4;
const HEAD_SLACK: usize = 16 * 1024;
/// HTTP/2 pings find clients that vanished without a FIN.
const H2_KEEPALIVE: Duration = Duration::from_secs(20);

/// What the listener needs besides the handler.
pub struct Listener {
    /// The bound socket.
    pub tcp: TcpListener,
    /// Terminates TLS when set.
    pub tls: Option<TlsAcceptor>,
}

/// Everything a connection task shares.
struct Shared {
    builder: auto::Builder<TokioExecutor>,
    proxy: Arc<Proxy>,
    metrics: Arc<Metrics>,
    tls: Option<TlsAcceptor>,
    handshake_timeout: Duration,
    /// Cancelled when the shutdown grace ran out.
    cut: CancellationToken,
    /// Cancelled when the gateway starts draining.
    drain: CancellationToken,
    /// A connection with no request in progress for this long is closed.
    header_read_timeout: Duration,
}

/// Accepts and serves until `drain`, then drains for up to `shutdown_grace`.
pub async fn serve(
    listener: Listener,
    proxy: Arc<Proxy>,
    metrics: Arc<Metrics>,
    config: &ServerConfig,
    drain: CancellationToken,
    cut: CancellationToken,
) {
    let shared = Arc::new(Shared {
        builder: builder(config),
        proxy,
        metrics,
        tls: listener.tls,
        handshake_timeout: config.header_read_timeout.min(HANDSHAKE_TIMEOUT),
        cut,
        drain: drain.clone(),
        header_read_timeout: config.header_read_timeout,
    });
    let connections = TaskTracker::new();
    let permits = Arc::new(Semaphore::new(config.max_connections));

    loop {
        let permit = tokio::select! {
            () = drain.cancelled() => break,
            permit = Arc::clone(&permits).acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
        };
        let (stream, peer) = tokio::select! {
            () = drain.cancelled() => break,
            accepted = listener.tcp.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    accept_failed(&error).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let shared = Arc::clone(&shared);
        connections.spawn(async move {
            shared.metrics.connections_active.inc();
            let client = ClientSide {
                ip: peer.ip(),
                tls: shared.tls.is_some(),
            };
            tokio::select! {
                () = connection(&shared, stream, client) => {}
                () = shared.cut.cancelled() => {}
            }
            shared.metrics.connections_active.dec();
            drop(permit);
        });
    }
    // Closing the listener refuses new connections from here on.
    drop(listener.tcp);

    connections.close();
    tokio::select! {
        () = connections.wait() => {}
        () = tokio::time::sleep(config.shutdown_grace) => {
            let cut = shared.metrics.requests_active.get();
            tracing::warn!(streams = cut, "shutdown grace ran out: cutting the streams still open");
            shared.cut.cancel();
        }
    }
}

/// The HTTP/1.1 + HTTP/2 builder with the server's limits.
fn builder(config: &ServerConfig) -> auto::Builder<TokioExecutor> {
    let head_limit = config
        .max_header_bytes
        .saturating_mul(HEAD_ALLOWANCE)
        .max(config.max_header_bytes.saturating_add(HEAD_SLACK));
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(config.header_read_timeout)
        // hyper's read buffer bounds the request head (hyper's minimum is 8 KiB).
        .max_buf_size(head_limit.max(8192))
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(config.http2_max_concurrent_streams)
        .max_header_list_size(u32::try_from(head_limit).unwrap_or(u32::MAX))
        .keep_alive_interval(H2_KEEPALIVE)
        .keep_alive_timeout(H2_KEEPALIVE);
    builder
}

/// Serves one connection: the TLS handshake if any, then HTTP.
async fn connection(shared: &Shared, stream: TcpStream, client: ClientSide) {
    let Some(acceptor) = &shared.tls else {
        return http(shared, stream, client).await;
    };
    // A failed or slow handshake costs its own connection and a debug line.
    match tokio::time::timeout(shared.handshake_timeout, tls::accept(acceptor, stream)).await {
        Ok(Ok(Accepted::Tls(stream))) => http(shared, stream, client).await,
        Ok(Ok(Accepted::PlainHttp)) => {
            tracing::debug!(peer = %client.ip, "plain HTTP on the TLS port: answered 400")
        }
        Ok(Err(error)) => tracing::debug!(peer = %client.ip, %error, "TLS handshake failed"),
        Err(_) => tracing::debug!(peer = %client.ip, "TLS handshake timed out"),
    }
}

async fn http<I>(shared: &Shared, io: I, client: ClientSide)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let proxy = Arc::clone(&shared.proxy);
    let activity = Arc::new(Activity::default());
    let requests = Arc::clone(&activity);
    // Requests whose HTTP/1.1 head breaks a framing rule are marked for the
    // handler to refuse (see `framing`).
    let verdicts = Arc::new(framing::Verdicts::default());
    let io = framing::Watched::new(io, Arc::clone(&verdicts));
    let service = service_fn(move |mut request: hyper::Request<Incoming>| {
        let guard = requests.start();
        if let Some(suspect) = verdicts.next_request() {
            request.extensions_mut().insert(suspect);
        }
        let proxy = Arc::clone(&proxy);
        // Boxed: hyper keeps the slot of a connection's request future for
        // the connection's lifetime, so an unboxed future (a few KiB) would
        // stay allocated for every idle or streaming connection.
        Box::pin(async move {
            let response = proxy.handle(request, client).await;
            Ok::<_, Infallible>(response.map(|body| Tracked::new(body, guard)))
        })
    });
    let connection = shared.builder.serve_connection(TokioIo::new(io), service);
    tokio::pin!(connection);
    // hyper times an HTTP/1.1 head, but not a connection that never sends
    // one, nor an idle HTTP/2 connection: those would hold their
    // `max_connections` slot for ever. The idle timer covers all three.
    let mut closing = false;
    loop {
        tokio::select! {
            result = connection.as_mut() => {
                if let Err(error) = result {
                    // Malformed requests, resets, timeouts: the client's problem, not ours.
                    tracing::debug!(peer = %client.ip, error = %error, "connection ended with an error");
                }
                return;
            }
            () = shared.drain.cancelled(), if !closing => {
                closing = true;
                connection.as_mut().graceful_shutdown();
            }
            () = activity.idle(shared.header_read_timeout), if !closing => {
                tracing::debug!(peer = %client.ip, "no request within header_read_timeout: closing");
                closing = true;
                connection.as_mut().graceful_shutdown();
            }
            () = activity.abusive() => {
                let (requests, resets) = activity.resets();
                tracing::warn!(
                    peer = %client.ip,
                    requests,
                    resets,
                    "closing a connection whose client resets most streams as it opens them"
                );
                return;
            }
        }
    }
}

/// Handles an accept error: the peer's own failures are skipped, anything
/// else (EMFILE, ENOBUFS) is logged and waited out.
async fn accept_failed(error: &io::Error) {
    match error.kind() {
        io::ErrorKind::ConnectionAborted
        | io::ErrorKind::ConnectionReset
        | io::ErrorKind::ConnectionRefused => {}
        _ => {
            tracing::warn!(%error, "accept failed; pausing");
            tokio::time::sleep(ACCEPT_BACKOFF).await;
        }
    }
}
