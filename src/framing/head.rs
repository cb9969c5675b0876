//! Judging one whole request head: chorus's framing rules, and what hyper
//! would refuse by itself.

use super::reader::{Chunk, State};
use super::{H2_PREFACE, MAX_HEADERS, MAX_TARGET, NOT_HTTP1, Suspect};

/// What a complete head means for the connection.
pub(super) enum Judged {
    /// A good head: what follows it.
    Body(State),
    /// A head refused: hyper never sees it.
    Refused(Suspect),
    /// A good head asking to upgrade, without a body: what follows may not
    /// be HTTP.
    Upgrade,
    /// Not ours to judge: HTTP/2's preface.
    LeaveToHyper,
}

/// Judges a whole head (the empty line that ends it included).
pub(super) fn read_head(head: &[u8]) -> Judged {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    let http11 = match request.parse(head) {
        Ok(httparse::Status::Complete(_)) => request.version == Some(1),
        Err(httparse::Error::TooManyHeaders) => return Judged::Refused(Suspect::TooManyFields),
        _ if head.starts_with(&H2_PREFACE[..16]) => return Judged::LeaveToHyper,
        Ok(httparse::Status::Partial) | Err(_) => {
            return Judged::Refused(Suspect::Malformed(NOT_HTTP1));
        }
    };
    let target = request.path.unwrap_or_default();
    if target.len() > MAX_TARGET {
        return Judged::Refused(Suspect::TargetTooLong);
    }
    // hyper reads the target as an `http::Uri` (and a name as a `HeaderName`,
    // which is at most 64 KiB). Parsing one copies it: a plain path is
    // known good without.
    if !is_plain_path(target.as_bytes()) {
        // httparse takes UTF-8 in a target, and hyper would pass it on raw;
        // RFC 9112's request target is ASCII (as HTTP/2's is to chorus).
        if !target.bytes().all(|byte| byte.is_ascii_graphic()) {
            return Judged::Refused(Suspect::Malformed(
                "the request target has bytes other than visible ASCII",
            ));
        }
        if http::Uri::try_from(target).is_err() {
            return Judged::Refused(Suspect::Malformed("the request target is not a valid URI"));
        }
    }
    if memchr::memchr_iter(b'\n', head).any(|at| at == 0 || head[at - 1] != b'\r') {
        return Judged::Refused(Suspect::Malformed(
            "a line of the request head ends in a bare LF",
        ));
    }

    let headers: &[httparse::Header<'_>] = request.headers;
    if headers.iter().any(|header| header.name.len() > MAX_TARGET) {
        return Judged::Refused(Suspect::TooLarge);
    }
    let named = |name: &'static str| {
        headers
            .iter()
            .filter(move |header| header.name.eq_ignore_ascii_case(name))
    };
    let mut hosts = named("host");
    match (hosts.next(), hosts.next()) {
        (Some(host), None) if is_host(host.value) => {}
        (Some(_), None) => {
            return Judged::Refused(Suspect::Malformed(
                "the Host header is not a host and an optional port",
            ));
        }
        (None, None) if !http11 => {}
        _ => {
            return Judged::Refused(Suspect::Malformed(
                "a request needs exactly one Host header",
            ));
        }
    }
    let lengths: Vec<&[u8]> = named("content-length").map(|header| header.value).collect();
    let codings: Vec<&[u8]> = named("transfer-encoding")
        .map(|header| header.value)
        .collect();
    match (lengths.as_slice(), codings.as_slice()) {
        // An upgrade, by hyper's rule (an `Upgrade` header on HTTP/1.1).
        ([], []) if http11 && named("upgrade").next().is_some() => Judged::Upgrade,
        ([], []) => Judged::Body(State::Head),
        ([_, ..], [_, ..]) => Judged::Refused(Suspect::Malformed(
            "a request with both Content-Length and Transfer-Encoding",
        )),
        ([], [coding]) if http11 && coding.trim_ascii().eq_ignore_ascii_case(b"chunked") => {
            Judged::Body(State::Chunked(Chunk::Start))
        }
        // hyper refuses other codings itself, but not all of them.
        ([], _) => Judged::Refused(Suspect::Malformed(
            "Transfer-Encoding other than a single \"chunked\"",
        )),
        ([first, rest @ ..], []) => match digits(first) {
            Some(length) if rest.iter().all(|other| digits(other) == Some(length)) => {
                Judged::Body(if length == 0 {
                    State::Head
                } else {
                    State::Length(length)
                })
            }
            Some(_) | None => Judged::Refused(Suspect::Malformed(
                "Content-Length is not one decimal number",
            )),
        },
    }
}

/// The method and the path (without the query) of a head's request line,
/// each where it reads as one: all the access log shows of a refused head.
pub fn request_line(head: &[u8]) -> (Option<http::Method>, Option<Box<str>>) {
    let line = &head[..memchr::memchr(b'\n', head).unwrap_or(head.len())];
    let mut words = line.split(|&byte| byte == b' ');
    let method = words
        .next()
        .and_then(|word| http::Method::from_bytes(word).ok());
    let path = words.next().and_then(|target| {
        let path = match target.first() {
            Some(b'/') => &target[..memchr::memchr2(b'?', b'#', target).unwrap_or(target.len())],
            // An absolute-form target: its path, if it is a URI.
            _ => {
                return http::Uri::try_from(target)
                    .ok()
                    .filter(|uri| uri.scheme().is_some())
                    .map(|uri| uri.path().into());
            }
        };
        let visible = path.iter().all(|byte| (b'!'..=b'~').contains(byte));
        std::str::from_utf8(path)
            .ok()
            .filter(|_| visible && path.len() <= MAX_TARGET)
            .map(Box::from)
    });
    (method, path)
}

