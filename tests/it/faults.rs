//! Upstreams that misbehave, written for each test on a raw socket: refusing,
//! resetting, hanging before the head, hanging mid-body, answering with a
//! malformed response, closing a kept-alive connection just as it is reused.
//!
//! Every subscriber of the flight (HTTP/1.1 and HTTP/2 clients together)
//! gets the documented error: before the head, 502 or 504 with the JSON
//! body; after it, an abnormal end of the same bytes. No flight is left
//! behind: the next identical request leads a new one.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::BodyExt;
use http_body_util::Full;
use hyper::body::Incoming;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;

use crate::support::*;

const SUBSCRIBERS: usize = 4;
const PATH: &str = "/v1/chat/completions";
const BODY: &str = r#"{"model":"m","messages":[{"role":"user","content":"fault"}]}"#;
/// The series counting upstream bodies that stopped short.
const BROKEN: &str = r#"chorus_upstream_broken_total{route="llm"}"#;

/// What the upstream does with each request it reads.
#[derive(Clone, Copy, Debug)]
enum Fault {
    /// Resets the connection (RST) once released.
    Reset,
    /// Never answers.
    HangBeforeHead,
    /// Sends the head and one chunk once released, then nothing.
    HangMidBody,
    /// Answers with bytes that are not an HTTP response once released.
    GarbageHead,
    /// Sends the head and one chunk once released, then a bad chunk size.
    GarbageMidBody,
    /// Sends the head, this many events and its close at once when
    /// released: an upstream that dies just after writing.
    CloseAfterEvents(usize),
    /// As `CloseAfterEvents`, with three chunks of [`LARGE_CHUNK`] bytes:
    /// more than an HTTP/2 stream's first window.
    CloseAfterLargeChunks,
    /// Answers the first request on each connection in full, keeping the
    /// connection alive, and closes it when the next request arrives on it.
    CloseOnReuse,
    /// As `CloseOnReuse`, with a reset and without waiting to be released:
    /// an upstream's keep-alive timeout meeting the next request.
    ResetOnReuse,
    /// Answers in full, keeping the connection alive in the header but
    /// closing it right after the response.
    CloseAfterAnswer,
    /// Answers with these bytes once released, and keeps the connection;
    /// counts it closed by the gateway when it is.
    Answer(&'static [u8]),
}

/// A raw-socket upstream with one [`Fault`].
struct Faulty {
    addr: SocketAddr,
    /// Requests read in full.
    requests: Arc<AtomicUsize>,
    /// Connections the gateway closed while they were held.
    closed_by_gateway: Arc<AtomicUsize>,
    release: Arc<Notify>,
    task: tokio::task::JoinHandle<()>,
}

impl Faulty {
    async fn start(fault: Fault) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let requests = Arc::new(AtomicUsize::new(0));
        let closed_by_gateway = Arc::new(AtomicUsize::new(0));
        let release = Arc::new(Notify::new());
        let (count, closed, gate) = (
            Arc::clone(&requests),
            Arc::clone(&closed_by_gateway),
            Arc::clone(&release),
        );
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (count, closed, gate) =
                    (Arc::clone(&count), Arc::clone(&closed), Arc::clone(&gate));
                tokio::spawn(serve(stream, fault, count, closed, gate));
            }
        });
        Self {
            addr,
            requests,
            closed_by_gateway,
            release,
            task,
        }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }

    /// Lets held requests go on to their fault.
    fn release(&self) {
        self.release.notify_waiters();
    }

    async fn wait_closed_by_gateway(&self, count: usize) {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        while self.closed_by_gateway.load(Ordering::SeqCst) < count {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the gateway never closed the upstream connection"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

impl Drop for Faulty {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Reads one request (head and Content-Length body); false at EOF.
async fn read_request(stream: &mut TcpStream, buffer: &mut Vec<u8>) -> bool {
    loop {
        if let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buffer[..end]).to_ascii_lowercase();
            let length: usize = head
                .lines()
                .find_map(|line| line.strip_prefix("content-length:"))
                .and_then(|value| value.trim().parse().ok())
                .unwrap_or(0);
            if buffer.len() >= end + 4 + length {
                buffer.drain(..end + 4 + length);
                return true;
            }
        }
        let mut chunk = [0u8; 4096];
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return false,
            Ok(read) => buffer.extend_from_slice(&chunk[..read]),
        }
    }
}

