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

use std::collections::btree_map::Entry;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use http::{HeaderName, HeaderValue, Method, Uri};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer};

// ---------------------------------------------------------------------------
// The typed, validated configuration
// ---------------------------------------------------------------------------

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
    /// `"[::]:8080"` (host names are not accepted). Required.
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
    /// `shutdown_grace`: on SIGTERM/SIGINT, how long streams in flight may go
    /// on before the process exits anyway. Default `"30s"`; may be 0.
    pub shutdown_grace: Duration,
    /// `http2_max_concurrent_streams`: HTTP/2 streams per client connection.
    /// Default 256; > 0.
    pub http2_max_concurrent_streams: u32,
    /// `max_buffered_bytes`: bytes held by all coalescing flight logs
    /// together; past it new requests are proxied without coalescing.
    /// Default 536870912 (512 MiB); > 0.
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
/// Longest accepted duration: keeps `Instant + duration` far from overflow.
const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 60 * 60);
/// Headers the gateway manages itself; `upstream_headers` may not set them.
const RESERVED_UPSTREAM_HEADERS: [&str; 9] = [
    "connection",
    "content-length",
    "host",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

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

impl Config {
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
        match config {
            Some(config) if problems.list.is_empty() => Ok(config),
            Some(_) | None => Err(problems.into_error()),
        }
    }
}

// ---------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------

/// Every problem found in a config file, not just the first. Never empty.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    /// The problems, grouped by section in file order: the top level (and
    /// syntax errors), then `server`, `admin`, `routes[0]`, `routes[1]`, ...
    pub problems: Vec<Problem>,
}

impl fmt::Display for ConfigError {
    /// One problem per line, as `FILE: KEY: why`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, problem) in self.problems.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{problem}")?;
        }
        Ok(())
    }
}

/// One thing wrong with a config file. Displays as `FILE: KEY: why` (or
/// `FILE: why` when it concerns the whole file).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The config file, as it was named.
    pub file: String,
    /// Where in the file: a dotted key path such as `routes[0].upstream`, a
    /// `line L, column C` for a syntax error, or empty for the whole file.
    pub key: String,
    /// What is wrong, for a human; a single line.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.key.is_empty() {
            write!(f, "{}: {}", self.file, self.message)
        } else {
            write!(f, "{}: {}: {}", self.file, self.key, self.message)
        }
    }
}

/// The problems found so far, and the keys whose values were already
/// reported and dropped (so that "is required" is not said about them too).
struct Problems {
    file: String,
    list: Vec<Problem>,
    reported: BTreeSet<String>,
}

impl Problems {
    fn new(file: &str) -> Self {
        Self {
            file: file.to_owned(),
            list: Vec::new(),
            reported: BTreeSet::new(),
        }
    }

    fn push(&mut self, key: impl Into<String>, message: impl Into<String>) {
        let message: String = message.into();
        self.list.push(Problem {
            file: self.file.clone(),
            key: key.into(),
            message: message.replace(['\n', '\r'], " "),
        });
    }

    /// Records that the value at `key` was reported and removed.
    fn dropped(&mut self, key: String) {
        self.reported.insert(key);
    }

    fn was_dropped(&self, key: &str) -> bool {
        self.reported.contains(key)
    }

    /// Reports a missing required key, unless its value was already reported.
    fn required(&mut self, key: &str, message: &str) {
        if !self.was_dropped(key) {
            self.push(key, message);
        }
    }

    fn syntax(&mut self, text: &str, err: &toml::de::Error) {
        let key = match err.span() {
            Some(span) => {
                let before = text.get(..span.start).unwrap_or(text);
                let line = before.matches('\n').count() + 1;
                let column = before
                    .rsplit('\n')
                    .next()
                    .map_or(0, |tail| tail.chars().count())
                    + 1;
                format!("line {line}, column {column}")
            }
            None => String::new(),
        };
        self.push(key, format!("invalid TOML: {}", err.message()));
    }

    /// The problems, grouped by section in file order (the top level, then
    /// `server`, `admin`, `routes[0]`, `routes[1]`, ...).
    fn into_error(mut self) -> ConfigError {
        if self.list.is_empty() {
            // Only reachable through a bug in this module; still no panic.
            self.push("", "the configuration is incomplete");
        }
        self.list.sort_by_key(|problem| section_order(&problem.key));
        ConfigError {
            problems: self.list,
        }
    }
}

/// Where the section a key belongs to comes in the file, for sorting.
fn section_order(key: &str) -> (u8, usize) {
    let section = key.split(['.', '[']).next().unwrap_or_default();
    match section {
        "server" => (1, 0),
        "admin" => (2, 0),
        "routes" => {
            let index = key
                .strip_prefix("routes[")
                .and_then(|rest| rest.split(']').next())
                .and_then(|index| index.parse().ok())
                .unwrap_or(0);
            (3, index)
        }
        _ => (0, 0),
    }
}

/// `parent.key`, quoting `key` when it is not a bare TOML key.
fn join_key(parent: &str, key: &str) -> String {
    let bare = !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    let key = if bare {
        key.to_owned()
    } else {
        format!("{key:?}")
    };
    if parent.is_empty() {
        key
    } else {
        format!("{parent}.{key}")
    }
}

// ---------------------------------------------------------------------------
// ${NAME} expansion
// ---------------------------------------------------------------------------

/// Expands `${NAME}` in every string under `table`. A value that cannot be
/// expanded is reported and removed, so that nothing downstream trips on it.
fn expand_table(
    table: &mut toml::Table,
    path: &str,
    env: &impl Fn(&str) -> Option<String>,
    problems: &mut Problems,
) {
    let mut broken = Vec::new();
    for (name, value) in table.iter_mut() {
        let key = join_key(path, name);
        if !expand_value(value, &key, env, problems) {
            broken.push(name.clone());
            problems.dropped(key);
        }
    }
    for name in broken {
        table.remove(&name);
    }
}

/// Returns false when a string in `value` (outside sub-tables, which handle
/// their own) could not be expanded.
fn expand_value(
    value: &mut toml::Value,
    key: &str,
    env: &impl Fn(&str) -> Option<String>,
    problems: &mut Problems,
) -> bool {
    match value {
        toml::Value::String(text) => match expand_str(text, env) {
            Ok(expanded) => {
                *text = expanded;
                true
            }
            Err(messages) => {
                for message in messages {
                    problems.push(key, message);
                }
                false
            }
        },
        toml::Value::Array(items) => {
            let mut ok = true;
            for (i, item) in items.iter_mut().enumerate() {
                let item_key = format!("{key}[{i}]");
                if let toml::Value::Table(table) = item {
                    expand_table(table, &item_key, env, problems);
                } else {
                    ok &= expand_value(item, &item_key, env, problems);
                }
            }
            ok
        }
        toml::Value::Table(table) => {
            expand_table(table, key, env, problems);
            true
        }
        toml::Value::Integer(_)
        | toml::Value::Float(_)
        | toml::Value::Boolean(_)
        | toml::Value::Datetime(_) => true,
    }
}

/// Replaces `${NAME}` with `env(NAME)` and `$${` with `${`.
fn expand_str(text: &str, env: &impl Fn(&str) -> Option<String>) -> Result<String, Vec<String>> {
    let mut out = String::with_capacity(text.len());
    let mut errors = Vec::new();
    let mut rest = text;
    while let Some(dollar) = rest.find('$') {
        out.push_str(&rest[..dollar]);
        let tail = &rest[dollar..];
        if let Some(after) = tail.strip_prefix("$${") {
            out.push_str("${");
            rest = after;
        } else if let Some(after) = tail.strip_prefix("${") {
            let Some(end) = after.find('}') else {
                errors.push(
                    "unterminated \"${\" (write \"${NAME}\", or \"$${\" for a literal \"${\")"
                        .to_owned(),
                );
                rest = "";
                break;
            };
            let name = &after[..end];
            if !is_env_name(name) {
                errors.push(format!(
                    "\"${{{name}}}\" is not a valid environment variable reference \
                     (letters, digits and _, not starting with a digit)"
                ));
            } else if let Some(value) = env(name) {
                out.push_str(&value);
            } else {
                errors.push(format!("environment variable {name} is not set"));
            }
            rest = &after[end + 1..];
        } else {
            out.push('$');
            rest = &tail[1..];
        }
    }
    out.push_str(rest);
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors)
    }
}

