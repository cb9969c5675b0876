//! WebSocket tunnels, on routes that allow them (`websocket = true`).
//!
//! `Upgrade` is hop-by-hop, so by default it stops at the gateway and the
//! upstream sees a plain `GET`. On a route that allows WebSockets, a client's
//! handshake goes to the upstream on a connection of its own (never pooled,
//! never coalesced: role `bypass`) as an HTTP/1.1 `GET` with `Upgrade:
//! websocket` and `Connection: upgrade` set again for that hop. If the
//! upstream answers `101 Switching Protocols`, the client is told yes, and
//! once hyper has let go of both sides they are joined as a tunnel that
//! copies bytes both ways until the upstream closes (a client that closes
//! first closes the upstream's side, and the upstream then closes), nothing
//! moves for the route's `idle_timeout`, or the shutdown grace runs out. Any
//! other answer is passed on as it is.
//!
//! A client asks in one of two ways:
//! - HTTP/1.1 (RFC 6455): a `GET` with `Upgrade: websocket`. It gets the
//!   `101`, and its connection becomes the tunnel, run in the connection's
//!   own task after hyper is done with it: it holds the connection's
//!   `max_connections` slot and is waited for (and cut) on shutdown like any
//!   stream in flight.
//! - HTTP/2 (RFC 8441): a `CONNECT` with `:protocol` `websocket`, offered
//!   (`SETTINGS_ENABLE_CONNECT_PROTOCOL`) when a route allows WebSockets. It
//!   has no `Sec-WebSocket-Key`, so the gateway makes one up for the upstream
//!   and checks the `101`'s `Sec-WebSocket-Accept` against it; the client
//!   gets a `200`, and that one stream becomes the tunnel, in a task of its
//!   own. The stream keeps its connection open (and counted as busy) while
//!   it lasts, and dies with it when the shutdown grace runs out. A
//!   non-`101` success from the upstream would read as a yes over HTTP/2, so
//!   it is a 502 instead.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use http::header::{
    CONNECTION, SEC_WEBSOCKET_ACCEPT, SEC_WEBSOCKET_KEY, SEC_WEBSOCKET_VERSION, UPGRADE,
};
use http::{HeaderMap, HeaderValue, Method, Request, Version};
use hyper::ext::Protocol;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use tokio::io::AsyncWriteExt;
use tokio::time::Instant;
use tokio_util::io::InspectReader;
use tokio_util::sync::CancellationToken;

use crate::activity::Activity;
use crate::framing::Verdicts;
use crate::metrics::RouteMetrics;

/// The protocol token a tunnel is opened for.
const WEBSOCKET: &str = "websocket";
/// What a `Sec-WebSocket-Key` is hashed with for its accept (RFC 6455 §1.3).
const ACCEPT_GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// How a client asks for a WebSocket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Handshake {
    /// RFC 6455: an HTTP/1.1 `GET` asking to switch its connection; the
    /// `Upgrade` field that names `websocket`, to be sent on.
    Upgrade(HeaderValue),
    /// RFC 8441: an HTTP/2 `CONNECT` with `:protocol` `websocket`.
    Connect,
}

/// How `request` asks for a WebSocket, if it does.
pub fn handshake<B>(request: &Request<B>) -> Option<Handshake> {
    if websocket_connect(request) {
        return Some(Handshake::Connect);
    }
    websocket_upgrade(request.method(), request.version(), request.headers())
        .map(Handshake::Upgrade)
}

/// Whether a request is an HTTP/2 extended `CONNECT` for `websocket`.
pub fn websocket_connect<B>(request: &Request<B>) -> bool {
    request.method() == Method::CONNECT
        && request.version() == Version::HTTP_2
        && request
            .extensions()
            .get::<Protocol>()
            .is_some_and(|protocol| protocol.as_str().eq_ignore_ascii_case(WEBSOCKET))
}

/// Whether a request asks to switch its connection to WebSocket: an
/// HTTP/1.1 `GET` with `websocket` among its `Upgrade` protocols and
/// `upgrade` among its `Connection` options (RFC 6455 §4.1), in any of
/// their fields. The `Upgrade` field that names it is returned, to be sent on.
pub fn websocket_upgrade(
    method: &Method,
    version: Version,
    headers: &HeaderMap,
) -> Option<HeaderValue> {
    if method != Method::GET || version != Version::HTTP_11 {
        return None;
    }
    let connection_upgrade = headers
        .get_all(CONNECTION)
        .iter()
        .any(|value| lists(value, "upgrade"));
    let upgrade = headers
        .get_all(UPGRADE)
        .iter()
        .find(|value| lists(value, WEBSOCKET))?;
    connection_upgrade.then(|| upgrade.clone())
}

