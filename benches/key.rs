//! The coalescing key on chat-completion bodies of 1 KiB, 16 KiB and 256 KiB:
//! `canonical_json` alone, and `Key::compute` (canonical form plus blake3 over
//! route, method, path, key headers and body), as the gateway runs it per request.
//!
//! `cargo bench --bench key`

use std::hint::black_box;

use chorus::coalesce::canonical::canonical_json;
use chorus::coalesce::key::{Key, KeyInput};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use http::{HeaderMap, HeaderName, HeaderValue, Method};

/// Sizes of the request bodies measured.
const SIZES: [(usize, &str); 3] = [
    (1 << 10, "1KiB"),
    (16 << 10, "16KiB"),
    (256 << 10, "256KiB"),
];

/// A chat-completion request of about `size` bytes, written the way SDKs write
/// them (keys unsorted, some escapes and non-ASCII text in the messages).
fn chat_body(size: usize) -> Vec<u8> {
    let head = r#"{"model":"gpt-4o-mini","stream":true,"temperature":0.7,"top_p":1.0,"max_tokens":512,"stream_options":{"include_usage":true},"messages":["#;
    let mut body = String::from(head);
    let mut turn = 0usize;
    while body.len() + 200 < size {
        if turn > 0 {
            body.push(',');
        }
        let role = ["system", "user", "assistant"][turn % 3];
        body.push_str(r#"{"content":""#);
        let room = (size - body.len()).saturating_sub(100).min(2000);
        let mut text = String::new();
        let words = [
            "Explain",
            "the",
            "\\\"triple-click\\\"",
            "problem",
            "café",
            "naïve",
            "\\n",
            "tokens",
            "stream",
            "déjà",
            "vu",
        ];
        let mut word = turn;
        while text.len() < room {
            text.push_str(words[word % words.len()]);
            text.push(' ');
            word += 1;
        }
        body.push_str(&text);
        body.push_str(r#"","role":""#);
        body.push_str(role);
        body.push_str(r#""}"#);
        turn += 1;
    }
    body.push_str(r#"],"user":"bench-user-42"}"#);
    assert!(
        serde_json::from_str::<serde_json::Value>(&body).is_ok(),
        "the body is JSON"
    );
    body.into_bytes()
}

fn canonical(c: &mut Criterion) {
    let mut group = c.benchmark_group("canonical_json");
    for (size, name) in SIZES {
        let body = chat_body(size);
        assert!(canonical_json(&body, &[]).is_some(), "canonicalizes");
        group.throughput(Throughput::Bytes(body.len() as u64));
        group.bench_with_input(BenchmarkId::from_parameter(name), &body, |b, body| {
            b.iter(|| canonical_json(black_box(body), &[]));
        });
    }
    group.finish();
}

fn compute(c: &mut Criterion) {
    let mut headers = HeaderMap::new();
    headers.insert("content-type", HeaderValue::from_static("application/json"));
    headers.insert(
        "authorization",
        HeaderValue::from_static("Bearer sk-bench-0123456789abcdef0123456789abcdef"),
    );
    headers.insert(
        "user-agent",
        HeaderValue::from_static("OpenAI/Python 1.54.0"),
    );
    let key_headers: Vec<HeaderName> = ["authorization", "x-api-key", "api-key", "cookie"]
        .into_iter()
        .map(HeaderName::from_static)
        .collect();
    let ignore = vec!["user".to_owned()];
    let mut group = c.benchmark_group("key_compute");
    for (size, name) in SIZES {
        let body = chat_body(size);
        group.throughput(Throughput::Bytes(body.len() as u64));
        group.bench_with_input(BenchmarkId::from_parameter(name), &body, |b, body| {
            b.iter(|| {
                Key::compute(black_box(&KeyInput {
                    route: "llm",
                    method: &Method::POST,
                    path_and_query: "/v1/chat/completions",
                    authority: None,
                    headers: &headers,
                    key_headers: &key_headers,
                    json_ignore_fields: &ignore,
                    body,
                }))
            });
        });
    }
    group.finish();
}

criterion_group!(benches, canonical, compute);
criterion_main!(benches);
