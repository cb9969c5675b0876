//! TLS both ways: HTTPS for clients (ALPN h2 and http/1.1 on one port, TLS
//! 1.2 and 1.3 only, certificate reload, junk on the port), and HTTPS to
//! upstreams (private CA, name check, h2 by ALPN, pooling, streams per h2
//! connection, one connection for a cold burst, refused streams, mutual
//! TLS), with certificates made in the test.

pub(crate) mod fixtures;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderValue, Version};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use rustls::ProtocolVersion;
use rustls::version::{TLS12, TLS13};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

use chorus::RunOptions;
use chorus::tls::{ReloadError, Reloaded};

use self::fixtures::*;
use crate::cli::chorus;
use crate::support::*;

/// The gateway's certificate names, as clients see it.
const GATEWAY_NAMES: &[&str] = &["localhost", "127.0.0.1"];

/// `toml` with a `[server.tls]` table serving `leaf`.
fn with_server_tls(toml: &str, leaf: &Leaf) -> String {
    format!(
        "{toml}\n[server.tls]\ncert = {:?}\nkey = {:?}\n",
        leaf.cert, leaf.key
    )
}

/// A gateway serving HTTPS with `leaf` in front of `upstream`.
async fn tls_gateway(upstream: &str, leaf: &Leaf, options: RunOptions) -> Gateway {
    Gateway::start_with(&with_server_tls(&one_route(upstream, ""), leaf), options).await
}

/// Two server pairs from one CA, and the files a gateway serves from,
/// holding the first pair to begin with: (the CA, old, new, live).
fn rotation() -> (Pki, Leaf, Leaf, Leaf) {
    let pki = Pki::new();
    let old = pki.server("old", GATEWAY_NAMES);
    let new = pki.server("new", GATEWAY_NAMES);
    let live = pki.server("live", GATEWAY_NAMES);
    old.write_to(&live.cert, &live.key);
    (pki, old, new, live)
}

/// Run options that look at the certificate files every `cert_poll`.
fn polling(cert_poll: Option<Duration>) -> RunOptions {
    RunOptions {
        cert_poll,
        ..RunOptions::default()
    }
}

/// Starts a streamed completion of `body` on `client` and reads its first
/// frame; returns that frame and the rest of the body.
async fn first_frame(client: &mut TlsClient, body: String) -> (Bytes, Incoming) {
    let mut stream = client
        .send(client.post("/v1/chat/completions", body))
        .await
        .into_body();
    let first = stream.frame().await.unwrap().unwrap().into_data().unwrap();
    (first, stream)
}

/// The events of a stream whose first frame was `first`, read to its end.
async fn events_after(first: Bytes, rest: Incoming) -> Vec<String> {
    let rest = rest.collect().await.unwrap().to_bytes();
    events(&[first, rest].concat())
}

fn json_of(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|error| panic!("not JSON ({error}): {text}"))
}

/// `error.message` of a gateway's JSON error body.
fn error_message(body: &str) -> String {
    json_of(body)["error"]["message"]
        .as_str()
        .unwrap()
        .to_owned()
}

fn role(response: &http::Response<Incoming>) -> String {
    response.headers()["x-chorus-role"]
        .to_str()
        .unwrap()
        .to_owned()
}

// ---------------------------------------------------------------------------
// Clients over TLS
// ---------------------------------------------------------------------------

#[tokio::test]
async fn h2_and_http1_clients_over_tls_share_one_flight() {
    let pki = Pki::new();
    let leaf = pki.server("gateway", GATEWAY_NAMES);
    let upstream = Upstream::start().await;
    let gateway = tls_gateway(&upstream.url(), &leaf, RunOptions::default()).await;

    // Both connect before either asks, so the second joins the first's flight.
    let mut h2 = TlsClient::connect(
        gateway.addr,
        pki.client_config(&[H2, HTTP11], &[&TLS13, &TLS12]),
    )
    .await;
    let mut h1 = TlsClient::connect(
        gateway.addr,
        pki.client_config(&[HTTP11], &[&TLS13, &TLS12]),
    )
    .await;
    assert_eq!(h2.alpn.as_deref(), Some(H2));
    assert_eq!(h1.alpn.as_deref(), Some(HTTP11));
    assert_eq!(h2.peer, leaf.der);

    let body = chat("over tls", json!({"tokens": 40, "interval_ms": 50}));
    let first = h2.send(h2.post("/v1/chat/completions", body.clone())).await;
    let second = h1.send(h1.post("/v1/chat/completions", body)).await;
    assert_eq!(first.version(), Version::HTTP_2);
    assert_eq!(second.version(), Version::HTTP_11);
    assert_eq!(first.headers()["content-type"], "text/event-stream");
    let roles = [role(&first), role(&second)];
    assert_eq!(roles, ["leader", "follower"]);

    let (first, second) = tokio::join!(text(first), text(second));
    assert_eq!(first, second);
    assert_eq!(
        events(first.as_bytes()).last().map(String::as_str),
        Some("[DONE]")
    );
    assert_eq!(upstream.stats.requests(), 1);

    // The upstream is told the client came over https.
    let echo = text(h2.send(h2.post("/echo", "{}")).await).await;
    let headers = json_of(&echo)["headers"].clone();
    assert!(
        headers
            .as_array()
            .unwrap()
            .contains(&json!(["x-forwarded-proto", "https"])),
        "{echo}"
    );
    gateway.assert_idle().await;
}

