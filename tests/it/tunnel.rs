//! WebSocket handshakes on a route with `websocket = true`: the upstream
//! gets the handshake, and after its `101` the connection is a tunnel of
//! bytes both ways until a side closes, it falls silent, or the shutdown
//! grace runs out; over TLS on either side too. Without the key, `Upgrade`
//! stops at the gateway.

use std::net::SocketAddr;
use std::time::Duration;

use rustls::pki_types::ServerName;
use rustls::version::TLS13;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_rustls::TlsConnector;

use crate::support::{Captured, Gateway, PATIENCE, metric_value, one_route, read_to_close};
use crate::tls::fixtures::{H2, HTTP11, Pki, TlsUpstream};

const HANDSHAKE: &str = "GET /v1/realtime?model=m HTTP/1.1\r\n\
    host: gateway.test\r\n\
    connection: keep-alive, Upgrade\r\n\
    upgrade: websocket\r\n\
    sec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
    sec-websocket-version: 13\r\n\
    x-chorus-debug: 1\r\n\r\n";

/// What the upstream answers a handshake with.
#[derive(Clone, Copy)]
pub(crate) enum Answer {
    /// `101`, then every byte echoed back until the gateway closes.
    Echo,
    /// `101`, one echo, then the upstream closes.
    EchoOnceThenClose,
    /// `403` with a body: the handshake refused.
    Refuse,
    /// `200` with a body: the handshake not understood.
    Ignore,
    /// `101` with an accept that answers some other key.
    WrongAccept,
}

/// What the test upstream saw.
#[derive(Debug)]
pub(crate) enum Seen {
    /// A request head, lowercased.
    Head(String),
    /// The gateway closed the tunnel's connection.
    Closed,
}

/// A raw TCP upstream that answers handshakes as `answer` says and reports
/// what it sees.
pub(crate) async fn upstream(answer: Answer) -> (SocketAddr, mpsc::UnboundedReceiver<Seen>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (seen, receiver) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let seen = seen.clone();
            tokio::spawn(async move {
                let Some(head) = read_head(&mut stream).await else {
                    return;
                };
                let _ = seen.send(Seen::Head(head.to_lowercase()));
                let asked = head.to_lowercase().contains("upgrade: websocket");
                let refusal = match answer {
                    _ if !asked => Some("426 Upgrade Required"),
                    Answer::Refuse => Some("403 Forbidden"),
                    Answer::Ignore => Some("200 OK"),
                    _ => None,
                };
                if let Some(status) = refusal {
                    let reply = format!("HTTP/1.1 {status}\r\ncontent-length: 2\r\n\r\nno");
                    let _ = stream.write_all(reply.as_bytes()).await;
                    return;
                }
                let key = match answer {
                    Answer::WrongAccept => "dGhlIHNhbXBsZSBub25jZQ==",
                    _ => key_of(&head),
                };
                let reply = format!(
                    "HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\n\
                     connection: Upgrade\r\nsec-websocket-accept: {}\r\n\r\n",
                    chorus::tunnel::accept_for(key)
                );
                let _ = stream.write_all(reply.as_bytes()).await;
                let mut buf = vec![0u8; 64 * 1024];
                loop {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(read) => {
                            if stream.write_all(&buf[..read]).await.is_err() {
                                break;
                            }
                            if matches!(answer, Answer::EchoOnceThenClose) {
                                return;
                            }
                        }
                    }
                }
                let _ = seen.send(Seen::Closed);
            });
        }
    });
    (addr, receiver)
}

/// The `Sec-WebSocket-Key` of a handshake's head ("" without one).
fn key_of(head: &str) -> &str {
    head.lines()
        .find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.eq_ignore_ascii_case("sec-websocket-key")
                .then_some(value.trim())
        })
        .unwrap_or_default()
}

/// Reads a message head (through its blank line) one byte at a time, so
/// that nothing after it is taken.
pub(crate) async fn read_head(stream: &mut (impl AsyncRead + Unpin)) -> Option<String> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match tokio::time::timeout(PATIENCE, stream.read(&mut byte)).await {
            Ok(Ok(1)) => head.push(byte[0]),
            _ => return None,
        }
    }
    String::from_utf8(head).ok()
}

