//! The request handler: pick the route, enforce the request limits, read the
//! body, then either join (or lead) a flight or pass the request through on
//! its own, and build the response.

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::header::{CONNECTION, CONTENT_LENGTH, CONTENT_TYPE, EXPECT, TRANSFER_ENCODING, UPGRADE};
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, Version};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::ext::ReasonPhrase;
use hyper::upgrade::OnUpgrade;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::coalesce::Role;
use crate::coalesce::flight::{Head, Subscriber};
use crate::coalesce::key::{Key, KeyInput};
use crate::coalesce::pump::Pump;
use crate::coalesce::registry::{Joined, Registry};
use crate::config::ServerConfig;
use crate::error::{BodyError, GatewayError};
use crate::flushes::{Flushes, Written};
use crate::framing::{self, Refused, Suspect};
use crate::headers::{self, ClientSide, X_CHORUS_ROLE};
use crate::metrics::{Metrics, RouteMetrics};
use crate::response::{AccessLog, Requests, ResponseBody, Source};
use crate::route::{Route, RouteTable};
use crate::target;
use crate::tunnel::{self, Handshake, Nonce, Tunnel};

/// An over-size body is still read and discarded up to this much, so the
/// client sees the 413 instead of a reset of a connection it is writing to.
const DISCARD_LIMIT: u64 = 64 << 20;
const DISCARD_TIME: Duration = Duration::from_secs(10);

/// The limits a request must fit in before anything is sent upstream.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Request line plus headers.
    pub max_header_bytes: usize,
    /// The request body.
    pub max_request_body_bytes: u64,
    /// Time for the whole request body to arrive.
    pub request_body_timeout: Duration,
    /// Bytes all flight logs may hold before new requests stop coalescing.
    pub max_buffered_bytes: u64,
}

impl From<&ServerConfig> for Limits {
    fn from(server: &ServerConfig) -> Self {
        Self {
            max_header_bytes: server.max_header_bytes,
            max_request_body_bytes: server.max_request_body_bytes,
            request_body_timeout: server.request_body_timeout,
            max_buffered_bytes: server.max_buffered_bytes,
        }
    }
}

/// The gateway's request handler and everything it shares across requests.
pub struct Proxy {
    routes: RouteTable,
    registry: Registry,
    metrics: Arc<Metrics>,
    /// Counts requests that match no route.
    unrouted: RouteMetrics,
    limits: Limits,
    /// Cancelled when the shutdown grace runs out ([`Self::cut_what_is_left`]):
    /// pumps and tunnels stop then.
    shutdown: CancellationToken,
    /// What every request's access log shares.
    requests: Arc<Requests>,
}

type Answer = Response<Source>;

/// What a request's handler knows of its client's connection, and may
/// leave to it.
pub struct ClientConnection {
    /// What the upstream is told about the client.
    pub client: ClientSide,
    /// The WebSocket tunnels its requests open.
    pub tunnels: tunnel::Tunnels,
    /// Its completed flushes, which a response's break waits for.
    pub flushes: Arc<Flushes>,
    /// Whether its socket has `send_timeout` as its `TCP_USER_TIMEOUT`: the
    /// kernel then ends it when its client takes nothing for that long.
    pub socket_times_out: bool,
}

impl Proxy {
    /// A handler over `routes`.
    pub fn new(
        routes: RouteTable,
        metrics: Arc<Metrics>,
        limits: Limits,
        shutdown: CancellationToken,
    ) -> Self {
        let unrouted = metrics.unrouted();
        let requests = Arc::new(Requests::new(metrics.requests_active.clone()));
        Self {
            routes,
            registry: Registry::default(),
            metrics,
            unrouted,
            limits,
            shutdown,
            requests,
        }
    }

    /// Counts and logs a request answered before it could be read as HTTP:
    /// plain HTTP on the TLS port, which [`crate::tls::accept`] refused.
    pub fn refused_unread(
        &self,
        method: Option<Method>,
        path: Option<Box<str>>,
        status: StatusCode,
    ) {
        self.unrouted.request(Role::Bypass);
        let mut log = AccessLog::unread(method, path, &self.requests, status);
        log.route(self.unrouted.clone());
        // Dropped here: logged, and counted by status.
    }

