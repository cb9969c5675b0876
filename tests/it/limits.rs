//! Limits and errors: over-size bodies and heads, malformed HTTP, the
//! connection cap, slow clients, unreachable and failing upstreams, and
//! clients that leave early.

use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::support::*;

/// A status line, the head (lower-cased) and the body of a raw HTTP/1.1
/// answer with a Content-Length.
struct RawAnswer {
    status: u16,
    head: String,
    body: String,
}

fn parse_answer(answer: &str) -> RawAnswer {
    let (head, body) = answer
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no response head in {answer:?}"));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("no status in {head:?}"));
    RawAnswer {
        status,
        head: head.to_ascii_lowercase(),
        body: body.to_owned(),
    }
}

fn limited(upstream: &Upstream, server: &str) -> String {
    server_extra(&one_route(&upstream.url(), ""), server)
}

// ---------------------------------------------------------------------------
// Request bodies

#[tokio::test]
async fn a_body_over_the_limit_with_a_length_is_413_and_never_sent_upstream() {
    let upstream = Upstream::start().await;
    let gateway = Gateway::start(&limited(&upstream, "max_request_body_bytes = 1024")).await;
    for client in [http1(), http2()] {
        for bypass in [false, true] {
            let mut request = post(&gateway.url("/v1/chat/completions"), vec![b'x'; 64 * 1024]);
            if bypass {
                request
                    .headers_mut()
                    .insert("x-chorus-coalesce", "off".parse().unwrap());
            }
            let response = send(&client, request).await;
            assert_eq!(response.status(), 413);
            assert_eq!(header(&response, "x-chorus-role"), "bypass");
            assert_eq!(error_type(response).await, "body_too_large");
        }
    }
    assert_eq!(upstream.stats.requests(), 0);
    assert_eq!(upstream.stats.connections(), 0);
    gateway.assert_idle().await;
}

#[tokio::test]
async fn a_client_writing_a_large_body_reads_the_413_rather_than_a_reset() {
    let upstream = Upstream::start().await;
    let gateway = Gateway::start(&limited(&upstream, "max_request_body_bytes = 1024")).await;
    // Far more than socket buffers hold: the gateway must keep reading it.
    let size = 4 << 20;
    for connection in ["keep-alive", "close"] {
        let mut wire = format!(
            "POST /v1/chat/completions HTTP/1.1\r\nHost: a\r\nContent-Type: application/json\r\n\
             Content-Length: {size}\r\nConnection: {connection}\r\n\r\n"
        )
        .into_bytes();
        wire.resize(wire.len() + size, b' ');
        let mut stream = TcpStream::connect(gateway.addr).await.unwrap();
        tokio::time::timeout(PATIENCE, stream.write_all(&wire))
            .await
            .expect("the gateway stopped reading the body")
            .unwrap();
        let mut answer = vec![0; 4096];
        let read = tokio::time::timeout(PATIENCE, stream.read(&mut answer))
            .await
            .expect("no answer")
            .expect("the connection was reset instead of answered");
        let answer = parse_answer(&String::from_utf8_lossy(&answer[..read]));
        assert_eq!(answer.status, 413);
        assert!(
            answer.head.contains("x-chorus-role: bypass"),
            "{}",
            answer.head
        );
        assert_eq!(
            json(answer.body.as_bytes())["error"]["type"],
            "body_too_large"
        );
    }
    assert_eq!(upstream.stats.requests(), 0);
}

#[tokio::test]
async fn a_chunked_body_over_the_limit_is_413_and_never_sent_upstream() {
    let upstream = Upstream::start().await;
    let gateway = Gateway::start(&limited(&upstream, "max_request_body_bytes = 1024")).await;
    let mut wire = b"POST /v1/chat/completions HTTP/1.1\r\nHost: a\r\n\
        Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\
        Connection: close\r\n\r\n"
        .to_vec();
    for _ in 0..256 {
        wire.extend_from_slice(b"400\r\n");
        wire.extend_from_slice(&[b' '; 0x400]);
        wire.extend_from_slice(b"\r\n");
    }
    wire.extend_from_slice(b"0\r\n\r\n");
    let answer = parse_answer(&raw(gateway.addr, &wire).await);
    assert_eq!(answer.status, 413);
    assert!(
        answer.head.contains("x-chorus-role: bypass"),
        "{}",
        answer.head
    );
    assert!(
        !answer.head.contains("transfer-encoding"),
        "{}",
        answer.head
    );
    assert_eq!(
        json(answer.body.as_bytes())["error"]["type"],
        "body_too_large"
    );
    assert_eq!(upstream.stats.requests(), 0);
    gateway.assert_idle().await;
}