pub(crate) async fn next(seen: &mut mpsc::UnboundedReceiver<Seen>) -> Seen {
    tokio::time::timeout(PATIENCE, seen.recv())
        .await
        .expect("the upstream saw nothing")
        .expect("the upstream stopped")
}

async fn gateway(upstream: SocketAddr, route_extra: &str) -> Gateway {
    Gateway::start(&one_route(&format!("http://{upstream}"), route_extra)).await
}

/// Connects and sends the handshake; returns the connection and the
/// response head, lowercased.
async fn handshake(gateway: &Gateway) -> (TcpStream, String) {
    handshake_then(gateway, b"").await
}

/// The same, with `after` sent in the same write as the handshake.
async fn handshake_then(gateway: &Gateway, after: &[u8]) -> (TcpStream, String) {
    let mut stream = TcpStream::connect(gateway.addr).await.unwrap();
    stream
        .write_all(&[HANDSHAKE.as_bytes(), after].concat())
        .await
        .unwrap();
    let head = read_head(&mut stream).await.expect("no response head");
    (stream, head.to_lowercase())
}

/// Sends `bytes` and reads the same number of bytes back.
pub(crate) async fn round_trip(
    stream: &mut (impl AsyncRead + AsyncWrite + Unpin),
    bytes: &[u8],
) -> Vec<u8> {
    stream.write_all(bytes).await.unwrap();
    let mut back = vec![0u8; bytes.len()];
    tokio::time::timeout(PATIENCE, stream.read_exact(&mut back))
        .await
        .expect("no echo in time")
        .expect("the tunnel closed");
    back
}

/// Round trips on `tunnel` every `pause` for `span`: it must stay open.
pub(crate) async fn keep_talking(
    tunnel: &mut (impl AsyncRead + AsyncWrite + Unpin),
    span: Duration,
    pause: Duration,
) {
    let talking = Instant::now();
    while talking.elapsed() < span {
        assert_eq!(round_trip(tunnel, b"ping").await, b"ping");
        tokio::time::sleep(pause).await;
    }
}

