//! The client-facing listener: accepting connections (plain TCP, or TLS via
//! tokio-rustls), serving HTTP/1.1 and HTTP/2 on the same port, the
//! connection cap, and the drain.
//!
//! Drain: on `drain` the listener is closed at once, every connection is
//! told to shut down gracefully (idle keep-alive connections close, HTTP/2
//! clients get GOAWAY, streams in flight go on), and after `shutdown_grace`
//! whatever is left is cut.
//!
//! The protocol is told before hyper reads a byte where it can be: by ALPN
//! on TLS, by peeking at the first bytes of a cleartext connection (the
//! HTTP/2 preface, or anything else for HTTP/1.1). Left to hyper-util, the
//! detection reads those bytes itself and hands them to hyper's first read
//! alone, and hyper's second read then grows every HTTP/1.1 connection's read
//! buffer from 8 to 16 KiB. So HTTP/1.1 connections go straight to hyper
//! (which is also where protocol upgrades are allowed: hyper-util's
//! upgradeable connection always detects), HTTP/2 ones to hyper-util's
//! builder told the version, and only a connection that cannot be told
//! (too few first bytes, TLS without ALPN) is left to hyper-util.
//!
//! Client sockets get `send_timeout` as their `TCP_USER_TIMEOUT`: a client
//! that takes nothing of what it is sent for that long is dropped. A flight
//! leaves its HTTP/1.1 clients to that, and watches its HTTP/2 streams
//! itself (a single stream that stops leaves the connection going).
//!
//! Each connection is watched too (see [`activity`](crate::activity)): one
//! with no request in progress for `header_read_timeout` is shut down the
//! same graceful way, and one whose client resets most of its streams as
//! soon as it opens them (HTTP/2 rapid reset) is closed.

use std::convert::Infallible;
use std::io;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use std::future::{Future, poll_fn};
use std::pin::Pin;
use std::task::{Context, Poll};

use http::header::{CONNECTION, CONTENT_LENGTH};
use http::{HeaderValue, Method, Request, Response, StatusCode, Version};
use http_body::Body;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::{HttpService, Service, service_fn};
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
use crate::flushes::{self, Flushes};
use crate::framing;
use crate::headers::ClientSide;
use crate::metrics::Metrics;
use crate::proxy::{ClientConnection, Proxy};
use crate::quiet::Quiet;
use crate::tls::{self, Accepted};
use crate::tunnel::Tunnels;

/// A TLS handshake must finish within this, or within `header_read_timeout`
/// if that is shorter.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Pause after an accept error that is not the peer's fault (out of file
/// descriptors, say), so the loop does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);
/// The longest HTTP/1.1 head read (`framing` refuses longer ones with a
/// 431 of the gateway's own) and HTTP/2 header list decoded (past it, hyper
/// answers a bare 431 itself): `HEAD_ALLOWANCE` times `max_header_bytes`,
/// and at least `HEAD_SLACK` over it. Heads between the two are read, and
/// the handler answers them with a 431 naming the limit.
const HEAD_ALLOWANCE: usize = 4;
const HEAD_SLACK: usize = 16 * 1024;
/// How long a connection told to close (drain, or idle past
/// `header_read_timeout`) may stay open with nothing in flight: a
/// well-behaved HTTP/2 client closes within a round trip of the GOAWAY.
const GOODBYE_GRACE: Duration = Duration::from_secs(1);
/// How long, once the shutdown grace has run out, what the cut ended has to
/// be written before the connections still open are dropped.
const CUT_WRITES: Duration = Duration::from_millis(500);
/// HTTP/2 pings find clients that vanished without a FIN.
const H2_KEEPALIVE: Duration = Duration::from_secs(20);
/// What every HTTP/2 connection sends first (RFC 9113 §3.4).
const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// What the listener needs besides the handler.
pub struct Listener {
    /// The bound socket.
    pub tcp: TcpListener,
    /// Terminates TLS when set.
    pub tls: Option<TlsAcceptor>,
}

/// Everything a connection task shares.
struct Shared {
    /// Tells HTTP/1.1 from HTTP/2 by the first bytes.
    builder: auto::Builder<TokioExecutor>,
    /// The same HTTP/1.1 settings, for a connection known to speak it.
    http1: http1::Builder,
    /// The same settings, for a connection known to speak HTTP/2.
    http2: auto::Builder<TokioExecutor>,
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
    /// The longest request head read (see [`HEAD_ALLOWANCE`]).
    max_head: usize,
}

