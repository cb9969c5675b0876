//! Checks of one value each: listen addresses, upstream URLs, sizes and
//! limits, durations, and files the config names. Each reports under the
//! key it is given and falls back to `None` or the default.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use http::Uri;

use super::problem::Problems;
use super::raw::RawDuration;

/// Longest accepted duration: keeps `Instant + duration` far from overflow.
const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 60 * 60);

pub(super) fn socket_addr(problems: &mut Problems, key: &str, text: &str) -> Option<SocketAddr> {
    // `localhost` is the one name people write for loopback; any other name
    // would need a lookup whose answer can change under a running server.
    let loopback = text
        .strip_prefix("localhost:")
        .and_then(|port| port.parse::<u16>().ok())
        .map(|port| SocketAddr::from(([127, 0, 0, 1], port)));
    match text.parse().ok().or(loopback) {
        Some(addr) => Some(addr),
        None => {
            problems.push(
                key,
                format!(
                    "must be an IP:PORT address such as \"0.0.0.0:8080\" or \"[::]:8080\" \
                     (or localhost:PORT; other host names are not accepted), got {text:?}"
                ),
            );
            None
        }
    }
}

/// Whether two listeners would fight over one port (port 0 picks a free one).
pub(super) fn listeners_clash(a: SocketAddr, b: SocketAddr) -> bool {
    a.port() != 0
        && a.port() == b.port()
        && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
}

/// A URL as problems show it: user information, which may hold a password
/// (from `${NAME}` even), replaced by `***`.
fn without_credentials(text: &str) -> String {
    let start = text.find("://").map_or(0, |at| at + 3);
    let end = text[start..]
        .find(['/', '?', '#'])
        .map_or(text.len(), |at| start + at);
    match text[start..end].rfind('@') {
        Some(at) => format!("{}***{}", &text[..start], &text[start + at..]),
        None => text.to_owned(),
    }
}

pub(super) fn upstream_uri(problems: &mut Problems, key: &str, text: &str) -> Option<Uri> {
    let shown = without_credentials(text);
    let bad_url = || format!("must be an http:// or https:// URL, got {shown:?}");
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
                "must not carry credentials (user@host), got {shown:?}; \
                 set them in [routes.upstream_headers] instead"
            ),
        );
        return None;
    }
    if authority.host().is_empty() {
        problems.push(key, format!("has no host, got {shown:?}"));
        ok = false;
    }
    let port_text = authority
        .as_str()
        .strip_prefix(authority.host())
        .unwrap_or_default();
    if !port_text.is_empty() && authority.port_u16().is_none_or(|port| port == 0) {
        problems.push(key, format!("has an invalid port, got {shown:?}"));
        ok = false;
    }
    if text.contains('?') {
        problems.push(key, format!("must not have a query (?...), got {shown:?}"));
        ok = false;
    }
    if text.contains('#') {
        problems.push(
            key,
            format!("must not have a fragment (#...), got {shown:?}"),
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
pub(super) fn positive<T>(problems: &mut Problems, key: &str, value: Option<T>, default: T) -> T
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
pub(super) fn duration(
    problems: &mut Problems,
    key: &str,
    value: Option<RawDuration>,
    default: Duration,
    nonzero: bool,
) -> Duration {
    let Some(RawDuration(text)) = value else {
        return default;
    };
    // humantime takes a bare "0"; every other number needs its unit, so "0" does too.
    let parsed = if text.bytes().all(|byte| byte.is_ascii_digit()) {
        Err("time unit needed".to_owned())
    } else {
        humantime::parse_duration(&text).map_err(|err| err.to_string())
    };
    match parsed {
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
pub(super) fn readable_file(problems: &mut Problems, key: &str, path: &str) -> Option<PathBuf> {
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
    use crate::config::test_support::*;

    #[test]
    fn upstream_trailing_slash_is_dropped() {
        let config = parse(&MINIMAL.replace("9000\"", "9000/v1/\"")).unwrap();
        assert_eq!(config.routes[0].upstream.path(), "/v1");
        let config = parse(&MINIMAL.replace("9000\"", "9000/\"")).unwrap();
        assert_eq!(config.routes[0].upstream.path(), "/");
    }

    #[test]
    fn listen_must_be_ip_and_port() {
        let line = rejects(
            &MINIMAL.replace("127.0.0.1:8080", "example.com:8080"),
            "server.listen",
        );
        assert!(line.contains("\"example.com:8080\""), "{line}");
        assert!(line.contains("IP:PORT"), "{line}");
        let config = parse(&MINIMAL.replace("127.0.0.1:8080", "localhost:8080")).unwrap();
        assert_eq!(
            config.server.listen,
            std::net::SocketAddr::from(([127, 0, 0, 1], 8080))
        );
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
            (
                "http://user:pw@h:9000",
                "credentials (user@host), got \"http://***@h:9000\"",
            ),
            ("ftp://user:pw@h:9000/a@b", "got \"ftp://***@h:9000/a@b\""),
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
        for key in [
            "header_read_timeout",
            "request_body_timeout",
            "send_timeout",
        ] {
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
        for unitless in ["30", "0"] {
            let line = rejects(
                &server_with(&format!("shutdown_grace = {unitless:?}")),
                "server.shutdown_grace",
            );
            assert!(line.contains("time unit needed"), "{line}");
        }
        let line = rejects(
            &route_with("idle_timeout = \"400days\""),
            "routes[0].idle_timeout",
        );
        assert!(line.contains("365 days"), "{line}");
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
}
