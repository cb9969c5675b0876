//! WebSocket tunnels, on routes that allow them (`websocket = true`).
//!
//! `Upgrade` is hop-by-hop, so by default it stops at the gateway and the
//! upstream sees a plain `GET`. On a route that allows WebSockets, an
//! HTTP/1.1 `GET` asking to switch to `websocket` goes to the upstream on a
//! connection of its own (never pooled, never coalesced: role `bypass`), with
//! its `Upgrade` and `Connection: upgrade` set again for that hop. If the
//! upstream answers `101 Switching Protocols`, the client gets the 101, and
//! once hyper has let go of both connections they are joined as a tunnel
//! that copies bytes both ways until either side closes, nothing moves for
//! the route's `idle_timeout`, or the shutdown grace runs out. Any other
//! answer is passed on as it is.
//!
//! The tunnel runs in the client connection's own task, after hyper is done
//! with the connection, so it holds the connection's `max_connections` slot
//! and is waited for (and cut) on shutdown like any stream in flight.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use http::header::{CONNECTION, UPGRADE};
use http::{HeaderMap, HeaderValue, Method, Version};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use prometheus_client::metrics::gauge::Gauge;
use tokio::time::Instant;
use tokio_util::io::InspectReader;

use crate::framing::Verdicts;

/// The protocol token a tunnel is opened for.
const WEBSOCKET: &str = "websocket";

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

/// A tunnel both sides agreed to, waiting for hyper to hand over their
/// connections.
pub struct Tunnel {
    /// The route's name, for the log line.
    route: Arc<str>,
    client: OnUpgrade,
    upstream: OnUpgrade,
    idle: Duration,
    /// Counts the tunnel among the requests in progress while it is open
    /// (a shutdown names it among the streams it cuts).
    _active: Counted,
}

impl Tunnel {
    /// A tunnel of `route` between a client's and an upstream's connection,
    /// closed after `idle` without a byte either way; counted in `active`.
    pub fn new(
        route: Arc<str>,
        client: OnUpgrade,
        upstream: OnUpgrade,
        idle: Duration,
        active: &Gauge,
    ) -> Self {
        Self {
            route,
            client,
            upstream,
            idle,
            _active: Counted::new(active),
        }
    }

    /// Copies bytes both ways until either side closes or falls silent.
    pub async fn run(self) {
        let Self {
            route,
            client,
            upstream,
            idle,
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
        let (mut up, mut down) = (0u64, 0u64);
        let mark = |count: &mut u64, bytes: &[u8]| {
            *count += bytes.len() as u64;
            let now = started.elapsed().as_millis();
            heard.store(u64::try_from(now).unwrap_or(u64::MAX), Ordering::Relaxed);
        };
        let mut client = InspectReader::new(TokioIo::new(client), |bytes: &[u8]| {
            mark(&mut up, bytes);
        });
        let mut upstream = InspectReader::new(TokioIo::new(upstream), |bytes: &[u8]| {
            mark(&mut down, bytes);
        });
        let mut copying = Box::pin(tokio::io::copy_bidirectional(&mut client, &mut upstream));
        let outcome = loop {
            let heard_at = heard.load(Ordering::Relaxed);
            let silent_until = started + Duration::from_millis(heard_at) + idle;
            tokio::select! {
                copied = copying.as_mut() => break match copied {
                    Ok(_) => "closed",
                    Err(error) => {
                        tracing::debug!(%error, "WebSocket tunnel broke");
                        "broken"
                    }
                },
                () = tokio::time::sleep_until(silent_until) => {
                    if heard.load(Ordering::Relaxed) == heard_at {
                        break "idle";
                    }
                }
            }
        };
        drop(copying);
        drop((client, upstream));
        tracing::info!(
            route = &*route,
            up,
            down,
            ms = started.elapsed().as_secs_f64() * 1e3,
            outcome,
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

/// The tunnel a connection's handler agreed to, if any; the connection's
/// task takes it once hyper is done with the connection.
pub struct Pending {
    tunnel: Mutex<Option<Tunnel>>,
    /// The connection's framing reader, told to stop following requests.
    verdicts: Arc<Verdicts>,
}

impl Pending {
    pub fn new(verdicts: Arc<Verdicts>) -> Self {
        Self {
            tunnel: Mutex::new(None),
            verdicts,
        }
    }

    /// Keeps `tunnel` for the connection's task. From here on the bytes
    /// the client sends are the tunnel's, not requests.
    pub fn open(&self, tunnel: Tunnel) {
        self.verdicts.mark_tunnelled();
        *self.lock() = Some(tunnel);
    }

    /// The tunnel to run, if one was agreed to.
    pub fn take(&self) -> Option<Tunnel> {
        self.lock().take()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Tunnel>> {
        self.tunnel.lock().unwrap_or_else(PoisonError::into_inner)
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

    #[test]
    fn the_upgrade_headers_are_set_again() {
        let mut map = HeaderMap::new();
        ask_upgrade(&mut map, HeaderValue::from_static("websocket"));
        assert_eq!(map[CONNECTION], "upgrade");
        assert_eq!(map[UPGRADE], "websocket");
    }
}
