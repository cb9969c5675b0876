//! The fixtures every integration test uses: the built-in mock upstream and a
//! real gateway, each on an ephemeral loopback port, and small HTTP clients
//! (HTTP/1.1, h2c, and raw TCP for the bytes on the wire).

#![allow(dead_code)]

mod logs;
mod upstreams;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::Instant;

pub use self::logs::Captured;
pub use self::upstreams::{FixedUpstream, TestUpstream};

use chorus::config::Config;
use chorus::mock::{self, MockOptions, MockStats};
use chorus::tls::ReloadHandle;
use chorus::{Listeners, RunOptions, StartError};

/// Generous bound for anything a test awaits: a loaded 2-core machine is slow,
/// but a hang must still fail the test rather than the whole run.
pub const PATIENCE: Duration = Duration::from_secs(20);

/// The built-in mock LLM upstream, in process.
pub struct Upstream {
    pub addr: SocketAddr,
    pub stats: Arc<MockStats>,
    stop: Option<oneshot::Sender<()>>,
}

impl Upstream {
    /// A mock with the default pace (20 tokens, 50 ms apart).
    pub async fn start() -> Self {
        Self::start_with(MockOptions::default()).await
    }

    pub async fn start_with(mut options: MockOptions) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        options.listen = addr;
        let stats = Arc::new(MockStats::default());
        let (stop, stopped) = oneshot::channel::<()>();
        tokio::spawn(mock::serve(listener, options, Arc::clone(&stats), async {
            let _ = stopped.await;
        }));
        Self {
            addr,
            stats,
            stop: Some(stop),
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Waits until `condition` holds for the mock's counters.
    pub async fn wait_for(&self, condition: impl Fn(&MockStats) -> bool) -> bool {
        self.stats.wait_for(condition, PATIENCE).await
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// `toml` with `lines` added to its `[server]` table.
pub fn server_extra(toml: &str, lines: &str) -> String {
    assert!(toml.contains("[server]\n"), "no [server] table");
    toml.replacen("[server]\n", &format!("[server]\n{lines}\n"), 1)
}

/// A gateway config with one route "llm" on `/` in front of `upstream`;
/// `route_extra` is appended inside the route (e.g. a `[routes.coalesce]` table).
pub fn one_route(upstream: &str, route_extra: &str) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:0"
shutdown_grace = "5s"

[admin]
listen = "127.0.0.1:0"

[[routes]]
name = "llm"
path_prefix = "/"
upstream = "{upstream}"
{route_extra}
"#
    )
}

/// A real gateway on ephemeral ports, with its admin listener.
pub struct Gateway {
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    /// Reloads the server certificate, as SIGHUP does.
    pub reload: ReloadHandle,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), StartError>>>,
}

impl Gateway {
    /// Starts a gateway from TOML (its listen addresses are replaced by
    /// ephemeral ports bound here).
    pub async fn start(toml: &str) -> Self {
        Self::launch(toml, &[], RunOptions::default()).await
    }

    /// [`Gateway::start`] with run options (its `reload` is replaced).
    pub async fn start_with(toml: &str, options: RunOptions) -> Self {
        Self::launch(toml, &[], options).await
    }

    /// Like [`Gateway::start`], with `${NAME}` looked up in `env` first
    /// (tests cannot set process variables: `unsafe_code` is forbidden).
    pub async fn start_with_env(toml: &str, env: &[(&str, &str)]) -> Self {
        Self::launch(toml, env, RunOptions::default()).await
    }

