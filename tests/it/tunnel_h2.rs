//! WebSockets over HTTP/2 (RFC 8441): an extended `CONNECT` with `:protocol`
//! `websocket` goes to the upstream as an HTTP/1.1 handshake with a key the
//! gateway makes up, and after the upstream's `101` that one stream is a
//! tunnel while the connection goes on serving other streams.

use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper::client::conn::http2::SendRequest;
use hyper::ext::Protocol;
use hyper::upgrade::Upgraded;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::support::{Gateway, PATIENCE, one_route, read_to_close, server_extra};
use crate::tls::fixtures::H2;
use crate::tunnel::{
    Answer, Seen, assert_tunnels, both_ways, connect_tls, handshake_upstream, keep_talking, next,
    round_trip, stop_with_open, tls_gateway, upstream,
};

type Client = SendRequest<Empty<Bytes>>;

/// An HTTP/2 connection over `io`.
async fn h2_over(io: impl AsyncRead + AsyncWrite + Unpin + Send + 'static) -> Client {
    let (client, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(io))
            .await
            .expect("no HTTP/2 handshake");
    tokio::spawn(connection);
    client
}

/// An h2c (prior knowledge) connection to the gateway.
async fn h2c(gateway: &Gateway) -> Client {
    h2_over(TcpStream::connect(gateway.addr).await.unwrap()).await
}

/// The handshake of RFC 8441 §5 for `path`.
fn handshake(path: &str) -> Request<Empty<Bytes>> {
    let mut request = Request::builder()
        .method(Method::CONNECT)
        .uri(format!("http://gateway.test{path}"))
        .header("sec-websocket-version", "13")
        .header("x-chorus-debug", "1")
        .body(Empty::new())
        .unwrap();
    request
        .extensions_mut()
        .insert(Protocol::from_static("websocket"));
    request
}

async fn send(client: &mut Client, request: Request<Empty<Bytes>>) -> Response<Incoming> {
    client.ready().await.expect("the connection closed");
    tokio::time::timeout(PATIENCE, client.send_request(request))
        .await
        .expect("no response in time")
        .expect("the request failed")
}

/// Opens a tunnel to `path` on `client`; panics unless the gateway says yes.
async fn open_at(client: &mut Client, path: &str) -> TokioIo<Upgraded> {
    let response = send(client, handshake(path)).await;
    assert_eq!(response.status(), StatusCode::OK, "{response:?}");
    let upgraded = hyper::upgrade::on(response)
        .await
        .expect("no tunnel after the 200");
    TokioIo::new(upgraded)
}

async fn open(client: &mut Client) -> TokioIo<Upgraded> {
    open_at(client, "/v1/realtime?model=m").await
}

/// A plain `GET` on the same connection: the test upstream answers 426.
async fn plain_get(client: &mut Client) -> StatusCode {
    let request = Request::get("http://gateway.test/v1/models")
        .body(Empty::new())
        .unwrap();
    send(client, request).await.status()
}

#[tokio::test]
async fn an_http2_websocket_is_one_stream_tunnelled_to_an_http1_upgrade() {
    let (addr, mut seen) = upstream(Answer::Echo).await;
    let gateway = Gateway::start(&one_route(&format!("http://{addr}"), "websocket = true")).await;
    let mut client = h2c(&gateway).await;
    let response = send(&mut client, handshake("/v1/realtime?model=m")).await;

    assert_eq!(response.status(), StatusCode::OK);
    let headers = response.headers();
    assert_eq!(headers["x-chorus-role"], "bypass");
    for absent in [
        "sec-websocket-accept",
        "upgrade",
        "connection",
        "content-length",
    ] {
        assert!(!headers.contains_key(absent), "{absent} in {headers:?}");
    }
    let sent = handshake_upstream(&mut seen).await;
    let key = sent
        .lines()
        .find_map(|line| line.strip_prefix("sec-websocket-key: "))
        .expect("no key upstream");
    assert_eq!(key.len(), 24, "{key}");

    let mut tunnel = TokioIo::new(hyper::upgrade::on(response).await.unwrap());
    both_ways(&mut tunnel).await;
    // The connection serves other streams meanwhile.
    assert_eq!(plain_get(&mut client).await, StatusCode::UPGRADE_REQUIRED);
    let Seen::Head(plain) = next(&mut seen).await else {
        panic!("no plain GET upstream")
    };
    assert!(plain.starts_with("get /v1/models "), "{plain}");
    assert_eq!(round_trip(&mut tunnel, b"still here").await, b"still here");
    assert_eq!(gateway.metric("chorus_requests_active").await, 1.0);
    assert_tunnels(&gateway, 1.0, 300_019.0).await;
    assert_eq!(
        gateway
            .metric("chorus_requests_total{route=\"llm\",role=\"bypass\"}")
            .await,
        1.0
    );

    // The client leaving closes the upstream's side.
    drop(tunnel);
    assert!(matches!(next(&mut seen).await, Seen::Closed));
    gateway
        .wait_metric("chorus_requests_active", |v| v == 0.0)
        .await;
    assert_tunnels(&gateway, 0.0, 300_019.0).await;
    assert_eq!(plain_get(&mut client).await, StatusCode::UPGRADE_REQUIRED);
}

