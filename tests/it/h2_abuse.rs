//! HTTP/2 abuse: rapid reset (CVE-2023-44487), a flood of streams past
//! `max_concurrent_streams`, CONTINUATION floods, huge header lists and an
//! HPACK bomb. Each is bounded, and other clients are served meanwhile.
//!
//! Well-behaved attacks use the `h2` crate's client; the ones a correct
//! client library refuses to send are written frame by frame.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::attack::*;
use crate::support::*;

// ---------------------------------------------------------------------------
// Frames on the wire

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const DATA: u8 = 0x0;
pub const HEADERS: u8 = 0x1;
pub const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const PING: u8 = 0x6;
const GOAWAY: u8 = 0x7;
pub const CONTINUATION: u8 = 0x9;
pub const END_STREAM: u8 = 0x1;
const ACK: u8 = 0x1;
pub const END_HEADERS: u8 = 0x4;

pub fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let length = u32::try_from(payload.len()).unwrap();
    assert!(length < 1 << 24);
    let mut frame = length.to_be_bytes()[1..].to_vec();
    frame.extend_from_slice(&[kind, flags]);
    frame.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
    frame.extend_from_slice(payload);
    frame
}

/// An HPACK integer with an `prefix`-bit prefix under `first`'s high bits.
fn hpack_int(first: u8, prefix: u32, mut value: usize, out: &mut Vec<u8>) {
    let max = (1usize << prefix) - 1;
    if value < max {
        out.push(first | value as u8);
        return;
    }
    out.push(first | max as u8);
    value -= max;
    while value >= 128 {
        out.push((value % 128 + 128) as u8);
        value /= 128;
    }
    out.push(value as u8);
}

/// A literal header field without indexing, new name, no Huffman.
pub fn literal(name: &str, value: &[u8], out: &mut Vec<u8>) {
    out.push(0x00);
    hpack_int(0, 7, name.len(), out);
    out.extend_from_slice(name.as_bytes());
    hpack_int(0, 7, value.len(), out);
    out.extend_from_slice(value);
}

/// The header block of `GET path` on `http`, authority `a`.
fn get_block(path: &str) -> Vec<u8> {
    request_block(path.as_bytes(), b"a")
}

/// The header block of `GET path` on `http` at `authority`, whatever their bytes.
pub fn request_block(path: &[u8], authority: &[u8]) -> Vec<u8> {
    // :method GET (static 2), :scheme http (static 6).
    let mut block = vec![0x82, 0x86];
    // :path, literal without indexing with static name 4.
    block.push(0x04);
    hpack_int(0, 7, path.len(), &mut block);
    block.extend_from_slice(path);
    // :authority, literal without indexing with static name 1.
    block.push(0x01);
    hpack_int(0, 7, authority.len(), &mut block);
    block.extend_from_slice(authority);
    block
}

/// A raw HTTP/2 connection: preface and an empty SETTINGS already sent.
pub async fn raw_h2(gateway: &Gateway) -> TcpStream {
    let mut stream = TcpStream::connect(gateway.addr).await.unwrap();
    let mut hello = PREFACE.to_vec();
    hello.extend(frame(SETTINGS, 0, 0, &[]));
    stream.write_all(&hello).await.unwrap();
    stream
}

/// What came back on a raw connection: frame types and GOAWAY codes seen.
#[derive(Debug, Default)]
pub struct Received {
    pub frames: Vec<(u8, u32)>,
    goaway: Option<u32>,
    closed: bool,
}

impl Received {
    fn count(&self, kind: u8) -> usize {
        self.frames.iter().filter(|(k, _)| *k == kind).count()
    }
}

/// Reads frames until the peer closes or `wait` passes, answering pings.
async fn read_frames(stream: &mut TcpStream, wait: Duration) -> Received {
    read_frames_until(stream, wait, |_| false).await
}

