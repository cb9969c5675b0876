//! A route's upstream connections, kept between requests.
//!
//! An HTTP/1.1 connection carries one request at a time: a request takes the
//! most recently used idle connection (or makes one), and its response body
//! gives the connection back once it has been read to the end. A body dropped
//! before its end takes the connection down with it, which is how a
//! cancelled flight stops the upstream. The list is plain: one lock, no
//! hashing (every connection of a pool goes to the same place), no task per
//! request; a sweep closes connections unused for [`IDLE_FOR`].
//!
//! The upstream closes idle connections too, and a request can meet that
//! close on the way (the keep-alive race, a 502 behind many proxies). A
//! request that was not written goes on another connection; one the upstream
//! closed or reset its connection under before any answer, soon after it was
//! sent, goes once more on a new connection (unless its method is not
//! idempotent and the connection had been used moments before); so does one
//! whose HTTP/2 stream the upstream refused (`REFUSED_STREAM`: not processed).
//!
//! An HTTP/2 connection (an `https` upstream that offers it by ALPN) carries
//! many requests at once, so it is shared, up to [`MAX_STREAMS`] streams;
//! past that another is opened. Such a connection is made by one request at
//! a time, and so is the first to an `https` upstream (which may turn out to
//! speak HTTP/2): the requests that find none wait for it and share it, where
//! each would otherwise make one, a handshake each, and the pool keep one.
//! Its window is as large as all its streams' together, so that no stream
//! left unread holds up the others; one whose stream times out takes no
//! new streams.
//!
//! Each connection runs in a task of its own. Driving an HTTP/1.1
//! connection from the task that reads its body saves that hand-off, but
//! costs more than it saves: hyper's body channel wakes the other side on
//! every chunk, and with both sides in one task every chunk polled the task
//! twice (bench/instructions.sh, README).

use std::collections::VecDeque;
use std::future::poll_fn;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::Duration;

use bytes::Bytes;
use http::header::HOST;
use http::uri::{Parts, PathAndQuery, Scheme};
use http::{Request, Response, Uri};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_rustls::{HttpsConnector, MaybeHttpsStream};
use hyper_util::client::legacy::connect::{Connection, HttpConnector};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use prometheus_client::metrics::counter::Counter;
use rustls::ClientConfig;
use tokio::net::TcpStream;
use tokio::time::Instant;
use tower_service::Service;

use crate::error::GatewayError;
use crate::gather::Gathered;
use crate::heard::{Heard, Listening};

type RequestBody = Full<Bytes>;

/// How long an unused connection is kept.
pub const IDLE_FOR: Duration = Duration::from_secs(90);
/// Unused HTTP/1.1 connections kept per route. A burst of distinct streams
/// opens a connection each: after 5,000, keeping every one held 5,000 file
/// descriptors and 68 MB more (124 MB of RSS against 56 MB, 25 s later) for
/// the next 90 s. nginx keeps what its `keepalive` says, Pingora 128.
pub const MAX_IDLE: usize = 1024;
/// Streams one HTTP/2 connection carries before another is opened. hyper
/// queues streams past the upstream's own limit instead, and behind a long
/// stream a queued request waits for it to end; RFC 9113 (§6.5.2) asks
/// every peer to allow at least 100.
pub const MAX_STREAMS: usize = 100;
/// The receive window of each HTTP/2 stream. The connection's is this for
/// every stream it may carry: a stream whose client stops reading (one to
/// one, its body read at the client's pace) fills its own window and no
/// more, never the connection's, which every other stream on it needs.
/// (hyper's defaults, 2 MiB a stream and 5 MiB a connection, let three such
/// streams stall every other.)
const STREAM_WINDOW: u32 = 1 << 20;
/// Set in an HTTP/2 connection's count of streams once a stream on it
/// timed out: it takes no new ones (see [`Stream::retire`]).
const RETIRED: usize = 1 << (usize::BITS - 1);
/// The largest response head an HTTP/2 upstream may send (h2's default is
/// 16 KiB): about what hyper's HTTP/1.1 client reads (its largest read
/// buffer, 408 KiB), so that a head does not pass over one and fail over
/// the other.
const MAX_RESPONSE_HEAD: u32 = 400 * 1024;
/// How often unused connections are checked for age and for a close by the upstream.
const SWEEP_EVERY: Duration = Duration::from_secs(15);
/// A kept connection unused for less than this is not closed by the
/// upstream's keep-alive timeout (those are seconds long).
const CLOSE_AFTER: Duration = Duration::from_millis(100);
/// A kept connection closed under a request sooner than this after it was
/// sent is taken for the keep-alive race, and the request is sent again. A
/// later failure is the upstream's own (it may have acted on the request),
/// and is reported.
const CLOSE_RACE: Duration = Duration::from_secs(1);