/// Waits until the gateway closes `stream`; counts it.
async fn held_until_closed(mut stream: TcpStream, closed: &AtomicUsize) {
    let mut sink = [0u8; 1024];
    while let Ok(read) = stream.read(&mut sink).await {
        if read == 0 {
            break;
        }
    }
    closed.fetch_add(1, Ordering::SeqCst);
}

const SSE_HEAD: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n\
    transfer-encoding: chunked\r\n\r\n";
const FIRST_EVENT: &[u8] = b"15\r\ndata: first event!!\n\n\r\n";
const FIRST_EVENT_DATA: &[u8] = b"data: first event!!\n\n";
const LARGE_CHUNK: usize = 300_000;
const ANSWER: &[u8] =
    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 11\r\n\r\n{\"ok\":true}";

async fn serve(
    mut stream: TcpStream,
    fault: Fault,
    count: Arc<AtomicUsize>,
    closed: Arc<AtomicUsize>,
    release: Arc<Notify>,
) {
    let mut buffer = Vec::new();
    let mut on_this_connection = 0;
    loop {
        let released = release.notified();
        tokio::pin!(released);
        released.as_mut().enable();
        if !read_request(&mut stream, &mut buffer).await {
            if matches!(fault, Fault::Answer(_)) {
                closed.fetch_add(1, Ordering::SeqCst);
            }
            return;
        }
        count.fetch_add(1, Ordering::SeqCst);
        on_this_connection += 1;
        match fault {
            Fault::Reset => {
                released.await;
                let _ = stream.set_zero_linger();
                return;
            }
            Fault::HangBeforeHead => return held_until_closed(stream, &closed).await,
            Fault::HangMidBody => {
                released.await;
                let _ = stream.write_all(SSE_HEAD).await;
                let _ = stream.write_all(FIRST_EVENT).await;
                return held_until_closed(stream, &closed).await;
            }
            Fault::GarbageHead => {
                released.await;
                let _ = stream
                    .write_all(b"HTTP/1.1 OK 200 maybe\r\n\0\0\r\n\r\n")
                    .await;
                return;
            }
            Fault::GarbageMidBody => {
                released.await;
                let _ = stream.write_all(SSE_HEAD).await;
                let _ = stream.write_all(FIRST_EVENT).await;
                let _ = stream.flush().await;
                tokio::time::sleep(Duration::from_millis(50)).await;
                let _ = stream.write_all(b"zz\r\nnot a chunk\r\n").await;
                return;
            }
            Fault::CloseAfterEvents(events) => {
                released.await;
                let mut wire = SSE_HEAD.to_vec();
                for _ in 0..events {
                    wire.extend_from_slice(FIRST_EVENT);
                }
                let _ = stream.write_all(&wire).await;
                return;
            }
            Fault::CloseAfterLargeChunks => {
                released.await;
                let mut wire = SSE_HEAD.to_vec();
                for _ in 0..3 {
                    wire.extend_from_slice(format!("{LARGE_CHUNK:x}\r\n").as_bytes());
                    wire.extend_from_slice(&[b'a'; LARGE_CHUNK]);
                    wire.extend_from_slice(b"\r\n");
                }
                let _ = stream.write_all(&wire).await;
                return;
            }
            Fault::CloseOnReuse if on_this_connection > 1 => {
                released.await;
                return;
            }
            Fault::ResetOnReuse if on_this_connection > 1 => {
                let _ = stream.set_zero_linger();
                return;
            }
            Fault::CloseOnReuse | Fault::ResetOnReuse => {
                let _ = stream.write_all(ANSWER).await;
            }
            Fault::CloseAfterAnswer => {
                let _ = stream.write_all(ANSWER).await;
                return;
            }
            Fault::Answer(bytes) => {
                released.await;
                let _ = stream.write_all(bytes).await;
            }
        }
    }
}

/// How one subscriber's request ended.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    /// The gateway answered with its own error: status and `error.type`.
    Refused(u16, String),
    /// A head, these bytes, then an abnormal end.
    Broken(u16, Vec<u8>),
    /// A head and a clean end.
    Complete(u16, Vec<u8>),
}

