//! Proxying: streaming without buffering, the SSE rewrite, roles, header
//! rewriting both ways, routing, and the admin endpoints.

use std::time::Duration;

use http::Request;
use http_body_util::{BodyExt, Full};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::*;

/// A streamed completion of 6 tokens, one event every 200 ms: 9 events
/// (role, 6 tokens, finish, `[DONE]`) over about 1.6 s.
const SLOW_EVENTS: usize = 9;

fn slow_stream() -> String {
    chat("one by one", json!({"tokens": 6, "interval_ms": 200}))
}

/// Reads a slow SSE stream and checks that its events arrive as the mock
/// sends them, not at the end: each event is read while the mock has sent at
/// most two more (the next is 200 ms away), in frames of their own.
async fn events_arrive_one_by_one(client: HttpClient, bypass: bool, role: &str) {
    let upstream = Upstream::start().await;
    let gateway = Gateway::start(&one_route(&upstream.url(), "")).await;
    let mut request = post(&gateway.url("/v1/chat/completions"), slow_stream());
    if bypass {
        request
            .headers_mut()
            .insert("x-chorus-coalesce", "off".parse().unwrap());
    }
    let response = send(&client, request).await;
    assert_eq!(response.status(), 200);
    assert_eq!(header(&response, "x-chorus-role"), role);
    let mut reader = EventReader::new(response);

    let mut sent_at_arrival = Vec::new();
    let mut arrivals = Vec::new();
    while let Some(event) = reader.next().await.unwrap() {
        sent_at_arrival.push(upstream.stats.events_sent());
        arrivals.push((tokio::time::Instant::now(), event));
    }
    assert_eq!(arrivals.len(), SLOW_EVENTS);
    assert_eq!(arrivals.last().unwrap().1, "[DONE]");
    for (index, sent) in sent_at_arrival.iter().enumerate() {
        assert!(
            *sent as usize <= index + 3,
            "event {index} arrived only after the mock sent {sent}: buffered ({sent_at_arrival:?})"
        );
    }
    assert!(
        reader.frames >= SLOW_EVENTS / 2,
        "{SLOW_EVENTS} events came in {} frames",
        reader.frames
    );
    // Nominally 1.6 s from the first event to the last; a buffering gateway
    // would deliver them all at once.
    let spread = arrivals.last().unwrap().0 - arrivals[0].0;
    assert!(
        spread.as_millis() >= 800,
        "events spread over {spread:?} only"
    );
    assert_eq!(upstream.stats.requests(), 1);
    gateway.assert_idle().await;
}

#[tokio::test]
async fn events_arrive_one_by_one_bypass_http1() {
    events_arrive_one_by_one(http1(), true, "bypass").await;
}

#[tokio::test]
async fn events_arrive_one_by_one_bypass_http2() {
    events_arrive_one_by_one(http2(), true, "bypass").await;
}

#[tokio::test]
async fn events_arrive_one_by_one_coalesced_http1() {
    events_arrive_one_by_one(http1(), false, "leader").await;
}

#[tokio::test]
async fn events_arrive_one_by_one_coalesced_http2() {
    events_arrive_one_by_one(http2(), false, "leader").await;
}

/// An event stream the upstream gave a length reaches every client without
/// it (rule 5), coalesced or bypassed, over HTTP/1.1 and HTTP/2: hyper's
/// upstream body knows the length too, and must not put it back.
#[tokio::test]
async fn an_event_streams_length_is_dropped_on_every_path() {
    const EVENTS: &[u8] = b"data: {\"a\":1}\n\ndata: [DONE]\n\n";
    let upstream = TestUpstream::start(|_| async {
        http::Response::builder()
            .header("content-type", "text/event-stream")
            .body(Full::new(bytes::Bytes::from_static(EVENTS)))
            .unwrap()
    })
    .await;
    let gateway = Gateway::start(&one_route(&upstream.url(), "")).await;
    for client in [http1(), http2()] {
        for (role, coalesce) in [("leader", "on"), ("bypass", "off")] {
            let mut request = post(&gateway.url("/v1/chat/completions"), "{}");
            request.headers_mut().insert(
                "x-chorus-coalesce",
                http::HeaderValue::from_static(coalesce),
            );
            let response = send(&client, request).await;
            assert_unbuffered_sse(&response, role);
            assert_eq!(body(response).await.unwrap(), EVENTS);
        }
    }
    assert_eq!(upstream.hits(), 4);
    gateway.assert_idle().await;
}