/// Stops `gateway` (its shutdown grace 2 s) with `tunnel` open: bytes flow
/// while it drains, the tunnel is cut when the grace runs out, and the
/// gateway exits cleanly.
pub(crate) async fn stop_with_open(
    gateway: Gateway,
    tunnel: &mut (impl AsyncRead + AsyncWrite + Unpin),
) {
    let (logs, _guard) = Captured::this_thread();
    let stopping = tokio::spawn(gateway.stop());
    keep_talking(
        tunnel,
        Duration::from_millis(500),
        Duration::from_millis(100),
    )
    .await;
    let (closed, _) = read_to_close(tunnel, Instant::now() + PATIENCE).await;
    assert!(closed, "the tunnel outlived the shutdown grace");
    let stopped = tokio::time::timeout(PATIENCE, stopping).await;
    assert!(matches!(stopped, Ok(Ok(Ok(())))), "{stopped:?}");
    // Its log line says so, with what it carried until then.
    let logs = logs.text();
    let cut: Vec<&str> = logs
        .lines()
        .filter(|line| line.contains(" tunnel ") && line.contains(r#"outcome="cut at shutdown""#))
        .collect();
    assert_eq!(cut.len(), 1, "{logs}");
    assert!(!cut[0].contains(" up=0 "), "{}", cut[0]);
}

/// The handshake the upstream saw, lowercased, checked for what every
/// handshake the tests send must carry upstream.
pub(crate) async fn handshake_upstream(seen: &mut mpsc::UnboundedReceiver<Seen>) -> String {
    let Seen::Head(sent) = next(seen).await else {
        panic!("no handshake upstream")
    };
    assert!(
        sent.starts_with("get /v1/realtime?model=m http/1.1"),
        "{sent}"
    );
    for line in [
        "upgrade: websocket",
        "connection: upgrade",
        "sec-websocket-version: 13",
        "x-forwarded-for: 127.0.0.1",
        "x-forwarded-host: gateway.test",
    ] {
        assert!(sent.contains(line), "no {line:?} upstream in\n{sent}");
    }
    assert!(!sent.contains("x-chorus-"), "{sent}");
    sent
}

/// Route "llm"'s open tunnels, and the bytes each way they carried.
pub(crate) async fn assert_tunnels(gateway: &Gateway, open: f64, bytes: f64) {
    let metrics = gateway.metrics().await;
    let series = |name: &str| metric_value(&metrics, name);
    assert_eq!(series("chorus_tunnels_active{route=\"llm\"}"), open);
    for direction in ["up", "down"] {
        let name = format!("chorus_tunnel_bytes_total{{route=\"llm\",direction=\"{direction}\"}}");
        assert_eq!(series(&name), bytes, "{direction}");
    }
}

/// A small and a large round trip on an echoing tunnel.
pub(crate) async fn both_ways(tunnel: &mut (impl AsyncRead + AsyncWrite + Unpin)) {
    assert_eq!(round_trip(tunnel, b"frame one").await, b"frame one");
    let large: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    assert_eq!(round_trip(tunnel, &large).await, large);
}

#[tokio::test]
async fn a_websocket_handshake_becomes_a_tunnel_both_ways() {
    let (addr, mut seen) = upstream(Answer::Echo).await;
    let gateway = gateway(addr, "websocket = true").await;
    let (mut client, head) = handshake(&gateway).await;

    assert!(head.starts_with("http/1.1 101"), "{head}");
    for line in [
        "upgrade: websocket",
        "connection: upgrade",
        "sec-websocket-accept: s3pplmbitxaq9kygzzhzrbk+xoo=",
        "x-chorus-role: bypass",
    ] {
        assert!(head.contains(line), "no {line:?} in\n{head}");
    }
    let sent = handshake_upstream(&mut seen).await;
    assert!(
        sent.contains("sec-websocket-key: dghlihnhbxbszsbub25jzq=="),
        "{sent}"
    );
    both_ways(&mut client).await;
    assert_tunnels(&gateway, 1.0, 300_009.0).await;
    assert_eq!(
        gateway
            .metric("chorus_requests_total{route=\"llm\",role=\"bypass\"}")
            .await,
        1.0
    );
    assert_eq!(
        gateway
            .metric("chorus_upstream_requests_total{route=\"llm\"}")
            .await,
        1.0
    );
    assert_eq!(gateway.metric("chorus_requests_active").await, 1.0);

    // The client leaving closes the upstream's side.
    drop(client);
    assert!(matches!(next(&mut seen).await, Seen::Closed));
    gateway
        .wait_metric("chorus_requests_active", |v| v == 0.0)
        .await;
    assert_eq!(gateway.metric("chorus_connections_active").await, 0.0);
    assert_tunnels(&gateway, 0.0, 300_009.0).await;
}

/// A client may send the new protocol's first bytes with the handshake,
/// before the `101` (RFC 6455 asks it to wait; not every client does):
/// they reach the upstream as sent, after the handshake.
#[tokio::test]
async fn bytes_sent_with_the_handshake_reach_the_upstream_untouched() {
    let (addr, mut seen) = upstream(Answer::Echo).await;
    let gateway = gateway(addr, "websocket = true").await;
    let early = b"\x81\x85early frame";
    let (mut client, head) = handshake_then(&gateway, early).await;
    assert!(head.starts_with("http/1.1 101"), "{head}");
    let mut echoed = vec![0u8; early.len()];
    tokio::time::timeout(PATIENCE, client.read_exact(&mut echoed))
        .await
        .expect("no echo in time")
        .expect("the tunnel closed");
    assert_eq!(echoed, early);
    handshake_upstream(&mut seen).await;
    assert_eq!(round_trip(&mut client, b"then more").await, b"then more");
}

/// Bytes sent with a handshake that is then refused were never read as
/// requests: the answer closes the connection, and nothing of them reaches
/// the upstream.
#[tokio::test]
async fn a_refused_handshake_with_bytes_after_it_closes_the_connection() {
    let (addr, mut seen) = upstream(Answer::Refuse).await;
    let gateway = gateway(addr, "websocket = true").await;
    let smuggled = b"GET /smuggled HTTP/1.1\r\nhost: a\r\ncontent-length: 1\r\n\
        transfer-encoding: chunked\r\n\r\n0\r\n\r\n";
    let (mut client, head) = handshake_then(&gateway, smuggled).await;
    assert!(head.starts_with("http/1.1 403"), "{head}");
    assert!(head.contains("connection: close"), "{head}");
    let (closed, rest) = read_to_close(&mut client, Instant::now() + PATIENCE).await;
    assert!(closed, "the connection stayed open");
    assert_eq!(rest, b"no");
    handshake_upstream(&mut seen).await;
    assert!(
        tokio::time::timeout(Duration::from_millis(300), seen.recv())
            .await
            .is_err(),
        "the upstream saw more"
    );
}

#[tokio::test]
async fn the_upstream_closing_the_tunnel_closes_the_client() {
    let (addr, _seen) = upstream(Answer::EchoOnceThenClose).await;
    let gateway = gateway(addr, "websocket = true").await;
    let (mut client, head) = handshake(&gateway).await;
    assert!(head.starts_with("http/1.1 101"), "{head}");

    assert_eq!(round_trip(&mut client, b"last words").await, b"last words");
    let (closed, rest) = read_to_close(&mut client, Instant::now() + PATIENCE).await;
    assert!(closed && rest.is_empty(), "closed {closed}, then {rest:?}");
}

#[tokio::test]
async fn a_client_that_closes_first_still_gets_the_upstreams_answer() {
    let (addr, mut seen) = upstream(Answer::Echo).await;
    let gateway = gateway(addr, "websocket = true").await;
    let (mut client, head) = handshake(&gateway).await;
    assert!(head.starts_with("http/1.1 101"), "{head}");

    // The client's last bytes and its close: the upstream's side closes
    // after the echo, which still reaches the client.
    client.write_all(b"goodbye").await.unwrap();
    client.shutdown().await.unwrap();
    let (closed, rest) = read_to_close(&mut client, Instant::now() + PATIENCE).await;
    assert!(closed, "the tunnel stayed open");
    assert_eq!(rest, b"goodbye");
    assert!(matches!(next(&mut seen).await, Seen::Head(_)));
    assert!(matches!(next(&mut seen).await, Seen::Closed));
}

#[tokio::test]
async fn without_the_route_key_upgrade_stops_at_the_gateway() {
    let (addr, mut seen) = upstream(Answer::Echo).await;
    let gateway = gateway(addr, "").await;
    let (_client, head) = handshake(&gateway).await;

    assert!(head.starts_with("http/1.1 426"), "{head}");
    let Seen::Head(sent) = next(&mut seen).await else {
        panic!("no request upstream")
    };
    assert!(!sent.contains("upgrade"), "{sent}");
}

#[tokio::test]
async fn a_refused_handshake_is_passed_on_and_the_connection_stays_http() {
    let (addr, _seen) = upstream(Answer::Refuse).await;
    let gateway = gateway(addr, "websocket = true").await;
    let (mut client, head) = handshake(&gateway).await;
    assert!(head.starts_with("http/1.1 403"), "{head}");
    let mut body = [0u8; 2];
    client.read_exact(&mut body).await.unwrap();
    assert_eq!(&body, b"no");

    // Still HTTP: the next request on the connection is answered.
    client
        .write_all(b"GET /next HTTP/1.1\r\nhost: gateway.test\r\n\r\n")
        .await
        .unwrap();
    let next = read_head(&mut client).await.expect("no second answer");
    assert!(next.starts_with("HTTP/1.1 426"), "{next}");
}

#[tokio::test]
async fn a_silent_tunnel_is_closed_after_idle_timeout() {
    let (addr, mut seen) = upstream(Answer::Echo).await;
    let gateway = gateway(addr, "websocket = true\nidle_timeout = \"2s\"").await;
    let (mut client, _) = handshake(&gateway).await;
    let Seen::Head(_) = next(&mut seen).await else {
        panic!("no handshake upstream")
    };

    // Traffic for longer than the timeout keeps it open...
    keep_talking(
        &mut client,
        Duration::from_secs(3),
        Duration::from_millis(200),
    )
    .await;
    // ...silence closes both sides.
    let quiet = Instant::now();
    let (closed, _) = read_to_close(&mut client, quiet + PATIENCE).await;
    assert!(closed, "the silent tunnel stayed open");
    assert!(
        quiet.elapsed() >= Duration::from_millis(1500),
        "{:?}",
        quiet.elapsed()
    );
    assert!(matches!(next(&mut seen).await, Seen::Closed));
}

#[tokio::test]
async fn a_tunnel_goes_on_while_draining_and_is_cut_when_the_grace_runs_out() {
    let (addr, mut seen) = upstream(Answer::Echo).await;
    let toml = one_route(&format!("http://{addr}"), "websocket = true");
    let toml = toml.replace("shutdown_grace = \"5s\"", "shutdown_grace = \"2s\"");
    let gateway = Gateway::start(&toml).await;
    let (mut client, _) = handshake(&gateway).await;
    assert_eq!(round_trip(&mut client, b"before").await, b"before");

    stop_with_open(gateway, &mut client).await;
    assert!(matches!(next(&mut seen).await, Seen::Head(_)));
    assert!(matches!(next(&mut seen).await, Seen::Closed));
}

#[tokio::test]
async fn an_https_upstream_offering_h2_gets_the_handshake_over_http1() {
    let (addr, mut seen) = upstream(Answer::Echo).await;
    let pki = Pki::new();
    let leaf = pki.server("upstream", &["127.0.0.1"]);
    // The upstream offers h2 first; a WebSocket handshake needs HTTP/1.1.
    let tls = TlsUpstream::start(addr, &leaf, &[H2, HTTP11], None).await;
    let extra = format!("websocket = true\nupstream_ca_file = {:?}", pki.ca);
    let gateway = Gateway::start(&one_route(&tls.url(), &extra)).await;
    let (mut client, head) = handshake(&gateway).await;

    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(matches!(next(&mut seen).await, Seen::Head(_)));
    assert_eq!(round_trip(&mut client, b"over tls").await, b"over tls");
    // One connection, not agreed on h2 (offering no ALPN means HTTP/1.1).
    let agreed = tls.agreed();
    assert!(
        agreed.len() == 1 && agreed[0].as_deref() != Some(H2),
        "{agreed:?}"
    );
}

/// A gateway with TLS (a certificate for `localhost` from the returned
/// authority) whose one route, with WebSockets, is in front of `upstream`.
pub(crate) async fn tls_gateway(upstream: SocketAddr) -> (Gateway, Pki) {
    let pki = Pki::new();
    let leaf = pki.server("gateway", &["localhost"]);
    let toml = format!(
        "{}\n[server.tls]\ncert = {:?}\nkey = {:?}\n",
        one_route(&format!("http://{upstream}"), "websocket = true"),
        leaf.cert,
        leaf.key
    );
    (Gateway::start(&toml).await, pki)
}

/// A TLS connection to `gateway` offering `alpn`.
pub(crate) async fn connect_tls(
    gateway: &Gateway,
    pki: &Pki,
    alpn: &[&[u8]],
) -> tokio_rustls::client::TlsStream<TcpStream> {
    let tcp = TcpStream::connect(gateway.addr).await.unwrap();
    let connector = TlsConnector::from(pki.client_config(alpn, &[&TLS13]));
    let name = ServerName::try_from("localhost").unwrap();
    connector.connect(name, tcp).await.unwrap()
}

#[tokio::test]
async fn tls_clients_with_or_without_alpn_get_their_tunnel() {
    let (addr, _seen) = upstream(Answer::Echo).await;
    let (gateway, pki) = tls_gateway(addr).await;
    // With `http/1.1` the connection is known to be HTTP/1.1; without ALPN
    // the gateway tells by the first bytes.
    for alpn in [&[HTTP11][..], &[]] {
        let mut client = connect_tls(&gateway, &pki, alpn).await;
        client.write_all(HANDSHAKE.as_bytes()).await.unwrap();
        let head = read_head(&mut client).await.expect("no response head");
        assert!(head.starts_with("HTTP/1.1 101"), "ALPN {alpn:?}: {head}");
        assert_eq!(round_trip(&mut client, b"sealed").await, b"sealed");
    }
}