async fn outcome(response: Response<Incoming>) -> (String, Outcome) {
    let role = header(&response, "x-chorus-role").to_owned();
    let status = response.status().as_u16();
    if status >= 500 && response.headers()["content-type"] == "application/json" {
        return (role, Outcome::Refused(status, error_type(response).await));
    }
    let mut body = response.into_body();
    let mut bytes = Vec::new();
    loop {
        match tokio::time::timeout(PATIENCE, body.frame()).await {
            Err(_) => panic!("the body neither went on nor ended"),
            Ok(None) => return (role, Outcome::Complete(status, bytes)),
            Ok(Some(Err(_))) => return (role, Outcome::Broken(status, bytes)),
            Ok(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    bytes.extend_from_slice(data);
                }
            }
        }
    }
}

/// Sends the same request from `SUBSCRIBERS` clients (HTTP/1.1 and HTTP/2
/// alternately), waits until all of them are subscribed to one flight,
/// releases the upstream's fault, and returns each one's role and outcome.
async fn herd(gateway: &Gateway, upstream: &Faulty) -> Vec<(String, Outcome)> {
    let before = upstream.requests();
    let clients = [http1(), http2()];
    let requests: Vec<_> = (0..SUBSCRIBERS)
        .map(|index| {
            let client = clients[index % 2].clone();
            let request = post(&gateway.url(PATH), BODY);
            tokio::spawn(async move { outcome(send(&client, request).await).await })
        })
        .collect();
    let subscribed = gateway
        .wait_metric(r#"chorus_subscribers_active{route="llm"}"#, |n| {
            n >= SUBSCRIBERS as f64
        })
        .await;
    assert_eq!(subscribed, SUBSCRIBERS as f64, "the herd never formed");
    // Released once the upstream holds the flight's request (a release
    // before that would be lost).
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while upstream.requests() == before {
        assert!(tokio::time::Instant::now() < deadline, "not sent upstream");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    upstream.release();
    let mut outcomes = Vec::new();
    for request in requests {
        outcomes.push(request.await.unwrap());
    }
    outcomes
}

/// Every subscriber got `expected`; one led, the others followed, and one
/// upstream request served them all.
fn all_got(outcomes: &[(String, Outcome)], expected: &Outcome) {
    for (role, outcome) in outcomes {
        assert_eq!(outcome, expected, "{role} got something else");
    }
    let leaders = outcomes.iter().filter(|(role, _)| role == "leader").count();
    let followers = outcomes
        .iter()
        .filter(|(role, _)| role == "follower")
        .count();
    assert_eq!((leaders, followers), (1, SUBSCRIBERS - 1), "{outcomes:?}");
}

