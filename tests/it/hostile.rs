//! Hostile HTTP/1.1 clients, on raw sockets: request smuggling and malformed
//! heads and bodies (a 400 or a closed connection, and never an upstream
//! request built from an ambiguous body), and slow clients (a slowloris of
//! 2,000 connections, bodies that trickle forever, idle keep-alive).

use std::time::Duration;

use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::attack::*;
use crate::support::*;

/// Appended to every malformed request: if the gateway ever read past the
/// bad request as if it were framed, the upstream would see this one.
const SMUGGLED: &[u8] = b"GET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n";

/// Requests whose framing is ambiguous or malformed. Each must get the
/// gateway's JSON 400 (414 or 431 for the over-long ones) and a closed
/// connection, and none may reach the upstream.
fn refused() -> Vec<(&'static str, Vec<u8>)> {
    let mut cases: Vec<(&'static str, Vec<u8>)> = vec![
        // Both framings: a front proxy that reads one and chorus the other
        // would disagree on where the next request starts.
        ("CL.TE", b"POST /a HTTP/1.1\r\nHost: a\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nG".to_vec()),
        ("CL.TE, TE empty body", b"POST /a HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n".to_vec()),
        ("CL, TE chunked in a list", b"POST /a HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: gzip, chunked\r\n\r\nhello".to_vec()),
        // Content-Length: repeated with different values, lists, not a number.
        ("two lengths", b"POST /a HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!".to_vec()),
        ("length list", b"POST /a HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 6\r\n\r\nhello!".to_vec()),
        ("length list, same", b"POST /a HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 5\r\n\r\nhello".to_vec()),
        ("length not a number", b"POST /a HTTP/1.1\r\nHost: a\r\nContent-Length: abc\r\n\r\nhello".to_vec()),
        ("length with a sign", b"POST /a HTTP/1.1\r\nHost: a\r\nContent-Length: +5\r\n\r\nhello".to_vec()),
        ("negative length", b"POST /a HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\nhello".to_vec()),
        ("hex length", b"POST /a HTTP/1.1\r\nHost: a\r\nContent-Length: 0x5\r\n\r\nhello".to_vec()),
        ("two numbers", b"POST /a HTTP/1.1\r\nHost: a\r\nContent-Length: 5 5\r\n\r\nhello".to_vec()),
        ("empty length", b"POST /a HTTP/1.1\r\nHost: a\r\nContent-Length:\r\n\r\nhello".to_vec()),
        ("length overflow", b"POST /a HTTP/1.1\r\nHost: a\r\nContent-Length: 99999999999999999999999\r\n\r\nhello".to_vec()),
        // Transfer-Encoding other than exactly `chunked`.
        ("TE identity", b"POST /a HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: identity\r\n\r\nhello".to_vec()),
        ("TE chunked, identity", b"POST /a HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, identity\r\n\r\n5\r\nhello\r\n0\r\n\r\n".to_vec()),
        ("TE lines chunked, identity", b"POST /a HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n\r\n5\r\nhello\r\n0\r\n\r\n".to_vec()),
        ("TE lines identity, chunked", b"POST /a HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: identity\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n".to_vec()),
        ("TE gzip, chunked", b"POST /a HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n".to_vec()),
        ("TE chunked twice", b"POST /a HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n".to_vec()),
        ("TE xchunked", b"POST /a HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: xchunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n".to_vec()),
        ("TE space before colon", b"POST /a HTTP/1.1\r\nHost: a\r\nTransfer-Encoding : chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n".to_vec()),
        ("TE vertical tab", b"POST /a HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: \x0bchunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n".to_vec()),
        ("TE on HTTP/1.0", b"POST /a HTTP/1.0\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n".to_vec()),
        // Bad chunk sizes and chunk framing.
        ("chunk size not hex", b"POST /a HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n".to_vec()),
        ("negative chunk size", b"POST /a HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n-5\r\nhello\r\n0\r\n\r\n".to_vec()),
        ("chunk size overflow", b"POST /a HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n10000000000000005\r\nhello\r\n0\r\n\r\n".to_vec()),
        ("chunk size 0x", b"POST /a HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0x5\r\nhello\r\n0\r\n\r\n".to_vec()),
        ("chunk longer than its size", b"POST /a HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nhello\r\n0\r\n\r\n".to_vec()),
        ("chunk size ends in LF", b"POST /a HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\nhello\r\n0\r\n\r\n".to_vec()),
        ("chunk data ends in LF", b"POST /a HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\n0\r\n\r\n".to_vec()),
        ("chunk size ends in CR", b"POST /a HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\rhello\r\n0\r\n\r\n".to_vec()),
        ("chunk extension with LF", b"POST /a HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5;a\nb\r\nhello\r\n0\r\n\r\n".to_vec()),
        // obs-fold.
        ("obs-fold", b"GET /a HTTP/1.1\r\nHost: a\r\nX-A: a\r\n b\r\n\r\n".to_vec()),
        ("obs-fold TE", b"POST /a HTTP/1.1\r\nHost: a\r\nTransfer-Encoding:\r\n chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n".to_vec()),
        // Bare LF (and bare CR) as line ends.
        ("bare LF", b"GET /a HTTP/1.1\nHost: a\n\n".to_vec()),
        ("bare LF in one line", b"GET /a HTTP/1.1\r\nHost: a\nX: y\r\n\r\n".to_vec()),
        ("bare LF hides a TE", b"POST /a HTTP/1.1\r\nHost: a\r\nX: y\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n".to_vec()),
        ("bare LF ends the head", b"GET /a HTTP/1.1\r\nHost: a\r\n\n".to_vec()),
        ("bare CR", b"GET /a HTTP/1.1\r\nHost: a\r\nX: y\rTransfer-Encoding: chunked\r\n\r\n".to_vec()),
        // Invalid bytes in header names and values.
        ("NUL in a value", b"GET /a HTTP/1.1\r\nHost: a\r\nX: a\0b\r\n\r\n".to_vec()),
        ("control byte in a value", b"GET /a HTTP/1.1\r\nHost: a\r\nX: a\x01b\r\n\r\n".to_vec()),
        ("DEL in a name", b"GET /a HTTP/1.1\r\nHost: a\r\nX\x7f: a\r\n\r\n".to_vec()),
        ("UTF-8 in a name", b"GET /a HTTP/1.1\r\nHost: a\r\nX\xc3\xa9: a\r\n\r\n".to_vec()),
        ("space in a name", b"GET /a HTTP/1.1\r\nHost: a\r\nX Y: a\r\n\r\n".to_vec()),
        ("empty name", b"GET /a HTTP/1.1\r\nHost: a\r\n: a\r\n\r\n".to_vec()),
        ("no colon", b"GET /a HTTP/1.1\r\nHost: a\r\nX-No-Colon\r\n\r\n".to_vec()),
        ("whitespace before the first header", b"GET /a HTTP/1.1\r\n Host: a\r\n\r\n".to_vec()),
        // Request lines.
        ("two spaces", b"GET  /a HTTP/1.1\r\nHost: a\r\n\r\n".to_vec()),
        ("tab", b"GET\t/a HTTP/1.1\r\nHost: a\r\n\r\n".to_vec()),
        ("extra word", b"GET /a HTTP/1.1 x\r\nHost: a\r\n\r\n".to_vec()),
        ("HTTP/0.9", b"GET /a\r\n\r\n".to_vec()),
        ("HTTP/2.0 in text", b"GET /a HTTP/2.0\r\nHost: a\r\n\r\n".to_vec()),
        ("HTTP/9.9", b"GET /a HTTP/9.9\r\nHost: a\r\n\r\n".to_vec()),
        ("space in the target", b"GET /a b HTTP/1.1\r\nHost: a\r\n\r\n".to_vec()),
        ("NUL in the target", b"GET /a\0b HTTP/1.1\r\nHost: a\r\n\r\n".to_vec()),
        ("UTF-8 in the target", b"GET /caf\xc3\xa9 HTTP/1.1\r\nHost: a\r\n\r\n".to_vec()),
        // Host: RFC 9112 section 3.2 asks for exactly one.
        ("two Host lines", b"GET /a HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n".to_vec()),
        ("no Host", b"GET /a HTTP/1.1\r\nX: y\r\n\r\n".to_vec()),
        // ...whose value is a host and an optional port, nothing more.
        ("space in Host", b"GET /a HTTP/1.1\r\nHost: a b\r\n\r\n".to_vec()),
        ("path in Host", b"GET /a HTTP/1.1\r\nHost: a/evil\r\n\r\n".to_vec()),
        ("user in Host", b"GET /a HTTP/1.1\r\nHost: user@a\r\n\r\n".to_vec()),
        ("user in an absolute-form target", b"GET http://user:pw@a/a HTTP/1.1\r\nHost: a\r\n\r\n".to_vec()),
        // A path whose dot segments climb above the root.
        ("above the root", b"GET /a/../../b HTTP/1.1\r\nHost: a\r\n\r\n".to_vec()),
    ];
    // TE.CL: a front proxy reading the length forwards "5c\r\n" as the body
    // and the chunk as the next request.
    let hidden = "GPOST /hidden HTTP/1.1\r\nHost: a\r\nContent-Length: 15\r\n\r\nx=1";
    let te_cl = format!(
        "POST /a HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n\
         {:x}\r\n{hidden}\r\n0\r\n\r\n",
        hidden.len()
    );
    cases.insert(1, ("TE.CL", te_cl.into_bytes()));
    // Over-long request line, header, and head.
    let mut line = b"GET /".to_vec();
    line.extend(std::iter::repeat_n(b'a', 100_000));
    line.extend_from_slice(b" HTTP/1.1\r\nHost: a\r\n\r\n");
    cases.push(("request line of 100 KB", line));
    let mut header = b"GET /a HTTP/1.1\r\nHost: a\r\nX: ".to_vec();
    header.extend(std::iter::repeat_n(b'a', 1 << 20));
    header.extend_from_slice(b"\r\n\r\n");
    cases.push(("header of 1 MB", header));
    let mut many = b"GET /a HTTP/1.1\r\nHost: a\r\n".to_vec();
    for index in 0..1000 {
        many.extend_from_slice(format!("x-{index}: a\r\n").as_bytes());
    }
    many.extend_from_slice(b"\r\n");
    cases.push(("1000 headers", many));
    cases
}