#[tokio::test]
async fn tls_port_speaks_tls_1_2_and_1_3_only() {
    let pki = Pki::new();
    let leaf = pki.server("gateway", GATEWAY_NAMES);
    let upstream = Upstream::start().await;
    let gateway = tls_gateway(&upstream.url(), &leaf, RunOptions::default()).await;

    let tls13 = TlsClient::connect(gateway.addr, pki.client_config(&[H2], &[&TLS13])).await;
    assert_eq!(tls13.version, ProtocolVersion::TLSv1_3);
    let mut tls12 = TlsClient::connect(gateway.addr, pki.client_config(&[H2], &[&TLS12])).await;
    assert_eq!(tls12.version, ProtocolVersion::TLSv1_2);
    assert_eq!(tls12.alpn.as_deref(), Some(H2));
    let response = tls12.send(tls12.post("/echo", "{}")).await;
    assert_eq!(response.status(), 200);

    // A TLS 1.1 ClientHello (no supported_versions extension) is answered
    // with a fatal protocol_version alert, never a ServerHello.
    let (closed, reply) = closes_after(gateway.addr, &tls_1_1_client_hello()).await;
    assert!(closed, "the connection stayed open");
    assert_eq!(reply.first(), Some(&0x15), "not an alert record: {reply:?}");
    assert_eq!(
        reply.get(5..7),
        Some(&[2u8, 70][..]),
        "not protocol_version: {reply:?}"
    );
}

/// A minimal TLS 1.1 ClientHello record.
fn tls_1_1_client_hello() -> Vec<u8> {
    let mut hello = vec![0x03, 0x02]; // client_version TLS 1.1
    hello.extend([7u8; 32]); // random
    hello.push(0); // no session id
    hello.extend([0x00, 0x04, 0xc0, 0x2b, 0xc0, 0x2f]); // ECDHE AES-128-GCM suites
    hello.extend([0x01, 0x00]); // null compression
    // Extensions: signature_algorithms (ecdsa_secp256r1_sha256) and
    // supported_groups (x25519, secp256r1), so that only the version is wrong.
    hello.extend([0x00, 0x12]);
    hello.extend([0x00, 0x0d, 0x00, 0x04, 0x00, 0x02, 0x04, 0x03]);
    hello.extend([0x00, 0x0a, 0x00, 0x06, 0x00, 0x04, 0x00, 0x1d, 0x00, 0x17]);
    let mut handshake = vec![0x01, 0x00, 0x00, u8::try_from(hello.len()).unwrap()];
    handshake.extend(hello);
    let mut record = vec![
        0x16,
        0x03,
        0x01,
        0x00,
        u8::try_from(handshake.len()).unwrap(),
    ];
    record.extend(handshake);
    record
}

#[tokio::test]
async fn plain_http_and_garbage_on_the_tls_port_disturb_nobody() {
    let pki = Pki::new();
    let leaf = pki.server("gateway", GATEWAY_NAMES);
    let upstream = Upstream::start().await;
    let gateway = tls_gateway(&upstream.url(), &leaf, RunOptions::default()).await;
    let config = pki.client_config(&[H2], &[&TLS13, &TLS12]);

    let mut client = TlsClient::connect(gateway.addr, config.clone()).await;
    let body = chat("steady", json!({"tokens": 20, "interval_ms": 50}));
    let (first, stream) = first_frame(&mut client, body).await;

    // Plain HTTP gets a plain 400 that says what to do.
    let (closed, reply) = closes_after(
        gateway.addr,
        b"GET /v1/models HTTP/1.1\r\nHost: localhost\r\n\r\n",
    )
    .await;
    let reply = String::from_utf8_lossy(&reply).into_owned();
    assert!(closed);
    assert!(reply.starts_with("HTTP/1.1 400 "), "{reply}");
    assert!(reply.contains("https://"), "{reply}");
    assert!(reply.contains("x-chorus-role: bypass"), "{reply}");
    // Counted as the gateway's other 400s are.
    for series in [
        r#"chorus_requests_total{route="",role="bypass"}"#,
        r#"chorus_responses_total{route="",status="400"}"#,
    ] {
        let count = gateway.wait_metric(series, |count| count == 1.0).await;
        assert_eq!(count, 1.0, "{series}");
    }
    // A broken handshake record, and bytes that are no protocol at all.
    let broken = [0x16, 0x03, 0x01, 0x00, 0x05, 0xde, 0xad, 0xbe, 0xef, 0x00];
    assert!(closes_after(gateway.addr, &broken).await.0);
    assert!(
        closes_after(gateway.addr, &[0x00, 0xff, 0x13, 0x37, 0x0a])
            .await
            .0
    );
    // A new client is served meanwhile.
    let mut other = TlsClient::connect(gateway.addr, config).await;
    assert_eq!(other.send(other.post("/echo", "{}")).await.status(), 200);

    let events = events_after(first, stream).await;
    assert_eq!(events.len(), 23, "a role, 20 tokens, a finish, [DONE]");
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    gateway.assert_idle().await;
}

#[tokio::test]
async fn a_silent_or_stalled_handshake_is_closed_after_the_timeout() {
    let pki = Pki::new();
    let leaf = pki.server("gateway", GATEWAY_NAMES);
    let upstream = Upstream::start().await;
    let toml = format!(
        r#"
[server]
listen = "127.0.0.1:0"
header_read_timeout = "1s"
[server.tls]
cert = {:?}
key = {:?}
[[routes]]
name = "llm"
upstream = "{}"
"#,
        leaf.cert,
        leaf.key,
        upstream.url()
    );
    let gateway = Gateway::start(&toml).await;

    let started = Instant::now();
    let (silent, partial) = tokio::join!(
        closes_after(gateway.addr, b""),
        closes_after(gateway.addr, &[0x16, 0x03, 0x01]),
    );
    assert!(silent.0, "a connection that says nothing was kept open");
    assert!(partial.0, "a handshake that stalls was kept open");
    assert!(started.elapsed() >= Duration::from_millis(900));
    let mut client = TlsClient::connect(gateway.addr, pki.client_config(&[H2], &[&TLS13])).await;
    assert_eq!(client.send(client.post("/echo", "{}")).await.status(), 200);
}

