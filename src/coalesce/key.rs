//! The request fingerprint that decides which requests share a flight.
//!
//! Two requests are coalesced only when the upstream could not tell them apart,
//! so the key covers everything that can change the upstream's answer:
//!
//! - the route name, the method, and the path and query as received;
//! - the `Content-Type` media type (`type/subtype`, lowercased); its
//!   parameters (`charset`, a multipart `boundary`) only for a body compared
//!   byte for byte, since they do not change a JSON document;
//! - every value, in order, of each configured key header. The defaults
//!   (`authorization`, `x-api-key`, `api-key`, `cookie`) keep tenants apart: two
//!   callers with different credentials never share a response, and a request
//!   without credentials never joins one that has them. `host` stands for the
//!   host the client asked for, in either HTTP version;
//! - every value, in order, of the headers that make an answer fit only its
//!   client ([`CLIENT_BOUND_HEADERS`]), whatever the config says: ranges,
//!   conditionals and SSE's `Last-Event-ID` ask for an answer relative to what
//!   the client already holds, so a plain request must never be answered with
//!   another's 206 or 304, nor an event stream resumed at an event its client
//!   has not seen; and a browser's `Origin`, because a CORS answer names the
//!   one origin it allows, and a page of another origin may not read it (and
//!   a preflight's `Access-Control-Request-Method` and `-Headers`, which its
//!   answer allows or not);
//! - the body. A JSON body (whatever its content type) is hashed in its
//!   canonical form ([`super::canonical`]), so that clients which serialise
//!   the same request differently still coalesce. A body with a duplicate
//!   object key, and any other body, is hashed byte for byte.
//!
//! Every part is tagged and length-prefixed before it reaches blake3, so bytes
//! can never move from one part to another (path `/ab` with body `c` and path
//! `/a` with body `bc` have different keys).
//!
//! Keys are derived from credentials, so only [`Key::short`] may be logged.

use std::cell::RefCell;
use std::fmt;

use http::header::{
    ACCESS_CONTROL_REQUEST_HEADERS, ACCESS_CONTROL_REQUEST_METHOD, CONTENT_TYPE, HOST, IF_MATCH,
    IF_MODIFIED_SINCE, IF_NONE_MATCH, IF_RANGE, IF_UNMODIFIED_SINCE, ORIGIN, RANGE,
};
use http::{HeaderMap, HeaderName, Method};

use super::canonical::canonicalize;

/// blake3 context string: keys from other uses of blake3 can never collide.
const KEY_CONTEXT: &str = "chorus request coalescing key v1";

/// Request headers whose answer fits only the client that sent them (what it
/// already holds, or the origin its page is from): always part of the key,
/// beside the configured `key_headers`.
pub static CLIENT_BOUND_HEADERS: [HeaderName; 10] = [
    RANGE,
    IF_RANGE,
    IF_MATCH,
    IF_NONE_MATCH,
    IF_MODIFIED_SINCE,
    IF_UNMODIFIED_SINCE,
    HeaderName::from_static("last-event-id"),
    ORIGIN,
    ACCESS_CONTROL_REQUEST_METHOD,
    ACCESS_CONTROL_REQUEST_HEADERS,
];

/// The fingerprint of a request: two requests share a flight only when their keys are equal.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Key([u8; 32]);

impl std::hash::Hash for Key {
    /// A key is already a uniform hash: eight of its bytes are a fine hash
    /// for a map, with no second hash function over all 32.
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        let [a, b, c, d, e, f, g, h, ..] = self.0;
        state.write_u64(u64::from_le_bytes([a, b, c, d, e, f, g, h]));
    }
}

/// The hasher key derived once from [`KEY_CONTEXT`], for blake3's keyed mode.
fn hasher_key() -> &'static [u8; 32] {
    static KEY: std::sync::OnceLock<[u8; 32]> = std::sync::OnceLock::new();
    KEY.get_or_init(|| blake3::derive_key(KEY_CONTEXT, b"request key"))
}

