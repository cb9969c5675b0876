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

/// The path a request is routed by: `path` as a backend would read it, so
/// that `/public/../admin` is routed as `/admin` and not by the route of
/// `/public/` (with that route's `upstream_headers`). Its dot segments (`.`
/// and `..`, RFC 3986 §5.2.4) are resolved, percent-encoded unreserved
/// characters decoded (`%61` is `a`, `%2E` is `.`; RFC 3986 §6.2.2.2),
/// `%2F` taken for `/` and repeated slashes for one, as nginx takes them.
/// The request still goes on with its path as received.
///
/// Refused (the reason) where backends would read it too differently to
/// route it: `..` climbing above the root, which would leave the path of an
/// upstream URL (nginx answers 400 too); `..` in a path with an empty
/// segment (`/a//../b` is `/a/b` by RFC 3986 and `/b` to nginx); and a bare
/// `\`, which no URI has (RFC 3986) and which some servers take for `/` and
/// others, nginx among them, for a character of the name.
pub fn routing_path(path: &str) -> Result<Cow<'_, str>, &'static str> {
    let bytes = path.as_bytes();
    // Most paths have none of it: routed as they are.
    // (`memmem` would build a searcher for `//` on every call.)
    let repeated_slash =
        || memchr::memchr_iter(b'/', bytes).any(|at| bytes.get(at + 1) == Some(&b'/'));
    if memchr::memchr3(b'.', b'%', b'\\', bytes).is_none() && !repeated_slash() {
        return Ok(Cow::Borrowed(path));
    }
    let mut segments: Vec<Vec<u8>> = Vec::new();
    let mut segment = Vec::new();
    let (mut empty, mut climbs) = (false, false);
    // A path that ends in `/` or a dot segment ends in `/` (`/a/b/..` is `/a/`).
    let mut trailing_slash;
    // Past the leading `/` (an origin-form path always has one).
    let mut at = usize::from(bytes.first() == Some(&b'/'));
    loop {
        let byte = match bytes.get(at) {
            None => None,
            Some(b'%') => match bytes.get(at + 1..at + 3).and_then(decode_hex) {
                Some(b'/') => {
                    at += 2;
                    Some(b'/')
                }
                Some(decoded) if is_unreserved(decoded) => {
                    at += 2;
                    Some(decoded)
                }
                _ => Some(b'%'),
            },
            Some(b'\\') => return Err(BACKSLASH),
            Some(&byte) => Some(byte),
        };
        at += 1;
        let Some(byte) = byte.filter(|&byte| byte != b'/') else {
            let last = at > bytes.len();
            trailing_slash = matches!(segment.as_slice(), b"" | b"." | b"..");
            match segment.as_slice() {
                b"" if !last => empty = true,
                b"" | b"." => {}
                b".." => {
                    climbs = true;
                    segments.pop().ok_or(ABOVE_THE_ROOT)?;
                }
                _ => segments.push(std::mem::take(&mut segment)),
            }
            segment.clear();
            if last {
                break;
            }
            continue;
        };
        segment.push(byte);
    }
    if empty && climbs {
        return Err("the path has \"..\" and an empty segment, which servers read differently");
    }
    let mut resolved = Vec::with_capacity(path.len());
    for segment in &segments {
        resolved.push(b'/');
        resolved.extend_from_slice(segment);
    }
    if trailing_slash || resolved.is_empty() {
        resolved.push(b'/');
    }
    // Only ASCII was decoded or dropped, between whole characters.
    String::from_utf8(resolved)
        .map(Cow::Owned)
        .map_err(|_| "the path is not UTF-8")
}

const ABOVE_THE_ROOT: &str = "the path climbs above the root with \"..\"";
const BACKSLASH: &str = "the path has a backslash, which servers read differently";

/// The byte two hex digits stand for.
fn decode_hex(digits: &[u8]) -> Option<u8> {
    let text = std::str::from_utf8(digits).ok()?;
    u8::from_str_radix(text, 16).ok()
}

/// RFC 3986 §2.3: what percent-encoding never changes the meaning of.
fn is_unreserved(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~')
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
    fn paths_are_routed_as_a_backend_would_read_them() {
        for (path, routed) in [
            ("/v1/chat/completions", "/v1/chat/completions"),
            ("/v1/models/gpt-4.1", "/v1/models/gpt-4.1"),
            ("/public/../admin", "/admin"),
            ("/public/./admin", "/public/admin"),
            ("/public/..", "/"),
            ("/public/a/..", "/public/"),
            ("/public/%2e%2E/admin", "/admin"),
            ("/public/..%2fadmin", "/admin"),
            ("/public/..%5Cadmin", "/public/..%5Cadmin"),
            ("/a%2Fb/./c/../d", "/a/b/d"),
            ("/%61dmin/x", "/admin/x"),
            ("//admin/x", "/admin/x"),
            ("/admin//x/", "/admin/x/"),
            ("/public/a..b", "/public/a..b"),
            ("/public/.well-known/x", "/public/.well-known/x"),
            ("/public/...", "/public/..."),
            ("/public/%41%20", "/public/A%20"),
            ("/public/%", "/public/%"),
            ("/public/%zz", "/public/%zz"),
            ("/", "/"),
        ] {
            assert_eq!(routing_path(path).as_deref(), Ok(routed), "{path}");
        }
        for path in [
            "/..",
            "/../x",
            "/a/../../x",
            "/%2e%2e/x",
            "/a/..%2f..%2fx",
            "/x//../admin/x",
            "/admin//../x",
            "/public/..\\admin",
            "/admin\\x",
        ] {
            assert!(routing_path(path).is_err(), "{path}");
        }
    }
}