    /// The drain is over: what is still open is cut, and logged so. Flights
    /// end now: the requests waiting for their heads get a 503, their
    /// streams end abnormally, and so do WebSocket tunnels.
    pub fn cut_what_is_left(&self) {
        self.requests.cut();
        self.shutdown.cancel();
    }

    /// Whether any route allows WebSockets: HTTP/2 clients are then offered
    /// RFC 8441's extended `CONNECT`.
    pub fn websockets(&self) -> bool {
        self.routes.websockets()
    }

    /// The open flights.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Answers one request. Never fails: every problem is a response.
    pub async fn handle(
        &self,
        request: Request<Incoming>,
        connection: &ClientConnection,
    ) -> Response<ResponseBody> {
        let mut log = AccessLog::start(&request, &self.requests);
        let head_only = request.method() == Method::HEAD;
        let http1 = request.version() < Version::HTTP_2;
        let expects_continue = request.headers().contains_key(EXPECT);
        // Boxed, and done before a follower's wait for its head: the wait,
        // often the longest part of a request, then holds only the small
        // future below, not everything it took to get there.
        let answer = match Box::pin(self.answer(request, connection, &mut log)).await {
            Answered::Now(answer) => answer,
            Answered::OnHead(waiting) => waiting.head(&mut log).await,
        };
        let (mut parts, mut source) = answer.into_parts();
        // A malformed request may have been framed in a way we did not
        // read, and a refused head was not read to its end; a body refused
        // before `100 Continue` was never sent, and where the next request
        // would start is the client's guess. Nothing more is read from such
        // a connection, and the answer says so, so that a proxy in front
        // does not wait for more (as nginx answers).
        let last_on_its_connection = match parts.status {
            StatusCode::BAD_REQUEST
            | StatusCode::URI_TOO_LONG
            | StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE => true,
            StatusCode::PAYLOAD_TOO_LARGE => expects_continue,
            _ => false,
        };
        if http1 && last_on_its_connection {
            parts
                .headers
                .insert(CONNECTION, HeaderValue::from_static("close"));
        }
        if head_only {
            // A response to HEAD has no content: hyper's HTTP/1.1 server
            // never polls it (so it would never be logged as complete), and
            // its HTTP/2 server would send it.
            source = Source::Full(None);
        }
        let written = Written::new(&connection.flushes, http1);
        let open_ended = !head_only && headers::is_event_stream(&parts.headers);
        Response::from_parts(parts, ResponseBody::new(source, log, written, open_ended))
    }

    async fn answer(
        &self,
        request: Request<Incoming>,
        connection: &ClientConnection,
        log: &mut AccessLog,
    ) -> Answered {
        let route = self.check_head(&request).and_then(|()| {
            let path =
                target::routing_path(request.uri().path()).map_err(GatewayError::BadRequest)?;
            self.routes.find(&path).ok_or(GatewayError::NoRoute)
        });
        let route = match route {
            Ok(route) => route,
            Err(error) => {
                self.unrouted.request(Role::Bypass);
                log.route(self.unrouted.clone());
                return Answered::Now(refuse(error, Role::Bypass, log));
            }
        };
        log.route(route.metrics.clone());
        if route.websocket
            && let Some(handshake) = tunnel::handshake(&request)
        {
            return Answered::Now(
                self.tunnel(route, request, handshake, connection, log)
                    .await,
            );
        }
        if request.method() == Method::CONNECT {
            // An HTTP/2 WebSocket (`check_head` let no other `CONNECT` by).
            route.metrics.request(Role::Bypass);
            let error = GatewayError::BadRequest("WebSockets are not enabled on this route");
            return Answered::Now(refuse(error, Role::Bypass, log));
        }

        let client = &connection.client;
        let (mut parts, body) = request.into_parts();
        headers::join_cookie_crumbs(&mut parts.headers);
        let body = match read_body(body, &parts.headers, &self.limits).await {
            Ok(body) => body,
            Err(error) => {
                route.metrics.request(Role::Bypass);
                return Answered::Now(refuse(error, Role::Bypass, log));
            }
        };
        // The body was read whole: an empty one the client framed with
        // chunked coding goes on with its length, as one it sent a length for.
        if body.is_empty() && parts.headers.contains_key(TRANSFER_ENCODING) {
            parts
                .headers
                .insert(CONTENT_LENGTH, HeaderValue::from_static("0"));
        }
        // Asked of chorus itself, the hop the opt-out is for.
        let opted_out = headers::coalesce_opted_out(&parts.headers);
        // Before the key: a header named in `Connection` never reaches the
        // upstream, so it must not count in the key either; a request that
        // strips its credentials that way must not join one that sends them.
        headers::remove_hop_by_hop(&mut parts.headers);

        let coalesce = route.coalesces(&parts.method) && !opted_out && self.has_buffer_room();
        if coalesce {
            let own_socket = connection.socket_times_out && parts.version < Version::HTTP_2;
            let waiting = self.join(route, parts, body, client, log);
            if own_socket {
                waiting.subscriber.leave_stalls_to_its_socket();
            }
            Answered::OnHead(waiting)
        } else {
            Answered::Now(self.bypass(route, parts, body, client, log).await)
        }
    }

