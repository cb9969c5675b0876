//! End-to-end tests of the mock over [`serve`]: a real listener, real
//! clients (hyper, HTTP/1.1 and h2c) and raw sockets, grouped by what they
//! exercise. This file holds the fixture and the helpers they share.

mod completions;
mod endpoints;
mod faults;

use super::*;

use bytes::Bytes;
use http::{Request, Response, StatusCode, Version};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::stream::word;

/// Generous: only reached when a test is about to fail.
const WAIT: Duration = Duration::from_secs(10);

struct Running {
    addr: SocketAddr,
    stats: Arc<MockStats>,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<io::Result<()>>,
}

impl Running {
    async fn stop(mut self) -> io::Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        (&mut self.task).await.expect("serve task panicked")
    }
}

async fn start(options: MockOptions) -> Running {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("local addr");
    let stats = Arc::new(MockStats::default());
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(serve(listener, options, Arc::clone(&stats), async {
        let _ = stopped.await;
    }));
    Running {
        addr,
        stats,
        stop: Some(stop),
        task,
    }
}

/// Five tokens, no pause between events.
pub(super) fn fast() -> MockOptions {
    paced(5, Duration::ZERO)
}

/// `tokens` per completion, `interval` apart.
fn paced(tokens: usize, interval: Duration) -> MockOptions {
    MockOptions {
        tokens,
        interval,
        ..MockOptions::default()
    }
}

fn client() -> Client<HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new()).build_http()
}

/// A client that speaks HTTP/2 only (h2c with prior knowledge).
fn h2_client() -> Client<HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http()
}

async fn send(addr: SocketAddr, method: &str, path: &str, body: &str) -> Response<Incoming> {
    let request = Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_owned())))
        .expect("request");
    client().request(request).await.expect("response")
}

/// POSTs `body` to `path` and reads the whole answer.
async fn post(addr: SocketAddr, path: &str, body: &str) -> String {
    text(send(addr, "POST", path, body).await).await
}

async fn text(response: Response<Incoming>) -> String {
    let body = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    String::from_utf8(body.to_vec()).expect("utf-8 body")
}

fn json(text: &str) -> Value {
    serde_json::from_str(text).expect("JSON")
}

/// The `data:` payloads of an SSE body, checking the framing on the way.
fn events(body: &str) -> Vec<&str> {
    assert!(
        body.ends_with("\n\n"),
        "body does not end an event: {body:?}"
    );
    body.strip_suffix("\n\n")
        .expect("suffix")
        .split("\n\n")
        .map(|event| event.strip_prefix("data: ").expect("data: line"))
        .collect()
}

fn header<'a>(response: &'a Response<Incoming>, name: &str) -> &'a str {
    response
        .headers()
        .get(name)
        .and_then(|value| value.to_str().ok())
        .unwrap_or("")
}

/// A raw HTTP/1.1 request, for tests that need to see or cut the wire.
async fn raw_request(addr: SocketAddr, path: &str, body: &str) -> TcpStream {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    let request = format!(
        "POST {path} HTTP/1.1\r\nhost: mock\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.expect("write");
    stream
}

/// Reads until `needle` has been seen `count` times.
async fn read_until(stream: &mut TcpStream, needle: &str, count: usize) -> String {
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while String::from_utf8_lossy(&seen).matches(needle).count() < count {
        let read = tokio::time::timeout(WAIT, stream.read(&mut buf))
            .await
            .expect("timed out reading")
            .expect("read");
        assert!(read > 0, "EOF before {count} x {needle:?}");
        seen.extend_from_slice(&buf[..read]);
    }
    String::from_utf8_lossy(&seen).into_owned()
}

fn expected_content(tokens: usize) -> String {
    (0..tokens)
        .map(|index| format!("{} ", word(index)))
        .collect()
}