/// HTTP/1.0 has no chunks: a stream of no known length ends with the close,
/// so its head does not promise `keep-alive`, even to a client that asked
/// for it; an answer of known length, or with no body, keeps the
/// connection for the next.
#[tokio::test]
async fn an_http10_stream_is_not_answered_keep_alive() {
    let upstream = Upstream::start().await;
    let gateway = Gateway::start(&one_route(&upstream.url(), "")).await;
    let body = chat("HTTP/1.0", json!({"tokens": 3, "interval_ms": 0}));
    let stream = format!(
        "POST /v1/chat/completions HTTP/1.0\r\nHost: a\r\nConnection: keep-alive\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let answer = raw(gateway.addr, stream.as_bytes()).await;
    let (head, events) = answer.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.0 200"), "{head}");
    assert!(!head.contains("keep-alive"), "{head}");
    assert!(events.ends_with("data: [DONE]\n\n"), "{events}");

    let models = "GET /v1/models HTTP/1.0\r\nHost: a\r\nConnection: keep-alive\r\n\r\n\
                  GET /v1/models HTTP/1.0\r\nHost: a\r\n\r\n";
    let answers = raw(gateway.addr, models.as_bytes()).await;
    assert_eq!(answers.matches("HTTP/1.0 200").count(), 2, "{answers}");
    assert!(answers.contains("connection: keep-alive"), "{answers}");
    gateway.assert_idle().await;

    // A 204 has no body to end, whatever its length.
    let empty = TestUpstream::start(|_| async {
        http::Response::builder()
            .status(204)
            .body(Full::default())
            .unwrap()
    })
    .await;
    let gateway = Gateway::start(&one_route(&empty.url(), "")).await;
    let two = "GET /a HTTP/1.0\r\nHost: a\r\nConnection: keep-alive\r\n\r\n\
               GET /b HTTP/1.0\r\nHost: a\r\n\r\n";
    let answers = raw(gateway.addr, two.as_bytes()).await;
    assert_eq!(answers.matches("HTTP/1.0 204").count(), 2, "{answers}");
    gateway.assert_idle().await;
}

fn assert_unbuffered_sse(response: &http::Response<hyper::body::Incoming>, role: &str) {
    assert_eq!(response.status(), 200);
    assert_eq!(header(response, "content-type"), "text/event-stream");
    assert_eq!(header(response, "x-accel-buffering"), "no");
    assert_eq!(header(response, "cache-control"), "no-cache");
    assert!(response.headers().get("content-length").is_none());
    assert_eq!(header(response, "x-chorus-role"), role);
    assert_eq!(
        response.headers().get_all("x-chorus-role").iter().count(),
        1
    );
}

#[tokio::test]
async fn sse_responses_are_marked_unbuffered_and_carry_their_role() {
    let upstream = Upstream::start().await;
    let gateway = Gateway::start(&one_route(&upstream.url(), "")).await;
    let client = http1();
    let body = chat("roles", json!({"tokens": 5, "interval_ms": 50}));
    let url = gateway.url("/v1/chat/completions");

    let leader = send(&client, post(&url, body.clone())).await;
    assert_unbuffered_sse(&leader, "leader");
    let mut leader = EventReader::new(leader);
    leader.next().await.unwrap().expect("a first event");
    // The flight is open while its leader reads: an identical request joins it.
    let follower = send(&client, post(&url, body.clone())).await;
    assert_unbuffered_sse(&follower, "follower");

    let mut request = post(&url, body.clone());
    request
        .headers_mut()
        .insert("x-chorus-coalesce", "off".parse().unwrap());
    let bypass = send(&client, request).await;
    assert_unbuffered_sse(&bypass, "bypass");

    assert_eq!(leader.rest().await.unwrap().last().unwrap(), "[DONE]");
    assert_eq!(events(&body_of(follower).await).last().unwrap(), "[DONE]");
    assert_eq!(events(&body_of(bypass).await).last().unwrap(), "[DONE]");
    assert_eq!(upstream.stats.requests(), 2);
    gateway.assert_idle().await;
}

async fn body_of(response: http::Response<hyper::body::Incoming>) -> bytes::Bytes {
    body(response).await.unwrap()
}

/// An upstream 204 that names a length (RFC 9110 §8.6 forbids one) reaches
/// clients without it, coalesced or not: an HTTP/2 client takes it for a
/// protocol error.
#[tokio::test]
async fn a_204_with_a_length_reaches_every_client_without_it() {
    let upstream =
        FixedUpstream::start(b"HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\n").await;
    let gateway = Gateway::start(&one_route(&upstream.url(), "")).await;
    for (client, coalesce) in [(http1(), "on"), (http2(), "on"), (http2(), "off")] {
        let mut request = post(&gateway.url("/v1/chat/completions"), "{}");
        request
            .headers_mut()
            .insert("x-chorus-coalesce", coalesce.parse().unwrap());
        let response = send(&client, request).await;
        assert_eq!(response.status(), 204, "coalesce {coalesce}");
        assert!(response.headers().get("content-length").is_none());
        assert!(body_of(response).await.is_empty());
    }
    gateway.assert_idle().await;
}

/// The upstream's own reason phrase reaches HTTP/1.1 clients, coalesced or
/// not, as nginx passes it: not `<none>` after a status hyper has no phrase for.
#[tokio::test]
async fn an_upstream_reason_phrase_is_passed_on() {
    let upstream = FixedUpstream::start(
        b"HTTP/1.1 599 Model Overloaded\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}",
    )
    .await;
    let gateway = Gateway::start(&one_route(&upstream.url(), "")).await;
    for coalesce in ["on", "off"] {
        let request = format!(
            "POST /v1/chat/completions HTTP/1.1\r\nhost: a\r\ncontent-type: application/json\r\n\
             content-length: 2\r\nx-chorus-coalesce: {coalesce}\r\nconnection: close\r\n\r\n{{}}"
        );
        let answer = raw(gateway.addr, request.as_bytes()).await;
        assert!(
            answer.starts_with("HTTP/1.1 599 Model Overloaded\r\n"),
            "coalesce {coalesce}: {answer}"
        );
    }
    gateway.assert_idle().await;
}

#[tokio::test]
async fn other_responses_keep_their_length_and_are_not_marked() {
    let upstream = Upstream::start().await;
    let gateway = Gateway::start(&one_route(&upstream.url(), "")).await;
    let plain = serde_json::json!({"model": "mock", "messages": []}).to_string();
    let response = send(&http1(), post(&gateway.url("/v1/chat/completions"), plain)).await;
    assert_eq!(response.status(), 200);
    assert_eq!(header(&response, "x-chorus-role"), "leader");
    assert!(response.headers().get("x-accel-buffering").is_none());
    let length: usize = header(&response, "content-length").parse().unwrap();
    let completion = json(&body_of(response).await);
    assert_eq!(completion["object"], "chat.completion");
    assert!(length > 0);
    gateway.assert_idle().await;
}

/// A request written byte for byte, so that every hop-by-hop header really
/// is on the wire (HTTP client libraries drop or rewrite some of them).
/// `Connection` names `Host`, which still names the host asked for, and the
/// opt-out, which is still chorus's to act on.
fn request_with_hop_by_hop(path: &str, coalesce: &str, body: &str) -> Vec<u8> {
    format!(
        "POST {path} HTTP/1.1\r\n\
         Host: client.example:8443\r\n\
         Content-Type: application/json\r\n\
         Content-Length: {}\r\n\
         Connection: close, x-secret-hop, Keep-Alive, host, x-chorus-coalesce\r\n\
         X-Secret-Hop: do-not-forward\r\n\
         Keep-Alive: timeout=5\r\n\
         TE: trailers\r\n\
         Upgrade: websocket\r\n\
         Proxy-Connection: keep-alive\r\n\
         HTTP2-Settings: AAMAAABkAAQAAP__\r\n\
         X-Chorus-Coalesce: {coalesce}\r\n\
         X-Chorus-Debug: 1\r\n\
         X-Forwarded-For: 203.0.113.7, 198.51.100.2\r\n\
         X-Kept: yes\r\n\
         \r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// The upstream request as the mock's `/echo` saw it, through a route whose
/// upstream URL has a path of its own.
async fn forwarded(coalesce: &str) -> (serde_json::Value, String) {
    let upstream = Upstream::start().await;
    let route = r#"
[routes.upstream_headers]
authorization = "Bearer ${CHORUS_TEST_TOKEN}"
x-tenant = "tenant-7"
"#;
    let gateway = Gateway::start_with_env(
        &one_route(&format!("{}/echo/base", upstream.url()), route),
        &[("CHORUS_TEST_TOKEN", "sk-test-123")],
    )
    .await;
    let path = "/v1/a%2Fb/./c/../d?x=1&y=%20z&&q=a/b";
    let wire = request_with_hop_by_hop(path, coalesce, r#"{"hi":1}"#);
    let answer = raw(gateway.addr, &wire).await;
    let (head, body) = answer.split_once("\r\n\r\n").expect("a response");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let echo = json(body.as_bytes());
    assert_eq!(echo["body"], r#"{"hi":1}"#);
    gateway.assert_idle().await;
    (echo, head.to_ascii_lowercase())
}

fn assert_forwarded_headers(echo: &serde_json::Value, upstream_authority: &str) {
    assert_eq!(
        echo["path"],
        "/echo/base/v1/a%2Fb/./c/../d?x=1&y=%20z&&q=a/b"
    );
    for hop in [
        "connection",
        "x-secret-hop",
        "keep-alive",
        "te",
        "upgrade",
        "proxy-connection",
        "http2-settings",
        "x-chorus-coalesce",
        "x-chorus-debug",
        "transfer-encoding",
    ] {
        assert_eq!(
            echoed(echo, hop),
            Vec::<String>::new(),
            "{hop} was forwarded"
        );
    }
    assert_eq!(echoed(echo, "x-kept"), ["yes"]);
    assert_eq!(
        echoed(echo, "x-forwarded-for"),
        ["203.0.113.7, 198.51.100.2, 127.0.0.1"]
    );
    assert_eq!(echoed(echo, "x-forwarded-proto"), ["http"]);
    assert_eq!(echoed(echo, "x-forwarded-host"), ["client.example:8443"]);
    assert_eq!(echoed(echo, "host"), [upstream_authority]);
    assert_eq!(echoed(echo, "authorization"), ["Bearer sk-test-123"]);
    assert_eq!(echoed(echo, "x-tenant"), ["tenant-7"]);
    assert_eq!(echoed(echo, "content-length"), ["8"]);
}

#[tokio::test]
async fn upstream_requests_lose_hop_by_hop_headers_and_gain_forwarding_ones_bypass() {
    let (echo, head) = forwarded("off").await;
    let authority = echo["headers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|pair| pair[0] == "host")
        .map(|pair| pair[1].as_str().unwrap().to_owned())
        .unwrap();
    assert!(authority.starts_with("127.0.0.1:"));
    assert_forwarded_headers(&echo, &authority);
    assert!(head.contains("x-chorus-role: bypass"), "{head}");
}

#[tokio::test]
async fn upstream_requests_lose_hop_by_hop_headers_and_gain_forwarding_ones_coalesced() {
    let (echo, head) = forwarded("on").await;
    let authority = echoed(&echo, "host").remove(0);
    assert!(authority.starts_with("127.0.0.1:"));
    assert_forwarded_headers(&echo, &authority);
    // A coalesced request asks for identity, whatever the client accepts.
    assert_eq!(echoed(&echo, "accept-encoding"), ["identity"]);
    assert!(head.contains("x-chorus-role: leader"), "{head}");
}

#[tokio::test]
async fn upstream_connections_are_kept_alive_and_reused() {
    let upstream = Upstream::start().await;
    let gateway = Gateway::start(&one_route(&upstream.url(), "")).await;
    for (index, coalesce) in ["off", "on", "off", "on"].into_iter().enumerate() {
        let mut request = post(
            &gateway.url("/v1/chat/completions"),
            chat(
                &format!("reuse {index}"),
                json!({"tokens": 2, "interval_ms": 1}),
            ),
        );
        request
            .headers_mut()
            .insert("x-chorus-coalesce", coalesce.parse().unwrap());
        let events = events(&body_of(send(&http1(), request).await).await);
        assert_eq!(events.last().unwrap(), "[DONE]");
        // The connection goes back to the pool once its response has ended.
        assert!(upstream.wait_for(|s| s.completed() > index as u64).await);
    }
    assert_eq!(upstream.stats.requests(), 4);
    // One connection, unless a response's connection raced back to the pool
    // behind the next request (its return is asynchronous).
    assert!(
        upstream.stats.connections() <= 2,
        "{} connections for 4 sequential requests",
        upstream.stats.connections()
    );
    gateway.assert_idle().await;
}

#[tokio::test]
async fn http2_requests_forward_their_authority_as_forwarded_host() {
    let upstream = Upstream::start().await;
    let gateway = Gateway::start(&one_route(&upstream.url(), "")).await;
    let request = Request::get(gateway.url("/echo/h2?q=1"))
        .header("x-chorus-coalesce", "off")
        .body(Full::new(bytes::Bytes::new()))
        .unwrap();
    let response = send(&http2(), request).await;
    assert_eq!(response.status(), 200);
    assert_eq!(header(&response, "x-chorus-role"), "bypass");
    let echo = json(&body_of(response).await);
    assert_eq!(echo["path"], "/echo/h2?q=1");
    assert_eq!(echo["version"], "HTTP/1.1");
    assert_eq!(
        echoed(&echo, "x-forwarded-host"),
        [gateway.addr.to_string()]
    );
    assert_eq!(echoed(&echo, "host"), [upstream.addr.to_string()]);
    assert_eq!(echoed(&echo, "x-forwarded-for"), ["127.0.0.1"]);
    assert_eq!(echoed(&echo, "x-forwarded-proto"), ["http"]);
    assert!(echoed(&echo, "x-chorus-coalesce").is_empty());
    gateway.assert_idle().await;
}

/// RFC 9113 §8.2.3: cookie crumbs are joined before the request goes on
/// over HTTP/1.1, whose servers read one `Cookie` line.
#[tokio::test]
async fn http2_cookie_crumbs_reach_the_upstream_as_one_cookie() {
    let upstream = Upstream::start().await;
    let gateway = Gateway::start(&one_route(&upstream.url(), "")).await;
    for coalesce in ["on", "off"] {
        let request = Request::get(gateway.url("/echo/cookies"))
            .header("x-chorus-coalesce", coalesce)
            .header("cookie", "a=1")
            .header("cookie", "b=2")
            .header("cookie", "c=3")
            .body(Full::new(bytes::Bytes::new()))
            .unwrap();
        let response = send(&http2(), request).await;
        assert_eq!(response.status(), 200);
        let echo = json(&body_of(response).await);
        assert_eq!(echoed(&echo, "cookie"), ["a=1; b=2; c=3"], "{coalesce}");
    }
    gateway.assert_idle().await;
}

/// An upstream response full of hop-by-hop headers.
const HOP_BY_HOP_RESPONSE: &[u8] = b"HTTP/1.1 200 OK\r\n\
    Content-Type: text/plain\r\n\
    Content-Length: 2\r\n\
    Connection: keep-alive, x-hop-only\r\n\
    X-Hop-Only: secret\r\n\
    Keep-Alive: timeout=5, max=100\r\n\
    Proxy-Connection: keep-alive\r\n\
    Upgrade: h2c\r\n\
    X-Chorus-Role: leader\r\n\
    X-Kept: yes\r\n\
    \r\n\
    ok";

async fn response_hop_by_hop_stripped(extra: &str, role: &str) {
    let upstream = FixedUpstream::start(HOP_BY_HOP_RESPONSE).await;
    let gateway = Gateway::start(&one_route(&upstream.url(), "")).await;
    let request = Request::get(gateway.url("/anything"))
        .header("x-chorus-coalesce", extra)
        .body(Full::new(bytes::Bytes::new()))
        .unwrap();
    let response = send(&http1(), request).await;
    assert_eq!(response.status(), 200);
    for hop in ["x-hop-only", "keep-alive", "proxy-connection", "upgrade"] {
        assert!(response.headers().get(hop).is_none(), "{hop} came through");
    }
    // hyper's own `connection: keep-alive` would be fine; the upstream's list is not.
    for value in response.headers().get_all("connection") {
        assert!(!value.to_str().unwrap().contains("x-hop-only"));
    }
    assert_eq!(header(&response, "x-kept"), "yes");
    assert_eq!(header(&response, "x-chorus-role"), role);
    assert_eq!(
        response.headers().get_all("x-chorus-role").iter().count(),
        1
    );
    assert_eq!(body_of(response).await, "ok");
    assert_eq!(upstream.heads.lock().unwrap().len(), 1);
    gateway.assert_idle().await;
}

#[tokio::test]
async fn upstream_hop_by_hop_response_headers_are_stripped_bypass() {
    response_hop_by_hop_stripped("off", "bypass").await;
}

#[tokio::test]
async fn upstream_hop_by_hop_response_headers_are_stripped_coalesced() {
    response_hop_by_hop_stripped("on", "leader").await;
}

#[tokio::test]
async fn an_upstream_error_status_is_passed_on_with_its_body() {
    let upstream = Upstream::start().await;
    let gateway = Gateway::start(&one_route(&upstream.url(), "")).await;
    for (coalesce, role) in [("off", "bypass"), ("on", "leader")] {
        let mut request = post(
            &gateway.url("/v1/chat/completions"),
            chat("limited", json!({"status": 429})),
        );
        request
            .headers_mut()
            .insert("x-chorus-coalesce", coalesce.parse().unwrap());
        let response = send(&http1(), request).await;
        assert_eq!(response.status(), 429);
        assert_eq!(header(&response, "x-chorus-role"), role);
        let error = json(&body_of(response).await);
        assert!(error["error"]["message"].is_string(), "{error}");
    }
    assert_eq!(upstream.stats.requests(), 2);
    gateway.assert_idle().await;
}

#[tokio::test]
async fn the_longest_prefix_wins_across_routes_and_upstreams() {
    let root = Upstream::start().await;
    let v1 = Upstream::start().await;
    let chat = Upstream::start().await;
    let route = |name: &str, prefix: &str, upstream: &Upstream| {
        format!(
            "[[routes]]\nname = \"{name}\"\npath_prefix = \"{prefix}\"\nupstream = \"{}\"\n",
            upstream.url()
        )
    };
    // Listed shortest first, so file order cannot be what decides.
    let toml = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:0\"\n{}{}{}",
        route("root", "/", &root),
        route("v1", "/echo/v1", &v1),
        route("chat", "/echo/v1/chat", &chat),
    );
    let gateway = Gateway::start(&toml).await;
    let cases = [
        ("/echo/v1/chat/completions", &chat),
        ("/echo/v1/chat", &chat),
        ("/echo/v1/models", &v1),
        ("/echo/v1", &v1),
        ("/echo/v2", &root),
        ("/echo", &root),
    ];
    for (path, expected) in cases {
        let echo = json(&body_of(get(&gateway.url(path)).await).await);
        assert_eq!(echo["path"], path);
        assert_eq!(
            echoed(&echo, "host"),
            [expected.addr.to_string()],
            "{path} went to the wrong upstream"
        );
    }
    let metrics = gateway.metrics().await;
    assert_eq!(
        metric_value(
            &metrics,
            r#"chorus_requests_total{route="chat",role="leader"}"#
        ),
        2.0
    );
    assert_eq!(
        metric_value(
            &metrics,
            r#"chorus_requests_total{route="v1",role="leader"}"#
        ),
        2.0
    );
}

/// A backend that resolves dot segments would serve `/v1/../admin` as
/// `/admin`: requests are routed by their path as a backend reads it,
/// however its dots and slashes are written, and forwarded with the path
/// as received; one that climbs above the root, or mixes `..` with an
/// empty segment, is a 400.
#[tokio::test]
async fn paths_are_routed_as_a_backend_reads_them_and_sent_as_received() {
    let recorder = crate::attack::Recorder::start().await;
    let toml =
        one_route(&recorder.url(), "").replace("path_prefix = \"/\"", "path_prefix = \"/v1/\"");
    let gateway = Gateway::start(&toml).await;
    let refused = [
        ("/v1/../admin", 404),
        ("/v1/%2e%2E/admin", 404),
        ("/v1/..%2fadmin", 404),
        ("/v1/../../v1/x", 400),
        ("/v1//../x", 400),
        ("/v1\\x", 400),
    ];
    for client in [http1(), http2()] {
        for (path, status) in refused {
            let request = Request::get(gateway.url(path))
                .body(Full::new(bytes::Bytes::new()))
                .unwrap();
            let response = send(&client, request).await;
            assert_eq!(response.status(), status, "{path}");
            assert_eq!(header(&response, "x-chorus-role"), "bypass");
            text(response).await;
        }
    }
    assert!(recorder.seen().is_empty(), "{:?}", recorder.seen());
    let routed = [
        "/v1/./x",
        "/v1/x/../y",
        "/v1/a..b",
        "/v1/.well-known/x",
        "/v1/a%2Fb",
        "/%76%31/x",
        "//v1/x",
        "/v1/..%5Cx",
    ];
    for path in routed {
        let response = get(&gateway.url(path)).await;
        assert_eq!(response.status(), 200, "{path}");
        text(response).await;
    }
    let seen: Vec<_> = recorder.seen().into_iter().map(|seen| seen.path).collect();
    assert_eq!(seen, routed);
    gateway.assert_idle().await;
}

/// What hyper's HTTP/2 server takes and chorus's HTTP/1.1 reading does not
/// is refused over HTTP/2 too: user information in `:authority` (it would
/// reach the upstream as `X-Forwarded-Host`), and raw bytes in `:path`.
#[tokio::test]
async fn http2_targets_are_held_to_the_rules_of_http1_heads() {
    let recorder = crate::attack::Recorder::start().await;
    let gateway = Gateway::start(&one_route(&recorder.url(), "")).await;
    let tcp = TcpStream::connect(gateway.addr).await.unwrap();
    let (client, connection) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(connection);
    let targets: [&[u8]; 3] = [
        b"http://user:pw@a.example/x",
        b"http://user@a.example/x",
        b"http://a.example/caf\xc3\xa9",
    ];
    for target in targets {
        let uri = http::Uri::from_maybe_shared(bytes::Bytes::from_static(target)).unwrap();
        let request = Request::get(uri).body(()).unwrap();
        let mut client = client.clone().ready().await.unwrap();
        let (response, _) = client.send_request(request, true).unwrap();
        let response = tokio::time::timeout(PATIENCE, response)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            response.status(),
            400,
            "{}",
            String::from_utf8_lossy(target)
        );
    }
    assert!(recorder.seen().is_empty(), "{:?}", recorder.seen());
    crate::attack::still_serves(&gateway).await;
}

#[tokio::test]
async fn a_path_no_route_matches_is_a_404_json() {
    let upstream = Upstream::start().await;
    let toml =
        one_route(&upstream.url(), "").replace("path_prefix = \"/\"", "path_prefix = \"/v1/\"");
    let gateway = Gateway::start(&toml).await;
    for client in [http1(), http2()] {
        let request = Request::get(gateway.url("/admin/secret"))
            .body(Full::new(bytes::Bytes::new()))
            .unwrap();
        let response = send(&client, request).await;
        assert_eq!(response.status(), 404);
        assert_eq!(header(&response, "x-chorus-role"), "bypass");
        assert_eq!(error_type(response).await, "no_route");
    }
    let response = send(
        &http1(),
        post(
            &gateway.url("/v1/chat/completions"),
            chat("x", json!({"tokens": 1})),
        ),
    )
    .await;
    assert_eq!(response.status(), 200);
    text(response).await;
    assert_eq!(upstream.stats.requests(), 1);
    gateway.assert_idle().await;
}

#[tokio::test]
async fn head_requests_get_heads_only_and_count_as_answered() {
    let upstream = Upstream::start().await;
    let toml =
        one_route(&upstream.url(), "").replace("path_prefix = \"/\"", "path_prefix = \"/echo\"");
    let gateway = Gateway::start(&toml).await;
    for client in [http1(), http2()] {
        for (path, status) in [("/nothing", 404), ("/echo", 200)] {
            let request = Request::head(gateway.url(path))
                .body(Full::new(bytes::Bytes::new()))
                .unwrap();
            let response = send(&client, request).await;
            assert_eq!(response.status(), status);
            assert_eq!(header(&response, "x-chorus-role"), "bypass");
            assert!(header(&response, "content-length").parse::<u64>().unwrap() > 0);
            assert_eq!(body_of(response).await, "");
        }
    }
    let answered = r#"chorus_responses_total{route="",status="404"}"#;
    assert_eq!(gateway.wait_metric(answered, |n| n >= 2.0).await, 2.0);
    let answered = r#"chorus_responses_total{route="llm",status="200"}"#;
    assert_eq!(gateway.wait_metric(answered, |n| n >= 2.0).await, 2.0);
    let metrics = gateway.metrics().await;
    assert!(!metrics.contains(r#"status="499""#), "{metrics}");
    gateway.assert_idle().await;
}

#[tokio::test]
async fn admin_serves_health_readiness_and_the_contract_metrics() {
    let upstream = Upstream::start().await;
    let gateway = Gateway::start(&one_route(&upstream.url(), "")).await;
    let response = send(
        &http1(),
        post(
            &gateway.url("/v1/chat/completions"),
            chat("m", json!({"tokens": 2})),
        ),
    )
    .await;
    text(response).await;

    let healthz = get(&format!("http://{}/healthz", gateway.admin)).await;
    assert_eq!(healthz.status(), 200);
    let readyz = get(&format!("http://{}/readyz", gateway.admin)).await;
    assert_eq!(readyz.status(), 200);
    // Another method is a 405 that says which are allowed; a path it does
    // not serve is a 404, whatever the method.
    let client = http1();
    let admin = |method: &str, path: &str| {
        let request = Request::builder()
            .method(method)
            .uri(format!("http://{}{path}", gateway.admin))
            .body(Full::new(bytes::Bytes::new()))
            .unwrap();
        send(&client, request)
    };
    let post_healthz = admin("POST", "/healthz").await;
    assert_eq!(post_healthz.status(), 405);
    assert_eq!(header(&post_healthz, "allow"), "GET, HEAD");
    assert_eq!(admin("DELETE", "/nothing").await.status(), 404);

    let metrics = gateway.metrics().await;
    for series in [
        r#"chorus_requests_total{route="llm",role="leader"} 1"#,
        r#"chorus_requests_total{route="llm",role="follower"} 0"#,
        r#"chorus_requests_total{route="llm",role="bypass"} 0"#,
        r#"chorus_upstream_requests_total{route="llm"} 1"#,
        r#"chorus_upstream_cancelled_total{route="llm"} 0"#,
        r#"chorus_flights_active{route="llm"} 0"#,
        r#"chorus_subscribers_active{route="llm"} 0"#,
        r#"chorus_responses_total{route="llm",status="200"} 1"#,
    ] {
        assert!(
            metrics.lines().any(|line| line == series),
            "no `{series}` in\n{metrics}"
        );
    }
    for name in [
        "chorus_upstream_first_byte_seconds",
        "chorus_connections_active",
    ] {
        assert!(metrics.contains(&format!("# TYPE {name} ")), "no {name}");
    }
    gateway.assert_idle().await;
}

/// Writes `first`, waits long enough for it to leave as a segment of its own,
/// then writes `rest`: the gateway peeks at a connection's first bytes to
/// tell HTTP/1.1 from HTTP/2, and must not guess from a fragment.
async fn split_first_write(addr: std::net::SocketAddr, first: &[u8], rest: &[u8]) -> TcpStream {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.set_nodelay(true).unwrap();
    stream.write_all(first).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    stream.write_all(rest).await.unwrap();
    stream
}

#[tokio::test]
async fn requests_are_served_when_their_first_bytes_arrive_alone() {
    let upstream = Upstream::start().await;
    let gateway = Gateway::start(&one_route(&upstream.url(), "")).await;

    // HTTP/1.1 whose first segment is one byte, which could begin the
    // HTTP/2 preface ("PRI") as well as "POST".
    let body = chat("split", json!({"tokens": 2}));
    let request = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n\
         content-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let mut stream = split_first_write(gateway.addr, b"P", &request.as_bytes()[1..]).await;
    let (closed, answer) = read_to_close(&mut stream, tokio::time::Instant::now() + PATIENCE).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(closed, "no end of the answer: {answer}");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("data: [DONE]"), "{answer}");

    // The HTTP/2 preface in two segments, then an empty SETTINGS frame: the
    // gateway answers with its own SETTINGS frame (type 4).
    let preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    let settings = [0u8, 0, 0, 4, 0, 0, 0, 0, 0];
    let rest = [&preface[10..], &settings[..]].concat();
    let mut stream = split_first_write(gateway.addr, &preface[..10], &rest).await;
    let mut frame_head = [0u8; 9];
    tokio::time::timeout(PATIENCE, stream.read_exact(&mut frame_head))
        .await
        .expect("no HTTP/2 answer")
        .unwrap();
    assert_eq!(frame_head[3], 4, "not a SETTINGS frame: {frame_head:?}");
    drop(stream);

    assert_eq!(upstream.stats.requests(), 1);
    gateway.assert_idle().await;
}

/// An empty request body goes on with `Content-Length: 0` where the client
/// framed one, or its method carries content, as nginx sends it: a backend
/// may refuse a POST without a length (411). A GET that framed none gets none.
#[tokio::test]
async fn an_empty_body_keeps_its_length_upstream() {
    let upstream = Upstream::start().await;
    let gateway = Gateway::start(&one_route(&upstream.url(), "")).await;
    for (head, length) in [
        ("POST /echo HTTP/1.1\r\ncontent-length: 0\r\n", &["0"][..]),
        ("POST /echo HTTP/1.1\r\n", &["0"][..]),
        ("PATCH /echo HTTP/1.1\r\n", &["0"][..]),
        ("DELETE /echo HTTP/1.1\r\ncontent-length: 0\r\n", &["0"][..]),
        ("GET /echo HTTP/1.1\r\n", &[][..]),
        ("POST /echo HTTP/1.1\r\ncontent-length: 2\r\n", &["2"][..]),
    ] {
        let body = if head.contains(": 2") { "{}" } else { "" };
        let request = format!("{head}host: a\r\nconnection: close\r\n\r\n{body}");
        let answer = raw(gateway.addr, request.as_bytes()).await;
        let echo = &answer[answer.find('{').unwrap()..=answer.rfind('}').unwrap()];
        let echo: serde_json::Value = serde_json::from_str(echo).unwrap();
        assert_eq!(echoed(&echo, "content-length"), length, "{head}");
    }
    // An empty chunked body, of a PUT and of a GET, coalesced or not.
    for (method, extra) in [
        ("PUT", ""),
        ("GET", ""),
        ("GET", "x-chorus-coalesce: off\r\n"),
    ] {
        let request = format!(
            "{method} /echo HTTP/1.1\r\nhost: a\r\ntransfer-encoding: chunked\r\n\
             {extra}connection: close\r\n\r\n0\r\n\r\n"
        );
        let answer = raw(gateway.addr, request.as_bytes()).await;
        let echo = &answer[answer.find('{').unwrap()..=answer.rfind('}').unwrap()];
        let echo: serde_json::Value = serde_json::from_str(echo).unwrap();
        assert_eq!(echoed(&echo, "content-length"), ["0"], "{method} {extra}");
        assert!(echoed(&echo, "transfer-encoding").is_empty());
    }
}

/// A GET of `path`, one to one when `bypass`.
fn get_request(gateway: &Gateway, path: &str, bypass: bool) -> Request<Full<bytes::Bytes>> {
    let mut request = Request::get(gateway.url(path))
        .body(Full::default())
        .unwrap();
    if bypass {
        request
            .headers_mut()
            .insert("x-chorus-coalesce", "off".parse().unwrap());
    }
    request
}

/// An upstream on a raw socket that answers every GET on a kept connection
/// with a chunked body and a trailer field; counts its connections.
async fn trailing_upstream() -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let connections = std::sync::Arc::new(AtomicUsize::new(0));
    let counted = std::sync::Arc::clone(&connections);
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            counted.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                loop {
                    match tcp.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                    while let Some(end) = head.windows(4).position(|w| w == b"\r\n\r\n") {
                        head.drain(..end + 4);
                        let answer = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n\
                            5\r\nhello\r\n0\r\nx-checksum: 1\r\n\r\n";
                        if tcp.write_all(answer).await.is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    (url, connections)
}

/// Trailer fields end an upstream body: they are relayed to no client, over
/// either version, coalesced or not; the response counts as complete (not
/// as a client that left, nor a cancelled upstream request), and its
/// upstream connection is kept for the next request.
#[tokio::test]
async fn an_upstream_body_with_trailers_ends_complete_and_keeps_its_connection() {
    let (url, connections) = trailing_upstream().await;
    let gateway = Gateway::start(&one_route(&url, "")).await;
    for (client, bypass) in [(http1(), true), (http2(), true), (http2(), false)] {
        let response = send(&client, get_request(&gateway, "/t", bypass)).await;
        assert_eq!(response.status(), 200);
        let collected = tokio::time::timeout(PATIENCE, response.into_body().collect())
            .await
            .expect("body did not end in time")
            .expect("body ended abnormally");
        assert_eq!(collected.trailers(), None, "trailers relayed");
        assert_eq!(collected.to_bytes(), "hello");
    }
    let left = gateway
        .metric(r#"chorus_responses_total{route="llm",status="499"}"#)
        .await;
    let cancelled = gateway
        .metric(r#"chorus_upstream_cancelled_total{route="llm"}"#)
        .await;
    assert_eq!((left, cancelled), (0.0, 0.0));
    assert_eq!(connections.load(std::sync::atomic::Ordering::SeqCst), 1);
}

/// An empty event stream reaches HTTP/1.1 clients chunked, with no
/// `Content-Length` (not even `0`), whether the upstream sent it chunked or
/// with a length, coalesced or not.
#[tokio::test]
async fn an_empty_event_stream_gets_no_content_length() {
    const CHUNKED: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n\
        transfer-encoding: chunked\r\n\r\n0\r\n\r\n";
    const SIZED: &[u8] =
        b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncontent-length: 0\r\n\r\n";
    for answer in [CHUNKED, SIZED] {
        let upstream = FixedUpstream::start(answer).await;
        let gateway = Gateway::start(&one_route(&upstream.url(), "")).await;
        for bypass in [false, true] {
            let response = send(&http1(), get_request(&gateway, "/events", bypass)).await;
            assert_eq!(response.status(), 200);
            let length = response.headers().get("content-length");
            assert_eq!(length, None, "bypass: {bypass}");
            assert_eq!(header(&response, "transfer-encoding"), "chunked");
            assert_eq!(text(response).await, "");
        }
    }
}
