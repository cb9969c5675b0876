//! The key's tests: which requests share a flight and which never do.

use super::*;
use crate::coalesce::canonical::canonical_json;
use http::HeaderValue;

/// A request with the default key headers and `user` as ignored JSON field.
struct Req {
    route: &'static str,
    method: Method,
    path: &'static str,
    headers: HeaderMap,
    /// The target's authority (HTTP/2's `:authority`).
    authority: Option<&'static str>,
    key_headers: Vec<HeaderName>,
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
        authority: None,
        key_headers: ["authorization", "x-api-key", "api-key", "cookie"]
            .map(HeaderName::from_static)
            .to_vec(),
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

    fn keyed_by(mut self, name: &'static str) -> Self {
        self.key_headers.push(HeaderName::from_static(name));
        self
    }

    fn authority(mut self, authority: &'static str) -> Self {
        self.authority = Some(authority);
        self
    }

    fn key(&self) -> Key {
        Key::compute(&KeyInput {
            route: self.route,
            method: &self.method,
            path_and_query: self.path,
            authority: self.authority,
            headers: &self.headers,
            key_headers: &self.key_headers,
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
fn host_matters_only_as_a_key_header_and_means_the_host_asked_for() {
    let host = |name| req("{}").header("host", name);
    assert_eq!(host("a.example").key(), host("b.example").key());
    let keyed = |name| host(name).keyed_by("host");
    assert_ne!(keyed("a.example").key(), keyed("b.example").key());
    // HTTP/2 sends no `Host`: its `:authority` stands for it.
    let h2 = |authority| req("{}").keyed_by("host").authority(authority);
    assert_eq!(h2("a.example").key(), keyed("a.example").key());
    assert_ne!(h2("b.example").key(), keyed("a.example").key());
    // An absolute-form target's authority wins over `Host`, as upstream.
    assert_eq!(
        keyed("b.example").authority("a.example").key(),
        h2("a.example").key()
    );
    // Host names are case-insensitive, in either form.
    assert_eq!(keyed("A.Example").key(), keyed("a.example").key());
    assert_eq!(h2("A.EXAMPLE").key(), keyed("a.example").key());
}

#[test]
fn other_headers_do_not_matter() {
    let a = req("{}").header("user-agent", "curl/8").key();
    let b = req("{}").header("user-agent", "python-httpx").key();
    assert_eq!(a, b);
    assert_eq!(a, req("{}").key());
}

#[test]
fn ranges_conditionals_last_event_id_origin_and_preflights_always_matter() {
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
        ("access-control-request-method", "PUT"),
        ("access-control-request-headers", "authorization, x-api-key"),
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
fn content_type_parameters_matter_for_a_body_compared_byte_for_byte() {
    let typed = |body: &str, content_type: &'static str| {
        req(body)
            .without(CONTENT_TYPE)
            .header("content-type", content_type)
            .key()
    };
    let text = "caf\u{e9}";
    assert_ne!(
        typed(text, "text/plain; charset=utf-8"),
        typed(text, "text/plain; charset=iso-8859-1")
    );
    assert_ne!(
        typed("--A--", "multipart/form-data; boundary=A"),
        typed("--A--", "multipart/form-data; boundary=B")
    );
    assert_eq!(
        typed(text, "text/plain; charset=utf-8"),
        typed(text, "TEXT/plain ; charset=utf-8")
    );
    // A JSON body is UTF-8 whatever its charset says.
    assert_eq!(
        typed("{}", "application/json; charset=utf-8"),
        typed("{}", "application/json; charset=iso-8859-1")
    );
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
fn lone_surrogate_falls_back_to_raw_bytes() {
    assert_eq!(canonical_json(br#"{"a":"\ud800"}"#, &[]), None);
    assert!(!same(r#"{"a":"\ud800"}"#, r#"{"a":"\ufffd"}"#));
}