fn is_env_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

// ---------------------------------------------------------------------------
// The raw layer: what serde reads, before validation
// ---------------------------------------------------------------------------

/// The document split into its sections. Every field of the raw structs is
/// optional: defaults and "is required" are decided in `validate`.
struct RawConfig {
    server: Option<RawServer>,
    admin: Option<RawAdmin>,
    /// Each `[[routes]]` element that deserialized, with its index in the file.
    routes: Vec<(usize, RawRoute)>,
    /// Whether the file has any `[[routes]]` element at all.
    routes_given: bool,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawServer {
    listen: Option<String>,
    max_request_body_bytes: Option<u64>,
    max_header_bytes: Option<usize>,
    max_connections: Option<usize>,
    header_read_timeout: Option<RawDuration>,
    request_body_timeout: Option<RawDuration>,
    shutdown_grace: Option<RawDuration>,
    http2_max_concurrent_streams: Option<u32>,
    max_buffered_bytes: Option<u64>,
    tls: Option<RawTls>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    cert: Option<String>,
    key: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAdmin {
    listen: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRoute {
    name: Option<String>,
    path_prefix: Option<String>,
    upstream: Option<String>,
    upstream_ca_file: Option<String>,
    upstream_client_cert: Option<String>,
    upstream_client_key: Option<String>,
    connect_timeout: Option<RawDuration>,
    first_byte_timeout: Option<RawDuration>,
    idle_timeout: Option<RawDuration>,
    upstream_headers: Option<BTreeMap<String, String>>,
    coalesce: Option<RawCoalesce>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCoalesce {
    enabled: Option<bool>,
    methods: Option<Vec<String>>,
    key_headers: Option<Vec<String>>,
    json_ignore_fields: Option<Vec<String>>,
    linger: Option<RawDuration>,
    cancel_grace: Option<RawDuration>,
    max_replay_bytes: Option<u64>,
    max_subscribers: Option<usize>,
}

/// A duration as written; parsed in `validate` so a bad one can be quoted.
#[derive(Debug)]
struct RawDuration(String);

impl<'de> Deserialize<'de> for RawDuration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = RawDuration;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration string such as \"250ms\", \"30s\" or \"5m\"")
            }
            fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<RawDuration, E> {
                Ok(RawDuration(text.to_owned()))
            }
        }
        deserializer.deserialize_str(Visitor)
    }
}

impl RawConfig {
    /// Deserializes each section on its own, so that a mistake in one does
    /// not hide the others.
    fn from_table(doc: toml::Table, problems: &mut Problems) -> Self {
        let mut raw = RawConfig {
            server: None,
            admin: None,
            routes: Vec::new(),
            routes_given: false,
        };
        for (name, value) in doc {
            match name.as_str() {
                "server" => raw.server = table_section(value, "server", "[server]", problems),
                "admin" => raw.admin = table_section(value, "admin", "[admin]", problems),
                "routes" => match value {
                    toml::Value::Array(items) => {
                        raw.routes_given = !items.is_empty();
                        for (i, item) in items.into_iter().enumerate() {
                            let key = format!("routes[{i}]");
                            if let Some(route) = table_section(item, &key, "[[routes]]", problems) {
                                raw.routes.push((i, route));
                            }
                        }
                    }
                    other => {
                        raw.routes_given = true;
                        problems.push(
                            "routes",
                            format!(
                                "must be an array of tables written [[routes]], got {}",
                                other.type_str()
                            ),
                        );
                    }
                },
                _ => problems.push(
                    join_key("", &name),
                    "unknown key; the top level has only [server], [admin] and [[routes]]",
                ),
            }
        }
        raw
    }
}

/// Deserializes one table section. Each serde error (unknown key, wrong type)
/// is reported with its full key, the offending key is removed and the rest
/// deserialized again, so every structural problem is reported.
fn table_section<T: DeserializeOwned>(
    value: toml::Value,
    key: &str,
    written: &str,
    problems: &mut Problems,
) -> Option<T> {
    let mut value = match value {
        toml::Value::Table(table) => toml::Value::Table(table),
        other => {
            problems.push(
                key,
                format!(
                    "must be a table written {written}, got {}",
                    other.type_str()
                ),
            );
            problems.dropped(key.to_owned());
            return None;
        }
    };
    loop {
        match serde_path_to_error::deserialize::<_, T>(value.clone()) {
            Ok(section) => return Some(section),
            Err(err) => {
                let segments: Vec<_> = err.path().iter().cloned().collect();
                problems.push(
                    segments_key(key, &segments),
                    humanize_serde(err.inner().message()),
                );
                // Drop the innermost key holding the bad value and try again.
                let last_key = segments
                    .iter()
                    .rposition(|s| matches!(s, serde_path_to_error::Segment::Map { .. }))?;
                let holder = &segments[..=last_key];
                if !remove_at(&mut value, holder) {
                    return None;
                }
                problems.dropped(segments_key(key, holder));
            }
        }
    }
}

/// The dotted key of a serde path below the section `prefix`.
fn segments_key(prefix: &str, segments: &[serde_path_to_error::Segment]) -> String {
    let mut key = prefix.to_owned();
    for segment in segments {
        match segment {
            serde_path_to_error::Segment::Map { key: name } => key = join_key(&key, name),
            serde_path_to_error::Segment::Seq { index } => key = format!("{key}[{index}]"),
            serde_path_to_error::Segment::Enum { variant } => key = join_key(&key, variant),
            serde_path_to_error::Segment::Unknown => key = join_key(&key, "?"),
        }
    }
    key
}

/// Removes the value at `path` (whose last segment is a map key).
fn remove_at(value: &mut toml::Value, path: &[serde_path_to_error::Segment]) -> bool {
    let Some((last, parents)) = path.split_last() else {
        return false;
    };
    let mut current = value;
    for segment in parents {
        let next = match (segment, current) {
            (serde_path_to_error::Segment::Map { key }, toml::Value::Table(table)) => {
                table.get_mut(key)
            }
            (serde_path_to_error::Segment::Seq { index }, toml::Value::Array(items)) => {
                items.get_mut(*index)
            }
            _ => None,
        };
        match next {
            Some(next) => current = next,
            None => return false,
        }
    }
    match (last, current) {
        (serde_path_to_error::Segment::Map { key }, toml::Value::Table(table)) => {
            table.remove(key).is_some()
        }
        _ => false,
    }
}

/// Serde's wording, in the words of a TOML file.
fn humanize_serde(message: &str) -> String {
    let message = message
        .replacen("unknown field", "unknown key", 1)
        .replacen("expected a map", "expected a table", 1)
        .replacen("expected a sequence", "expected an array", 1)
        .replacen(
            "expected u32",
            "expected an integer from 0 to 4294967295",
            1,
        )
        .replacen("expected u64", "expected an integer >= 0", 1)
        .replacen("expected usize", "expected an integer >= 0", 1);
    match message.find("expected struct Raw") {
        Some(at) => format!("{}expected a table", &message[..at]),
        None => message,
    }
}

// ---------------------------------------------------------------------------
// Validation: raw sections to the typed Config
// ---------------------------------------------------------------------------

/// Turns the raw sections into a [`Config`], reporting every problem. Returns
/// `None` when something required could not be built.
fn validate(raw: RawConfig, problems: &mut Problems) -> Option<Config> {
    let server = match raw.server {
        Some(server) => server_config(server, problems),
        None => {
            problems.required(
                "server",
                "the [server] table is required (with at least listen = \"IP:PORT\")",
            );
            None
        }
    };
    // The outer `None` means [admin] is present but invalid.
    let admin = match raw.admin {
        None => Some(None),
        Some(RawAdmin { listen: None }) => Some(Some(AdminConfig::default())),
        Some(RawAdmin { listen: Some(text) }) => {
            socket_addr(problems, "admin.listen", &text).map(|listen| Some(AdminConfig { listen }))
        }
    };
    if let (Some(server), Some(Some(admin))) = (&server, &admin)
        && listeners_clash(server.listen, admin.listen)
    {
        problems.push(
            "admin.listen",
            format!(
                "{} clashes with server.listen {}; use another port",
                admin.listen, server.listen
            ),
        );
    }

    if !raw.routes_given {
        problems.push("routes", "at least one [[routes]] is required");
    }
    check_unique_routes(&raw.routes, problems);
    let routes: Vec<Option<RouteConfig>> = raw
        .routes
        .into_iter()
        .map(|(i, route)| route_config(i, route, problems))
        .collect();

    Some(Config {
        server: server?,
        admin: admin?,
        routes: routes.into_iter().collect::<Option<Vec<_>>>()?,
    })
}

