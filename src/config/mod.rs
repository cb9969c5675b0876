//! The configuration file: TOML schema, defaults, `${NAME}` expansion and validation.
//!
//! Loading happens in two layers. The document is first parsed into a
//! [`toml::Table`]; every string value in it (inside arrays and sub-tables too,
//! never in keys or comments) has its `${NAME}` references replaced by the
//! environment variable `NAME`. Each section (`[server]`, `[admin]`, each
//! `[[routes]]` element) is then deserialized on its own into private *raw*
//! structs (`deny_unknown_fields`, durations still strings), and one
//! `validate` step turns the raw structs into the typed [`Config`].
//!
//! Loading never stops at the first mistake: every problem in the file is
//! collected into one [`ConfigError`], each [`Problem`] naming the file, the key
//! as a dotted path (`server.listen`, `routes[1].coalesce.linger`,
//! `routes[0].upstream_headers.authorization`) and what is wrong, so
//! `chorus check` can print them all at once.
//!
//! Conventions of the file:
//! - Durations are strings parsed by [`humantime::parse_duration`]: `"250ms"`,
//!   `"30s"`, `"5m"`, `"1h"`, at most 365 days.
//! - Sizes and limits are integers (bytes or counts).
//! - `${NAME}` is replaced by the environment variable `NAME` (letters, digits
//!   and `_`, not starting with a digit); a variable that is not set is a
//!   problem. `$${` is a literal `${`; a `$` not followed by `{` is kept as is.
//! - Relative file paths (`server.tls.cert`, `upstream_ca_file`, ...) are
//!   relative to the working directory of the process, not to the config
//!   file. Files are checked to exist and be readable at load time; their
//!   PEM content is checked when the TLS set-up reads them.
//!
//! # Layout
//!
//! - `mod.rs`: the typed [`Config`] and its sections, their defaults and
//!   constructors, [`Config::load`] and [`Config::parse`] (tests in
//!   `config_tests.rs`).
//! - `problem.rs`: [`ConfigError`], [`Problem`], and the collector every
//!   step reports into.
//! - `env.rs`: `${NAME}` expansion over the parsed document.
//! - `raw.rs`: the raw serde structs, each section deserialized on its own.
//! - `validate.rs`: raw to typed, every rule (tests in `validate_tests.rs`).
//! - `value.rs`: the checks of single values (addresses, URLs, sizes,
//!   durations, files) that `validate` applies.

mod env;
mod problem;
mod raw;
#[cfg(test)]
mod test_support;
mod validate;
mod value;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use http::{HeaderName, HeaderValue, Method, Uri};

use self::env::expand_table;
use self::problem::Problems;
pub use self::problem::{ConfigError, Problem};
use self::raw::RawConfig;
use self::validate::validate;

/// A complete, validated gateway configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// `[server]`: the client-facing listener and its limits. Required.
    pub server: ServerConfig,
    /// `[admin]`: the health and metrics listener. Optional; absent means no
    /// admin listener.
    pub admin: Option<AdminConfig>,
    /// `[[routes]]`: at least one. A request goes to the route with the
    /// longest matching `path_prefix`.
    pub routes: Vec<RouteConfig>,
}