    /// Limits on the request head that hyper does not enforce exactly.
    fn check_head(&self, request: &Request<Incoming>) -> Result<(), GatewayError> {
        if request.method() == Method::CONNECT && !tunnel::websocket_connect(request) {
            return Err(GatewayError::BadRequest("CONNECT is not supported"));
        }
        if request.method() == Method::TRACE {
            // A backend that echoes it, as TRACE asks, would hand the client
            // what the gateway adds: a route's `upstream_headers` are keys.
            return Err(GatewayError::MethodNotAllowed(
                "TRACE is not forwarded: the upstream would echo the headers the gateway adds",
            ));
        }
        target::check(request)?;
        let limit = self.limits.max_header_bytes;
        if let Some(refused) = request.extensions().get::<Refused>() {
            return Err(match refused.why {
                Suspect::Malformed(why) => GatewayError::BadRequest(why),
                Suspect::TooLarge => GatewayError::HeadersTooLarge { limit },
                Suspect::TooManyFields => GatewayError::TooManyHeaders {
                    limit: framing::MAX_HEADERS,
                },
                Suspect::TargetTooLong => GatewayError::UriTooLong {
                    limit: framing::MAX_TARGET.min(limit),
                },
            });
        }
        if head_size(request) > limit {
            // As nginx answers: a request line alone over the limit is a 414.
            return Err(if line_size(request) > limit {
                GatewayError::UriTooLong {
                    limit: framing::MAX_TARGET.min(limit),
                }
            } else {
                GatewayError::HeadersTooLarge { limit }
            });
        }
        Ok(())
    }

    /// Whether the flight logs together are under the global budget.
    fn has_buffer_room(&self) -> bool {
        let held = self.metrics.buffered_bytes.get().max(0) as u64;
        // Full only past the limit, as a flight sheds (`pump`).
        held <= self.limits.max_buffered_bytes
    }

    /// Joins the flight for this request, or leads a new one.
    fn join(
        &self,
        route: &Arc<Route>,
        parts: http::request::Parts,
        body: Bytes,
        client: &ClientSide,
        log: &mut AccessLog,
    ) -> Waiting {
        let path_and_query = parts.uri.path_and_query().map_or("/", |pq| pq.as_str());
        let key = Key::compute(&KeyInput {
            route: &route.name,
            method: &parts.method,
            path_and_query,
            authority: parts.uri.authority().map(|authority| authority.as_str()),
            headers: &parts.headers,
            key_headers: &route.key_headers,
            json_ignore_fields: &route.json_ignore_fields,
            body: &body,
        });
        let since = Instant::now();
        let (role, subscriber) = match self.registry.join_or_lead(key, &route.flights) {
            // A new flight: its pump sends this request upstream.
            Joined::Leader(flight, subscriber) => {
                Pump {
                    flight,
                    registry: self.registry.clone(),
                    upstream: Arc::clone(&route.upstream),
                    request: route.upstream.request(parts, body, client, true),
                    shutdown: self.shutdown.clone(),
                    max_buffered: self.limits.max_buffered_bytes,
                }
                .spawn();
                (Role::Leader, subscriber)
            }
            // An open flight: this request never reaches the upstream.
            Joined::Follower(subscriber) => (Role::Follower, subscriber),
        };
        route.metrics.request(role);
        log.role(role);
        Waiting {
            role,
            subscriber,
            since,
        }
    }

