//! Header rewriting at the proxy boundary: hop-by-hop removal both ways,
//! `X-Forwarded-*` and `Host` on the way up, the SSE anti-buffering rewrite on
//! the way down, and the gateway's own `x-chorus-*` headers.

use std::net::IpAddr;

use http::header::{
    ACCEPT_ENCODING, CACHE_CONTROL, CONNECTION, CONTENT_LENGTH, CONTENT_TYPE, COOKIE, EXPECT, HOST,
    TE, TRAILER, TRANSFER_ENCODING, UPGRADE,
};
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode, Uri};

/// Which of leader, follower or bypass answered a request.
pub const X_CHORUS_ROLE: HeaderName = HeaderName::from_static("x-chorus-role");
/// `x-chorus-coalesce: off` sends a request upstream on its own.
pub const X_CHORUS_COALESCE: HeaderName = HeaderName::from_static("x-chorus-coalesce");

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const X_ACCEL_BUFFERING: HeaderName = HeaderName::from_static("x-accel-buffering");

/// Hop-by-hop headers of RFC 9110 §7.6.1 (and the legacy ones proxies still
/// meet); the names listed in `Connection` are removed as well. `Trailer`
/// goes too: it announces trailer fields, which the gateway does not relay.
const HOP_BY_HOP: [HeaderName; 8] = [
    CONNECTION,
    HeaderName::from_static("proxy-connection"),
    HeaderName::from_static("keep-alive"),
    TE,
    TRAILER,
    TRANSFER_ENCODING,
    UPGRADE,
    HeaderName::from_static("http2-settings"),
];

/// What the upstream is told about the client's side of the connection.
#[derive(Debug)]
pub struct ClientSide {
    /// The client's address as an `X-Forwarded-For` entry, written once per
    /// connection rather than once per request.
    forwarded_for: HeaderValue,
    /// Whether the client connection is TLS (`X-Forwarded-Proto: https`).
    tls: bool,
}

impl ClientSide {
    pub fn new(ip: IpAddr, tls: bool) -> Self {
        let forwarded_for = HeaderValue::from_str(&ip.to_canonical().to_string())
            .unwrap_or_else(|_| HeaderValue::from_static("unknown"));
        Self { forwarded_for, tls }
    }
}

/// Removes hop-by-hop headers, including every header named in `Connection`
/// but `Host`, which every request needs (RFC 9112 §3.2) and names the host
/// the client asked for (`X-Forwarded-Host`, a `host` key header).
pub fn remove_hop_by_hop(headers: &mut HeaderMap) {
    // Most messages carry none (and any `Connection` is one): a pass over
    // the names costs less than looking each hop-by-hop name up.
    if !headers.keys().any(|name| HOP_BY_HOP.contains(name)) {
        return;
    }
    let listed: Vec<HeaderName> = headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .filter(|name| *name != HOST)
        .collect();
    for name in listed.iter().chain(HOP_BY_HOP.iter()) {
        headers.remove(name);
    }
}

/// Joins a `Cookie` sent in several fields into one, `; ` between them.
///
/// HTTP/2 clients send each cookie as a field of its own (RFC 9113
/// §8.2.3), which must be joined before the request goes on over HTTP/1.1,
/// where servers read one `Cookie` line; joined, the same cookies also make
/// the same key whichever version the client spoke.
pub fn join_cookie_crumbs(headers: &mut HeaderMap) {
    let mut crumbs = headers.get_all(COOKIE).iter();
    let (Some(first), Some(_)) = (crumbs.next(), crumbs.next()) else {
        return;
    };
    let mut joined = first.as_bytes().to_vec();
    for crumb in headers.get_all(COOKIE).iter().skip(1) {
        joined.extend_from_slice(b"; ");
        joined.extend_from_slice(crumb.as_bytes());
    }
    // Joined from valid values with "; ", the value is valid too.
    if let Ok(joined) = HeaderValue::from_bytes(&joined) {
        headers.insert(COOKIE, joined);
    }
}

/// Whether the client opted out of coalescing with `x-chorus-coalesce: off`.
pub fn coalesce_opted_out(headers: &HeaderMap) -> bool {
    headers
        .get(X_CHORUS_COALESCE)
        .is_some_and(|value| value.as_bytes().eq_ignore_ascii_case(b"off"))
}

