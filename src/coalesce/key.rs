//! The request fingerprint that decides which requests share a flight.
//!
//! Two requests are coalesced only when the upstream could not tell them apart,
//! so the key covers everything that can change the upstream's answer:
//!
//! - the route name, the method, and the path and query as received;
//! - the `Content-Type` media type (`type/subtype`, lowercased; parameters such
//!   as `charset` are dropped because they do not change a JSON document);
//! - every value, in order, of each configured key header. The defaults
//!   (`authorization`, `x-api-key`, `api-key`, `cookie`) keep tenants apart: two
//!   callers with different credentials never share a response, and a request
//!   without credentials never joins one that has them;
//! - every value, in order, of the headers that make an answer fit only its
//!   client ([`CLIENT_BOUND_HEADERS`]), whatever the config says: ranges,
//!   conditionals and SSE's `Last-Event-ID` ask for an answer relative to what
//!   the client already holds, so a plain request must never be answered with
//!   another's 206 or 304, nor an event stream resumed at an event its client
//!   has not seen; and a browser's `Origin`, because a CORS answer names the
//!   one origin it allows, and a page of another origin may not read it;
//! - the body. A JSON body (whatever its content type) is hashed in canonical
//!   form, so that clients which serialise the same request differently (key
//!   order, white space, escapes) still coalesce. Numbers stay exactly as
//!   written, because `1` and `1.0` may mean different things upstream. A body
//!   with a duplicate object key is hashed byte for byte: parsers disagree on
//!   which duplicate wins, so no canonical form is safe. Any other body is
//!   hashed byte for byte too.
//!
//! Every part is tagged and length-prefixed before it reaches blake3, so bytes
//! can never move from one part to another (path `/ab` with body `c` and path
//! `/a` with body `bc` have different keys).
//!
//! Keys are derived from credentials, so only [`Key::short`] may be logged.

use std::cell::RefCell;
use std::fmt;

use http::header::{
    CONTENT_TYPE, IF_MATCH, IF_MODIFIED_SINCE, IF_NONE_MATCH, IF_RANGE, IF_UNMODIFIED_SINCE,
    ORIGIN, RANGE,
};
use http::{HeaderMap, HeaderName, Method};

/// blake3 context string: keys from other uses of blake3 can never collide.
const KEY_CONTEXT: &str = "chorus request coalescing key v1";

/// Deepest nesting that is canonicalised. serde_json's validating scan has no
/// depth limit, so ours bounds both recursion and work; deeper bodies are
/// hashed byte for byte.
const MAX_DEPTH: usize = 128;