#[tokio::test]
async fn the_upstream_closing_ends_the_stream() {
    let (addr, _seen) = upstream(Answer::EchoOnceThenClose).await;
    let gateway = Gateway::start(&one_route(&format!("http://{addr}"), "websocket = true")).await;
    let mut client = h2c(&gateway).await;
    let mut tunnel = open(&mut client).await;

    assert_eq!(round_trip(&mut tunnel, b"last words").await, b"last words");
    let (closed, rest) = read_to_close(&mut tunnel, Instant::now() + PATIENCE).await;
    assert!(closed && rest.is_empty(), "closed {closed}, then {rest:?}");
    assert_eq!(plain_get(&mut client).await, StatusCode::UPGRADE_REQUIRED);
}

#[tokio::test]
async fn answers_other_than_a_good_101_are_not_a_tunnel() {
    // A refusal is passed on; a success that did not switch, or a 101
    // whose accept answers another key, would read as yes: 502.
    let cases = [
        (Answer::Refuse, StatusCode::FORBIDDEN),
        (Answer::Ignore, StatusCode::BAD_GATEWAY),
        (Answer::WrongAccept, StatusCode::BAD_GATEWAY),
    ];
    for (answer, status) in cases {
        let (addr, mut seen) = upstream(answer).await;
        let route = one_route(&format!("http://{addr}"), "websocket = true");
        let gateway = Gateway::start(&route).await;
        let mut client = h2c(&gateway).await;
        let response = send(&mut client, handshake("/v1/realtime")).await;

        assert_eq!(response.status(), status);
        assert_eq!(response.headers()["x-chorus-role"], "bypass");
        assert!(matches!(next(&mut seen).await, Seen::Head(_)));
        if matches!(answer, Answer::WrongAccept) {
            // The upstream's switched connection is closed, not kept.
            assert!(matches!(next(&mut seen).await, Seen::Closed));
        }
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert!(!body.is_empty());
        assert_eq!(plain_get(&mut client).await, StatusCode::UPGRADE_REQUIRED);
        gateway
            .wait_metric("chorus_requests_active", |v| v == 0.0)
            .await;
    }
}

#[tokio::test]
async fn routes_without_the_key_refuse_it_and_without_any_it_is_not_offered() {
    let (addr, mut seen) = upstream(Answer::Echo).await;
    let upstream = format!("http://{addr}");
    // "/ws" allows WebSockets, "/" does not.
    let toml = format!(
        "{}\n[[routes]]\nname = \"ws\"\npath_prefix = \"/ws\"\nupstream = \"{upstream}\"\nwebsocket = true\n",
        one_route(&upstream, "")
    );
    let gateway = Gateway::start(&toml).await;
    let mut client = h2c(&gateway).await;
    let refused = send(&mut client, handshake("/v1/realtime")).await;
    assert_eq!(refused.status(), StatusCode::BAD_REQUEST);
    assert_eq!(refused.headers()["x-chorus-role"], "bypass");
    let body = refused.into_body().collect().await.unwrap().to_bytes();
    assert!(String::from_utf8_lossy(&body).contains("WebSockets are not enabled"));
    let mut tunnel = open_at(&mut client, "/ws/chat").await;
    assert_eq!(round_trip(&mut tunnel, b"here").await, b"here");
    // The refused handshake never reached the upstream.
    let Seen::Head(sent) = next(&mut seen).await else {
        panic!("no handshake upstream")
    };
    assert!(sent.starts_with("get /ws/chat "), "{sent}");

    // With no route allowing WebSockets, HTTP/2 does not offer them: the
    // stream is refused by the protocol.
    let plain = Gateway::start(&one_route(&upstream, "")).await;
    let mut client = h2c(&plain).await;
    client.ready().await.unwrap();
    let sent = tokio::time::timeout(PATIENCE, client.send_request(handshake("/v1/realtime")))
        .await
        .expect("no answer in time");
    assert!(sent.is_err(), "{sent:?}");
    assert_eq!(
        plain_get(&mut h2c(&plain).await).await,
        StatusCode::UPGRADE_REQUIRED
    );
}

#[tokio::test]
async fn a_tunnel_keeps_its_connection_open_and_is_cut_when_the_grace_runs_out() {
    let (addr, mut seen) = upstream(Answer::Echo).await;
    let toml = one_route(&format!("http://{addr}"), "websocket = true");
    let toml = toml.replace("shutdown_grace = \"5s\"", "shutdown_grace = \"2s\"");
    // A connection with no request in progress for 1 s is closed; an open
    // tunnel is one in progress.
    let gateway = Gateway::start(&server_extra(&toml, "header_read_timeout = \"1s\"")).await;
    let mut client = h2c(&gateway).await;
    let mut tunnel = open(&mut client).await;
    keep_talking(
        &mut tunnel,
        Duration::from_millis(2500),
        Duration::from_millis(200),
    )
    .await;
    assert_eq!(plain_get(&mut client).await, StatusCode::UPGRADE_REQUIRED);

    stop_with_open(gateway, &mut tunnel).await;
    // The handshake, the plain GET, then the tunnel's close.
    assert!(matches!(next(&mut seen).await, Seen::Head(_)));
    assert!(matches!(next(&mut seen).await, Seen::Head(_)));
    assert!(matches!(next(&mut seen).await, Seen::Closed));
}

#[tokio::test]
async fn tls_clients_agreeing_on_h2_get_their_tunnel() {
    let (addr, _seen) = upstream(Answer::Echo).await;
    let (gateway, pki) = tls_gateway(addr).await;
    let tls = connect_tls(&gateway, &pki, &[H2]).await;
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(H2));
    let mut client = h2_over(tls).await;
    let mut tunnel = open(&mut client).await;
    assert_eq!(round_trip(&mut tunnel, b"sealed").await, b"sealed");
}