fn server_config(raw: RawServer, problems: &mut Problems) -> Option<ServerConfig> {
    let listen = match raw.listen {
        Some(text) => socket_addr(problems, "server.listen", &text),
        None => {
            problems.required(
                "server.listen",
                "is required: the IP:PORT to accept clients on, e.g. \"0.0.0.0:8080\"",
            );
            None
        }
    };
    let tls = raw.tls.map(|tls| tls_config(tls, problems));
    Some(ServerConfig {
        max_request_body_bytes: positive(
            problems,
            "server.max_request_body_bytes",
            raw.max_request_body_bytes,
            DEFAULT_MAX_REQUEST_BODY_BYTES,
        ),
        max_header_bytes: positive(
            problems,
            "server.max_header_bytes",
            raw.max_header_bytes,
            DEFAULT_MAX_HEADER_BYTES,
        ),
        max_connections: positive(
            problems,
            "server.max_connections",
            raw.max_connections,
            DEFAULT_MAX_CONNECTIONS,
        ),
        header_read_timeout: duration(
            problems,
            "server.header_read_timeout",
            raw.header_read_timeout,
            DEFAULT_HEADER_READ_TIMEOUT,
            true,
        ),
        request_body_timeout: duration(
            problems,
            "server.request_body_timeout",
            raw.request_body_timeout,
            DEFAULT_REQUEST_BODY_TIMEOUT,
            true,
        ),
        shutdown_grace: duration(
            problems,
            "server.shutdown_grace",
            raw.shutdown_grace,
            DEFAULT_SHUTDOWN_GRACE,
            false,
        ),
        http2_max_concurrent_streams: positive(
            problems,
            "server.http2_max_concurrent_streams",
            raw.http2_max_concurrent_streams,
            DEFAULT_HTTP2_MAX_CONCURRENT_STREAMS,
        ),
        max_buffered_bytes: positive(
            problems,
            "server.max_buffered_bytes",
            raw.max_buffered_bytes,
            DEFAULT_MAX_BUFFERED_BYTES,
        ),
        tls: tls.flatten(),
        listen: listen?,
    })
}

fn tls_config(raw: RawTls, problems: &mut Problems) -> Option<TlsConfig> {
    let mut file = |key: &str, value: Option<String>| match value {
        Some(path) => readable_file(problems, key, &path),
        None => {
            problems.required(
                key,
                "is required when [server.tls] is present (cert and key go together)",
            );
            None
        }
    };
    let cert = file("server.tls.cert", raw.cert);
    let key = file("server.tls.key", raw.key);
    Some(TlsConfig {
        cert: cert?,
        key: key?,
    })
}

fn check_unique_routes(routes: &[(usize, RawRoute)], problems: &mut Problems) {
    let mut names: BTreeMap<&str, usize> = BTreeMap::new();
    let mut prefixes: BTreeMap<&str, usize> = BTreeMap::new();
    for (i, route) in routes {
        if let Some(name) = route.name.as_deref().filter(|name| !name.trim().is_empty()) {
            match names.entry(name) {
                Entry::Occupied(first) => problems.push(
                    format!("routes[{i}].name"),
                    format!(
                        "duplicate route name {name:?} (already used by routes[{}])",
                        first.get()
                    ),
                ),
                Entry::Vacant(slot) => {
                    slot.insert(*i);
                }
            }
        }
        let prefix = route.path_prefix.as_deref().unwrap_or(DEFAULT_PATH_PREFIX);
        match prefixes.entry(prefix) {
            Entry::Occupied(first) => problems.push(
                format!("routes[{i}].path_prefix"),
                format!(
                    "duplicate path_prefix {prefix:?} (already used by routes[{}])",
                    first.get()
                ),
            ),
            Entry::Vacant(slot) => {
                slot.insert(*i);
            }
        }
    }
}

fn route_config(i: usize, raw: RawRoute, problems: &mut Problems) -> Option<RouteConfig> {
    let at = |key: &str| format!("routes[{i}].{key}");

    let name = match raw.name {
        Some(name) if name.trim().is_empty() => {
            problems.push(at("name"), "must not be empty");
            None
        }
        Some(name) if name.chars().any(char::is_control) => {
            problems.push(
                at("name"),
                format!("must not contain control characters, got {name:?}"),
            );
            None
        }
        Some(name) => Some(name),
        None => {
            problems.required(&at("name"), "is required: a unique name for the route");
            None
        }
    };

    let path_prefix = raw
        .path_prefix
        .unwrap_or_else(|| DEFAULT_PATH_PREFIX.to_owned());
    if !path_prefix.starts_with('/') {
        problems.push(
            at("path_prefix"),
            format!("must start with '/', got {path_prefix:?}"),
        );
    } else if path_prefix
        .chars()
        .any(|c| c == '?' || c == '#' || c.is_whitespace() || c.is_control())
    {
        problems.push(
            at("path_prefix"),
            format!("must be a plain path (no '?', '#' or spaces), got {path_prefix:?}"),
        );
    }

    let upstream = match raw.upstream {
        Some(text) => upstream_uri(problems, &at("upstream"), &text),
        None => {
            problems.required(
                &at("upstream"),
                "is required: the backend URL, e.g. \"http://127.0.0.1:9000\"",
            );
            None
        }
    };
    let https = upstream
        .as_ref()
        .is_some_and(|uri| uri.scheme_str() == Some("https"));
    let cert_given = raw.upstream_client_cert.is_some();
    let key_given = raw.upstream_client_key.is_some();
    if cert_given && !key_given {
        problems.required(
            &at("upstream_client_key"),
            "is required when upstream_client_cert is set",
        );
    }
    if key_given && !cert_given {
        problems.required(
            &at("upstream_client_cert"),
            "is required when upstream_client_key is set",
        );
    }
    let mut tls_file = |key: &str, value: Option<String>| {
        let path = value?;
        let key = at(key);
        if upstream.is_some() && !https {
            problems.push(&key, "only applies to an https:// upstream");
        }
        readable_file(problems, &key, &path)
    };
    let upstream_ca_file = tls_file("upstream_ca_file", raw.upstream_ca_file);
    let upstream_client_cert = tls_file("upstream_client_cert", raw.upstream_client_cert);
    let upstream_client_key = tls_file("upstream_client_key", raw.upstream_client_key);

    let upstream_headers = upstream_headers(
        problems,
        &at("upstream_headers"),
        raw.upstream_headers.unwrap_or_default(),
    );
    let coalesce = coalesce_config(problems, &at("coalesce"), raw.coalesce.unwrap_or_default());

    Some(RouteConfig {
        connect_timeout: duration(
            problems,
            &at("connect_timeout"),
            raw.connect_timeout,
            DEFAULT_CONNECT_TIMEOUT,
            true,
        ),
        first_byte_timeout: duration(
            problems,
            &at("first_byte_timeout"),
            raw.first_byte_timeout,
            DEFAULT_FIRST_BYTE_TIMEOUT,
            true,
        ),
        idle_timeout: duration(
            problems,
            &at("idle_timeout"),
            raw.idle_timeout,
            DEFAULT_IDLE_TIMEOUT,
            true,
        ),
        name: name?,
        path_prefix,
        upstream: upstream?,
        upstream_ca_file,
        upstream_client_cert,
        upstream_client_key,
        upstream_headers,
        coalesce,
    })
}