#[tokio::test]
async fn smuggling_and_malformed_requests_are_refused_and_never_sent_upstream() {
    let recorder = Recorder::start().await;
    let gateway = Gateway::start(&server_extra(
        &one_route(&recorder.url(), ""),
        "header_read_timeout = \"5s\"\nrequest_body_timeout = \"5s\"",
    ))
    .await;
    let mut normal = 0;
    let mut failures = Vec::new();
    for (name, mut wire) in refused() {
        wire.extend_from_slice(SMUGGLED);
        let exchange = exchange(gateway.addr, &wire, PATIENCE).await;
        let expected = match name {
            "request line of 100 KB" => 414,
            "header of 1 MB" | "1000 headers" => 431,
            _ => 400,
        };
        let refused = exchange.status() == Some(expected) && exchange.responses() == 1;
        if !refused || !exchange.closed || recorder.hits() != normal {
            failures.push(format!(
                "{name}: closed={} upstream requests={} answer={:?}",
                exchange.closed,
                recorder.hits() - normal,
                exchange.answer.lines().next().unwrap_or("")
            ));
            normal = recorder.hits();
        }
        // Every refusal is the gateway's own, in JSON, hyper's parser
        // included (`framing` hands it no head it would refuse).
        if refused {
            assert!(exchange.answer.contains("x-chorus-role: bypass"), "{name}");
            assert!(exchange.answer.contains("application/json"), "{name}");
        }
        still_serves(&gateway).await;
        normal += 1;
    }
    assert!(failures.is_empty(), "not refused:\n{}", failures.join("\n"));
    let seen = recorder.seen();
    assert!(
        seen.iter().all(|request| request.path == "/still-serving"),
        "{seen:?}"
    );
}