/// A handshake not done when the drain begins does not hold the drain up
/// for the handshake timeout (10 s): it is dropped, as an idle connection is.
#[tokio::test]
async fn a_handshake_not_done_does_not_hold_up_the_drain() {
    let pki = Pki::new();
    let leaf = pki.server("gateway", GATEWAY_NAMES);
    let upstream = Upstream::start().await;
    // A grace longer than the handshake timeout, which it would wait out.
    let toml = one_route(&upstream.url(), "")
        .replace(r#"shutdown_grace = "5s""#, r#"shutdown_grace = "60s""#);
    let gateway = Gateway::start(&with_server_tls(&toml, &leaf)).await;
    let mut silent = TcpStream::connect(gateway.addr).await.unwrap();
    let mut stalled = TcpStream::connect(gateway.addr).await.unwrap();
    stalled.write_all(&[0x16, 0x03, 0x01]).await.unwrap();
    let open = gateway
        .wait_metric("chorus_connections_active", |count| count == 2.0)
        .await;
    assert_eq!(open, 2.0);

    let started = Instant::now();
    gateway.stop().await.unwrap();
    let took = started.elapsed();
    assert!(took < Duration::from_secs(5), "the drain took {took:?}");
    for stream in [&mut silent, &mut stalled] {
        let mut byte = [0u8; 1];
        let read = tokio::time::timeout(PATIENCE, stream.read(&mut byte)).await;
        assert!(matches!(read, Ok(Ok(0) | Err(_))), "left open: {read:?}");
    }
}

// ---------------------------------------------------------------------------
// Certificate reload
// ---------------------------------------------------------------------------

#[tokio::test]
async fn reload_serves_the_new_certificate_to_new_connections_only() {
    let (pki, old, new, live) = rotation();
    let upstream = Upstream::start().await;
    let gateway = tls_gateway(&upstream.url(), &live, polling(None)).await;
    let config = pki.client_config(&[H2], &[&TLS13, &TLS12]);

    let mut before = TlsClient::connect(gateway.addr, config.clone()).await;
    assert_eq!(before.peer, old.der);
    let body = chat("rotation", json!({"tokens": 10, "interval_ms": 200}));
    let (first, stream) = first_frame(&mut before, body).await;

    new.write_to(&live.cert, &live.key);
    let reloaded = gateway.reload.reload().await.unwrap();
    let Reloaded::Replaced { fingerprint } = reloaded else {
        panic!("nothing was reloaded: {reloaded:?}");
    };
    assert_eq!(fingerprint.len(), 95, "{fingerprint}");

    let mut after = TlsClient::connect(gateway.addr, config).await;
    assert_eq!(after.peer, new.der);
    assert_eq!(after.send(after.post("/echo", "{}")).await.status(), 200);
    // The connection from before is untouched: it takes new requests too.
    assert_eq!(before.send(before.post("/echo", "{}")).await.status(), 200);

    let events = events_after(first, stream).await;
    assert_eq!(events.len(), 13, "a role, 10 tokens, a finish, [DONE]");
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    gateway.assert_idle().await;
}

#[tokio::test]
async fn a_bad_new_pair_is_refused_and_the_old_one_kept() {
    let (pki, old, new, live) = rotation();
    let upstream = Upstream::start().await;
    let gateway = tls_gateway(&upstream.url(), &live, polling(None)).await;
    let config = pki.client_config(&[H2], &[&TLS13]);
    // Up and serving before the files change under it.
    assert_eq!(
        TlsClient::connect(gateway.addr, config.clone()).await.peer,
        old.der
    );

    // A key that belongs to another certificate.
    std::fs::write(&live.cert, &new.cert_pem).unwrap();
    let refused = gateway.reload.reload().await.unwrap_err();
    assert!(matches!(refused, ReloadError::Refused(_)), "{refused}");
    assert!(refused.to_string().contains("does not match"), "{refused}");
    assert_eq!(
        TlsClient::connect(gateway.addr, config.clone()).await.peer,
        old.der
    );

    // Not PEM at all.
    std::fs::write(&live.cert, "-----BEGIN CERTIFICATE-----\nnot base64!\n").unwrap();
    let refused = gateway.reload.reload().await.unwrap_err();
    assert!(
        refused.to_string().contains(&*live.cert.to_string_lossy()),
        "{refused}"
    );
    assert_eq!(
        TlsClient::connect(gateway.addr, config.clone()).await.peer,
        old.der
    );

    // A good pair is taken again.
    new.write_to(&live.cert, &live.key);
    assert!(matches!(
        gateway.reload.reload().await,
        Ok(Reloaded::Replaced { .. })
    ));
    assert_eq!(TlsClient::connect(gateway.addr, config).await.peer, new.der);
}

#[tokio::test]
async fn changed_certificate_files_are_picked_up_without_a_signal() {
    let (pki, old, new, live) = rotation();
    let upstream = Upstream::start().await;
    let polled = polling(Some(Duration::from_millis(100)));
    let gateway = tls_gateway(&upstream.url(), &live, polled).await;
    let config = pki.client_config(&[H2], &[&TLS13]);
    assert_eq!(
        TlsClient::connect(gateway.addr, config.clone()).await.peer,
        old.der
    );

    new.rename_over(&live.cert, &live.key);
    let seen = eventually(Duration::from_millis(50), || {
        let config = config.clone();
        let addr = gateway.addr;
        let new = new.der.clone();
        async move { (TlsClient::connect(addr, config).await.peer == new).then_some(()) }
    })
    .await;
    assert!(seen.is_some(), "the new certificate was never served");
}

#[tokio::test]
async fn reload_without_tls_has_nothing_to_do() {
    let upstream = Upstream::start().await;
    let gateway = Gateway::start(&one_route(&upstream.url(), "")).await;
    assert!(matches!(gateway.reload.reload().await, Ok(Reloaded::NoTls)));
    gateway.stop().await.unwrap();
}

// ---------------------------------------------------------------------------
// Upstreams over TLS
// ---------------------------------------------------------------------------

/// Posts `body` to `path` through a plain-HTTP gateway; status and body text.
async fn through(gateway: &Gateway, path: &str, body: String) -> (u16, String) {
    let response = send(&http1(), post(&gateway.url(path), body)).await;
    let status = response.status().as_u16();
    (status, text(response).await)
}

/// The built-in mock behind an https terminator: its certificate from
/// `pki` for `names`, `alpn` offered, client certificates from `client_ca`
/// asked for when given.
async fn tls_upstream(
    pki: &Pki,
    names: &[&str],
    alpn: &[&[u8]],
    client_ca: Option<&Pki>,
) -> (Upstream, TlsUpstream) {
    let mock = Upstream::start().await;
    let leaf = pki.server("upstream", names);
    let tls = TlsUpstream::start(mock.addr, &leaf, alpn, client_ca).await;
    (mock, tls)
}

fn ca_file(pki: &Pki) -> String {
    format!("upstream_ca_file = {:?}", pki.ca)
}

#[tokio::test]
async fn https_upstream_with_a_private_ca_speaks_h2_and_pools() {
    let pki = Pki::new();
    let (_mock, tls) = tls_upstream(&pki, &["127.0.0.1"], &[H2, HTTP11], None).await;
    let gateway = Gateway::start(&one_route(&tls.url(), &ca_file(&pki))).await;

    let (status, echo) = through(&gateway, "/echo", "{}".to_owned()).await;
    assert_eq!(status, 200, "{echo}");
    assert_eq!(json_of(&echo)["version"], "HTTP/2");
    // `:authority` only: nginx 1.22 refuses a request with `Host` too.
    assert!(echoed(&json_of(&echo), "host").is_empty(), "{echo}");
    let (status, stream) = through(
        &gateway,
        "/v1/chat/completions",
        chat("tls", json!({"tokens": 3, "interval_ms": 10})),
    )
    .await;
    assert_eq!(status, 200, "{stream}");
    assert_eq!(
        events(stream.as_bytes()).last().map(String::as_str),
        Some("[DONE]")
    );
    assert_eq!(
        tls.handshakes(),
        1,
        "the upstream connection was not reused"
    );
}

/// A plain h2 backend (put a [`TlsUpstream`] in front) that resets its
/// first stream with REFUSED_STREAM and answers every other one; counts the
/// streams it was sent.
async fn refusing_h2_backend() -> (std::net::SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let streams = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&streams);
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let counted = Arc::clone(&counted);
            tokio::spawn(async move {
                let Ok(mut connection) = h2::server::handshake(tcp).await else {
                    return;
                };
                while let Some(Ok((_, mut respond))) = connection.accept().await {
                    if counted.fetch_add(1, Ordering::SeqCst) == 0 {
                        respond.send_reset(h2::Reason::REFUSED_STREAM);
                        continue;
                    }
                    let head = http::Response::new(());
                    if let Ok(mut body) = respond.send_response(head, false) {
                        let _ = body.send_data(Bytes::from_static(b"answered"), true);
                    }
                }
            });
        }
    });
    (addr, streams)
}

