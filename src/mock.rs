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

use std::borrow::Cow;
use std::convert::Infallible;
use std::error::Error as StdError;
use std::fmt::{self, Write as _};
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll, ready};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{BufMut, Bytes, BytesMut};
use http::{HeaderValue, Method, Request, Response, StatusCode, Version, header};
use http_body::{Body, Frame, SizeHint};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use serde::Deserialize;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio::time::{Instant, Sleep};
use tokio_util::sync::CancellationToken;

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

/// Counters, shared with whoever started the mock (tests read them directly).
///
/// Every request to a `/v1/...` path is counted in `requests` and `active` on
/// arrival, and leaves `active` exactly once as `completed`, `disconnects` or
/// `broken`, so `requests == active + completed + disconnects + broken` at rest.
/// `active` is decremented before the outcome counter is incremented: whoever sees
/// the outcome also sees the request gone from `active`.
#[derive(Debug, Default)]
pub struct MockStats {
    requests: AtomicU64,
    completed: AtomicU64,
    disconnects: AtomicU64,
    broken: AtomicU64,
    events_sent: AtomicU64,
    active: AtomicU64,
    connections: AtomicU64,
    /// Wall-clock nanoseconds of the latest disconnect (0: none yet).
    last_disconnect_ns: AtomicU64,
    /// Tasks inside [`MockStats::wait_for`]; counter updates skip the `Notify`
    /// (which takes a lock) while nobody waits.
    waiters: AtomicUsize,
    changed: Notify,
}

impl MockStats {
    /// Completion requests received (any `/v1/*` endpoint, not `/stats` or `/echo`).
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::SeqCst)
    }

    /// Responses whose body was sent to the end.
    pub fn completed(&self) -> u64 {
        self.completed.load(Ordering::SeqCst)
    }

    /// Requests dropped before their response ended: the client (or gateway) went
    /// away, whether before the response head or mid-body.
    pub fn disconnects(&self) -> u64 {
        self.disconnects.load(Ordering::SeqCst)
    }

    /// Responses deliberately aborted by a `break_after` override.
    pub fn broken(&self) -> u64 {
        self.broken.load(Ordering::SeqCst)
    }

    /// SSE events written, all requests together.
    pub fn events_sent(&self) -> u64 {
        self.events_sent.load(Ordering::SeqCst)
    }

    /// Requests in progress: waiting for their first byte or streaming.
    pub fn active(&self) -> u64 {
        self.active.load(Ordering::SeqCst)
    }

    /// TCP connections accepted.
    pub fn connections(&self) -> u64 {
        self.connections.load(Ordering::SeqCst)
    }

    /// When the latest disconnect was counted, in wall-clock nanoseconds since
    /// the Unix epoch; 0 before the first. Benchmarks compare it with the time a
    /// client left to learn how long the upstream took to see its request cancelled.
    pub fn last_disconnect_ns(&self) -> u64 {
        self.last_disconnect_ns.load(Ordering::SeqCst)
    }

    /// All counters as one JSON object (the body of `GET /stats`):
    /// `{"requests":..,"completed":..,"disconnects":..,"events_sent":..,"active":..,"connections":..,"broken":..,"last_disconnect_ns":..}`.
    pub fn snapshot_json(&self) -> String {
        format!(
            r#"{{"requests":{},"completed":{},"disconnects":{},"events_sent":{},"active":{},"connections":{},"broken":{},"last_disconnect_ns":{}}}"#,
            self.requests(),
            self.completed(),
            self.disconnects(),
            self.events_sent(),
            self.active(),
            self.connections(),
            self.broken(),
            self.last_disconnect_ns(),
        )
    }

    /// Waits until `condition` holds, re-checking it on every counter change.
    /// Returns whether it held before `timeout` ran out.
    pub async fn wait_for(&self, condition: impl Fn(&Self) -> bool, timeout: Duration) -> bool {
        let deadline = Instant::now().checked_add(timeout);
        self.waiters.fetch_add(1, Ordering::SeqCst);
        let _waiting = WaiterGuard(&self.waiters);
        loop {
            let notified = self.changed.notified();
            let mut notified = std::pin::pin!(notified);
            // Register before checking, so a change between the check and the await
            // still wakes us.
            notified.as_mut().enable();
            if condition(self) {
                return true;
            }
            match deadline {
                Some(deadline) => {
                    if tokio::time::timeout_at(deadline, notified).await.is_err() {
                        return condition(self);
                    }
                }
                None => notified.await,
            }
        }
    }

    fn bump(&self, counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::SeqCst);
        self.wake_waiters();
    }

    fn wake_waiters(&self) {
        // SeqCst on both sides: either the waiter sees our update when it checks its
        // condition, or we see its registration here.
        if self.waiters.load(Ordering::SeqCst) > 0 {
            self.changed.notify_waiters();
        }
    }
}

struct WaiterGuard<'a>(&'a AtomicUsize);

impl Drop for WaiterGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Largest request body read; the mock only needs a few fields of it.
const MAX_REQUEST_BODY: usize = 16 << 20;
/// Largest `mock.tokens`, so that a plain response stays a few megabytes.
const MAX_TOKENS: usize = 1_000_000;
/// Largest `mock.interval_ms` and `mock.first_byte_delay_ms` (one day).
const MAX_DELAY_MS: u64 = 24 * 60 * 60 * 1000;
/// h2c streams per connection: high, so a gateway multiplexing on one connection
/// is not throttled by the mock (hyper's default is 200).
const H2_MAX_CONCURRENT_STREAMS: u32 = 100_000;
/// Pause after an accept error such as EMFILE, instead of spinning on it.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// The words that tokens cycle through, each followed by a space.
const WORDS: &[&str] = &[
    "Hello",
    "from",
    "the",
    "chorus",
    "mock",
    "upstream.",
    "Every",
    "identical",
    "request",
    "shares",
    "one",
    "stream",
    "of",
    "tokens.",
];

const MODELS_JSON: &str =
    r#"{"object":"list","data":[{"id":"mock","object":"model","created":0,"owned_by":"chorus"}]}"#;