    /// Sends the request upstream on its own and streams the answer back.
    async fn bypass(
        &self,
        route: &Arc<Route>,
        parts: http::request::Parts,
        body: Bytes,
        client: &ClientSide,
        log: &mut AccessLog,
    ) -> Answer {
        route.metrics.request(Role::Bypass);
        let request = match route.upstream.request(parts, body, client, false) {
            Ok(request) => request,
            Err(error) => return refuse(error, Role::Bypass, log),
        };
        match send_alone(route, Alone::Plain(request), log).await {
            Ok((response, _)) => response,
            Err(refused) => refused,
        }
    }

    /// Passes a WebSocket handshake to the upstream on a connection of its
    /// own; when the upstream switches protocols, the client is told yes and
    /// the two sides become a tunnel (see [`crate::tunnel`]).
    async fn tunnel(
        &self,
        route: &Arc<Route>,
        mut request: Request<Incoming>,
        handshake: Handshake,
        connection: &ClientConnection,
        log: &mut AccessLog,
    ) -> Answer {
        route.metrics.request(Role::Bypass);
        let client_side = hyper::upgrade::on(&mut request);
        // A handshake has no body (RFC 6455 §4.1); one sent anyway is dropped.
        let (mut parts, _) = request.into_parts();
        // The upgrade is asked for anew below, in the upstream's terms.
        headers::remove_hop_by_hop(&mut parts.headers);
        // HTTP/2's handshake is sent on as HTTP/1.1's, with a key of our own.
        let (upgrade, nonce) = match handshake {
            Handshake::Upgrade(upgrade) => (upgrade, None),
            Handshake::Connect => (HeaderValue::from_static("websocket"), Some(Nonce::random())),
        };
        if let Some(nonce) = &nonce {
            nonce.ask(&mut parts);
        }
        let mut upstream_request =
            match route
                .upstream
                .request(parts, Bytes::new(), &connection.client, false)
            {
                Ok(request) => request,
                Err(error) => return refuse(error, Role::Bypass, log),
            };
        tunnel::ask_upgrade(upstream_request.headers_mut(), upgrade.clone());
        let sending = Alone::Upgrade(upstream_request);
        let (mut response, upstream_side) = match send_alone(route, sending, log).await {
            Ok(sent) => sent,
            Err(refused) => return refused,
        };
        let Some(upstream_side) = upstream_side else {
            if nonce.is_some() && response.status().is_success() {
                // Over HTTP/2 any success would tell the client yes.
                let why = format!(
                    "the upstream answered the WebSocket handshake with {}, not 101",
                    response.status()
                );
                return refuse(GatewayError::upstream_failed(why), Role::Bypass, log);
            }
            return response;
        };
        *response.body_mut() = Source::Full(None);
        match &nonce {
            None => {
                let agreed = upstream_side.protocol.unwrap_or(upgrade);
                tunnel::ask_upgrade(response.headers_mut(), agreed);
            }
            Some(nonce) => {
                if !nonce.accepted(response.headers_mut()) {
                    let why = "the upstream's Sec-WebSocket-Accept does not answer the key sent";
                    return refuse(GatewayError::upstream_failed(why), Role::Bypass, log);
                }
                *response.status_mut() = StatusCode::OK;
                response.headers_mut().remove(CONTENT_LENGTH);
                log.tunnelled(StatusCode::OK);
            }
        }
        let tunnel = Tunnel::new(
            route.metrics.clone(),
            client_side,
            upstream_side.on_upgrade,
            route.upstream.idle_timeout(),
            self.shutdown.clone(),
            &self.metrics.requests_active,
        );
        if nonce.is_some() {
            connection.tunnels.spawn(tunnel);
        } else {
            connection.tunnels.take_over(tunnel);
        }
        response
    }
}