#[tokio::test]
async fn a_body_at_the_limit_is_forwarded_whole() {
    let upstream = Upstream::start().await;
    let gateway = Gateway::start(&limited(&upstream, "max_request_body_bytes = 1024")).await;
    let request = Request::post(gateway.url("/echo"))
        .header("x-chorus-coalesce", "off")
        .body(Full::new(Bytes::from(vec![b'y'; 1024])))
        .unwrap();
    let response = send(&http1(), request).await;
    assert_eq!(response.status(), 200);
    let echo = json(&body(response).await.unwrap());
    assert_eq!(echo["body"].as_str().unwrap().len(), 1024);
}

#[tokio::test]
async fn a_client_expecting_100_continue_gets_the_413_before_sending_its_body() {
    let upstream = Upstream::start().await;
    let gateway = Gateway::start(&limited(&upstream, "max_request_body_bytes = 1024")).await;
    let mut stream = TcpStream::connect(gateway.addr).await.unwrap();
    stream
        .write_all(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: a\r\nContent-Type: application/json\r\n\
              Content-Length: 1048576\r\nExpect: 100-continue\r\n\r\n",
        )
        .await
        .unwrap();
    let answer = read_until_closed(&mut stream, PATIENCE)
        .await
        .expect("the connection stayed open");
    // The close is said, not only done: a proxy in front (Apache's
    // `Proxy100Continue`) otherwise waits for a body that never comes.
    assert!(answer.contains("\r\nconnection: close\r\n"), "{answer}");
    let answer = parse_answer(&answer);
    assert_eq!(answer.status, 413);
    assert_eq!(
        json(answer.body.as_bytes())["error"]["type"],
        "body_too_large"
    );

    // Within the limit, the body is asked for and forwarded.
    let mut stream = TcpStream::connect(gateway.addr).await.unwrap();
    stream
        .write_all(
            b"POST /echo HTTP/1.1\r\nHost: a\r\nx-chorus-coalesce: off\r\n\
              Content-Length: 5\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n",
        )
        .await
        .unwrap();
    let mut interim = [0; 64];
    let read = tokio::time::timeout(PATIENCE, stream.read(&mut interim))
        .await
        .expect("no 100 Continue")
        .unwrap();
    assert!(
        interim[..read].starts_with(b"HTTP/1.1 100"),
        "{:?}",
        &interim[..read]
    );
    stream.write_all(b"hello").await.unwrap();
    let answer = read_until_closed(&mut stream, PATIENCE).await.unwrap();
    let echo = answer.split_once("\r\n\r\n").map(|(_, body)| body).unwrap();
    assert_eq!(json(echo.as_bytes())["body"], "hello");
    assert_eq!(upstream.stats.requests(), 0);
}

