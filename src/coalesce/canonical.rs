//! The canonical form of a JSON request body: the part of the key that lets
//! clients which serialise the same request differently (key order, white
//! space, escapes) share a flight. Numbers stay exactly as written, because
//! `1` and `1.0` may mean different things upstream; a body with a duplicate
//! object key has no canonical form, because parsers disagree on which
//! duplicate wins ([`super::key`] then hashes it byte for byte).

/// Deepest nesting that is canonicalised. serde_json's validating scan has no
/// depth limit, so ours bounds both recursion and work; deeper bodies are
/// hashed byte for byte.
const MAX_DEPTH: usize = 128;

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
pub(super) fn canonicalize(
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
/// (invalid inside a JSON string) comes first. memchr finds the quote or
/// backslash many bytes at a time, and the look for control characters
/// before it has no early exit, so the compiler vectorises it too: message
/// contents are most of a chat-completion body.
fn find_special(bytes: &[u8]) -> Option<usize> {
    let at = memchr::memchr2(b'"', b'\\', bytes)?;
    let control = bytes[..at]
        .iter()
        .fold(false, |found, &b| found | (b < 0x20));
    (!control).then_some(at)
}

#[cfg(test)]
#[path = "canonical_tests.rs"]
mod tests;