/// Request headers whose answer fits only the client that sent them (what it
/// already holds, or the origin its page is from): always part of the key,
/// beside the configured `key_headers`.
pub static CLIENT_BOUND_HEADERS: [HeaderName; 8] = [
    RANGE,
    IF_RANGE,
    IF_MATCH,
    IF_NONE_MATCH,
    IF_MODIFIED_SINCE,
    IF_UNMODIFIED_SINCE,
    HeaderName::from_static("last-event-id"),
    ORIGIN,
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
            e.key_headers(input.headers, input.key_headers);
            e.client_bound(input.headers);
            match canonicalize(input.body, input.json_ignore_fields, out, scratch) {
                Some(()) => e.field(Tag::JsonBody, out),
                None => e.field(Tag::RawBody, input.body),
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

    /// All values, so a repeated `Content-Type` cannot hide behind the first;
    /// absent (zero values) differs from an empty value.
    fn content_type(&mut self, headers: &HeaderMap) {
        let values = headers.get_all(CONTENT_TYPE);
        self.count(Tag::ContentTypeCount, values.iter().count());
        for value in values {
            let media = media_type(value.as_bytes());
            self.count(Tag::ContentType, media.len());
            self.0.extend(media.iter().map(u8::to_ascii_lowercase));
        }
    }

    /// Each configured header in config order, with all its values in the order
    /// received; the count tells absent from empty.
    fn key_headers(&mut self, headers: &HeaderMap, names: &[HeaderName]) {
        self.count(Tag::KeyHeaderCount, names.len());
        for name in names {
            self.field(Tag::KeyHeaderName, name.as_str().as_bytes());
            let values = headers.get_all(name);
            self.count(Tag::KeyHeaderValueCount, values.iter().count());
            for value in values {
                self.field(Tag::KeyHeaderValue, value.as_bytes());
            }
        }
    }

    /// The client-bound headers present, each by its place in
    /// [`CLIENT_BOUND_HEADERS`], with all its values; nothing for absent
    /// ones, so that the usual request hashes no more bytes for them.
    fn client_bound(&mut self, headers: &HeaderMap) {
        // One pass over the names the request has: eight lookups, each
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

/// Canonical form of a JSON document, or None when the body is not JSON or has duplicate keys
/// (then the key uses the raw bytes). Public for the benchmarks and the fuzz target.
///
/// Object keys are sorted by their unescaped bytes at every depth, insignificant
/// white space is removed, strings are re-escaped the way serde_json writes them,
/// numbers and literals are copied as written, and `ignore_top_level` fields are
/// removed from the top-level object only (their keys still count when looking
/// for duplicates). Documents nested deeper than 128 levels, and strings with
/// unpaired surrogate escapes, also give None.
pub fn canonical_json(body: &[u8], ignore_top_level: &[String]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    canonicalize(body, ignore_top_level, &mut out, &mut Vec::new())?;
    Some(out)
}

/// Writes the canonical form of `body` to `out`; None as for
/// [`canonical_json`]. The walk validates as it goes: anything that is not
/// JSON by RFC 8259's grammar gives None.
fn canonicalize(
    body: &[u8],
    ignore_top_level: &[String],
    out: &mut Vec<u8>,
    scratch: &mut Vec<u8>,
) -> Option<()> {
    let text = std::str::from_utf8(body).ok()?;
    out.clear();
    out.reserve(text.len());
    let mut walk = Canonicalizer {
        text,
        pos: 0,
        ignore: ignore_top_level,
        out,
        scratch,
        members: Vec::new(),
    };
    walk.value(0)?;
    walk.skip_whitespace();
    (walk.pos == text.len()).then_some(())
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

/// A string token of the input.
enum JsonStr<'a> {
    /// The token had no escape, so its text is the string. It has no quote and
    /// (being valid JSON) no control character either: nothing serde_json would
    /// escape, so the token is also its own canonical form.
    Plain(&'a str),
    /// The token had escapes: the unescaped string.
    Decoded(String),
}

impl JsonStr<'_> {
    fn as_bytes(&self) -> &[u8] {
        match self {
            JsonStr::Plain(s) => s.as_bytes(),
            JsonStr::Decoded(s) => s.as_bytes(),
        }
    }
}

/// One object member already written to the output, awaiting its sorted place.
struct Member<'a> {
    key: JsonStr<'a>,
    /// Range of `"key":value` in the output.
    start: usize,
    end: usize,
    ignored: bool,
}

/// A single pass over validated JSON text that writes its canonical form.
///
/// Each input byte is parsed once: re-parsing every nested value (e.g. through
/// `RawValue` at each level) would cost size × depth.
struct Canonicalizer<'a, 'b> {
    text: &'a str,
    pos: usize,
    ignore: &'b [String],
    out: &'b mut Vec<u8>,
    scratch: &'b mut Vec<u8>,
    /// Members of every object still open, innermost last.
    members: Vec<Member<'a>>,
}

impl<'a> Canonicalizer<'a, '_> {
    fn peek(&self) -> Option<u8> {
        self.text.as_bytes().get(self.pos).copied()
    }

    fn skip_whitespace(&mut self) {
        let rest = self.text.as_bytes().get(self.pos..).unwrap_or_default();
        let n = rest
            .iter()
            .position(|b| !matches!(b, b' ' | b'\t' | b'\n' | b'\r'))
            .unwrap_or(rest.len());
        self.pos += n;
    }

    fn eat(&mut self, byte: u8) -> bool {
        let found = self.peek() == Some(byte);
        if found {
            self.pos += 1;
        }
        found
    }

    fn expect(&mut self, byte: u8) -> Option<()> {
        self.eat(byte).then_some(())
    }

    fn value(&mut self, depth: usize) -> Option<()> {
        self.skip_whitespace();
        match self.peek()? {
            b'{' => self.object(depth),
            b'[' => self.array(depth),
            b'"' => self.string_value(),
            _ => self.scalar(),
        }
    }

    fn array(&mut self, depth: usize) -> Option<()> {
        if depth >= MAX_DEPTH {
            return None;
        }
        self.expect(b'[')?;
        self.out.push(b'[');
        let mut first = true;
        loop {
            self.skip_whitespace();
            if self.eat(b']') {
                break;
            }
            if !first {
                self.expect(b',')?;
                self.out.push(b',');
            }
            first = false;
            self.value(depth + 1)?;
        }
        self.out.push(b']');
        Some(())
    }

    /// Writes the members in input order, then puts them in key order.
    fn object(&mut self, depth: usize) -> Option<()> {
        if depth >= MAX_DEPTH {
            return None;
        }
        self.expect(b'{')?;
        let start = self.out.len();
        self.out.push(b'{');
        let base = self.members.len();
        loop {
            self.skip_whitespace();
            if self.eat(b'}') {
                break;
            }
            if self.members.len() > base {
                self.expect(b',')?;
                self.out.push(b',');
                self.skip_whitespace();
            }
            self.member(depth)?;
        }
        self.out.push(b'}');
        self.sort_members(start, base)
    }

    fn member(&mut self, depth: usize) -> Option<()> {
        let start = self.out.len();
        let key = self.string()?;
        self.write_string(&key)?;
        self.skip_whitespace();
        self.expect(b':')?;
        self.out.push(b':');
        self.value(depth + 1)?;
        let ignored = depth == 0 && self.ignore.iter().any(|f| f.as_bytes() == key.as_bytes());
        self.members.push(Member {
            key,
            start,
            end: self.out.len(),
            ignored,
        });
        Some(())
    }

    /// Puts the object written at `out[start..]`, whose members are
    /// `members[base..]`, in key order; None on a duplicate key.
    fn sort_members(&mut self, start: usize, base: usize) -> Option<()> {
        let object = &mut self.members[base..];
        // Strictly ascending keys are also free of duplicates.
        let in_order = object.is_sorted_by(|a, b| a.key.as_bytes() < b.key.as_bytes());
        if !in_order || object.iter().any(|m| m.ignored) {
            object.sort_unstable_by(|a, b| a.key.as_bytes().cmp(b.key.as_bytes()));
            if object
                .windows(2)
                .any(|w| w[0].key.as_bytes() == w[1].key.as_bytes())
            {
                return None;
            }
            rewrite_object(self.out, self.scratch, start, object);
        }
        self.members.truncate(base);
        Some(())
    }

    /// Reads a string token and returns it unescaped; None for an unpaired
    /// surrogate escape, which has no unescaped form, or an invalid token.
    fn string(&mut self) -> Option<JsonStr<'a>> {
        let open = self.pos;
        self.expect(b'"')?;
        let mut escaped = false;
        loop {
            let rest = self.text.as_bytes().get(self.pos..)?;
            self.pos += find_special(rest)?;
            if self.eat(b'"') {
                break;
            }
            // A backslash: skip it and the byte it escapes.
            escaped = true;
            self.pos += 2;
        }
        if escaped {
            let token = self.text.get(open..self.pos)?;
            serde_json::from_str(token).ok().map(JsonStr::Decoded)
        } else {
            self.text.get(open + 1..self.pos - 1).map(JsonStr::Plain)
        }
    }

    /// Reads a string value and writes its canonical form straight to the
    /// output, escapes decoded and re-escaped as serde_json writes them (no
    /// unescaped copy is needed: unlike keys, values are never compared).
    fn string_value(&mut self) -> Option<()> {
        self.expect(b'"')?;
        self.out.push(b'"');
        loop {
            let rest = self.text.as_bytes().get(self.pos..)?;
            let plain = find_special(rest)?;
            self.out.extend_from_slice(&rest[..plain]);
            self.pos += plain;
            if self.eat(b'"') {
                self.out.push(b'"');
                return Some(());
            }
            self.pos += 1; // the backslash
            let escape = self.peek()?;
            self.pos += 1;
            match escape {
                b'"' => self.out.extend_from_slice(b"\\\""),
                b'\\' => self.out.extend_from_slice(b"\\\\"),
                b'/' => self.out.push(b'/'),
                b'b' => self.out.extend_from_slice(b"\\b"),
                b'f' => self.out.extend_from_slice(b"\\f"),
                b'n' => self.out.extend_from_slice(b"\\n"),
                b'r' => self.out.extend_from_slice(b"\\r"),
                b't' => self.out.extend_from_slice(b"\\t"),
                b'u' => {
                    let c = self.unicode_escape()?;
                    write_char(self.out, c);
                }
                _ => return None,
            }
        }
    }

    /// The character of a `\uXXXX` escape (the `\u` already read), joining a
    /// surrogate pair; None for an unpaired surrogate or bad hex.
    fn unicode_escape(&mut self) -> Option<char> {
        let high = self.hex4()?;
        match high {
            0xD800..=0xDBFF => {
                self.expect(b'\\')?;
                self.expect(b'u')?;
                let low = self.hex4()?;
                if !(0xDC00..=0xDFFF).contains(&low) {
                    return None;
                }
                char::from_u32(0x10000 + ((high - 0xD800) << 10) + (low - 0xDC00))
            }
            0xDC00..=0xDFFF => None,
            _ => char::from_u32(high),
        }
    }

    fn hex4(&mut self) -> Option<u32> {
        let digits = self.text.get(self.pos..self.pos + 4)?;
        if !digits.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        self.pos += 4;
        u32::from_str_radix(digits, 16).ok()
    }

    /// Escapes as serde_json does, so equal strings always get equal bytes.
    fn write_string(&mut self, s: &JsonStr<'_>) -> Option<()> {
        match s {
            JsonStr::Plain(raw) => {
                self.out.push(b'"');
                self.out.extend_from_slice(raw.as_bytes());
                self.out.push(b'"');
                Some(())
            }
            JsonStr::Decoded(s) => serde_json::to_writer(&mut *self.out, s).ok(),
        }
    }

    /// A number or `true`/`false`/`null`, checked against the grammar and
    /// copied exactly as written.
    fn scalar(&mut self) -> Option<()> {
        let rest = self.text.as_bytes().get(self.pos..)?;
        let n = rest
            .iter()
            .position(|b| matches!(b, b',' | b']' | b'}' | b' ' | b'\t' | b'\n' | b'\r'))
            .unwrap_or(rest.len());
        let token = &rest[..n];
        if !matches!(token, b"true" | b"false" | b"null") && !is_number(token) {
            return None;
        }
        self.out.extend_from_slice(token);
        self.pos += n;
        Some(())
    }
}