#[tokio::test]
async fn a_body_that_stops_arriving_is_a_408_and_never_sent_upstream() {
    let upstream = Upstream::start().await;
    let gateway = Gateway::start(&limited(&upstream, "request_body_timeout = \"500ms\"")).await;
    let mut stream = TcpStream::connect(gateway.addr).await.unwrap();
    stream
        .write_all(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: a\r\nContent-Type: application/json\r\n\
              Content-Length: 100\r\n\r\n{\"model\":",
        )
        .await
        .unwrap();
    let answer = read_until_closed(&mut stream, PATIENCE)
        .await
        .expect("the connection stayed open");
    let answer = parse_answer(&answer);
    assert_eq!(answer.status, 408);
    assert!(
        answer.head.contains("x-chorus-role: bypass"),
        "{}",
        answer.head
    );
    assert_eq!(
        json(answer.body.as_bytes())["error"]["type"],
        "request_timeout"
    );
    assert_eq!(upstream.stats.requests(), 0);
    gateway.assert_idle().await;
}

// ---------------------------------------------------------------------------
// Request heads and malformed HTTP

#[tokio::test]
async fn headers_over_the_limit_are_431_json() {
    let upstream = Upstream::start().await;
    let gateway = Gateway::start(&limited(&upstream, "max_header_bytes = 4096")).await;
    for client in [http1(), http2()] {
        let under = Request::get(gateway.url("/echo"))
            .header("x-big", "u".repeat(3000))
            .body(Full::new(Bytes::new()))
            .unwrap();
        let response = send(&client, under).await;
        assert_eq!(response.status(), 200);
        body(response).await.unwrap();

        let over = Request::get(gateway.url("/echo"))
            .header("x-big", "o".repeat(6000))
            .body(Full::new(Bytes::new()))
            .unwrap();
        let response = send(&client, over).await;
        assert_eq!(response.status(), 431);
        assert_eq!(header(&response, "x-chorus-role"), "bypass");
        assert_eq!(error_type(response).await, "headers_too_large");
    }
    gateway.assert_idle().await;
}

/// A request line alone over the limit is a 414, as nginx answers: over
/// HTTP/1.1 whether the head is just over the limit or far over; over
/// HTTP/2 while the header list is within what hyper decodes (past that,
/// hyper's HTTP/2 answers 431 itself).
#[tokio::test]
async fn a_request_target_over_the_header_limit_is_414_json() {
    let upstream = Upstream::start().await;
    let gateway = Gateway::start(&limited(&upstream, "max_header_bytes = 4096")).await;
    for (client, length) in [(http1(), 6_000), (http2(), 6_000), (http1(), 60_000)] {
        let target = format!("/echo?q={}", "t".repeat(length));
        let request = Request::get(gateway.url(&target))
            .body(Full::new(Bytes::new()))
            .unwrap();
        let response = send(&client, request).await;
        assert_eq!(response.status(), 414, "{length} {:?}", response.version());
        assert_eq!(header(&response, "x-chorus-role"), "bypass");
        assert_eq!(error_type(response).await, "uri_too_long");
    }
    gateway.assert_idle().await;
}

#[tokio::test]
async fn headers_well_over_the_default_limit_are_431_json() {
    let upstream = Upstream::start().await;
    let gateway = Gateway::start(&one_route(&upstream.url(), "")).await;
    // 200 KB against the default 65536.
    let request = Request::get(gateway.url("/echo"))
        .header("cookie", "c".repeat(200_000))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let response = send(&http1(), request).await;
    assert_eq!(response.status(), 431);
    assert_eq!(header(&response, "x-chorus-role"), "bypass");
    assert_eq!(error_type(response).await, "headers_too_large");
}

#[tokio::test]
async fn a_flood_of_header_bytes_is_refused_and_the_gateway_serves_on() {
    let upstream = Upstream::start().await;
    let gateway = Gateway::start(&one_route(&upstream.url(), "")).await;
    let mut wire = b"GET /echo HTTP/1.1\r\nHost: a\r\n".to_vec();
    for index in 0..16 * 1024 {
        wire.extend_from_slice(format!("x-flood-{index}: {}\r\n", "f".repeat(48)).as_bytes());
    }
    wire.extend_from_slice(b"\r\n");
    let mut stream = TcpStream::connect(gateway.addr).await.unwrap();
    // The gateway may close while this is still being written.
    let _ = tokio::time::timeout(PATIENCE, stream.write_all(&wire)).await;
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(PATIENCE, stream.read_to_end(&mut answer)).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 431"),
        "{answer}"
    );
    if !answer.is_empty() {
        assert!(answer.contains("x-chorus-role: bypass"), "{answer}");
    }
    let response = get(&gateway.url("/echo")).await;
    assert_eq!(response.status(), 200);
}