impl Key {
    /// The first 8 hex digits, the only form that may appear in logs.
    pub fn short(&self) -> String {
        let [a, b, c, d, ..] = self.0;
        format!("{:08x}", u32::from_be_bytes([a, b, c, d]))
    }

    /// Computes the key of one request.
    pub fn compute(input: &KeyInput<'_>) -> Key {
        BUFFERS.with_borrow_mut(|buffers| {
            let Buffers {
                encoding,
                out,
                scratch,
            } = buffers;
            // Everything is encoded into one buffer first: blake3 takes one
            // long input much faster than many small ones.
            encoding.clear();
            let mut e = Encoder(encoding);
            e.field(Tag::Route, input.route.as_bytes());
            e.field(Tag::Method, input.method.as_str().as_bytes());
            e.field(Tag::PathAndQuery, input.path_and_query.as_bytes());
            e.content_type(input.headers);
            e.key_headers(input.headers, input.key_headers, input.authority);
            e.client_bound(input.headers);
            match canonicalize(input.body, input.json_ignore_fields, out, scratch) {
                Some(()) => e.field(Tag::JsonBody, out),
                None => {
                    e.content_type_parameters(input.headers);
                    e.field(Tag::RawBody, input.body);
                }
            }
            let key = Key(*blake3::keyed_hash(hasher_key(), encoding).as_bytes());
            buffers.release_if_large();
            key
        })
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Key({})", self.short())
    }
}

/// What the key is computed from.
pub struct KeyInput<'a> {
    pub route: &'a str,
    pub method: &'a Method,
    /// As received, e.g. `/v1/chat/completions?x=1`.
    pub path_and_query: &'a str,
    /// The target's authority, where it has one (HTTP/2's `:authority`, an
    /// absolute-form target): what a `host` key header stands for.
    pub authority: Option<&'a str>,
    pub headers: &'a HeaderMap,
    /// The route's `coalesce.key_headers`, in config order.
    pub key_headers: &'a [HeaderName],
    /// The route's `coalesce.json_ignore_fields`.
    pub json_ignore_fields: &'a [String],
    pub body: &'a [u8],
}

/// Tags each part of the hashed encoding, so that parts are never confused.
#[derive(Clone, Copy)]
#[repr(u8)]
enum Tag {
    Route = 1,
    Method,
    PathAndQuery,
    ContentTypeCount,
    ContentType,
    KeyHeaderCount,
    KeyHeaderName,
    KeyHeaderValueCount,
    KeyHeaderValue,
    ClientBoundHeader,
    ClientBoundValueCount,
    ClientBoundValue,
    JsonBody,
    RawBody,
    ContentTypeParameters,
}

/// Writes the tagged, length-prefixed encoding of a request.
struct Encoder<'b>(&'b mut Vec<u8>);