/// The upstream's side of a `101 Switching Protocols`.
struct Switched {
    /// Its connection, once hyper lets go of it.
    on_upgrade: OnUpgrade,
    /// The protocol it switched to.
    protocol: Option<HeaderValue>,
}

/// A request sent upstream on its own.
enum Alone {
    Plain(Request<Full<Bytes>>),
    /// A WebSocket handshake (see [`crate::upstream::Upstream::upgrade`]).
    Upgrade(Request<Full<Bytes>>),
}

/// Sends a request on its own and turns the upstream's answer into the
/// client's, with the upstream's side of a `101` if it switched protocols;
/// a failure is the gateway's own answer.
async fn send_alone(
    route: &Route,
    request: Alone,
    log: &mut AccessLog,
) -> Result<(Answer, Option<Switched>), Answer> {
    let sent = Instant::now();
    let answered = {
        let dispatch = log.dispatch(&route.metrics.upstream_requests);
        match request {
            Alone::Plain(request) => route.upstream.send(request, &dispatch).await,
            Alone::Upgrade(request) => route.upstream.upgrade(request, &dispatch).await,
        }
    };
    let mut response = match answered {
        Ok(response) => response,
        Err(error) => {
            tracing::warn!(
                route = &*route.name,
                status = error.status().as_u16(),
                error = %crate::error::describe(&error),
                "upstream request failed"
            );
            return Err(refuse(error, Role::Bypass, log));
        }
    };
    let waited = sent.elapsed();
    route.metrics.first_byte(waited);

    let switched = (response.status() == StatusCode::SWITCHING_PROTOCOLS).then(|| Switched {
        protocol: response.headers().get(UPGRADE).cloned(),
        on_upgrade: hyper::upgrade::on(&mut response),
    });
    let (upstream_parts, upstream_body) = response.into_parts();
    let mut response = Response::new(Source::Upstream(upstream_body));
    *response.status_mut() = upstream_parts.status;
    *response.headers_mut() = upstream_parts.headers;
    // A phrase of the upstream's own (`599 Model Overloaded`) goes on as it
    // was; hyper writes `<none>` after a status it has no phrase for.
    if let Some(reason) = upstream_parts.extensions.get::<ReasonPhrase>() {
        response.extensions_mut().insert(reason.clone());
    }
    route
        .upstream
        .to_downstream(upstream_parts.status, response.headers_mut());
    set_role(response.headers_mut(), Role::Bypass);
    log.head(upstream_parts.status, Some(waited));
    Ok((response, switched))
}

/// What handling a request comes to before any wait for a flight's head.
enum Answered {
    /// The response, ready.
    Now(Answer),
    /// A subscriber of a flight, whose response is its head.
    OnHead(Waiting),
}

/// A request subscribed to a flight, waiting for the flight's response head.
struct Waiting {
    role: Role,
    subscriber: Subscriber,
    since: Instant,
}

impl Waiting {
    async fn head(mut self, log: &mut AccessLog) -> Answer {
        match self.subscriber.head().await {
            Head::Response(head) => {
                log.head(head.status, Some(self.since.elapsed()));
                let mut response = Response::new(Source::Subscriber(self.subscriber));
                *response.status_mut() = head.status;
                *response.headers_mut() = head.headers.clone();
                if let Some(reason) = &head.reason {
                    response.extensions_mut().insert(reason.clone());
                }
                set_role(response.headers_mut(), self.role);
                response
            }
            Head::Failed(error) => refuse(error, self.role, log),
        }
    }
}

/// The gateway's own answer to a request it will not or cannot forward.
fn refuse(error: GatewayError, role: Role, log: &mut AccessLog) -> Answer {
    let status = error.status();
    log.role(role);
    if matches!(error, GatewayError::Interrupted(BodyError::Shutdown)) {
        log.cut_before_head();
    }
    log.head(status, None);
    let body = error.response_body();
    // Set here rather than left to hyper, so that HEAD answers carry it too.
    let length = HeaderValue::from(body.len());
    let mut response = Response::new(Source::Full(Some(body)));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    headers.insert(CONTENT_LENGTH, length);
    set_role(headers, role);
    response
}

fn set_role(headers: &mut HeaderMap, role: Role) {
    headers.insert(X_CHORUS_ROLE, HeaderValue::from_static(role.as_str()));
}