/// The connections to one upstream.
pub struct Pool {
    connector: HttpsConnector<HttpConnector>,
    /// The same without HTTP/2 (no ALPN, which means HTTP/1.1): for
    /// WebSocket handshakes, which HTTP/2 would not carry.
    http1_connector: HttpsConnector<HttpConnector>,
    /// The upstream's scheme and authority: where every connection goes.
    target: Uri,
    /// Bounds TCP and TLS together (`HttpConnector`'s own timeout covers TCP only).
    connect_timeout: Duration,
    idle: Mutex<Idle>,
    /// What the upstream's connections speak, as the last one made told:
    /// [`UNKNOWN`] until the first one to an `https` upstream.
    speaks: AtomicU8,
    /// The turn to make a connection that may be shared (an async lock held
    /// while connecting, which is its purpose); holds the last such
    /// attempt's failure and when it came, which the requests that waited
    /// for it get too.
    connecting: tokio::sync::Mutex<Option<(Instant, GatewayError)>>,
}

/// Values of [`Pool::speaks`].
const UNKNOWN: u8 = 0;
const HTTP1: u8 = 1;
const HTTP2: u8 = 2;

#[derive(Default)]
struct Idle {
    /// Unused HTTP/1.1 connections and when each was put back, the latest
    /// last; at most [`MAX_IDLE`].
    http1: VecDeque<(Http1, Instant)>,
    /// The shared HTTP/2 connections.
    http2: Vec<Http2>,
    /// A sweep task is running.
    sweeping: bool,
}

/// A connection ready to carry one request.
enum Checkout {
    Http1(Http1),
    /// A shared connection, the stream taken on it, and for one already
    /// open, how long it had carried no stream (zero if it carried some).
    Http2(http2::SendRequest<RequestBody>, Option<Duration>, Stream),
}

/// An HTTP/2 connection shared by requests.
struct Http2 {
    sender: http2::SendRequest<RequestBody>,
    /// Streams open on it (responses still being read), with [`RETIRED`]
    /// set once it takes no more.
    streams: Arc<AtomicUsize>,
    /// When a request last took it.
    used: Instant,
}

impl Http2 {
    /// Whether it is open and can take another stream.
    fn has_room(&self) -> bool {
        self.sender.is_ready() && self.streams.load(Ordering::Relaxed) < MAX_STREAMS
    }

    /// Whether it may take streams again once some end: open, not retired.
    fn is_kept(&self) -> bool {
        self.sender.is_ready() && self.streams.load(Ordering::Relaxed) & RETIRED == 0
    }
}

/// One of an HTTP/2 connection's streams, counted until its response is
/// dropped.
pub struct Stream(Arc<AtomicUsize>);

impl Stream {
    fn take(streams: &Arc<AtomicUsize>) -> Self {
        streams.fetch_add(1, Ordering::Relaxed);
        Self(Arc::clone(streams))
    }