const DONE_EVENT: &[u8] = b"data: [DONE]\n\n";

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
    shared.stats.bump(&shared.stats.connections);
    let shared = Arc::clone(shared);
    let builder = Arc::clone(builder);
    let closing = closing.clone();
    tokio::spawn(async move {
        let service = service_fn(move |request| {
            let shared = Arc::clone(&shared);
            async move { Ok::<_, Infallible>(handle(request, shared).await) }
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

async fn handle(request: Request<Incoming>, shared: Arc<Shared>) -> Response<MockBody> {
    let path = request.uri().path();
    if path.starts_with("/echo") {
        return echo(request).await;
    }
    if !path.starts_with("/v1/") {
        return match (request.method(), path) {
            (&Method::GET, "/stats") => json_response(StatusCode::OK, shared.stats.snapshot_json()),
            _ => error_response(StatusCode::NOT_FOUND, "not_found", "no such endpoint"),
        };
    }
    // Created before any await: if the client leaves while the request is read or
    // delayed, dropping this future drops the tracker, which counts the disconnect.
    let tracker = Tracker::start(Arc::clone(&shared.stats));
    let mut response = api(request, &shared).await;
    response.body_mut().tracker = Some(tracker);
    response
}

async fn api(request: Request<Incoming>, shared: &Shared) -> Response<MockBody> {
    let kind = match (request.method(), request.uri().path()) {
        (&Method::POST, "/v1/chat/completions") => Kind::Chat,
        (&Method::POST, "/v1/completions") => Kind::Text,
        (&Method::GET, "/v1/models") => return json_response(StatusCode::OK, MODELS_JSON),
        (_, "/v1/chat/completions" | "/v1/completions" | "/v1/models") => {
            return error_response(
                StatusCode::METHOD_NOT_ALLOWED,
                "invalid_request_error",
                "method not allowed",
            );
        }
        _ => return error_response(StatusCode::NOT_FOUND, "not_found", "no such endpoint"),
    };
    let body = match read_body(request.into_body()).await {
        Ok(body) => body,
        Err(response) => return response,
    };
    let plan = match Plan::parse(&body, &shared.options) {
        Ok(plan) => plan,
        Err(message) => {
            return error_response(StatusCode::BAD_REQUEST, "invalid_request_error", &message);
        }
    };
    if !plan.first_byte_delay.is_zero() {
        tokio::time::sleep(plan.first_byte_delay).await;
    }
    if let Some(status) = plan.status {
        return mock_error_response(status);
    }
    let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
    completion_response(kind, id, unix_now(), &plan)
}

async fn read_body(body: Incoming) -> Result<Bytes, Response<MockBody>> {
    match Limited::new(body, MAX_REQUEST_BODY).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(error) if error.is::<LengthLimitError>() => Err(error_response(
            StatusCode::PAYLOAD_TOO_LARGE,
            "invalid_request_error",
            "request body too large",
        )),
        Err(error) => Err(error_response(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            &format!("cannot read the request body: {error}"),
        )),
    }
}

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

// ---------------------------------------------------------------------------
// Requests

/// The fields of an OpenAI completion request that the mock looks at; the rest
/// (messages, prompt, sampling parameters) is skipped unparsed.
#[derive(Deserialize)]
struct CompletionRequest<'a> {
    #[serde(borrow)]
    model: Option<Cow<'a, str>>,
    stream: Option<bool>,
    stream_options: Option<StreamOptions>,
    mock: Option<Overrides>,
}

#[derive(Deserialize)]
struct StreamOptions {
    include_usage: Option<bool>,
}

/// The `"mock"` object of a request. Unknown fields are rejected so that a typo in
/// a test fails loudly instead of silently testing nothing.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Overrides {
    tokens: Option<usize>,
    interval_ms: Option<u64>,
    first_byte_delay_ms: Option<u64>,
    status: Option<u16>,
    break_after: Option<usize>,
    stall_after: Option<usize>,
    stamp: Option<bool>,
}

/// How one completion request is answered, options and overrides resolved.
#[derive(Debug)]
struct Plan {
    /// The model name as a JSON string literal, quotes included.
    model: String,
    stream: bool,
    include_usage: bool,
    tokens: usize,
    prompt_tokens: usize,
    interval: Duration,
    first_byte_delay: Duration,
    status: Option<StatusCode>,
    ending: Ending,
    /// Whether streamed events carry `"chorus_sent_ns"`.
    stamp: bool,
}

/// What a response body does once its events are out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ending {
    Finish,
    BreakAfter(usize),
    StallAfter(usize),
}

impl Plan {
    fn parse(body: &[u8], options: &MockOptions) -> Result<Self, String> {
        let request: CompletionRequest<'_> =
            serde_json::from_slice(body).map_err(|error| format!("invalid JSON body: {error}"))?;
        let mock = request.mock.unwrap_or_default();
        let tokens = mock.tokens.unwrap_or(options.tokens);
        if tokens > MAX_TOKENS {
            return Err(format!("mock.tokens must be at most {MAX_TOKENS}"));
        }
        let ending = match (mock.break_after, mock.stall_after) {
            (Some(_), Some(_)) => {
                return Err("set at most one of mock.break_after and mock.stall_after".into());
            }
            (Some(after), None) => Ending::BreakAfter(after),
            (None, Some(after)) => Ending::StallAfter(after),
            (None, None) => Ending::Finish,
        };
        let status = match mock.status {
            None => None,
            Some(code @ 400..=599) => StatusCode::from_u16(code).ok(),
            Some(_) => return Err("mock.status must be between 400 and 599".into()),
        };
        Ok(Self {
            model: json_string(request.model.as_deref().unwrap_or("mock")),
            stream: request.stream.unwrap_or(false),
            include_usage: request
                .stream_options
                .and_then(|options| options.include_usage)
                .unwrap_or(false),
            tokens,
            // Deterministic and roughly proportional, like a tokenizer's count.
            prompt_tokens: (body.len() / 4).max(1),
            interval: delay(mock.interval_ms, options.interval, "interval_ms")?,
            first_byte_delay: delay(
                mock.first_byte_delay_ms,
                options.first_byte_delay,
                "first_byte_delay_ms",
            )?,
            status,
            ending,
            stamp: mock.stamp.unwrap_or(options.stamp),
        })
    }
}

fn delay(override_ms: Option<u64>, default: Duration, field: &str) -> Result<Duration, String> {
    match override_ms {
        None => Ok(default),
        Some(ms) if ms <= MAX_DELAY_MS => Ok(Duration::from_millis(ms)),
        Some(_) => Err(format!("mock.{field} must be at most {MAX_DELAY_MS}")),
    }
}

// ---------------------------------------------------------------------------
// Responses

/// The two completion APIs: chat (`chat.completion`) and legacy text (`text_completion`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Chat,
    Text,
}

fn word(index: usize) -> &'static str {
    WORDS[index % WORDS.len()]
}

fn usage_json(plan: &Plan) -> String {
    format!(
        r#"{{"prompt_tokens":{},"completion_tokens":{},"total_tokens":{}}}"#,
        plan.prompt_tokens,
        plan.tokens,
        plan.prompt_tokens + plan.tokens,
    )
}

fn completion_response(kind: Kind, id: u64, created: u64, plan: &Plan) -> Response<MockBody> {
    if plan.stream {
        let events = EventSource::new(kind, id, created, plan);
        let body = MockBody::new(Source::Events(events), plan.ending, plan.interval);
        let mut response = Response::new(body);
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/event-stream"),
        );
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        response
    } else {
        let json = plain_completion(kind, id, created, plan);
        let body = MockBody::new(Source::Whole(json.into()), plan.ending, Duration::ZERO);
        with_json_headers(StatusCode::OK, body)
    }
}

fn plain_completion(kind: Kind, id: u64, created: u64, plan: &Plan) -> String {
    let mut content = String::with_capacity(plan.tokens * 8);
    for index in 0..plan.tokens {
        content.push_str(word(index));
        content.push(' ');
    }
    let (model, usage) = (&plan.model, usage_json(plan));
    match kind {
        Kind::Chat => format!(
            r#"{{"id":"chatcmpl-{id}","object":"chat.completion","created":{created},"model":{model},"choices":[{{"index":0,"message":{{"role":"assistant","content":"{content}"}},"logprobs":null,"finish_reason":"stop"}}],"usage":{usage}}}"#
        ),
        Kind::Text => format!(
            r#"{{"id":"cmpl-{id}","object":"text_completion","created":{created},"model":{model},"choices":[{{"text":"{content}","index":0,"logprobs":null,"finish_reason":"stop"}}],"usage":{usage}}}"#
        ),
    }
}

/// One event of a streamed completion.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Event {
    /// The chat opening chunk, `"delta":{"role":"assistant","content":""}`.
    Role,
    Token(usize),
    Finish,
    Usage,
    Done,
}