/// Whether a comma-separated header value lists `token` (case-insensitive;
/// a protocol's `/version` suffix is ignored).
fn lists(value: &HeaderValue, token: &str) -> bool {
    value.to_str().is_ok_and(|value| {
        value.split(',').any(|item| {
            let name = item.split('/').next().unwrap_or_default();
            name.trim().eq_ignore_ascii_case(token)
        })
    })
}

/// Sets the upgrade headers again on one hop's message, after the
/// hop-by-hop ones were removed.
pub fn ask_upgrade(headers: &mut HeaderMap, upgrade: HeaderValue) {
    headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(UPGRADE, upgrade);
}

/// The `Sec-WebSocket-Key` the gateway makes up to pass an RFC 8441
/// handshake on as an RFC 6455 one, and the accept it expects back.
pub struct Nonce {
    key: HeaderValue,
    accept: String,
}

impl Nonce {
    /// A fresh random key. It proves only that the upstream speaks
    /// WebSocket (the gateway, not a page's script, picks it), so a fast
    /// generator will do.
    pub fn random() -> Self {
        let key = BASE64.encode(fastrand::u128(..).to_le_bytes());
        let accept = accept_for(&key);
        // Base64 is always a valid header value.
        let key = HeaderValue::from_str(&key).unwrap_or(HeaderValue::from_static(""));
        Self { key, accept }
    }

    /// Turns a client's `CONNECT` into the `GET` an HTTP/1.1 upstream
    /// expects, with this key (the `Upgrade` fields are set by [`ask_upgrade`]).
    pub fn ask(&self, parts: &mut http::request::Parts) {
        parts.method = Method::GET;
        parts.headers.insert(SEC_WEBSOCKET_KEY, self.key.clone());
        parts
            .headers
            .entry(SEC_WEBSOCKET_VERSION)
            .or_insert(HeaderValue::from_static("13"));
    }

    /// Whether an upstream's `101` carries this key's accept; the accept is
    /// taken out (an HTTP/2 client has no key to check it against).
    pub fn accepted(&self, headers: &mut HeaderMap) -> bool {
        headers
            .remove(SEC_WEBSOCKET_ACCEPT)
            .is_some_and(|accept| accept.as_bytes() == self.accept.as_bytes())
    }
}

/// The `Sec-WebSocket-Accept` that answers `key` (RFC 6455 §4.2.2).
pub fn accept_for(key: &str) -> String {
    use ring::digest::{Context, SHA1_FOR_LEGACY_USE_ONLY};
    let mut sha1 = Context::new(&SHA1_FOR_LEGACY_USE_ONLY);
    sha1.update(key.as_bytes());
    sha1.update(ACCEPT_GUID);
    BASE64.encode(sha1.finish())
}

/// A tunnel both sides agreed to, waiting for hyper to hand over their
/// connections.
pub struct Tunnel {
    /// The route's series: its name for the log line, its tunnel counts.
    route: RouteMetrics,
    client: OnUpgrade,
    upstream: OnUpgrade,
    idle: Duration,
    /// Cancelled when the shutdown grace runs out.
    cut: CancellationToken,
    /// Counts the tunnel among the requests in progress while it is open
    /// (a shutdown names it among the streams it cuts), and among its
    /// route's open tunnels.
    _active: [Counted; 2],
}

impl Tunnel {
    /// A tunnel of `route` between a client's and an upstream's connection,
    /// closed after `idle` without a byte either way or when `cut` is
    /// cancelled; counted in `requests`.
    pub fn new(
        route: RouteMetrics,
        client: OnUpgrade,
        upstream: OnUpgrade,
        idle: Duration,
        cut: CancellationToken,
        requests: &Gauge,
    ) -> Self {
        let active = [Counted::new(requests), Counted::new(&route.tunnels_active)];
        Self {
            route,
            client,
            upstream,
            idle,
            cut,
            _active: active,
        }
    }