/// Reads frames as [`read_frames`] does, or until `enough` says so.
pub async fn read_frames_until(
    stream: &mut TcpStream,
    wait: Duration,
    enough: impl Fn(&Received) -> bool,
) -> Received {
    let mut received = Received::default();
    let mut buf = Vec::new();
    let deadline = Instant::now() + wait;
    loop {
        while buf.len() >= 9 {
            let length = u32::from_be_bytes([0, buf[0], buf[1], buf[2]]) as usize;
            if buf.len() < 9 + length {
                break;
            }
            let kind = buf[3];
            let stream_id = u32::from_be_bytes([buf[5], buf[6], buf[7], buf[8]]) & 0x7fff_ffff;
            if kind == GOAWAY && length >= 8 {
                received.goaway = Some(u32::from_be_bytes([buf[13], buf[14], buf[15], buf[16]]));
            }
            // Answer pings as a live client does (a graceful GOAWAY waits for one).
            if kind == PING && buf[4] & ACK == 0 && length == 8 {
                let _ = stream.write_all(&frame(PING, ACK, 0, &buf[9..17])).await;
            }
            received.frames.push((kind, stream_id));
            buf.drain(..9 + length);
        }
        if enough(&received) {
            return received;
        }
        let mut chunk = [0u8; 16384];
        match tokio::time::timeout_at(deadline, stream.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {
                received.closed = true;
                return received;
            }
            Ok(Ok(read)) => buf.extend_from_slice(&chunk[..read]),
            Err(_) => return received,
        }
    }
}

/// Writes `bytes` in pieces until done or the peer stops reading; returns
/// how many bytes were written.
async fn write_until_refused(stream: &mut TcpStream, bytes: &[u8]) -> usize {
    let mut written = 0;
    for piece in bytes.chunks(64 * 1024) {
        match tokio::time::timeout(Duration::from_secs(5), stream.write_all(piece)).await {
            Ok(Ok(())) => written += piece.len(),
            Ok(Err(_)) | Err(_) => break,
        }
    }
    written
}