/// Whether `token` is a JSON number: `-? (0 | [1-9][0-9]*) (. [0-9]+)? ([eE] [+-]? [0-9]+)?`.
fn is_number(token: &[u8]) -> bool {
    fn digits(bytes: &[u8]) -> usize {
        bytes.iter().take_while(|b| b.is_ascii_digit()).count()
    }
    let mut rest = token.strip_prefix(b"-").unwrap_or(token);
    match rest.first() {
        Some(b'0') => rest = &rest[1..],
        Some(b'1'..=b'9') => rest = &rest[digits(rest)..],
        _ => return false,
    }
    if let Some(fraction) = rest.strip_prefix(b".") {
        let n = digits(fraction);
        if n == 0 {
            return false;
        }
        rest = &fraction[n..];
    }
    if let Some(exponent) = rest.strip_prefix(b"e").or_else(|| rest.strip_prefix(b"E")) {
        let exponent = exponent
            .strip_prefix(b"+")
            .or_else(|| exponent.strip_prefix(b"-"))
            .unwrap_or(exponent);
        let n = digits(exponent);
        if n == 0 {
            return false;
        }
        rest = &exponent[n..];
    }
    rest.is_empty()
}

/// Writes `c` inside a string the way serde_json does: the quote, the
/// backslash and control characters escaped (short forms where JSON has
/// them), everything else as UTF-8.
fn write_char(out: &mut Vec<u8>, c: char) {
    match c {
        '"' => out.extend_from_slice(b"\\\""),
        '\\' => out.extend_from_slice(b"\\\\"),
        '\u{8}' => out.extend_from_slice(b"\\b"),
        '\u{c}' => out.extend_from_slice(b"\\f"),
        '\n' => out.extend_from_slice(b"\\n"),
        '\r' => out.extend_from_slice(b"\\r"),
        '\t' => out.extend_from_slice(b"\\t"),
        '\u{0}'..='\u{1f}' => {
            const HEX: &[u8; 16] = b"0123456789abcdef";
            let byte = c as u8;
            out.extend_from_slice(b"\\u00");
            out.push(HEX[usize::from(byte >> 4)]);
            out.push(HEX[usize::from(byte & 0xf)]);
        }
        _ => {
            let mut utf8 = [0; 4];
            out.extend_from_slice(c.encode_utf8(&mut utf8).as_bytes());
        }
    }
}