/// The size of the request line and headers as a client would send them.
fn head_size<B>(request: &Request<B>) -> usize {
    request
        .headers()
        .iter()
        .fold(line_size(request), |size, (name, value)| {
            size + name.as_str().len() + value.len() + 4
        })
}

/// The size of a request line, as [`head_size`] counts it.
fn line_size<B>(request: &Request<B>) -> usize {
    let uri = request.uri();
    let target = uri
        .authority()
        .map_or(0, |authority| authority.as_str().len())
        + uri.path_and_query().map_or(1, |pq| pq.as_str().len());
    request.method().as_str().len() + target + 12
}

/// Reads the whole request body within the size and time limits.
async fn read_body(
    body: Incoming,
    headers: &HeaderMap,
    limits: &Limits,
) -> Result<Bytes, GatewayError> {
    let limit = limits.max_request_body_bytes;
    let declared = headers
        .get(CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<u64>().ok());
    if declared.is_some_and(|length| length > limit) {
        discard(body, headers);
        return Err(GatewayError::BodyTooLarge { limit });
    }
    match tokio::time::timeout(limits.request_body_timeout, collect(body, limit)).await {
        Ok(Ok(bytes)) => Ok(bytes),
        Ok(Err(Oversize(body))) => {
            discard(body, headers);
            Err(GatewayError::BodyTooLarge { limit })
        }
        Ok(Err(Unreadable(error))) => Err(GatewayError::BodyUnreadable(Arc::new(error))),
        Err(_) => Err(GatewayError::BodyTimeout(limits.request_body_timeout)),
    }
}

enum CollectError {
    /// Over the limit; the rest of the body is still unread.
    Oversize(Incoming),
    /// The body could not be read.
    Unreadable(hyper::Error),
}
use CollectError::{Oversize, Unreadable};

async fn collect(mut body: Incoming, limit: u64) -> Result<Bytes, CollectError> {
    let mut chunks: Vec<Bytes> = Vec::new();
    let mut total = 0u64;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(Unreadable)?;
        if let Ok(data) = frame.into_data() {
            total += data.len() as u64;
            if total > limit {
                return Err(Oversize(body));
            }
            chunks.push(data);
        }
    }
    Ok(match chunks.len() {
        0 => Bytes::new(),
        1 => chunks.swap_remove(0),
        _ => {
            let mut joined = BytesMut::with_capacity(total as usize);
            for chunk in chunks {
                joined.extend_from_slice(&chunk);
            }
            joined.freeze()
        }
    })
}

/// Reads and drops the rest of an over-size body in the background, so the
/// client gets to read the 413 (closing a socket with unread input resets
/// it). A client that waits for `100 Continue` never sends the body at all.
fn discard(mut body: Incoming, headers: &HeaderMap) {
    if headers.contains_key(EXPECT) {
        return;
    }
    tokio::spawn(async move {
        let drain = async {
            let mut total = 0u64;
            while let Some(Ok(frame)) = body.frame().await {
                total += frame.data_ref().map_or(0, |data| data.len() as u64);
                if total > DISCARD_LIMIT {
                    break;
                }
            }
        };
        let _ = tokio::time::timeout(DISCARD_TIME, drain).await;
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::StatusCode;

    #[test]
    fn head_size_counts_line_and_headers() {
        let request = Request::builder()
            .uri("/abc")
            .header("x-a", "12345")
            .body(())
            .unwrap();
        // "GET /abc HTTP/1.1\r\n" plus "x-a: 12345\r\n"
        assert_eq!(head_size(&request), 3 + 4 + 12 + 3 + 5 + 4);
    }

    #[test]
    fn refusals_carry_the_role_and_json() {
        let requests = Arc::new(Requests::new(Default::default()));
        let request = Request::new(());
        let mut log = AccessLog::start(&request, &requests);
        let response = refuse(GatewayError::NoRoute, Role::Bypass, &mut log);
        assert_eq!(response.status(), StatusCode::NOT_FOUND);
        assert_eq!(response.headers()["x-chorus-role"], "bypass");
        assert_eq!(response.headers()["content-type"], "application/json");
    }
}