/// Renders the events of one streamed completion on demand, each into exactly one
/// allocation: the common head of the chunk JSON is built once per request.
struct EventSource {
    kind: Kind,
    /// `data: {"id":..,"object":..,"created":..,"model":..,"choices":[`
    prefix: String,
    tokens: usize,
    usage: Option<String>,
    /// Whether each JSON event starts with `"chorus_sent_ns":N,`.
    stamp: bool,
}

impl EventSource {
    fn new(kind: Kind, id: u64, created: u64, plan: &Plan) -> Self {
        let model = &plan.model;
        let prefix = match kind {
            Kind::Chat => format!(
                r#"data: {{"id":"chatcmpl-{id}","object":"chat.completion.chunk","created":{created},"model":{model},"choices":["#
            ),
            Kind::Text => format!(
                r#"data: {{"id":"cmpl-{id}","object":"text_completion","created":{created},"model":{model},"choices":["#
            ),
        };
        Self {
            kind,
            prefix,
            tokens: plan.tokens,
            usage: plan.include_usage.then(|| usage_json(plan)),
            stamp: plan.stamp,
        }
    }

    fn len(&self) -> usize {
        let role = usize::from(self.kind == Kind::Chat);
        role + self.tokens + 1 + usize::from(self.usage.is_some()) + 1
    }

    fn event(&self, mut index: usize) -> Event {
        if self.kind == Kind::Chat {
            if index == 0 {
                return Event::Role;
            }
            index -= 1;
        }
        if index < self.tokens {
            return Event::Token(index);
        }
        match (index - self.tokens, &self.usage) {
            (0, _) => Event::Finish,
            (1, Some(_)) => Event::Usage,
            _ => Event::Done,
        }
    }