/// `[server]`: the client-facing listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerConfig {
    /// `listen`: the `IP:PORT` to accept clients on, e.g. `"0.0.0.0:8080"` or
    /// `"[::]:8080"`; `localhost:PORT` means `127.0.0.1:PORT`, other host names
    /// are not accepted. Required.
    pub listen: SocketAddr,
    /// `max_request_body_bytes`: a request body larger than this gets 413 and
    /// the upstream is never contacted. Default 1048576 (1 MiB); > 0.
    pub max_request_body_bytes: u64,
    /// `max_header_bytes`: a request line plus headers larger than this get
    /// 431. Default 65536; > 0.
    pub max_header_bytes: usize,
    /// `max_connections`: concurrent client connections; past it new ones wait
    /// in the accept backlog. Default 16384; > 0.
    pub max_connections: usize,
    /// `header_read_timeout`: the next request head must arrive within this,
    /// on a new or a kept-alive connection, HTTP/1.1 or HTTP/2 (so it is also
    /// the idle keep-alive timeout; an idle HTTP/2 connection gets GOAWAY).
    /// Default `"30s"`; > 0.
    pub header_read_timeout: Duration,
    /// `request_body_timeout`: the whole request body must arrive within this,
    /// else 408. Default `"60s"`; > 0.
    pub request_body_timeout: Duration,
    /// `send_timeout`: a client that takes nothing of what it is sent for
    /// this long (its receive window stays shut, or what was sent stays
    /// unacknowledged) has its connection closed, as if it had left. Set as
    /// the client socket's `TCP_USER_TIMEOUT`; flights also count out an
    /// HTTP/2 subscriber that took nothing this long while chunks waited (a
    /// stream whose own window stays shut). Default `"60s"`; > 0.
    pub send_timeout: Duration,
    /// `shutdown_grace`: on SIGTERM/SIGINT, how long streams in flight may go
    /// on before the process exits anyway. Default `"30s"`; may be 0.
    pub shutdown_grace: Duration,
    /// `http2_max_concurrent_streams`: HTTP/2 streams per client connection.
    /// Default 256; > 0.
    pub http2_max_concurrent_streams: u32,
    /// `max_buffered_bytes`: bytes held by all coalescing flight logs
    /// together. Past it, new requests are proxied without coalescing, and
    /// open flights take no more joiners and keep only what their clients
    /// have not read, at most `max_replay_bytes` each (a client further
    /// behind is cut). Default 536870912 (512 MiB); > 0.
    pub max_buffered_bytes: u64,
    /// `[server.tls]`: serve HTTPS (ALPN h2 and http/1.1) instead of plain
    /// HTTP. Default: absent (plain HTTP, with h2c prior knowledge).
    pub tls: Option<TlsConfig>,
}

/// `[server.tls]`: the certificate the gateway presents to clients.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsConfig {
    /// `cert`: PEM file with the certificate chain, leaf first. Required when
    /// `[server.tls]` is present.
    pub cert: PathBuf,
    /// `key`: PEM file with the private key of `cert`. Required when
    /// `[server.tls]` is present.
    pub key: PathBuf,
}

/// `[admin]`: the listener for `/healthz`, `/readyz` and `/metrics`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminConfig {
    /// `listen`: the `IP:PORT` of the admin listener. Default
    /// `"127.0.0.1:9090"`.
    pub listen: SocketAddr,
}

/// `[[routes]]`: one upstream and how requests to it are coalesced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteConfig {
    /// `name`: identifies the route in logs and metrics labels. Required,
    /// non-empty, unique across routes.
    pub name: String,
    /// `path_prefix`: requests whose path starts with this go to this route
    /// (the longest matching prefix wins). Default `"/"`; must start with
    /// `/`; unique across routes.
    pub path_prefix: String,
    /// `upstream`: `http://` or `https://` URL of the backend, with a host and
    /// no query. Its path, if any, is put before every forwarded path; a
    /// trailing `/` on it is dropped (`http://h/v1/` is `http://h/v1`).
    /// Required.
    pub upstream: Uri,
    /// `upstream_ca_file`: extra trust root (PEM) for an `https://` upstream,
    /// on top of the built-in web roots. Default: none.
    pub upstream_ca_file: Option<PathBuf>,
    /// `upstream_client_cert`: PEM client certificate chain for mutual TLS to
    /// an `https://` upstream; requires `upstream_client_key`. Default: none.
    pub upstream_client_cert: Option<PathBuf>,
    /// `upstream_client_key`: PEM private key of `upstream_client_cert`;
    /// requires `upstream_client_cert`. Default: none.
    pub upstream_client_key: Option<PathBuf>,
    /// `connect_timeout`: establishing the upstream connection (TCP and TLS)
    /// must finish within this, else 504. Default `"5s"`; > 0.
    pub connect_timeout: Duration,
    /// `first_byte_timeout`: the upstream response head must arrive within
    /// this after the request was sent, else 504. Default `"60s"`; > 0.
    pub first_byte_timeout: Duration,
    /// `idle_timeout`: the longest silence between two upstream body chunks;
    /// past it the stream counts as broken. Default `"60s"`; > 0.
    pub idle_timeout: Duration,
    /// `[routes.upstream_headers]`: `name = "value"` pairs set on every
    /// upstream request of this route, replacing any client value. Names are
    /// lowercased; values are marked sensitive (never printed by `Debug`).
    /// Hop-by-hop headers, `host` and `content-length` cannot be set.
    /// Default: none.
    pub upstream_headers: Vec<(HeaderName, HeaderValue)>,
    /// `websocket`: pass WebSocket handshakes (an HTTP/1.1 `GET` with
    /// `Upgrade: websocket`, or an HTTP/2 extended `CONNECT`) to the
    /// upstream and, when it agrees, tunnel both ways; `idle_timeout` then
    /// bounds silence in both directions. Default `false`: `Upgrade` is
    /// hop-by-hop and stops here.
    pub websocket: bool,
    /// `[routes.coalesce]`: which requests share one upstream request.
    pub coalesce: CoalesceConfig,
}