/// Accepts and serves until `drain`, then drains for up to `shutdown_grace`.
pub async fn serve(
    listener: Listener,
    proxy: Arc<Proxy>,
    metrics: Arc<Metrics>,
    config: &ServerConfig,
    drain: CancellationToken,
    hurry: CancellationToken,
    cut: CancellationToken,
) {
    let builder = builder(config, proxy.websockets());
    let shared = Arc::new(Shared {
        http1: http1_builder(config),
        http2: builder.clone().http2_only(),
        builder,
        proxy,
        metrics,
        tls: listener.tls,
        handshake_timeout: config.header_read_timeout.min(HANDSHAKE_TIMEOUT),
        cut,
        drain: drain.clone(),
        header_read_timeout: config.header_read_timeout,
        max_head: max_head(config),
    });
    let connections = TaskTracker::new();
    let permits = Arc::new(Semaphore::new(config.max_connections));
    let mut accept_errors = AcceptErrors::new("gateway");

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
                Ok(accepted) => {
                    accept_errors.accepted();
                    accepted
                }
                Err(error) => {
                    accept_errors.failed(&error).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let times_out = set_send_timeout(&stream, config.send_timeout);
        let shared = Arc::clone(&shared);
        connections.spawn(async move {
            shared.metrics.connections_active.inc();
            tokio::select! {
                () = connection(&shared, stream, peer.ip(), times_out) => {}
                () = Quiet::new(shared.cut.cancelled()) => {}
            }
            shared.metrics.connections_active.dec();
            drop(permit);
        });
    }
    // Closing the listener refuses new connections from here on.
    drop(listener.tcp);

    connections.close();
    let why = tokio::select! {
        () = connections.wait() => return,
        () = tokio::time::sleep(config.shutdown_grace) => "shutdown grace ran out",
        () = hurry.cancelled() => "told again to stop",
    };
    let streams = shared.metrics.requests_active.get();
    let open = shared.metrics.connections_active.get();
    if streams > 0 {
        tracing::warn!(
            streams,
            connections = open,
            "{why}: cutting the streams still open"
        );
    } else {
        // Idle, but not closed by the client: an HTTP/2 client that never
        // answers the GOAWAY's ping, say.
        tracing::warn!(
            streams,
            connections = open,
            "{why}: closing the connections still open"
        );
    }
    shared.proxy.cut_what_is_left();
    // What that ends takes a moment to be written (a 503 to a request that
    // had no head yet, rather than a closed connection) before the
    // connections still open are dropped.
    let _ = tokio::time::timeout(CUT_WRITES, connections.wait()).await;
    shared.cut.cancel();
}

/// See [`HEAD_ALLOWANCE`].
fn max_head(config: &ServerConfig) -> usize {
    config
        .max_header_bytes
        .saturating_mul(HEAD_ALLOWANCE)
        .max(config.max_header_bytes.saturating_add(HEAD_SLACK))
}

/// hyper's read buffer for HTTP/1.1: `framing` hands hyper whole heads of
/// at most [`max_head`] bytes; the buffer takes one with room to spare (and
/// is at least 8 KiB).
fn http1_buffer(config: &ServerConfig) -> usize {
    max_head(config).saturating_add(HEAD_SLACK).max(8192)
}

/// The HTTP/1.1 builder with the server's limits (the same as [`builder`]'s).
fn http1_builder(config: &ServerConfig) -> http1::Builder {
    let mut http1 = http1::Builder::new();
    http1
        .timer(TokioTimer::new())
        .header_read_timeout(config.header_read_timeout)
        .max_buf_size(http1_buffer(config));
    http1
}

/// The HTTP/1.1 + HTTP/2 builder with the server's limits; with
/// `websockets`, HTTP/2 clients may open them (RFC 8441).
fn builder(config: &ServerConfig, websockets: bool) -> auto::Builder<TokioExecutor> {
    let head_limit = max_head(config);
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(config.header_read_timeout)
        .max_buf_size(http1_buffer(config))
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(config.http2_max_concurrent_streams)
        .max_header_list_size(u32::try_from(head_limit).unwrap_or(u32::MAX))
        .keep_alive_interval(H2_KEEPALIVE)
        .keep_alive_timeout(H2_KEEPALIVE);
    if websockets {
        builder.http2().enable_connect_protocol();
    }
    builder
}

/// Which HTTP a connection speaks, as far as is known before hyper reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Protocol {
    Http1,
    Http2,
    /// Not known yet: hyper-util reads the first bytes to tell.
    Either,
}

impl Protocol {
    /// The protocol of a TLS connection, from ALPN.
    fn negotiated(alpn: Option<&[u8]>) -> Self {
        match alpn {
            Some(b"h2") => Self::Http2,
            Some(b"http/1.1") => Self::Http1,
            _ => Self::Either,
        }
    }