/// A stream an HTTP/2 upstream refuses (RST_STREAM REFUSED_STREAM) was not
/// processed, by RFC 9113: the gateway sends it again, and the client never
/// sees the refusal.
#[tokio::test]
async fn a_stream_the_h2_upstream_refuses_is_sent_again() {
    let pki = Pki::new();
    let (backend, streams) = refusing_h2_backend().await;
    let leaf = pki.server("upstream", &["127.0.0.1"]);
    let tls = TlsUpstream::start(backend, &leaf, &[H2], None).await;
    let gateway = Gateway::start(&one_route(&tls.url(), &ca_file(&pki))).await;
    let (status, body) = through(&gateway, "/v1/chat/completions", "{}".to_owned()).await;
    assert_eq!((status, body.as_str()), (200, "answered"));
    assert_eq!(streams.load(Ordering::SeqCst), 2);
}

/// What [`raw_h2_backend`] does on its first connection.
#[derive(Clone, Copy)]
enum Quirk {
    /// A graceful GOAWAY (`NO_ERROR`) naming no stream processed, in
    /// answer to the first stream, then the close.
    GoAwayFirst,
    /// Answers the first stream, then closes when the second comes, with
    /// no GOAWAY: an idle timeout meeting a request.
    CloseOnSecond,
    /// Answers with a head of 20,000 bytes, over h2's default limit.
    LargeHead,
    /// Answers no stream: a connection the upstream stopped serving.
    Silent,
    /// Answers with `content-length: 100`, 7 bytes, then RST_STREAM
    /// (NO_ERROR), the reset that may only end a complete answer early.
    ShortThenNoError,
}

/// An HTTP/2 backend written frame by frame (put a [`TlsUpstream`] in
/// front) whose first connection does as `quirk` says and which answers
/// every other stream with a `200` "answered"; counts the streams it was
/// sent.
async fn raw_h2_backend(quirk: Quirk) -> (std::net::SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let streams = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&streams);
    tokio::spawn(async move {
        let mut first = true;
        while let Ok((tcp, _)) = listener.accept().await {
            let quirk = std::mem::take(&mut first).then_some(quirk);
            tokio::spawn(raw_h2_connection(tcp, quirk, Arc::clone(&counted)));
        }
    });
    (addr, streams)
}

/// A gateway in front of a [`raw_h2_backend`] behind TLS (whose
/// terminator counts handshakes), and the backend's count of streams.
async fn behind_raw_h2(quirk: Quirk) -> (Gateway, TlsUpstream, Arc<AtomicUsize>, Pki) {
    behind_raw_h2_with(quirk, "").await
}

/// [`behind_raw_h2`], with `route_extra` in the route.
async fn behind_raw_h2_with(
    quirk: Quirk,
    route_extra: &str,
) -> (Gateway, TlsUpstream, Arc<AtomicUsize>, Pki) {
    let pki = Pki::new();
    let (backend, streams) = raw_h2_backend(quirk).await;
    let leaf = pki.server("upstream", &["127.0.0.1"]);
    let tls = TlsUpstream::start(backend, &leaf, &[H2], None).await;
    let route = format!("{}\n{route_extra}", ca_file(&pki));
    let gateway = Gateway::start(&one_route(&tls.url(), &route)).await;
    (gateway, tls, streams, pki)
}

