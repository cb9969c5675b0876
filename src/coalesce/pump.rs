//! The pump: the one task per flight that sends the upstream request and
//! reads its response into the flight's log.
//!
//! The fetch belongs to the flight, not to the client that started it: the
//! leader leaving changes nothing while anyone else is subscribed. The pump
//! waits for no client in particular, only, once every subscriber is more
//! than `max_replay_bytes` behind, for any one of them to catch up
//! (`Flight::caught_up`). It stops early in two cases only: nobody has been
//! subscribed for `cancel_grace` (the upstream request is dropped, closing its
//! connection so the backend stops generating), or the gateway's shutdown
//! grace ran out. Whatever ends it, a panic included, a drop guard ends the
//! flight for every subscriber and removes it from the registry.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, HeaderValue, Request, StatusCode};
use http_body::Body;
use http_body_util::{BodyExt, Full};
use hyper::ext::ReasonPhrase;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::flight::{End, Flight, ResponseHead};
use super::registry::Registry;
use crate::error::{BodyError, GatewayError};
use crate::pool::Dispatch;
use crate::quiet::Quiet;
use crate::upstream::Upstream;

/// Everything a flight's pump needs.
pub struct Pump {
    /// The flight to fill.
    pub flight: Arc<Flight>,
    /// Where the flight is registered, to remove it at the end.
    pub registry: Registry,
    /// The route's upstream.
    pub upstream: Arc<Upstream>,
    /// The leader's request, rewritten for the upstream (or why it could not be).
    pub request: Result<Request<Full<Bytes>>, GatewayError>,
    /// Cancelled when the gateway's shutdown grace runs out.
    pub shutdown: CancellationToken,
    /// `server.max_buffered_bytes`: past it, the flight sheds what it holds.
    pub max_buffered: u64,
}

/// How the upstream part of a flight ended, for its log line.
enum Outcome {
    /// The body ended cleanly.
    Complete(StatusCode),
    /// The upstream could not be asked or did not answer in time.
    Failed(StatusCode),
    /// The body stopped short.
    Broken(BodyError),
    /// Nobody was left to read it.
    Cancelled,
    /// The gateway shut down first.
    Shutdown,
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Complete(status) => write!(f, "complete ({})", status.as_u16()),
            Self::Failed(status) => write!(f, "failed ({})", status.as_u16()),
            Self::Broken(error) => write!(f, "broken ({error})"),
            Self::Cancelled => f.write_str("cancelled"),
            Self::Shutdown => f.write_str("shutdown"),
        }
    }
}

impl Pump {
    /// Runs the pump on its own task.
    pub fn spawn(self) {
        // Boxed: tokio copies a task's future on its way in, and its stage
        // (sized as the future, here ~2.9 KB) whole each time it sets it:
        // ten copies, 29 KB per flight, where a box is copied as 8 bytes
        // (`bench/README.md`, Passthrough).
        tokio::spawn(Box::pin(self.run()));
    }

    async fn run(self) {
        let Pump {
            flight,
            registry,
            upstream,
            request,
            shutdown,
            max_buffered,
        } = self;
        let settings = flight.settings();
        settings.metrics.flights_active.inc();
        let mut guard = Guard {
            flight: Arc::clone(&flight),
            registry,
            active: true,
        };

        let outcome = stream(&flight, &upstream, request, &shutdown, max_buffered).await;
        guard.active = false;
        settings.metrics.flights_active.dec();
        let (subscribers, bytes) = flight.tally();
        tracing::debug!(
            key = %flight.key().short(),
            subscribers,
            bytes,
            outcome = %outcome,
            "flight ended"
        );

        if flight.lingering() {
            tokio::select! {
                () = tokio::time::sleep(settings.linger) => {}
                () = shutdown.cancelled() => {}
            }
            flight.close();
        }
        // Out of the registry; its subscribers may still be reading.
        drop(guard);
        if flight.watched() {
            tokio::select! {
                () = flight.watch_stalls() => {}
                () = shutdown.cancelled() => {}
            }
        }
    }
}