/// No flight is left: the same request again leads a new flight and is
/// sent upstream again.
async fn no_flight_left(gateway: &Gateway, upstream: &Faulty) {
    gateway.assert_idle().await;
    let before = upstream.requests();
    let response = send(&http1(), post(&gateway.url(PATH), BODY)).await;
    assert_eq!(header(&response, "x-chorus-role"), "leader");
    let waiting = tokio::spawn(outcome(response));
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while upstream.requests() == before {
        assert!(tokio::time::Instant::now() < deadline, "not sent upstream");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    upstream.release();
    let _ = tokio::time::timeout(PATIENCE, waiting).await;
    gateway.assert_idle().await;
}

/// Sends `request` alone and releases the upstream's fault once it is in,
/// as the herd's was.
async fn send_released(
    upstream: &Faulty,
    client: &HttpClient,
    request: Request<Full<Bytes>>,
) -> Response<Incoming> {
    let before = upstream.requests();
    let releasing = async {
        while upstream.requests() == before {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        upstream.release();
    };
    let (response, ()) = tokio::join!(send(client, request), releasing);
    response
}

fn route(upstream: &str) -> String {
    one_route(
        upstream,
        "first_byte_timeout = \"2s\"\nidle_timeout = \"1s\"\nconnect_timeout = \"1s\"",
    )
}

#[tokio::test]
async fn a_refusing_upstream_is_a_502_for_every_subscriber() {
    let nothing = closed_port().await;
    let gateway = Gateway::start(&route(&format!("http://{nothing}"))).await;
    let clients = [http1(), http2()];
    let answers = futures::future::join_all((0..SUBSCRIBERS).map(|index| {
        let client = clients[index % 2].clone();
        let request = post(&gateway.url(PATH), BODY);
        async move { outcome(send(&client, request).await).await }
    }))
    .await;
    for (role, outcome) in &answers {
        assert!(role == "leader" || role == "follower", "{role}");
        assert_eq!(
            outcome,
            &Outcome::Refused(502, "upstream_unreachable".into())
        );
    }
    gateway.assert_idle().await;
    let response = get(&gateway.url("/anything")).await;
    assert_eq!(response.status(), 502);
}

#[tokio::test]
async fn a_resetting_upstream_is_a_502_for_every_subscriber() {
    let upstream = Faulty::start(Fault::Reset).await;
    let gateway = Gateway::start(&route(&upstream.url())).await;
    let outcomes = herd(&gateway, &upstream).await;
    all_got(&outcomes, &Outcome::Refused(502, "upstream_failed".into()));
    assert_eq!(upstream.requests(), 1);
    no_flight_left(&gateway, &upstream).await;
}

#[tokio::test]
async fn an_upstream_hanging_before_the_head_is_a_504_for_every_subscriber() {
    let upstream = Faulty::start(Fault::HangBeforeHead).await;
    let gateway = Gateway::start(&route(&upstream.url())).await;
    let outcomes = herd(&gateway, &upstream).await;
    all_got(&outcomes, &Outcome::Refused(504, "upstream_timeout".into()));
    assert_eq!(upstream.requests(), 1);
    // The upstream request is closed, not left hanging.
    upstream.wait_closed_by_gateway(1).await;
    no_flight_left(&gateway, &upstream).await;
}

#[tokio::test]
async fn an_upstream_hanging_mid_body_ends_every_subscriber_abnormally() {
    let upstream = Faulty::start(Fault::HangMidBody).await;
    let gateway = Gateway::start(&route(&upstream.url())).await;
    let outcomes = herd(&gateway, &upstream).await;
    all_got(&outcomes, &Outcome::Broken(200, FIRST_EVENT_DATA.to_vec()));
    assert_eq!(gateway.metric(BROKEN).await, 1.0, "one upstream body broke");
    upstream.wait_closed_by_gateway(1).await;
    no_flight_left(&gateway, &upstream).await;
}

#[tokio::test]
async fn a_malformed_response_head_is_a_502_for_every_subscriber() {
    let upstream = Faulty::start(Fault::GarbageHead).await;
    let gateway = Gateway::start(&route(&upstream.url())).await;
    let outcomes = herd(&gateway, &upstream).await;
    all_got(&outcomes, &Outcome::Refused(502, "upstream_failed".into()));
    no_flight_left(&gateway, &upstream).await;
}

#[tokio::test]
async fn a_malformed_response_body_ends_every_subscriber_abnormally() {
    let upstream = Faulty::start(Fault::GarbageMidBody).await;
    let gateway = Gateway::start(&route(&upstream.url())).await;
    let outcomes = herd(&gateway, &upstream).await;
    all_got(&outcomes, &Outcome::Broken(200, FIRST_EVENT_DATA.to_vec()));
    assert_eq!(gateway.metric(BROKEN).await, 1.0, "one upstream body broke");
    no_flight_left(&gateway, &upstream).await;
}

/// The bytes an upstream sent just before it broke reach every client
/// before the abnormal end, though they came in the read that found the
/// break: the head and events the server still held unwritten are not
/// dropped with the connection (HTTP/1.1) or the stream (HTTP/2). The
/// gateway runs on two workers here, as it does in production: on one, the
/// server's tasks take turns in an order that hides the loss.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_closing_just_after_its_last_bytes_loses_none_of_them() {
    for (fault, sent) in [
        (Fault::CloseAfterEvents(3), FIRST_EVENT_DATA.repeat(3)),
        (Fault::CloseAfterEvents(0), Vec::new()),
        (Fault::CloseAfterLargeChunks, vec![b'a'; 3 * LARGE_CHUNK]),
    ] {
        let upstream = Faulty::start(fault).await;
        let gateway = Gateway::start(&route(&upstream.url())).await;
        for _ in 0..3 {
            let outcomes = herd(&gateway, &upstream).await;
            all_got(&outcomes, &Outcome::Broken(200, sent.clone()));
            for (version, client) in [("HTTP/1.1", http1()), ("HTTP/2", http2())] {
                let mut request = post(&gateway.url(PATH), BODY);
                request
                    .headers_mut()
                    .insert("x-chorus-coalesce", "off".parse().unwrap());
                let response = send_released(&upstream, &client, request).await;
                let (_, outcome) = outcome(response).await;
                assert_eq!(outcome, Outcome::Broken(200, sent.clone()), "{version}");
            }
        }
        // Each round broke one flight's upstream body and two bypassed ones.
        assert_eq!(gateway.metric(BROKEN).await, 9.0);
        no_flight_left(&gateway, &upstream).await;
    }
}

/// An HTTP/2 client far away (its window updates come 200 ms after the
/// data they answer, and its window is h2's default 64 KiB) still gets every
/// byte before a break: writes stalled on its window are not mistaken for
/// writes that have settled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_distant_http2_client_gets_every_byte_before_a_break() {
    let upstream = Faulty::start(Fault::CloseAfterLargeChunks).await;
    let gateway = Gateway::start(&route(&upstream.url())).await;
    let tcp = TcpStream::connect(gateway.addr).await.unwrap();
    let (client, connection) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(connection);
    let mut client = client.ready().await.unwrap();
    let request = Request::post(gateway.url(PATH)).body(()).unwrap();
    let (response, mut sending) = client.send_request(request, false).unwrap();
    sending
        .send_data(Bytes::from_static(BODY.as_bytes()), true)
        .unwrap();
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while upstream.requests() == 0 {
        assert!(tokio::time::Instant::now() < deadline, "not sent upstream");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    upstream.release();

    let mut body = response.await.unwrap().into_body();
    let mut received = 0;
    let ended = loop {
        match tokio::time::timeout(PATIENCE, body.data()).await {
            Err(_) => panic!("the body neither went on nor ended"),
            Ok(None) => break "cleanly",
            Ok(Some(Err(_))) => break "abnormally",
            Ok(Some(Ok(data))) => {
                received += data.len();
                // The window opens a round trip later.
                let mut window = body.flow_control().clone();
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    let _ = window.release_capacity(data.len());
                });
            }
        }
    };
    assert_eq!((received, ended), (3 * LARGE_CHUNK, "abnormally"));
}

