//! The route table: each route's upstream, coalescing settings and metrics,
//! and the longest-prefix match that picks a route for a path.

use std::sync::Arc;
use std::time::Duration;

use http::{HeaderName, Method};
use prometheus_client::metrics::gauge::Gauge;

use crate::coalesce::flight::Settings;
use crate::config::RouteConfig;
use crate::metrics::{Metrics, RouteMetrics};
use crate::tls::TlsError;
use crate::upstream::Upstream;

/// One `[[routes]]` entry, ready to serve.
pub struct Route {
    /// The route's name, its metrics label.
    pub name: Arc<str>,
    /// Requests whose path starts with this are this route's.
    pub path_prefix: String,
    /// Where its requests go.
    pub upstream: Arc<Upstream>,
    /// Whether WebSocket handshakes open tunnels (see [`crate::tunnel`]).
    pub websocket: bool,
    /// Whether coalescing is on for this route.
    pub coalesce: bool,
    /// Methods that coalesce.
    pub methods: Vec<Method>,
    /// Headers whose values are part of the key.
    pub key_headers: Vec<HeaderName>,
    /// Top-level JSON fields left out of the key.
    pub json_ignore_fields: Vec<String>,
    /// What every flight of this route shares.
    pub flights: Arc<Settings>,
    /// The route's series.
    pub metrics: RouteMetrics,
}

impl Route {
    /// Builds a route; fails only on unusable upstream TLS files.
    pub fn new(
        config: &RouteConfig,
        send_timeout: Duration,
        metrics: &Metrics,
        buffered: &Gauge,
    ) -> Result<Self, TlsError> {
        let route_metrics = metrics.route(&config.name);
        let coalesce = &config.coalesce;
        Ok(Self {
            name: Arc::from(config.name.as_str()),
            path_prefix: config.path_prefix.clone(),
            upstream: Arc::new(Upstream::new(
                config,
                route_metrics.upstream_broken.clone(),
            )?),
            websocket: config.websocket,
            coalesce: coalesce.enabled,
            methods: coalesce.methods.clone(),
            key_headers: coalesce.key_headers.clone(),
            json_ignore_fields: coalesce.json_ignore_fields.clone(),
            flights: Arc::new(Settings {
                max_replay_bytes: coalesce.max_replay_bytes,
                max_subscribers: coalesce.max_subscribers,
                linger: coalesce.linger,
                key_headers: coalesce.key_headers.clone(),
                cancel_grace: coalesce.cancel_grace,
                send_timeout,
                metrics: route_metrics.clone(),
                buffered: buffered.clone(),
            }),
            metrics: route_metrics,
        })
    }

    /// Whether requests with this method may share flights on this route.
    pub fn coalesces(&self, method: &Method) -> bool {
        self.coalesce && self.methods.contains(method)
    }
}

/// All routes, longest prefix first.
pub struct RouteTable {
    routes: Vec<Arc<Route>>,
}

impl RouteTable {
    /// A table of `routes`, in any order.
    pub fn new(mut routes: Vec<Route>) -> Self {
        routes.sort_by_key(|route| std::cmp::Reverse(route.path_prefix.len()));
        Self {
            routes: routes.into_iter().map(Arc::new).collect(),
        }
    }

    /// The route with the longest `path_prefix` that `path` starts with.
    pub fn find(&self, path: &str) -> Option<&Arc<Route>> {
        self.routes
            .iter()
            .find(|route| path.starts_with(&route.path_prefix))
    }

    /// Whether any route allows WebSockets.
    pub fn websockets(&self) -> bool {
        self.routes.iter().any(|route| route.websocket)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RouteConfig;

    fn table(prefixes: &[&str]) -> RouteTable {
        let metrics = Metrics::new();
        let routes = prefixes
            .iter()
            .map(|prefix| {
                let config = RouteConfig::new(
                    prefix.to_string(),
                    prefix.to_string(),
                    "http://127.0.0.1:9".parse().unwrap(),
                );
                Route::new(
                    &config,
                    Duration::from_secs(60),
                    &metrics,
                    &metrics.buffered_bytes,
                )
                .unwrap()
            })
            .collect();
        RouteTable::new(routes)
    }

    #[test]
    fn longest_prefix_wins() {
        let table = table(&["/", "/v1/", "/v1/chat/"]);
        let name = |path| table.find(path).map(|route| route.name.to_string());
        assert_eq!(name("/v1/chat/completions").as_deref(), Some("/v1/chat/"));
        assert_eq!(name("/v1/models").as_deref(), Some("/v1/"));
        assert_eq!(name("/health").as_deref(), Some("/"));
    }

    #[test]
    fn no_match_is_none() {
        let table = table(&["/api/"]);
        assert!(table.find("/other").is_none());
    }
}