/// Requests that look odd but frame their body in exactly one way: the
/// upstream gets the body as the framing says, and nothing after it.
#[tokio::test]
async fn unambiguous_oddities_are_forwarded_with_exactly_their_body() {
    let recorder = Recorder::start().await;
    let gateway = Gateway::start(&one_route(&recorder.url(), "")).await;
    let cases: [(&str, &[u8]); 6] = [
        ("the same length twice", b"POST /a HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello"),
        ("a chunk extension", b"POST /a HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5;name=value\r\nhello\r\n0\r\n\r\n"),
        ("white space after a chunk size", b"POST /a HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5 \r\nhello\r\n0\r\n\r\n"),
        ("upper-case chunk sizes", b"POST /a HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: CHUNKED\r\n\r\n5\r\nhello\r\nA\r\n0123456789\r\n0\r\n\r\n"),
        ("trailers", b"POST /a HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\nX-Trailer: 1\r\n\r\n"),
        ("obs-text in a value", b"POST /a HTTP/1.1\r\nHost: a\r\nX-Latin: caf\xe9\r\nContent-Length: 5\r\n\r\nhello"),
    ];
    for (index, (name, wire)) in cases.into_iter().enumerate() {
        let mut wire = wire.to_vec();
        // Framed as it says, the connection stays in step: the next request
        // on it is a request of its own.
        wire.extend_from_slice(b"GET /next HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n");
        let exchange = exchange(gateway.addr, &wire, PATIENCE).await;
        assert_eq!(exchange.responses(), 2, "{name}: {:?}", exchange.answer);
        assert_eq!(exchange.status(), Some(200), "{name}");
        let seen = recorder.seen();
        assert_eq!(seen.len(), 2 * (index + 1), "{name}: {seen:?}");
        let (forwarded, next) = (&seen[2 * index], &seen[2 * index + 1]);
        assert_eq!(forwarded.path, "/a", "{name}");
        let expected: &[u8] = if name == "upper-case chunk sizes" {
            b"hello0123456789"
        } else {
            b"hello"
        };
        assert_eq!(forwarded.body, expected, "{name}");
        assert!(
            !forwarded.headers.contains_key("transfer-encoding"),
            "{name}"
        );
        assert_eq!(next.path, "/next", "{name}");
    }
    still_serves(&gateway).await;
}

