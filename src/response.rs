//! The response body the gateway serves, and the access log line written
//! when it ends.
//!
//! A response ends in one of four ways: its body ran to the end, it broke
//! (the upstream stopped short), the client went away first — before the
//! head or mid-body — or the gateway cut it at the end of a drain.
//! A client that left is logged and counted as status 499; an upstream
//! request still open for it, or for a cut one, is counted as cancelled.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body::{Body, Frame, SizeHint};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use tokio::time::Instant;

use crate::coalesce::Role;
use crate::coalesce::flight::Subscriber;
use crate::error::BodyError;
use crate::flushes::Written;
use crate::framing::Refused;
use crate::metrics::RouteMetrics;
use crate::pool::Dispatch;
use crate::upstream::UpstreamBody;

/// Where a response's bytes come from.
pub enum Source {
    /// A body the gateway made (errors), or none.
    Full(Option<Bytes>),
    /// An upstream body streamed to one client.
    Upstream(UpstreamBody),
    /// One reader of a shared flight.
    Subscriber(Subscriber),
}

impl Source {
    fn is_end_stream(&self) -> bool {
        match self {
            Self::Full(bytes) => bytes.is_none(),
            Self::Upstream(body) => body.is_end_stream(),
            Self::Subscriber(subscriber) => subscriber.is_end_stream(),
        }
    }
}

/// How far a request got; decides the status logged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Progress {
    /// No response head yet.
    Waiting,
    /// The head was sent; the body is streaming.
    Streaming,
    /// The body ran to its end.
    Complete,
    /// The body ended abnormally (the upstream broke).
    Broken,
    /// The client took nothing for `send_timeout` and was counted out.
    Stalled,
    /// The client was too far behind when the gateway ran short of buffer
    /// space (`max_buffered_bytes`), and was cut.
    Lagged,
    /// Still going when the drain ended (`shutdown_grace` ran out, or a
    /// second signal came), and cut.
    Cut,
}

/// What every request's [`AccessLog`] shares.
pub struct Requests {
    /// Requests whose response has not ended (`chorus_requests_active`).
    active: Gauge,
    /// The drain is over: responses that end from now on were cut by the
    /// gateway, not left by their clients.
    cut: AtomicBool,
}

impl Requests {
    /// Counted in `active`.
    pub fn new(active: Gauge) -> Self {
        Self {
            active,
            cut: AtomicBool::new(false),
        }
    }

    /// The gateway is cutting what is left: it is logged as such.
    pub fn cut(&self) {
        self.cut.store(true, Ordering::Relaxed);
    }
}

/// What is known about a request, logged once when its response ends.
pub struct AccessLog {
    started: Instant,
    /// None for a refused head whose request line had no method.
    method: Option<Method>,
    /// The path without the query (queries may carry credentials); None
    /// for a refused head whose request line had no path.
    path: Option<Box<str>>,
    route: Option<RouteMetrics>,
    role: Role,
    status: Option<StatusCode>,
    upstream_wait: Option<Duration>,
    bytes: u64,
    progress: Progress,
    /// The answer is the gateway's 503 to a request cut before its head.
    cut_before_head: bool,
    /// A bypass upstream request is open (it reached a connection: see
    /// [`crate::pool::Dispatch`]) and would be cancelled by a leave.
    upstream_open: AtomicBool,
    requests: Arc<Requests>,
}

impl AccessLog {
    /// Starts the record of a request, counted among `requests` until it ends.
    pub fn start<B>(request: &Request<B>, requests: &Arc<Requests>) -> Self {
        // What hyper read of a refused head is a placeholder: the log shows
        // the client's own request line, as far as it went.
        let (method, path) = match request.extensions().get::<Refused>() {
            Some(refused) => (refused.method.clone(), refused.path.clone()),
            // A copy: the request's own `Uri` shares the connection's read
            // buffer, and keeping it would pin that buffer (8 KiB) for as
            // long as the response streams.
            None => (
                Some(request.method().clone()),
                Some(request.uri().path().into()),
            ),
        };
        Self::new(method, path, requests)
    }

