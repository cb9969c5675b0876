//! The Prometheus metrics of one gateway, and per-route handles to them.
//!
//! Each gateway owns its own [`Registry`] (no globals), so tests can run
//! several gateways in one process. Route handles are resolved once at start
//! (the label lookups happen then, not per request) and every series exists
//! at zero from the first scrape.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::coalesce::Role;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabel {
    route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RoleLabels {
    route: String,
    role: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DirectionLabels {
    route: String,
    /// `up` (client to upstream) or `down`.
    direction: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatusLabels {
    route: String,
    status: u16,
}

type HistogramFamily = Family<RouteLabel, Histogram, fn() -> Histogram>;

/// Every metric the gateway exports.
pub struct Metrics {
    registry: Registry,
    requests: Family<RoleLabels, Counter>,
    responses: Family<StatusLabels, Counter>,
    upstream_requests: Family<RouteLabel, Counter>,
    upstream_cancelled: Family<RouteLabel, Counter>,
    upstream_broken: Family<RouteLabel, Counter>,
    flights_active: Family<RouteLabel, Gauge>,
    subscribers_active: Family<RouteLabel, Gauge>,
    replayed_bytes: Family<RouteLabel, Counter>,
    first_byte_seconds: HistogramFamily,
    tunnels_active: Family<RouteLabel, Gauge>,
    tunnel_bytes: Family<DirectionLabels, Counter>,
    /// Client connections open now.
    pub connections_active: Gauge,
    /// Requests whose response has not ended yet.
    pub requests_active: Gauge,
    /// Bytes held by all flight logs together.
    pub buffered_bytes: Gauge,
}

/// The series of one route, resolved once. Cheap to clone: clones share them.
#[derive(Clone)]
pub struct RouteMetrics(Arc<RouteSeries>);

/// What a [`RouteMetrics`] handle points at.
pub struct RouteSeries {
    route: String,
    responses: Family<StatusLabels, Counter>,
    /// `responses` by status, resolved on first use so that counting a
    /// response neither allocates a label nor takes the family's lock.
    by_status: Box<[OnceLock<Counter>]>,
    leader: Counter,
    follower: Counter,
    bypass: Counter,
    /// Requests sent upstream: bypass, leaders, failed ones included.
    pub upstream_requests: Counter,
    /// Upstream requests closed because nobody was left to read them.
    pub upstream_cancelled: Counter,
    /// Upstream response bodies that stopped short: their connection broke,
    /// or they were silent past `idle_timeout`.
    pub upstream_broken: Counter,
    /// Flights whose upstream request is still running.
    pub flights_active: Gauge,
    /// Clients subscribed to a flight now.
    pub subscribers_active: Gauge,
    /// Bytes served to followers from a flight's log rather than live.
    pub replayed_bytes: Counter,
    first_byte: Histogram,
    /// WebSocket tunnels open now.
    pub tunnels_active: Gauge,
    /// Bytes tunnelled from clients to the upstream.
    pub tunnel_bytes_up: Counter,
    /// Bytes tunnelled from the upstream to clients.
    pub tunnel_bytes_down: Counter,
}

impl std::ops::Deref for RouteMetrics {
    type Target = RouteSeries;

    fn deref(&self) -> &RouteSeries {
        &self.0
    }
}

/// Statuses are three digits; anything else is counted as 0.
const STATUSES: usize = 600;

fn first_byte_histogram() -> Histogram {
    // 1 ms to ~65 s: model time to first token spans that whole range.
    Histogram::new(exponential_buckets(0.001, 2.0, 17))
}

impl Metrics {
    /// Creates the registry with every metric registered.
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let requests = Family::<RoleLabels, Counter>::default();
        let responses = Family::<StatusLabels, Counter>::default();
        let upstream_requests = Family::<RouteLabel, Counter>::default();
        let upstream_cancelled = Family::<RouteLabel, Counter>::default();
        let upstream_broken = Family::<RouteLabel, Counter>::default();
        let flights_active = Family::<RouteLabel, Gauge>::default();
        let subscribers_active = Family::<RouteLabel, Gauge>::default();
        let replayed_bytes = Family::<RouteLabel, Counter>::default();
        let first_byte_seconds: HistogramFamily =
            Family::new_with_constructor(first_byte_histogram);
        let tunnels_active = Family::<RouteLabel, Gauge>::default();
        let tunnel_bytes = Family::<DirectionLabels, Counter>::default();
        let connections_active = Gauge::default();
        let requests_active = Gauge::default();
        let buffered_bytes = Gauge::default();

        registry.register(
            "chorus_requests",
            "Client requests by route and role (leader, follower, bypass)",
            requests.clone(),
        );
        registry.register(
            "chorus_responses",
            "Client responses by route and status (499: the client left first)",
            responses.clone(),
        );
        registry.register(
            "chorus_upstream_requests",
            "Requests sent to the upstream",
            upstream_requests.clone(),
        );
        registry.register(
            "chorus_upstream_cancelled",
            "Upstream requests closed because no client was left",
            upstream_cancelled.clone(),
        );
        registry.register(
            "chorus_upstream_broken",
            "Upstream response bodies that stopped short (connection broke, or silent past idle_timeout)",
            upstream_broken.clone(),
        );
        registry.register(
            "chorus_flights_active",
            "Flights whose upstream request is running",
            flights_active.clone(),
        );
        registry.register(
            "chorus_subscribers_active",
            "Clients subscribed to a flight",
            subscribers_active.clone(),
        );
        registry.register(
            "chorus_replayed_bytes",
            "Bytes served to late joiners from a flight's log",
            replayed_bytes.clone(),
        );
        registry.register(
            "chorus_upstream_first_byte_seconds",
            "Time from sending an upstream request to its response head",
            first_byte_seconds.clone(),
        );
        registry.register(
            "chorus_tunnels_active",
            "WebSocket tunnels open",
            tunnels_active.clone(),
        );
        registry.register(
            "chorus_tunnel_bytes",
            "Bytes carried by WebSocket tunnels, by direction (up: client to upstream; down)",
            tunnel_bytes.clone(),
        );
        registry.register(
            "chorus_connections_active",
            "Client connections open",
            connections_active.clone(),
        );
        registry.register(
            "chorus_requests_active",
            "Client requests whose response has not ended, and open WebSocket tunnels",
            requests_active.clone(),
        );
        registry.register(
            "chorus_buffered_bytes",
            "Bytes held by all flight logs",
            buffered_bytes.clone(),
        );

        Self {
            registry,
            requests,
            responses,
            upstream_requests,
            upstream_cancelled,
            upstream_broken,
            flights_active,
            subscribers_active,
            replayed_bytes,
            first_byte_seconds,
            tunnels_active,
            tunnel_bytes,
            connections_active,
            requests_active,
            buffered_bytes,
        }
    }

    /// The handles of one route; its series appear at zero from now on.
    pub fn route(&self, name: &str) -> RouteMetrics {
        let label = RouteLabel {
            route: name.to_owned(),
        };
        let role = |role: Role| {
            self.requests.get_or_create_owned(&RoleLabels {
                route: name.to_owned(),
                role: role.as_str(),
            })
        };
        let direction = |direction: &'static str| {
            self.tunnel_bytes.get_or_create_owned(&DirectionLabels {
                route: name.to_owned(),
                direction,
            })
        };
        RouteMetrics(Arc::new(RouteSeries {
            route: name.to_owned(),
            responses: self.responses.clone(),
            by_status: status_slots(),
            leader: role(Role::Leader),
            follower: role(Role::Follower),
            bypass: role(Role::Bypass),
            upstream_requests: self.upstream_requests.get_or_create_owned(&label),
            upstream_cancelled: self.upstream_cancelled.get_or_create_owned(&label),
            upstream_broken: self.upstream_broken.get_or_create_owned(&label),
            flights_active: self.flights_active.get_or_create_owned(&label),
            subscribers_active: self.subscribers_active.get_or_create_owned(&label),
            replayed_bytes: self.replayed_bytes.get_or_create_owned(&label),
            first_byte: self.first_byte_seconds.get_or_create_owned(&label),
            tunnels_active: self.tunnels_active.get_or_create_owned(&label),
            tunnel_bytes_up: direction("up"),
            tunnel_bytes_down: direction("down"),
        }))
    }

    /// Handles for requests that match no route: only their bypass count and
    /// responses are exported (under `route=""`), not empty flight series.
    pub fn unrouted(&self) -> RouteMetrics {
        RouteMetrics(Arc::new(RouteSeries {
            route: String::new(),
            responses: self.responses.clone(),
            by_status: status_slots(),
            leader: Counter::default(),
            follower: Counter::default(),
            bypass: self.requests.get_or_create_owned(&RoleLabels {
                route: String::new(),
                role: Role::Bypass.as_str(),
            }),
            upstream_requests: Counter::default(),
            upstream_cancelled: Counter::default(),
            upstream_broken: Counter::default(),
            flights_active: Gauge::default(),
            subscribers_active: Gauge::default(),
            replayed_bytes: Counter::default(),
            first_byte: first_byte_histogram(),
            tunnels_active: Gauge::default(),
            tunnel_bytes_up: Counter::default(),
            tunnel_bytes_down: Counter::default(),
        }))
    }

    /// The Prometheus text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::prometheus_text::encode(&mut text, &self.registry);
        text
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

fn status_slots() -> Box<[OnceLock<Counter>]> {
    (0..STATUSES).map(|_| OnceLock::new()).collect()
}

impl RouteSeries {
    /// The route's name.
    pub fn name(&self) -> &str {
        &self.route
    }

    /// Counts a request under the role that answers it.
    pub fn request(&self, role: Role) {
        match role {
            Role::Leader => self.leader.inc(),
            Role::Follower => self.follower.inc(),
            Role::Bypass => self.bypass.inc(),
        };
    }

    /// Counts a finished response by status (499 when the client left first).
    pub fn response(&self, status: u16) {
        let status = if usize::from(status) < STATUSES {
            status
        } else {
            0
        };
        self.by_status[usize::from(status)]
            .get_or_init(|| {
                self.responses.get_or_create_owned(&StatusLabels {
                    route: self.route.clone(),
                    status,
                })
            })
            .inc();
    }

    /// Records the time the upstream took to send its response head.
    pub fn first_byte(&self, elapsed: Duration) {
        self.first_byte.observe(elapsed.as_secs_f64());
    }
}

/// The content type of [`Metrics::encode`].
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;