/// Turns a client request's headers, their hop-by-hop headers already
/// removed ([`remove_hop_by_hop`]: the proxy does it before the key is
/// taken), into the upstream request's headers.
///
/// `uri` is the request URI as received: its authority, where it has one
/// (HTTP/2's `:authority`, an HTTP/1.1 absolute-form target), is the host
/// the client asked for, as RFC 9112 §3.2.2 and RFC 9113 §8.3.1 say, and
/// `Host` otherwise. `upstream_authority` becomes `Host`; `coalesced` requests ask
/// for identity encoding so that no subscriber gets an encoding it did not
/// accept.
pub fn to_upstream(
    headers: &mut HeaderMap,
    uri: &Uri,
    client: &ClientSide,
    upstream_authority: &HeaderValue,
    extra: &[(HeaderName, HeaderValue)],
    coalesced: bool,
) {
    let client_host = uri
        .authority()
        .and_then(|authority| HeaderValue::from_str(authority.as_str()).ok())
        .or_else(|| headers.get(HOST).cloned());

    remove_gateway_headers(headers);
    // The body was read in full, so the client's expectation was already met,
    // and its length is set by the client library from the buffered body.
    headers.remove(EXPECT);
    headers.remove(CONTENT_LENGTH);

    append_forwarded_for(headers, &client.forwarded_for);
    let proto = if client.tls { "https" } else { "http" };
    headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static(proto));
    match client_host {
        Some(host) => headers.insert(X_FORWARDED_HOST, host),
        None => headers.remove(X_FORWARDED_HOST),
    };
    headers.insert(HOST, upstream_authority.clone());
    if coalesced {
        headers.insert(ACCEPT_ENCODING, HeaderValue::from_static("identity"));
    }
    for (name, value) in extra {
        headers.insert(name.clone(), value.clone());
    }
}

/// Turns an upstream response's headers into the client response's headers.
pub fn to_downstream(status: StatusCode, headers: &mut HeaderMap) {
    // A body the upstream framed with `Transfer-Encoding` was read by it,
    // whatever its `Content-Length` said; passed on, the length would cut
    // the body short or promise bytes that never come (RFC 9112 §6.3). A
    // 204 has no length at all (RFC 9110 §8.6): HTTP/2 clients take one
    // for a protocol error.
    if headers.contains_key(TRANSFER_ENCODING) || status == StatusCode::NO_CONTENT {
        headers.remove(CONTENT_LENGTH);
    }
    remove_hop_by_hop(headers);
    remove_gateway_headers(headers);
    if is_event_stream(headers) {
        // Tell every proxy in front of us not to buffer, and let the stream
        // be delimited by the connection rather than a length.
        headers.insert(X_ACCEL_BUFFERING, HeaderValue::from_static("no"));
        add_no_cache(headers);
        headers.remove(CONTENT_LENGTH);
    } else if has_media_type(headers, "application/x-ndjson") {
        // Ollama streams its answers as lines of JSON: nginx in front must
        // not buffer those either. Nothing else about them changes.
        headers.insert(X_ACCEL_BUFFERING, HeaderValue::from_static("no"));
    }
}

/// Makes `Cache-Control` say `no-cache`, keeping what else the upstream
/// asked for: `no-transform` keeps compressing proxies from holding the
/// stream back, `no-store` and `private` keep shared caches from keeping it.
fn add_no_cache(headers: &mut HeaderMap) {
    let mut directives: Vec<&[u8]> = headers
        .get_all(CACHE_CONTROL)
        .iter()
        .flat_map(|value| value.as_bytes().split(|&byte| byte == b','))
        .map(<[u8]>::trim_ascii)
        .filter(|directive| !directive.is_empty())
        .collect();
    if directives.is_empty() {
        headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        return;
    }
    if !directives
        .iter()
        .any(|directive| directive.eq_ignore_ascii_case(b"no-cache"))
    {
        directives.push(b"no-cache");
    }
    // Joined with ", " again, a quoted comma comes back as it was.
    let joined = directives.join(&b", "[..]);
    let value =
        HeaderValue::from_bytes(&joined).unwrap_or_else(|_| HeaderValue::from_static("no-cache"));
    headers.insert(CACHE_CONTROL, value);
}

/// Whether the media type is `text/event-stream`.
pub fn is_event_stream(headers: &HeaderMap) -> bool {
    has_media_type(headers, "text/event-stream")
}

/// Whether `Content-Type` names `media` (parameters aside, any case).
fn has_media_type(headers: &HeaderMap, media: &str) -> bool {
    headers
        .get(CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.split(';').next())
        .is_some_and(|named| named.trim().eq_ignore_ascii_case(media))
}