    /// The protocol of a cleartext connection that begins with `first`.
    fn of_first_bytes(first: &[u8]) -> Self {
        if first.len() == H2_PREFACE.len() && first == H2_PREFACE {
            Self::Http2
        } else if H2_PREFACE.starts_with(first) {
            // A part of the preface (or of a request starting with "P"):
            // hyper-util waits for the rest.
            Self::Either
        } else {
            Self::Http1
        }
    }
}

/// Serves one connection: the TLS handshake if any, then HTTP.
/// `times_out`: whether the socket has `send_timeout` as its
/// `TCP_USER_TIMEOUT` ([`set_send_timeout`]).
async fn connection(shared: &Shared, stream: TcpStream, peer: IpAddr, times_out: bool) {
    if let Some(acceptor) = &shared.tls {
        // Boxed: the handshake and a TLS stream are large, and a future's
        // size is its largest state's, so inline they would make every
        // connection's task as large as a TLS one.
        return Box::pin(tls_connection(shared, acceptor, stream, peer, times_out)).await;
    }
    // A connection that sends nothing is closed like an idle one.
    let peeked = tokio::select! {
        peeked = tokio::time::timeout(shared.header_read_timeout, first_bytes(&stream)) => peeked,
        () = shared.drain.cancelled() => return,
    };
    if let Ok(Ok(protocol)) = peeked {
        http(shared, stream, peer, protocol, times_out).await;
    }
}

/// The TLS handshake, then HTTP.
async fn tls_connection(
    shared: &Shared,
    acceptor: &TlsAcceptor,
    stream: TcpStream,
    peer: IpAddr,
    times_out: bool,
) {
    // A failed or slow handshake costs its own connection and a debug line;
    // one not done when the drain starts is dropped, as an idle connection is.
    let handshake = tokio::time::timeout(shared.handshake_timeout, tls::accept(acceptor, stream));
    let accepted = tokio::select! {
        accepted = handshake => accepted,
        () = shared.drain.cancelled() => return,
    };
    match accepted {
        Ok(Ok(Accepted::Tls(stream))) => {
            let protocol = Protocol::negotiated(stream.get_ref().1.alpn_protocol());
            http(shared, stream, peer, protocol, times_out).await;
        }
        Ok(Ok(Accepted::PlainHttp(method, path))) => {
            shared
                .proxy
                .refused_unread(method, path, StatusCode::BAD_REQUEST);
        }
        Ok(Err(error)) => tracing::debug!(%peer, %error, "TLS handshake failed"),
        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
    }
}

/// Waits for a cleartext connection's first bytes and tells its protocol by
/// them, reading nothing; an error when the client closed first.
async fn first_bytes(stream: &TcpStream) -> io::Result<Protocol> {
    let mut first = [0u8; H2_PREFACE.len()];
    match stream.peek(&mut first).await? {
        0 => Err(io::ErrorKind::UnexpectedEof.into()),
        read => Ok(Protocol::of_first_bytes(&first[..read])),
    }
}