/// A normal HTTP/2 request and a normal HTTP/1.1 request are both served.
async fn others_served(gateway: &Gateway) {
    let request = Request::get(gateway.url("/still-serving"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let response = send(&http2(), request).await;
    assert_eq!(response.status(), 200);
    assert_eq!(text(response).await, "ok");
    still_serves(gateway).await;
}

/// An upstream that answers after `delay` and tracks how many requests it
/// holds at once.
struct Counting {
    upstream: TestUpstream,
    peak: Arc<AtomicUsize>,
}

async fn counting(delay: Duration) -> Counting {
    let now = Arc::new(AtomicUsize::new(0));
    let peak = Arc::new(AtomicUsize::new(0));
    let (held, top) = (Arc::clone(&now), Arc::clone(&peak));
    let upstream = TestUpstream::start(move |_| {
        let (held, top) = (Arc::clone(&held), Arc::clone(&top));
        async move {
            let holding = held.fetch_add(1, Ordering::SeqCst) + 1;
            top.fetch_max(holding, Ordering::SeqCst);
            // Counted out even when the gateway drops the request midway.
            struct Out(Arc<AtomicUsize>);
            impl Drop for Out {
                fn drop(&mut self) {
                    self.0.fetch_sub(1, Ordering::SeqCst);
                }
            }
            let _out = Out(held);
            tokio::time::sleep(delay).await;
            Response::new(Full::new(Bytes::from_static(b"ok")))
        }
    })
    .await;
    Counting { upstream, peak }
}

// ---------------------------------------------------------------------------
// Rapid reset

#[tokio::test]
async fn rapid_reset_is_bounded_and_others_are_served() {
    const STREAMS: u32 = 20_000;
    let upstream = counting(Duration::from_millis(200)).await;
    let gateway = Gateway::start(&one_route(&upstream.upstream.url(), "")).await;

    // HEADERS then RST_STREAM(CANCEL) at once, for stream after stream:
    // distinct requests, so that none of them coalesce.
    let mut attack = Vec::new();
    for index in 0..STREAMS {
        let stream = 2 * index + 1;
        let block = get_block(&format!("/reset/{index}"));
        attack.extend(frame(HEADERS, END_STREAM | END_HEADERS, stream, &block));
        attack.extend(frame(RST_STREAM, 0, stream, &8u32.to_be_bytes()));
    }
    let mut stream = raw_h2(&gateway).await;
    let started = Instant::now();
    let written = write_until_refused(&mut stream, &attack).await;
    let received = read_frames(&mut stream, PATIENCE).await;
    println!(
        "rapid reset: wrote {written} of {} bytes in {:?}; upstream saw {} requests, peak {} at once; goaway {:?}, closed {}, frames back {}",
        attack.len(),
        started.elapsed(),
        upstream.upstream.hits(),
        upstream.peak.load(Ordering::SeqCst),
        received.goaway,
        received.closed,
        received.frames.len()
    );
    assert!(received.closed, "the attacking connection was left open");
    // Never more upstream requests at once than one connection may have streams.
    assert!(upstream.peak.load(Ordering::SeqCst) <= 256);
    others_served(&gateway).await;
}

/// A page that aborts most of its requests soon after they start (a search
/// as its user types) looks like the paced attack, but is no attacker:
/// judged so, its connection is told to go (GOAWAY) and closed only once
/// its streams in flight are done, and a long answer on it ends whole.
#[tokio::test]
async fn a_client_aborting_most_requests_is_told_to_go_without_cutting_its_long_stream() {
    let upstream = Upstream::start().await;
    let config = server_extra(
        &one_route(&upstream.url(), ""),
        "header_read_timeout = \"60s\"",
    );
    let gateway = Gateway::start(&config).await;
    let (client, url) = (http2(), gateway.url("/v1/chat/completions"));
    let long = chat(
        "long",
        serde_json::json!({"tokens": 30, "interval_ms": 100}),
    );
    let mut long = EventReader::new(send(&client, post(&url, long)).await);
    assert!(long.next().await.unwrap().is_some());
    for index in 0..chorus::activity::PREMATURE_MIN_STREAMS {
        let typed = chat(
            &format!("typed {index}"),
            serde_json::json!({"tokens": 20, "interval_ms": 20}),
        );
        let mut aborted = EventReader::new(send(&client, post(&url, typed)).await);
        assert!(aborted.next().await.unwrap().is_some());
        // Dropped unfinished: RST_STREAM(CANCEL).
    }
    let rest = long.rest().await.expect("the long stream was cut");
    assert_eq!(
        rest.len(),
        32,
        "role, 30 tokens, finish and [DONE], less the first"
    );
    assert_eq!(rest.last().map(String::as_str), Some("[DONE]"));
    // The connection went once its stream had ended, with its client still
    // holding it (an idle one would be kept for header_read_timeout).
    let open = gateway
        .wait_metric("chorus_connections_active", |open| open == 0.0)
        .await;
    assert_eq!(open, 0.0, "the connection told to go is still open");
    drop(client);
    gateway.assert_idle().await;
}

/// The same attack paced: each batch of streams is reset only once the
/// gateway has sent their requests upstream, past hyper's own guard.
#[tokio::test]
async fn paced_rapid_reset_closes_the_connection() {
    const ROUNDS: u32 = 100;
    const BATCH: u32 = 20;
    let upstream = counting(Duration::from_millis(500)).await;
    let gateway = Gateway::start(&one_route(&upstream.upstream.url(), "")).await;
    let mut stream = raw_h2(&gateway).await;
    let mut sent = 0;
    for round in 0..ROUNDS {
        let mut headers = Vec::new();
        let mut resets = Vec::new();
        for index in 0..BATCH {
            let id = 2 * (round * BATCH + index) + 1;
            let block = get_block(&format!("/paced/{id}"));
            headers.extend(frame(HEADERS, END_STREAM | END_HEADERS, id, &block));
            resets.extend(frame(RST_STREAM, 0, id, &8u32.to_be_bytes()));
        }
        let before = upstream.upstream.hits();
        if stream.write_all(&headers).await.is_err() {
            break;
        }
        let deadline = Instant::now() + Duration::from_secs(2);
        while upstream.upstream.hits() < before + BATCH as usize && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        if upstream.upstream.hits() == before || stream.write_all(&resets).await.is_err() {
            break;
        }
        sent += BATCH;
    }
    let received = read_frames(&mut stream, PATIENCE).await;
    assert!(
        received.closed,
        "the connection was left open after {sent} resets"
    );
    let hits = upstream.upstream.hits();
    // Told to go after the first hundred, it was cut after the second.
    assert!(
        hits as u64 <= 2 * chorus::activity::PREMATURE_MIN_STREAMS + u64::from(BATCH),
        "{hits} upstream requests before the connection was closed"
    );
    others_served(&gateway).await;
}

/// A client that cancels some of its requests (a user pressing stop) keeps
/// its connection.
#[tokio::test]
async fn cancelling_some_requests_is_not_an_attack() {
    let upstream = counting(Duration::from_millis(5)).await;
    let gateway = Gateway::start(&one_route(&upstream.upstream.url(), "")).await;
    let tcp = TcpStream::connect(gateway.addr).await.unwrap();
    let (client, connection) = h2::client::handshake(tcp).await.unwrap();
    let driver = tokio::spawn(connection);
    let mut client = client;
    for index in 0..300 {
        client = client.ready().await.expect("the connection was closed");
        let request = Request::get(format!("http://a/mixed/{index}"))
            .body(())
            .unwrap();
        let (response, _) = client.send_request(request, true).unwrap();
        if index % 3 == 0 {
            // Cancelled before the answer: RST_STREAM.
            drop(response);
            tokio::time::sleep(Duration::from_millis(1)).await;
        } else {
            let response = tokio::time::timeout(PATIENCE, response)
                .await
                .unwrap()
                .expect("a request on a good connection failed");
            assert_eq!(response.status(), 200);
        }
    }
    assert!(!driver.is_finished());
    drop(client);
    others_served(&gateway).await;
}

// ---------------------------------------------------------------------------
// Floods of streams and headers

#[tokio::test]
async fn a_flood_of_streams_past_max_concurrent_streams_is_refused() {
    const STREAMS: u32 = 5_000;
    let upstream = counting(Duration::from_millis(300)).await;
    let gateway = Gateway::start(&server_extra(
        &one_route(&upstream.upstream.url(), ""),
        "http2_max_concurrent_streams = 10",
    ))
    .await;
    let mut stream = raw_h2(&gateway).await;
    // A client that ignores SETTINGS_MAX_CONCURRENT_STREAMS.
    let mut flood = Vec::new();
    for index in 0..STREAMS {
        let block = get_block(&format!("/flood/{index}"));
        flood.extend(frame(
            HEADERS,
            END_STREAM | END_HEADERS,
            2 * index + 1,
            &block,
        ));
    }
    write_until_refused(&mut stream, &flood).await;
    let received = read_frames(&mut stream, Duration::from_secs(3)).await;
    let peak = upstream.peak.load(Ordering::SeqCst);
    assert!(
        peak <= 10,
        "{peak} upstream requests at once from one connection"
    );
    assert!(
        received.count(RST_STREAM) > 0 || received.goaway.is_some(),
        "streams past the limit were neither refused nor the connection closed"
    );
    assert!(upstream.upstream.hits() < STREAMS as usize / 2);
    others_served(&gateway).await;
}

/// A header block that never ends: HEADERS without END_HEADERS, then
/// CONTINUATION frames for ever (CVE-2024-27316 and its kin).
async fn continuation_flood(piece: &[u8]) {
    let upstream = counting(Duration::ZERO).await;
    let gateway = Gateway::start(&one_route(&upstream.upstream.url(), "")).await;
    let mut stream = raw_h2(&gateway).await;
    let mut flood = frame(HEADERS, END_STREAM, 1, &get_block("/continued"));
    // 64 MiB of header block, if nobody stops it.
    while flood.len() < 64 << 20 {
        flood.extend(frame(CONTINUATION, 0, 1, piece));
    }
    let started = Instant::now();
    let written = write_until_refused(&mut stream, &flood).await;
    let received = read_frames(&mut stream, PATIENCE).await;
    assert!(received.closed, "the connection was left open");
    assert!(
        written < flood.len(),
        "all {written} bytes were read ({:?})",
        started.elapsed()
    );
    assert_eq!(upstream.upstream.hits(), 0);
    others_served(&gateway).await;
}

#[tokio::test]
async fn a_continuation_flood_of_headers_is_cut_off() {
    let mut piece = Vec::new();
    literal("x-continued", &[b'c'; 1000], &mut piece);
    continuation_flood(&piece).await;
}

#[tokio::test]
async fn a_continuation_flood_of_empty_frames_is_cut_off() {
    continuation_flood(&[]).await;
}

/// Sends one request whose header block is `block`, split into a HEADERS
/// frame and CONTINUATION frames of 16 KiB; returns what came back.
async fn one_request_with_block(gateway: &Gateway, block: &[u8]) -> Received {
    let mut stream = raw_h2(gateway).await;
    let mut frames = Vec::new();
    let pieces: Vec<&[u8]> = block.chunks(16_384).collect();
    for (index, piece) in pieces.iter().enumerate() {
        let last = index + 1 == pieces.len();
        let flags = if last { END_HEADERS } else { 0 };
        if index == 0 {
            frames.extend(frame(HEADERS, END_STREAM | flags, 1, piece));
        } else {
            frames.extend(frame(CONTINUATION, flags, 1, piece));
        }
    }
    write_until_refused(&mut stream, &frames).await;
    read_frames(&mut stream, Duration::from_secs(3)).await
}

/// Sends `block` as the header block of one request and checks that the
/// gateway refused it (a reset, a GOAWAY or a close) without asking the
/// upstream, and serves others after it; `what` names the block.
async fn block_is_refused(gateway: &Gateway, upstream: &Counting, block: &[u8], what: &str) {
    let received = one_request_with_block(gateway, block).await;
    assert!(
        received.count(RST_STREAM) > 0 || received.goaway.is_some() || received.closed,
        "{what} was taken: {received:?}"
    );
    assert_eq!(upstream.upstream.hits(), 0);
    others_served(gateway).await;
}

#[tokio::test]
async fn a_huge_header_list_is_refused() {
    let upstream = counting(Duration::ZERO).await;
    let gateway = Gateway::start(&one_route(&upstream.upstream.url(), "")).await;
    // 4 MiB of headers against the 256 KiB hyper buffers at most.
    let mut block = get_block("/huge");
    for index in 0..4096 {
        literal(&format!("x-huge-{index}"), &[b'h'; 1024], &mut block);
    }
    block_is_refused(&gateway, &upstream, &block, "a 4 MiB header list").await;
}

#[tokio::test]
async fn an_hpack_bomb_is_refused() {
    let upstream = counting(Duration::ZERO).await;
    let gateway = Gateway::start(&one_route(&upstream.upstream.url(), "")).await;
    // One 4000-byte header put in the dynamic table, then referenced by a
    // single byte 20,000 times: 80 MB of headers from 20 KB.
    let mut block = get_block("/bomb");
    block.push(0x40);
    hpack_int(0, 7, 6, &mut block);
    block.extend_from_slice(b"x-bomb");
    hpack_int(0, 7, 4000, &mut block);
    block.extend(std::iter::repeat_n(b'b', 4000));
    block.extend(std::iter::repeat_n(0xbe, 20_000));
    block_is_refused(&gateway, &upstream, &block, "an HPACK bomb").await;
}

// ---------------------------------------------------------------------------
// Idle connections

#[tokio::test]
async fn an_idle_http2_connection_gets_goaway_after_header_read_timeout() {
    let upstream = Upstream::start().await;
    let gateway = Gateway::start(&server_extra(
        &one_route(&upstream.url(), ""),
        "header_read_timeout = \"1s\"",
    ))
    .await;
    let mut stream = raw_h2(&gateway).await;
    let started = Instant::now();
    stream
        .write_all(&frame(
            HEADERS,
            END_STREAM | END_HEADERS,
            1,
            &get_block("/v1/models"),
        ))
        .await
        .unwrap();
    let received = read_frames(&mut stream, PATIENCE).await;
    assert!(received.closed, "the idle connection was left open");
    assert_eq!(
        received.goaway,
        Some(0),
        "closed without a GOAWAY(NO_ERROR)"
    );
    assert!(received.count(DATA) >= 1, "the request was not answered");
    assert!(started.elapsed() >= Duration::from_millis(900));

    // A stream longer than the timeout is not idle: it runs to its end.
    let client = http2();
    let body = chat(
        "long",
        serde_json::json!({"tokens": 30, "interval_ms": 100}),
    );
    let response = send(&client, post(&gateway.url("/v1/chat/completions"), body)).await;
    let events = events(&body_bytes(response).await);
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    still_streams(&gateway).await;
}

async fn body_bytes(response: Response<hyper::body::Incoming>) -> Bytes {
    body(response).await.expect("the stream was cut")
}