    /// Gives no new stream to this one's connection, which stays open for
    /// the streams it carries. Called when a stream times out: the upstream
    /// may have stopped reading the connection (a wedged or black-holed
    /// one), and every stream sent on it would time out the same way, where
    /// a new connection may be answered at once.
    pub fn retire(&self) {
        self.0.fetch_or(RETIRED, Ordering::Relaxed);
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// What a response holds of its connection while its body is read.
pub enum Held {
    /// An HTTP/1.1 connection, given back once the body has ended.
    Http1(Http1),
    /// A stream of a shared HTTP/2 connection.
    Http2(Stream),
}

/// An HTTP/1.1 connection, whose bytes a task of its own moves.
pub struct Http1 {
    sender: http1::SendRequest<RequestBody>,
    /// For a kept connection, how long it sat unused before this request:
    /// the upstream may have closed it just as the request was sent (then
    /// the request goes again). None for a new connection.
    unused_for: Option<Duration>,
    /// Whether any byte of an answer came: then it never goes again.
    heard: Heard,
}

impl Http1 {
    /// Whether it can take another request now (never once it is closed).
    fn is_reusable(&self) -> bool {
        self.sender.is_ready()
    }

    async fn request(&mut self, request: Request<RequestBody>) -> Result<Response<Incoming>, Sent> {
        self.heard.clear();
        self.sender
            .try_send_request(request)
            .await
            .map_err(|mut error| match error.take_message() {
                Some(request) => Sent::Not(Box::new(request), error.into_error()),
                None => Sent::Failed(error.into_error()),
            })
    }
}

/// How a request on an HTTP/1.1 connection failed.
enum Sent {
    /// Before it was written: it can go on another connection.
    Not(Box<Request<RequestBody>>, hyper::Error),
    /// After.
    Failed(hyper::Error),
}

/// When a response head must have come: `first_byte_timeout` after the
/// request was handed to the pool.
#[derive(Clone, Copy)]
pub struct FirstByte {
    timeout: Duration,
    deadline: Instant,
}

impl FirstByte {
    pub fn from_now(timeout: Duration) -> Self {
        Self {
            timeout,
            deadline: Instant::now() + timeout,
        }
    }

    /// What `waiting` gets, if it comes in time.
    pub async fn within<T>(
        self,
        waiting: impl Future<Output = Result<T, GatewayError>>,
    ) -> Result<T, GatewayError> {
        tokio::time::timeout_at(self.deadline, waiting)
            .await
            .unwrap_or(Err(self.expired()))
    }

    fn expired(self) -> GatewayError {
        GatewayError::FirstByteTimeout(self.timeout)
    }
}

/// Marks the moment a request is handed to an upstream connection (or
/// fails before that), once: it is counted in `requests` then, and `sent`
/// says so afterwards. A request whose client left while its connection
/// was still being made never reached the upstream, and is neither counted
/// nor cancelled.
pub struct Dispatch<'a> {
    requests: &'a Counter,
    sent: &'a AtomicBool,
}

impl<'a> Dispatch<'a> {
    pub fn new(requests: &'a Counter, sent: &'a AtomicBool) -> Self {
        Self { requests, sent }
    }