async fn raw_h2_connection(mut tcp: TcpStream, quirk: Option<Quirk>, streams: Arc<AtomicUsize>) {
    use crate::h2_abuse::{
        CONTINUATION, END_HEADERS, END_STREAM, HEADERS, RST_STREAM, frame, literal,
    };
    const DATA: u8 = 0x0;
    const SETTINGS: u8 = 0x4;
    const GOAWAY: u8 = 0x7;
    let mut preface = [0u8; 24];
    if tcp.read_exact(&mut preface).await.is_err() {
        return;
    }
    let _ = tcp.write_all(&frame(SETTINGS, 0, 0, &[])).await;
    let mut answered = 0;
    loop {
        let mut head = [0u8; 9];
        if tcp.read_exact(&mut head).await.is_err() {
            return;
        }
        let length = usize::from(head[0]) << 16 | usize::from(head[1]) << 8 | usize::from(head[2]);
        let (kind, flags) = (head[3], head[4]);
        let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
        let mut payload = vec![0u8; length];
        if tcp.read_exact(&mut payload).await.is_err() {
            return;
        }
        match kind {
            SETTINGS if flags & 0x1 == 0 => {
                let _ = tcp.write_all(&frame(SETTINGS, 0x1, 0, &[])).await;
            }
            HEADERS => {
                streams.fetch_add(1, Ordering::SeqCst);
                match (quirk, answered) {
                    (Some(Quirk::GoAwayFirst), 0) => {
                        // Last stream 0, NO_ERROR.
                        let _ = tcp.write_all(&frame(GOAWAY, 0, 0, &[0; 8])).await;
                        return;
                    }
                    (Some(Quirk::CloseOnSecond), 1) => return,
                    _ => {}
                }
            }
            _ => {}
        }
        // Answered once the request has ended: `:status 200` (HPACK static 8).
        if matches!(kind, HEADERS | DATA) && flags & END_STREAM != 0 {
            if matches!(quirk, Some(Quirk::Silent)) {
                continue;
            }
            if matches!(quirk, Some(Quirk::ShortThenNoError)) {
                let mut block = vec![0x88];
                literal("content-length", b"100", &mut block);
                let mut answer = frame(HEADERS, END_HEADERS, stream, &block);
                answer.extend(frame(DATA, 0, stream, b"partial"));
                answer.extend(frame(RST_STREAM, 0, stream, &[0; 4]));
                let _ = tcp.write_all(&answer).await;
                continue;
            }
            let mut answer = if matches!(quirk, Some(Quirk::LargeHead)) {
                let mut block = vec![0x88];
                literal("x-large", &[b'a'; 20_000], &mut block);
                // Frames of at most 16 KiB, the default SETTINGS_MAX_FRAME_SIZE.
                let (first, rest) = block.split_at(16_000);
                let mut frames = frame(HEADERS, 0, stream, first);
                frames.extend(frame(CONTINUATION, END_HEADERS, stream, rest));
                frames
            } else {
                frame(HEADERS, END_HEADERS, stream, &[0x88])
            };
            answer.extend(frame(DATA, END_STREAM, stream, b"answered"));
            let _ = tcp.write_all(&answer).await;
            answered += 1;
        }
    }
}

/// A graceful GOAWAY from an HTTP/2 upstream names the last stream it
/// processed; those past it were not (RFC 9113 §6.8), and go again, POSTs
/// included, on a new connection.
#[tokio::test]
async fn a_stream_past_an_h2_upstreams_goaway_is_sent_again() {
    let (gateway, tls, streams, _pki) = behind_raw_h2(Quirk::GoAwayFirst).await;
    let (status, body) = through(&gateway, "/v1/chat/completions", "{}".to_owned()).await;
    assert_eq!((status, body.as_str()), (200, "answered"));
    assert_eq!(streams.load(Ordering::SeqCst), 2);
    assert_eq!(tls.handshakes(), 2);
}

/// An HTTP/2 upstream closing a connection that sat unused as a request
/// reaches it (its idle timeout) has not acted on the request: it goes again
/// on a new connection, as over HTTP/1.1 (`pool`).
#[tokio::test]
async fn a_stream_meeting_an_h2_upstreams_idle_close_is_sent_again() {
    let (gateway, tls, streams, _pki) = behind_raw_h2(Quirk::CloseOnSecond).await;
    let (status, body) = through(&gateway, "/v1/chat/completions", "{}".to_owned()).await;
    assert_eq!((status, body.as_str()), (200, "answered"));
    // Time is the subject: a POST goes again only from a connection unused
    // for a while (`pool::CLOSE_AFTER`, 100 ms).
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (status, body) = through(&gateway, "/v1/chat/completions", "{}".to_owned()).await;
    assert_eq!((status, body.as_str()), (200, "answered"));
    assert_eq!(streams.load(Ordering::SeqCst), 3);
    assert_eq!(tls.handshakes(), 2);
}

/// A response head over h2's default limit (16 KiB) passes, as it would
/// over HTTP/1.1.
#[tokio::test]
async fn a_large_response_head_from_an_h2_upstream_passes() {
    let (gateway, _tls, _, _pki) = behind_raw_h2(Quirk::LargeHead).await;
    let response = send(&http1(), post(&gateway.url("/v1/chat/completions"), "{}")).await;
    assert_eq!(response.status(), 200);
    assert_eq!(header(&response, "x-large").len(), 20_000);
    assert_eq!(text(response).await, "answered");
}