#[tokio::test]
async fn malformed_http1_is_400_or_closed_and_the_next_request_is_served() {
    let upstream = Upstream::start().await;
    let gateway = Gateway::start(&limited(&upstream, "header_read_timeout = \"5s\"")).await;
    let malformed: [&[u8]; 10] = [
        b"GARBAGE\r\n\r\n",
        b"GET /v1/models HTTP/9.9\r\nHost: a\r\n\r\n",
        b"GET /v1/models HTTP/1.1\r\nHost: a\r\nBad Header: x\r\n\r\n",
        b"GET /v1/models HTTP/1.1\r\nHost: a\r\nx-nul: a\0b\r\n\r\n",
        b"POST /v1/completions HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
        b"POST /v1/completions HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n",
        b"POST /v1/completions HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
        b"POST /v1/completions HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked, identity\r\n\r\n1\r\na\r\n0\r\n\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n",
        b"CONNECT 127.0.0.1:22 HTTP/1.1\r\nHost: 127.0.0.1:22\r\nConnection: close\r\n\r\n",
    ];
    for wire in malformed {
        let answer = raw(gateway.addr, wire).await;
        assert!(
            answer.starts_with("HTTP/1.1 400"),
            "{:?} got {answer:?}",
            String::from_utf8_lossy(wire)
        );
        assert!(answer.contains("x-chorus-role: bypass"), "{answer}");
        assert!(answer.contains("\"type\":\"bad_request\""), "{answer}");
        let response = get(&gateway.url("/echo")).await;
        assert_eq!(response.status(), 200, "not served after {wire:?}");
        body(response).await.unwrap();
    }
    assert_eq!(upstream.stats.requests(), 0);
    gateway.assert_idle().await;
}

/// TRACE is answered 405 and never forwarded, as nginx answers it: a backend
/// that echoes it would show the client a route's `upstream_headers`.
#[tokio::test]
async fn trace_is_refused_and_never_forwarded() {
    let upstream = Upstream::start().await;
    let gateway = Gateway::start(&one_route(&upstream.url(), "")).await;
    let answer = raw(
        gateway.addr,
        b"TRACE /echo HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 405"), "{answer}");
    assert!(
        answer.contains("\"type\":\"method_not_allowed\""),
        "{answer}"
    );
    assert!(answer.contains("x-chorus-role: bypass"), "{answer}");
    assert_eq!(upstream.stats.requests(), 0);
    gateway.assert_idle().await;
}

#[tokio::test]
async fn malformed_http2_closes_the_connection_and_the_next_one_is_served() {
    let upstream = Upstream::start().await;
    let gateway = Gateway::start(&one_route(&upstream.url(), "")).await;
    let preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    let garbage: [&[u8]; 3] = [
        // A frame far over the maximum frame size.
        b"\x00\xff\xff\x00\x00\x00\x00\x00\x01",
        // HEADERS on stream 1 whose block is not HPACK.
        b"\x00\x00\x04\x01\x05\x00\x00\x00\x01\xff\xff\xff\xff",
        // DATA on stream 0.
        b"\x00\x00\x01\x00\x00\x00\x00\x00\x00x",
    ];
    for frame in garbage {
        let mut stream = TcpStream::connect(gateway.addr).await.unwrap();
        // An empty SETTINGS frame, then the bad frame.
        let mut wire = preface.to_vec();
        wire.extend_from_slice(b"\x00\x00\x00\x04\x00\x00\x00\x00\x00");
        wire.extend_from_slice(frame);
        stream.write_all(&wire).await.unwrap();
        let mut answer = Vec::new();
        let closed = tokio::time::timeout(PATIENCE, stream.read_to_end(&mut answer)).await;
        assert!(closed.is_ok(), "the connection stayed open after {frame:?}");
        let request = Request::get(gateway.url("/echo"))
            .body(Full::new(Bytes::new()))
            .unwrap();
        let response = send(&http2(), request).await;
        assert_eq!(response.status(), 200);
        body(response).await.unwrap();
    }
    gateway.assert_idle().await;
}

