//! What the gateway checks of a request's target and host before it routes
//! the request, and the path it routes by: what `crate::framing` refuses in
//! HTTP/1.1 heads, asked of every request, since hyper lets it by in
//! HTTP/2 and in absolute-form targets; and the path with its dot segments
//! resolved, as a backend would resolve them.

use std::borrow::Cow;

use http::header::HOST;
use http::{Request, Version};

use crate::error::GatewayError;
use crate::framing;

/// Refuses a target or host the routes or the upstream could read otherwise
/// than the gateway does.
pub fn check<B>(request: &Request<B>) -> Result<(), GatewayError> {
    let uri = request.uri();
    let http2 = request.version() == Version::HTTP_2;
    match uri.authority() {
        // `user:password@host` would reach the upstream as X-Forwarded-Host.
        Some(authority) if !framing::is_host(authority.as_str().as_bytes()) => {
            return Err(GatewayError::BadRequest(
                "the request's authority is not a host and an optional port",
            ));
        }
        // RFC 9113 §8.3.1, as HTTP/1.1 asks for `Host` (RFC 9112 §3.2).
        None if http2 && !request.headers().contains_key(HOST) => {
            return Err(GatewayError::BadRequest(
                "an HTTP/2 request needs :authority or Host",
            ));
        }
        _ => {}
    }
    if http2 {
        if request
            .headers()
            .get(HOST)
            .is_some_and(|host| !framing::is_host(host.as_bytes()))
        {
            return Err(GatewayError::BadRequest(
                "the Host header is not a host and an optional port",
            ));
        }
        // hyper takes any byte in an HTTP/2 `:path`; the upstream's request
        // line would carry it raw.
        let target = uri.path_and_query().map_or("", |target| target.as_str());
        if !target.bytes().all(|byte| byte.is_ascii_graphic()) {
            return Err(GatewayError::BadRequest(
                "the request target has bytes other than visible ASCII",
            ));
        }
    }
    Ok(())
}

/// The path a request is routed by: `path` with its dot segments (`.` and
/// `..`, RFC 3986 §5.2.4) resolved, as a backend that resolves them would
/// read it, so that `/public/../admin` is routed as `/admin`, not by the
/// route of `/public/` (with that route's `upstream_headers`). Dots and
/// slashes count percent-encoded too (`%2E`, `%2F`), and `\` as a slash, as
/// some servers take them. The request still goes on with its path as
/// received. `None` when `..` climbs above the root, which would leave the
/// path of an upstream URL (nginx answers 400 too).
pub fn routing_path(path: &str) -> Option<Cow<'_, str>> {
    // Most paths have no dot, escape or backslash: routed as they are.
    let bytes = path.as_bytes();
    if memchr::memchr3(b'.', b'%', b'\\', bytes).is_none() {
        return Some(Cow::Borrowed(path));
    }
    let mut segments: Vec<Vec<u8>> = Vec::new();
    let mut segment = Vec::new();
    // A path that ends in a dot segment ends in `/` (`/a/b/..` is `/a/`).
    let mut ends_in_dots;
    let mut at = 0;
    // Past the leading `/` (an origin-form path always has one).
    if bytes.first() == Some(&b'/') {
        at = 1;
    }
    loop {
        let byte = match bytes.get(at) {
            None => None,
            Some(b'%') => match bytes.get(at + 1..at + 3) {
                Some([b'2', b'e' | b'E']) => {
                    at += 2;
                    Some(b'.')
                }
                Some([b'2', b'f' | b'F'] | [b'5', b'c' | b'C']) => {
                    at += 2;
                    Some(b'/')
                }
                _ => Some(b'%'),
            },
            Some(b'\\') => Some(b'/'),
            Some(&byte) => Some(byte),
        };
        at += 1;
        match byte {
            Some(b'/') | None => {
                ends_in_dots = matches!(segment.as_slice(), b"." | b"..");
                match segment.as_slice() {
                    b"." => {}
                    b".." => {
                        segments.pop()?;
                    }
                    _ => segments.push(std::mem::take(&mut segment)),
                }
                segment.clear();
                if byte.is_none() {
                    break;
                }
            }
            Some(byte) => segment.push(byte),
        }
    }
    let mut resolved = Vec::with_capacity(path.len());
    for segment in &segments {
        resolved.push(b'/');
        resolved.extend_from_slice(segment);
    }
    if ends_in_dots || resolved.is_empty() {
        resolved.push(b'/');
    }
    // Only ASCII bytes were replaced by ASCII bytes: still UTF-8.
    String::from_utf8(resolved).ok().map(Cow::Owned)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use http::Uri;

    fn request(version: Version, uri: Uri, host: Option<&str>) -> Request<()> {
        let mut request = Request::builder().version(version).uri(uri);
        if let Some(host) = host {
            request = request.header(HOST, host);
        }
        request.body(()).unwrap()
    }

    fn checked(version: Version, uri: &str, host: Option<&str>) -> bool {
        let uri = Uri::from_maybe_shared(Bytes::copy_from_slice(uri.as_bytes())).unwrap();
        check(&request(version, uri, host)).is_ok()
    }

    #[test]
    fn authorities_are_a_host_and_a_port_in_either_version() {
        for version in [Version::HTTP_11, Version::HTTP_2] {
            assert!(checked(version, "http://a.example:8080/x", None));
            assert!(checked(version, "http://[::1]:8080/x", None));
            assert!(!checked(version, "http://user:pw@a.example/x", None));
            assert!(!checked(version, "http://user@a.example/x", None));
        }
    }

    #[test]
    fn http2_requests_need_a_host_and_a_plain_path() {
        let h2 = Version::HTTP_2;
        assert!(checked(h2, "/x", Some("a.example")));
        assert!(!checked(h2, "/x", None));
        assert!(!checked(h2, "/x", Some("user@a.example")));
        // HTTP/1.1 heads are judged by `framing` before they get here.
        assert!(checked(Version::HTTP_11, "/x", None));
        // As hyper parses an HTTP/2 `:path`.
        let raw = Uri::from_maybe_shared(Bytes::from_static(b"/caf\xc3\xa9")).unwrap();
        assert!(check(&request(h2, raw, Some("a"))).is_err());
    }

    #[test]
    fn paths_are_routed_with_their_dot_segments_resolved() {
        for (path, routed) in [
            ("/v1/chat/completions", "/v1/chat/completions"),
            ("/v1/models/gpt-4.1", "/v1/models/gpt-4.1"),
            ("/public/../admin", "/admin"),
            ("/public/./admin", "/public/admin"),
            ("/public/..", "/"),
            ("/public/a/..", "/public/"),
            ("/public/%2e%2E/admin", "/admin"),
            ("/public/..%2fadmin", "/admin"),
            ("/public/..%5Cadmin", "/admin"),
            ("/public/..\\admin", "/admin"),
            ("/a%2Fb/./c/../d", "/a/b/d"),
            ("/public/a..b", "/public/a..b"),
            ("/public/.well-known/x", "/public/.well-known/x"),
            ("/public/...", "/public/..."),
            ("/public/%41", "/public/%41"),
            ("/public/%", "/public/%"),
            ("/", "/"),
        ] {
            assert_eq!(routing_path(path).as_deref(), Some(routed), "{path}");
        }
        for path in ["/..", "/../x", "/a/../../x", "/%2e%2e/x", "/a/..%2f..%2fx"] {
            assert_eq!(routing_path(path), None, "{path}");
        }
    }
}