fn remove_gateway_headers(headers: &mut HeaderMap) {
    let ours: Vec<HeaderName> = headers
        .keys()
        .filter(|name| name.as_str().starts_with("x-chorus-"))
        .cloned()
        .collect();
    for name in ours {
        headers.remove(name);
    }
}

/// Appends the client to `X-Forwarded-For`, keeping what earlier proxies wrote.
fn append_forwarded_for(headers: &mut HeaderMap, client: &HeaderValue) {
    let earlier: Vec<&str> = headers
        .get_all(X_FORWARDED_FOR)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .map(str::trim)
        .filter(|value| !value.is_empty())
        .collect();
    if earlier.is_empty() {
        headers.insert(X_FORWARDED_FOR, client.clone());
        return;
    }
    let ours = client.to_str().unwrap_or_default();
    let value = format!("{}, {ours}", earlier.join(", "));
    if let Ok(value) = HeaderValue::from_str(&value) {
        headers.insert(X_FORWARDED_FOR, value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookie_crumbs_are_joined_in_order() {
        let mut crumbs = map(&[("cookie", "a=1"), ("x", "y"), ("cookie", "b=2")]);
        join_cookie_crumbs(&mut crumbs);
        assert_eq!(
            crumbs.get_all(COOKIE).iter().collect::<Vec<_>>(),
            ["a=1; b=2"]
        );
        let mut one = map(&[("cookie", "a=1; b=2")]);
        join_cookie_crumbs(&mut one);
        assert_eq!(one, map(&[("cookie", "a=1; b=2")]));
    }

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (name, value) in pairs {
            headers.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        headers
    }

    fn upstream(headers: &mut HeaderMap, coalesced: bool) {
        remove_hop_by_hop(headers);
        let client = ClientSide::new("10.0.0.7".parse().unwrap(), false);
        let uri: Uri = "/v1/chat".parse().unwrap();
        let authority = HeaderValue::from_static("backend:9000");
        to_upstream(headers, &uri, &client, &authority, &[], coalesced);
    }

    #[test]
    fn hop_by_hop_and_connection_listed_headers_go() {
        let mut headers = map(&[
            ("connection", "keep-alive, x-secret-hop"),
            ("keep-alive", "timeout=5"),
            ("x-secret-hop", "1"),
            ("te", "trailers"),
            ("upgrade", "h2c"),
            ("proxy-connection", "keep-alive"),
            ("trailer", "x-checksum"),
            ("x-kept", "yes"),
        ]);
        remove_hop_by_hop(&mut headers);
        assert_eq!(headers.len(), 1);
        assert_eq!(headers["x-kept"], "yes");
        // Never `Host`, named or not.
        let mut headers = map(&[("connection", "host, x-a"), ("host", "a"), ("x-a", "1")]);
        remove_hop_by_hop(&mut headers);
        assert_eq!(headers.len(), 1);
        assert_eq!(headers["host"], "a");
    }

    #[test]
    fn forwarded_headers_are_set_and_appended() {
        let mut headers = map(&[
            ("host", "chat.example.com"),
            ("x-forwarded-for", "1.2.3.4"),
            ("x-forwarded-for", "5.6.7.8"),
            ("x-chorus-coalesce", "off"),
        ]);
        upstream(&mut headers, false);
        assert_eq!(headers["x-forwarded-for"], "1.2.3.4, 5.6.7.8, 10.0.0.7");
        assert_eq!(headers["x-forwarded-host"], "chat.example.com");
        assert_eq!(headers["x-forwarded-proto"], "http");
        assert_eq!(headers["host"], "backend:9000");
        assert!(headers.get("x-chorus-coalesce").is_none());
        assert!(headers.get("accept-encoding").is_none());
    }

    #[test]
    fn the_forwarded_host_is_the_targets_authority_where_it_has_one() {
        let client = ClientSide::new("10.0.0.7".parse().unwrap(), false);
        let authority = HeaderValue::from_static("backend:9000");
        for (target, host, forwarded) in [
            ("/v1/chat", "chat.example.com", "chat.example.com"),
            (
                "http://api.example.com/v1/chat",
                "other.example",
                "api.example.com",
            ),
            (
                "https://api.example.com:8443/",
                "api.example.com",
                "api.example.com:8443",
            ),
        ] {
            let mut headers = map(&[("host", host)]);
            let uri: Uri = target.parse().unwrap();
            to_upstream(&mut headers, &uri, &client, &authority, &[], false);
            assert_eq!(headers["x-forwarded-host"], forwarded, "{target}");
            assert_eq!(headers["host"], "backend:9000");
        }
    }

    #[test]
    fn forwarded_for_names_v4_mapped_peers_by_their_v4_address() {
        let mut headers = HeaderMap::new();
        let client = ClientSide::new("::ffff:10.0.0.9".parse().unwrap(), true);
        let authority = HeaderValue::from_static("backend:9000");
        to_upstream(
            &mut headers,
            &"/".parse().unwrap(),
            &client,
            &authority,
            &[],
            false,
        );
        assert_eq!(headers["x-forwarded-for"], "10.0.0.9");
        assert_eq!(headers["x-forwarded-proto"], "https");
    }

    #[test]
    fn coalesced_requests_ask_for_identity() {
        let mut headers = map(&[("accept-encoding", "gzip, br")]);
        upstream(&mut headers, true);
        assert_eq!(headers["accept-encoding"], "identity");
    }

    #[test]
    fn event_streams_are_marked_unbuffered() {
        let mut headers = map(&[
            ("content-type", "text/event-stream; charset=utf-8"),
            ("content-length", "100"),
            ("cache-control", "private"),
            ("transfer-encoding", "chunked"),
        ]);
        to_downstream(StatusCode::OK, &mut headers);
        assert_eq!(headers["x-accel-buffering"], "no");
        assert_eq!(headers["cache-control"], "private, no-cache");
        assert!(headers.get("content-length").is_none());
        assert!(headers.get("transfer-encoding").is_none());
    }

    #[test]
    fn a_204_loses_its_length() {
        let mut headers = map(&[("content-length", "5")]);
        to_downstream(StatusCode::NO_CONTENT, &mut headers);
        assert!(headers.get("content-length").is_none());
        let mut headers = map(&[("content-length", "5")]);
        to_downstream(StatusCode::NOT_MODIFIED, &mut headers);
        assert_eq!(headers["content-length"], "5");
    }

    #[test]
    fn ndjson_streams_are_marked_unbuffered_and_keep_the_rest() {
        let mut headers = map(&[
            ("content-type", "application/x-ndjson"),
            ("content-length", "100"),
        ]);
        to_downstream(StatusCode::OK, &mut headers);
        assert_eq!(headers["x-accel-buffering"], "no");
        assert_eq!(headers["content-length"], "100");
        assert!(headers.get("cache-control").is_none());
        let mut json = map(&[("content-type", "application/json")]);
        to_downstream(StatusCode::OK, &mut json);
        assert!(json.get("x-accel-buffering").is_none());
    }

    #[test]
    fn an_event_stream_keeps_its_cache_directives_beside_no_cache() {
        for (upstream, sent) in [
            (&[][..], "no-cache"),
            (&["no-cache"][..], "no-cache"),
            (&["No-Cache, no-transform"][..], "No-Cache, no-transform"),
            (&["no-store"][..], "no-store, no-cache"),
            (
                &["private, no-store", "no-transform"][..],
                "private, no-store, no-transform, no-cache",
            ),
            (&["no-cache=\"a, b\""][..], "no-cache=\"a, b\", no-cache"),
        ] {
            let mut headers = map(&[("content-type", "text/event-stream")]);
            for value in upstream {
                headers.append("cache-control", value.parse().unwrap());
            }
            to_downstream(StatusCode::OK, &mut headers);
            let values: Vec<_> = headers.get_all("cache-control").iter().collect();
            assert_eq!(values, [sent], "{upstream:?}");
        }
    }

    #[test]
    fn other_responses_keep_their_length() {
        let mut headers = map(&[
            ("content-type", "application/json"),
            ("content-length", "2"),
        ]);
        to_downstream(StatusCode::OK, &mut headers);
        assert_eq!(headers["content-length"], "2");
        assert!(headers.get("x-accel-buffering").is_none());
    }

    #[test]
    fn a_length_beside_a_transfer_coding_is_dropped() {
        let mut headers = map(&[
            ("content-type", "application/json"),
            ("content-length", "2"),
            ("transfer-encoding", "chunked"),
        ]);
        to_downstream(StatusCode::OK, &mut headers);
        assert!(headers.get("content-length").is_none());
        assert!(headers.get("transfer-encoding").is_none());
    }
}