/// A bare LF among a chunked body's trailer lines. hyper reads on to the
/// next CRLF CRLF, taking the head of the request after it for trailer
/// lines, where a proxy in front that takes the LF for a line end sees two
/// requests: the two would disagree on what was asked. The connection is
/// cut; neither request reaches the upstream.
#[tokio::test]
async fn a_bare_lf_among_trailer_lines_cuts_the_connection() {
    let recorder = Recorder::start().await;
    let gateway = Gateway::start(&one_route(&recorder.url(), "")).await;
    let endings: [&[u8]; 4] = [
        b"0\r\nX: a\n\r\n",
        b"0\r\nX: a\n\n",
        b"0\r\n\n",
        b"0\r\nX: a\r\n\n",
    ];
    for ending in endings {
        let mut wire =
            b"POST /a HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n"
                .to_vec();
        wire.extend_from_slice(ending);
        wire.extend_from_slice(SMUGGLED);
        wire.extend_from_slice(b"GET /after HTTP/1.1\r\nHost: a\r\n\r\n");
        let exchange = exchange(gateway.addr, &wire, PATIENCE).await;
        let ending = String::from_utf8_lossy(ending);
        assert!(exchange.closed, "{ending:?}: not closed");
        assert_eq!(exchange.responses(), 0, "{ending:?}: {:?}", exchange.answer);
        still_serves(&gateway).await;
    }
    let seen = recorder.seen();
    assert!(
        seen.iter().all(|request| request.path == "/still-serving"),
        "{seen:?}"
    );
}

/// One connection in `count` trickling a request head, a byte at a time.
async fn trickle(streams: &mut [TcpStream], byte: u8, rounds: usize, pause: Duration) {
    for _ in 0..rounds {
        let mut open = 0;
        for stream in streams.iter_mut() {
            if stream.write_all(&[byte]).await.is_ok() {
                open += 1;
            }
        }
        if open == 0 {
            return;
        }
        tokio::time::sleep(pause).await;
    }
}

/// Reads every stream to its end; returns how many were closed within
/// `wait` and whether any got a 2xx answer.
async fn closed_by_gateway(streams: Vec<TcpStream>, wait: Duration) -> (usize, Vec<String>) {
    let deadline = Instant::now() + wait;
    let reads = streams.into_iter().map(|mut stream| async move {
        let (closed, answer) = read_to_close(&mut stream, deadline).await;
        (closed, String::from_utf8_lossy(&answer).into_owned())
    });
    let results = futures::future::join_all(reads).await;
    let closed = results.iter().filter(|(closed, _)| *closed).count();
    let answers = results
        .into_iter()
        .map(|(_, answer)| answer)
        .filter(|answer| !answer.is_empty())
        .collect();
    (closed, answers)
}