// ---------------------------------------------------------------------------
// Connections

/// Reads from `stream` until it closes; `None` if it stays open for `wait`.
async fn read_until_closed(stream: &mut TcpStream, wait: Duration) -> Option<String> {
    let (closed, answer) = read_to_close(stream, Instant::now() + wait).await;
    closed.then(|| String::from_utf8_lossy(&answer).into_owned())
}

#[tokio::test]
async fn past_max_connections_new_clients_wait_instead_of_being_refused() {
    let upstream = Upstream::start().await;
    let gateway = Gateway::start(&limited(&upstream, "max_connections = 1")).await;
    let first = TcpStream::connect(gateway.addr).await.unwrap();
    gateway
        .wait_metric("chorus_connections_active", |open| open == 1.0)
        .await;

    let mut second = TcpStream::connect(gateway.addr)
        .await
        .expect("a connection past the cap is refused");
    second
        .write_all(b"GET /echo HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    // Queued: no answer while the first connection holds the only slot.
    assert_eq!(
        read_until_closed(&mut second, Duration::from_millis(500)).await,
        None
    );
    drop(first);
    let answer = read_until_closed(&mut second, PATIENCE)
        .await
        .expect("the queued connection was never served");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
}

#[tokio::test]
async fn a_slowloris_is_closed_while_normal_requests_are_served() {
    let upstream = Upstream::start().await;
    let gateway = Gateway::start(&limited(&upstream, "header_read_timeout = \"1s\"")).await;
    let started = Instant::now();
    let mut slow = TcpStream::connect(gateway.addr).await.unwrap();
    slow.write_all(b"GET /echo HTTP/1.1\r\nHost: a\r\n")
        .await
        .unwrap();
    let trickle = tokio::spawn(async move {
        // One header byte every 100 ms: the head never completes in time.
        for byte in b"x-slow: ".iter().cycle().take(400) {
            if slow.write_all(&[*byte]).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let mut answer = Vec::new();
        let _ = slow.read_to_end(&mut answer).await;
        String::from_utf8_lossy(&answer).into_owned()
    });
    for _ in 0..3 {
        let response = get(&gateway.url("/echo")).await;
        assert_eq!(response.status(), 200);
        body(response).await.unwrap();
    }
    let answer = tokio::time::timeout(PATIENCE, trickle)
        .await
        .expect("the slow connection was never closed")
        .unwrap();
    assert!(!answer.contains("200"), "{answer}");
    assert!(started.elapsed() >= Duration::from_millis(900));
}

#[tokio::test]
async fn a_connection_that_never_sends_a_request_is_closed() {
    let upstream = Upstream::start().await;
    let gateway = Gateway::start(&limited(
        &upstream,
        "header_read_timeout = \"1s\"\nmax_connections = 1",
    ))
    .await;
    let mut silent = TcpStream::connect(gateway.addr).await.unwrap();
    gateway
        .wait_metric("chorus_connections_active", |open| open == 1.0)
        .await;
    // The silent connection holds the only slot until the timeout frees it.
    let response = get(&gateway.url("/echo")).await;
    assert_eq!(response.status(), 200);
    body(response).await.unwrap();
    let answer = read_until_closed(&mut silent, PATIENCE)
        .await
        .expect("the silent connection was never closed");
    assert!(!answer.contains("200"), "{answer}");
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed_after_header_read_timeout() {
    let upstream = Upstream::start().await;
    let gateway = Gateway::start(&limited(&upstream, "header_read_timeout = \"1s\"")).await;
    let mut stream = TcpStream::connect(gateway.addr).await.unwrap();
    stream
        .write_all(b"GET /echo HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    let answer = read_until_closed(&mut stream, PATIENCE)
        .await
        .expect("the idle connection was never closed");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert_eq!(answer.matches("HTTP/1.1 200").count(), 1, "{answer}");
}

// ---------------------------------------------------------------------------
// Upstream errors

fn request(gateway: &Gateway, body: String, bypass: bool) -> Request<Full<Bytes>> {
    let mut request = post(&gateway.url("/v1/chat/completions"), body);
    if bypass {
        request
            .headers_mut()
            .insert("x-chorus-coalesce", "off".parse().unwrap());
    }
    request
}

fn role(bypass: bool) -> &'static str {
    if bypass { "bypass" } else { "leader" }
}

#[tokio::test]
async fn an_unreachable_upstream_is_a_502_json() {
    let nothing = closed_port().await;
    let gateway = Gateway::start(&one_route(&format!("http://{nothing}"), "")).await;
    for bypass in [true, false] {
        let body = chat("unreachable", json!({}));
        let response = send(&http1(), request(&gateway, body, bypass)).await;
        assert_eq!(response.status(), 502);
        assert_eq!(header(&response, "x-chorus-role"), role(bypass));
        assert_eq!(error_type(response).await, "upstream_unreachable");
    }
    assert_eq!(
        gateway
            .metric(r#"chorus_upstream_requests_total{route="llm"}"#)
            .await,
        2.0
    );
    gateway.assert_idle().await;
}

#[tokio::test]
async fn past_first_byte_timeout_is_a_504_json_and_the_upstream_request_is_closed() {
    let upstream = Upstream::start().await;
    let gateway = Gateway::start(&one_route(
        &upstream.url(),
        "first_byte_timeout = \"300ms\"",
    ))
    .await;
    for (index, bypass) in [true, false].into_iter().enumerate() {
        let body = chat("slow", json!({"first_byte_delay_ms": 10_000}));
        let response = send(&http1(), request(&gateway, body, bypass)).await;
        assert_eq!(response.status(), 504);
        assert_eq!(header(&response, "x-chorus-role"), role(bypass));
        assert_eq!(error_type(response).await, "upstream_timeout");
        let gone = index as u64 + 1;
        assert!(upstream.wait_for(|s| s.disconnects() >= gone).await);
        assert_eq!(upstream.stats.completed(), 0);
    }
    gateway.assert_idle().await;
}

#[tokio::test]
async fn an_upstream_that_cannot_connect_in_time_is_a_504_json() {
    // A listener whose accept queue is full drops new SYNs: connecting hangs.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let listener = socket.listen(1).unwrap();
    let full = listener.local_addr().unwrap();
    let mut queued = Vec::new();
    loop {
        match tokio::time::timeout(Duration::from_millis(200), TcpStream::connect(full)).await {
            Ok(Ok(stream)) => queued.push(stream),
            Ok(Err(_)) | Err(_) => break,
        }
        assert!(queued.len() < 64, "the accept queue never filled");
    }
    let gateway = Gateway::start(&one_route(
        &format!("http://{full}"),
        "connect_timeout = \"300ms\"",
    ))
    .await;
    for bypass in [true, false] {
        let response = send(&http1(), request(&gateway, chat("c", json!({})), bypass)).await;
        assert_eq!(response.status(), 504);
        assert_eq!(header(&response, "x-chorus-role"), role(bypass));
        assert_eq!(error_type(response).await, "upstream_timeout");
    }
    gateway.assert_idle().await;
}

/// Answers from upstreams that are not HTTP, or stop short.
const INVALID_UPSTREAMS: [&[u8]; 3] = [
    b"SSH-2.0-OpenSSH_9.6\r\n\r\n",
    b"",
    b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
];

#[tokio::test]
async fn an_invalid_or_reset_upstream_is_a_502_json() {
    for answer in INVALID_UPSTREAMS {
        let upstream = FixedUpstream::start(answer).await;
        let gateway = Gateway::start(&one_route(&upstream.url(), "")).await;
        for bypass in [true, false] {
            let response = send(&http1(), request(&gateway, chat("c", json!({})), bypass)).await;
            assert_eq!(response.status(), 502, "{answer:?}");
            assert_eq!(header(&response, "x-chorus-role"), role(bypass));
            assert_eq!(error_type(response).await, "upstream_failed");
        }
        gateway.assert_idle().await;
    }
}

#[tokio::test]
async fn an_upstream_body_shorter_than_its_length_is_not_a_clean_end() {
    let upstream =
        FixedUpstream::start(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"short\"").await;
    let gateway = Gateway::start(&one_route(&upstream.url(), "")).await;
    for client in [http1(), http2()] {
        for bypass in [true, false] {
            let response = send(&client, request(&gateway, chat("c", json!({})), bypass)).await;
            assert_eq!(response.status(), 200);
            assert!(body(response).await.is_err(), "a short body ended cleanly");
        }
    }
    gateway.assert_idle().await;
}

async fn break_mid_body(client: HttpClient, bypass: bool, fault: serde_json::Value) {
    let upstream = Upstream::start().await;
    let gateway = Gateway::start(&one_route(&upstream.url(), "idle_timeout = \"500ms\"")).await;
    let mut mock = json!({"tokens": 50, "interval_ms": 20});
    mock.as_object_mut()
        .unwrap()
        .extend(fault.as_object().unwrap().clone());
    let response = send(&client, request(&gateway, chat("break", mock), bypass)).await;
    assert_eq!(response.status(), 200);
    assert_eq!(header(&response, "x-chorus-role"), role(bypass));
    let mut reader = EventReader::new(response);
    let mut received = Vec::new();
    let end = loop {
        match reader.next().await {
            Ok(Some(event)) => received.push(event),
            Ok(None) => break Ok(()),
            Err(error) => break Err(error),
        }
    };
    assert!(end.is_err(), "a broken stream ended cleanly: {received:?}");
    assert_eq!(received.len(), 3, "{received:?}");
    assert!(!received.iter().any(|event| event == "[DONE]"));
    gateway.assert_idle().await;
}

#[tokio::test]
async fn an_upstream_break_is_not_a_clean_end_http1_bypass() {
    break_mid_body(http1(), true, json!({"break_after": 3})).await;
}

#[tokio::test]
async fn an_upstream_break_is_not_a_clean_end_http1_coalesced() {
    break_mid_body(http1(), false, json!({"break_after": 3})).await;
}

#[tokio::test]
async fn an_upstream_break_is_not_a_clean_end_http2_bypass() {
    break_mid_body(http2(), true, json!({"break_after": 3})).await;
}

#[tokio::test]
async fn an_upstream_break_is_not_a_clean_end_http2_coalesced() {
    break_mid_body(http2(), false, json!({"break_after": 3})).await;
}

#[tokio::test]
async fn idle_timeout_mid_body_is_not_a_clean_end_bypass() {
    break_mid_body(http1(), true, json!({"stall_after": 3})).await;
}

#[tokio::test]
async fn idle_timeout_mid_body_is_not_a_clean_end_coalesced() {
    break_mid_body(http2(), false, json!({"stall_after": 3})).await;
}

#[tokio::test]
async fn idle_timeout_closes_the_stalled_upstream_request() {
    let upstream = Upstream::start().await;
    let gateway = Gateway::start(&one_route(&upstream.url(), "idle_timeout = \"300ms\"")).await;
    for bypass in [true, false] {
        let body = chat("stall", json!({"tokens": 50, "stall_after": 2}));
        let response = send(&http1(), request(&gateway, body, bypass)).await;
        assert!(EventReader::new(response).rest().await.is_err());
    }
    assert!(upstream.wait_for(|s| s.disconnects() >= 2).await);
    gateway.assert_idle().await;
}

#[tokio::test]
async fn idle_timeout_measures_silence_not_the_length_of_the_stream() {
    let upstream = Upstream::start().await;
    let gateway = Gateway::start(&one_route(&upstream.url(), "idle_timeout = \"400ms\"")).await;
    for bypass in [true, false] {
        // 1.8 s of stream, never more than 150 ms of silence.
        let body = chat("steady", json!({"tokens": 12, "interval_ms": 150}));
        let response = send(&http1(), request(&gateway, body, bypass)).await;
        let events = EventReader::new(response).rest().await;
        let events = events.expect("a steady stream longer than idle_timeout was cut");
        assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    }
    gateway.assert_idle().await;
}

// ---------------------------------------------------------------------------
// Clients leaving

const ASKED: u64 = 200;

fn long_stream(delay_ms: u64) -> String {
    chat(
        "leaving",
        json!({"tokens": ASKED, "interval_ms": 50, "first_byte_delay_ms": delay_ms}),
    )
}

/// A raw HTTP/1.1 POST of `body` to the completions path, around the flight.
fn bypass_wire(body: &str) -> String {
    format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: a\r\nContent-Type: application/json\r\n\
         x-chorus-coalesce: off\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

async fn assert_counted_as_gone(gateway: &Gateway, upstream: &Upstream) {
    assert!(upstream.wait_for(|s| s.disconnects() >= 1).await);
    assert!(
        upstream.stats.events_sent() < ASKED / 2,
        "the upstream went on: {} events sent",
        upstream.stats.events_sent()
    );
    assert_eq!(upstream.stats.completed(), 0);
    let status_499 = r#"chorus_responses_total{route="llm",status="499"}"#;
    assert_eq!(gateway.wait_metric(status_499, |n| n >= 1.0).await, 1.0);
    let cancelled = r#"chorus_upstream_cancelled_total{route="llm"}"#;
    assert_eq!(gateway.wait_metric(cancelled, |n| n >= 1.0).await, 1.0);
    gateway.assert_idle().await;
}

#[tokio::test]
async fn a_client_leaving_mid_body_closes_the_upstream_request_http1() {
    let upstream = Upstream::start().await;
    let gateway = Gateway::start(&one_route(&upstream.url(), "")).await;
    let mut stream = TcpStream::connect(gateway.addr).await.unwrap();
    let body = long_stream(0);
    let wire = bypass_wire(&body);
    stream.write_all(wire.as_bytes()).await.unwrap();
    let mut seen = Vec::new();
    while !String::from_utf8_lossy(&seen).contains("\"content\":\"") {
        let mut buf = [0; 4096];
        let read = tokio::time::timeout(PATIENCE, stream.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert_ne!(read, 0, "closed early");
        seen.extend_from_slice(&buf[..read]);
    }
    drop(stream);
    assert_counted_as_gone(&gateway, &upstream).await;
}

#[tokio::test]
async fn a_client_leaving_mid_body_closes_the_upstream_request_http2() {
    let upstream = Upstream::start().await;
    let gateway = Gateway::start(&one_route(&upstream.url(), "")).await;
    let client = http2();
    let response = send(&client, request(&gateway, long_stream(0), true)).await;
    let mut reader = EventReader::new(response);
    reader.next().await.unwrap().unwrap();
    reader.next().await.unwrap().unwrap();
    // RST_STREAM; the client and its connection stay.
    drop(reader);
    assert_counted_as_gone(&gateway, &upstream).await;
    drop(client);
}

#[tokio::test]
async fn a_client_leaving_before_the_head_closes_the_upstream_request_http1() {
    let upstream = Upstream::start().await;
    let gateway = Gateway::start(&one_route(&upstream.url(), "")).await;
    let body = long_stream(20_000);
    let wire = bypass_wire(&body);
    let mut stream = TcpStream::connect(gateway.addr).await.unwrap();
    stream.write_all(wire.as_bytes()).await.unwrap();
    assert!(upstream.wait_for(|s| s.requests() >= 1).await);
    drop(stream);
    assert_counted_as_gone(&gateway, &upstream).await;
}

#[tokio::test]
async fn a_client_leaving_before_the_head_closes_the_upstream_request_http2() {
    let upstream = Upstream::start().await;
    let gateway = Gateway::start(&one_route(&upstream.url(), "")).await;
    let client = http2();
    let pending = {
        let client = client.clone();
        let request = request(&gateway, long_stream(20_000), true);
        tokio::spawn(async move { client.request(request).await })
    };
    assert!(upstream.wait_for(|s| s.requests() >= 1).await);
    pending.abort();
    assert_counted_as_gone(&gateway, &upstream).await;
    drop(client);
}