    /// The record of a request the gateway answered before it could read it
    /// as HTTP (plain HTTP on the TLS port), complete with `status`.
    pub fn unread(
        method: Option<Method>,
        path: Option<Box<str>>,
        requests: &Arc<Requests>,
        status: StatusCode,
    ) -> Self {
        let mut log = Self::new(method, path, requests);
        log.status = Some(status);
        log.progress = Progress::Complete;
        log
    }

    fn new(method: Option<Method>, path: Option<Box<str>>, requests: &Arc<Requests>) -> Self {
        requests.active.inc();
        Self {
            started: Instant::now(),
            method,
            path,
            route: None,
            role: Role::Bypass,
            status: None,
            upstream_wait: None,
            bytes: 0,
            progress: Progress::Waiting,
            cut_before_head: false,
            upstream_open: AtomicBool::new(false),
            requests: Arc::clone(requests),
        }
    }

    /// The route that serves the request.
    pub fn route(&mut self, metrics: RouteMetrics) {
        self.route = Some(metrics);
    }

    /// The role that answers the request.
    pub fn role(&mut self, role: Role) {
        self.role = role;
    }

    /// What marks a bypass request open once it reaches an upstream
    /// connection, counting it in `requests`.
    pub fn dispatch<'a>(&'a self, requests: &'a Counter) -> Dispatch<'a> {
        Dispatch::new(requests, &self.upstream_open)
    }

    /// The response head: its status and how long the upstream took.
    pub fn head(&mut self, status: StatusCode, upstream_wait: Option<Duration>) {
        self.status = Some(status);
        self.upstream_wait = upstream_wait;
        // A status without content is complete with its head: the server
        // may never poll its body.
        self.progress = if bodyless(status) {
            Progress::Complete
        } else {
            Progress::Streaming
        };
    }

    /// The response opened a tunnel (an HTTP/2 `200` to a WebSocket
    /// `CONNECT`): complete with its head, which has `status`.
    pub fn tunnelled(&mut self, status: StatusCode) {
        self.status = Some(status);
        self.progress = Progress::Complete;
    }

    /// The answer is the gateway's 503 to a request the end of a drain cut
    /// before its head came: logged as cut, however it is written.
    pub fn cut_before_head(&mut self) {
        self.cut_before_head = true;
    }

    fn end(&mut self, progress: Progress) {
        self.progress = progress;
        *self.upstream_open.get_mut() = false;
    }
}

impl Drop for AccessLog {
    fn drop(&mut self) {
        self.requests.active.dec();
        let mut progress = self.progress;
        if self.cut_before_head
            || matches!(progress, Progress::Waiting | Progress::Streaming)
                && self.requests.cut.load(Ordering::Relaxed)
        {
            progress = Progress::Cut;
        }
        let client_left = matches!(
            progress,
            Progress::Waiting | Progress::Streaming | Progress::Stalled
        );
        let status = match (self.status, progress) {
            (Some(status), _) if !client_left => status.as_u16(),
            // Cut before its head: the gateway gave up on it.
            (None, Progress::Cut) => StatusCode::SERVICE_UNAVAILABLE.as_u16(),
            _ => 499,
        };
        let route = self.route.as_ref().map_or("", |metrics| metrics.name());
        if let Some(metrics) = &self.route {
            metrics.response(status);
            if (client_left || progress == Progress::Cut) && *self.upstream_open.get_mut() {
                metrics.upstream_cancelled.inc();
            }
        }
        let upstream_ms = self.upstream_wait.map(millis);
        let outcome = match progress {
            Progress::Waiting => "client left before the response",
            Progress::Streaming => "client left mid-body",
            Progress::Complete => "complete",
            Progress::Broken => "upstream broke mid-body",
            Progress::Stalled => "client took nothing for send_timeout",
            Progress::Lagged => "client too far behind with buffers full",
            Progress::Cut => "cut at shutdown",
        };
        tracing::info!(
            route,
            method = self.method.as_ref().map(tracing::field::display),
            path = self.path.as_deref(),
            status,
            role = self.role.as_str(),
            upstream_ms,
            bytes = self.bytes,
            ms = millis(self.started.elapsed()),
            outcome,
            "request"
        );
    }
}