/// Trickles `byte` on every stream in the background, `rounds` times 200 ms
/// apart, while ten normal requests are each served within 5 s; then reads
/// every stream to its end (see [`closed_by_gateway`]).
async fn trickle_while_serving(
    gateway: &Gateway,
    mut slow: Vec<TcpStream>,
    byte: u8,
    rounds: usize,
) -> (usize, Vec<String>) {
    let trickler = tokio::spawn(async move {
        trickle(&mut slow, byte, rounds, Duration::from_millis(200)).await;
        slow
    });
    // Normal requests go through meanwhile, each well within the timeout.
    for _ in 0..10 {
        let sent = Instant::now();
        still_serves(gateway).await;
        assert!(
            sent.elapsed() < Duration::from_secs(5),
            "{:?}",
            sent.elapsed()
        );
    }
    let slow = trickler.await.unwrap();
    closed_by_gateway(slow, PATIENCE).await
}

#[tokio::test]
async fn a_slowloris_of_2000_connections_does_not_stop_normal_requests() {
    const SLOW: usize = 2000;
    let recorder = Recorder::start().await;
    let gateway = Gateway::start(&server_extra(
        &one_route(&recorder.url(), ""),
        "header_read_timeout = \"3s\"",
    ))
    .await;
    let started = Instant::now();
    let mut slow = Vec::with_capacity(SLOW);
    for _ in 0..SLOW {
        let mut stream = TcpStream::connect(gateway.addr).await.unwrap();
        stream
            .write_all(b"GET /slow HTTP/1.1\r\nHost: a\r\nX-Slow: ")
            .await
            .unwrap();
        slow.push(stream);
    }
    let open = gateway
        .wait_metric("chorus_connections_active", |open| open >= SLOW as f64)
        .await;
    assert!(open >= SLOW as f64, "only {open} connections open");

    // One byte of header value per connection every 200 ms.
    let (closed, answers) = trickle_while_serving(&gateway, slow, b'x', 15).await;
    assert_eq!(closed, SLOW, "slow connections left open");
    assert!(
        answers.iter().all(|answer| !answer.contains(" 200 ")),
        "a slow head was answered: {:?}",
        answers.first()
    );
    assert!(started.elapsed() >= Duration::from_millis(2900));
    assert!(
        recorder
            .seen()
            .iter()
            .all(|request| request.path != "/slow")
    );
    gateway
        .wait_metric("chorus_connections_active", |open| open == 0.0)
        .await;
    still_serves(&gateway).await;
}

#[tokio::test]
async fn bodies_that_trickle_forever_are_cut_off_and_never_sent_upstream() {
    const SLOW: usize = 200;
    let recorder = Recorder::start().await;
    let gateway = Gateway::start(&server_extra(
        &one_route(&recorder.url(), ""),
        "request_body_timeout = \"2s\"",
    ))
    .await;
    let mut slow = Vec::with_capacity(SLOW);
    for index in 0..SLOW {
        let mut stream = TcpStream::connect(gateway.addr).await.unwrap();
        let head: &[u8] = if index % 2 == 0 {
            b"POST /slow HTTP/1.1\r\nHost: a\r\nContent-Length: 1000000\r\n\r\n{"
        } else {
            b"POST /slow HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nF4240\r\n{"
        };
        stream.write_all(head).await.unwrap();
        slow.push(stream);
    }
    // Long past the timeout: the gateway must cut them, not the client.
    let (closed, answers) = trickle_while_serving(&gateway, slow, b' ', 40).await;
    assert_eq!(closed, SLOW, "trickling connections left open");
    // A 408 when the client reads it before the close resets the socket.
    assert!(
        answers
            .iter()
            .all(|answer| answer.starts_with("HTTP/1.1 408")),
        "{:?}",
        answers
            .iter()
            .find(|answer| !answer.starts_with("HTTP/1.1 408"))
    );
    assert!(
        recorder
            .seen()
            .iter()
            .all(|request| request.path != "/slow")
    );
    assert_eq!(
        gateway
            .metric(r#"chorus_responses_total{route="llm",status="408"}"#)
            .await,
        SLOW as f64
    );
    still_serves(&gateway).await;
}

/// [`small_window_post`], its response head read.
async fn small_window_stream(addr: std::net::SocketAddr, body: &str) -> TcpStream {
    let mut stream = small_window_post(addr, body).await;
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8];
        assert_eq!(
            stream.read(&mut byte).await.unwrap(),
            1,
            "closed before the head"
        );
        head.push(byte[0]);
    }
    assert!(head.starts_with(b"HTTP/1.1 200"));
    stream
}

