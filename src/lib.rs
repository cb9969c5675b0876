//! chorus: a reverse-proxy gateway for streaming LLM backends that fans
//! identical in-flight requests in onto ONE upstream request, and fans its
//! response out, byte for byte, to every one of them — without buffering.
//!
//! # Layout
//!
//! - `main.rs`: the command line (run, check, demo, mock-upstream, health);
//!   logging set-up. Beside it, the binary's own `cli/`: the process's
//!   open-files limit and memory purging, signals, the health probe.
//! - [`config`]: the TOML schema, defaults, `${VAR}` expansion, validation.
//! - [`server`]: the listener, TLS, HTTP/1.1 + HTTP/2, connection limits, drain.
//! - [`activity`]: what each client connection is doing: the idle timeout,
//!   and closing connections that reset streams as they open them.
//! - [`framing`]: a first reading of HTTP/1.1 request heads, refusing the
//!   ambiguous framings requests are smuggled with, and what hyper would.
//! - [`flushes`]: when a connection's writes have left: an upstream break
//!   waits for the bytes before it.
//! - [`proxy`]: the request handler: route, limits, body, coalesce or pass through.
//! - [`route`]: the route table and its longest-prefix match.
//! - [`target`]: what is checked of a request's target and host before it
//!   is routed (authorities, HTTP/2's looser parsing), and the path it is
//!   routed by, its dot segments resolved.
//! - [`tunnel`]: WebSocket handshakes passed on (HTTP/1.1 and HTTP/2), and the byte tunnel after a `101`.
//! - [`gather`]: small vectored writes sent as one plain write, both sides.
//! - [`quiet`]: a future polled only when its own waker fired, for the rare
//!   signals (drain, shutdown, idle) a busy task waits on.
//! - [`headers`]: hop-by-hop removal, `X-Forwarded-*`, `Host`, the SSE rewrite.
//! - [`upstream`]: a route's upstream: request building, timeouts, the response body.
//! - [`pool`]: upstream connections kept between requests (HTTP/1.1 one
//!   request at a time, HTTP/2 shared), and the retries of requests the
//!   upstream never acted on.
//! - [`coalesce`]: the key, the flight (a shared append-only log), its pump,
//!   and the registry of open flights.
//! - [`response`]: the response body served to clients and its access log line.
//! - [`admin`] and [`metrics`]: `/healthz`, `/readyz`, `/metrics`.
//! - [`logging`]: what dependencies may log (nothing of a request).
//! - [`error`]: request-path errors and their one mapping to status and JSON.
//! - [`tls`]: rustls for both sides; the server certificate and its reload;
//!   the TLS file checks of `chorus check`.
//! - [`mock`]: the built-in mock LLM upstream for the demo, tests and benchmarks.
//!
//! # Life of a request
//!
//! ```text
//! client ─► server ─► proxy ─► route (longest prefix)
//!                        │
//!                        ├─ not coalescible ─► upstream ─► body streamed straight back
//!                        │
//!                        └─ coalescible ─► coalesce::key (blake3 of the canonical request)
//!                                            │
//!                              coalesce::registry: join-or-lead
//!                      leader: spawn the pump │ follower: subscribe
//!                                            ▼
//!          upstream ─► pump ─► flight (append-only log of Bytes) ─► every Subscriber body
//! ```

pub mod activity;
pub mod admin;
pub mod coalesce;
pub mod config;
pub mod error;
pub mod flushes;
pub mod framing;
pub mod gather;
pub mod headers;
pub mod heard;
pub mod logging;
pub mod metrics;
pub mod mock;
pub mod pool;
pub mod proxy;
pub mod quiet;
pub mod response;
pub mod route;
pub mod server;
pub mod target;
pub mod tls;
pub mod tunnel;
pub mod upstream;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use crate::admin::Admin;
use crate::config::Config;
use crate::metrics::Metrics;
use crate::proxy::{Limits, Proxy};
use crate::route::{Route, RouteTable};
use crate::tls::{ServerCert, TlsError};

/// The sockets a gateway serves on, bound by the caller (tests bind port 0).
pub struct Listeners {
    /// The client-facing listener.
    pub gateway: TcpListener,
    /// The admin listener, if any.
    pub admin: Option<TcpListener>,
}

