//! Nothing that does not belong: the gateway's logs, at trace level for
//! every target, and its metrics never carry request bodies, prompts,
//! queries, or the values of `authorization`, `x-api-key`, `api-key` or
//! `cookie`, whatever happens to the request (HTTP/2 heads that `h2`
//! refuses included); a flight's key is logged as a short hash prefix only;
//! a refused HTTP/1.1 head is logged as sent, not as the placeholder hyper
//! read; the admin listener defaults to loopback.

use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use serde_json::json;
use tokio::io::AsyncWriteExt;

use crate::attack::*;
use crate::h2_abuse;
use crate::support::*;

/// Markers that must never be logged or exported.
const AUTHORIZATION: &str = "Bearer sk-AUTH-4f1c9e";
const X_API_KEY: &str = "XAPIKEY-77b2d0";
const API_KEY: &str = "APIKEY-c3e8a1";
const COOKIE: &str = "session=COOKIE-9d04b7";
const PROMPT: &str = "PROMPT-e61f2a tell me a secret";
const QUERY: &str = "QUERY-0b5c93";
const MARKERS: [&str; 6] = [
    "sk-AUTH-4f1c9e",
    "XAPIKEY-77b2d0",
    "APIKEY-c3e8a1",
    "COOKIE-9d04b7",
    "PROMPT-e61f2a",
    "QUERY-0b5c93",
];

fn with_secrets(request: &mut Request<Full<Bytes>>) {
    let headers = request.headers_mut();
    headers.insert("authorization", AUTHORIZATION.parse().unwrap());
    headers.insert("x-api-key", X_API_KEY.parse().unwrap());
    headers.insert("api-key", API_KEY.parse().unwrap());
    headers.insert("cookie", COOKIE.parse().unwrap());
}

fn secret_request(gateway: &Gateway, path: &str, mock: serde_json::Value) -> Request<Full<Bytes>> {
    let url = gateway.url(&format!("{path}?key={QUERY}"));
    let mut request = post(&url, chat(PROMPT, mock));
    with_secrets(&mut request);
    request
}

/// Sends a request and reads its answer to the end, whatever it is.
async fn exercise(client: &HttpClient, request: Request<Full<Bytes>>) -> u16 {
    let response = send(client, request).await;
    let status = response.status().as_u16();
    let _ = body(response).await;
    status
}