    async fn launch(toml: &str, env: &[(&str, &str)], mut options: RunOptions) -> Self {
        let (reload, requests) = chorus::tls::reload_channel();
        options.reload = Some(requests);
        let lookup = |name: &str| {
            env.iter()
                .find(|(key, _)| *key == name)
                .map(|(_, value)| (*value).to_owned())
                .or_else(|| std::env::var(name).ok())
        };
        let config = Config::parse(toml, "test.toml", lookup)
            .unwrap_or_else(|error| panic!("test config rejected:\n{error}"));
        let gateway = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let admin = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = gateway.local_addr().unwrap();
        let admin_addr = admin.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let listeners = Listeners {
            gateway,
            admin: Some(admin),
        };
        let task = tokio::spawn(chorus::run_with(
            config,
            listeners,
            async {
                let _ = stopped.await;
            },
            options,
        ));
        Self {
            addr,
            admin: admin_addr,
            reload,
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// `http://ADDR{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// The admin `/metrics` text.
    pub async fn metrics(&self) -> String {
        let response = get(&format!("http://{}/metrics", self.admin)).await;
        let body = response.into_body().collect().await.unwrap().to_bytes();
        String::from_utf8(body.to_vec()).unwrap()
    }

    /// The value of one series, e.g. `chorus_flights_active{route="llm"}`;
    /// 0 when absent.
    pub async fn metric(&self, series: &str) -> f64 {
        metric_value(&self.metrics().await, series)
    }

    /// Waits until a series satisfies `condition`; returns its last value.
    pub async fn wait_metric(&self, series: &str, condition: impl Fn(f64) -> bool) -> f64 {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            let value = self.metric(series).await;
            if condition(value) || tokio::time::Instant::now() > deadline {
                return value;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Waits until no flight is active and nobody is subscribed, as after
    /// every test; panics with the metrics if that never happens.
    pub async fn assert_idle(&self) {
        let flights = self
            .wait_metric("chorus_flights_active{route=\"llm\"}", |v| v == 0.0)
            .await;
        let subscribers = self
            .wait_metric("chorus_subscribers_active{route=\"llm\"}", |v| v == 0.0)
            .await;
        assert_eq!((flights, subscribers), (0.0, 0.0), "gateway not idle");
    }

    /// Drains the gateway and waits for it to stop.
    pub async fn stop(mut self) -> Result<(), StartError> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let task = self.task.take().unwrap();
        tokio::time::timeout(PATIENCE, task)
            .await
            .expect("gateway did not stop")
            .expect("gateway task panicked")
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// The value of a series in a Prometheus text exposition (0 when absent).
pub fn metric_value(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|line| {
            let (name, value) = line.rsplit_once(' ')?;
            (name == series).then(|| value.parse().ok())?
        })
        .unwrap_or(0.0)
}

pub type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// An HTTP/1.1 client with its own connection pool.
pub fn http1() -> HttpClient {
    Client::builder(TokioExecutor::new()).build_http()
}

/// An h2c (prior knowledge) client.
pub fn http2() -> HttpClient {
    Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http()
}

/// A chat completion request body for the mock; `mock` overrides its pace
/// and faults (e.g. `json!({"tokens": 5, "interval_ms": 20})`).
pub fn chat(content: &str, mock: serde_json::Value) -> String {
    serde_json::json!({
        "model": "mock",
        "stream": true,
        "messages": [{"role": "user", "content": content}],
        "mock": mock,
    })
    .to_string()
}

/// A POST of `body` as JSON.
pub fn post(url: &str, body: impl Into<Bytes>) -> Request<Full<Bytes>> {
    Request::post(url)
        .header("content-type", "application/json")
        .body(Full::new(body.into()))
        .unwrap()
}

/// Sends a request with `client`, failing the test on a transport error.
pub async fn send(client: &HttpClient, request: Request<Full<Bytes>>) -> Response<Incoming> {
    tokio::time::timeout(PATIENCE, client.request(request))
        .await
        .expect("no response head in time")
        .expect("request failed")
}

/// A GET with a fresh HTTP/1.1 client.
pub async fn get(url: &str) -> Response<Incoming> {
    let request = Request::get(url).body(Full::new(Bytes::new())).unwrap();
    send(&http1(), request).await
}

/// The whole body, or the error that ended it abnormally.
pub async fn body(response: Response<Incoming>) -> Result<Bytes, hyper::Error> {
    tokio::time::timeout(PATIENCE, response.into_body().collect())
        .await
        .expect("body did not end in time")
        .map(|collected| collected.to_bytes())
}

/// The whole body as text; panics if it ended abnormally.
pub async fn text(response: Response<Incoming>) -> String {
    String::from_utf8(body(response).await.unwrap().to_vec()).unwrap()
}

/// The `data:` payloads of an SSE body, in order.
pub fn events(body: &[u8]) -> Vec<String> {
    String::from_utf8_lossy(body)
        .split("\n\n")
        .filter_map(|event| event.strip_prefix("data: "))
        .map(str::to_owned)
        .collect()
}

/// Reads `stream` until the peer closes it (an end of stream or an error)
/// or `deadline` passes: whether it closed in time, and every byte read.
pub async fn read_to_close(
    stream: &mut (impl AsyncRead + Unpin),
    deadline: Instant,
) -> (bool, Vec<u8>) {
    let mut received = Vec::new();
    let closed = tokio::time::timeout_at(deadline, async {
        let mut buf = [0u8; 8192];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(read) => received.extend_from_slice(&buf[..read]),
            }
        }
    })
    .await
    .is_ok();
    (closed, received)
}

/// Writes raw bytes on a new connection and reads until the peer closes
/// (or `PATIENCE` passes); returns what was read.
pub async fn raw(addr: SocketAddr, request: &[u8]) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(request).await.unwrap();
    let mut response = Vec::new();
    let _ = tokio::time::timeout(PATIENCE, stream.read_to_end(&mut response)).await;
    String::from_utf8_lossy(&response).into_owned()
}

/// POSTs `body` as a chat completion on a new connection whose receive
/// buffer holds a few KiB, so that the gateway's writes stall as soon as
/// the caller stops reading; returns the connection, nothing read yet.
pub async fn small_window_post(addr: SocketAddr, body: &str) -> TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut stream = socket.connect(addr).await.unwrap();
    write_chat_post(&mut stream, body).await;
    stream
}