async fn http<I>(shared: &Shared, io: I, peer: IpAddr, protocol: Protocol, times_out: bool)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let proxy = Arc::clone(&shared.proxy);
    let activity = Arc::new(Activity::default());
    let requests = Arc::clone(&activity);
    // Requests whose HTTP/1.1 head breaks a framing rule are marked for the
    // handler to refuse (see `framing`).
    let verdicts = Arc::new(framing::Verdicts::default());
    let flushes = Arc::new(Flushes::default());
    let io = flushes::Counted::new(io, Arc::clone(&flushes));
    let io = framing::Watched::new(io, Arc::clone(&verdicts), shared.max_head);
    // Made once per connection, in the boxed hyper connection with the
    // service rather than in the connection's task; each request holds a
    // pointer to it (its futures wait long, and 10,000 of them at once).
    let client = Arc::new(ClientConnection {
        client: ClientSide::new(peer, shared.tls.is_some()),
        tunnels: Tunnels::new(Arc::clone(&verdicts), Arc::clone(&activity)),
        flushes,
        socket_times_out: times_out,
    });
    let handed_over = Arc::clone(&client);
    let service = service_fn(move |mut request: hyper::Request<Incoming>| {
        let guard = requests.start();
        if let Some(refused) = verdicts.next_request() {
            request.extensions_mut().insert(refused);
        }
        let proxy = Arc::clone(&proxy);
        let client = Arc::clone(&client);
        // Only a request asking to upgrade needs the verdicts afterwards.
        let upgrading = framing::asks_upgrade(&request).then(|| Arc::clone(&verdicts));
        // An answer to a HEAD has no body, whatever its length.
        let http10 = request.version() == Version::HTTP_10 && request.method() != Method::HEAD;
        // Boxed: hyper keeps the slot of a connection's request future for
        // the connection's lifetime, so an unboxed future (a few KiB) would
        // stay allocated for every idle or streaming connection.
        Box::pin(async move {
            let mut response = proxy.handle(request, &client).await;
            if let Some(verdicts) = upgrading
                && response.status() != StatusCode::SWITCHING_PROTOCOLS
                && !verdicts.upgrade_refused()
            {
                // Bytes followed the head unread (the refused protocol's,
                // maybe): no request may come after them.
                response
                    .headers_mut()
                    .insert(CONNECTION, HeaderValue::from_static("close"));
            }
            if http10
                && !crate::response::bodyless(response.status())
                && !response.headers().contains_key(CONTENT_LENGTH)
                && response.body().size_hint().exact().is_none()
            {
                // HTTP/1.0 has no chunks: the close ends a body of no known
                // length, yet hyper, taking the answer for HTTP/1.1, would
                // add `keep-alive` for a client that asked for it. As
                // HTTP/1.0 it adds nothing and closes.
                *response.version_mut() = Version::HTTP_10;
            }
            Ok::<_, Infallible>(response.map(|body| Tracked::new(body, guard)))
        })
    });
    let io = TokioIo::new(io);
    // Boxed rather than pinned in place: in place, this future kept room for
    // the connection twice (1.6 KiB each) for the connection's whole life.
    let mut connection = match protocol {
        Protocol::Http1 => Served::Http1(Box::pin(
            shared.http1.serve_connection(io, service).with_upgrades(),
        )),
        Protocol::Http2 => Served::Http2(Box::pin(shared.http2.serve_connection(io, service))),
        Protocol::Either => Served::Either(Box::pin(
            shared.builder.serve_connection_with_upgrades(io, service),
        )),
    };
    // hyper times an HTTP/1.1 head, but not a connection that never sends
    // one, nor an idle HTTP/2 connection: those would hold their
    // `max_connections` slot for ever. The idle timer covers all three.
    // The watches are `Quiet`: the connection's every wake-up polls hyper's
    // connection, not them.
    let drain = Quiet::new(shared.drain.cancelled());
    let idle = Quiet::new(activity.idle(shared.header_read_timeout));
    let abusive = Quiet::new(activity.abusive(false));
    tokio::pin!(drain, idle, abusive);
    let mut closing = false;
    let mut told_to_go = false;
    loop {
        tokio::select! {
            result = poll_fn(|cx| connection.poll(cx)) => {
                if let Err(error) = result {
                    // Malformed requests, resets, timeouts: the client's problem, not ours.
                    tracing::debug!(%peer, error = %error, "connection ended with an error");
                }
                break;
            }
            () = &mut drain, if !closing => {
                closing = true;
                connection.graceful_shutdown();
                idle.set(Quiet::new(activity.idle(GOODBYE_GRACE)));
            }
            () = &mut idle => {
                if closing {
                    // Told to close, with nothing in flight, and still open:
                    // an HTTP/2 client that never answers the GOAWAY's ping
                    // would otherwise hold a drain for all of shutdown_grace.
                    tracing::debug!(%peer, "still open with nothing in flight after closing: dropped");
                    return;
                }
                tracing::debug!(%peer, "no request within header_read_timeout: closing");
                closing = true;
                connection.graceful_shutdown();
                idle.set(Quiet::new(activity.idle(GOODBYE_GRACE)));
            }
            () = &mut abusive => {
                let (requests, resets) = activity.resets();
                if told_to_go {
                    tracing::warn!(
                        %peer,
                        requests,
                        resets,
                        "closing a connection whose client went on resetting streams after it was told to go"
                    );
                    return;
                }
                tracing::warn!(
                    %peer,
                    requests,
                    resets,
                    "a client resets most streams as it opens them: told to go, its streams in flight go on"
                );
                told_to_go = true;
                abusive.set(Quiet::new(activity.abusive(true)));
                if !closing {
                    closing = true;
                    connection.graceful_shutdown();
                    idle.set(Quiet::new(activity.idle(GOODBYE_GRACE)));
                }
            }
        }
    }
    // hyper is done with the connection; if a handshake made it a tunnel,
    // the tunnel runs here, in the connection's task (see `tunnel`).
    drop(connection);
    if let Some(tunnel) = handed_over.tunnels.take() {
        tunnel.run().await;
    }
}