    pub fn mark(&self) {
        if !self.sent.swap(true, Ordering::Relaxed) {
            self.requests.inc();
        }
    }
}

impl Pool {
    /// A pool of connections to `target` (scheme and authority), over TLS
    /// with `tls` for `https`.
    pub fn new(tls: ClientConfig, target: Uri, connect_timeout: Duration) -> Self {
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(connect_timeout));
        let http1_connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls.clone())
            .https_or_http()
            .enable_http1()
            .wrap_connector(http.clone());
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .enable_http2()
            .wrap_connector(http);
        let speaks = if target.scheme() == Some(&Scheme::HTTPS) {
            UNKNOWN
        } else {
            HTTP1
        };
        Self {
            connector,
            http1_connector,
            target,
            connect_timeout,
            idle: Mutex::default(),
            speaks: AtomicU8::new(speaks),
            connecting: tokio::sync::Mutex::new(None),
        }
    }

    /// Sends a request whose URI is in origin form (`/path?query`), marking
    /// `dispatch` when it is handed to a connection. Returns the response
    /// and what its body holds of the connection. The caller bounds the
    /// whole by `first_byte` ([`FirstByte::within`]); a shared connection
    /// that lets the time pass is retired here.
    pub async fn send(
        self: &Arc<Self>,
        mut request: Request<RequestBody>,
        dispatch: &Dispatch<'_>,
        first_byte: FirstByte,
    ) -> Result<(Response<Incoming>, Held), GatewayError> {
        let mut fresh = false;
        let mut sent_again = false;
        loop {
            match self.checkout(fresh).await? {
                Checkout::Http2(mut sender, unused_for, stream) => {
                    // An HTTP/2 upstream may refuse a stream it did not
                    // process, or close under it; the request is kept to be
                    // sent again (beside a remote TLS round trip, the copy
                    // costs nothing).
                    let again = (!sent_again).then(|| copy(&request));
                    let origin = std::mem::take(request.uri_mut());
                    *request.uri_mut() = self.absolute(&origin);
                    // `:authority` says it: nginx 1.22 refuses a
                    // request that also has `Host` (RFC 9113 §8.3.1).
                    let host = request.headers_mut().remove(HOST);
                    let sent_at = Instant::now();
                    dispatch.mark();
                    let answer = tokio::time::timeout_at(
                        first_byte.deadline,
                        sender.try_send_request(request),
                    );
                    let mut error = match answer.await {
                        Ok(Ok(response)) => return Ok((response, Held::Http2(stream))),
                        Ok(Err(error)) => error,
                        Err(_) => {
                            stream.retire();
                            return Err(first_byte.expired());
                        }
                    };
                    match (error.take_message(), again) {
                        // The shared connection closed (a GOAWAY, say) before
                        // the request went out: it goes on a new one.
                        (Some(mut unsent), _) if unused_for.is_some() => {
                            *unsent.uri_mut() = origin;
                            if let Some(host) = host {
                                unsent.headers_mut().insert(HOST, host);
                            }
                            request = unsent;
                        }
                        // Refused, or past the last stream of a graceful
                        // GOAWAY: by RFC 9113 (§8.7) the upstream did nothing
                        // with the request, which goes once more.
                        (None, Some(again)) if unprocessed(error.error()) => {
                            tracing::debug!(error = %error.error(), "the upstream did not process a stream; sending it again");
                            request = again;
                            sent_again = true;
                        }
                        // Closed under it, as a kept HTTP/1.1 connection can
                        // be (below), and sent again on the same terms.
                        (None, Some(again))
                            if closed_under(error.error())
                                && sent_at.elapsed() < CLOSE_RACE
                                && unused_for.is_some_and(|unused| {
                                    unused >= CLOSE_AFTER || again.method().is_idempotent()
                                }) =>
                        {
                            tracing::debug!(error = %error.error(), "a kept upstream connection was closed under a stream; sending it again");
                            request = again;
                            sent_again = true;
                            fresh = true;
                        }
                        (_, _) => {
                            return Err(GatewayError::UpstreamFailed(Arc::new(error.into_error())));
                        }
                    }
                }
                Checkout::Http1(mut connection) => {
                    // A kept connection may turn out dead only once the
                    // request is written, so the request is kept to be sent
                    // again; but not from one used moments ago, since
                    // upstreams close connections only after seconds unused
                    // (and a busy connection pays nothing for the copy).
                    // An idempotent request may go twice whatever happened
                    // (RFC 9110 §9.2.2), so it is kept all the same, for an
                    // upstream that closes sooner.
                    let again = match connection.unused_for {
                        Some(unused)
                            if unused >= CLOSE_AFTER || request.method().is_idempotent() =>
                        {
                            Some(copy(&request))
                        }
                        Some(_) | None => None,
                    };
                    let sent_at = Instant::now();
                    dispatch.mark();
                    match (connection.request(request).await, again) {
                        (Ok(response), _) => return Ok((response, Held::Http1(connection))),
                        // A kept connection the upstream closed as the request
                        // went out: the request was not written, so another
                        // connection may carry it.
                        (Err(Sent::Not(unsent, _)), _) if connection.unused_for.is_some() => {
                            request = *unsent;
                        }
                        // The upstream closed or reset a kept connection just
                        // as the request reached it (its keep-alive timeout,
                        // or a restart): so soon, and with no byte of an
                        // answer, it did not act on the request, which goes
                        // once more, on a new connection.
                        (Err(Sent::Failed(error)), Some(again))
                            if closed_under(&error)
                                && sent_at.elapsed() < CLOSE_RACE
                                && !connection.heard.anything() =>
                        {
                            tracing::debug!(%error, "a kept upstream connection was closed under a request; sending it again");
                            request = again;
                            fresh = true;
                        }
                        (Err(Sent::Not(_, error) | Sent::Failed(error)), _) => {
                            return Err(GatewayError::UpstreamFailed(Arc::new(error)));
                        }
                    }
                }
            }
        }
    }

    /// Puts a connection whose response has ended back for the next request.
    pub fn check_in(self: &Arc<Self>, mut connection: Http1) {
        if connection.sender.is_closed() {
            return;
        }
        if !connection.is_reusable() {
            // Its task has not yet seen the end of the body it delivered:
            // the connection is put back once it has.
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                let pool = Arc::clone(self);
                runtime.spawn(async move {
                    if connection.sender.ready().await.is_ok() {
                        pool.check_in(connection);
                    }
                });
            }
            return;
        }
        let mut idle = self.lock();
        if idle.http1.len() >= MAX_IDLE {
            // The least recently used goes: the next to be closed by the
            // upstream's own idle timeout, and the last to be taken here.
            idle.http1.pop_front();
        }
        idle.http1.push_back((connection, Instant::now()));
        self.keep_swept(&mut idle);
    }

    /// The shared HTTP/2 connection, an unused HTTP/1.1 one, or (always
    /// when `fresh`) a new one.
    async fn checkout(self: &Arc<Self>, fresh: bool) -> Result<Checkout, GatewayError> {
        if !fresh && let Some(kept) = self.kept() {
            return Ok(kept);
        }
        // Boxed: connecting (TCP, TLS, either handshake) is a large future,
        // and a rare one; unboxed, every request would carry room for it.
        if fresh || self.speaks.load(Ordering::Relaxed) == HTTP1 {
            Box::pin(self.connect()).await
        } else {
            Box::pin(self.connect_shared()).await
        }
    }

    /// A connection that may be shared, made by one request at a time: a
    /// request that waited for another's takes a stream on it, or gets its
    /// failure; once the upstream turns out to speak HTTP/1.1, each makes
    /// its own.
    async fn connect_shared(self: &Arc<Self>) -> Result<Checkout, GatewayError> {
        let waited_from = Instant::now();
        let mut last_failure = self.connecting.lock().await;
        if let Some(kept) = self.kept() {
            return Ok(kept);
        }
        if let Some((at, error)) = &*last_failure
            && *at >= waited_from
        {
            return Err(error.clone());
        }
        if self.speaks.load(Ordering::Relaxed) == HTTP1 {
            drop(last_failure);
            return self.connect().await;
        }
        let made = self.connect().await;
        if let Err(error) = &made {
            *last_failure = Some((Instant::now(), error.clone()));
        }
        made
    }

    /// A shared HTTP/2 connection with a stream to spare, or the latest
    /// unused HTTP/1.1 one that is still open.
    fn kept(&self) -> Option<Checkout> {
        let mut idle = self.lock();
        idle.http2.retain(Http2::is_kept);
        let spare = idle
            .http2
            .iter_mut()
            .find(|connection| connection.has_room());
        if let Some(connection) = spare {
            let unused = match connection.streams.load(Ordering::Relaxed) {
                0 => connection.used.elapsed(),
                _ => Duration::ZERO,
            };
            connection.used = Instant::now();
            let stream = Stream::take(&connection.streams);
            return Some(Checkout::Http2(
                connection.sender.clone(),
                Some(unused),
                stream,
            ));
        }
        while let Some((mut connection, since)) = idle.http1.pop_back() {
            let unused = since.elapsed();
            if unused < IDLE_FOR && connection.is_reusable() {
                connection.unused_for = Some(unused);
                return Some(Checkout::Http1(connection));
            }
        }
        None
    }

    /// Sends a request that asks to upgrade its connection (a WebSocket
    /// handshake) on a new HTTP/1.1 connection, never kept: after a `101`
    /// the connection is the response's upgrade's, and after anything else
    /// it closes with the response's body.
    pub async fn upgrade(
        &self,
        request: Request<RequestBody>,
        dispatch: &Dispatch<'_>,
    ) -> Result<Response<Incoming>, GatewayError> {
        let io = Box::pin(self.dial(&self.http1_connector)).await?;
        let (mut sender, connection) = Box::pin(http1::handshake(io)).await.map_err(failed)?;
        tokio::spawn(async move {
            if let Err(error) = connection.with_upgrades().await {
                tracing::debug!(%error, "upstream upgrade connection ended with an error");
            }
        });
        dispatch.mark();
        sender.send_request(request).await.map_err(failed)
    }

    /// A new connection to the upstream (TCP, and TLS for `https`).
    async fn dial(
        &self,
        connector: &HttpsConnector<HttpConnector>,
    ) -> Result<Gathered<MaybeHttpsStream<TokioIo<TcpStream>>>, GatewayError> {
        let mut connector = connector.clone();
        poll_fn(|cx| connector.poll_ready(cx))
            .await
            .map_err(|error| GatewayError::from_connect(error, self.connect_timeout))?;
        let connecting = connector.call(self.target.clone());
        match tokio::time::timeout(self.connect_timeout, connecting).await {
            Ok(Ok(stream)) => Ok(Gathered::new(stream)),
            Ok(Err(error)) => Err(GatewayError::from_connect(error, self.connect_timeout)),
            Err(_) => Err(GatewayError::ConnectTimeout(self.connect_timeout)),
        }
    }

    async fn connect(self: &Arc<Self>) -> Result<Checkout, GatewayError> {
        let io = self.dial(&self.connector).await?;
        let h2 = io.connected().is_negotiated_h2();
        self.speaks
            .store(if h2 { HTTP2 } else { HTTP1 }, Ordering::Relaxed);
        if h2 {
            // Both handshakes are boxed: each holds the stream (with TLS, a
            // large one) beside the stream connecting held, and a burst of
            // new connections would keep the pages of 6.4 KiB each.
            let handshake = http2::Builder::new(TokioExecutor::new())
                .timer(TokioTimer::new())
                .max_header_list_size(MAX_RESPONSE_HEAD)
                .initial_stream_window_size(STREAM_WINDOW)
                .initial_connection_window_size(STREAM_WINDOW * MAX_STREAMS as u32)
                .handshake(io);
            let (sender, connection) = Box::pin(handshake).await.map_err(failed)?;
            tokio::spawn(async move {
                if let Err(error) = connection.await {
                    tracing::debug!(%error, "upstream HTTP/2 connection ended with an error");
                }
            });
            let streams = Arc::new(AtomicUsize::new(0));
            let stream = Stream::take(&streams);
            let mut idle = self.lock();
            // One made beside a spare one (a request that had to go on a
            // new connection) is not kept: it closes when its stream ends.
            if !idle.http2.iter().any(Http2::has_room) {
                idle.http2.push(Http2 {
                    sender: sender.clone(),
                    streams,
                    used: Instant::now(),
                });
                self.keep_swept(&mut idle);
            }
            return Ok(Checkout::Http2(sender, None, stream));
        }
        let heard = Heard::default();
        let io = Listening::new(io, heard.clone());
        let (sender, connection) = Box::pin(http1::handshake(io)).await.map_err(failed)?;
        // Boxed: awaited in place, the connection took room twice in its
        // task (3.7 KiB a connection, DHAT), for as long as it stays open.
        let connection = Box::pin(connection);
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%error, "upstream connection ended with an error");
            }
        });
        Ok(Checkout::Http1(Http1 {
            sender,
            unused_for: None,
            heard,
        }))
    }

    /// `/path` on the upstream's scheme and authority, as HTTP/2 sends it.
    fn absolute(&self, origin: &Uri) -> Uri {
        let mut parts = Parts::from(self.target.clone());
        parts.path_and_query = Some(
            origin
                .path_and_query()
                .cloned()
                .unwrap_or_else(|| PathAndQuery::from_static("/")),
        );
        Uri::from_parts(parts).unwrap_or_else(|_| origin.clone())
    }

    /// Starts the sweep if it is not running (it stops when nothing is left to sweep).
    fn keep_swept(self: &Arc<Self>, idle: &mut Idle) {
        if idle.sweeping {
            return;
        }
        // A connection put back while the runtime shuts down is not swept:
        // it is closed with everything else.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            idle.sweeping = true;
            runtime.spawn(sweep(Arc::downgrade(self)));
        }
    }

    /// Closes connections unused for too long or closed by the upstream;
    /// false once none is left.
    fn sweep(&self) -> bool {
        let mut idle = self.lock();
        idle.http1.retain_mut(|(connection, since)| {
            since.elapsed() < IDLE_FOR && connection.is_reusable()
        });
        // Requests still running on a connection let go here keep it open
        // until they end.
        idle.http2.retain(|connection| {
            !connection.sender.is_closed() && connection.used.elapsed() < IDLE_FOR
        });
        idle.sweeping = !idle.http1.is_empty() || !idle.http2.is_empty();
        idle.sweeping
    }

    fn lock(&self) -> MutexGuard<'_, Idle> {
        // Nothing panics while holding the lock; if something did, the list
        // of idle connections is still a list of connections.
        self.idle.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