/// Whether a response with `status` never has a body (RFC 9110 §6.4.1).
pub fn bodyless(status: StatusCode) -> bool {
    status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
}

/// Milliseconds with microsecond precision, for log lines.
fn millis(duration: Duration) -> f64 {
    (duration.as_secs_f64() * 1e6).round() / 1e3
}

/// The body of every response the gateway serves.
pub struct ResponseBody {
    source: Source,
    log: AccessLog,
    written: Written,
    /// An upstream break, held until the bytes before it are written.
    held: Option<BodyError>,
    /// An event stream that has given nothing yet: not said to be empty
    /// before it is polled, or hyper would frame it with `Content-Length:
    /// 0`, which event streams never carry (they reach HTTP/1.1 clients
    /// chunked). Once it has given a chunk the framing is settled, and its
    /// end may come with its last chunk.
    open_ended: bool,
}

impl ResponseBody {
    /// A body from `source`, logged by `log` when it ends; `written` says
    /// when what it gave has left; `open_ended` for an event stream.
    pub fn new(source: Source, mut log: AccessLog, written: Written, open_ended: bool) -> Self {
        // An empty body may never be polled: it is complete as it stands.
        if source.is_end_stream() {
            log.end(Progress::Complete);
        }
        Self {
            source,
            log,
            written,
            held: None,
            open_ended,
        }
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = &mut *self;
        this.written.polled();
        let polled = match this.held.take() {
            Some(error) => Poll::Ready(Some(Err(error))),
            None => match &mut this.source {
                Source::Full(bytes) => {
                    Poll::Ready(bytes.take().map(|bytes| Ok(Frame::data(bytes))))
                }
                Source::Upstream(body) => Pin::new(body).poll_frame(cx),
                Source::Subscriber(subscriber) => Pin::new(subscriber).poll_frame(cx),
            },
        };
        // An upstream break waits for the bytes before it to be written:
        // ending the response drops what the server holds unwritten.
        let polled = match polled {
            Poll::Ready(Some(Err(error)))
                if error.is_upstream_break() && this.written.poll(cx).is_pending() =>
            {
                this.held = Some(error);
                return Poll::Pending;
            }
            polled => polled,
        };
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.log.bytes += data.len() as u64;
                    this.written.gave();
                    this.open_ended = false;
                }
                // The server stops polling once the body says it is done.
                if this.source.is_end_stream() {
                    this.log.end(Progress::Complete);
                }
            }
            Poll::Ready(Some(Err(BodyError::Stalled(_)))) => this.log.end(Progress::Stalled),
            Poll::Ready(Some(Err(BodyError::Lagged))) => this.log.end(Progress::Lagged),
            Poll::Ready(Some(Err(BodyError::Shutdown))) => this.log.end(Progress::Cut),
            Poll::Ready(Some(Err(_))) => this.log.end(Progress::Broken),
            Poll::Ready(None) => this.log.end(Progress::Complete),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        !self.open_ended && self.source.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        match &self.source {
            Source::Full(Some(bytes)) => SizeHint::with_exact(bytes.len() as u64),
            Source::Full(None) => SizeHint::with_exact(0),
            // The length travels in the headers, as `headers::to_downstream`
            // left them: hyper would put back an event stream's dropped
            // length from an exact hint.
            Source::Upstream(_) => SizeHint::default(),
            Source::Subscriber(subscriber) => subscriber.size_hint(),
        }
    }
}