impl Encoder<'_> {
    fn count(&mut self, tag: Tag, n: usize) {
        self.0.push(tag as u8);
        self.0.extend_from_slice(&(n as u64).to_le_bytes());
    }

    fn field(&mut self, tag: Tag, bytes: &[u8]) {
        self.count(tag, bytes.len());
        self.0.extend_from_slice(bytes);
    }

    fn field_lowercased(&mut self, tag: Tag, bytes: &[u8]) {
        self.count(tag, bytes.len());
        self.0.extend(bytes.iter().map(u8::to_ascii_lowercase));
    }

    /// All values, so a repeated `Content-Type` cannot hide behind the first;
    /// absent (zero values) differs from an empty value.
    fn content_type(&mut self, headers: &HeaderMap) {
        let values = headers.get_all(CONTENT_TYPE);
        self.count(Tag::ContentTypeCount, values.iter().count());
        for value in values {
            self.field_lowercased(Tag::ContentType, media_type(value.as_bytes()));
        }
    }

    /// The `Content-Type` parameters, for a body compared byte for byte:
    /// the same bytes in another `charset`, or cut by another multipart
    /// `boundary`, are another request. (A JSON body is UTF-8 whatever its
    /// `charset` says, and its canonical form is compared.)
    fn content_type_parameters(&mut self, headers: &HeaderMap) {
        for value in headers.get_all(CONTENT_TYPE) {
            let value = value.as_bytes();
            let semicolon = memchr::memchr(b';', value).unwrap_or(value.len());
            self.field(Tag::ContentTypeParameters, value[semicolon..].trim_ascii());
        }
    }

    /// Each configured header in config order, with all its values in the order
    /// received; the count tells absent from empty. `host` is the host the
    /// client asked for: the target's authority where it has one (HTTP/2
    /// sends no `Host`), else `Host`, so that both versions share.
    fn key_headers(&mut self, headers: &HeaderMap, names: &[HeaderName], authority: Option<&str>) {
        self.count(Tag::KeyHeaderCount, names.len());
        for name in names {
            self.field(Tag::KeyHeaderName, name.as_str().as_bytes());
            if *name == HOST {
                self.host(headers, authority);
                continue;
            }
            let values = headers.get_all(name);
            self.count(Tag::KeyHeaderValueCount, values.iter().count());
            for value in values {
                self.field(Tag::KeyHeaderValue, value.as_bytes());
            }
        }
    }

    /// `host` as a key header: the authority, else every `Host` value, each
    /// lowercased, since host names are case-insensitive (RFC 3986 §3.2.2)
    /// and `Example.com` asks for what `example.com` does.
    fn host(&mut self, headers: &HeaderMap, authority: Option<&str>) {
        if let Some(authority) = authority {
            self.count(Tag::KeyHeaderValueCount, 1);
            self.field_lowercased(Tag::KeyHeaderValue, authority.as_bytes());
            return;
        }
        let values = headers.get_all(HOST);
        self.count(Tag::KeyHeaderValueCount, values.iter().count());
        for value in values {
            self.field_lowercased(Tag::KeyHeaderValue, value.as_bytes());
        }
    }

    /// The client-bound headers present, each by its place in
    /// [`CLIENT_BOUND_HEADERS`], with all its values; nothing for absent
    /// ones, so that the usual request hashes no more bytes for them.
    fn client_bound(&mut self, headers: &HeaderMap) {
        // One pass over the names the request has: ten lookups, each
        // hashing a name, cost more, and most requests have none of them.
        if !headers
            .keys()
            .any(|name| CLIENT_BOUND_HEADERS.contains(name))
        {
            return;
        }
        for (index, name) in CLIENT_BOUND_HEADERS.iter().enumerate() {
            let values = headers.get_all(name);
            if values.iter().next().is_none() {
                continue;
            }
            self.count(Tag::ClientBoundHeader, index);
            self.count(Tag::ClientBoundValueCount, values.iter().count());
            for value in values {
                self.field(Tag::ClientBoundValue, value.as_bytes());
            }
        }
    }
}

/// The `type/subtype` of a `Content-Type` value, parameters dropped (the
/// caller lowercases it).
fn media_type(value: &[u8]) -> &[u8] {
    let end = value.iter().position(|&b| b == b';').unwrap_or(value.len());
    value[..end].trim_ascii()
}

/// The canonical form's buffers, kept from one request to the next on each
/// thread: a chat body is large, and fresh buffers would cost an allocation and
/// page faults on every request.
#[derive(Default)]
struct Buffers {
    /// The whole encoded request, as hashed.
    encoding: Vec<u8>,
    /// The body's canonical form.
    out: Vec<u8>,
    /// Holds an object's members while they are put in order.
    scratch: Vec<u8>,
}

impl Buffers {
    /// Buffers grown past this are freed rather than kept by the thread.
    const RETAINED_BYTES: usize = 4 << 20;

    fn release_if_large(&mut self) {
        let held = self.encoding.capacity() + self.out.capacity() + self.scratch.capacity();
        if held > Self::RETAINED_BYTES {
            *self = Buffers::default();
        }
    }
}

thread_local! {
    static BUFFERS: RefCell<Buffers> = RefCell::new(Buffers::default());
}

#[cfg(test)]
#[path = "key_tests.rs"]
mod tests;