#[tokio::test]
async fn logs_at_trace_level_and_metrics_carry_no_secrets() {
    // This test's thread only: the gateway's tasks run on it (a
    // current-thread runtime), other tests' do not. Everything at trace
    // level, but what the binary holds back too.
    let (captured, _guard) = Captured::this_thread();

    let upstream = Upstream::start().await;
    let dead = closed_port().await;
    let config = server_extra(
        &format!(
            "{}\n[[routes]]\nname = \"dead\"\npath_prefix = \"/dead\"\nupstream = \"http://{dead}\"\n",
            one_route(&upstream.url(), "first_byte_timeout = \"1s\"")
        ),
        "max_request_body_bytes = 8192",
    );
    let gateway = Gateway::start(&config).await;
    let path = "/v1/chat/completions";
    let (h1, h2) = (http1(), http2());
    let quick = json!({"tokens": 3, "interval_ms": 1});

    // A coalesced herd over both protocols, and the same request alone.
    let herd = futures::future::join_all((0..4).map(|index| {
        let client = if index % 2 == 0 {
            h1.clone()
        } else {
            h2.clone()
        };
        let request = secret_request(&gateway, path, json!({"tokens": 5, "interval_ms": 20}));
        async move { exercise(&client, request).await }
    }))
    .await;
    assert!(herd.iter().all(|status| *status == 200), "{herd:?}");
    let mut alone = secret_request(&gateway, path, quick.clone());
    alone
        .headers_mut()
        .insert("x-chorus-coalesce", "off".parse().unwrap());
    assert_eq!(exercise(&h1, alone).await, 200);

    // Failures of every kind, each carrying the secrets.
    let upstream_error = secret_request(&gateway, path, json!({"status": 500}));
    assert_eq!(exercise(&h1, upstream_error).await, 500);
    let broken = secret_request(&gateway, path, json!({"tokens": 9, "break_after": 2}));
    assert_eq!(exercise(&h2, broken).await, 200);
    let slow = secret_request(&gateway, path, json!({"first_byte_delay_ms": 5000}));
    assert_eq!(exercise(&h1, slow).await, 504);
    let unreachable = secret_request(&gateway, "/dead/v1/chat/completions", quick.clone());
    assert_eq!(exercise(&h2, unreachable).await, 502);
    let mut too_large = secret_request(&gateway, path, quick.clone());
    *too_large.body_mut() = Full::new(Bytes::from(PROMPT.repeat(1000)));
    assert_eq!(exercise(&h1, too_large).await, 413);
    let mut headers_too_large = secret_request(&gateway, path, quick.clone());
    headers_too_large.headers_mut().insert(
        "cookie",
        format!("{COOKIE}; pad={}", "p".repeat(100_000))
            .parse()
            .unwrap(),
    );
    assert_eq!(exercise(&h1, headers_too_large).await, 431);
    let mut not_json = secret_request(&gateway, path, quick.clone());
    *not_json.body_mut() = Full::new(Bytes::from(format!("{{\"broken\": \"{PROMPT}")));
    assert!(exercise(&h2, not_json).await < 600);

    // Raw HTTP/1.1: ambiguous framing, a malformed head, a client that
    // leaves mid-body.
    let smuggled = format!(
        "POST {path}?key={QUERY} HTTP/1.1\r\nHost: a\r\nAuthorization: {AUTHORIZATION}\r\n\
         Cookie: {COOKIE}\r\nContent-Length: 40\r\nTransfer-Encoding: chunked\r\n\r\n\
         0\r\n\r\n{PROMPT}"
    );
    let answer = exchange(gateway.addr, smuggled.as_bytes(), PATIENCE).await;
    assert_eq!(answer.status(), Some(400));
    let malformed = format!(
        "POST {path} HTTP/1.1\r\nHost: a\r\nX-Api-Key: {X_API_KEY}\r\nBad Header: {PROMPT}\r\n\r\n"
    );
    exchange(gateway.addr, malformed.as_bytes(), PATIENCE).await;
    // HTTP/2 heads refused before the gateway sees them, by `h2`, whose
    // own lines would print a path's query and an authority's user
    // information; then one it answers, which comes after both.
    let mut raw = h2_abuse::raw_h2(&gateway).await;
    let mut wire = Vec::new();
    let bad_path = format!("{path}?key={QUERY}\x7f");
    let bad_authority = format!("{X_API_KEY}@a\x7f");
    for (stream, block) in [
        (1, h2_abuse::request_block(bad_path.as_bytes(), b"a")),
        (3, h2_abuse::request_block(b"/", bad_authority.as_bytes())),
        (5, h2_abuse::request_block(b"/", b"a")),
    ] {
        let flags = h2_abuse::END_HEADERS | h2_abuse::END_STREAM;
        wire.extend(h2_abuse::frame(h2_abuse::HEADERS, flags, stream, &block));
    }
    raw.write_all(&wire).await.unwrap();
    let answered = h2_abuse::read_frames_until(&mut raw, PATIENCE, |received| {
        received.frames.contains(&(h2_abuse::HEADERS, 5))
    })
    .await;
    assert!(
        answered.frames.contains(&(h2_abuse::RST_STREAM, 1))
            && answered.frames.contains(&(h2_abuse::RST_STREAM, 3))
            && answered.frames.contains(&(h2_abuse::HEADERS, 5)),
        "{answered:?}"
    );
    drop(raw);
    let leaving = secret_request(&gateway, path, json!({"tokens": 50, "interval_ms": 50}));
    let response = send(&h1, leaving).await;
    drop(response);

    gateway.assert_idle().await;
    let metrics = gateway.metrics().await;
    // Let the last access log lines be written.
    tokio::time::sleep(Duration::from_millis(200)).await;
    drop(gateway);

    let logs = captured.text();
    assert!(
        logs.lines().filter(|line| line.contains("request")).count() >= 10,
        "the capture saw too little:\n{logs}"
    );
    // A refused head is logged with its own method and path (hyper read a
    // placeholder in its place), its query left out as always.
    let refused = format!("route=\"\" method=POST path=\"{path}\" status=400");
    assert_eq!(
        logs.lines().filter(|line| line.contains(&refused)).count(),
        2,
        "the two refused heads, as sent:\n{logs}"
    );
    for marker in MARKERS {
        let leaked: Vec<&str> = logs.lines().filter(|line| line.contains(marker)).collect();
        assert!(leaked.is_empty(), "{marker} logged:\n{}", leaked.join("\n"));
        assert!(!metrics.contains(marker), "{marker} in /metrics");
    }
    // A flight's key appears as eight hex digits and nothing more.
    let keys: Vec<&str> = logs
        .split(" key=")
        .skip(1)
        .filter_map(|rest| rest.split_whitespace().next())
        .collect();
    assert!(!keys.is_empty(), "no flight key logged");
    for key in keys {
        assert!(
            key.len() == 8 && key.bytes().all(|byte| byte.is_ascii_hexdigit()),
            "key logged as {key}"
        );
    }
}

#[test]
fn the_admin_listener_defaults_to_loopback() {
    let config = chorus::config::Config::parse(
        "[server]\nlisten = \"0.0.0.0:8080\"\n[admin]\n[[routes]]\nname = \"a\"\nupstream = \"http://127.0.0.1:9\"\n",
        "test.toml",
        |_| None,
    )
    .unwrap();
    let admin = config
        .admin
        .expect("an [admin] table gives an admin listener");
    assert!(admin.listen.ip().is_loopback(), "{}", admin.listen);
    assert_eq!(admin.listen.port(), 9090);
    // No [admin] table: no admin listener at all.
    let config = chorus::config::Config::parse(
        "[server]\nlisten = \"0.0.0.0:8080\"\n[[routes]]\nname = \"a\"\nupstream = \"http://127.0.0.1:9\"\n",
        "test.toml",
        |_| None,
    )
    .unwrap();
    assert!(config.admin.is_none());
}