/// Writes a raw HTTP/1.1 chat POST of `body` (JSON) on `stream`.
pub async fn write_chat_post(stream: &mut TcpStream, body: &str) {
    let wire = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: a\r\ncontent-type: application/json\r\n\
         content-length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(wire.as_bytes()).await.unwrap();
}

/// The body as JSON; panics if it is not.
pub fn json(body: &[u8]) -> serde_json::Value {
    serde_json::from_slice(body)
        .unwrap_or_else(|error| panic!("not JSON ({error}): {}", String::from_utf8_lossy(body)))
}

/// Checks a gateway-made error: the contract's JSON body with `error.type`
/// and `error.message`, as `application/json`; returns `error.type`.
pub async fn error_type(response: Response<Incoming>) -> String {
    assert_eq!(response.headers()["content-type"], "application/json");
    let error = json(&body(response).await.unwrap());
    assert!(error["error"]["message"].is_string(), "no message: {error}");
    error["error"]["type"]
        .as_str()
        .expect("no error.type")
        .to_owned()
}

/// A header's value as text (panics when absent).
pub fn header<'a>(response: &'a Response<Incoming>, name: &str) -> &'a str {
    response
        .headers()
        .get(name)
        .unwrap_or_else(|| panic!("no {name} header in {:?}", response.headers()))
        .to_str()
        .unwrap()
}

/// The headers the mock's `/echo` saw, in order, as (name, value) pairs.
pub fn echoed_headers(echo: &serde_json::Value) -> Vec<(String, String)> {
    serde_json::from_value(echo["headers"].clone()).expect("echo has header pairs")
}

/// Every value the mock's `/echo` saw for `name`.
pub fn echoed(echo: &serde_json::Value, name: &str) -> Vec<String> {
    echoed_headers(echo)
        .into_iter()
        .filter(|(key, _)| key == name)
        .map(|(_, value)| value)
        .collect()
}

/// An address on which nothing listens (bound, then released).
pub async fn closed_port() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap()
}

/// Reads an SSE response body event by event, as its frames arrive.
pub struct EventReader {
    body: Incoming,
    pending: Vec<u8>,
    /// Data frames read so far.
    pub frames: usize,
}

impl EventReader {
    pub fn new(response: Response<Incoming>) -> Self {
        Self {
            body: response.into_body(),
            pending: Vec::new(),
            frames: 0,
        }
    }

    /// The `data:` payload of the next event; `Ok(None)` at a clean end of
    /// the body, `Err` when it ended abnormally.
    pub async fn next(&mut self) -> Result<Option<String>, hyper::Error> {
        loop {
            if let Some(end) = self.pending.windows(2).position(|w| w == b"\n\n") {
                let event: Vec<u8> = self.pending.drain(..end + 2).collect();
                let event = String::from_utf8(event).unwrap();
                return Ok(Some(
                    event.trim_end().trim_start_matches("data: ").to_owned(),
                ));
            }
            let frame = tokio::time::timeout(PATIENCE, self.body.frame())
                .await
                .expect("no frame in time");
            match frame {
                None => return Ok(None),
                Some(frame) => {
                    if let Ok(data) = frame?.into_data() {
                        self.frames += 1;
                        self.pending.extend_from_slice(&data);
                    }
                }
            }
        }
    }

    /// Every remaining event, to the end of the body.
    pub async fn rest(&mut self) -> Result<Vec<String>, hyper::Error> {
        let mut events = Vec::new();
        while let Some(event) = self.next().await? {
            events.push(event);
        }
        Ok(events)
    }
}

/// Reads frames until the SSE body holds at least `count` events; returns
/// the bytes read so far and the rest of the body.
pub async fn read_events(mut body: Incoming, count: usize) -> (Vec<u8>, Incoming) {
    let mut seen = Vec::new();
    while events(&seen).len() < count {
        let frame = tokio::time::timeout(PATIENCE, body.frame())
            .await
            .expect("no frame in time")
            .expect("body ended early")
            .expect("body failed");
        if let Some(data) = frame.data_ref() {
            seen.extend_from_slice(data);
        }
    }
    (seen, body)
}

/// Reads the rest of a body after `prefix`.
pub async fn finish(prefix: Vec<u8>, body: Incoming) -> Result<Vec<u8>, hyper::Error> {
    let rest = tokio::time::timeout(PATIENCE, body.collect())
        .await
        .expect("body did not end in time")?
        .to_bytes();
    let mut all = prefix;
    all.extend_from_slice(&rest);
    Ok(all)
}