/// Sends the request and reads the response into the flight.
async fn stream(
    flight: &Flight,
    upstream: &Arc<Upstream>,
    request: Result<Request<Full<Bytes>>, GatewayError>,
    shutdown: &CancellationToken,
    max_buffered: u64,
) -> Outcome {
    let settings = flight.settings();
    let request = match request {
        Ok(request) => request,
        Err(error) => return failed(flight, error),
    };
    // Quiet: the pump wakes for every chunk, these two almost never.
    let deserted = Quiet::new(flight.deserted(settings.cancel_grace));
    let shut_down = Quiet::new(shutdown.cancelled());
    tokio::pin!(deserted, shut_down);

    let dispatched = AtomicBool::new(false);
    let dispatch = Dispatch::new(&settings.metrics.upstream_requests, &dispatched);
    let sent = Instant::now();
    let response = tokio::select! {
        biased;
        () = &mut deserted => return cancelled(flight, dispatched.load(Ordering::Relaxed)),
        () = &mut shut_down => return interrupted(flight),
        response = upstream.send(request, &dispatch) => response,
    };
    let response = match response {
        Ok(response) => response,
        Err(error) => return failed(flight, error),
    };
    settings.metrics.first_byte(sent.elapsed());

    let (parts, mut body) = response.into_parts();
    let status = parts.status;
    let mut headers = parts.headers;
    upstream.to_downstream(status, &mut headers);
    own_values(&mut headers);
    let ended = body.is_end_stream();
    let reason = parts.extensions.get::<ReasonPhrase>().cloned();
    let head = ResponseHead {
        status,
        reason,
        headers,
    };
    flight.set_head(head, ended);
    if ended {
        return Outcome::Complete(status);
    }
    loop {
        let frame = tokio::select! {
            biased;
            () = &mut deserted => return cancelled(flight, true),
            () = &mut shut_down => return interrupted(flight),
            frame = body.frame() => frame,
        };
        match frame {
            // The upstream ended its body.
            None => {
                flight.finish(End::Complete);
                return Outcome::Complete(status);
            }
            // The upstream broke or went silent mid-body.
            Some(Err(error)) => {
                flight.finish(End::Broken(error.clone()));
                return Outcome::Broken(error);
            }
            // A data frame: append it, ending the flight with it if it is the last.
            Some(Ok(frame)) => {
                let Ok(data) = frame.into_data() else {
                    // None come: `UpstreamBody` ends at trailers, which are
                    // not relayed.
                    continue;
                };
                let last = body.is_end_stream();
                if !data.is_empty() {
                    // A chunk from the client library is a slice of its read
                    // buffer: kept in the log, it would pin that whole buffer
                    // (and make the library allocate a fresh one per read).
                    // One right-sized copy per chunk, shared by every reader.
                    let paced = flight.append(Bytes::copy_from_slice(&data), last);
                    if settings.buffered.get().max(0) as u64 > max_buffered {
                        flight.shed();
                    }
                    if paced {
                        loop {
                            tokio::select! {
                                biased;
                                () = &mut deserted => return cancelled(flight, true),
                                () = &mut shut_down => return interrupted(flight),
                                caught_up = flight.caught_up() => if caught_up { break },
                            }
                        }
                    }
                } else if last {
                    flight.finish(End::Complete);
                }
                if last {
                    return Outcome::Complete(status);
                }
            }
        }
    }
}

/// Gives the header values one buffer of their own. Parsed values are
/// slices of the client library's read buffer, like body chunks: kept in the
/// flight's head for late joiners, they would pin that whole buffer (8 KiB)
/// for as long as the flight lasts, and make the connection allocate another.
fn own_values(headers: &mut HeaderMap) {
    let mut copy = BytesMut::with_capacity(headers.values().map(HeaderValue::len).sum());
    for value in headers.values() {
        copy.extend_from_slice(value.as_bytes());
    }
    let mut copy = copy.freeze();
    for value in headers.values_mut() {
        let bytes = copy.split_to(value.len());
        // Always valid: the bytes are those of a valid value.
        if let Ok(mut owned) = HeaderValue::from_maybe_shared(bytes) {
            owned.set_sensitive(value.is_sensitive());
            *value = owned;
        }
    }
}

fn failed(flight: &Flight, error: GatewayError) -> Outcome {
    let status = error.status();
    tracing::warn!(
        key = %flight.key().short(),
        status = status.as_u16(),
        error = %crate::error::describe(&error),
        "flight failed"
    );
    flight.fail(error);
    Outcome::Failed(status)
}

/// The flight deserted; its upstream request is counted as cancelled if it
/// had reached a connection.
fn cancelled(flight: &Flight, dispatched: bool) -> Outcome {
    if dispatched {
        flight.settings().metrics.upstream_cancelled.inc();
    }
    flight.finish(End::Broken(BodyError::Cancelled));
    Outcome::Cancelled
}

fn interrupted(flight: &Flight) -> Outcome {
    flight.finish(End::Broken(BodyError::Shutdown));
    Outcome::Shutdown
}

/// Ends the flight and removes it from the registry however the pump ends,
/// a panic included, so that no subscriber hangs and no entry leaks.
struct Guard {
    flight: Arc<Flight>,
    registry: Registry,
    /// Whether the upstream part is still counted in `flights_active`.
    active: bool,
}