/// Why a gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A route's upstream TLS files are unusable.
    #[error("routes[{index}].upstream TLS: {source}")]
    UpstreamTls { index: usize, source: TlsError },
    /// The server certificate or key is unusable.
    #[error("server.tls: {0}")]
    ServerTls(TlsError),
}

/// What [`run_with`] takes besides the config, the sockets and the shutdown.
#[derive(Debug)]
pub struct RunOptions {
    /// Where reloads of the server certificate are asked for (`main` asks on
    /// SIGHUP), from [`tls::reload_channel`]. Default: none.
    pub reload: Option<tls::ReloadRequests>,
    /// How often the server certificate and key files are looked at, to
    /// reload them when they change; `None` turns that off. Default: 5 s.
    pub cert_poll: Option<Duration>,
    /// Cancelled to end a drain at once, as if `shutdown_grace` ran out
    /// (`main` cancels it on a second SIGTERM or SIGINT). Default: none.
    pub hurry: Option<CancellationToken>,
}

impl Default for RunOptions {
    fn default() -> Self {
        Self {
            reload: None,
            cert_poll: Some(tls::reload::POLL_INTERVAL),
            hurry: None,
        }
    }
}

/// Runs a gateway on `listeners` until `shutdown` resolves, then drains:
/// the listener closes, `/readyz` turns 503, streams in flight get up to
/// `server.shutdown_grace` to finish.
pub async fn run(
    config: Config,
    listeners: Listeners,
    shutdown: impl Future<Output = ()>,
) -> Result<(), StartError> {
    run_with(config, listeners, shutdown, RunOptions::default()).await
}

/// [`run`], with reloads of the server certificate asked for through
/// `options.reload` and its files watched every `options.cert_poll`.
pub async fn run_with(
    config: Config,
    listeners: Listeners,
    shutdown: impl Future<Output = ()>,
    options: RunOptions,
) -> Result<(), StartError> {
    let metrics = Arc::new(Metrics::new());
    let routes = config
        .routes
        .iter()
        .enumerate()
        .map(|(index, route)| {
            Route::new(
                route,
                config.server.send_timeout,
                &metrics,
                &metrics.buffered_bytes,
            )
            .map_err(|source| StartError::UpstreamTls { index, source })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let server_cert = match &config.server.tls {
        Some(tls) => Some(
            ServerCert::load(&tls.cert, &tls.key)
                .map_err(|problems| StartError::ServerTls(problems.into()))?,
        ),
        None => None,
    };
    let tls = match &server_cert {
        Some(cert) => {
            let config = tls::server_config(Arc::clone(cert)).map_err(StartError::ServerTls)?;
            tracing::info!(sha256 = %cert.fingerprint(), "serving HTTPS (TLS 1.2 and 1.3, ALPN h2 and http/1.1)");
            Some(TlsAcceptor::from(Arc::new(config)))
        }
        None => None,
    };
    // Aborted when the gateway stops; pending reload requests then fail.
    let reloads = tokio::spawn(tls::reload::watch(
        server_cert,
        options.reload,
        options.cert_poll,
    ));

    let cut = CancellationToken::new();
    let drain = CancellationToken::new();
    let stop_admin = CancellationToken::new();
    let proxy = Arc::new(Proxy::new(
        RouteTable::new(routes),
        Arc::clone(&metrics),
        Limits::from(&config.server),
        cut.child_token(),
    ));
    let ready = Arc::new(AtomicBool::new(true));
    let admin = listeners.admin.map(|listener| {
        let admin = Arc::new(Admin {
            metrics: Arc::clone(&metrics),
            ready: Arc::clone(&ready),
        });
        tokio::spawn(admin::serve(listener, admin, stop_admin.clone()))
    });

    let listener = server::Listener {
        tcp: listeners.gateway,
        tls,
    };
    let server = server::serve(
        listener,
        proxy,
        Arc::clone(&metrics),
        &config.server,
        drain.clone(),
        options.hurry.unwrap_or_default(),
        cut.clone(),
    );
    tokio::pin!(server);
    tokio::select! {
        () = &mut server => {}
        () = shutdown => {
            tracing::info!("draining: no new connections, streams in flight go on");
            ready.store(false, Ordering::Relaxed);
            drain.cancel();
            server.await;
        }
    }
    cut.cancel();
    stop_admin.cancel();
    if let Some(admin) = admin {
        let _ = admin.await;
    }
    reloads.abort();
    tracing::info!("stopped");
    Ok(())
}