    /// Copies bytes both ways until the upstream closes, either side
    /// breaks, or both fall silent.
    pub async fn run(self) {
        let Self {
            route,
            client,
            upstream,
            idle,
            cut,
            _active,
        } = self;
        let (client, upstream) = match tokio::try_join!(client, upstream) {
            Ok(both) => both,
            Err(error) => {
                tracing::debug!(%error, "a WebSocket upgrade did not complete");
                return;
            }
        };
        // Each side's reads are counted, and mark when the tunnel last
        // heard a byte (milliseconds from its start).
        let started = Instant::now();
        let heard = AtomicU64::new(0);
        let mut record = Record {
            route: &route,
            started,
            up: 0,
            down: 0,
            outcome: "cut at shutdown",
        };
        let mark = |count: &mut u64, counter: &Counter, bytes: &[u8]| {
            *count += bytes.len() as u64;
            counter.inc_by(bytes.len() as u64);
            let now = started.elapsed().as_millis();
            heard.store(u64::try_from(now).unwrap_or(u64::MAX), Ordering::Relaxed);
        };
        let (client_reads, mut client_writes) = tokio::io::split(TokioIo::new(client));
        let (upstream_reads, mut upstream_writes) = tokio::io::split(TokioIo::new(upstream));
        let mut client_reads = InspectReader::new(client_reads, |bytes: &[u8]| {
            mark(&mut record.up, &route.tunnel_bytes_up, bytes);
        });
        let mut upstream_reads = InspectReader::new(upstream_reads, |bytes: &[u8]| {
            mark(&mut record.down, &route.tunnel_bytes_down, bytes);
        });
        let to_client = async {
            tokio::io::copy(&mut upstream_reads, &mut client_writes).await?;
            client_writes.shutdown().await
        };
        let to_upstream = async {
            tokio::io::copy(&mut client_reads, &mut upstream_writes).await?;
            upstream_writes.shutdown().await
        };
        // The upstream has the last word: once it has closed, the tunnel is
        // over (a WebSocket's closing handshake is done by then), even if an
        // HTTP/2 client leaves its stream half open. A client that closes
        // first only closes the upstream's side; its answer still flows.
        let mut copying = Box::pin(async {
            tokio::pin!(to_client, to_upstream);
            tokio::select! {
                done = &mut to_client => done,
                Err(error) = &mut to_upstream => Err(error),
            }
        });
        record.outcome = loop {
            let heard_at = heard.load(Ordering::Relaxed);
            let silent_until = started + Duration::from_millis(heard_at) + idle;
            tokio::select! {
                copied = copying.as_mut() => break match copied {
                    Ok(()) => "closed",
                    // Its connection was dropped by the cut.
                    Err(_) if cut.is_cancelled() => "cut at shutdown",
                    Err(error) => {
                        tracing::debug!(%error, "WebSocket tunnel broke");
                        "broken"
                    }
                },
                () = cut.cancelled() => break "cut at shutdown",
                () = tokio::time::sleep_until(silent_until) => {
                    if heard.load(Ordering::Relaxed) == heard_at {
                        break "idle";
                    }
                }
            }
        };
    }
}

/// A tunnel's log line, written when it ends: also when the gateway drops
/// it mid-copy at the end of a drain, whose outcome it starts with.
struct Record<'a> {
    route: &'a RouteMetrics,
    started: Instant,
    /// Bytes from the client to the upstream so far.
    up: u64,
    /// Bytes from the upstream to the client so far.
    down: u64,
    outcome: &'static str,
}

impl Drop for Record<'_> {
    fn drop(&mut self) {
        tracing::info!(
            route = self.route.name(),
            up = self.up,
            down = self.down,
            ms = self.started.elapsed().as_secs_f64() * 1e3,
            outcome = self.outcome,
            "tunnel"
        );
    }
}

/// One count in a gauge, taken back when dropped.
struct Counted(Gauge);