/// Whether a target is an origin-form path (and query) of bytes that
/// `http::Uri` always takes: letters, digits and RFC 3986's unreserved,
/// sub-delimiter and path characters, `%`, `/` and `?`.
fn is_plain_path(target: &[u8]) -> bool {
    const PLAIN: [bool; 256] = alphanumeric_and(b"-._~!$&'()*+,;=:@/?%");
    target.first() == Some(&b'/') && target.iter().all(|&byte| PLAIN[usize::from(byte)])
}

/// The set of ASCII letters, digits and `others`, as a table by byte.
const fn alphanumeric_and(others: &[u8]) -> [bool; 256] {
    let mut set = [false; 256];
    let mut byte = 0;
    while byte < 256 {
        set[byte] = (byte as u8).is_ascii_alphanumeric();
        byte += 1;
    }
    let mut at = 0;
    while at < others.len() {
        set[others[at] as usize] = true;
        at += 1;
    }
    set
}

/// Whether a `Host` value is RFC 9112 §3.2's `uri-host [ ":" port ]`, as far
/// as its bytes tell (RFC 3986's host characters, `:` and an IPv6 literal's
/// brackets): no spaces, no `/`, `@` or `?`, nothing a backend could read as
/// a path or as user information. Empty is allowed.
pub(crate) fn is_host(value: &[u8]) -> bool {
    const HOST: [bool; 256] = alphanumeric_and(b"-._~%!$&'()*+,;=:[]");
    value
        .trim_ascii()
        .iter()
        .all(|&byte| HOST[usize::from(byte)])
}

/// A Content-Length value: decimal digits only, as hyper reads it.
fn digits(value: &[u8]) -> Option<u64> {
    if value.is_empty() {
        return None;
    }
    value.iter().try_fold(0u64, |length, &byte| {
        let digit = byte.checked_sub(b'0').filter(|digit| *digit <= 9)?;
        length.checked_mul(10)?.checked_add(u64::from(digit))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_paths_are_the_uris_hyper_takes() {
        for plain in [
            "/",
            "/v1/chat/completions?stream=true&x=%20",
            "/a:b@c;d=e,f+g*h(i)!$'~",
        ] {
            assert!(is_plain_path(plain.as_bytes()), "{plain}");
            assert!(http::Uri::try_from(plain).is_ok(), "{plain}");
        }
        for other in [
            "",
            "*",
            "a/b",
            "http://a/",
            "/a b",
            "/a#b",
            "/a{b}",
            "/a`b",
            "/\u{e9}",
        ] {
            assert!(!is_plain_path(other.as_bytes()), "{other}");
        }
    }

    #[test]
    fn hosts_are_names_or_addresses_and_an_optional_port() {
        for host in [
            "",
            "api.example.com",
            "api.example.com:8080",
            "127.0.0.1:80",
            "[::1]:8080",
            "xn--bcher-kva.example",
        ] {
            assert!(is_host(host.as_bytes()), "{host}");
        }
        for other in [
            "x y",
            "x/evil",
            "user@x",
            "x?y",
            "x#y",
            "x\\y",
            "x\"y",
            "caf\u{e9}",
        ] {
            assert!(!is_host(other.as_bytes()), "{other}");
        }
    }

    #[test]
    fn a_request_line_gives_what_reads_as_a_method_and_a_path() {
        let line = |head: &[u8]| {
            let (method, path) = request_line(head);
            (
                method.map(|method| method.to_string()),
                path.as_deref().map(str::to_owned),
            )
        };
        let both = |method: &str, path: &str| (Some(method.to_owned()), Some(path.to_owned()));
        assert_eq!(
            line(b"POST /v1/chat?key=secret HTTP/1.1\r\nBad Header: x\r\n\r\n"),
            both("POST", "/v1/chat")
        );
        assert_eq!(line(b"GET /a#b HTTP/1.1\r\n"), both("GET", "/a"));
        assert_eq!(line(b"GET http://h/b?q=1 HTTP/1.1\r\n"), both("GET", "/b"));
        assert_eq!(line(b"BREW /pot"), both("BREW", "/pot"));
        assert_eq!(line(b"HELLO SOME WORLD"), (Some("HELLO".to_owned()), None));
        assert_eq!(
            line(b"GET /a\x7fb HTTP/1.1\r\n"),
            (Some("GET".to_owned()), None)
        );
        assert_eq!(
            line(b"GET /caf\xc3\xa9 HTTP/1.1\r\n"),
            (Some("GET".to_owned()), None)
        );
        assert_eq!(line(b"\x16\x03\x01\x02\x00\x01"), (None, None));
        assert_eq!(line(b""), (None, None));
    }

    #[test]
    fn content_lengths_are_decimal_digits() {
        assert_eq!(digits(b"123"), Some(123));
        assert_eq!(digits(b"+1"), None);
        assert_eq!(digits(b"99999999999999999999999"), None);
    }
}