/// The mock and a gateway whose `send_timeout` is one second.
async fn impatient_gateway() -> (Upstream, Gateway) {
    let upstream = Upstream::start().await;
    let gateway = Gateway::start(&server_extra(
        &one_route(&upstream.url(), ""),
        "send_timeout = \"1s\"",
    ))
    .await;
    (upstream, gateway)
}

/// The upstream saw one request closed before its end, and the gateway
/// counted it cancelled; `completed` others ran to their end.
async fn one_upstream_cancelled(upstream: &Upstream, gateway: &Gateway, completed: u64) {
    assert!(upstream.wait_for(|stats| stats.disconnects() == 1).await);
    assert_eq!(upstream.stats.completed(), completed);
    gateway
        .wait_metric(r#"chorus_upstream_cancelled_total{route="llm"}"#, |v| {
            v == 1.0
        })
        .await;
    assert_eq!(
        gateway
            .metric(r#"chorus_upstream_cancelled_total{route="llm"}"#)
            .await,
        1.0
    );
}

/// A stream of an event every 2 ms for at least two minutes: more than the
/// socket buffers hold within a second.
fn endless(name: &str) -> String {
    chat(name, json!({"tokens": 60_000, "interval_ms": 2}))
}

#[tokio::test]
async fn a_client_that_takes_nothing_for_send_timeout_is_dropped_and_its_upstream_cancelled() {
    let (upstream, gateway) = impatient_gateway().await;

    // One client stops reading; another reads a little every 400 ms, so
    // its window never stays shut for a whole second.
    let stalled = small_window_stream(gateway.addr, &endless("stalled")).await;
    let mut slow = small_window_stream(gateway.addr, &endless("slow")).await;
    let started = Instant::now();
    let mut read = 0;
    while started.elapsed() < Duration::from_secs(5) {
        let mut buf = [0u8; 4096];
        let got = slow.read(&mut buf).await.unwrap();
        assert_ne!(got, 0, "the slow reader was dropped");
        read += got;
        tokio::time::sleep(Duration::from_millis(400)).await;
    }

    // The stalled client's connection is gone, and with it (the last of its
    // flight) the upstream request; the slow reader's goes on.
    one_upstream_cancelled(&upstream, &gateway, 0).await;
    assert!(read > 4096, "read {read} bytes");
    assert_eq!(
        gateway
            .metric(r#"chorus_flights_active{route="llm"}"#)
            .await,
        1.0
    );
    drop((stalled, slow));
    gateway.assert_idle().await;
}

#[tokio::test]
async fn an_http2_stream_its_client_stops_reading_is_counted_out_after_send_timeout() {
    let (upstream, gateway) = impatient_gateway().await;
    let client: HttpClient =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .http2_only(true)
            .http2_initial_stream_window_size(4096)
            .build_http();
    let url = gateway.url("/v1/chat/completions");

    // Never read: its window shuts after 4 KiB, on a connection that lives
    // on (the client answers pings and reads its other stream).
    let stalled = send(&client, post(&url, endless("stalled"))).await;
    assert_eq!(stalled.status(), 200);
    let read = send(
        &client,
        post(&url, chat("read", json!({"tokens": 60, "interval_ms": 50}))),
    )
    .await;
    let read = body(read).await.unwrap();
    assert!(read.ends_with(b"data: [DONE]\n\n"));

    // The stalled stream was counted out of its flight, which, left with
    // nobody, cancelled its upstream request.
    one_upstream_cancelled(&upstream, &gateway, 1).await;
    assert_eq!(gateway.metric("chorus_connections_active").await, 1.0);
    // Read now, it gives what was sent, then a reset: not a clean end.
    assert!(body(stalled).await.is_err());
    gateway.assert_idle().await;
}