/// `[routes.coalesce]`: when identical in-flight requests share a flight.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CoalesceConfig {
    /// `enabled`: coalesce identical requests on this route; `false` proxies
    /// every request one to one. Default `true`.
    pub enabled: bool,
    /// `methods`: the methods that may coalesce, matched case-insensitively
    /// (stored uppercase). Default `["GET", "POST"]`; not empty while
    /// `enabled`.
    pub methods: Vec<Method>,
    /// `key_headers`: request headers whose values (all of them, in order;
    /// absent counts as a value) are part of the coalescing key, so that
    /// clients with different credentials never share a response. Names are
    /// case-insensitive (stored lowercase). Default
    /// `["authorization", "x-api-key", "api-key", "cookie"]`.
    pub key_headers: Vec<HeaderName>,
    /// `json_ignore_fields`: top-level fields of a JSON body left out of the
    /// key (e.g. `"user"` or a request id). Default `[]`.
    pub json_ignore_fields: Vec<String>,
    /// `linger`: a flight that ended with a 2xx stays joinable this long; an
    /// identical request is then answered from it. Default `"0s"` (off).
    pub linger: Duration,
    /// `cancel_grace`: how long the upstream request survives with no
    /// subscriber left before it is cancelled. Default `"0s"` (at once).
    pub cancel_grace: Duration,
    /// `max_replay_bytes`: past this many body bytes a flight takes no new
    /// joiners (its subscribers still get every byte). Default 8388608
    /// (8 MiB); > 0.
    pub max_replay_bytes: u64,
    /// `max_subscribers`: subscribers per flight; the next identical request
    /// leads a new flight. Default 10000; > 0.
    pub max_subscribers: usize,
}

const DEFAULT_MAX_REQUEST_BODY_BYTES: u64 = 1024 * 1024;
const DEFAULT_MAX_HEADER_BYTES: usize = 64 * 1024;
const DEFAULT_MAX_CONNECTIONS: usize = 16384;
const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
const DEFAULT_REQUEST_BODY_TIMEOUT: Duration = Duration::from_secs(60);
const DEFAULT_SEND_TIMEOUT: Duration = Duration::from_secs(60);
const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(30);
const DEFAULT_HTTP2_MAX_CONCURRENT_STREAMS: u32 = 256;
const DEFAULT_MAX_BUFFERED_BYTES: u64 = 512 * 1024 * 1024;
const DEFAULT_ADMIN_LISTEN: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 9090);
const DEFAULT_PATH_PREFIX: &str = "/";
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const DEFAULT_FIRST_BYTE_TIMEOUT: Duration = Duration::from_secs(60);
const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
const DEFAULT_KEY_HEADERS: [&str; 4] = ["authorization", "x-api-key", "api-key", "cookie"];
const DEFAULT_MAX_REPLAY_BYTES: u64 = 8 * 1024 * 1024;
const DEFAULT_MAX_SUBSCRIBERS: usize = 10000;

impl ServerConfig {
    /// A server section listening on `listen`, every other key at its default.
    pub fn new(listen: SocketAddr) -> Self {
        Self {
            listen,
            max_request_body_bytes: DEFAULT_MAX_REQUEST_BODY_BYTES,
            max_header_bytes: DEFAULT_MAX_HEADER_BYTES,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            header_read_timeout: DEFAULT_HEADER_READ_TIMEOUT,
            request_body_timeout: DEFAULT_REQUEST_BODY_TIMEOUT,
            send_timeout: DEFAULT_SEND_TIMEOUT,
            shutdown_grace: DEFAULT_SHUTDOWN_GRACE,
            http2_max_concurrent_streams: DEFAULT_HTTP2_MAX_CONCURRENT_STREAMS,
            max_buffered_bytes: DEFAULT_MAX_BUFFERED_BYTES,
            tls: None,
        }
    }
}