/// A stream left unanswered past `first_byte_timeout` (a 504) retires its
/// shared HTTP/2 connection, which the upstream may have stopped serving:
/// the next request goes on a new one, instead of every request timing out
/// on the old one.
#[tokio::test]
async fn an_h2_connection_whose_stream_timed_out_takes_no_new_streams() {
    let (gateway, tls, streams, _pki) =
        behind_raw_h2_with(Quirk::Silent, r#"first_byte_timeout = "1s""#).await;
    let (status, body) = through(&gateway, "/v1/chat/completions", "{}".to_owned()).await;
    assert_eq!(status, 504, "{body}");
    let (status, body) = through(&gateway, "/v1/chat/completions", "{}".to_owned()).await;
    assert_eq!((status, body.as_str()), (200, "answered"));
    assert_eq!(streams.load(Ordering::SeqCst), 2);
    assert_eq!(tls.handshakes(), 2);
}

/// hyper ends an HTTP/2 body cleanly at RST_STREAM(NO_ERROR), which may
/// only end a complete answer; one short of its `Content-Length` is a
/// break: the client's body ends abnormally, and the answer is not kept
/// for `linger` (the next identical request goes upstream again).
#[tokio::test]
async fn an_h2_body_reset_short_of_its_length_is_a_break() {
    let (gateway, _tls, streams, _pki) =
        behind_raw_h2_with(Quirk::ShortThenNoError, r#"coalesce.linger = "30s""#).await;
    for sent in 1..=2 {
        let response = send(&http1(), post(&gateway.url("/v1/chat/completions"), "{}")).await;
        assert_eq!(response.status(), 200);
        assert!(body(response).await.is_err(), "a clean end of a cut body");
        assert_eq!(streams.load(Ordering::SeqCst), sent);
    }
}

/// Clients that stop reading their one-to-one streams hold only those
/// streams' windows of the shared HTTP/2 upstream connection
/// (`pool::STREAM_WINDOW`), never the whole connection's: another request
/// on it still gets its whole answer.
#[tokio::test]
async fn stalled_streams_leave_a_shared_h2_connection_to_the_others() {
    let pki = Pki::new();
    let (mock, tls) = tls_upstream(&pki, &["127.0.0.1"], &[H2], None).await;
    let route = format!("{}\nidle_timeout = \"5s\"", ca_file(&pki));
    let gateway = Gateway::start(&one_route(&tls.url(), &route)).await;
    let mut stalled = Vec::new();
    for n in 0..4 {
        let body = chat(
            &format!("large {n}"),
            json!({"tokens": 100_000, "interval_ms": 0}),
        );
        stalled.push(stalled_client(&gateway, &body).await);
    }
    // No signal says the windows are full but the upstream's count of events
    // staying the same while four streams of 100,000 are unfinished.
    let mut sent = mock.stats.events_sent();
    let mut same = 0;
    while same < 10 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = mock.stats.events_sent();
        same = if now == sent { same + 1 } else { 0 };
        sent = now;
    }
    assert!(sent < 400_000, "the stalled streams were read to their end");
    let small = chat("small", json!({"tokens": 3, "interval_ms": 0}));
    let (status, answer) = through(&gateway, "/v1/chat/completions", small).await;
    assert_eq!(status, 200);
    assert_eq!(
        events(answer.as_bytes()).last().map(String::as_str),
        Some("[DONE]")
    );
    assert_eq!(
        tls.handshakes(),
        1,
        "the streams did not share a connection"
    );
    drop(stalled);
}

/// A client that asks for `body` one to one, then reads nothing, with a
/// small receive buffer.
async fn stalled_client(gateway: &Gateway, body: &str) -> TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut tcp = socket.connect(gateway.addr).await.unwrap();
    let head = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: chorus\r\nx-chorus-coalesce: off\r\n\
         content-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    tcp.write_all(head.as_bytes()).await.unwrap();
    tcp
}

/// One HTTP/2 connection carries up to 100 streams (`pool::MAX_STREAMS`);
/// the next one goes on a second connection instead of waiting, behind
/// long streams, for one of them to end.
#[tokio::test]
async fn past_100_streams_a_second_h2_connection_is_opened() {
    assert_eq!(handshakes_for_long_streams(H2, 101).await, 2);
}

/// Requests that find no connection to an HTTP/2 upstream (a cold start)
/// wait for the first one and share it, rather than a handshake each.
#[tokio::test]
async fn a_cold_burst_to_an_h2_upstream_shares_one_connection() {
    assert_eq!(handshakes_for_long_streams(H2, 50).await, 1);
}

/// Behind TLS, an upstream that turns out to speak only HTTP/1.1: the
/// requests that waited for the first connection each make their own.
#[tokio::test]
async fn a_cold_burst_to_an_http1_tls_upstream_gets_a_connection_each() {
    assert_eq!(handshakes_for_long_streams(HTTP11, 20).await, 20);
}

/// The requests that waited for a first connection that failed get its failure.
#[tokio::test]
async fn a_cold_burst_to_an_untrusted_upstream_is_502_for_every_request() {
    let pki = Pki::new();
    let (mock, tls) = tls_upstream(&pki, &["127.0.0.1"], &[H2, HTTP11], None).await;
    let gateway = Gateway::start(&one_route(&tls.url(), "")).await;
    let answers = futures::future::join_all((0..10).map(|index| {
        through(
            &gateway,
            "/v1/chat/completions",
            chat(&format!("untrusted {index}"), json!({})),
        )
    }))
    .await;
    for (status, body) in answers {
        assert_eq!(status, 502, "{body}");
        assert!(error_message(&body).contains("UnknownIssuer"), "{body}");
    }
    assert_eq!(mock.stats.requests(), 0);
    gateway.assert_idle().await;
}

/// TLS handshakes the gateway makes to a fresh upstream offering `alpn` for
/// `count` concurrent distinct streams, each outlasting the wait for all
/// their heads (which must all be 200).
async fn handshakes_for_long_streams(alpn: &[u8], count: usize) -> u64 {
    let pki = Pki::new();
    let (_mock, tls) = tls_upstream(&pki, &["127.0.0.1"], &[alpn], None).await;
    let gateway = Gateway::start(&one_route(&tls.url(), &ca_file(&pki))).await;
    let client = http1();
    let url = gateway.url("/v1/chat/completions");
    let heads = futures::future::join_all((0..count).map(|index| {
        let body = chat(
            &format!("stream {index}"),
            json!({"tokens": 200, "interval_ms": 50}),
        );
        send(&client, post(&url, body))
    }))
    .await;
    assert!(heads.iter().all(|head| head.status() == 200));
    let handshakes = tls.handshakes();
    drop(heads);
    gateway.assert_idle().await;
    handshakes
}

#[tokio::test]
async fn https_upstream_without_h2_gets_http1_and_pools() {
    let pki = Pki::new();
    let (_mock, tls) = tls_upstream(&pki, &["127.0.0.1"], &[HTTP11], None).await;
    let gateway = Gateway::start(&one_route(&tls.url(), &ca_file(&pki))).await;

    for _ in 0..2 {
        let (status, echo) = through(&gateway, "/echo", "{}".to_owned()).await;
        assert_eq!(status, 200, "{echo}");
        assert_eq!(json_of(&echo)["version"], "HTTP/1.1");
    }
    assert_eq!(
        tls.handshakes(),
        1,
        "the upstream connection was not reused"
    );
}