impl Drop for Guard {
    fn drop(&mut self) {
        if self.active {
            self.flight.settings().metrics.flights_active.dec();
        }
        // A no-op when the flight already ended.
        self.flight.finish(End::Broken(BodyError::FlightAborted));
        self.flight.close();
        self.registry.remove(&self.flight);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use bytes::Bytes;
    use http::{HeaderMap, Method, StatusCode};
    use http_body_util::BodyExt;

    use super::*;
    use crate::coalesce::flight::{Head, Settings};
    use crate::coalesce::key::{Key, KeyInput};
    use crate::coalesce::registry::Joined;
    use crate::error::GatewayError;
    use crate::metrics::Metrics;

    fn lead(
        registry: &Registry,
        metrics: &Metrics,
    ) -> (Arc<Flight>, crate::coalesce::flight::Subscriber) {
        let key = Key::compute(&KeyInput {
            route: "test",
            method: &Method::POST,
            path_and_query: "/",
            authority: None,
            headers: &HeaderMap::new(),
            key_headers: &[],
            json_ignore_fields: &[],
            body: b"",
        });
        let settings = Arc::new(Settings {
            max_replay_bytes: 1 << 20,
            max_subscribers: 10,
            linger: Duration::from_secs(60),
            key_headers: Vec::new(),
            cancel_grace: Duration::ZERO,
            send_timeout: Duration::from_secs(60),
            metrics: metrics.route("test"),
            buffered: metrics.buffered_bytes.clone(),
        });
        match registry.join_or_lead(key, &settings) {
            Joined::Leader(flight, subscriber) => (flight, subscriber),
            Joined::Follower(_) => panic!("an empty registry has no flight to follow"),
        }
    }

    /// Runs `body` as a pump would, holding the guard, and lets it panic.
    async fn panic_with_guard(
        flight: Arc<Flight>,
        registry: Registry,
        body: impl FnOnce(&Flight) + Send + 'static,
    ) {
        let task = tokio::spawn(async move {
            let _guard = Guard {
                flight: Arc::clone(&flight),
                registry,
                active: false,
            };
            body(&flight);
            panic!("a fault inside the pump");
        });
        assert!(task.await.unwrap_err().is_panic());
    }

    #[test]
    fn owned_values_keep_names_order_and_sensitivity_but_not_the_read_buffer() {
        let read = Bytes::copy_from_slice(b"text/event-stream; charset=utf-8abcdef\tg");
        let mut headers = HeaderMap::new();
        let value = |range: std::ops::Range<usize>| {
            HeaderValue::from_maybe_shared(read.slice(range)).unwrap()
        };
        headers.insert("content-type", value(0..32));
        headers.append("x-many", value(32..35));
        headers.append("x-many", value(35..38));
        let mut secret = value(38..40);
        secret.set_sensitive(true);
        headers.insert("x-secret", secret);
        let before = headers.clone();

        own_values(&mut headers);
        assert_eq!(headers, before);
        assert!(headers["x-secret"].is_sensitive());
        drop(before);
        assert!(
            read.is_unique(),
            "a value still points into the read buffer"
        );
    }

    #[tokio::test]
    async fn a_panic_before_the_head_fails_every_subscriber_and_removes_the_flight() {
        let (registry, metrics) = (Registry::default(), Metrics::new());
        let (flight, mut leader) = lead(&registry, &metrics);
        let mut follower = flight.join().unwrap();
        panic_with_guard(flight, registry.clone(), |_| {}).await;

        for subscriber in [&mut leader, &mut follower] {
            match subscriber.head().await {
                Head::Failed(GatewayError::Interrupted(BodyError::FlightAborted)) => {}
                other => panic!("expected an aborted flight, got {other:?}"),
            }
        }
        assert!(registry.is_empty());
    }

    #[tokio::test]
    async fn a_panic_mid_body_ends_every_subscriber_abnormally_and_removes_the_flight() {
        let (registry, metrics) = (Registry::default(), Metrics::new());
        let (flight, mut leader) = lead(&registry, &metrics);
        panic_with_guard(flight, registry.clone(), |flight| {
            flight.set_head(
                ResponseHead {
                    status: StatusCode::OK,
                    reason: None,
                    headers: HeaderMap::new(),
                },
                false,
            );
            flight.append(Bytes::from_static(b"data: 1\n\n"), false);
        })
        .await;

        let first = leader.frame().await.unwrap().unwrap();
        assert_eq!(first.into_data().unwrap(), "data: 1\n\n");
        assert!(matches!(
            leader.frame().await,
            Some(Err(BodyError::FlightAborted))
        ));
        // An aborted flight is never lingered, whatever the route's linger.
        assert!(registry.is_empty());
        drop(leader);
        assert_eq!(metrics.buffered_bytes.get(), 0);
    }
}