impl AdminConfig {
    /// An admin section listening on `listen`.
    pub fn new(listen: SocketAddr) -> Self {
        Self { listen }
    }
}

impl Default for AdminConfig {
    /// Listens on `127.0.0.1:9090`.
    fn default() -> Self {
        Self::new(DEFAULT_ADMIN_LISTEN)
    }
}

impl RouteConfig {
    /// A route with the given name, prefix and upstream, every other key at
    /// its default (coalescing on).
    pub fn new(name: impl Into<String>, path_prefix: impl Into<String>, upstream: Uri) -> Self {
        Self {
            name: name.into(),
            path_prefix: path_prefix.into(),
            upstream,
            upstream_ca_file: None,
            upstream_client_cert: None,
            upstream_client_key: None,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            first_byte_timeout: DEFAULT_FIRST_BYTE_TIMEOUT,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            upstream_headers: Vec::new(),
            websocket: false,
            coalesce: CoalesceConfig::default(),
        }
    }
}

impl Default for CoalesceConfig {
    /// Coalescing on for GET and POST, keyed on the usual credential headers,
    /// no linger, no cancel grace.
    fn default() -> Self {
        Self {
            enabled: true,
            methods: vec![Method::GET, Method::POST],
            key_headers: DEFAULT_KEY_HEADERS
                .iter()
                .map(|name| HeaderName::from_static(name))
                .collect(),
            json_ignore_fields: Vec::new(),
            linger: Duration::ZERO,
            cancel_grace: Duration::ZERO,
            max_replay_bytes: DEFAULT_MAX_REPLAY_BYTES,
            max_subscribers: DEFAULT_MAX_SUBSCRIBERS,
        }
    }
}

/// The TLS files a config names, by the keys that name them: what
/// [`crate::tls::check_files`] reads. Collected from a config with other
/// problems too, so that `chorus check` reports the files' own with theirs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsFiles {
    /// `server.tls`: the certificate and the key.
    pub server: Option<(PathBuf, PathBuf)>,
    /// By route index: `upstream_ca_file`, and the client certificate and key.
    pub routes: Vec<RouteTlsFiles>,
}

/// A route's TLS files (see [`TlsFiles`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RouteTlsFiles {
    /// The route's index in the file.
    pub index: usize,
    /// `upstream_ca_file`.
    pub ca: Option<PathBuf>,
    /// `upstream_client_cert` and `upstream_client_key`.
    pub client: Option<(PathBuf, PathBuf)>,
}

impl Config {
    /// The TLS files this config names.
    pub fn tls_files(&self) -> TlsFiles {
        TlsFiles {
            server: self
                .server
                .tls
                .as_ref()
                .map(|tls| (tls.cert.clone(), tls.key.clone())),
            routes: self
                .routes
                .iter()
                .enumerate()
                .map(|(index, route)| RouteTlsFiles {
                    index,
                    ca: route.upstream_ca_file.clone(),
                    client: route
                        .upstream_client_cert
                        .clone()
                        .zip(route.upstream_client_key.clone()),
                })
                .collect(),
        }
    }

    /// Reads and validates the file at `path`, expanding `${NAME}` from the
    /// process environment. Problems name the file as `path` is written.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let file = path.display().to_string();
        match std::fs::read_to_string(path) {
            Ok(text) => Self::parse(&text, &file, |name| std::env::var(name).ok()),
            Err(err) => Err(ConfigError {
                problems: vec![Problem {
                    file,
                    key: String::new(),
                    message: format!("cannot read the config file: {err}"),
                }],
                tls_files: TlsFiles::default(),
            }),
        }
    }

    /// Parses and validates TOML text; `file` is the name used in messages;
    /// `env` looks up `${NAME}`. Files the config names are checked to be
    /// readable.
    pub fn parse(
        text: &str,
        file: &str,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let mut problems = Problems::new(file);
        let mut doc = match text.parse::<toml::Table>() {
            Ok(doc) => doc,
            Err(err) => {
                problems.syntax(text, &err);
                return Err(problems.into_error());
            }
        };
        expand_table(&mut doc, "", &env, &mut problems);
        let raw = RawConfig::from_table(doc, &mut problems);
        let config = validate(raw, &mut problems);
        problems.finish(config)
    }
}

#[cfg(test)]
#[path = "config_tests.rs"]
mod tests;