/// Rewrites the object at `out[start..]` with `members` (whose ranges point
/// into it) in the given order, leaving out the ignored ones.
fn rewrite_object(out: &mut Vec<u8>, scratch: &mut Vec<u8>, start: usize, members: &[Member<'_>]) {
    scratch.clear();
    scratch.extend_from_slice(&out[start..]);
    out.truncate(start);
    out.push(b'{');
    let kept = members.iter().filter(|m| !m.ignored);
    for (i, m) in kept.enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(&scratch[m.start - start..m.end - start]);
    }
    out.push(b'}');
}

/// Index of the first `"` or `\\` in `bytes`; None if a control character
/// (invalid inside a JSON string) comes first. Whole 16-byte chunks are
/// tested without an early exit, and without `||` (whose branches keep the
/// compiler from vectorising), so that the scan of long strings runs 16
/// bytes at a time: message contents are most of a chat-completion body.
fn find_special(bytes: &[u8]) -> Option<usize> {
    let special = |b: u8| (b == b'"') | (b == b'\\') | (b < 0x20);
    let mut skipped = 0;
    for chunk in bytes.chunks_exact(16) {
        let hits = chunk
            .iter()
            .fold(0u8, |hits, &b| hits | u8::from(special(b)));
        if hits != 0 {
            break;
        }
        skipped += 16;
    }
    let rest = bytes.get(skipped..)?;
    let at = skipped + rest.iter().position(|&b| special(b))?;
    (bytes[at] >= 0x20).then_some(at)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    /// A request with the default key headers and `user` as ignored JSON field.
    struct Req {
        route: &'static str,
        method: Method,
        path: &'static str,
        headers: HeaderMap,
        body: Vec<u8>,
    }

    fn req(body: &str) -> Req {
        let mut headers = HeaderMap::new();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        Req {
            route: "llm",
            method: Method::POST,
            path: "/v1/chat/completions",
            headers,
            body: body.as_bytes().to_vec(),
        }
    }

    impl Req {
        fn header(mut self, name: &'static str, value: &'static str) -> Self {
            self.headers.append(name, HeaderValue::from_static(value));
            self
        }

        fn without(mut self, name: HeaderName) -> Self {
            self.headers.remove(name);
            self
        }

        fn key(&self) -> Key {
            let key_headers =
                ["authorization", "x-api-key", "api-key", "cookie"].map(HeaderName::from_static);
            Key::compute(&KeyInput {
                route: self.route,
                method: &self.method,
                path_and_query: self.path,
                headers: &self.headers,
                key_headers: &key_headers,
                json_ignore_fields: &["user".to_owned()],
                body: &self.body,
            })
        }
    }

    fn same(a: &str, b: &str) -> bool {
        req(a).key() == req(b).key()
    }

    #[test]
    fn reordered_keys_are_equal_also_nested() {
        assert!(same(r#"{"a":1,"b":2}"#, r#"{"b":2,"a":1}"#));
        assert!(same(
            r#"{"m":[{"role":"user","content":"hi"}],"x":{"q":1,"p":2}}"#,
            r#"{"x":{"p":2,"q":1},"m":[{"content":"hi","role":"user"}]}"#
        ));
    }

    #[test]
    fn array_order_matters() {
        assert!(!same("[1,2]", "[2,1]"));
    }

    #[test]
    fn whitespace_is_ignored() {
        assert!(same(
            r#"{"a":[1,2],"b":{"c":null}}"#,
            "\n{ \"a\" :\t[ 1 ,\r\n 2 ] ,\n  \"b\": { \"c\" : null } }\n"
        ));
    }

    #[test]
    fn whitespace_inside_strings_matters() {
        assert!(!same(r#"{"a":"x y"}"#, r#"{"a":"xy"}"#));
    }

    #[test]
    fn strings_compare_unescaped() {
        assert!(same(r#"{"a":"\u0041"}"#, r#"{"a":"A"}"#));
        assert!(same(r#"{"\u0061":"\/"}"#, r#"{"a":"/"}"#));
        assert!(same(r#"{"e":"\ud83d\ude00"}"#, r#"{"e":"😀"}"#));
        assert!(same(r#"{"n":"\n"}"#, r#"{"n":"\u000a"}"#));
        // Characters serde_json does not escape are written raw either way.
        assert!(same(
            r#"{"d":"\u007f\u2028"}"#,
            "{\"d\":\"\u{7f}\u{2028}\"}"
        ));
        assert!(!same(r#"{"q":"a\"b"}"#, r#"{"q":"a\\b"}"#));
    }

    #[test]
    fn numbers_stay_as_written() {
        assert!(!same(r#"{"t":1}"#, r#"{"t":1.0}"#));
        assert!(!same(r#"{"t":1}"#, r#"{"t":1e0}"#));
        assert!(!same(r#"{"t":1e2}"#, r#"{"t":100}"#));
        assert!(!same(r#"{"t":1e2}"#, r#"{"t":1E2}"#));
        assert!(same(r#"{"t": 1.50 }"#, r#"{"t":1.50}"#));
    }

    #[test]
    fn changed_value_differs() {
        assert!(!same(r#"{"a":"hi"}"#, r#"{"a":"ho"}"#));
        assert!(!same(r#"{"a":true}"#, r#"{"a":false}"#));
        assert!(!same(r#"{"a":null}"#, r#"{}"#));
        assert!(!same(r#"{"a":"1"}"#, r#"{"a":1}"#));
    }

    #[test]
    fn ignored_field_only_at_top_level() {
        assert!(same(r#"{"a":1,"user":"alice"}"#, r#"{"user":"bob","a":1}"#));
        assert!(same(r#"{"a":1,"user":"alice"}"#, r#"{"a":1}"#));
        assert!(!same(
            r#"{"o":{"user":"alice"}}"#,
            r#"{"o":{"user":"bob"}}"#
        ));
        assert!(!same(r#"[{"user":"alice"}]"#, r#"[{"user":"bob"}]"#));
    }

    #[test]
    fn duplicate_keys_compare_byte_for_byte() {
        assert!(!same(r#"{"a":1,"a":1}"#, r#"{"a":1}"#));
        assert!(!same(r#"{"a":1,"a":2}"#, r#"{"a":2}"#));
        assert!(same(r#"{"a":1,"a":1}"#, r#"{"a":1,"a":1}"#));
        assert!(!same(r#"{"a":1,"a":1}"#, r#"{"a":1, "a":1}"#));
        assert!(!same(r#"{"o":{"a":1,"\u0061":2}}"#, r#"{"o":{"a":2}}"#));
        assert_eq!(canonical_json(br#"{"o":[{"b":1,"b":1}]}"#, &[]), None);
    }

    #[test]
    fn non_json_bodies_compare_byte_for_byte() {
        assert!(same("hello", "hello"));
        assert!(!same("hello", "hello "));
        assert!(!same("", " "));
        assert!(!same(r#"{"a":1,}"#, r#"{"a":1}"#));
        let mut a = req("");
        a.body = vec![0xff, b'{', b'}'];
        let mut b = req("");
        b.body = vec![0xfe, b'{', b'}'];
        assert_ne!(a.key(), b.key());
        assert_eq!(canonical_json(&a.body, &[]), None);
    }

    #[test]
    fn canonical_text_is_its_own_canonical_form() {
        assert_eq!(
            canonical_json(br#"{"a":1}"#, &[]).as_deref(),
            Some(&br#"{"a":1}"#[..])
        );
    }

    #[test]
    fn route_method_path_and_query_matter() {
        let base = req("{}").key();
        let mut r = req("{}");
        r.route = "other";
        assert_ne!(base, r.key());
        let mut r = req("{}");
        r.method = Method::PUT;
        assert_ne!(base, r.key());
        let mut r = req("{}");
        r.path = "/v1/completions";
        assert_ne!(base, r.key());
        let mut r = req("{}");
        r.path = "/v1/chat/completions?x=1";
        assert_ne!(base, r.key());
        assert_eq!(base, req("{}").key());
    }

    #[test]
    fn key_header_values_matter() {
        let a = req("{}").header("authorization", "Bearer a").key();
        let b = req("{}").header("authorization", "Bearer b").key();
        assert_ne!(a, b);
        assert_eq!(a, req("{}").header("authorization", "Bearer a").key());
    }

    #[test]
    fn absent_key_header_differs_from_empty() {
        assert_ne!(req("{}").key(), req("{}").header("x-api-key", "").key());
    }

    #[test]
    fn key_header_names_are_case_insensitive() {
        let mut upper = req("{}");
        upper.headers.append(
            HeaderName::from_bytes(b"X-Api-Key").unwrap(),
            HeaderValue::from_static("k"),
        );
        assert_eq!(upper.key(), req("{}").header("x-api-key", "k").key());
    }

    #[test]
    fn repeated_key_header_values_count_in_order() {
        let ab = req("{}").header("cookie", "a").header("cookie", "b").key();
        let ba = req("{}").header("cookie", "b").header("cookie", "a").key();
        let a = req("{}").header("cookie", "a").key();
        assert_ne!(ab, ba);
        assert_ne!(ab, a);
        assert_eq!(
            ab,
            req("{}").header("cookie", "a").header("cookie", "b").key()
        );
    }

    #[test]
    fn key_header_values_do_not_move_between_headers() {
        let a = req("{}").header("x-api-key", "k").key();
        let b = req("{}").header("api-key", "k").key();
        assert_ne!(a, b);
    }

    #[test]
    fn other_headers_do_not_matter() {
        let a = req("{}").header("user-agent", "curl/8").key();
        let b = req("{}").header("user-agent", "python-httpx").key();
        assert_eq!(a, b);
        assert_eq!(a, req("{}").key());
    }

    #[test]
    fn ranges_conditionals_last_event_id_and_origin_always_matter() {
        let plain = req("{}").key();
        for (name, value) in [
            ("range", "bytes=0-99"),
            ("if-range", "\"v1\""),
            ("if-match", "\"v1\""),
            ("if-none-match", "\"v1\""),
            ("if-modified-since", "Tue, 24 Nov 2026 10:00:00 GMT"),
            ("if-unmodified-since", "Tue, 24 Nov 2026 10:00:00 GMT"),
            ("last-event-id", "42"),
            ("origin", "https://chat.example"),
        ] {
            let with = req("{}").header(name, value).key();
            assert_ne!(plain, with, "{name}");
            assert_eq!(with, req("{}").header(name, value).key(), "{name}");
            assert_ne!(with, req("{}").header(name, "other").key(), "{name}");
        }
    }

    #[test]
    fn content_type_media_type_matters() {
        let json = req("{}").key();
        let charset = req("{}")
            .without(CONTENT_TYPE)
            .header("content-type", "Application/JSON ; charset=utf-8")
            .key();
        let text = req("{}")
            .without(CONTENT_TYPE)
            .header("content-type", "text/plain")
            .key();
        let absent = req("{}").without(CONTENT_TYPE).key();
        let empty = req("{}")
            .without(CONTENT_TYPE)
            .header("content-type", "")
            .key();
        assert_eq!(json, charset);
        assert_ne!(json, text);
        assert_ne!(json, absent);
        assert_ne!(absent, empty);
    }

    #[test]
    fn json_is_canonical_whatever_the_content_type() {
        let a = req(r#"{"a":1,"b":2}"#)
            .without(CONTENT_TYPE)
            .header("content-type", "text/plain");
        let b = req(r#"{"b":2, "a":1}"#)
            .without(CONTENT_TYPE)
            .header("content-type", "text/plain");
        assert_eq!(a.key(), b.key());
    }

    #[test]
    fn no_bleeding_between_fields() {
        let mut a = req("c");
        a.path = "/ab";
        let mut b = req("bc");
        b.path = "/a";
        assert_ne!(a.key(), b.key());
        let mut a = req("x");
        a.route = "ab";
        a.path = "/c";
        let mut b = req("x");
        b.route = "a";
        b.path = "b/c";
        assert_ne!(a.key(), b.key());
    }

    #[test]
    fn short_and_debug_reveal_only_eight_hex_digits() {
        let key = req("{}").header("authorization", "Bearer secret").key();
        let short = key.short();
        assert_eq!(short.len(), 8);
        assert!(short.bytes().all(|b| b.is_ascii_hexdigit()));
        let debug = format!("{key:?}");
        assert_eq!(debug, format!("Key({short})"));
        assert_eq!(format!("{key:#?}"), debug);
    }

    #[test]
    fn too_deep_json_falls_back_to_raw_bytes() {
        let deep = format!("{}{}", "[".repeat(MAX_DEPTH + 1), "]".repeat(MAX_DEPTH + 1));
        assert_eq!(canonical_json(deep.as_bytes(), &[]), None);
        let ok = format!("{}{}", "[".repeat(MAX_DEPTH), "]".repeat(MAX_DEPTH));
        assert_eq!(
            canonical_json(ok.as_bytes(), &[]).as_deref(),
            Some(ok.as_bytes())
        );
        let huge = "[".repeat(1 << 20);
        assert_eq!(canonical_json(huge.as_bytes(), &[]), None);
    }

    #[test]
    fn lone_surrogate_falls_back_to_raw_bytes() {
        assert_eq!(canonical_json(br#"{"a":"\ud800"}"#, &[]), None);
        assert!(!same(r#"{"a":"\ud800"}"#, r#"{"a":"\ufffd"}"#));
    }

    #[test]
    fn canonical_form_is_idempotent_and_preserves_the_document() {
        let ignore = ["user".to_owned(), "metadata".to_owned()];
        let docs = [
            "{}",
            "[]",
            " 0 ",
            r#""\u00e9t\u00E9 \"quoted\" \\ \/ \b\f\n\r\t \u001f""#,
            "-12.5e-3",
            r#"{"user":"u","z":[1,{"b":2,"a":[true,false,null]}],"a":"x"}"#,
            r#"{"model":"gpt","messages":[{"role":"system","content":"Be brief.\n"},
               {"role":"user","content":"Caf\u00e9 😀 \ud83d\ude00"}],
               "stream":true,"temperature":0.70,"max_tokens":1e3,"metadata":{"user":1}}"#,
            r#"{"é":1,"e":2,"Z":3,"":4,"\u0000":5}"#,
            r#"[{"user":1},{"b":{},"a":[]}]"#,
        ];
        for doc in docs {
            let once = canonical_json(doc.as_bytes(), &ignore).expect("canonical");
            let twice = canonical_json(&once, &ignore).expect("canonical twice");
            assert_eq!(once, twice, "not idempotent: {doc}");

            let mut expected: serde_json::Value = serde_json::from_str(doc).expect("valid JSON");
            if let Some(object) = expected.as_object_mut() {
                for field in &ignore {
                    object.remove(field);
                }
            }
            let actual: serde_json::Value = serde_json::from_slice(&once).expect("canonical JSON");
            assert_eq!(actual, expected, "changed meaning: {doc}");
        }
    }

    #[test]
    fn canonical_form_sorts_by_unescaped_bytes() {
        let out = canonical_json(r#"{"é":1,"e":2,"Z":3,"\u0041":4}"#.as_bytes(), &[]);
        assert_eq!(
            out.as_deref(),
            Some(r#"{"A":4,"Z":3,"e":2,"é":1}"#.as_bytes())
        );
    }

    #[test]
    fn json_is_decided_by_the_grammar_as_serde_json_decides_it() {
        let inputs = [
            "0",
            "-0",
            "1.5",
            "1e5",
            "1E+5",
            "-1.25e-3",
            "01",
            "1.",
            ".5",
            "+1",
            "1e",
            "--1",
            "0x10",
            "true",
            "tru",
            "truee",
            "null",
            "nul",
            "false ",
            " [] ",
            "[1,]",
            "[,1]",
            "[1 2]",
            "{}",
            "{\"a\"}",
            "{\"a\":}",
            "{\"a\":1,}",
            "{a:1}",
            "{\"a\":1}x",
            "\"\\x\"",
            "\"\\u12\"",
            "\"\\u12G4\"",
            "\"tab\there\"",
            "\"\\ud83d\\ude00\"",
            "\"\\u00e9\\/\\b\\f\\n\\r\\t\"",
            "[1]]",
            "[[1]",
            "{\"a\":[1,{\"b\":null}]}",
            "\"\u{7f}\"",
            "\u{feff}{}",
            "",
        ];
        for input in inputs {
            let serde = serde_json::from_str::<serde::de::IgnoredAny>(input).is_ok();
            let ours = canonical_json(input.as_bytes(), &[]).is_some();
            assert_eq!(ours, serde, "{input:?}: serde_json says {serde}");
        }
    }

    #[test]
    fn escapes_are_rewritten_as_serde_json_writes_them() {
        let body = r#"{"s":"\u0041\/\u00e9\ud83d\ude00\u001f\u2028\"\\\n","t":["\t"]}"#;
        let value: serde_json::Value = serde_json::from_str(body).unwrap();
        let expected = serde_json::to_string(&value).unwrap();
        assert_eq!(
            canonical_json(body.as_bytes(), &[]).unwrap(),
            expected.as_bytes()
        );
    }
}