/// hyper's side of a connection, served as its protocol allows.
enum Served<'a, I, S: HttpService<Incoming>> {
    /// HTTP/1.1, upgrades allowed.
    Http1(Pin<Box<http1::UpgradeableConnection<I, S>>>),
    /// HTTP/2 (which has no `Upgrade`; WebSockets open streams of their own).
    Http2(Pin<Box<auto::Connection<'a, I, S, TokioExecutor>>>),
    /// Told by hyper-util from the first bytes; upgrades allowed.
    Either(Pin<Box<auto::UpgradeableConnection<'a, I, S, TokioExecutor>>>),
}

impl<I, S, F, B> Served<'_, I, S>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    S: HttpService<Incoming, ResBody = B, Future = F, Error = Infallible>
        + Service<Request<Incoming>, Response = Response<B>, Future = F, Error = Infallible>,
    F: Future<Output = Result<Response<B>, Infallible>> + Send + 'static,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    /// Drives the connection; ready when it has closed, or has been handed
    /// over to a tunnel.
    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        match self {
            Self::Http1(connection) => connection.as_mut().poll(cx).map_err(Into::into),
            Self::Http2(connection) => connection.as_mut().poll(cx),
            Self::Either(connection) => connection.as_mut().poll(cx),
        }
    }

    /// Finishes the requests in progress, then closes.
    fn graceful_shutdown(&mut self) {
        match self {
            Self::Http1(connection) => connection.as_mut().graceful_shutdown(),
            Self::Http2(connection) => connection.as_mut().graceful_shutdown(),
            Self::Either(connection) => connection.as_mut().graceful_shutdown(),
        }
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// What a listener does when `accept` fails: the peer's own failures are
/// skipped; anything else (EMFILE, ENOBUFS) is waited out, [`ACCEPT_BACKOFF`]
/// at a time (retried at once, it would spin: the connection stays queued),
/// and logged when it starts and when it ends, not at every retry.
pub(crate) struct AcceptErrors {
    listener: &'static str,
    failing: bool,
}

impl AcceptErrors {
    pub(crate) fn new(listener: &'static str) -> Self {
        Self {
            listener,
            failing: false,
        }
    }

    pub(crate) async fn failed(&mut self, error: &io::Error) {
        match error.kind() {
            io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionRefused => {}
            _ => {
                if !self.failing {
                    self.failing = true;
                    tracing::warn!(
                        listener = self.listener,
                        %error,
                        "accept failed; retrying every 50 ms until it works"
                    );
                }
                tokio::time::sleep(ACCEPT_BACKOFF).await;
            }
        }
    }

    pub(crate) fn accepted(&mut self) {
        if self.failing {
            self.failing = false;
            tracing::info!(listener = self.listener, "accepting again");
        }
    }
}

/// Makes `send_timeout` the socket's `TCP_USER_TIMEOUT`: the kernel ends the
/// connection once what was sent stays unacknowledged, or the client's
/// receive window stays shut, that long (nginx's `send_timeout`), and hyper
/// sees the client gone. Without it a client that stops reading but keeps its
/// connection (HTTP/1.1 has no ping) would hold its flight, and the upstream
/// request, for as long as TCP retransmits.
/// Returns whether it is set.
fn set_send_timeout(stream: &TcpStream, timeout: Duration) -> bool {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    match socket2::SockRef::from(stream).set_tcp_user_timeout(Some(timeout)) {
        Ok(()) => true,
        Err(error) => {
            tracing::debug!(%error, "could not set TCP_USER_TIMEOUT");
            false
        }
    }
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    {
        let _ = (stream, timeout);
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_bytes_tell_the_protocol() {
        assert_eq!(Protocol::of_first_bytes(H2_PREFACE), Protocol::Http2);
        assert_eq!(
            Protocol::of_first_bytes(b"POST /v1/chat HTTP/1.1\r\n"),
            Protocol::Http1
        );
        assert_eq!(Protocol::of_first_bytes(b"GET / HTTP/1.1"), Protocol::Http1);
        assert_eq!(
            Protocol::of_first_bytes(b"PRI * HTTP/1.1\r\n"),
            Protocol::Http1
        );
        // Too few bytes to tell: hyper-util reads on.
        assert_eq!(Protocol::of_first_bytes(b"PRI * HT"), Protocol::Either);
        assert_eq!(Protocol::of_first_bytes(b"P"), Protocol::Either);
    }

    #[test]
    fn alpn_tells_the_protocol() {
        assert_eq!(Protocol::negotiated(Some(b"h2")), Protocol::Http2);
        assert_eq!(Protocol::negotiated(Some(b"http/1.1")), Protocol::Http1);
        assert_eq!(Protocol::negotiated(None), Protocol::Either);
    }
}