fn coalesce_config(problems: &mut Problems, at: &str, raw: RawCoalesce) -> CoalesceConfig {
    let defaults = CoalesceConfig::default();
    let key = |name: &str| join_key(at, name);
    let enabled = raw.enabled.unwrap_or(defaults.enabled);

    let methods = match raw.methods {
        Some(names) => {
            let list_key = key("methods");
            let mut methods = Vec::new();
            for (i, name) in names.iter().enumerate() {
                match Method::from_bytes(name.to_ascii_uppercase().as_bytes()) {
                    Ok(method) if methods.contains(&method) => problems.push(
                        format!("{list_key}[{i}]"),
                        format!("method {method} is listed twice"),
                    ),
                    Ok(method) => methods.push(method),
                    Err(_) => problems.push(
                        format!("{list_key}[{i}]"),
                        format!("not a valid HTTP method: {name:?}"),
                    ),
                }
            }
            if names.is_empty() && enabled {
                problems.push(
                    list_key,
                    "must not be empty while coalescing is enabled; \
                     to turn coalescing off set enabled = false",
                );
            }
            methods
        }
        None => defaults.methods,
    };

    let key_headers = match raw.key_headers {
        Some(names) => {
            let list_key = key("key_headers");
            let mut headers = Vec::new();
            for (i, name) in names.iter().enumerate() {
                match HeaderName::from_bytes(name.as_bytes()) {
                    Ok(header) if headers.contains(&header) => problems.push(
                        format!("{list_key}[{i}]"),
                        format!("header {header} is listed twice"),
                    ),
                    Ok(header) => headers.push(header),
                    Err(_) => problems.push(
                        format!("{list_key}[{i}]"),
                        format!("not a valid header name: {name:?}"),
                    ),
                }
            }
            headers
        }
        None => defaults.key_headers,
    };

    let json_ignore_fields = match raw.json_ignore_fields {
        Some(fields) => {
            let list_key = key("json_ignore_fields");
            let mut kept: Vec<String> = Vec::new();
            for (i, field) in fields.into_iter().enumerate() {
                if kept.contains(&field) {
                    problems.push(
                        format!("{list_key}[{i}]"),
                        format!("field {field:?} is listed twice"),
                    );
                } else {
                    kept.push(field);
                }
            }
            kept
        }
        None => defaults.json_ignore_fields,
    };

    CoalesceConfig {
        enabled,
        methods,
        key_headers,
        json_ignore_fields,
        linger: duration(problems, &key("linger"), raw.linger, defaults.linger, false),
        cancel_grace: duration(
            problems,
            &key("cancel_grace"),
            raw.cancel_grace,
            defaults.cancel_grace,
            false,
        ),
        max_replay_bytes: positive(
            problems,
            &key("max_replay_bytes"),
            raw.max_replay_bytes,
            defaults.max_replay_bytes,
        ),
        max_subscribers: positive(
            problems,
            &key("max_subscribers"),
            raw.max_subscribers,
            defaults.max_subscribers,
        ),
    }
}

fn upstream_headers(
    problems: &mut Problems,
    at: &str,
    raw: BTreeMap<String, String>,
) -> Vec<(HeaderName, HeaderValue)> {
    let mut headers: Vec<(HeaderName, HeaderValue)> = Vec::new();
    for (name, value) in raw {
        let key = join_key(at, &name);
        let Ok(header) = HeaderName::from_bytes(name.as_bytes()) else {
            problems.push(key, format!("not a valid header name: {name:?}"));
            continue;
        };
        if RESERVED_UPSTREAM_HEADERS.contains(&header.as_str()) {
            problems.push(
                key,
                format!("{header} is managed by the gateway and cannot be set here"),
            );
            continue;
        }
        if headers.iter().any(|(seen, _)| *seen == header) {
            problems.push(
                key,
                format!("header {header} is set twice (names are case-insensitive)"),
            );
            continue;
        }
        // The value may hold a secret: it is never quoted in messages.
        let Ok(mut value) = HeaderValue::from_str(&value) else {
            problems.push(
                key,
                "not a valid header value (no control characters or line breaks)",
            );
            continue;
        };
        value.set_sensitive(true);
        headers.push((header, value));
    }
    headers
}

fn socket_addr(problems: &mut Problems, key: &str, text: &str) -> Option<SocketAddr> {
    match text.parse() {
        Ok(addr) => Some(addr),
        Err(_) => {
            problems.push(
                key,
                format!(
                    "must be an IP:PORT address such as \"0.0.0.0:8080\" or \"[::]:8080\" \
                     (host names are not accepted), got {text:?}"
                ),
            );
            None
        }
    }
}

/// Whether two listeners would fight over one port (port 0 picks a free one).
fn listeners_clash(a: SocketAddr, b: SocketAddr) -> bool {
    a.port() != 0
        && a.port() == b.port()
        && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
}

fn upstream_uri(problems: &mut Problems, key: &str, text: &str) -> Option<Uri> {
    let bad_url = || format!("must be an http:// or https:// URL, got {text:?}");
    let Ok(uri) = text.parse::<Uri>() else {
        problems.push(key, bad_url());
        return None;
    };
    let (Some(scheme), Some(authority)) = (uri.scheme_str(), uri.authority()) else {
        problems.push(key, bad_url());
        return None;
    };
    if scheme != "http" && scheme != "https" {
        problems.push(key, bad_url());
        return None;
    }
    let mut ok = true;
    if authority.as_str().contains('@') {
        problems.push(
            key,
            format!(
                "must not carry credentials (user@host), got {text:?}; \
                 set them in [routes.upstream_headers] instead"
            ),
        );
        return None;
    }
    if authority.host().is_empty() {
        problems.push(key, format!("has no host, got {text:?}"));
        ok = false;
    }
    let port_text = authority
        .as_str()
        .strip_prefix(authority.host())
        .unwrap_or_default();
    if !port_text.is_empty() && authority.port_u16().is_none_or(|port| port == 0) {
        problems.push(key, format!("has an invalid port, got {text:?}"));
        ok = false;
    }
    if text.contains('?') {
        problems.push(key, format!("must not have a query (?...), got {text:?}"));
        ok = false;
    }
    if text.contains('#') {
        problems.push(
            key,
            format!("must not have a fragment (#...), got {text:?}"),
        );
        ok = false;
    }
    if !ok {
        return None;
    }
    let path = uri.path();
    if path.len() > 1 && path.ends_with('/') {
        let trimmed = path.trim_end_matches('/');
        let trimmed = if trimmed.is_empty() { "/" } else { trimmed };
        let rebuilt = Uri::builder()
            .scheme(scheme)
            .authority(authority.as_str())
            .path_and_query(trimmed)
            .build();
        return match rebuilt {
            Ok(uri) => Some(uri),
            Err(err) => {
                problems.push(key, format!("{}: {err}", bad_url()));
                None
            }
        };
    }
    Some(uri)
}

/// A size or limit: the default when absent, and never 0.
fn positive<T>(problems: &mut Problems, key: &str, value: Option<T>, default: T) -> T
where
    T: Copy + Default + PartialEq,
{
    match value {
        Some(value) if value == T::default() => {
            problems.push(key, "must be greater than 0");
            default
        }
        Some(value) => value,
        None => default,
    }
}

/// A duration: the default when absent; at most [`MAX_DURATION`]; not zero
/// when `nonzero`.
fn duration(
    problems: &mut Problems,
    key: &str,
    value: Option<RawDuration>,
    default: Duration,
    nonzero: bool,
) -> Duration {
    let Some(RawDuration(text)) = value else {
        return default;
    };
    match humantime::parse_duration(&text) {
        Ok(parsed) if nonzero && parsed.is_zero() => {
            problems.push(key, format!("must be greater than 0, got {text:?}"));
            default
        }
        Ok(parsed) if parsed > MAX_DURATION => {
            problems.push(key, format!("must be at most 365 days, got {text:?}"));
            default
        }
        Ok(parsed) => parsed,
        Err(err) => {
            problems.push(
                key,
                format!(
                    "invalid duration {text:?} ({err}); write e.g. \"250ms\", \"30s\" or \"5m\""
                ),
            );
            default
        }
    }
}