#[tokio::test]
async fn untrusted_upstream_certificate_is_a_502_that_names_it() {
    let pki = Pki::new();
    let (mock, tls) = tls_upstream(&pki, &["127.0.0.1"], &[H2, HTTP11], None).await;
    // Only the built-in web roots: the private CA is unknown.
    let gateway = Gateway::start(&one_route(&tls.url(), "")).await;

    let (status, body) = through(&gateway, "/v1/chat/completions", chat("x", json!({}))).await;
    assert_eq!(status, 502, "{body}");
    let message = error_message(&body);
    assert!(message.contains("certificate"), "{message}");
    assert!(message.contains("UnknownIssuer"), "{message}");
    assert_eq!(mock.stats.requests(), 0);
    assert_eq!(tls.handshakes(), 0);
}

#[tokio::test]
async fn upstream_certificate_for_another_host_is_refused() {
    let pki = Pki::new();
    let (mock, tls) = tls_upstream(&pki, &["api.other.example"], &[H2, HTTP11], None).await;
    let gateway = Gateway::start(&one_route(&tls.url(), &ca_file(&pki))).await;

    let (status, body) = through(&gateway, "/v1/chat/completions", chat("x", json!({}))).await;
    assert_eq!(status, 502, "{body}");
    let message = error_message(&body);
    assert!(message.contains("certificate"), "{message}");
    assert!(message.contains("not valid for name"), "{message}");
    assert_eq!(mock.stats.requests(), 0);
}

/// A self-signed certificate marked as a CA (what `openssl req -x509`
/// makes), given as `upstream_ca_file`, is trusted as the upstream's own,
/// for the names it holds only; another such certificate is not.
#[tokio::test]
async fn a_self_signed_ca_certificate_in_upstream_ca_file_is_trusted_for_its_names() {
    let pki = Pki::new();
    let own = pki.self_signed_ca("own", &["127.0.0.1"]);
    let mock = Upstream::start().await;
    let tls = TlsUpstream::start(mock.addr, &own, &[H2, HTTP11], None).await;
    let trusting = |cert: &std::path::Path| format!("upstream_ca_file = {cert:?}");

    let gateway = Gateway::start(&one_route(&tls.url(), &trusting(&own.cert))).await;
    let (status, body) = through(&gateway, "/v1/chat/completions", chat("own", json!({}))).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(mock.stats.requests(), 1);

    let other = pki.self_signed_ca("other", &["127.0.0.1"]);
    let gateway = Gateway::start(&one_route(&tls.url(), &trusting(&other.cert))).await;
    let (status, body) = through(&gateway, "/v1/chat/completions", chat("own", json!({}))).await;
    assert_eq!(status, 502, "{body}");
    assert!(error_message(&body).contains("CaUsedAsEndEntity"), "{body}");

    let elsewhere = pki.self_signed_ca("elsewhere", &["api.other.example"]);
    let tls = TlsUpstream::start(mock.addr, &elsewhere, &[H2, HTTP11], None).await;
    let gateway = Gateway::start(&one_route(&tls.url(), &trusting(&elsewhere.cert))).await;
    let (status, body) = through(&gateway, "/v1/chat/completions", chat("own", json!({}))).await;
    assert_eq!(status, 502, "{body}");
    assert!(
        error_message(&body).contains("not valid for name"),
        "{body}"
    );
    assert_eq!(mock.stats.requests(), 1);
}

#[tokio::test]
async fn mutual_tls_upstream_needs_the_client_certificate() {
    let pki = Pki::new();
    let client = pki.client("client");
    let (mock, tls) = tls_upstream(&pki, &["127.0.0.1"], &[H2, HTTP11], Some(&pki)).await;

    let with_cert = format!(
        "{}\nupstream_client_cert = {:?}\nupstream_client_key = {:?}",
        ca_file(&pki),
        client.cert,
        client.key
    );
    let gateway = Gateway::start(&one_route(&tls.url(), &with_cert)).await;
    let (status, body) = through(
        &gateway,
        "/v1/chat/completions",
        chat("mtls", json!({"tokens": 2, "interval_ms": 1})),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(mock.stats.requests(), 1);

    let gateway = Gateway::start(&one_route(&tls.url(), &ca_file(&pki))).await;
    let (status, body) =
        through(&gateway, "/v1/chat/completions", chat("no cert", json!({}))).await;
    assert_eq!(status, 502, "{body}");
    let message = error_message(&body);
    assert!(message.to_lowercase().contains("certificate"), "{message}");
    assert_eq!(
        mock.stats.requests(),
        1,
        "the upstream saw a request without a certificate"
    );
}

#[tokio::test]
async fn a_stalled_upstream_handshake_is_a_504_after_connect_timeout() {
    // Accepts TCP, then says nothing: the TLS handshake never completes.
    let silent = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("https://{}", silent.local_addr().unwrap());
    let held = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = silent.accept().await {
            held.push(stream);
        }
    });
    let gateway = Gateway::start(&one_route(&url, "connect_timeout = \"500ms\"")).await;

    let started = Instant::now();
    let (status, body) = through(&gateway, "/v1/chat/completions", chat("x", json!({}))).await;
    assert_eq!(status, 504, "{body}");
    assert!(started.elapsed() < Duration::from_secs(10));
    let error = &json_of(&body)["error"];
    assert_eq!(error["type"], "upstream_timeout");
    assert!(error["message"].as_str().unwrap().contains("TLS"), "{body}");
    held.abort();
}