fn failed(error: hyper::Error) -> GatewayError {
    GatewayError::UpstreamFailed(Arc::new(error))
}

/// The same request again; its parts are shared, not copied, except the headers.
fn copy(request: &Request<RequestBody>) -> Request<RequestBody> {
    let mut again = Request::new(request.body().clone());
    *again.method_mut() = request.method().clone();
    *again.uri_mut() = request.uri().clone();
    *again.version_mut() = request.version();
    *again.headers_mut() = request.headers().clone();
    again
}

/// Whether a request failed because its connection closed or was reset
/// before any response came: an end of input (hyper's incomplete message,
/// or TLS's without `close_notify`) or a reset, of the connection or under
/// an HTTP/2 stream.
fn closed_under(error: &hyper::Error) -> bool {
    use std::io::ErrorKind::{BrokenPipe, ConnectionAborted, ConnectionReset, UnexpectedEof};
    let source = std::error::Error::source(error);
    let io = source
        .and_then(|source| source.downcast_ref::<std::io::Error>())
        .or_else(|| h2_error(error).and_then(h2::Error::get_io));
    error.is_incomplete_message()
        || io.is_some_and(|io| {
            matches!(
                io.kind(),
                ConnectionReset | BrokenPipe | ConnectionAborted | UnexpectedEof
            )
        })
}

/// Whether the upstream did not process an HTTP/2 stream: it reset it with
/// `REFUSED_STREAM`, or its graceful GOAWAY (`NO_ERROR`) came before the
/// stream was sent or named an earlier last stream. h2 gives the GOAWAY's
/// error to those streams only; one it did process, cut by the close that
/// follows, fails with a broken pipe instead.
fn unprocessed(error: &hyper::Error) -> bool {
    h2_error(error).is_some_and(|h2| {
        let refused = h2.is_reset() && h2.reason() == Some(h2::Reason::REFUSED_STREAM);
        let gone_away = h2.is_go_away() && h2.reason() == Some(h2::Reason::NO_ERROR);
        h2.is_remote() && (refused || gone_away)
    })
}

fn h2_error(error: &hyper::Error) -> Option<&h2::Error> {
    std::error::Error::source(error).and_then(|source| source.downcast_ref::<h2::Error>())
}

async fn sweep(pool: Weak<Pool>) {
    loop {
        tokio::time::sleep(SWEEP_EVERY).await;
        let Some(pool) = pool.upgrade() else { return };
        if !pool.sweep() {
            return;
        }
    }
}

#[cfg(test)]
#[path = "pool_tests.rs"]
mod tests;