/// A file the config names: it must exist and be readable now.
fn readable_file(problems: &mut Problems, key: &str, path: &str) -> Option<PathBuf> {
    if path.is_empty() {
        problems.push(key, "must not be empty");
        return None;
    }
    let result = std::fs::metadata(path).and_then(|meta| {
        if meta.is_dir() {
            Err(std::io::Error::other("it is a directory"))
        } else {
            std::fs::File::open(path).map(drop)
        }
    });
    match result {
        Ok(()) => Some(PathBuf::from(path)),
        Err(err) => {
            problems.push(key, format!("cannot read {path:?}: {err}"));
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
        [server]
        listen = "127.0.0.1:8080"

        [[routes]]
        name = "llm"
        upstream = "http://127.0.0.1:9000"
    "#;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, "test.toml", no_env)
    }

    fn problems(text: &str) -> Vec<Problem> {
        match parse(text) {
            Ok(config) => panic!("expected problems, got {config:?}"),
            Err(err) => err.problems,
        }
    }

    /// Asserts the text is rejected with exactly one problem, at `key`, and
    /// returns its displayed line.
    fn rejects(text: &str, key: &str) -> String {
        let found = problems(text);
        assert_eq!(
            found.len(),
            1,
            "expected one problem at {key}, got {found:#?}"
        );
        assert_eq!(found[0].key, key, "{found:#?}");
        let line = found[0].to_string();
        assert!(line.contains(key), "{line}");
        line
    }

    /// MINIMAL with `extra` lines added to the single route.
    fn route_with(extra: &str) -> String {
        format!("{MINIMAL}\n{extra}")
    }

    /// MINIMAL with `extra` lines added to [server].
    fn server_with(extra: &str) -> String {
        MINIMAL.replacen(
            "listen = \"127.0.0.1:8080\"",
            &format!("listen = \"127.0.0.1:8080\"\n{extra}"),
            1,
        )
    }

    /// A file that exists, unique to this test.
    fn temp_file(name: &str) -> PathBuf {
        let path =
            std::env::temp_dir().join(format!("chorus-config-test-{}-{name}", std::process::id()));
        std::fs::write(&path, "-----BEGIN CERTIFICATE-----\n").unwrap();
        path
    }

    #[test]
    fn example_config_parses() {
        let config = Config::parse(
            include_str!("../config/chorus.toml"),
            "config/chorus.toml",
            no_env,
        )
        .unwrap();
        assert_eq!(
            config.server,
            ServerConfig::new("0.0.0.0:8080".parse().unwrap())
        );
        assert_eq!(config.admin, Some(AdminConfig::default()));
        let route = RouteConfig::new("llm", "/", Uri::from_static("http://127.0.0.1:9000"));
        assert_eq!(config.routes, vec![route]);
    }

    #[test]
    fn minimal_example_parses() {
        let config = Config::parse(
            include_str!("../config/minimal.toml"),
            "config/minimal.toml",
            no_env,
        )
        .unwrap();
        assert_eq!(config.server.listen, "0.0.0.0:8080".parse().unwrap());
        assert_eq!(config.admin, None);
        assert_eq!(config.routes.len(), 1);
        assert_eq!(config.routes[0].name, "llm");
    }

    #[test]
    fn defaults_are_as_documented() {
        let config = parse(MINIMAL).unwrap();
        let server = &config.server;
        assert_eq!(server.max_request_body_bytes, 1_048_576);
        assert_eq!(server.max_header_bytes, 65_536);
        assert_eq!(server.max_connections, 16_384);
        assert_eq!(server.header_read_timeout, Duration::from_secs(30));
        assert_eq!(server.request_body_timeout, Duration::from_secs(60));
        assert_eq!(server.shutdown_grace, Duration::from_secs(30));
        assert_eq!(server.http2_max_concurrent_streams, 256);
        assert_eq!(server.max_buffered_bytes, 536_870_912);
        assert_eq!(server.tls, None);
        assert_eq!(config.admin, None);

        let route = &config.routes[0];
        assert_eq!(route.path_prefix, "/");
        assert_eq!(route.upstream_ca_file, None);
        assert_eq!(route.upstream_client_cert, None);
        assert_eq!(route.upstream_client_key, None);
        assert_eq!(route.connect_timeout, Duration::from_secs(5));
        assert_eq!(route.first_byte_timeout, Duration::from_secs(60));
        assert_eq!(route.idle_timeout, Duration::from_secs(60));
        assert!(route.upstream_headers.is_empty());

        let coalesce = &route.coalesce;
        assert!(coalesce.enabled);
        assert_eq!(coalesce.methods, vec![Method::GET, Method::POST]);
        let key_headers: Vec<&str> = coalesce.key_headers.iter().map(|h| h.as_str()).collect();
        assert_eq!(
            key_headers,
            ["authorization", "x-api-key", "api-key", "cookie"]
        );
        assert!(coalesce.json_ignore_fields.is_empty());
        assert_eq!(coalesce.linger, Duration::ZERO);
        assert_eq!(coalesce.cancel_grace, Duration::ZERO);
        assert_eq!(coalesce.max_replay_bytes, 8_388_608);
        assert_eq!(coalesce.max_subscribers, 10_000);

        assert_eq!(
            *route,
            RouteConfig::new("llm", "/", Uri::from_static("http://127.0.0.1:9000"))
        );
        assert_eq!(
            config.server,
            ServerConfig::new("127.0.0.1:8080".parse().unwrap())
        );
    }

    #[test]
    fn empty_admin_table_uses_default_listen() {
        let config = parse(&format!("[admin]\n{MINIMAL}")).unwrap();
        assert_eq!(
            config.admin.unwrap().listen,
            "127.0.0.1:9090".parse().unwrap()
        );
    }

    #[test]
    fn every_key_can_be_set() {
        let ca = temp_file("every-ca.pem");
        let cert = temp_file("every-cert.pem");
        let key = temp_file("every-key.pem");
        let text = format!(
            r#"
            [server]
            listen = "[::]:8443"
            max_request_body_bytes = 10
            max_header_bytes = 20
            max_connections = 30
            header_read_timeout = "1s"
            request_body_timeout = "2s"
            shutdown_grace = "0s"
            http2_max_concurrent_streams = 40
            max_buffered_bytes = 50
            [server.tls]
            cert = {cert:?}
            key = {key:?}

            [admin]
            listen = "0.0.0.0:9191"

            [[routes]]
            name = "openai"
            path_prefix = "/v1"
            upstream = "https://api.example.com/base/"
            upstream_ca_file = {ca:?}
            upstream_client_cert = {cert:?}
            upstream_client_key = {key:?}
            connect_timeout = "250ms"
            first_byte_timeout = "5m"
            idle_timeout = "1h"
            [routes.upstream_headers]
            Authorization = "Bearer sk-1"
            x-org = "acme"
            [routes.coalesce]
            enabled = false
            methods = ["post", "Put"]
            key_headers = ["Authorization"]
            json_ignore_fields = ["user", "request_id"]
            linger = "2s"
            cancel_grace = "3s"
            max_replay_bytes = 60
            max_subscribers = 70
            "#
        );
        let config = parse(&text).unwrap();
        let server = &config.server;
        assert_eq!(server.listen, "[::]:8443".parse().unwrap());
        assert_eq!(server.max_request_body_bytes, 10);
        assert_eq!(server.max_header_bytes, 20);
        assert_eq!(server.max_connections, 30);
        assert_eq!(server.header_read_timeout, Duration::from_secs(1));
        assert_eq!(server.request_body_timeout, Duration::from_secs(2));
        assert_eq!(server.shutdown_grace, Duration::ZERO);
        assert_eq!(server.http2_max_concurrent_streams, 40);
        assert_eq!(server.max_buffered_bytes, 50);
        assert_eq!(
            server.tls,
            Some(TlsConfig {
                cert: cert.clone(),
                key: key.clone()
            })
        );
        assert_eq!(
            config.admin.unwrap().listen,
            "0.0.0.0:9191".parse().unwrap()
        );

        let route = &config.routes[0];
        assert_eq!(route.name, "openai");
        assert_eq!(route.path_prefix, "/v1");
        assert_eq!(route.upstream, "https://api.example.com/base");
        assert_eq!(route.upstream.path(), "/base");
        assert_eq!(route.upstream_ca_file.as_ref(), Some(&ca));
        assert_eq!(route.upstream_client_cert.as_ref(), Some(&cert));
        assert_eq!(route.upstream_client_key.as_ref(), Some(&key));
        assert_eq!(route.connect_timeout, Duration::from_millis(250));
        assert_eq!(route.first_byte_timeout, Duration::from_secs(300));
        assert_eq!(route.idle_timeout, Duration::from_secs(3600));
        let headers: Vec<(&str, &[u8])> = route
            .upstream_headers
            .iter()
            .map(|(name, value)| (name.as_str(), value.as_bytes()))
            .collect();
        assert_eq!(
            headers,
            [("authorization", &b"Bearer sk-1"[..]), ("x-org", b"acme")]
        );
        let coalesce = &route.coalesce;
        assert!(!coalesce.enabled);
        assert_eq!(coalesce.methods, vec![Method::POST, Method::PUT]);
        assert_eq!(coalesce.key_headers, vec![http::header::AUTHORIZATION]);
        assert_eq!(coalesce.json_ignore_fields, ["user", "request_id"]);
        assert_eq!(coalesce.linger, Duration::from_secs(2));
        assert_eq!(coalesce.cancel_grace, Duration::from_secs(3));
        assert_eq!(coalesce.max_replay_bytes, 60);
        assert_eq!(coalesce.max_subscribers, 70);
        for path in [ca, cert, key] {
            let _ = std::fs::remove_file(path);
        }
    }

    #[test]
    fn methods_are_case_insensitive() {
        let config = parse(&route_with(
            "[routes.coalesce]\nmethods = [\"post\", \"get\", \"Propfind\"]",
        ))
        .unwrap();
        let methods = &config.routes[0].coalesce.methods;
        assert_eq!(methods[0], Method::POST);
        assert_eq!(methods[1], Method::GET);
        assert_eq!(methods[2].as_str(), "PROPFIND");
    }

    #[test]
    fn header_names_are_lowercased() {
        let config = parse(&route_with(
            "[routes.upstream_headers]\nX-Api-Key = \"k\"\n\
             [routes.coalesce]\nkey_headers = [\"X-Tenant\", \"Cookie\"]",
        ))
        .unwrap();
        let route = &config.routes[0];
        assert_eq!(route.upstream_headers[0].0.as_str(), "x-api-key");
        let names: Vec<&str> = route
            .coalesce
            .key_headers
            .iter()
            .map(|h| h.as_str())
            .collect();
        assert_eq!(names, ["x-tenant", "cookie"]);
    }

    #[test]
    fn upstream_header_values_are_not_printed() {
        let config = parse(&route_with(
            "[routes.upstream_headers]\nauthorization = \"Bearer sk-secret\"",
        ))
        .unwrap();
        let (_, value) = &config.routes[0].upstream_headers[0];
        assert!(value.is_sensitive());
        assert!(!format!("{config:?}").contains("sk-secret"));
    }

    #[test]
    fn upstream_trailing_slash_is_dropped() {
        let config = parse(&MINIMAL.replace("9000\"", "9000/v1/\"")).unwrap();
        assert_eq!(config.routes[0].upstream.path(), "/v1");
        let config = parse(&MINIMAL.replace("9000\"", "9000/\"")).unwrap();
        assert_eq!(config.routes[0].upstream.path(), "/");
    }

    #[test]
    fn env_expansion_in_nested_places() {
        let text = r#"
            [server]
            listen = "${HOST}:${PORT}"
            [[routes]]
            name = "r-${PORT}"
            upstream = "${UPSTREAM}"
            [routes.upstream_headers]
            authorization = "Bearer ${KEY}"
            [routes.coalesce]
            key_headers = ["authorization", "${TENANT_HEADER}"]
            json_ignore_fields = ["literal $${NOT_A_VAR}", "cost: $5"]
        "#;
        let env = |name: &str| {
            Some(
                match name {
                    "HOST" => "127.0.0.1",
                    "PORT" => "8081",
                    "UPSTREAM" => "http://10.0.0.1:7000",
                    "KEY" => "sk-1",
                    "TENANT_HEADER" => "X-Tenant",
                    _ => return None,
                }
                .to_owned(),
            )
        };
        let config = Config::parse(text, "test.toml", env).unwrap();
        assert_eq!(config.server.listen, "127.0.0.1:8081".parse().unwrap());
        let route = &config.routes[0];
        assert_eq!(route.name, "r-8081");
        assert_eq!(route.upstream, "http://10.0.0.1:7000/");
        assert_eq!(route.upstream_headers[0].1.as_bytes(), b"Bearer sk-1");
        assert_eq!(route.coalesce.key_headers[1].as_str(), "x-tenant");
        assert_eq!(
            route.coalesce.json_ignore_fields,
            ["literal ${NOT_A_VAR}", "cost: $5"]
        );
    }

    #[test]
    fn env_expansion_leaves_comments_alone() {
        let text = format!("# token: ${{UNSET}}\n{MINIMAL}");
        assert!(parse(&text).is_ok());
    }

    #[test]
    fn missing_env_var_is_reported_once() {
        let line = rejects(
            &route_with("[routes.upstream_headers]\nauthorization = \"Bearer ${OPENAI_API_KEY}\""),
            "routes[0].upstream_headers.authorization",
        );
        assert!(line.contains("OPENAI_API_KEY"), "{line}");
        assert!(line.contains("not set"), "{line}");

        // A required value that failed to expand is not also "required".
        let line = rejects(
            &MINIMAL.replace("http://127.0.0.1:9000", "${UP}"),
            "routes[0].upstream",
        );
        assert!(line.contains("UP"), "{line}");

        let line = rejects(
            &route_with("[routes.coalesce]\nmethods = [\"GET\", \"${M}\"]"),
            "routes[0].coalesce.methods[1]",
        );
        assert!(line.contains("environment variable M"), "{line}");
    }

    #[test]
    fn unterminated_and_invalid_references_are_reported() {
        let line = rejects(
            &MINIMAL.replace("\"llm\"", "\"llm-${OOPS\""),
            "routes[0].name",
        );
        assert!(line.contains("unterminated"), "{line}");
        let line = rejects(&MINIMAL.replace("\"llm\"", "\"${1X}\""), "routes[0].name");
        assert!(line.contains("not a valid environment variable"), "{line}");
    }

    #[test]
    fn listen_must_be_ip_and_port() {
        let line = rejects(
            &MINIMAL.replace("127.0.0.1:8080", "localhost:8080"),
            "server.listen",
        );
        assert!(line.contains("\"localhost:8080\""), "{line}");
        assert!(line.contains("IP:PORT"), "{line}");
        rejects(
            &MINIMAL.replace("127.0.0.1:8080", "127.0.0.1"),
            "server.listen",
        );
        rejects(
            &format!("[admin]\nlisten = \"*:9090\"\n{MINIMAL}"),
            "admin.listen",
        );
    }

    #[test]
    fn listen_is_required() {
        let line = rejects(
            &MINIMAL.replace("listen = \"127.0.0.1:8080\"", ""),
            "server.listen",
        );
        assert!(line.contains("required"), "{line}");
        let line = rejects(
            &MINIMAL
                .replace("[server]\n", "")
                .replace("listen = \"127.0.0.1:8080\"", ""),
            "server",
        );
        assert!(line.contains("[server]"), "{line}");
    }

    #[test]
    fn admin_must_not_clash_with_server() {
        let line = rejects(
            &format!("[admin]\nlisten = \"0.0.0.0:8080\"\n{MINIMAL}"),
            "admin.listen",
        );
        assert!(line.contains("server.listen"), "{line}");
        // Port 0 picks a free port each time: no clash.
        let text = MINIMAL.replace("127.0.0.1:8080", "127.0.0.1:0");
        assert!(parse(&format!("[admin]\nlisten = \"127.0.0.1:0\"\n{text}")).is_ok());
    }

    #[test]
    fn upstream_must_be_http_or_https() {
        let found = problems(&MINIMAL.replace("http://127.0.0.1:9000", "ftp://x"));
        assert_eq!(found.len(), 1);
        assert_eq!(
            found[0].to_string(),
            "test.toml: routes[0].upstream: must be an http:// or https:// URL, got \"ftp://x\""
        );
        for bad in ["127.0.0.1:9000", "/v1", "http://", "not a url"] {
            rejects(
                &MINIMAL.replace("http://127.0.0.1:9000", bad),
                "routes[0].upstream",
            );
        }
    }

    #[test]
    fn upstream_must_have_no_query_credentials_or_bad_port() {
        for (bad, why) in [
            ("http://h:9000/v1?x=1", "query"),
            ("http://h:9000/?", "query"),
            ("http://h:9000/#top", "fragment"),
            ("http://user:pw@h:9000", "credentials"),
            ("http://h:99999", "port"),
            ("http://h:0", "port"),
        ] {
            let line = rejects(
                &MINIMAL.replace("http://127.0.0.1:9000", bad),
                "routes[0].upstream",
            );
            assert!(line.contains(why), "{line}");
        }
    }

    #[test]
    fn upstream_is_required() {
        let line = rejects(
            &MINIMAL.replace("upstream = \"http://127.0.0.1:9000\"", ""),
            "routes[0].upstream",
        );
        assert!(line.contains("required"), "{line}");
    }

    #[test]
    fn route_names_must_be_present_non_empty_and_unique() {
        rejects(&MINIMAL.replace("name = \"llm\"", ""), "routes[0].name");
        rejects(&MINIMAL.replace("\"llm\"", "\"\""), "routes[0].name");
        rejects(&MINIMAL.replace("\"llm\"", "\"  \""), "routes[0].name");
        let text = format!(
            "{MINIMAL}\n[[routes]]\nname = \"llm\"\npath_prefix = \"/v2\"\nupstream = \"http://h\""
        );
        let line = rejects(&text, "routes[1].name");
        assert!(
            line.contains("duplicate") && line.contains("routes[0]"),
            "{line}"
        );
    }

    #[test]
    fn path_prefixes_must_start_with_slash_and_be_unique() {
        let line = rejects(&route_with("path_prefix = \"v1\""), "routes[0].path_prefix");
        assert!(line.contains("\"v1\""), "{line}");
        rejects(
            &route_with("path_prefix = \"/v1?x\""),
            "routes[0].path_prefix",
        );
        // Both default to "/".
        let text = format!("{MINIMAL}\n[[routes]]\nname = \"other\"\nupstream = \"http://h\"");
        let line = rejects(&text, "routes[1].path_prefix");
        assert!(line.contains("duplicate"), "{line}");
    }

    #[test]
    fn at_least_one_route_is_required() {
        let line = rejects("[server]\nlisten = \"127.0.0.1:8080\"", "routes");
        assert!(
            line.contains("at least one [[routes]] is required"),
            "{line}"
        );
        rejects(
            "routes = []\n[server]\nlisten = \"127.0.0.1:8080\"",
            "routes",
        );
        rejects(
            "routes = 3\n[server]\nlisten = \"127.0.0.1:8080\"",
            "routes",
        );
    }

    #[test]
    fn zero_sizes_and_limits_are_rejected() {
        for key in [
            "max_request_body_bytes",
            "max_header_bytes",
            "max_connections",
            "http2_max_concurrent_streams",
            "max_buffered_bytes",
        ] {
            let line = rejects(
                &server_with(&format!("{key} = 0")),
                &format!("server.{key}"),
            );
            assert!(line.contains("greater than 0"), "{line}");
        }
        for key in ["max_replay_bytes", "max_subscribers"] {
            let text = route_with(&format!("[routes.coalesce]\n{key} = 0"));
            rejects(&text, &format!("routes[0].coalesce.{key}"));
        }
    }

    #[test]
    fn zero_timeouts_are_rejected_where_they_must_be_positive() {
        for key in ["header_read_timeout", "request_body_timeout"] {
            let line = rejects(
                &server_with(&format!("{key} = \"0s\"")),
                &format!("server.{key}"),
            );
            assert!(line.contains("greater than 0"), "{line}");
        }
        for key in ["connect_timeout", "first_byte_timeout", "idle_timeout"] {
            rejects(
                &route_with(&format!("{key} = \"0ms\"")),
                &format!("routes[0].{key}"),
            );
        }
        // These may be zero.
        let text = route_with("[routes.coalesce]\nlinger = \"0s\"\ncancel_grace = \"0s\"");
        assert!(parse(&server_with("shutdown_grace = \"0s\"")).is_ok());
        assert!(parse(&text).is_ok());
    }

    #[test]
    fn bad_durations_are_quoted() {
        let line = rejects(
            &route_with("[routes.coalesce]\nlinger = \"5 parsecs\""),
            "routes[0].coalesce.linger",
        );
        assert!(line.contains("\"5 parsecs\""), "{line}");
        rejects(
            &server_with("shutdown_grace = \"30\""),
            "server.shutdown_grace",
        );
        let line = rejects(
            &route_with("idle_timeout = \"400days\""),
            "routes[0].idle_timeout",
        );
        assert!(line.contains("365 days"), "{line}");
    }

    #[test]
    fn wrong_types_name_the_full_key() {
        let text = format!(
            "{MINIMAL}\n[[routes]]\nname = \"b\"\npath_prefix = \"/b\"\nupstream = \"http://h\"\n\
             [routes.coalesce]\nlinger = 5"
        );
        let line = rejects(&text, "routes[1].coalesce.linger");
        assert!(line.contains("duration"), "{line}");
        let line = rejects(
            &server_with("max_connections = -1"),
            "server.max_connections",
        );
        assert!(line.contains("-1"), "{line}");
        rejects(
            &server_with("http2_max_concurrent_streams = 5000000000"),
            "server.http2_max_concurrent_streams",
        );
        rejects(
            &MINIMAL.replace("\"127.0.0.1:8080\"", "8080"),
            "server.listen",
        );
        let line = rejects(&route_with("coalesce = 3"), "routes[0].coalesce");
        assert!(line.contains("expected a table"), "{line}");
        rejects(
            &route_with("[routes.coalesce]\nmethods = [\"GET\", 2]"),
            "routes[0].coalesce.methods[1]",
        );
        rejects(
            &route_with("[routes.upstream_headers]\nx-n = 1"),
            "routes[0].upstream_headers.x-n",
        );
        let line = rejects(
            &route_with("upstream_headers = [\"authorization\"]"),
            "routes[0].upstream_headers",
        );
        assert!(line.contains("expected a table"), "{line}");
        let line = rejects(
            "server = 1\n[[routes]]\nname = \"llm\"\nupstream = \"http://h\"",
            "server",
        );
        assert!(line.contains("must be a table"), "{line}");
        rejects(
            "[[routes]]\nname = \"llm\"\nupstream = \"http://h\"\n[server]\nlisten = \"127.0.0.1:1\"\ntls = \"yes\"",
            "server.tls",
        );
    }

    #[test]
    fn unknown_keys_are_rejected_at_every_level() {
        let line = rejects(&format!("bogus = 1\n{MINIMAL}"), "bogus");
        assert!(line.contains("unknown key"), "{line}");
        let line = rejects(&server_with("bogus = 1"), "server.bogus");
        assert!(
            line.contains("unknown key") && line.contains("listen"),
            "{line}"
        );
        rejects(&format!("[admin]\nbogus = 1\n{MINIMAL}"), "admin.bogus");
        rejects(&route_with("bogus = 1"), "routes[0].bogus");
        rejects(
            &route_with("[routes.coalesce]\nbogus = 1"),
            "routes[0].coalesce.bogus",
        );
        let cert = temp_file("unknown-cert.pem");
        let tls = format!("[server.tls]\ncert = {cert:?}\nkey = {cert:?}\nbogus = 1");
        rejects(&format!("{MINIMAL}\n{tls}"), "server.tls.bogus");
        let _ = std::fs::remove_file(cert);
        rejects(&format!("[\"a.b\"]\n{MINIMAL}"), "\"a.b\"");
    }

    #[test]
    fn several_problems_are_all_reported() {
        let text = r#"
            [server]
            listen = "nowhere"
            [[routes]]
            name = "llm"
            upstream = "http://127.0.0.1:9000"
            idle_timeout = "soon"
            [[routes]]
            name = "llm"
            path_prefix = "/b"
            upstream = "http://127.0.0.1:9001"
        "#;
        let err = parse(text).unwrap_err();
        let keys: Vec<&str> = err.problems.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(err.problems.len(), 3, "{err}");
        for key in ["server.listen", "routes[0].idle_timeout", "routes[1].name"] {
            assert!(keys.contains(&key), "{key} missing from {keys:?}");
        }
        assert_eq!(err.to_string().lines().count(), 3);
        assert_eq!(
            keys,
            ["server.listen", "routes[0].idle_timeout", "routes[1].name"]
        );
    }

    #[test]
    fn structural_and_semantic_problems_are_reported_together() {
        let text = r#"
            bogus = true
            [server]
            listen = "nowhere"
            bogus = 1
            max_connections = "many"
            [[routes]]
            name = "a"
            upstream = "ftp://x"
            [routes.coalesce]
            methods = ["GET", "NOT A METHOD"]
            key_headers = ["bad header"]
            bogus = 2
        "#;
        let err = parse(text).unwrap_err();
        let mut keys: Vec<&str> = err.problems.iter().map(|p| p.key.as_str()).collect();
        keys.sort_unstable();
        assert_eq!(
            keys,
            [
                "bogus",
                "routes[0].coalesce.bogus",
                "routes[0].coalesce.key_headers[0]",
                "routes[0].coalesce.methods[1]",
                "routes[0].upstream",
                "server.bogus",
                "server.listen",
                "server.max_connections",
            ],
            "{err}"
        );
    }

    #[test]
    fn bad_methods_are_rejected() {
        let line = rejects(
            &route_with("[routes.coalesce]\nmethods = [\"GET\", \"P O S T\"]"),
            "routes[0].coalesce.methods[1]",
        );
        assert!(line.contains("\"P O S T\""), "{line}");
        rejects(
            &route_with("[routes.coalesce]\nmethods = [\"post\", \"POST\"]"),
            "routes[0].coalesce.methods[1]",
        );
        rejects(
            &route_with("[routes.coalesce]\nmethods = []"),
            "routes[0].coalesce.methods",
        );
        let off = route_with("[routes.coalesce]\nenabled = false\nmethods = []");
        assert!(parse(&off).is_ok());
    }

    #[test]
    fn bad_key_headers_are_rejected() {
        rejects(
            &route_with("[routes.coalesce]\nkey_headers = [\"x-ok\", \"bad:name\"]"),
            "routes[0].coalesce.key_headers[1]",
        );
        rejects(
            &route_with("[routes.coalesce]\nkey_headers = [\"Cookie\", \"cookie\"]"),
            "routes[0].coalesce.key_headers[1]",
        );
        rejects(
            &route_with("[routes.coalesce]\njson_ignore_fields = [\"user\", \"user\"]"),
            "routes[0].coalesce.json_ignore_fields[1]",
        );
    }

    #[test]
    fn bad_upstream_headers_are_rejected() {
        rejects(
            &route_with("[routes.upstream_headers]\n\"bad header\" = \"v\""),
            "routes[0].upstream_headers.\"bad header\"",
        );
        let line = rejects(
            &route_with("[routes.upstream_headers]\nx-key = \"sk-secret\\n\""),
            "routes[0].upstream_headers.x-key",
        );
        assert!(
            !line.contains("sk-secret"),
            "the value is never quoted: {line}"
        );
        let line = rejects(
            &route_with("[routes.upstream_headers]\nHost = \"example.com\""),
            "routes[0].upstream_headers.Host",
        );
        assert!(line.contains("managed by the gateway"), "{line}");
        rejects(
            &route_with("[routes.upstream_headers]\nX-A = \"1\"\nx-a = \"2\""),
            "routes[0].upstream_headers.x-a",
        );
    }

    #[test]
    fn tls_needs_both_cert_and_key() {
        let cert = temp_file("pair-cert.pem");
        let line = rejects(
            &format!("{MINIMAL}\n[server.tls]\ncert = {cert:?}"),
            "server.tls.key",
        );
        assert!(line.contains("required"), "{line}");
        rejects(
            &format!("{MINIMAL}\n[server.tls]\nkey = {cert:?}"),
            "server.tls.cert",
        );
        let _ = std::fs::remove_file(cert);
    }

    #[test]
    fn named_files_must_be_readable() {
        let missing = "/nonexistent/chorus/tls.crt";
        let cert = temp_file("readable-cert.pem");
        let line = rejects(
            &format!("{MINIMAL}\n[server.tls]\ncert = {missing:?}\nkey = {cert:?}"),
            "server.tls.cert",
        );
        assert!(line.contains(missing), "{line}");
        let dir = std::env::temp_dir();
        rejects(
            &format!("{MINIMAL}\n[server.tls]\ncert = {cert:?}\nkey = {dir:?}"),
            "server.tls.key",
        );
        let https = MINIMAL.replace("http://", "https://");
        for key in [
            "upstream_ca_file",
            "upstream_client_cert",
            "upstream_client_key",
        ] {
            let paired = match key {
                "upstream_client_cert" => format!("upstream_client_key = {cert:?}"),
                "upstream_client_key" => format!("upstream_client_cert = {cert:?}"),
                _ => String::new(),
            };
            let text = format!("{https}\n{key} = {missing:?}\n{paired}");
            let line = rejects(&text, &format!("routes[0].{key}"));
            assert!(line.contains(missing), "{line}");
        }
        rejects(
            &format!("{https}\nupstream_ca_file = \"\""),
            "routes[0].upstream_ca_file",
        );
        let _ = std::fs::remove_file(cert);
    }

    #[test]
    fn client_cert_and_key_go_together() {
        let cert = temp_file("client-pair.pem");
        let https = MINIMAL.replace("http://", "https://");
        let line = rejects(
            &format!("{https}\nupstream_client_cert = {cert:?}"),
            "routes[0].upstream_client_key",
        );
        assert!(line.contains("upstream_client_cert"), "{line}");
        rejects(
            &format!("{https}\nupstream_client_key = {cert:?}"),
            "routes[0].upstream_client_cert",
        );
        let both =
            format!("{https}\nupstream_client_cert = {cert:?}\nupstream_client_key = {cert:?}");
        assert!(parse(&both).is_ok());
        let _ = std::fs::remove_file(cert);
    }

    #[test]
    fn upstream_tls_files_need_an_https_upstream() {
        let ca = temp_file("http-ca.pem");
        let line = rejects(
            &route_with(&format!("upstream_ca_file = {ca:?}")),
            "routes[0].upstream_ca_file",
        );
        assert!(line.contains("https://"), "{line}");
        let _ = std::fs::remove_file(ca);
    }

    #[test]
    fn syntax_error_is_one_problem_with_its_position() {
        let found = problems("[server]\nlisten = \"0.0.0.0:8080\"\nlisten = \"again\"\n");
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].key, "line 3, column 1");
        assert!(found[0].message.contains("duplicate key"), "{found:?}");
        assert!(!found[0].message.contains('\n'));
        let found = problems("[server\n");
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].key.starts_with("line 1, column"), "{found:?}");
    }

    #[test]
    fn empty_file_reports_what_is_missing() {
        let mut keys: Vec<String> = problems("").into_iter().map(|p| p.key).collect();
        keys.sort_unstable();
        assert_eq!(keys, ["routes", "server"]);
    }

    #[test]
    fn problems_display_as_file_key_why() {
        let problem = Problem {
            file: "config/chorus.toml".to_owned(),
            key: "routes[0].upstream".to_owned(),
            message: "must be an http:// or https:// URL, got \"ftp://x\"".to_owned(),
        };
        assert_eq!(
            problem.to_string(),
            "config/chorus.toml: routes[0].upstream: must be an http:// or https:// URL, got \"ftp://x\""
        );
    }

    #[test]
    fn load_names_the_file() {
        let path = std::env::temp_dir().join(format!(
            "chorus-config-test-{}-load.toml",
            std::process::id()
        ));
        std::fs::write(&path, "[server]\nlisten = \"bad\"\n").unwrap();
        let err = Config::load(&path).unwrap_err();
        let _ = std::fs::remove_file(&path);
        let text = err.to_string();
        assert!(
            text.starts_with(&format!("{}: server.listen: ", path.display())),
            "{text}"
        );
        assert!(text.contains("routes: at least one"), "{text}");

        let err = Config::load(Path::new("/nonexistent/chorus.toml")).unwrap_err();
        assert_eq!(err.problems.len(), 1);
        assert!(
            err.to_string()
                .starts_with("/nonexistent/chorus.toml: cannot read"),
            "{err}"
        );
    }

    #[test]
    fn constructors_use_the_defaults() {
        let route = RouteConfig::new("r", "/x", Uri::from_static("http://h"));
        assert_eq!(route.coalesce, CoalesceConfig::default());
        assert_eq!(route.connect_timeout, DEFAULT_CONNECT_TIMEOUT);
        assert_eq!(
            AdminConfig::default().listen,
            "127.0.0.1:9090".parse().unwrap()
        );
    }
}