/// A client that leaves while its upstream connection is still being made
/// (here, a TLS handshake the upstream never answers) takes the request
/// with it: nothing reached the upstream, so nothing is counted as sent or
/// cancelled, coalesced or bypassed.
#[tokio::test]
async fn a_request_whose_client_leaves_while_connecting_is_not_counted_as_sent() {
    let silent = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("https://{}", silent.local_addr().unwrap());
    let gateway = Gateway::start(&one_route(&url, "connect_timeout = \"30s\"")).await;
    for bypass in [false, true] {
        let mut request = post(&gateway.url("/v1/chat/completions"), chat("x", json!({})));
        if bypass {
            request
                .headers_mut()
                .insert("x-chorus-coalesce", HeaderValue::from_static("off"));
        }
        let client = http1();
        let leaving = tokio::spawn(async move { send(&client, request).await });
        let (mut handshake, _) = tokio::time::timeout(PATIENCE, silent.accept())
            .await
            .expect("no upstream connection")
            .unwrap();
        leaving.abort();
        // The gateway gives up the connection it was making.
        let mut rest = Vec::new();
        let read = tokio::time::timeout(PATIENCE, handshake.read_to_end(&mut rest)).await;
        assert!(read.is_ok(), "the upstream connection stayed open");
        gateway.assert_idle().await;
        let role = if bypass { "bypass" } else { "leader" };
        let requests = format!("chorus_requests_total{{route=\"llm\",role=\"{role}\"}}");
        assert_eq!(gateway.metric(&requests).await, 1.0);
        for sent in ["upstream_requests", "upstream_cancelled"] {
            let series = format!("chorus_{sent}_total{{route=\"llm\"}}");
            assert_eq!(
                gateway.metric(&series).await,
                0.0,
                "{sent}, bypass {bypass}"
            );
        }
    }
}

// ---------------------------------------------------------------------------
// The binary: `chorus check` and SIGHUP
// ---------------------------------------------------------------------------

#[tokio::test]
async fn check_names_a_mismatched_pair_and_exits_2() {
    let pki = Pki::new();
    let one = pki.server("one", GATEWAY_NAMES);
    let two = pki.server("two", GATEWAY_NAMES);
    let config = pki.path("chorus.toml");
    let toml = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n[server.tls]\ncert = {:?}\nkey = {:?}\n\
         [[routes]]\nname = \"llm\"\nupstream = \"http://127.0.0.1:9\"\n",
        one.cert, two.key
    );
    std::fs::write(&config, toml).unwrap();

    let path = config.to_str().unwrap();
    for command in ["check", "run"] {
        let (status, _, stderr) = chorus(&[command, "--config", path], &[]).await;
        assert_eq!(status.code(), Some(2), "{command}: {stderr}");
        let line = format!("{}: server.tls.key: ", config.display());
        assert!(stderr.contains(&line), "{command}: {stderr}");
        assert!(stderr.contains("does not match"), "{command}: {stderr}");
    }

    // With other problems beside them, the files' own are reported too.
    let more = pki.path("more.toml");
    let toml = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nshutdown_grace = \"xx\"\n[server.tls]\n\
         cert = {:?}\nkey = {:?}\n[[routes]]\nname = \"llm\"\n\
         upstream = \"https://127.0.0.1:9\"\nupstream_ca_file = {:?}\n",
        one.cert, two.key, one.key
    );
    std::fs::write(&more, toml).unwrap();
    let (status, _, stderr) = chorus(&["check", "--config", more.to_str().unwrap()], &[]).await;
    assert_eq!(status.code(), Some(2), "{stderr}");
    let keys: Vec<&str> = stderr
        .lines()
        .filter_map(|line| line.split(": ").nth(1))
        .collect();
    assert_eq!(
        keys,
        [
            "server.shutdown_grace",
            "server.tls.key",
            "routes[0].upstream_ca_file"
        ],
        "{stderr}"
    );

    // The same files in the right pairs pass.
    std::fs::write(
        &config,
        std::fs::read_to_string(&config)
            .unwrap()
            .replace("two.key", "one.key"),
    )
    .unwrap();
    let (status, _, stderr) = chorus(&["check", "--config", path], &[]).await;
    assert!(status.success(), "{stderr}");
}

#[tokio::test]
async fn sighup_makes_the_running_binary_serve_the_new_certificate() {
    let (pki, old, new, live) = rotation();
    let upstream = Upstream::start().await;
    // The binary binds by itself: take a free port and hand it over.
    let addr = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    let config = pki.path("chorus.toml");
    let toml = with_server_tls(
        &format!(
            "[server]\nlisten = \"{addr}\"\nshutdown_grace = \"5s\"\n\
             [[routes]]\nname = \"llm\"\nupstream = \"{}\"\n",
            upstream.url()
        ),
        &live,
    );
    std::fs::write(&config, toml).unwrap();
    let mut chorus = tokio::process::Command::new(env!("CARGO_BIN_EXE_chorus"))
        .args(["run", "--config"])
        .arg(&config)
        .env("RUST_LOG", "info")
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let pid = chorus.id().unwrap().to_string();
    let mut log = BufReader::new(chorus.stderr.take().unwrap()).lines();
    let client = pki.client_config(&[H2], &[&TLS13]);

    let first = eventually(Duration::from_millis(50), || {
        let client = client.clone();
        async move { TlsClient::try_connect(addr, client).await.ok() }
    })
    .await
    .expect("the binary never served TLS");
    assert_eq!(first.peer, old.der);

    new.rename_over(&live.cert, &live.key);
    let status = std::process::Command::new("kill")
        .args(["-HUP", &pid])
        .status()
        .unwrap();
    assert!(status.success());
    // The files are polled too, but only every 5 s: this reload is SIGHUP's.
    let reloaded = tokio::time::timeout(PATIENCE, async {
        let mut hangup = false;
        while let Ok(Some(line)) = log.next_line().await {
            hangup |= line.contains("SIGHUP");
            if line.contains("server certificate reloaded") {
                return hangup;
            }
        }
        false
    })
    .await;
    assert_eq!(reloaded, Ok(true), "no reload on SIGHUP in the log");
    assert!(
        chorus.try_wait().unwrap().is_none(),
        "SIGHUP ended the process"
    );
    assert_eq!(TlsClient::connect(addr, client).await.peer, new.der);

    let status = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(status.success());
    // Keep reading the log so that the pipe never fills.
    let drain = tokio::spawn(async move { while let Ok(Some(_)) = log.next_line().await {} });
    let exit = tokio::time::timeout(PATIENCE, chorus.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(exit.success(), "{exit}");
    drain.abort();
}