/// A `101` to a request that did not ask to upgrade, a status outside
/// 100-599, a body in a transfer coding other than chunked (the client
/// would get it still coded, and without a word of it) and lengths that
/// disagree are answers no client can take: a 502, and the connection
/// closed.
#[tokio::test]
async fn answers_no_client_can_take_are_a_502_for_every_subscriber() {
    for answer in [
        &b"HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\nupgrade: h2c\r\n\r\n"[..],
        b"HTTP/1.1 999 Odd\r\ncontent-length: 2\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\ncontent-length: 2, 3\r\n\r\nok",
    ] {
        let upstream = Faulty::start(Fault::Answer(answer)).await;
        let gateway = Gateway::start(&route(&upstream.url())).await;
        let outcomes = herd(&gateway, &upstream).await;
        all_got(&outcomes, &Outcome::Refused(502, "upstream_failed".into()));
        upstream.wait_closed_by_gateway(1).await;
        no_flight_left(&gateway, &upstream).await;
    }
}

/// A length given twice, or as a list, with one value (RFC 9110 §8.6): every
/// client gets the body, told its length once. Passed on as it came, an
/// HTTP/1.1 client got nothing and HTTP/2 clients a malformed head.
#[tokio::test]
async fn a_length_given_twice_with_one_value_is_passed_on_once() {
    for answer in [
        &b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\
            content-length: 11, 11\r\n\r\n{\"ok\":true}"[..],
        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\
            content-length: 11\r\ncontent-length: 11\r\n\r\n{\"ok\":true}",
    ] {
        let upstream = Faulty::start(Fault::Answer(answer)).await;
        let gateway = Gateway::start(&route(&upstream.url())).await;
        let outcomes = herd(&gateway, &upstream).await;
        all_got(
            &outcomes,
            &Outcome::Complete(200, b"{\"ok\":true}".to_vec()),
        );
        for client in [http1(), http2()] {
            let mut request = post(&gateway.url(PATH), BODY);
            request
                .headers_mut()
                .insert("x-chorus-coalesce", http::HeaderValue::from_static("off"));
            let response = send_released(&upstream, &client, request).await;
            let lengths: Vec<_> = response
                .headers()
                .get_all("content-length")
                .iter()
                .collect();
            assert_eq!(lengths, ["11"], "{:?}", response.version());
            let (_, alone) = outcome(response).await;
            assert_eq!(alone, Outcome::Complete(200, b"{\"ok\":true}".to_vec()));
        }
        gateway.assert_idle().await;
        assert_eq!(
            gateway.metric(BROKEN).await,
            0.0,
            "a whole body is no break"
        );
    }
}

/// A chunked body whose head also gives a (wrong) length: the chunks are the
/// body, and no client is told the length (RFC 9112 §6.3), which would cut
/// it short over HTTP/1.1 and be a protocol error over HTTP/2.
#[tokio::test]
async fn a_length_beside_chunked_framing_is_not_passed_on() {
    const CHUNKED_WITH_LENGTH: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\
        content-length: 2\r\ntransfer-encoding: chunked\r\n\r\n\
        b\r\n{\"ok\":true}\r\n0\r\n\r\n";
    let upstream = Faulty::start(Fault::Answer(CHUNKED_WITH_LENGTH)).await;
    let gateway = Gateway::start(&route(&upstream.url())).await;
    let outcomes = herd(&gateway, &upstream).await;
    all_got(
        &outcomes,
        &Outcome::Complete(200, b"{\"ok\":true}".to_vec()),
    );
    let mut request = post(&gateway.url(PATH), BODY);
    request
        .headers_mut()
        .insert("x-chorus-coalesce", http::HeaderValue::from_static("off"));
    let response = send_released(&upstream, &http1(), request).await;
    assert!(response.headers().get("content-length").is_none());
    let (_, alone) = outcome(response).await;
    assert_eq!(alone, Outcome::Complete(200, b"{\"ok\":true}".to_vec()));
    gateway.assert_idle().await;
}

/// The upstream closes a kept-alive connection when the gateway sends the
/// next request on it: the request was written, no answer came. Whether the
/// connection was seen closed before the request went out (a retry on a new
/// one) or not (a 502), every subscriber gets the same, and nothing hangs.
#[tokio::test]
async fn an_upstream_closing_a_reused_connection_gives_everyone_the_same_answer() {
    let upstream = Faulty::start(Fault::CloseOnReuse).await;
    let gateway = Gateway::start(&route(&upstream.url())).await;
    for round in 0..3 {
        // A first request leaves a kept-alive connection in the pool...
        let request = post(
            &gateway.url(PATH),
            format!("{BODY}{}", " ".repeat(round + 1)),
        );
        let (_, first) = outcome(send(&http1(), request).await).await;
        assert_eq!(first, Outcome::Complete(200, b"{\"ok\":true}".to_vec()));
        // ...which the herd's one upstream request reuses.
        let outcomes = herd(&gateway, &upstream).await;
        let shared = &outcomes[0].1;
        assert!(
            matches!(shared, Outcome::Complete(200, body) if body == b"{\"ok\":true}")
                || shared == &Outcome::Refused(502, "upstream_failed".into()),
            "round {round}: {shared:?}"
        );
        all_got(&outcomes, shared);
        gateway.assert_idle().await;
    }
}

/// The keep-alive race: the upstream resets a connection that sat unused just
/// as the next request reaches it. The request never reached the upstream's
/// application, so the gateway sends it again on a new connection, and the
/// client never sees the race.
#[tokio::test]
async fn a_request_meeting_the_upstreams_keep_alive_close_is_sent_again() {
    let upstream = Faulty::start(Fault::ResetOnReuse).await;
    let gateway = Gateway::start(&route(&upstream.url())).await;
    let client = http1();
    for round in 0..3 {
        let request = post(&gateway.url(PATH), format!("{BODY}{}", " ".repeat(round)));
        let (_, outcome) = outcome(send(&client, request).await).await;
        assert_eq!(
            outcome,
            Outcome::Complete(200, b"{\"ok\":true}".to_vec()),
            "round {round}"
        );
        // Unused long enough to be one an upstream's keep-alive timeout closes.
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    // Round 0 opened a connection; rounds 1 and 2 each met a reset and went
    // again on a new one.
    assert_eq!(upstream.requests(), 5);
    gateway.assert_idle().await;
}

/// An idempotent request meets the keep-alive race however soon after its
/// last use the connection is reused: it may go twice whatever happened
/// (RFC 9110 §9.2.2), so it goes again on a new connection, as nginx
/// retries one. This upstream resets every connection when it is reused.
#[tokio::test]
async fn an_idempotent_request_on_a_connection_closed_under_it_always_goes_again() {
    let upstream = Faulty::start(Fault::ResetOnReuse).await;
    let gateway = Gateway::start(&route(&upstream.url())).await;
    let client = http1();
    for round in 0..10 {
        let url = gateway.url(&format!("{PATH}?round={round}"));
        let request = http::Request::get(url)
            .body(http_body_util::Full::default())
            .unwrap();
        let (_, outcome) = outcome(send(&client, request).await).await;
        assert_eq!(
            outcome,
            Outcome::Complete(200, b"{\"ok\":true}".to_vec()),
            "round {round}"
        );
    }
    // Round 0 opened a connection; every later one met a reset and went again.
    assert_eq!(upstream.requests(), 19);
    gateway.assert_idle().await;
}

/// The upstream says keep-alive but closes right after each answer: the
/// gateway must not hand out the dead connection.
#[tokio::test]
async fn an_upstream_closing_after_each_answer_is_served_on_fresh_connections() {
    let upstream = Faulty::start(Fault::CloseAfterAnswer).await;
    let gateway = Gateway::start(&route(&upstream.url())).await;
    let client = http1();
    let mut refused = 0;
    for index in 0..50 {
        let request = post(&gateway.url(PATH), format!("{BODY}{}", " ".repeat(index)));
        let (_, outcome) = outcome(send(&client, request).await).await;
        match outcome {
            Outcome::Complete(200, body) => assert_eq!(body, b"{\"ok\":true}"),
            Outcome::Refused(502, kind) if kind == "upstream_failed" => refused += 1,
            other => panic!("request {index}: {other:?}"),
        }
    }
    assert_eq!(
        refused, 0,
        "{refused} of 50 requests went to a closed connection"
    );
    gateway.assert_idle().await;
}
