//! Validation: the raw sections become the typed [`Config`]. Every rule is
//! here, and every problem is reported, not just the first.

use std::collections::BTreeMap;
use std::collections::btree_map::Entry;

use http::{HeaderName, HeaderValue, Method};

use super::problem::{Problems, join_key};
use super::raw::{RawAdmin, RawCoalesce, RawConfig, RawRoute, RawServer, RawTls};
use super::value::{duration, listeners_clash, positive, readable_file, socket_addr, upstream_uri};
use super::{
    AdminConfig, CoalesceConfig, Config, DEFAULT_CONNECT_TIMEOUT, DEFAULT_FIRST_BYTE_TIMEOUT,
    DEFAULT_HEADER_READ_TIMEOUT, DEFAULT_HTTP2_MAX_CONCURRENT_STREAMS, DEFAULT_IDLE_TIMEOUT,
    DEFAULT_MAX_BUFFERED_BYTES, DEFAULT_MAX_CONNECTIONS, DEFAULT_MAX_HEADER_BYTES,
    DEFAULT_MAX_REQUEST_BODY_BYTES, DEFAULT_PATH_PREFIX, DEFAULT_REQUEST_BODY_TIMEOUT,
    DEFAULT_SEND_TIMEOUT, DEFAULT_SHUTDOWN_GRACE, RouteConfig, RouteTlsFiles, ServerConfig,
    TlsConfig,
};

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

/// Turns the raw sections into a [`Config`], reporting every problem. Returns
/// `None` when something required could not be built.
pub(super) fn validate(raw: RawConfig, problems: &mut Problems) -> Option<Config> {
    let server = problems
        .require(
            "server",
            raw.server,
            "the [server] table is required (with at least listen = \"IP:PORT\")",
        )
        .and_then(|server| server_config(server, problems));
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
    let listen = problems
        .require(
            "server.listen",
            raw.listen,
            "is required: the IP:PORT to accept clients on, e.g. \"0.0.0.0:8080\"",
        )
        .and_then(|text| socket_addr(problems, "server.listen", &text));
    let tls = raw.tls.map(|tls| tls_config(tls, problems));
    let mut max_connections = positive(
        problems,
        "server.max_connections",
        raw.max_connections,
        DEFAULT_MAX_CONNECTIONS,
    );
    // The connection slots are a semaphore's permits, which have a limit.
    if max_connections > tokio::sync::Semaphore::MAX_PERMITS {
        problems.push(
            "server.max_connections",
            format!("must be at most {}", tokio::sync::Semaphore::MAX_PERMITS),
        );
        max_connections = DEFAULT_MAX_CONNECTIONS;
    }
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
        max_connections,
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
        send_timeout: duration(
            problems,
            "server.send_timeout",
            raw.send_timeout,
            DEFAULT_SEND_TIMEOUT,
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
    let mut file = |key: &str, value: Option<String>| {
        problems
            .require(
                key,
                value,
                "is required when [server.tls] is present (cert and key go together)",
            )
            .and_then(|path| readable_file(problems, key, &path))
    };
    let cert = file("server.tls.cert", raw.cert);
    let key = file("server.tls.key", raw.key);
    problems.tls_files.server = cert.clone().zip(key.clone());
    Some(TlsConfig {
        cert: cert?,
        key: key?,
    })
}

/// Reports a route name or path prefix that an earlier route already uses.
fn check_unique_routes(routes: &[(usize, RawRoute)], problems: &mut Problems) {
    let mut names = BTreeMap::new();
    let mut prefixes = BTreeMap::new();
    for (i, route) in routes {
        if let Some(name) = route.name.as_deref().filter(|name| !name.trim().is_empty()) {
            claim(problems, &mut names, *i, "name", "route name", name);
        }
        let prefix = route.path_prefix.as_deref().unwrap_or(DEFAULT_PATH_PREFIX);
        claim(
            problems,
            &mut prefixes,
            *i,
            "path_prefix",
            "path_prefix",
            prefix,
        );
    }
}

/// Records that `routes[i]` uses `value` for `key` (told as `what`), or
/// reports it as a duplicate of the first route that did.
fn claim<'a>(
    problems: &mut Problems,
    seen: &mut BTreeMap<&'a str, usize>,
    i: usize,
    key: &str,
    what: &str,
    value: &'a str,
) {
    match seen.entry(value) {
        Entry::Occupied(first) => problems.push(
            format!("routes[{i}].{key}"),
            format!(
                "duplicate {what} {value:?} (already used by routes[{}])",
                first.get()
            ),
        ),
        Entry::Vacant(slot) => {
            slot.insert(i);
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
    } else {
        // Requests are routed by their path as a backend reads it: a prefix
        // in another form would never match one.
        match crate::target::routing_path(&path_prefix) {
            Ok(routed) if routed != path_prefix => problems.push(
                at("path_prefix"),
                format!(
                    "is never matched: requests are routed with dot segments resolved, \
                     unreserved characters decoded and repeated slashes as one; \
                     use {routed:?}, not {path_prefix:?}"
                ),
            ),
            Ok(_) => {}
            Err(why) => problems.push(
                at("path_prefix"),
                format!("is never matched: {why}, got {path_prefix:?}"),
            ),
        }
    }

    let upstream = problems
        .require(
            &at("upstream"),
            raw.upstream,
            "is required: the backend URL, e.g. \"http://127.0.0.1:9000\"",
        )
        .and_then(|text| upstream_uri(problems, &at("upstream"), &text));
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
    problems.tls_files.routes.push(RouteTlsFiles {
        index: i,
        ca: upstream_ca_file.clone(),
        client: upstream_client_cert
            .clone()
            .zip(upstream_client_key.clone()),
    });

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
        websocket: raw.websocket.unwrap_or(false),
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
            let empty = names.is_empty();
            let methods = unique_list(
                problems,
                &list_key,
                names,
                |name| {
                    Method::from_bytes(name.to_ascii_uppercase().as_bytes())
                        .map_err(|_| format!("not a valid HTTP method: {name:?}"))
                },
                |method| format!("method {method}"),
            );
            if empty && enabled {
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
        Some(names) => unique_list(
            problems,
            &key("key_headers"),
            names,
            |name| {
                HeaderName::from_bytes(name.as_bytes())
                    .map_err(|_| format!("not a valid header name: {name:?}"))
            },
            |header| format!("header {header}"),
        ),
        None => defaults.key_headers,
    };

    let json_ignore_fields = match raw.json_ignore_fields {
        Some(fields) => unique_list(problems, &key("json_ignore_fields"), fields, Ok, |field| {
            format!("field {field:?}")
        }),
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

/// The items of the list at `list_key`, each made by `parse` (or told why it
/// is invalid). An invalid item, and one equal to an earlier item (said as
/// `described` "is listed twice"), is reported at `list_key[i]` and left out.
fn unique_list<T: PartialEq>(
    problems: &mut Problems,
    list_key: &str,
    items: Vec<String>,
    parse: impl Fn(String) -> Result<T, String>,
    described: impl Fn(&T) -> String,
) -> Vec<T> {
    let mut kept = Vec::new();
    for (i, item) in items.into_iter().enumerate() {
        match parse(item) {
            Ok(value) if kept.contains(&value) => problems.push(
                format!("{list_key}[{i}]"),
                format!("{} is listed twice", described(&value)),
            ),
            Ok(value) => kept.push(value),
            Err(why) => problems.push(format!("{list_key}[{i}]"), why),
        }
    }
    kept
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

#[cfg(test)]
#[path = "validate_tests.rs"]
mod tests;