    fn render(&self, index: usize) -> Bytes {
        match (self.kind, self.event(index)) {
            (_, Event::Done) => Bytes::from_static(DONE_EVENT),
            (Kind::Chat, Event::Role) => self.chunk(&[
                r#"{"index":0,"delta":{"role":"assistant","content":""},"finish_reason":null}]}"#,
            ]),
            (Kind::Chat, Event::Token(token)) => self.chunk(&[
                r#"{"index":0,"delta":{"content":""#,
                word(token),
                r#" "},"finish_reason":null}]}"#,
            ]),
            (Kind::Chat, Event::Finish) => {
                self.chunk(&[r#"{"index":0,"delta":{},"finish_reason":"stop"}]}"#])
            }
            (Kind::Text, Event::Token(token)) => self.chunk(&[
                r#"{"text":""#,
                word(token),
                r#" ","index":0,"logprobs":null,"finish_reason":null}]}"#,
            ]),
            (Kind::Text, Event::Finish) => {
                self.chunk(&[r#"{"text":"","index":0,"logprobs":null,"finish_reason":"stop"}]}"#])
            }
            (_, Event::Usage) => {
                let usage = self.usage.as_deref().unwrap_or("null");
                self.chunk(&[r#"],"usage":"#, usage, "}"])
            }
            // Text completions have no role chunk; `event` never yields one for them.
            (Kind::Text, Event::Role) => Bytes::new(),
        }
    }

    /// `prefix`, then `parts`, then the blank line that ends an SSE event. With
    /// `stamp`, the send time goes in as the first field of the JSON object.
    fn chunk(&self, parts: &[&str]) -> Bytes {
        const OPEN: &str = "data: {";
        /// `"chorus_sent_ns":` plus at most 20 digits plus `,`.
        const STAMP_MAX: usize = 17 + 20 + 1;
        let len = self.prefix.len()
            + if self.stamp { STAMP_MAX } else { 0 }
            + parts.iter().map(|part| part.len()).sum::<usize>()
            + 2;
        let mut buf = BytesMut::with_capacity(len);
        match self.prefix.strip_prefix(OPEN).filter(|_| self.stamp) {
            Some(rest) => {
                buf.put_slice(OPEN.as_bytes());
                // Writing into a BytesMut cannot fail.
                let _ = write!(buf, r#""chorus_sent_ns":{},"#, unix_nanos());
                buf.put_slice(rest.as_bytes());
            }
            // Unstamped (the prefix always opens an object, so there is always
            // room for a stamp when one is asked for).
            None => buf.put_slice(self.prefix.as_bytes()),
        }
        for part in parts {
            buf.put_slice(part.as_bytes());
        }
        buf.put_slice(b"\n\n");
        buf.freeze()
    }
}

fn with_json_headers(status: StatusCode, body: MockBody) -> Response<MockBody> {
    let mut response = Response::new(body);
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

fn json_response(status: StatusCode, json: impl Into<Bytes>) -> Response<MockBody> {
    with_json_headers(status, MockBody::whole(json.into()))
}

/// An OpenAI-style error, as the real API answers bad requests.
fn error_response(status: StatusCode, kind: &str, message: &str) -> Response<MockBody> {
    let message = json_string(message);
    json_response(
        status,
        format!(r#"{{"error":{{"message":{message},"type":"{kind}","param":null,"code":null}}}}"#),
    )
}

/// The answer to a `mock.status` override.
fn mock_error_response(status: StatusCode) -> Response<MockBody> {
    let code = status.as_u16();
    json_response(
        status,
        format!(r#"{{"error":{{"message":"mock error","type":"mock_error","code":{code}}}}}"#),
    )
}

async fn echo(request: Request<Incoming>) -> Response<MockBody> {
    let (head, body) = request.into_parts();
    let body = match read_body(body).await {
        Ok(body) => body,
        Err(response) => return response,
    };
    let path = head
        .uri
        .path_and_query()
        .map_or_else(|| head.uri.path(), |path| path.as_str());
    let mut out = String::with_capacity(256 + body.len());
    out.push_str(r#"{"method":"#);
    push_json_str(&mut out, head.method.as_str());
    out.push_str(r#","path":"#);
    push_json_str(&mut out, path);
    out.push_str(r#","version":"#);
    push_json_str(&mut out, version_name(head.version));
    out.push_str(r#","authority":"#);
    match head.uri.authority() {
        Some(authority) => push_json_str(&mut out, authority.as_str()),
        None => out.push_str("null"),
    }
    out.push_str(r#","headers":["#);
    for (index, (name, value)) in head.headers.iter().enumerate() {
        if index > 0 {
            out.push(',');
        }
        out.push('[');
        push_json_str(&mut out, name.as_str());
        out.push(',');
        push_json_str(&mut out, &String::from_utf8_lossy(value.as_bytes()));
        out.push(']');
    }
    out.push_str(r#"],"body":"#);
    push_json_str(&mut out, &String::from_utf8_lossy(&body));
    out.push('}');
    json_response(StatusCode::OK, out)
}

fn version_name(version: Version) -> &'static str {
    match version {
        Version::HTTP_09 => "HTTP/0.9",
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_11 => "HTTP/1.1",
        Version::HTTP_2 => "HTTP/2",
        Version::HTTP_3 => "HTTP/3",
        _ => "unknown",
    }
}

/// `text` as a JSON string literal, quotes included.
fn json_string(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    push_json_str(&mut out, text);
    out
}

fn push_json_str(out: &mut String, text: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.push('"');
    for ch in text.chars() {
        match ch {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            ch if u32::from(ch) < 0x20 => {
                let code = u32::from(ch) as usize;
                out.push_str("\\u00");
                out.push(char::from(HEX[code >> 4]));
                out.push(char::from(HEX[code & 0xf]));
            }
            ch => out.push(ch),
        }
    }
    out.push('"');
}

// ---------------------------------------------------------------------------
// Response bodies

/// The error a body ends with when `break_after` cuts it; hyper then aborts the
/// connection (HTTP/1.1) or resets the stream (HTTP/2).
#[derive(Debug)]
struct BrokenStream;

impl fmt::Display for BrokenStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("mock upstream broke the stream on request (mock.break_after)")
    }
}

impl StdError for BrokenStream {}

/// Counts one `/v1/` request from arrival to its outcome. Dropped while still
/// open, it counts a disconnect.
struct Tracker {
    stats: Arc<MockStats>,
    open: bool,
}

#[derive(Debug, Clone, Copy)]
enum Outcome {
    Completed,
    Broken,
    Disconnected,
}

impl Tracker {
    fn start(stats: Arc<MockStats>) -> Self {
        stats.requests.fetch_add(1, Ordering::SeqCst);
        stats.bump(&stats.active);
        Self { stats, open: true }
    }

    fn close(&mut self, outcome: Outcome) {
        if !std::mem::replace(&mut self.open, false) {
            return;
        }
        let stats = &self.stats;
        stats.active.fetch_sub(1, Ordering::SeqCst);
        let counter = match outcome {
            Outcome::Completed => &stats.completed,
            Outcome::Broken => &stats.broken,
            Outcome::Disconnected => {
                // Stamped before the count, so whoever sees the count sees the time.
                stats
                    .last_disconnect_ns
                    .store(unix_nanos(), Ordering::SeqCst);
                &stats.disconnects
            }
        };
        stats.bump(counter);
    }
}

impl Drop for Tracker {
    fn drop(&mut self) {
        self.close(Outcome::Disconnected);
    }
}

/// What a body yields, frame by frame.
enum Source {
    /// One frame with a known length (sent with Content-Length).
    Whole(Bytes),
    /// SSE events, one frame each.
    Events(EventSource),
}

impl Source {
    fn len(&self) -> usize {
        match self {
            Self::Whole(_) => 1,
            Self::Events(events) => events.len(),
        }
    }

    fn frame(&mut self, index: usize) -> Bytes {
        match self {
            Self::Whole(bytes) => std::mem::take(bytes),
            Self::Events(events) => events.render(index),
        }
    }
}

/// What happens once `limit` frames are out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    Finish,
    Break,
    Stall,
}

/// The pause between frames: one timer per body, reset for each frame.
struct Pace {
    interval: Duration,
    sleep: Option<Pin<Box<Sleep>>>,
    armed: bool,
}

impl Pace {
    fn new(interval: Duration) -> Self {
        Self {
            // Overrides are capped when parsed; this also caps the command-line value.
            interval: interval.min(Duration::from_millis(MAX_DELAY_MS)),
            sleep: None,
            armed: false,
        }
    }

    fn arm(&mut self) {
        if self.interval.is_zero() {
            return;
        }
        // `interval` is at most a day, far from overflowing an Instant.
        let deadline = Instant::now() + self.interval;
        match &mut self.sleep {
            Some(sleep) => sleep.as_mut().reset(deadline),
            None => self.sleep = Some(Box::pin(tokio::time::sleep_until(deadline))),
        }
        self.armed = true;
    }

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if self.armed {
            if let Some(sleep) = &mut self.sleep {
                ready!(sleep.as_mut().poll(cx));
            }
            self.armed = false;
        }
        Poll::Ready(())
    }
}

/// Every response body of the mock: a small state machine instead of a task and a
/// channel per request. It yields `limit` frames of `source`, `pace` apart, then
/// ends the way `end` says.
struct MockBody {
    source: Source,
    sent: usize,
    limit: usize,
    end: End,
    pace: Pace,
    /// Set once the body has returned `Pending` before breaking, which lets hyper
    /// flush the frames already written before it aborts the connection.
    break_flushed: bool,
    tracker: Option<Tracker>,
}

impl MockBody {
    fn new(source: Source, ending: Ending, interval: Duration) -> Self {
        let total = source.len();
        let (limit, end) = match ending {
            Ending::Finish => (total, End::Finish),
            Ending::BreakAfter(after) => (after.min(total), End::Break),
            Ending::StallAfter(after) => (after.min(total), End::Stall),
        };
        Self {
            source,
            sent: 0,
            limit,
            end,
            pace: Pace::new(interval),
            break_flushed: false,
            tracker: None,
        }
    }

    fn whole(bytes: Bytes) -> Self {
        Self::new(Source::Whole(bytes), Ending::Finish, Duration::ZERO)
    }

    fn close(&mut self, outcome: Outcome) {
        if let Some(tracker) = &mut self.tracker {
            tracker.close(outcome);
        }
    }

    fn poll_end(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BrokenStream>>> {
        match self.end {
            End::Finish => Poll::Ready(None),
            // Nothing wakes a stalled body: it hangs until hyper drops it because
            // the peer went away.
            End::Stall => Poll::Pending,
            End::Break => {
                ready!(self.pace.poll_ready(cx));
                if !self.break_flushed {
                    self.break_flushed = true;
                    cx.waker().wake_by_ref();
                    return Poll::Pending;
                }
                self.close(Outcome::Broken);
                Poll::Ready(Some(Err(BrokenStream)))
            }
        }
    }
}

impl Body for MockBody {
    type Data = Bytes;
    type Error = BrokenStream;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.get_mut();
        if this.sent == this.limit {
            return this.poll_end(cx);
        }
        ready!(this.pace.poll_ready(cx));
        let data = this.source.frame(this.sent);
        this.sent += 1;
        if let (Source::Events(_), Some(tracker)) = (&this.source, &this.tracker) {
            tracker.stats.bump(&tracker.stats.events_sent);
        }
        if this.is_end_stream() {
            // Counted here: hyper does not poll again once `is_end_stream` holds.
            this.close(Outcome::Completed);
        } else {
            this.pace.arm();
        }
        Poll::Ready(Some(Ok(Frame::data(data))))
    }

    fn is_end_stream(&self) -> bool {
        self.sent == self.limit && self.end == End::Finish
    }

    fn size_hint(&self) -> SizeHint {
        match &self.source {
            Source::Whole(bytes) => SizeHint::with_exact(bytes.len() as u64),
            Source::Events(_) if self.is_end_stream() => SizeHint::with_exact(0),
            Source::Events(_) => SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use http_body_util::Full;
    use hyper_util::client::legacy::Client;
    use hyper_util::client::legacy::connect::HttpConnector;
    use serde_json::Value;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::sync::oneshot;
    use tokio::task::JoinHandle;

    /// Generous: only reached when a test is about to fail.
    const WAIT: Duration = Duration::from_secs(10);

    struct Running {
        addr: SocketAddr,
        stats: Arc<MockStats>,
        stop: Option<oneshot::Sender<()>>,
        task: JoinHandle<io::Result<()>>,
    }

    impl Running {
        async fn stop(mut self) -> io::Result<()> {
            if let Some(stop) = self.stop.take() {
                let _ = stop.send(());
            }
            (&mut self.task).await.expect("serve task panicked")
        }
    }

    async fn start(options: MockOptions) -> Running {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let stats = Arc::new(MockStats::default());
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(serve(listener, options, Arc::clone(&stats), async {
            let _ = stopped.await;
        }));
        Running {
            addr,
            stats,
            stop: Some(stop),
            task,
        }
    }

    fn fast() -> MockOptions {
        MockOptions {
            tokens: 5,
            interval: Duration::ZERO,
            ..MockOptions::default()
        }
    }

    fn client() -> Client<HttpConnector, Full<Bytes>> {
        Client::builder(TokioExecutor::new()).build_http()
    }

    async fn send(addr: SocketAddr, method: &str, path: &str, body: &str) -> Response<Incoming> {
        let request = Request::builder()
            .method(method)
            .uri(format!("http://{addr}{path}"))
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body.to_owned())))
            .expect("request");
        client().request(request).await.expect("response")
    }

    async fn text(response: Response<Incoming>) -> String {
        let body = response
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes();
        String::from_utf8(body.to_vec()).expect("utf-8 body")
    }

    fn json(text: &str) -> Value {
        serde_json::from_str(text).expect("JSON")
    }

    /// The `data:` payloads of an SSE body, checking the framing on the way.
    fn events(body: &str) -> Vec<&str> {
        assert!(
            body.ends_with("\n\n"),
            "body does not end an event: {body:?}"
        );
        body.strip_suffix("\n\n")
            .expect("suffix")
            .split("\n\n")
            .map(|event| event.strip_prefix("data: ").expect("data: line"))
            .collect()
    }

    fn header<'a>(response: &'a Response<Incoming>, name: &str) -> &'a str {
        response
            .headers()
            .get(name)
            .and_then(|value| value.to_str().ok())
            .unwrap_or("")
    }

    /// A raw HTTP/1.1 request, for tests that need to see or cut the wire.
    async fn raw_request(addr: SocketAddr, path: &str, body: &str) -> TcpStream {
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        let request = format!(
            "POST {path} HTTP/1.1\r\nhost: mock\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        );
        stream.write_all(request.as_bytes()).await.expect("write");
        stream
    }

    /// Reads until `needle` has been seen `count` times.
    async fn read_until(stream: &mut TcpStream, needle: &str, count: usize) -> String {
        let mut seen = Vec::new();
        let mut buf = [0u8; 4096];
        while String::from_utf8_lossy(&seen).matches(needle).count() < count {
            let read = tokio::time::timeout(WAIT, stream.read(&mut buf))
                .await
                .expect("timed out reading")
                .expect("read");
            assert!(read > 0, "EOF before {count} x {needle:?}");
            seen.extend_from_slice(&buf[..read]);
        }
        String::from_utf8_lossy(&seen).into_owned()
    }

    fn expected_content(tokens: usize) -> String {
        (0..tokens)
            .map(|index| format!("{} ", word(index)))
            .collect()
    }

    #[tokio::test]
    async fn stream_sends_role_tokens_stop_and_done() {
        let mock = start(fast()).await;
        let response = send(
            mock.addr,
            "POST",
            "/v1/chat/completions",
            r#"{"model":"gpt-test","stream":true,"messages":[{"role":"user","content":"hi"}]}"#,
        )
        .await;
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(header(&response, "content-type"), "text/event-stream");
        assert_eq!(header(&response, "cache-control"), "no-cache");
        assert_eq!(header(&response, "transfer-encoding"), "chunked");
        let body = text(response).await;
        let events = events(&body);
        assert_eq!(events.len(), 5 + 3);
        assert_eq!(events.last(), Some(&"[DONE]"));

        let chunks: Vec<Value> = events[..events.len() - 1].iter().map(|e| json(e)).collect();
        for chunk in &chunks {
            assert_eq!(chunk["id"], "chatcmpl-1");
            assert_eq!(chunk["object"], "chat.completion.chunk");
            assert_eq!(chunk["model"], "gpt-test");
            assert!(chunk["created"].as_u64().expect("created") > 1_600_000_000);
            assert_eq!(chunk["choices"][0]["index"], 0);
        }
        assert_eq!(
            chunks[0]["choices"][0]["delta"],
            json(r#"{"role":"assistant","content":""}"#)
        );
        assert_eq!(chunks[0]["choices"][0]["finish_reason"], Value::Null);
        let content: String = chunks[1..6]
            .iter()
            .map(|chunk| {
                assert_eq!(chunk["choices"][0]["finish_reason"], Value::Null);
                chunk["choices"][0]["delta"]["content"]
                    .as_str()
                    .expect("content")
                    .to_owned()
            })
            .collect();
        assert_eq!(content, expected_content(5));
        assert_eq!(content, "Hello from the chorus mock ");
        assert_eq!(chunks[6]["choices"][0]["delta"], json("{}"));
        assert_eq!(chunks[6]["choices"][0]["finish_reason"], "stop");

        assert!(mock.stats.wait_for(|s| s.completed() == 1, WAIT).await);
        assert_eq!(mock.stats.requests(), 1);
        assert_eq!(mock.stats.events_sent(), 8);
        assert_eq!(mock.stats.active(), 0);
        assert_eq!(mock.stats.disconnects(), 0);
    }

    #[tokio::test]
    async fn stream_is_chunked_on_the_wire_and_ends_with_the_final_chunk() {
        let mock = start(fast()).await;
        let mut stream = raw_request(
            mock.addr,
            "/v1/chat/completions",
            r#"{"stream":true,"mock":{"tokens":2}}"#,
        )
        .await;
        let mut wire = String::new();
        stream.read_to_string(&mut wire).await.expect("read");
        assert!(wire.starts_with("HTTP/1.1 200 OK\r\n"), "{wire}");
        assert!(
            wire.contains("\r\ntransfer-encoding: chunked\r\n"),
            "{wire}"
        );
        assert!(!wire.contains("content-length"), "{wire}");
        assert!(wire.ends_with("data: [DONE]\n\n\r\n0\r\n\r\n"), "{wire}");
        assert_eq!(wire.matches("data: ").count(), 2 + 3);
        assert_eq!(mock.stats.events_sent(), 5);
    }

    #[tokio::test]
    async fn include_usage_adds_a_usage_chunk_before_done() {
        let mock = start(fast()).await;
        let request =
            r#"{"stream":true,"stream_options":{"include_usage":true},"mock":{"tokens":3}}"#;
        let body = text(send(mock.addr, "POST", "/v1/chat/completions", request).await).await;
        let events = events(&body);
        assert_eq!(events.len(), 1 + 3 + 1 + 1 + 1);
        assert_eq!(events[6], "[DONE]");
        let usage = json(events[5]);
        assert_eq!(usage["choices"], json("[]"));
        assert_eq!(usage["model"], "mock");
        let prompt = (request.len() / 4) as u64;
        assert_eq!(usage["usage"]["prompt_tokens"], prompt);
        assert_eq!(usage["usage"]["completion_tokens"], 3);
        assert_eq!(usage["usage"]["total_tokens"], prompt + 3);
    }

    #[tokio::test]
    async fn identical_requests_differ_only_in_id() {
        let mock = start(fast()).await;
        let request = r#"{"stream":true,"model":"m"}"#;
        let first = text(send(mock.addr, "POST", "/v1/chat/completions", request).await).await;
        let second = text(send(mock.addr, "POST", "/v1/chat/completions", request).await).await;
        assert_ne!(first, second);
        let strip = |body: &str| -> Vec<Value> {
            events(body)
                .iter()
                .filter(|event| **event != "[DONE]")
                .map(|event| {
                    let mut chunk = json(event);
                    chunk["id"] = Value::Null;
                    chunk["created"] = Value::Null;
                    chunk
                })
                .collect()
        };
        assert_eq!(strip(&first), strip(&second));
        assert!(first.contains(r#""id":"chatcmpl-1""#));
        assert!(second.contains(r#""id":"chatcmpl-2""#));
    }

    #[tokio::test]
    async fn events_are_paced_by_the_interval() {
        let mock = start(MockOptions {
            tokens: 3,
            interval: Duration::from_millis(40),
            ..MockOptions::default()
        })
        .await;
        let started = std::time::Instant::now();
        let body = text(
            send(
                mock.addr,
                "POST",
                "/v1/chat/completions",
                r#"{"stream":true}"#,
            )
            .await,
        )
        .await;
        // 6 events: the first right after the head, then 5 pauses.
        assert_eq!(events(&body).len(), 6);
        assert!(
            started.elapsed() >= Duration::from_millis(200),
            "{:?}",
            started.elapsed()
        );
    }

    #[tokio::test]
    async fn plain_chat_completion_is_one_json_object_with_content_length() {
        let mock = start(fast()).await;
        let response = send(
            mock.addr,
            "POST",
            "/v1/chat/completions",
            r#"{"model":"gpt \"quoted\"","messages":[]}"#,
        )
        .await;
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(header(&response, "content-type"), "application/json");
        let length: usize = header(&response, "content-length")
            .parse()
            .expect("content-length");
        let body = text(response).await;
        assert_eq!(body.len(), length);
        let completion = json(&body);
        assert_eq!(completion["id"], "chatcmpl-1");
        assert_eq!(completion["object"], "chat.completion");
        assert_eq!(completion["model"], "gpt \"quoted\"");
        assert_eq!(completion["choices"][0]["message"]["role"], "assistant");
        assert_eq!(
            completion["choices"][0]["message"]["content"],
            expected_content(5)
        );
        assert_eq!(completion["choices"][0]["finish_reason"], "stop");
        assert_eq!(completion["usage"]["completion_tokens"], 5);
        assert!(mock.stats.wait_for(|s| s.completed() == 1, WAIT).await);
        assert_eq!(mock.stats.events_sent(), 0);
        assert_eq!(mock.stats.active(), 0);
    }

    #[tokio::test]
    async fn legacy_completions_stream_and_plain() {
        let mock = start(fast()).await;
        let body = text(
            send(
                mock.addr,
                "POST",
                "/v1/completions",
                r#"{"model":"davinci","prompt":"x","stream":true,"mock":{"tokens":2}}"#,
            )
            .await,
        )
        .await;
        let events = events(&body);
        assert_eq!(events.len(), 2 + 1 + 1);
        let first = json(events[0]);
        assert_eq!(first["id"], "cmpl-1");
        assert_eq!(first["object"], "text_completion");
        assert_eq!(first["model"], "davinci");
        assert_eq!(first["choices"][0]["text"], "Hello ");
        assert_eq!(json(events[1])["choices"][0]["text"], "from ");
        assert_eq!(json(events[2])["choices"][0]["text"], "");
        assert_eq!(json(events[2])["choices"][0]["finish_reason"], "stop");
        assert_eq!(events[3], "[DONE]");

        let plain = json(
            &text(send(mock.addr, "POST", "/v1/completions", r#"{"prompt":"x"}"#).await).await,
        );
        assert_eq!(plain["object"], "text_completion");
        assert_eq!(plain["choices"][0]["text"], expected_content(5));
        assert_eq!(plain["choices"][0]["finish_reason"], "stop");
        assert_eq!(mock.stats.requests(), 2);
    }

    #[tokio::test]
    async fn models_lists_the_mock_model() {
        let mock = start(fast()).await;
        let response = send(mock.addr, "GET", "/v1/models", "").await;
        assert_eq!(response.status(), StatusCode::OK);
        let models = json(&text(response).await);
        assert_eq!(models["object"], "list");
        assert_eq!(models["data"][0]["id"], "mock");
        assert_eq!(mock.stats.requests(), 1);
    }

    #[tokio::test]
    async fn status_override_answers_an_openai_error() {
        let mock = start(fast()).await;
        let response = send(
            mock.addr,
            "POST",
            "/v1/chat/completions",
            r#"{"stream":true,"mock":{"status":429}}"#,
        )
        .await;
        assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(header(&response, "content-type"), "application/json");
        assert_eq!(
            text(response).await,
            r#"{"error":{"message":"mock error","type":"mock_error","code":429}}"#
        );
        assert_eq!(mock.stats.events_sent(), 0);

        let response = send(
            mock.addr,
            "POST",
            "/v1/chat/completions",
            r#"{"mock":{"status":200}}"#,
        )
        .await;
        assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    }

    #[tokio::test]
    async fn break_after_ends_the_body_abnormally() {
        let mock = start(fast()).await;
        let response = send(
            mock.addr,
            "POST",
            "/v1/chat/completions",
            r#"{"stream":true,"mock":{"break_after":3}}"#,
        )
        .await;
        assert_eq!(response.status(), StatusCode::OK);
        let error = response
            .into_body()
            .collect()
            .await
            .expect_err("body must fail");
        assert!(!error.to_string().is_empty());
        assert!(mock.stats.wait_for(|s| s.broken() == 1, WAIT).await);
        assert_eq!(mock.stats.events_sent(), 3);
        assert_eq!(mock.stats.completed(), 0);
        assert_eq!(mock.stats.disconnects(), 0);
        assert_eq!(mock.stats.active(), 0);
    }

    #[tokio::test]
    async fn break_after_sends_its_events_but_no_final_chunk() {
        for interval in [Duration::ZERO, Duration::from_millis(5)] {
            let mock = start(MockOptions { interval, ..fast() }).await;
            let mut stream = raw_request(
                mock.addr,
                "/v1/chat/completions",
                r#"{"stream":true,"mock":{"break_after":2}}"#,
            )
            .await;
            let mut wire = Vec::new();
            // The connection is cut: either EOF or a reset, never a clean chunked end.
            let _ = stream.read_to_end(&mut wire).await;
            let wire = String::from_utf8_lossy(&wire);
            assert!(wire.starts_with("HTTP/1.1 200 OK\r\n"), "{wire}");
            assert_eq!(wire.matches("data: ").count(), 2, "{interval:?}: {wire}");
            assert!(!wire.ends_with("0\r\n\r\n"), "{wire}");
        }
    }

    #[tokio::test]
    async fn break_after_resets_the_h2_stream() {
        let mock = start(fast()).await;
        let client: Client<HttpConnector, Full<Bytes>> = Client::builder(TokioExecutor::new())
            .http2_only(true)
            .build_http();
        let request = Request::post(format!("http://{}/v1/chat/completions", mock.addr))
            .body(Full::new(Bytes::from_static(
                br#"{"stream":true,"mock":{"break_after":1}}"#,
            )))
            .expect("request");
        let response = client.request(request).await.expect("response");
        assert_eq!(response.version(), Version::HTTP_2);
        assert!(response.into_body().collect().await.is_err());
        assert!(mock.stats.wait_for(|s| s.broken() == 1, WAIT).await);
    }

    #[tokio::test]
    async fn many_concurrent_streams_are_all_counted() {
        let mock = start(MockOptions {
            tokens: 10,
            interval: Duration::from_millis(1),
            ..MockOptions::default()
        })
        .await;
        let client = client();
        let mut streams = tokio::task::JoinSet::new();
        for _ in 0..200 {
            let client = client.clone();
            let uri = format!("http://{}/v1/chat/completions", mock.addr);
            streams.spawn(async move {
                let request = Request::post(uri)
                    .body(Full::new(Bytes::from_static(br#"{"stream":true}"#)))
                    .expect("request");
                text(client.request(request).await.expect("response")).await
            });
        }
        while let Some(body) = streams.join_next().await {
            assert_eq!(events(&body.expect("stream task")).len(), 10 + 3);
        }
        assert!(mock.stats.wait_for(|s| s.completed() == 200, WAIT).await);
        assert_eq!(mock.stats.events_sent(), 200 * 13);
        assert_eq!(mock.stats.active(), 0);
    }

    #[tokio::test]
    async fn plain_break_after_zero_promises_a_length_and_sends_nothing() {
        let mock = start(fast()).await;
        let response = send(
            mock.addr,
            "POST",
            "/v1/chat/completions",
            r#"{"mock":{"break_after":0}}"#,
        )
        .await;
        assert_eq!(response.status(), StatusCode::OK);
        assert!(
            header(&response, "content-length")
                .parse::<usize>()
                .expect("length")
                > 0
        );
        assert!(response.into_body().collect().await.is_err());
        assert!(mock.stats.wait_for(|s| s.broken() == 1, WAIT).await);
    }

    #[tokio::test]
    async fn stall_after_sends_nothing_more_until_the_peer_leaves() {
        let mock = start(fast()).await;
        let mut stream = raw_request(
            mock.addr,
            "/v1/chat/completions",
            r#"{"stream":true,"mock":{"stall_after":2}}"#,
        )
        .await;
        let seen = read_until(&mut stream, "data: ", 2).await;
        assert!(seen.starts_with("HTTP/1.1 200 OK\r\n"));
        let mut buf = [0u8; 64];
        let more = tokio::time::timeout(Duration::from_millis(300), stream.read(&mut buf)).await;
        assert!(more.is_err(), "stalled stream sent more: {more:?}");
        assert_eq!(mock.stats.events_sent(), 2);
        assert_eq!(mock.stats.active(), 1);

        drop(stream);
        assert!(mock.stats.wait_for(|s| s.disconnects() == 1, WAIT).await);
        assert_eq!(mock.stats.active(), 0);
        assert_eq!(mock.stats.completed(), 0);
    }

    #[tokio::test]
    async fn first_byte_delay_holds_back_the_head() {
        let mock = start(fast()).await;
        let started = std::time::Instant::now();
        let response = send(
            mock.addr,
            "POST",
            "/v1/chat/completions",
            r#"{"stream":true,"mock":{"first_byte_delay_ms":150}}"#,
        )
        .await;
        assert!(
            started.elapsed() >= Duration::from_millis(150),
            "{:?}",
            started.elapsed()
        );
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(events(&text(response).await).len(), 8);
    }

    #[tokio::test]
    async fn client_leaving_mid_stream_is_a_disconnect() {
        let mock = start(MockOptions {
            tokens: 1000,
            interval: Duration::from_millis(10),
            ..MockOptions::default()
        })
        .await;
        let mut stream = raw_request(mock.addr, "/v1/chat/completions", r#"{"stream":true}"#).await;
        read_until(&mut stream, "data: ", 2).await;
        drop(stream);
        assert!(mock.stats.wait_for(|s| s.disconnects() == 1, WAIT).await);
        assert_eq!(mock.stats.active(), 0);
        assert_eq!(mock.stats.completed(), 0);
        assert!(mock.stats.events_sent() < 1000);
    }

    #[tokio::test]
    async fn h2_stream_reset_mid_body_is_a_disconnect() {
        let mock = start(MockOptions {
            tokens: 1000,
            interval: Duration::from_millis(10),
            ..MockOptions::default()
        })
        .await;
        let client: Client<HttpConnector, Full<Bytes>> = Client::builder(TokioExecutor::new())
            .http2_only(true)
            .build_http();
        let request = Request::post(format!("http://{}/v1/chat/completions", mock.addr))
            .body(Full::new(Bytes::from_static(br#"{"stream":true}"#)))
            .expect("request");
        let mut body = client.request(request).await.expect("response").into_body();
        let first = body.frame().await.expect("a frame").expect("data");
        assert!(
            first
                .data_ref()
                .is_some_and(|data| data.starts_with(b"data: "))
        );
        // Dropping the body resets the stream; the connection stays up.
        drop(body);
        assert!(mock.stats.wait_for(|s| s.disconnects() == 1, WAIT).await);
        assert_eq!(mock.stats.active(), 0);
        assert_eq!(mock.stats.connections(), 1);
    }

    #[tokio::test]
    async fn client_leaving_before_the_head_is_a_disconnect() {
        let mock = start(fast()).await;
        let stream = raw_request(
            mock.addr,
            "/v1/chat/completions",
            r#"{"stream":true,"mock":{"first_byte_delay_ms":60000}}"#,
        )
        .await;
        assert!(mock.stats.wait_for(|s| s.active() == 1, WAIT).await);
        drop(stream);
        assert!(mock.stats.wait_for(|s| s.disconnects() == 1, WAIT).await);
        assert_eq!(mock.stats.active(), 0);
        assert_eq!(mock.stats.events_sent(), 0);
    }

    #[tokio::test]
    async fn h2c_prior_knowledge_is_served() {
        let mock = start(fast()).await;
        let client: Client<HttpConnector, Full<Bytes>> = Client::builder(TokioExecutor::new())
            .http2_only(true)
            .build_http();
        let request = Request::post(format!("http://{}/v1/chat/completions", mock.addr))
            .body(Full::new(Bytes::from_static(br#"{"stream":true}"#)))
            .expect("request");
        let response = client.request(request).await.expect("response");
        assert_eq!(response.version(), Version::HTTP_2);
        assert_eq!(header(&response, "content-type"), "text/event-stream");
        assert_eq!(events(&text(response).await).len(), 8);
    }

    #[tokio::test]
    async fn echo_reports_the_request_as_received() {
        let mock = start(fast()).await;
        let request = Request::builder()
            .method("PUT")
            .uri(format!("http://{}/echo/a?b=1&c", mock.addr))
            .header("x-one", "1")
            .header("x-many", "a")
            .header("x-many", "b")
            .body(Full::new(Bytes::from_static(b"hello \"body\"")))
            .expect("request");
        let response = client().request(request).await.expect("response");
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(header(&response, "content-type"), "application/json");
        let echo = json(&text(response).await);
        assert_eq!(echo["method"], "PUT");
        assert_eq!(echo["path"], "/echo/a?b=1&c");
        assert_eq!(echo["version"], "HTTP/1.1");
        assert_eq!(echo["body"], "hello \"body\"");
        let headers: Vec<(String, String)> =
            serde_json::from_value(echo["headers"].clone()).expect("header pairs");
        let pair = |name: &str, value: &str| (name.to_owned(), value.to_owned());
        assert!(headers.contains(&pair("x-one", "1")));
        assert!(headers.contains(&pair("host", &mock.addr.to_string())));
        let many: Vec<_> = headers
            .iter()
            .filter(|(name, _)| name == "x-many")
            .collect();
        assert_eq!(many, [&pair("x-many", "a"), &pair("x-many", "b")]);
        assert_eq!(mock.stats.requests(), 0);
    }

    #[tokio::test]
    async fn stats_reports_the_counters() {
        let mock = start(fast()).await;
        text(
            send(
                mock.addr,
                "POST",
                "/v1/chat/completions",
                r#"{"stream":true}"#,
            )
            .await,
        )
        .await;
        assert!(mock.stats.wait_for(|s| s.completed() == 1, WAIT).await);
        let response = send(mock.addr, "GET", "/stats", "").await;
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(header(&response, "content-type"), "application/json");
        let stats = json(&text(response).await);
        assert_eq!(stats["requests"], 1);
        assert_eq!(stats["completed"], 1);
        assert_eq!(stats["disconnects"], 0);
        assert_eq!(stats["events_sent"], 8);
        assert_eq!(stats["active"], 0);
        assert_eq!(stats["broken"], 0);
        assert_eq!(stats["last_disconnect_ns"], 0);
        assert!(stats["connections"].as_u64().expect("connections") >= 1);
        assert_eq!(
            mock.stats.requests(),
            1,
            "/stats is not a completion request"
        );
    }

    #[tokio::test]
    async fn unknown_paths_are_404_json() {
        let mock = start(fast()).await;
        for path in ["/", "/nope", "/v1/nope"] {
            let response = send(mock.addr, "GET", path, "").await;
            assert_eq!(response.status(), StatusCode::NOT_FOUND, "{path}");
            assert_eq!(header(&response, "content-type"), "application/json");
            assert_eq!(json(&text(response).await)["error"]["type"], "not_found");
        }
        let response = send(mock.addr, "GET", "/v1/chat/completions", "").await;
        assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
    }

    #[tokio::test]
    async fn bad_requests_are_400_openai_errors() {
        let mock = start(fast()).await;
        let bad = [
            "",
            "{not json",
            "[1,2]",
            r#"{"stream":"yes"}"#,
            r#"{"model":7}"#,
            r#"{"mock":{"tokenz":3}}"#,
            r#"{"mock":{"tokens":-1}}"#,
            r#"{"mock":{"break_after":1,"stall_after":1}}"#,
            r#"{"mock":{"interval_ms":99999999999}}"#,
        ];
        for body in bad {
            let response = send(mock.addr, "POST", "/v1/chat/completions", body).await;
            assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{body}");
            let error = json(&text(response).await);
            assert_eq!(error["error"]["type"], "invalid_request_error", "{body}");
            assert!(
                error["error"]["message"]
                    .as_str()
                    .is_some_and(|m| !m.is_empty())
            );
        }
        assert!(
            mock.stats
                .wait_for(|s| s.completed() == bad.len() as u64, WAIT)
                .await
        );
        assert_eq!(mock.stats.requests(), bad.len() as u64);
    }

    #[tokio::test]
    async fn shutdown_stops_accepting_and_closes_connections() {
        let mock = start(fast()).await;
        let addr = mock.addr;
        let stats = Arc::clone(&mock.stats);
        let mut stream = raw_request(
            addr,
            "/v1/chat/completions",
            r#"{"stream":true,"mock":{"stall_after":1}}"#,
        )
        .await;
        read_until(&mut stream, "data: ", 1).await;
        mock.stop().await.expect("serve");
        assert!(TcpStream::connect(addr).await.is_err());
        assert!(stats.wait_for(|s| s.disconnects() == 1, WAIT).await);
        let mut rest = Vec::new();
        let _ = tokio::time::timeout(WAIT, stream.read_to_end(&mut rest))
            .await
            .expect("closed");
    }

    #[tokio::test]
    async fn stamp_puts_the_send_time_first_in_every_json_event() {
        let mock = start(MockOptions {
            tokens: 3,
            interval: Duration::from_millis(5),
            ..MockOptions::default()
        })
        .await;
        let before = unix_nanos();
        let body = text(
            send(
                mock.addr,
                "POST",
                "/v1/chat/completions",
                r#"{"stream":true,"stream_options":{"include_usage":true},"mock":{"stamp":true}}"#,
            )
            .await,
        )
        .await;
        let after = unix_nanos();
        let events = events(&body);
        // role, 3 tokens, finish, usage, [DONE]
        assert_eq!(events.len(), 7, "{body}");
        let mut last = before;
        for event in &events[..6] {
            assert!(event.starts_with(r#"{"chorus_sent_ns":"#), "{event}");
            let stamp = json(event)["chorus_sent_ns"].as_u64().expect("stamp");
            assert!((last..=after).contains(&stamp), "{last} {stamp} {after}");
            last = stamp;
            assert_eq!(json(event)["object"], "chat.completion.chunk");
        }
        // Paced: the stamps of the first and last token are two intervals apart at least.
        let first = json(events[1])["chorus_sent_ns"].as_u64().expect("stamp");
        let third = json(events[3])["chorus_sent_ns"].as_u64().expect("stamp");
        assert!(third - first >= 10_000_000, "{first} {third}");
        assert_eq!(events[6], "[DONE]");
    }

    #[tokio::test]
    async fn stamps_are_opt_in_per_request_or_for_the_whole_mock() {
        let plain = start(fast()).await;
        for kind in ["/v1/chat/completions", "/v1/completions"] {
            let body = text(send(plain.addr, "POST", kind, r#"{"stream":true}"#).await).await;
            assert!(!body.contains("chorus_sent_ns"), "{body}");
        }
        let stamped = start(MockOptions {
            stamp: true,
            ..fast()
        })
        .await;
        let body = text(
            send(
                stamped.addr,
                "POST",
                "/v1/completions",
                r#"{"stream":true}"#,
            )
            .await,
        )
        .await;
        let events = events(&body);
        assert!(
            events[..events.len() - 1]
                .iter()
                .all(|event| json(event)["chorus_sent_ns"].as_u64().is_some())
        );
        let body = text(
            send(
                stamped.addr,
                "POST",
                "/v1/completions",
                r#"{"stream":true,"mock":{"stamp":false}}"#,
            )
            .await,
        )
        .await;
        assert!(!body.contains("chorus_sent_ns"), "{body}");
    }

    #[tokio::test]
    async fn stats_stamp_the_latest_disconnect() {
        let mock = start(MockOptions {
            tokens: 1000,
            interval: Duration::from_millis(10),
            ..MockOptions::default()
        })
        .await;
        assert_eq!(mock.stats.last_disconnect_ns(), 0);
        let mut stream = raw_request(mock.addr, "/v1/chat/completions", r#"{"stream":true}"#).await;
        read_until(&mut stream, "data: ", 1).await;
        let left = unix_nanos();
        drop(stream);
        assert!(mock.stats.wait_for(|s| s.disconnects() == 1, WAIT).await);
        let seen = mock.stats.last_disconnect_ns();
        assert!(seen >= left && seen <= unix_nanos(), "{left} {seen}");
        let stats = json(&text(send(mock.addr, "GET", "/stats", "").await).await);
        assert_eq!(stats["last_disconnect_ns"], seen);
    }

    #[tokio::test]
    async fn wait_for_gives_up_after_its_timeout() {
        let stats = MockStats::default();
        assert!(
            !stats
                .wait_for(|s| s.completed() > 0, Duration::from_millis(20))
                .await
        );
        assert!(stats.wait_for(|s| s.completed() == 0, Duration::ZERO).await);
    }

    #[test]
    fn json_strings_are_escaped() {
        assert_eq!(json_string("a\"b\\c\nd\u{1}é"), r#""a\"b\\c\nd\u0001é""#);
        let parsed: String = serde_json::from_str(&json_string("\t\r\u{1f}x")).expect("valid");
        assert_eq!(parsed, "\t\r\u{1f}x");
    }

    #[test]
    fn event_indices_map_to_events() {
        let plan = Plan::parse(
            br#"{"stream":true,"stream_options":{"include_usage":true}}"#,
            &fast(),
        )
        .expect("plan");
        let chat = EventSource::new(Kind::Chat, 1, 0, &plan);
        let order: Vec<Event> = (0..chat.len()).map(|index| chat.event(index)).collect();
        let tokens = (0..5).map(Event::Token);
        let expected: Vec<Event> = std::iter::once(Event::Role)
            .chain(tokens)
            .chain([Event::Finish, Event::Usage, Event::Done])
            .collect();
        assert_eq!(order, expected);
        let text = EventSource::new(Kind::Text, 1, 0, &plan);
        assert_eq!(text.len(), 5 + 3);
        assert_eq!(text.event(0), Event::Token(0));
    }
}
