//! What the gateway checks of a request's target and host before it routes
//! the request: what `crate::framing` refuses in HTTP/1.1 heads, asked of
//! every request, since hyper lets it by in HTTP/2 and in absolute-form
//! targets; and dot segments, which no route may be matched on.

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
    if has_dot_segment(uri.path()) {
        return Err(GatewayError::BadRequest(
            "the path has a dot segment (\".\" or \"..\"); send it resolved",
        ));
    }
    Ok(())
}

/// Whether `path` has a dot segment (`.` or `..`, RFC 3986 §3.3), written
/// out or percent-encoded, between `/`s or what some servers take for one
/// (`\`, `%2F`, `%5C`).
///
/// Routes match the path as received; a backend that resolves dot segments
/// (RFC 3986 §5.2.4) would serve `/public/../admin` as `/admin`, outside the
/// route that matched it, with that route's `upstream_headers`. Such paths
/// are refused; clients resolve them before they send (browsers, curl).
pub fn has_dot_segment(path: &str) -> bool {
    let bytes = path.as_bytes();
    // Most paths have neither a dot nor an escape.
    if memchr::memchr2(b'.', b'%', bytes).is_none() {
        return false;
    }
    // Dots in the segment so far; `None` once it has anything else.
    let mut dots = Some(0u8);
    let mut at = 0;
    while at < bytes.len() {
        let (byte, len) = match bytes[at] {
            b'%' => match bytes.get(at + 1..at + 3) {
                Some([b'2', b'e' | b'E']) => (b'.', 3),
                Some([b'2', b'f' | b'F'] | [b'5', b'c' | b'C']) => (b'/', 3),
                _ => (b'%', 1),
            },
            b'\\' => (b'/', 1),
            byte => (byte, 1),
        };
        at += len;
        dots = match byte {
            b'/' if matches!(dots, Some(1 | 2)) => return true,
            b'/' => Some(0),
            b'.' => dots.map(|dots| dots + 1).filter(|&dots| dots <= 2),
            _ => None,
        };
    }
    matches!(dots, Some(1 | 2))
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
    fn dot_segments_are_found_however_written() {
        for path in [
            "/public/../admin",
            "/public/./admin",
            "/public/..",
            "/..",
            "/public/%2e%2e/admin",
            "/public/%2E./admin",
            "/public/..%2fadmin",
            "/public/..%5Cadmin",
            "/public/..\\admin",
            "/public/%2e",
        ] {
            assert!(has_dot_segment(path), "{path}");
        }
        for path in [
            "/v1/chat/completions",
            "/v1/models/gpt-4.1",
            "/public/a..b",
            "/public/.well-known/x",
            "/public/...",
            "/public/a%2fb",
            "/public/%41",
            "/public/%",
            "/public/%2",
        ] {
            assert!(!has_dot_segment(path), "{path}");
        }
    }
}