impl Counted {
    fn new(gauge: &Gauge) -> Self {
        gauge.inc();
        Self(gauge.clone())
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// The tunnels a client connection's requests open.
pub struct Tunnels {
    /// An HTTP/1.1 connection's, which is the connection itself: its task
    /// takes it once hyper is done with the connection.
    connection: Mutex<Option<Tunnel>>,
    /// The connection's framing reader, told to stop following requests.
    verdicts: Arc<Verdicts>,
    /// The connection's requests, among which an HTTP/2 stream's tunnel counts.
    activity: Arc<Activity>,
}

impl Tunnels {
    pub fn new(verdicts: Arc<Verdicts>, activity: Arc<Activity>) -> Self {
        Self {
            connection: Mutex::new(None),
            verdicts,
            activity,
        }
    }

    /// HTTP/1.1: keeps `tunnel` for the connection's task. From here on the
    /// bytes the client sends are the tunnel's, not requests.
    pub fn take_over(&self, tunnel: Tunnel) {
        self.verdicts.mark_tunnelled();
        *self.lock() = Some(tunnel);
    }

    /// HTTP/2: runs `tunnel`, one stream of the connection, in a task of its
    /// own, counted as a request in progress on the connection so that it
    /// is not closed as idle.
    pub fn spawn(&self, tunnel: Tunnel) {
        let busy = self.activity.start();
        tokio::spawn(async move {
            tunnel.run().await;
            busy.finish();
        });
    }

    /// The connection's tunnel to run, if a handshake made it one.
    pub fn take(&self) -> Option<Tunnel> {
        self.lock().take()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Tunnel>> {
        self.connection
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(name, value)| {
                (
                    http::HeaderName::from_static(name),
                    HeaderValue::from_static(value),
                )
            })
            .collect()
    }

    #[test]
    fn a_websocket_handshake_is_an_upgrade() {
        let asked = headers(&[
            ("connection", "keep-alive, Upgrade"),
            ("upgrade", "WebSocket"),
        ]);
        let upgrade = websocket_upgrade(&Method::GET, Version::HTTP_11, &asked);
        assert_eq!(upgrade, Some(HeaderValue::from_static("WebSocket")));
    }

    #[test]
    fn the_tokens_may_be_in_any_of_their_fields() {
        let mut asked = headers(&[("connection", "keep-alive"), ("upgrade", "h2c")]);
        asked.append(CONNECTION, HeaderValue::from_static("Upgrade"));
        asked.append(UPGRADE, HeaderValue::from_static("websocket/13"));
        let upgrade = websocket_upgrade(&Method::GET, Version::HTTP_11, &asked);
        assert_eq!(upgrade, Some(HeaderValue::from_static("websocket/13")));
    }

    #[test]
    fn anything_else_is_not() {
        let asked = headers(&[("connection", "upgrade"), ("upgrade", "websocket")]);
        let h2c = headers(&[("connection", "upgrade"), ("upgrade", "h2c")]);
        let unlisted = headers(&[("connection", "keep-alive"), ("upgrade", "websocket")]);
        let cases = [
            (Method::POST, Version::HTTP_11, &asked),
            (Method::GET, Version::HTTP_2, &asked),
            (Method::GET, Version::HTTP_10, &asked),
            (Method::GET, Version::HTTP_11, &h2c),
            (Method::GET, Version::HTTP_11, &unlisted),
        ];
        for (method, version, headers) in cases {
            assert_eq!(websocket_upgrade(&method, version, headers), None);
        }
    }

    fn request(method: Method, version: Version, protocol: Option<&'static str>) -> Request<()> {
        let mut request = Request::builder()
            .method(method)
            .version(version)
            .body(())
            .unwrap();
        if let Some(protocol) = protocol {
            request
                .extensions_mut()
                .insert(Protocol::from_static(protocol));
        }
        request
    }

    #[test]
    fn an_http2_connect_for_websocket_is_a_handshake() {
        let connect = request(Method::CONNECT, Version::HTTP_2, Some("websocket"));
        assert_eq!(handshake(&connect), Some(Handshake::Connect));
        for other in [
            request(Method::CONNECT, Version::HTTP_2, None),
            request(Method::CONNECT, Version::HTTP_2, Some("connect-udp")),
            request(Method::CONNECT, Version::HTTP_11, Some("websocket")),
            request(Method::GET, Version::HTTP_2, Some("websocket")),
        ] {
            assert_eq!(handshake(&other), None, "{other:?}");
        }
    }

    #[test]
    fn the_accept_is_rfc_6455s() {
        // The example in RFC 6455 §1.3.
        assert_eq!(
            accept_for("dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn a_nonce_turns_connect_into_get_and_checks_its_accept() {
        let nonce = Nonce::random();
        let other = Nonce::random();
        assert_ne!(nonce.key, other.key);
        let (mut parts, ()) =
            request(Method::CONNECT, Version::HTTP_2, Some("websocket")).into_parts();
        nonce.ask(&mut parts);
        assert_eq!(parts.method, Method::GET);
        assert_eq!(parts.headers[SEC_WEBSOCKET_VERSION], "13");
        let key = parts.headers[SEC_WEBSOCKET_KEY].to_str().unwrap();
        assert_eq!(BASE64.decode(key).unwrap().len(), 16);

        let mut answer = HeaderMap::new();
        answer.insert(
            SEC_WEBSOCKET_ACCEPT,
            HeaderValue::from_str(&accept_for(key)).unwrap(),
        );
        assert!(nonce.accepted(&mut answer));
        assert!(answer.is_empty());
        let mut wrong = HeaderMap::new();
        wrong.insert(
            SEC_WEBSOCKET_ACCEPT,
            HeaderValue::from_str(&other.accept).unwrap(),
        );
        assert!(!nonce.accepted(&mut wrong));
        assert!(!nonce.accepted(&mut HeaderMap::new()));
    }

    #[test]
    fn the_upgrade_headers_are_set_again() {
        let mut map = HeaderMap::new();
        ask_upgrade(&mut map, HeaderValue::from_static("websocket"));
        assert_eq!(map[CONNECTION], "upgrade");
        assert_eq!(map[UPGRADE], "websocket");
    }
}
